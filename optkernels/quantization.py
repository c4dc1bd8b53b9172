r"""Low-precision optimizer state: blockwise 8-bit codes and stochastic rounding to bf16.

Two schemes, both plain tensor code that eager mode and ``torch.compile`` run alike (the
compiled rules call these same functions, so the codes and the rounded bits they write are the
ones the functions below give):

**8-bit blockwise codes** (:func:`quantize_blockwise`, :func:`dequantize_blockwise`). A tensor
is read in row-major order in blocks of :data:`BLOCK_SIZE` (256) elements; each block keeps one
float32 scale, its absolute maximum divided by 448, and each element one byte: the fp8 e4m3
(``torch.float8_e4m3fn``) code of ``x * (1 / scale)``, rounded to nearest, ties to even, as
torch's cast rounds, or stochastically (:func:`e4m3_stochastic`: how the optimizers store their
moments, so that a moment decaying by less than half a code step per step still decays on
average). The codes are stored as ``torch.uint8`` (the e4m3 bit pattern), so that
``Optimizer.load_state_dict`` (which casts floating-point state to the param's dtype) leaves
them alone. ``signed=True`` (Adam's first moment) quantises ``x``; ``signed=False`` (the
second moment, never negative) quantises :math:`\sqrt{x}` and dequantises to its square, the
square-root compression that halves the range the codes must span (a ratio of
:math:`2.3\cdot10^5` between a block's largest and smallest nonzero code covers
:math:`5\cdot10^{10}` in the second moment). A block of zeros has scale 0.

Why e4m3 rather than bitsandbytes' dynamic (tree) code table: the table needs a nearest-code
search per element, the cast is one instruction. Measured on this project's shared 2-core CPU,
4M Gaussian elements, blocks of 256: a search-based quantiser (``torch.bucketize`` over the
midpoints of a port of ``create_dynamic_map``) took 239 ms compiled and 239 ms eager, the e4m3
cast 20 ms compiled and 41 ms eager. The table is finer near a block's maximum (median relative
error of the dequantised values 1.2 %, against 2.2 % for e4m3; e4m3's worst case is
:math:`2^{-4}` = 6.25 %, :math:`2^{-3}` for the second moment through its square root); the
training tests show the difference does not reach the loss (within 1 % of fp32 Adam's).

**Stochastic rounding to bf16** (:func:`stochastic_round_to_bf16`). A float32 is rounded to
one of its two bf16 neighbours with probabilities that make the result unbiased: 16 random bits
are added to the float32 bit pattern, whose low 16 bits are then dropped. The random bits are a
counter-based hash of ``(seed, step, stream, element index)`` computed with integer tensor ops
(:func:`random_words`), no generator state: the same arguments give the same bits, in eager
mode, compiled and in the native kernel. An optimizer's two moments share one 32-bit word per
element (the low half rounds the first, the high half the second).
"""

import torch
from torch import Tensor

BLOCK_SIZE = 256
"""Elements per block of :func:`quantize_blockwise` (one float32 scale each)."""
MIN_QUANTIZED_NUMEL = 4096
"""State of tensors with fewer elements is kept at full precision (torchao's rule: the scales
and the per-tensor overhead would outweigh the bytes saved)."""
CODE_DTYPE = torch.uint8
FP8_MAX = 448.0  # the largest finite float8_e4m3fn

_MASK32 = 0xFFFFFFFF
# Multipliers under 2**31 (the per-call key is an int64 product of one with a 32-bit value).
_MIX = (0x5BD1E995, 0x27D4EB2D, 0x165667B1, 0x7FEB352D)
STREAMS = {"moments": 1, "param": 3}
"""Stream ids of :func:`random_words`, so the moments and the params of one step draw apart. The
moments share a word per element: the first moment rounds with its low 16 bits, the second
with its high 16 bits (one hash for both)."""


