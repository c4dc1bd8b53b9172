"""Adam and AMSGrad."""

import ctypes

import torch
from torch import Tensor

from ._compiled import lerp_, run_compiled
from ._math import bias_correction, grouped, prepared_grads, rsqrt, scale_, temporaries
from ._validation import (UnsupportedOptionError, check_beta, check_eps, check_finite, check_flag, check_lr,
                          check_nonnegative, check_tensor_lists, optional_list, step_values)
from ._native import AdamOptions, library, threads
from .quantization import (CODE_DTYPE, STREAMS, as_rows, check_low_precision_state, check_state_precision, halves,
                           in_rows, load_state, quantized, random_key, random_words, store_param, store_state)


def adam_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None = None,
    *,
    step,
    lr: float | Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
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
    r"""Adam step, in place, on lists of tensors; AMSGrad when ``max_exp_avg_sqs`` is given.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \qquad
        \hat v_t = \max(\hat v_{t-1}, v_t) \text{ (AMSGrad) else } v_t

        \theta_t = \theta_{t-1} - \frac{\alpha}{1-\beta_1^t}
                   \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    Args:
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs: parallel lists of tensors.
        step: the step count *after* this update (1 on the first call): an int, or one int or
            0-d tensor per param.
        lr, beta1, beta2, eps: as in ``torch.optim.Adam``; ``lr`` may be a 1-element tensor.
        weight_decay, maximize: as in ``torch.optim.Adam``: :math:`g_t` is negated, then gets
            :math:`\lambda \theta_{t-1}` (coupled L2 decay), before the update and in its pass
            (see :func:`~optkernels._math.prepared_grads`).
        compiled: run :func:`adam_rule` per tensor, compiled (see ``optkernels._compiled``):
            one pass over memory, equal to the foreach path to rounding.
        param_scale: multiply params by this first: AdamW's decoupled weight decay in the same
            pass (:func:`~optkernels.weight_decay.decoupled_scale`); None leaves params alone.
        state_precision: how the moments are stored (see :mod:`optkernels.quantization`):
            ``"fp32"`` (torch.optim's: the param's dtype); ``"bf16"``: bfloat16 tensors, written
            with stochastic rounding; ``"8bit"``: per tensor either ``torch.uint8`` codes with
            their float32 scales in ``exp_avg_scales`` / ``exp_avg_sq_scales`` (one per block of
            256; the second moment square-root compressed), or, for tensors the caller keeps at
            full precision (under 4096 elements), a float tensor (its scale entry ``None`` or
            empty). Each state tensor's dtype says how it is stored; the update is computed in
            float32 in every case. Not with AMSGrad.
        stochastic_rounding: bf16 params get the update computed in float32 and rounded
            stochastically, so small updates are not lost (the state may then be float32).
        seed: the stochastic rounding's seed: bits are a hash of (seed, step, which tensor kind,
            element index), so the same seed gives the same bits, eager or compiled.

    Mutates params, exp_avgs, exp_avg_sqs (and max_exp_avg_sqs). Never grads. Weight decay
    composes in front, ``grads = weight_decay_l2(params, grads, ...)``, or runs in the kernel's
    pass: coupled as ``weight_decay``, decoupled as ``param_scale``; the same numbers.
    The op order is torch.optim.Adam's, so results equal it bit for bit on CPU.

    Example:
        >>> import torch
        >>> from optkernels import adam_update
        >>> params, grads = [torch.ones(3)], [torch.full((3,), 0.5)]
        >>> exp_avgs, exp_avg_sqs = [torch.zeros(3)], [torch.zeros(3)]
        >>> adam_update(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.1)
        >>> params[0]
        tensor([0.9000, 0.9000, 0.9000])

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2014, Algorithm 1;
    Reddi et al., "On the Convergence of Adam and Beyond", 2018 (AMSGrad).
    """
    if state_precision != "fp32" or stochastic_rounding:
        _adam_low_precision(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step=step, lr=lr,
                            beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize,
                            compiled=compiled, param_scale=param_scale, state_precision=state_precision,
                            exp_avg_scales=exp_avg_scales, exp_avg_sq_scales=exp_avg_sq_scales,
                            stochastic_rounding=stochastic_rounding, seed=seed)
        return
    if exp_avg_scales is not None or exp_avg_sq_scales is not None:
        raise ValueError("exp_avg_scales and exp_avg_sq_scales go with state_precision='8bit'")
    max_exp_avg_sqs = optional_list(max_exp_avg_sqs)
    count = check_tensor_lists(optional=("max_exp_avg_sqs",), params=params, grads=grads, exp_avgs=exp_avgs,
                               exp_avg_sqs=exp_avg_sqs, max_exp_avg_sqs=max_exp_avg_sqs)
    steps = step_values(step, count)
    lr, eps = check_lr(lr), check_eps(eps)
    param_scale = None if param_scale is None else check_finite("param_scale", param_scale)
    beta1, beta2 = check_beta("beta1", beta1), check_beta("beta2", beta2)
    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)
    for (params_, grads_, exp_avgs_, exp_avg_sqs_, max_exp_avg_sqs_), t in grouped(
        [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs], steps,
        temporaries=temporaries(1, compiled=compiled, grads_prepared=bool(weight_decay or maximize))
    ):
        if compiled or torch.compiler.is_compiling():
            run_compiled(adam_rule, [params_, grads_, exp_avgs_, exp_avg_sqs_, max_exp_avg_sqs_],
                         weight_decay=weight_decay, maximize=maximize, param_scale=param_scale,
                         beta1=beta1, beta2=beta2, eps=eps,
                         step_size=lr / bias_correction(beta1, t),
                         rsqrt_bias_correction2=rsqrt(bias_correction(beta2, t)))
            continue
        grads_ = prepared_grads(params_, grads_, weight_decay=weight_decay, maximize=maximize)
        if param_scale is not None:
            scale_(params_, param_scale)                                     # decoupled decay
        torch._foreach_lerp_(exp_avgs_, grads_, 1 - beta1)                  # m_t
        scale_(exp_avg_sqs_, beta2)                                          # v_t
        torch._foreach_addcmul_(exp_avg_sqs_, grads_, grads_, 1 - beta2)
        if max_exp_avg_sqs_ is not None:
            torch._foreach_maximum_(max_exp_avg_sqs_, exp_avg_sqs_)         # \hat v_t
            exp_avg_sqs_ = max_exp_avg_sqs_
        denoms = torch._foreach_sqrt(exp_avg_sqs_)
        torch._foreach_div_(denoms, bias_correction(beta2, t) ** 0.5)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(params_, exp_avgs_, denoms, (lr / bias_correction(beta1, t)) * -1)


