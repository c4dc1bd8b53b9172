"""``wrappers.Adagrad`` against ``torch.optim.Adagrad``: what the generic parity test cannot check.

torch's Adagrad creates every param's state in ``__init__`` (the generic test requires a param that
never gets a gradient to have no state), and it takes sparse gradients. So its parity runs here:
every optim_db configuration and ours, crossed with dtypes and layouts as the generic test does,
plus the state at construction, sparse gradients (``nn.Embedding(sparse=True)``), and checkpoints.

Adadelta and RMSprop get their parity from the generic test; what the shared wrapper tests do
not cover (checks of their own hyperparameters, signatures, checkpoints in non-default
configurations, both ways) runs here for all three classes.
"""

import copy
import io
import math
import re

import pytest
import torch
from torch import nn
from torch.testing._internal.common_optimizers import optim_db

import wrappers
from tests.configs import Case
from tests.helpers import DTYPES, EXACT, assert_same_state, make_grads, make_param_values, make_params

STEPS = 10
SKIPPED_EVERY = 3  # params[1] has no grad on every third step, so its step count lags
NAMES = ["Adagrad", "Adadelta", "RMSprop"]


def named(argument: str) -> str:
    return rf"(?<![\w]){re.escape(argument)}(?![\w])"


# --- parity over optim_db's configurations and ours ----------------------------------------------

def _cases() -> list[Case]:
    info = next(info for info in optim_db if info.optim_cls is torch.optim.Adagrad)
    cases = [Case(wrappers.Adagrad, torch.optim.Adagrad, optim_input.kwargs, optim_input.desc)
             for optim_input in info.optim_inputs_func(device="cpu")]
    return cases + [
        Case(wrappers.Adagrad, torch.optim.Adagrad,
             dict(lr=0.05, lr_decay=0.2, initial_accumulator_value=0.3, eps=1e-3, maximize=True), "all options"),
        # torch divides a tensor lr by (1 + (t-1) lr_decay) as a float32 tensor; we do it in double
        Case(wrappers.Adagrad, torch.optim.Adagrad, dict(lr=torch.tensor(0.05), lr_decay=0.1), "tensor lr decayed",
             exact_modes=frozenset(), tolerance=dict(rtol=1e-6, atol=1e-6)),
    ]


CASES = _cases()


def _run(factory, values, kwargs):
    """Two groups over 0-d and non-contiguous params, one skipped every third step and one never
    trained (whose state, made at construction, must stay as it was)."""
    params = make_params(values)
    never_trained = nn.Parameter(torch.ones(3, dtype=values[0].dtype))
    optimizer = factory([{"params": params[:3]}, {"params": params[3:] + [never_trained],
                                                  "lr": kwargs.get("lr", 1e-2) * 0.5}], **kwargs)
    for step in range(STEPS):
        for index, (param, grad) in enumerate(zip(params, make_grads(values, step))):
            param.grad = None if index == 1 and step % SKIPPED_EVERY == 2 else grad
        optimizer.step()
    assert torch.equal(never_trained, torch.ones(3, dtype=values[0].dtype))
    assert optimizer.state[never_trained]["step"].item() == 0
    return optimizer


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_matches_torch(case, dtype):
    values = make_param_values(dtype)
    ours = _run(case.ours, values, case.kwargs)
    modes = case.torch_modes(dtype)
    assert modes, "nothing to compare with"
    for mode, exact in modes.items():
        reference = _run(lambda groups, **kw: torch.optim.Adagrad(groups, foreach=mode == "foreach", **kw),
                         values, case.kwargs)
        # a case's tolerance is written for fp32/fp64; bf16 keeps its own (a few bf16 ulps)
        assert_same_state(ours, reference, exact, case.tolerance if dtype != torch.bfloat16 else None)


# --- state at construction -----------------------------------------------------------------------

def _construction_params():
    generator = torch.Generator().manual_seed(0)
    return [nn.Parameter(torch.randn(3, 4, generator=generator).t()),  # non-contiguous: sum keeps its strides
            nn.Parameter(torch.randn((), generator=generator)),
            nn.Parameter(torch.randn(2, generator=generator, dtype=torch.complex64)),
            nn.Parameter(torch.randn(5, generator=generator, dtype=torch.float64))]


