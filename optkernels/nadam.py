"""NAdam: Adam with Nesterov momentum, its momentum coefficient warmed up by ``momentum_decay``."""

import torch
from torch import Tensor

from ._compiled import lerp_, run_compiled
from ._math import bias_correction, grouped, prepared_grads, rsqrt, scale_, temporaries
from ._validation import (
    check_beta,
    check_eps,
    check_finite,
    check_flag,
    check_lr,
    check_nonnegative,
    check_scalar_lists,
    check_tensor_lists,
    step_values,
)
from .adam import check_low_precision_lists, low_precision_update


def nadam_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    mu_products: list[Tensor],
    *,
    step,
    lr: float | Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
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
    r"""NAdam step, in place, on lists of tensors.

    .. math::
        \mu_t = \beta_1 \big(1 - \tfrac12\, 0.96^{t\psi}\big) \qquad
        \mu_{t+1} = \beta_1 \big(1 - \tfrac12\, 0.96^{(t+1)\psi}\big) \qquad
        \Pi_t = \Pi_{t-1}\,\mu_t = \textstyle\prod_{i=1}^{t} \mu_i

        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2
        \qquad d_t = \sqrt{v_t} / \sqrt{1-\beta_2^t} + \epsilon

        \theta_t = \theta_{t-1} - \gamma \frac{1-\mu_t}{1-\Pi_t} \frac{g_t}{d_t}
                                - \gamma \frac{\mu_{t+1}}{1-\Pi_t\,\mu_{t+1}} \frac{m_t}{d_t}

    with :math:`\psi` the ``momentum_decay``.

    Args:
        params, grads, exp_avgs, exp_avg_sqs: parallel lists of tensors.
        mu_products: one 1-element tensor per param holding :math:`\Pi_{t-1}` (1.0 before the first
            step), multiplied by :math:`\mu_t` in place. torch.optim.NAdam keeps it as state
            ``mu_product`` (a 0-d float32 tensor) and reads it back rounded; so do we, so that a
            change of ``beta1`` or ``momentum_decay`` mid-training acts as it does there.
        step: the step count *after* this update (1 on the first call): an int, or one int or
            0-d tensor per param.
        lr, beta1, beta2, eps, momentum_decay: as in ``torch.optim.NAdam``; ``lr`` may be a
            1-element tensor.
        weight_decay, maximize: as in ``torch.optim.NAdam`` (coupled decay), in the kernel's pass
            (see :func:`adam_update`).
        compiled: run :func:`nadam_rule` per tensor, compiled (see ``optkernels._compiled``);
            ``mu_products`` are updated as above, outside the rule.
        param_scale: multiply params by this first: NAdamW's decoupled weight decay in the same
            pass (:func:`~optkernels.weight_decay.decoupled_scale`); None leaves params alone.
        state_precision, exp_avg_scales, exp_avg_sq_scales, stochastic_rounding, seed: as
            :func:`adam_update`'s: the moments in bf16 or 8-bit codes, bf16 params rounded
            stochastically; the update computed in float32 by
            :func:`~optkernels.adam.adam_low_precision_rule` (its ``grad_step_size``), eager or
            ``compiled``, with ``mu_products`` updated as above.

    Mutates params, exp_avgs, exp_avg_sqs and mu_products. Never grads. Weight decay (coupled,
    or NAdamW's decoupled) composes in front, ``grads = weight_decay_l2(params, grads, ...)``, or
    runs in the kernel's pass: coupled as ``weight_decay``, decoupled as ``param_scale``.
    The op order is ``torch.optim.NAdam(foreach=True)``'s, which it equals bit for bit on CPU;
    torch's for-loop path computes :math:`d_t` as :math:`\sqrt{v_t/(1-\beta_2^t)} + \epsilon`
    (equal to rounding).

    Example:
        >>> import torch
        >>> from optkernels import nadam_update
        >>> params, grads = [torch.ones(3)], [torch.full((3,), 0.5)]
        >>> exp_avgs, exp_avg_sqs, mu_products = [torch.zeros(3)], [torch.zeros(3)], [torch.tensor(1.0)]
        >>> nadam_update(params, grads, exp_avgs, exp_avg_sqs, mu_products, step=1, lr=0.1)
        >>> params[0], mu_products[0]
        (tensor([0.8944, 0.8944, 0.8944]), tensor(0.4501))

    Reference: Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop; the
    formulation of torch.optim.NAdam.
    """
    if state_precision != "fp32" or stochastic_rounding:
        _nadam_low_precision(params, grads, exp_avgs, exp_avg_sqs, mu_products, step=step, lr=lr, beta1=beta1,
                             beta2=beta2, eps=eps, momentum_decay=momentum_decay, weight_decay=weight_decay,
                             maximize=maximize, compiled=compiled, param_scale=param_scale,
                             state_precision=state_precision, exp_avg_scales=exp_avg_scales,
                             exp_avg_sq_scales=exp_avg_sq_scales, stochastic_rounding=stochastic_rounding, seed=seed)
        return
    if exp_avg_scales is not None or exp_avg_sq_scales is not None:
        raise ValueError("exp_avg_scales and exp_avg_sq_scales go with state_precision='8bit'")
    count = check_tensor_lists(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs)
    check_scalar_lists(count, mu_products=mu_products)
    steps = step_values(step, count)
    lr, eps = check_lr(lr), check_eps(eps)
    param_scale = None if param_scale is None else check_finite("param_scale", param_scale)
    beta1, beta2 = check_beta("beta1", beta1), check_beta("beta2", beta2)
    momentum_decay = check_nonnegative("momentum_decay", momentum_decay)
    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)

    def mu(t: float) -> float:                                              # mu_t
        return beta1 * (1.0 - 0.5 * (0.96 ** (t * momentum_decay)))

    # Pi_t first, once per param, so that a param cut in slices (below) reads it in every slice
    by_step: dict[float, list[Tensor]] = {}
    for mu_product, t in zip(mu_products, steps):
        by_step.setdefault(t, []).append(mu_product)
    for t, products in by_step.items():
        torch._foreach_mul_(products, mu(t))                                 # Pi_t, rounded as stored
    for (params_, grads_, exp_avgs_, exp_avg_sqs_, mu_products_), t in grouped(
        [params, grads, exp_avgs, exp_avg_sqs, mu_products], steps, shared=(4,),
        temporaries=temporaries(1, compiled=compiled, grads_prepared=bool(weight_decay or maximize))
    ):
        mu_t, mu_next = mu(t), mu(t + 1)
        if compiled or torch.compiler.is_compiling():
            _run_nadam_rule([params_, grads_, exp_avgs_, exp_avg_sqs_], mu_products_, lr=lr, beta1=beta1,
                            beta2=beta2, eps=eps, mu=mu_t, mu_next=mu_next, weight_decay=weight_decay,
                            maximize=maximize, param_scale=param_scale,
                            rsqrt_bias_correction2=rsqrt(bias_correction(beta2, t)))
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=weight_decay, maximize=maximize)
        if param_scale is not None:
            scale_(params_, param_scale)                                     # decoupled decay
        torch._foreach_lerp_(exp_avgs_, grads_, 1 - beta1)                  # m_t
        scale_(exp_avg_sqs_, beta2)                                          # v_t
        torch._foreach_addcmul_(exp_avg_sqs_, grads_, grads_, 1 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs_)
        torch._foreach_div_(denoms, bias_correction(beta2, t) ** 0.5)        # d_t
        torch._foreach_add_(denoms, eps)
        products = [mu_product.item() for mu_product in mu_products_]
        grad_step_sizes = [(lr * (1.0 - mu_t) / (1.0 - product)) * -1 for product in products]
        momentum_step_sizes = [(lr * mu_next / (1.0 - product * mu_next)) * -1 for product in products]
        torch._foreach_addcdiv_(params_, grads_, denoms, grad_step_sizes)
        torch._foreach_addcdiv_(params_, exp_avgs_, denoms, momentum_step_sizes)


