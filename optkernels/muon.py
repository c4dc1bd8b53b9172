"""Muon: momentum SGD whose update matrices are orthogonalised by a Newton–Schulz iteration."""

import math
from collections.abc import Sequence
from numbers import Integral

import torch
from torch import Tensor

from ._math import grouped
from ._validation import as_float, check_eps, check_lr, check_nonnegative, check_tensor_lists

# Keller Jordan's quintic coefficients and step count, torch.optim.Muon's defaults.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def muon_update(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float | Tensor,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: Sequence[float] = NS_COEFFICIENTS,
    eps: float = EPS,
    ns_steps: int = NS_STEPS,
    adjust_lr_fn: str | None = None,
) -> None:
    r"""Muon step, in place, on lists of 2-D tensors.

    .. math::
        B_t = \mu B_{t-1} + (1-\mu) g_t \qquad
        \widetilde B_t = \begin{cases} (1-\mu) g_t + \mu B_t & \text{nesterov} \\
                                       B_t & \text{otherwise} \end{cases}

        O_t = \mathrm{NS}^{(a,b,c)}_k\big(\widetilde B_t / \max(\lVert \widetilde B_t \rVert_F, \epsilon)\big)
        \qquad X \leftarrow aX + (bA + cA^2)X, \quad A = XX^\top \quad (k \text{ times})

        \theta_t = \theta_{t-1} - \gamma\, s(m, n)\, O_t \qquad
        s(m, n) = \begin{cases} \sqrt{\max(1, m/n)} & \text{adjust\_lr\_fn None or "original"} \\
                                0.2 \sqrt{\max(m, n)} & \text{"match\_rms\_adamw"} \end{cases}

    for an :math:`m \times n` param. The iteration runs in bfloat16 whatever the params' dtype,
    on the transpose when :math:`m > n` (so :math:`A` is the smaller Gram matrix), as torch does.
    The momentum is an EMA (``lerp``), as torch.optim.Muon's code computes it.

    Args:
        params, grads, momentum_buffers: parallel lists of 2-D real tensors (buffers start at zero).
        lr, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn: as in
            ``torch.optim.Muon``; ``lr`` may be a 1-element tensor, then ``lr * s(m, n)`` is
            computed in its dtype, as torch does.

    Mutates params and momentum_buffers. Never grads. Weight decay (torch's decoupled
    ``1 - lr * weight_decay``) is composed in front with ``weight_decay_l2(..., decoupled=True)``.
    The op order is torch.optim.Muon's (it has one path), so results equal it bit for bit on
    CPU; unlike torch 2.13 this never divides a bfloat16 momentum buffer in place (with
    ``nesterov=False`` torch normalises the buffer itself; fixed upstream in pytorch#194664).

    Example:
        >>> import torch
        >>> from optkernels import muon_update
        >>> params, grads, buffers = [torch.zeros(2, 2)], [torch.eye(2)], [torch.zeros(2, 2)]
        >>> muon_update(params, grads, buffers, lr=0.1, momentum=0.0)
        >>> params[0]  # -lr * O: the quintic iteration overshoots 1 on purpose (here to 1.125)
        tensor([[-0.1125,  0.0000],
                [ 0.0000, -0.1125]])

    Reference: K. Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
    https://kellerjordan.github.io/posts/muon/; J. Liu et al., "Muon is Scalable for LLM
    Training", 2025 (``match_rms_adamw``).
    """
    check_tensor_lists(params=params, grads=grads, momentum_buffers=momentum_buffers)
    check_matrices(params, lambda index: f"params[{index}]")
    lr_value = check_lr(lr)
    momentum = check_nonnegative("momentum", momentum)
    ns_coefficients, ns_steps = check_ns_options(ns_coefficients, ns_steps)
    eps = check_eps(eps)
    check_adjust_lr_fn(adjust_lr_fn)
    # torch keeps a tensor lr as a 0-d tensor, so lr * s(m, n) rounds in the lr's dtype
    lr = lr.squeeze() if isinstance(lr, Tensor) else lr_value

    # whole matrices: Newton-Schulz orthogonalises each one
    for (params_, grads_, buffers_), _ in grouped([params, grads, momentum_buffers], slices=False):
        torch._foreach_lerp_(buffers_, grads_, 1 - momentum)                     # B_t
        updates = torch._foreach_lerp(grads_, buffers_, momentum) if nesterov else buffers_
        by_step_size: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
        for param, update in zip(params_, updates):
            orthogonal = newton_schulz(update, ns_coefficients, ns_steps, eps)   # O_t
            step_size = float(-(lr * lr_ratio(param.shape, adjust_lr_fn)))
            targets, steps = by_step_size.setdefault(step_size, ([], []))
            targets.append(param)
            steps.append(orthogonal)
        for step_size, (targets, steps) in by_step_size.items():
            torch._foreach_add_(targets, steps, alpha=step_size)                 # theta_t


