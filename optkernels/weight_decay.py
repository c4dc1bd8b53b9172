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
    factor = 1 - weight_decay if fixed else 1 - lr * weight_decay
    for (params_,), _ in grouped([params]):  # scale_ rounds per dtype
        scale_(params_, factor)
    return grads


def weight_decay_l1(*args, **kwargs):
    raise NotImplementedError("weight_decay_l1 is being written")