def _run_nadam_rule(tensor_lists, mu_products, *, lr, mu, mu_next, **scalars) -> None:
    # The step sizes depend on each param's Pi_t, and run_compiled shares its scalars across the
    # list: one call per distinct product (one in all, unless params started at different steps).
    positions: dict[float, list[int]] = {}
    for position, mu_product in enumerate(mu_products):
        positions.setdefault(mu_product.item(), []).append(position)
    for product, indices in positions.items():
        run_compiled(nadam_rule, [[tensors[i] for i in indices] for tensors in tensor_lists], **scalars,
                     grad_step_size=lr * (1.0 - mu) / (1.0 - product),
                     momentum_step_size=lr * mu_next / (1.0 - product * mu_next))


def nadam_rule(param, grad, exp_avg, exp_avg_sq, *, beta1, beta2, eps, rsqrt_bias_correction2, grad_step_size,
               momentum_step_size) -> None:
    """:func:`nadam_update` on one tensor, the form ``compiled=True`` runs; scalars are 0-d tensors.
    The step sizes, :math:`\\gamma (1-\\mu_t)/(1-\\Pi_t)` and
    :math:`\\gamma \\mu_{t+1}/(1-\\Pi_t \\mu_{t+1})`, are computed outside from ``mu_product``."""
    lerp_(exp_avg, grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad * (1 - beta2))
    denom = exp_avg_sq.sqrt() * rsqrt_bias_correction2 + eps
    param.sub_((grad * grad_step_size + exp_avg * momentum_step_size) / denom)


