"""Adafactor: Adam-like steps with second moments factored into row and column means."""

from collections.abc import Sequence

import torch
from torch import Tensor

from ._math import grouped, scale_
from ._validation import as_float, check_lr, check_nonnegative, check_tensor_lists, step_values


def adafactor_update(
    params: list[Tensor],
    grads: list[Tensor],
    row_vars: Sequence[Tensor | None] | None,
    col_vars: Sequence[Tensor | None] | None,
    variances: Sequence[Tensor | None] | None,
    *,
    step,
    lr: float | Tensor,
    beta2_decay: float = -0.8,
    eps1: float | None = None,
    eps2: float = 1e-3,
    d: float = 1.0,
    weight_decay: float = 0.0,
) -> None:
    r"""Adafactor step (torch.optim.Adafactor's variant), in place, on lists of tensors.

    With :math:`\hat\beta_{2,t} = 1 - t^{\tau}` (:math:`\tau` = ``beta2_decay``) and
    :math:`\rho_t = \min(\gamma, 1/\sqrt t)`:

    .. math::
        \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t \qquad
        \theta_{t-1} \leftarrow (1 - \gamma\lambda)\,\theta_{t-1}

        \text{2-D and up:}\quad R_t = \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{-1}(G_t^2)
        \qquad C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{-2}(G_t^2)
        \qquad \hat V_t = \frac{R_t C_t}{\max(\mathrm{mean}_{-2}(R_t), \epsilon_1)}

        \text{0-d and 1-d:}\quad \hat V_t = \hat\beta_{2,t} \hat V_{t-1} + (1-\hat\beta_{2,t})\, G_t^2

        U_t = \frac{G_t}{\sqrt{\max(\hat V_t, \epsilon_1^2)}} \qquad
        \theta_t = \theta_{t-1} - \frac{\alpha_t\, U_t}{\max(1, \mathrm{RMS}(U_t)/d)}

    Args:
        params, grads: parallel lists of real tensors; ``grads`` dense.
        row_vars, col_vars: for a param of 2 or more dims, its row factor (the param's shape with
            the last dim 1) and column factor (the second-to-last dim 1); ``None`` for the others.
        variances: for a 0-d or 1-d param, its full second moment (the param's shape); ``None``
            for the others. A list may be ``None`` as a whole where no param needs it.
        step: the step count *after* this update (1 on the first call): an int, or one int or
            0-d tensor per param.
        lr, beta2_decay, d, weight_decay: as in ``torch.optim.Adafactor``; ``eps1``, ``eps2`` are
            its ``eps`` pair. ``eps1=None`` takes each tensor's ``torch.finfo(dtype).eps``. A
            tensor ``lr`` is used as its value, so it gives the numbers of the same float (torch
            computes with a float32 tensor ``lr`` in float32: equal to rounding).

    Weight decay is decoupled and applied here, not composed in front with ``weight_decay_l2``:
    :math:`\alpha_t` is the RMS of the param *before* the decay, so the two steps cannot be
    separated without changing the numbers.

    Mutates params, row_vars, col_vars, variances. Never grads. Negate the grads for
    ``maximize``. The ops are those of torch's for-loop implementation (its default, for
    ``foreach=None`` on every device), so results equal it bit for bit; torch's ``foreach=True``
    path rounds the last step differently (a multiply, then an add, where this fuses them).
    Empty tensors are skipped (torch divides by their zero size).

    Example:
        >>> import torch
        >>> from optkernels import adafactor_update
        >>> params, grads = [torch.ones(2, 3), torch.ones(3)], [torch.ones(2, 3), torch.ones(3)]
        >>> row_vars, col_vars = [torch.zeros(2, 1), None], [torch.zeros(1, 3), None]
        >>> variances = [None, torch.zeros(3)]
        >>> adafactor_update(params, grads, row_vars, col_vars, variances, step=1, lr=0.01)
        >>> params[0]
        tensor([[0.9900, 0.9900, 0.9900],
                [0.9900, 0.9900, 0.9900]])

    Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
    Cost", ICML 2018, Algorithms 4 and 5, with torch.optim.Adafactor's use of ``lr`` and
    :math:`\epsilon_1` (see its documentation).
    """
    count = check_tensor_lists(params=params, grads=grads)
    row_vars, col_vars, variances = (_or_nones(lst, count) for lst in (row_vars, col_vars, variances))
    check_adafactor_state(params, row_vars, col_vars, variances)
    steps = step_values(step, count)
    lr = check_lr(lr)
    beta2_decay = as_float(beta2_decay, "beta2_decay")
    if not beta2_decay <= 0:
        raise ValueError(f"beta2_decay must be <= 0, got {beta2_decay}")
    if eps1 is not None:
        eps1 = check_nonnegative("eps1", eps1)
    eps2 = check_nonnegative("eps2", eps2)
    d = as_float(d, "d")
    if not d >= 1:
        raise ValueError(f"d (the clipping threshold) must be >= 1, got {d}")
    weight_decay = check_nonnegative("weight_decay", weight_decay)

    # whole tensors: a param's step size and clipping read its norm
    for (params_, grads_, row_vars_, col_vars_, variances_), t in grouped(
        [params, grads, row_vars, col_vars, variances], steps, slices=False
    ):
        kept = [i for i, param in enumerate(params_) if param.numel() > 0]
        params_, grads_, row_vars_, col_vars_, variances_ = (
            [lst[i] for i in kept] for lst in (params_, grads_, row_vars_, col_vars_, variances_))
        if not params_:
            continue
        beta2_complement = t**beta2_decay                                  # 1 - \hat\beta_{2,t}
        rho = min(lr, 1 / (t**0.5))
        alphas = [max(eps2, param.norm(2).item() / (param.numel() ** 0.5)) * rho for param in params_]
        if weight_decay != 0:
            scale_(params_, 1 - lr * weight_decay)
        group_eps1 = torch.finfo(params_[0].dtype).eps if eps1 is None else eps1
        var_estimates = [
            _factored_estimate(grad, row_var, col_var, beta2_complement, group_eps1) if row_var is not None
            else _full_estimate(grad, variance, beta2_complement)
            for grad, row_var, col_var, variance in zip(grads_, row_vars_, col_vars_, variances_)
        ]
        torch._foreach_clamp_min_(var_estimates, group_eps1 * group_eps1)  # eps1: the floor of sqrt(V)
        torch._foreach_rsqrt_(var_estimates)
        torch._foreach_mul_(var_estimates, grads_)                         # U_t
        for param, update, alpha in zip(params_, var_estimates, alphas):
            clip = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * d))
            param.add_(update, alpha=-alpha / clip)  # one rounding, as torch's for-loop path


