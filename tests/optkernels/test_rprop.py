"""``optkernels.rprop_update`` against torch's own functional Rprop (``torch.optim.rprop.rprop``),
its for-loop and its foreach path: the ops and their order are torch's, so every result is equal
bit for bit, in every dtype torch takes (bf16 and complex included). Then the rule on numbers
worked by hand, and bad input, which must raise naming the argument and change nothing.
"""

import math
import re

import pytest
import torch
from torch.optim.rprop import rprop as torch_rprop
from torch.testing import assert_close

from optkernels import rprop_update
from tests.helpers import LAYOUTS, laid_out, same_layout_copy

EXACT = dict(rtol=0, atol=0)
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.complex64]
STEPS = 12
LR = 0.01
# the bounds bind within the run: 0.01 * 1.7^3 > 0.04, and 0.01 * 0.3^2 < 1e-3
HPARAMS = {
    "default": dict(),
    "bounds-bind": dict(etaminus=0.3, etaplus=1.7, step_size_min=1e-3, step_size_max=0.04),
    "unbounded": dict(etaminus=0.5, etaplus=1.2, step_size_min=0.0, step_size_max=math.inf),
}
TORCH_DEFAULTS = dict(etaminus=0.5, etaplus=1.2, step_size_min=1e-6, step_size_max=50.0)


def random_tensors(dtypes, seed, zero_fraction=0.0):
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for (shape, layout), dtype in zip(LAYOUTS, dtypes):
        wide = torch.complex128 if dtype.is_complex else torch.float64
        values = torch.randn(shape, generator=generator, dtype=wide)
        # some exact zeros, so that g_prev * g_t == 0 happens other than after a sign flip
        values[torch.rand(shape, generator=generator) < zero_fraction] = 0
        tensors.append(laid_out(values.to(dtype), layout))
    return tensors


def initial_step_sizes(grads_like, lr=LR):
    return [torch.full_like(t, complex(lr, lr) if t.is_complex() else lr) for t in grads_like]


