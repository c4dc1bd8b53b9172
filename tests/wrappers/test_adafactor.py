"""``wrappers.Adafactor``: what the generic parity test (tests/wrappers/test_parity.py) does not
reach. torch's construction and step error inputs from optim_db, its state keys for 0-d to 3-D
params, checkpoints both ways, ``eps1=None`` in a group that mixes dtypes, ``foreach``
accepted and ignored. Comparisons are bit for bit with torch's default (for-loop) path, whose op
order the kernel follows."""

import io
import re

import pytest
import torch
from torch.testing import assert_close
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

import wrappers
from tests.helpers import EXACT, same_layout_copy

ADAFACTOR = next(info for info in optim_db if info.optim_cls is torch.optim.Adafactor)
SHAPES = [(4, 3), (2, 3, 4), (5,), ()]
EXPECTED_KEYS = [["step", "row_var", "col_var"], ["step", "row_var", "col_var"], ["step", "variance"],
                 ["step", "variance"]]


def make_params(dtypes=(torch.float32,) * len(SHAPES), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype))
            for shape, dtype in zip(SHAPES, dtypes)]


def train(optimizer, params, steps, start=0, scale=1.0):
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(1000 + step)
        for index, param in enumerate(params):
            grad = torch.randn(param.shape, generator=generator, dtype=torch.float64) * scale
            param.grad = None if index == 2 and step % 3 == 1 else grad.to(param.dtype)
        optimizer.step()


def assert_same(ours, ours_params, theirs, their_params):
    for index, (mine, other) in enumerate(zip(ours_params, their_params, strict=True)):
        assert_close(mine, other, **EXACT, msg=lambda m: f"param {index}: {m}")
        mine_state, other_state = ours.state.get(mine, {}), theirs.state.get(other, {})
        assert list(mine_state) == list(other_state), f"param {index}: state keys differ"
        for key, value in other_state.items():
            assert_close(mine_state[key], value, **EXACT, msg=lambda m: f"param {index} {key}: {m}")


def test_state_keys_are_torchs():
    params = make_params()
    optimizer = wrappers.Adafactor(params)
    train(optimizer, params, 2)
    assert [list(optimizer.state[p]) for p in params] == EXPECTED_KEYS
    reference_params = make_params()
    reference = torch.optim.Adafactor(reference_params)
    train(reference, reference_params, 2)
    assert [list(reference.state[p]) for p in reference_params] == EXPECTED_KEYS
    assert_same(optimizer, params, reference, reference_params)
    state = optimizer.state[params[1]]
    assert state["row_var"].shape == (2, 3, 1) and state["col_var"].shape == (2, 1, 4)
    assert state["step"].dtype == torch.float32 and state["step"].item() == 2.0


@pytest.mark.parametrize("foreach", [None, False, True])
def test_foreach_is_accepted_and_ignored(foreach):
    params, reference_params = make_params(), make_params()
    optimizer = wrappers.Adafactor(params, weight_decay=0.1, foreach=foreach)
    assert optimizer.param_groups[0]["foreach"] is foreach
    reference = torch.optim.Adafactor(reference_params, weight_decay=0.1)
    train(optimizer, params, 4)
    train(reference, reference_params, 4)
    assert_same(optimizer, params, reference, reference_params)


def test_eps1_none_in_a_group_of_mixed_dtypes_is_torchs():
    """torch's for-loop path takes finfo(dtype).eps of the group's first param for all of them."""
    dtypes = (torch.bfloat16, torch.float32, torch.float64, torch.float32)
    params, reference_params = make_params(dtypes), make_params(dtypes)
    optimizer, reference = wrappers.Adafactor(params), torch.optim.Adafactor(reference_params)
    train(optimizer, params, 3, scale=1e-2)  # bf16's eps1 = 2^-7 binds on grads this small
    train(reference, reference_params, 3, scale=1e-2)
    assert_same(optimizer, params, reference, reference_params)


