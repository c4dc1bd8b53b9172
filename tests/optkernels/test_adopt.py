"""``optkernels.adopt.adopt_update`` against the authors' update rule, ``authors_adopt`` below: a
transcription, op for op, of ``_single_tensor_adopt`` in github.com/iShohei220/adopt (``adopt.py``,
the clipped version of Nov 2024; torch.optim's default path on CPU). The kernel runs the same ops
in the same order, so results are equal bit for bit in fp32 and fp64. (pytorch-optimizer 4.1.0's
``ADOPT``, installed, is compared in ``tests/wrappers/test_adopt.py``.) The compiled rules equal
the foreach path to rounding."""

import functools
import math

import pytest
import torch
from torch.testing import assert_close

import optkernels._compiled as compiled_module
from optkernels.adopt import adopt_first_rule, adopt_rule, adopt_update, default_clip_lambda
from tests.helpers import laid_out, same_layout_copy
from tests.reference import authors_adopt as reference_adopt

LAYOUTS = [((4, 5), "contiguous"), ((7,), "contiguous"), ((), "contiguous"), ((6, 3), "transposed"),
           ((5,), "strided"), ((0,), "contiguous")]
START = [1, 1, 3, 2, 1, 4]  # the call at which each tensor takes its first step: mixed counts per call
STEPS = 20
LR = 1e-2
EXACT = dict(rtol=0, atol=0)


def tight_clip(step):
    """A schedule that clips often (the default's (t-1)^0.25 seldom does after a few steps)."""
    return 0.5 + 0.05 * step


CASES = {
    "defaults": dict(),
    "unclipped": dict(clip_lambda=None),
    "tight-clip": dict(clip_lambda=tight_clip),
    "coupled": dict(weight_decay=0.5),
    "decoupled": dict(weight_decay=0.5, decoupled=True),
    "maximize-coupled": dict(weight_decay=0.3, maximize=True),
    "betas-decoupled-tight": dict(beta1=0.5, beta2=0.9, eps=1e-2, weight_decay=0.1, decoupled=True,
                                  clip_lambda=tight_clip),
}


# the authors' rule (tests/reference.py), with the authors' default clipping schedule
authors_adopt = functools.partial(reference_adopt, clip_lambda=default_clip_lambda)


def tensors(dtypes, seed, layouts=LAYOUTS):
    generator = torch.Generator().manual_seed(seed)
    return [laid_out(torch.randn(shape, generator=generator, dtype=torch.complex128 if dtype.is_complex
                                 else torch.float64).to(dtype), layout)
            for (shape, layout), dtype in zip(layouts, dtypes)]


class Run:
    """The kernel's tensors, and the reference's copies beside them; tensor i first steps at call START[i]."""

    def __init__(self, dtypes, layouts=LAYOUTS, start=START):
        self.dtypes, self.layouts, self.start = dtypes, layouts, start
        self.params = tensors(dtypes, 0, layouts)
        self.initial = [p.clone() for p in self.params]
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.tensor(0.0) for _ in self.params]
        self.ref_params = [same_layout_copy(p) for p in self.params]
        self.ref_states = [dict(step=torch.tensor(0.0), exp_avg=same_layout_copy(m), exp_avg_sq=same_layout_copy(v))
                           for m, v in zip(self.exp_avgs, self.exp_avg_sqs)]

    def step(self, call, *, compiled=False, **options):
        grads = tensors(self.dtypes, 1000 + call, self.layouts)
        before = [g.clone() for g in grads]
        on = [i for i, first in enumerate(self.start) if first <= call]
        for i in on:
            self.steps[i] += 1
        pick = lambda lst: [lst[i] for i in on]  # noqa: E731
        adopt_update(pick(self.params), pick(grads), pick(self.exp_avgs), pick(self.exp_avg_sqs),
                     step=pick(self.steps), lr=LR, compiled=compiled, **options)
        assert all(torch.equal(g, b) for g, b in zip(grads, before)), "the kernel changed a grad"
        for i in on:
            authors_adopt(self.ref_params[i], grads[i], self.ref_states[i], lr=LR, **options)

    def pairs(self):
        for i, (param, state) in enumerate(zip(self.params, self.ref_states)):
            yield f"param {i}", param, self.ref_params[i]
            yield f"exp_avg {i}", self.exp_avgs[i], state["exp_avg"]
            yield f"exp_avg_sq {i}", self.exp_avg_sqs[i], state["exp_avg_sq"]
            assert self.steps[i].item() == state["step"].item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("options", list(CASES.values()), ids=list(CASES))
