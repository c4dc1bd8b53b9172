"""Adamax: Adam with the infinity norm in place of the second moment."""

import torch
from torch import Tensor

from ._compiled import lerp_, run_compiled
from ._math import bias_correction, grouped, prepared_grads, scale_, temporaries
from ._validation import (check_beta, check_eps, check_flag, check_lr, check_nonnegative, check_tensor_lists,
                          step_values)


def adamax_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_infs: list[Tensor],
    *,
    step,
    lr: float | Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
    compiled: bool = False,
) -> None:
    r"""Adamax step, in place, on lists of tensors.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon) \qquad
        \theta_t = \theta_{t-1} - \frac{\gamma}{1-\beta_1^t} \frac{m_t}{u_t}

    Args:
        params, grads, exp_avgs, exp_infs: parallel lists of tensors (``exp_infs`` holds
            :math:`u`, the exponentially weighted infinity norm).
        step: the step count *after* this update (1 on the first call): an int, or one int or
            0-d tensor per param.
        lr, beta1, beta2, eps: as in ``torch.optim.Adamax``; ``lr`` may be a 1-element tensor.
        weight_decay, maximize: as in ``torch.optim.Adamax`` (coupled decay), in the kernel's pass
            (see :func:`adam_update`).
        compiled: run :func:`adamax_rule` per tensor, compiled (see ``optkernels._compiled``):
            one pass over memory, equal to the foreach path to rounding.

    Mutates params, exp_avgs and exp_infs. Never grads. Weight decay composes in front,
    ``grads = weight_decay_l2(params, grads, ...)``, or runs in the kernel's pass as
    ``weight_decay``. :math:`\epsilon` sits inside the maximum, as in torch.optim.Adamax (the paper
    has none). Complex params are treated as real pairs, as torch does: the norm is taken of the
    real and imaginary parts separately. The op order is torch.optim.Adamax's (its for-loop and
    foreach paths agree), so results equal it bit for bit on CPU.

    Example:
        >>> import torch
        >>> from optkernels import adamax_update
        >>> params, grads = [torch.ones(3)], [torch.full((3,), 0.5)]
        >>> exp_avgs, exp_infs = [torch.zeros(3)], [torch.zeros(3)]
        >>> adamax_update(params, grads, exp_avgs, exp_infs, step=1, lr=0.1)
        >>> params[0]
        tensor([0.9000, 0.9000, 0.9000])

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2014, Algorithm 2.
    """
    count = check_tensor_lists(params=params, grads=grads, exp_avgs=exp_avgs, exp_infs=exp_infs)
    steps = step_values(step, count)
    lr, eps = check_lr(lr), check_eps(eps)
    beta1, beta2 = check_beta("beta1", beta1), check_beta("beta2", beta2)
    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)
    for (params_, grads_, exp_avgs_, exp_infs_), t in grouped(
        [params, grads, exp_avgs, exp_infs], steps,
        temporaries=temporaries(1, compiled=compiled, grads_prepared=bool(weight_decay or maximize))
    ):
        if compiled or torch.compiler.is_compiling():
            run_compiled(adamax_rule, [params_, grads_, exp_avgs_, exp_infs_], weight_decay=weight_decay,
                         maximize=maximize, beta1=beta1, beta2=beta2, eps=eps,
                         step_size=lr / bias_correction(beta1, t))
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=weight_decay, maximize=maximize)
        torch._foreach_lerp_(exp_avgs_, grads_, 1 - beta1)                  # m_t
        scale_(exp_infs_, beta2)                                             # u_t
        norms = torch._foreach_abs(grads_)
        torch._foreach_add_(norms, eps)
        torch._foreach_maximum_(exp_infs_, norms)
        torch._foreach_addcdiv_(params_, exp_avgs_, exp_infs_, (lr / bias_correction(beta1, t)) * -1)


def adamax_rule(param, grad, exp_avg, exp_inf, *, beta1, beta2, eps, step_size) -> None:
    """:func:`adamax_update` on one tensor, the form ``compiled=True`` runs; scalars are 0-d tensors,
    ``step_size`` is :math:`\\gamma/(1-\\beta_1^t)`."""
    lerp_(exp_avg, grad, 1 - beta1)
    exp_inf.copy_(torch.maximum(exp_inf * beta2, grad.abs() + eps))
    param.sub_(exp_avg / exp_inf * step_size)
