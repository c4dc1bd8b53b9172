"""Adagrad: per-coordinate step sizes from the running sum of squared gradients."""

import torch
from torch import Tensor

from ._compiled import run_compiled
from ._math import grouped, prepared_grads, temporaries
from ._validation import check_eps, check_flag, check_lr, check_nonnegative, check_tensor_lists, step_values


def adagrad_update(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    *,
    step,
    lr: float | Tensor,
    lr_decay: float = 0.0,
    eps: float = 1e-10,
    weight_decay: float = 0.0,
    maximize: bool = False,
    compiled: bool = False,
) -> None:
    r"""Adagrad step, in place, on lists of tensors; ``grads`` may be sparse (COO).

    .. math::
        \tilde\gamma_t = \frac{\gamma}{1 + (t-1)\eta} \qquad
        s_t = s_{t-1} + g_t^2 \qquad
        \theta_t = \theta_{t-1} - \tilde\gamma_t \frac{g_t}{\sqrt{s_t} + \epsilon}

    with :math:`\eta` the ``lr_decay`` and :math:`s_0` the initial accumulator value (the
    caller fills ``state_sums`` with it; torch.optim.Adagrad's default is 0).

    Args:
        params, grads, state_sums: parallel lists of tensors.
        step: the step count *after* this update (1 on the first call): an int, or one int or
            0-d tensor per param. Only the lr decay uses it.
        lr, lr_decay, eps: as in ``torch.optim.Adagrad``; ``lr`` may be a 1-element tensor.
        weight_decay, maximize: as in ``torch.optim.Adagrad`` (coupled decay, dense grads only, as
            in torch), in the kernel's pass (see :func:`adam_update`).
        compiled: run :func:`adagrad_rule` per dense tensor, compiled (see ``optkernels._compiled``):
            one pass over memory, equal to the foreach path to rounding. Sparse grads ignore it.

    Mutates params and state_sums. Never grads. Weight decay composes in front,
    ``grads = weight_decay_l2(params, grads, ...)``, or runs in the kernel's pass as ``weight_decay``. A sparse
    gradient updates only the entries it holds, one tensor at a time, as torch does; sparse
    grads of complex params are refused (torch squares them as complex numbers, not
    :math:`|g|^2`). Dense complex params are viewed as real pairs, as torch does.

    The op order is torch.optim.Adagrad's for-loop path (``_single_tensor_adagrad``, also what
    its foreach path runs for a group holding a sparse grad). On CPU the for-loop's
    ``addcdiv(g, std, value=-lr_t)`` computes ``(-lr_t * g) / std``, the product and quotient
    its foreach path computes in two ops, so in fp32 and fp64 both paths equal this bit for
    bit; in bf16 the foreach path rounds the product to bf16 in between, so there we equal the
    for-loop path. A tensor ``lr`` is decayed in double here, in float32 by torch (an ulp of
    ``lr`` apart when ``lr_decay`` is not 0).

    Example:
        >>> import torch
        >>> from optkernels import adagrad_update
        >>> params, grads, state_sums = [torch.ones(2)], [torch.full((2,), 2.0)], [torch.zeros(2)]
        >>> adagrad_update(params, grads, state_sums, step=1, lr=0.1)
        >>> params[0], state_sums[0]
        (tensor([0.9000, 0.9000]), tensor([4., 4.]))

    Reference: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and
    Stochastic Optimization", JMLR 12, 2011.
    """
    count = check_tensor_lists(sparse=("grads",), params=params, grads=grads, state_sums=state_sums)
    steps = step_values(step, count)
    lr, eps = check_lr(lr), check_eps(eps)
    lr_decay = check_nonnegative("lr_decay", lr_decay)
    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)
    sparse = [i for i, grad in enumerate(grads) if grad.is_sparse]
    for i in sparse:
        if weight_decay != 0:
            raise RuntimeError(f"grads[{i}] is sparse; weight_decay is not compatible with sparse gradients")
        if grads[i].is_complex():
            raise RuntimeError(f"grads[{i}] is sparse and complex; Adagrad takes sparse grads of real params only")
    dense_lists, dense_steps = [params, grads, state_sums], steps
    if sparse:
        dense = [i for i in range(count) if not grads[i].is_sparse]
        dense_lists = [[tensors[i] for i in dense] for tensors in dense_lists]
        dense_steps = [steps[i] for i in dense]
    for (params_, grads_, state_sums_), t in grouped(
        dense_lists, dense_steps,
        temporaries=temporaries(1, compiled=compiled, grads_prepared=bool(weight_decay or maximize))
    ):
        if compiled or torch.compiler.is_compiling():
            run_compiled(adagrad_rule, [params_, grads_, state_sums_], weight_decay=weight_decay, maximize=maximize,
                         lr=_decayed_lr(lr, lr_decay, t), eps=eps)
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=weight_decay, maximize=maximize)
        torch._foreach_addcmul_(state_sums_, grads_, grads_, value=1)       # s_t
        stds = torch._foreach_sqrt(state_sums_)
        torch._foreach_add_(stds, eps)
        torch._foreach_addcdiv_(params_, grads_, stds, value=-_decayed_lr(lr, lr_decay, t))
    for i in sparse:
        _sparse_update(params[i], -grads[i] if maximize else grads[i], state_sums[i],
                       lr=_decayed_lr(lr, lr_decay, steps[i]), eps=eps)


def _decayed_lr(lr: float, lr_decay: float, step: float) -> float:
    r"""\tilde\gamma_t, in Python floats as torch computes it."""
    return lr / (1 + (step - 1) * lr_decay)


def _sparse_update(param: Tensor, grad: Tensor, state_sum: Tensor, *, lr: float, eps: float) -> None:
    """The rule on the entries a sparse gradient holds; torch's ``_single_tensor_adagrad`` sparse
    branch, op for op. Duplicate indices are summed first (the update is not linear in g)."""
    grad = grad.coalesce()
    values = grad.values()
    state_sum.add_(_like_sparse(grad, values.pow(2)))
    stds = state_sum.sparse_mask(grad).values().sqrt_().add_(eps)
    param.add_(_like_sparse(grad, values / stds), alpha=-lr)


def _like_sparse(grad: Tensor, values: Tensor) -> Tensor:
    # the indices come from a coalesced tensor: valid, so skip torch's checks (and their warning)
    return torch.sparse_coo_tensor(grad.indices(), values, grad.size(), check_invariants=False)


def adagrad_rule(param, grad, state_sum, *, lr, eps) -> None:
    """:func:`adagrad_update` on one dense tensor, the form ``compiled=True`` runs; scalars are 0-d
    tensors, ``lr`` is the decayed :math:`\\tilde\\gamma_t`, computed outside."""
    state_sum.addcmul_(grad, grad)
    std = state_sum.sqrt() + eps
    param.sub_(grad * lr / std)
