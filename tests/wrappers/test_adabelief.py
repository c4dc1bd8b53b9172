"""``wrappers.AdaBelief`` against the per-tensor reference (``tests.reference``), against the
official ``adabelief-pytorch`` 0.2.1 where it is installed, and loading official checkpoints.

Setup: two param groups with different lr and betas (beta2=0.999, the default, where s_t hardly
ever decreases within 12 steps, and beta2=0.9, where it often does, so the AMSGrad maximum
matters); params of several layouts (0-d, transposed, strided, empty); two params whose grad is
None on some steps (one of them before its first step).

Unrectified runs must equal the reference bit for bit (same ops, same order); rectified runs
differ from it by a few ulps, because the reference computes the step size from RAdam's formula
for r_t and the optimizer from the official code's expression. Against the official package,
whose op order the kernel follows, every case must be bit for bit equal.
"""

import copy
import functools

import pytest
import torch
from torch.testing import assert_close

from optkernels import UnsupportedOptionError
from optkernels.quantization import dequantize_blockwise, quantize_blockwise
from tests.helpers import (LOW_PRECISION_TRACKING, LOW_PRECISION_WRAPPER_CASES, laid_out, low_precision_stepped,
                           same_layout_copy)
from tests.reference import ADABELIEF_DECAY_MODES, adabelief_reference
from wrappers import AdaBelief

TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.float32: dict(rtol=1e-6, atol=1e-7),
}
EXACT = dict(rtol=0, atol=0)

GROUP_LRS = (1e-2, 3e-3)
GROUP_BETAS = ((0.9, 0.999), (0.8, 0.9))  # both first rectified at step 6
# (group, shape, layout, steps on which the grad is None)
PARAMS = [
    (0, (4, 5), "contiguous", ()),
    (0, (), "contiguous", ()),
    (0, (6, 3), "transposed", (3, 4, 9)),
    (1, (7,), "contiguous", ()),
    (1, (5,), "strided", (1, 2, 7)),  # no grad on the first two steps: its state starts at step 3
    (1, (0,), "contiguous", ()),
]
STEPS = 12  # crosses the rectification threshold
EPS = 1e-4  # comparable to s_t, so where eps goes changes the numbers far beyond the tolerances
DECAY_MODES = ADABELIEF_DECAY_MODES

with_amsgrad = pytest.mark.parametrize("amsgrad", [False, True], ids=["adabelief", "amsgrad"])
with_rectify = pytest.mark.parametrize("rectify", [True, False], ids=["rectified", "unrectified"])
with_sgd = pytest.mark.parametrize("degenerated_to_sgd", [True, False], ids=["sgd-warmup", "no-sgd-warmup"])
with_decay = pytest.mark.parametrize("decay", list(DECAY_MODES))
with_maximize = pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
with_dtype = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])




def make_params(dtype) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(laid_out(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype), layout))
            for _, shape, layout, _ in PARAMS]


def grads_at(step: int, params) -> list[torch.Tensor | None]:
    """The gradients of one step (None where PARAMS says so), laid out as their params."""
    generator = torch.Generator().manual_seed(1000 + step)
    grads = []
    for param, (_, _, _, none_steps) in zip(params, PARAMS):
        values = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
        grads.append(None if step in none_steps else same_layout_copy(param.detach()).copy_(values))
    return grads


def param_groups(params, **group_options) -> list[dict]:
    return [{"params": [p for p, (group, *_) in zip(params, PARAMS) if group == index], "lr": lr, "betas": betas,
             **group_options}
            for index, (lr, betas) in enumerate(zip(GROUP_LRS, GROUP_BETAS))]


def options(amsgrad, rectify, degenerated_to_sgd, decay, maximize=False) -> dict:
    """Constructor options (lr and betas are set per group)."""
    return dict(eps=EPS, amsgrad=amsgrad, rectify=rectify, degenerated_to_sgd=degenerated_to_sgd,
                maximize=maximize, **DECAY_MODES[decay])


