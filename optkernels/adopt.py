"""ADOPT: Adam that normalises the gradient by the second moment of the *previous* steps, then
takes its momentum; with the authors' clipping of the normalised gradient."""

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._compiled import lerp_, run_compiled
from ._math import grouped, prepared_grads, scale_, temporaries
from ._validation import (as_float, check_beta, check_eps, check_flag, check_lr, check_nonnegative,
                          check_tensor_lists, step_values)


def default_clip_lambda(step: float) -> float:
    r"""The authors' clipping schedule, :math:`c(s) = s^{1/4}`, of the number of updates :math:`s`
    before this one (ADOPT's ``clip_lambda=lambda step: step**0.25``; a module-level function, so
    an optimizer holding it pickles)."""
    return step ** 0.25


def adopt_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    step,
    lr: float | Tensor,
    beta1: float = 0.9,
    beta2: float = 0.9999,
    eps: float = 1e-6,
    clip_lambda: Callable[[float], float] | None = default_clip_lambda,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    maximize: bool = False,
    compiled: bool = False,
) -> None:
    r"""ADOPT step, in place, on lists of tensors.

    On the first step (:math:`t = 1`) only the second moment is set: :math:`v_1 = v_0 + g_1^2`
    (:math:`v_0 = 0`); params and :math:`m` stay. From :math:`t = 2`:

    .. math::
        \hat g_t = \operatorname{clip}\Big(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)},\ c(t-1)\Big)
        \qquad m_t = \beta_1 m_{t-1} + (1-\beta_1) \hat g_t

        \theta_t = \theta_{t-1} - \alpha m_t \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    with :math:`\operatorname{clip}(x, c) = \min(\max(x, -c), c)` and :math:`c` = ``clip_lambda``.

    Args:
        params, grads, exp_avgs, exp_avg_sqs: parallel lists of tensors (:math:`m`, :math:`v`).
        step: the step count *after* this update (1 on the first call): an int, or one int or
            0-d tensor per param.
        lr, beta1, beta2, eps: as in the authors' ``ADOPT`` (``betas=(beta1, beta2)``); ``lr``
            may be a 1-element tensor.
        clip_lambda: the clipping schedule, called with :math:`t - 1` (a float: the updates
            before this one, as the authors' code calls it); None: no clipping (the paper's
            first version). Default :func:`default_clip_lambda`, :math:`(t-1)^{1/4}`.
        weight_decay, decoupled: :math:`\lambda`. Coupled (``decoupled=False``): :math:`g_t`
            gets :math:`\lambda\theta_{t-1}`, on every step, the first included. Decoupled: from
            :math:`t = 2`, :math:`\theta \leftarrow \theta - \alpha\lambda\theta` before the update.
        maximize: step up the gradient (:math:`g_t` negated first).
        compiled: run :func:`adopt_rule` (:func:`adopt_first_rule` on the first step) per tensor,
            compiled (see ``optkernels._compiled``): one pass over memory (28 bytes per fp32
            element), equal to the foreach path to rounding.

    Mutates params, exp_avgs and exp_avg_sqs. Never grads. Complex params are treated as real
    pairs, as the authors' code does. The op order is the authors' per-tensor update
    (github.com/iShohei220/adopt, ``_single_tensor_adopt``, torch.optim's default path on CPU),
    so results equal it bit for bit on CPU, as they equal pytorch-optimizer 4.1.0's ``ADOPT``
    where the two agree. Where they differ, this follows the authors: pytorch-optimizer clips
    with ``clip_lambda(t)``, the authors with ``clip_lambda(t - 1)``; it decays decoupled
    weights on the first step too and as :math:`\theta(1 - \alpha\lambda)`, the authors from the
    second step and as :math:`\theta + (-\alpha\lambda)\theta`; it counts steps per param group,
    the authors per param.

    Example:
        >>> import torch
        >>> from optkernels.adopt import adopt_update
        >>> params, grads = [torch.ones(2)], [torch.tensor([2.0, -1.0])]
        >>> exp_avgs, exp_avg_sqs = [torch.zeros(2)], [torch.zeros(2)]
        >>> adopt_update(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.1)  # v = g^2 only
        >>> params[0], exp_avg_sqs[0]
        (tensor([1., 1.]), tensor([4., 1.]))
        >>> adopt_update(params, grads, exp_avgs, exp_avg_sqs, step=2, lr=0.1)  # g / sqrt(v) = +-1
        >>> params[0]
        tensor([0.9900, 1.0100])

    Reference: Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta_2 with the
    Optimal Rate", NeurIPS 2024, Algorithm 2 (with the clipping of the updated arXiv version).
    """
    count = check_tensor_lists(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs)
    steps = step_values(step, count)
    lr, eps = check_lr(lr), check_eps(eps)
    beta1, beta2 = check_beta("beta1", beta1), check_beta("beta2", beta2)
    weight_decay = check_nonnegative("weight_decay", weight_decay)
    decoupled, maximize = check_flag("decoupled", decoupled), check_flag("maximize", maximize)
    clips = clip_values(clip_lambda, steps)  # every clip known (and checked) before any tensor changes
    coupled_decay = 0.0 if decoupled else weight_decay
    decay = -lr * weight_decay if decoupled and weight_decay else None   # the authors' alpha for p += alpha p
    for (params_, grads_, exp_avgs_, exp_avg_sqs_), t in grouped(
        [params, grads, exp_avgs, exp_avg_sqs], steps,
        temporaries=temporaries(2, compiled=compiled, grads_prepared=bool(coupled_decay or maximize))
    ):
        first = bool(t == 1)
        if compiled or torch.compiler.is_compiling():
            if first:
                run_compiled(adopt_first_rule, [params_, grads_, exp_avgs_, exp_avg_sqs_],
                             weight_decay=coupled_decay, maximize=maximize)
            else:
                run_compiled(adopt_rule, [params_, grads_, exp_avgs_, exp_avg_sqs_], weight_decay=coupled_decay,
                             maximize=maximize, lr=lr, beta1=beta1, beta2=beta2, eps=eps, decay=decay,
                             clip=clips.get(t) if clips is not None else _clip_value(clip_lambda, t))
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=coupled_decay, maximize=maximize)
        if first:
            torch._foreach_addcmul_(exp_avg_sqs_, grads_, grads_)          # v_1 = g_1^2
            continue
        if decay is not None:
            torch._foreach_add_(params_, params_, alpha=decay)              # decoupled decay
        normed = torch._foreach_sqrt(exp_avg_sqs_)                          # max(sqrt(v_{t-1}), eps)
        torch._foreach_clamp_min_(normed, eps)
        normed = torch._foreach_div(grads_, normed)                         # g_t / ...
        clip = clips[t]
        if clip is not None:
            torch._foreach_clamp_min_(normed, -clip)                        # clip(., c(t-1))
            torch._foreach_clamp_max_(normed, clip)
        torch._foreach_lerp_(exp_avgs_, normed, 1 - beta1)                  # m_t
        del normed
        torch._foreach_add_(params_, exp_avgs_, alpha=-lr)                  # theta_t
        scale_(exp_avg_sqs_, beta2)                                          # v_t
        torch._foreach_addcmul_(exp_avg_sqs_, grads_, grads_, 1 - beta2)


