"""Adafactor: Adam-like steps with second moments factored into row and column means."""

from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter, is_, itemgetter

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
    Empty tensors are skipped (torch divides by their zero size). On the CPU, a large vector or
    matrix makes its U_t in one tensor reused for all of them, each op writing into it, and a
    matrix's column means of g^2 are summed in torch's order without its strided pass per column.

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
        alphas = [max(eps2, norm / (param.numel() ** 0.5)) * rho for param, norm in zip(params_, _norms(params_))]
        if weight_decay != 0:
            scale_(params_, 1 - lr * weight_decay)
        group_eps1 = torch.finfo(params_[0].dtype).eps if eps1 is None else eps1
        tensors = list(zip(params_, grads_, row_vars_, col_vars_, variances_, alphas))
        small = [entry for entry in tensors if not _is_large(entry[0])]
        large = [entry for entry in tensors if _is_large(entry[0])]
        if small:  # all at once, foreach
            small_params, small_grads, small_row_vars, small_col_vars, small_variances, small_alphas = zip(*small)
            updates = _small_updates(small_grads, small_row_vars, small_col_vars, small_variances,
                                     beta2_complement, group_eps1)
            _step(small_params, updates, small_alphas, d)
        if large:  # one at a time, each U_t made in the same memory: no temporaries, no extra passes
            scratch = params_[0].new_empty(max(entry[0].numel() for entry in large))
        for param, grad, row_var, col_var, variance, alpha in large:
            update = scratch[:param.numel()].view_as(param)
            if row_var is not None:
                _factored_update(grad, row_var, col_var, update, beta2_complement, group_eps1)
            else:
                _full_update(grad, variance, update, beta2_complement, group_eps1)
            _step([param], [update], [alpha], d)


# torch runs an op on fewer elements than this on one thread (at::internal::GRAIN_SIZE)
SERIAL_NUMEL = 2**15


def _is_large(param: Tensor) -> bool:
    """Whether a param's U_t is made on its own, in one reused tensor: a vector or matrix on the CPU
    with more elements than one thread takes. Smaller ones, higher dims and other devices go
    through foreach ops."""
    return param.numel() > SERIAL_NUMEL and param.dim() <= 2 and param.device.type == "cpu"


def _norms(tensors) -> list[float]:
    """Each tensor's norm, equal to ``tensor.norm(2).item()``, in a few calls and one sync.

    On the CPU, small contiguous tensors of one shape are stacked as the rows of matrices of at
    most ``SERIAL_NUMEL`` elements: torch reduces each row alone, in the order it reduces the tensor
    alone, so the row norms are theirs (and each matrix is reduced on one thread, no wait for a
    second one). Other devices reduce in other orders: one norm per tensor there.
    """
    if tensors[0].device.type != "cpu":
        return torch.stack([tensor.norm(2) for tensor in tensors]).tolist()
    by_shape: dict[torch.Size, list[int]] = {}
    alone = []
    for index, tensor in enumerate(tensors):
        if tensor.numel() <= SERIAL_NUMEL and tensor.is_contiguous():
            by_shape.setdefault(tensor.shape, []).append(index)
        else:
            alone.append(index)
    parts, order = [], []
    for shape, indices in by_shape.items():
        count = SERIAL_NUMEL // max(1, shape.numel())  # rows per matrix
        for start in range(0, len(indices), count):
            rows = indices[start:start + count]
            matrix = torch.stack([tensors[i] for i in rows]).view(len(rows), -1)
            parts.append(torch.linalg.vector_norm(matrix, dim=-1))
            order += rows
    if alone:
        parts.append(torch.stack(torch._foreach_norm([tensors[i] for i in alone])))
        order += alone
    norms = [0.0] * len(tensors)
    for index, value in zip(order, torch.cat(parts).tolist()):
        norms[index] = value
    return norms


def _step(params, updates, alphas, d: float) -> None:
    """theta_t = theta_{t-1} - alpha_t U_t / max(1, RMS(U_t) / d)."""
    for param, update, alpha, norm in zip(params, updates, alphas, _norms(updates)):
        clip = max(1.0, norm / ((update.numel() ** 0.5) * d))
        param.add_(update, alpha=-alpha / clip)  # one rounding, as torch's for-loop path


def _small_updates(grads, row_vars, col_vars, variances, beta2_complement: float, eps1: float) -> list[Tensor]:
    """U_t of each tensor, updating R_t, C_t or V_t in place: torch's ops, foreach where they are
    elementwise. (Not on stacked copies: an op may round a tensor's last few elements apart.)"""
    updates: list[Tensor | None] = [None] * len(grads)
    full = [i for i, row_var in enumerate(row_vars) if row_var is None]
    if full:
        full_grads, full_variances = [grads[i] for i in full], [variances[i] for i in full]
        torch._foreach_lerp_(full_variances, torch._foreach_mul(full_grads, full_grads), beta2_complement)
        for i, estimate in zip(full, torch._foreach_clamp_min(full_variances, eps1 * eps1)):  # copies: V_t stays
            updates[i] = estimate
    for i, (grad, row_var, col_var) in enumerate(zip(grads, row_vars, col_vars)):
        if row_var is not None:
            updates[i] = _factored_estimate(grad, row_var, col_var, beta2_complement, eps1).clamp_min_(eps1 * eps1)
    torch._foreach_rsqrt_(updates)                                  # eps1 above: the floor of sqrt(V)
    torch._foreach_mul_(updates, grads)                             # U_t
    return updates