def _assert_same_state_dicts(mine, theirs):
    assert mine["param_groups"] == theirs["param_groups"]
    assert mine["state"].keys() == theirs["state"].keys()
    for index, state in theirs["state"].items():
        assert list(mine["state"][index]) == list(state), f"param {index}: keys or their order"
        for key, value in state.items():
            assert mine["state"][index][key].dtype == value.dtype, f"param {index} {key}"
            assert mine["state"][index][key].stride() == value.stride(), f"param {index} {key}"
            torch.testing.assert_close(mine["state"][index][key], value, **EXACT)


@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("initial_accumulator_value", [0, 0.25])
def test_state_exists_right_after_construction(initial_accumulator_value, default_dtype):
    """Before any step, the state_dict holds torch's: ``step`` 0 (a 0-d tensor of the default
    float dtype) and ``sum`` full of the initial value (complex(v, v) for a complex param), for
    every param of every group."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        params = _construction_params()
        groups = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.1}]  # noqa: E731
        ours = wrappers.Adagrad(groups(params), initial_accumulator_value=initial_accumulator_value)
        theirs = torch.optim.Adagrad(groups(params), initial_accumulator_value=initial_accumulator_value)
    finally:
        torch.set_default_dtype(previous)
    mine = ours.state_dict()
    assert len(mine["state"]) == len(params)
    assert all(state["step"].dtype == default_dtype for state in mine["state"].values())
    assert mine["state"][2]["sum"][0] == complex(initial_accumulator_value, initial_accumulator_value)
    mine["param_groups"][0]["foreach"] = mine["param_groups"][1]["foreach"] = None
    _assert_same_state_dicts(mine, theirs.state_dict())


def test_later_groups_get_state_at_their_first_step_from_the_constructors_value():
    """As torch: params of an added group have no state until they get a grad; the accumulator of
    a param starts at the *constructor's* ``initial_accumulator_value``, whatever its group says."""
    runs = []
    for cls in (wrappers.Adagrad, torch.optim.Adagrad):
        params = [nn.Parameter(torch.full((3,), float(i + 1))) for i in range(4)]
        optimizer = cls([{"params": params[:1]}, {"params": params[1:2], "initial_accumulator_value": 5.0}],
                        lr=0.1, initial_accumulator_value=0.5)
        optimizer.add_param_group({"params": params[2:], "initial_accumulator_value": 7.0})
        assert params[2] not in optimizer.state and params[3] not in optimizer.state
        for step in range(3):
            for index, param in enumerate(params):
                param.grad = None if index == 3 else torch.full((3,), 0.5 * (step + 1))
            optimizer.step()
        assert params[3] not in optimizer.state
        assert optimizer.state[params[1]]["sum"][0] == optimizer.state[params[2]]["sum"][0] == 0.5 + 0.25 + 1 + 2.25
        runs.append((optimizer, params))
    (ours, our_params), (theirs, their_params) = runs
    for index, (mine, their) in enumerate(zip(our_params, their_params)):
        assert torch.equal(mine, their), f"param {index}"
        assert ours.state.get(mine, {}).keys() == theirs.state.get(their, {}).keys()
        for key, value in theirs.state.get(their, {}).items():
            assert torch.equal(ours.state[mine][key], value), f"param {index} {key}"


def test_share_memory():
    params = _construction_params()[:2]
    optimizer = wrappers.Adagrad(params)
    optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})  # no state yet: skipped
    optimizer.share_memory()
    assert all(optimizer.state[p]["sum"].is_shared() for p in params)


# --- sparse gradients ----------------------------------------------------------------------------

class Recommender(nn.Module):
    """Two sparse embedding tables and a dense head: a model torch's sparse Adagrad is made for."""

    def __init__(self, dtype):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.users = nn.Embedding(12, 4, sparse=True, dtype=dtype)
        self.items = nn.Embedding(9, 4, sparse=True, dtype=dtype)
        self.head = nn.Linear(4, 1, dtype=dtype)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))

    def forward(self, users, items):
        return self.head(self.users(users) * self.items(items)).squeeze(-1)


