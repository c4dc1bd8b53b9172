"""What is timed: each algorithm's implementations, built as zero-argument ``step`` callables.

An :class:`Algorithm` names one optimizer three ways (the ``torch.optim`` class, our wrapper,
our functional kernels called as a custom training loop calls them) with the same
hyperparameters, plus how much memory traffic its update needs at least. A :class:`Variant` is
one way of stepping it; :func:`build_steppers` builds every variant available on a device, each
on its own copy of the params and grads, so that variants timed side by side in one process
never share a tensor. Our wrapper runs three ways: its default list path (foreach in chunks),
``flat=True``, and ``flat=True, compiled=True``; the last two only where its update is
elementwise (``wrapper.elementwise``).

Adding an algorithm is one more :class:`Algorithm` in :data:`ALGORITHMS`; where torch.optim
lacks it (AdaBelief) the torch variants drop out and the report shows no "x torch default".
For AdaBelief the baseline is then the official package's per-param loop
(``official_rule``), which we cannot install: its rule as transcribed in ``tests/reference.py``.
Not here: LBFGS (a closure re-evaluates the model several times per step, so a step is not an
update over fixed gradients), SparseAdam (sparse gradients) and Muon (2-D params only; its cost
is matrix products, not memory traffic).
"""

import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

import optkernels as ok
from optkernels._torch_private import foreach_kernels_supported_devices
import wrappers

from tests.reference import adabelief_reference

from .measure import Stepper

Options = dict[str, Any]
# Builds the functional variant: (params, grads, options) -> a step() that advances its own count.
Functional = Callable[[list[Tensor], list[Tensor], Options], Stepper]


@dataclass(frozen=True)
class Algorithm:
    """One optimizer, as torch.optim, our wrapper and our kernels spell it."""

    name: str
    wrapper: type[Optimizer]
    torch_class: type[Optimizer] | None     # None where torch.optim lacks the algorithm
    functional: Functional
    # Tensor-sized reads + writes of an ideal one-pass update of a param of this shape.
    min_passes: Callable[[tuple[int, ...]], int]
    options: Options = field(default_factory=dict)  # constructor kwargs, torch and wrapper alike
    # Untimed steps before the update takes its lasting form: RAdam and AdaBelief skip the
    # rectified branch until step 6 (beta2 = 0.999), so timing their first steps would time a
    # cheaper update than training runs.
    settle_steps: int = 0
    # The official implementation's update of one param (param, grad, state dict, **options), where
    # torch.optim lacks the algorithm: its optimizer's step() loops over the params with it.
    official_rule: Callable[..., None] | None = None

    def min_bytes(self, shapes: Collection[tuple[int, ...]], element_size: int) -> int:
        """Bytes one step must move at least over params of ``shapes``."""
        return sum(self.min_passes(shape) * prod(shape) for shape in shapes) * element_size

    def held_bytes(self, shapes: Collection[tuple[int, ...]], element_size: int) -> int:
        """About the most memory one variant holds over params of ``shapes``, grads aside.

        A pass reads or writes one param-sized tensor, and every tensor but the grad is read and
        written: (passes + 1) / 2 of them, one of which is the grad (flat mode's own copy), plus
        one param-sized temporary (foreach Adam's square root). An upper bound for the
        algorithms here; the report sizes its groups of variants with it.
        """
        params = sum(prod(shape) for shape in shapes) * element_size
        return (self.min_bytes(shapes, element_size) + params) // 2 + params


def _passes(count: int) -> Callable[[tuple[int, ...]], int]:
    return lambda shape: count


