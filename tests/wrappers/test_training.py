"""The fast modes in the loops people really run: a mode changes speed, never behaviour.

Each test does the same things to a model trained by torch.optim and to one trained by our
wrapper in every mode (list, flat, compiled, flat+compiled) and compares: which params step,
resuming from a checkpoint, GradScaler's skipped steps, the step-in-backward hook pattern,
torch.compile around ``step()``, and a step that fails.
"""

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

import optkernels._compiled
import wrappers
from optkernels._torch_private import dynamo_counters

MODES = {"list": {}, "flat": dict(flat=True), "compiled": dict(compiled=True),
         "flat-compiled": dict(flat=True, compiled=True)}
EXACT = dict(rtol=0, atol=0)


def _tolerance(mode: str) -> dict:
    return {} if "compiled" in mode else EXACT  # compiled rules round fused ops differently


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    inputs, targets = torch.randn(16, 6, generator=generator), torch.randn(16, 3, generator=generator)
    return ((model(inputs) - targets) ** 2).mean()


def _pair(mode: str, name: str = "AdamW", **kwargs):
    ours_model, torch_model = _model(), _model()
    ours = getattr(wrappers, name)(ours_model.parameters(), lr=0.01, **kwargs, **MODES[mode])
    # foreach: the path every kernel here equals bit for bit (NAdam and RAdam differ from the for-loop)
    reference = getattr(torch.optim, name)(torch_model.parameters(), lr=0.01, foreach=True, **kwargs)
    return ours_model, ours, torch_model, reference


def _assert_same(ours_model, ours, torch_model, reference, tolerance=EXACT):
    for mine, theirs in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, **tolerance)
        assert (mine.grad is None) == (theirs.grad is None)
        assert list(ours.state[mine]) == list(reference.state[theirs])
        for key, value in reference.state[theirs].items():
            torch.testing.assert_close(ours.state[mine][key], value, **tolerance)


def _train(pairs, steps):
    """The same loop for each (model, optimizer): zero_grad, backward, step."""
    for step in steps:
        for model, optimizer in pairs:
            optimizer.zero_grad()
            _loss(model, step).backward()
            optimizer.step()


# --- grad semantics -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_step_without_backward_after_zero_grad_changes_nothing(mode):
    ours_model, ours, torch_model, reference = _pair(mode)
    _train([(ours_model, ours), (torch_model, reference)], range(2))
    before = [param.detach().clone() for param in ours_model.parameters()]
    steps = [ours.state[param]["step"].item() for param in ours_model.parameters()]
    ours.zero_grad()
    assert all(param.grad is None for param in ours_model.parameters())  # as torch's zero_grad
    ours.step()
    for param, value, count in zip(ours_model.parameters(), before, steps):
        torch.testing.assert_close(param, value, **EXACT)
        assert ours.state[param]["step"].item() == count


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["AdamW", "SGD", "NAdam", "Adagrad"])
def test_a_param_with_a_grad_on_even_steps_only_steps_as_in_torch(name, mode):
    kwargs = dict(momentum=0.9) if name == "SGD" else {}
    ours_model, ours, torch_model, reference = _pair(mode, name, **kwargs)
    for step in range(10):
        for model, optimizer in ((ours_model, ours), (torch_model, reference)):
            optimizer.zero_grad()
            loss = _loss(model, step)
            if step % 2 == 0:  # the last layer's bias takes part on even steps only
                loss = loss + (model[2].bias ** 2).sum()
            else:
                model[2].bias.requires_grad_(False)
            loss.backward()
            model[2].bias.requires_grad_(True)
            optimizer.step()
    _assert_same(ours_model, ours, torch_model, reference, _tolerance(mode))
    assert {id(key) for key in ours.state} <= {id(param) for param in ours_model.parameters()}
    if name != "SGD":
        assert ours.state[ours_model[2].bias]["step"].item() == 5


@pytest.mark.parametrize("name", ["AdamW", "SGD"])  # SGD: the kernel makes the first momentum
def test_a_param_whose_first_grad_comes_late_joins_the_flat_buffer(name):
    ours_model, ours, torch_model, reference = _pair("flat", name, **(dict(momentum=0.9) if name == "SGD" else {}))
    for step in range(6):
        for model, optimizer in ((ours_model, ours), (torch_model, reference)):
            optimizer.zero_grad()
            _loss(model, step).backward()
            if step < 3:
                model[0].weight.grad = None
            optimizer.step()
    _assert_same(ours_model, ours, torch_model, reference)
    assert {id(key) for key in ours.state} == {id(param) for param in ours_model.parameters()}
    (layout,) = ours._layouts.values()
    (run,) = layout.runs
    assert not layout.listed and all(run.stateful)  # no silent switch-off: every param is in the buffer
    buffer = run.param_buffer.untyped_storage().data_ptr()
    assert all(param.untyped_storage().data_ptr() == buffer for param in ours_model.parameters())
    state_name = "momentum_buffer" if name == "SGD" else "exp_avg"
    assert ours.state[ours_model[0].weight][state_name].untyped_storage().data_ptr() == \
        run.state[state_name].untyped_storage().data_ptr()


