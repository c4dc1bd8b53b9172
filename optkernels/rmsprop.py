"""RMSprop, optionally centered and with momentum."""

import torch
from torch import Tensor

from ._compiled import lerp_, run_compiled
from ._math import grouped, prepared_grads, scale_, temporaries
from ._validation import (as_float, check_eps, check_flag, check_lr, check_nonnegative, check_tensor_lists,
                          optional_list)


def rmsprop_update(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor] | None = None,
    momentum_buffers: list[Tensor] | None = None,
    *,
    lr: float | Tensor,
    alpha: float = 0.99,
    eps: float = 1e-8,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
    compiled: bool = False,
) -> None:
    r"""RMSprop step, in place, on lists of tensors; centered when ``grad_avgs`` is given.

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2 \qquad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \text{ (centered)}

        d_t = \sqrt{v_t - \bar g_t^2} + \epsilon \text{ (centered) else } \sqrt{v_t} + \epsilon

        b_t = \mu b_{t-1} + g_t / d_t \qquad
        \theta_t = \theta_{t-1} - \gamma \cdot
        \begin{cases} b_t & \mu > 0 \\ g_t / d_t & \text{otherwise} \end{cases}

    with :math:`v` the ``square_avgs``, :math:`\bar g` the ``grad_avgs`` and :math:`b` the
    ``momentum_buffers``, all starting at zero.

    Args:
        params, grads, square_avgs: parallel lists of tensors.
        grad_avgs: the running means of the gradients (centered RMSprop), or None (or ``[]``).
        momentum_buffers: required when ``momentum > 0``; ignored otherwise.
        lr, alpha, eps, momentum: as in ``torch.optim.RMSprop``; ``lr`` may be a 1-element
            tensor; ``alpha`` lies in [0, 1].
        weight_decay, maximize: as in ``torch.optim.RMSprop`` (coupled decay), in the kernel's pass
            (see :func:`adam_update`).
        compiled: run :func:`rmsprop_rule` per tensor, compiled (see ``optkernels._compiled``):
            one pass over memory, equal to the foreach path to rounding.

    The rule does not depend on the step count, so there is no ``step`` argument.
    Mutates params, square_avgs, grad_avgs and momentum_buffers. Never grads. Weight decay
    composes in front, ``grads = weight_decay_l2(params, grads, ...)``, or runs in the kernel's
    pass as ``weight_decay``. The op order is
    torch.optim.RMSprop's (its for-loop and foreach paths run the same ops), so results equal it
    bit for bit on CPU in fp32, fp64 and complex (viewed as real pairs, as torch does), and its
    for-loop path in bf16 (its foreach path rounds ``alpha`` and ``momentum`` to bf16).

    Example:
        >>> import torch
        >>> from optkernels import rmsprop_update
        >>> params, grads, square_avgs = [torch.ones(2)], [torch.ones(2)], [torch.zeros(2)]
        >>> rmsprop_update(params, grads, square_avgs, lr=0.1, alpha=0.75, eps=0.0)
        >>> params[0], square_avgs[0]
        (tensor([0.8000, 0.8000]), tensor([0.2500, 0.2500]))

    Reference: Tieleman & Hinton, "Lecture 6.5 - RMSProp", COURSERA: Neural Networks for Machine
    Learning, 2012; Graves, "Generating Sequences With Recurrent Neural Networks", 2013, eq. 38-45
    (centered, with momentum).
    """
    grad_avgs, momentum_buffers = optional_list(grad_avgs), optional_list(momentum_buffers)
    lr, eps, alpha = check_lr(lr), check_eps(eps), check_alpha(alpha)
    momentum = check_nonnegative("momentum", momentum)
    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)
    if momentum == 0:
        momentum_buffers = None
    elif momentum_buffers is None:
        raise ValueError("momentum_buffers is required when momentum > 0")
    check_tensor_lists(optional=("grad_avgs", "momentum_buffers"), params=params, grads=grads,
                       square_avgs=square_avgs, grad_avgs=grad_avgs, momentum_buffers=momentum_buffers)
    for (params_, grads_, square_avgs_, grad_avgs_, buffers_), _ in grouped(
        [params, grads, square_avgs, grad_avgs, momentum_buffers],
        temporaries=temporaries(1, compiled=compiled, grads_prepared=bool(weight_decay or maximize))
    ):
        if compiled or torch.compiler.is_compiling():
            run_compiled(rmsprop_rule, [params_, grads_, square_avgs_, grad_avgs_, buffers_],
                         weight_decay=weight_decay, maximize=maximize, lr=lr, alpha=alpha, eps=eps,
                         momentum=momentum)
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=weight_decay, maximize=maximize)
        scale_(square_avgs_, alpha)                                          # v_t
        torch._foreach_addcmul_(square_avgs_, grads_, grads_, value=1 - alpha)
        if grad_avgs_ is not None:
            torch._foreach_lerp_(grad_avgs_, grads_, 1 - alpha)             # \bar g_t
            denoms = torch._foreach_addcmul(square_avgs_, grad_avgs_, grad_avgs_, value=-1)
            torch._foreach_sqrt_(denoms)
        else:
            denoms = torch._foreach_sqrt(square_avgs_)
        torch._foreach_add_(denoms, eps)                                     # d_t
        if buffers_ is not None:
            scale_(buffers_, momentum)                                       # b_t
            torch._foreach_addcdiv_(buffers_, grads_, denoms)
            torch._foreach_add_(params_, buffers_, alpha=-lr)
        else:
            torch._foreach_addcdiv_(params_, grads_, denoms, value=-lr)


def check_alpha(alpha) -> float:
    """``alpha`` lies in [0, 1]: above 1 the average takes a negative share of g^2 and can turn
    negative (torch.optim.RMSprop lets that through; its square root is then NaN)."""
    number = as_float(alpha, "alpha")
    if not 0.0 <= number <= 1.0:  # also false for NaN
        raise ValueError(f"Invalid alpha value: {alpha} (alpha must be in [0, 1])")
    return number


def rmsprop_rule(param, grad, square_avg, grad_avg, momentum_buffer, *, lr, alpha, eps, momentum) -> None:
    """:func:`rmsprop_update` on one tensor, the form ``compiled=True`` runs; scalars are 0-d
    tensors; a ``None`` ``grad_avg`` or ``momentum_buffer`` drops that branch."""
    square_avg.mul_(alpha).addcmul_(grad, grad * (1 - alpha))
    if grad_avg is not None:
        lerp_(grad_avg, grad, 1 - alpha)
        denom = (square_avg - grad_avg * grad_avg).sqrt() + eps
    else:
        denom = square_avg.sqrt() + eps
    if momentum_buffer is not None:
        momentum_buffer.mul_(momentum).add_(grad / denom)
        param.sub_(momentum_buffer * lr)
    else:
        param.sub_(grad / denom * lr)