def adam_rule(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, beta1, beta2, eps, step_size,
              rsqrt_bias_correction2) -> None:
    """:func:`adam_update` on one tensor, the form ``compiled=True`` runs; scalars are 0-d tensors,
    ``step_size`` is :math:`\\alpha/(1-\\beta_1^t)`, the bias corrections are computed outside
    (the second as :math:`1/\\sqrt{1-\\beta_2^t}`: a multiply costs less than a divide per element)."""
    lerp_(exp_avg, grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad * (1 - beta2))
    if max_exp_avg_sq is not None:
        exp_avg_sq = max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq, exp_avg_sq))
    denom = exp_avg_sq.sqrt() * rsqrt_bias_correction2 + eps
    param.sub_(exp_avg / denom * step_size)


def _adam_low_precision(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, **options) -> None:
    """:func:`adam_update` with low-precision state or stochastically rounded params."""
    low_precision_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, schedule=_adam_schedule, **options)


def _adam_schedule(t, *, lr: float, beta1: float, beta2: float) -> dict:
    return dict(step_size=lr / bias_correction(beta1, t), rsqrt_bias_correction2=rsqrt(bias_correction(beta2, t)),
                momentum_only=False)


def check_low_precision_lists(params, grads, exp_avgs, exp_avg_sqs, exp_avg_scales, exp_avg_sq_scales, *,
                              state_precision) -> int:
    """The checks of an Adam-family step with low-precision state, before any tensor changes:
    the precision, the lists' lengths, each state tensor's kind and scales, real float params.
    Returns the number of params."""
    check_state_precision(state_precision)
    count = check_tensor_lists(params=params, grads=grads)
    for name, states in (("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        if len(states) != count:
            raise ValueError(f"{name} has {len(states)} tensors but params has {count}")
    check_low_precision_state("exp_avgs", exp_avgs, "exp_avg_scales", exp_avg_scales, params)
    check_low_precision_state("exp_avg_sqs", exp_avg_sqs, "exp_avg_sq_scales", exp_avg_sq_scales, params)
    for index, param in enumerate(params):
        if param.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise TypeError(f"params[{index}] has dtype {param.dtype}; low-precision state goes with real "
                            "float params")
    return count


def low_precision_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, *, step, lr, beta1, beta2, eps,
                         weight_decay, maximize, compiled, param_scale, state_precision, exp_avg_scales,
                         exp_avg_sq_scales, stochastic_rounding, seed, schedule) -> None:
    """An Adam-family step (Adam, RAdam, NAdam, AdaBelief) with low-precision state or
    stochastically rounded params: :func:`adam_low_precision_rule` per tensor, eager, or with
    ``compiled=True`` the native CPU kernel (:func:`native_low_precision_steps`) and the rule
    compiled for what it leaves (the same numbers to rounding), with the scalars ``schedule(t,
    lr=, beta1=, beta2=)`` gives for step ``t`` (``step_size``, ``rsqrt_bias_correction2``,
    ``momentum_only``, ``belief``, ``grad_step_size``). Everything is checked before any tensor
    changes."""
    if max_exp_avg_sqs is not None:
        raise UnsupportedOptionError("AMSGrad (max_exp_avg_sqs) is not supported with low-precision state "
                                     "or stochastic rounding; use state_precision='fp32'")
    count = check_low_precision_lists(params, grads, exp_avgs, exp_avg_sqs, exp_avg_scales, exp_avg_sq_scales,
                                      state_precision=state_precision)
    steps = step_values(step, count)
    lr, eps = check_lr(lr), check_eps(eps)
    param_scale = None if param_scale is None else check_finite("param_scale", param_scale)
    beta1, beta2 = check_beta("beta1", beta1), check_beta("beta2", beta2)
    weight_decay, maximize = check_nonnegative("weight_decay", weight_decay), check_flag("maximize", maximize)
    stochastic_rounding = check_flag("stochastic_rounding", stochastic_rounding)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    exp_avg_scales = exp_avg_scales if exp_avg_scales is not None else [None] * count
    exp_avg_sq_scales = exp_avg_sq_scales if exp_avg_sq_scales is not None else [None] * count
    groups: dict[tuple, list[int]] = {}
    for index, param in enumerate(params):
        groups.setdefault((param.device, param.dtype, steps[index]), []).append(index)
    for (_, _, t), indices in groups.items():
        lists = [[lst[i] for i in indices] for lst in (params, grads, exp_avgs, exp_avg_sqs, exp_avg_scales,
                                                       exp_avg_sq_scales)]
        scalars = dict(beta1=beta1, beta2=beta2, eps=eps, **schedule(t, lr=lr, beta1=beta1, beta2=beta2),
                       seed=float(seed),
                       step=t if isinstance(t, Tensor) else float(t),
                       grad_decay=weight_decay or None, param_factor=param_scale, negate=maximize,
                       stochastic_rounding=stochastic_rounding)
        if compiled and not torch.compiler.is_compiling():
            lists = native_low_precision_steps(lists, **scalars)
        if compiled or torch.compiler.is_compiling():
            run_compiled(adam_low_precision_rule, lists, **scalars)
            continue
        device = lists[0][0].device
        numbers = {name: torch.tensor(value, dtype=torch.float64, device=device) for name, value in scalars.items()
                   if not (value is None or isinstance(value, bool))}
        for tensors in zip(*lists):
            adam_low_precision_rule(*tensors, **{**scalars, **numbers})


def adam_low_precision_rule(param, grad, exp_avg, exp_avg_sq, exp_avg_scale, exp_avg_sq_scale, *, beta1, beta2,
                            eps, step_size, rsqrt_bias_correction2, seed, step, grad_decay=None,
                            param_factor=None, negate=False, stochastic_rounding=False, momentum_only=False,
                            belief=False, grad_step_size=None) -> None:
    """:func:`adam_rule` in float32 registers over low-precision storage: the moments are read
    (codes dequantised, bf16 upcast), updated, written back in their precision (requantised,
    stochastically rounded), and the param updated in float32 and written back (bf16:
    stochastically rounded when asked). torch.optim's preparation of the grad and param
    (``negate``, coupled ``grad_decay``, decoupled ``param_factor``) runs here too, in float32,
    so a bf16 param's decay is not rounded away. Scalars are 0-d tensors, as compiled.
    ``momentum_only``: RAdam's unrectified steps, :math:`\\theta \\leftarrow \\theta - s\\, m_t`;
    ``step_size=None``: no update of the param beyond ``param_factor`` (AdaBelief's early steps
    without ``degenerated_to_sgd``). ``belief``: the second moment is AdaBelief's,
    :math:`s_t = \\beta_2 s_{t-1} + (1-\\beta_2)(g_t-m_t)^2 + \\epsilon`. ``grad_step_size``:
    NAdam's step, :math:`\\theta \\leftarrow \\theta - (c_g\\, g_t + s\\, m_t)/d_t`."""
    rows = as_rows([param, grad, exp_avg, exp_avg_sq], exp_avg_scale if quantized(exp_avg) else None)
    if quantized(exp_avg_sq) and rows[0] is not param and not in_rows(rows[3], exp_avg_sq_scale):
        rows = [param, grad, exp_avg, exp_avg_sq]
    # whole blocks: read as (blocks, 256) views, which compiled code indexes plainly (a reshape of
    # computed values into blocks costs it a gather per element); the param is written as itself
    param_rows, grad, exp_avg, exp_avg_sq = rows
    g = grad.float()
    p = param_rows.float()
    if negate:
        g = -g
    if grad_decay is not None:
        g = g + p * grad_decay
    if param_factor is not None:
        p = p * param_factor
    m = load_state(exp_avg, exp_avg_scale, signed=True)
    v = load_state(exp_avg_sq, exp_avg_sq_scale, signed=False)
    m = m + (g - m) * (1 - beta1)                                    # m_t
    if belief:                                                       # s_t (AdaBelief)
        v = v * beta2 + (g - m) * ((g - m) * (1 - beta2)) + eps
    else:
        v = v * beta2 + g * (g * (1 - beta2))                        # v_t
    if param_rows is not param:
        # the param's update in its own (flat) shape, reading m and v through views: compiled, a
        # write of block-shaped values into the flat param would be a buffer and a copy pass
        p = param.float() if param_factor is None else param.float() * param_factor
        m_param, v_param, g_param = m.view(param.shape), v.view(param.shape), g.view(param.shape)
    else:
        m_param, v_param, g_param = m, v, g
    if step_size is None:  # AdaBelief's rectified steps before N_sma >= 5, without degenerated_to_sgd
        pass
    elif momentum_only:  # RAdam's and AdaBelief's steps before rectification: SGD with momentum
        p = p - m_param * step_size
    elif grad_step_size is not None:  # NAdam
        p = p - (g_param * grad_step_size + m_param * step_size) / (v_param.sqrt() * rsqrt_bias_correction2 + eps)
    else:
        p = p - m_param / (v_param.sqrt() * rsqrt_bias_correction2 + eps) * step_size
    # the param first: compiled, its pass then reads the old codes, before they are rewritten
    store_param(param, p, stochastic_rounding=stochastic_rounding, seed=seed, step=step)
    if {exp_avg.dtype, exp_avg_sq.dtype} & {torch.bfloat16, CODE_DTYPE}:  # rounded stochastically: a word each
        random_m, random_v = halves(random_words(m.numel(), seed=seed, step=step, stream=STREAMS["moments"],
                                                 device=m.device).view(m.shape))
    else:
        random_m = random_v = None
    store_state(exp_avg, exp_avg_scale, m, signed=True, random=random_m)
    store_state(exp_avg_sq, exp_avg_sq_scale, v, signed=False, random=random_v)


# Inductor stores an intermediate (a dequantised moment, the new param) to a buffer of the tensor's
# size where its expression is long or read by several kernels: its CPU defaults (50 ops, 12 reads)
# would cut this rule into passes over memory joined by float32 buffers, where recomputing is
# faster (measured on 4M elements). With these, the 8-bit rule on whole blocks is two passes (each
# block's absmax of the new moments; then the param and both codes), the bf16 rule one (torch 2.13).
adam_low_precision_rule.inductor_options = {"realize_cpu_opcount_threshold": 4096,
                                            "realize_cpu_acc_reads_threshold": 64, "realize_reads_threshold": 64}


_NATIVE_STATES = {torch.float32: 0, torch.bfloat16: 1, torch.uint8: 2}  # STATE_STORAGE of the C++ source
_NATIVE_PARAMS = {torch.float32: 0, torch.bfloat16: 1}  # PARAM_STORAGE (bf16 rounded stochastically: 2)
_PLAIN = (Tensor, torch.nn.Parameter)
_PARALLEL_NUMEL = 1 << 16  # fewer elements in all run on one thread: waking the others costs more


def native_low_precision_steps(lists, *, beta1, beta2, eps, step_size, rsqrt_bias_correction2, seed, step,
                               grad_decay=None, param_factor=None, negate=False, stochastic_rounding=False,
                               momentum_only=False, belief=False, grad_step_size=None) -> list[list]:
    """:func:`adam_low_precision_rule` through the native CPU kernel (``native/adam_low_precision.cpp``,
    see ``optkernels._native``) for each position of the parallel lists it takes: contiguous
    CPU tensors in four distinct places, float32 or bf16 params with grads of their dtype,
    moments float32, bf16 or codes. Returns the lists of the positions it left (all of them
    where the kernel cannot be built), for the compiled rule."""
    if not lists[0] or lists[0][0].device.type != "cpu":
        return lists
    t = int(step.item() if isinstance(step, Tensor) else step)
    update = 3 if step_size is None else 2 if momentum_only else 1 if grad_step_size is not None else 0
    options = AdamOptions(
        one_minus_beta1=1 - beta1, beta2=beta2, one_minus_beta2=1 - beta2, eps=eps,
        step_size=0.0 if step_size is None else step_size,
        grad_step_size=0.0 if grad_step_size is None else grad_step_size,
        rsqrt_bias_correction2=rsqrt_bias_correction2, grad_decay=grad_decay or 0.0,
        param_factor=1.0 if param_factor is None else param_factor,  # times 1: exact
        negate=negate, decays_grad=grad_decay is not None,
        key_moments=random_key(seed, t, STREAMS["moments"]), key_param=random_key(seed, t, STREAMS["param"]))
    left = [[] for _ in lists]
    by_variant: dict[tuple, list[tuple]] = {}
    for tensors in zip(*lists):
        param, grad, exp_avg, exp_avg_sq = tensors[:4]
        state_storage, param_storage = _NATIVE_STATES.get(exp_avg.dtype), _NATIVE_PARAMS.get(param.dtype)
        # plain tensors only (a subclass's data pointer need not be its values), contiguous, and
        # in four distinct places (the kernel takes them as C++ __restrict)
        if (state_storage is not None and param_storage is not None and grad.dtype == param.dtype
                and exp_avg_sq.dtype == exp_avg.dtype and type(param) in _PLAIN and type(grad) in _PLAIN
                and type(exp_avg) in _PLAIN and type(exp_avg_sq) in _PLAIN and not grad.is_sparse
                and param.is_contiguous() and grad.is_contiguous() and exp_avg.is_contiguous()
                and exp_avg_sq.is_contiguous()):
            pointers = (param.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr())
            if len(set(pointers)) == 4:
                variant = (state_storage, 2 if param_storage and stochastic_rounding else param_storage)
                by_variant.setdefault(variant, []).append((tensors, pointers))
                continue
        for column, tensor in zip(left, tensors):
            column.append(tensor)
    for (state_storage, param_storage), group in by_variant.items():
        lib = library("adam_low_precision", UPDATE=update, SECOND_MOMENT=int(belief), STATE_STORAGE=state_storage,
                      PARAM_STORAGE=param_storage)
        if lib is None:
            for tensors, _ in group:
                for column, tensor in zip(left, tensors):
                    column.append(tensor)
            continue
        columns = list(zip(*(tensors for tensors, _ in group)))
        codes = state_storage == _NATIVE_STATES[CODE_DTYPE]
        numels = [param.numel() for param in columns[0]]
        options.threads = threads() if sum(numels) >= _PARALLEL_NUMEL else 1
        pointer_arrays = [(ctypes.c_void_p * len(group))(*column) for column in zip(*(p for _, p in group))]
        if codes:
            pointer_arrays += [(ctypes.c_void_p * len(group))(*[t.data_ptr() for t in column]) for column in columns[4:6]]
        else:  # no scales: null pointers
            pointer_arrays += [(ctypes.c_void_p * len(group))()] * 2
        lib.adam_step(*pointer_arrays, (ctypes.c_int64 * len(group))(*numels), ctypes.c_int64(len(group)),
                      ctypes.byref(options))
        # written outside torch: autograd's in-place checks must still see the change
        torch.autograd.graph.increment_version([t for column in (columns[0], columns[2], columns[3],
                                                                 *(columns[4:6] if codes else ()))
                                                for t in column])
    return left