def adopt_first_rule(param, grad, exp_avg, exp_avg_sq) -> None:
    """:func:`adopt_update`'s first step on one tensor: :math:`v \\leftarrow v + g^2`."""
    exp_avg_sq.addcmul_(grad, grad)


def adopt_rule(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, decay, clip) -> None:
    """:func:`adopt_update` from the second step on one tensor, the form ``compiled=True`` runs;
    scalars are 0-d tensors; ``decay`` is :math:`-\\alpha\\lambda` (decoupled) or None, ``clip``
    the clip value or None."""
    if decay is not None:
        param.add_(param * decay)
    normed = grad / exp_avg_sq.sqrt().clamp_min(eps)
    if clip is not None:
        normed = normed.clamp(-clip, clip)
    lerp_(exp_avg, normed, 1 - beta1)
    param.sub_(exp_avg * lr)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad * (1 - beta2))


def clip_values(clip_lambda: Callable[[float], float] | None, steps: list) -> dict | None:
    """``{t: clip_lambda(t - 1)}`` for each step count after the first (``None`` values without
    clipping), checked: a clip is a number >= 0. None inside torch.compile, where step counts are
    tensors (the clip is then computed per group, in the graph)."""
    if clip_lambda is not None and not callable(clip_lambda):
        raise TypeError(f"clip_lambda must be callable or None, got {type(clip_lambda).__name__}")
    if torch.compiler.is_compiling() and any(isinstance(t, Tensor) for t in steps):
        return None
    return {t: _clip_value(clip_lambda, t) for t in set(steps) if t != 1}


def _clip_value(clip_lambda, t):
    if clip_lambda is None:
        return None
    clip = clip_lambda(t - 1)
    if torch.compiler.is_compiling():
        return clip
    value = as_float(clip, "clip_lambda(step)")
    if math.isnan(value) or value < 0:
        raise ValueError(f"Invalid clip value: clip_lambda({t - 1}) returned {clip} (clip_lambda must give "
                         "numbers >= 0)")
    return value