def state_names(amsgrad: bool) -> set[str]:
    return {"step", "exp_avg", "exp_avg_var"} | ({"max_exp_avg_var"} if amsgrad else set())


def snapshot(optimizer, param) -> dict:
    return {name: value.clone() for name, value in optimizer.state.get(param, {}).items()}


def assert_pairs_close(pairs, *, exact: bool, where: str) -> None:
    """``assert_close`` on each (name, mine, theirs), with a fast first pass (``torch.equal`` /
    ``torch.allclose``, the same test as ``assert_close`` makes) that keeps the grid quick."""
    def tolerance(dtype):
        return EXACT if exact else TOLERANCES[dtype]

    for name, mine, theirs in pairs:
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, f"{where}, {name}"
    if all(torch.equal(mine, theirs) or not exact and torch.allclose(mine, theirs, **tolerance(mine.dtype))
           for _, mine, theirs in pairs):
        return
    for name, mine, theirs in pairs:
        assert_close(mine, theirs, **tolerance(mine.dtype), msg=lambda m: f"{where}, {name}: {m}")
    raise AssertionError(f"{where}: torch.equal/allclose and assert_close disagree")


def assert_skipped_param_untouched(optimizer, params, grads, before_params, before_states, where: str) -> None:
    for index, (param, grad) in enumerate(zip(params, grads)):
        if grad is None:
            assert torch.equal(param, before_params[index]), f"{where}: param {index} without grad moved"
            after = snapshot(optimizer, param)
            assert after.keys() == before_states[index].keys(), f"{where}: param {index} without grad got state"
            for name, value in after.items():
                assert torch.equal(value, before_states[index][name]), f"{where}: param {index} {name} changed"


# --- against the reference ----------------------------------------------------------------------

@with_dtype
@with_maximize
@with_decay
@with_sgd
@with_rectify
@with_amsgrad
def test_matches_reference(amsgrad, rectify, degenerated_to_sgd, decay, maximize, dtype):
    opts = options(amsgrad, rectify, degenerated_to_sgd, decay, maximize)
    params = make_params(dtype)
    ref_params = [same_layout_copy(p.detach()) for p in params]
    ref_states = [{} for _ in params]
    lrs = [GROUP_LRS[group] for group, *_ in PARAMS]
    betas = [GROUP_BETAS[group] for group, *_ in PARAMS]
    max_was_active = False
    optimizer = AdaBelief(param_groups(params), **opts)
    for step in range(1, STEPS + 1):
        grads = grads_at(step, params)
        grads_before = [None if g is None else g.clone() for g in grads]
        before_params = [None if g is not None else same_layout_copy(p.detach()) for p, g in zip(params, grads)]
        before_states = [None if g is not None else snapshot(optimizer, p) for p, g in zip(params, grads)]
        for param, grad in zip(params, grads):
            param.grad = grad
        optimizer.step()
        for grad, before in zip(grads, grads_before):
            assert grad is None or torch.equal(grad, before), "the optimizer changed a grad"
        assert_skipped_param_untouched(optimizer, params, grads, before_params, before_states, f"step {step}")

        for ref_param, grad, state, lr, param_betas in zip(ref_params, grads, ref_states, lrs, betas):
            if grad is not None:
                adabelief_reference(ref_param, grad, state, lr=lr, betas=param_betas, **opts)
        pairs = []
        for index, (param, ref_param, ref_state) in enumerate(zip(params, ref_params, ref_states)):
            state = optimizer.state.get(param, {})
            assert state.keys() == ref_state.keys(), f"step {step}, param {index}: state keys {set(state)}"
            if state:
                assert state.keys() == state_names(amsgrad)
                assert torch.is_tensor(state["step"]) and state["step"].shape == ()
                assert state["step"].dtype == torch.float32 and state["step"].item() == ref_state["step"]
            pairs.append((f"param {index}", param.detach(), ref_param))
            pairs += [(f"param {index} {name}", state[name], ref_state[name]) for name in state if name != "step"]
        assert_pairs_close(pairs, exact=not rectify, where=f"step {step}")
        if amsgrad:
            max_was_active |= any(not torch.equal(state["max_exp_avg_var"], state["exp_avg_var"])
                                  for state in ref_states if state)
    assert max_was_active or not amsgrad, "the AMSGrad maximum never differed from s_t: the case tests nothing"
    # the params skipped on some steps have taken fewer steps than the others
    assert [optimizer.state[p]["step"].item() for p in params] == [12, 12, 9, 12, 9, 12]


