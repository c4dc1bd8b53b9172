"""The native CPU kernel of the low-precision Adam family (``optkernels/native/adam_low_precision.cpp``,
run by ``compiled=True`` on CPU): its codes are the reference quantiser's bit for bit, it gives
the compiled rule's bits (both round ``sqrt`` correctly and fuse no multiply-add), and the eager
rule's numbers to rounding, in every variant it builds; it leaves what it cannot run to the
compiled rule, and falls back when it cannot be built."""

import ctypes
import os

import pytest
import torch

from optkernels import _native, adam_update
from optkernels import adam as adam_module
from optkernels.adam import adam_low_precision_rule, native_low_precision_steps
from optkernels.quantization import (MIN_QUANTIZED_NUMEL, STREAMS, halves, new_scales, new_state,
                                     quantize_blockwise, random_key, random_words)
from tests.helpers import assert_low_precision_close
from tests.reference import quantize_blockwise_reference

pytestmark = pytest.mark.skipif(_native.library("adam_low_precision") is None,
                                reason="no native kernel on this platform (no C++ compiler?)")


def _wide_values(numel: int, seed: int = 0) -> torch.Tensor:
    """Values over eleven orders of magnitude, e4m3's subnormal codes, ties and zeros of both signs."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=generator) * 10.0 ** torch.randint(-8, 3, (numel,), generator=generator)
    x[:64] = torch.tensor([448.0, -448.0] + [k * 2.0**-9 for k in range(31)] + [(k + 0.5) * 2**-9 for k in range(31)])
    x[64:256] = torch.linspace(-448, 448, 192)  # many ties at the grid's midpoints
    x[256:512] = 0.0  # a block of zeros: scale 0
    x[1000::37] = -0.0
    return x


def _step_options(**overrides):
    options = dict(one_minus_beta1=1.0, beta2=0.0, one_minus_beta2=1.0, eps=1e-8, step_size=0.0, grad_step_size=0.0,
                   rsqrt_bias_correction2=1.0, grad_decay=0.0, param_factor=1.0, negate=0, decays_grad=0, threads=1,
                   key_moments=1, key_param=3)
    return _native.AdamOptions(**{**options, **overrides})


@pytest.mark.parametrize("portable", [0, 1], ids=["vector", "portable"])
def test_codes_equal_the_reference_quantiser(portable):
    """beta1 = beta2 = 0 from zero state: the step keeps m = 0 + (g - 0) (g, but for -0, which
    becomes +0) and sqrt(v) = |g| (sqrt of a correctly rounded square is exact), so its codes and
    scales must be those of quantising m and g^2 with the step's random words (seed 7, step 1),
    bit for bit: on 256K wide-ranging values against ``quantize_blockwise`` and on the first
    blocks against the plain per-element reference."""
    grads = _wide_values(1 << 18)
    numel = grads.numel() - 77  # a partial last block
    grads = grads[:numel]
    param, exp_avg, exp_avg_sq = torch.zeros(numel), torch.zeros(numel, dtype=torch.uint8), torch.zeros(
        numel, dtype=torch.uint8)
    exp_avg_scale, exp_avg_sq_scale = new_scales(exp_avg), new_scales(exp_avg_sq)
    library = _native.library("adam_low_precision", UPDATE=3, SECOND_MOMENT=0, STATE_STORAGE=2, PARAM_STORAGE=0,
                              PORTABLE=portable)
    options = _step_options(key_moments=random_key(7, 1, STREAMS["moments"]))
    library.adam_step(*[(ctypes.c_void_p * 1)(t.data_ptr()) for t in (param, grads, exp_avg, exp_avg_sq,
                                                                       exp_avg_scale, exp_avg_sq_scale)],
                      (ctypes.c_int64 * 1)(numel), ctypes.c_int64(1), ctypes.byref(options))
    draws = halves(random_words(numel, seed=7, step=1, stream=STREAMS["moments"]))
    for codes, scales, signed, random in ((exp_avg, exp_avg_scale, True, draws[0]),
                                          (exp_avg_sq, exp_avg_sq_scale, False, draws[1])):
        values = torch.zeros(numel) + (grads - torch.zeros(numel)) if signed else grads * grads
        expected_codes, expected_scales = quantize_blockwise(values, signed=signed, random=random)
        assert torch.equal(codes, expected_codes)
        assert torch.equal(scales, expected_scales)
        reference_codes, reference_scales = quantize_blockwise_reference(values[:1024], signed=signed,
                                                                         random=random[:1024])
        assert torch.equal(codes[:1024], reference_codes)
        assert torch.equal(scales[:4], reference_scales)
    assert not param.any()  # UPDATE=3: no update


# (param dtype, stochastic rounding, state precision): every (PARAM_STORAGE, STATE_STORAGE) pair
STORAGES = [(torch.float32, False, "8bit"), (torch.float32, False, "bf16"), (torch.float32, True, "fp32"),
            (torch.bfloat16, False, "8bit"), (torch.bfloat16, True, "8bit"), (torch.bfloat16, True, "bf16"),
            (torch.bfloat16, True, "fp32")]
# the rule's variants (UPDATE, SECOND_MOMENT) and its runtime options
RULES = {
    "adam": dict(step_size=1e-2, rsqrt_bias_correction2=1.3),
    "nadam": dict(step_size=1e-2, grad_step_size=2e-3, rsqrt_bias_correction2=1.3),
    "momentum_only": dict(step_size=1e-2, rsqrt_bias_correction2=1.0, momentum_only=True),
    "none": dict(step_size=None, rsqrt_bias_correction2=1.0),
    "belief": dict(step_size=1e-2, rsqrt_bias_correction2=1.3, belief=True),
}
OPTIONS = {"plain": {}, "decays": dict(grad_decay=0.1, negate=True), "decoupled": dict(param_factor=0.99)}
SHAPES = [(MIN_QUANTIZED_NUMEL + 3,), (7, 5), (32, 256)]  # a partial last block, kept fp32, whole blocks


def _tensors(param_dtype, stochastic_rounding, precision, shapes=SHAPES):
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=generator).to(param_dtype) for shape in shapes]
    moments = [[new_state(p, precision, stochastic_rounding=stochastic_rounding) for p in params] for _ in range(2)]
    scales = [[new_scales(m) for m in kind] for kind in moments]
    return [params, None, *moments, *scales]


def _grads(params, step):
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=generator).to(p.dtype) for p in params]


def _steps(tensors, runner, rule, options, stochastic_rounding, steps=3):
    for step in range(1, steps + 1):
        tensors[1] = _grads(tensors[0], step)
        scalars = dict(beta1=0.9, beta2=0.999, eps=1e-8, seed=5.0, step=float(step), stochastic_rounding=stochastic_rounding,
                       **RULES[rule], **OPTIONS[options])
        runner(tensors, scalars)
    return tensors


def _native_runner(tensors, scalars):
    assert native_low_precision_steps(tensors, **scalars) == [[] for _ in tensors]  # it ran every tensor


def _eager_runner(tensors, scalars):
    numbers = {name: torch.tensor(value, dtype=torch.float64) for name, value in scalars.items()
               if not (value is None or isinstance(value, bool))}
    for position in zip(*tensors):
        adam_low_precision_rule(*position, **{**scalars, **numbers})


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("storage", STORAGES, ids=lambda s: f"{str(s[0])[6:]}{'-sr' if s[1] else ''}-{s[2]}")
def test_native_equals_the_eager_rule(storage, rule, options):
    param_dtype, stochastic_rounding, precision = storage
    native = _steps(_tensors(*storage), _native_runner, rule, options, stochastic_rounding)
    eager = _steps(_tensors(*storage), _eager_runner, rule, options, stochastic_rounding)
    for kind, (mine, theirs) in enumerate(zip(native, eager)):
        for index, (a, b) in enumerate(zip(mine, theirs)):
            if kind == 1 or b is None:  # the grads; scales of unquantised state
                continue
            if kind >= 4:  # scales: absmax of the roots may move by the sqrt's ulp
                torch.testing.assert_close(a, b, rtol=1e-6, atol=0, msg=f"scales {kind} {index}")
            else:
                assert_low_precision_close(a, b, f"tensor kind {kind}, index {index}", param=kind == 0)


@pytest.mark.parametrize("storage", [(torch.bfloat16, True, "8bit"), (torch.float32, False, "bf16")],
                         ids=["bf16-sr-8bit", "float32-bf16"])
def test_native_gives_the_compiled_rules_bits(storage, monkeypatch):
    """Against the same rule compiled by torch.compile: bit for bit, params included (both take
    sqrt correctly rounded and fuse no multiply-add)."""
    options = dict(state_precision=storage[2], stochastic_rounding=storage[1], weight_decay=0.1, maximize=True)
    runs = []
    for disable in ("0", "1"):
        monkeypatch.setenv(_native.DISABLE, disable)
        params, _, exp_avgs, exp_avg_sqs, exp_avg_scales, exp_avg_sq_scales = _tensors(
            *storage, shapes=[(MIN_QUANTIZED_NUMEL,)])
        scales = dict(exp_avg_scales=exp_avg_scales, exp_avg_sq_scales=exp_avg_sq_scales) if storage[2] == "8bit" else {}
        for step in range(1, 4):
            adam_update(params, _grads(params, step), exp_avgs, exp_avg_sqs, step=step, lr=1e-2, seed=3, compiled=True,
                        **scales, **options)
        runs.append([params, exp_avgs, exp_avg_sqs, exp_avg_scales, exp_avg_sq_scales])
    for mine, theirs in zip(*runs):
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b)


def test_the_vector_step_is_built_where_the_cpu_has_avx512():
    """The comparison below is of two different loops only where the CPU has AVX-512 (else both
    builds are the plain loops); the portable build never has the vector step."""
    variant = dict(UPDATE=0, SECOND_MOMENT=0, STATE_STORAGE=2, PARAM_STORAGE=0)
    avx512 = {"avx512f", "avx512bw", "avx512vl"} <= set(_native.cpu_flags())
    assert _native.library("adam_low_precision", **variant).vectorized() == int(avx512)
    assert _native.library("adam_low_precision", PORTABLE=1, **variant).vectorized() == 0


# every value of each macro the vector step reads (PARAM_STORAGE, UPDATE, SECOND_MOMENT), each
# build pair costing a compile: every rule over float32 params, every param storage under Adam's
VECTOR_VARIANTS = [((torch.float32, False, "8bit"), rule) for rule in RULES] + [
    ((torch.bfloat16, stochastic_rounding, "8bit"), "adam") for stochastic_rounding in (False, True)]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize(("storage", "rule"), VECTOR_VARIANTS,
                         ids=lambda v: v if isinstance(v, str) else f"{str(v[0])[6:]}{'-sr' if v[1] else ''}")
def test_vector_step_gives_the_plain_loops_bits(storage, rule, options, monkeypatch):
    """The AVX-512 block step against the plain loops (``PORTABLE=1``), bit for bit, in every
    variant of the vector code: grads over eleven orders of magnitude (e4m3's subnormal codes,
    zero blocks, -0), a partial last block; three steps, so that codes written by one step are
    decoded by the next."""
    runs = []
    for portable in (0, 1):
        monkeypatch.setattr(adam_module, "library", lambda name, **macros: _native.library(name, PORTABLE=portable,
                                                                                            **macros))
        tensors = _tensors(*storage, shapes=[(3 * 256 + 77,), (64, 256)])
        for step in range(1, 4):
            tensors[1] = [_wide_values(p.numel(), seed=step).view(p.shape).to(p.dtype) for p in tensors[0]]
            scalars = dict(beta1=0.9, beta2=0.999, eps=1e-8, seed=5.0, step=float(step),
                           stochastic_rounding=storage[1], **RULES[rule], **OPTIONS[options])
            _native_runner(tensors, scalars)
        runs.append(tensors)
    for kind, (mine, theirs) in enumerate(zip(*runs)):
        if kind != 1:
            for a, b in zip(mine, theirs):
                assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), f"tensor kind {kind}"


def test_threads_split_blocks_without_changing_bits():
    """One call steps all tensors, their blocks shared among threads: one thread or two, the same bits."""
    shapes = [(1 << 17,), (300,), (MIN_QUANTIZED_NUMEL + 1,), (7, 5), (64, 1000)]
    runs = []
    for threads in (1, 2):
        tensors = _tensors(torch.float32, False, "8bit", shapes=shapes)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            _steps(tensors, _native_runner, "adam", "plain", False, steps=2)
        finally:
            torch.set_num_threads(previous)
        runs.append(tensors)
    for mine, theirs in zip(*runs):
        if mine is not None:
            assert all(torch.equal(a, b) for a, b in zip(mine, theirs))


def test_leaves_what_it_cannot_run_and_bumps_versions():
    """Non-contiguous params, float64 and float16 params go to the compiled rule (returned);
    what the kernel writes shows in autograd's version counters, as an in-place op would."""
    param = torch.randn(64, 128)
    tensors = [[param, param.t().contiguous().t(), torch.randn(64, 128, dtype=torch.float64),
                torch.randn(4096).half()]]
    tensors.append([torch.randn_like(t) for t in tensors[0]])
    tensors += [[torch.zeros_like(t, dtype=torch.float32) for t in tensors[0]] for _ in range(2)]
    tensors += [[None] * 4, [None] * 4]
    version = param._version
    scalars = dict(beta1=0.9, beta2=0.999, eps=1e-8, seed=0.0, step=1.0, **RULES["adam"])
    left = native_low_precision_steps(tensors, **scalars)
    assert [t is tensors[0][i] for t, i in zip(left[0], (1, 2, 3))] == [True, True, True]
    assert param._version > version and tensors[2][0]._version > 0


