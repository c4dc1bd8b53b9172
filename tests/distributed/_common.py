"""What the engine tests share: the model, data, optimizers and snapshots the workers use, and the
comparison the tests assert with.

Ours and torch's run side by side in the same worker, on copies of one model, with the same data;
torch.optim runs its for-loop (``foreach=False``, the CPU default). The modes' promise: list and
flat give torch's numbers bit for bit, compiled and flat+compiled to rounding (assert_close's
float32 defaults); step counts are equal in every mode.
"""

from typing import Any

import torch
from torch import nn
from torch.testing import assert_close

MODES: dict[str, dict[str, bool]] = {
    "list": dict(flat=False, compiled=False),
    "flat": dict(flat=True, compiled=False),
    "compiled": dict(flat=False, compiled=True),
    "flat_compiled": dict(flat=True, compiled=True),
}
EXACT_MODES = ("list", "flat")


def exact(scenario) -> bool:
    """Whether the scenario's mode gives torch's numbers bit for bit (else to rounding)."""
    return scenario["mode"] in EXACT_MODES


# The same hyperparameters for ours and torch's (foreach too, so that param_groups compare equal).
HYPERPARAMS: dict[str, dict[str, Any]] = {
    "Adam": dict(lr=0.01, foreach=False),
    "AdamW": dict(lr=0.01, weight_decay=0.1, foreach=False),
    "SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01, foreach=False),
    "Muon": dict(lr=0.02),
    "Adafactor": dict(lr=0.01, foreach=False),
    "LBFGS": dict(lr=0.5),
    # algorithms torch lacks: against their reference packages (wrappers.registry)
    "Lion": dict(lr=0.01, weight_decay=0.1),
    "ADOPT": dict(lr=0.01, weight_decay=0.1),
    "AdamWScheduleFree": dict(lr=0.01, weight_decay=0.1, warmup_steps=2),
}
# Those run in the engines' exact modes beside Adam, AdamW and SGD.
TORCHLESS = ("Lion", "ADOPT", "AdamWScheduleFree")

# Linear(5, 7) then Linear(7, 3): first dims 7 and 3, odd, so 2 ranks shard them unevenly.
IN, HIDDEN, OUT = 5, 7, 3
BATCH = 6


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT))


def loss(model: nn.Module, rank: int, step: int, micro: int = 0) -> torch.Tensor:
    """The loss on this rank's batch for ``step`` (and micro-batch): different per rank, the same
    for every run."""
    generator = torch.Generator().manual_seed(10_000 + 1_000 * rank + 10 * step + micro)
    inputs = torch.randn(BATCH, IN, generator=generator)
    targets = torch.randn(BATCH, OUT, generator=generator)
    return nn.functional.mse_loss(model(inputs), targets)


# --- optimizers --------------------------------------------------------------------------------

def optimizer_class(lib: str, name: str) -> type:
    """Ours, or torch.optim's class of the name (where torch lacks it, the registry's reference)."""
    import wrappers

    if lib == "ours":
        return getattr(wrappers, name)
    if hasattr(torch.optim, name):
        return getattr(torch.optim, name)
    from wrappers import registry

    (algorithm,) = [a for a in registry.ALGORITHMS.values() if a.wrapper is getattr(wrappers, name)]
    return algorithm.reference_class()


def optimizer_kwargs(lib: str, name: str, mode: str) -> dict[str, Any]:
    """Constructor keywords: the shared hyperparameters, plus the mode for ours (none in list mode,
    so that list mode is the plain drop-in call)."""
    kwargs = dict(HYPERPARAMS[name])
    if lib == "ours" and mode != "list":
        kwargs.update(MODES[mode])
    return kwargs


def make_optimizer(lib: str, name: str, params, mode: str = "list") -> torch.optim.Optimizer:
    optimizer = optimizer_class(lib, name)(params, **optimizer_kwargs(lib, name, mode))
    if hasattr(optimizer, "train"):  # schedule-free: steps in train mode only
        optimizer.train()
    return optimizer


# --- snapshots (worker side) -------------------------------------------------------------------

def _dtensor_type():
    from torch.distributed.tensor import DTensor

    return DTensor


def full(value: Any) -> Any:
    """A detached CPU copy; a DTensor gathered whole (a collective: every rank must call it)."""
    if isinstance(value, _dtensor_type()):
        value = value.full_tensor()
    if torch.is_tensor(value):
        return value.detach().clone()
    return value


def kind(value: Any) -> str:
    """A state value's type, with a DTensor's placements: ours must shard state as torch does."""
    if isinstance(value, _dtensor_type()):
        return f"DTensor{tuple(str(placement) for placement in value.placements)}"
    return type(value).__name__


def param_names(model: nn.Module) -> dict[nn.Parameter, str]:
    return {param: name for name, param in model.named_parameters()}


def param_values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: full(param) for name, param in model.named_parameters()}


def _params_in_order(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [param for group in optimizer.param_groups for param in group["params"]]


def optimizer_state(optimizer: torch.optim.Optimizer, names: dict) -> dict[str, dict[str, Any]]:
    """Per-param state by param name, DTensors gathered whole."""
    return {names[param]: {key: full(value) for key, value in optimizer.state[param].items()}
            for param in _params_in_order(optimizer) if param in optimizer.state}


def state_kinds(optimizer: torch.optim.Optimizer, names: dict) -> dict[str, dict[str, str]]:
    return {names[param]: {key: kind(value) for key, value in optimizer.state[param].items()}
            for param in _params_in_order(optimizer) if param in optimizer.state}


# --- comparison (test side) --------------------------------------------------------------------

def assert_matches(ours: Any, torchs: Any, *, exact: bool, what: str, other: str = "torch's") -> None:
    """``ours`` equals ``torchs`` throughout: same keys and types, tensors equal exactly where
    ``exact`` (and for every ``step``), else to assert_close's default tolerances. ``other`` names
    the expected side in messages."""
    if isinstance(torchs, dict):
        assert isinstance(ours, dict), f"{what}: ours is a {type(ours).__name__}, {other} a dict"
        assert set(ours) == set(torchs), (
            f"{what}: keys differ: ours {sorted(ours, key=str)}, {other} {sorted(torchs, key=str)}")
        for key in torchs:
            assert_matches(ours[key], torchs[key], exact=exact or key == "step", what=f"{what}[{key!r}]",
                           other=other)
    elif isinstance(torchs, (list, tuple)) and not isinstance(torchs, str):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(torchs), (
            f"{what}: ours is {ours!r}, {other} {torchs!r}")
        for index, (a, b) in enumerate(zip(ours, torchs)):
            assert_matches(a, b, exact=exact, what=f"{what}[{index}]", other=other)
    elif torch.is_tensor(torchs):
        assert torch.is_tensor(ours), f"{what}: ours is {ours!r} ({type(ours).__name__}), {other} a tensor"
        tolerance = dict(rtol=0, atol=0) if exact else {}
        assert_close(ours, torchs, **tolerance, msg=lambda message: f"{what} ({'exact' if exact else 'to rounding'}): "
                     f"ours differs from {other}\n{message}")
    else:
        assert ours == torchs, f"{what}: ours is {ours!r}, {other} {torchs!r}"
