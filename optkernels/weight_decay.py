"""Weight decay as a step of its own, composable in front of every kernel."""

import torch
from torch import Tensor

from ._math import grouped, scale_
from ._validation import check_lr, check_nonnegative, check_tensor_lists


def weight_decay_l2(
    params: list[Tensor],
    grads: list[Tensor],
    *,
    weight_decay: float,
    lr: float | Tensor | None = None,
    decoupled: bool = False,
    fixed: bool = False,
) -> list[Tensor]:
    r"""L2 weight decay; returns the gradients the next kernel should use.

    .. math::
        \text{coupled (L2 penalty):} \quad g_t \leftarrow g_t + \lambda \theta_{t-1}

        \text{decoupled:} \quad \theta_{t-1} \leftarrow (1 - \gamma\lambda)\,\theta_{t-1}
        \qquad \text{fixed (decoupled, lr-free):} \quad \theta_{t-1} \leftarrow (1 - \lambda)\,\theta_{t-1}

    Coupled returns new tensors ``grad + weight_decay * param`` and leaves params alone.
    Decoupled scales params in place (by ``1 - lr * weight_decay``, or ``1 - weight_decay``
    when ``fixed``, which is a decoupled decay by definition and needs no ``lr``) and returns
    ``grads`` unchanged. ``grads`` is never mutated. With ``weight_decay == 0`` nothing happens
    and ``grads`` is returned.

    Example (AdamW in two calls):
        >>> import torch
        >>> from optkernels import adam_update, weight_decay_l2
        >>> params, grads = [torch.ones(2)], [torch.ones(2)]
        >>> exp_avgs, exp_avg_sqs = [torch.zeros(2)], [torch.zeros(2)]
        >>> grads = weight_decay_l2(params, grads, weight_decay=0.01, lr=0.1, decoupled=True)
        >>> adam_update(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.1)

    References: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019;
    the ``fixed_decay`` option of adabelief-pytorch.
    """
    check_tensor_lists(params=params, grads=grads)
    weight_decay = check_nonnegative("weight_decay", weight_decay)
    decoupled = decoupled or fixed
    if decoupled and not fixed:
        if lr is None:
            raise ValueError("lr is required for decoupled weight decay (or pass fixed=True)")
        lr = check_lr(lr)
    if weight_decay == 0:
        return grads
    if not decoupled:
        return list(torch._foreach_add(grads, params, alpha=weight_decay))
    for (params_,), _ in grouped([params]):  # scale_ rounds per dtype
        scale_(params_, decoupled_scale(weight_decay, lr, fixed=fixed))
    return grads


def decoupled_scale(weight_decay: float, lr: float | None, *, fixed: bool = False) -> float:
    """The factor decoupled L2 decay scales params by: ``1 - lr * weight_decay``, or
    ``1 - weight_decay`` when ``fixed``. Pass it as a kernel's ``param_scale`` to decay in the
    kernel's own pass (one pass over memory with ``compiled=True``) instead of calling
    :func:`weight_decay_l2` first; the numbers are the same."""
    return 1 - weight_decay if fixed else 1 - lr * weight_decay