def _nadam_low_precision(params, grads, exp_avgs, exp_avg_sqs, mu_products, *, step, lr, beta1, momentum_decay,
                         exp_avg_scales, exp_avg_sq_scales, **options) -> None:
    """:func:`nadam_update` with low-precision state or stochastically rounded params: the
    low-precision Adam rule with NAdam's step sizes, one call per distinct :math:`\\Pi_t` (they
    depend on it). Everything a call checks is checked first, and ``mu_products`` are written
    last, so that a call that raises changes nothing."""
    count = check_low_precision_lists(params, grads, exp_avgs, exp_avg_sqs, exp_avg_scales, exp_avg_sq_scales,
                                      state_precision=options["state_precision"])
    check_scalar_lists(count, mu_products=mu_products)
    steps = step_values(step, count)
    lr, beta1 = check_lr(lr), check_beta("beta1", beta1)
    momentum_decay = check_nonnegative("momentum_decay", momentum_decay)

    def mu(t: float) -> float:                                              # mu_t
        return beta1 * (1.0 - 0.5 * (0.96 ** (t * momentum_decay)))

    # Pi_t as the fp32 path rounds it (the stored dtype), stored once every param has stepped
    products = [mu_product * mu(t) for mu_product, t in zip(mu_products, steps)]
    positions: dict[float, list[int]] = {}
    for position, product in enumerate(products):
        positions.setdefault(product.item(), []).append(position)
    exp_avg_scales = exp_avg_scales if exp_avg_scales is not None else [None] * count
    exp_avg_sq_scales = exp_avg_sq_scales if exp_avg_sq_scales is not None else [None] * count
    for product, indices in positions.items():
        def schedule(t, *, lr, beta1, beta2, product=product) -> dict:
            mu_t, mu_next = mu(t), mu(t + 1)
            return dict(grad_step_size=lr * (1.0 - mu_t) / (1.0 - product),
                        step_size=lr * mu_next / (1.0 - product * mu_next),
                        rsqrt_bias_correction2=rsqrt(bias_correction(beta2, t)), momentum_only=False)

        low_precision_update(*([lst[i] for i in indices] for lst in (params, grads, exp_avgs, exp_avg_sqs)), None,
                             step=[steps[i] for i in indices], lr=lr, beta1=beta1,
                             exp_avg_scales=[exp_avg_scales[i] for i in indices],
                             exp_avg_sq_scales=[exp_avg_sq_scales[i] for i in indices], schedule=schedule, **options)
    for mu_product, product in zip(mu_products, products):
        mu_product.copy_(product)                                            # Pi_t
