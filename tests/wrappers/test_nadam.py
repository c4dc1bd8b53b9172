"""NAdam and Adamax as drop-ins, beyond the generic parity run: signatures, state and checkpoints
in both directions, a float32 tensor lr, hyperparameters changed mid-run, schedulers, torch's
construction errors, and failed steps that change nothing.

NAdam follows torch's foreach op order (tests/configs.py ``PARITY``), so its runs are compared
with ``torch.optim.NAdam(foreach=True)``; Adamax's two torch paths agree, and both are used.
"""

import copy
import functools
import io
import math

import pytest
import torch
from torch.optim import lr_scheduler
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

import wrappers
from optkernels import UnsupportedOptionError
from optkernels.quantization import dequantize_blockwise, quantize_blockwise
from tests.helpers import LOW_PRECISION_WRAPPER_CASES, low_precision_stepped

EXACT = dict(rtol=0, atol=0)
NAMES = ["NAdam", "Adamax"]
# configurations that use every option each class has
KWARGS = {
    "NAdam": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01),
              dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)],
    "Adamax": [dict(lr=0.01), dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, maximize=True)],
}
CONFIGS = [pytest.param(name, kwargs, id=f"{name}-{i}") for name in NAMES for i, kwargs in enumerate(KWARGS[name])]
TORCH_MODES = {"NAdam": [True], "Adamax": [False, True]}  # foreach=...
STATE_KEYS = {"NAdam": {"step", "mu_product", "exp_avg", "exp_avg_sq"}, "Adamax": {"step", "exp_avg", "exp_inf"}}
SHAPES = [(4, 3), (3,), (), (2, 2, 2)]


def make_params(dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64).to(dtype)) for s in SHAPES]


def clone_params(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def set_grads(params, seed, skip=()):
    generator = torch.Generator().manual_seed(1000 + seed)
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype)
        p.grad = None if i in skip else grad


def train(opt, params, steps, start=0):
    for i in range(start, start + steps):
        set_grads(params, i, skip=(1,) if i % 3 == 2 else ())  # param 1's step count lags
        opt.step()


def assert_same(opt_a, params_a, opt_b, params_b, **tolerance):
    tolerance = tolerance or EXACT
    for i, (a, b) in enumerate(zip(params_a, params_b, strict=True)):
        torch.testing.assert_close(a.detach(), b.detach(), **tolerance, msg=lambda m: f"param {i}: {m}")
        state_a, state_b = opt_a.state.get(a, {}), opt_b.state.get(b, {})
        assert set(state_a) == set(state_b), f"param {i}"
        for key in state_a:
            assert state_a[key].dtype == state_b[key].dtype and state_a[key].shape == state_b[key].shape, key
            torch.testing.assert_close(state_a[key], state_b[key], **tolerance, msg=lambda m: f"param {i} {key}: {m}")