def _factored_estimate(grad: Tensor, row_var: Tensor, col_var: Tensor, beta2_complement: float,
                       eps1: float) -> Tensor:
    """Update R_t and C_t in place; return the new tensor \\hat V_t."""
    # mean(g^2) over a dim as norm^2 / n: torch's way, with no g-sized temporary
    row_var.lerp_(torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1)), beta2_complement)
    col_var.lerp_(torch.norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2)), beta2_complement)
    return (row_var @ col_var).div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))


def _full_update(grad: Tensor, variance: Tensor, update: Tensor, beta2_complement: float, eps1: float) -> None:
    """Update V_t in place; write U_t into ``update``: torch's ops, each result in ``update``."""
    variance.lerp_(torch.mul(grad, grad, out=update), beta2_complement)   # g^2 in U's place
    torch.clamp_min(variance, eps1 * eps1, out=update).rsqrt_().mul_(grad)


def _factored_update(grad: Tensor, row_var: Tensor, col_var: Tensor, update: Tensor, beta2_complement: float,
                     eps1: float) -> None:
    """Update R_t and C_t of a matrix in place; write U_t into ``update``: torch's ops, each result
    in ``update``."""
    row_var.lerp_(torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1)), beta2_complement)
    col_var.lerp_(_column_norms(grad).square_().div_(grad.size(-2)), beta2_complement)
    # R C as an outer product: equal to torch's R @ C (one product per entry, nothing summed)
    torch.mul(row_var, col_var, out=update).div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
    update.clamp_min_(eps1 * eps1).rsqrt_().mul_(grad)


def _column_norms(grad: Tensor) -> Tensor:
    """``torch.norm(grad, dim=-2, keepdim=True)`` of a matrix, equal to it, in one pass over ``grad``.

    torch reduces each column of a contiguous float32 matrix on its own, down the strided column (a
    pass over memory per column): a sum of squares rounded after each row. ``index_add_`` adds the
    rows into one accumulator in that order, a block of rows at a time; the square root is taken
    in float64 and rounded, which is exact (torch's float32 ``sqrt`` kernel is not correctly
    rounded; its reduction's scalar ``sqrt`` is). Other matrices go to torch.
    """
    if grad.dtype != torch.float32 or not grad.is_contiguous() or grad.size(-1) == 1 or grad.device.type != "cpu":
        return torch.norm(grad, dim=-2, keepdim=True)
    sums = grad.new_zeros((1, grad.size(-1)))
    rows = max(1, SERIAL_NUMEL // grad.size(-1))  # each block's squares on one thread, in cache
    squares = grad.new_empty((min(rows, grad.size(0)), grad.size(-1)))
    # int32: with int64 indices torch hands this to scatter_add_, which spreads each call over threads
    into_first_row = torch.zeros(squares.size(0), dtype=torch.int32, device=grad.device)
    for start in range(0, grad.size(0), rows):
        grad_block = grad[start:start + rows]
        count = grad_block.size(0)
        sums.index_add_(0, into_first_row[:count], torch.mul(grad_block, grad_block, out=squares[:count]))
    return sums.double().sqrt_().float()


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
    if _state_fits(params, row_vars, col_vars, variances):
        return
    for index, param in enumerate(params):  # find what is wrong, and name it
        if param.is_complex():
            raise TypeError(f"params[{index}] is complex: Adafactor does not support complex params")
        if param.dim() > 1:
            shapes = {"row_vars": (*param.shape[:-1], 1), "col_vars": (*param.shape[:-2], 1, param.shape[-1]),
                      "variances": None}
        else:
            shapes = {"row_vars": None, "col_vars": None, "variances": tuple(param.shape)}
        for name, lst in lists.items():
            _check_state(f"{name}[{index}]", lst[index], shapes[name], f"params[{index}]", param)


_shape_dtype_device = attrgetter("shape", "dtype", "device")


def _state_fits(params: list[Tensor], row_vars, col_vars, variances) -> bool:
    """Whether the state is right, checked the quick way: C-level maps over the vectors (a step on a
    thousand tensors runs this every call), a loop over the matrices only."""
    signatures = list(map(_shape_dtype_device, params))
    if any(dtype.is_complex for dtype in set(map(itemgetter(1), signatures))):
        return False
    dims = list(map(Tensor.dim, params))
    matrices = [i for i, dim in enumerate(dims) if dim > 1]
    if not all(_factors_fit(params[i], row_vars[i], col_vars[i], variances[i]) for i in matrices):
        return False
    if matrices:
        vectors = [i for i, dim in enumerate(dims) if dim <= 1]
        row_vars, col_vars, variances, signatures = ([lst[i] for i in vectors]
                                                     for lst in (row_vars, col_vars, variances, signatures))
    return (all(map(is_, row_vars, repeat(None))) and all(map(is_, col_vars, repeat(None)))
            and all(map(isinstance, variances, repeat(Tensor)))
            and not any(map(attrgetter("is_sparse"), variances))
            and list(map(_shape_dtype_device, variances)) == signatures)


def _factors_fit(param: Tensor, row_var, col_var, variance) -> bool:
    if variance is not None or not isinstance(row_var, Tensor) or not isinstance(col_var, Tensor):
        return False
    shape, dtype, device = param.shape, param.dtype, param.device
    return not (row_var.is_sparse or col_var.is_sparse or row_var.shape != (*shape[:-1], 1)
                or col_var.shape != (*shape[:-2], 1, shape[-1]) or row_var.dtype != dtype or col_var.dtype != dtype
                or row_var.device != device or col_var.device != device)


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
