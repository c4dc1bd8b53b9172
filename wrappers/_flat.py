"""Flat storage: a param group's params, grads and state as views into one buffer each.

With ``flat=True`` a wrapper moves each (device, dtype) run of a group's params into one
contiguous buffer (``param.data`` becomes a view of it, strides kept), does the same for their
grads and each state tensor, and then calls its kernel once on the whole buffers: a foreach
call sees one tensor per group, and a compiled rule makes one pass over memory. The per-param
state entries are views too, so ``state_dict()`` holds per-param tensors under torch's keys and
the list path still works on them whenever the flat one cannot run.
"""

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch._prims_common import is_non_overlapping_and_dense_or_false


def flattenable(param: Tensor, grad: Tensor) -> bool:
    """A dense, plain tensor with a dense grad of its shape: one that a view of a buffer can replace."""
    return (type(param.data) is Tensor and not param.is_sparse and not grad.is_sparse
            and grad.shape == param.shape and _is_dense(param))


def _is_dense(tensor: Tensor) -> bool:
    # strides that cover exactly numel elements, so a slice of a buffer can take them
    return is_non_overlapping_and_dense_or_false(tensor)


class FlatBuffers:
    """Params of one device and dtype with their grads and state, each kind in one buffer.

    Building it copies the values in and points every ``param.data``, ``param.grad`` and state
    entry at its view. Step counts and other 0-d state live in a 1-D buffer of one element per
    param, so that ``step`` advances with one op.
    """

    def __init__(self, params: list[Tensor], grads: list[Tensor], state: dict[str, list[Tensor]],
                 param_states: list[dict], scalar_names: Sequence[str]) -> None:
        self.params = params
        self.param_buffer, param_views = _pack(params, like=params)
        for param, view in zip(params, param_views):
            param.data = view
        self.data_ptrs = [param.data_ptr() for param in params]
        self.grad_buffer, self.grad_views = _pack(grads, like=params)
        self.attach_grads()
        self.state: dict[str, Tensor] = {}
        self.scalar_names = tuple(name for name in state if name == "step" or name in scalar_names)
        for name, tensors in state.items():
            if name in self.scalar_names:
                buffer = torch.stack(tensors)
                views = list(buffer.unbind())
            else:
                buffer, views = _pack(tensors, like=params)
            self.state[name] = buffer
            for param_state, view in zip(param_states, views):
                param_state[name] = view

    @staticmethod
    def uniform(state: dict[str, list[Tensor]], scalar_names: Sequence[str]) -> bool:
        """All params agree on their step count and 0-d state, so one kernel call can take them."""
        for name in ("step", *scalar_names):
            tensors = state.get(name)
            if tensors and not torch.stack(tensors).eq(tensors[0]).all():
                return False
        return True

    def holds(self, params: list[Tensor]) -> bool:
        """``params`` are this buffer's, in order, and none was given new storage since."""
        return (len(params) == len(self.params) and all(a is b for a, b in zip(params, self.params))
                and all(param.data_ptr() == ptr for param, ptr in zip(params, self.data_ptrs)))

    def gather_grads(self) -> None:
        """Copy grads that autograd or the user put in place of our views into the buffer."""
        stale = [(view, param.grad) for param, view in zip(self.params, self.grad_views) if param.grad is not view]
        if stale:
            views, grads = zip(*stale)
            torch._foreach_copy_(list(views), list(grads))
            self.attach_grads()

    def attach_grads(self) -> None:
        for param, view in zip(self.params, self.grad_views):
            param.grad = view

    def grads_gatherable(self) -> bool:
        return all(param.grad is view or (param.grad is not None and flattenable(param, param.grad))
                   for param, view in zip(self.params, self.grad_views))

    def lists(self) -> tuple[list[Tensor], list[Tensor], dict[str, list[Tensor]]]:
        """The kernel's arguments: one tensor per list; 0-d state as the first param's entry."""
        state = {name: [buffer[0] if name in self.scalar_names else buffer] for name, buffer in self.state.items()}
        return [self.param_buffer], [self.grad_buffer], state

    def advance(self) -> None:
        """After a step: every param's 0-d state takes the value the kernel gave the first one's."""
        for name in self.scalar_names:
            if name != "step":
                buffer = self.state[name]
                buffer[1:] = buffer[0]


def _pack(tensors: Sequence[Tensor], like: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """A new 1-D buffer holding ``tensors``' values, and views of it laid out as ``like``."""
    first = like[0]
    buffer = torch.empty(sum(t.numel() for t in like), dtype=first.dtype, device=first.device)
    views, offset = [], 0
    for layout in like:
        views.append(buffer.as_strided(layout.shape, layout.stride(), offset))
        offset += layout.numel()
    torch._foreach_copy_(views, list(tensors))
    return buffer, views


@dataclass
class FlatGroup:
    """A param group's buffers, one per device and dtype, each with its params' positions among
    the group's params that have grads; and how the group looked when packed."""

    runs: list[tuple[list[int], FlatBuffers]]
    count: int  # params with grads
    grads: list[Tensor | None]  # per group param: its grad view, None if not packed
    data_ptrs: list[int]

    @classmethod
    def pack(cls, group_params: list[Tensor], runs: list[tuple[list[int], FlatBuffers]]) -> "FlatGroup":
        views = {id(param): view for _, buffers in runs for param, view in zip(buffers.params, buffers.grad_views)}
        return cls(runs, sum(len(positions) for positions, _ in runs),
                   [views.get(id(param)) for param in group_params], [param.data_ptr() for param in group_params])

    def untouched(self, group_params: list[Tensor]) -> bool:
        """Every grad is still our view (or None where not packed), every param its storage: the
        common case, checked in two passes without per-param Python calls."""
        return (len(group_params) == len(self.grads)
                and all(map(operator.is_, [param.grad for param in group_params], self.grads))
                and list(map(Tensor.data_ptr, group_params)) == self.data_ptrs)

    def buffers(self) -> list[FlatBuffers]:
        return [buffers for _, buffers in self.runs]
