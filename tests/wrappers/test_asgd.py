"""``wrappers.ASGD`` against ``torch.optim.ASGD``: its parity module (PARITY marks it dedicated), its
state and checkpoints, and its validation.

Parity: every optim_db CPU configuration and ours, in fp32, fp64, bf16 and complex64, over the
generic test's awkward layouts, two groups and skipped grads. Against torch's for-loop path (its
CPU default), whose ops we run in its order, everything is equal bit for bit, complex included.
Against its foreach path the numbers differ by more than op order: it computes the float32
``eta`` in float32 arithmetic from the step tensor (the for-loop path in double, then rounds), so
even float64 params agree only to float32 roundings of eta; hence the float32 tolerance there.
So does a float32 tensor lr on both torch paths; we read a tensor lr as its value (as every
wrapper here), so that case agrees with the for-loop path to the same tolerance. Under a float64
default dtype eta is float64 in every path, and float64 params agree with the foreach path to
float64 rounding.
"""

import copy
import math
import re

import pytest
import torch
from torch.optim import lr_scheduler
from torch.testing._internal.common_optimizers import optim_db

import wrappers
from tests.helpers import DTYPES, assert_same_state, make_grads, make_param_values, make_params
from tests.wrappers.test_parity import _run

# eta is a float32 number that the foreach path rounds differently: float32 rounding, whatever
# the params' dtype (observed: 2e-7 relative in fp64 params, a few fp32 ulps in fp32 ones)
FLOAT32_ETA_TOLERANCE = dict(rtol=1e-6, atol=1e-6)

# (kwargs, desc, equal to torch's for-loop path bit for bit)
TORCH_INPUTS = [(i.kwargs, i.desc, True) for info in optim_db if info.optim_cls is torch.optim.ASGD
                for i in info.optim_inputs_func(device="cpu")]
# t0 within the 10 steps, so that averaging (mu < 1) starts; lambd and lr large enough that
# eta falls visibly; tensor lrs (torch computes eta in float32 from a float32 one)
OUR_INPUTS = [
    (dict(lr=0.05, lambd=0.1, alpha=0.5, t0=3), "averaging", True),
    (dict(lr=0.02, lambd=0.5, alpha=1.0, t0=0, weight_decay=0.1, maximize=True), "t0 zero decay maximize", True),
    (dict(lr=torch.tensor(0.05), lambd=0.1, t0=2), "tensor lr averaging", False),
    (dict(lr=torch.tensor(0.05, dtype=torch.float64), lambd=0.1, t0=2, weight_decay=0.2), "float64 tensor lr decay",
     True),
]
INPUTS = [pytest.param(kwargs, exact, id=re.sub(r"[^A-Za-z0-9]+", "_", desc))
          for kwargs, desc, exact in TORCH_INPUTS + OUR_INPUTS]


def rounding_of_eta(dtype):
    """float32 roundings of eta; bf16 params: the helpers' bf16 tolerance, which is wider."""
    return None if dtype == torch.bfloat16 else FLOAT32_ETA_TOLERANCE


def torch_asgd(foreach):
    return lambda groups, **kwargs: torch.optim.ASGD(groups, foreach=foreach, **kwargs)


def test_torch_inputs_were_found():
    assert {desc for _, desc, _ in TORCH_INPUTS} >= {"default", "t0", "maximize", "nonzero weight_decay"}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("kwargs", "exact"), INPUTS)
def test_matches_torch(kwargs, exact, dtype):
    values = make_param_values(dtype)
    ours = _run(wrappers.ASGD, values, kwargs)
    assert_same_state(ours, _run(torch_asgd(False), values, kwargs), exact=exact, override=rounding_of_eta(dtype))
    if dtype != torch.bfloat16:  # torch's foreach path rounds scalars to bf16 (see tests/configs.py)
        assert_same_state(ours, _run(torch_asgd(True), values, kwargs), exact=False, override=FLOAT32_ETA_TOLERANCE)
    if kwargs.get("t0", 1e6) < 8:
        assert any(state["mu"].item() < 1 for state in ours.state.values()), "averaging never started"


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# (a float32 tensor lr stays float32: torch's paths then differ by float32 roundings again)
FLOAT64_DEFAULT_INPUTS = [param for param in INPUTS if param.id in ("default", "averaging", "t0_zero_decay_maximize",
                                                                    "float64_tensor_lr_decay")]


@pytest.mark.parametrize(("kwargs", "exact"), FLOAT64_DEFAULT_INPUTS)
def test_float64_default_dtype(float64_default, kwargs, exact):
    values = make_param_values(torch.float64)
    ours = _run(wrappers.ASGD, values, kwargs)
    for state in ours.state.values():
        assert {state[key].dtype for key in ("step", "eta", "mu")} == {torch.float64}
    assert_same_state(ours, _run(torch_asgd(False), values, kwargs), exact=exact)
    assert_same_state(ours, _run(torch_asgd(True), values, kwargs), exact=False)  # fp64 rounding


