"""The compiled path: an algorithm's rule on one tensor, compiled once, fed its scalars as tensors.

Each kernel module writes its update a second time as a *pointwise rule*: plain tensor code on
one param and its state, with every hyperparameter a 0-d tensor. :func:`run_compiled` compiles
that rule once per (rule, dtype, device, option branch) with ``torch.compile(dynamic=True)`` and
calls it per tensor. Hyperparameters reach it as 0-d float64 tensors, never Python floats:
dynamo specialises Python floats that feed aten scalar arguments, so a new lr or step count
would recompile; a tensor input of the same dtype and shape never does. They travel packed in
one tensor on the tensors' device, unpacked inside the graph: one input to guard and one
tensor to make per call, not one per hyperparameter. On a flat buffer (the wrappers'
``flat=True``) that is one fused pass over memory per step.

Where ``torch.compile`` cannot run (no dynamo for this Python, no C++ compiler), the rule runs
eagerly, after one warning: the same numbers, without the speed.

Torch's preparation of the grad and the param happens in the same compiled pass as the update:
``maximize``, coupled L2 decay (``weight_decay``) and decoupled decay's ``param_scale``
(1 - lr * weight_decay), so Adam with any of them, or AdamW, reads and writes each tensor once
per step.
"""

import functools
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._torch_private import is_dynamo_supported, is_non_overlapping_and_dense

Rule = Callable[..., None]


def run_compiled(rule: Rule, tensor_lists: Sequence[Sequence[Tensor] | None], *,
                 weight_decay: float = 0.0, maximize: bool = False, param_scale: float | None = None,
                 **scalars: float | bool | None) -> None:
    """``rule(*tensors, **scalars)`` for each position of the parallel lists, compiled.

    The lists hold tensors of one device and dtype (as :func:`~optkernels._math.grouped` yields
    them); ``None`` lists give ``None``. Numbers in ``scalars`` travel to the compiled code in one
    float64 tensor on that device, which it reads as 0-d tensors, so their values never
    recompile; ``bool`` and ``None`` pass as they are: they choose a branch. In the same graph,
    before the rule: the grad is negated (``maximize``) and gets ``weight_decay * param``
    (coupled L2 decay), and the param is multiplied by ``param_scale`` (decoupled decay; a value
    of 1 too: an lr schedule that reaches 0 must not switch graphs), as torch.optim orders them.
    """
    if torch.compiler.is_compiling():  # inside an outer torch.compile: the rule is traced into its graph
        _traced(rule, tensor_lists, weight_decay=weight_decay, maximize=maximize, param_scale=param_scale,
                **scalars)
        return
    if maximize or weight_decay or param_scale is not None:
        rule = _prepared(rule, maximize=maximize, decays_grad=bool(weight_decay),
                         scales_param=param_scale is not None)
        scalars = dict(scalars, **({"weight_decay": weight_decay} if weight_decay else {}),
                       **({"param_scale": param_scale} if param_scale is not None else {}))
    if not tensor_lists[0]:
        return
    branches = {name: value for name, value in scalars.items() if value is None or isinstance(value, bool)}
    numbers = {name: value for name, value in scalars.items() if name not in branches}
    first = tensor_lists[0][0]
    step = _runner(rule, tuple(numbers), first.dtype, first.device,
                   tuple(lst is None for lst in tensor_lists), tuple(branches.items()))
    values = torch.tensor(list(numbers.values()), dtype=torch.float64, device=first.device)
    count = len(tensor_lists[0])
    columns = [lst if lst is not None else [None] * count for lst in tensor_lists]
    for tensors in zip(*columns):
        step(*_flattened(tensors), scalars=values, **branches)


def _traced(rule: Rule, tensor_lists: Sequence[Sequence[Tensor] | None], *, weight_decay, maximize,
            param_scale, **scalars) -> None:
    """``run_compiled`` as a part of an outer graph: the rule and torch's preparation (as
    :func:`_prepared` orders it; not ``_prepared`` itself, whose cache and renaming dynamo does not
    trace), per tensor, with the scalars as they come (tensors or numbers dynamo keeps symbolic)."""
    count = len(tensor_lists[0])
    for param, grad, *state in zip(*[lst if lst is not None else [None] * count for lst in tensor_lists]):
        if maximize:
            grad = -grad
        if weight_decay:
            grad = grad + param * weight_decay
        if param_scale is not None:
            param.mul_(param_scale)
        rule(param, grad, *state, **scalars)


