r"""Schedule-free AdamW and SGD: an average of iterates in place of a learning-rate schedule.

Three sequences share two tensors. :math:`z` takes the base optimizer's steps, :math:`x` is a
weighted running average of the :math:`z`'s (the point to evaluate and to save), and the gradient
is taken at :math:`y`, an interpolation of the two:

.. math::
    y_t = \beta x_t + (1-\beta) z_t \qquad
    z_{t+1} = z_t - \gamma_t \tilde g_t \qquad
    x_{t+1} = (1-c_{t+1}) x_t + c_{t+1} z_{t+1}

with :math:`\beta` AdamW's ``beta1`` or SGD's ``momentum``. As in the reference implementation
(``schedulefree`` 1.4.1) params hold :math:`y` while training and :math:`x` while evaluating, and
:math:`x` is never stored: a step updates :math:`y` in place (:func:`schedule_free_adamw_update`,
:func:`schedule_free_sgd_update`), and :func:`schedule_free_eval` and :func:`schedule_free_train`
move params between :math:`y` and :math:`x`, knowing :math:`z`.

The averaging weights are the only scalars a step carries over: the caller keeps the running sum
of the weights and the largest lr so far, passes them in, and gets this step's values back
(:class:`ScheduleFreeWeights`) to pass next time. Nothing is hidden:

- :math:`\gamma_t = \gamma \min(1, t / \text{warmup\_steps})` (linear warm-up),
- :math:`\gamma_{\max,t} = \max(\gamma_{\max,t-1}, \gamma_t)`,
- :math:`w_t = t^r \gamma_{\max,t}^{p}` with :math:`p` = ``weight_lr_power``,
- :math:`c_t = w_t / \sum_{i \le t} w_i` (0 while the sum is 0).

Reference: Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky, "The Road Less Scheduled", NeurIPS
2024 (arXiv:2405.15682), Algorithm 1; the official implementation, ``schedulefree`` 1.4.1
(``AdamWScheduleFree``, ``SGDScheduleFree``), whose op order the foreach path follows, so results
equal it bit for bit on CPU in fp32 and fp64, with its ``foreach`` path and without (bf16: see
:func:`schedule_free_adamw_update`).
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._compiled import lerp_, run_compiled
from ._math import bias_correction, grouped, rsqrt, scale_, temporaries
from ._validation import as_float, check_beta, check_eps, check_finite, check_lr, check_nonnegative, check_tensor_lists


class ScheduleFreeWeights(NamedTuple):
    """One step's scalars: ``weight_sum`` and ``lr_max`` are what the caller passes next time."""

    lr: float  #: this step's lr after warm-up, :math:`\gamma_t` (the reference's ``scheduled_lr``)
    lr_max: float  #: :math:`\gamma_{\max,t}`
    weight: float  #: :math:`w_t`
    weight_sum: float  #: :math:`\sum_{i \le t} w_i`
    ckp1: float  #: :math:`c_t`, the weight of the new :math:`z` in the average :math:`x`


def schedule_free_weights(step, lr: float | Tensor, *, weight_sum: float, lr_max: float, warmup_steps: int = 0,
                          r: float = 0.0, weight_lr_power: float = 2.0) -> ScheduleFreeWeights:
    r"""The scalars of step ``step`` (1 on the first): warmed-up lr, averaging weight, running sums.

    ``weight_sum`` and ``lr_max`` are the values after the previous step (0 and 0, or the
    reference's -1, before the first). Python floats throughout, in the reference's order, so the
    values are its values bit for bit.

    Example:
        >>> from optkernels.schedule_free import schedule_free_weights
        >>> first = schedule_free_weights(1, 0.1, weight_sum=0.0, lr_max=-1.0, warmup_steps=2)
        >>> first.lr, first.ckp1
        (0.05, 1.0)
        >>> second = schedule_free_weights(2, 0.1, weight_sum=first.weight_sum, lr_max=first.lr_max, warmup_steps=2)
        >>> second.lr, round(second.ckp1, 3)
        (0.1, 0.8)
    """
    step = _step_count(step)
    lr = check_lr(lr)
    weight_sum = check_nonnegative("weight_sum", weight_sum)
    lr_max = check_finite("lr_max", lr_max)
    warmup_steps = check_warmup_steps(warmup_steps)
    r = check_finite("r", r)
    weight_lr_power = check_nonnegative("weight_lr_power", weight_lr_power)
    sched = step / warmup_steps if step - 1 < warmup_steps else 1.0
    lr = lr * sched
    lr_max = max(lr, lr_max)
    weight = (step**r) * (lr_max**weight_lr_power)
    weight_sum = weight_sum + weight
    ckp1 = weight / weight_sum if weight_sum != 0 else 0  # the reference: 0 on ZeroDivisionError
    return ScheduleFreeWeights(lr=lr, lr_max=lr_max, weight=weight, weight_sum=weight_sum, ckp1=ckp1)


