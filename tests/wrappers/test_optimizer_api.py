"""The wrappers behave as torch.optim optimizers: closures, zero_grad, param groups, hooks,
lr schedulers, tensor lr, named params, skipped params, copying and pickling.

Where torch.optim has the class, results are compared with the torch.optim implementation whose
op order our kernel follows (``tests.configs.exact_torch_mode``), so they agree exactly. AdaBelief has no torch counterpart; it is
compared with itself driven by hand.
"""

import copy
import inspect
import pickle

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

import wrappers
from tests.configs import API_KWARGS as KWARGS
from tests.configs import GENERIC_WRAPPERS as WRAPPERS
from tests.configs import EAGER_STATE, STILL_FIRST_STEP, TORCH_TWINS, exact_torch_mode, untouched_state

EXACT = dict(rtol=0.0, atol=0.0)


def ours(name, params, **overrides):
    return getattr(wrappers, name)(params, **{**KWARGS[name], **overrides})


def theirs(name, params, **overrides):
    return getattr(torch.optim, name)(params, **{**KWARGS[name], **overrides}, **exact_torch_mode(name))


def with_decay(name, weight_decay=0.01):
    """``weight_decay=...`` for the wrappers that take it (Rprop has none)."""
    takes = "weight_decay" in inspect.signature(getattr(wrappers, name)).parameters
    return dict(weight_decay=weight_decay) if takes else {}


def make_params(n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 2), (4,), (2, 2, 2), (1,)]
    return [nn.Parameter(torch.randn(shapes[i % len(shapes)], generator=gen)) for i in range(n)]


def clone_params(params):
    return [nn.Parameter(p.detach().clone()) for p in params]


def set_grads(params, seed, skip=()):
    gen = torch.Generator().manual_seed(500 + seed)
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen)
        p.grad = None if i in skip else g


def assert_params_equal(a, b, **tol):
    for i, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(x.detach(), y.detach(), **(tol or EXACT), msg=lambda m: f"param {i}: {m}")


def assert_state_equal(opt_a, params_a, opt_b, params_b, **tol):
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert set(sa) == set(sb), f"param {i}"
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], **(tol or EXACT), msg=lambda m: f"param {i} {key}: {m}")


# ------------------------------------------------------------------------------------------------
# step(closure), zero_grad
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", WRAPPERS)
@pytest.mark.parametrize("outer", ["grad-mode", "no-grad-mode"])
def test_step_with_closure_returns_loss_and_runs_with_grad(name, outer):
    model = nn.Linear(3, 1)
    x = torch.randn(8, 3)
    opt = ours(name, model.parameters())
    seen = []

    def closure():
        seen.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    if name in STILL_FIRST_STEP:  # its first step only fills its state: past it, steps move params
        opt.step(closure)
        seen.clear()
    before = [p.detach().clone() for p in model.parameters()]
    if outer == "no-grad-mode":
        with torch.no_grad():
            loss = opt.step(closure)
    else:
        loss = opt.step(closure)
    assert seen == [True]
    assert torch.is_tensor(loss) and loss.grad_fn is not None
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert opt.step() is None  # no closure, no loss


@pytest.mark.parametrize("name", TORCH_TWINS)
def test_step_with_closure_matches_torch(name):
    torch.manual_seed(0)
    model_o = nn.Linear(3, 2)
    model_t = copy.deepcopy(model_o)
    x = torch.randn(8, 3)
    opt_o, opt_t = ours(name, model_o.parameters()), theirs(name, model_t.parameters())

    def closure_for(model, opt):
        def closure():
            opt.zero_grad()
            loss = model(x).pow(2).sum()
            loss.backward()
            return loss
        return closure

    for _ in range(4):
        loss_o = opt_o.step(closure_for(model_o, opt_o))
        loss_t = opt_t.step(closure_for(model_t, opt_t))
        assert torch.equal(loss_o.detach(), loss_t.detach())
    assert_params_equal(list(model_o.parameters()), list(model_t.parameters()))


