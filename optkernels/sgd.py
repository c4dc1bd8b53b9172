"""Stochastic gradient descent with (Nesterov) momentum."""

import torch
from torch import Tensor

from ._math import grouped, scale_
from ._validation import check_lr, check_nonnegative, check_tensor_lists, optional_list


def sgd_update(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None] | None = None,
    *,
    lr: float | Tensor,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
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

    Mutates params and momentum_buffers (the tensors, and the list where it held ``None``).
    Never grads (torch's foreach Nesterov path adds into ``grads``; this does not).

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

    if momentum != 0:
        kept = [i for i, buffer in enumerate(momentum_buffers) if buffer is not None]
        for (buffers_, grads_), _ in grouped([[momentum_buffers[i] for i in kept], [grads[i] for i in kept]]):
            scale_(buffers_, momentum)                                       # b_t, t > 1
            torch._foreach_add_(buffers_, grads_, alpha=1 - dampening)
        for i, buffer in enumerate(momentum_buffers):
            if buffer is None:                                              # b_1 = g_1
                momentum_buffers[i] = grads[i].detach().clone()
    for (params_, grads_, buffers_), _ in grouped([params, grads, momentum_buffers if momentum != 0 else None]):
        if buffers_ is None:
            directions = grads_
        elif nesterov:
            directions = torch._foreach_add(grads_, buffers_, alpha=momentum)
        else:
            directions = buffers_
        torch._foreach_add_(params_, directions, alpha=-lr)
