"""``weight_decay_l2``: each mode against its formula, written out per tensor; the kernels'
``param_scale`` against ``weight_decay_l2`` composed in front."""

import pytest
import torch

import optkernels
from optkernels import weight_decay_l2
from optkernels.weight_decay import decoupled_scale

WD, LR = 0.1, 0.5


def _tensors(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 2, generator=generator, dtype=dtype), torch.randn((), generator=generator, dtype=dtype)]
    grads = [torch.randn(p.shape, generator=generator, dtype=dtype) for p in params]
    return params, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coupled_returns_grad_plus_decay_and_leaves_params(dtype):
    params, grads = _tensors(dtype)
    params_before, grads_before = [p.clone() for p in params], [g.clone() for g in grads]
    out = weight_decay_l2(params, grads, weight_decay=WD)
    for p, g, o, p0, g0 in zip(params, grads, out, params_before, grads_before):
        # the kernel rounds once (multiply-add), the formula twice: equal to an ulp
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(o, g0 + WD * p0, rtol=2 * eps, atol=2 * eps)
        assert o.data_ptr() != g.data_ptr()
        assert torch.equal(p, p0) and torch.equal(g, g0)


@pytest.mark.parametrize(("options", "factor"), [
    (dict(lr=LR, decoupled=True), 1 - LR * WD),
    (dict(lr=LR, decoupled=True, fixed=True), 1 - WD),
    (dict(fixed=True), 1 - WD),  # fixed decay is decoupled by definition; lr is not needed
], ids=["decoupled", "fixed", "fixed-implies-decoupled"])
def test_decoupled_scales_params_in_place_and_returns_grads(options, factor):
    params, grads = _tensors()
    params_before, grads_before = [p.clone() for p in params], [g.clone() for g in grads]
    out = weight_decay_l2(params, grads, weight_decay=WD, **options)
    assert out is grads
    for p, g, p0, g0 in zip(params, grads, params_before, grads_before):
        assert torch.equal(p, p0 * factor)
        assert torch.equal(g, g0)


@pytest.mark.parametrize("options", [dict(), dict(lr=LR, decoupled=True), dict(fixed=True)],
                         ids=["coupled", "decoupled", "fixed"])
def test_zero_weight_decay_is_a_no_op(options):
    params, grads = _tensors()
    params_before = [p.clone() for p in params]
    assert weight_decay_l2(params, grads, weight_decay=0.0, **options) is grads
    assert all(torch.equal(p, p0) for p, p0 in zip(params, params_before))


# Kernels with a ``param_scale``: decoupled decay applied in the kernel's own pass.
def _states(name, params):
    zeros = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    return zeros + [[torch.tensor(1.0) for _ in params]] if name == "nadam" else zeros


SCALED_KERNELS = {name: getattr(optkernels, f"{name}_update") for name in ("adam", "radam", "nadam", "adabelief")}


def _decayed_steps(name, dtype, *, fused, compiled=False, steps=7):
    """``steps`` steps of AdamW-style decay (to step 7: RAdam and AdaBelief rectify from step 6),
    either through ``param_scale`` or as ``weight_decay_l2`` composed in front."""
    params, grads = _tensors(dtype)
    states = _states(name, params)
    for step in range(1, steps + 1):
        if fused:
            SCALED_KERNELS[name](params, grads, *states, step=step, lr=LR, compiled=compiled,
                                 param_scale=decoupled_scale(WD, LR))
        else:
            decayed = weight_decay_l2(params, grads, weight_decay=WD, lr=LR, decoupled=True)
            SCALED_KERNELS[name](params, decayed, *states, step=step, lr=LR)
    return params


def _assert_in_pass_equals_composed(run, name, dtype):
    """``run(name, dtype, fused=...)``: the kernel's own option against the same step composed in
    front; bitwise on the foreach path (the same ops, in the same order), to rounding compiled
    (one pass, rounded as inductor rounds)."""
    composed = run(name, dtype, fused=False)
    for ours, reference in zip(run(name, dtype, fused=True), composed):
        assert torch.equal(ours, reference)
    for ours, reference in zip(run(name, dtype, fused=True, compiled=True), composed):
        torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", SCALED_KERNELS)
def test_param_scale_is_decoupled_decay_in_the_kernels_pass(name, dtype):
    _assert_in_pass_equals_composed(_decayed_steps, name, dtype)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.9"])
