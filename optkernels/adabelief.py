"""AdaBelief: Adam with the second moment taken of the gradient's deviation from its EMA."""

import functools
import math

import torch
from torch import Tensor

from ._compiled import run_compiled
from .adam import low_precision_update
from ._math import bias_correction, grouped, prepared_grads, rsqrt, scale_, sma_length, temporaries
from ._validation import (check_beta, check_eps, check_finite, check_flag, check_lr, check_nonnegative,
                          check_tensor_lists, optional_list, step_values)


def adabelief_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_vars: list[Tensor],
    max_exp_avg_vars: list[Tensor] | None = None,
    *,
    step,
    lr: float | Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-16,
    rectify: bool = True,
    degenerated_to_sgd: bool = True,
    weight_decay: float = 0.0,
    maximize: bool = False,
    compiled: bool = False,
    param_scale: float | None = None,
    state_precision: str = "fp32",
    exp_avg_scales: list[Tensor | None] | None = None,
    exp_avg_var_scales: list[Tensor | None] | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None:
    r"""AdaBelief step, in place, on lists of tensors; AMSGrad when ``max_exp_avg_vars`` is given.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad
        s_t = \beta_2 s_{t-1} + (1-\beta_2) (g_t - m_t)^2 + \epsilon \qquad
        \hat s_t = \max(\hat s_{t-1}, s_t) \text{ (AMSGrad) else } s_t

    Without rectification (Algorithm 2 of the paper):

    .. math::
        \theta_t = \theta_{t-1} - \frac{\alpha}{1-\beta_1^t}
                   \frac{m_t}{\sqrt{\hat s_t}/\sqrt{1-\beta_2^t} + \epsilon}

    With ``rectify=True``, as RAdam, with :math:`\rho_t, \rho_\infty` from :func:`radam_update`:

    .. math::
        \theta_t = \theta_{t-1} - \frac{\alpha}{1-\beta_1^t} m_t \cdot
        \begin{cases}
            r_t \sqrt{1-\beta_2^t} / (\sqrt{s_t} + \epsilon) & \rho_t \ge 5 \\
            1 & \rho_t < 5 \text{ and } \texttt{degenerated\_to\_sgd} \\
            0 & \text{otherwise (no update)}
        \end{cases}

    The numbers are those of the official ``adabelief-pytorch`` 0.2.1 (its op order too, so
    fp32, fp64 and bf16 results equal it bit for bit). As in the paper's Algorithm 2, eps is added
    into :math:`s_t` each step (in place, so it accumulates). Where the official code goes
    beyond or against the paper's text, we follow the code: the rectified step uses
    :math:`s_t`, not the AMSGrad maximum (the maximum is kept up to date, but only the
    unrectified step reads it); the rectified step divides by :math:`\sqrt{s_t}+\epsilon`
    with :math:`\sqrt{1-\beta_2^t}` folded into the step size; :math:`m_t` is updated as
    ``mul`` then ``add``. Not copied: its in-place change of ``grads`` for coupled weight decay
    (``weight_decay`` here makes new ones, or compose :func:`weight_decay_l2` in front) and its
    fp16 up-casting: fp16 params are computed in fp16, where the default ``eps=1e-16`` rounds to
    0, so a zero gradient gives 0/0; use bf16 or fp32 params, or keep fp32 master weights.

    Mutates params, exp_avgs, exp_avg_vars (and max_exp_avg_vars). Never grads. With
    ``compiled=True`` it runs :func:`adabelief_rule` per tensor, compiled (see
    ``optkernels._compiled``): one pass over memory, equal to the foreach path to rounding.
    ``param_scale`` multiplies params first: the official decoupled (or fixed) weight decay in
    the same pass (:func:`~optkernels.weight_decay.decoupled_scale`); None leaves params alone.
    ``weight_decay`` (the official coupled decay) and ``maximize`` prepare the grads in the
    kernel's pass too (see :func:`adam_update`).

    Args:
        state_precision: how ``exp_avgs`` and ``exp_avg_vars`` are stored, as :func:`adam_update`'s
            (``"fp32"``, ``"bf16"``, ``"8bit"``; :math:`s_t` is the unsigned, square-root
            compressed one); the update is computed in float32, by
            :func:`~optkernels.adam.adam_low_precision_rule` with ``belief=True``, eager or
            ``compiled``. Not with AMSGrad.
        exp_avg_scales, exp_avg_var_scales: the 8-bit codes' float32 scales, as
            :func:`adam_update`'s ``exp_avg_scales`` / ``exp_avg_sq_scales``.
        stochastic_rounding, seed: as :func:`adam_update`'s.

    Reference: Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients", NeurIPS 2020; https://github.com/juntang-zhuang/Adabelief-Optimizer.
    """
    if state_precision != "fp32" or stochastic_rounding:
        schedule = functools.partial(_adabelief_schedule, rectify=rectify, degenerated_to_sgd=degenerated_to_sgd)
        low_precision_update(params, grads, exp_avgs, exp_avg_vars, optional_list(max_exp_avg_vars), step=step, lr=lr,
                             beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize,
                             compiled=compiled, param_scale=param_scale, state_precision=state_precision,
                             exp_avg_scales=exp_avg_scales, exp_avg_sq_scales=exp_avg_var_scales,
                             stochastic_rounding=stochastic_rounding, seed=seed, schedule=schedule)
        return
    if exp_avg_scales is not None or exp_avg_var_scales is not None:
        raise ValueError("exp_avg_scales and exp_avg_var_scales go with state_precision='8bit'")
    max_exp_avg_vars = optional_list(max_exp_avg_vars)
    count = check_tensor_lists(optional=("max_exp_avg_vars",), params=params, grads=grads, exp_avgs=exp_avgs,
                               exp_avg_vars=exp_avg_vars, max_exp_avg_vars=max_exp_avg_vars)
    steps = step_values(step, count)
    lr, eps = check_lr(lr), check_eps(eps)
    param_scale = None if param_scale is None else check_finite("param_scale", param_scale)
    beta1, beta2 = check_beta("beta1", beta1), check_beta("beta2", beta2)
    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)
    for (params_, grads_, exp_avgs_, exp_avg_vars_, max_exp_avg_vars_), t in grouped(
        [params, grads, exp_avgs, exp_avg_vars, max_exp_avg_vars], steps,
        temporaries=temporaries(1, compiled=compiled, grads_prepared=bool(weight_decay or maximize))
    ):
        if compiled or torch.compiler.is_compiling():
            adaptive, step_size = True, lr / bias_correction(beta1, t)
            if rectify:
                factor, adaptive = _rectification(t, beta1, beta2)
                step_size = factor * lr if adaptive or degenerated_to_sgd else None
            run_compiled(adabelief_rule, [params_, grads_, exp_avgs_, exp_avg_vars_, max_exp_avg_vars_],
                         weight_decay=weight_decay, maximize=maximize, param_scale=param_scale,
                         beta1=beta1, beta2=beta2, eps=eps, rectify=rectify,
                         adaptive=adaptive, step_size=step_size,
                         rsqrt_bias_correction2=1 / math.sqrt(bias_correction(beta2, t)))
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=weight_decay, maximize=maximize)
        if param_scale is not None:
            scale_(params_, param_scale)                                     # decoupled decay
        scale_(exp_avgs_, beta1)                                             # m_t
        torch._foreach_add_(exp_avgs_, grads_, alpha=1 - beta1)
        residuals = torch._foreach_sub(grads_, exp_avgs_)                   # g_t - m_t
        scale_(exp_avg_vars_, beta2)                                         # s_t
        torch._foreach_addcmul_(exp_avg_vars_, residuals, residuals, 1 - beta2)
        del residuals
        torch._foreach_add_(exp_avg_vars_, eps)
        if max_exp_avg_vars_ is not None:
            torch._foreach_maximum_(max_exp_avg_vars_, exp_avg_vars_)      # \hat s_t
        if rectify:
            _rectified_step(params_, exp_avgs_, exp_avg_vars_, t, lr, beta1, beta2, eps,
                            degenerated_to_sgd)
        else:
            denoms = torch._foreach_sqrt(exp_avg_vars_ if max_exp_avg_vars_ is None else max_exp_avg_vars_)
            torch._foreach_div_(denoms, math.sqrt(bias_correction(beta2, t)))
            torch._foreach_add_(denoms, eps)
            torch._foreach_addcdiv_(params_, exp_avgs_, denoms, -(lr / bias_correction(beta1, t)))