@pytest.mark.parametrize("name", WRAPPERS)
@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(name, set_to_none):
    params = make_params()
    opt = ours(name, params)
    set_grads(params, 0)
    grads = [p.grad for p in params]
    opt.zero_grad(set_to_none=set_to_none)
    for p, g in zip(params, grads):
        if set_to_none:
            assert p.grad is None
        else:
            assert p.grad is g and torch.equal(p.grad, torch.zeros_like(p))
    # a step right after zero_grad(set_to_none=True) has nothing to do and creates no state
    before = [p.detach().clone() for p in params]
    opt.step()
    if set_to_none:
        assert all(untouched_state(opt, p) for p in params)
        assert_params_equal(params, before)


def test_zero_grad_default_sets_to_none():
    params = make_params()
    opt = wrappers.Adam(params)
    set_grads(params, 0)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


# ------------------------------------------------------------------------------------------------
# add_param_group
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", WRAPPERS)
def test_add_param_group_is_optimized_with_its_own_lr(name):
    params = make_params(4)
    opt = ours(name, params[:2])
    set_grads(params, 0, skip=(2, 3))
    opt.step()
    opt.add_param_group({"params": params[2:], "lr": 0.001})
    group = opt.param_groups[1]
    assert group["lr"] == 0.001
    for key, value in opt.defaults.items():  # the rest comes from the defaults
        if key != "lr":
            assert group[key] == value

    # reference: the new params alone, with lr=0.001 from their first step
    alone = clone_params(params[2:])
    opt_alone = ours(name, alone, lr=0.001)
    for i in range(1, 4):
        set_grads(params, i)
        set_grads(alone, i)
        for p, q in zip(params[2:], alone):
            q.grad = p.grad.clone()
        opt.step()
        opt_alone.step()
    assert_params_equal(params[2:], alone)
    assert_state_equal(opt, params[2:], opt_alone, alone)


@pytest.mark.parametrize("name", TORCH_TWINS)
def test_add_param_group_matches_torch(name):
    params_o = make_params(4)
    params_t = clone_params(params_o)
    opt_o, opt_t = ours(name, params_o[:2]), theirs(name, params_t[:2])
    for i in range(3):
        if i == 1:
            opt_o.add_param_group({"params": params_o[2:], "lr": 0.003})
            opt_t.add_param_group({"params": params_t[2:], "lr": 0.003})
        set_grads(params_o, i)
        set_grads(params_t, i)
        opt_o.step()
        opt_t.step()
    assert_params_equal(params_o, params_t)
    assert_state_equal(opt_o, params_o, opt_t, params_t)


# ------------------------------------------------------------------------------------------------
# hooks
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", WRAPPERS)
def test_step_pre_and_post_hooks(name):
    params = make_params()
    opt = ours(name, params)
    calls = []

    def pre(optimizer, args, kwargs):
        calls.append(("pre", optimizer is opt, params[0].detach().clone()))

    def post(optimizer, args, kwargs):
        calls.append(("post", optimizer is opt, params[0].detach().clone()))

    set_grads(params, 0)
    if name in STILL_FIRST_STEP:  # its first step leaves the params: hook a step that moves them
        opt.step()
    handle_pre = opt.register_step_pre_hook(pre)
    handle_post = opt.register_step_post_hook(post)
    opt.step()
    assert [(c[0], c[1]) for c in calls] == [("pre", True), ("post", True)]
    assert not torch.equal(calls[0][2], calls[1][2])  # pre ran before the update, post after
    handle_pre.remove()
    handle_post.remove()
    opt.step()
    assert len(calls) == 2


@pytest.mark.parametrize("name", WRAPPERS)
def test_step_pre_hook_can_change_hyperparameters(name):
    params = make_params()
    opt = ours(name, params)
    opt.register_step_pre_hook(lambda o, a, k: o.param_groups[0].update(lr=0.0))
    set_grads(params, 0)
    before = [p.detach().clone() for p in params]
    if name == "AdamW":
        opt.param_groups[0]["weight_decay"] = 0.0
    opt.step()
    assert_params_equal(params, before)