@pytest.mark.parametrize("mode", MODES)
def test_gradient_accumulation_and_grad_scaler_skip_inf_steps(mode):
    ours_model, ours, torch_model, reference = _pair(mode, "Adam")
    pairs = [(ours_model, ours, torch.amp.GradScaler("cpu", init_scale=4.0)),
             (torch_model, reference, torch.amp.GradScaler("cpu", init_scale=4.0))]
    for step in range(5):
        for model, optimizer, scaler in pairs:
            optimizer.zero_grad()
            for micro in range(2):
                scaler.scale(_loss(model, 10 * step + micro)).backward()
            if step == 2:  # an overflow: GradScaler skips the step
                model[0].bias.grad[0] = float("inf")
            before = copy.deepcopy(optimizer.state_dict()) if step == 2 else None
            scaler.step(optimizer)
            scaler.update()
            if before is not None:
                assert all(torch.equal(before["state"][i]["step"], optimizer.state_dict()["state"][i]["step"])
                           for i in before["state"])
    _assert_same(ours_model, ours, torch_model, reference, _tolerance(mode))


# --- modes survive ------------------------------------------------------------------------------
def _saved(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("mode", MODES)
def test_modes_survive_load_state_dict_deepcopy_and_pickling(mode):
    ours_model, ours, torch_model, reference = _pair(mode)
    _train([(ours_model, ours), (torch_model, reference)], range(2))
    expected = (ours.flat, ours.compiled)
    ours.load_state_dict(_saved(ours.state_dict()))
    assert (ours.flat, ours.compiled) == expected
    assert (copy.deepcopy(ours).flat, copy.deepcopy(ours).compiled) == expected
    assert (pickle.loads(pickle.dumps(ours)).flat, pickle.loads(pickle.dumps(ours)).compiled) == expected
    assert all("flat" not in group and "compiled" not in group for group in ours.state_dict()["param_groups"])
    _train([(ours_model, ours), (torch_model, reference)], range(2, 5))  # resumed: as torch's unbroken run
    _assert_same(ours_model, ours, torch_model, reference, _tolerance(mode))
    if ours.flat:
        assert ours._layouts and all(layout.runs for layout in ours._layouts.values())


# --- step in backward, the tutorial's pattern ----------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_step_in_a_post_accumulate_grad_hook_frees_every_grad(mode):
    """torch's tutorial "How to save memory by fusing the optimizer step into the backward pass":
    one optimizer per param, stepped and zeroed in the param's post-accumulate-grad hook."""
    models = {}
    for which, factory in (("ours", lambda p: wrappers.Adam([p], lr=0.01, **MODES[mode])),
                           ("torch", lambda p: torch.optim.Adam([p], lr=0.01))):
        model = _model()
        optimizers = {param: factory(param) for param in model.parameters()}

        def hook(param, optimizers=optimizers):
            optimizers[param].step()
            optimizers[param].zero_grad()
        for param in model.parameters():
            param.register_post_accumulate_grad_hook(hook)
        for step in range(3):
            _loss(model, step).backward()
            assert all(param.grad is None for param in model.parameters())
        models[which] = model
    for mine, theirs in zip(models["ours"].parameters(), models["torch"].parameters()):
        torch.testing.assert_close(mine, theirs, **_tolerance(mode))


# --- torch.compile around step() ---------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_torch_compile_around_step_compiles_at_most_twice_over_a_cosine_schedule(mode):
    torch._dynamo.reset()
    ours_model, ours, torch_model, reference = _pair(mode, "Adam")
    schedules = [lr_scheduler.CosineAnnealingLR(optimizer, T_max=20) for optimizer in (ours, reference)]

    @torch.compile(fullgraph=False)
    def ours_step():
        ours.step()

    graphs = []
    for step in range(20):
        for model, optimizer in ((ours_model, ours), (torch_model, reference)):
            optimizer.zero_grad()
            _loss(model, step).backward()
        before = dynamo_counters()["stats"]["unique_graphs"]
        ours_step()
        graphs.append(dynamo_counters()["stats"]["unique_graphs"] - before)
        reference.step()
        for schedule in schedules:
            schedule.step()
    assert sum(graphs) <= 2, f"graphs compiled per step: {graphs}"
    _assert_same(ours_model, ours, torch_model, reference, dict(rtol=1e-5, atol=1e-6))


# --- failures -------------------------------------------------------------------------------------
def test_any_compiler_failure_falls_back_to_eager_rules_with_one_warning(monkeypatch):
    def broken(function, **options):
        def fail(*args, **kwargs):
            raise AssertionError("unbound symbols (a compiler failure)")
        return fail
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(optkernels._compiled, "_EAGER", set())
    optkernels._compiled._runner.cache_clear()
    try:
        ours_model, ours, torch_model, reference = _pair("flat-compiled")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _train([(ours_model, ours), (torch_model, reference)], range(3))
        assert len([w for w in caught if "torch.compile failed" in str(w.message)]) == 1
        _assert_same(ours_model, ours, torch_model, reference, {})
    finally:
        optkernels._compiled._runner.cache_clear()


@pytest.mark.parametrize("mode", MODES)
def test_a_step_whose_kernel_raises_leaves_step_counts_and_state_as_they_were(mode, monkeypatch):
    ours_model, ours, _, _ = _pair(mode)
    _train([(ours_model, ours)], range(2))
    before = copy.deepcopy(ours.state_dict())
    params = [param.detach().clone() for param in ours_model.parameters()]

    def failing(*args, **kwargs):
        raise RuntimeError("the kernel failed")
    monkeypatch.setattr(type(ours), "_update", failing)
    with pytest.raises(RuntimeError, match="the kernel failed"):
        ours.step()
    after = ours.state_dict()
    for index, param_state in before["state"].items():
        for key, value in param_state.items():
            torch.testing.assert_close(after["state"][index][key], value, **EXACT)
    for param, value in zip(ours_model.parameters(), params):
        torch.testing.assert_close(param, value, **EXACT)
