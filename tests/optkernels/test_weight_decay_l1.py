"""``weight_decay_l1``: each mode against its formula written out per tensor, in front of every
kernel, and the decoupled (proximal) mode's promises: exact zeros, no sign flips, the lasso
solution."""

import dataclasses
from collections.abc import Callable

import pytest
import torch

import optkernels
from optkernels import sgd_update, weight_decay_l1
from tests.configs import KERNELS
from tests.helpers import LAYOUTS, laid_out, same_layout_copy

WD, LR = 0.5, 0.1  # threshold lr * wd = 0.05
THRESHOLD = LR * WD


def _values(dtype, seed=0, scale=0.1):
    """Small values (scale 0.1), so that the threshold zeroes a good share of them."""
    generator = torch.Generator().manual_seed(seed)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    return [(scale * torch.randn(shape, generator=generator, dtype=wide)).to(dtype) for shape, _ in LAYOUTS]


def _params(dtype, seed=0):
    """Params in every layout of LAYOUTS: 0-d, transposed and strided ones included."""
    return [laid_out(v, layout) for v, (_, layout) in zip(_values(dtype, seed), LAYOUTS)]


def _grads(params, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator, dtype=torch.complex128 if p.is_complex() else torch.float64)
            .to(p.dtype) for p in params]


# Per-tensor references: the docstring's formulas, one tensor at a time.
def reference_coupled(param, grad):
    sign = torch.sgn(param) if param.is_complex() else torch.sign(param)
    return grad + WD * sign


def reference_decoupled(param, threshold=THRESHOLD):
    if param.is_complex():
        param.copy_(torch.sgn(param) * torch.clamp(param.abs() - threshold, min=0))
    else:
        param.copy_(torch.sign(param) * torch.clamp(param.abs() - threshold, min=0))


def _copies(tensors):
    return [same_layout_copy(t) for t in tensors]


def _assert_equal_lists(actual, expected, what):
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, e, rtol=0, atol=0, msg=lambda m: f"{what}[{index}]: {m}")


# ------------------------------------------------------------------------------------------------
# Each mode against its formula
# ------------------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.complex64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_coupled_returns_grad_plus_decay_times_sign_and_changes_nothing(dtype):
    params = _params(dtype)
    params[0].view(-1)[:3] = 0  # sign(0) = 0: a zero param adds nothing
    grads = _grads(params)
    params_before, grads_before = _copies(params), _copies(grads)
    out = weight_decay_l1(params, grads, weight_decay=WD)
    # wd * sign is exact, so grad + wd * sign rounds once either way: equal bit for bit
    _assert_equal_lists(out, [reference_coupled(p, g) for p, g in zip(params_before, grads_before)], "grads")
    assert torch.equal(out[0].view(-1)[:3], grads[0].view(-1)[:3])
    assert all(o.data_ptr() != g.data_ptr() for o, g in zip(out, grads))
    _assert_equal_lists(params, params_before, "params")
    _assert_equal_lists(grads, grads_before, "grads (input)")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decoupled_soft_thresholds_params_in_place_and_returns_grads(dtype):
    params = _params(dtype)
    grads = _grads(params)
    expected, grads_before = _copies(params), _copies(grads)
    for param in expected:
        reference_decoupled(param)
    out = weight_decay_l1(params, grads, weight_decay=WD, lr=LR, decoupled=True)
    assert out is grads
    _assert_equal_lists(grads, grads_before, "grads")
    # real: theta - clamp(theta, -tau, tau) rounds once, as the formula does; complex: the formula
    _assert_equal_lists(params, expected, "params")
    assert params[3].stride() == expected[3].stride()  # in place: layouts kept