@with_rectify
@with_amsgrad
def test_state_dict_keys(amsgrad, rectify):
    params = make_params(torch.float32)
    optimizer = AdaBelief(param_groups(params), amsgrad=amsgrad, rectify=rectify)
    for param, grad in zip(params, grads_at(1, params)):
        param.grad = grad
    optimizer.step()
    saved = optimizer.state_dict()
    assert set(saved["state"]) == {0, 1, 2, 3, 5}  # param 4 has had no grad yet
    for state in saved["state"].values():
        assert set(state) == state_names(amsgrad)


# --- official checkpoints -----------------------------------------------------------------------

def as_official_checkpoint(state_dict: dict) -> dict:
    """What adabelief-pytorch 0.2.1 saves: 'step' a Python int, groups with only its own keys
    (it keeps rectify, weight_decouple, ... on the optimizer, not in the groups) plus its cache."""
    official = copy.deepcopy(state_dict)
    for state in official["state"].values():
        state["step"] = int(state["step"].item())
    official["param_groups"] = [
        {**{key: group[key] for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "params")},
         "buffer": [[None, None, None] for _ in range(10)]}
        for group in official["param_groups"]
    ]
    return official


@with_decay
@with_rectify
@with_amsgrad
def test_official_format_checkpoint_continues_identically(amsgrad, rectify, decay):
    """Save after 4 steps in the official format, load into a new optimizer, run to step 12: the
    same bits as the run that never stopped (the rectification threshold is crossed after loading).
    The official groups lack our options (rectify, decoupled_weight_decay, ...): they come from the
    constructor's defaults."""
    opts = options(amsgrad, rectify, degenerated_to_sgd=True, decay=decay)
    params = make_params(torch.float64)
    optimizer = AdaBelief(param_groups(params), **opts)
    for step in range(1, 5):
        for param, grad in zip(params, grads_at(step, params)):
            param.grad = grad
        optimizer.step()
    checkpoint = as_official_checkpoint(optimizer.state_dict())
    assert all(type(state["step"]) is int for state in checkpoint["state"].values())

    resumed_params = [torch.nn.Parameter(same_layout_copy(p.detach())) for p in params]
    resumed = AdaBelief(param_groups(resumed_params, lr=1.0), **opts)  # lr comes from the checkpoint
    resumed.load_state_dict(checkpoint)
    for group in resumed.param_groups:
        for name in ("rectify", "degenerated_to_sgd", "decoupled_weight_decay", "fixed_decay", "maximize"):
            assert group[name] == opts[name]
    for state in resumed.state.values():
        assert torch.is_tensor(state["step"]) and state["step"].dtype == torch.float32

    for step in range(5, STEPS + 1):
        for ps in (params, resumed_params):
            for param, grad in zip(ps, grads_at(step, ps)):
                param.grad = grad
        optimizer.step()
        resumed.step()
        for index, (mine, theirs) in enumerate(zip(resumed_params, params)):
            assert torch.equal(mine, theirs), f"step {step}, param {index}"
            mine_state, their_state = resumed.state.get(mine, {}), optimizer.state.get(theirs, {})
            assert mine_state.keys() == their_state.keys()
            for name, value in their_state.items():
                assert torch.equal(mine_state[name], value), f"step {step}, param {index} {name}"


# --- against the official adabelief-pytorch 0.2.1 ----------------------------------------------