def test_matches_authors_rule(options, dtype):
    run = Run([dtype] * len(LAYOUTS))
    for call in range(1, STEPS + 1):
        run.step(call, **options)
        for name, mine, theirs in run.pairs():
            assert mine.stride() == theirs.stride()
            assert_close(mine, theirs, **EXACT, msg=lambda m: f"call {call}, {name}: {m}")
    assert not torch.equal(run.params[0], run.initial[0]), "a param never moved"


def test_mixed_dtypes_and_complex_in_one_call():
    """fp32, fp64 and complex64 (real pairs, as the authors' code) in one call, grouped by the kernel.
    Decoupled decay: the authors add coupled decay to a complex grad before viewing it as real
    pairs, which on CPU rounds as complex arithmetic does (no fused multiply-add); the kernel
    (real pairs throughout) agrees there to rounding only."""
    dtypes = [torch.float32, torch.float64, torch.complex64, torch.float32, torch.complex64, torch.float64]
    run = Run(dtypes)
    for call in range(1, 8):
        run.step(call, weight_decay=0.1, decoupled=True, clip_lambda=tight_clip)
    for name, mine, theirs in run.pairs():
        assert_close(mine, theirs, **EXACT, msg=lambda m: f"{name}: {m}")


def test_first_step_only_sets_the_second_moment():
    """Step 1: v = g^2 (coupled decay in g), params and m unchanged, decoupled decay included."""
    params, grads = tensors([torch.float64] * 2, 0, LAYOUTS[:2]), tensors([torch.float64] * 2, 1, LAYOUTS[:2])
    initial = [p.clone() for p in params]
    for decoupled in (True, False):
        exp_avgs, exp_avg_sqs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
        adopt_update(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.1, weight_decay=0.5, decoupled=decoupled)
        assert all(torch.equal(p, q) for p, q in zip(params, initial))
        assert all(not m.any() for m in exp_avgs)
        for g, p, v in zip(grads, params, exp_avg_sqs):
            expected = g if decoupled else g + 0.5 * p
            assert_close(v, expected * expected, **EXACT)


def test_zero_lr_moves_no_param():
    run = Run([torch.float64] * len(LAYOUTS))
    for call in range(1, 6):
        run.step(call, weight_decay=0.5, decoupled=True, **{"clip_lambda": None})
    # lr is LR there: here the same, at lr 0
    params = [p.clone() for p in run.params]
    grads = tensors([torch.float64] * len(LAYOUTS), 7)
    adopt_update(run.params, grads, run.exp_avgs, run.exp_avg_sqs, step=6, lr=0.0, weight_decay=0.5, decoupled=True)
    assert all(torch.equal(p, q) for p, q in zip(run.params, params))


# --- compiled rules, traced by dynamo without inductor's code generation ---------------------

class LightCompile:
    def __init__(self):
        self.labels = set()

    def rules(self) -> set[str]:
        """The rules compiled, by name (without the preparation and the dtype in their labels)."""
        return {label.rsplit("_", 2)[0].split("_after")[0] for label in self.labels}


@pytest.fixture(scope="module")
def light_compile():
    """``torch.compile`` with the ``aot_eager`` backend for the kernels' compiled rules: dynamo
    traces each rule (fullgraph, dynamic shapes, scalars as tensors) and AOTAutograd
    functionalises it, as for inductor, which then does not generate C++ (its first compile on a
    machine, with a cold cache, takes 20-40 s: more than these test files' budget). Inductor's own
    numbers are checked by the generic mode tests and the benchmarks. One per test module: its
    tests share the compiled rules. Fails if any rule fell back to eager."""
    real_compile, light = torch.compile, LightCompile()

    def compile_(function, **kwargs):
        light.labels.add(function.__name__)
        kwargs.pop("options", None)
        return real_compile(function, **dict(kwargs, backend="eager"))

    compiled_module._runner.cache_clear()
    eager_before = set(compiled_module._EAGER)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(torch, "compile", compile_)
        yield light
    compiled_module._runner.cache_clear()
    assert compiled_module._EAGER == eager_before, "a rule failed to compile and ran eagerly"


