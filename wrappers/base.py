"""The one class that knows about param groups and per-parameter state."""

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._flat import FlatBuffers, FlatGroup, flattenable

from optkernels import _math
from optkernels._math import chunks
from optkernels._validation import (
    UnsupportedOptionError,
    check_beta,
    check_eps,
    check_lr,
    check_nonnegative,
    check_scalar_lists,
    check_tensor_lists,
)
from optkernels.weight_decay import decoupled_scale

TORCH_ONLY_SWITCHES = ("capturable", "differentiable", "fused")
# Param-sized lists one chunk of a step may allocate at once, with room to spare: the kernel's
# grads prepared for maximize or coupled weight decay, and its own (Adadelta, centered RMSprop: two).
_TEMPORARY_LISTS = 5


def _check_betas(betas) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        check_beta(f"betas[{index}]", beta, index=index)


# Hyperparameters every optimizer checks the same way, wherever a group has them.
_HPARAM_CHECKS: dict[str, Callable[[Any], Any]] = {
    "lr": check_lr,
    "eps": check_eps,
    "betas": _check_betas,
    "weight_decay": lambda value: check_nonnegative("weight_decay", value),
    "momentum": lambda value: check_nonnegative("momentum", value),
    "dampening": lambda value: check_nonnegative("dampening", value),
}


def _scalar_dtype() -> torch.dtype:
    # torch.optim keeps `step` as a float tensor of this dtype, so checkpoints match
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class _FlatBatch(NamedTuple):
    buffers: list[FlatBuffers]
    gather: bool  # some grads are not the buffer's views (replaced, or made by autograd)


class KernelOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` that collects tensor lists per param group and calls a kernel.

    Subclasses give their state keys (torch.optim's names, so checkpoints cross-load), their
    defaults, and ``_update``, which calls the kernels. This class does the rest: checks
    hyperparameters, skips params whose grad is None, creates state lazily, keeps ``step``,
    and makes a step that raises change nothing.
    """

    state_names: ClassVar[tuple[str, ...]] = ()  # per-param state tensors, zero-initialised
    scalar_state_names: ClassVar[tuple[str, ...]] = ()  # those of them that are 0-d, not param-shaped
    amsgrad_state_name: ClassVar[str | None] = None  # also kept when group["amsgrad"]
    counts_steps: ClassVar[bool] = True  # keeps state["step"], as torch.optim does
    takes_sparse_grads: ClassVar[bool] = False  # True: sparse grads reach ``_update`` (SparseAdam)
    # Each element's update reads only that element: params may be cut into slices and flattened
    elementwise: ClassVar[bool] = True

    def __init__(self, params, defaults: dict[str, Any], *, flat: bool = False, compiled: bool = False) -> None:
        """``flat``: keep each group's params, grads and state in one buffer per device and dtype
        (see ``wrappers._flat``). ``compiled``: run the kernels' compiled rules (see
        ``optkernels._compiled``). Both default off; together they make one pass over memory."""
        # Options first, as torch.optim does, so a bad lr is reported whatever params are.
        self._check_options(defaults)
        if isinstance(params, (set, frozenset)):
            raise TypeError(
                "params must be an ordered collection (a list), not a set: a set's order changes "
                "between runs, so a checkpoint would give state to the wrong tensors"
            )
        for name, value in (("flat", flat), ("compiled", compiled)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if flat and not self.elementwise:
            raise UnsupportedOptionError(f"flat=True is not supported by {type(self).__name__}: its update "
                                         "is not elementwise, so its params cannot share one buffer")
        self.flat, self.compiled = flat, compiled
        self._flat_groups: dict[int, FlatGroup] = {}  # by group index
        super().__init__(params, defaults)

    # --- what subclasses provide -------------------------------------------------------------
    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                state: dict[str, list[Tensor]], step: list[Tensor] | None) -> None:
        raise NotImplementedError

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError for a bad hyperparameter; subclasses add their own rules."""
        for name, check in _HPARAM_CHECKS.items():
            if name in group:
                check(group[name])

    def _check_grads(self, group: dict[str, Any]) -> None:
        """Raise for a grad (or its param) this optimizer cannot step: a dense grad for SparseAdam,
        a non-matrix for Muon. Called for every group before any group is stepped."""

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        names = self.state_names
        if self.amsgrad_state_name and group.get("amsgrad"):
            names += (self.amsgrad_state_name,)
        return names

    def _init_state(self, name: str, param: Tensor, group: dict[str, Any]) -> Tensor | None:
        """A new state tensor; ``None`` lets the kernel create it on the first step."""
        return torch.zeros_like(param, memory_format=torch.preserve_format)

    @staticmethod
    def _preparation(group: dict[str, Any], *, fixed: bool = False) -> dict[str, Any]:
        """The elementwise kernels' keywords for torch.optim's preparation of grads and params:
        ``maximize``, and the group's weight decay, coupled as ``weight_decay`` or decoupled
        (``decoupled_weight_decay``; ``fixed``: lr-free) as the factor ``param_scale``. The kernel
        applies them in its own pass, which with ``compiled`` is the update's."""
        options: dict[str, Any] = {"maximize": group["maximize"]}
        weight_decay = group.get("weight_decay", 0)
        if weight_decay and group.get("decoupled_weight_decay", False):
            options["param_scale"] = decoupled_scale(weight_decay, group["lr"], fixed=fixed)
        elif weight_decay:
            options["weight_decay"] = weight_decay
        return options

    # --- the machinery -------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict):
            self._check_options({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def _check_options(self, options: dict[str, Any]) -> None:
        for name in TORCH_ONLY_SWITCHES:
            if options.get(name):
                raise UnsupportedOptionError(
                    f"{name}=True is not supported by {type(self).__name__}: optkernels runs its "
                    f"own foreach kernels; leave {name} unset or False"
                )
        self._check_group(options)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "flat": self.flat, "compiled": self.compiled}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.flat, self.compiled = state.pop("flat", False), state.pop("compiled", False)
        self._flat_groups = {}
        defaults = state.get("defaults", getattr(self, "defaults", {}))
        takes_differentiable = "differentiable" in defaults
        super().__setstate__(state)
        if not takes_differentiable:  # torch's __setstate__ adds it; AdaBelief has no such option
            self.defaults.pop("differentiable", None)
        for group in self.param_groups:
            for name, default in self.defaults.items():
                group.setdefault(name, default)
            if not self.counts_steps:
                continue
            for param in group["params"]:
                param_state = self.state.get(param)
                if param_state and "step" in param_state and not torch.is_tensor(param_state["step"]):
                    # e.g. a checkpoint of the official AdaBelief, which counts with an int
                    param_state["step"] = torch.tensor(float(param_state["step"]), dtype=_scalar_dtype())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._flat_groups = {}  # the state is new tensors now; the next step packs them anew

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch.optim's, except that with ``flat=True`` the flat gradient buffers are zeroed
        and kept (as ``set_to_none=False`` does), so the next backward accumulates into them."""
        super().zero_grad(set_to_none)
        for flat_group in self._flat_groups.values():
            for buffers in flat_group.buffers():
                buffers.grad_buffer.zero_()
                buffers.attach_grads()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Check every group before touching any tensor, so an error changes nothing.
        batches = [self._flat_batch(index, group) or self._collect(group)
                   for index, group in enumerate(self.param_groups)]
        for index, (group, batch) in enumerate(zip(self.param_groups, batches)):
            if isinstance(batch, _FlatBatch):
                self._step_flat(group, batch.buffers, gather=batch.gather)
                continue
            params, grads, state, created, kernel_made = batch
            if not params:
                continue
            for param, new_state in created:
                self.state[param].update(new_state)
            if self.flat and not kernel_made and self._flatten(index, group, params, grads):
                # packed before stepping, so that a compiled rule first meets the whole buffer
                self._step_flat(group, self._flat_groups[index].buffers(), gather=False)
                continue
            step = state.pop("step", None)
            if step is not None:
                if step[0].is_cpu:  # as torch.optim: a Python 1 becomes a tensor per param (3 ms for 1,000)
                    torch._foreach_add_(step, torch.tensor(1.0), alpha=1.0)
                else:
                    torch._foreach_add_(step, 1)
            self._update_in_chunks(group, params, grads, state, step, kernel_made)
            for name in kernel_made:  # state the kernel created in place of None (SGD's buffers)
                for param, tensor in zip(params, state[name]):
                    self.state[param][name] = tensor
            if self.flat:  # SGD's first step makes its buffers; pack them for the next
                self._flatten(index, group, params, grads)
        return loss

    def _update_in_chunks(self, group, params, grads, state, step, kernel_made=()) -> None:
        """``_update`` on runs of params small enough that its temporaries (the grads the kernel
        prepares for ``maximize`` or coupled weight decay, and its own) stay within the budget."""
        names = tuple(state)
        lists = [params, grads, step, *state.values()]
        scalar = [2] + [3 + names.index(name) for name in self.scalar_state_names if name in names]
        if kernel_made or not self.elementwise:  # the kernel fills lists we pass (SGD's first step)
            runs = [lists]
        elif self.compiled:
            runs = [lists]  # compiled rules allocate nothing: one call, not one per chunk
        else:
            runs = chunks(lists, _math.TEMPORARY_BYTES // _TEMPORARY_LISTS, shared=scalar)
        runs = list(runs)
        before: dict[int, Tensor] = {}
        for params_, grads_, step_, *state_ in runs:
            if len(runs) > 1:  # a param cut in slices: each slice starts from the 0-d state it had
                self._restore(before, [state_[i - 3] for i in scalar[1:]])
            self._update(group, params_, grads_, dict(zip(names, state_)), step_)

    @staticmethod
    def _restore(before: dict[int, Tensor], scalar_lists: list[list[Tensor]]) -> None:
        for tensors in scalar_lists:
            for tensor in tensors:
                if id(tensor) in before:
                    tensor.copy_(before[id(tensor)])
                else:
                    before[id(tensor)] = tensor.clone()

    # --- flat storage --------------------------------------------------------------------------
    def _flat_batch(self, index: int, group: dict[str, Any]) -> _FlatBatch | None:
        """This group's flat buffers when every param with a grad is in them, else None."""
        flat_group = self._flat_groups.get(index)
        if flat_group is None:
            return None
        self._check_group(group)
        self._check_grads(group)
        if flat_group.untouched(group["params"]):
            return _FlatBatch(flat_group.buffers(), gather=False)
        with_grads = [param for param in group["params"] if param.grad is not None]
        if len(with_grads) != flat_group.count:
            return None
        for positions, buffers in flat_group.runs:
            if not buffers.holds([with_grads[i] for i in positions]) or not buffers.grads_gatherable():
                return None
        return _FlatBatch(flat_group.buffers(), gather=True)

    def _step_flat(self, group: dict[str, Any], flat_buffers: list[FlatBuffers], *, gather: bool) -> None:
        for buffers in flat_buffers:
            if gather:  # some grad is not our view: copy it in
                buffers.gather_grads()
            if "step" in buffers.state:
                buffers.state["step"].add_(1)
            params, grads, state = buffers.lists()
            self._update_in_chunks(group, params, grads, state, state.pop("step", None))
            buffers.advance()

    def _flatten(self, index: int, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> bool:
        """Pack the group's params with grads into flat buffers, if all of them can be."""
        self._flat_groups.pop(index, None)
        if not all(flattenable(param, grad) for param, grad in zip(params, grads)):
            return False
        names = self._all_state_names(group)
        runs: dict[tuple, list[int]] = {}
        for position, param in enumerate(params):
            runs.setdefault((param.device, param.dtype), []).append(position)
        packed = []
        for positions in runs.values():
            run_params = [params[i] for i in positions]
            param_states = [self.state[param] for param in run_params]
            state = {name: [param_state[name] for param_state in param_states] for name in names}
            if not FlatBuffers.uniform(state, self.scalar_state_names):
                return False
            packed.append((positions, (run_params, [grads[i] for i in positions], state, param_states)))
        self._flat_groups[index] = FlatGroup.pack(group["params"], [
            (positions, FlatBuffers(*args, self.scalar_state_names)) for positions, args in packed])
        return True

    def _collect(self, group: dict[str, Any]):
        self._check_group(group)
        self._check_grads(group)
        names = self._all_state_names(group)
        params, grads = [], []
        state: dict[str, list] = {name: [] for name in names}
        created, kernel_made = [], set()
        for param in group["params"]:
            grad = param.grad
            if grad is None:
                continue
            if grad.is_sparse and not self.takes_sparse_grads:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            params.append(param)
            grads.append(grad)
            param_state = self.state.get(param, {})
            new_state = {}
            for name in names:
                tensor = param_state.get(name)
                if tensor is None:
                    tensor = self._new_state(name, param, group)
                    if tensor is None:
                        kernel_made.add(name)
                    else:
                        new_state[name] = tensor
                state[name].append(tensor)
            if new_state:
                created.append((param, new_state))
        shaped = {name: tensors for name, tensors in state.items()
                  if name != "step" and name not in self.scalar_state_names}
        check_tensor_lists(fillable=tuple(kernel_made), sparse=("grads",) if self.takes_sparse_grads else (),
                           params=params, grads=grads, **shaped)
        check_scalar_lists(len(params), **{name: state[name] for name in self.scalar_state_names if name in state})
        return params, grads, state, created, kernel_made

    def _all_state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("step",) + self._state_names(group) if self.counts_steps else self._state_names(group)

    def _new_state(self, name: str, param: Tensor, group: dict[str, Any]) -> Tensor | None:
        if name == "step":
            return torch.tensor(0.0, dtype=_scalar_dtype())
        return self._init_state(name, param, group)
