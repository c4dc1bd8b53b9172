"""``wrappers.AdamWScheduleFree`` and ``wrappers.SGDScheduleFree`` against the official
``schedulefree`` 1.4.1 optimizers: the same params, state, group counters and checkpoints.

Against ``AdamWScheduleFree`` and ``SGDScheduleFree`` (both their foreach and for-loop paths) every
comparison is exact, in fp32 and fp64, and in bf16 against their for-loop path (EXACT_RUNS): the
kernels run their op order. Against the ``*Reference``
variants, which keep x and y and rebuild y as ``beta x + (1 - beta) z`` each step (the same numbers
in exact arithmetic: see ``optkernels.schedule_free``), to rounding (REFERENCE_VARIANT_TOLERANCE).

Modes: ``flat=True`` equals the list path bit for bit. The compiled rules are traced here by dynamo
with AOT autograd but not lowered by inductor (the ``traced_rules`` fixture): a cold inductor cache
costs tens of seconds for the first C++ build, beyond this file's budget; inductor's numbers for
every rule are checked by the generic mode tests (tests/wrappers/test_modes.py) and the benchmarks.
"""

import copy
import inspect
import math
import pickle
import warnings

import pytest
import schedulefree
import torch
from torch.testing import assert_close

from optkernels import _compiled, _math
from tests.helpers import laid_out, same_layout_copy
from wrappers.schedule_free import AdamWScheduleFree, SGDScheduleFree

STEPS = 20
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
# The reference's paths and dtypes we equal bit for bit: both paths in fp32 and fp64; in bf16 its
# for-loop path (its foreach path multiplies bf16 v by beta2 rounded to bf16 first, as
# torch._foreach_mul_ does on CPU: 0.9 becomes 0.8984; we decay as Tensor.mul_ does).
EXACT_RUNS = {f"{name}-ref-{path}": (dtype, path == "foreach") for name, dtype in DTYPES.items()
              for path in ("foreach", "forloop")} | {"bf16-ref-forloop": (torch.bfloat16, False)}
OURS = {"adamw": AdamWScheduleFree, "sgd": SGDScheduleFree}
REFERENCE = {"adamw": schedulefree.AdamWScheduleFree, "sgd": schedulefree.SGDScheduleFree}
REFERENCE_VARIANT = {"adamw": schedulefree.AdamWScheduleFreeReference, "sgd": schedulefree.SGDScheduleFreeReference}

# Params: (shape, layout, group). Group 1 has its own lr. Params 2 and 4 miss their grad on some steps.
PARAMS = [((4, 5), "contiguous", 0), ((7,), "contiguous", 0), ((), "contiguous", 0), ((6, 3), "transposed", 1),
          ((5,), "contiguous", 1)]
NO_GRAD = {2: {3, 4, 9}, 4: {1, 2, 3, 10}}  # param: steps it has no grad on (param 4 joins at step 4)
GROUP_LR_FACTOR = 0.5  # group 1's lr, relative to group 0's
LR_CHANGES = {8: 0.3, 14: 5.0}  # step: factor on every group's lr (a falling lr, then a new maximum)
SWITCH_AFTER = (6, 15)  # eval() (compared: params hold x), then train(), after these steps

CASES = {
    "adamw": {
        "defaults": dict(),
        "warmup": dict(lr=0.01, warmup_steps=6),
        "r-power": dict(lr=0.01, warmup_steps=3, r=1.5, weight_lr_power=1.0),
        "no-lr-weighting": dict(lr=0.01, warmup_steps=4, weight_lr_power=0.0),
        "weight-decay": dict(lr=0.01, weight_decay=0.1),
        "betas-eps": dict(lr=0.02, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.01, r=0.5),
    },
    "sgd": {
        "defaults": dict(),
        "warmup": dict(lr=0.1, warmup_steps=6),
        "r-power": dict(lr=0.1, warmup_steps=3, r=1.5, weight_lr_power=1.0),
        "no-lr-weighting": dict(lr=0.1, warmup_steps=4, weight_lr_power=0),
        "weight-decay": dict(lr=0.1, weight_decay=0.1),
        "momentum": dict(lr=0.05, momentum=0.5, weight_decay=0.01, r=0.5),
    },
}
ALL_CASES = [(algorithm, case) for algorithm, cases in CASES.items() for case in cases]
COUNTERS = ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode", "lr")