def through_disk(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ------------------------------------------------------------------------------------------------
# Signature and state
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_state_keys_dtypes_and_group_keys_are_torchs(name, kwargs, default_dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)  # torch keeps step (and mu_product) in this dtype
    try:
        params, twins = make_params(torch.float32), make_params(torch.float32)
        ours, theirs = getattr(wrappers, name)(params, **kwargs), getattr(torch.optim, name)(twins, **kwargs)
        train(ours, params, 2)
        train(theirs, twins, 2)
    finally:
        torch.set_default_dtype(previous)
    for p, q in zip(params, twins):
        assert set(ours.state[p]) == set(theirs.state[q]) == STATE_KEYS[name]
        for key, value in theirs.state[q].items():
            assert (ours.state[p][key].dtype, ours.state[p][key].shape) == (value.dtype, value.shape), key
    assert set(ours.param_groups[0]) == set(theirs.param_groups[0])


# ------------------------------------------------------------------------------------------------
# Checkpoints, both ways: after loading, both continue identically
# ------------------------------------------------------------------------------------------------

def load_into_both(name, kwargs, foreach, state_dict, params):
    """Fresh torch and wrapper optimizers over copies of ``params``, loaded from ``state_dict``."""
    loaded = []
    for cls in (getattr(torch.optim, name), getattr(wrappers, name)):
        twins = clone_params(params)
        opt = cls(twins, **kwargs, foreach=foreach)
        opt.load_state_dict(copy.deepcopy(state_dict))
        for group in opt.param_groups:  # loading brings the saved foreach along; keep the mode chosen
            group["foreach"] = foreach
        loaded.append((opt, twins))
    return loaded


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("saved_by", ["torch", "ours"])
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_checkpoint_loads_into_both_and_both_continue_alike(name, kwargs, saved_by, dtype):
    params = make_params(dtype)
    source = getattr(torch.optim if saved_by == "torch" else wrappers, name)(params, **kwargs)
    train(source, params, 4)
    state_dict = through_disk(source.state_dict())
    for foreach in TORCH_MODES[name]:
        # on load, torch casts every state tensor but step to the param's dtype (mu_product too)
        (theirs, their_params), (ours, our_params) = load_into_both(name, kwargs, foreach, state_dict, params)
        assert_same(theirs, their_params, ours, our_params)
        train(theirs, their_params, 5, start=4)
        train(ours, our_params, 5, start=4)
        assert_same(theirs, their_params, ours, our_params)


@pytest.mark.parametrize("name", NAMES)
def test_own_state_dict_round_trip_and_deepcopy(name):
    params = make_params()
    opt = getattr(wrappers, name)(params, **KWARGS[name][-1])
    train(opt, params, 3)
    twin_params = clone_params(params)
    twin = getattr(wrappers, name)(twin_params, **KWARGS[name][-1])
    twin.load_state_dict(through_disk(opt.state_dict()))
    copied_params, copied = copy.deepcopy((params, opt))  # together, so the state follows the params
    for other, other_params in [(opt, params), (twin, twin_params), (copied, copied_params)]:
        train(other, other_params, 3, start=3)
    assert_same(opt, params, twin, twin_params)
    assert_same(opt, params, copied, copied_params)


def test_nadam_checkpoint_with_python_number_state_loads_as_torchs():
    # an old torch checkpoint kept step and mu_product as Python numbers; both convert them
    params = make_params()
    source = torch.optim.NAdam(params, lr=0.01)
    train(source, params, 3)
    state_dict = source.state_dict()
    for entry in state_dict["state"].values():
        entry["step"], entry["mu_product"] = entry["step"].item(), entry["mu_product"].item()
    (theirs, their_params), (ours, our_params) = load_into_both("NAdam", dict(lr=0.01), True, state_dict, params)
    assert all(torch.is_tensor(v) and v.dtype == torch.float32 for s in ours.state.values() for v in s.values())
    assert_same(theirs, their_params, ours, our_params)
    train(theirs, their_params, 3, start=3)
    train(ours, our_params, 3, start=3)
    assert_same(theirs, their_params, ours, our_params)


# ------------------------------------------------------------------------------------------------
# Against torch: tensor lr, hyperparameters changed mid-run, schedulers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_float32_tensor_lr_equals_torch_foreach(name, kwargs, dtype):
    # torch's foreach path reads a tensor lr with .item(), as we do (its for-loop path computes
    # in float32 with it; the generic parity run compares that one to rounding)
    kwargs = {**kwargs, "lr": torch.tensor(kwargs["lr"])}
    params, twins = make_params(dtype), make_params(dtype)
    ours, theirs = getattr(wrappers, name)(params, **kwargs), getattr(torch.optim, name)(twins, **kwargs, foreach=True)
    train(ours, params, 6)
    train(theirs, twins, 6)
    tolerance = {}
    if kwargs.get("decoupled_weight_decay") and dtype == torch.float64:
        # torch computes the decay factor 1 - lr * wd with the float32 tensor lr, in float32; we
        # in double: one float32 rounding (< 6e-8 relative) per step on the fp64 params
        tolerance = dict(rtol=6 * 6e-8, atol=1e-12)
    assert_same(ours, params, theirs, twins, **tolerance)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_hyperparameters_changed_mid_run_as_torch(name, kwargs):
    for foreach in TORCH_MODES[name]:
        params, twins = make_params(), make_params()
        ours, theirs = getattr(wrappers, name)(params, **kwargs), getattr(torch.optim, name)(twins, **kwargs,
                                                                                          foreach=foreach)
        train(ours, params, 3)
        train(theirs, twins, 3)
        for opt in (ours, theirs):
            opt.param_groups[0].update(betas=(0.5, 0.9), eps=1e-4, lr=0.03)
            if name == "NAdam":
                opt.param_groups[0]["momentum_decay"] = 0.2  # mu_product keeps the old factors
        train(ours, params, 4, start=3)
        train(theirs, twins, 4, start=3)
        assert_same(ours, params, theirs, twins)


@pytest.mark.parametrize("make_scheduler", [
    lambda opt: lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10),  # cycles betas[0] too
], ids=["StepLR", "OneCycleLR"])
@pytest.mark.parametrize("name", NAMES)
def test_scheduler_drives_it_as_torch(name, make_scheduler):
    params, twins = make_params(), make_params()
    ours, theirs = getattr(wrappers, name)(params, lr=0.01), getattr(torch.optim, name)(twins, lr=0.01, foreach=True)
    schedulers = make_scheduler(ours), make_scheduler(theirs)
    for step in range(8):
        for opt, ps in ((ours, params), (theirs, twins)):
            set_grads(ps, step)
            opt.step()
        for scheduler in schedulers:
            scheduler.step()
    assert_same(ours, params, theirs, twins)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------

