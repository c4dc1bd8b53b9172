"""``wrappers.SparseAdam`` against ``torch.optim.SparseAdam``: every optim_db configuration of it
on CPU, its construction error inputs, checkpoints both ways, and what a step refuses.

SparseAdam needs sparse grads, so the generic parity test skips it (``dedicated``). Here: an
embedding-like matrix whose grads are sparse over rows (as ``nn.Embedding(sparse=True)`` makes
them), the same matrix transposed (a non-contiguous param), a vector, a matrix with grads sparse
over both dims, and a 0-d param; grads uncoalesced with repeated indices on some steps,
coalesced on others, storing nothing on one step; two param groups; a param with no grad on
some steps and one never trained. The kernel runs torch's ops in torch's order, so every
comparison is bit for bit, in every dtype torch takes (bf16 included).
"""

import io
import re

import pytest
import torch
from torch.testing import assert_close
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

import wrappers
from tests.helpers import EXACT, laid_out, same_layout_copy

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
STEPS = 8
# (shape, layout, sparse dims of its grad)
PARAMS = [((10, 4), "contiguous", 1), ((12, 3), "transposed", 1), ((9,), "contiguous", 1),
          ((5, 6), "contiguous", 2), ((), "contiguous", 0)]
SKIPPED_EVERY = 3  # PARAMS[2] has no grad on every third step, so its step count lags
EMPTY_ON_STEP = 4  # PARAMS[0]'s grad stores nothing on this step: no update, but a step counted

SPARSE_ADAM = next(info for info in optim_db if info.optim_cls is torch.optim.SparseAdam)
TORCH_CONFIGS = [pytest.param(config.kwargs, id=re.sub(r"\W+", "_", config.desc))
                 for config in SPARSE_ADAM.optim_inputs_func(device="cpu")]


def sparse_grad(param: torch.Tensor, sparse_dims: int, generator, *, coalesced: bool, nnz: int = 5):
    """A sparse COO grad for ``param``: ``nnz`` entries over its first ``sparse_dims`` dims, with
    repeated indices (summed by ``coalesce``) unless ``coalesced``."""
    shape = param.shape
    if sparse_dims == 0:
        indices = torch.zeros(0, nnz, dtype=torch.long)
    else:
        indices = torch.stack([torch.randint(0, size, (nnz,), generator=generator) for size in shape[:sparse_dims]])
        indices[:, 1] = indices[:, 0]  # at least one repeated index
    values = torch.randn((nnz, *shape[sparse_dims:]), generator=generator, dtype=torch.float64).to(param.dtype)
    grad = torch.sparse_coo_tensor(indices, values, shape, check_invariants=True)
    return grad.coalesce() if coalesced else grad


def empty_grad(param: torch.Tensor, sparse_dims: int):
    values = torch.zeros((0, *param.shape[sparse_dims:]), dtype=param.dtype)
    return torch.sparse_coo_tensor(torch.zeros(sparse_dims, 0, dtype=torch.long), values, param.shape,
                                   check_invariants=True)


def make_params(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = [torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) for shape, _, _ in PARAMS]
    params = [torch.nn.Parameter(laid_out(v, layout)) for v, (_, layout, _) in zip(values, PARAMS)]
    assert not params[1].is_contiguous()
    return params


def grads_for_step(params, step, seed=1):
    """The grads of one step; the same call gives the same tensors (fresh ones) every time."""
    generator = torch.Generator().manual_seed(seed * 10_000 + step)
    grads = []
    for index, (param, (_, _, sparse_dims)) in enumerate(zip(params, PARAMS)):
        grad = sparse_grad(param, sparse_dims, generator, coalesced=(step + index) % 2 == 0)
        if index == 2 and step % SKIPPED_EVERY == 2:
            grad = None
        elif index == 0 and step == EMPTY_ON_STEP:
            grad = empty_grad(param, sparse_dims)
        grads.append(grad)
    return grads


def run(cls, dtype, kwargs, steps=STEPS, start=0, params=None, optimizer=None):
    params = params if params is not None else make_params(dtype)
    never_trained = torch.nn.Parameter(torch.ones(3, dtype=dtype))
    if optimizer is None:
        lr = kwargs.get("lr", 1e-3)
        groups = [{"params": params[:2]}, {"params": [*params[2:], never_trained], "lr": lr * 0.5}]
        optimizer = cls(groups, **kwargs)
    for step in range(start, start + steps):
        for param, grad in zip(params, grads_for_step(params, step)):
            param.grad = grad
        optimizer.step()
    assert never_trained not in optimizer.state
    return optimizer, params


