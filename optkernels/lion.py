"""Lion: the sign of an interpolated momentum, with decoupled weight decay."""

import torch
from torch import Tensor

from ._compiled import run_compiled
from ._math import grouped, prepared_grads, scale_, temporaries
from ._validation import (_unchecked_when_traced, _value, as_float, check_flag, check_lr, check_nonnegative,
                          check_tensor_lists)


def lion_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float = 0.9,
    beta2: float = 0.99,
    weight_decay: float = 0.0,
    maximize: bool = False,
    compiled: bool = False,
) -> None:
    r"""Lion step, in place, on lists of tensors.

    .. math::
        \theta_t = (1 - \alpha\lambda)\,\theta_{t-1}
                   - \alpha\,\operatorname{sign}\big(\beta_1 m_{t-1} + (1-\beta_1) g_t\big) \qquad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    Args:
        params, grads, exp_avgs: parallel lists of tensors (``exp_avgs`` holds :math:`m`).
        lr, beta1, beta2: :math:`\alpha, \beta_1, \beta_2` as in lion-pytorch's ``Lion``
            (``betas=(beta1, beta2)``); ``lr`` may be a 1-element tensor; betas lie in [0, 1].
        weight_decay: :math:`\lambda`, decoupled: params are scaled by :math:`1 - \alpha\lambda`
            first, as lion-pytorch does. (Its ``decoupled_weight_decay=True``, which makes the
            decay independent of the lr's scale, passes :math:`\lambda / \alpha_0` here, with
            :math:`\alpha_0` the initial lr: see ``wrappers.Lion``.)
        maximize: step up the gradient (:math:`g_t` negated first), in the kernel's pass.
        compiled: run :func:`lion_rule` per tensor, compiled (see ``optkernels._compiled``):
            one pass over memory (20 bytes per fp32 element: read param, grad, m; write param,
            m), equal to the foreach path to rounding.

    Mutates params and exp_avgs. Never grads. No step count: Lion has no bias correction. The op
    order is lion-pytorch 0.2.5's ``Lion`` (``lion_pytorch.py``, its default for-loop update:
    multiply and add, not the lerp of its foreach variant), so results equal it bit for bit on
    CPU. Complex params are refused: lion-pytorch's ``sgn`` of a complex number is
    :math:`z/|z|`, not the sign of each part.

    Example:
        >>> import torch
        >>> from optkernels.lion import lion_update
        >>> params, grads = [torch.ones(3)], [torch.tensor([0.5, -0.5, 0.0])]
        >>> exp_avgs = [torch.zeros(3)]
        >>> lion_update(params, grads, exp_avgs, lr=0.1)
        >>> params[0]
        tensor([0.9000, 1.1000, 1.0000])
        >>> exp_avgs[0]
        tensor([ 0.0050, -0.0050,  0.0000])

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023, Program 1;
    lion-pytorch 0.2.5 (github.com/lucidrains/lion-pytorch).
    """
    check_tensor_lists(params=params, grads=grads, exp_avgs=exp_avgs)
    check_real("params", params)
    lr = check_lr(lr)
    beta1, beta2 = check_lion_beta("beta1", beta1), check_lion_beta("beta2", beta2)
    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)
    param_scale = 1. - lr * weight_decay if weight_decay else None   # lion-pytorch's stepweight decay
    for (params_, grads_, exp_avgs_), _ in grouped(
        [params, grads, exp_avgs], temporaries=temporaries(1, compiled=compiled, grads_prepared=maximize)
    ):
        if compiled or torch.compiler.is_compiling():
            run_compiled(lion_rule, [params_, grads_, exp_avgs_], maximize=maximize, param_scale=param_scale,
                         lr=lr, beta1=beta1, beta2=beta2)
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=0.0, maximize=maximize)
        if param_scale is not None:
            scale_(params_, param_scale)                                     # decoupled decay
        updates = _scaled(exp_avgs_, beta1)                                  # c_t = b1 m + (1 - b1) g
        torch._foreach_add_(updates, grads_, alpha=1. - beta1)
        torch._foreach_sign_(updates)
        torch._foreach_add_(params_, updates, alpha=-lr)                     # theta -= lr sign(c_t)
        del updates
        scale_(exp_avgs_, beta2)                                             # m_t
        torch._foreach_add_(exp_avgs_, grads_, alpha=1. - beta2)


def lion_rule(param, grad, exp_avg, *, lr, beta1, beta2) -> None:
    """:func:`lion_update` on one tensor, the form ``compiled=True`` runs; scalars are 0-d tensors
    (decoupled decay runs before it, as ``param_scale``: see ``optkernels._compiled``)."""
    update = (exp_avg * beta1 + grad * (1 - beta1)).sign()
    param.sub_(update * lr)
    exp_avg.mul_(beta2).add_(grad * (1 - beta2))


def _scaled(tensors: list[Tensor], factor: float) -> list[Tensor]:
    """``[t * factor for t in tensors]``, rounding as ``Tensor.mul`` does (see ``_math.scale_``:
    on CPU a Python scalar would first be rounded to bf16 or fp16)."""
    if tensors and tensors[0].dtype in (torch.bfloat16, torch.float16) and tensors[0].device.type == "cpu":
        return list(torch._foreach_mul(tensors, torch.tensor(factor, dtype=torch.float64)))
    return list(torch._foreach_mul(tensors, factor))


@_unchecked_when_traced(_value)
def check_lion_beta(name: str, value) -> float:
    """A Lion beta lies in [0, 1], as lion-pytorch accepts: 1 is allowed (beta1 = 1 steps by the
    sign of the momentum alone; beta2 = 1 freezes it)."""
    number = as_float(value, name)
    if not 0.0 <= number <= 1.0:  # also false for NaN
        raise ValueError(f"Invalid {name} value: {value} ({name} must be in [0, 1])")
    return number


@_unchecked_when_traced(lambda name, tensors: None)
def check_real(name: str, tensors: list[Tensor]) -> None:
    for index, tensor in enumerate(tensors):
        if tensor.is_complex():
            raise TypeError(f"{name}[{index}] is {tensor.dtype}: Lion does not support complex params "
                            "(the sign of a complex number is not the sign of its parts)")
