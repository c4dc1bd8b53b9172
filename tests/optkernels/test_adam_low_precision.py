"""``adam_update`` with low-precision state (``state_precision="bf16"`` / ``"8bit"``) and bf16
params with stochastic rounding: the codes it writes are the reference quantiser's, bit for bit;
eager and compiled give the same numbers to rounding; the same seed gives the same bits."""

import pytest
import torch

from optkernels import UnsupportedOptionError, _native, adam_update, radam_update
from optkernels.quantization import (MIN_QUANTIZED_NUMEL, STREAMS, halves, load_state, new_scales, new_state,
                                     random_words)
from tests.helpers import FIRST_MOMENT_TRACKING, assert_low_precision_close
from tests.reference import quantize_blockwise_reference

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)


# quantised (whole blocks: the rules' (blocks, 256) form), kept fp32, quantised with partial last blocks
SHAPES = [(16, 256), (7, 5), (MIN_QUANTIZED_NUMEL + 3,), (16, 300)]


def _setup(state_precision, *, param_dtype=torch.float32, stochastic_rounding=False, shapes=SHAPES):
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=generator).to(param_dtype) for shape in shapes]
    exp_avgs = [new_state(p, state_precision, stochastic_rounding=stochastic_rounding) for p in params]
    exp_avg_sqs = [new_state(p, state_precision, stochastic_rounding=stochastic_rounding) for p in params]
    return dict(params=params, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                exp_avg_scales=[new_scales(s) for s in exp_avgs], exp_avg_sq_scales=[new_scales(s) for s in exp_avg_sqs])


def _grads(params, step):
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=generator).to(p.dtype) for p in params]


def _run(tensors, steps, **options):
    scales = {}
    if options.get("state_precision", "fp32") != "fp32":
        scales = dict(exp_avg_scales=tensors["exp_avg_scales"], exp_avg_sq_scales=tensors["exp_avg_sq_scales"])
    for step in range(1, steps + 1):
        adam_update(tensors["params"], _grads(tensors["params"], step), tensors["exp_avgs"], tensors["exp_avg_sqs"],
                    step=step, lr=1e-2, seed=3, **scales, **options)
    return tensors


def test_codes_equal_the_reference_quantiser():
    """From zero state, step 1 stores m = (1 - beta1) g and v = (1 - beta2) g^2: the codes
    written are the plain quantiser's of the float32 moments the same kernel keeps unquantised,
    rounded with the step's random words (seed 3, step 1: low halves for m, high for v)."""
    quantised = _run(_setup("8bit"), 1, state_precision="8bit")
    full = _run(_setup("fp32"), 1, state_precision="8bit")  # 8bit with float state: nothing quantised
    for index in (0, 2, 3):
        numel = full["exp_avgs"][index].numel()
        draws = halves(random_words(numel, seed=3, step=1, stream=STREAMS["moments"]))
        for (name, scale_name, signed), random in zip((("exp_avgs", "exp_avg_scales", True),
                                                       ("exp_avg_sqs", "exp_avg_sq_scales", False)), draws):
            codes, scales = quantize_blockwise_reference(full[name][index], signed=signed, random=random)
            assert torch.equal(quantised[name][index], codes), (name, index)
            assert torch.equal(quantised[scale_name][index], scales), (scale_name, index)
    assert quantised["exp_avgs"][1].dtype == torch.float32  # under 4096 elements: kept fp32
    assert torch.equal(quantised["exp_avgs"][1], full["exp_avgs"][1])


def test_low_precision_tracks_fp32():
    """5 steps of lr 0.01 from the same params: our low-precision params stay near fp32's, by a
    measure of how far the params moved. On average within 1 % (bf16) and 5 % (8-bit) of it:
    the formats' rounding of m and sqrt(v), stochastic so unbiased; at worst within a quarter
    (8-bit: a code rounded stochastically is within one step of e4m3 of the value, 1/8
    relative, in m and in sqrt(v): an update off by up to 28 %) and a 20th (bf16). The first
    moment within ``FIRST_MOMENT_TRACKING`` of its largest value."""
    start = _setup("fp32")["params"]
    reference = _run(_setup("fp32"), 5)
    for precision, mean_bound, max_bound in (("bf16", 0.01, 0.05), ("8bit", 0.05, 0.25)):
        ours = _run(_setup(precision), 5, state_precision=precision)
        for index, (mine, theirs, first) in enumerate(zip(ours["params"], reference["params"], start)):
            off, moved = (mine - theirs).abs(), (theirs - first).abs()
            assert off.mean() <= mean_bound * moved.mean(), f"{precision} param {index}"
            assert off.max() <= max_bound * moved.max(), f"{precision} param {index}"
        m = load_state(ours["exp_avgs"][0], ours["exp_avg_scales"][0], signed=True)
        torch.testing.assert_close(m, reference["exp_avgs"][0], rtol=0,
                                   atol=FIRST_MOMENT_TRACKING[precision] * m.abs().max().item())


