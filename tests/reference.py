"""Plain per-tensor reference rules, written from the papers to be read, not to be fast.

Each function updates one parameter tensor (and its state dict) in place with ordinary tensor
ops: no foreach, no grouping, no shared helpers from :mod:`optkernels`. The kernels are tested
against these.
"""

import bisect
import math

import torch
from torch import Tensor


def adabelief_reference(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-16,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    decoupled_weight_decay: bool = True,
    fixed_decay: bool = False,
    rectify: bool = True,
    degenerated_to_sgd: bool = True,
    maximize: bool = False,
) -> None:
    r"""One AdaBelief step on one tensor, in place on ``param`` and ``state``; ``grad`` is not changed.

    ``state`` holds ``step`` (a Python int, the number of steps taken so far), ``exp_avg`` (m),
    ``exp_avg_var`` (s) and, with ``amsgrad``, ``max_exp_avg_var``; missing entries start at zero.

    Algorithm 2 of the paper, with :math:`t` the step count after this update:

    .. math::
        g_t &= \pm\nabla f(\theta_{t-1})        && \text{(minus when maximizing)} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        s_t &= \beta_2 s_{t-1} + (1-\beta_2) (g_t - m_t)^2 + \epsilon \\
        \hat m_t &= m_t / (1-\beta_1^t) \qquad \hat s_t = s_t / (1-\beta_2^t) \\
        \theta_t &= \theta_{t-1} - \alpha\, \hat m_t / (\sqrt{\hat s_t} + \epsilon)

    :math:`\epsilon` is added into :math:`s_t` itself, so it accumulates over the steps: the
    paper's main text writes it so, its author confirmed that form is the intended one
    (Adabelief-Optimizer issue #61), and the official code does it with an in-place ``add_``.

    AMSGrad uses :math:`\max(\hat s_{t-1}, s_t)` (the maximum of the s_t that include eps) in
    place of :math:`s_t` in the unrectified update, as the official code does.

    Rectification (``rectify=True``) is RAdam's (Liu et al., ICLR 2020, Algorithm 2), with the
    official package's more conservative threshold :math:`\rho_t \ge 5` (RAdam's paper: > 4):

    .. math::
        \rho_\infty = \frac{2}{1-\beta_2} - 1 \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t} \qquad
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}

    - :math:`\rho_t \ge 5`: :math:`\theta_t = \theta_{t-1} - \alpha r_t \frac{\sqrt{1-\beta_2^t}}
      {1-\beta_1^t} \frac{m_t}{\sqrt{s_t} + \epsilon}`. As in the official code, this step
      reads :math:`s_t`, never the AMSGrad maximum, and adds eps to :math:`\sqrt{s_t}` before
      the bias correction, not after.
    - :math:`\rho_t < 5` and ``degenerated_to_sgd``: SGD with momentum,
      :math:`\theta_t = \theta_{t-1} - \alpha \hat m_t`.
    - :math:`\rho_t < 5` otherwise: the parameter does not move (the state still updates).

    Weight decay, applied before the moments are updated:

    - coupled (``decoupled_weight_decay=False``, an L2 penalty): :math:`g_t \leftarrow g_t +
      \lambda \theta_{t-1}`, after the sign flip of ``maximize`` (torch.optim's order);
    - decoupled (AdamW): :math:`\theta_{t-1} \leftarrow (1 - \alpha\lambda)\,\theta_{t-1}`;
    - fixed (decoupled, ``fixed_decay=True``): :math:`\theta_{t-1} \leftarrow (1-\lambda)\,\theta_{t-1}`.

    Differences from adabelief-pytorch 0.2.1, none of which changes the numbers for fp32 and
    fp64 tensors: the official code adds the coupled decay into ``p.grad`` in place (here a new
    tensor), computes fp16 params in fp32 (here in the tensor's own dtype), has no ``maximize``,
    and with ``weight_decay=0`` still multiplies params by ``1 - lr * 0`` (here nothing).

    References: J. Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients", NeurIPS 2020, Algorithm 2 (https://arxiv.org/abs/2010.07468); the
    official ``adabelief-pytorch`` 0.2.1 (``adabelief_pytorch/AdaBelief.py``); L. Liu et al.,
    "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020 (rectification).
    """
    beta1, beta2 = betas
    state.setdefault("step", 0)
    for name in ("exp_avg", "exp_avg_var") + (("max_exp_avg_var",) if amsgrad else ()):
        if name not in state:
            state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
    state["step"] += 1
    t = state["step"]
    m, s = state["exp_avg"], state["exp_avg_var"]

    g = -grad if maximize else grad
    if weight_decay != 0:
        if not decoupled_weight_decay:
            g = g.add(param, alpha=weight_decay)  # L2 penalty: g + lambda * theta
        elif fixed_decay:
            param.mul_(1 - weight_decay)
        else:
            param.mul_(1 - lr * weight_decay)

    m.mul_(beta1).add_(g, alpha=1 - beta1)  # m_t
    residual = g - m  # g_t - m_t
    s.mul_(beta2).addcmul_(residual, residual, value=1 - beta2).add_(eps)  # s_t, eps included
    if amsgrad:
        torch.maximum(state["max_exp_avg_var"], s, out=state["max_exp_avg_var"])

    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2**t

    if not rectify:
        s_used = state["max_exp_avg_var"] if amsgrad else s
        denom = s_used.sqrt() / math.sqrt(bias_correction2) + eps  # sqrt(s_hat) + eps
        param.addcdiv_(m, denom, value=-lr / bias_correction1)
        return

    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
    if rho_t >= 5:
        r_t = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        step_size = lr * r_t * math.sqrt(bias_correction2) / bias_correction1
        param.addcdiv_(m, s.sqrt() + eps, value=-step_size)
    elif degenerated_to_sgd:
        param.add_(m, alpha=-lr / bias_correction1)  # theta - lr * m_hat


