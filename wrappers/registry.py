"""Every algorithm in one table: what the tests, the benchmarks and the README's table read.

An :class:`Algorithm` names one optimizer: its wrapper class and kernel, the per-param state
keys it keeps, the minimum memory traffic of its update (the benchmarks' roofline), the
hyperparameters the benchmarks and the convergence report run it with, the configurations the
parity tests check, and the reference implementation those tests compare it with (torch.optim's
class, or the authors' package where torch has none). Adding an algorithm is a kernel module, a
wrapper and one :func:`register` call (or one entry below):

>>> from wrappers import registry
>>> registry.ALGORITHMS["adam"].wrapper.__name__, registry.ALGORITHMS["adam"].reference
('Adam', 'torch.optim.Adam')
>>> registry.ALGORITHMS["lion"].bytes_per_element(4)  # fp32: param and momentum read and written, grad read
20

References other than torch.optim are import paths resolved only when asked for
(:meth:`Algorithm.reference_class`): the packages are in the ``test`` extra, the transcribed
rules in ``tests/reference.py``; the library itself never imports them.
"""

import importlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

import optkernels as ok

from .adabelief import AdaBelief
from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .adopt import ADOPT
from .asgd import ASGD
from .lbfgs import LBFGS
from .lion import Lion
from .muon import Muon
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .schedule_free import AdamWScheduleFree, SGDScheduleFree
from .sgd import SGD
from .sparse_adam import SparseAdam

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Config:
    """One configuration the parity tests run: the constructor's keyword arguments."""

    desc: str
    kwargs: Mapping[str, Any]
    # the reference's modes we equal bit for bit in fp32/fp64 with it; None: the algorithm's
    exact_modes: frozenset[str] | None = None
    # written on a configuration whose numbers differ from the reference's by more than rounding order
    tolerance: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Parity:
    """How our numbers relate to the reference's, as the parity tests check them."""

    # Modes of the reference we equal bit for bit in fp32/fp64: torch.optim's "forloop" and
    # "foreach" (ours runs one of their op orders), or "reference" for a reference with one
    # path. None: every mode it has.
    exact_modes: frozenset[str] | None = None
    complex: bool = True  # the reference takes complex params
    # checked by its own parity module, not the generic one (closure-driven, sparse or 2-D only, ...)
    dedicated: bool = False


@dataclass(frozen=True)
class Algorithm:
    name: str
    wrapper: type[torch.optim.Optimizer]
    kernel: Callable[..., Any]
    state: tuple[str, ...]  # the per-param state keys; "(when)" marks a conditional one
    reference: str  # import path: "torch.optim.Adam", "lion_pytorch:Lion", "tests.reference:AdaBeliefOfficial"
    reference_name: str  # as the README names it
    agreement: str  # how our numbers relate to the reference's, in words (the README's last column)
    # Tensor-sized reads + writes of an ideal one-pass update of a param of a shape; None: not
    # a memory-bound update over fixed grads (closures, sparse grads, matrix products): not benchmarked.
    passes: int | Callable[[Shape], int] | None = 7
    options: Mapping[str, Any] = field(default_factory=dict)  # benchmarks' and the convergence report's
    configs: tuple[Config, ...] = ()  # the parity tests' (torch.optim's own optim_db adds its configurations)
    parity: Parity = Parity()
    # Untimed steps before the update takes its lasting form: RAdam and AdaBelief skip the
    # rectified branch until step 6 (beta2 = 0.999), ADOPT's first step only fills v.
    settle_steps: int = 0
    # lr per task of the convergence report (benchmarks/convergence.py); missing: not run there
    convergence_lr: Mapping[str, float] = field(default_factory=dict)

    @property
    def torch_class(self) -> type[torch.optim.Optimizer] | None:
        """torch.optim's class of the algorithm, where torch has it."""
        return self.reference_class() if self.reference.startswith("torch.optim.") else None

    def reference_class(self) -> type[torch.optim.Optimizer]:
        """The reference implementation (imported now: it may need the ``test`` extra)."""
        module, _, name = self.reference.rpartition(":") if ":" in self.reference else self.reference.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def min_passes(self, shape: Shape) -> int:
        return self.passes(shape) if callable(self.passes) else self.passes

    def bytes_per_element(self, element_size: int, shape: Shape = (4096,)) -> int:
        """The least bytes one step moves per param element (the roofline's), for a param of ``shape``."""
        return self.min_passes(shape) * element_size