@pytest.mark.parametrize("name", WRAPPERS)
def test_state_dict_hooks(name):
    params = make_params()
    opt = ours(name, params)
    set_grads(params, 0)
    opt.step()
    log = []

    def sd_pre(optimizer):
        log.append("sd_pre")

    def sd_post(optimizer, state_dict):
        log.append("sd_post")
        state_dict["extra"] = "from-post-hook"
        return state_dict

    opt.register_state_dict_pre_hook(sd_pre)
    opt.register_state_dict_post_hook(sd_post)
    sd = opt.state_dict()
    assert log == ["sd_pre", "sd_post"] and sd["extra"] == "from-post-hook"

    target = ours(name, clone_params(params))

    def load_pre(optimizer, state_dict):
        log.append("load_pre")
        state_dict = copy.deepcopy(state_dict)
        state_dict.pop("extra")
        state_dict["param_groups"][0]["lr"] = 0.125
        return state_dict

    def load_post(optimizer):
        log.append("load_post")
        assert optimizer.param_groups[0]["lr"] == 0.125

    target.register_load_state_dict_pre_hook(load_pre)
    target.register_load_state_dict_post_hook(load_post)
    target.load_state_dict(sd)
    assert log[-2:] == ["load_pre", "load_post"]
    assert target.param_groups[0]["lr"] == 0.125
    assert "extra" in sd  # the hook worked on a copy
    assert set(target.state_dict()["state"]) == set(sd["state"])


# ------------------------------------------------------------------------------------------------
# lr schedulers
# ------------------------------------------------------------------------------------------------

SCHEDULERS = {
    "StepLR": lambda opt, cycle: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    "CosineAnnealingLR": lambda opt, cycle: lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.001),
    "LambdaLR": lambda opt, cycle: lr_scheduler.LambdaLR(opt, lambda epoch: 0.9 ** epoch),
    "OneCycleLR": lambda opt, cycle: lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10,
                                                             cycle_momentum=cycle),
}
N_STEPS = 10


def _cycle(name):
    # OneCycleLR cycles beta1 or momentum where the optimizer has one (tried both ways for momentum)
    parameters = inspect.signature(getattr(wrappers, name)).parameters
    return [True] if "betas" in parameters else [False, True] if "momentum" in parameters else [False]


SCHEDULER_CASES = [
    pytest.param(name, sched, cycle, id=f"{name}-{sched}" + ("-cycle_momentum" if cycle else ""))
    for name in TORCH_TWINS for sched in SCHEDULERS
    for cycle in (_cycle(name) if sched == "OneCycleLR" else [False])
]


def _hparams(group):
    return {k: group[k] for k in ("lr", "betas", "momentum") if k in group}


@pytest.mark.parametrize(("name", "sched", "cycle"), SCHEDULER_CASES)
def test_scheduler_matches_torch(name, sched, cycle):
    params_o = make_params()
    params_t = clone_params(params_o)
    opt_o, opt_t = ours(name, params_o), theirs(name, params_t)
    sched_o, sched_t = SCHEDULERS[sched](opt_o, cycle), SCHEDULERS[sched](opt_t, cycle)
    lrs = []
    for i in range(N_STEPS):
        assert _hparams(opt_o.param_groups[0]) == _hparams(opt_t.param_groups[0])
        lrs.append(opt_o.param_groups[0]["lr"])
        set_grads(params_o, i)
        set_grads(params_t, i)
        opt_o.step()
        opt_t.step()
        sched_o.step()
        sched_t.step()
        assert sched_o.get_last_lr() == sched_t.get_last_lr()
    assert len(set(lrs)) > 1, "the schedule never changed lr"
    assert_params_equal(params_o, params_t)
    assert_state_equal(opt_o, params_o, opt_t, params_t)
    # and the scheduler's own state dict round-trips onto the wrapper
    assert sched_o.state_dict().keys() == sched_t.state_dict().keys()


