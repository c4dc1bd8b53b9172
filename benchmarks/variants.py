"""What is timed: each algorithm's implementations, built as zero-argument ``step`` callables.

The algorithms are those of ``wrappers.registry`` whose update is a memory-bound pass over fixed
grads (an entry with ``passes``), each with its registry options, plus ``sgd-wd`` (torch's
ResNet recipe of SGD with coupled weight decay). An :class:`Algorithm` is one such row: the
wrapper, torch.optim's class (or the reference package's, where torch lacks the algorithm),
our kernels called as a custom training loop calls them (:data:`FUNCTIONAL`), and the memory
traffic its update needs at least. A :class:`Variant` is one way of stepping it;
:func:`build_steppers` builds every variant available on a device, each on its own copy of the
params, so that variants timed side by side in one process never share a param or a state.
Our wrapper runs three ways: its default list path (foreach in chunks), ``flat=True``, and
``flat=True, compiled=True``; the last two only where its update is elementwise
(``wrapper.elementwise``).

A new algorithm is an entry in ``wrappers.registry``: it appears here with its wrapper's
variants and its reference's ("reference": the package's own optimizer, or the official rule
transcribed in ``tests/reference.py``); a functional variant needs a builder in :data:`FUNCTIONAL`.
Not here: LBFGS (a closure re-evaluates the model several times per step, so a step is not an
update over fixed gradients), SparseAdam (sparse gradients) and Muon (2-D params only; its cost
is matrix products, not memory traffic).
"""

import importlib.util
import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

import optkernels as ok
from optkernels._torch_private import foreach_kernels_supported_devices
from wrappers import registry

from .measure import Stepper

Options = dict[str, Any]
# Builds the functional variant: (params, grads, options) -> a step() that advances its own count.
Functional = Callable[[list[Tensor], list[Tensor], Options], Stepper]


@dataclass(frozen=True)
class Algorithm:
    """One row of the benchmarks: a registry entry with the options it is timed with."""

    name: str
    entry: registry.Algorithm
    options: Options

    @property
    def wrapper(self) -> type[Optimizer]:
        return self.entry.wrapper

    @property
    def torch_class(self) -> type[Optimizer] | None:  # None where torch.optim lacks the algorithm
        return self.entry.torch_class

    @property
    def settle_steps(self) -> int:
        return self.entry.settle_steps

    @property
    def functional(self) -> Functional | None:
        return FUNCTIONAL.get(self.entry.name)

    def min_bytes(self, shapes: Collection[tuple[int, ...]], element_size: int) -> int:
        """Bytes one step must move at least over params of ``shapes``."""
        return sum(self.entry.min_passes(shape) * prod(shape) for shape in shapes) * element_size
    def held_bytes(self, shapes: Collection[tuple[int, ...]], element_size: int) -> int:
        """About the most memory one variant holds over params of ``shapes``, grads aside.

        A pass reads or writes one param-sized tensor, and every tensor but the grad is read and
        written: (passes + 1) / 2 of them, one of which is the grad (flat mode's own copy), plus
        one param-sized temporary (foreach Adam's square root). An upper bound for the
        algorithms here; the report sizes its groups of variants with it.
        """
        params = sum(prod(shape) for shape in shapes) * element_size
        return (self.min_bytes(shapes, element_size) + params) // 2 + params


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


def _lion(params, grads, options):
    exp_avgs = _zeros(params)
    (beta1, beta2) = options["betas"]
    return lambda: ok.lion_update(params, grads, exp_avgs, lr=options["lr"], beta1=beta1, beta2=beta2)


def _adopt(params, grads, options):
    exp_avgs, exp_avg_sqs = _zeros(params), _zeros(params)
    (beta1, beta2), lr = options["betas"], options["lr"]
    return _counted(lambda t: ok.adopt_update(params, grads, exp_avgs, exp_avg_sqs, step=t, lr=lr, beta1=beta1,
                                              beta2=beta2, eps=options["eps"]))


def _schedule_free(update, *state_count):
    def build(params, grads, options):
        states = [_zeros(params) for _ in range(state_count[0])]  # z starts as a copy of the params, below
        states[0] = [param.clone() for param in params]
        sums = {"weight_sum": 0.0, "lr_max": 0.0}

        def step(t):
            weights = update(params, grads, *states, step=t, weight_sum=sums["weight_sum"], lr_max=sums["lr_max"],
                             **options)
            sums.update(weight_sum=weights.weight_sum, lr_max=weights.lr_max)
        return _counted(step)
    return build