def test_compiled_equals_eager(monkeypatch):
    """The same rule compiled by torch.compile (on CPU ``compiled=True`` runs the native kernel,
    which tests/optkernels/test_native.py checks against this one), on the richest case (bf16
    params rounded stochastically, 8-bit moments; one tiny tensor, one graph, to keep the
    compile short): params, codes and scales equal to rounding. (The fp32 and bf16-state cases
    run the same functions.)"""
    monkeypatch.setenv(_native.DISABLE, "1")
    options = dict(state_precision="8bit", stochastic_rounding=True)
    setup = dict(param_dtype=torch.bfloat16, stochastic_rounding=True, shapes=[(MIN_QUANTIZED_NUMEL,)])
    eager = _run(_setup("8bit", **setup), 2, **options)
    compiled = _run(_setup("8bit", **setup), 2, compiled=True, **options)
    for name in ("exp_avgs", "exp_avg_sqs", "params"):
        assert_low_precision_close(compiled[name][0], eager[name][0], name, param=name == "params")
    for name in ("exp_avg_scales", "exp_avg_sq_scales"):
        torch.testing.assert_close(compiled[name][0], eager[name][0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("update", [adam_update, radam_update], ids=["adam", "radam"])
def test_float_state_equals_the_fp32_kernel(update):
    """The low-precision rule with float32 state (nothing rounded) is the fp32 kernel's update, to
    rounding: RAdam's SGD-like first steps and its rectified ones, coupled weight decay."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(MIN_QUANTIZED_NUMEL, generator=generator)
    runs = []
    for options in ({}, dict(state_precision="8bit")):
        params, exp_avgs, exp_avg_sqs = [start.clone()], [torch.zeros_like(start)], [torch.zeros_like(start)]
        for step in range(1, 9):
            update(params, _grads(params, step), exp_avgs, exp_avg_sqs, step=step, lr=1e-2, weight_decay=0.01,
                   **options)
        runs.append((params[0], exp_avgs[0], exp_avg_sqs[0]))
    for mine, theirs in zip(*runs):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)


def test_same_seed_same_bits():
    first = _run(_setup("bf16", param_dtype=torch.bfloat16), 3, state_precision="bf16", stochastic_rounding=True)
    again = _run(_setup("bf16", param_dtype=torch.bfloat16), 3, state_precision="bf16", stochastic_rounding=True)
    for name in ("params", "exp_avgs", "exp_avg_sqs"):
        for a, b in zip(first[name], again[name]):
            assert torch.equal(a.view(torch.int16), b.view(torch.int16)), name


def test_stochastic_rounding_keeps_small_updates_of_bf16_params():
    """An update of 1/80 of a bf16 step: rounded to nearest it is lost, rounded stochastically
    it moves the param by the right amount on average."""
    moved = {}
    for stochastic in (False, True):
        params = [torch.ones(4096, dtype=torch.bfloat16)]
        exp_avgs, exp_avg_sqs = [torch.zeros(4096)], [torch.zeros(4096)]  # float32 state, nothing else rounds
        for step in range(1, 41):
            adam_update(params, [torch.ones(4096, dtype=torch.bfloat16)], exp_avgs, exp_avg_sqs, step=step,
                        lr=2**-7 / 80, state_precision="bf16" if not stochastic else "fp32",
                        stochastic_rounding=stochastic, seed=1)
        moved[stochastic] = 1 - params[0].float().mean().item()
    assert moved[False] == 0
    assert abs(moved[True] - 40 * 2**-7 / 80) < 0.1 * 40 * 2**-7 / 80


def test_checks():
    tensors = _setup("8bit")
    args = (tensors["params"], _grads(tensors["params"], 1), tensors["exp_avgs"], tensors["exp_avg_sqs"])
    with pytest.raises(ValueError, match="exp_avg_scales"):
        adam_update(*args, step=1, lr=0.1, state_precision="8bit")
    with pytest.raises(ValueError, match="state_precision"):
        adam_update(*args, step=1, lr=0.1, state_precision="int4")
    with pytest.raises(UnsupportedOptionError, match="AMSGrad"):
        adam_update(*args, [torch.zeros_like(p) for p in tensors["params"]], step=1, lr=0.1, state_precision="8bit",
                    exp_avg_scales=tensors["exp_avg_scales"], exp_avg_sq_scales=tensors["exp_avg_sq_scales"])
    with pytest.raises(ValueError, match="go with"):
        adam_update([torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], step=1, lr=0.1,
                    exp_avg_scales=[None])
    assert all(torch.equal(p, q) for p, q in zip(tensors["params"], _setup("8bit")["params"]))  # nothing changed
