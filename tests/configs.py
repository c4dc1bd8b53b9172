"""The optimizer configurations the tests run: torch's own, from ``optim_db``, plus those of
``wrappers.registry`` (every algorithm's ``configs``). One ``Case`` each; parity tests cross them
with dtypes and layouts."""

import dataclasses
import re
from typing import Any

import torch
from torch.testing._internal.common_optimizers import optim_db

import optkernels
import wrappers
from wrappers import registry

TORCH_MODES = frozenset({"forloop", "foreach"})


def _exact_modes(algorithm: registry.Algorithm) -> frozenset[str]:
    modes = algorithm.parity.exact_modes
    if modes is not None:
        return modes
    return TORCH_MODES if algorithm.torch_class is not None else frozenset({"reference"})


# Our wrapper for each torch.optim class that has one.
OURS = {algorithm.torch_class: algorithm.wrapper for algorithm in registry.ALGORITHMS.values()
        if algorithm.torch_class is not None}


@dataclasses.dataclass(frozen=True)
class Case:
    ours: type
    reference: type  # the torch.optim class, or the reference package's
    kwargs: dict[str, Any]
    desc: str
    # reference modes we equal bitwise in fp32/fp64; None: the algorithm's (its registry entry's parity)
    exact_modes: frozenset[str] | None = None
    # Written on a case whose numbers differ from torch's by more than rounding order.
    tolerance: dict[str, float] | None = None
    algorithm: registry.Algorithm | None = None  # None: looked up by ``ours``

    @property
    def id(self) -> str:
        return f"{self.reference.__name__}-{re.sub(r'[^A-Za-z0-9]+', '_', self.desc)}"

    @property
    def entry(self) -> registry.Algorithm:
        if self.algorithm is not None:
            return self.algorithm
        return next(a for a in registry.ALGORITHMS.values() if a.wrapper is self.ours and a.reference_class() is self.reference)

    @property
    def parity(self) -> registry.Parity:
        return self.entry.parity

    def reference_modes(self, dtype: torch.dtype) -> dict[str, tuple[dict[str, Any], bool]]:
        """The reference's implementations to compare with: mode -> (its constructor's extra
        options, whether bitwise equality is expected).

        torch.optim: our kernels run torch's op sequence with foreach ops. On CPU, torch's for-loop
        path (its default there) runs the same ops one tensor at a time and rounds identically. Its
        foreach path does too in fp32 and fp64, but in bf16 its ``_foreach_mul_`` rounds the
        scalar (beta2, momentum) to bf16 first; we keep it in fp32 as the for-loop path does
        (see ``optkernels._math.scale_``), so there we equal the for-loop path, not foreach.

        Complex params: torch's Adam and RAdam view them as real pairs before weight decay,
        its SGD works on them as complex numbers; our kernels view them as real and weight
        decay keeps them complex, so a step rounds differently from torch's in places.

        Another reference (lion-pytorch, schedulefree, the authors' rules): its one path, bitwise
        in fp32 and fp64 where the algorithm's parity says so.
        """
        exact = _exact_modes(self.entry) if self.exact_modes is None else self.exact_modes
        low_precision = dtype in (torch.bfloat16, torch.float16)
        if self.entry.torch_class is None:
            return {"reference": ({}, "reference" in exact and not (low_precision or dtype.is_complex))}
        modes = {"forloop": (dict(foreach=False), "forloop" in exact and not dtype.is_complex)}
        # torch.optim.Adam refuses a tensor lr with foreach=True
        if not (isinstance(self.kwargs.get("lr"), torch.Tensor) and issubclass(self.reference, torch.optim.Adam)):
            modes["foreach"] = (dict(foreach=True), "foreach" in exact and not (low_precision or dtype.is_complex))
        return modes

    def torch_modes(self, dtype: torch.dtype) -> dict[str, bool]:
        """torch's implementations to compare with, each mapped to 'bitwise equal expected'."""
        return {mode: exact for mode, (_, exact) in self.reference_modes(dtype).items()}


def _torch_cases() -> list[Case]:
    cases = []
    for info in optim_db:
        ours = OURS.get(info.optim_cls)
        if ours is None:
            continue
        algorithm = next(a for a in registry.ALGORITHMS.values() if a.torch_class is info.optim_cls)
        if algorithm.parity.dedicated:
            continue
        for optim_input in info.optim_inputs_func(device="cpu"):
            cases.append(Case(ours, info.optim_cls, optim_input.kwargs, optim_input.desc, algorithm=algorithm))
    return cases


