"""Adadelta: steps scaled by the ratio of running RMS of past updates to that of gradients."""

import torch
from torch import Tensor

from ._compiled import run_compiled
from ._math import grouped, prepared_grads, scale_, temporaries
from ._validation import as_float, check_eps, check_flag, check_lr, check_nonnegative, check_tensor_lists


def adadelta_update(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    acc_deltas: list[Tensor],
    *,
    lr: float | Tensor,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    maximize: bool = False,
    compiled: bool = False,
) -> None:
    r"""Adadelta step, in place, on lists of tensors.

    .. math::
        v_t = \rho v_{t-1} + (1-\rho) g_t^2 \qquad
        \Delta_t = \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t \qquad
        u_t = \rho u_{t-1} + (1-\rho) \Delta_t^2 \qquad
        \theta_t = \theta_{t-1} - \gamma \Delta_t

    with :math:`v` the ``square_avgs`` and :math:`u` the ``acc_deltas`` (both start at zero).

    Args:
        params, grads, square_avgs, acc_deltas: parallel lists of tensors.
        lr, rho, eps: as in ``torch.optim.Adadelta`` (whose ``lr`` default is 1.0); ``lr`` may
            be a 1-element tensor; ``rho`` lies in [0, 1].
        weight_decay, maximize: as in ``torch.optim.Adadelta`` (coupled decay), in the kernel's
            pass (see :func:`adam_update`).
        compiled: run :func:`adadelta_rule` per tensor, compiled (see ``optkernels._compiled``):
            one pass over memory, equal to the foreach path to rounding.

    The rule does not depend on the step count, so there is no ``step`` argument.
    Mutates params, square_avgs and acc_deltas. Never grads. Weight decay composes in
    front, ``grads = weight_decay_l2(params, grads, ...)``, or runs in the kernel's pass as
    ``weight_decay``. The op order is torch.optim.Adadelta's
    (its for-loop and foreach paths run the same ops), so results equal it bit for bit on CPU in
    fp32 and fp64, and its for-loop path in bf16 (its foreach path rounds ``rho`` to bf16).
    Complex params are viewed as real pairs, as torch's foreach path does; its for-loop path
    adds the last step as complex numbers, which rounds differently (unless ``lr`` is a power of 2).

    Example:
        >>> import torch
        >>> from optkernels import adadelta_update
        >>> params, grads = [torch.ones(2)], [torch.ones(2)]
        >>> square_avgs, acc_deltas = [torch.zeros(2)], [torch.zeros(2)]
        >>> adadelta_update(params, grads, square_avgs, acc_deltas, lr=1.0, rho=0.0)
        >>> params[0], acc_deltas[0]  # the first step is about sqrt(eps): Adadelta starts slowly
        (tensor([0.9990, 0.9990]), tensor([1.0000e-06, 1.0000e-06]))

    Reference: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012, Algorithm 1.
    """
    check_tensor_lists(params=params, grads=grads, square_avgs=square_avgs, acc_deltas=acc_deltas)
    lr, eps, rho = check_lr(lr), check_eps(eps), check_rho(rho)
    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)
    for (params_, grads_, square_avgs_, acc_deltas_), _ in grouped(
        [params, grads, square_avgs, acc_deltas],  # the foreach path makes stds and deltas
        temporaries=temporaries(2, compiled=compiled, grads_prepared=bool(weight_decay or maximize))
    ):
        if compiled or torch.compiler.is_compiling():
            run_compiled(adadelta_rule, [params_, grads_, square_avgs_, acc_deltas_], weight_decay=weight_decay,
                         maximize=maximize, lr=lr, rho=rho, eps=eps)
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=weight_decay, maximize=maximize)
        scale_(square_avgs_, rho)                                            # v_t
        torch._foreach_addcmul_(square_avgs_, grads_, grads_, value=1 - rho)
        stds = torch._foreach_add(square_avgs_, eps)
        torch._foreach_sqrt_(stds)
        deltas = torch._foreach_add(acc_deltas_, eps)                        # \Delta_t
        torch._foreach_sqrt_(deltas)
        torch._foreach_div_(deltas, stds)
        torch._foreach_mul_(deltas, grads_)
        scale_(acc_deltas_, rho)                                             # u_t
        torch._foreach_addcmul_(acc_deltas_, deltas, deltas, value=1 - rho)
        torch._foreach_add_(params_, deltas, alpha=-lr)


def check_rho(rho) -> float:
    """``rho`` lies in [0, 1] (1 keeps the averages at their start: zero)."""
    number = as_float(rho, "rho")
    if not 0.0 <= number <= 1.0:  # also false for NaN
        raise ValueError(f"Invalid rho value: {rho} (rho must be in [0, 1])")
    return number


def adadelta_rule(param, grad, square_avg, acc_delta, *, lr, rho, eps) -> None:
    """:func:`adadelta_update` on one tensor, the form ``compiled=True`` runs; scalars are 0-d tensors."""
    square_avg.mul_(rho).addcmul_(grad, grad * (1 - rho))
    std = (square_avg + eps).sqrt()
    delta = (acc_delta + eps).sqrt() / std * grad
    acc_delta.mul_(rho).addcmul_(delta, delta * (1 - rho))
    param.sub_(delta * lr)
