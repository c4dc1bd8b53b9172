"""Input checks shared by every kernel and wrapper.

They run before anything is mutated, so a call that raises leaves params and state as they were.
"""

import functools
import math
from collections.abc import Callable, Sequence
from itertools import repeat
from numbers import Real
from typing import Any
from operator import attrgetter, is_

import torch
from torch import Tensor


class UnsupportedOptionError(ValueError, NotImplementedError):
    """An option torch.optim has that this library does not implement.

    A ``ValueError`` (a bad argument for us) and a ``NotImplementedError`` (a feature we lack),
    so either ``except`` clause catches it.
    """


def _unchecked_when_traced(passed: Callable[..., Any]) -> Callable[[Callable], Callable]:
    """Inside torch.compile (around a wrapper's step, which checks its hyperparameters eagerly
    first) a check returns ``passed(*args)`` instead: reading a hyperparameter as a Python number
    would make it a constant of the graph, and a new lr a recompile."""
    def decorate(check: Callable) -> Callable:
        @functools.wraps(check)
        def checked(*args, **kwargs):
            if torch.compiler.is_compiling():
                return passed(*args, **kwargs)
            return check(*args, **kwargs)
        return checked
    return decorate


def _value(name, value, *rest, **options):
    return value


def _first_length(optional=(), fillable=(), sparse=(), **lists) -> int:
    return len(next(lst for lst in lists.values() if lst is not None))


@_unchecked_when_traced(lambda value, name: value)
def as_float(value, name: str) -> float:
    """A hyperparameter as a Python float: numbers and 1-element tensors, as torch.optim takes."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(value.shape)}")
        return value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number or a 1-element tensor, got {type(value).__name__}")
    return float(value)


@_unchecked_when_traced(_value)
def check_nonnegative(name: str, value, label: str | None = None) -> float:
    """``value`` is finite and >= 0; the message starts as torch.optim's does (``Invalid ... value``)."""
    number = as_float(value, name)
    if not (math.isfinite(number) and number >= 0.0):
        label = label or f"{name} value"
        raise ValueError(f"Invalid {label}: {value} ({name} must be finite and >= 0)")
    return number


@_unchecked_when_traced(_value)
def check_finite(name: str, value) -> float:
    number = as_float(value, name)
    if not math.isfinite(number):
        raise ValueError(f"Invalid {name} value: {value} ({name} must be finite)")
    return number


@_unchecked_when_traced(_value)
def check_beta(name: str, value, index: int | None = None) -> float:
    """``value`` lies in [0, 1)."""
    number = as_float(value, name)
    if not 0.0 <= number < 1.0:  # also false for NaN
        where = f"beta parameter at index {index}" if index is not None else f"{name} value"
        raise ValueError(f"Invalid {where}: {value} ({name} must be in [0, 1))")
    return number


