"""ASGD: stochastic gradient descent with a decaying step and a running (Polyak) average."""

import math

import torch
from torch import Tensor

from ._compiled import run_compiled
from ._math import grouped, prepared_grads, scale_, temporaries
from ._validation import (as_float, check_flag, check_lr, check_nonnegative, check_scalar_lists, check_tensor_lists,
                          step_values)


def asgd_update(
    params: list[Tensor],
    grads: list[Tensor],
    axs: list[Tensor],
    mus: list[Tensor],
    etas: list[Tensor],
    *,
    step,
    lr: float | Tensor,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0.0,
    maximize: bool = False,
    compiled: bool = False,
) -> None:
    r"""ASGD step, in place, on lists of tensors.

    With :math:`\gamma` the learning rate and :math:`\eta_0 = \gamma`, :math:`\mu_0 = 1`:

    .. math::
        \theta_t = (1 - \lambda \eta_{t-1})\, \theta_{t-1} - \eta_{t-1} g_t

        \bar\theta_t = \bar\theta_{t-1} + \mu_{t-1} (\theta_t - \bar\theta_{t-1})
        \qquad (\bar\theta_t = \theta_t \text{ while } \mu_{t-1} = 1)

        \eta_t = \frac{\gamma}{(1 + \lambda \gamma t)^\alpha} \qquad
        \mu_t = \frac{1}{\max(1, t - t_0)}

    Args:
        params, grads, axs: parallel lists of tensors; ``axs`` holds the averages
            :math:`\bar\theta` (zeros at first).
        mus, etas: one 1-element floating tensor per param (0-d float32 in torch.optim.ASGD,
            float64 under a float64 default dtype), holding :math:`\mu_{t-1}` and
            :math:`\eta_{t-1}`; ones and ``lr`` at first. Each param keeps its own: params
            that skipped steps, or stepped under another lr, have other values.
        step: the step count *after* this update (1 on the first call): an int, or one int or
            0-d tensor per param.
        lr: :math:`\gamma`, a number or a 1-element tensor (read as the same number); it enters
            only the next :math:`\eta`, computed in double precision as torch's for-loop path
            does from a number, then rounded to the dtype of ``etas``.
        lambd, alpha, t0: as in ``torch.optim.ASGD``.
        weight_decay, maximize: as in ``torch.optim.ASGD`` (coupled decay, besides ``lambd``), in
            the kernel's pass (see :func:`adam_update`).
        compiled: run :func:`asgd_rule` per tensor, compiled (see ``optkernels._compiled``):
            one pass over memory, equal to the foreach path to rounding. ``mus`` and ``etas``
            are updated as without it.

    Mutates params, axs, mus and etas. Never grads. The decay :math:`\lambda` is part of the
    rule (it scales with :math:`\eta_{t-1}`), so it is applied here; ASGD's ``weight_decay`` is
    ``weight_decay`` here, or composed in front: ``grads = weight_decay_l2(params, grads, ...)``.
    Complex params are treated as pairs of reals, as torch does.

    The ops are those of torch.optim.ASGD's for-loop path (its default on CPU), in its order, so
    results equal it bit for bit on CPU. Its foreach path computes
    :math:`\theta - \eta (g + \lambda\theta)`, averages with :math:`\mu_{t-1} = 1` as
    :math:`\bar\theta + (\theta - \bar\theta)`, and computes :math:`\eta_t` in float32 from the
    float step tensor: equal to rounding. Given a float32 tensor ``lr``, both torch paths compute
    :math:`\eta_t` in float32; we compute it as for the same float (so a tensor lr and its value
    give the same numbers here), which differs from torch by float32 roundings of :math:`\eta`.

    Example:
        >>> import torch
        >>> from optkernels import asgd_update
        >>> params, grads, axs = [torch.ones(2)], [torch.ones(2)], [torch.zeros(2)]
        >>> mus, etas = [torch.tensor(1.0)], [torch.tensor(0.1)]
        >>> asgd_update(params, grads, axs, mus, etas, step=1, lr=0.1, lambd=0.0, t0=0)
        >>> params[0], axs[0], mus[0]
        (tensor([0.9000, 0.9000]), tensor([0.9000, 0.9000]), tensor(1.))

    Reference: Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", 1992;
    the step-size schedule of Xu, "Towards Optimal One Pass Large Scale Learning with Averaged
    Stochastic Gradient Descent", 2011, as torch.optim.ASGD.
    """
    count = check_tensor_lists(params=params, grads=grads, axs=axs)
    check_scalar_lists(count, mus=mus, etas=etas)
    steps = step_values(step, count)
    lr = check_lr(lr)
    lambd, alpha = check_nonnegative("lambd", lambd), check_nonnegative("alpha", alpha)
    t0 = check_t0(t0)
    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)

    # Tensors with the same (eta, mu) take one foreach call; usually that is all of them.
    keys = [(eta.item(), mu.item()) for eta, mu in zip(etas, mus)]
    for (params_, grads_, axs_), (eta, mu) in grouped(
        [params, grads, axs], keys,
        temporaries=temporaries(1, compiled=compiled, grads_prepared=bool(weight_decay or maximize))
    ):
        if compiled or torch.compiler.is_compiling():
            run_compiled(asgd_rule, [params_, grads_, axs_], weight_decay=weight_decay, maximize=maximize,
                         decay=1 - lambd * eta, eta=eta,
                         mu=mu if mu != 1 else None)
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=weight_decay, maximize=maximize)
        scale_(params_, 1 - lambd * eta)                                    # decay term
        torch._foreach_add_(params_, grads_, alpha=-eta)                   # theta_t
        if mu != 1:                                                         # bar theta_t
            differences = torch._foreach_sub(params_, axs_)
            scale_(differences, mu)
            torch._foreach_add_(axs_, differences)
        else:
            torch._foreach_copy_(axs_, params_)
    for eta, mu, t in zip(etas, mus, steps):
        # torch's expressions, in its order; the double goes through a tensor of the default
        # dtype as in torch, which rounds twice where eta is not of that dtype (a checkpoint
        # loaded onto bf16 params casts eta and mu to bf16)
        eta.copy_(torch.as_tensor(lr / ((1 + lambd * lr * t) ** alpha)))
        mu.copy_(torch.as_tensor(1 / max(1, t - t0)))


def check_t0(t0) -> float:
    """``t0`` is a number, not NaN (inf: never average)."""
    value = as_float(t0, "t0")
    if math.isnan(value):
        raise ValueError(f"Invalid t0 value: {t0} (t0 must not be NaN)")
    return value


def asgd_rule(param, grad, ax, *, decay, eta, mu) -> None:
    """:func:`asgd_update` on one tensor, the form ``compiled=True`` runs; scalars are 0-d tensors,
    ``decay`` is :math:`1 - \\lambda \\eta_{t-1}`, and ``mu`` is None while :math:`\\mu_{t-1} = 1`
    (the average is then the param: copied, not computed)."""
    param.mul_(decay).sub_(grad * eta)                                  # theta_t
    if mu is not None:                                                  # bar theta_t
        ax.add_((param - ax) * mu)
    else:
        ax.copy_(param)
