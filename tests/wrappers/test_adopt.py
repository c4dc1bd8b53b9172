"""``wrappers.adopt.ADOPT`` against the authors' rule (``authors_adopt``, op for op from
github.com/iShohei220/adopt) and against pytorch-optimizer 4.1.0's ``ADOPT`` where the two
agree; checkpoints; every mode equal to the list path; bad input.

pytorch-optimizer differs from the authors (and us) in three ways, each shown below: it clips at
step t with ``clip_lambda(t)`` where the authors call ``clip_lambda(t - 1)``; it applies decoupled
decay from the first step, as ``p * (1 - lr * wd)``; it counts steps per group, so a param that
had no grad still advances. Given ``clip_lambda=lambda t: (t - 1) ** 0.25`` (or None), no
decoupled decay and grads on every param, it equals us bit for bit.
"""

import copy
import io
import pickle

import pytest
import torch
from torch.testing import assert_close

from optkernels._validation import UnsupportedOptionError
from optkernels.adopt import default_clip_lambda
from tests.helpers import laid_out, same_layout_copy
from tests.optkernels.test_adopt import authors_adopt, light_compile, tight_clip  # noqa: F401
from wrappers.adopt import ADOPT

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

EXACT = dict(rtol=0, atol=0)
GROUPS = (dict(lr=1e-2, betas=(0.9, 0.9999)), dict(lr=3e-3, betas=(0.8, 0.9)))
PARAMS = [  # (group, shape, layout, steps on which the grad is None)
    (0, (4, 5), "contiguous", ()),
    (0, (), "contiguous", ()),
    (0, (6, 3), "transposed", (3, 4, 9)),
    (1, (7,), "contiguous", ()),
    (1, (5,), "strided", (1, 2, 7)),  # no grad on the first two steps: its state starts at step 3
]
STEPS = 20
CASES = {
    "defaults": dict(),
    "unclipped": dict(clip_lambda=None),
    "decoupled-tight-clip": dict(weight_decay=0.5, decouple=True, clip_lambda=tight_clip),
    "coupled-maximize": dict(weight_decay=0.5, maximize=True),
}


def shifted(step):
    """The authors' schedule as pytorch-optimizer calls it (with the count after the update)."""
    return (step - 1) ** 0.25


def make_params(dtype):
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(laid_out(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype), layout))
            for _, shape, layout, _ in PARAMS]


def clones(params):
    return [torch.nn.Parameter(same_layout_copy(p.detach())) for p in params]


def groups(params):
    return [dict(params=[p for p, (g, *_) in zip(params, PARAMS) if g == index], **options)
            for index, options in enumerate(GROUPS)]


def grads_at(step, params, skip=True):
    generator = torch.Generator().manual_seed(1000 + step)
    grads = []
    for param, (_, _, _, none_steps) in zip(params, PARAMS):
        values = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
        grads.append(None if skip and step in none_steps else same_layout_copy(param.detach()).copy_(values))
    return grads


def set_grads(params, grads):
    for param, grad in zip(params, grads):
        param.grad = None if grad is None else same_layout_copy(grad)  # each optimizer its own copy


def compare(pairs, where, exact=True):
    tolerance = EXACT if exact else dict(rtol=1e-6, atol=1e-7)
    for name, mine, theirs in pairs:
        assert_close(mine, theirs, **tolerance, msg=lambda m: f"{where}, {name}: {m}")


def state_pairs(ours, theirs, our_params, their_params, keys=("exp_avg", "exp_avg_sq")):
    for index, (mine, other) in enumerate(zip(our_params, their_params)):
        yield f"param {index}", mine.detach(), other.detach()
        for key in keys:
            if key in theirs.state.get(other, {}):
                yield f"param {index} {key}", ours.state[mine][key], theirs.state[other][key]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_authors_rule(case, dtype):
    options = CASES[case]
    params = make_params(dtype)
    ref_params, ref_states = [same_layout_copy(p.detach()) for p in params], [{} for _ in params]
    optimizer = ADOPT(groups(params), **options)
    rule = dict(clip_lambda=options.get("clip_lambda", default_clip_lambda),
                weight_decay=options.get("weight_decay", 0), decoupled=options.get("decouple", False),
                maximize=options.get("maximize", False))
    for step in range(1, STEPS + 1):
        grads = grads_at(step, params)
        set_grads(params, grads)
        optimizer.step()
        for ref_param, grad, state, (group, *_) in zip(ref_params, grads, ref_states, PARAMS):
            if grad is not None:
                if not state:
                    state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(ref_param),
                                 exp_avg_sq=torch.zeros_like(ref_param))
                authors_adopt(ref_param, grad, state, lr=GROUPS[group]["lr"], beta1=GROUPS[group]["betas"][0],
                              beta2=GROUPS[group]["betas"][1], **rule)
        pairs = []
        for index, (param, ref_param, state) in enumerate(zip(params, ref_params, ref_states)):
            assert optimizer.state.get(param, {}).keys() == state.keys(), f"step {step}, param {index}"
            pairs.append((f"param {index}", param.detach(), ref_param))
            pairs += [(f"param {index} {key}", optimizer.state[param][key], value) for key, value in state.items()]
        compare(pairs, f"step {step}")
    assert [optimizer.state[p]["step"].item() for p in params] == [20, 20, 17, 20, 17]
    assert optimizer.state[params[0]]["step"].dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("options", [dict(clip_lambda=None), dict(clip_lambda=shifted, weight_decay=0.5),
                                     dict(clip_lambda=shifted, maximize=True)],
                         ids=["unclipped", "clipped-coupled", "clipped-maximize"])