def _factored_estimate(grad: Tensor, row_var: Tensor, col_var: Tensor, beta2_complement: float,
                       eps1: float) -> Tensor:
    """Update R_t and C_t in place; return the new tensor \\hat V_t."""
    # mean(g^2) over a dim as norm^2 / n: torch's way, with no g-sized temporary
    row_var.lerp_(torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1)), beta2_complement)
    col_var.lerp_(torch.norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2)), beta2_complement)
    return (row_var @ col_var).div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))


def _full_estimate(grad: Tensor, variance: Tensor, beta2_complement: float) -> Tensor:
    """Update V_t in place; return a copy to turn into the update."""
    variance.lerp_(grad * grad, beta2_complement)
    return variance.clone()


def _or_nones(tensors, count: int):
    return [None] * count if tensors is None else tensors


def check_adafactor_state(params: list[Tensor], row_vars, col_vars, variances) -> None:
    """Each param of 2+ dims has its row and column factors (no variance), each other param its
    variance (no factors), of the right shape, dtype and device; no param is complex.

    What :func:`adafactor_update` checks of its state; a wrapper calls it before mutating anything.
    """
    lists = {"row_vars": row_vars, "col_vars": col_vars, "variances": variances}
    for name, lst in lists.items():
        if isinstance(lst, Tensor) or not isinstance(lst, Sequence):
            raise TypeError(f"{name} must be a list of tensors or None, got {type(lst).__name__}")
        if len(lst) != len(params):
            raise ValueError(f"{name} has {len(lst)} entries but params has {len(params)}")
    for index, param in enumerate(params):
        if param.is_complex():
            raise TypeError(f"params[{index}] is complex: Adafactor does not support complex params")
        if param.dim() > 1:
            shapes = {"row_vars": (*param.shape[:-1], 1), "col_vars": (*param.shape[:-2], 1, param.shape[-1]),
                      "variances": None}
        else:
            shapes = {"row_vars": None, "col_vars": None, "variances": tuple(param.shape)}
        for name, lst in lists.items():
            _check_state(f"{name}[{index}]", lst[index], shapes[name], f"params[{index}]", param)


def _check_state(name: str, tensor, shape: tuple[int, ...] | None, param_name: str, param: Tensor) -> None:
    """``tensor`` is None where ``shape`` is, else a tensor of that shape on the param's dtype and device."""
    if shape is None or tensor is None:
        if tensor is not shape:
            needs = "None" if shape is None else f"a tensor of shape {shape}"
            raise ValueError(f"{name} must be {needs} for {param_name} of shape {tuple(param.shape)} (factored "
                             "into row_vars and col_vars from 2 dims, a full variance below)")
        return
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(tensor).__name__}")
    if tensor.is_sparse:
        raise RuntimeError(f"{name} is sparse; sparse tensors are not supported by these kernels")
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} but {param_name} of shape "
                         f"{tuple(param.shape)} needs {shape}")
    if tensor.dtype != param.dtype or tensor.device != param.device:
        raise TypeError(f"{name} is {tensor.dtype} on {tensor.device} but {param_name} is "
                        f"{param.dtype} on {param.device}")