def assert_same(ours, ours_params, theirs, their_params):
    for index, (mine, other) in enumerate(zip(ours_params, their_params, strict=True)):
        assert_close(mine, other, **EXACT, msg=lambda m: f"param {index}: {m}")
        mine_state, other_state = ours.state.get(mine, {}), theirs.state.get(other, {})
        assert list(mine_state) == list(other_state), f"param {index}: state keys differ"
        for key, value in other_state.items():
            if key == "step":  # a Python int in torch.optim.SparseAdam
                assert type(mine_state[key]) is type(value) and mine_state[key] == value, f"param {index} step"
            else:
                assert_close(mine_state[key], value, **EXACT, msg=lambda m: f"param {index} {key}: {m}")
                assert mine_state[key].stride() == value.stride(), f"param {index} {key}: layout"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kwargs", TORCH_CONFIGS)
def test_matches_torch(kwargs, dtype):
    ours, ours_params = run(wrappers.SparseAdam, dtype, kwargs)
    theirs, their_params = run(torch.optim.SparseAdam, dtype, kwargs)
    assert_same(ours, ours_params, theirs, their_params)
    assert ours.state[ours_params[0]]["step"] == STEPS
    assert ours.state[ours_params[2]]["step"] == STEPS - len(range(2, STEPS, SKIPPED_EVERY))


def test_torch_configs_were_found():
    assert len(TORCH_CONFIGS) >= 4


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_untouched_rows_keep_their_values(dtype):
    params = make_params(dtype)
    before = [same_layout_copy(p.detach()) for p in params]
    optimizer = wrappers.SparseAdam(params, lr=0.1)
    params[0].grad = torch.sparse_coo_tensor([[2, 7, 2]], torch.ones(3, 4, dtype=dtype), (10, 4),
                                             check_invariants=True)
    optimizer.step()
    changed = (params[0] != before[0]).any(dim=1)
    assert changed.tolist() == [i in (2, 7) for i in range(10)]
    state = optimizer.state[params[0]]
    assert (state["exp_avg"].ne(0).any(dim=1) == changed).all()
    assert (state["exp_avg_sq"].ne(0).any(dim=1) == changed).all()
    for param, old in zip(params[1:], before[1:]):  # no grad: untouched, no state
        assert torch.equal(param.detach(), old) and param not in optimizer.state


def test_embedding_module_matches_torch():
    """As it is used: nn.Embedding(sparse=True), a loss, backward, step; with repeated tokens."""
    results = []
    for cls in (torch.optim.SparseAdam, wrappers.SparseAdam):
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(20, 6, sparse=True)
        optimizer = cls(embedding.parameters(), lr=0.05)
        generator = torch.Generator().manual_seed(3)
        for _ in range(6):
            tokens = torch.randint(0, 20, (4, 7), generator=generator)
            optimizer.zero_grad()
            embedding(tokens).pow(2).sum().backward()
            assert embedding.weight.grad.is_sparse
            optimizer.step()
        results.append((optimizer, [embedding.weight]))
    (theirs, their_params), (ours, ours_params) = results
    assert_same(ours, ours_params, theirs, their_params)


def test_grads_are_not_changed():
    params = make_params(torch.float32)
    optimizer = wrappers.SparseAdam(params, maximize=True)
    grads = grads_for_step(params, 0)
    copies = [None if g is None else (g._indices().clone(), g._values().clone(), g.is_coalesced()) for g in grads]
    for param, grad in zip(params, grads):
        param.grad = grad
    optimizer.step()
    for param, grad, copy in zip(params, grads, copies):
        if grad is None:
            continue
        assert param.grad is grad
        indices, values, coalesced = copy
        assert torch.equal(grad._indices(), indices) and torch.equal(grad._values(), values)
        assert grad.is_coalesced() == coalesced


# --- checkpoints ----------------------------------------------------------------------------------