def test_compiled_equals_foreach(light_compile):
    """Both rules, with clipping, coupled decay and maximize (the preparation in the same graph);
    one tensor starts a step later: first and later steps in one call."""
    options = dict(weight_decay=0.2, maximize=True, clip_lambda=tight_clip)
    layouts, start = LAYOUTS[:2], [1, 2]
    compiled, eager = Run([torch.float32] * 2, layouts, start), Run([torch.float32] * 2, layouts, start)
    for call in range(1, 5):
        compiled.step(call, compiled=True, **options)
        eager.step(call, **options)
    for mine, theirs in zip(compiled.params + compiled.exp_avgs + compiled.exp_avg_sqs,
                            eager.params + eager.exp_avgs + eager.exp_avg_sqs):
        assert_close(mine, theirs, rtol=1e-6, atol=1e-7)
    assert light_compile.rules() == {adopt_first_rule.__name__, adopt_rule.__name__}


# --- bad input ------------------------------------------------------------------------------

def _arguments():
    params = [torch.randn(3), torch.randn(2, 2)]
    return dict(params=params, grads=[torch.randn_like(p) for p in params],
                exp_avgs=[torch.randn_like(p) for p in params], exp_avg_sqs=[torch.rand_like(p) for p in params],
                step=[3, 1], lr=0.1)


def _refuse_step_5(step):
    if step == 4:
        raise ValueError("no clip for step 4")
    return 1.0


@pytest.mark.parametrize("change, error, match", [
    (dict(lr=-1.0), ValueError, "learning rate"),
    (dict(eps=-1e-6), ValueError, "epsilon"),
    (dict(beta1=1.0), ValueError, "beta1"),
    (dict(beta2=float("nan")), ValueError, "beta2"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(decoupled=1), TypeError, "decoupled"),
    (dict(maximize="yes"), TypeError, "maximize"),
    (dict(step=0), ValueError, "step"),
    (dict(step=[1, 2, 3]), ValueError, "step has 3 values"),
    (dict(clip_lambda=0.25), TypeError, "clip_lambda must be callable"),
    (dict(clip_lambda=lambda step: -1.0), ValueError, r"clip_lambda\(2.0\) returned -1.0"),
    (dict(clip_lambda=lambda step: math.nan), ValueError, "clip_lambda"),
    # raised by the clip of the second tensor's step, after the first tensor's group would have run
    (dict(step=[1, 5], clip_lambda=_refuse_step_5), ValueError, "no clip for step 4"),
    (dict(exp_avg_sqs=[torch.zeros(3)]), ValueError, "exp_avg_sqs has 1 tensors"),
    (dict(exp_avgs=[torch.zeros(3), torch.zeros(4)]), ValueError, r"exp_avgs\[1\] has shape"),
], ids=["lr", "eps", "beta1=1", "beta2-nan", "decay", "decoupled-int", "maximize-str", "step0", "steps-length",
        "clip-number", "clip<0", "clip-nan", "clip-raises", "length", "shape"])
def test_bad_input_raises_and_changes_nothing(change, error, match):
    arguments = _arguments()
    tensors_before = [t.clone() for name in ("params", "grads", "exp_avgs", "exp_avg_sqs") for t in arguments[name]]
    originals = [t for name in ("params", "grads", "exp_avgs", "exp_avg_sqs") for t in arguments[name]]
    arguments.update(change)
    with pytest.raises(error, match=match):
        adopt_update(arguments.pop("params"), arguments.pop("grads"), arguments.pop("exp_avgs"),
                     arguments.pop("exp_avg_sqs"), **arguments)
    assert all(torch.equal(a, b) for a, b in zip(originals, tensors_before))
