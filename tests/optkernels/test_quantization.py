"""The 8-bit blockwise scheme and stochastic rounding of ``optkernels.quantization``: codes equal a
plain reference quantiser bit for bit, the e4m3 decoder equals torch's fp8 cast bit for
bit (eager and compiled), round trips stay within the format's error, the int32 hash gives the
int64 one's bits, stochastic rounding is reproducible and unbiased."""


import pytest
import torch

from optkernels.quantization import (BLOCK_SIZE, dequantize_blockwise, e4m3_decode, e4m3_stochastic, num_blocks,
                                     quantize_blockwise, random_bits, stochastic_round_to_bf16)
from tests.reference import quantize_blockwise_reference


def _values(numel: int, seed: int = 0) -> torch.Tensor:
    """Gaussian values over six orders of magnitude, some exact zeros and negative zeros."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=generator) * 10.0 ** torch.randint(-6, 1, (numel,), generator=generator)
    x[::37] = 0.0
    x[5::41] = -0.0
    return x


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "sqrt"])
def test_codes_equal_the_reference_quantiser(signed):
    x = _values(2 * BLOCK_SIZE + 77)  # a partial last block
    x[BLOCK_SIZE:2 * BLOCK_SIZE] = 0.0  # a block of zeros: scale 0
    if not signed:
        x = x.abs()
    codes, scales = quantize_blockwise(x, signed=signed)
    expected_codes, expected_scales = quantize_blockwise_reference(x, signed=signed)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert scales.shape == (num_blocks(x.numel()),) and scales[1] == 0
    assert torch.equal(scales, expected_scales)
    assert torch.equal(codes, expected_codes)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "sqrt"])
def test_round_trip_within_the_format(signed):
    x = _values(4 * BLOCK_SIZE, seed=1).view(16, -1)
    if not signed:
        x = x.abs()
    codes, scales = quantize_blockwise(x, signed=signed)
    back = dequantize_blockwise(codes, scales, signed=signed)
    assert back.shape == x.shape and back.dtype == torch.float32
    # e4m3: a relative error of at most 2**-4 (normal codes), 2**-10 of the block's scale below
    y, y_back = (x, back) if signed else (x.sqrt(), back.sqrt())
    scale = scales.repeat_interleave(BLOCK_SIZE).view(x.shape)
    bound = 2**-4 * y.abs() + 2**-10 * scale * 448 * 2**-6 + 1e-7 * y.abs()
    assert ((y_back - y).abs() <= bound).all()
    assert torch.equal(torch.signbit(back[x != 0]), torch.signbit(x[x != 0]))


def test_zeros_and_block_maxima_are_exact():
    x = torch.zeros(3 * BLOCK_SIZE)
    x[7], x[BLOCK_SIZE + 3] = -2.5, 1e-4
    back = dequantize_blockwise(*quantize_blockwise(x))
    assert back[7] == -2.5 and abs(back[BLOCK_SIZE + 3] - 1e-4) <= 1e-11
    assert (back[x == 0] == 0).all()


def test_random_bits_are_reproducible_and_spread():
    bits = random_bits(1 << 14, seed=3, step=5, stream=1)
    assert torch.equal(bits, random_bits(1 << 14, seed=3, step=5, stream=1))
    assert torch.equal(bits, random_bits(1 << 14, seed=torch.tensor(3.0, dtype=torch.float64),
                                         step=torch.tensor(5.0, dtype=torch.float64), stream=1))
    for other in (dict(seed=4, step=5, stream=1), dict(seed=3, step=6, stream=1), dict(seed=3, step=5, stream=2)):
        assert (bits != random_bits(1 << 14, **other)).float().mean() > 0.99
    assert bits.min() >= 0 and bits.max() < 1 << 16
    assert abs(bits.float().mean().item() / 65535 - 0.5) < 0.01


def test_stochastic_rounding_is_reproducible_and_unbiased():
    x = torch.randn(1 << 16, generator=torch.Generator().manual_seed(0))
    rounded = stochastic_round_to_bf16(x, seed=7, step=1)
    assert rounded.dtype == torch.bfloat16
    assert torch.equal(rounded.view(torch.int16), stochastic_round_to_bf16(x, seed=7, step=1).view(torch.int16))
    assert not torch.equal(rounded, stochastic_round_to_bf16(x, seed=8, step=1))
    # each result is one of x's two bf16 neighbours: below it (truncated) or one bf16 step above
    truncated = (x.view(torch.int32) & -65536).view(torch.float32)
    step_up = truncated.abs() * 2**-7  # a bf16 step is at most 2**-7 of the value it starts at
    distance = (rounded.float() - truncated).abs()
    assert ((distance == 0) | ((distance <= step_up) & (rounded.float().abs() > truncated.abs()))).all()
    # unbiased: a value a quarter of the way between two bf16 neighbours averages to itself
    value = 1.0 + 2**-9
    mean = stochastic_round_to_bf16(torch.full((1 << 16,), value), seed=1, step=3).float().mean().item()
    assert abs(mean - value) < 2**-7 * 0.01
    assert torch.equal(stochastic_round_to_bf16(torch.tensor([1.0, -3.5, 0.0]), seed=0),
                       torch.tensor([1.0, -3.5, 0.0], dtype=torch.bfloat16))


# --- e4m3 by bit arithmetic: torch's casts, bit for bit --------------------------------------
_CODES = torch.tensor([code for code in range(256) if code not in (0x7F, 0xFF)], dtype=torch.uint8)  # no NaNs


def test_e4m3_decode_equals_the_cast():
    expected = _CODES.view(torch.float8_e4m3fn).float()
    assert torch.equal(e4m3_decode(_CODES).view(torch.int32), expected.view(torch.int32))  # -0.0 too


def test_e4m3_decode_compiled_equals_eager():
    codes = _CODES.repeat(3)
    decoded = torch.compile(e4m3_decode, fullgraph=True, dynamic=False)(codes)
    assert torch.equal(decoded.view(torch.int32), codes.view(torch.float8_e4m3fn).float().view(torch.int32))


def _random_bits_int64(numel, *, seed, step, stream):
    """The int64 hash ``random_bits`` was first written as: the reference its int32 form keeps."""
    mask, mix = 0xFFFFFFFF, (0x5BD1E995, 0x27D4EB2D, 0x165667B1, 0x7FEB352D)

    def as_int(value):
        return value.to(torch.int64) & mask if isinstance(value, torch.Tensor) else int(value) & mask
    key = (as_int(seed) * mix[0] + (as_int(step) * mix[1] & mask) + stream * mix[2]) & mask
    h = (torch.arange(numel, dtype=torch.int64) * mix[3] + key) & mask
    h = h ^ (h >> 16)
    h = (h * mix[0]) & mask
    h = h ^ (h >> 15)
    h = (h * mix[1]) & mask
    h = h ^ (h >> 16)
    return (h & 0xFFFF).to(torch.int32)


@pytest.mark.parametrize("seed, step, stream", [(0, 1, 1), (3, 5, 2), (2**32 - 1, 2**31 + 7, 3),
                                                (2**45 + 12345, 10**6, 1)])
def test_random_bits_equal_the_int64_hash(seed, step, stream):
    numel = 1 << 18
    expected = _random_bits_int64(numel, seed=seed, step=step, stream=stream)
    assert torch.equal(random_bits(numel, seed=seed, step=step, stream=stream), expected)
    as_tensors = dict(seed=torch.tensor(float(seed), dtype=torch.float64),
                      step=torch.tensor(float(step), dtype=torch.float64))
    assert torch.equal(random_bits(numel, stream=stream, **as_tensors), expected)
    compiled = torch.compile(random_bits, fullgraph=True, dynamic=False)
    if (seed, step) == (3, 5):  # one compile: inductor's int32 code, wrapping multiplies included
        assert torch.equal(compiled(numel, stream=stream, **as_tensors), expected)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "sqrt"])
def test_stochastic_codes_equal_the_reference_quantiser(signed):
    x = _values(2 * BLOCK_SIZE + 77, seed=4)
    x[BLOCK_SIZE:BLOCK_SIZE + 64] = torch.linspace(0, 2.0**-6, 64) * x.abs().max()  # subnormal codes
    if not signed:
        x = x.abs()
    random = random_bits(x.numel(), seed=1, step=2, stream=1)
    codes, scales = quantize_blockwise(x, signed=signed, random=random)
    reference_codes, reference_scales = quantize_blockwise_reference(x, signed=signed, random=random)
    assert torch.equal(codes, reference_codes)
    assert torch.equal(scales, reference_scales)


@pytest.mark.parametrize("value", [100.3, -3.01, 0.0051, 2.0**-6 * 0.37], ids=["large", "negative", "small",
                                                                              "subnormal"])
def test_stochastic_codes_are_unbiased(value):
    """Blocks of one 448 (scale 1: the values are their own scaled values) and 255 copies of a
    value between two codes: the mean of the decoded copies is the value, to the noise of 65K
    draws (a gap of 2^-3 relative: a standard error under 2^-3 / sqrt(65K) / 2 of it)."""
    blocks = torch.full((256, BLOCK_SIZE), value)
    blocks[:, 0] = 448.0
    random = random_bits(blocks.numel(), seed=0, step=1, stream=1).view(blocks.shape)
    codes, scales = quantize_blockwise(blocks, random=random)
    decoded = dequantize_blockwise(codes, scales)[:, 1:]
    assert len(decoded.unique()) == 2  # the two neighbours, both drawn
    assert abs(decoded.double().mean().item() / value - 1) < 2e-3
    assert torch.equal(codes, quantize_blockwise(blocks, random=random)[0])  # the same draws, the same codes


def test_stochastic_codes_compiled_equal_eager():
    x = _values(4096, seed=5) * 400
    random = random_bits(x.numel(), seed=2, step=3, stream=1)
    compiled = torch.compile(e4m3_stochastic, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(x.clamp(-448, 448), random), e4m3_stochastic(x.clamp(-448, 448), random))