def _train(optimizer, params, values, calls, schedule=None):
    for call in calls:
        for index, (param, grad) in enumerate(zip(params, make_grads(values, call))):
            param.grad = None if index == 1 and call % 3 == 2 else grad
        optimizer.step()
        if schedule is not None:
            schedule.step()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lr_scheduler_as_torch(dtype):
    """eta is per-param state computed with the lr of that param's last step (params[1] skips
    steps), so a schedule must give torch's numbers exactly."""
    values = make_param_values(dtype)
    runs = []
    for cls in (wrappers.ASGD, torch_asgd(False)):
        params = make_params(values)
        optimizer = cls([{"params": params[:3]}, {"params": params[3:], "lr": 0.02}], lr=0.05, lambd=0.1, t0=4)
        _train(optimizer, params, values, range(10), lr_scheduler.ExponentialLR(optimizer, gamma=0.7))
        runs.append(optimizer)
    assert_same_state(*runs, exact=True)


# ------------------------------------------------------------------------------------------------
# State and checkpoints
# ------------------------------------------------------------------------------------------------

def test_state_as_torch():
    values = make_param_values(torch.float32)
    ours, theirs = _run(wrappers.ASGD, values, {}), _run(torch_asgd(False), values, {})
    for mine, their in zip(ours.state.values(), theirs.state.values(), strict=True):
        assert list(mine) == list(their) == ["step", "eta", "mu", "ax"]
        for key in ("step", "eta", "mu"):
            assert (mine[key].shape, mine[key].dtype, mine[key].device) == \
                (their[key].shape, their[key].dtype, their[key].device), key


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("saved_by", ["torch", "ours"])
def test_checkpoint_cross_loads(dtype, saved_by):
    """Four steps on one, its state_dict loaded into a torch and an our optimizer over copies of
    the params, four more steps on each: equal. (load_state_dict casts eta and mu to a floating
    param's dtype, in torch's Optimizer and so in ours: bf16 params then keep a bf16 eta.)"""
    values = make_param_values(dtype)
    kwargs = dict(lr=0.05, lambd=0.1, t0=2, weight_decay=0.1)

    def build(cls, params):
        return cls([{"params": params[:3]}, {"params": params[3:], "lr": 0.02}], **kwargs)

    saved_params = make_params(values)
    saver = build(torch_asgd(False) if saved_by == "torch" else wrappers.ASGD, saved_params)
    _train(saver, saved_params, values, range(4))
    checkpoint = copy.deepcopy(saver.state_dict())
    runs = []
    for cls in (wrappers.ASGD, torch_asgd(False)):
        params = [torch.nn.Parameter(p.detach().clone()) for p in saved_params]
        optimizer = build(cls, params)
        optimizer.load_state_dict(copy.deepcopy(checkpoint))
        _train(optimizer, params, values, range(4, 8))
        runs.append(optimizer)
    assert_same_state(*runs, exact=True)


def test_old_checkpoint_with_float_eta_and_mu():
    """torch's ASGD turns a float eta/mu of an old checkpoint into tensors; so do we."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = wrappers.ASGD([param], t0=0)
    param.grad = torch.ones(3)
    optimizer.step()
    checkpoint = optimizer.state_dict()
    for state in checkpoint["state"].values():
        state["eta"], state["mu"] = state["eta"].item(), state["mu"].item()
    restored = wrappers.ASGD([torch.nn.Parameter(param.detach().clone())], t0=0)
    restored.load_state_dict(checkpoint)
    (state,) = restored.state.values()
    assert torch.is_tensor(state["eta"]) and torch.is_tensor(state["mu"]) and state["eta"].dim() == 0
    restored.param_groups[0]["params"][0].grad = torch.ones(3)
    restored.step()


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
    ("lambd-negative", dict(lambd=-1e-4), "lambd"),
    ("lambd-nan", dict(lambd=NAN), "lambd"),
    ("lambd-inf", dict(lambd=INF), "lambd"),
    ("alpha-negative", dict(alpha=-0.5), "alpha"),
    ("alpha-nan", dict(alpha=NAN), "alpha"),
    ("t0-nan", dict(t0=NAN), "t0"),
    ("weight_decay-negative", dict(weight_decay=-0.1), "weight_decay"),
    ("weight_decay-nan", dict(weight_decay=NAN), "weight_decay"),
]


@pytest.mark.parametrize(("kwargs", "argument"), [pytest.param(k, a, id=i) for i, k, a in BAD])
def test_bad_hyperparameter(kwargs, argument):
    p1, p2 = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=named(argument)):
        wrappers.ASGD([p1], **kwargs)
    with pytest.raises(ValueError, match=named(argument)):
        wrappers.ASGD([{"params": [p1]}, {"params": [p2], **kwargs}])
    optimizer = wrappers.ASGD([p1])
    with pytest.raises(ValueError, match=named(argument)):
        optimizer.add_param_group({"params": [p2], **kwargs})
    assert len(optimizer.param_groups) == 1
