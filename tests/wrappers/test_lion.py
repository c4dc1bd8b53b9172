"""``wrappers.lion.Lion`` against lion-pytorch 0.2.5's ``Lion``, side by side on the same
gradients: bit for bit in fp32 and fp64 (same ops, same order), checkpoints both ways, every mode
equal to the list path (flat bit for bit, compiled to rounding), bad input."""

import copy

import pytest
import torch
from torch.testing import assert_close

from optkernels._validation import UnsupportedOptionError
from tests.helpers import laid_out, same_layout_copy
from tests.optkernels.test_adopt import light_compile  # noqa: F401  (a fixture)
from wrappers.lion import Lion

lion_pytorch = pytest.importorskip("lion_pytorch")

EXACT = dict(rtol=0, atol=0)
GROUPS = (dict(lr=1e-2, betas=(0.9, 0.99)), dict(lr=3e-3, betas=(0.8, 0.9)))
# (group, shape, layout, steps on which the grad is None)
PARAMS = [
    (0, (4, 5), "contiguous", ()),
    (0, (), "contiguous", ()),
    (0, (6, 3), "transposed", (3, 4, 9)),
    (1, (7,), "contiguous", ()),
    (1, (5,), "strided", (1, 2, 7)),  # no grad on the first two steps: its state starts at step 3
]
STEPS = 20
CASES = {
    "plain": dict(),
    "decay": dict(weight_decay=0.5),
    "decoupled": dict(weight_decay=0.05, decoupled_weight_decay=True),
}


def make_params(dtype):
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(laid_out(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype), layout))
            for _, shape, layout, _ in PARAMS]


def clones(params):
    return [torch.nn.Parameter(same_layout_copy(p.detach())) for p in params]


def groups(params):
    return [dict(params=[p for p, (g, *_) in zip(params, PARAMS) if g == index], **options)
            for index, options in enumerate(GROUPS)]


def set_grads(params, step, negate=False):
    generator = torch.Generator().manual_seed(1000 + step)
    for param, (_, _, _, none_steps) in zip(params, PARAMS):
        values = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
        grad = same_layout_copy(param.detach()).copy_(-values if negate else values)
        param.grad = None if step in none_steps else grad


def assert_same(ours, theirs, our_params, their_params, where, exact=True):
    for index, (mine, other) in enumerate(zip(our_params, their_params)):
        tolerance = EXACT if exact else dict(rtol=1e-6, atol=1e-7)
        assert_close(mine.detach(), other.detach(), **tolerance, msg=lambda m: f"{where}, param {index}: {m}")
        mine_state, other_state = ours.state.get(mine, {}), theirs.state.get(other, {})
        assert mine_state.keys() == other_state.keys(), f"{where}, param {index}: state keys"
        for name in mine_state:
            assert_close(mine_state[name], other_state[name], **tolerance, msg=lambda m: f"{where}, {name}: {m}")


