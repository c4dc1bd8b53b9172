"""The compiled path: an algorithm's rule on one tensor, compiled once, fed its scalars as tensors.

Each kernel module writes its update a second time as a *pointwise rule*: plain tensor code on
one param and its state, with every hyperparameter a 0-d tensor. :func:`run_compiled` compiles
that rule once per (rule, dtype, device, option branch) with ``torch.compile(dynamic=True)`` and
calls it per tensor. Hyperparameters reach it as 0-d float64 tensors, never Python floats:
dynamo specialises Python floats that feed aten scalar arguments, so a new lr or step count
would recompile; a tensor input of the same dtype and shape never does. On a flat buffer (the
wrappers' ``flat=True``) that is one fused pass over memory per step.

Where ``torch.compile`` cannot run (no dynamo for this Python, no C++ compiler), the rule runs
eagerly, after one warning: the same numbers, without the speed.

A ``param_scale`` (decoupled weight decay's factor, 1 - lr * weight_decay) multiplies each param in
the same compiled pass as the update, so AdamW reads and writes its params once per step.
"""

import functools
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch._prims_common import is_non_overlapping_and_dense_or_false

Rule = Callable[..., None]


def run_compiled(rule: Rule, tensor_lists: Sequence[Sequence[Tensor] | None], *,
                 param_scale: float | None = None, **scalars: float | bool | None) -> None:
    """``rule(*tensors, **scalars)`` for each position of the parallel lists, compiled.

    ``None`` lists give ``None``. Numbers in ``scalars`` become 0-d float64 tensors on the CPU,
    which a compiled kernel on any device reads as scalars, so their values never recompile;
    ``bool`` and ``None`` pass as they are: they choose a branch, one graph each. A
    ``param_scale`` multiplies the param first, in the same graph (a value of 1 too: an lr
    schedule that reaches 0 must not switch graphs).
    """
    if param_scale is not None:
        rule, scalars = _scaling_param_first(rule), dict(scalars, param_scale=param_scale)
    scalar_tensors = {name: value if value is None or isinstance(value, bool)
                      else torch.tensor(value, dtype=torch.float64) for name, value in scalars.items()}
    count = len(tensor_lists[0])
    columns = [lst if lst is not None else [None] * count for lst in tensor_lists]
    step = _runner(rule)
    for tensors in zip(*columns):
        step(*_flattened(tensors), **scalar_tensors)


def _flattened(tensors: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
    """Plain tensors (no Parameter, no requires_grad: dynamo guards on both), as 1-D views in
    memory order where they share the param's dense layout: with sizes treated obliviously (no
    specialisation on 0 and 1) every rank, layout and size is then one graph. A grad laid out
    unlike its param (contiguous, of a transposed param) is copied into the param's layout; the
    rule only reads it. Where any other tensor differs, all pass as they are."""
    param, grad, *state = (None if t is None else t.detach() for t in tensors)
    plain = (param, grad, *state)
    if not is_non_overlapping_and_dense_or_false(param):
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
def _scaling_param_first(rule: Rule) -> Rule:
    def scaled_rule(param, *tensors, param_scale, **scalars):
        param.mul_(param_scale)
        rule(param, *tensors, **scalars)
    scaled_rule.__name__ = scaled_rule.__qualname__ = f"{rule.__name__}_after_param_scale"
    return scaled_rule


@functools.cache
def _runner(rule: Rule) -> Rule:
    """``rule`` compiled with dynamic shapes, once per rule; dynamo keeps a graph per dtype,
    device and branch. ``cpp.dynamic_threads``: a CPU loop is parallel whatever size the graph was
    first compiled for (inductor otherwise keeps a graph traced on a small tensor serial)."""
    if not torch._dynamo.is_dynamo_supported():
        return _fall_back(rule, RuntimeError("torch.compile is not supported on this Python or platform"))
    fast = torch.compile(rule, dynamic=True, fullgraph=True, options={"cpp.dynamic_threads": True})
    from torch._dynamo.exc import BackendCompilerFailed  # imported here: inductor is slow to import
    from torch._inductor.exc import InductorError

    def call(*args, **kwargs):
        if rule in _EAGER:
            return rule(*args, **kwargs)
        try:
            with _GRAPHS_PER_RULE, _SIZE_OBLIVIOUS:
                return fast(*args, **kwargs)
        except (BackendCompilerFailed, InductorError) as error:
            # raised while compiling, before any tensor is written
            return _fall_back(rule, error)(*args, **kwargs)
    return call


_EAGER: set[Rule] = set()
# A rule keeps one graph per dtype, device and branch: more than dynamo's default of 8 per
# function, all of them legitimate. Sizes are symbolic without guards on 0 and 1.
_GRAPHS_PER_RULE = torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096)
_SIZE_OBLIVIOUS = torch.fx.experimental._config.patch(backed_size_oblivious=True)


def _fall_back(rule: Rule, error: Exception) -> Rule:
    if not _EAGER:
        warnings.warn(
            f"optkernels: torch.compile failed ({type(error).__name__}: {error}); the compiled path "
            "runs its rules eagerly instead (same results, not faster)", RuntimeWarning, stacklevel=4)
    _EAGER.add(rule)
    return rule