def make_params(dtype, layouts=PARAMS) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(laid_out(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype), layout))
            for shape, layout, _ in layouts]


def copied(params) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(same_layout_copy(p.detach())) for p in params]


def groups(params, layouts=PARAMS) -> list[dict]:
    by_group: list[dict] = [{"params": []}, {"params": []}]
    for param, (_, _, group) in zip(params, layouts):
        by_group[group]["params"].append(param)
    return by_group


def make_pair(algorithm, options, dtype, *, reference=REFERENCE, foreach=True, **modes):
    """Ours and the reference on copies of the same params, both in train mode; group 1's lr set."""
    ours_params = make_params(dtype)
    their_params = copied(ours_params)
    ours = OURS[algorithm](groups(ours_params), **options, **modes)
    theirs = reference[algorithm](groups(their_params), **options, foreach=foreach)
    for optimizer in (ours, theirs):
        group0 = optimizer.param_groups[0]
        optimizer.param_groups[1]["lr"] = group0["lr"] * GROUP_LR_FACTOR
        optimizer.train()
    return ours, theirs, ours_params, their_params


def grads_at(step: int, params) -> list[torch.Tensor | None]:
    generator = torch.Generator().manual_seed(1000 + step)
    grads = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype) for p in params]
    return [None if step in NO_GRAD.get(index, ()) else grad for index, grad in enumerate(grads)]


def set_grads(params, grads) -> None:
    for param, grad in zip(params, grads):
        param.grad = None if grad is None else same_layout_copy(grad)  # the reference changes its grads


def assert_same(ours, theirs, ours_params, their_params, where: str, *, exact=True, tolerance=None,
                state_names=None) -> None:
    """Params, per-param state (under the same keys) and group counters."""
    def check(a, b, what):
        if exact and torch.equal(a, b) and a.dtype == b.dtype:  # fast path; assert_close explains failures
            return
        assert_close(a, b, **(dict(rtol=0, atol=0) if exact else tolerance[a.dtype]),
                     msg=lambda m: f"{where}, {what}: {m}")
    for index, (mine, official) in enumerate(zip(ours_params, their_params, strict=True)):
        check(mine.detach(), official.detach(), f"param {index}")
        mine_state, their_state = ours.state.get(mine, {}), theirs.state.get(official, {})
        names = state_names if state_names is not None else their_state.keys()
        assert set(mine_state) == set(names) if their_state else not mine_state, f"{where}, param {index} state keys"
        for name in mine_state:
            check(mine_state[name], their_state[name], f"param {index} {name}")
    for index, (mine, official) in enumerate(zip(ours.param_groups, theirs.param_groups)):
        for name in COUNTERS:
            assert mine[name] == official[name], f"{where}, group {index} {name}: {mine[name]} != {official[name]}"


def run_side_by_side(ours, theirs, ours_params, their_params, *, steps=range(1, STEPS + 1), **compare) -> None:
    for step in steps:
        for optimizer in (ours, theirs):
            for group in optimizer.param_groups:
                group["lr"] *= LR_CHANGES.get(step, 1.0)
        grads = grads_at(step, ours_params)
        set_grads(ours_params, grads)
        set_grads(their_params, grads)
        before = [None if g is None else p.grad.clone() for p, g in zip(ours_params, grads)]
        ours.step()
        theirs.step()
        for param, grad in zip(ours_params, before):
            assert grad is None or torch.equal(param.grad, grad), f"step {step}: our step changed a grad"
        assert_same(ours, theirs, ours_params, their_params, f"step {step}", **compare)
        if step in SWITCH_AFTER:
            ours.eval()
            theirs.eval()
            assert_same(ours, theirs, ours_params, their_params, f"eval after step {step}", **compare)
            ours.train()
            theirs.train()
            assert_same(ours, theirs, ours_params, their_params, f"train after step {step}", **compare)


# --- against the reference, bit for bit ---------------------------------------------------------