def schedule_free_adamw_update(
    params: list[Tensor],
    grads: list[Tensor],
    zs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    step,
    lr: float | Tensor,
    weight_sum: float,
    lr_max: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
    compiled: bool = False,
) -> ScheduleFreeWeights:
    r"""Schedule-free AdamW step, in place, on lists of tensors; params hold :math:`y`.

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \qquad
        \tilde g_t = \frac{g_t}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon} + \lambda y_t

        y_{t+1} = (1-c_{t+1})\, y_t + c_{t+1} z_t + \gamma_t (\beta_1 (1-c_{t+1}) - 1)\, \tilde g_t
        \qquad z_{t+1} = z_t - \gamma_t \tilde g_t

    which is :math:`y_{t+1} = \beta_1 x_{t+1} + (1-\beta_1) z_{t+1}` of the module's recursion,
    without :math:`x`. :math:`\gamma_t` and :math:`c_{t+1}` come from :func:`schedule_free_weights`.
    There is no first moment: :math:`y`'s interpolation towards :math:`z` is the momentum.

    Args:
        params, grads, zs, exp_avg_sqs: parallel lists: :math:`y` (the params in train mode), the
            gradients at :math:`y`, :math:`z` (a copy of the param before the first step) and
            :math:`v` (zeros before the first step).
        step: the step count *after* this update (1 on the first call; the reference's ``k + 1``):
            an int or a 0-d tensor, one for all tensors (the averaging weights are per call).
        lr: the base lr :math:`\gamma`, before warm-up; may be a 1-element tensor.
        weight_sum, lr_max: the values the previous call returned (0 and 0, or -1, at first).
        beta1, beta2, eps, weight_decay, warmup_steps, r, weight_lr_power: as in
            ``schedulefree.AdamWScheduleFree``; ``weight_decay`` is taken at :math:`y`, after the
            normalisation. ``beta1`` must be > 0 (:func:`schedule_free_eval` divides by it).
        compiled: run :func:`schedule_free_adamw_rule` per tensor, compiled (see
            ``optkernels._compiled``): one pass, reading :math:`y, g, z, v` and writing
            :math:`y, z, v` (28 bytes per fp32 element), equal to the foreach path to rounding.

    Returns:
        this step's :class:`ScheduleFreeWeights`; pass its ``weight_sum`` and ``lr_max`` next time.

    Mutates params, zs and exp_avg_sqs. Never grads (the reference divides its grads in place).
    The op order is ``AdamWScheduleFree``'s, so results equal it bit for bit on CPU in fp32 and
    fp64, and in bf16 its for-loop path's: :math:`v` decays as ``Tensor.mul_`` rounds (its foreach
    path, like ``torch._foreach_mul_`` on CPU, first rounds :math:`\beta_2` to bf16: 0.9 becomes
    0.8984; see ``optkernels._math.scale_``).

    Example:
        >>> import torch
        >>> from optkernels.schedule_free import schedule_free_adamw_update
        >>> params, grads = [torch.ones(3)], [torch.full((3,), 0.5)]
        >>> zs, exp_avg_sqs = [params[0].clone()], [torch.zeros(3)]
        >>> weight_sum, lr_max = 0.0, -1.0
        >>> for step in (1, 2):
        ...     weights = schedule_free_adamw_update(params, grads, zs, exp_avg_sqs, step=step, lr=0.1,
        ...                                          weight_sum=weight_sum, lr_max=lr_max)
        ...     weight_sum, lr_max = weights.weight_sum, weights.lr_max
        >>> zs[0]  # two steps of size lr (the normalised grad is 1)
        tensor([0.8000, 0.8000, 0.8000])
        >>> params[0]  # y = beta1 x + (1 - beta1) z, with x the mean of the z's: 0.85
        tensor([0.8450, 0.8450, 0.8450])
        >>> weights.ckp1
        0.5

    Reference: Defazio et al., "The Road Less Scheduled", NeurIPS 2024, Algorithm 1;
    ``schedulefree.AdamWScheduleFree`` 1.4.1.
    """
    count = check_tensor_lists(params=params, grads=grads, zs=zs, exp_avg_sqs=exp_avg_sqs)
    weights = schedule_free_weights(step, lr, weight_sum=weight_sum, lr_max=lr_max, warmup_steps=warmup_steps,
                                    r=r, weight_lr_power=weight_lr_power)
    beta1, beta2 = check_interpolation("beta1", beta1), check_beta("beta2", beta2)
    eps, weight_decay = check_eps(eps), check_nonnegative("weight_decay", weight_decay)
    if not count:
        return weights
    t, lr, ckp1 = _step_count(step), weights.lr, weights.ckp1
    bias_correction2 = bias_correction(beta2, t)
    y_scale = lr * (beta1 * (1 - ckp1) - 1)  # the reference's expression, as a Python float
    for (params_, grads_, zs_, exp_avg_sqs_), _ in grouped(
        [params, grads, zs, exp_avg_sqs], temporaries=temporaries(2, compiled=compiled, grads_prepared=False)
    ):
        if compiled or torch.compiler.is_compiling():
            run_compiled(schedule_free_adamw_rule, [params_, grads_, zs_, exp_avg_sqs_], beta2=beta2, eps=eps,
                         rsqrt_bias_correction2=rsqrt(bias_correction2), ckp1=ckp1, lr=lr, y_scale=y_scale,
                         decay=weight_decay or None)
            continue
        scale_(exp_avg_sqs_, beta2)                                          # v_t
        torch._foreach_addcmul_(exp_avg_sqs_, grads_, grads_, value=1 - beta2)
        denoms = torch._foreach_div(exp_avg_sqs_, bias_correction2)
        torch._foreach_sqrt_(denoms)
        torch._foreach_add_(denoms, eps)
        normalized = torch._foreach_div(grads_, denoms)                      # \tilde g_t (the reference: in grads)
        del denoms
        _step_y_and_z(params_, normalized, zs_, weight_decay=weight_decay, ckp1=ckp1, lr=lr, y_scale=y_scale)
    return weights


