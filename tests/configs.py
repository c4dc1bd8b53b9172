"""The optimizer configurations the tests run: torch's own, from ``optim_db``, plus ours. One
``Case`` each; parity tests cross them with dtypes and layouts. (The benchmarks do not use them:
theirs are in ``benchmarks/variants.py``.)"""

import dataclasses
import re
from typing import Any

import torch
from torch.testing._internal.common_optimizers import optim_db

import optkernels
import wrappers

FORLOOP_AND_FOREACH = frozenset({"forloop", "foreach"})


@dataclasses.dataclass(frozen=True)
class Parity:
    """How our kernel for one torch.optim class relates to torch's implementations."""

    # torch's modes whose op order ours follows, so fp32/fp64 results are bitwise equal;
    # against the others we agree to rounding.
    exact_modes: frozenset[str] = FORLOOP_AND_FOREACH
    complex: bool = True  # torch.optim takes complex params for it
    # Checked by its own parity module, not the generic one (closure-driven, sparse or 2-D only).
    dedicated: bool = False


PARITY: dict[type, Parity] = {
    torch.optim.Adam: Parity(),
    torch.optim.AdamW: Parity(),
    # torch's for-loop RAdam computes the rectified step in another order than its foreach path.
    torch.optim.RAdam: Parity(exact_modes=frozenset({"foreach"})),
    torch.optim.SGD: Parity(),
    # --- one line per class; each is owned by whoever writes that algorithm ---
    # torch's for-loop NAdam divides v_t by 1-beta2^t before the sqrt; its foreach path (ours) after.
    torch.optim.NAdam: Parity(exact_modes=frozenset({"foreach"})),
    torch.optim.Adamax: Parity(),
    # Sparse grads, and state made at construction: more in tests/wrappers/test_adagrad.py.
    torch.optim.Adagrad: Parity(),
    torch.optim.Adadelta: Parity(),
    torch.optim.RMSprop: Parity(),
    torch.optim.Rprop: Parity(),
    # We follow torch's for-loop ASGD (its CPU default) op for op. Its foreach path updates
    # theta - eta*(g + lambd*theta), averages while mu == 1 too, and computes the float32 eta in
    # float32 arithmetic, so float64 params agree with it only to float32 roundings of eta: a
    # tolerance per class, which the generic test lacks; tests/wrappers/test_asgd.py.
    torch.optim.ASGD: Parity(exact_modes=frozenset({"forloop"}), dedicated=True),
    # torch's default (for-loop) path adds the update with alpha in one rounding; its foreach path
    # multiplies, then adds. torch refuses complex params.
    torch.optim.Adafactor: Parity(exact_modes=frozenset({"forloop"}), complex=False),
    torch.optim.SparseAdam: Parity(dedicated=True),
    # Closure-driven (tests/*/test_lbfgs.py). torch's one path, op for op: bitwise with one param;
    # with several, per-tensor dots sum in another order than torch's flat dot, so to rounding.
    torch.optim.LBFGS: Parity(exact_modes=frozenset(), dedicated=True),
    # 2-D params only (tests/wrappers/test_muon.py); torch has one (for-loop) path, equal bit for bit
    torch.optim.Muon: Parity(exact_modes=frozenset({"forloop"}), complex=False, dedicated=True),
}

# Our wrapper for each torch.optim class that has one (same name).
OURS = {cls: getattr(wrappers, cls.__name__) for cls in PARITY if hasattr(wrappers, cls.__name__)}


@dataclasses.dataclass(frozen=True)
class Case:
    ours: type
    reference: type  # the torch.optim class
    kwargs: dict[str, Any]
    desc: str
    # torch modes we equal bitwise in fp32/fp64; None: the class's ``PARITY`` entry.
    exact_modes: frozenset[str] | None = None
    # Written on a case whose numbers differ from torch's by more than rounding order.
    tolerance: dict[str, float] | None = None

    @property
    def id(self) -> str:
        return f"{self.reference.__name__}-{re.sub(r'[^A-Za-z0-9]+', '_', self.desc)}"

    @property
    def parity(self) -> Parity:
        return PARITY[self.reference]

    def torch_modes(self, dtype: torch.dtype) -> dict[str, bool]:
        """torch's implementations to compare with, each mapped to 'bitwise equal expected'.

        Our kernels run torch's op sequence with foreach ops. On CPU, torch's for-loop path
        (its default there) runs the same ops one tensor at a time and rounds identically. Its
        foreach path does too in fp32 and fp64, but in bf16 its ``_foreach_mul_`` rounds the
        scalar (beta2, momentum) to bf16 first; we keep it in fp32 as the for-loop path does
        (see ``optkernels._math.scale_``), so there we equal the for-loop path, not foreach.

        Complex params: torch's Adam and RAdam view them as real pairs before weight decay,
        its SGD works on them as complex numbers; our kernels view them as real and weight
        decay keeps them complex, so a step rounds differently from torch's in places.
        """
        exact = self.parity.exact_modes if self.exact_modes is None else self.exact_modes
        low_precision = dtype in (torch.bfloat16, torch.float16)
        modes = {"forloop": "forloop" in exact and not dtype.is_complex}
        # torch.optim.Adam refuses a tensor lr with foreach=True
        if not (isinstance(self.kwargs.get("lr"), torch.Tensor) and issubclass(self.reference, torch.optim.Adam)):
            modes["foreach"] = "foreach" in exact and not (low_precision or dtype.is_complex)
        return modes


