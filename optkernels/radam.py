"""RAdam: Adam with the variance of the adaptive learning rate rectified."""

import torch
from torch import Tensor

from ._compiled import lerp_, run_compiled
from .adam import low_precision_update
from ._math import bias_correction, grouped, prepared_grads, scale_, sma_length, temporaries
from ._validation import (check_beta, check_eps, check_finite, check_flag, check_lr, check_nonnegative,
                          check_tensor_lists, step_values)


def radam_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
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
    state_precision: str = "fp32",
    exp_avg_scales: list[Tensor | None] | None = None,
    exp_avg_sq_scales: list[Tensor | None] | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None:
    r"""RAdam step, in place, on lists of tensors.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

        \rho_\infty = \tfrac{2}{1-\beta_2} - 1 \qquad
        \rho_t = \rho_\infty - \tfrac{2 t \beta_2^t}{1-\beta_2^t}

        \theta_t = \theta_{t-1} - \frac{\alpha}{1-\beta_1^t} m_t \cdot
        \begin{cases}
            r_t \sqrt{1-\beta_2^t} / (\sqrt{v_t} + \epsilon) & \rho_t > 5, \quad
            r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}} \\
            1 & \text{otherwise (an SGD-with-momentum step)}
        \end{cases}

    Arguments as :func:`adam_update` (no AMSGrad; ``compiled`` runs :func:`radam_rule`;
    ``weight_decay`` and ``maximize`` prepare the grads as torch.optim.RAdam's; ``param_scale`` is
    RAdamW's decoupled weight decay, in the same pass; ``state_precision``, ``exp_avg_scales``,
    ``exp_avg_sq_scales``, ``stochastic_rounding`` and ``seed`` as :func:`adam_update`'s, the
    update computed in float32). Mutates
    params, exp_avgs and exp_avg_sqs. Never grads. The op order is ``torch.optim.RAdam(foreach=True)``'s,
    which it equals bit for bit on CPU; torch's for-loop path orders the ops differently (equal to
    rounding).

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.
    """
    if state_precision != "fp32" or stochastic_rounding:
        low_precision_update(params, grads, exp_avgs, exp_avg_sqs, None, step=step, lr=lr, beta1=beta1, beta2=beta2,
                             eps=eps, weight_decay=weight_decay, maximize=maximize, compiled=compiled,
                             param_scale=param_scale, state_precision=state_precision, exp_avg_scales=exp_avg_scales,
                             exp_avg_sq_scales=exp_avg_sq_scales, stochastic_rounding=stochastic_rounding, seed=seed,
                             schedule=_radam_schedule)
        return
    if exp_avg_scales is not None or exp_avg_sq_scales is not None:
        raise ValueError("exp_avg_scales and exp_avg_sq_scales go with state_precision='8bit'")
    count = check_tensor_lists(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs)
    steps = step_values(step, count)
    lr, eps = check_lr(lr), check_eps(eps)
    param_scale = None if param_scale is None else check_finite("param_scale", param_scale)
    beta1, beta2 = check_beta("beta1", beta1), check_beta("beta2", beta2)
    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)
    for (params_, grads_, exp_avgs_, exp_avg_sqs_), t in grouped(
        [params, grads, exp_avgs, exp_avg_sqs], steps,
        temporaries=temporaries(1, compiled=compiled, grads_prepared=bool(weight_decay or maximize))
    ):
        rho_t, rho_inf = sma_length(beta2, t)
        rectified = rho_t > 5
        if rectified:
            rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
            # torch folds lr r_t sqrt(1-beta2^t) / (1-beta1^t) into one scalar
            step_size = (bias_correction(beta2, t) ** 0.5) * (lr * rect / bias_correction(beta1, t))
        else:
            step_size = lr / bias_correction(beta1, t)
        if compiled or torch.compiler.is_compiling():
            run_compiled(radam_rule, [params_, grads_, exp_avgs_, exp_avg_sqs_], weight_decay=weight_decay,
                         maximize=maximize, param_scale=param_scale,
                         beta1=beta1, beta2=beta2, eps=eps, rectified=rectified, step_size=step_size)
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=weight_decay, maximize=maximize)
        if param_scale is not None:
            scale_(params_, param_scale)                                     # decoupled decay
        torch._foreach_lerp_(exp_avgs_, grads_, 1 - beta1)                  # m_t
        scale_(exp_avg_sqs_, beta2)                                          # v_t
        torch._foreach_addcmul_(exp_avg_sqs_, grads_, grads_, 1 - beta2)
        if rectified:
            # torch divides by the negated step size and takes a reciprocal
            factors = torch._foreach_sqrt(exp_avg_sqs_)
            torch._foreach_add_(factors, eps)
            torch._foreach_div_(factors, step_size * -1)
            torch._foreach_reciprocal_(factors)
            torch._foreach_addcmul_(params_, exp_avgs_, factors)
        else:
            # torch multiplies by a buffer filled with this scalar; add with alpha rounds as that does
            torch._foreach_add_(params_, exp_avgs_, alpha=step_size * -1)


def radam_rule(param, grad, exp_avg, exp_avg_sq, *, beta1, beta2, eps, rectified, step_size) -> None:
    """:func:`radam_update` on one tensor, the form ``compiled=True`` runs; scalars are 0-d tensors.
    ``step_size`` is :math:`\\alpha r_t \\sqrt{1-\\beta_2^t}/(1-\\beta_1^t)` when ``rectified``
    (:math:`\\rho_t > 5`, decided outside), else :math:`\\alpha/(1-\\beta_1^t)`."""
    lerp_(exp_avg, grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad * (1 - beta2))
    if rectified:
        param.sub_(exp_avg / (exp_avg_sq.sqrt() + eps) * step_size)
    else:  # an SGD-with-momentum step
        param.sub_(exp_avg * step_size)


def _radam_schedule(t, *, lr: float, beta1: float, beta2: float) -> dict:
    """The low-precision rule's scalars for step ``t``: radam_update's step size, no second
    bias correction (it is in the step size), an SGD-with-momentum step until rectified."""
    rho_t, rho_inf = sma_length(beta2, t)
    if rho_t > 5:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        return dict(step_size=(bias_correction(beta2, t) ** 0.5) * (lr * rect / bias_correction(beta1, t)),
                    rsqrt_bias_correction2=1.0, momentum_only=False)
    return dict(step_size=lr / bias_correction(beta1, t), rsqrt_bias_correction2=1.0, momentum_only=True)
