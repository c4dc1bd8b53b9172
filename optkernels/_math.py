"""Math and bookkeeping shared by the kernels: bias corrections, the RAdam rectification term,
and splitting tensor lists into groups that one foreach call can take."""

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

TensorLists = list[list[Tensor] | None]


def bias_correction(beta: float, step: float) -> float:
    r"""``1 - beta^t``: the bias of an EMA started at zero, after ``t`` steps."""
    return 1 - beta**step


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


def grouped(tensor_lists: Sequence[Sequence[Tensor] | None],
            steps: Sequence[float] | None = None) -> Iterator[tuple[TensorLists, float | None]]:
    """Split parallel tensor lists into groups of one device, dtype and step count.

    Yields ``(lists, step)`` with ``lists`` in the order given (``None`` stays ``None``) and
    ``step`` the group's step count (``None`` when no ``steps`` are given: one value per
    tensor, from :func:`step_values`). Complex
    tensors are viewed as real pairs, which every elementwise rule here treats correctly.
    The usual case (one device, one dtype, one step) yields the lists themselves.
    """
    present = [i for i, lst in enumerate(tensor_lists) if lst is not None]
    params = tensor_lists[0]
    if not params:
        return
    groups = _group_tensors_by_device_and_dtype([list(tensor_lists[i]) for i in present], with_indices=True)
    for (device, dtype), (sublists, indices) in groups.items():
        full: TensorLists = [None] * len(tensor_lists)
        for position, sublist in zip(present, sublists):
            full[position] = _as_real(sublist) if dtype.is_complex else sublist
        if steps is None:
            yield full, None
            continue
        by_step: dict[float, list[int]] = {}
        for position, index in enumerate(indices):
            by_step.setdefault(steps[index], []).append(position)
        if len(by_step) == 1:
            yield full, steps[indices[0]]
            continue
        for value, positions in by_step.items():
            yield [None if lst is None else [lst[p] for p in positions] for lst in full], value


def _as_real(tensors: list[Tensor]) -> list[Tensor]:
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]
