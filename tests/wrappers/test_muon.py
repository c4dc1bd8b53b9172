"""``wrappers.Muon`` against ``torch.optim.Muon``: every optim_db configuration and a few of ours,
over 2-D params (tall, wide, square, transposed and strided) in two groups, with grads that are
None on some steps (one before its first step) and a param that never gets one; its
construction and step errors; checkpoints both ways.

torch.optim.Muon has one implementation (a for-loop); our kernel runs its ops in its order, so
every comparison is bit for bit. One exception, on purpose: in bfloat16 with ``nesterov=False``
torch 2.13 normalises the momentum buffer in place (``grad.bfloat16()`` returns the buffer itself
and the iteration divides it by its norm; fixed upstream in pytorch#194664); there we compare with
torch with that aliasing removed, and check our buffer against its recurrence.
"""

import copy
import io

import pytest
import torch
import torch.optim._muon as torch_muon
from torch.testing import assert_close
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

from tests.helpers import EXACT, assert_same_state, laid_out
from wrappers import Muon

MUON_INFO = next(info for info in optim_db if info.optim_cls is torch.optim.Muon)
TORCH_CONFIGS = [(o.desc, o.kwargs) for o in MUON_INFO.optim_inputs_func(device="cpu")]
OUR_CONFIGS = [
    ("no nesterov", dict(lr=0.02, nesterov=False)),
    ("match_rms_adamw", dict(lr=0.02, adjust_lr_fn="match_rms_adamw", weight_decay=0.05)),
    ("original no momentum", dict(lr=0.02, adjust_lr_fn="original", momentum=0.0)),
    ("no nesterov tensor lr decay", dict(lr=torch.tensor(0.01), nesterov=False, weight_decay=0.3)),
    ("large eps few steps", dict(lr=0.05, eps=10.0, ns_steps=2, weight_decay=0.0)),
]
CONFIGS = TORCH_CONFIGS + OUR_CONFIGS
CONFIG_IDS = [desc.replace(" ", "-") for desc, _ in CONFIGS]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# (group, shape, layout, steps on which the grad is None)
PARAMS = [
    (0, (4, 5), "contiguous", ()),           # wide
    (0, (7, 3), "contiguous", (2, 5)),       # tall: iterated on its transpose
    (0, (3, 3), "contiguous", (0, 1)),       # no grad on the first two steps: state starts at step 3
    (1, (6, 3), "transposed", (4,)),         # tall and non-contiguous
    (1, (2, 8), "strided", ()),              # a view with a column stride of 2
    (1, (1, 4), "contiguous", ()),           # a single row
]
STEPS = 8
GROUP_LR_FACTORS = (1.0, 0.5)


def make_params(dtype):
    generator = torch.Generator().manual_seed(0)
    params = []
    for _, shape, layout, _ in PARAMS:
        values = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
        if layout == "strided":
            params.append(torch.nn.Parameter(torch.empty(shape[0], shape[1] * 2, dtype=dtype)[:, ::2].copy_(values)))
        else:
            params.append(torch.nn.Parameter(laid_out(values, layout)))
    assert not params[3].is_contiguous() and not params[4].is_contiguous()
    return params


def set_grads(params, step):
    """Grads of one step, contiguous whatever the param's layout (as autograd often makes them)."""
    generator = torch.Generator().manual_seed(1000 + step)
    for param, (_, _, _, none_steps) in zip(params, PARAMS):
        grad = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
        param.grad = None if step in none_steps else grad


def param_groups(params, kwargs, never_trained=None):
    lr = kwargs.get("lr", 1e-3)
    groups = [{"params": [p for p, (group, *_) in zip(params, PARAMS) if group == index], "lr": lr * factor}
              for index, factor in enumerate(GROUP_LR_FACTORS)]
    if never_trained is not None:
        groups[1]["params"].append(never_trained)
    return groups


def run(cls, dtype, kwargs, steps=STEPS):
    params = make_params(dtype)
    never_trained = torch.nn.Parameter(torch.ones(2, 3, dtype=dtype))
    optimizer = cls(param_groups(params, kwargs, never_trained), **kwargs)
    for step in range(steps):
        set_grads(params, step)
        optimizer.step()
    assert never_trained not in optimizer.state and torch.equal(never_trained, torch.ones(2, 3, dtype=dtype))
    return optimizer


@pytest.fixture
def torch_without_buffer_aliasing(monkeypatch):
    """torch.optim.Muon as fixed upstream: the iteration works on a copy of its input."""
    original = torch_muon._zeropower_via_newtonschulz
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz",
                        lambda matrix, *args: original(matrix.clone(), *args))


