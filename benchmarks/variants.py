"""What is timed: each algorithm's implementations, built as zero-argument ``step`` callables.

An :class:`Algorithm` names one optimizer three ways (the ``torch.optim`` class, our wrapper,
our kernel) with the same hyperparameters, plus how much memory traffic its update needs at
least. A :class:`Variant` is one way of stepping it; :func:`build_steppers` builds every
variant available on a device, each on its own copy of the params and grads, so that variants
timed side by side in one process never share a tensor.

Adding an algorithm is one more :class:`Algorithm` in :data:`ALGORITHMS`; where torch.optim
lacks it (AdaBelief) the torch variants drop out and the report shows no "x torch default".
(A kernel that takes no ``step``, as SGD's, needs one more field here, read by ``_our_kernel``.)
"""

import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

import wrappers
from optkernels import adam_update

from .measure import Stepper


@dataclass(frozen=True)
class Algorithm:
    """One optimizer, as torch.optim, our wrapper and our kernel spell it."""

    name: str
    kernel: Callable[..., None]                 # called as kernel(params, grads, *state, step=t, **kernel_options)
    wrapper: type[Optimizer]
    torch_class: type[Optimizer] | None         # None where torch.optim lacks the algorithm
    state_names: tuple[str, ...]                # the kernel's state lists, in its argument order
    min_passes: int                             # tensor-sized reads + writes of an ideal one-pass update
    options: dict[str, Any] = field(default_factory=dict)         # constructor kwargs, torch and wrapper
    kernel_options: dict[str, Any] = field(default_factory=dict)  # the same values as the kernel names them

    def min_bytes(self, numel: int, element_size: int) -> int:
        """Bytes one step must move at least over ``numel`` elements."""
        return self.min_passes * numel * element_size


ADAM = Algorithm(
    name="adam",
    kernel=adam_update,
    wrapper=wrappers.Adam,
    torch_class=torch.optim.Adam,
    state_names=("exp_avg", "exp_avg_sq"),
    min_passes=7,  # reads param, grad, exp_avg, exp_avg_sq; writes param, exp_avg, exp_avg_sq
    options=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8),
    kernel_options=dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8),
)

ALGORITHMS: dict[str, Algorithm] = {algorithm.name: algorithm for algorithm in (ADAM,)}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


# --- the variants --------------------------------------------------------------------------------
def _torch_optimizer(**mode: bool) -> Callable[[Algorithm, list[Tensor], list[Tensor]], Stepper]:
    def build(algorithm: Algorithm, params: list[Tensor], grads: list[Tensor]) -> Stepper:
        return _with_grads(algorithm.torch_class, params, grads, **algorithm.options, **mode).step
    return build


def _our_wrapper(algorithm: Algorithm, params: list[Tensor], grads: list[Tensor]) -> Stepper:
    return _with_grads(algorithm.wrapper, params, grads, **algorithm.options).step


def _our_kernel(algorithm: Algorithm, params: list[Tensor], grads: list[Tensor]) -> Stepper:
    state = [[torch.zeros_like(param) for param in params] for _ in algorithm.state_names]
    steps = itertools.count(1)

    def step() -> None:
        algorithm.kernel(params, grads, *state, step=next(steps), **algorithm.kernel_options)
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
    Variant("ours-functional", "our optkernels function on the tensor lists, step as an int", _our_kernel,
            _always),
    Variant("ours-wrapper", "our wrappers class, .step()", _our_wrapper, _always),
)


def torch_default_variant(device: torch.device) -> str:
    """The variant torch.optim runs when neither foreach nor fused is given.

    As ``torch.optim.optimizer._default_to_fused_or_foreach``: foreach on the devices that have
    foreach kernels (CUDA, ...), the for-loop elsewhere (the CPU).
    """
    return "torch-foreach" if device.type in _get_foreach_kernels_supported_devices() else "torch-forloop"


def available_variants(algorithm: Algorithm, device: torch.device) -> list[Variant]:
    return [variant for variant in VARIANTS if variant.available(algorithm, device)]


def build_steppers(algorithm: Algorithm, params: list[Tensor], grads: list[Tensor], device: torch.device,
                   names: Collection[str] | None = None) -> dict[str, Stepper]:
    """The variants available on ``device`` (those in ``names``, if given), each stepping its own clones."""
    return {
        variant.name: variant.build(algorithm, _clones(params), _clones(grads))
        for variant in available_variants(algorithm, device)
        if names is None or variant.name in names
    }


def _clones(tensors: list[Tensor]) -> list[Tensor]:
    return [tensor.detach().clone() for tensor in tensors]
