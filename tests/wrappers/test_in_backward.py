"""Step in backward (``wrappers.in_backward.step_in_backward``): after ``loss.backward()`` the step
has happened and every stepped grad is None, with the numbers of the same optimizer and mode
stepping after backward (bitwise in list and flat modes, to rounding compiled); runs step while
backward runs; accumulation; unused params; schedulers; checkpoints; what is refused.
"""

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

import optkernels._compiled
import wrappers
from optkernels import UnsupportedOptionError
from wrappers.in_backward import StepInBackward, step_in_backward

EXACT = dict(rtol=0, atol=0)
MODES = {"list": {}, "flat": dict(flat=True)}
CASES = {  # optimizer: constructor keywords (SGD: state the kernel makes; NAdam: 0-d state beside step)
    "AdamW": dict(lr=0.01, weight_decay=0.1),
    "Adam": dict(lr=0.01, amsgrad=True),
    "SGD": dict(lr=0.05, momentum=0.9),
    "NAdam": dict(lr=0.01),
}
RUN_BYTES = 200  # a few params per run on the tiny models: runs of one and of several params


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    inputs, targets = torch.randn(16, 6, generator=generator), torch.randn(16, 3, generator=generator)
    return ((model(inputs) - targets) ** 2).mean()


def _pair(name: str = "AdamW", mode: dict | None = None, **kwargs):
    """Two copies of the model and optimizer; the first steps in backward."""
    kwargs = {**CASES[name], **(mode or {}), **kwargs}
    ours_model, model = _model(), _model()
    ours = getattr(wrappers, name)(ours_model.parameters(), **kwargs)
    reference = getattr(wrappers, name)(model.parameters(), **kwargs)
    return ours_model, ours, model, reference


def _assert_same(ours_model, ours, model, reference, tolerance=EXACT):
    for mine, theirs in zip(ours_model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, **tolerance)
        assert list(ours.state[mine]) == list(reference.state[theirs])
        for key, value in reference.state[theirs].items():
            torch.testing.assert_close(ours.state[mine][key], value, **(EXACT if key == "step" else tolerance))


def _train_both(ours_model, ours, model, reference, steps, first=0):
    for step in range(first, first + steps):
        _loss(ours_model, step).backward()
        ours.step()  # does nothing: backward stepped
        ours.zero_grad()
        assert all(param.grad is None for param in ours_model.parameters())
        _loss(model, step).backward()
        reference.step()
        reference.zero_grad()


# --- numbers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_equals_stepping_after_backward_bitwise(name, mode):
    ours_model, ours, model, reference = _pair(name, MODES[mode])
    handle = step_in_backward(ours, run_bytes=RUN_BYTES)
    assert isinstance(handle, StepInBackward)
    _train_both(ours_model, ours, model, reference, steps=4)
    _assert_same(ours_model, ours, model, reference)


@pytest.fixture
def dynamo_without_inductor(monkeypatch):
    """compiled=True's path (dynamo traces the rules, flat slices go through them) with dynamo's eager
    backend: inductor's code for the rules is tested in test_modes and test_training, and a cold
    inductor compile alone is beyond this file's time budget."""
    real = torch.compile

    def compile_eagerly(function, **options):
        options.pop("options", None)
        return real(function, **{**options, "backend": "eager"})
    optkernels._compiled._runner.cache_clear()  # runners built here are not kept for other tests
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    yield
    optkernels._compiled._runner.cache_clear()


@pytest.mark.parametrize("mode", [dict(compiled=True), dict(flat=True, compiled=True)], ids=["compiled", "flat-compiled"])
def test_compiled_equals_stepping_after_backward_to_rounding(mode, dynamo_without_inductor):
    ours_model, ours, model, reference = _pair("AdamW", mode)
    step_in_backward(ours, run_bytes=RUN_BYTES)
    _train_both(ours_model, ours, model, reference, steps=3)
    _assert_same(ours_model, ours, model, reference, {})


@pytest.mark.parametrize("name", ["Adafactor", "Muon"])
def test_whole_tensor_optimizers_step_param_by_param(name):
    """Their update reads a whole matrix: a run is whole params, so each steps as after backward."""
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, 8, bias=False), nn.Linear(8, 3, bias=False)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    ours, reference = (getattr(wrappers, name)(model.parameters(), lr=0.01) for model in models)
    step_in_backward(ours, run_bytes=1)
    _train_both(models[0], ours, models[1], reference, steps=3)
    _assert_same(models[0], ours, models[1], reference)