def _aliases_buffer(dtype, kwargs):
    return dtype == torch.bfloat16 and not kwargs.get("nesterov", True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("desc", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_matches_torch(desc, kwargs, dtype, request):
    if _aliases_buffer(dtype, kwargs):
        request.getfixturevalue("torch_without_buffer_aliasing")
    ours = run(Muon, dtype, kwargs)
    reference = run(torch.optim.Muon, dtype, kwargs)
    assert_same_state(ours, reference, exact=True)
    for param in (p for group in ours.param_groups for p in group["params"]):
        if param in ours.state:
            assert set(ours.state[param]) == {"momentum_buffer"}  # and no step, as torch


def test_the_configurations_were_found():
    assert len(TORCH_CONFIGS) >= 7 and any(isinstance(kw.get("lr"), torch.Tensor) for _, kw in TORCH_CONFIGS)


@pytest.mark.parametrize("momentum", [0.95, 0.5])
def test_bf16_momentum_buffer_is_the_ema_of_the_grads(momentum):
    """Without Nesterov, torch 2.13 divides a bfloat16 buffer by its norm each step; ours is the EMA."""
    param = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.bfloat16))
    optimizer = Muon([param], lr=0.01, momentum=momentum, nesterov=False)
    expected = torch.zeros_like(param)
    generator = torch.Generator().manual_seed(3)
    for _ in range(4):
        param.grad = torch.randn(param.shape, generator=generator).to(torch.bfloat16)
        expected.lerp_(param.grad, 1 - momentum)
        optimizer.step()
    assert_close(optimizer.state[param]["momentum_buffer"], expected, **EXACT)
    assert abs(expected.norm().item() - 1) > 0.3  # far from the unit norm of torch's aliased buffer


def test_grads_are_not_mutated():
    params = make_params(torch.bfloat16)
    optimizer = Muon(param_groups(params, {}), nesterov=False)
    for step in range(3):
        set_grads(params, step)
        before = [None if p.grad is None else p.grad.clone() for p in params]
        optimizer.step()
        for param, grad in zip(params, before):
            assert grad is None or torch.equal(param.grad, grad)


# --- signature and errors ---------------------------------------------------------------------

def _error_inputs():
    errors = MUON_INFO.optim_error_inputs_func(device="cpu", dtype=torch.float32)
    return [pytest.param(error, id=f"{index}-{error.optimizer_error_input.desc.replace(' ', '-')}")
            for index, error in enumerate(errors)]


@pytest.mark.parametrize("error", _error_inputs())
def test_torch_error_inputs(error):
    optimizer_input = error.optimizer_error_input
    params = copy.deepcopy(optimizer_input.params)  # the same object is shared across cases
    if error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        if issubclass(error.error_type, Warning):
            with pytest.warns(error.error_type, match=error.error_regex):
                Muon(params, **optimizer_input.kwargs)
        else:
            with pytest.raises(error.error_type, match=error.error_regex):
                Muon(params, **optimizer_input.kwargs)
    else:
        optimizer = Muon(params, **optimizer_input.kwargs)
        with pytest.raises(error.error_type, match=error.error_regex):
            optimizer.step()


def test_torch_error_inputs_include_the_muon_ones():
    descs = [p.values[0].optimizer_error_input.desc for p in _error_inputs()]
    assert "only support 2D parameters" in descs and "does not support complex parameters" in descs


def _matrix():
    return torch.nn.Parameter(torch.randn(3, 2))


BAD_OPTIONS = [
    ("lr", dict(lr=-0.1), ValueError, r"\blr\b"),
    ("lr-tensor-2-elements", dict(lr=torch.tensor([0.1, 0.1])), ValueError, "Tensor lr must be 1-element"),
    ("momentum", dict(momentum=-0.5), ValueError, r"\bmomentum\b"),
    ("weight_decay", dict(weight_decay=-0.1), ValueError, r"\bweight_decay\b"),
    ("eps", dict(eps=float("nan")), ValueError, r"\beps\b"),
    ("ns_steps-100", dict(ns_steps=100), ValueError, r"\bns_steps\b"),
    ("ns_steps-negative", dict(ns_steps=-1), ValueError, r"\bns_steps\b"),
    ("ns_steps-float", dict(ns_steps=5.0), TypeError, r"\bns_steps\b"),
    ("ns_coefficients-two", dict(ns_coefficients=(3.0, -4.0)), ValueError, r"\bns_coefficients\b"),
    ("ns_coefficients-nan", dict(ns_coefficients=(3.0, float("nan"), 2.0)), ValueError, r"\bns_coefficients\b"),
    ("adjust_lr_fn", dict(adjust_lr_fn="sqrt"), ValueError, r"\badjust_lr_fn\b"),
]


