"""Adam and AMSGrad."""

import torch
from torch import Tensor

from ._compiled import lerp_, run_compiled
from ._math import bias_correction, grouped, prepared_grads, rsqrt, scale_, temporaries
from ._validation import (check_beta, check_eps, check_finite, check_flag, check_lr, check_nonnegative,
                          check_tensor_lists, optional_list, step_values)


def adam_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None = None,
    *,
    step,
    lr: float | Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
    compiled: bool = False,
    param_scale: float | None = None,
) -> None:
    r"""Adam step, in place, on lists of tensors; AMSGrad when ``max_exp_avg_sqs`` is given.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \qquad
        \hat v_t = \max(\hat v_{t-1}, v_t) \text{ (AMSGrad) else } v_t

        \theta_t = \theta_{t-1} - \frac{\alpha}{1-\beta_1^t}
                   \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    Args:
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs: parallel lists of tensors.
        step: the step count *after* this update (1 on the first call): an int, or one int or
            0-d tensor per param.
        lr, beta1, beta2, eps: as in ``torch.optim.Adam``; ``lr`` may be a 1-element tensor.
        weight_decay, maximize: as in ``torch.optim.Adam``: :math:`g_t` is negated, then gets
            :math:`\lambda \theta_{t-1}` (coupled L2 decay), before the update and in its pass
            (see :func:`~optkernels._math.prepared_grads`).
        compiled: run :func:`adam_rule` per tensor, compiled (see ``optkernels._compiled``):
            one pass over memory, equal to the foreach path to rounding.
        param_scale: multiply params by this first: AdamW's decoupled weight decay in the same
            pass (:func:`~optkernels.weight_decay.decoupled_scale`); None leaves params alone.

    Mutates params, exp_avgs, exp_avg_sqs (and max_exp_avg_sqs). Never grads. Weight decay
    composes in front, ``grads = weight_decay_l2(params, grads, ...)``, or runs in the kernel's
    pass: coupled as ``weight_decay``, decoupled as ``param_scale``; the same numbers.
    The op order is torch.optim.Adam's, so results equal it bit for bit on CPU.

    Example:
        >>> import torch
        >>> from optkernels import adam_update
        >>> params, grads = [torch.ones(3)], [torch.full((3,), 0.5)]
        >>> exp_avgs, exp_avg_sqs = [torch.zeros(3)], [torch.zeros(3)]
        >>> adam_update(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.1)
        >>> params[0]
        tensor([0.9000, 0.9000, 0.9000])

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2014, Algorithm 1;
    Reddi et al., "On the Convergence of Adam and Beyond", 2018 (AMSGrad).
    """
    max_exp_avg_sqs = optional_list(max_exp_avg_sqs)
    count = check_tensor_lists(optional=("max_exp_avg_sqs",), params=params, grads=grads, exp_avgs=exp_avgs,
                               exp_avg_sqs=exp_avg_sqs, max_exp_avg_sqs=max_exp_avg_sqs)
    steps = step_values(step, count)
    lr, eps = check_lr(lr), check_eps(eps)
    param_scale = None if param_scale is None else check_finite("param_scale", param_scale)
    beta1, beta2 = check_beta("beta1", beta1), check_beta("beta2", beta2)
    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)
    for (params_, grads_, exp_avgs_, exp_avg_sqs_, max_exp_avg_sqs_), t in grouped(
        [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs], steps,
        temporaries=temporaries(1, compiled=compiled, grads_prepared=bool(weight_decay or maximize))
    ):
        if compiled or torch.compiler.is_compiling():
            run_compiled(adam_rule, [params_, grads_, exp_avgs_, exp_avg_sqs_, max_exp_avg_sqs_],
                         weight_decay=weight_decay, maximize=maximize, param_scale=param_scale,
                         beta1=beta1, beta2=beta2, eps=eps,
                         step_size=lr / bias_correction(beta1, t),
                         rsqrt_bias_correction2=rsqrt(bias_correction(beta2, t)))
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=weight_decay, maximize=maximize)
        if param_scale is not None:
            scale_(params_, param_scale)                                     # decoupled decay
        torch._foreach_lerp_(exp_avgs_, grads_, 1 - beta1)                  # m_t
        scale_(exp_avg_sqs_, beta2)                                          # v_t
        torch._foreach_addcmul_(exp_avg_sqs_, grads_, grads_, 1 - beta2)
        if max_exp_avg_sqs_ is not None:
            torch._foreach_maximum_(max_exp_avg_sqs_, exp_avg_sqs_)         # \hat v_t
            exp_avg_sqs_ = max_exp_avg_sqs_
        denoms = torch._foreach_sqrt(exp_avg_sqs_)
        torch._foreach_div_(denoms, bias_correction(beta2, t) ** 0.5)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(params_, exp_avgs_, denoms, (lr / bias_correction(beta1, t)) * -1)


def adam_rule(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, beta1, beta2, eps, step_size,
              rsqrt_bias_correction2) -> None:
    """:func:`adam_update` on one tensor, the form ``compiled=True`` runs; scalars are 0-d tensors,
    ``step_size`` is :math:`\\alpha/(1-\\beta_1^t)`, the bias corrections are computed outside
    (the second as :math:`1/\\sqrt{1-\\beta_2^t}`: a multiply costs less than a divide per element)."""
    lerp_(exp_avg, grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad * (1 - beta2))
    if max_exp_avg_sq is not None:
        exp_avg_sq = max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq, exp_avg_sq))
    denom = exp_avg_sq.sqrt() * rsqrt_bias_correction2 + eps
    param.sub_(exp_avg / denom * step_size)