@pytest.mark.parametrize("dtype,foreach", list(EXACT_RUNS.values()), ids=list(EXACT_RUNS))
@pytest.mark.parametrize("algorithm,case", ALL_CASES, ids=[f"{a}-{c}" for a, c in ALL_CASES])
def test_matches_reference(algorithm, case, dtype, foreach):
    """20 steps, two groups, params missing grads on some steps (one joins late), lr changes, two
    eval/train round trips, eval at the end: params, z, exp_avg_sq and the group counters equal the
    reference's bit for bit."""
    ours, theirs, ours_params, their_params = make_pair(algorithm, CASES[algorithm][case], dtype, foreach=foreach)
    run_side_by_side(ours, theirs, ours_params, their_params)
    ours.eval()
    theirs.eval()
    assert_same(ours, theirs, ours_params, their_params, "final eval")
    assert ours.param_groups[0]["k"] == STEPS


# y is rebuilt from x and z in the reference variants (beta x + (1 - beta) z) and updated in place
# here: the same in exact arithmetic, each step a few roundings apart on values of magnitude ~2.
# Measured over 20 steps: 7.1e-7 (fp32) and 1.0e-15 (fp64) apart at most, about 6 ulps of 1.
REFERENCE_VARIANT_TOLERANCE = {torch.float32: dict(rtol=4e-6, atol=4e-6), torch.float64: dict(rtol=8e-15, atol=8e-15)}


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("algorithm,case", [("adamw", "warmup"), ("adamw", "betas-eps"), ("sgd", "momentum")])
def test_matches_reference_variant(algorithm, case, dtype, capsys):
    """``AdamWScheduleFreeReference`` / ``SGDScheduleFreeReference`` (x and y kept as state; they
    print on train/eval): params (y, and x after eval) and z to rounding."""
    ours, theirs, ours_params, their_params = make_pair(algorithm, CASES[algorithm][case], dtype,
                                                        reference=REFERENCE_VARIANT)
    run_side_by_side(ours, theirs, ours_params, their_params, exact=False, tolerance=REFERENCE_VARIANT_TOLERANCE,
                     state_names=OURS[algorithm].state_names)


# --- modes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm,case", [("adamw", "betas-eps"), ("sgd", "momentum")])
def test_flat_mode_matches_reference(algorithm, case):
    """flat=True: the same bits as the reference (so as the list path), skipped params and all."""
    ours, theirs, ours_params, their_params = make_pair(algorithm, CASES[algorithm][case], torch.float32, flat=True)
    run_side_by_side(ours, theirs, ours_params, their_params)
    assert ours_params[0].untyped_storage().data_ptr() == ours_params[1].untyped_storage().data_ptr()


@pytest.mark.parametrize("algorithm,case", [("adamw", "betas-eps"), ("sgd", "momentum")])
def test_list_path_in_chunks_matches_reference(algorithm, case, monkeypatch):
    """A temporaries budget of 64 bytes: the wrapper and the kernel cut every param into slices,
    each a kernel call; the group's counters still advance once per step."""
    monkeypatch.setattr(_math, "TEMPORARY_BYTES", 64)
    ours, theirs, ours_params, their_params = make_pair(algorithm, CASES[algorithm][case], torch.float32)
    run_side_by_side(ours, theirs, ours_params, their_params, steps=range(1, 8))


@pytest.fixture
def traced_rules(monkeypatch):
    """The compiled path with torch.compile's backend set to ``aot_eager``: dynamo traces each rule
    whole (fullgraph, dynamic shapes, scalars packed in one tensor) as with inductor, which is left
    out for time (see the module's docstring). Runners are made afresh and dropped after."""
    compile_ = torch.compile

    def compile_traced(function, **options):
        options.pop("options", None)
        return compile_(function, **options, backend="aot_eager")
    monkeypatch.setattr(torch, "compile", compile_traced)
    monkeypatch.setattr(_compiled, "_EAGER", set())
    _compiled._runner.cache_clear()
    yield
    assert not _compiled._EAGER, "a rule failed to compile and ran eagerly"
    _compiled._runner.cache_clear()


# The rules compute sqrt(v / bc) as sqrt(v) * rsqrt(bc) and fuse (inductor: with FMAs): a rounding
# or two per step. Measured: 6e-8 apart (traced, 4 steps); with inductor, 1.2e-7 after 20 steps.
COMPILED_TOLERANCE = {torch.float32: dict(rtol=1e-6, atol=1e-6)}