@pytest.mark.parametrize(("kwargs", "error", "pattern"), [case[1:] for case in BAD_OPTIONS],
                         ids=[case[0] for case in BAD_OPTIONS])
def test_bad_options_raise_naming_the_argument(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        Muon([_matrix()], **kwargs)
    with pytest.raises(error, match=pattern):  # as a group's override
        Muon([{"params": [_matrix()]}, {"params": [_matrix()], **kwargs}])


@pytest.mark.parametrize(("kwargs", "error", "pattern"), [case[1:] for case in BAD_OPTIONS],
                         ids=[case[0] for case in BAD_OPTIONS])
def test_bad_option_set_after_construction_changes_nothing(kwargs, error, pattern):
    """torch checks ns_* only while stepping, after updating earlier groups; we check first."""
    params = make_params(torch.float32)
    optimizer = Muon(param_groups(params, {}))
    set_grads(params, 0)
    optimizer.step()
    set_grads(params, 1)
    snapshot = [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict())
    optimizer.param_groups[1].update(kwargs)
    with pytest.raises(error, match=pattern):
        optimizer.step()
    _assert_unchanged(optimizer, params, snapshot)


@pytest.mark.parametrize("bad", ["complex", "3-D"])
def test_bad_param_at_step_changes_nothing(bad):
    params = make_params(torch.float32)
    optimizer = Muon(param_groups(params, {}))
    set_grads(params, 0)
    optimizer.step()
    set_grads(params, 1)
    snapshot = [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict())
    if bad == "complex":
        param = torch.rand(2, 3, dtype=torch.complex64)
        optimizer.add_param_group({"params": [param]})  # accepted: torch refuses it at step time
        error, pattern = RuntimeError, r"Muon does not support complex parameters.*param_groups\[2\]\['params'\]\[0\]"
    else:
        param = optimizer.param_groups[1]["params"][0]
        param.data = torch.zeros(2, 3, 4)  # a param can change shape behind the optimizer's back
        error, pattern = ValueError, r"Muon only supports 2D parameters.*param_groups\[1\]\['params'\]\[0\]"
        params[3] = param
        snapshot[0][3] = param.detach().clone()
    param.grad = torch.ones_like(param)
    with pytest.raises(error, match=pattern):
        optimizer.step()
    _assert_unchanged(optimizer, params, snapshot)


def _assert_unchanged(optimizer, params, snapshot):
    values, state_dict = snapshot
    for param, value in zip(params, values):
        assert torch.equal(param, value)
    now = optimizer.state_dict()["state"]
    assert set(now) == set(state_dict["state"])
    for index, entry in state_dict["state"].items():
        assert torch.equal(now[index]["momentum_buffer"], entry["momentum_buffer"])


def test_a_non_matrix_group_added_later_is_refused_and_not_kept():
    optimizer = Muon([_matrix()])
    with pytest.raises(ValueError, match=r"Muon only supports 2D parameters.*param_groups\[1\]\['params'\]\[1\]"):
        optimizer.add_param_group({"params": [_matrix(), torch.nn.Parameter(torch.randn(3))]})
    assert len(optimizer.param_groups) == 1


# --- checkpoints ----------------------------------------------------------------------------

CHECKPOINT_KWARGS = dict(lr=0.02, weight_decay=0.05, momentum=0.9, ns_steps=4, adjust_lr_fn="match_rms_adamw")


def _through_disk(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(("first", "second"), [(torch.optim.Muon, Muon), (Muon, torch.optim.Muon)],
                         ids=["torch-to-ours", "ours-to-torch"])
def test_checkpoint_cross_loads(first, second):
    trained = run(first, torch.float32, CHECKPOINT_KWARGS, steps=3)
    saved = _through_disk(trained.state_dict())
    params = [torch.nn.Parameter(p.detach().clone()) for g in trained.param_groups for p in g["params"]]
    # the same groups over copies of the trained params (never_trained is the last one)
    groups = [{"params": params[:3]}, {"params": params[3:]}]
    loaded = second(groups, lr=123.0)  # the checkpoint's hyperparameters win
    loaded.load_state_dict(saved)
    assert loaded.state_dict()["param_groups"] == trained.state_dict()["param_groups"]
    assert_same_state(loaded, trained, exact=True)
    trained_params = [p for g in trained.param_groups for p in g["params"]][:-1]
    for step in range(3, 6):
        set_grads(trained_params, step)
        set_grads(params[:-1], step)
        trained.step()
        loaded.step()
    assert_same_state(loaded, trained, exact=True)