@pytest.mark.parametrize("mode", MODES)
def test_runs_step_and_free_their_grads_while_backward_runs(mode):
    """The last layer's run steps, and its grads are gone, before backward reaches the first layer."""
    model = _model()
    optimizer = wrappers.AdamW(model.parameters(), lr=0.01, **MODES[mode])
    step_in_backward(optimizer, run_bytes=RUN_BYTES)
    seen = []
    last = model[4].weight

    def first_layer_hook(param):  # the first layer's weight: its grad is the last backward makes
        seen.append((not torch.equal(last, before), last.grad is None))
    model[0].weight.register_post_accumulate_grad_hook(first_layer_hook)
    for step in range(2):
        before = last.detach().clone()
        _loss(model, step).backward()
    assert seen == [(True, True), (True, True)]
    if mode == "flat":  # one buffer per run, its grads freed: no grad buffer is left
        assert all(run.grad_buffer is None for layout in optimizer._layouts.values() for run in layout.runs)
        assert len(optimizer._layouts[0].runs) > 1


# --- which params step ----------------------------------------------------------------------------------
class _Branches(nn.Module):
    """Two heads: ``use`` says which run this pass, so the other's params get no grad."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk, self.left, self.right = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(8, 3)
        self.use = ("left", "right")

    def forward(self, inputs):
        hidden = torch.tanh(self.trunk(inputs))
        return sum(getattr(self, name)(hidden) for name in self.use)


def _branch_loss(model, step, use):
    model.use = use
    generator = torch.Generator().manual_seed(step)
    inputs, targets = torch.randn(16, 6, generator=generator), torch.randn(16, 3, generator=generator)
    return ((model(inputs) - targets) ** 2).mean()


@pytest.mark.parametrize("mode", MODES)
def test_params_without_grads_do_not_step(mode):
    """A head unused in a pass keeps its params and step counts, as torch.optim (its run, shared with a
    used head's params, steps at the end of the pass with those)."""
    models = [_Branches(), _Branches()]
    ours, reference = (wrappers.Adam(model.parameters(), lr=0.01, **MODES[mode]) for model in models)
    step_in_backward(ours, run_bytes=10_000)  # one run: left and right together
    uses = [("left", "right"), ("left",), ("right",), ("left",)]
    for step, use in enumerate(uses):
        for model, optimizer in zip(models, (ours, reference)):
            _branch_loss(model, step, use).backward()
            optimizer.step()
            optimizer.zero_grad()
    _assert_same(models[0], ours, models[1], reference)
    assert ours.state[models[0].right.weight]["step"].item() == 2


@pytest.mark.parametrize("mode", MODES)
def test_accumulation_equals_stepping_after_k_backwards(mode):
    """k micro-batches accumulate, the k-th backward steps; a head used only in an earlier
    micro-batch still steps (its grad waits in .grad), as after k backwards."""
    models = [_Branches(), _Branches()]
    ours, reference = (wrappers.AdamW(model.parameters(), lr=0.01, **MODES[mode]) for model in models)
    handle = step_in_backward(ours, accumulation_steps=3, run_bytes=RUN_BYTES)
    uses = [("left", "right"), ("left",), ("left",)]
    for step in range(2):
        for micro, use in enumerate(uses):
            _branch_loss(models[0], 10 * step + micro, use).backward()
            ours.step()  # a loop that steps every micro-batch: nothing happens
            ours.zero_grad()
            waiting = micro < 2
            assert all((param.grad is not None) == waiting for param in models[0].parameters())
            assert handle.micro_batch == (micro + 1) % 3
            _branch_loss(models[1], 10 * step + micro, use).backward()
        reference.step()
        reference.zero_grad()
    _assert_same(models[0], ours, models[1], reference)


def test_flush_steps_a_partial_accumulation_window():
    ours_model, ours, model, reference = _pair()
    handle = step_in_backward(ours, accumulation_steps=4)
    for micro in range(2):
        _loss(ours_model, micro).backward()
        _loss(model, micro).backward()
    handle.flush()
    reference.step()
    assert all(param.grad is None for param in ours_model.parameters()) and handle.micro_batch == 0
    _assert_same(ours_model, ours, model, reference)


# --- the rest of the optimizer API ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_scheduler_drives_the_lr_read_at_each_step(mode):
    ours_model, ours, model, reference = _pair("AdamW", MODES[mode])
    step_in_backward(ours, run_bytes=RUN_BYTES)
    schedules = [lr_scheduler.CosineAnnealingLR(optimizer, T_max=4) for optimizer in (ours, reference)]
    for step in range(4):
        _train_both(ours_model, ours, model, reference, steps=1, first=step)
        for schedule in schedules:
            schedule.step()
    assert ours.param_groups[0]["lr"] == reference.param_groups[0]["lr"] != 0.01
    _assert_same(ours_model, ours, model, reference)


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_round_trip_through_torch_optim(mode):
    """Ours in backward saves what torch.optim loads; torch's checkpoint loads into ours attached."""
    ours_model, ours, model, _ = _pair("AdamW", MODES[mode])
    step_in_backward(ours, run_bytes=RUN_BYTES)
    for step in range(2):
        _loss(ours_model, step).backward()
    model.load_state_dict(ours_model.state_dict())
    theirs = torch.optim.AdamW(model.parameters(), **CASES["AdamW"], foreach=True)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))
    for step in range(2, 4):  # torch.optim continues
        _loss(model, step).backward()
        theirs.step()
        theirs.zero_grad()
    # (copies: load_state_dict keeps the very tensors it is given where their dtype and device fit)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))  # and ours, still in backward, takes it back
    ours_model.load_state_dict(model.state_dict())
    reference_model = _model()
    reference_model.load_state_dict(model.state_dict())
    reference = wrappers.AdamW(reference_model.parameters(), **CASES["AdamW"], **MODES[mode])
    reference.load_state_dict(copy.deepcopy(theirs.state_dict()))
    _train_both(ours_model, ours, reference_model, reference, steps=2, first=4)
    _assert_same(ours_model, ours, reference_model, reference)