def test_matches_pytorch_optimizer_where_it_agrees_with_the_authors(options, dtype):
    our_params = make_params(dtype)
    their_params = clones(our_params)
    theirs = pytorch_optimizer.ADOPT(groups(their_params), **options)
    ours = ADOPT(groups(our_params), **dict(options, clip_lambda=None if options["clip_lambda"] is None
                                            else default_clip_lambda))
    for step in range(1, STEPS + 1):
        grads = grads_at(step, our_params, skip=False)
        set_grads(our_params, grads)
        set_grads(their_params, grads)  # copies: pytorch-optimizer negates and decays grads in place
        ours.step()
        theirs.step()
        compare(state_pairs(ours, theirs, our_params, their_params), f"step {step}")


@pytest.mark.parametrize("difference", ["clip-schedule", "decoupled-decay", "step-per-group"])
def test_documented_differences_from_pytorch_optimizer(difference):
    """Where pytorch-optimizer departs from the authors, we follow the authors (the equalities of
    ``test_matches_authors_rule``): here the two differ."""
    ours_options = {"clip-schedule": dict(), "decoupled-decay": dict(clip_lambda=None, weight_decay=0.5, decouple=True),
                    "step-per-group": dict(clip_lambda=None)}[difference]
    their_options = {**ours_options, "weight_decouple": ours_options.pop("decouple", False)} \
        if difference == "decoupled-decay" else dict(ours_options)
    our_params = make_params(torch.float64)
    their_params = clones(our_params)
    theirs = pytorch_optimizer.ADOPT(groups(their_params), **their_options)
    ours = ADOPT(groups(our_params), **ours_options)
    for step in range(1, 6):
        grads = grads_at(step, our_params, skip=difference == "step-per-group")
        set_grads(our_params, grads)
        set_grads(their_params, grads)
        ours.step()
        theirs.step()
    assert not all(torch.equal(mine, other) for mine, other in zip(our_params, their_params))


# --- checkpoints ------------------------------------------------------------------------------

def test_pytorch_optimizer_checkpoint_continues_as_pytorch_optimizer():
    """Its group-wide step becomes each param's; both then run on in step."""
    their_params = make_params(torch.float64)
    theirs = pytorch_optimizer.ADOPT(groups(their_params), clip_lambda=shifted, weight_decay=0.1)
    for step in range(1, 5):
        set_grads(their_params, grads_at(step, their_params, skip=False))
        theirs.step()
    our_params = clones(their_params)
    ours = ADOPT(groups(our_params), weight_decay=0.1)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert all(state["step"].item() == 4 for state in ours.state.values())
    assert all("step" not in group and group["decouple"] is False for group in ours.param_groups)
    for step in range(5, 12):
        grads = grads_at(step, our_params, skip=False)
        set_grads(our_params, grads)
        set_grads(their_params, grads)
        ours.step()
        theirs.step()
        compare(state_pairs(ours, theirs, our_params, their_params), f"step {step}")


def run_steps(optimizer, params, steps):
    for step in steps:
        set_grads(params, grads_at(step, params))
        optimizer.step()