def official_optimizer(params, amsgrad, rectify, degenerated_to_sgd, decay):
    adabelief_pytorch = pytest.importorskip("adabelief_pytorch")
    decay_options = DECAY_MODES[decay]
    return adabelief_pytorch.AdaBelief(
        param_groups(params), eps=EPS, weight_decay=decay_options["weight_decay"], amsgrad=amsgrad,
        weight_decouple=decay_options["decoupled_weight_decay"], fixed_decay=decay_options["fixed_decay"],
        rectify=rectify, degenerated_to_sgd=degenerated_to_sgd, print_change_log=False)


def run_side_by_side(ours, theirs, our_params, their_params, *, maximize, steps, where=""):
    """Step both optimizers on the same gradients (negated for the official one, which has no
    ``maximize``; its own copies, since it adds coupled weight decay into them) and compare bits."""
    for step in steps:
        grads = grads_at(step, our_params)
        for param, grad in zip(our_params, grads):
            param.grad = grad
        for param, grad in zip(their_params, grads):
            param.grad = None if grad is None else same_layout_copy(-grad if maximize else grad)
        ours.step()
        theirs.step()
        pairs = []
        for index, (mine, official) in enumerate(zip(our_params, their_params)):
            mine_state, official_state = ours.state.get(mine, {}), theirs.state.get(official, {})
            assert mine_state.keys() == official_state.keys(), f"{where}step {step}, param {index}"
            if mine_state:
                assert mine_state["step"].item() == official_state["step"]
            pairs.append((f"param {index}", mine.detach(), official.detach()))
            pairs += [(f"param {index} {name}", mine_state[name], official_state[name])
                      for name in mine_state if name != "step"]
        assert_pairs_close(pairs, exact=True, where=f"{where}step {step}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"])
@with_maximize
@with_decay
@with_sgd
@with_rectify
@with_amsgrad
def test_matches_official_package(amsgrad, rectify, degenerated_to_sgd, decay, maximize, dtype):
    our_params = make_params(dtype)
    their_params = [torch.nn.Parameter(same_layout_copy(p.detach())) for p in our_params]
    theirs = official_optimizer(their_params, amsgrad, rectify, degenerated_to_sgd, decay)
    ours = AdaBelief(param_groups(our_params), **options(amsgrad, rectify, degenerated_to_sgd, decay, maximize))
    run_side_by_side(ours, theirs, our_params, their_params, maximize=maximize, steps=range(1, STEPS + 1))


@with_decay
@with_rectify
@with_amsgrad
def test_official_checkpoint_continues_as_official(amsgrad, rectify, decay):
    """A real official state_dict after 4 steps loads into ours; both then run to step 12 in step."""
    their_params = make_params(torch.float64)
    theirs = official_optimizer(their_params, amsgrad, rectify, True, decay)
    for step in range(1, 5):
        for param, grad in zip(their_params, grads_at(step, their_params)):
            param.grad = grad
        theirs.step()
    checkpoint = copy.deepcopy(theirs.state_dict())
    assert all(type(state["step"]) is int for state in checkpoint["state"].values())

    our_params = [torch.nn.Parameter(same_layout_copy(p.detach())) for p in their_params]
    ours = AdaBelief(param_groups(our_params), **options(amsgrad, rectify, True, decay))
    ours.load_state_dict(checkpoint)
    run_side_by_side(ours, theirs, our_params, their_params, maximize=False, steps=range(5, STEPS + 1))


# --- low-precision state (state_precision, stochastic_rounding) ---------------------------------
LOW_PRECISION_CASES = LOW_PRECISION_WRAPPER_CASES
# rectified by default: 5 SGD-like steps, then adaptive
low_precision_stepped = functools.partial(low_precision_stepped, cls=AdaBelief)


def test_low_precision_state_keys_and_dtypes(one_thread):
    params, optimizer = low_precision_stepped(2, state_precision="8bit")
    big, small = (optimizer.state[p] for p in params)
    assert list(big) == ["step", "exp_avg", "exp_avg_var", "exp_avg_scale", "exp_avg_var_scale"]
    assert big["exp_avg_var"].dtype == torch.uint8 and big["exp_avg_var_scale"].shape == (20,)
    assert small["exp_avg_var"].dtype == torch.float32 and small["exp_avg_var_scale"].numel() == 0
    params, optimizer = low_precision_stepped(2, state_precision="bf16")
    assert list(optimizer.state[params[0]]) == ["step", "exp_avg", "exp_avg_var"]
    assert optimizer.state[params[0]]["exp_avg_var"].dtype == torch.bfloat16


