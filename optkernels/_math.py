"""Math and bookkeeping shared by the kernels: bias corrections, the RAdam rectification term,
and splitting tensor lists into groups that one foreach call can take."""

import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ._torch_private import group_tensors_by_device_and_dtype

TensorLists = list[list[Tensor] | None]

# The temporaries budget: a kernel call, or a wrapper step, processes its tensors in chunks small
# enough that the tensors it allocates on the way stay under this many bytes, whatever the model
# size. Read at each call, so ``monkeypatch.setattr(optkernels._math, "TEMPORARY_BYTES", n)`` works.
TEMPORARY_BYTES = 64 * 2**20


def bias_correction(beta: float, step: float) -> float:
    r"""``1 - beta^t``: the bias of an EMA started at zero, after ``t`` steps."""
    return 1 - beta**step


def rsqrt(value: float | Tensor) -> float | Tensor:
    """``1 / sqrt(value)``: a float's ``** -0.5``; a tensor's ``rsqrt()`` (a step count traced by
    torch.compile), since inductor recomputes scalar math per element and a ``pow`` costs more
    there than an ``rsqrt``."""
    return value.rsqrt() if isinstance(value, Tensor) else value ** -0.5


def sma_length(beta2: float, step: float) -> tuple[float, float]:
    r"""RAdam's length of the approximated simple moving average, :math:`(\rho_t, \rho_\infty)`.

    .. math:: \rho_\infty = \frac{2}{1-\beta_2} - 1 \qquad
              \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t}
    """
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / (1 - beta2**step)
    return rho_t, rho_inf


def scale_(tensors: list[Tensor], factor: float) -> None:
    """``tensors *= factor`` in place, rounding as ``Tensor.mul_`` does.

    On CPU, ``torch._foreach_mul_`` with a Python scalar rounds the scalar to the tensors'
    dtype first, which in bf16 and fp16 changes it (bf16(0.999) is 1.0: no decay at all);
    ``Tensor.mul_`` and the other foreach ops keep it at fp32 precision. A 0-d double tensor
    takes that path, so reduced-precision results equal torch.optim's default (for-loop) path.
    """
    if tensors and tensors[0].dtype in _ROUNDS_SCALARS and tensors[0].device.type == "cpu":
        factor = torch.tensor(factor, dtype=torch.float64)
    torch._foreach_mul_(tensors, factor)


_ROUNDS_SCALARS = (torch.bfloat16, torch.float16)


def prepared_grads(params: list[Tensor], grads: list[Tensor], *, weight_decay: float,
                   maximize: bool) -> list[Tensor]:
    r"""The gradients a kernel's rule reads, as torch.optim prepares them: negated for
    ``maximize``, then coupled L2 decay, :math:`g_t \leftarrow g_t + \lambda \theta_{t-1}`
    (``weight_decay_l2``'s coupled mode, op for op). One new list, or ``grads`` when neither."""
    if not maximize:
        return list(torch._foreach_add(grads, params, alpha=weight_decay)) if weight_decay else grads
    negated = list(torch._foreach_neg(grads))
    if weight_decay:
        torch._foreach_add_(negated, params, alpha=weight_decay)
    return negated


def temporaries(own: int, *, compiled: bool, grads_prepared: bool) -> int:
    """The param-sized lists a kernel's foreach path allocates per group (``grouped``'s
    ``temporaries``): its ``own``, plus the grads of :func:`prepared_grads` when it makes them. A
    compiled rule allocates none."""
    return 0 if compiled else own + grads_prepared