@pytest.mark.parametrize("algorithm", ["adamw", "sgd"])
def test_flat_compiled_mode_matches_the_list_path(algorithm, traced_rules):
    """A few steps on small params (no size 0 or 1: one graph per rule and branch), weight decay in
    group 0 only (both branches), a param missing grads, an eval/train round trip. (compiled=True
    without flat runs the same rules per param.)"""
    modes = dict(flat=True, compiled=True)
    layouts = [((4, 5), "contiguous", 0), ((6, 3), "transposed", 0), ((5,), "contiguous", 1)]
    options = dict(lr=0.02, weight_decay=0.1, warmup_steps=2)
    params = make_params(torch.float32, layouts)
    listed = copied(params)
    optimizers = []
    for ps in (params, listed):
        by_group = groups(ps, layouts)
        by_group[1]["weight_decay"] = 0.0
        optimizers.append(OURS[algorithm](by_group, **options, **(modes if ps is params else {})))
    for optimizer in optimizers:
        optimizer.train()
    for step in range(1, 5):
        grads = grads_at(step, params)
        if step == 2:
            grads[0] = None
        set_grads(params, grads)
        set_grads(listed, grads)
        for optimizer in optimizers:
            optimizer.step()
        if step == 3:
            for optimizer in optimizers:
                optimizer.eval()
            assert_same(*optimizers, params, listed, "eval", exact=False, tolerance=COMPILED_TOLERANCE)
            for optimizer in optimizers:
                optimizer.train()
        assert_same(*optimizers, params, listed, f"step {step}", exact=False, tolerance=COMPILED_TOLERANCE)


# --- checkpoints ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flat", [False, True], ids=["list", "flat"])
@pytest.mark.parametrize("algorithm", ["adamw", "sgd"])
def test_reference_checkpoint_loads_into_ours_and_back(algorithm, flat):
    """The reference saves after 7 steps (in eval mode, as its docs ask); ours loads it and both run
    on to step 20 bit for bit; then the reference loads ours and both run on again."""
    options = CASES[algorithm]["weight-decay"] | dict(warmup_steps=4)
    ours, theirs, ours_params, their_params = make_pair(algorithm, options, torch.float64, flat=flat)
    for step in range(1, 8):
        for group in theirs.param_groups:
            group["lr"] *= LR_CHANGES.get(step, 1.0)
        set_grads(their_params, grads_at(step, their_params))
        theirs.step()
    theirs.eval()
    checkpoint = copy.deepcopy(theirs.state_dict())
    for mine, official in zip(ours_params, their_params):
        mine.data.copy_(official.detach())  # the model's own checkpoint
    ours.load_state_dict(checkpoint)
    assert ours.flat == flat and ours.param_groups[0]["train_mode"] is False
    with pytest.raises(RuntimeError, match="eval mode"):  # as saved
        ours.step()
    ours.train()
    theirs.train()
    assert_same(ours, theirs, ours_params, their_params, "loaded")
    run_side_by_side(ours, theirs, ours_params, their_params, steps=range(8, 14))

    saved = copy.deepcopy(ours.state_dict())
    assert [list(group) for group in saved["param_groups"]] == [list(group) for group in checkpoint["param_groups"]]
    fresh_params = copied(their_params)
    fresh = REFERENCE[algorithm](groups(fresh_params), **options)
    fresh.load_state_dict(saved)
    assert_same(ours, fresh, ours_params, fresh_params, "ours loaded into the reference")
    run_side_by_side(ours, fresh, ours_params, fresh_params, steps=range(14, STEPS + 1))


def test_state_keys_and_group_keys_are_the_references():
    for algorithm in OURS:
        ours, theirs, ours_params, their_params = make_pair(algorithm, {}, torch.float32)
        run_side_by_side(ours, theirs, ours_params, their_params, steps=range(1, 3))
        mine, official = ours.state_dict(), theirs.state_dict()
        assert [list(group) for group in mine["param_groups"]] == [list(group) for group in official["param_groups"]]
        # the reference's eval() and train() also leave empty entries for params without state
        assert {k: sorted(v) for k, v in mine["state"].items()} == {
            k: sorted(v) for k, v in official["state"].items() if v}
        assert "step" not in mine["state"][0]