def test_decoupled_makes_exact_zeros_and_never_flips_a_sign():
    params = _params(torch.float64)
    before = _copies(params)
    weight_decay_l1(params, _grads(params), weight_decay=WD, lr=LR, decoupled=True)
    zeroed = 0
    for param, old in zip(params, before):
        small = old.abs() <= THRESHOLD
        zeroed += int(small.sum())
        assert torch.equal(param[small], torch.zeros_like(param[small]))
        assert torch.equal(param[~small].sign(), old[~small].sign())
        # the others move exactly tau towards zero (fp64: |theta| - tau rounds once)
        torch.testing.assert_close(param[~small].abs(), old[~small].abs() - THRESHOLD, rtol=0, atol=0)
    assert zeroed > 5  # the test data does reach the threshold


def test_complex_decoupled_shrinks_the_modulus_and_keeps_the_phase():
    params = _params(torch.complex128)
    before = _copies(params)
    weight_decay_l1(params, _grads(params), weight_decay=WD, lr=LR, decoupled=True)
    for param, old in zip(params, before):
        small = old.abs() <= THRESHOLD
        assert torch.equal(param[small], torch.zeros_like(param[small]))
        kept = ~small
        torch.testing.assert_close(param[kept].abs(), old[kept].abs() - THRESHOLD, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(param[kept].angle(), old[kept].angle(), rtol=1e-14, atol=1e-14)


def test_decoupled_lets_non_finite_values_through():
    params = [torch.tensor([float("inf"), -float("inf"), float("nan"), 0.01, -0.5])]
    weight_decay_l1(params, [torch.zeros(5)], weight_decay=WD, lr=LR, decoupled=True)
    torch.testing.assert_close(params[0], torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.45]),
                               rtol=0, atol=0, equal_nan=True)


def test_a_mixed_list_equals_each_tensor_alone():
    dtypes = [torch.float32, torch.float64, torch.complex64, torch.bfloat16, torch.float32]
    params = [laid_out(_values(dtype, seed=i)[i], LAYOUTS[i][1]) for i, dtype in enumerate(dtypes)]
    grads = _grads(params)
    for decoupled in (False, True):
        together = _copies(params)
        out = weight_decay_l1(together, grads, weight_decay=WD, lr=LR, decoupled=decoupled)
        for index, (param, grad) in enumerate(zip(params, grads)):
            alone = [same_layout_copy(param)]
            out_alone = weight_decay_l1(alone, [grad], weight_decay=WD, lr=LR, decoupled=decoupled)
            assert torch.equal(together[index], alone[0]) and torch.equal(out[index], out_alone[0])


@pytest.mark.parametrize("options", [dict(weight_decay=0.0), dict(weight_decay=0.0, lr=LR, decoupled=True),
                                     dict(weight_decay=WD, lr=0.0, decoupled=True)],
                         ids=["coupled-zero-decay", "decoupled-zero-decay", "decoupled-zero-lr"])
def test_nothing_to_do_returns_grads_unchanged(options):
    params = _params(torch.float32)
    grads = _grads(params)
    before = _copies(params)
    assert weight_decay_l1(params, grads, **options) is grads
    _assert_equal_lists(params, before, "params")


def test_tensor_lr_equals_the_same_float_lr():
    params, twins = _params(torch.float32), _params(torch.float32)
    weight_decay_l1(params, _grads(params), weight_decay=WD, lr=torch.tensor(LR, dtype=torch.float64),
                    decoupled=True)
    weight_decay_l1(twins, _grads(twins), weight_decay=WD, lr=LR, decoupled=True)
    _assert_equal_lists(params, twins, "params")


@pytest.mark.parametrize(("kwargs", "error", "pattern"), [
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(weight_decay=float("nan"), lr=LR, decoupled=True), ValueError, "weight_decay"),
    (dict(weight_decay=WD, decoupled=True), ValueError, "lr is required"),
    (dict(weight_decay=WD, lr=-1.0, decoupled=True), ValueError, "learning rate"),
    (dict(weight_decay=WD, lr=LR, decoupled=True, grads="short"), ValueError, "grads has 4 tensors"),
    (dict(weight_decay=WD, grads="wrong-shape"), ValueError, r"grads\[0\] has shape"),
], ids=["negative", "nan", "decoupled-without-lr", "negative-lr", "short-grads", "wrong-shape"])
def test_bad_arguments_raise_before_changing_anything(kwargs, error, pattern):
    params = _params(torch.float32)
    grads = _grads(params)
    which = kwargs.pop("grads", None)
    if which == "short":
        grads = grads[:4]
    elif which == "wrong-shape":
        grads[0] = torch.zeros(3)
    before = _copies(params)
    with pytest.raises(error, match=pattern):
        weight_decay_l1(params, grads, **kwargs)
    _assert_equal_lists(params, before, "params")


