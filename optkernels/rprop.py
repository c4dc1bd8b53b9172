"""Rprop: resilient backpropagation, a per-element step size driven by gradient signs."""

import math

import torch
from torch import Tensor

from ._compiled import run_compiled
from ._math import grouped, prepared_grads, temporaries
from ._validation import as_float, check_flag, check_tensor_lists


def rprop_update(
    params: list[Tensor],
    grads: list[Tensor],
    prevs: list[Tensor],
    step_sizes: list[Tensor],
    *,
    etaminus: float = 0.5,
    etaplus: float = 1.2,
    step_size_min: float = 1e-6,
    step_size_max: float = 50.0,
    maximize: bool = False,
    compiled: bool = False,
) -> None:
    r"""Rprop step, in place, on lists of tensors.

    Per element, with :math:`g^{prev}` the gradient kept from the last step (0 at first):

    .. math::
        \eta_t = \begin{cases}
            \min(\eta_{t-1} \eta_+, \Gamma_{max}) & g^{prev} g_t > 0 \\
            \max(\eta_{t-1} \eta_-, \Gamma_{min}) & g^{prev} g_t < 0
                \quad\text{(and } g_t \leftarrow 0\text{: no move, and no sign to compare next step)} \\
            \eta_{t-1} & \text{otherwise}
        \end{cases}

        \theta_t = \theta_{t-1} - \eta_t \operatorname{sign}(g_t) \qquad g^{prev} \leftarrow g_t

    Args:
        params, grads, prevs, step_sizes: parallel lists of tensors. ``prevs`` start at zero and
            ``step_sizes`` filled with the learning rate, as torch.optim.Rprop initialises them.
        etaminus, etaplus: the factors that shrink and grow a step size (``0 < etaminus < 1 <
            etaplus``): torch.optim.Rprop's ``etas``.
        step_size_min, step_size_max: the bounds of a step size, its ``step_sizes``.
        maximize: step up the gradient, as ``torch.optim.Rprop``'s (torch's Rprop has no weight
            decay; compose :func:`weight_decay_l2` in front for one).
        compiled: run :func:`rprop_rule` per tensor, compiled (see ``optkernels._compiled``):
            one pass over memory, equal to the foreach path to rounding.

    Mutates params, prevs and step_sizes. Never grads. The update uses gradient signs only, so it
    needs no step count and no learning rate (that is the initial step size). Complex params
    are treated as pairs of reals, as torch does. The ops are torch.optim.Rprop's, in its order,
    so results equal both its for-loop and foreach paths bit for bit on CPU.

    Example:
        >>> import torch
        >>> from optkernels import rprop_update
        >>> params, grads = [torch.zeros(2)], [torch.tensor([1.0, -2.0])]
        >>> prevs, step_sizes = [torch.zeros(2)], [torch.full((2,), 0.1)]
        >>> rprop_update(params, grads, prevs, step_sizes)
        >>> params[0]
        tensor([-0.1000,  0.1000])
        >>> rprop_update(params, grads, prevs, step_sizes)  # same signs: steps grow by etaplus
        >>> step_sizes[0]
        tensor([0.1200, 0.1200])

    Reference: Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation
    Learning: The RPROP Algorithm", ICNN 1993; without weight-backtracking (iRprop-, Igel &
    Huesken, 2000), as torch.optim.Rprop.
    """
    check_tensor_lists(params=params, grads=grads, prevs=prevs, step_sizes=step_sizes)
    etaminus, etaplus = check_etas(etaminus, etaplus)
    step_size_min, step_size_max = check_step_size_bounds(step_size_min, step_size_max)
    maximize = check_flag("maximize", maximize)
    for (params_, grads_, prevs_, step_sizes_), _ in grouped(
        [params, grads, prevs, step_sizes], temporaries=temporaries(1, compiled=compiled, grads_prepared=maximize)
    ):
        if compiled or torch.compiler.is_compiling():
            run_compiled(rprop_rule, [params_, grads_, prevs_, step_sizes_], maximize=maximize,
                         etaminus=etaminus, etaplus=etaplus,
                         step_size_min=step_size_min, step_size_max=step_size_max)
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=0.0, maximize=maximize)
        factors = torch._foreach_mul(grads_, prevs_)
        torch._foreach_sign_(factors)
        for factor in factors:  # torch's three masked fills, in its order
            factor.masked_fill_(factor.gt(0), etaplus)
            factor.masked_fill_(factor.lt(0), etaminus)
            factor.masked_fill_(factor.eq(0), 1)
        torch._foreach_mul_(step_sizes_, factors)                            # eta_t
        for step_size in step_sizes_:
            step_size.clamp_(step_size_min, step_size_max)
        # prevs take the gradient, zeroed where its sign flipped; it is also the direction
        torch._foreach_copy_(prevs_, grads_)
        for prev, factor in zip(prevs_, factors):
            prev.masked_fill_(factor.eq(etaminus), 0)
        del factors
        torch._foreach_addcmul_(params_, torch._foreach_sign(prevs_), step_sizes_, value=-1)


def check_etas(etaminus, etaplus) -> tuple[float, float]:
    """``0 < etaminus < 1 < etaplus``, finite; the message starts as torch.optim.Rprop's."""
    minus, plus = as_float(etaminus, "etaminus"), as_float(etaplus, "etaplus")
    if not (0.0 < minus < 1.0 < plus < math.inf):  # also false for NaN
        raise ValueError(f"Invalid eta values: {etaminus}, {etaplus} "
                         "(etas = (etaminus, etaplus) must satisfy 0 < etaminus < 1 < etaplus < inf)")
    return minus, plus


def check_step_size_bounds(step_size_min, step_size_max) -> tuple[float, float]:
    """``0 <= step_size_min <= step_size_max``, the minimum finite (the maximum may be inf)."""
    low, high = as_float(step_size_min, "step_size_min"), as_float(step_size_max, "step_size_max")
    if not (0.0 <= low <= high and low < math.inf):  # also false for NaN
        raise ValueError(f"Invalid step_sizes: ({step_size_min}, {step_size_max}) (step_sizes = "
                         "(step_size_min, step_size_max) must satisfy 0 <= step_size_min <= step_size_max)")
    return low, high


def rprop_rule(param, grad, prev, step_size, *, etaminus, etaplus, step_size_min, step_size_max) -> None:
    """:func:`rprop_update` on one tensor, the form ``compiled=True`` runs; scalars are 0-d tensors."""
    sign = (grad * prev).sign()
    # sign + 1 is 1 where the sign is 0, and NaN stays NaN, as torch's masked fills leave it
    factor = torch.where(sign > 0, etaplus, torch.where(sign < 0, etaminus, sign + 1))
    step_size.mul_(factor).clamp_(step_size_min, step_size_max)       # eta_t
    prev.copy_(torch.where(sign < 0, 0, grad))                          # no move where the sign flipped
    param.sub_(prev.sign() * step_size)