def num_blocks(numel: int, block_size: int = BLOCK_SIZE) -> int:
    """Scales a tensor of ``numel`` elements needs."""
    return -(-numel // block_size)


def _blocks(x: Tensor, block_size: int, count: int | None = None) -> Tensor:
    """``x`` (any shape) as float32 rows of ``block_size``, in row-major order, zero-padded;
    ``count`` rows (the number of scales, which compiled code knows as its own size: given, a
    tensor of whole blocks is viewed as ``(count, block_size)`` and indexed plainly)."""
    flat = x.reshape(-1).float()
    pad = (-flat.numel()) % block_size
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.view(-1 if count is None else count, block_size)


def quantize_blockwise(x: Tensor, *, signed: bool = True, block_size: int = BLOCK_SIZE,
                       random: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""8-bit blockwise codes of ``x``: ``(codes, scales)``.

    ``codes`` has ``x``'s shape, dtype ``torch.uint8`` (e4m3 bit patterns), contiguous; ``scales``
    is float32 of shape ``(ceil(numel / block_size),)``, block :math:`b`'s
    :math:`s_b = \max_{i\in b}|y_i| / 448` with :math:`y = x` (``signed``) or :math:`y=\sqrt{x}`
    (``signed=False``, for ``x >= 0``), and :math:`\text{code}_i = \text{e4m3}(y_i \cdot (1/s_b))`,
    rounded to nearest, ties to even, or, given ``random`` (int32 of ``x``'s shape, values in
    ``[0, 2**16)``, as :func:`random_words` gives them), stochastically (see
    :func:`e4m3_stochastic`).

    Example:
        >>> import torch
        >>> from optkernels.quantization import quantize_blockwise, dequantize_blockwise
        >>> codes, scales = quantize_blockwise(torch.tensor([1.0, -0.5, 0.25, 0.0]))
        >>> dequantize_blockwise(codes, scales)
        tensor([ 1.0000, -0.5000,  0.2500,  0.0000])
    """
    codes, scales = _quantize(x, signed=signed, block_size=block_size, random=random)
    return codes.view(x.shape), scales


def _quantize(x: Tensor, *, signed: bool, block_size: int, count: int | None = None,
              random: Tensor | None = None) -> tuple[Tensor, Tensor]:
    rows = _blocks(x, block_size, count)
    random_rows = None if random is None else _blocks(random, block_size, count).to(torch.int32)
    codes, scales = _quantize_rows(rows, signed=signed, random=random_rows)
    return _unpadded(codes.reshape(-1), x.numel()), scales


def _quantize_rows(rows: Tensor, *, signed: bool, random: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Codes (of ``rows``' shape) and scales of float32 rows, one block each; rounded
    stochastically with ``random`` (int32 of ``rows``' shape) where given."""
    if not signed:
        rows = rows.sqrt()
    absmax = rows.abs().amax(dim=1)
    scales = absmax / FP8_MAX
    # a block of zeros divides by 1 (its codes are 0 whatever the divisor), keeping scale 0
    divisor = torch.where(absmax > 0, scales, torch.ones_like(scales))
    # times the block's reciprocal: a multiply per element costs less than a divide
    scaled = (rows * (1 / divisor).unsqueeze(1)).clamp(-FP8_MAX, FP8_MAX)
    if random is not None:
        return e4m3_stochastic(scaled, random), scales
    # the fp8 cast: inductor vectorizes it (all but its byte-wide reinterpret). An encoder in bit
    # operations on the float32 pattern was slower compiled (torch 2.13: float32/int32 bit casts of
    # computed values are scalar loops), one in float32 arithmetic too (48 against 36 ms on 4M
    # elements in the 8-bit Adam rule) and 5x slower to compile: measured, then dropped
    return scaled.to(torch.float8_e4m3fn).view(CODE_DTYPE), scales


def e4m3_stochastic(x: Tensor, random: Tensor) -> Tensor:
    r"""The e4m3 codes (``torch.uint8``) of ``x`` (float32, :math:`|x| \le 448`), rounded
    stochastically: up to the next e4m3 value with probability equal to the distance from the one
    below over the gap (to 16 bits), so :math:`E[\text{decode}(\text{code})] = x`. ``random``:
    int32 of ``x``'s shape, values in ``[0, 2**16)``. The same ``random`` gives the same codes.

    Normal values (:math:`|x| \ge 2^{-6}`): ``random`` is added below the float32 pattern's top 3
    mantissa bits (bits 4 to 19), which are then kept (truncated). Subnormal ones, whose codes
    are multiples of :math:`2^{-9}`, the spacing of the normal codes in :math:`[2^{-6}, 2^{-5})`:
    :math:`|x| + 2^{-6}` (a float32 sum) rounded so, less the code of :math:`2^{-6}` (8).

    Why not round to nearest, as the cast does: a moment that decays by less than half a code
    step per step (Adam's second moment, by :math:`1-\beta_2`) would stay on its code, so the
    stored second moment only ever rises; unbiased rounding lets it decay on average. Measured on
    the wrapper tests' MLP, NAdam's final loss with 8-bit moments went from 1.9 % above fp32's
    (to nearest) to 0.1 %."""
    magnitude = x.abs()
    subnormal = magnitude < 2.0**-6
    shifted = torch.where(subnormal, magnitude + 2.0**-6, magnitude).view(torch.int32)
    code = ((shifted + (random << 4)) >> 20) - (120 << 3) - subnormal.to(torch.int32) * 8
    return (code | ((x.contiguous().view(torch.int32) >> 24) & 0x80)).to(CODE_DTYPE)


def e4m3_decode(codes: Tensor) -> Tensor:
    r"""``codes.view(torch.float8_e4m3fn).float()`` for uint8 e4m3 codes other than the two NaNs,
    without an fp8 dtype or a bit cast (both scalar loops in inductor's C++ code): a code of
    exponent field :math:`e` and mantissa :math:`m` is :math:`(m + 8[e > 0]) \cdot
    2^{\max(e, 1) - 10}`, products of small integers and powers of two, exact; ``0x80`` is
    ``-0.0``."""
    code = codes.to(torch.int32)
    exponent = (code >> 3) & 0xF
    significand = (code & 7) + (exponent > 0).to(torch.int32) * 8
    power = (1 << (exponent.clamp(min=1) - 1)).to(torch.float32)  # 2**(max(e, 1) - 1), exact
    value = significand.to(torch.float32) * power * 2.0**-9
    return torch.where(code >= 0x80, -value, value)


def _unpadded(flat: Tensor, numel: int) -> Tensor:
    # slicing only where there is padding: compiled code then indexes the common case plainly
    return flat[:numel] if flat.numel() != numel else flat


def dequantize_blockwise(codes: Tensor, scales: Tensor, *, signed: bool = True,
                         block_size: int = BLOCK_SIZE) -> Tensor:
    """The float32 values ``codes`` and ``scales`` (from :func:`quantize_blockwise`) stand for,
    in ``codes``' shape: ``code * scale`` (``signed``) or its square (``signed=False``)."""
    rows = _dequantize_rows(_blocks(e4m3_decode(codes.reshape(-1)), block_size, scales.shape[0]),
                            scales, signed=signed)
    return _unpadded(rows.reshape(-1), codes.numel()).view(codes.shape)


def _dequantize_rows(rows: Tensor, scales: Tensor, *, signed: bool) -> Tensor:
    """float32 values of e4m3 ``rows`` (one block each; uint8 codes or their float32 values) and
    their scales."""
    values = (e4m3_decode(rows) if rows.dtype == CODE_DTYPE else rows.float()) * scales.unsqueeze(1)
    return values if signed else values * values


def in_rows(state: Tensor, scales: Tensor) -> bool:
    """``state`` is laid out as its blocks, ``(len(scales), BLOCK_SIZE)``: the form the
    low-precision rules give it where a tensor is whole blocks, which compiled code indexes
    plainly (a reshape of computed values into blocks costs it a gather per element)."""
    return state.dim() == 2 and state.shape[1] == BLOCK_SIZE and state.shape[0] == scales.shape[0]


def as_rows(tensors: list[Tensor | None], scales: Tensor | None) -> list[Tensor | None]:
    """The tensors of one param as ``(len(scales), BLOCK_SIZE)`` views where they can be (all
    contiguous, whole blocks; see :func:`in_rows`), else as they are."""
    if scales is None or scales.numel() * BLOCK_SIZE != tensors[0].numel() or scales.numel() == 0:
        return tensors
    if not all(t is None or t.is_contiguous() for t in tensors):
        return tensors
    return [None if t is None else t.view(scales.shape[0], BLOCK_SIZE) for t in tensors]


def _as_int(value) -> Tensor | int:
    """A seed or step count as an integer: a Python number, or a float tensor (compiled rules
    get their scalars as float64, exact for integers below 2**53)."""
    if isinstance(value, Tensor):
        return value.to(torch.int64) & _MASK32
    return int(value) & _MASK32


def _to_int32(value: Tensor | int) -> Tensor | int:
    """An integer in [0, 2**32) as the int32 with its bits (a 0-d int64 tensor or an int)."""
    if isinstance(value, Tensor):
        return torch.where(value >= 1 << 31, value - (1 << 32), value).to(torch.int32)
    return value - (1 << 32) if value >= 1 << 31 else value


def random_key(seed: int, step: int, stream: int) -> int:
    """The per-call key of :func:`random_bits` ``(seed, step, stream)``, an integer in [0, 2**32)
    (the native kernels take it as it is)."""
    return (_as_int(seed) * _MIX[0] + (_as_int(step) * _MIX[1] & _MASK32) + stream * _MIX[2]) & _MASK32


def random_words(numel: int, *, seed, step, stream: int, device: torch.device | str = "cpu") -> Tensor:
    """``numel`` pseudo-random int32 words (all 32 bits), a hash of ``(seed, step, stream,
    element index)`` (integer tensor ops: the same bits in eager and compiled code, on any
    device). ``seed`` and ``step`` are ints or 0-d tensors holding integers.

    The hash is arithmetic modulo 2**32 (a murmur-style finaliser). Per element it runs in int32,
    which inductor vectorizes: multiplies wrap, and a logical right shift is an arithmetic one
    masked to the bits it keeps; the per-call key is computed on scalars in int64."""
    key = _to_int32(random_key(seed, step, stream))
    if numel > 1 << 31:  # indices past int32: their product with the multiplier, modulo 2**32, in int64
        index = _to_int32(torch.arange(numel, device=device, dtype=torch.int64) * _MIX[3] & _MASK32)
        h = index + key
    else:
        h = torch.arange(numel, device=device, dtype=torch.int32) * _MIX[3] + key
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _MIX[0]
    h = h ^ ((h >> 15) & 0x1FFFF)
    h = h * _MIX[1]
    return h ^ ((h >> 16) & 0xFFFF)


def random_bits(numel: int, *, seed, step, stream: int, device: torch.device | str = "cpu") -> Tensor:
    """``numel`` pseudo-random int32 values in ``[0, 2**16)``: the low half of :func:`random_words`."""
    return random_words(numel, seed=seed, step=step, stream=stream, device=device) & 0xFFFF


def halves(words: Tensor) -> tuple[Tensor, Tensor]:
    """The low and high 16 bits of int32 ``words``, each in ``[0, 2**16)``."""
    return words & 0xFFFF, (words >> 16) & 0xFFFF


def stochastic_round_to_bf16(x: Tensor, *, seed, step=0, stream: int = 0) -> Tensor:
    r"""``x`` rounded to bfloat16 stochastically: to the neighbour above with probability equal to
    the distance from the one below over the gap, so :math:`E[\text{round}(x)] = x`.

    The random bits come from :func:`random_bits` ``(seed, step, stream, index)`` with the
    element index in row-major order: the same arguments give the same result, bit for bit.
    Returns a new bfloat16 tensor of ``x``'s shape.

    Example:
        >>> import torch
        >>> from optkernels.quantization import stochastic_round_to_bf16
        >>> x = torch.full((10_000,), 1.0 + 2**-10)   # between bf16's 1.0 and 1.0078125
        >>> rounded = stochastic_round_to_bf16(x, seed=0)
        >>> round(rounded.float().mean().item(), 3)
        1.001
    """
    values = x.float().contiguous()
    return _bf16_stochastic(values, random_bits(values.numel(), seed=seed, step=step, stream=stream,
                                                device=values.device).view(values.shape))


def _bf16_stochastic(values: Tensor, random: Tensor) -> Tensor:
    """Contiguous float32 ``values`` to bf16, rounded up where the 16 bits dropped plus ``random``
    (int32 in ``[0, 2**16)``, of ``values``' shape) carry."""
    return ((values.view(torch.int32) + random) & -65536).view(torch.float32).to(torch.bfloat16)


# --- state of the low-precision kernels -------------------------------------------------------
STATE_PRECISIONS = ("fp32", "bf16", "8bit")
"""``state_precision`` values: ``"fp32"`` keeps the moments as torch.optim does (the param's
dtype); ``"bf16"`` in bfloat16, written with stochastic rounding; ``"8bit"`` as
:func:`quantize_blockwise` codes (``torch.uint8``) with float32 scales, for tensors of at least
:data:`MIN_QUANTIZED_NUMEL` elements (smaller ones as ``"fp32"``)."""


def check_state_precision(value) -> str:
    if value not in STATE_PRECISIONS:
        raise ValueError(f"state_precision must be one of {STATE_PRECISIONS}, got {value!r}")
    return value


def quantized(state: Tensor) -> bool:
    """``state`` holds 8-bit codes (its scales beside it), not values."""
    return state.dtype == CODE_DTYPE


def load_state(state: Tensor, scales: Tensor | None, *, signed: bool) -> Tensor:
    """A state tensor's values in float32, in its shape: codes dequantised, others upcast."""
    if quantized(state) and in_rows(state, scales):
        return _dequantize_rows(state, scales, signed=signed)
    if quantized(state):
        return dequantize_blockwise(state, scales, signed=signed)
    return state.float()


def store_state(state: Tensor, scales: Tensor | None, values: Tensor, *, signed: bool, random: Tensor) -> None:
    """Write float32 ``values`` into ``state`` in its precision, rounded stochastically with
    ``random`` (int32 in ``[0, 2**16)``, of ``values``' shape): codes and ``scales`` requantised
    (:func:`quantize_blockwise`), bf16 as :func:`stochastic_round_to_bf16` rounds; any other
    dtype as ``copy_`` rounds."""
    if quantized(state) and in_rows(state, scales):
        codes, new_scales = _quantize_rows(values, signed=signed, random=random)
        state.copy_(codes)
        scales.copy_(new_scales)
    elif quantized(state):
        codes, new_scales = _quantize(values, signed=signed, block_size=BLOCK_SIZE, count=scales.shape[0],
                                      random=random)
        state.copy_(codes.view(state.shape))
        scales.copy_(new_scales)
    elif state.dtype == torch.bfloat16:
        state.copy_(_bf16_stochastic(values.contiguous(), random))
    else:
        state.copy_(values)


def store_param(param: Tensor, values: Tensor, *, stochastic_rounding: bool, seed, step) -> None:
    """Write float32 ``values`` into ``param``: bf16 params stochastically rounded when
    ``stochastic_rounding`` (stream ``"param"``), otherwise as ``copy_`` rounds (to nearest)."""
    if stochastic_rounding and param.dtype == torch.bfloat16:
        values = stochastic_round_to_bf16(values, seed=seed, step=step, stream=STREAMS["param"])
    param.copy_(values)


def new_state(param: Tensor, state_precision: str, *, stochastic_rounding: bool = False) -> Tensor:
    """A zero moment for ``param`` in ``state_precision``: uint8 codes (8-bit, large tensors),
    bf16, or the param's dtype (float32 where the param is bf16 and ``stochastic_rounding``)."""
    if state_precision == "8bit" and param.numel() >= MIN_QUANTIZED_NUMEL:
        return torch.zeros(param.shape, dtype=CODE_DTYPE, device=param.device)
    if state_precision == "bf16":
        return torch.zeros(param.shape, dtype=torch.bfloat16, device=param.device)
    if stochastic_rounding and param.dtype == torch.bfloat16:
        return torch.zeros(param.shape, dtype=torch.float32, device=param.device)
    return torch.zeros_like(param, memory_format=torch.preserve_format)


def new_scales(state: Tensor) -> Tensor:
    """Zero float32 scales for a state tensor: one per block for codes, none (0 elements) else."""
    count = num_blocks(state.numel()) if quantized(state) else 0
    return torch.zeros(count, dtype=torch.float32, device=state.device)


def converted_state(values: Tensor, like: Tensor, *, signed: bool) -> tuple[Tensor, Tensor]:
    """``values`` (any float dtype) as a state tensor of ``like``'s kind (codes, bf16 or a
    float dtype; rounded to nearest) and its scales (0 elements unless codes): how a checkpoint
    of one precision loads into an optimizer of another."""
    if quantized(like):
        codes, scales = quantize_blockwise(values.float(), signed=signed)
        return codes.to(like.device), scales.to(like.device)
    return values.to(device=like.device, dtype=like.dtype).view(like.shape).clone(), new_scales(like)


def check_low_precision_state(name: str, states, scale_name: str, scales, params) -> None:
    """Each state tensor has its param's shape and device and a dtype the low-precision kernels
    store (uint8 codes, bf16, float32, float64); codes are contiguous with float32 scales, one
    per block."""
    if scales is not None and len(scales) != len(states):
        raise ValueError(f"{scale_name} has {len(scales)} tensors but {name} has {len(states)}")
    for index, (state, param) in enumerate(zip(states, params)):
        if not isinstance(state, Tensor) or state.shape != param.shape or state.device != param.device:
            raise ValueError(f"{name}[{index}] must be a tensor of its param's shape {tuple(param.shape)} "
                             f"and device {param.device}, got {state!r:.80}")
        if state.dtype not in (CODE_DTYPE, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"{name}[{index}] has dtype {state.dtype}; low-precision state is uint8 codes, "
                            "bfloat16, float32 or float64")
        if not quantized(state):
            continue
        scale = None if scales is None else scales[index]
        if not state.is_contiguous():
            raise ValueError(f"{name}[{index}] holds 8-bit codes and must be contiguous")
        if (not isinstance(scale, Tensor) or scale.dtype != torch.float32 or scale.device != state.device
                or scale.shape != (num_blocks(state.numel()),)):
            raise ValueError(f"{name}[{index}] holds 8-bit codes, so {scale_name}[{index}] must be a float32 "
                             f"tensor of shape ({num_blocks(state.numel())},) on {state.device}, got {scale!r:.80}")