def through_disk(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(("first", "second"), [(torch.optim.SparseAdam, wrappers.SparseAdam),
                                               (wrappers.SparseAdam, torch.optim.SparseAdam)],
                         ids=["torch-to-ours", "ours-to-torch"])
def test_checkpoint_cross_loads(first, second):
    kwargs = dict(lr=0.01, maximize=True)
    saved, saved_params = run(first, torch.float32, kwargs, steps=3)
    loaded_params = [torch.nn.Parameter(same_layout_copy(p.detach())) for p in saved_params]
    loaded, _ = run(second, torch.float32, kwargs, steps=0, params=loaded_params)
    loaded.load_state_dict(through_disk(saved.state_dict()))
    assert_same(loaded, loaded_params, saved, saved_params)
    assert loaded.state_dict()["param_groups"] == saved.state_dict()["param_groups"]
    run(first, torch.float32, kwargs, steps=4, start=3, params=saved_params, optimizer=saved)
    run(second, torch.float32, kwargs, steps=4, start=3, params=loaded_params, optimizer=loaded)
    assert_same(loaded, loaded_params, saved, saved_params)


# --- construction -------------------------------------------------------------------------------

def _error_inputs(kind):
    return [pytest.param(error, id=f"{index}-{re.sub(r'[^0-9A-Za-z]+', '-', error.optimizer_error_input.desc)}")
            for index, error in enumerate(SPARSE_ADAM.optim_error_inputs_func(device="cpu", dtype=torch.float32))
            if error.error_on == kind]


CONSTRUCTION_ERRORS = _error_inputs(OptimizerErrorEnum.CONSTRUCTION_ERROR)


def test_error_inputs_were_found():
    assert len(CONSTRUCTION_ERRORS) >= 8 and not _error_inputs(OptimizerErrorEnum.STEP_ERROR)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    (dict(lr=0.0), r"\blr\b"), (dict(lr=-1.0), r"\blr\b"), (dict(lr=float("nan")), r"\blr\b"),
    (dict(lr=torch.tensor(0.0)), r"\blr\b"), (dict(eps=0.0), r"\beps\b"), (dict(eps=-1e-8), r"\beps\b"),
    (dict(betas=(0.9, 1.0)), re.escape("betas[1]")), (dict(betas=(-0.1, 0.999)), re.escape("betas[0]")),
])
def test_bad_hyperparameters_raise_value_error(kwargs, pattern):
    for cls in (torch.optim.SparseAdam, wrappers.SparseAdam):  # torch refuses them too
        with pytest.raises(ValueError):
            cls([torch.nn.Parameter(torch.randn(3))], **kwargs)
    with pytest.raises(ValueError, match=pattern):
        wrappers.SparseAdam([torch.nn.Parameter(torch.randn(3))], **kwargs)
    # and as a group's override, which torch does not check
    optimizer = wrappers.SparseAdam([torch.nn.Parameter(torch.randn(3))])
    with pytest.raises(ValueError, match=pattern):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.randn(3))], **kwargs})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("switch", ["foreach", "fused", "capturable", "differentiable"])
def test_torch_has_no_switches_for_it(switch):
    for cls in (torch.optim.SparseAdam, wrappers.SparseAdam):
        with pytest.raises(TypeError):
            cls([torch.nn.Parameter(torch.randn(3))], **{switch: False})


# --- a step that raises changes nothing -----------------------------------------------------------

def _snapshot(optimizer, params):
    state = {id(param): {name: value.clone() if torch.is_tensor(value) else value for name, value in entries.items()}
             for param, entries in optimizer.state.items()}
    return [same_layout_copy(p.detach()) for p in params], state


def _assert_unchanged(optimizer, params, snapshot):
    values, state = snapshot
    for param, before in zip(params, values):
        assert torch.equal(param.detach(), before)
    now = {id(p): s for p, s in optimizer.state.items() if s}
    assert set(now) == {key for key, s in state.items() if s}
    for key, entries in now.items():
        assert list(entries) == list(state[key])
        for name, value in entries.items():
            assert torch.equal(value, state[key][name]) if torch.is_tensor(value) else value == state[key][name]


def _dense_grad(params):
    params[3].grad = torch.ones_like(params[3])


def _complex_param(optimizer, params):
    extra = torch.nn.Parameter(torch.randn(4, dtype=torch.complex64))
    optimizer.add_param_group({"params": [extra]})  # torch checks only the params given to __init__
    extra.grad = torch.sparse_coo_tensor([[1]], torch.ones(1, dtype=torch.complex64), (4,), check_invariants=True)


def _nan_lr(optimizer, params):
    optimizer.param_groups[1]["lr"] = float("nan")


def _fractional_step(optimizer, params):
    optimizer.state[params[3]]["step"] = 2.5  # a broken checkpoint


STEP_ERRORS = [
    pytest.param(lambda optimizer, params: _dense_grad(params), RuntimeError, "dense gradients", id="dense-grad"),
    pytest.param(_complex_param, RuntimeError, "complex", id="complex-param"),
    pytest.param(_nan_lr, ValueError, r"\blr\b", id="nan-lr"),
    pytest.param(_fractional_step, ValueError, r"\bstep\b", id="fractional-step"),
]


@pytest.mark.parametrize(("warm", "change", "error", "pattern"), [
    pytest.param(warm, *case.values, id=f"{'warm' if warm else 'fresh'}-{case.id}")
    for warm in (False, True) for case in STEP_ERRORS if warm or case.id != "fractional-step"])
def test_step_error_changes_nothing(warm, change, error, pattern):
    optimizer, params = run(wrappers.SparseAdam, torch.float32, {}, steps=2 if warm else 0)
    for param, grad in zip(params, grads_for_step(params, 5)):
        param.grad = grad
    change(optimizer, params)  # in the second group: the first would be updated before it is met
    all_params = [p for group in optimizer.param_groups for p in group["params"]]
    snapshot = _snapshot(optimizer, all_params)
    for _ in range(2):  # and it keeps failing the same way
        with pytest.raises(error, match=pattern):
            optimizer.step()
        _assert_unchanged(optimizer, all_params, snapshot)


def test_dense_grad_raises_like_torch():
    for cls in (torch.optim.SparseAdam, wrappers.SparseAdam):
        param = torch.nn.Parameter(torch.randn(3))
        param.grad = torch.ones(3)
        with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
            cls([param]).step()