# Our kernels as a custom training loop calls them, by registry name.
FUNCTIONAL: dict[str, Functional] = {
    "adam": _adam, "adamw": _adamw, "radam": _radam, "nadam": _nadam, "adamax": _adamax, "adabelief": _adabelief,
    "sgd": _sgd, "rmsprop": _rmsprop, "adagrad": _adagrad, "adadelta": _adadelta, "rprop": _rprop, "asgd": _asgd,
    "adafactor": _adafactor, "lion": _lion, "adopt": _adopt,
    "adamw_schedule_free": _schedule_free(ok.schedule_free_adamw_update, 2),
    "sgd_schedule_free": _schedule_free(ok.schedule_free_sgd_update, 1),
}


# --- the rows ------------------------------------------------------------------------------------
# rows beside the registry's own: (name, the registry entry, options over its own)
EXTRA_ROWS = (("sgd-wd", "sgd", dict(weight_decay=5e-4)),)  # the ResNet recipe: the param it reads is read anyway


def algorithms() -> dict[str, Algorithm]:
    """Every benchmark row, read from the registry now (a toy algorithm registered in a test shows up)."""
    rows = {}
    for name, entry in registry.ALGORITHMS.items():
        if entry.passes is None:
            continue
        rows[name] = Algorithm(name, entry, dict(entry.options))
        for extra, base, options in EXTRA_ROWS:  # right after the row they vary
            if base == name:
                rows[extra] = Algorithm(extra, entry, dict(entry.options, **options))
    return rows


ALGORITHMS: dict[str, Algorithm] = algorithms()


def get_algorithm(name: str) -> Algorithm:
    rows = algorithms()
    if name not in rows:
        raise ValueError(f"unknown algorithm {name!r}; choose from {', '.join(rows)}")
    return rows[name]


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


# References whose step writes into the grads (schedulefree's AdamW divides them in place): each of
# their steps first copies the shared grads into their own, as a backward would write them.
WRITES_GRADS = frozenset({"adamw_schedule_free"})


def _reference(algorithm: Algorithm, params: list[Tensor], grads: list[Tensor]) -> Stepper:
    if algorithm.entry.name not in WRITES_GRADS:
        return _with_grads(algorithm.entry.reference_class(), params, grads, **algorithm.options).step
    own_grads = _clones(grads)
    optimizer = _with_grads(algorithm.entry.reference_class(), params, own_grads, **algorithm.options)

    def step() -> None:
        torch._foreach_copy_(own_grads, grads)
        optimizer.step()
    return step


# Low-precision state (issue 13's rows): AdamW only, where torchao has its peers, against torch's
# fused fp32 AdamW (the anchor). Each variant's least traffic per element sets its own roofline.
LOW_PRECISION_ROWS = frozenset({"adamw"})


def _low_precision(state_precision: str, *, bf16_params: bool = False):
    def build(algorithm: Algorithm, params: list[Tensor], grads: list[Tensor]) -> Stepper:
        if bf16_params:  # a bf16 model (its params changed in place, as .to() on a module); its grads
            for param in params:  # are bf16 too: this variant's own copy
                param.data = param.data.to(torch.bfloat16)
            grads = [grad.to(torch.bfloat16) for grad in grads]
        return _with_grads(algorithm.wrapper, params, grads, **algorithm.options, compiled=True,
                           state_precision=state_precision, stochastic_rounding=bf16_params).step
    return build


def _torchao(bits: int):
    def build(algorithm: Algorithm, params: list[Tensor], grads: list[Tensor]) -> Stepper:
        import torchao.optim
        return _with_grads(getattr(torchao.optim, f"AdamW{bits}bit"), params, grads, **algorithm.options).step
    return build


def _has_low_precision(algorithm: Algorithm, device: torch.device) -> bool:
    return algorithm.name in LOW_PRECISION_ROWS


def _has_torchao(algorithm: Algorithm, device: torch.device) -> bool:
    return algorithm.name in LOW_PRECISION_ROWS and importlib.util.find_spec("torchao") is not None


def _with_grads(optimizer_class: type[Optimizer], params: list[Tensor], grads: list[Tensor],
                **options: Any) -> Optimizer:
    for param, grad in zip(params, grads):
        param.grad = grad
    optimizer = optimizer_class(params, **options)
    if hasattr(optimizer, "train"):  # schedule-free: steps in train mode only
        optimizer.train()
    return optimizer


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


def _has_reference(algorithm: Algorithm, device: torch.device) -> bool:
    return algorithm.torch_class is None  # torch's are the torch variants


def _elementwise(algorithm: Algorithm, device: torch.device) -> bool:
    return algorithm.wrapper.elementwise