def _adafactor_passes(shape: Shape) -> int:
    # Three sweeps, each waiting for the reductions of the one before: RMS(param) and the
    # squared-grad statistics; RMS of the update; the update. Matrices: param read twice and
    # written, grad read three times (factors are tiny). Vectors: the variance read three times
    # and written once on top, and the grad read in every sweep.
    return 6 if len(shape) > 1 else 10


ADAM_OPTIONS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
FORLOOP, FOREACH = frozenset({"forloop"}), frozenset({"foreach"})

ALGORITHMS: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    """Add ``algorithm`` to :data:`ALGORITHMS` (its name must be new)."""
    if algorithm.name in ALGORITHMS:
        raise ValueError(f"an algorithm named {algorithm.name!r} is registered already")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


@contextmanager
def registered(algorithm: Algorithm) -> Iterator[Algorithm]:
    """``algorithm`` in the registry for the ``with`` block only (tests add toy algorithms so)."""
    register(algorithm)
    try:
        yield algorithm
    finally:
        del ALGORITHMS[algorithm.name]


for _algorithm in (
    # reads param, grad, exp_avg, exp_avg_sq; writes param, exp_avg, exp_avg_sq: 7 passes
    Algorithm(
        "adam", Adam, ok.adam_update, ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq (amsgrad)"),
        "torch.optim.Adam", "torch.optim.Adam", "bitwise, both paths", options=ADAM_OPTIONS,
        configs=(
            Config("decoupled", dict(weight_decay=0.1, decoupled_weight_decay=True)),
            Config("amsgrad maximize betas", dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, amsgrad=True, maximize=True)),
            # torch computes lr/(1-beta1^t) in float32 when lr is a tensor; we compute it in double
            Config("tensor lr", dict(lr=torch.tensor(0.01)), exact_modes=frozenset(),
                   tolerance=dict(rtol=1e-6, atol=1e-6)),
        ), convergence_lr=dict(mlp=0.0001, digits=0.003, charlm=0.01)),
    Algorithm(
        "adamw", AdamW, ok.adam_update, ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq (amsgrad)"),
        "torch.optim.AdamW", "torch.optim.AdamW", "bitwise, both paths (decoupled decay: `weight_decay_l2`)",
        options=dict(ADAM_OPTIONS, weight_decay=1e-2),
        configs=(Config("amsgrad maximize", dict(weight_decay=0.3, amsgrad=True, maximize=True)),),
        convergence_lr=dict(mlp=0.0001, digits=0.003, charlm=0.01)),
    Algorithm(
        "radam", RAdam, ok.radam_update, ("step", "exp_avg", "exp_avg_sq"), "torch.optim.RAdam", "torch.optim.RAdam",
        "bitwise to foreach; to rounding vs the for-loop (another op order)", options=ADAM_OPTIONS, settle_steps=5,
        # torch's for-loop RAdam computes the rectified step in another order than its foreach path
        parity=Parity(exact_modes=FOREACH),
        configs=(
            Config("early rectification", dict(lr=0.05, betas=(0.5, 0.6))),
            Config("decoupled maximize", dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
        ), convergence_lr=dict(mlp=0.0003, digits=0.01, charlm=0.03)),
    Algorithm(
        "nadam", NAdam, ok.nadam_update, ("step", "mu_product (0-d)", "exp_avg", "exp_avg_sq"),
        "torch.optim.NAdam", "torch.optim.NAdam",
        "bitwise to foreach; to rounding vs the for-loop (it divides by 1-β₂ᵗ before the square root)",
        options=ADAM_OPTIONS, parity=Parity(exact_modes=FOREACH),
        configs=(
            Config("betas eps fast momentum warmup maximize",
                   dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, momentum_decay=0.5, maximize=True)),
            Config("constant momentum decoupled maximize",
                   dict(momentum_decay=0.0, weight_decay=0.2, decoupled_weight_decay=True, maximize=True)),
            # A tensor lr: torch's for-loop path computes the step sizes with the tensor, in its dtype; its
            # foreach path and ours with lr.item(), in double. A float64 lr rounds alike in both.
            Config("float64 tensor lr", dict(lr=torch.tensor(0.01, dtype=torch.float64))),
        ), convergence_lr=dict(mlp=0.0001, digits=0.006, charlm=0.01)),
    # reads param, grad, exp_avg, exp_inf; writes param, exp_avg, exp_inf
    Algorithm(
        "adamax", Adamax, ok.adamax_update, ("step", "exp_avg", "exp_inf"), "torch.optim.Adamax", "torch.optim.Adamax",
        "bitwise, both paths", options=dict(ADAM_OPTIONS, lr=2e-3),
        configs=(
            Config("betas eps weight_decay", dict(lr=0.05, betas=(0.5, 0.8), eps=1e-3, weight_decay=0.3)),
            # A float32 lr: the for-loop path's step sizes carry float32 roundings (~1e-8 relative, seen in fp64).
            Config("tensor lr maximize", dict(lr=torch.tensor(0.01), maximize=True), exact_modes=FOREACH,
                   tolerance=dict(rtol=1e-6, atol=1e-6)),
        ), convergence_lr=dict(mlp=0.0002, digits=0.006, charlm=0.02)),
    Algorithm(
        "adabelief", AdaBelief, ok.adabelief_update, ("step", "exp_avg", "exp_avg_var", "max_exp_avg_var (amsgrad)"),
        "tests.reference:AdaBeliefOfficial", "adabelief-pytorch 0.2.1 (its rule transcribed in tests/reference.py)",
        "torch has none: bitwise equal to adabelief-pytorch 0.2.1 (fp32, fp64, bf16)",
        options=dict(ADAM_OPTIONS, eps=1e-16), settle_steps=5,
        parity=Parity(dedicated=True),  # tests/*/test_adabelief.py: every option, against the transcribed rule
        convergence_lr=dict(mlp=0.0001, digits=0.01, charlm=0.03)),
    # reads param, grad, momentum_buffer; writes param, momentum_buffer
    Algorithm(
        "sgd", SGD, ok.sgd_update, ("momentum_buffer (momentum > 0; no `step`)",), "torch.optim.SGD", "torch.optim.SGD",
        "bitwise, both paths", passes=5, options=dict(lr=1e-2, momentum=0.9),
        configs=(
            Config("nesterov no decay", dict(lr=0.05, momentum=0.5, nesterov=True)),
            Config("dampening decay maximize", dict(momentum=0.9, dampening=0.3, weight_decay=0.2, maximize=True)),
        ), convergence_lr=dict(mlp=1e-05, digits=0.03, charlm=0.3)),
    # reads param, grad, square_avg; writes param, square_avg
    Algorithm(
        "rmsprop", RMSprop, ok.rmsprop_update,
        ("step", "square_avg", "momentum_buffer (momentum > 0)", "grad_avg (centered)"),
        "torch.optim.RMSprop", "torch.optim.RMSprop", "bitwise, both paths", passes=5, options=dict(lr=1e-2),
        configs=(
            # momentum 0.5 is exact in bf16: torch's foreach path rounds it to bf16 (0.9 -> 0.8984375), its
            # for-loop and we do not, and the bf16 comparison with foreach would measure that, not us
            Config("momentum not centered", dict(momentum=0.5)),
            Config("tensor lr centered maximize",
                   dict(lr=torch.tensor(0.01), alpha=0.5, eps=1e-3, centered=True, maximize=True)),
            Config("alpha 1 momentum decay", dict(alpha=1.0, eps=1.0, momentum=0.5, weight_decay=0.2)),
        ), convergence_lr=dict(mlp=0.0001, digits=0.003, charlm=0.003)),
    # reads param, grad, sum; writes param, sum
    Algorithm(
        "adagrad", Adagrad, ok.adagrad_update, ("step", "sum (made at construction, as torch does)"),
        "torch.optim.Adagrad", "torch.optim.Adagrad", "bitwise, both paths; sparse grads too", passes=5,
        options=dict(lr=1e-2), convergence_lr=dict(mlp=0.01, digits=0.03, charlm=0.03)),
    # reads param, grad, square_avg, acc_delta; writes param, square_avg, acc_delta
    Algorithm(
        "adadelta", Adadelta, ok.adadelta_update, ("step", "square_avg", "acc_delta"), "torch.optim.Adadelta",
        "torch.optim.Adadelta", "bitwise, both paths", options=dict(lr=1.0),
        configs=(
            Config("tensor lr rho eps maximize", dict(lr=torch.tensor(0.5), rho=0.5, eps=1e-3, maximize=True)),
            Config("rho 1 decay", dict(lr=0.1, rho=1.0, weight_decay=0.2)),
        ), convergence_lr=dict(mlp=0.01, digits=3.0, charlm=3.0)),
    # reads param, grad, prev, step_size; writes param, prev, step_size
    Algorithm(
        "rprop", Rprop, ok.rprop_update, ("step", "prev", "step_size (filled with lr)"), "torch.optim.Rprop",
        "torch.optim.Rprop", "bitwise, both paths, every dtype", options=dict(lr=1e-2),
        configs=(
            # step sizes hit both bounds within the run (etaplus 1.7 from 0.01 to 0.05; etaminus 0.3 to 1e-3)
            Config("etas step_sizes clamped maximize",
                   dict(lr=0.01, etas=(0.3, 1.7), step_sizes=(1e-3, 0.05), maximize=True)),
            Config("tensor lr unbounded", dict(lr=torch.tensor(0.05), step_sizes=(0.0, float("inf")))),
        ), convergence_lr=dict(mlp=0.01, digits=0.001, charlm=0.01)),
    # reads param, grad; writes param, ax (a copy of the param until step t0; eta and mu are scalars)
    Algorithm(
        "asgd", ASGD, ok.asgd_update, ("step", "eta (0-d)", "mu (0-d)", "ax"), "torch.optim.ASGD", "torch.optim.ASGD",
        "bitwise to the for-loop; foreach computes eta in float32: to float32 rounding", passes=4,
        options=dict(lr=1e-2),
        # We follow torch's for-loop ASGD (its CPU default) op for op. Its foreach path updates
        # theta - eta*(g + lambd*theta), averages while mu == 1 too, and computes the float32 eta in
        # float32 arithmetic, so float64 params agree with it only to float32 roundings of eta: a
        # tolerance per class, which the generic test lacks; tests/wrappers/test_asgd.py.
        parity=Parity(exact_modes=FORLOOP, dedicated=True), convergence_lr=dict(mlp=0.0001, digits=0.3,
                                                                                charlm=1.0)),
    Algorithm(
        "adafactor", Adafactor, ok.adafactor_update,
        ("step", "row_var (2-D and up)", "col_var (2-D and up)", "variance (0-d, 1-d)"),
        "torch.optim.Adafactor", "torch.optim.Adafactor",
        "bitwise to the for-loop (torch's default on every device); to rounding vs foreach",
        passes=_adafactor_passes, options=dict(lr=1e-2),
        # torch's default (for-loop) path adds the update with alpha in one rounding; its foreach path
        # multiplies, then adds. torch refuses complex params.
        parity=Parity(exact_modes=FORLOOP, complex=False),
        configs=(
            # lr above 1/sqrt(t), so rho_t = 1/sqrt(t) falls each step; eps1 near the mean of g^2 and eps2
            # near RMS(param), so both bind for some tensors and steps
            Config("large lr eps d", dict(lr=0.5, eps=(0.9, 0.9), d=2.0, beta2_decay=-0.5)),
            # 1 - lr * weight_decay = 1 - 2^-7 is exact in bf16: torch's foreach path rounds it to bf16, its
            # for-loop path and we do not, and the bf16 comparison with foreach would measure that, not us
            Config("decay maximize", dict(lr=0.0625, weight_decay=0.125, maximize=True)),
        ), convergence_lr=dict(mlp=0.003, digits=0.1, charlm=0.03)),
    Algorithm(
        "sparse_adam", SparseAdam, ok.sparse_adam_update, ("step (an int, as torch)", "exp_avg", "exp_avg_sq"),
        "torch.optim.SparseAdam", "torch.optim.SparseAdam", "bitwise (torch has one path)", passes=None,
        parity=Parity(dedicated=True)),
    Algorithm(
        "lbfgs", LBFGS, ok.lbfgs_update,
        ("torch's keys under the first param; vectors per param, flat in `state_dict()`",),
        "torch.optim.LBFGS", "torch.optim.LBFGS",
        "bitwise with one param (params that never get a grad beside it change nothing: bitwise as torch "
        "without them); to rounding with several (dot products sum per tensor, never flattening the model)",
        passes=None, parity=Parity(exact_modes=frozenset(), dedicated=True)),
    Algorithm(
        "muon", Muon, ok.muon_update, ("momentum_buffer (no `step`; 2-D params only)",), "torch.optim.Muon",
        "torch.optim.Muon", "bitwise, every dtype (bf16 without Nesterov: see below)", passes=None,
        parity=Parity(exact_modes=FORLOOP, complex=False, dedicated=True),
        convergence_lr=dict(mlp=0.002, digits=0.02, charlm=0.02)),
    # reads param, grad, exp_avg; writes param, exp_avg
    Algorithm(
        "lion", Lion, ok.lion_update, ("exp_avg (no `step`)",), "lion_pytorch:Lion", "lion-pytorch 0.2.5",
        "torch has none: bitwise equal to lion-pytorch 0.2.5 (fp32, fp64, bf16)", passes=5,
        options=dict(lr=1e-4, betas=(0.9, 0.99)),
        parity=Parity(complex=False),  # lion-pytorch's sign of a complex number is not per part
        configs=(
            Config("decay", dict(lr=1e-3, weight_decay=0.5)),
            Config("decoupled decay betas", dict(lr=1e-3, betas=(0.5, 0.9), weight_decay=0.05,
                                                 decoupled_weight_decay=True)),
        ), convergence_lr=dict(mlp=1e-4, digits=1e-3, charlm=1e-2)),
    Algorithm(
        "adopt", ADOPT, ok.adopt_update, ("step", "exp_avg", "exp_avg_sq"), "tests.reference:ADOPTAuthors",
        "the authors' ADOPT (iShohei220/adopt, transcribed in tests/reference.py; pytorch-optimizer 4.1.0 "
        "where it agrees)", "torch has none: bitwise equal to the authors' rule (fp32, fp64)", settle_steps=1,
        options=dict(lr=1e-3, betas=(0.9, 0.9999), eps=1e-6),
        configs=(
            Config("unclipped", dict(clip_lambda=None)),
            Config("decoupled maximize betas", dict(lr=0.01, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.5,
                                                    decouple=True, maximize=True)),
            Config("coupled", dict(weight_decay=0.5)),
        ), convergence_lr=dict(mlp=1e-4, digits=3e-3, charlm=1e-2)),
    # reads y, grad, z, v; writes y, z, v
    Algorithm(
        "adamw_schedule_free", AdamWScheduleFree, ok.schedule_free_adamw_update, ("z", "exp_avg_sq"),
        "schedulefree:AdamWScheduleFree", "schedulefree 1.4.1",
        "torch has none: bitwise equal to schedulefree 1.4.1 (fp32, fp64; both its paths)",
        options=dict(lr=2.5e-3, warmup_steps=10),
        parity=Parity(complex=False),
        configs=(
            Config("warmup r power", dict(lr=0.01, warmup_steps=3, r=1.5, weight_lr_power=1.0)),
            Config("betas eps decay", dict(lr=0.02, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.01, r=0.5)),
        ), convergence_lr=dict(mlp=1e-3, digits=1e-2, charlm=3e-2)),
    # reads y, grad, z; writes y, z
    Algorithm(
        "sgd_schedule_free", SGDScheduleFree, ok.schedule_free_sgd_update, ("z",), "schedulefree:SGDScheduleFree",
        "schedulefree 1.4.1", "torch has none: bitwise equal to schedulefree 1.4.1 (fp32, fp64; both its paths)",
        passes=5, options=dict(lr=1.0, warmup_steps=10),
        parity=Parity(complex=False),
        configs=(
            Config("warmup r power", dict(lr=0.1, warmup_steps=3, r=1.5, weight_lr_power=1.0)),
            Config("momentum decay", dict(lr=0.05, momentum=0.5, weight_decay=0.01, r=0.5)),
        ), convergence_lr=dict(mlp=1e-3, digits=1.0, charlm=3.0)),
):
    register(_algorithm)
del _algorithm


def table() -> str:
    """The README's table of algorithms, one row per registered algorithm."""
    lines = ["| algorithm | wrapper (`wrappers`) | kernel (`optkernels`) | state per param | reference "
             "| vs the reference |",
             "|---|---|---|---|---|---|"]
    for algorithm in ALGORITHMS.values():
        state = ", ".join(_code_words(key) for key in algorithm.state)
        lines.append(f"| {algorithm.name} | `{algorithm.wrapper.__name__}` | `{algorithm.kernel.__name__}` | {state} "
                     f"| {algorithm.reference_name} | {algorithm.agreement} |")
    return "\n".join(lines) + "\n"


def _code_words(key: str) -> str:
    """``exp_avg (amsgrad)`` -> ```exp_avg` (amsgrad)``: the key as code, its note as text."""
    name, _, note = key.partition(" ")
    return f"`{name}` {note}".strip() if name.isidentifier() else key