def newton_schulz(matrix: Tensor, ns_coefficients: Sequence[float], ns_steps: int, eps: float) -> Tensor:
    """The quintic Newton–Schulz iteration of ``matrix`` (2-D), in bfloat16, in torch's op order.

    Returns a new bfloat16 tensor close to :math:`UV^\\top` (singular values roughly in
    [0.7, 1.2]) for :math:`U S V^\\top` the SVD of ``matrix``; ``matrix`` is not modified.
    """
    a, b, c = ns_coefficients
    # a copy even when matrix is bfloat16 already (torch 2.13 divides that one in place)
    ortho = matrix.to(torch.bfloat16, copy=True)
    tall = matrix.size(0) > matrix.size(1)
    if tall:  # iterate on the wide side: the Gram matrix is then the smaller one
        ortho = ortho.T
    ortho.div_(ortho.norm().clamp(min=eps))  # Frobenius norm >= spectral norm: now at most 1
    for _ in range(ns_steps):
        gram = ortho @ ortho.T
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)      # bA + cA^2
        ortho = torch.addmm(ortho, polynomial, ortho, beta=a)            # aX + (bA + cA^2)X
    return ortho.T if tall else ortho


def lr_ratio(shape: Sequence[int], adjust_lr_fn: str | None) -> float:
    """The factor torch.optim.Muon applies to lr for an ``m x n`` param (see :func:`muon_update`)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols))


def check_matrices(params: Sequence[Tensor], label, *, real: bool = True) -> None:
    """Every param is a 2-D tensor, and a real one if ``real``; ``label(index)`` names the offending one.

    Exception types and message starts are torch.optim.Muon's.
    """
    for index, param in enumerate(params):
        if real and param.is_complex():
            raise RuntimeError(f"Muon does not support complex parameters, but {label(index)} is {param.dtype}")
        if param.dim() != 2:
            raise ValueError(f"Muon only supports 2D parameters whereas we found a parameter with size: "
                             f"{param.size()} ({label(index)})")


def check_ns_options(ns_coefficients, ns_steps) -> tuple[tuple[float, float, float], int]:
    """``ns_coefficients`` is three finite numbers, ``ns_steps`` an int in [0, 100)."""
    if isinstance(ns_coefficients, (str, bytes)) or not isinstance(ns_coefficients, Sequence) \
            or len(ns_coefficients) != 3:
        raise ValueError(f"ns_coefficients must be a tuple of exactly 3 values (a, b, c), got {ns_coefficients!r}")
    coefficients = tuple(as_float(value, f"ns_coefficients[{i}]") for i, value in enumerate(ns_coefficients))
    if not all(map(math.isfinite, coefficients)):
        raise ValueError(f"ns_coefficients must be finite, got {ns_coefficients!r}")
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, Integral):
        raise TypeError(f"ns_steps must be an int, got {ns_steps!r}")
    if not 0 <= ns_steps < 100:
        raise ValueError(f"ns_steps must be in [0, 100) (Number of steps must be less than 100 for "
                         f"computational efficiency), got {ns_steps}")
    return coefficients, int(ns_steps)


def check_adjust_lr_fn(adjust_lr_fn) -> None:
    if adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported "
                         f"(adjust_lr_fn must be one of {ADJUST_LR_FNS})")
