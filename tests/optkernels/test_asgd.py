"""``optkernels.asgd_update`` against torch's own functional ASGD (``torch.optim.asgd.asgd``) on its
for-loop path, whose ops and order the kernel follows: equal bit for bit in fp32, fp64, bf16 and
complex64, params, averages, and the 0-d ``eta`` and ``mu`` alike, including tensors whose step
counts and learning-rate histories differ within one call. A tensor lr is read as its value, so
torch is given that value. Then bad input, which must raise naming the argument and change
nothing.

(torch's foreach path rounds differently: see tests/wrappers/test_asgd.py.)
"""

import math
import re

import pytest
import torch
from torch.optim.asgd import asgd as torch_asgd
from torch.testing import assert_close

from optkernels import asgd_update, weight_decay_l2
from tests.helpers import LAYOUTS, laid_out, same_layout_copy

EXACT = dict(rtol=0, atol=0)
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.complex64]
CALLS = 12
# t0 small enough that averaging (mu < 1) starts within the run; lambd and lr large enough
# that eta falls visibly from step to step
HPARAMS = {
    "default": dict(lr=0.01),
    "averaging": dict(lr=0.05, lambd=0.1, alpha=0.5, t0=3),
    "t0-zero": dict(lr=0.02, lambd=0.5, alpha=1.0, t0=0),
    "tensor-lr": dict(lr=torch.tensor(0.05), lambd=0.1, t0=2),
    "float64-tensor-lr": dict(lr=torch.tensor(0.05, dtype=torch.float64), lambd=0.1, t0=2),
    "lambd-zero": dict(lr=0.03, lambd=0.0, t0=5),
}
TORCH_DEFAULTS = dict(lambd=1e-4, alpha=0.75, t0=1e6)


def random_tensors(dtypes, seed):
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for (shape, layout), dtype in zip(LAYOUTS, dtypes):
        wide = torch.complex128 if dtype.is_complex else torch.float64
        tensors.append(laid_out(torch.randn(shape, generator=generator, dtype=wide).to(dtype), layout))
    return tensors


def scalar_dtype():
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class Pair:
    """Our tensors and torch's copies, stepped side by side; eta and mu start as torch's do."""

    def __init__(self, dtypes, lr, state_dtypes=None):
        self.params = random_tensors(dtypes, seed=0)
        self.axs = [torch.zeros_like(p) for p in self.params]
        start = lr.item() if isinstance(lr, torch.Tensor) else lr
        state_dtypes = state_dtypes or [scalar_dtype()] * len(dtypes)
        self.etas = [torch.tensor(start, dtype=dtype) for dtype in state_dtypes]
        self.mus = [torch.ones((), dtype=dtype) for dtype in state_dtypes]
        self.steps = [0] * len(self.params)
        self.ref = {name: [same_layout_copy(t) for t in getattr(self, name)]
                    for name in ("params", "axs", "mus", "etas")}
        self.ref_steps = [torch.zeros((), dtype=scalar_dtype()) for _ in self.params]

    def step(self, grads, active, *, lr, weight_decay=0.0, **hparams):
        """One call on the tensors ``active`` (others skip the step, as params without grads)."""
        pick = lambda lst: [lst[i] for i in active]  # noqa: E731
        for i in active:
            self.steps[i] += 1
        before = [same_layout_copy(g) for g in grads]
        params, grads_, axs = pick(self.params), pick(grads), pick(self.axs)
        if weight_decay:  # as the wrapper does: on real views, as torch's for-loop path
            params, grads_, axs = ([torch.view_as_real(t) if t.is_complex() else t for t in lst]
                                   for lst in (params, grads_, axs))
            grads_ = weight_decay_l2(params, grads_, weight_decay=weight_decay)
        asgd_update(params, grads_, axs, pick(self.mus), pick(self.etas), step=pick(self.steps), lr=lr,
                    **hparams)
        # a tensor lr is read as its value (torch computes eta in its dtype: see asgd_update)
        torch_lr = lr.item() if isinstance(lr, torch.Tensor) else lr
        torch_asgd(pick(self.ref["params"]), pick(grads), pick(self.ref["axs"]), pick(self.ref["mus"]),
                   pick(self.ref["etas"]), pick(self.ref_steps), foreach=False,
                   has_complex=any(g.is_complex() for g in grads), lr=torch_lr, weight_decay=weight_decay,
                   **{**TORCH_DEFAULTS, **hparams})
        for grad, old in zip(grads, before):
            assert_close(grad, old, **EXACT, msg="grads were mutated")

    def assert_equal(self):
        for name, theirs in self.ref.items():
            for index, (a, b) in enumerate(zip(getattr(self, name), theirs)):
                assert a.dtype == b.dtype, f"{name}[{index}] dtype"
                assert_close(a, b, **EXACT, msg=lambda m: f"{name}[{index}]: {m}")