# The weight-decay options of AdaBelief, as keyword arguments of the wrapper and the reference.
ADABELIEF_WEIGHT_DECAY = 0.05
ADABELIEF_DECAY_MODES = {
    "no-decay": dict(weight_decay=0.0, decoupled_weight_decay=True, fixed_decay=False),
    "coupled": dict(weight_decay=ADABELIEF_WEIGHT_DECAY, decoupled_weight_decay=False, fixed_decay=False),
    "decoupled": dict(weight_decay=ADABELIEF_WEIGHT_DECAY, decoupled_weight_decay=True, fixed_decay=False),
    "fixed": dict(weight_decay=ADABELIEF_WEIGHT_DECAY, decoupled_weight_decay=True, fixed_decay=True),
}


def authors_adopt(param, grad, state, *, lr, beta1=0.9, beta2=0.9999, eps=1e-6, clip_lambda=None,
                  weight_decay=0.0, decoupled=False, maximize=False) -> None:
    """The authors' ADOPT (Taniguchi et al., NeurIPS 2024; iShohei220/adopt, ``_single_tensor_adopt``)
    on one param, op for op. ``state``: ``step``, a 0-d float tensor counting the updates before
    this one, ``exp_avg``, ``exp_avg_sq``. ``clip_lambda(t - 1)`` bounds the normalised grad.

    .. math::
        v_0 = g_0^2 \\qquad
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1)\\,\\mathrm{clip}\\!\\left(\\frac{g_t}{\\max(\\sqrt{v_{t-1}}, \\epsilon)}\\right)
        \\qquad \\theta_t = \\theta_{t-1} - \\alpha m_t \\qquad v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2
    """
    grad = grad if not maximize else -grad
    exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
    step = step_t.item()
    if weight_decay != 0 and not decoupled:
        grad = grad.add(param, alpha=weight_decay)
    if torch.is_complex(param):
        grad, exp_avg, exp_avg_sq, param = map(torch.view_as_real, (grad, exp_avg, exp_avg_sq, param))
    if step == 0:
        exp_avg_sq.addcmul_(grad, grad.conj())
        step_t += 1
        return
    if weight_decay != 0 and decoupled:
        param.add_(param, alpha=-lr * weight_decay)
    denom = torch.clamp(exp_avg_sq.sqrt(), eps)
    normed_grad = grad.div(denom)
    if clip_lambda is not None:
        clip = clip_lambda(step)
        normed_grad.clamp_(-clip, clip)
    exp_avg.lerp_(normed_grad, 1 - beta1)
    param.add_(exp_avg, alpha=-lr)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad.conj(), value=1 - beta2)
    step_t += 1


class _PerParamRule(torch.optim.Optimizer):
    """A reference rule as its package's optimizer runs it: one param at a time, in order."""

    def _rule(self, param: Tensor, grad: Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._rule(param, param.grad, self.state[param], group)


class AdaBeliefOfficial(_PerParamRule):
    """adabelief-pytorch 0.2.1's ``AdaBelief`` with our wrapper's keyword names (see ``adabelief_reference``)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0, amsgrad=False, *,
                 decoupled_weight_decay=True, fixed_decay=False, rectify=True, degenerated_to_sgd=True,
                 maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      decoupled_weight_decay=decoupled_weight_decay, fixed_decay=fixed_decay,
                                      rectify=rectify, degenerated_to_sgd=degenerated_to_sgd, maximize=maximize))

    def _rule(self, param, grad, state, group):
        adabelief_reference(param, grad, state, **{k: v for k, v in group.items() if k != "params"})


class ADOPTAuthors(_PerParamRule):
    """The authors' ``ADOPT`` class (its signature; ``foreach`` and the other switches dropped) running ``authors_adopt``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, clip_lambda=lambda step: step**0.25,
                 weight_decay=0.0, decouple=False, *, maximize=False):
        self.clip_lambda = clip_lambda
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decouple=decouple,
                                      maximize=maximize))

    def _rule(self, param, grad, state, group):
        if not state:
            state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
        authors_adopt(param, grad, state, lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                      eps=group["eps"], clip_lambda=self.clip_lambda, weight_decay=group["weight_decay"],
                      decoupled=group["decouple"], maximize=group["maximize"])


