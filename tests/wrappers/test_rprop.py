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