def _torch_error_inputs():
    cases = []
    for info in optim_db:
        if info.optim_cls.__name__ not in NAMES:
            continue
        for index, error in enumerate(info.optim_error_inputs_func(device="cpu", dtype=torch.float32)):
            if error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
                cases.append(pytest.param(info.optim_cls.__name__, error, id=f"{info.optim_cls.__name__}-{index}"))
    return cases


@pytest.mark.parametrize(("name", "error"), _torch_error_inputs())
def test_torch_construction_error_inputs(name, error):
    params = error.optimizer_error_input.params
    if params is None:  # torch's harness relies on hyperparameters being checked first
        params = [torch.nn.Parameter(torch.randn(2, 2))]
    for cls in (getattr(torch.optim, name), getattr(wrappers, name)):
        if issubclass(error.error_type, Warning):
            with pytest.warns(error.error_type, match=error.error_regex):
                cls(params, **error.optimizer_error_input.kwargs)
        else:
            with pytest.raises(error.error_type, match=error.error_regex):
                cls(params, **error.optimizer_error_input.kwargs)


@pytest.mark.parametrize(("name", "kwargs", "pattern"), [
    ("NAdam", dict(momentum_decay=math.nan), "momentum_decay"),
    ("NAdam", dict(momentum_decay=-1e-3), "momentum_decay"),
    ("NAdam", dict(lr=math.nan), "lr"),
    ("Adamax", dict(eps=-1.0), "eps"),
    ("Adamax", dict(betas=(0.9, math.nan)), r"betas\[1\]"),
    ("Adamax", dict(weight_decay=math.inf), "weight_decay"),
])
def test_bad_hyperparameters_name_the_argument(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        getattr(wrappers, name)(make_params(), **kwargs)
    with pytest.raises(ValueError, match=pattern):  # and as a param group's override
        p1, p2, *_ = make_params()
        getattr(wrappers, name)([{"params": [p1]}, {"params": [p2], **kwargs}])


@pytest.mark.parametrize("switch", ["capturable", "differentiable"])
@pytest.mark.parametrize("name", NAMES)
def test_torch_only_switches_are_unsupported_and_foreach_is_accepted(name, switch):
    with pytest.raises(UnsupportedOptionError, match=switch):
        getattr(wrappers, name)(make_params(), **{switch: True})
    for foreach in (True, False, None):
        params = make_params()
        opt = getattr(wrappers, name)(params, foreach=foreach)
        train(opt, params, 1)
        assert opt.param_groups[0]["foreach"] is foreach and len(opt.state) == len(params)


def _snapshot(opt):
    return {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}, \
        [p.detach().clone() for g in opt.param_groups for p in g["params"]]


BAD_STEPS = {
    "NAdam": [("momentum_decay", lambda opt: opt.param_groups[1].update(momentum_decay=-0.5), "momentum_decay"),
              ("mu_product", lambda opt: opt.state[opt.param_groups[1]["params"][0]].update(mu_product=torch.ones(2)),
               "mu_product")],
    "Adamax": [("betas", lambda opt: opt.param_groups[1].update(betas=(0.9, 1.0)), r"betas\[1\]"),
               ("exp_inf", lambda opt: opt.state[opt.param_groups[1]["params"][0]].update(exp_inf=torch.zeros(9)),
                "exp_inf")],
}


@pytest.mark.parametrize(("name", "case"), [pytest.param(n, c, id=f"{n}-{c[0]}") for n in NAMES for c in BAD_STEPS[n]])
def test_a_failing_step_changes_nothing_in_any_group(name, case):
    _, change, pattern = case
    params = make_params()
    opt = getattr(wrappers, name)([{"params": params[:2]}, {"params": params[2:3]}], lr=0.01)
    train(opt, params[:3], 2)
    opt.add_param_group({"params": params[3:]})  # no state yet
    change(opt)
    set_grads(params, 9)
    state_before, params_before = _snapshot(opt)
    with pytest.raises(ValueError, match=pattern):
        opt.step()
    state_after, params_after = _snapshot(opt)
    assert state_after.keys() == state_before.keys() and params[3] not in opt.state
    for key, entries in state_before.items():
        assert all(torch.equal(v, state_after[key][k]) for k, v in entries.items())
    assert all(torch.equal(a, b) for a, b in zip(params_after, params_before))


# --- low-precision state (NAdam's state_precision, stochastic_rounding) --------------------------
LOW_PRECISION_CASES = LOW_PRECISION_WRAPPER_CASES
low_precision_stepped = functools.partial(low_precision_stepped, cls=wrappers.NAdam)


def test_low_precision_state_keys_and_dtypes(one_thread):
    params, optimizer = low_precision_stepped(2, state_precision="8bit")
    big, small = (optimizer.state[p] for p in params)
    assert list(big) == ["step", "mu_product", "exp_avg", "exp_avg_sq", "exp_avg_scale", "exp_avg_sq_scale"]
    assert big["exp_avg"].dtype == torch.uint8 and big["exp_avg_scale"].shape == (20,)
    assert big["mu_product"].dtype == torch.float32 and big["mu_product"].dim() == 0
    assert small["exp_avg"].dtype == torch.float32 and small["exp_avg_scale"].numel() == 0
    params, optimizer = low_precision_stepped(2, state_precision="bf16")
    assert list(optimizer.state[params[0]]) == ["step", "mu_product", "exp_avg", "exp_avg_sq"]
    assert optimizer.state[params[0]]["exp_avg_sq"].dtype == torch.bfloat16


@pytest.mark.parametrize("decay", [{}, dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled_weight_decay=True)],
                         ids=["no-decay", "coupled", "decoupled"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_low_precision_follows_torch(compiled, decay, one_thread):
    """Against torch.optim.NAdam: in 8-bit the small param keeps float32 state (the low-precision
    rule alone), equal to rounding; the quantised one within a tenth of the distance it moves
    (8 lr); mu_product equal."""
    reference, torch_optimizer = low_precision_stepped(cls=torch.optim.NAdam, foreach=True, **decay)
    ours, optimizer = low_precision_stepped(state_precision="8bit", compiled=compiled, **decay)
    torch.testing.assert_close(ours[1], reference[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours[0], reference[0], rtol=0, atol=0.1 * 8 * 1e-2)
    for mine, theirs in zip(ours, reference):
        assert torch.equal(optimizer.state[mine]["mu_product"], torch_optimizer.state[theirs]["mu_product"])


def test_low_precision_checkpoints_cross_precisions_with_torch(one_thread):
    """torch.optim.NAdam's checkpoint loads into 8-bit (quantised) and the 8-bit one back into
    torch.optim.NAdam through an fp32 wrapper (dequantised); all step on."""
    params, reference = low_precision_stepped(3, cls=torch.optim.NAdam)
    low = wrappers.NAdam(clone_params(params), lr=1e-2, state_precision="8bit")
    low.load_state_dict(through_disk(reference.state_dict()))
    big = low.state[low.param_groups[0]["params"][0]]
    codes, scales = quantize_blockwise(reference.state[params[0]]["exp_avg"])
    assert torch.equal(big["exp_avg"], codes) and torch.equal(big["exp_avg_scale"], scales)
    assert torch.equal(big["mu_product"], reference.state[params[0]]["mu_product"])
    assert low.state[low.param_groups[0]["params"][1]]["exp_avg"].dtype == torch.float32
    back = wrappers.NAdam(clone_params(params), lr=1e-2)
    back.load_state_dict(through_disk(low.state_dict()))  # dequantised
    restored = back.state[back.param_groups[0]["params"][0]]
    assert list(restored) == ["step", "mu_product", "exp_avg", "exp_avg_sq"]
    assert torch.equal(restored["exp_avg"], dequantize_blockwise(codes, scales))
    again = torch.optim.NAdam(clone_params(params), lr=1e-2)
    again.load_state_dict(through_disk(back.state_dict()))  # torch's own class takes it
    for optimizer in (low, back, again):
        for param in optimizer.param_groups[0]["params"]:
            param.grad = torch.ones_like(param)
        optimizer.step()
        assert optimizer.state[optimizer.param_groups[0]["params"][0]]["step"] == 4


def test_low_precision_options_are_checked():
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(UnsupportedOptionError, match="flat"):
        wrappers.NAdam(params, state_precision="8bit", flat=True)
    with pytest.raises(ValueError, match="state_precision"):
        wrappers.NAdam(params, state_precision="fp8")
    _, optimizer = low_precision_stepped(1, state_precision="bf16", stochastic_rounding=True, seed=5)
    clone = copy.deepcopy(optimizer)
    assert (clone.state_precision, clone.stochastic_rounding, clone.seed) == ("bf16", True, 5)