def grouped(tensor_lists: Sequence[Sequence[Tensor] | None],
            steps: Sequence[float] | None = None, *,
            temporaries: int = 1, slices: bool = True,
            shared: Sequence[int] = ()) -> Iterator[tuple[TensorLists, float | None]]:
    """Split parallel tensor lists into groups of one device, dtype and step count, in chunks.

    Yields ``(lists, step)`` with ``lists`` in the order given (``None`` stays ``None``) and
    ``step`` the group's step count (``None`` when no ``steps`` are given: one value per
    tensor, from :func:`step_values`). Complex
    tensors are viewed as real pairs, which every elementwise rule here treats correctly.
    The usual case (one device, one dtype, one step, a small model) yields the lists themselves.

    ``temporaries`` is how many param-sized tensor lists the caller allocates per group at most:
    each yielded group's params hold at most ``TEMPORARY_BYTES / (2 * temporaries)`` bytes, so
    the caller's temporaries stay within :data:`TEMPORARY_BYTES` (see :func:`chunks`): half of it,
    because a loop body's temporaries live on until the next group's replace them. ``slices=False``
    keeps every tensor whole, for updates that are not elementwise (Adafactor's norms, Muon);
    the lists at the positions in ``shared`` hold 0-d tensors that every slice of a param reads
    whole (see :func:`chunks`; the caller updates them once, not per slice);
    ``temporaries=0``, for callers that allocate none (compiled rules), does not chunk at all.
    """
    present = [i for i, lst in enumerate(tensor_lists) if lst is not None]
    params = tensor_lists[0]
    if not params:
        return
    if torch.compiler.is_compiling():
        # traced into a graph (torch.compile around a step): the kernels run their rules, which
        # allocate nothing; each tensor with its own step count, a tensor, never read as a number
        yield from _traced(tensor_lists, steps)
        return
    groups = group_tensors_by_device_and_dtype([list(tensor_lists[i]) for i in present], with_indices=True)
    for (device, dtype), (sublists, indices) in groups.items():
        full: TensorLists = [None] * len(tensor_lists)
        for position, sublist in zip(present, sublists):
            full[position] = _as_real(sublist) if dtype.is_complex else sublist
        limit = TEMPORARY_BYTES // (2 * temporaries) if temporaries else sys.maxsize
        shared_ = tuple(shared) if slices else None
        if steps is None:
            yield from ((lists, None) for lists in chunks(full, limit, shared=shared_))
            continue
        by_step: dict[float, list[int]] = {}
        for position, index in enumerate(indices):
            by_step.setdefault(steps[index], []).append(position)
        if len(by_step) == 1:
            yield from ((lists, steps[indices[0]]) for lists in chunks(full, limit, shared=shared_))
            continue
        for value, positions in by_step.items():
            sublists = [None if lst is None else [lst[p] for p in positions] for lst in full]
            yield from ((lists, value) for lists in chunks(sublists, limit, shared=shared_))


def _traced(tensor_lists: Sequence[Sequence[Tensor] | None],
            steps: Sequence | None) -> Iterator[tuple[TensorLists, Any]]:
    if steps is None:
        yield [None if lst is None else list(lst) for lst in tensor_lists], None
        return
    for index, step in enumerate(steps):
        yield [None if lst is None else [lst[index]] for lst in tensor_lists], step


def chunks(tensor_lists: TensorLists, limit_bytes: int, *,
           shared: Sequence[int] | None = ()) -> Iterator[TensorLists]:
    """Split parallel lists into runs whose params (the first list) hold at most ``limit_bytes``.

    A param larger than the limit is cut into contiguous 1-D slices of the limit, one run each,
    where every list holds a contiguous tensor of its shape at that place, or is a list whose
    index is in ``shared`` (step counts, 0-d state): those entries are repeated for each slice.
    Any other param too large to cut (non-contiguous, or beside a 0-d state tensor not marked
    shared, which a kernel would update once per slice) is a run of its own, as is every param
    with ``shared=None``. Slices are views, so in-place updates of them update the tensors. Lists
    that fit yield themselves, uncopied.
    """
    params = tensor_lists[0]
    sizes = [param.numel() * param.element_size() for param in params]
    if sum(sizes) <= limit_bytes:
        yield tensor_lists
        return
    start, total = 0, 0
    for index, size in enumerate(sizes):
        if total and total + size > limit_bytes:
            yield _run(tensor_lists, start, index)
            start, total = index, 0
        if size > limit_bytes and _can_slice(tensor_lists, index, shared):
            if index > start:
                yield _run(tensor_lists, start, index)
            yield from _slices(tensor_lists, index, max(1, limit_bytes // params[index].element_size()), shared)
            start, total = index + 1, 0
            continue
        total += size
    if start < len(params):
        yield _run(tensor_lists, start, len(params))


def _run(tensor_lists: TensorLists, start: int, stop: int) -> TensorLists:
    return [None if lst is None else lst[start:stop] for lst in tensor_lists]


def _can_slice(tensor_lists: TensorLists, index: int, shared: Sequence[int] | None) -> bool:
    if shared is None:
        return False
    shape = tensor_lists[0][index].shape
    return all(position in shared or (lst[index] is not None and lst[index].shape == shape
                                      and lst[index].is_contiguous())
               for position, lst in enumerate(tensor_lists) if lst is not None)


def _slices(tensor_lists: TensorLists, index: int, length: int, shared: Sequence[int]) -> Iterator[TensorLists]:
    numel = tensor_lists[0][index].numel()
    for start in range(0, numel, length):
        yield [None if lst is None
               else [lst[index] if position in shared else lst[index].view(-1)[start:start + length]]
               for position, lst in enumerate(tensor_lists)]


def _as_real(tensors: list[Tensor]) -> list[Tensor]:
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]