@_unchecked_when_traced(_value)
def check_flag(name: str, value) -> bool:
    """A switch such as ``maximize``: ``True`` or ``False``, not a truthy stand-in."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


@_unchecked_when_traced(lambda lr: lr)
def check_lr(lr) -> float:
    return check_nonnegative("lr", lr, label="learning rate")


@_unchecked_when_traced(lambda eps: eps)
def check_eps(eps) -> float:
    return check_nonnegative("eps", eps, label="epsilon value")


def optional_list(tensors):
    """``None`` for an empty list: torch.optim's functional API passes ``[]`` for "off"
    (``max_exp_avg_sqs=[]`` without AMSGrad), so we read it the same way."""
    if isinstance(tensors, (list, tuple)) and len(tensors) == 0:
        return None
    return tensors


@_unchecked_when_traced(_first_length)
def check_tensor_lists(optional: tuple[str, ...] = (), fillable: tuple[str, ...] = (),
                       sparse: tuple[str, ...] = (), **lists: Sequence[Tensor | None] | None) -> int:
    """Check that the named lists line up with the first one (the params).

    Every list has the same length; every tensor has its param's shape, dtype and device; no
    tensor is sparse. A list named in ``optional`` may be ``None`` (AMSGrad's maxima when off);
    one named in ``fillable`` may hold ``None`` entries, which the kernel fills in (SGD's first
    momentum buffers). One named in ``sparse`` may hold sparse tensors (SparseAdam's grads).
    Returns the common length.

    The common case is checked with C-level ``map`` over attributes (a step on a thousand
    tensors pays for this every call); the slow loop runs only to name what is wrong.
    """
    for name, lst in lists.items():
        if lst is None and name not in optional:
            raise TypeError(f"{name} must be a list of tensors, got None")
    (ref_name, ref), *others = [(name, lst) for name, lst in lists.items() if lst is not None]
    _check_is_list(ref_name, ref)
    if not all(map(isinstance, ref, repeat(Tensor))) or any(map(_is_sparse, ref)):
        _explain(ref_name, ref, ref_name, ref)
    ref_signature = None
    for name, lst in others:
        _check_is_list(name, lst)
        if len(lst) != len(ref):
            raise ValueError(f"{name} has {len(lst)} tensors but {ref_name} has {len(ref)}")
        if any(map(is_, lst, repeat(None))):  # not `None in lst`: that calls Tensor.__eq__
            _explain(name, lst, ref_name, ref, none_allowed=name in fillable)
            continue
        if ref_signature is None:
            ref_signature = _signature(ref)
        if not all(map(isinstance, lst, repeat(Tensor))) or _signature(lst) != ref_signature \
                or name not in sparse and any(map(_is_sparse, lst)):
            _explain(name, lst, ref_name, ref, sparse_allowed=name in sparse)
    return len(ref)


_is_sparse = attrgetter("is_sparse")
_shape_dtype_device = attrgetter("shape", "dtype", "device")


def _signature(tensors: Sequence[Tensor]) -> list[tuple]:
    return list(map(_shape_dtype_device, tensors))


def _check_is_list(name: str, lst) -> None:
    if isinstance(lst, Tensor) or not isinstance(lst, Sequence):
        raise TypeError(f"{name} must be a list of tensors, got {type(lst).__name__}")


def _explain(name: str, lst: Sequence, ref_name: str, ref: Sequence[Tensor], none_allowed: bool = False,
             sparse_allowed: bool = False) -> None:
    """Raise for the first entry of ``lst`` that does not match ``ref``, naming it."""
    for index, (tensor, param) in enumerate(zip(lst, ref)):
        if tensor is None and none_allowed:
            continue
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name}[{index}] must be a Tensor, got {type(tensor).__name__}")
        if tensor.is_sparse and not sparse_allowed:
            raise RuntimeError(f"{name}[{index}] is sparse; sparse tensors are not supported by these kernels")
        if tensor.shape != param.shape:
            raise ValueError(
                f"{name}[{index}] has shape {tuple(tensor.shape)} but {ref_name}[{index}] "
                f"has shape {tuple(param.shape)}"
            )
        if tensor.dtype != param.dtype or tensor.device != param.device:
            raise TypeError(
                f"{name}[{index}] is {tensor.dtype} on {tensor.device} but {ref_name}[{index}] "
                f"is {param.dtype} on {param.device}"
            )


def step_values(step, count: int) -> list[float]:
    """The step count of each tensor as floats: ``step`` is one int or 0-d tensor, or one per tensor."""
    if torch.compiler.is_compiling() and isinstance(step, Sequence) and len(step) == count:
        # inside torch.compile (around a wrapper's step): counts stay tensors, read in the graph,
        # so a new count is a new input, not a new constant to recompile for
        return [s if isinstance(s, Tensor) else float(s) for s in step]
    if isinstance(step, Tensor) and step.dim() == 0 or isinstance(step, Real):
        values = [_step_value(step, "step")] * count
    elif isinstance(step, Sequence) and not isinstance(step, (str, bytes)):
        if len(step) != count:
            raise ValueError(f"step has {len(step)} values but params has {count}")
        values = [_step_value(s, f"step[{i}]") for i, s in enumerate(step)]
    else:
        raise TypeError(
            "step must be an int, a 0-d tensor, or a sequence of them (one per param), "
            f"got {type(step).__name__}"
        )
    return values


def _step_value(step, name: str) -> float:
    if isinstance(step, Tensor):
        if step.numel() != 1:
            raise ValueError(f"{name} must be a 0-d tensor, got shape {tuple(step.shape)}")
        value = step.item()
    elif isinstance(step, bool) or not isinstance(step, Real):
        raise TypeError(f"{name} must be an int or a 0-d tensor, got {type(step).__name__}")
    else:
        value = step
    if not (value >= 1 and float(value).is_integer()):
        raise ValueError(f"{name} must be a whole number >= 1 (the count after this update), got {value}")
    return float(value)


@_unchecked_when_traced(lambda count, **lists: None)
def check_scalar_lists(count: int, **lists: Sequence[Tensor]) -> None:
    """Each named list holds ``count`` 1-element real floating tensors: per-param scalar state
    (NAdam's ``mu_products``, ASGD's ``mus`` and ``etas``), 0-d as torch.optim keeps it."""
    for name, tensors in lists.items():
        _check_is_list(name, tensors)
        if len(tensors) != count:
            raise ValueError(f"{name} has {len(tensors)} tensors but params has {count}")
        for index, tensor in enumerate(tensors):
            if not isinstance(tensor, Tensor):
                raise TypeError(f"{name}[{index}] must be a Tensor, got {type(tensor).__name__}")
            if tensor.numel() != 1 or not tensor.is_floating_point():
                raise ValueError(f"{name}[{index}] must be a 1-element real floating-point tensor (0-d, as "
                                 f"torch.optim keeps it), got {tensor.dtype} of shape {tuple(tensor.shape)}")