@pytest.mark.parametrize("sched", list(SCHEDULERS))
def test_scheduler_drives_adabelief(sched):
    """AdaBelief has no torch twin: drive one with the scheduler, and another by copying the
    hyperparameters the same scheduler sets on a torch.optim.Adam; they must agree exactly."""
    params_a = make_params()
    params_b = clone_params(params_a)
    opt_a = wrappers.AdaBelief(params_a, lr=0.01)
    opt_b = wrappers.AdaBelief(params_b, lr=0.01)
    dummy = nn.Parameter(torch.zeros(1))
    dummy.grad = torch.zeros(1)  # the shadow steps too (a no-op), so its scheduler runs in order
    shadow = torch.optim.Adam([dummy], lr=0.01)
    sched_a, sched_shadow = SCHEDULERS[sched](opt_a, True), SCHEDULERS[sched](shadow, True)
    lrs = set()
    for i in range(N_STEPS):
        opt_b.param_groups[0].update(lr=shadow.param_groups[0]["lr"], betas=shadow.param_groups[0]["betas"])
        assert _hparams(opt_a.param_groups[0]) == _hparams(opt_b.param_groups[0])
        lrs.add(opt_a.param_groups[0]["lr"])
        set_grads(params_a, i)
        set_grads(params_b, i)
        opt_a.step()
        opt_b.step()
        shadow.step()
        sched_a.step()
        sched_shadow.step()
    assert len(lrs) > 1
    assert_params_equal(params_a, params_b)


# ------------------------------------------------------------------------------------------------
# tensor lr
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", WRAPPERS)
def test_tensor_lr_equals_the_same_float_lr(name):
    lr = torch.tensor(0.01)
    params_a = make_params()
    params_b = clone_params(params_a)
    opt_a = ours(name, params_a, lr=lr)
    opt_b = ours(name, params_b, lr=lr.item())
    for i in range(4):
        set_grads(params_a, i)
        set_grads(params_b, i)
        opt_a.step()
        opt_b.step()
    assert opt_a.param_groups[0]["lr"] is lr
    assert_params_equal(params_a, params_b)
    assert_state_equal(opt_a, params_a, opt_b, params_b)