def test_remove_add_param_group_and_copies():
    ours_model, ours, model, reference = _pair("Adam", dict(flat=True))
    handle = step_in_backward(ours, run_bytes=RUN_BYTES)
    extra = [nn.Parameter(torch.ones(3)) for _ in range(2)]
    ours.add_param_group({"params": [extra[0]]})
    reference.add_param_group({"params": [extra[1]]})
    for step in range(2):
        for which, (net, optimizer, param) in enumerate(((ours_model, ours, extra[0]), (model, reference, extra[1]))):
            (_loss(net, step) + (param * step).sum()).backward()
            if which:
                optimizer.step()
                optimizer.zero_grad()
    assert extra[0].grad is None
    torch.testing.assert_close(extra[0], extra[1], **EXACT)
    copied = copy.deepcopy(ours)  # a copy is not attached: its step() steps
    assert copied._in_backward is None and pickle.loads(pickle.dumps(ours))._in_backward is None
    handle.remove()
    assert ours._in_backward is None
    _train_both_after = [(ours_model, ours), (model, reference)]
    for step in range(2, 4):  # detached: steps after backward again, runs back to one buffer
        for net, optimizer in _train_both_after:
            _loss(net, step).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert len(ours._layouts[0].runs) == 1
    _assert_same(ours_model, ours, model, reference)


# --- what is refused ------------------------------------------------------------------------------------
def test_a_closure_is_refused():
    _, ours, _, _ = _pair()
    step_in_backward(ours)
    with pytest.raises(RuntimeError, match="closure"):
        ours.step(lambda: 0.0)


def test_global_norm_clipping_lbfgs_and_torch_optimizers_are_refused():
    model = _model()
    with pytest.raises(UnsupportedOptionError, match="global grad norm"):
        step_in_backward(wrappers.AdamW(model.parameters()), max_grad_norm=1.0)
    with pytest.raises(UnsupportedOptionError, match="LBFGS"):
        step_in_backward(wrappers.LBFGS(model.parameters()))
    with pytest.raises(TypeError, match="optimizer of wrappers"):
        step_in_backward(torch.optim.AdamW(model.parameters()))
    with pytest.raises(ValueError, match="accumulation_steps"):
        step_in_backward(wrappers.AdamW(model.parameters()), accumulation_steps=0)
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        step_in_backward(wrappers.AdamW(model.parameters()), ddp=model)
    optimizer = wrappers.AdamW(model.parameters())
    step_in_backward(optimizer)
    with pytest.raises(RuntimeError, match="already"):
        step_in_backward(optimizer)


def test_sparse_grads_are_refused():
    embedding = nn.Embedding(10, 3, sparse=True)
    optimizer = wrappers.Adagrad(embedding.parameters())
    step_in_backward(optimizer)
    with pytest.raises(RuntimeError, match="sparse grad"):
        embedding(torch.tensor([1, 2])).sum().backward()


def test_non_leaf_params_are_refused():
    leaf = nn.Parameter(torch.ones(3))
    optimizer = wrappers.SGD([leaf], lr=0.1)
    optimizer.param_groups[0]["params"].append(leaf * 2)  # torch.optim refuses it in add_param_group
    with pytest.raises(ValueError, match="not a leaf"):
        step_in_backward(optimizer)


def test_a_distributed_run_without_ddp_is_refused(monkeypatch):
    """A hook sees this rank's grad before DDP all-reduces it: without ``ddp=`` it cannot step."""
    model = _model()
    optimizer = wrappers.AdamW(model.parameters())
    step_in_backward(optimizer)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *args, **kwargs: 2)
    before = [param.detach().clone() for param in model.parameters()]
    with pytest.raises(UnsupportedOptionError, match="ddp=model"):
        _loss(model, 0).backward()
    assert all(torch.equal(param, old) for param, old in zip(model.parameters(), before))