def schedule_free_sgd_update(
    params: list[Tensor],
    grads: list[Tensor],
    zs: list[Tensor],
    *,
    step,
    lr: float | Tensor,
    weight_sum: float,
    lr_max: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
    compiled: bool = False,
) -> ScheduleFreeWeights:
    r"""Schedule-free SGD step, in place, on lists of tensors; params hold :math:`y`.

    .. math::
        \tilde g_t = g_t + \lambda y_t \qquad
        y_{t+1} = (1-c_{t+1})\, y_t + c_{t+1} z_t + \gamma_t (\beta (1-c_{t+1}) - 1)\, \tilde g_t
        \qquad z_{t+1} = z_t - \gamma_t \tilde g_t

    with :math:`\beta` = ``momentum`` (see :func:`schedule_free_adamw_update`, of which this is
    the rule without the normalisation by :math:`\sqrt{v_t}`).

    Args:
        params, grads, zs: parallel lists: :math:`y`, the gradients at :math:`y`, and :math:`z`
            (a copy of the param before the first step).
        step, lr, weight_sum, lr_max: as in :func:`schedule_free_adamw_update`.
        momentum, weight_decay, warmup_steps, r, weight_lr_power: as in
            ``schedulefree.SGDScheduleFree``; ``momentum`` in (0, 1).
        compiled: run :func:`schedule_free_sgd_rule` per tensor, compiled: one pass, reading
            :math:`y, g, z` and writing :math:`y, z` (20 bytes per fp32 element).

    Returns:
        this step's :class:`ScheduleFreeWeights`; pass its ``weight_sum`` and ``lr_max`` next time.

    Mutates params and zs. Never grads (the reference adds the weight decay into its grads). The
    op order is ``SGDScheduleFree``'s, so results equal it bit for bit on CPU in fp32, fp64 and bf16.

    Example:
        >>> import torch
        >>> from optkernels.schedule_free import schedule_free_sgd_update
        >>> params, grads = [torch.ones(3)], [torch.full((3,), 0.5)]
        >>> zs = [params[0].clone()]
        >>> first = schedule_free_sgd_update(params, grads, zs, step=1, lr=0.1, weight_sum=0.0, lr_max=0.0)
        >>> second = schedule_free_sgd_update(params, grads, zs, step=2, lr=0.1, weight_sum=first.weight_sum,
        ...                                   lr_max=first.lr_max)
        >>> params[0], zs[0]
        (tensor([0.9225, 0.9225, 0.9225]), tensor([0.9000, 0.9000, 0.9000]))

    Reference: Defazio et al., "The Road Less Scheduled", NeurIPS 2024, Algorithm 1 (with SGD as
    the base optimizer); ``schedulefree.SGDScheduleFree`` 1.4.1.
    """
    count = check_tensor_lists(params=params, grads=grads, zs=zs)
    weights = schedule_free_weights(step, lr, weight_sum=weight_sum, lr_max=lr_max, warmup_steps=warmup_steps,
                                    r=r, weight_lr_power=weight_lr_power)
    momentum, weight_decay = check_interpolation("momentum", momentum), check_nonnegative("weight_decay", weight_decay)
    if not count:
        return weights
    lr, ckp1 = weights.lr, weights.ckp1
    y_scale = lr * (momentum * (1 - ckp1) - 1)
    for (params_, grads_, zs_), _ in grouped(
        [params, grads, zs], temporaries=temporaries(0, compiled=compiled, grads_prepared=bool(weight_decay))
    ):
        if compiled or torch.compiler.is_compiling():
            run_compiled(schedule_free_sgd_rule, [params_, grads_, zs_], ckp1=ckp1, lr=lr, y_scale=y_scale,
                         decay=weight_decay or None)
            continue
        if weight_decay:  # the reference adds into its grads; we into a copy
            grads_ = list(torch._foreach_add(grads_, params_, alpha=weight_decay))
        _step_y_and_z(params_, grads_, zs_, weight_decay=0.0, ckp1=ckp1, lr=lr, y_scale=y_scale)
    return weights