def _has_functional(algorithm: Algorithm, device: torch.device) -> bool:
    return algorithm.functional is not None


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    build: Callable[[Algorithm, list[Tensor], list[Tensor]], Stepper]
    available: Callable[[Algorithm, torch.device], bool]
    precision: str = "fp32"  # of the params and the state; another is a low-precision row
    bytes_per_element: int | None = None  # the least traffic of its step; None: the algorithm's

    def min_bytes(self, algorithm: Algorithm, shapes: Collection[tuple[int, ...]], element_size: int) -> int:
        """Bytes one step of this variant must move at least over params of ``shapes``."""
        if self.bytes_per_element is None:
            return algorithm.min_bytes(shapes, element_size)
        return self.bytes_per_element * sum(prod(shape) for shape in shapes)


VARIANTS: tuple[Variant, ...] = (
    Variant("torch-forloop", "the torch.optim class, foreach=False", _torch_optimizer(foreach=False), _has_torch),
    Variant("torch-foreach", "the torch.optim class, foreach=True", _torch_optimizer(foreach=True), _has_torch),
    Variant("torch-fused", "the torch.optim class, fused=True", _torch_optimizer(fused=True), _has_torch_fused),
    Variant("reference", "where torch.optim lacks the algorithm, its reference implementation's optimizer "
            "(the package's, or the official rule as transcribed in tests/reference.py: adabelief-pytorch 0.2.1 "
            "cannot be installed here)", _reference, _has_reference),
    Variant("ours-functional", "our optkernels functions on the tensor lists, as a custom loop calls them",
            _our_functional, _has_functional),
    Variant("ours-wrapper", "our wrappers class, .step() (foreach on lists, in chunks under a temporaries budget)",
            _our_wrapper(), lambda algorithm, device: True),
    Variant("ours-flat", "our wrappers class with flat=True (one buffer per group, device and dtype)",
            _our_wrapper(flat=True), _elementwise),
    Variant("ours-compiled", "our wrappers class with flat=True, compiled=True (the torch.compile'd rule)",
            _our_wrapper(flat=True, compiled=True), _elementwise),
    # Low-precision rows: bytes per element of the least traffic, with fp32 params and grads (4 each;
    # the param read and written) unless said: moments in bf16 2 each, read and written; 8-bit
    # codes 1 each (the scales, 4 bytes per 256 elements, round away); 4-bit codes half a byte.
    # compiled=True with low precision: on CPU the native kernel (optkernels/native/), elsewhere the
    # torch.compile'd rule
    Variant("ours-bf16", "our wrappers class, compiled=True, state_precision='bf16' (moments in bf16, "
            "stochastically rounded)", _low_precision("bf16"), _has_low_precision, "bf16 state", 20),
    Variant("ours-8bit", "our wrappers class, compiled=True, state_precision='8bit' (blockwise e4m3 codes, "
            "stochastically rounded)", _low_precision("8bit"), _has_low_precision, "8-bit state", 16),
    Variant("ours-8bit-bf16-params", "our wrappers class, compiled=True, state_precision='8bit', bf16 params "
            "and grads, stochastic_rounding=True", _low_precision("8bit", bf16_params=True), _has_low_precision,
            "bf16 params, 8-bit state", 10),
    Variant("torchao-8bit", "torchao.optim.AdamW8bit (torchao 0.18: blockwise dynamic-map codes)", _torchao(8),
            _has_torchao, "8-bit state", 16),
    Variant("torchao-4bit", "torchao.optim.AdamW4bit", _torchao(4), _has_torchao, "4-bit state", 14),
)


def torch_default_variant(device: torch.device) -> str:
    """The variant torch.optim runs when neither foreach nor fused is given.

    As ``torch.optim.optimizer._default_to_fused_or_foreach``: foreach on the devices that have
    foreach kernels (CUDA, ...), the for-loop elsewhere (the CPU).
    """
    return "torch-foreach" if device.type in foreach_kernels_supported_devices() else "torch-forloop"


def available_variants(algorithm: Algorithm, device: torch.device) -> list[Variant]:
    return [variant for variant in VARIANTS if variant.available(algorithm, device)]


def build_steppers(algorithm: Algorithm, params: list[Tensor] | Callable[[], list[Tensor]], grads: list[Tensor],
                   device: torch.device, names: Collection[str] | None = None) -> dict[str, Stepper]:
    """The variants available on ``device`` (those in ``names``, if given), each stepping its own
    params: clones of ``params``, or, where ``params`` is a function, what it returns (the same
    values each time: the report makes them anew, so that no master copy stays in memory).

    They share ``grads``: no variant writes a grad (an optimizer only reads them; flat mode copies
    them into its own buffer), and a second copy per variant would cost a model's worth of memory
    each (``benchmarks/test_variants.py`` checks that the grads come through unchanged).
    """
    return {
        variant.name: variant.build(algorithm, params() if callable(params) else _clones(params), grads)
        for variant in available_variants(algorithm, device)
        if names is None or variant.name in names
    }


def _clones(tensors: list[Tensor]) -> list[Tensor]:
    return [tensor.detach().clone() for tensor in tensors]