class Pair:
    """Our tensors and torch's copies of them, stepped side by side on the same gradients."""

    def __init__(self, dtypes):
        self.params = random_tensors(dtypes, seed=0)
        self.prevs = [torch.zeros_like(p) for p in self.params]
        self.step_sizes = initial_step_sizes(self.params)
        self.ref = [[same_layout_copy(t) for t in lst] for lst in (self.params, self.prevs, self.step_sizes)]
        self.ref_steps = [torch.tensor(0.0) for _ in self.params]

    def step(self, grads, *, foreach, maximize=False, **hparams):
        before = [same_layout_copy(g) for g in grads]
        ours = torch._foreach_neg(grads) if maximize else grads
        rprop_update(self.params, ours, self.prevs, self.step_sizes, **hparams)
        ref_params, ref_prevs, ref_step_sizes = self.ref
        torch_rprop(ref_params, grads, ref_prevs, ref_step_sizes, self.ref_steps, foreach=foreach,
                    maximize=maximize, has_complex=any(g.is_complex() for g in grads),
                    **{**TORCH_DEFAULTS, **hparams})
        for grad, old in zip(grads, before):
            assert_close(grad, old, **EXACT, equal_nan=True, msg="grads were mutated")

    def assert_equal(self):
        for name, mine, theirs in zip(("params", "prevs", "step_sizes"),
                                      (self.params, self.prevs, self.step_sizes), self.ref):
            for index, (a, b) in enumerate(zip(mine, theirs)):
                assert_close(a, b, **EXACT, equal_nan=True, msg=lambda m: f"{name}[{index}]: {m}")


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("hparams", list(HPARAMS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torch_bitwise(dtype, hparams, maximize, foreach):
    pair = Pair([dtype] * len(LAYOUTS))
    for call in range(STEPS):
        # every third call repeats the last gradients' signs, so step sizes also grow in a row
        seed = 100 + call - (call % 3 == 2)
        grads = random_tensors([dtype] * len(LAYOUTS), seed=seed, zero_fraction=0.1)
        pair.step(grads, foreach=foreach, maximize=maximize, **HPARAMS[hparams])
    pair.assert_equal()


def test_bounds_were_reached():
    """The bounds-bind case does clamp at both ends (else the test above could not see a wrong clamp)."""
    pair = Pair([torch.float64] * len(LAYOUTS))
    for call in range(STEPS):
        grads = random_tensors([torch.float64] * len(LAYOUTS), seed=100 + call - (call % 3 == 2), zero_fraction=0.1)
        pair.step(grads, foreach=False, **HPARAMS["bounds-bind"])
    sizes = torch.cat([s.flatten() for s in pair.step_sizes])
    assert (sizes == 1e-3).any() and (sizes == 0.04).any()


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_mixed_dtypes_in_one_call(foreach):
    dtypes = [torch.float32, torch.float64, torch.complex64, torch.bfloat16, torch.float32]
    pair = Pair(dtypes)
    for call in range(STEPS):
        pair.step(random_tensors(dtypes, seed=200 + call // 2), foreach=foreach)
    pair.assert_equal()


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_nonfinite_grads_as_torch(foreach):
    """torch.sign(nan) is 0 on CPU: a NaN gradient moves nothing and keeps its step size, but
    is kept in ``prev``; an infinite one is an ordinary sign. As in torch."""
    pair = Pair([torch.float32] * len(LAYOUTS))
    for call in range(4):
        grads = random_tensors([torch.float32] * len(LAYOUTS), seed=300 + call)
        grads[0][0, call] = math.nan
        grads[1][call] = math.inf if call % 2 else -math.inf
        pair.step(grads, foreach=foreach)
    pair.assert_equal()
    assert pair.prevs[0].isnan().any()


def test_rule_by_hand():
    """One element through growth, both bounds and sign flips (no move, then no comparison)."""
    params, prevs, sizes = [torch.zeros(1, dtype=torch.float64)], [torch.zeros(1, dtype=torch.float64)], \
        [torch.full((1,), 0.1, dtype=torch.float64)]
    hparams = dict(etaminus=0.5, etaplus=2.0, step_size_min=0.05, step_size_max=0.3)
    param, size, prev = 0.0, 0.1, 0.0
    expected_sizes = [0.1, 0.2, 0.3, 0.15, 0.15, 0.075, 0.075, 0.05]
    for grad, expected_size in zip([1, 1, 1, -1, -1, 1, 1, -1], expected_sizes):
        rprop_update(params, [torch.tensor([float(grad)], dtype=torch.float64)], prevs, sizes, **hparams)
        if prev * grad < 0:  # flipped: shrink, stand still, forget the gradient
            size, grad = max(size * 0.5, 0.05), 0
        elif prev * grad > 0:
            size = min(size * 2.0, 0.3)
        param -= math.copysign(size, grad) if grad else 0.0
        prev = grad
        assert size == pytest.approx(expected_size, abs=1e-15)
        assert sizes[0].item() == size and params[0].item() == param and prevs[0].item() == prev


def test_empty_lists_do_nothing():
    rprop_update([], [], [], [])


# ------------------------------------------------------------------------------------------------
# Bad input: raises naming the argument, changes nothing
# ------------------------------------------------------------------------------------------------

def named(name):
    return rf"(?<![\w]){re.escape(name)}(?![\w])"


def make_lists():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(3, generator=gen), torch.randn(2, 4, generator=gen)]
    return dict(params=params, grads=[torch.randn_like(p) for p in params],
                prevs=[torch.randn_like(p) for p in params], step_sizes=initial_step_sizes(params))


def call_with(lists, **hparams):
    rprop_update(lists["params"], lists["grads"], lists["prevs"], lists["step_sizes"], **hparams)


def expect_error(lists, error, pattern, **hparams):
    before = {name: [t.clone() if isinstance(t, torch.Tensor) else t for t in lst]
              for name, lst in lists.items() if isinstance(lst, list)}
    with pytest.raises(error, match=pattern):
        call_with(lists, **hparams)
    for name, tensors in before.items():
        for old, new in zip(tensors, lists[name]):
            if isinstance(old, torch.Tensor):
                assert torch.equal(old.to_dense(), new.to_dense()), f"{name} was mutated"


NAN, INF = math.nan, math.inf
BAD_HPARAMS = [
    ("etaminus-zero", dict(etaminus=0.0), ValueError, "etaminus"),
    ("etaminus-one", dict(etaminus=1.0), ValueError, "etaminus"),
    ("etaminus-negative", dict(etaminus=-0.5), ValueError, "etaminus"),
    ("etaminus-nan", dict(etaminus=NAN), ValueError, "etaminus"),
    ("etaminus-string", dict(etaminus="0.5"), TypeError, "etaminus"),
    ("etaplus-one", dict(etaplus=1.0), ValueError, "etaplus"),
    ("etaplus-below-one", dict(etaplus=0.5), ValueError, "etaplus"),
    ("etaplus-inf", dict(etaplus=INF), ValueError, "etaplus"),
    ("etaplus-nan", dict(etaplus=NAN), ValueError, "etaplus"),
    ("etaplus-2-element-tensor", dict(etaplus=torch.tensor([1.2, 1.2])), ValueError, "etaplus"),
    ("step_size_min-negative", dict(step_size_min=-1e-6), ValueError, "step_size_min"),
    ("step_size_min-nan", dict(step_size_min=NAN), ValueError, "step_size_min"),
    ("step_size_min-inf", dict(step_size_min=INF, step_size_max=INF), ValueError, "step_size_min"),
    ("step_size_min-above-max", dict(step_size_min=1.0, step_size_max=0.5), ValueError, "step_size_max"),
    ("step_size_max-nan", dict(step_size_max=NAN), ValueError, "step_size_max"),
    ("step_size_max-none", dict(step_size_max=None), TypeError, "step_size_max"),
]


@pytest.mark.parametrize(("hparams", "error", "argument"),
                         [pytest.param(h, e, a, id=i) for i, h, e, a in BAD_HPARAMS])
def test_bad_hyperparameter(hparams, error, argument):
    expect_error(make_lists(), error, named(argument), **hparams)


def _wrong_shape(lists, name):
    lists[name][1] = torch.zeros(5)


def _wrong_dtype(lists, name):
    lists[name][1] = lists[name][1].double()


def _short(lists, name):
    lists[name] = lists[name][:1]


def _none_entry(lists, name):
    lists[name][0] = None


def _not_a_list(lists, name):
    lists[name] = lists[name][0]


def _sparse(lists, name):
    lists[name][0] = lists[name][0].to_sparse()


LIST_DAMAGE = [(_wrong_shape, ValueError), (_wrong_dtype, TypeError), (_short, ValueError),
               (_none_entry, TypeError), (_not_a_list, TypeError), (_sparse, RuntimeError)]


@pytest.mark.parametrize("name", ["params", "grads", "prevs", "step_sizes"])
@pytest.mark.parametrize(("damage", "error"), LIST_DAMAGE, ids=[d.__name__.strip("_") for d, _ in LIST_DAMAGE])
def test_bad_tensor_list(name, damage, error):
    lists = make_lists()
    damage(lists, name)
    if name == "params" and damage in (_wrong_shape, _wrong_dtype, _short):
        name = "grads"  # the params define the reference; the first list that disagrees is named
    expect_error(lists, error, named(name))
