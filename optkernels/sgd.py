"""Stochastic gradient descent with (Nesterov) momentum."""

import torch
from torch import Tensor

from ._compiled import run_compiled
from ._math import grouped, prepared_grads, scale_, temporaries
from ._validation import check_flag, check_lr, check_nonnegative, check_tensor_lists, optional_list


def sgd_update(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None] | None = None,
    *,
    lr: float | Tensor,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
    compiled: bool = False,
) -> None:
    r"""SGD step, in place, on lists of tensors.

    .. math::
        b_t = \begin{cases} g_t & t = 1 \\ \mu b_{t-1} + (1-\tau) g_t & t > 1 \end{cases}
        \qquad
        \theta_t = \theta_{t-1} - \gamma \cdot
        \begin{cases} g_t + \mu b_t & \text{nesterov} \\ b_t & \text{otherwise} \end{cases}

    with :math:`b_t = g_t` throughout when ``momentum`` is 0 (then no buffers are needed).

    ``momentum_buffers`` holds one buffer per param, ``None`` for a param that has none yet: as
    in torch.optim.SGD, the first buffer is a copy of the gradient (not ``(1-\tau) g``), and
    this function puts it into the list in place of the ``None``.

    ``weight_decay`` and ``maximize`` prepare :math:`g_t` as torch.optim.SGD does (negated, then plus
    :math:`\lambda \theta_{t-1}`), in the kernel's pass; or compose :func:`weight_decay_l2` in front.

    Mutates params and momentum_buffers (the tensors, and the list where it held ``None``).
    Never grads (torch's foreach Nesterov path adds into ``grads``; this does not).
    With ``compiled=True`` it runs :func:`sgd_rule` per tensor, compiled (see
    ``optkernels._compiled``): one pass over memory, equal to the foreach path to rounding.

    Reference: Sutskever et al., "On the importance of initialization and momentum in deep
    learning", ICML 2013; the formulation of torch.optim.SGD.
    """
    momentum_buffers = optional_list(momentum_buffers)
    check_tensor_lists(optional=("momentum_buffers",), fillable=("momentum_buffers",),
                       params=params, grads=grads, momentum_buffers=momentum_buffers)
    lr = check_lr(lr)
    momentum = check_nonnegative("momentum", momentum)
    dampening = check_nonnegative("dampening", dampening)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    if momentum != 0 and momentum_buffers is None:
        raise ValueError("momentum_buffers is required when momentum != 0 (None entries are filled in)")

    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)

    if compiled or torch.compiler.is_compiling():
        _run_sgd_rule(params, grads, momentum_buffers if momentum != 0 else None, lr=lr, momentum=momentum,
                      dampening=dampening, nesterov=nesterov, weight_decay=weight_decay, maximize=maximize)
        return
    new = [i for i, buffer in enumerate(momentum_buffers or []) if buffer is None] if momentum != 0 else []
    for i in new:  # filled below with g_1, through views where a large param is cut into slices
        momentum_buffers[i] = torch.empty_like(grads[i], memory_format=torch.preserve_format)
    kept = sorted(set(range(len(params))) - set(new))
    for indices, first in ((kept, False), (new, True)):
        lists = [None if lst is None else [lst[i] for i in indices]
                 for lst in (params, grads, momentum_buffers if momentum != 0 else None)]
        for (params_, grads_, buffers_), _ in grouped(
            lists, temporaries=temporaries(1, compiled=False, grads_prepared=bool(weight_decay or maximize))
        ):
            grads_ = prepared_grads(params_, grads_, weight_decay=weight_decay, maximize=maximize)
            if buffers_ is None:
                directions = grads_
            else:
                if first:
                    torch._foreach_copy_(buffers_, grads_)                 # b_1 = g_1
                else:
                    scale_(buffers_, momentum)                               # b_t, t > 1
                    torch._foreach_add_(buffers_, grads_, alpha=1 - dampening)
                directions = torch._foreach_add(grads_, buffers_, alpha=momentum) if nesterov else buffers_
            torch._foreach_add_(params_, directions, alpha=-lr)


def _run_sgd_rule(params, grads, momentum_buffers, *, dampening, **scalars) -> None:
    # A missing buffer is created as zeros and gets g_1 undamped (0 * mu + 1 * g_1 = g_1, as the
    # foreach path's copy): one call for the new buffers, one for the others.
    new = {i for i, buffer in enumerate(momentum_buffers or []) if buffer is None}
    for i in new:
        momentum_buffers[i] = torch.zeros_like(grads[i], memory_format=torch.preserve_format)
    for indices, dampening_ in (([i for i in range(len(params)) if i not in new], dampening), (sorted(new), 0.0)):
        lists = [None if lst is None else [lst[i] for i in indices] for lst in (params, grads, momentum_buffers)]
        for lists_, _ in grouped(lists, temporaries=0):  # compiled rules allocate nothing
            run_compiled(sgd_rule, lists_, dampening=dampening_, **scalars)


def sgd_rule(param, grad, momentum_buffer, *, lr, momentum, dampening, nesterov) -> None:
    """:func:`sgd_update` on one tensor, the form ``compiled=True`` runs; scalars are 0-d tensors.
    ``momentum_buffer`` is ``None`` without momentum; a new buffer comes in as zeros, with
    ``dampening=0``."""
    direction = grad
    if momentum_buffer is not None:
        momentum_buffer.mul_(momentum).add_(grad * (1 - dampening))
        direction = grad + momentum_buffer * momentum if nesterov else momentum_buffer
    param.sub_(direction * lr)
