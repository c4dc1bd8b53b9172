"""``flat=True``: what a training loop does to its params and grads, and the flat buffers survive it.

Each test steps a model with ``wrappers.Adam(flat=True)`` and a copy with ``torch.optim.Adam``
(whose foreach op order ours follows, so results are bitwise equal), doing the same things to
both: replacing ``.grad``, ``model.zero_grad()``, adding a param group, round trips of
``state_dict()``, new ``param.data``, sparse grads.
"""

import copy
import io

import pytest
import torch
from torch import nn

import wrappers
from optkernels import UnsupportedOptionError
from tests.helpers import EXACT


def _model(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    model[0].weight.data = model[0].weight.data.t().contiguous().t()  # a transposed param keeps its strides
    return model


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    dtype = next(model.parameters()).dtype
    inputs, targets = torch.randn(16, 6, generator=generator, dtype=dtype), torch.randn(16, 3, generator=generator, dtype=dtype)
    return ((model(inputs) - targets) ** 2).mean()


def _pair(**kwargs):
    ours_model, torch_model = _model(), _model()
    ours = wrappers.Adam(ours_model.parameters(), lr=0.01, flat=True, **kwargs)
    reference = torch.optim.Adam(torch_model.parameters(), lr=0.01, foreach=True, **kwargs)
    return ours_model, ours, torch_model, reference


def _train(model, optimizer, steps, start=0, zero=lambda model, optimizer: optimizer.zero_grad()):
    for step in range(start, start + steps):
        zero(model, optimizer)
        _loss(model, step).backward()
        optimizer.step()


def _assert_same(ours_model, ours, torch_model, reference):
    for mine, theirs in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, **EXACT)
        assert mine.stride() == theirs.stride()
        mine_state, their_state = ours.state[mine], reference.state[theirs]
        assert list(mine_state) == list(their_state)
        for key in their_state:
            torch.testing.assert_close(mine_state[key], their_state[key], **EXACT)


def _flat_buffers(optimizer):
    return [run for layout in optimizer._layouts.values() for run in layout.runs]


def test_params_grads_and_state_become_views_of_one_buffer_each():
    ours_model, ours, torch_model, reference = _pair()
    _train(ours_model, ours, 2)
    _train(torch_model, reference, 2)
    (buffers,) = _flat_buffers(ours)
    params = list(ours_model.parameters())
    assert {p.untyped_storage().data_ptr() for p in params} == {buffers.param_buffer.untyped_storage().data_ptr()}
    assert {p.grad.untyped_storage().data_ptr() for p in params} == {buffers.grad_buffer.untyped_storage().data_ptr()}
    for name in ("exp_avg", "exp_avg_sq", "step"):
        assert {ours.state[p][name].untyped_storage().data_ptr() for p in params} == {
            buffers.state[name].untyped_storage().data_ptr()}
    _assert_same(ours_model, ours, torch_model, reference)


@pytest.mark.parametrize("zero", [
    pytest.param(lambda model, optimizer: optimizer.zero_grad(), id="optimizer.zero_grad"),
    pytest.param(lambda model, optimizer: model.zero_grad(), id="model.zero_grad"),
    pytest.param(lambda model, optimizer: optimizer.zero_grad(set_to_none=False), id="set_to_none=False"),
])
def test_zero_grad_styles(zero):
    ours_model, ours, torch_model, reference = _pair(amsgrad=True)
    _train(ours_model, ours, 6, zero=zero)
    _train(torch_model, reference, 6, zero=lambda model, optimizer: optimizer.zero_grad(set_to_none=False))
    _assert_same(ours_model, ours, torch_model, reference)


def test_zero_grad_sets_grads_to_none_and_frees_the_grad_buffer():
    ours_model, ours, _, _ = _pair()
    _train(ours_model, ours, 2)
    (buffers,) = _flat_buffers(ours)
    assert all(p.grad is view for p, view in zip(ours_model.parameters(), buffers.grad_views))
    ours.zero_grad()
    assert all(p.grad is None for p in ours_model.parameters())
    assert buffers.grad_buffer is None  # as torch frees the grads: nothing holds that memory
    _loss(ours_model, 2).backward()  # the hook moves each grad into a new buffer as it comes
    assert all(p.grad is view for p, view in zip(ours_model.parameters(), buffers.grad_views))


