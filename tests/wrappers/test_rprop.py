"""``wrappers.Rprop`` beyond the generic parity test (which runs torch's configurations and ours
in tests/configs.py, bitwise against both torch paths): its state as torch keeps it, checkpoints
both ways, lr schedules (lr only seeds a param's step sizes), and validation.
"""

import copy
import math
import re

import pytest
import torch
from torch.optim import lr_scheduler

import wrappers
from optkernels import UnsupportedOptionError
from tests.helpers import DTYPES, assert_same_state, make_grads, make_param_values, make_params


def torch_rprop(foreach):
    return lambda groups, **kwargs: torch.optim.Rprop(groups, foreach=foreach, **kwargs)


def _build(cls, params, **kwargs):
    return cls([{"params": params[:3]}, {"params": params[3:], "lr": 0.02}], **kwargs)


def _train(optimizer, params, values, calls, schedule=None):
    for call in calls:
        for index, (param, grad) in enumerate(zip(params, make_grads(values, call))):
            # params[1] skips every third step; params[4] gets its first grad at step 3
            skipped = index == 1 and call % 3 == 2 or index == 4 and call < 3
            param.grad = None if skipped else grad
        optimizer.step()
        if schedule is not None:
            schedule.step()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
def test_lr_scheduler_as_torch(dtype, foreach):
    """lr fills a param's step sizes at its first step only (params[4] starts late, under a
    decayed lr); later changes do not touch them. As torch."""
    values = make_param_values(dtype)
    runs = []
    for cls in (wrappers.Rprop, torch_rprop(foreach)):
        params = make_params(values)
        optimizer = _build(cls, params, lr=0.05, etas=(0.4, 1.5))
        _train(optimizer, params, values, range(8), lr_scheduler.ExponentialLR(optimizer, gamma=0.5))
        runs.append(optimizer)
    assert_same_state(*runs, exact=True)


def test_state_as_torch():
    values = make_param_values(torch.complex64)
    runs = []
    for cls in (wrappers.Rprop, torch_rprop(False)):
        params = make_params(values)
        optimizer = _build(cls, params, lr=0.05)
        for param, grad in zip(params, make_grads(values, 0)):
            param.grad = grad
        optimizer.step()
        runs.append(optimizer)
    ours, theirs = runs
    for mine, their in zip(ours.state.values(), theirs.state.values(), strict=True):
        assert list(mine) == list(their) == ["step", "prev", "step_size"]
        assert (mine["step"].dtype, mine["step"].device, mine["step"].shape) == \
            (their["step"].dtype, their["step"].device, their["step"].shape)
        # a complex param's step sizes start at lr + lr*i: each real part steps on its own
        assert mine["step_size"].dtype == torch.complex64
    assert_same_state(ours, theirs, exact=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("saved_by", ["torch", "ours"])
def test_checkpoint_cross_loads(dtype, saved_by):
    """Four steps on one, its state_dict loaded into a torch and an our optimizer over copies of
    the params, four more steps on each: equal."""
    values = make_param_values(dtype)
    kwargs = dict(lr=0.03, etas=(0.3, 1.7), step_sizes=(1e-3, 0.1))
    saved_params = make_params(values)
    saver = _build(torch_rprop(False) if saved_by == "torch" else wrappers.Rprop, saved_params, **kwargs)
    _train(saver, saved_params, values, range(4))
    checkpoint = copy.deepcopy(saver.state_dict())
    runs = []
    for cls in (wrappers.Rprop, torch_rprop(False)):
        params = [torch.nn.Parameter(p.detach().clone()) for p in saved_params]
        optimizer = _build(cls, params, **kwargs)
        optimizer.load_state_dict(copy.deepcopy(checkpoint))
        _train(optimizer, params, values, range(4, 8))
        runs.append(optimizer)
    assert_same_state(*runs, exact=True)


# ------------------------------------------------------------------------------------------------
# Signature and validation
# ------------------------------------------------------------------------------------------------

def named(argument):
    return rf"(?<![\w]){re.escape(argument)}(?![\w])"


NAN, INF = math.nan, math.inf
BAD = [
    ("lr-negative", dict(lr=-0.1), "lr"),
    ("lr-nan", dict(lr=NAN), "lr"),
    ("lr-nan-tensor", dict(lr=torch.tensor(NAN)), "lr"),
    ("etaminus-zero", dict(etas=(0.0, 1.2)), "etaminus"),
    ("etaminus-nan", dict(etas=(NAN, 1.2)), "etaminus"),
    ("etaplus-one", dict(etas=(0.5, 1.0)), "etaplus"),
    ("etaplus-inf", dict(etas=(0.5, INF)), "etaplus"),
    ("etas-three", dict(etas=(0.5, 1.2, 2.0)), "etas"),
    ("etas-number", dict(etas=0.5), "etas"),
    ("step_size_min-negative", dict(step_sizes=(-1e-6, 50)), "step_size_min"),
    ("step_size_max-nan", dict(step_sizes=(1e-6, NAN)), "step_size_max"),
    ("step_sizes-reversed", dict(step_sizes=(50, 1e-6)), "step_sizes"),
    ("step_sizes-one", dict(step_sizes=(1e-6,)), "step_sizes"),
]


@pytest.mark.parametrize(("kwargs", "argument"), [pytest.param(k, a, id=i) for i, k, a in BAD])
def test_bad_hyperparameter(kwargs, argument):
    p1, p2 = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=named(argument)):
        wrappers.Rprop([p1], **kwargs)
    with pytest.raises(ValueError, match=named(argument)):
        wrappers.Rprop([{"params": [p1]}, {"params": [p2], **kwargs}])
    optimizer = wrappers.Rprop([p1])
    with pytest.raises(ValueError, match=named(argument)):
        optimizer.add_param_group({"params": [p2], **kwargs})
    assert len(optimizer.param_groups) == 1


