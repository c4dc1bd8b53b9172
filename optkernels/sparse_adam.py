"""SparseAdam: Adam on the entries a sparse gradient holds, leaving the others untouched."""

import math

from torch import Tensor

from ._math import bias_correction
from ._validation import check_beta, check_eps, check_lr, check_tensor_lists, step_values


def sparse_adam_update(
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
) -> None:
    r"""SparseAdam step, in place, on dense params with sparse (COO) gradients.

    Adam's rule, restricted to the entries :math:`i` that the gradient stores (its indices after
    ``coalesce()``, which sums repeated indices); every other entry of the param and of both
    moments keeps its value:

    .. math::
        m_{t,i} = \beta_1 m_{t-1,i} + (1-\beta_1) g_{t,i} \qquad
        v_{t,i} = \beta_2 v_{t-1,i} + (1-\beta_2) g_{t,i}^2

        \theta_{t,i} = \theta_{t-1,i} - \alpha \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
                       \frac{m_{t,i}}{\sqrt{v_{t,i}} + \epsilon}

    A stored value is taken as nonzero even where it is 0 (so its moments decay), as in torch.
    A gradient that stores nothing changes nothing (its ``step`` still counts, as in torch).

    Args:
        params, exp_avgs, exp_avg_sqs: parallel lists of dense real tensors.
        grads: one sparse COO tensor per param, coalesced or not, of the param's shape and dtype.
        step: the step count *after* this update (1 on the first call): an int, or one int or
            0-d tensor per param.
        lr, beta1, beta2, eps: as in ``torch.optim.SparseAdam``. A tensor ``lr`` enters the step
            size in its own dtype, as torch computes it.

    Mutates params, exp_avgs, exp_avg_sqs. Never grads. Negate the grads for ``maximize``.
    The ops are those of torch.optim.SparseAdam (``torch.optim._functional.sparse_adam``, its
    only implementation: a loop over tensors, since foreach ops do not take sparse tensors), so
    results equal it bit for bit.

    Example:
        >>> import torch
        >>> from optkernels import sparse_adam_update
        >>> params, exp_avgs, exp_avg_sqs = [torch.ones(4)], [torch.zeros(4)], [torch.zeros(4)]
        >>> grads = [torch.tensor([0.0, 0.5, 0.0, -2.0]).to_sparse()]  # stores entries 1 and 3
        >>> sparse_adam_update(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.1)
        >>> params[0]
        tensor([1.0000, 0.9000, 1.0000, 1.1000])

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2014, Algorithm 1,
    applied to the stored entries only (torch.optim.SparseAdam's masked approximation).
    """
    count = check_tensor_lists(sparse=("grads",), params=params, grads=grads, exp_avgs=exp_avgs,
                               exp_avg_sqs=exp_avg_sqs)
    for index, (param, grad) in enumerate(zip(params, grads)):
        if not grad.is_sparse:
            raise RuntimeError(f"grads[{index}] is dense: sparse_adam_update needs sparse (COO) gradients; "
                               "use adam_update for dense ones")
        if param.is_complex():
            raise TypeError(f"params[{index}] is complex: SparseAdam does not support complex params")
    steps = step_values(step, count)
    check_lr(lr)
    eps = check_eps(eps)
    beta1, beta2 = check_beta("beta1", beta1), check_beta("beta2", beta2)
    if isinstance(lr, Tensor):
        lr = lr.squeeze()  # as torch.optim's _to_scalar: a 0-d tensor in the arithmetic below
    for param, grad, exp_avg, exp_avg_sq, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        _update_one(param, grad, exp_avg, exp_avg_sq, t, lr=lr, beta1=beta1, beta2=beta2, eps=eps)


def _update_one(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, t: float, *,
                lr: float | Tensor, beta1: float, beta2: float, eps: float) -> None:
    grad = grad.coalesce()  # the update is not linear in g, so repeated indices are summed first
    grad_values = grad.values()
    if grad_values.numel() == 0:
        return
    indices = grad.indices()

    def at_indices(values: Tensor) -> Tensor:
        return grad.new(indices, values, grad.size())  # torch's constructor, so the adds round alike

    # m += (1 - beta1) (g - m) and v += (1 - beta2) (g^2 - v), on the stored entries
    old_exp_avg_values = exp_avg.sparse_mask(grad).values()
    exp_avg_deltas = grad_values.sub(old_exp_avg_values).mul_(1 - beta1)
    exp_avg.add_(at_indices(exp_avg_deltas))
    old_exp_avg_sq_values = exp_avg_sq.sparse_mask(grad).values()
    exp_avg_sq_deltas = grad_values.pow(2).sub_(old_exp_avg_sq_values).mul_(1 - beta2)
    exp_avg_sq.add_(at_indices(exp_avg_sq_deltas))

    # m_t and v_t at the stored entries, recomputed densely rather than masked out again
    numer = exp_avg_deltas.add_(old_exp_avg_values)
    denom = exp_avg_sq_deltas.add_(old_exp_avg_sq_values).sqrt_().add_(eps)
    step_size = lr * math.sqrt(bias_correction(beta2, t)) / bias_correction(beta1, t)
    param.add_(at_indices(-step_size * numer.div_(denom)))