def test_zero_grad_without_set_to_none_zeroes_the_views_and_backward_accumulates_into_them():
    ours_model, ours, torch_model, reference = _pair()
    _train(ours_model, ours, 2)
    _train(torch_model, reference, 2)
    (buffers,) = _flat_buffers(ours)
    views = list(buffers.grad_views)
    for model, optimizer in ((ours_model, ours), (torch_model, reference)):
        optimizer.zero_grad(set_to_none=False)
        _loss(model, 2).backward()
        _loss(model, 3).backward()
        optimizer.step()
    assert all(p.grad is view for p, view in zip(ours_model.parameters(), views))
    _assert_same(ours_model, ours, torch_model, reference)


def test_replaced_grads_are_gathered():
    ours_model, ours, torch_model, reference = _pair()
    _train(ours_model, ours, 2)
    _train(torch_model, reference, 2)
    for step, (mine, theirs) in enumerate(zip(ours_model.parameters(), torch_model.parameters())):
        new = torch.randn(mine.shape, generator=torch.Generator().manual_seed(step))
        mine.grad, theirs.grad = new.clone(), new.clone()
    ours.step()
    reference.step()
    _assert_same(ours_model, ours, torch_model, reference)
    _train(ours_model, ours, 2, start=2)
    _train(torch_model, reference, 2, start=2)
    _assert_same(ours_model, ours, torch_model, reference)


def test_a_param_without_grad_is_skipped_then_joins():
    ours_model, ours, torch_model, reference = _pair()
    _train(ours_model, ours, 2, zero=lambda model, optimizer: model.zero_grad())
    _train(torch_model, reference, 2)
    for model, optimizer in ((ours_model, ours), (torch_model, reference)):
        model.zero_grad()
        _loss(model, 7).backward()
        model[2].bias.grad = None
        optimizer.step()
    _assert_same(ours_model, ours, torch_model, reference)
    _train(ours_model, ours, 3, start=3, zero=lambda model, optimizer: model.zero_grad())
    _train(torch_model, reference, 3, start=3)
    _assert_same(ours_model, ours, torch_model, reference)


def test_add_param_group():
    ours_model, ours, torch_model, reference = _pair()
    extra = [nn.Parameter(torch.randn(5, generator=torch.Generator().manual_seed(3))) for _ in range(2)]
    _train(ours_model, ours, 2)
    _train(torch_model, reference, 2)
    ours.add_param_group({"params": [extra[0]], "lr": 0.1})
    reference.add_param_group({"params": [extra[1]], "lr": 0.1})
    for step in range(3):
        for model, optimizer, param in ((ours_model, ours, extra[0]), (torch_model, reference, extra[1])):
            optimizer.zero_grad()
            (_loss(model, step) + (param ** 2).sum() * step).backward()
            optimizer.step()
    _assert_same(ours_model, ours, torch_model, reference)
    torch.testing.assert_close(extra[0], extra[1], **EXACT)
    assert len(_flat_buffers(ours)) == 2


