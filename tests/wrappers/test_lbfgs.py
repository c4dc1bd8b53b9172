"""``wrappers.LBFGS`` against torch.optim.LBFGS: every optim_db configuration, on least squares
and the Rosenbrock function; checkpoints that cross-load both ways; torch's construction errors;
and the optimizer API (hooks, schedulers, copies) that the generic API tests leave to us.

Exactness (see tests/optkernels/test_lbfgs.py): with one param the iterates and the state equal
torch's bit for bit, in every dtype; with several params they agree to ``MULTI_TOLERANCES``, as
our dot products sum per-tensor dots where torch takes one flat dot.
"""

import copy
import io
import pickle
import re

import pytest
import torch
from torch.optim import lr_scheduler
from torch.testing._internal.common_optimizers import optim_db

import wrappers
from optkernels import UnsupportedOptionError
from tests.optkernels.test_lbfgs import (
    EXACT,
    MULTI_LAYOUTS,
    MULTI_RUNS,
    MULTI_SHAPES,
    MULTI_TOLERANCES,
    PROBLEMS,
    assert_same_lbfgs_state,
    make_closure,
    ours_and_torch_params,
    param_values,
)

STEPS = 4
LBFGS_INFO = next(info for info in optim_db if info.optim_cls is torch.optim.LBFGS)
TORCH_CONFIGS = {re.sub(r"\W+", "_", c.desc): c.kwargs for c in LBFGS_INFO.optim_inputs_func(device="cpu")}
SINGLE_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.complex64]


def run(cls, params, problem, steps=STEPS, unused=(), **kwargs):
    """``steps`` calls of ``step(closure)``; ``unused`` params come first (the state lives
    under params[0]) and never get a grad."""
    optimizer = cls(list(unused) + list(params), **kwargs)
    closure = make_closure(params, problem, unused)
    losses = [optimizer.step(closure) for _ in range(steps)]
    return optimizer, losses


def assert_same(ours_opt, our_losses, our_params, torch_opt, their_losses, their_params, tol):
    assert_close_all([l.detach() for l in our_losses], [l.detach() for l in their_losses], tol, "loss")
    assert_close_all([p.detach() for p in our_params], [p.detach() for p in their_params], tol, "param")
    ours_sd, theirs_sd = ours_opt.state_dict(), torch_opt.state_dict()
    assert ours_sd["param_groups"] == theirs_sd["param_groups"]
    assert ours_sd["state"].keys() == theirs_sd["state"].keys() == {0}
    assert_same_lbfgs_state(ours_sd["state"][0], theirs_sd["state"][0], tol)


