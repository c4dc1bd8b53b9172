"""AdaBelief: Adam with the second moment taken of the gradient's deviation from its EMA."""

import math

import torch
from torch import Tensor

from ._math import bias_correction, grouped, scale_, sma_length
from ._validation import check_beta, check_eps, check_lr, check_tensor_lists, optional_list, step_values


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
    (compose :func:`weight_decay_l2` in front instead) and its fp16 up-casting: fp16 params are
    computed in fp16, where the default ``eps=1e-16`` rounds to 0, so a zero gradient gives
    0/0; use bf16 or fp32 params, or keep fp32 master weights.

    Mutates params, exp_avgs, exp_avg_vars (and max_exp_avg_vars). Never grads.

    Reference: Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients", NeurIPS 2020; https://github.com/juntang-zhuang/Adabelief-Optimizer.
    """
    max_exp_avg_vars = optional_list(max_exp_avg_vars)
    count = check_tensor_lists(optional=("max_exp_avg_vars",), params=params, grads=grads, exp_avgs=exp_avgs,
                               exp_avg_vars=exp_avg_vars, max_exp_avg_vars=max_exp_avg_vars)
    steps = step_values(step, count)
    lr, eps = check_lr(lr), check_eps(eps)
    beta1, beta2 = check_beta("beta1", beta1), check_beta("beta2", beta2)
    for (params_, grads_, exp_avgs_, exp_avg_vars_, max_exp_avg_vars_), t in grouped(
        [params, grads, exp_avgs, exp_avg_vars, max_exp_avg_vars], steps
    ):
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


def _rectified_step(params, exp_avgs, exp_avg_vars, t, lr, beta1, beta2, eps, degenerated_to_sgd):
    rho_t, rho_inf = sma_length(beta2, t)
    if rho_t >= 5:
        # the official expression, term for term, so the float rounding matches
        step_size = math.sqrt(
            bias_correction(beta2, t) * (rho_t - 4) / (rho_inf - 4) * (rho_t - 2) / rho_t * rho_inf / (rho_inf - 2)
        ) / bias_correction(beta1, t)
        denoms = torch._foreach_sqrt(exp_avg_vars)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denoms, -step_size * lr)
    elif degenerated_to_sgd:
        torch._foreach_add_(params, exp_avgs, alpha=-(1.0 / bias_correction(beta1, t)) * lr)