@pytest.mark.parametrize("algorithm", ["adamw", "sgd"])
def test_modes_survive_deepcopy_and_pickling(algorithm):
    ours = OURS[algorithm](make_params(torch.float32), flat=True, compiled=False)
    ours.train()
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert clone.flat and not clone.compiled and clone.param_groups[0]["train_mode"]


# --- the API --------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["adamw", "sgd"])
def test_signature_is_the_references(algorithm):
    """Same names, order and defaults, then our keyword-only modes."""
    mine = inspect.signature(OURS[algorithm]).parameters
    theirs = inspect.signature(REFERENCE[algorithm]).parameters
    assert [(p.name, p.default) for p in theirs.values()] == [(p.name, p.default) for p in mine.values()][:len(theirs)]
    assert [(p.name, p.kind, p.default) for p in list(mine.values())[len(theirs):]] == [
        ("flat", inspect.Parameter.KEYWORD_ONLY, False), ("compiled", inspect.Parameter.KEYWORD_ONLY, False)]


@pytest.mark.parametrize("algorithm", ["adamw", "sgd"])
def test_step_in_eval_mode_raises_and_changes_nothing(algorithm):
    params = make_params(torch.float32)
    optimizer = OURS[algorithm](params)  # starts in eval mode, as the reference
    set_grads(params, grads_at(1, params))
    with pytest.raises(RuntimeError, match=r"eval mode \(param group\(s\) \[0\]\).*optimizer.train\(\)"):
        optimizer.step()
    assert not optimizer.state and optimizer.param_groups[0]["k"] == 0
    optimizer.train()
    optimizer.step()
    optimizer.eval()
    before = [same_layout_copy(p.detach()) for p in params]
    with pytest.raises(RuntimeError, match="eval mode"):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and optimizer.param_groups[0]["k"] == 1


@pytest.mark.parametrize("flat", [False, True], ids=["list", "flat"])
@pytest.mark.parametrize("bad", ["sparse grad", "nan lr"])
@pytest.mark.parametrize("algorithm", ["adamw", "sgd"])
def test_a_step_that_raises_changes_nothing(algorithm, bad, flat):
    """A bad grad or lr in group 1 is found before group 0 steps: no param, state or counter moves."""
    ours, theirs, ours_params, their_params = make_pair(algorithm, {}, torch.float32, flat=flat)
    run_side_by_side(ours, theirs, ours_params, their_params, steps=range(1, 3))
    snapshot = copy.deepcopy(ours.state_dict())
    values = [same_layout_copy(p.detach()) for p in ours_params]
    set_grads(ours_params, grads_at(3, ours_params))
    if bad == "sparse grad":
        ours_params[3].grad = ours_params[3].grad.to_sparse()
    else:
        ours.param_groups[1]["lr"] = math.nan
    with pytest.raises((RuntimeError, ValueError), match="sparse|learning rate"):
        ours.step()
    assert all(torch.equal(p, v) for p, v in zip(ours_params, values))
    after = ours.state_dict()
    for group in after["param_groups"] + snapshot["param_groups"]:
        group.pop("lr")
    assert after["param_groups"] == snapshot["param_groups"]
    for index, state in snapshot["state"].items():
        assert all(torch.equal(after["state"][index][name], value) for name, value in state.items())


@pytest.mark.parametrize("algorithm", ["adamw", "sgd"])
def test_params_without_grads_do_not_step_but_counters_advance_as_the_references(algorithm):
    """step() with no grads at all: no param moves and no state is made; ``k`` and the weight sum
    still advance, as the reference's do (its warm-up counts optimizer steps)."""
    ours, theirs, ours_params, their_params = make_pair(algorithm, dict(lr=0.1, warmup_steps=3), torch.float32)
    before = [same_layout_copy(p.detach()) for p in ours_params]
    ours.step()
    theirs.step()
    assert not ours.state and all(torch.equal(p, b) for p, b in zip(ours_params, before))
    assert_same(ours, theirs, ours_params, their_params, "no grads")
    assert ours.param_groups[0]["k"] == 1


