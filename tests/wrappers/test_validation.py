"""Validation in the drop-in wrappers: at construction, in per-group overrides, and at step time.

A step that raises must change nothing: no param, no state tensor, no ``step`` count, and no
lazily created state, in any param group.
"""

import functools
import inspect
import math
import re
import warnings

import pytest
import torch
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

import wrappers
from optkernels import UnsupportedOptionError
from tests.configs import API_KWARGS, BETAS_UP_TO_1, GENERIC_WRAPPERS, OURS, STILL_FIRST_STEP, untouched_state

NAN, INF = math.nan, math.inf

WRAPPERS = {name: getattr(wrappers, name) for name in GENERIC_WRAPPERS}
VALID = API_KWARGS  # a valid configuration of each, one that keeps state


def takes(name: str, argument: str) -> bool:
    if argument == "dense-only":  # not an argument: the wrapper rejects sparse grads
        return not WRAPPERS[name].takes_sparse_grads
    if argument == "scalar-state":  # not an argument: the wrapper keeps 0-d state per param
        return bool(_scalar_state_keys(name))
    return argument in inspect.signature(WRAPPERS[name]).parameters


@functools.cache
def _scalar_state_keys(name: str) -> tuple[str, ...]:
    """The 0-d per-param state tensors of a wrapper (NAdam's mu_product, ASGD's eta and mu)."""
    (param,) = make_params(1)
    optimizer = WRAPPERS[name]([param], **VALID[name])
    param.grad = torch.ones_like(param)
    optimizer.step()
    return tuple(key for key, value in optimizer.state[param].items()
                 if key != "step" and torch.is_tensor(value) and value.dim() == 0)


def make_params(n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, generator=gen)) for _ in range(n)]


def named(argument: str) -> str:
    return rf"(?<![\w]){re.escape(argument)}(?![\w])"


# ------------------------------------------------------------------------------------------------
# Construction
# ------------------------------------------------------------------------------------------------

# (argument, description, kwargs, regex the message must match)
BAD_HPARAMS = [
    ("lr", "negative", dict(lr=-0.1), named("lr")),
    ("lr", "nan", dict(lr=NAN), named("lr")),
    ("lr", "inf", dict(lr=INF), named("lr")),
    ("lr", "negative-tensor", dict(lr=torch.tensor(-0.1)), named("lr")),
    ("lr", "nan-tensor", dict(lr=torch.tensor(NAN)), named("lr")),
    ("betas", "beta1-is-1", dict(betas=(1.0, 0.999)), re.escape("betas[0]")),
    ("betas", "beta1-negative", dict(betas=(-0.1, 0.999)), re.escape("betas[0]")),
    ("betas", "beta1-nan", dict(betas=(NAN, 0.999)), re.escape("betas[0]")),
    ("betas", "beta2-is-1", dict(betas=(0.9, 1.0)), re.escape("betas[1]")),
    ("betas", "beta2-above-1", dict(betas=(0.9, 1.5)), re.escape("betas[1]")),
    ("betas", "beta2-nan", dict(betas=(0.9, NAN)), re.escape("betas[1]")),
    ("betas", "beta2-inf", dict(betas=(0.9, INF)), re.escape("betas[1]")),
    ("betas", "three-betas", dict(betas=(0.9, 0.99, 0.999)), named("betas")),
    ("eps", "negative", dict(eps=-1e-8), named("eps")),
    ("eps", "nan", dict(eps=NAN), named("eps")),
    ("eps", "inf", dict(eps=INF), named("eps")),
    ("weight_decay", "negative", dict(weight_decay=-0.1), named("weight_decay")),
    ("weight_decay", "nan", dict(weight_decay=NAN), named("weight_decay")),
    ("weight_decay", "inf", dict(weight_decay=INF), named("weight_decay")),
    ("momentum", "negative", dict(momentum=-0.5), named("momentum")),
    ("momentum", "nan", dict(momentum=NAN), named("momentum")),
    ("dampening", "negative", dict(dampening=-0.1), named("dampening")),
    ("dampening", "nan", dict(dampening=NAN), named("dampening")),
    ("nesterov", "with-dampening", dict(momentum=0.9, dampening=0.1, nesterov=True), named("dampening")),
    ("nesterov", "without-momentum", dict(momentum=0.0, nesterov=True), "(?i)nesterov.*momentum"),
]
CONSTRUCTION_CASES = [(w, *case) for w in WRAPPERS for case in BAD_HPARAMS
                      if takes(w, case[0]) and not (w in BETAS_UP_TO_1 and case[1].endswith("-is-1"))]
CONSTRUCTION_IDS = [f"{w}-{arg}-{desc}" for w, arg, desc, _, _ in CONSTRUCTION_CASES]