def _rectification(t, beta1, beta2) -> tuple[float, bool]:
    """The rectified step size over lr, and whether the step divides by :math:`\\sqrt{s_t}+\\epsilon`
    (:math:`\\rho_t \\ge 5`; else it is an SGD-with-momentum step)."""
    rho_t, rho_inf = sma_length(beta2, t)
    if rho_t >= 5:
        # the official expression, term for term, so the float rounding matches
        return math.sqrt(
            bias_correction(beta2, t) * (rho_t - 4) / (rho_inf - 4) * (rho_t - 2) / rho_t * rho_inf / (rho_inf - 2)
        ) / bias_correction(beta1, t), True
    return 1.0 / bias_correction(beta1, t), False


def _adabelief_schedule(t, *, lr: float, beta1: float, beta2: float, rectify: bool,
                        degenerated_to_sgd: bool) -> dict:
    """The low-precision rule's scalars for step ``t``: AdaBelief's second moment, and the step
    sizes of the foreach path (rectified: :math:`\\sqrt{1-\\beta_2^t}` folded into the step size,
    as the official code; before :math:`\\rho_t \\ge 5` an SGD-with-momentum step, or none)."""
    if not rectify:
        return dict(step_size=lr / bias_correction(beta1, t), rsqrt_bias_correction2=rsqrt(bias_correction(beta2, t)),
                    momentum_only=False, belief=True)
    factor, adaptive = _rectification(t, beta1, beta2)
    step_size = factor * lr if adaptive or degenerated_to_sgd else None
    return dict(step_size=step_size, rsqrt_bias_correction2=1.0, momentum_only=not adaptive, belief=True)