BAD_OPTIONS = [  # (algorithm, options, what the message must say)
    ("adamw", dict(lr=-1.0), "Invalid learning rate"),
    ("adamw", dict(betas=(0.0, 0.999)), r"betas\[0\] must be in \(0, 1\)"),
    ("adamw", dict(betas=(0.9, 1.0)), "beta parameter at index 1"),
    ("adamw", dict(eps=-1e-8), "Invalid epsilon value"),
    ("adamw", dict(weight_decay=math.nan), "Invalid weight_decay value"),
    ("adamw", dict(warmup_steps=-1), "Invalid warmup_steps value"),
    ("adamw", dict(r=math.nan), "Invalid r value"),
    ("adamw", dict(weight_lr_power=-1.0), "Invalid weight_lr_power value"),
    ("sgd", dict(lr=-1.0), "Invalid learning rate"),
    ("sgd", dict(momentum=1.0), "Invalid momentum value"),
    ("sgd", dict(momentum=0.0), r"momentum must be in \(0, 1\)"),
    ("sgd", dict(weight_decay=-0.1), "Invalid weight_decay value"),
    ("sgd", dict(warmup_steps=1.5), "Invalid warmup_steps value"),
]


@pytest.mark.parametrize("algorithm,options,match", BAD_OPTIONS,
                         ids=[f"{a}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for a, o, _ in BAD_OPTIONS])
def test_bad_options_raise_naming_them(algorithm, options, match):
    with pytest.raises(ValueError, match=match):
        OURS[algorithm](make_params(torch.float32), **options)
    optimizer = OURS[algorithm](make_params(torch.float32))
    with pytest.raises(ValueError, match=match):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], **options})
    with pytest.raises(TypeError, match="set"):
        OURS[algorithm]({torch.nn.Parameter(torch.zeros(2))})


def test_a_group_added_in_train_mode_trains():
    """The reference starts an added group in eval mode whatever the others are in, so its eval()
    then leaves the new params at y; ours takes the first group's mode: eval() moves it to x."""
    params = make_params(torch.float32)
    optimizer = AdamWScheduleFree(params[:2], lr=0.01)
    optimizer.train()
    extra = torch.nn.Parameter(torch.randn(3))
    alone_param = torch.nn.Parameter(extra.detach().clone())
    optimizer.add_param_group({"params": [extra]})
    alone = AdamWScheduleFree([alone_param], lr=0.01)
    alone.train()
    assert optimizer.param_groups[1]["train_mode"] is True
    for step in range(1, 4):
        grad = torch.randn(3, generator=torch.Generator().manual_seed(step))
        extra.grad, alone_param.grad = grad.clone(), grad.clone()
        optimizer.step()
        alone.step()
    optimizer.eval()
    alone.eval()
    assert torch.equal(extra, alone_param)


def test_an_lr_scheduler_drives_both_alike():
    """torch.optim.lr_scheduler works on ours as on the reference: the same bits."""
    ours, theirs, ours_params, their_params = make_pair("adamw", dict(lr=0.01, warmup_steps=2), torch.float32)
    schedulers = [torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5) for optimizer in (ours, theirs)]
    for step in range(1, 7):
        grads = grads_at(step, ours_params)
        set_grads(ours_params, grads)
        set_grads(their_params, grads)
        for optimizer, scheduler in zip((ours, theirs), schedulers):
            optimizer.step()
            scheduler.step()
        assert_same(ours, theirs, ours_params, their_params, f"step {step}")


def test_lr_as_a_tensor_gives_the_floats_numbers():
    runs = []
    for lr in (0.01, torch.tensor(0.01, dtype=torch.float64)):
        params = make_params(torch.float64)
        optimizer = SGDScheduleFree(params, lr=lr)
        optimizer.train()
        for step in range(1, 4):
            set_grads(params, grads_at(step, params))
            optimizer.step()
        runs.append((params, optimizer.param_groups[0]["lr_max"]))
    (first, lr_max), (second, lr_max_tensor) = runs
    assert all(torch.equal(a, b) for a, b in zip(first, second)) and lr_max == lr_max_tensor == 0.01


def test_no_warning_on_an_ordinary_run():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours, theirs, ours_params, their_params = make_pair("adamw", {}, torch.float32, flat=True)
        run_side_by_side(ours, theirs, ours_params, their_params, steps=range(1, 3))