def _batches(steps):
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        # ids repeat within a batch (uncoalesced gradients); users 10 and 11 never appear
        users = torch.randint(0, 10, (6,), generator=generator)
        yield users, torch.randint(0, 9, (6,), generator=generator), torch.randn(6, generator=generator)


def _train_recommender(make_optimizer, dtype, steps=STEPS):
    model = Recommender(dtype)
    # a sparse and a dense param in each group
    optimizer = make_optimizer([{"params": [model.users.weight, model.head.weight]},
                                {"params": [model.items.weight, model.head.bias], "lr": 0.02}])
    for users, items, targets in _batches(steps):
        optimizer.zero_grad()
        ((model(users, items) - targets.to(dtype)) ** 2).mean().backward()
        assert model.users.weight.grad.is_sparse and not model.users.weight.grad.is_coalesced()
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("kwargs", [dict(lr=0.1), dict(lr=0.1, lr_decay=0.3, initial_accumulator_value=0.1,
                                                       eps=1e-3, maximize=True)], ids=["default", "all-options"])
@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_sparse_embedding_matches_torch(dtype, foreach, kwargs):
    """Bit for bit: torch runs a group holding a sparse grad one tensor at a time in both modes,
    and our sparse path is its op order; rows that never got a gradient stay as they were."""
    ours, our_optimizer = _train_recommender(lambda groups: wrappers.Adagrad(groups, **kwargs), dtype)
    theirs, their_optimizer = _train_recommender(
        lambda groups: torch.optim.Adagrad(groups, foreach=foreach, **kwargs), dtype)
    for (name, mine), their in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(mine, their, **EXACT, msg=lambda m: f"{name}: {m}")
        assert our_optimizer.state[mine].keys() == their_optimizer.state[their].keys()
        for key, value in their_optimizer.state[their].items():
            torch.testing.assert_close(our_optimizer.state[mine][key], value, **EXACT,
                                       msg=lambda m: f"{name} {key}: {m}")
    untrained = Recommender(dtype)
    assert torch.equal(ours.users.weight[10:], untrained.users.weight[10:])
    assert not torch.equal(ours.users.weight[:10], untrained.users.weight[:10])


def _sparse_setup(second_group_options):
    generator = torch.Generator().manual_seed(2)
    dense, embedding = nn.Parameter(torch.randn(3, generator=generator)), nn.Parameter(torch.randn(5, 2))
    return dense, embedding, [{"params": [dense]}, {"params": [embedding], **second_group_options}]


def _sparse_grads(dense, embedding, dtype=torch.float32):
    dense.grad = torch.ones(3)
    embedding.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3, 1]]), torch.ones(3, 2), (5, 2),
                                             check_invariants=True).to(dtype)


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm"])
def test_sparse_grad_with_weight_decay_raises_as_torch_and_changes_nothing(warm):
    """torch raises RuntimeError (after stepping earlier groups); we raise the same error before
    touching any group, so params, sums and step counts are as they were."""
    for cls in (torch.optim.Adagrad, wrappers.Adagrad):
        dense, embedding, groups = _sparse_setup(dict(weight_decay=0.1))
        optimizer = cls(groups, lr=0.1)
        if warm:
            dense.grad, embedding.grad = torch.ones(3), torch.ones(5, 2)
            optimizer.step()
        _sparse_grads(dense, embedding)
        before = copy.deepcopy((dense.detach(), embedding.detach(), optimizer.state_dict()["state"]))
        with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse gradients"):
            optimizer.step()
    after = (dense.detach(), embedding.detach(), optimizer.state_dict()["state"])
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    for index, state in before[2].items():
        for key, value in state.items():
            assert torch.equal(after[2][index][key], value), f"param {index} {key}"