def assert_close_all(mine, theirs, tol, what):
    assert len(mine) == len(theirs)
    for index, (a, b) in enumerate(zip(mine, theirs)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{what} {index}: {m}")


def single(dtype, problem_name="least_squares", layout="contiguous"):
    shape = (6, 3) if layout == "transposed" else (9,)
    values = param_values([shape], dtype)
    ours, theirs = ours_and_torch_params(values, [layout])
    return ours, theirs, PROBLEMS[problem_name](values[0].numel(), dtype)


def several(dtype, problem_name):
    values = param_values(MULTI_SHAPES, dtype)
    ours, theirs = ours_and_torch_params(values, MULTI_LAYOUTS)
    return ours, theirs, PROBLEMS[problem_name](sum(v.numel() for v in values), dtype)


# ------------------------------------------------------------------------------------------------
# The same iterates as torch.optim.LBFGS
# ------------------------------------------------------------------------------------------------

def test_torch_configs_were_found():
    assert set(TORCH_CONFIGS) == {"default", "non_default_lr", "Tensor_lr", "tolerance_grad", "strong_wolfe"}


# (dtype, problem): the Rosenbrock function is real
SINGLE_RUNS = [pytest.param(dtype, name, id=f"{dtype}-{name}") for dtype in SINGLE_DTYPES for name in PROBLEMS
               if not (dtype.is_complex and name == "rosenbrock")]


@pytest.mark.parametrize("config", list(TORCH_CONFIGS))
@pytest.mark.parametrize(("dtype", "problem_name"), SINGLE_RUNS)
def test_torch_configs_one_param_bitwise(dtype, problem_name, config):
    ours, theirs, problem = single(dtype, problem_name, layout="transposed")
    kwargs = TORCH_CONFIGS[config]
    result = run(wrappers.LBFGS, ours, problem, **kwargs)
    expected = run(torch.optim.LBFGS, theirs, problem, **kwargs)
    assert_same(*result, ours, *expected, theirs, EXACT)
    assert result[0].state_dict()["state"][0]["n_iter"] >= 5  # the comparison covers many iterations


@pytest.mark.parametrize("config", list(TORCH_CONFIGS))
@pytest.mark.parametrize(("dtype", "problem_name"), SINGLE_RUNS)
def test_torch_configs_a_param_without_grad(dtype, problem_name, config):
    """A param that never gets a grad, first in the group (where the state lives), changes
    nothing: it stays as it was, with no grad, and the other param's iterates are bit for bit
    torch's without it (its dot products add a zero). torch.optim.LBFGS with it is another
    rounding: its flat vectors hold the grad-less param's zeros, and BLAS may round a dot over
    that longer vector differently (on a Zen 4 CPU the losses moved by an ulp)."""
    ours, theirs, problem = single(dtype, problem_name, layout="transposed")
    unused = torch.nn.Parameter(torch.ones(2, dtype=dtype))
    kwargs = TORCH_CONFIGS[config]
    optimizer, losses = run(wrappers.LBFGS, ours, problem, unused=[unused], **kwargs)
    torch_optimizer, torch_losses = run(torch.optim.LBFGS, theirs, problem, **kwargs)
    assert_close_all(losses, torch_losses, EXACT, "loss")
    assert_close_all([p.detach() for p in ours], [p.detach() for p in theirs], EXACT, "param")
    state, torch_state = optimizer.state_dict()["state"][0], torch_optimizer.state_dict()["state"][0]
    assert (state["n_iter"], state["func_evals"]) == (torch_state["n_iter"], torch_state["func_evals"])
    assert state["n_iter"] >= 5
    assert torch.equal(unused, torch.ones(2, dtype=dtype)) and unused.grad is None


@pytest.mark.parametrize("problem_name", list(PROBLEMS))
@pytest.mark.parametrize("config", list(TORCH_CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_torch_configs_several_params(dtype, config, problem_name):
    ours, theirs, problem = several(dtype, problem_name)
    steps, max_iter = MULTI_RUNS[dtype]
    kwargs = dict(TORCH_CONFIGS[config], max_iter=max_iter)
    result = run(wrappers.LBFGS, ours, problem, steps=steps, **kwargs)
    expected = run(torch.optim.LBFGS, theirs, problem, steps=steps, **kwargs)
    assert_same(*result, ours, *expected, theirs, MULTI_TOLERANCES[dtype])


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"], ids=str)
def test_a_grad_that_is_none_on_some_evaluations(line_search_fn):
    """A param in the loss on every other evaluation only: its grad is None (zeros) between."""
    dtype = torch.float64
    ours, theirs, problem = several(dtype, "least_squares")

    def run_with(cls, params):
        optimizer = cls(params, line_search_fn=line_search_fn, max_iter=5)
        calls = []

        def closure():
            optimizer.zero_grad()
            calls.append(1)
            loss = problem(params) + (params[1].sum() ** 2 if len(calls) % 2 else 0)
            loss.backward()
            return loss
        losses = [optimizer.step(closure) for _ in range(3)]
        return optimizer, losses

    assert_same(*run_with(wrappers.LBFGS, ours), ours, *run_with(torch.optim.LBFGS, theirs), theirs,
                MULTI_TOLERANCES[dtype])


def test_stops_like_torch():
    """max_iter, max_eval and the tolerances end a step at the same evaluation as torch's."""
    dtype = torch.float64
    for kwargs in [dict(max_iter=3), dict(max_iter=50, max_eval=7), dict(tolerance_grad=1e3),
                   dict(tolerance_change=1e3), dict(max_iter=100, max_eval=200, line_search_fn="strong_wolfe")]:
        ours, theirs, problem = single(dtype)
        result = run(wrappers.LBFGS, ours, problem, steps=2, **kwargs)
        expected = run(torch.optim.LBFGS, theirs, problem, steps=2, **kwargs)
        assert_same(*result, ours, *expected, theirs, EXACT)


def test_history_size_truncation():
    ours, theirs, problem = single(torch.float64)
    result = run(wrappers.LBFGS, ours, problem, history_size=3, max_iter=4)
    expected = run(torch.optim.LBFGS, theirs, problem, history_size=3, max_iter=4)
    assert_same(*result, ours, *expected, theirs, EXACT)
    state = result[0].state[ours[0]]
    assert len(state["old_dirs"]) == len(state["old_stps"]) == len(state["ro"]) == 3 == len(state["al"])


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------

def saved_and_loaded(state_dict):
    """Through bytes, as a checkpoint goes; ``weights_only`` loading takes torch's format."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"], ids=str)
@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64], ids=str)
def test_checkpoint_cross_loads_one_param_bitwise(dtype, direction, line_search_fn):
    """Save after two steps from one, load into the other, run two more: the same iterates as
    the first running on. Bitwise, with one param."""
    ours, theirs, problem = single(dtype, layout="strided")
    kwargs = dict(line_search_fn=line_search_fn, max_iter=4, history_size=5)
    source_cls, target_cls = ((torch.optim.LBFGS, wrappers.LBFGS) if direction == "torch_to_ours"
                              else (wrappers.LBFGS, torch.optim.LBFGS))
    source, _ = run(source_cls, theirs, problem, steps=2, **kwargs)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    target = target_cls(resumed, **kwargs)
    target.load_state_dict(saved_and_loaded(source.state_dict()))
    closure_source, closure_target = make_closure(theirs, problem), make_closure(resumed, problem)
    losses_source = [source.step(closure_source) for _ in range(2)]
    losses_target = [target.step(closure_target) for _ in range(2)]
    ours_opt, torch_opt = (target, source) if direction == "torch_to_ours" else (source, target)
    ours_p, torch_p = (resumed, theirs) if direction == "torch_to_ours" else (theirs, resumed)
    ours_l, torch_l = (losses_target, losses_source) if direction == "torch_to_ours" else (losses_source, losses_target)
    assert_same(ours_opt, ours_l, ours_p, torch_opt, torch_l, torch_p, EXACT)
    assert ours_opt.state_dict()["state"][0]["n_iter"] > 10  # it ran on after loading


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_checkpoint_cross_loads_several_params(dtype, direction):
    ours, theirs, problem = several(dtype, "rosenbrock")
    kwargs = dict(line_search_fn="strong_wolfe", max_iter=2)
    steps = MULTI_RUNS[dtype][0]
    if direction == "torch_to_ours":
        source, _ = run(torch.optim.LBFGS, theirs, problem, steps=steps, **kwargs)
        target = wrappers.LBFGS(ours, **kwargs)
        with torch.no_grad():
            for mine, their in zip(ours, theirs):
                mine.copy_(their)
    else:
        source, _ = run(wrappers.LBFGS, ours, problem, steps=steps, **kwargs)
        target = torch.optim.LBFGS(theirs, **kwargs)
        with torch.no_grad():
            for mine, their in zip(ours, theirs):
                their.copy_(mine)
    target.load_state_dict(saved_and_loaded(source.state_dict()))
    ours_opt, torch_opt = (target, source) if direction == "torch_to_ours" else (source, target)
    our_losses = [ours_opt.step(make_closure(ours, problem)) for _ in range(steps)]
    their_losses = [torch_opt.step(make_closure(theirs, problem)) for _ in range(steps)]
    assert_same(ours_opt, our_losses, ours, torch_opt, their_losses, theirs, MULTI_TOLERANCES[dtype])


def test_state_dict_is_torchs_format_and_state_keeps_lists():
    ours, theirs, problem = several(torch.float64, "least_squares")
    optimizer, _ = run(wrappers.LBFGS, ours, problem, steps=2, max_iter=3)
    state = optimizer.state[ours[0]]
    assert list(optimizer.state) == [ours[0]]
    numel = sum(p.numel() for p in ours)
    for key in ("d", "prev_flat_grad"):
        assert [t.shape for t in state[key]] == [p.shape for p in ours]
    saved = optimizer.state_dict()["state"][0]
    for key in ("d", "prev_flat_grad"):
        assert saved[key].shape == (numel,) and saved[key].is_contiguous()
    assert all(v.shape == (numel,) for key in ("old_dirs", "old_stps") for v in saved[key])
    assert isinstance(state["d"], list)  # state_dict() copies; the state is left as it was
    # and back: loading our own checkpoint gives lists again, equal to the ones saved
    fresh = wrappers.LBFGS([torch.nn.Parameter(p.detach().clone()) for p in ours], max_iter=3)
    fresh.load_state_dict(saved_and_loaded(optimizer.state_dict()))
    loaded = fresh.state[fresh.param_groups[0]["params"][0]]
    assert [t.shape for t in loaded["d"]] == [p.shape for p in ours]
    assert all(isinstance(loaded[key], list) for key in ("d", "prev_flat_grad"))
    assert all(isinstance(v, list) for key in ("old_dirs", "old_stps") for v in loaded[key])
    assert_same_lbfgs_state(fresh.state_dict()["state"][0], saved, EXACT)


def test_resuming_from_our_checkpoint_equals_running_on_bitwise():
    """Several params: the same code on both sides, so equal bit for bit."""
    ours, _, problem = several(torch.float64, "rosenbrock")
    twin = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kwargs = dict(line_search_fn="strong_wolfe", max_iter=3)
    straight, _ = run(wrappers.LBFGS, ours, problem, steps=4, **kwargs)
    first, _ = run(wrappers.LBFGS, twin, problem, steps=2, **kwargs)
    second = wrappers.LBFGS(twin, **kwargs)
    second.load_state_dict(saved_and_loaded(first.state_dict()))
    for _ in range(2):
        second.step(make_closure(twin, problem))
    assert_close_all(list(twin), list(ours), EXACT, "param")
    assert_same_lbfgs_state(second.state_dict()["state"][0], straight.state_dict()["state"][0], EXACT)


def test_loading_a_checkpoint_for_other_params_raises():
    ours, theirs, problem = single(torch.float64)
    source, _ = run(torch.optim.LBFGS, theirs, problem, steps=1)
    other = wrappers.LBFGS([torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))])
    with pytest.raises(ValueError, match="elements"):
        other.load_state_dict(source.state_dict())


# ------------------------------------------------------------------------------------------------
# Construction and step-time errors
# ------------------------------------------------------------------------------------------------

def params1():
    return [torch.nn.Parameter(torch.ones(3))]


BAD = [
    (dict(lr=-0.1), ValueError, "learning rate"),  # torch's exception and message
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(max_iter=0), ValueError, "max_iter"),
    (dict(max_iter=None), TypeError, "max_iter"),
    (dict(max_eval=0), ValueError, "max_eval"),
    (dict(max_eval=2.5), ValueError, "max_eval"),
    (dict(tolerance_grad=-1.0), ValueError, "tolerance_grad"),
    (dict(tolerance_change=float("inf")), ValueError, "tolerance_change"),
    (dict(history_size=0), ValueError, "history_size"),
    (dict(line_search_fn="wolfe"), ValueError, "line_search_fn"),
]


@pytest.mark.parametrize(("kwargs", "error", "pattern"), BAD,
                         ids=[f"{i}-{next(iter(k))}" for i, (k, _, _) in enumerate(BAD)])
def test_bad_hyperparameters_at_construction(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        wrappers.LBFGS(params1(), **kwargs)


def test_one_param_group_only():
    p1, p2, p3 = params1() + params1() + params1()
    message = re.escape("LBFGS doesn't support per-parameter options (parameter groups)")
    with pytest.raises(ValueError, match=message):
        torch.optim.LBFGS([{"params": [p1]}, {"params": [p2]}])
    with pytest.raises(ValueError, match=message):
        wrappers.LBFGS([{"params": [p1]}, {"params": [p2]}])
    optimizer = wrappers.LBFGS([p1])
    with pytest.raises(ValueError, match=message):  # torch takes it, then fails at step
        optimizer.add_param_group({"params": [p3]})
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["params"] == [p1]
    wrappers.LBFGS([{"params": [p1], "lr": 0.5}])  # one group given as a dict is fine


@pytest.mark.parametrize("container", [set, frozenset])
def test_a_set_of_params_is_rejected(container):
    with pytest.raises(TypeError, match="set"):
        wrappers.LBFGS(container(params1()))


@pytest.mark.parametrize("switch", ["fused", "capturable", "differentiable", "foreach"])
def test_torch_switches_are_rejected(switch):
    # torch.optim.LBFGS has none of them in its signature: an unknown keyword, as there
    with pytest.raises(TypeError):
        torch.optim.LBFGS(params1(), **{switch: True})
    with pytest.raises(TypeError):
        wrappers.LBFGS(params1(), **{switch: True})
    if switch != "foreach":  # and in a group's options, where torch would ignore them silently
        with pytest.raises(UnsupportedOptionError, match=switch):
            wrappers.LBFGS([{"params": params1(), switch: True}])


def test_step_needs_a_closure():
    with pytest.raises(TypeError):
        torch.optim.LBFGS(params1()).step()
    with pytest.raises(TypeError):
        wrappers.LBFGS(params1()).step()


@pytest.mark.parametrize(("key", "value"), [("lr", -1.0), ("max_iter", 0), ("line_search_fn", "armijo")])
def test_a_step_that_raises_changes_nothing(key, value):
    ours, _, problem = single(torch.float64)
    optimizer, _ = run(wrappers.LBFGS, ours, problem, steps=1, max_iter=3)
    before_params = [p.detach().clone() for p in ours]
    before_state = copy.deepcopy(optimizer.state_dict()["state"][0])
    optimizer.param_groups[0][key] = value
    calls = []
    with pytest.raises((ValueError, TypeError), match=key):
        optimizer.step(lambda: calls.append(1))
    assert calls == []
    assert_same_lbfgs_state(optimizer.state_dict()["state"][0], before_state, EXACT)
    assert all(torch.equal(p, b) for p, b in zip(ours, before_params))
    # and on a fresh optimizer no state is created
    fresh = wrappers.LBFGS(ours)
    fresh.param_groups[0][key] = value
    with pytest.raises((ValueError, TypeError), match=key):
        fresh.step(lambda: calls.append(1))
    assert len(fresh.state) == 0


# ------------------------------------------------------------------------------------------------
# The optimizer API
# ------------------------------------------------------------------------------------------------

def test_step_runs_the_closure_with_grad_enabled_and_returns_its_first_loss():
    ours, _, problem = single(torch.float64)
    optimizer = wrappers.LBFGS(ours, max_iter=3)
    closure = make_closure(ours, problem)
    modes, losses = [], []

    def recording():
        modes.append(torch.is_grad_enabled())
        losses.append(closure())
        return losses[-1]

    with torch.no_grad():
        loss = optimizer.step(recording)
    assert loss is losses[0] and modes == [True] * 3


def test_step_hooks_and_an_lr_scheduler_drive_it_as_torch():
    ours, theirs, problem = single(torch.float64)
    results = []
    for cls, params in ((wrappers.LBFGS, ours), (torch.optim.LBFGS, theirs)):
        optimizer = cls(params, lr=0.5, max_iter=3)
        scheduler = lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        seen = []
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append("pre"))
        optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.append("post"))
        for _ in range(3):
            optimizer.step(make_closure(params, problem))
            scheduler.step()
        results.append((optimizer, seen))
    (mine, my_hooks), (torchs, torch_hooks) = results
    assert my_hooks == torch_hooks == ["pre", "post"] * 3
    assert_close_all(list(ours), list(theirs), EXACT, "param")
    assert mine.param_groups[0]["lr"] == torchs.param_groups[0]["lr"] == 0.0625


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_runs_on_as_the_original(how):
    ours, _, problem = single(torch.float64)
    model = torch.nn.ParameterList(ours)
    optimizer = wrappers.LBFGS(model.parameters(), max_iter=3, line_search_fn="strong_wolfe")
    optimizer.step(make_closure(list(model), problem))
    model_copy, optimizer_copy = (copy.deepcopy((model, optimizer)) if how == "deepcopy"
                                  else pickle.loads(pickle.dumps((model, optimizer))))
    for _ in range(2):
        optimizer.step(make_closure(list(model), problem))
        optimizer_copy.step(make_closure(list(model_copy), problem))
    assert_close_all(list(model_copy), list(model), EXACT, "param")
    assert_same_lbfgs_state(optimizer_copy.state_dict()["state"][0], optimizer.state_dict()["state"][0], EXACT)


def test_named_params_as_torch():
    ours, theirs, problem = single(torch.float64)
    mine = wrappers.LBFGS([("w", ours[0])], max_iter=3)
    torchs = torch.optim.LBFGS([("w", theirs[0])], max_iter=3)
    mine.step(make_closure(ours, problem))
    torchs.step(make_closure(theirs, problem))
    assert mine.state_dict()["param_groups"] == torchs.state_dict()["param_groups"]
    assert torch.equal(ours[0], theirs[0])


def test_a_model_trains():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(64, 3)
    y = x.sum(dim=1, keepdim=True).sin()
    optimizer = wrappers.LBFGS(model.parameters(), line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    first = optimizer.step(closure).item()
    for _ in range(5):
        last = optimizer.step(closure).item()
    assert last < first / 10


def test_the_problems_are_not_trivial():
    # a guard for the parity tests above: both problems have gradients far from zero at the start
    for name, problem_cls in PROBLEMS.items():
        params = [torch.nn.Parameter(v) for v in param_values([(9,)], torch.float64)]
        problem_cls(9, torch.float64)(params).backward()
        assert params[0].grad.abs().max() > 1, name