def _step_y_and_z(params: list[Tensor], directions: list[Tensor], zs: list[Tensor], *, weight_decay: float,
                  ckp1: float, lr: float, y_scale: float) -> None:
    """The interpolation both algorithms share, in the reference's order; ``directions`` may be
    updated in place (a temporary of the caller's)."""
    if weight_decay:
        torch._foreach_add_(directions, params, alpha=weight_decay)     # + lambda y_t, at y
    torch._foreach_lerp_(params, zs, ckp1)                                 # (1-c) y_t + c z_t
    torch._foreach_add_(params, directions, alpha=y_scale)                 # y_{t+1}
    torch._foreach_sub_(zs, directions, alpha=lr)                          # z_{t+1}


def schedule_free_adamw_rule(param, grad, z, exp_avg_sq, *, beta2, eps, rsqrt_bias_correction2, ckp1, lr,
                             y_scale, decay) -> None:
    """:func:`schedule_free_adamw_update` on one tensor, the form ``compiled=True`` runs; scalars are
    0-d tensors, the bias correction is :math:`1/\\sqrt{1-\\beta_2^t}`, ``y_scale`` is
    :math:`\\gamma_t(\\beta_1(1-c_{t+1})-1)`, ``decay`` the weight decay (``None`` when off)."""
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad * (1 - beta2))
    direction = grad / (exp_avg_sq.sqrt() * rsqrt_bias_correction2 + eps)
    _y_and_z_rule(param, direction, z, ckp1=ckp1, lr=lr, y_scale=y_scale, decay=decay)