def test_sparse_grad_of_a_complex_param_is_rejected_before_any_change():
    """torch squares complex sparse values as complex numbers (its sum gets negative real parts);
    we refuse them, naming the param's index in its group, before stepping any group."""
    dense, embedding, groups = _sparse_setup({})
    embedding = nn.Parameter(embedding.detach().to(torch.complex64))
    groups[1]["params"] = [embedding]
    optimizer = wrappers.Adagrad(groups, lr=0.1)
    _sparse_grads(dense, embedding, dtype=torch.complex64)
    before = copy.deepcopy((dense.detach(), optimizer.state_dict()["state"]))
    with pytest.raises(RuntimeError, match=r"params\[0\].*complex.*sparse"):
        optimizer.step()
    assert torch.equal(dense, before[0])
    assert all(state["step"] == 0 for state in optimizer.state_dict()["state"].values())


# --- construction: our stricter checks, the signatures ------------------------------------------

# (class, argument, value) for the arguments the shared validation tests do not know; torch
# takes NaN, inf and alpha > 1 (the average of g^2 then turns negative), raises for the rest
STRICTER = [
    ("Adagrad", "lr_decay", math.nan), ("Adagrad", "lr_decay", math.inf), ("Adagrad", "lr_decay", -1.0),
    ("Adagrad", "initial_accumulator_value", math.nan), ("Adagrad", "initial_accumulator_value", -0.1),
    ("Adadelta", "rho", math.nan), ("Adadelta", "rho", 1.5), ("Adadelta", "rho", -0.1),
    ("RMSprop", "alpha", 1.5), ("RMSprop", "alpha", math.nan), ("RMSprop", "alpha", -0.1),
]


@pytest.mark.parametrize(("name", "argument", "value"), STRICTER, ids=[f"{n}-{a}-{v}" for n, a, v in STRICTER])
def test_bad_hyperparameter_raises_naming_it(name, argument, value):
    params = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2))]
    with pytest.raises(ValueError, match=named(argument)):
        getattr(wrappers, name)(params, **{argument: value})
    optimizer = getattr(wrappers, name)(params[:1])  # per group, and on a later step: same
    with pytest.raises(ValueError, match=named(argument)):
        optimizer.add_param_group({"params": params[1:], argument: value})
    optimizer.param_groups[0][argument] = value
    params[0].grad = torch.ones(3)
    before = params[0].detach().clone()
    with pytest.raises(ValueError, match=named(argument)):
        optimizer.step()
    assert torch.equal(params[0], before)


# --- checkpoints, both ways ------------------------------------------------------------------------

CHECKPOINT_CONFIGS = [
    ("Adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.2, weight_decay=0.05)),
    ("Adadelta", dict(lr=0.5, rho=0.8, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1, maximize=True)),
]


def _through_disk(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _checkpoint_params():
    generator = torch.Generator().manual_seed(3)
    return [nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((4, 3), (3,), ())]


def _train(optimizer, params, steps):
    for step in steps:
        generator = torch.Generator().manual_seed(100 + step)
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()


@pytest.mark.parametrize("direction", ["torch-to-ours", "ours-to-torch"])
@pytest.mark.parametrize(("name", "kwargs"), CHECKPOINT_CONFIGS, ids=[name for name, _ in CHECKPOINT_CONFIGS])
def test_checkpoint_cross_loads_and_continues_identically(name, kwargs, direction):
    classes = [getattr(torch.optim, name), getattr(wrappers, name)]
    if direction == "ours-to-torch":
        classes.reverse()
    saved_params = _checkpoint_params()
    saved = classes[0](saved_params, **kwargs)
    _train(saved, saved_params, range(4))
    checkpoint = _through_disk(saved.state_dict())

    loaded_params = [nn.Parameter(p.detach().clone()) for p in saved_params]
    loaded = classes[1](loaded_params, **{**kwargs, "lr": 123.0})  # the checkpoint's lr wins
    loaded.load_state_dict(checkpoint)
    assert loaded.param_groups[0]["lr"] == kwargs["lr"]
    _train(saved, saved_params, range(4, 9))
    _train(loaded, loaded_params, range(4, 9))
    for index, (mine, theirs) in enumerate(zip(loaded_params, saved_params)):
        assert torch.equal(mine, theirs), f"param {index}"
        assert list(loaded.state[mine]) == list(saved.state[theirs])
        for key, value in saved.state[theirs].items():
            assert value.dtype == loaded.state[mine][key].dtype
            assert torch.equal(loaded.state[mine][key], value), f"param {index} {key}"