def _rectified_step(params, exp_avgs, exp_avg_vars, t, lr, beta1, beta2, eps, degenerated_to_sgd):
    factor, adaptive = _rectification(t, beta1, beta2)
    if adaptive:
        denoms = torch._foreach_sqrt(exp_avg_vars)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denoms, -factor * lr)
    elif degenerated_to_sgd:
        torch._foreach_add_(params, exp_avgs, alpha=-factor * lr)


def adabelief_rule(param, grad, exp_avg, exp_avg_var, max_exp_avg_var, *, beta1, beta2, eps, rectify, adaptive,
                   step_size, rsqrt_bias_correction2) -> None:
    """:func:`adabelief_update` on one tensor, the form ``compiled=True`` runs; scalars are 0-d tensors.
    ``step_size`` is :math:`\\alpha/(1-\\beta_1^t)`, times the rectification term when ``rectify``;
    ``adaptive=False`` is rectification's early SGD step and ``step_size=None`` its no-update step
    (both decided outside)."""
    exp_avg.mul_(beta1).add_(grad * (1 - beta1))
    residual = grad - exp_avg
    exp_avg_var.mul_(beta2).addcmul_(residual, residual * (1 - beta2)).add_(eps)
    if max_exp_avg_var is not None:
        max_exp_avg_var.copy_(torch.maximum(max_exp_avg_var, exp_avg_var))
    if step_size is None:
        return
    if not adaptive:
        param.sub_(exp_avg * step_size)
    elif rectify:  # the official code: s_t (never the AMSGrad maximum), sqrt(1-beta2^t) in the step size
        param.sub_(exp_avg / (exp_avg_var.sqrt() + eps) * step_size)
    else:
        second_moment = exp_avg_var if max_exp_avg_var is None else max_exp_avg_var
        param.sub_(exp_avg / (second_moment.sqrt() * rsqrt_bias_correction2 + eps) * step_size)