@pytest.mark.parametrize("schedule", [{}, dict(degenerated_to_sgd=False), dict(rectify=False)],
                         ids=["rectified", "no-sgd-warmup", "unrectified"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_low_precision_float_state_follows_the_fp32_optimizer(compiled, schedule, one_thread):
    """In 8-bit, the small param keeps float32 state: the low-precision rule alone, equal to the
    fp32 optimizer's step to rounding at every step (the SGD-like ones, none without
    degenerated_to_sgd, the adaptive ones; decoupled decay); the quantised param within
    ``LOW_PRECISION_TRACKING`` of the distance it moves (8 lr)."""
    for steps in range(1, 9):
        reference, _ = low_precision_stepped(steps, weight_decay=0.1, **schedule)
        ours, _ = low_precision_stepped(steps, weight_decay=0.1, state_precision="8bit", compiled=compiled, **schedule)
        assert_close(ours[1], reference[1], rtol=1e-6, atol=1e-6, msg=f"step {steps}")
    assert_close(ours[0], reference[0], rtol=0, atol=LOW_PRECISION_TRACKING["8bit"] * 8 * 1e-2)
    if schedule.get("degenerated_to_sgd") is False:  # no update for 5 steps beyond the decay
        start, _ = low_precision_stepped(0)
        moved, _ = low_precision_stepped(5, state_precision="8bit", compiled=compiled, **schedule)
        assert all(torch.equal(p, s) for p, s in zip(moved, start))


def test_low_precision_checkpoints_cross_precisions(one_thread):
    """Our fp32 AdaBelief's checkpoint loads into 8-bit (quantised, s_t square-root compressed) and
    the 8-bit one back into fp32 (dequantised); both step on."""
    params, fp32 = low_precision_stepped(3)
    low = AdaBelief([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-2, state_precision="8bit")
    low.load_state_dict(copy.deepcopy(fp32.state_dict()))
    big = low.state[low.param_groups[0]["params"][0]]
    codes, scales = quantize_blockwise(fp32.state[params[0]]["exp_avg_var"], signed=False)
    assert torch.equal(big["exp_avg_var"], codes) and torch.equal(big["exp_avg_var_scale"], scales)
    assert low.state[low.param_groups[0]["params"][1]]["exp_avg_var"].dtype == torch.float32
    back = AdaBelief([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-2)
    back.load_state_dict(copy.deepcopy(low.state_dict()))
    restored = back.state[back.param_groups[0]["params"][0]]
    assert list(restored) == ["step", "exp_avg", "exp_avg_var"] and restored["exp_avg_var"].dtype == torch.float32
    assert torch.equal(restored["exp_avg_var"], dequantize_blockwise(codes, scales, signed=False))
    for optimizer in (low, back):
        for param in optimizer.param_groups[0]["params"]:
            param.grad = torch.ones_like(param)
        optimizer.step()
        assert optimizer.state[optimizer.param_groups[0]["params"][0]]["step"] == 4


def test_low_precision_options_are_checked():
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(UnsupportedOptionError, match="amsgrad"):
        AdaBelief(params, amsgrad=True, state_precision="bf16")
    with pytest.raises(UnsupportedOptionError, match="flat"):
        AdaBelief(params, state_precision="8bit", flat=True)
    with pytest.raises(ValueError, match="state_precision"):
        AdaBelief(params, state_precision="fp8")
    _, optimizer = low_precision_stepped(1, state_precision="bf16", stochastic_rounding=True, seed=5)
    clone = copy.deepcopy(optimizer)
    assert (clone.state_precision, clone.stochastic_rounding, clone.seed) == ("bf16", True, 5)