@pytest.mark.parametrize("name", TORCH_TWINS)
@pytest.mark.parametrize("sched", [None, "StepLR", "CosineAnnealingLR"])
def test_tensor_lr_with_scheduler_matches_torch(name, sched):
    """torch.optim takes a tensor lr only on its for-loop path (foreach=True raises), whose op
    order differs from ours, so the params agree to rounding; the lr values agree exactly."""
    params_o = make_params()
    params_t = clone_params(params_o)
    opt_o = ours(name, params_o, lr=torch.tensor(0.01))
    opt_t = getattr(torch.optim, name)(params_t, **{**KWARGS[name], "lr": torch.tensor(0.01)}, foreach=False)
    lr_o = opt_o.param_groups[0]["lr"]
    scheds = [SCHEDULERS[sched](o, False) for o in (opt_o, opt_t)] if sched else []
    for i in range(N_STEPS):
        set_grads(params_o, i)
        set_grads(params_t, i)
        opt_o.step()
        opt_t.step()
        for s in scheds:
            s.step()
        assert torch.is_tensor(opt_o.param_groups[0]["lr"])
        assert opt_o.param_groups[0]["lr"] is lr_o  # schedulers fill the tensor in place
        assert torch.equal(opt_o.param_groups[0]["lr"], opt_t.param_groups[0]["lr"])
    if sched:
        assert lr_o.item() != 0.01
    assert_params_equal(params_o, params_t, rtol=1e-6, atol=1e-7)
    assert_state_equal(opt_o, params_o, opt_t, params_t, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# named params
# ------------------------------------------------------------------------------------------------

def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def _train_model(model, opt, steps, start=0):
    for i in range(start, start + steps):
        gen = torch.Generator().manual_seed(i)
        x = torch.randn(5, 4, generator=gen)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name", TORCH_TWINS)
def test_named_parameters_as_in_torch(name):
    model_o = _model()
    model_t = copy.deepcopy(model_o)
    opt_o = ours(name, model_o.named_parameters())
    opt_t = theirs(name, model_t.named_parameters())
    assert opt_o.param_groups[0]["param_names"] == opt_t.param_groups[0]["param_names"] == \
        ["0.weight", "0.bias", "2.weight", "2.bias"]
    _train_model(model_o, opt_o, 3)
    _train_model(model_t, opt_t, 3)
    assert_params_equal(list(model_o.parameters()), list(model_t.parameters()))
    sd_o, sd_t = opt_o.state_dict(), opt_t.state_dict()
    assert sd_o["param_groups"][0]["param_names"] == sd_t["param_groups"][0]["param_names"]
    assert set(sd_o["state"]) == set(sd_t["state"])

    # a named checkpoint from torch loads into a named wrapper, and training continues alike
    model_o2 = copy.deepcopy(model_t)
    opt_o2 = ours(name, model_o2.named_parameters())
    opt_o2.load_state_dict(copy.deepcopy(sd_t))  # load_state_dict shares tensors with a live dict, as torch's
    _train_model(model_o2, opt_o2, 2, start=3)
    _train_model(model_t, opt_t, 2, start=3)
    assert_params_equal(list(model_o2.parameters()), list(model_t.parameters()))


def test_named_parameters_adabelief():
    model = _model()
    opt = wrappers.AdaBelief(model.named_parameters(), lr=0.01)
    assert opt.param_groups[0]["param_names"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    _train_model(model, opt, 2)
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert len(opt.state) == 4


@pytest.mark.parametrize("name", WRAPPERS)
def test_named_and_unnamed_params_cannot_mix(name):
    p1, p2 = make_params(2)
    with pytest.raises(ValueError, match="with/without names"):
        ours(name, [("a", p1), p2])


# ------------------------------------------------------------------------------------------------
# params without grads
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", WRAPPERS)
def test_params_without_grad_are_skipped(name):
    params = make_params(4)
    opt = ours(name, params)
    frozen = params[1].detach().clone()
    for i in range(3):
        set_grads(params, i, skip=(1,))
        opt.step()
    assert torch.equal(params[1].detach(), frozen)
    assert untouched_state(opt, params[1]), "state was created for a param without grad"
    assert 1 not in opt.state_dict()["state"] or name in EAGER_STATE
    for i in (0, 2, 3):
        assert opt.state[params[i]]
        if "step" in opt.state[params[i]]:
            assert opt.state[params[i]]["step"].item() == 3.0
    # when it gets a grad, its state starts then, with its own count
    set_grads(params, 3)
    opt.step()
    assert opt.state[params[1]]
    if "step" in opt.state[params[1]]:
        assert opt.state[params[1]]["step"].item() == 1.0
        assert opt.state[params[0]]["step"].item() == 4.0


@pytest.mark.parametrize("name", TORCH_TWINS)
def test_params_without_grad_match_torch(name):
    params_o = make_params(4)
    params_t = clone_params(params_o)
    opt_o, opt_t = ours(name, params_o), theirs(name, params_t)
    for i in range(5):
        skip = {0: (1, 3), 1: (1,), 2: (), 3: (0, 2), 4: (3,)}[i]
        set_grads(params_o, i, skip=skip)
        set_grads(params_t, i, skip=skip)
        opt_o.step()
        opt_t.step()
    assert_params_equal(params_o, params_t)
    assert_state_equal(opt_o, params_o, opt_t, params_t)


@pytest.mark.parametrize("name", WRAPPERS)
def test_whole_group_without_grads(name):
    p1, p2 = make_params(2)
    opt = ours(name, [{"params": [p1]}, {"params": [p2], "lr": 0.5}])
    set_grads([p1, p2], 0, skip=(1,))
    before = p2.detach().clone()
    opt.step()
    assert torch.equal(p2.detach(), before) and untouched_state(opt, p2)


# ------------------------------------------------------------------------------------------------
# maximize and grads
# ------------------------------------------------------------------------------------------------

MAXIMIZE_CASES = [
    ("Adam", dict(maximize=True, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(maximize=True, weight_decay=0.1)),
    ("RAdam", dict(maximize=True, weight_decay=0.1)),
    ("SGD", dict(maximize=True, weight_decay=0.1, nesterov=True)),
    ("SGD", dict(maximize=True, weight_decay=0.1, momentum=0.0)),
    ("AdaBelief", dict(maximize=True, weight_decay=0.1, decoupled_weight_decay=False, amsgrad=True)),
]


@pytest.mark.parametrize(("name", "kwargs"), MAXIMIZE_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in MAXIMIZE_CASES])
def test_step_never_mutates_grads(name, kwargs):
    params = make_params()
    opt = ours(name, params, **kwargs)
    set_grads(params, 0)
    grads = [p.grad.clone() for p in params]
    for _ in range(7):  # the same grads each step: an alias into state would show
        opt.step()
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)
    if name in TORCH_TWINS:
        params_t = clone_params(make_params())
        opt_t = theirs(name, params_t, **kwargs)
        for p, g in zip(params_t, grads):
            p.grad = g.clone()
        for _ in range(7):
            opt_t.step()
        assert_params_equal(params, params_t)


# ------------------------------------------------------------------------------------------------
# copying
# ------------------------------------------------------------------------------------------------

def _copy(opt, how):
    return copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))