def _torch_cases() -> list[Case]:
    cases = []
    for info in optim_db:
        ours = OURS.get(info.optim_cls)
        if ours is None or PARITY[info.optim_cls].dedicated:
            continue
        for optim_input in info.optim_inputs_func(device="cpu"):
            cases.append(Case(ours, info.optim_cls, optim_input.kwargs, optim_input.desc))
    return cases


def _case(name: str, kwargs: dict[str, Any], desc: str, **fields) -> Case | None:
    """One of our cases for the torch.optim class ``name``; None until we have its wrapper."""
    reference = getattr(torch.optim, name)
    return Case(OURS[reference], reference, kwargs, desc, **fields) if reference in OURS else None


_OUR_CASES = [
    _case("Adam", dict(weight_decay=0.1, decoupled_weight_decay=True), "decoupled"),
    _case("Adam", dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, amsgrad=True, maximize=True),
          "amsgrad maximize betas"),
    # torch computes lr/(1-beta1^t) in float32 when lr is a tensor; we compute it in double
    _case("Adam", dict(lr=torch.tensor(0.01)), "tensor lr", exact_modes=frozenset(),
          tolerance=dict(rtol=1e-6, atol=1e-6)),
    _case("AdamW", dict(weight_decay=0.3, amsgrad=True, maximize=True), "amsgrad maximize"),
    _case("RAdam", dict(lr=0.05, betas=(0.5, 0.6)), "early rectification"),
    _case("RAdam", dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True), "decoupled maximize"),
    _case("SGD", dict(lr=0.05, momentum=0.5, nesterov=True), "nesterov no decay"),
    _case("SGD", dict(momentum=0.9, dampening=0.3, weight_decay=0.2, maximize=True), "dampening decay maximize"),
    # --- NAdam, Adamax ---
    _case("NAdam", dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, momentum_decay=0.5, maximize=True),
          "betas eps fast momentum warmup maximize"),
    _case("NAdam", dict(momentum_decay=0.0, weight_decay=0.2, decoupled_weight_decay=True, maximize=True),
          "constant momentum decoupled maximize"),
    _case("Adamax", dict(lr=0.05, betas=(0.5, 0.8), eps=1e-3, weight_decay=0.3), "betas eps weight_decay"),
    # A tensor lr: torch's for-loop path computes the step sizes with the tensor, in its dtype; its
    # foreach path and ours with lr.item(), in double. A float64 lr rounds alike in both.
    _case("NAdam", dict(lr=torch.tensor(0.01, dtype=torch.float64)), "float64 tensor lr"),
    # A float32 lr: the for-loop path's step sizes carry float32 roundings (~1e-8 relative, seen in
    # fp64). (NAdam's float32-lr case is tests/wrappers/test_nadam.py's: a case-wide tolerance this
    # tight would fail its bf16 run, which is compared with the for-loop path to rounding.)
    _case("Adamax", dict(lr=torch.tensor(0.01), maximize=True), "tensor lr maximize",
          exact_modes=frozenset({"foreach"}), tolerance=dict(rtol=1e-6, atol=1e-6)),
    # --- Adagrad, Adadelta, RMSprop ---
    _case("Adadelta", dict(lr=torch.tensor(0.5), rho=0.5, eps=1e-3, maximize=True), "tensor lr rho eps maximize"),
    _case("Adadelta", dict(lr=0.1, rho=1.0, weight_decay=0.2), "rho 1 decay"),
    # momentum 0.5 is exact in bf16: torch's foreach path rounds it to bf16 (0.9 -> 0.8984375), its
    # for-loop and we do not, and the bf16 comparison with foreach would measure that, not us
    _case("RMSprop", dict(momentum=0.5), "momentum not centered"),
    _case("RMSprop", dict(lr=torch.tensor(0.01), alpha=0.5, eps=1e-3, centered=True, maximize=True),
          "tensor lr centered maximize"),
    _case("RMSprop", dict(alpha=1.0, eps=1.0, momentum=0.5, weight_decay=0.2), "alpha 1 momentum decay"),
    # --- Rprop, ASGD ---
    # step sizes hit both bounds within the run (etaplus 1.7 from 0.01 to 0.05; etaminus 0.3 to 1e-3)
    _case("Rprop", dict(lr=0.01, etas=(0.3, 1.7), step_sizes=(1e-3, 0.05), maximize=True),
          "etas step_sizes clamped maximize"),
    _case("Rprop", dict(lr=torch.tensor(0.05), step_sizes=(0.0, float("inf"))), "tensor lr unbounded"),
    # (ASGD is tested in tests/wrappers/test_asgd.py: see PARITY)
    # --- Adafactor ---
    # lr above 1/sqrt(t), so rho_t = 1/sqrt(t) falls each step; eps1 near the mean of g^2 and eps2
    # near RMS(param), so both bind for some tensors and steps
    _case("Adafactor", dict(lr=0.5, eps=(0.9, 0.9), d=2.0, beta2_decay=-0.5), "large lr eps d"),
    # 1 - lr * weight_decay = 1 - 2^-7 is exact in bf16: torch's foreach path rounds it to bf16, its
    # for-loop path and we do not, and the bf16 comparison with foreach would measure that, not us
    _case("Adafactor", dict(lr=0.0625, weight_decay=0.125, maximize=True), "decay maximize"),
    # (a tensor lr, used as its value where torch computes with it in its dtype, is compared with
    # torch to rounding in tests/optkernels/test_adafactor.py and tests/wrappers/test_adafactor.py)
]

CASES: list[Case] = _torch_cases() + [case for case in _OUR_CASES if case is not None]


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
    return {"foreach": "foreach" in PARITY[getattr(torch.optim, name)].exact_modes}


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