def _flattened(tensors: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
    """Plain tensors (no Parameter, no requires_grad: dynamo guards on both), as 1-D views in
    memory order where they share the param's dense layout: with dynamic sizes every rank, layout
    and size is then one graph. A grad laid out unlike its param (contiguous, of a transposed
    param) is copied into the param's layout; the rule only reads it. Where any other tensor
    differs, all pass as they are."""
    param, grad, *state = plain = tuple(None if t is None else t.detach() for t in tensors)
    if all(t is None or t.is_contiguous() for t in plain):  # the usual case, flat buffers included
        return tuple(t if t is None or t.dim() == 1 else t.view(-1) for t in plain)
    if not is_non_overlapping_and_dense(param):
        return plain
    strides = param.stride()
    if any(t is not None and t.stride() != strides for t in state):
        return plain
    if grad.stride() != strides:
        grad = torch.empty_like(param).copy_(grad)
    return tuple(None if t is None else t.as_strided((t.numel(),), (1,), t.storage_offset())
                 for t in (param, grad, *state))


def lerp_(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    """``start.lerp_(end, weight)`` in a rule: torch's formula for weights under 0.5,
    ``start + weight * (end - start)``, for every weight (for larger ones, equal to rounding). Inductor
    keeps lerp's choice between its two formulas inside the loop, which costs a tenth of Adam's
    time on tensors that fit in the cache."""
    return start.add_((end - start) * weight)


@functools.cache
def _prepared(rule: Rule, *, maximize: bool, decays_grad: bool, scales_param: bool) -> Rule:
    def prepared_rule(param, grad, *tensors, weight_decay=None, param_scale=None, **scalars):
        if maximize:
            grad = -grad
        if decays_grad:  # coupled: reads the param before any update
            grad = grad + param * weight_decay
        if scales_param:
            param.mul_(param_scale)
        rule(param, grad, *tensors, **scalars)
    parts = [name for name, on in (("maximize", maximize), ("grad_decay", decays_grad),
                                   ("param_scale", scales_param)) if on]
    prepared_rule.__name__ = prepared_rule.__qualname__ = "_".join([rule.__name__, "after", *parts])
    prepared_rule.inductor_options = getattr(rule, "inductor_options", {})
    return prepared_rule


@functools.cache
def _runner(rule: Rule, names: tuple[str, ...], dtype: torch.dtype, device: torch.device,
            absent: tuple[bool, ...], branches: tuple[tuple[str, bool | None], ...]) -> Rule:
    """``rule`` for tensors of one dtype and device and one branch (which lists are ``None``, the
    ``bool`` and ``None`` scalars), compiled with dynamic shapes, its numbers ``names`` unpacked
    from one tensor inside the graph. Dynamo keeps graphs per code object and checks them in
    turn at each call, at most 8 per function by default: each runner gets a code object of its
    own, holding one graph (two where a tensor of size 0 or 1, which dynamo specialises, comes
    too). ``cpp.dynamic_threads``: a CPU loop is parallel whatever size the graph was first
    compiled for (inductor otherwise keeps a graph traced on a small tensor serial). A rule may
    carry more inductor options in its attribute ``inductor_options``."""
    def unpacked(*tensors, scalars, **branches):
        rule(*tensors, **dict(zip(names, scalars.unbind())), **branches)
    label = f"{rule.__name__}_{str(dtype).removeprefix('torch.')}_{device.type}"
    unpacked.__code__ = unpacked.__code__.replace(co_name=label, co_qualname=label)
    unpacked.__name__ = unpacked.__qualname__ = label
    if not is_dynamo_supported():
        return _fall_back(rule, unpacked, RuntimeError("torch.compile is not supported on this Python or platform"))
    options = {"cpp.dynamic_threads": True, **getattr(rule, "inductor_options", {})}
    fast = torch.compile(unpacked, dynamic=True, fullgraph=True, options=options)

    def call(*args, **kwargs):
        if rule in _EAGER:
            return unpacked(*args, **kwargs)
        try:
            return fast(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure of dynamo, inductor or the C++ compiler
            # Raised while tracing or compiling (DTensors, a missing compiler, an unsupported
            # op), before the graph writes any tensor: the same rule runs eagerly instead.
            return _fall_back(rule, unpacked, error)(*args, **kwargs)
    return call


_EAGER: set[Rule] = set()  # rules that failed to compile: they run eagerly from then on


def _fall_back(rule: Rule, eager: Rule, error: Exception) -> Rule:
    if not _EAGER:
        warnings.warn(
            f"optkernels: torch.compile failed ({type(error).__name__}: {error}); the compiled path "
            "runs its rules eagerly instead (same results, not faster)", RuntimeWarning, stacklevel=4)
    _EAGER.add(rule)
    return eager