def schedule_free_sgd_rule(param, grad, z, *, ckp1, lr, y_scale, decay) -> None:
    """:func:`schedule_free_sgd_update` on one tensor, the form ``compiled=True`` runs (scalars as in
    :func:`schedule_free_adamw_rule`)."""
    _y_and_z_rule(param, grad, z, ckp1=ckp1, lr=lr, y_scale=y_scale, decay=decay)


def _y_and_z_rule(param, direction, z, *, ckp1, lr, y_scale, decay) -> None:
    if decay is not None:
        direction = direction + param * decay
    lerp_(param, z, ckp1).add_(direction * y_scale)
    z.sub_(direction * lr)


def schedule_free_eval(params: list[Tensor], zs: list[Tensor], *, momentum: float) -> None:
    r"""Params from :math:`y` (training) to :math:`x` (evaluation), in place:
    :math:`x = y + (1 - 1/\beta)(z - y)`, inverting :math:`y = \beta x + (1-\beta) z`.

    ``momentum`` is AdamW's ``beta1`` or SGD's ``momentum``. Mutates params. The reference's
    ``optimizer.eval()`` on lists (the same ``lerp``, so the same bits).

    Example:
        >>> import torch
        >>> from optkernels.schedule_free import schedule_free_eval, schedule_free_train
        >>> params, zs = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 2.0])]
        >>> schedule_free_eval(params, zs, momentum=0.5)
        >>> params[0]
        tensor([-1.,  2.])
        >>> schedule_free_train(params, zs, momentum=0.5)
        >>> params[0]
        tensor([1., 2.])
    """
    _interpolate(params, zs, momentum, lambda beta: 1 - 1 / beta)


def schedule_free_train(params: list[Tensor], zs: list[Tensor], *, momentum: float) -> None:
    r"""Params from :math:`x` (evaluation) to :math:`y` (training), in place:
    :math:`y = \beta x + (1-\beta) z`. The reference's ``optimizer.train()`` on lists; see
    :func:`schedule_free_eval`."""
    _interpolate(params, zs, momentum, lambda beta: 1 - beta)


def _interpolate(params: list[Tensor], zs: list[Tensor], momentum: float, weight) -> None:
    check_tensor_lists(params=params, zs=zs)
    weight = weight(check_interpolation("momentum", momentum))
    for (params_, zs_), _ in grouped([params, zs], temporaries=0):
        torch._foreach_lerp_(params_, zs_, weight)


def check_interpolation(name: str, value) -> float:
    """In (0, 1): the interpolation weight :math:`\\beta`; 0 would leave :math:`x` unrecoverable
    from :math:`y` and :math:`z` (``eval`` divides by it)."""
    number = check_beta(name, value)
    if number == 0:
        raise ValueError(f"Invalid {name} value: {value} ({name} must be in (0, 1): schedule-free recovers "
                         f"x from y and z by dividing by it)")
    return number


def check_warmup_steps(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Invalid warmup_steps value: {value!r} (warmup_steps must be an int >= 0)")
    return value


def _step_count(step) -> int:
    """``step`` (an int or a 0-d tensor, >= 1) as an int."""
    if isinstance(step, (list, tuple)):
        raise TypeError("step must be one int or 0-d tensor: schedule-free counts steps per call (per param "
                        "group in the wrappers), since its averaging weights are shared by all tensors")
    number = as_float(step, "step")
    if not (number >= 1 and math.isfinite(number) and number.is_integer()):
        raise ValueError(f"step must be a whole number >= 1 (the count after this update), got {step}")
    return int(number)