def registry_cases(algorithms=None) -> list[Case]:
    """The registry's configurations of each algorithm the generic parity test checks (every
    registered one unless ``dedicated``), against its reference; a non-torch algorithm's default
    configuration first."""
    cases = []
    for algorithm in (registry.ALGORITHMS.values() if algorithms is None else algorithms):
        if algorithm.parity.dedicated:
            continue
        configs = list(algorithm.configs)
        if algorithm.torch_class is None:  # torch's optim_db has no configurations of it
            configs.insert(0, registry.Config("default", {}))
        reference = algorithm.reference_class()
        cases += [Case(algorithm.wrapper, reference, dict(config.kwargs), config.desc, config.exact_modes,
                       None if config.tolerance is None else dict(config.tolerance), algorithm)
                  for config in configs]
    return cases


CASES: list[Case] = _torch_cases() + registry_cases()


# --- the wrappers as the API tests use them -------------------------------------------------------
# Wrappers that step any float params with dense grads and no closure. LBFGS (closure-driven),
# SparseAdam (sparse grads only), Muon (2-D params only) and the schedule-free pair (a step needs
# train() first, as in the reference) have API tests of their own.
OWN_API_TESTS = ("KernelOptimizer", "LBFGS", "SparseAdam", "Muon", "AdamWScheduleFree", "SGDScheduleFree")
GENERIC_WRAPPERS = [name for name in wrappers.__all__
                    if isinstance(getattr(wrappers, name), type) and issubclass(getattr(wrappers, name), torch.optim.Optimizer)
                    and name not in OWN_API_TESTS]
TORCH_TWINS = [name for name in GENERIC_WRAPPERS if hasattr(torch.optim, name)]
# A valid configuration of each, one that keeps state (SGD with momentum).
# (Rprop clamps its step sizes at step_size_min: lr=0 moves params unless that minimum is 0.)
API_KWARGS = {name: dict(lr=0.01) for name in GENERIC_WRAPPERS} | {"SGD": dict(lr=0.05, momentum=0.9),
                                                                  "Rprop": dict(lr=0.01, step_sizes=(0.0, 50))}


# Wrappers whose first step fills their state and leaves the params as they are (ADOPT's v_0 = g_0²).
STILL_FIRST_STEP = frozenset({"ADOPT"})
# Wrappers that take betas of 1, as their reference does (lion-pytorch: 0 <= beta <= 1; no division by 1 - beta)
BETAS_UP_TO_1 = frozenset({"Lion"})

# torch.optim classes that create every param's state when constructed, not at its first grad.
EAGER_STATE = frozenset({"Adagrad"})


def untouched_state(optimizer, param) -> bool:
    """The param has no state yet, or (EAGER_STATE classes) only the state made at construction."""
    state = optimizer.state.get(param, {})
    return not state or type(optimizer).__name__ in EAGER_STATE and state["step"].item() == 0


def exact_torch_mode(name: str) -> dict[str, bool]:
    """The ``foreach`` flag of the torch.optim implementation whose op order ours follows."""
    algorithm = next(a for a in registry.ALGORITHMS.values() if a.torch_class is getattr(torch.optim, name))
    return {"foreach": "foreach" in _exact_modes(algorithm)}


# The kernels called as a user calls them: ``call(params, grads, states, step, lr)`` with
# ``states`` one list per state tensor the kernel keeps (SGD's starts as ``None`` entries).
@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str
    state_count: int
    call: Any
    zero_state: bool = True  # False: state lists start as None entries


KERNELS = [
    Kernel("adam", 2, lambda p, g, s, step, lr: optkernels.adam_update(p, g, *s, step=step, lr=lr)),
    Kernel("amsgrad", 3, lambda p, g, s, step, lr: optkernels.adam_update(p, g, *s, step=step, lr=lr)),
    Kernel("radam", 2, lambda p, g, s, step, lr: optkernels.radam_update(p, g, *s, step=step, lr=lr,
                                                                          beta2=0.9)),
    Kernel("adabelief", 2, lambda p, g, s, step, lr: optkernels.adabelief_update(p, g, *s, step=step, lr=lr)),
    Kernel("adabelief-amsgrad-unrectified", 3,
           lambda p, g, s, step, lr: optkernels.adabelief_update(p, g, *s, step=step, lr=lr, rectify=False)),
    Kernel("sgd", 0, lambda p, g, s, step, lr: optkernels.sgd_update(p, g, lr=lr)),
    Kernel("sgd-nesterov", 1, lambda p, g, s, step, lr: optkernels.sgd_update(
        p, g, *s, lr=lr, momentum=0.9, nesterov=True), zero_state=False),
    Kernel("sgd-dampening", 1, lambda p, g, s, step, lr: optkernels.sgd_update(
        p, g, *s, lr=lr, momentum=0.5, dampening=0.3), zero_state=False),
]