@pytest.mark.parametrize("name", SCALED_KERNELS)
def test_bad_param_scale_is_named_and_changes_nothing(name, bad):
    params, grads = _tensors()
    before = [p.clone() for p in params]
    with pytest.raises((ValueError, TypeError), match="param_scale"):
        SCALED_KERNELS[name](params, grads, *_states(name, params), step=1, lr=LR, param_scale=bad)
    assert all(torch.equal(p, p0) for p, p0 in zip(params, before))


# Every elementwise kernel's ``maximize`` and coupled ``weight_decay``: torch.optim's preparation of
# the grads, in the kernel's own pass, against the same preparation composed in front.
def _zeros(count):
    return lambda params: [[torch.zeros_like(p) for p in params] for _ in range(count)]


def _filled(*values):
    return lambda params: [[torch.full_like(p, value) for p in params] for value in values]


def _scalars(*values):
    return lambda params: [[torch.tensor(value, dtype=p.dtype) for p in params] for value in values]


PREPARING = {  # kernel, its state lists, options; Rprop has no weight decay in torch, nor here
    "adam": (optkernels.adam_update, _zeros(3), {}),
    "radam": (optkernels.radam_update, _zeros(2), {}),
    "nadam": (optkernels.nadam_update, lambda ps: _zeros(2)(ps) + _scalars(1.0)(ps), {}),
    "adamax": (optkernels.adamax_update, _zeros(2), {}),
    "adabelief": (optkernels.adabelief_update, _zeros(2), {}),
    "sgd": (optkernels.sgd_update, lambda ps: [[None] * len(ps)], dict(momentum=0.9, nesterov=True)),
    "rmsprop": (optkernels.rmsprop_update, _zeros(3), dict(momentum=0.5)),
    "adagrad": (optkernels.adagrad_update, _zeros(1), {}),
    "adadelta": (optkernels.adadelta_update, _zeros(2), {}),
    "rprop": (optkernels.rprop_update, lambda ps: _zeros(1)(ps) + _filled(0.01)(ps), {}),
    "asgd": (optkernels.asgd_update, lambda ps: _zeros(1)(ps) + _scalars(1.0, LR)(ps), {}),
}
_NO_STEP = ("sgd", "rmsprop", "adadelta", "rprop")


def _prepared_steps(name, dtype, *, fused, compiled=False, steps=7):
    kernel, make_state, options = PREPARING[name]
    decay = {} if name == "rprop" else dict(weight_decay=WD)
    params, grads = _tensors(dtype)
    states = make_state(params)
    for step in range(1, steps + 1):
        counted = {} if name in _NO_STEP else dict(step=step)
        if name != "rprop":
            counted["lr"] = LR
        if fused:
            kernel(params, grads, *states, **counted, **options, **decay, maximize=True, compiled=compiled)
        else:
            prepared = weight_decay_l2(params, torch._foreach_neg(grads), weight_decay=decay.get("weight_decay", 0))
            kernel(params, prepared, *states, **counted, **options)
    return params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", PREPARING)
def test_maximize_and_weight_decay_are_torchs_grad_preparation_in_the_kernels_pass(name, dtype):
    _assert_in_pass_equals_composed(_prepared_steps, name, dtype)


BAD_PREPARATIONS = [(name, option, bad, error) for name in PREPARING
                    for option, bad, error in (("weight_decay", -0.1, ValueError), ("weight_decay", float("nan"), ValueError),
                                               ("maximize", 1, TypeError), ("maximize", None, TypeError))
                    if not (name == "rprop" and option == "weight_decay")]


@pytest.mark.parametrize(("name", "option", "bad", "error"), BAD_PREPARATIONS)
def test_bad_maximize_or_weight_decay_is_named_and_changes_nothing(name, option, bad, error):
    kernel, make_state, options = PREPARING[name]
    params, grads = _tensors()
    states = make_state(params)
    before = [p.clone() for p in params]
    counted = ({} if name in _NO_STEP else dict(step=1)) | ({} if name == "rprop" else dict(lr=LR))
    with pytest.raises(error, match=option):
        kernel(params, grads, *states, **counted, **options, **{option: bad})
    assert all(torch.equal(p, p0) for p, p0 in zip(params, before))