def side_by_side(ours, theirs, our_params, their_params, steps, *, negate_theirs=False, lr_at=None, exact=True):
    for step in steps:
        set_grads(our_params, step)
        set_grads(their_params, step, negate=negate_theirs)
        if lr_at is not None:  # a schedule: decoupled decay divides by the initial lr, not this one
            for optimizer in (ours, theirs):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step) * GROUPS[optimizer.param_groups.index(group)]["lr"]
        ours.step()
        theirs.step()
        assert_same(ours, theirs, our_params, their_params, f"step {step}", exact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_lion_pytorch(case, dtype):
    our_params = make_params(dtype)
    their_params = clones(our_params)
    ours, theirs = Lion(groups(our_params), **CASES[case]), lion_pytorch.Lion(groups(their_params), **CASES[case])
    side_by_side(ours, theirs, our_params, their_params, range(1, STEPS + 1), lr_at=lambda step: 1 / step)
    assert [len(ours.state[p]) for p in our_params] == [1] * len(PARAMS)  # exp_avg only
    assert not torch.equal(our_params[0], make_params(dtype)[0])


def test_maximize_is_lion_pytorch_on_negated_grads():
    our_params = make_params(torch.float32)
    their_params = clones(our_params)
    ours = Lion(groups(our_params), weight_decay=0.5, maximize=True)
    theirs = lion_pytorch.Lion(groups(their_params), weight_decay=0.5)
    side_by_side(ours, theirs, our_params, their_params, range(1, 8), negate_theirs=True)


@pytest.mark.parametrize("direction", ["lion-pytorch-to-ours", "ours-to-lion-pytorch"])
def test_checkpoints_load_both_ways(direction):
    """5 steps in one, its state_dict loaded into the other, 5 more steps in both, side by side."""
    options = CASES["decoupled"]
    our_params = make_params(torch.float64)
    their_params = clones(our_params)
    first, second = Lion, lion_pytorch.Lion
    if direction == "ours-to-lion-pytorch":
        first, second = second, first
    stepped_params = clones(our_params)
    stepped = first(groups(stepped_params), **options)
    for step in range(1, 6):
        set_grads(stepped_params, step)
        stepped.step()
    for source, target in ((stepped_params, our_params), (stepped_params, their_params)):
        for s, t in zip(source, target):
            t.data.copy_(s.data)
    ours, theirs = Lion(groups(our_params), **options), lion_pytorch.Lion(groups(their_params), **options)
    ours.load_state_dict(copy.deepcopy(stepped.state_dict()))
    theirs.load_state_dict(copy.deepcopy(stepped.state_dict()))
    assert_same(ours, theirs, our_params, their_params, "loaded")
    side_by_side(ours, theirs, our_params, their_params, range(6, 11))


@pytest.mark.filterwarnings("ignore:Lion\\(flat=True\\). 1 param:RuntimeWarning")  # the strided view
@pytest.mark.parametrize("mode", ["flat", "flat-compiled"])
def test_modes_equal_the_list_path(mode, light_compile):  # noqa: F811
    """Params without grads on some steps: not stepped, no state, in every mode."""
    options = dict(weight_decay=0.5, maximize=True)
    flags = dict(flat=True, compiled=mode == "flat-compiled")
    our_params = make_params(torch.float32)
    list_params = clones(our_params)
    ours, listed = Lion(groups(our_params), **options, **flags), Lion(groups(list_params), **options)
    side_by_side(ours, listed, our_params, list_params, range(1, 6), exact=not flags["compiled"])
    assert (ours.flat, ours.compiled) == (True, flags["compiled"])


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("options, error, match", [
    (dict(use_triton=True), UnsupportedOptionError, "use_triton"),
    (dict(lr=-1e-3), ValueError, "learning rate"),
    (dict(betas=(0.9, 1.5)), ValueError, r"betas\[1\]"),
    (dict(betas=(0.9,)), ValueError, "betas must be a pair"),
    (dict(weight_decay=float("nan")), ValueError, "weight_decay"),
    (dict(lr=0.0, weight_decay=0.1, decoupled_weight_decay=True), ValueError, "initial lr"),
    (dict(maximize=None), TypeError, "maximize"),
], ids=["triton", "lr", "beta>1", "betas-pair", "decay-nan", "decoupled-lr0", "maximize-none"])
def test_bad_constructor_arguments(options, error, match):
    with pytest.raises(error, match=match):
        Lion([torch.nn.Parameter(torch.zeros(2))], **options)


def test_params_as_a_set_are_refused():
    with pytest.raises(TypeError, match="set"):
        Lion({torch.nn.Parameter(torch.zeros(2))})


@pytest.mark.parametrize("break_it", ["lr-of-second-group", "complex-param-in-second-group"])
def test_a_step_that_raises_changes_nothing(break_it):
    params = make_params(torch.float32)
    optimizer = Lion(groups(params), weight_decay=0.1)
    for step in (1, 2):
        set_grads(params, step)
        optimizer.step()
    if break_it == "lr-of-second-group":
        optimizer.param_groups[1]["lr"] = -1.0
        match, error = "learning rate", ValueError
    else:
        optimizer.add_param_group(dict(params=[torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]))
        optimizer.param_groups[-1]["params"][0].grad = torch.ones(2, dtype=torch.complex64)
        match, error = "complex", TypeError
    set_grads(params, 5)
    before = [p.detach().clone() for p in params]
    states = [{k: v.clone() for k, v in optimizer.state[p].items()} for p in params]
    with pytest.raises(error, match=match):
        optimizer.step()
    for param, value, state in zip(params, before, states):
        assert torch.equal(param, value)
        assert optimizer.state[param].keys() == state.keys()
        assert all(torch.equal(optimizer.state[param][k], v) for k, v in state.items())