# ------------------------------------------------------------------------------------------------
# In front of every kernel
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Composed:
    """A kernel and how to make its state for some params."""

    name: str
    make_states: Callable
    call: Callable


def _from_configs(kernel):
    def make_states(params):
        if kernel.zero_state:
            return [[torch.zeros_like(p) for p in params] for _ in range(kernel.state_count)]
        return [[None] * len(params) for _ in range(kernel.state_count)]
    return Composed(kernel.name, make_states, kernel.call)


# Ours, until tests/configs.py KERNELS lists them (a name there takes precedence).
_OURS = [
    Composed("nadam", lambda ps: [[torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps],
                                  [torch.tensor(1.0) for _ in ps]],
             lambda p, g, s, step, lr: optkernels.nadam_update(p, g, *s, step=step, lr=lr)),
    Composed("adamax", lambda ps: [[torch.zeros_like(p) for p in ps] for _ in range(2)],
             lambda p, g, s, step, lr: optkernels.adamax_update(p, g, *s, step=step, lr=lr)),
]
COMPOSED = [_from_configs(k) for k in KERNELS] + [k for k in _OURS if k.name not in {k.name for k in KERNELS}]
STEPS = 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64], ids=str)
@pytest.mark.parametrize("decoupled", [False, True], ids=["coupled", "decoupled"])
@pytest.mark.parametrize("kernel", COMPOSED, ids=lambda k: k.name)
def test_in_front_of_every_kernel_equals_the_per_tensor_reference(kernel, decoupled, dtype):
    initial = _params(dtype)
    grad_stream = [_grads(initial, seed=10 + step) for step in range(STEPS)]

    params, states = _copies(initial), kernel.make_states(initial)
    for step, grads in enumerate(grad_stream, start=1):
        grads_before = _copies(grads)
        used = weight_decay_l1(params, grads, weight_decay=WD, lr=LR, decoupled=decoupled)
        _assert_equal_lists(grads, grads_before, "grads")
        kernel.call(params, used, states, step, LR)

    for index, param in enumerate(initial):
        alone, alone_states = [same_layout_copy(param)], kernel.make_states([param])
        for step, grads in enumerate(grad_stream, start=1):
            if decoupled:
                reference_decoupled(alone[0])
                used = [grads[index]]
            else:
                used = [reference_coupled(alone[0], grads[index])]
            kernel.call(alone, used, alone_states, step, LR)
        torch.testing.assert_close(params[index], alone[0], rtol=0, atol=0, msg=lambda m: f"param {index}: {m}")
        for state, state_alone in zip(states, alone_states):
            torch.testing.assert_close(state[index], state_alone[0], rtol=0, atol=0)


def test_after_sgd_it_is_proximal_gradient_descent_and_finds_the_lasso_solution():
    # minimise 1/2 |theta - a|^2 + lam |theta|_1, whose solution is sign(a) max(|a| - lam, 0)
    targets = torch.tensor([2.0, -1.5, 0.3, -0.2, 0.0, 0.45, -0.55], dtype=torch.float64)
    lam, lr = 0.5, 0.5
    params = [torch.zeros_like(targets)]
    for _ in range(100):
        grads = [params[0] - targets]
        sgd_update(params, grads, lr=lr)
        weight_decay_l1(params, grads, weight_decay=lam, lr=lr, decoupled=True)
    lasso = torch.sign(targets) * torch.clamp(targets.abs() - lam, min=0)
    torch.testing.assert_close(params[0], lasso, rtol=0, atol=1e-14)
    assert torch.equal(params[0][lasso == 0], torch.zeros(4, dtype=torch.float64))  # exactly sparse