# --- low-precision state: the 8-bit blockwise scheme, written plainly --------------------------
def _e4m3_table() -> list[tuple[float, int]]:
    """Every finite float8 e4m3fn value with its byte, from the format's definition: 1 sign bit,
    4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is subnormal; 0x7F and 0xFF are NaN."""
    table = []
    for byte in range(256):
        if byte & 0x7F == 0x7F:
            continue
        sign = -1.0 if byte & 0x80 else 1.0
        exponent, mantissa = (byte >> 3) & 0xF, byte & 0x7
        value = mantissa / 8 * 2.0**-6 if exponent == 0 else (1 + mantissa / 8) * 2.0 ** (exponent - 7)
        table.append((sign * value, byte))
    return table


def quantize_blockwise_reference(x: Tensor, *, signed: bool = True, block_size: int = 256,
                                 random: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``optkernels.quantization.quantize_blockwise`` one element at a time: per block of
    ``block_size`` elements (row-major) the float32 scale ``absmax / 448`` of ``x`` (or of
    ``sqrt(x)`` when not ``signed``), then each element's byte is the e4m3 value for
    ``y * (1 / scale)`` (float32), found by searching the table: the nearest, ties to the even
    byte; or, with ``random`` (16-bit ints of ``x``'s shape), stochastically (:func:`_stochastic`)."""
    table = sorted(_e4m3_table())  # by value; the two zeros (+0 and -0) sit side by side
    values_only = [value for value, _ in table]
    flat = x.detach().reshape(-1).float()
    draws = None if random is None else random.reshape(-1).tolist()
    codes, scales = [], []
    for start in range(0, flat.numel(), block_size):
        block = flat[start:start + block_size]
        values = [torch.sqrt(v) if not signed else v for v in block]  # 0-d float32 tensors
        absmax = max((abs(v.item()) for v in values), default=0.0)
        scale = torch.tensor(absmax, dtype=torch.float32) / 448
        scales.append(scale.item())
        for offset, value in enumerate(values):
            # times the float32 reciprocal of the scale; a block of zeros keeps its signs
            y = (value * (1 / (scale if absmax > 0 else torch.tensor(1.0)))).item()
            y = max(-448.0, min(448.0, y))  # y lies within [-448, 448] but for rounding of the scale
            if draws is not None:
                codes.append(_stochastic(y, draws[start + offset], table))
                continue
            if abs(y) <= 2.0**-10:  # rounds to a zero (a tie goes to the even code): the one of y's sign
                codes.append(0x80 if math.copysign(1.0, y) < 0 else 0x00)
                continue
            here = bisect.bisect_left(values_only, y)
            neighbours = [table[i] for i in (here - 1, here) if 0 <= i < len(table)]
            best = min(neighbours, key=lambda entry: (abs(entry[0] - y), entry[1] & 1))  # ties to even
            codes.append(best[1])
    return (torch.tensor(codes, dtype=torch.uint8).view(x.shape),
            torch.tensor(scales, dtype=torch.float32))


def _stochastic(y: float, draw: int, table: list[tuple[float, int]]) -> int:
    """The byte of |y| rounded stochastically onto the e4m3 grid, with y's sign: between the
    neighbours below and above, up where ``frac + draw / 2**16 >= 1``, ``frac`` the distance from
    the one below over the gap (exact in float64). Below 2**-6 (the subnormal codes, multiples of
    2**-9) the scheme rounds the float32 sum ``|y| + 2**-6`` so, then takes 2**-6 off."""
    magnitude, offset = abs(y), 0.0
    if magnitude < 2.0**-6:
        offset = 2.0**-6
        magnitude = (torch.tensor(magnitude, dtype=torch.float32) + offset).item()
    grid = sorted(value for value, _ in table if value >= 0)
    below = max(value for value in grid if value <= magnitude)
    if magnitude == below:
        rounded = below
    else:
        above = min(value for value in grid if value > magnitude)
        frac = (magnitude - below) / (above - below)
        rounded = above if frac * 2**16 + draw >= 2**16 else below
    byte = next(byte for value, byte in table if value == rounded - offset and not byte & 0x80)
    return byte | (0x80 if math.copysign(1.0, y) < 0 else 0)