def _zeros(params: list[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(param) for param in params]


def _counted(update: Callable[[int], None]) -> Stepper:
    """``update(t)`` with t = 1, 2, ... on successive calls: the step count a training loop keeps."""
    steps = itertools.count(1)
    return lambda: update(next(steps))


# --- the functional variants: the calls a custom training loop makes ----------------------------
def _adam(params, grads, options, *, decoupled=False):
    exp_avgs, exp_avg_sqs = _zeros(params), _zeros(params)
    (beta1, beta2), lr = options["betas"], options["lr"]

    def update(t):
        decayed = ok.weight_decay_l2(params, grads, weight_decay=options.get("weight_decay", 0), lr=lr,
                                     decoupled=decoupled)
        ok.adam_update(params, decayed, exp_avgs, exp_avg_sqs, step=t, lr=lr, beta1=beta1, beta2=beta2,
                       eps=options["eps"])
    return _counted(update)


def _adamw(params, grads, options):
    return _adam(params, grads, options, decoupled=True)


def _radam(params, grads, options):
    exp_avgs, exp_avg_sqs = _zeros(params), _zeros(params)
    (beta1, beta2), lr = options["betas"], options["lr"]
    return _counted(lambda t: ok.radam_update(params, grads, exp_avgs, exp_avg_sqs, step=t, lr=lr, beta1=beta1,
                                              beta2=beta2, eps=options["eps"]))


def _nadam(params, grads, options):
    exp_avgs, exp_avg_sqs = _zeros(params), _zeros(params)
    mu_products = [torch.ones((), device=param.device) for param in params]  # the running product of mu_t
    (beta1, beta2), lr = options["betas"], options["lr"]
    return _counted(lambda t: ok.nadam_update(params, grads, exp_avgs, exp_avg_sqs, mu_products, step=t, lr=lr,
                                              beta1=beta1, beta2=beta2, eps=options["eps"]))


def _adamax(params, grads, options):
    exp_avgs, exp_infs = _zeros(params), _zeros(params)
    (beta1, beta2), lr = options["betas"], options["lr"]
    return _counted(lambda t: ok.adamax_update(params, grads, exp_avgs, exp_infs, step=t, lr=lr, beta1=beta1,
                                               beta2=beta2, eps=options["eps"]))


def _adabelief(params, grads, options):
    exp_avgs, exp_avg_vars = _zeros(params), _zeros(params)
    (beta1, beta2), lr = options["betas"], options["lr"]
    return _counted(lambda t: ok.adabelief_update(params, grads, exp_avgs, exp_avg_vars, step=t, lr=lr,
                                                  beta1=beta1, beta2=beta2, eps=options["eps"]))


def _sgd(params, grads, options):
    momentum_buffers = [None] * len(params)  # the first step copies the grads in, as torch.optim.SGD
    return lambda: ok.sgd_update(params, grads, momentum_buffers, lr=options["lr"], momentum=options["momentum"],
                                 weight_decay=options.get("weight_decay", 0.0))


def _adagrad(params, grads, options):
    state_sums = _zeros(params)  # initial_accumulator_value 0, torch's default
    return _counted(lambda t: ok.adagrad_update(params, grads, state_sums, step=t, lr=options["lr"]))


def _adadelta(params, grads, options):
    square_avgs, acc_deltas = _zeros(params), _zeros(params)
    return lambda: ok.adadelta_update(params, grads, square_avgs, acc_deltas, lr=options["lr"])


def _rmsprop(params, grads, options):
    square_avgs = _zeros(params)
    return lambda: ok.rmsprop_update(params, grads, square_avgs, lr=options["lr"])


def _rprop(params, grads, options):
    prevs = _zeros(params)
    step_sizes = [torch.full_like(param, options["lr"]) for param in params]  # as torch.optim.Rprop starts them
    return lambda: ok.rprop_update(params, grads, prevs, step_sizes)


def _asgd(params, grads, options):
    axs = _zeros(params)
    mus = [torch.ones((), device=param.device) for param in params]
    etas = [torch.full((), options["lr"], device=param.device) for param in params]
    return _counted(lambda t: ok.asgd_update(params, grads, axs, mus, etas, step=t, lr=options["lr"]))


def _adafactor(params, grads, options):
    # torch.optim.Adafactor's state: row and column factors for a matrix, a full variance below
    matrices = [param.dim() > 1 for param in params]
    row_vars = [p.new_zeros((*p.shape[:-1], 1)) if matrix else None for p, matrix in zip(params, matrices)]
    col_vars = [p.new_zeros((*p.shape[:-2], 1, p.shape[-1])) if matrix else None for p, matrix in zip(params, matrices)]
    variances = [None if matrix else torch.zeros_like(p) for p, matrix in zip(params, matrices)]
    return _counted(lambda t: ok.adafactor_update(params, grads, row_vars, col_vars, variances, step=t,
                                                  lr=options["lr"]))


def _adafactor_passes(shape: tuple[int, ...]) -> int:
    # Three sweeps, each waiting for the reductions of the one before: RMS(param) and the
    # squared-grad statistics; RMS of the update; the update. Matrices: param read twice and
    # written, grad read three times (factors are tiny). Vectors: the variance read three times
    # and written once on top, and the grad read in every sweep.
    return 6 if len(shape) > 1 else 10


# --- the registry ----------------------------------------------------------------------------------
ADAM_OPTIONS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)