def _saved(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def test_state_dict_is_torchs_per_param_format_both_ways():
    ours_model, ours, torch_model, reference = _pair()
    _train(ours_model, ours, 3)
    _train(torch_model, reference, 3)
    saved = _saved(ours.state_dict())
    torch_saved = reference.state_dict()
    assert saved["state"].keys() == torch_saved["state"].keys()
    for index, param in enumerate(ours_model.parameters()):
        assert list(saved["state"][index]) == list(torch_saved["state"][index])
        assert saved["state"][index]["exp_avg"].shape == param.shape
    # ours -> torch, torch -> ours (both flat and not), then all train on alike
    from_ours_model, from_torch_model = copy.deepcopy(torch_model), copy.deepcopy(ours_model)
    from_ours = torch.optim.Adam(from_ours_model.parameters(), lr=0.01, foreach=True)
    from_ours.load_state_dict(saved)
    from_torch = wrappers.Adam(from_torch_model.parameters(), lr=0.01, flat=True)
    from_torch.load_state_dict(_saved(torch_saved))
    for model, optimizer in ((ours_model, ours), (torch_model, reference), (from_ours_model, from_ours),
                             (from_torch_model, from_torch)):
        _train(model, optimizer, 3, start=3)
    _assert_same(ours_model, ours, torch_model, reference)
    _assert_same(from_torch_model, from_torch, from_ours_model, from_ours)
    _assert_same(ours_model, ours, from_ours_model, from_ours)


def test_load_state_dict_into_a_flat_optimizer_mid_training():
    ours_model, ours, torch_model, reference = _pair()
    _train(ours_model, ours, 3)
    _train(torch_model, reference, 3)
    ours.load_state_dict(_saved(reference.state_dict()))
    _train(ours_model, ours, 2, start=3)
    _train(torch_model, reference, 2, start=3)
    _assert_same(ours_model, ours, torch_model, reference)


def test_new_param_data_is_picked_up():
    ours_model, ours, torch_model, reference = _pair()
    _train(ours_model, ours, 2)
    _train(torch_model, reference, 2)
    new = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    ours_model[2].weight.data = new.clone()
    torch_model[2].weight.data = new.clone()
    _train(ours_model, ours, 2, start=2)
    _train(torch_model, reference, 2, start=2)
    _assert_same(ours_model, ours, torch_model, reference)


def test_deepcopy_keeps_flat_and_steps_alike():
    ours_model, ours, _, _ = _pair()
    _train(ours_model, ours, 2)
    copied_model = copy.deepcopy(ours_model)
    copied = wrappers.Adam(copied_model.parameters(), lr=0.01, flat=True)
    copied.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert copy.deepcopy(ours).flat
    _train(ours_model, ours, 2, start=2)
    _train(copied_model, copied, 2, start=2)
    for mine, theirs in zip(ours_model.parameters(), copied_model.parameters()):
        torch.testing.assert_close(mine, theirs, **EXACT)


def _last_layer_moved(move):
    """A flat Adam and torch's over models whose last layer ``move`` puts elsewhere, 3 steps."""
    ours_model, torch_model = _model(), _model()
    move(ours_model[2])
    move(torch_model[2])
    ours = wrappers.Adam(ours_model.parameters(), lr=0.01, flat=True)
    reference = torch.optim.Adam(torch_model.parameters(), lr=0.01, foreach=True)
    for step in range(3):
        for model, optimizer in ((ours_model, ours), (torch_model, reference)):
            optimizer.zero_grad()
            sum(p.sum().cpu() * (step + 1) for p in model.parameters()).backward()
            optimizer.step()
    return ours_model, ours, torch_model, reference


def test_mixed_dtypes_get_one_buffer_each():
    ours_model, ours, torch_model, reference = _last_layer_moved(nn.Module.double)
    assert sorted(str(b.param_buffer.dtype) for b in _flat_buffers(ours)) == ["torch.float32", "torch.float64"]
    _assert_same(ours_model, ours, torch_model, reference)


def test_sparse_grads_take_the_list_path():
    def run(**flat):
        torch.manual_seed(0)
        embedding = nn.Embedding(10, 4, sparse=True)
        optimizer = wrappers.Adagrad(embedding.parameters(), lr=0.1, **flat)
        for step in range(3):
            optimizer.zero_grad()
            embedding(torch.tensor([step, 2 * step])).sum().backward()
            optimizer.step()
        return embedding, optimizer
    (flat_embedding, flat), (plain_embedding, _) = run(flat=True), run()
    torch.testing.assert_close(flat_embedding.weight, plain_embedding.weight, **EXACT)
    assert flat.flat and flat_embedding.weight.grad.is_sparse  # the mode stays; sparse grads take the list path


def test_a_failing_step_changes_nothing():
    ours_model, ours, _, _ = _pair()
    _train(ours_model, ours, 2)
    before = copy.deepcopy((list(ours_model.parameters()), ours.state_dict()))
    ours.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr"):
        ours.step()
    after = (list(ours_model.parameters()), ours.state_dict())
    for mine, theirs in zip(before[0], after[0]):
        torch.testing.assert_close(mine, theirs, **EXACT)
    for index, state in before[1]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(after[1]["state"][index][key], value, **EXACT)


@pytest.mark.parametrize("name", ["Adafactor", "Muon"])
def test_non_elementwise_optimizers_refuse_flat(name):
    optimizer_class = getattr(wrappers, name)
    assert not optimizer_class.elementwise
    with pytest.raises((UnsupportedOptionError, TypeError), match="flat"):
        optimizer_class([nn.Parameter(torch.ones(2, 2))], flat=True)


@pytest.mark.parametrize("option", ["flat", "compiled"])
def test_options_must_be_bools(option):
    with pytest.raises(TypeError, match=option):
        wrappers.Adam([nn.Parameter(torch.ones(2))], **{option: "yes"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_params_on_two_devices_get_one_buffer_each():
    ours_model, ours, torch_model, reference = _last_layer_moved(nn.Module.cuda)
    assert sorted(b.param_buffer.device.type for b in _flat_buffers(ours)) == ["cpu", "cuda"]
    for mine, theirs in zip(ours_model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(mine, theirs)