def test_random_key_is_the_hash_key():
    """The key the kernel gets is the one random_bits mixes in: the bf16 bits above depend on it;
    here its range and its dependence on each argument."""
    keys = {random_key(seed, step, stream) for seed in (0, 1) for step in (1, 2) for stream in STREAMS.values()}
    assert len(keys) == 8 and all(0 <= key < 2**32 for key in keys)


def test_disabled_and_unbuildable(monkeypatch, tmp_path):
    monkeypatch.setenv(_native.DISABLE, "1")
    assert _native.library("adam_low_precision") is None
    monkeypatch.setenv(_native.DISABLE, "0")
    monkeypatch.setenv("OPTKERNELS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_compiler", lambda: "/bin/false")
    _native._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built"):
            assert _native.library("adam_low_precision", UPDATE=0) is None
    finally:
        _native._library.cache_clear()
    assert not list(tmp_path.glob("*.so"))


def test_builds_into_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTKERNELS_CACHE_DIR", str(tmp_path))
    _native._library.cache_clear()
    try:
        assert _native.library("adam_low_precision", UPDATE=2) is not None
        assert len(list(tmp_path.glob("adam_low_precision-*.so"))) == 1
        assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no scratch left
    finally:
        _native._library.cache_clear()
    assert os.environ["OPTKERNELS_CACHE_DIR"] == str(tmp_path)