@pytest.mark.parametrize(("name", "argument", "desc", "kwargs", "pattern"), CONSTRUCTION_CASES, ids=CONSTRUCTION_IDS)
def test_invalid_hyperparameter_at_construction(name, argument, desc, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        WRAPPERS[name](make_params(), **{**VALID[name], **kwargs})


@pytest.mark.parametrize(("name", "argument", "desc", "kwargs", "pattern"), CONSTRUCTION_CASES, ids=CONSTRUCTION_IDS)
def test_invalid_per_group_override(name, argument, desc, kwargs, pattern):
    p1, p2, p3 = make_params(3)
    groups = [{"params": [p1]}, {"params": [p2], **kwargs}]
    with pytest.raises(ValueError, match=pattern):
        WRAPPERS[name](groups, **VALID[name])
    # and through add_param_group on a working optimizer, which keeps its groups
    opt = WRAPPERS[name]([p1], **VALID[name])
    with pytest.raises(ValueError, match=pattern):
        opt.add_param_group({"params": [p3], **kwargs})
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["params"] == [p1]


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_per_group_lr_minus_one(name):
    p1, p2 = make_params()
    with pytest.raises(ValueError, match=named("lr")):
        WRAPPERS[name]([{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": -1}], **VALID[name])


@pytest.mark.parametrize("name", list(WRAPPERS))
@pytest.mark.parametrize("container", [set, frozenset])
def test_a_set_of_params_is_rejected(name, container):
    with pytest.raises(TypeError, match="set"):
        WRAPPERS[name](container(make_params()), **VALID[name])


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_valid_configurations_construct(name):
    opt = WRAPPERS[name](make_params(), **VALID[name])
    assert len(opt.param_groups) == 1


SWITCH_CASES = [(w, s) for w in WRAPPERS for s in ("capturable", "differentiable", "fused") if takes(w, s)]


@pytest.mark.parametrize(("name", "switch"), SWITCH_CASES, ids=[f"{w}-{s}" for w, s in SWITCH_CASES])
def test_torch_only_switches_are_unsupported(name, switch):
    assert issubclass(UnsupportedOptionError, ValueError)
    assert issubclass(UnsupportedOptionError, NotImplementedError)
    with pytest.raises(UnsupportedOptionError, match=named(switch)):
        WRAPPERS[name](make_params(), **VALID[name], **{switch: True})
    # caught as either of its bases, as documented
    with pytest.raises(ValueError):
        WRAPPERS[name](make_params(), **VALID[name], **{switch: True})
    with pytest.raises(NotImplementedError):
        WRAPPERS[name](make_params(), **VALID[name], **{switch: True})
    # the same switch in a param group's overrides
    p1, p2 = make_params()
    with pytest.raises(UnsupportedOptionError, match=named(switch)):
        WRAPPERS[name]([{"params": [p1]}, {"params": [p2], switch: True}], **VALID[name])
    # and off is fine
    WRAPPERS[name](make_params(), **VALID[name], **{switch: False})


FOREACH_CASES = [(w, f) for w in WRAPPERS if takes(w, "foreach") for f in (True, False, None)]


@pytest.mark.parametrize(("name", "foreach"), FOREACH_CASES, ids=[f"{w}-foreach={f}" for w, f in FOREACH_CASES])
def test_foreach_is_accepted_and_steps(name, foreach):
    params = make_params()
    opt = WRAPPERS[name](params, **VALID[name], foreach=foreach)
    assert opt.param_groups[0]["foreach"] is foreach
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    for _ in range(2 if name in STILL_FIRST_STEP else 1):
        opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("name", [w for w in WRAPPERS if not takes(w, "foreach")])
def test_wrappers_without_torch_switches_reject_them_like_any_unknown_keyword(name):
    # AdaBelief's signature (DESIGN.md) has no foreach/capturable/differentiable/fused
    with pytest.raises(TypeError):
        WRAPPERS[name](make_params(), **VALID[name], fused=True)


# --- the construction errors torch ships in optim_db ------------------------------------------

def _torch_error_inputs():
    cases = []
    for info in optim_db:
        name = info.optim_cls.__name__
        if info.optim_cls not in OURS or info.optim_error_inputs_func is None:
            continue
        for index, error in enumerate(info.optim_error_inputs_func(device="cpu", dtype=torch.float32)):
            if error.error_on != OptimizerErrorEnum.CONSTRUCTION_ERROR:
                continue
            desc = re.sub(r"[^\w]+", "-", error.optimizer_error_input.desc).strip("-")
            cases.append(pytest.param(name, error, id=f"{name}-{index}-{desc}"))
    return cases


TORCH_ERROR_INPUTS = _torch_error_inputs()


def _construct_and_expect(cls, params, error):
    kwargs = error.optimizer_error_input.kwargs
    if issubclass(error.error_type, Warning):
        with pytest.warns(error.error_type, match=error.error_regex):
            cls(params, **kwargs)
    else:
        with pytest.raises(error.error_type, match=error.error_regex):
            cls(params, **kwargs)


def test_torch_error_inputs_were_found():
    names = {case.values[0] for case in TORCH_ERROR_INPUTS}
    assert names == {cls.__name__ for cls in OURS}


@pytest.mark.parametrize(("name", "error"), TORCH_ERROR_INPUTS)
def test_torch_construction_error_inputs(name, error):
    """Same exception type (or warning) and a message matching torch's regex.

    Where torch's entry gives ``params=None`` (its test harness passes that through, relying on
    torch checking hyperparameters before params), a real param list is used here; the verbatim
    call is checked separately below.
    """
    params = error.optimizer_error_input.params
    if params is None:
        params = [torch.nn.Parameter(torch.randn(2, 2))]
    _construct_and_expect(getattr(torch.optim, name), params, error)  # torch itself agrees
    _construct_and_expect(getattr(wrappers, name), params, error)


def _verbatim_cases():
    for case in TORCH_ERROR_INPUTS:
        name, error = case.values
        if error.optimizer_error_input.params is not None:
            continue  # identical to the test above
        yield pytest.param(name, error, id=case.id)


@pytest.mark.parametrize(("name", "error"), list(_verbatim_cases()))
def test_torch_construction_error_inputs_verbatim(name, error):
    """Exactly as torch's own ``test_errors`` calls the class: ``cls(params, **kwargs)``."""
    _construct_and_expect(getattr(torch.optim, name), error.optimizer_error_input.params, error)
    _construct_and_expect(getattr(wrappers, name), error.optimizer_error_input.params, error)


# ------------------------------------------------------------------------------------------------
# Step time: an error changes nothing, in any group
# ------------------------------------------------------------------------------------------------

def _set_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def _snapshot(opt):
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    grads = [None if p.grad is None else p.grad.clone() for g in opt.param_groups for p in g["params"]]
    state = {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
             for p, s in opt.state.items()}
    return params, grads, state


def _assert_unchanged(opt, snapshot):
    params, grads, state = snapshot
    now = [p for g in opt.param_groups for p in g["params"]]
    for i, (p, before) in enumerate(zip(now, params)):
        assert torch.equal(p.detach(), before), f"param {i} changed"
    for i, (p, before) in enumerate(zip(now, grads)):
        if before is None or p.grad is None:
            assert before is None and p.grad is None
        elif not p.grad.is_sparse:
            assert torch.equal(p.grad, before), f"grad {i} changed"
    current = {id(p): s for p, s in opt.state.items() if s}
    assert set(current) == {k for k, s in state.items() if s}, "state was created or dropped"
    for key, entries in state.items():
        if not entries:
            continue
        assert set(current[key]) == set(entries), "state keys changed"
        for name, value in entries.items():
            if torch.is_tensor(value):
                assert torch.equal(current[key][name], value), f"state {name!r} changed"
            else:
                assert current[key][name] == value


def _sparse_grad(opt):
    p = opt.param_groups[1]["params"][0]
    p.grad = torch.ones_like(p).to_sparse()


def _wrong_dtype_state(opt):
    p = opt.param_groups[1]["params"][0]
    # a state tensor shaped like the param (ASGD's 0-d eta and mu may be float64 legitimately)
    key = next(k for k, v in opt.state[p].items() if k != "step" and v.shape == p.shape)
    opt.state[p][key] = opt.state[p][key].double()


def _wrong_shape_state(opt):
    p = opt.param_groups[1]["params"][0]
    key = next(k for k in opt.state[p] if k != "step")
    opt.state[p][key] = torch.zeros(7)


def _scalar_state(value):
    def change(opt):
        p = opt.param_groups[1]["params"][0]
        opt.state[p][_scalar_state_keys(type(opt).__name__)[0]] = value
    return change


def _set(**values):
    def change(opt):
        opt.param_groups[1].update(values)
    return change


STATE_NAMED = r"\b[a-z_]+\[0\]"  # a state list of the wrapper, at index 0

# (description, change applied to group 2, error, regex, needs state to exist, applies to)
STEP_ERRORS = [
    ("sparse-grad", _sparse_grad, RuntimeError, "sparse", False, "dense-only"),
    ("nan-lr", _set(lr=NAN), ValueError, named("lr"), False, None),
    ("negative-lr", _set(lr=-1.0), ValueError, named("lr"), False, None),
    ("nan-tensor-lr", _set(lr=torch.tensor(NAN)), ValueError, named("lr"), False, None),
    ("inf-eps", _set(eps=INF), ValueError, named("eps"), False, "eps"),
    ("beta1-is-1", _set(betas=(1.0, 0.999)), ValueError, re.escape("betas[0]"), False, "betas"),
    ("beta2-nan", _set(betas=(0.9, NAN)), ValueError, re.escape("betas[1]"), False, "betas"),
    ("nan-weight_decay", _set(weight_decay=NAN), ValueError, named("weight_decay"), False, None),
    ("negative-momentum", _set(momentum=-0.1), ValueError, named("momentum"), False, "momentum"),
    ("nesterov-with-dampening", _set(nesterov=True, dampening=0.5), ValueError, named("dampening"), False,
     "nesterov"),
    ("nan-lambd", _set(lambd=NAN), ValueError, named("lambd"), False, "lambd"),
    ("nan-t0", _set(t0=NAN), ValueError, named("t0"), False, "t0"),
    ("negative-alpha", _set(alpha=-1.0), ValueError, named("alpha"), False, "alpha"),
    ("nan-etaplus", _set(etas=(0.5, NAN)), ValueError, named("etaplus"), False, "etas"),
    ("reversed-step_sizes", _set(step_sizes=(1.0, 0.1)), ValueError, named("step_sizes"), False, "step_sizes"),
    ("nan-momentum_decay", _set(momentum_decay=NAN), ValueError, named("momentum_decay"), False,
     "momentum_decay"),
    ("2-element-scalar-state", _scalar_state(torch.ones(2)), ValueError, STATE_NAMED, True, "scalar-state"),
    ("integer-scalar-state", _scalar_state(torch.tensor(1)), ValueError, STATE_NAMED, True, "scalar-state"),
    ("state-of-wrong-dtype", _wrong_dtype_state, TypeError, STATE_NAMED, True, None),
    ("state-of-wrong-shape", _wrong_shape_state, ValueError, STATE_NAMED, True, None),
]

STEP_CASES = [
    pytest.param(name, warm, case, id=f"{name}-{'warm' if warm else 'fresh'}-{case[0]}")
    for name in WRAPPERS for warm in (False, True) for case in STEP_ERRORS
    if (case[5] is None or takes(name, case[5])) and (warm or not case[4])
    and not (name in BETAS_UP_TO_1 and case[0].endswith("-is-1"))
]


@pytest.mark.parametrize(("name", "warm", "case"), STEP_CASES)
def test_step_error_in_second_group_changes_nothing(name, warm, case):
    desc, change, error, pattern, _, _ = case
    p1, p2, p3, p4 = make_params(4, seed=1)
    opt = WRAPPERS[name]([{"params": [p1, p2]}, {"params": [p3, p4], "lr": 0.02}],
                         **VALID[name], **({"weight_decay": 0.01} if takes(name, "weight_decay") else {}))
    if warm:
        for seed in range(2):
            _set_grads([p1, p2, p3, p4], seed)
            opt.step()
        assert len(opt.state) == 4
    _set_grads([p1, p2, p3, p4], seed=7)
    change(opt)
    before = _snapshot(opt)
    with pytest.raises(error, match=pattern):
        opt.step()
    _assert_unchanged(opt, before)
    if not warm:
        assert all(untouched_state(opt, p) for p in (p1, p2, p3, p4)), "state must stay empty"
    with pytest.raises(error, match=pattern):  # and it keeps failing the same way
        opt.step()
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("name", [name for name, cls in WRAPPERS.items() if not cls.takes_sparse_grads])
def test_sparse_grad_raises_runtime_error(name):
    (p,) = make_params(1)
    opt = WRAPPERS[name]([p], **VALID[name])
    p.grad = torch.ones_like(p).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert not opt.state


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_lr_fixed_after_a_failed_step_then_steps(name):
    params = make_params(2)
    opt = WRAPPERS[name](params, **VALID[name])
    _set_grads(params, 0)
    opt.param_groups[0]["lr"] = NAN
    with pytest.raises(ValueError, match=named("lr")):
        opt.step()
    opt.param_groups[0]["lr"] = 0.01
    before = [p.detach().clone() for p in params]
    steps = 2 if name in STILL_FIRST_STEP else 1
    for _ in range(steps):
        opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(params, before))
    if "step" in opt.state[params[0]]:
        assert opt.state[params[0]]["step"].item() == steps


def test_no_warnings_on_valid_construction():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, cls in WRAPPERS.items():
            cls(make_params(), **VALID[name])