def test_unbounded_step_sizes_are_valid():
    wrappers.Rprop([torch.nn.Parameter(torch.ones(2))], step_sizes=(0, INF))


@pytest.mark.parametrize("switch", ["capturable", "differentiable"])
def test_torch_only_switches_are_unsupported(switch):
    with pytest.raises(UnsupportedOptionError, match=named(switch)):
        wrappers.Rprop([torch.nn.Parameter(torch.ones(2))], **{switch: True})


@pytest.mark.parametrize("foreach", [None, False, True])
def test_foreach_is_accepted(foreach):
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = wrappers.Rprop([param], foreach=foreach)
    param.grad = torch.ones(2)
    optimizer.step()
    assert optimizer.param_groups[0]["foreach"] is foreach and not torch.equal(param, torch.ones(2))


def _state_key(key, value):
    def change(optimizer):
        param = optimizer.param_groups[1]["params"][0]
        optimizer.state[param][key] = value
    return change


def _group(**values):
    def change(optimizer):
        optimizer.param_groups[1].update(values)
    return change


def _sparse_grad(optimizer):
    param = optimizer.param_groups[1]["params"][0]
    param.grad = param.grad.to_sparse()


# (id, change to group 2, error, regex, needs state to exist)
STEP_ERRORS = [
    ("nan-etaplus", _group(etas=(0.5, NAN)), ValueError, named("etaplus"), False),
    ("reversed-step_sizes", _group(step_sizes=(1.0, 0.1)), ValueError, named("step_sizes"), False),
    ("nan-lr", _group(lr=NAN), ValueError, named("lr"), False),
    ("sparse-grad", _sparse_grad, RuntimeError, "sparse", False),
    ("step_size-of-wrong-shape", _state_key("step_size", torch.ones(2)), ValueError,
     re.escape("step_size[0]"), True),
    ("prev-of-wrong-dtype", _state_key("prev", torch.zeros(3, dtype=torch.float64)), TypeError,
     re.escape("prev[0]"), True),
]


@pytest.mark.parametrize(("change", "error", "pattern", "warm"),
                         [pytest.param(*case[1:4], warm, id=f"{case[0]}-{'warm' if warm else 'fresh'}")
                          for case in STEP_ERRORS for warm in (False, True) if warm or not case[4]])
def test_step_error_in_second_group_changes_nothing(change, error, pattern, warm):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, generator=gen)) for _ in range(4)]
    optimizer = wrappers.Rprop([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}])

    def set_grads():
        for param in params:
            param.grad = torch.randn(3, generator=gen)

    if warm:
        for _ in range(2):
            set_grads()
            optimizer.step()
    set_grads()
    change(optimizer)
    before_params = [p.detach().clone() for p in params]
    before_state = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    for _ in range(2):  # and it keeps failing the same way
        with pytest.raises(error, match=pattern):
            optimizer.step()
        assert all(torch.equal(p, b) for p, b in zip(params, before_params))
        assert set(optimizer.state) == set(before_state)
        for param, state in before_state.items():
            assert list(optimizer.state[param]) == list(state)
            assert all(torch.equal(optimizer.state[param][k], v) for k, v in state.items())