@pytest.mark.parametrize("name", WRAPPERS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_of_optimizer(name, how):
    params = make_params()
    opt = ours(name, params, **with_decay(name))
    for i in range(2):
        set_grads(params, i)
        opt.step()
    twin = _copy(opt, how)
    assert type(twin) is type(opt)
    twin_params = twin.param_groups[0]["params"]
    assert all(a is not b for a, b in zip(twin_params, params))
    assert_params_equal(twin_params, params)
    assert_state_equal(twin, twin_params, opt, params)
    for key, value in opt.param_groups[0].items():
        if key != "params":
            assert twin.param_groups[0][key] == value

    snapshot = [p.detach().clone() for p in params]
    for i in range(2, 4):  # stepping the copy leaves the original alone
        set_grads(twin_params, i)
        twin.step()
    assert_params_equal(params, snapshot)
    for i in range(2, 4):
        set_grads(params, i)
        opt.step()
    assert_params_equal(twin_params, params)
    assert_state_equal(twin, twin_params, opt, params)

    calls = []  # the copy still takes hooks
    twin.register_step_post_hook(lambda o, a, k: calls.append(1))
    twin.step()
    assert calls == [1]


def _copy_or_load(opt, how):
    if how == "load_state_dict":
        target = type(opt)(clone_params(opt.param_groups[0]["params"]))
        target.load_state_dict(copy.deepcopy(opt.state_dict()))
        return target
    return _copy(opt, how)


@pytest.mark.parametrize("name", TORCH_TWINS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle", "load_state_dict"])
def test_copy_keeps_group_keys(name, how):
    params = make_params()
    opt = ours(name, params)
    twin = _copy_or_load(opt, how)
    assert set(twin.param_groups[0]) == set(opt.param_groups[0])
    assert set(twin.defaults) == set(opt.defaults)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "load_state_dict"])
def test_adabelief_copy_keeps_group_keys(how):
    params = make_params()
    opt = wrappers.AdaBelief(params)
    twin = _copy_or_load(opt, how)
    assert set(twin.param_groups[0]) == set(opt.param_groups[0])