def run(dtypes, hparams, calls=CALLS, weight_decay=0.0, lr_schedule=None, state_dtypes=None):
    pair = Pair(dtypes, hparams["lr"], state_dtypes)
    for call in range(calls):
        # tensor 1 skips every third call and tensor 3 the first two: their step counts, and so
        # their eta and mu, differ from the others' within one call
        active = [i for i in range(len(dtypes)) if not (i == 1 and call % 3 == 2 or i == 3 and call < 2)]
        lr = lr_schedule(call) if lr_schedule else hparams["lr"]
        pair.step(random_tensors(dtypes, seed=100 + call), active, **{**hparams, "lr": lr},
                  weight_decay=weight_decay)
    return pair


@pytest.mark.parametrize("hparams", list(HPARAMS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torch_forloop_bitwise(dtype, hparams):
    pair = run([dtype] * len(LAYOUTS), HPARAMS[hparams])
    pair.assert_equal()
    if HPARAMS[hparams].get("t0", 1e6) < CALLS - 2:  # averaging did start: mu < 1 somewhere
        assert any(mu.item() < 1 for mu in pair.mus)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_composed_weight_decay_matches_torch(dtype):
    run([dtype] * len(LAYOUTS), HPARAMS["averaging"], weight_decay=0.1).assert_equal()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_eta_and_mu_of_the_params_dtype(dtype):
    """torch's load_state_dict casts eta and mu to a floating param's dtype; they keep it, and
    take each new value rounded as torch rounds it (through a float32 tensor)."""
    pair = run([dtype] * len(LAYOUTS), HPARAMS["averaging"], state_dtypes=[dtype] * len(LAYOUTS))
    assert all(eta.dtype == dtype for eta in pair.etas)
    pair.assert_equal()


def test_mixed_dtypes_in_one_call():
    dtypes = [torch.float32, torch.float64, torch.complex64, torch.bfloat16, torch.float32]
    run(dtypes, HPARAMS["averaging"]).assert_equal()


@pytest.mark.parametrize("hparams", ["averaging", "tensor-lr"])
def test_changing_lr_enters_only_the_next_eta(hparams):
    """Each tensor keeps the eta computed with the lr of its own last step, as torch does."""
    base = HPARAMS[hparams]["lr"]
    run([torch.float32] * len(LAYOUTS), HPARAMS[hparams], lr_schedule=lambda call: base * 0.8**call).assert_equal()


def test_tensor_lr_is_read_as_its_value():
    """A tensor lr gives the numbers of the same float lr: eta_t is the double expression rounded
    to float32. (torch computes it in float32 arithmetic from a float32 tensor lr, a rounding
    apart; see ``asgd_update``.)"""
    lr, lambd, alpha = 0.05, 0.1, 0.75
    runs = {}
    for kind, given in (("float", lr), ("tensor", torch.tensor(lr)), ("float64-tensor", torch.tensor(lr).double())):
        params, axs = [torch.ones(3)], [torch.zeros(3)]
        etas, mus = [torch.tensor(lr)], [torch.ones(())]
        for t in range(1, 30):
            asgd_update(params, [torch.full((3,), 0.5)], axs, mus, etas, step=t, lr=given, lambd=lambd,
                        alpha=alpha, t0=5)
            assert etas[0].item() == torch.tensor(float(given) / ((1 + lambd * float(given) * t) ** alpha)).item()
        runs[kind] = (params[0], axs[0], etas[0], mus[0])
    for kind in ("tensor", "float64-tensor"):
        for mine, theirs in zip(runs[kind], runs["float"]):
            assert_close(mine, theirs, **EXACT)


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_rule_by_hand(float64_default):
    r"""theta_t = (1 - lambd eta) theta - eta g; the average copies theta while mu == 1, then
    moves by mu toward it; eta and mu from the step count. (Under a float64 default dtype, eta
    and mu are float64, as torch keeps them, so all of it is double arithmetic.)"""
    lr, lambd, alpha, t0 = 0.5, 0.2, 1.0, 1
    params, axs = [torch.tensor([2.0], dtype=torch.float64)], [torch.zeros(1, dtype=torch.float64)]
    etas, mus = [torch.tensor(lr, dtype=torch.float64)], [torch.ones((), dtype=torch.float64)]
    theta, average, eta, mu = 2.0, 0.0, lr, 1.0
    for t, grad in enumerate([1.0, -2.0, 0.5, 3.0], start=1):
        asgd_update(params, [torch.tensor([grad], dtype=torch.float64)], axs, mus, etas, step=t, lr=lr,
                    lambd=lambd, alpha=alpha, t0=t0)
        theta = theta * (1 - lambd * eta) + grad * -eta
        average = theta if mu == 1 else average + (theta - average) * mu
        eta, mu = lr / (1 + lambd * lr * t) ** alpha, 1 / max(1, t - t0)
        assert (params[0].item(), axs[0].item(), etas[0].item(), mus[0].item()) == (theta, average, eta, mu)
    assert mu < 1  # averaging was reached


def test_default_dtype_float64_keeps_float64_eta_and_mu(float64_default):
    pair = run([torch.float32] * len(LAYOUTS), HPARAMS["averaging"])
    assert pair.etas[0].dtype == torch.float64 and pair.mus[0].dtype == torch.float64
    pair.assert_equal()


def test_empty_lists_do_nothing():
    asgd_update([], [], [], [], [], step=1, lr=0.1)


# ------------------------------------------------------------------------------------------------
# Bad input: raises naming the argument, changes nothing
# ------------------------------------------------------------------------------------------------

NAN, INF = math.nan, math.inf
LISTS = ("params", "grads", "axs", "mus", "etas")


def named(name):
    return rf"(?<![\w]){re.escape(name)}(?![\w])"


def make_lists():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(3, generator=gen), torch.randn(2, 4, generator=gen)]
    return dict(params=params, grads=[torch.randn_like(p) for p in params], axs=[torch.randn_like(p) for p in params],
                mus=[torch.tensor(0.5), torch.tensor(1.0)], etas=[torch.tensor(0.1), torch.tensor(0.2)])


def expect_error(lists, error, pattern, **overrides):
    kwargs = {**dict(step=3, lr=0.1, t0=1), **overrides}
    before = {name: [t.clone() if isinstance(t, torch.Tensor) else t for t in lst]
              for name, lst in lists.items() if isinstance(lst, list)}
    with pytest.raises(error, match=pattern):
        asgd_update(*[lists[name] for name in LISTS], **kwargs)
    for name, tensors in before.items():
        for old, new in zip(tensors, lists[name]):
            if isinstance(old, torch.Tensor):
                assert torch.equal(old.to_dense(), new.to_dense()), f"{name} was mutated"


BAD_HPARAMS = [
    ("lr-negative", dict(lr=-0.1), ValueError, "lr"),
    ("lr-nan", dict(lr=NAN), ValueError, "lr"),
    ("lr-inf", dict(lr=INF), ValueError, "lr"),
    ("lr-nan-tensor", dict(lr=torch.tensor(NAN)), ValueError, "lr"),
    ("lr-2-element-tensor", dict(lr=torch.tensor([0.1, 0.1])), ValueError, "lr"),
    ("lambd-negative", dict(lambd=-1e-4), ValueError, "lambd"),
    ("lambd-nan", dict(lambd=NAN), ValueError, "lambd"),
    ("lambd-string", dict(lambd="1e-4"), TypeError, "lambd"),
    ("alpha-negative", dict(alpha=-0.75), ValueError, "alpha"),
    ("alpha-nan", dict(alpha=NAN), ValueError, "alpha"),
    ("t0-nan", dict(t0=NAN), ValueError, "t0"),
    ("t0-none", dict(t0=None), TypeError, "t0"),
    ("step-zero", dict(step=0), ValueError, "step"),
    ("step-fraction", dict(step=1.5), ValueError, "step"),
    ("step-short-list", dict(step=[1]), ValueError, "step"),
    ("step-none", dict(step=None), TypeError, "step"),
]


@pytest.mark.parametrize(("overrides", "error", "argument"),
                         [pytest.param(o, e, a, id=i) for i, o, e, a in BAD_HPARAMS])
def test_bad_hyperparameter(overrides, error, argument):
    expect_error(make_lists(), error, named(argument), **overrides)


def test_lr_and_step_are_required():
    lists = make_lists()
    with pytest.raises(TypeError, match="step"):
        asgd_update(*[lists[name] for name in LISTS], lr=0.1)
    with pytest.raises(TypeError, match="lr"):
        asgd_update(*[lists[name] for name in LISTS], step=1)


def _wrong_shape(lists, name):
    lists[name][1] = torch.zeros(5)


def _wrong_dtype(lists, name):
    lists[name][1] = lists[name][1].double() if name not in ("mus", "etas") else torch.tensor(1)


def _short(lists, name):
    lists[name] = lists[name][:1]


def _none_entry(lists, name):
    lists[name][0] = None


def _not_a_list(lists, name):
    lists[name] = lists[name][0]


def _sparse(lists, name):
    lists[name][0] = lists[name][0].to_sparse()


LIST_DAMAGE = [(_wrong_shape, ValueError), (_wrong_dtype, (TypeError, ValueError)), (_short, ValueError),
               (_none_entry, TypeError), (_not_a_list, TypeError)]


@pytest.mark.parametrize("name", LISTS)
@pytest.mark.parametrize(("damage", "error"), LIST_DAMAGE, ids=[d.__name__.strip("_") for d, _ in LIST_DAMAGE])
def test_bad_tensor_list(name, damage, error):
    lists = make_lists()
    damage(lists, name)
    if name == "params" and damage in (_wrong_shape, _wrong_dtype, _short):
        name = "grads"  # the params define the reference; the first list that disagrees is named
    expect_error(lists, error, named(name))


@pytest.mark.parametrize("name", ["params", "grads", "axs"])
def test_sparse_tensor_is_rejected(name):
    lists = make_lists()
    _sparse(lists, name)
    expect_error(lists, RuntimeError, named(name))