def test_checkpoint_round_trip_keeps_the_numbers_and_the_clip_schedule():
    """torch.save and a default (weights_only) torch.load: the state_dict holds no function (the
    authors keep clip_lambda on the optimizer too); the new optimizer keeps its own schedule, as
    deepcopy and pickle keep it."""
    params = make_params(torch.float32)
    optimizer = ADOPT(groups(params), clip_lambda=tight_clip, weight_decay=0.1, decouple=True)
    run_steps(optimizer, params, range(1, 5))
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)  # weights_only: would refuse a function
    assert sorted(saved["state"][0]) == ["exp_avg", "exp_avg_sq", "step"]
    assert "clip_lambda" not in saved["param_groups"][0]

    resumed_params = clones(params)
    resumed = ADOPT(groups(resumed_params), clip_lambda=tight_clip, weight_decay=0.1, decouple=True)
    resumed.load_state_dict(saved)
    copied_params = clones(params)
    copied = copy.deepcopy(optimizer)  # its own params: moved to copies below
    for group, new_group in zip(copied.param_groups, groups(copied_params)):
        for old, new in zip(group["params"], new_group["params"]):
            copied.state[new] = copied.state.pop(old)
        group["params"] = new_group["params"]
    assert resumed.clip_lambda is tight_clip and copied.clip_lambda is tight_clip
    assert pickle.loads(pickle.dumps(optimizer)).clip_lambda is tight_clip
    for other, other_params in ((resumed, resumed_params), (copied, copied_params)):
        run_steps(other, other_params, range(5, 10))
    run_steps(optimizer, params, range(5, 10))
    for other, other_params in ((resumed, resumed_params), (copied, copied_params)):
        compare(state_pairs(other, optimizer, other_params, params), "after 9 steps")


# --- modes ----------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:ADOPT\\(flat=True\\). 1 param:RuntimeWarning")  # the strided view
@pytest.mark.parametrize("mode", ["flat", "flat-compiled"])
def test_modes_equal_the_list_path(mode, light_compile):  # noqa: F811
    """Params without grads on some steps (so their counts differ): not stepped, in every mode."""
    options = dict(weight_decay=0.2, maximize=True, clip_lambda=tight_clip)
    compiled = mode == "flat-compiled"
    our_params = make_params(torch.float32)
    list_params = clones(our_params)
    ours = ADOPT(groups(our_params), **options, flat=True, compiled=compiled)
    listed = ADOPT(groups(list_params), **options)
    for step in range(1, 6):
        grads = grads_at(step, our_params)
        set_grads(our_params, grads)
        set_grads(list_params, grads)
        ours.step()
        listed.step()
        compare(state_pairs(ours, listed, our_params, list_params, keys=("step", "exp_avg", "exp_avg_sq")),
                f"step {step}", exact=not compiled)


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("options, error, match", [
    (dict(lr=-1e-3), ValueError, "learning rate"),
    (dict(eps=float("nan")), ValueError, "epsilon"),
    (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(clip_lambda=0.25), TypeError, "clip_lambda"),
    (dict(decouple="yes"), TypeError, "decouple"),
    (dict(fused=True), UnsupportedOptionError, "fused"),
], ids=["lr", "eps-nan", "beta2=1", "decay", "clip-number", "decouple-str", "fused"])
def test_bad_constructor_arguments(options, error, match):
    with pytest.raises(error, match=match):
        ADOPT([torch.nn.Parameter(torch.zeros(2))], **options)


@pytest.mark.filterwarnings("ignore:ADOPT\\(flat=True\\). 1 param:RuntimeWarning")
@pytest.mark.parametrize("compiled", [False, True], ids=["lists", "flat-compiled"])
def test_a_step_that_raises_changes_nothing(compiled, light_compile):  # noqa: F811
    """clip_lambda fails for the step count of one param of the second group only (it started
    later): the first group is not stepped either, and no step count moves."""
    armed = []

    def clip(step):
        if armed and step == 1:
            raise ValueError("no clip at 1")
        return 1.0

    params = make_params(torch.float32)
    # the options of test_modes_equal_the_list_path: the same compiled graphs
    optimizer = ADOPT(groups(params), clip_lambda=clip, weight_decay=0.2, maximize=True, flat=compiled,
                      compiled=compiled)
    run_steps(optimizer, params, range(1, 4))  # counts now 3, 3, 2, 3, 1: param 4 (group 1) takes clip(1) next
    set_grads(params, grads_at(10, params))
    armed.append(True)
    before = [p.detach().clone() for p in params]
    states = [{k: v.clone() for k, v in optimizer.state[p].items()} for p in params]
    with pytest.raises(ValueError, match="no clip at 1"):
        optimizer.step()
    for param, value, state in zip(params, before, states):
        assert torch.equal(param, value)
        assert all(torch.equal(optimizer.state[param][k], v) for k, v in state.items())