ALGORITHMS: dict[str, Algorithm] = {algorithm.name: algorithm for algorithm in (
    # reads param, grad, exp_avg, exp_avg_sq; writes param, exp_avg, exp_avg_sq
    Algorithm("adam", wrappers.Adam, torch.optim.Adam, _adam, _passes(7), ADAM_OPTIONS),
    Algorithm("adamw", wrappers.AdamW, torch.optim.AdamW, _adamw, _passes(7), dict(ADAM_OPTIONS, weight_decay=1e-2)),
    Algorithm("radam", wrappers.RAdam, torch.optim.RAdam, _radam, _passes(7), ADAM_OPTIONS, settle_steps=5),
    Algorithm("nadam", wrappers.NAdam, torch.optim.NAdam, _nadam, _passes(7), ADAM_OPTIONS),
    # reads param, grad, exp_avg, exp_inf; writes param, exp_avg, exp_inf
    Algorithm("adamax", wrappers.Adamax, torch.optim.Adamax, _adamax, _passes(7), dict(ADAM_OPTIONS, lr=2e-3)),
    Algorithm("adabelief", wrappers.AdaBelief, None, _adabelief, _passes(7), dict(ADAM_OPTIONS, eps=1e-16),
              settle_steps=5, official_rule=adabelief_reference),
    # reads param, grad, momentum_buffer; writes param, momentum_buffer
    Algorithm("sgd", wrappers.SGD, torch.optim.SGD, _sgd, _passes(5), dict(lr=1e-2, momentum=0.9)),
    # the same, with torch's ResNet recipe of coupled weight decay (the param it reads is read anyway)
    Algorithm("sgd-wd", wrappers.SGD, torch.optim.SGD, _sgd, _passes(5), dict(lr=1e-2, momentum=0.9, weight_decay=5e-4)),
    # reads param, grad, square_avg; writes param, square_avg
    Algorithm("rmsprop", wrappers.RMSprop, torch.optim.RMSprop, _rmsprop, _passes(5), dict(lr=1e-2)),
    # reads param, grad, sum; writes param, sum
    Algorithm("adagrad", wrappers.Adagrad, torch.optim.Adagrad, _adagrad, _passes(5), dict(lr=1e-2)),
    # reads param, grad, square_avg, acc_delta; writes param, square_avg, acc_delta
    Algorithm("adadelta", wrappers.Adadelta, torch.optim.Adadelta, _adadelta, _passes(7), dict(lr=1.0)),
    # reads param, grad, prev, step_size; writes param, prev, step_size
    Algorithm("rprop", wrappers.Rprop, torch.optim.Rprop, _rprop, _passes(7), dict(lr=1e-2)),
    # reads param, grad; writes param, ax (a copy of the param until step t0; eta and mu are scalars)
    Algorithm("asgd", wrappers.ASGD, torch.optim.ASGD, _asgd, _passes(4), dict(lr=1e-2)),
    Algorithm("adafactor", wrappers.Adafactor, torch.optim.Adafactor, _adafactor, _adafactor_passes,
              dict(lr=1e-2)),
)}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


# --- the variants --------------------------------------------------------------------------------
def _torch_optimizer(**mode: bool) -> Callable[[Algorithm, list[Tensor], list[Tensor]], Stepper]:
    def build(algorithm: Algorithm, params: list[Tensor], grads: list[Tensor]) -> Stepper:
        return _with_grads(algorithm.torch_class, params, grads, **algorithm.options, **mode).step
    return build


def _our_wrapper(**mode: bool) -> Callable[[Algorithm, list[Tensor], list[Tensor]], Stepper]:
    def build(algorithm: Algorithm, params: list[Tensor], grads: list[Tensor]) -> Stepper:
        return _with_grads(algorithm.wrapper, params, grads, **algorithm.options, **mode).step
    return build


