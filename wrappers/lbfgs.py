"""LBFGS, a drop-in for torch.optim.LBFGS."""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from optkernels.lbfgs import check_hparams, lbfgs_update

from optkernels import UnsupportedOptionError

from ._layout import is_sharded
from .base import KernelOptimizer

# State entries that torch.optim.LBFGS keeps as flat vectors over all params (or lists of such
# vectors) and we keep as one tensor per param: converted where a state_dict goes in or out.
_VECTORS = ("d", "prev_flat_grad")
_VECTOR_LISTS = ("old_dirs", "old_stps")
_HPARAMS = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size", "line_search_fn")
_ONE_GROUP = "LBFGS doesn't support per-parameter options (parameter groups)"


class LBFGS(KernelOptimizer):
    """L-BFGS with an optional strong-Wolfe line search; see :func:`optkernels.lbfgs_update`.

    As torch.optim.LBFGS: one param group, ``step(closure)`` runs up to ``max_iter``
    iterations, and all state lives under the first param with torch's keys (``func_evals``,
    ``n_iter``, ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``,
    ``prev_flat_grad``, ``prev_loss``, ``al``). In ``self.state`` a vector is a list of
    tensors, one per param (the kernel never flattens the model); ``state_dict()`` gives
    torch's flat vectors and ``load_state_dict`` takes them, so checkpoints cross-load both ways.
    """

    counts_steps = False
    elementwise = False  # dot products over all params

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                 history_size=100, line_search_fn=None):
        max_eval = check_hparams(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                                 tolerance_change=tolerance_change, history_size=history_size,
                                 line_search_fn=line_search_fn)
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, history_size=history_size,
                        line_search_fn=line_search_fn)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_hparams(**{name: group.get(name) for name in _HPARAMS})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)  # torch's checks (duplicates, names) come first
        if len(self.param_groups) > 1:  # torch refuses at construction and fails at step after
            self.param_groups.pop()
            raise ValueError(_ONE_GROUP)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any]):  # type: ignore[override]
        """Run up to ``max_iter`` L-BFGS iterations; ``closure`` re-evaluates the model and
        returns the loss. Returns the loss of its first call."""
        group = self.param_groups[0]
        params = group["params"]
        if any(is_sharded(param) for param in params):
            raise UnsupportedOptionError("LBFGS needs whole tensors (its directions are dot products over all "
                                         "params) but a param is a sharded DTensor; use replicated params")
        state = self.state.get(params[0], {}) if params else {}
        _unflatten(state, params)  # a torch checkpoint restored another way (e.g. __setstate__)
        try:
            return lbfgs_update(params, closure, state, **{name: group[name] for name in _HPARAMS})
        finally:
            if state:  # nothing is stored for a call that changed nothing
                self.state[params[0]] = state

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        state_dict["state"] = {index: _flattened(param_state) for index, param_state in state_dict["state"].items()}
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        params = self.param_groups[0]["params"]
        if params and self.state.get(params[0]):
            _unflatten(self.state[params[0]], params)


def _flattened(param_state: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``param_state`` with torch.optim.LBFGS's flat vectors (the entries are shared)."""
    flat = dict(param_state)
    for key in _VECTORS:
        if isinstance(flat.get(key), list):
            flat[key] = _cat(flat[key])
    for key in _VECTOR_LISTS:
        if isinstance(flat.get(key), list):
            flat[key] = [_cat(vector) if isinstance(vector, list) else vector for vector in flat[key]]
    return flat


def _cat(vector: list[Tensor]) -> Tensor:
    # row-major order, complex params as real pairs: torch's _gather_flat_grad layout
    return torch.cat([tensor.reshape(-1) for tensor in vector])


def _unflatten(state: dict[str, Any], params: list[Tensor]) -> None:
    """Replace torch's flat vectors in ``state`` by lists of tensors shaped like ``params``
    (their real views), in place; entries already in that form are kept. All are converted
    before any is stored, so a vector of the wrong size changes nothing."""
    real = [torch.view_as_real(p) if p.is_complex() else p for p in params]
    numel = sum(p.numel() for p in real)

    def split(key: str, flat):
        if not isinstance(flat, Tensor):
            return flat
        if flat.numel() != numel:
            raise ValueError(f"state[{key!r}] has {flat.numel()} elements but the params have {numel} "
                             "(as real numbers): the checkpoint is for other params")
        chunks = torch.split(flat.reshape(-1), [p.numel() for p in real])
        return [chunk.view(p.shape).to(dtype=p.dtype, device=p.device, copy=True) for chunk, p in zip(chunks, real)]

    converted = {key: split(key, state[key]) for key in _VECTORS if key in state}
    for key in _VECTOR_LISTS:
        if isinstance(state.get(key), list):
            converted[key] = [split(f"{key}[{i}]", vector) for i, vector in enumerate(state[key])]
    state.update(converted)