def weight_decay_l1(
    params: list[Tensor],
    grads: list[Tensor],
    *,
    weight_decay: float,
    lr: float | Tensor | None = None,
    decoupled: bool = False,
) -> list[Tensor]:
    r"""L1 weight decay (the lasso penalty :math:`\lambda \lVert\theta\rVert_1`); returns the
    gradients the next kernel should use.

    .. math::
        \text{coupled (subgradient):} \quad g_t \leftarrow g_t + \lambda\,\operatorname{sign}(\theta_{t-1})

        \text{decoupled (proximal step):} \quad
        \theta_{t-1} \leftarrow \operatorname{sign}(\theta_{t-1})\,\max(|\theta_{t-1}| - \gamma\lambda,\ 0)

    Coupled returns new tensors ``grad + weight_decay * sign(param)`` (0 where the param is 0:
    the subgradient of :math:`|\theta|` there that changes nothing) and leaves params alone; the
    adaptive kernels then rescale the penalty as they do the gradient, as coupled L2 does.

    Decoupled soft-thresholds params in place by :math:`\tau = \gamma\lambda` (``lr *
    weight_decay``) and returns ``grads`` unchanged. This is the proximal operator of
    :math:`\gamma\lambda\lVert\theta\rVert_1` (ISTA, FOBOS): entries with :math:`|\theta| \le \tau`
    become exact zeros, the others move :math:`\tau` towards zero and never across it. The naive
    :math:`\theta \leftarrow \theta - \tau\,\operatorname{sign}(\theta)` does neither: it hops over
    zero and leaves entries oscillating around it. For real tensors it is computed as
    :math:`\theta - \operatorname{clamp}(\theta, -\tau, \tau)`, equal to the formula bit for bit
    (one rounding per entry); in bf16/fp16 :math:`\tau` is rounded to the dtype.

    In front of a kernel (as decoupled L2 / AdamW is) the step that follows moves the zeros again
    by their own step. Called *after* the kernel instead (it needs nothing from the grads), it
    completes a proximal gradient step :math:`\theta \leftarrow S_\tau(\theta - \gamma\,\text{step})`,
    as ISTA and TensorFlow's proximal optimizers do: params are exactly sparse after every step,
    and with SGD the iterates converge to the lasso solution itself.

    Complex params are penalised by their modulus, :math:`\lambda \sum_i |z_i|`, the usual
    complex lasso (invariant to the phase): ``sign`` is then ``torch.sgn``, :math:`z/|z|`, in
    both modes, so a decoupled step shrinks :math:`|z|` by :math:`\tau` and keeps the phase.

    ``grads`` is never mutated. With ``weight_decay == 0`` (or, decoupled, ``lr == 0``) nothing
    happens and ``grads`` is returned.

    Example (a sparse Adam step):
        >>> import torch
        >>> from optkernels import adam_update, weight_decay_l1
        >>> params, grads = [torch.tensor([0.05, -0.5, 2.0])], [torch.zeros(3)]
        >>> grads = weight_decay_l1(params, grads, weight_decay=0.1, lr=1.0, decoupled=True)
        >>> params[0]
        tensor([ 0.0000, -0.4000,  1.9000])
        >>> adam_update(params, grads, [torch.zeros(3)], [torch.zeros(3)], step=1, lr=1.0)

    References: Tibshirani, "Regression Shrinkage and Selection via the Lasso", 1996; Duchi &
    Singer, "Efficient Online and Batch Learning Using Forward Backward Splitting", JMLR 2009.
    """
    check_tensor_lists(params=params, grads=grads)
    weight_decay = check_nonnegative("weight_decay", weight_decay)
    if decoupled:
        if lr is None:
            raise ValueError("lr is required for decoupled weight decay")
        lr = check_lr(lr)
    if weight_decay == 0:
        return grads
    if not decoupled:
        return list(torch._foreach_add(grads, _signs(params), alpha=weight_decay))
    threshold = lr * weight_decay
    if threshold == 0:
        return grads
    real = [param for param in params if not param.is_complex()]
    for (params_,), _ in grouped([real]):
        shrinks = torch._foreach_clamp_min(params_, -threshold)             # clamp(theta, -tau, tau)
        torch._foreach_clamp_max_(shrinks, threshold)
        torch._foreach_sub_(params_, shrinks)
    for param in params:
        if param.is_complex():
            param.copy_(torch.sgn(param).mul_((param.abs() - threshold).clamp_min_(0)))
    return grads


def _signs(params: list[Tensor]) -> list[Tensor]:
    """``sign`` of each param; ``torch.sgn`` (z/|z|) for complex ones, which ``sign`` refuses."""
    if any(param.is_complex() for param in params):
        return [torch.sgn(param) for param in params]
    return list(torch._foreach_sign(params))