def through_disk(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(("first", "second"), [(torch.optim.Adafactor, wrappers.Adafactor),
                                               (wrappers.Adafactor, torch.optim.Adafactor)],
                         ids=["torch-to-ours", "ours-to-torch"])
def test_checkpoint_cross_loads(first, second):
    kwargs = dict(lr=0.05, weight_decay=0.1, maximize=True)
    saved_params = make_params()
    saved = first([{"params": saved_params[:2]}, {"params": saved_params[2:], "d": 1.5}], **kwargs)
    train(saved, saved_params, 3)
    loaded_params = [torch.nn.Parameter(same_layout_copy(p.detach())) for p in saved_params]
    loaded = second([{"params": loaded_params[:2]}, {"params": loaded_params[2:]}], **kwargs)
    loaded.load_state_dict(through_disk(saved.state_dict()))
    assert_same(loaded, loaded_params, saved, saved_params)
    assert loaded.state_dict()["param_groups"] == saved.state_dict()["param_groups"]
    train(saved, saved_params, 4, start=3)
    train(loaded, loaded_params, 4, start=3)
    assert_same(loaded, loaded_params, saved, saved_params)


# --- errors ---------------------------------------------------------------------------------------

def _error_inputs(kind):
    return [pytest.param(error, id=f"{index}-{re.sub(r'[^0-9A-Za-z]+', '-', error.optimizer_error_input.desc)}")
            for index, error in enumerate(ADAFACTOR.optim_error_inputs_func(device="cpu", dtype=torch.float32))
            if error.error_on == kind]


CONSTRUCTION_ERRORS = _error_inputs(OptimizerErrorEnum.CONSTRUCTION_ERROR)
STEP_ERRORS = _error_inputs(OptimizerErrorEnum.STEP_ERROR)


def test_error_inputs_were_found():
    assert len(CONSTRUCTION_ERRORS) >= 9 and len(STEP_ERRORS) >= 1


@pytest.mark.parametrize("error", STEP_ERRORS)
@pytest.mark.parametrize("cls", [torch.optim.Adafactor, wrappers.Adafactor], ids=["torch", "ours"])
def test_step_error_inputs(cls, error):
    params = [torch.nn.Parameter(p.detach().clone()) for p in error.optimizer_error_input.params]
    optimizer = cls(params, **error.optimizer_error_input.kwargs)
    for param in params:
        param.grad = torch.rand_like(param)
    with pytest.raises(error.error_type, match=error.error_regex):
        optimizer.step()


@pytest.mark.parametrize(("kwargs", "pattern"), [
    (dict(lr=-0.1), r"\blr\b"), (dict(lr=float("nan")), r"\blr\b"), (dict(eps=(None, -1e-3)), "epsilon2"),
    (dict(eps=(float("nan"), 1e-3)), re.escape("eps[0]")), (dict(eps=1e-3), r"\beps\b"),
    (dict(d=float("nan")), r"\bd\b"), (dict(beta2_decay=float("nan")), r"\bbeta2_decay\b"),
    (dict(weight_decay=-0.1), r"\bweight_decay\b"),
])
def test_bad_hyperparameters_raise_value_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        wrappers.Adafactor(make_params(), **kwargs)
    optimizer = wrappers.Adafactor(make_params())  # and as a group's override
    with pytest.raises(ValueError, match=pattern):
        optimizer.add_param_group({"params": make_params(seed=1), **kwargs})
    assert len(optimizer.param_groups) == 1


def _snapshot(optimizer):
    params = [same_layout_copy(p.detach()) for group in optimizer.param_groups for p in group["params"]]
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items() if s}
    return params, state


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm"])
@pytest.mark.parametrize(("bad_grad", "pattern"), [
    (lambda p: torch.ones_like(p).to_sparse(), "Adafactor does not support sparse gradients"),
    (None, "Adafactor does not support complex parameters"),
], ids=["sparse-grad", "complex-param"])
def test_step_error_in_second_group_changes_nothing(warm, bad_grad, pattern):
    params = make_params()
    optimizer = wrappers.Adafactor([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], weight_decay=0.1)
    train(optimizer, params, 2 if warm else 0)
    for param in params:
        param.grad = torch.ones_like(param)
    if bad_grad is None:
        extra = torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))
        optimizer.param_groups[1]["params"].append(extra)
        extra.grad = torch.ones_like(extra)
    else:
        params[3].grad = bad_grad(params[3])
    before = _snapshot(optimizer)
    for _ in range(2):  # and it keeps failing the same way
        with pytest.raises(RuntimeError, match=pattern):
            optimizer.step()
        params_now, state_now = _snapshot(optimizer)
        assert all(torch.equal(a, b) for a, b in zip(params_now, before[0]))
        assert state_now.keys() == before[1].keys()
        for key, entries in state_now.items():
            assert list(entries) == list(before[1][key])
            assert all(torch.equal(v, before[1][key][name]) for name, v in entries.items())
