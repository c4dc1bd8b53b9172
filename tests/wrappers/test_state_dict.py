"""Checkpoints cross-load between torch.optim and the wrappers, both ways.

A state dict goes through ``torch.save`` / ``torch.load(weights_only=True)`` as a real checkpoint
does. After loading, both optimizers continue with the same grads and must agree bit for bit: our
kernels follow the op order of one of ``torch.optim``'s implementations (``exact_torch_mode``), and
that one is the reference.
"""

import copy
import inspect
import io

import pytest
import torch

import wrappers
from tests.configs import API_KWARGS, TORCH_TWINS, exact_torch_mode

EXACT = dict(rtol=0.0, atol=0.0)
SHAPES = [(4, 3), (3,), (2, 2, 2), (1,)]

CONFIGS = [
    ("Adam", "default", dict(lr=0.01)),
    ("Adam", "amsgrad", dict(lr=0.01, amsgrad=True)),
    ("Adam", "weight_decay", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", "maximize-amsgrad", dict(lr=0.01, maximize=True, amsgrad=True)),
    ("AdamW", "default", dict(lr=0.01)),
    ("AdamW", "amsgrad", dict(lr=0.01, amsgrad=True, weight_decay=0.05)),
    ("RAdam", "default", dict(lr=0.01)),
    ("RAdam", "decoupled_weight_decay", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("SGD", "no-momentum", dict(lr=0.05)),
    ("SGD", "momentum", dict(lr=0.05, momentum=0.9)),
    ("SGD", "nesterov", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", "dampening-weight_decay", dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.1)),
]
# and every other wrapper with a torch twin, in a configuration that keeps state
CONFIGS += [(name, "default", API_KWARGS[name]) for name in TORCH_TWINS if name not in {n for n, _, _ in CONFIGS}]
CONFIG_IDS = [f"{name}-{desc}" for name, desc, _ in CONFIGS]
# torch.optim's per-param state keys, written out for the first wrappers (the others: torch's own)
EXPECTED_STATE_KEYS = {
    "Adam": {"step", "exp_avg", "exp_avg_sq"},
    "AdamW": {"step", "exp_avg", "exp_avg_sq"},
    "RAdam": {"step", "exp_avg", "exp_avg_sq"},
    "SGD": {"momentum_buffer"},
}
# RAdam needs > 5 steps before its rectified branch runs: train long enough to cross it
STEPS_BEFORE, STEPS_AFTER = 4, 5


def expected_state_keys(name, kwargs):
    if name == "SGD" and not kwargs.get("momentum"):
        return set()
    keys = set(EXPECTED_STATE_KEYS[name])
    if kwargs.get("amsgrad"):
        keys.add("max_exp_avg_sq")
    return keys


def make_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]


def clone_params(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def set_grads(params, seed):
    gen = torch.Generator().manual_seed(1000 + seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def train(opt, params, steps, start=0):
    for i in range(start, start + steps):
        set_grads(params, i)
        opt.step()


def through_disk(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def torch_opt(name, params, kwargs):
    return getattr(torch.optim, name)(params, **kwargs, **exact_torch_mode(name))


def keep_exact_torch_mode(opt_t, name):
    """Loading brings our saved ``foreach`` (None: torch's CPU for-loop); keep the mode ours follows."""
    for group in opt_t.param_groups:
        group.update(exact_torch_mode(name))


def our_opt(name, params, kwargs):
    return getattr(wrappers, name)(params, **kwargs)


def assert_same(opt_a, params_a, opt_b, params_b, **tol):
    tol = tol or EXACT
    for i, (a, b) in enumerate(zip(params_a, params_b)):
        torch.testing.assert_close(a.detach(), b.detach(), **tol, msg=lambda m: f"param {i}: {m}")
    for i, (a, b) in enumerate(zip(params_a, params_b)):
        state_a, state_b = opt_a.state.get(a, {}), opt_b.state.get(b, {})
        assert set(state_a) == set(state_b), f"param {i}: state keys {set(state_a)} != {set(state_b)}"
        for key in state_a:
            va, vb = state_a[key], state_b[key]
            assert torch.is_tensor(va) and torch.is_tensor(vb)
            assert va.dtype == vb.dtype and va.shape == vb.shape, f"param {i} state {key!r}"
            torch.testing.assert_close(va, vb, **tol, msg=lambda m: f"param {i} state {key!r}: {m}")


def assert_same_layout(sd_ours, sd_torch):
    """The state dicts have the same structure: state indices, state keys, group keys."""
    assert set(sd_ours["state"]) == set(sd_torch["state"])
    for index in sd_torch["state"]:
        assert set(sd_ours["state"][index]) == set(sd_torch["state"][index])
    assert len(sd_ours["param_groups"]) == len(sd_torch["param_groups"])
    for ours, theirs in zip(sd_ours["param_groups"], sd_torch["param_groups"]):
        assert set(ours) == set(theirs)
        assert ours["params"] == theirs["params"]


# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "desc", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_torch_checkpoint_loads_into_wrapper(name, desc, kwargs):
    params_t = make_params()
    opt_t = torch_opt(name, params_t, kwargs)
    train(opt_t, params_t, STEPS_BEFORE)

    params_o = clone_params(params_t)
    opt_o = our_opt(name, params_o, kwargs)
    opt_o.load_state_dict(through_disk(opt_t.state_dict()))
    assert_same(opt_o, params_o, opt_t, params_t)
    assert_same_layout(opt_o.state_dict(), opt_t.state_dict())

    train(opt_t, params_t, STEPS_AFTER, start=STEPS_BEFORE)
    train(opt_o, params_o, STEPS_AFTER, start=STEPS_BEFORE)
    assert_same(opt_o, params_o, opt_t, params_t)
    assert_same_layout(opt_o.state_dict(), opt_t.state_dict())


@pytest.mark.parametrize(("name", "desc", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_wrapper_checkpoint_loads_into_torch(name, desc, kwargs):
    params_o = make_params()
    opt_o = our_opt(name, params_o, kwargs)
    train(opt_o, params_o, STEPS_BEFORE)

    params_t = clone_params(params_o)
    opt_t = torch_opt(name, params_t, kwargs)
    opt_t.load_state_dict(through_disk(opt_o.state_dict()))
    keep_exact_torch_mode(opt_t, name)
    assert_same(opt_o, params_o, opt_t, params_t)

    train(opt_t, params_t, STEPS_AFTER, start=STEPS_BEFORE)
    train(opt_o, params_o, STEPS_AFTER, start=STEPS_BEFORE)
    assert_same(opt_o, params_o, opt_t, params_t)


@pytest.mark.parametrize(("name", "desc", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_state_keys_and_group_keys_are_torchs(name, desc, kwargs):
    params_t, params_o = make_params(), make_params()
    opt_t, opt_o = torch_opt(name, params_t, kwargs), our_opt(name, params_o, kwargs)
    train(opt_t, params_t, 2)
    train(opt_o, params_o, 2)
    for p_t, p_o in zip(params_t, params_o):
        # the table above is torch's truth; for the others, torch's own keys, per param
        # (Adafactor keeps row_var and col_var for a matrix, variance for a vector)
        expected = expected_state_keys(name, kwargs) if name in EXPECTED_STATE_KEYS else set(opt_t.state[p_t])
        assert set(opt_t.state.get(p_t, {})) == expected
        assert list(opt_o.state.get(p_o, {})) == list(opt_t.state.get(p_t, {}))  # in torch's order too
    if not expected:  # SGD without momentum: no state at all
        assert opt_o.state_dict()["state"] == {} == opt_t.state_dict()["state"]
    sd_o, sd_t = opt_o.state_dict(), opt_t.state_dict()
    assert_same_layout(sd_o, sd_t)
    for index, entry in sd_o["state"].items():
        if "step" in entry:  # a float32 0-d tensor, as torch keeps it
            step_t = sd_t["state"][index]["step"]
            assert torch.is_tensor(entry["step"]) and entry["step"].shape == () == step_t.shape
            assert entry["step"].dtype == step_t.dtype == torch.float32
            assert entry["step"].item() == step_t.item() == 2.0
    # every group hyperparameter matches, except foreach which we passed to torch only
    for g_o, g_t in zip(sd_o["param_groups"], sd_t["param_groups"]):
        assert {k: v for k, v in g_o.items() if k != "foreach"} == {k: v for k, v in g_t.items() if k != "foreach"}


@pytest.mark.parametrize(("name", "desc", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_own_state_dict_round_trip(name, desc, kwargs):
    params_a = make_params()
    opt_a = our_opt(name, params_a, kwargs)
    train(opt_a, params_a, STEPS_BEFORE)
    sd = through_disk(opt_a.state_dict())

    params_b = clone_params(params_a)
    opt_b = our_opt(name, params_b, {**kwargs, "lr": 123.0})  # the checkpoint's lr wins
    opt_b.load_state_dict(sd)
    assert opt_b.param_groups[0]["lr"] == kwargs["lr"]
    assert_same(opt_a, params_a, opt_b, params_b)
    assert_same_layout(opt_b.state_dict(), opt_a.state_dict())

    train(opt_a, params_a, STEPS_AFTER, start=STEPS_BEFORE)
    train(opt_b, params_b, STEPS_AFTER, start=STEPS_BEFORE)
    assert_same(opt_a, params_a, opt_b, params_b)
    # the state dict is a copy: changing it does not reach into the optimizer
    sd2 = opt_b.state_dict()
    sd2["param_groups"][0]["lr"] = 7.0
    assert opt_b.param_groups[0]["lr"] == kwargs["lr"]


def _two_groups(name, params, kwargs):
    first = {"params": params[:2]}
    second = {"params": params[2:], "lr": kwargs["lr"] / 3}
    if "momentum" in kwargs:
        second["momentum"] = 0.5 if kwargs["momentum"] else 0.0
    elif "betas" in inspect.signature(getattr(wrappers, name)).parameters and "betas" not in kwargs:
        second["betas"] = (0.8, 0.99)
    return [first, second]


@pytest.mark.parametrize(("name", "desc", "kwargs"), CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("direction", ["torch-to-ours", "ours-to-torch", "ours-to-ours"])
def test_two_param_groups(name, desc, kwargs, direction):
    params_src, params_dst = make_params(), None
    src_factory = torch_opt if direction == "torch-to-ours" else our_opt
    dst_factory = torch_opt if direction == "ours-to-torch" else our_opt
    opt_src = src_factory(name, _two_groups(name, params_src, kwargs), kwargs)
    train(opt_src, params_src, STEPS_BEFORE)

    params_dst = clone_params(params_src)
    opt_dst = dst_factory(name, _two_groups(name, params_dst, kwargs), kwargs)
    sd = through_disk(opt_src.state_dict())
    assert len(sd["param_groups"]) == 2
    opt_dst.load_state_dict(sd)
    for g_src, g_dst in zip(opt_src.param_groups, opt_dst.param_groups):
        assert {k: v for k, v in g_src.items() if k != "params"} == {k: v for k, v in g_dst.items() if k != "params"}
    if dst_factory is torch_opt:
        keep_exact_torch_mode(opt_dst, name)

    train(opt_src, params_src, STEPS_AFTER, start=STEPS_BEFORE)
    train(opt_dst, params_dst, STEPS_AFTER, start=STEPS_BEFORE)
    assert_same(opt_src, params_src, opt_dst, params_dst)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["plain", "amsgrad"])
def test_fused_checkpoint_loads_into_wrapper(name, amsgrad):
    kwargs = dict(lr=0.01, amsgrad=amsgrad)
    params_t = make_params()
    opt_fused = getattr(torch.optim, name)(params_t, **kwargs, fused=True)
    train(opt_fused, params_t, STEPS_BEFORE)
    sd = through_disk(opt_fused.state_dict())
    assert sd["param_groups"][0]["fused"] is True

    params_o = clone_params(params_t)
    opt_o = our_opt(name, params_o, kwargs)
    opt_o.load_state_dict(sd)
    assert opt_o.param_groups[0]["fused"] is True  # kept in the group, ignored at step
    assert_same(opt_o, params_o, opt_fused, params_t)

    # the same checkpoint on torch's foreach path is the exact reference
    params_ref = clone_params(params_t)
    opt_ref = torch_opt(name, params_ref, kwargs)
    sd_ref = copy.deepcopy(sd)
    for group in sd_ref["param_groups"]:
        group["fused"], group["foreach"] = None, True
    opt_ref.load_state_dict(sd_ref)

    for opt, params in ((opt_o, params_o), (opt_fused, params_t), (opt_ref, params_ref)):
        train(opt, params, STEPS_AFTER, start=STEPS_BEFORE)
    assert opt_o.param_groups[0]["fused"] is True
    assert_same(opt_o, params_o, opt_ref, params_ref)
    # and within rounding of the fused kernel itself (a different op order)
    assert_same(opt_o, params_o, opt_fused, params_t, rtol=1e-5, atol=1e-6)
    # saving again keeps the group as it was loaded
    assert opt_o.state_dict()["param_groups"][0]["fused"] is True


def test_sgd_without_momentum_loads_an_empty_state():
    params_t = make_params()
    opt_t = torch.optim.SGD(params_t, lr=0.1)
    train(opt_t, params_t, 2)
    params_o = clone_params(params_t)
    opt_o = wrappers.SGD(params_o, lr=0.1)
    opt_o.load_state_dict(through_disk(opt_t.state_dict()))
    train(opt_o, params_o, 2, start=2)
    train(opt_t, params_t, 2, start=2)
    assert not any(opt_o.state.values())
    assert opt_o.state_dict()["state"] == {}
    assert_same(opt_o, params_o, opt_t, params_t)


def test_checkpoint_with_some_params_never_stepped():
    """A param whose grad was always None has no state entry in torch's checkpoint; it stays so."""
    params_t = make_params()
    opt_t = torch_opt("Adam", params_t, dict(lr=0.01))
    for i in range(3):
        set_grads(params_t, i)
        params_t[1].grad = None
        opt_t.step()
    sd = through_disk(opt_t.state_dict())
    assert 1 not in sd["state"]
    params_o = clone_params(params_t)
    opt_o = wrappers.Adam(params_o, lr=0.01)
    opt_o.load_state_dict(sd)
    assert not opt_o.state.get(params_o[1])
    train(opt_o, params_o, 2, start=3)
    train(opt_t, params_t, 2, start=3)
    assert_same(opt_o, params_o, opt_t, params_t)
    assert opt_o.state[params_o[1]]["step"].item() == 2.0
    assert opt_o.state[params_o[0]]["step"].item() == 5.0