def _our_functional(algorithm: Algorithm, params: list[Tensor], grads: list[Tensor]) -> Stepper:
    return algorithm.functional(params, grads, algorithm.options)


def _official_forloop(algorithm: Algorithm, params: list[Tensor], grads: list[Tensor]) -> Stepper:
    states = [{} for _ in params]  # per-param state, created by the rule on the first step

    @torch.no_grad()
    def step() -> None:  # as the official optimizer's step(): one param at a time
        for param, grad, state in zip(params, grads, states):
            algorithm.official_rule(param, grad, state, **algorithm.options)
    return step


def _with_grads(optimizer_class: type[Optimizer], params: list[Tensor], grads: list[Tensor],
                **options: Any) -> Optimizer:
    for param, grad in zip(params, grads):
        param.grad = grad
    return optimizer_class(params, **options)


def _has_torch(algorithm: Algorithm, device: torch.device) -> bool:
    return algorithm.torch_class is not None


def _has_torch_fused(algorithm: Algorithm, device: torch.device) -> bool:
    if algorithm.torch_class is None:
        return False
    try:  # torch checks the device (and that the class has a fused path at all) on construction
        algorithm.torch_class([torch.zeros(1, device=device)], **algorithm.options, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def _has_official(algorithm: Algorithm, device: torch.device) -> bool:
    return algorithm.official_rule is not None


def _elementwise(algorithm: Algorithm, device: torch.device) -> bool:
    return algorithm.wrapper.elementwise


def _always(algorithm: Algorithm, device: torch.device) -> bool:
    return True


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    build: Callable[[Algorithm, list[Tensor], list[Tensor]], Stepper]
    available: Callable[[Algorithm, torch.device], bool]


VARIANTS: tuple[Variant, ...] = (
    Variant("torch-forloop", "the torch.optim class, foreach=False", _torch_optimizer(foreach=False), _has_torch),
    Variant("torch-foreach", "the torch.optim class, foreach=True", _torch_optimizer(foreach=True), _has_torch),
    Variant("torch-fused", "the torch.optim class, fused=True", _torch_optimizer(fused=True), _has_torch_fused),
    Variant("official-forloop", "the official AdaBelief's per-param loop, as transcribed in tests/reference.py "
            "(adabelief-pytorch 0.2.1 cannot be installed here)", _official_forloop, _has_official),
    Variant("ours-functional", "our optkernels functions on the tensor lists, as a custom loop calls them",
            _our_functional, _always),
    Variant("ours-wrapper", "our wrappers class, .step() (foreach on lists, in chunks under a temporaries budget)",
            _our_wrapper(), _always),
    Variant("ours-flat", "our wrappers class with flat=True (one buffer per group, device and dtype)",
            _our_wrapper(flat=True), _elementwise),
    Variant("ours-compiled", "our wrappers class with flat=True, compiled=True (the torch.compile'd rule)",
            _our_wrapper(flat=True, compiled=True), _elementwise),
)


def torch_default_variant(device: torch.device) -> str:
    """The variant torch.optim runs when neither foreach nor fused is given.

    As ``torch.optim.optimizer._default_to_fused_or_foreach``: foreach on the devices that have
    foreach kernels (CUDA, ...), the for-loop elsewhere (the CPU).
    """
    return "torch-foreach" if device.type in foreach_kernels_supported_devices() else "torch-forloop"


def available_variants(algorithm: Algorithm, device: torch.device) -> list[Variant]:
    return [variant for variant in VARIANTS if variant.available(algorithm, device)]


def build_steppers(algorithm: Algorithm, params: list[Tensor], grads: list[Tensor], device: torch.device,
                   names: Collection[str] | None = None) -> dict[str, Stepper]:
    """The variants available on ``device`` (those in ``names``, if given), each stepping its own clones
    of ``params``.

    They share ``grads``: no variant writes a grad (an optimizer only reads them; flat mode copies
    them into its own buffer), and a second copy per variant would cost a model's worth of memory
    each (``benchmarks/test_variants.py`` checks that the grads come through unchanged).
    """
    return {
        variant.name: variant.build(algorithm, _clones(params), grads)
        for variant in available_variants(algorithm, device)
        if names is None or variant.name in names
    }


def _clones(tensors: list[Tensor]) -> list[Tensor]:
    return [tensor.detach().clone() for tensor in tensors]
