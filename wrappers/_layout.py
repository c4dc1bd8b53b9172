"""How a param group's tensors are laid out for its kernel: one home for lists, flat buffers and
sharded (DTensor) params.

A step of a group is a :class:`Plan`: the kernel's lists by name, made and checked before any
tensor changes, then run. :func:`list_plan` gives torch.optim's lists (every param whose grad is
not None, DTensors as their local shards). With ``flat=True`` a :class:`FlatLayout` keeps each
(device, dtype) run of the group's params, grads and state as views of one buffer per kind, and
its plan hands the kernel slices of those buffers: the whole buffer when every param has a
grad and they all agree on their step count, otherwise one slice per contiguous run of params
that step together. Which params step is always torch's rule (the grad is not None), in every
layout.

Storage that others own stays put. A run whose params already lie back to back in one storage
(ZeroRedundancyOptimizer's bucket views, a previous flat buffer of ours) is adopted as it is;
params that each own their storage are moved into a new buffer (``param.data`` becomes a view,
strides kept); any other params (views into someone else's tensors, FSDP2's DTensor shards,
tensor subclasses) take the list path, after one warning.

Grads: ``zero_grad()`` sets them to None as torch does and drops the flat grad buffer (its
memory is freed, as torch frees grads). A post-accumulate-grad hook moves each grad into the
buffer (allocated by the first one to arrive) as backward produces it, so a full second copy of
the grads never exists; grads that arrive any other way (set by hand, by DDP's bucket views) are
copied in when the step starts. A run of one param takes its grad as its buffer (no copy) where
the grad owns its memory and is laid out as the param.

Stepped in backward (``wrappers.in_backward``), a layout is built with ``run_bytes``: each
(device, dtype) run is cut into runs of consecutive params of at most that many bytes (a larger
param alone), each with its own buffers, so that one run's grads are what backward holds before
that run steps.
"""

import operator
import sys
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from optkernels._torch_private import is_non_overlapping_and_dense


@dataclass
class Plan:
    """One group's step, checked and not yet started: the kernel's parallel lists by name.

    ``steps`` holds one 0-d step count per tensor (``None`` for optimizers that keep none);
    ``state`` one list per state name; ``created`` the state new params get, stored when the
    step starts; ``kernel_made`` the state names the kernel fills in (``None`` entries: SGD's
    first momentum buffers), for ``kernel_made_for``, the params heading the lists. ``before``
    and ``after`` run around the kernel; ``undo`` if it raises.
    """

    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    steps: list[Tensor] | None = None
    state: dict[str, list] = field(default_factory=dict)
    created: list[tuple[Tensor, dict[str, Tensor]]] = field(default_factory=list)
    kernel_made: set[str] = field(default_factory=set)
    kernel_made_for: list[Tensor] = field(default_factory=list)  # the params at the head of the lists
    # the layout's work around the kernel: gather grads, advance steps, spread 0-d state
    before: list[Callable[[], None]] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)

    def extend(self, other: "Plan") -> None:
        """``other``'s lists after ours (state the kernel makes, only in the first plan's)."""
        self.params += other.params
        self.grads += other.grads
        if other.steps is not None:
            self.steps = (self.steps or []) + other.steps
        for name, tensors in other.state.items():
            self.state.setdefault(name, []).extend(tensors)
        self.created += other.created
        self.kernel_made |= other.kernel_made
        self.before += other.before
        self.after += other.after
        self.undo += other.undo


# --- DTensors ---------------------------------------------------------------------------------
def dtensor_type() -> type | None:
    """torch's DTensor class if it was imported (no DTensor exists otherwise)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def local_lists(lists: dict[str, list | None]) -> dict[str, list | None]:
    """The tensors a kernel updates: DTensors as their local shards (updated in place, they are
    the DTensors' data). Lists without DTensors come back as they are (no copy on the hot path):
    a group's params are DTensors or none is, and so are their grads and state."""
    dtensor = dtensor_type()
    if dtensor is None or not any(isinstance(param, dtensor) for param in lists["params"]):
        return lists
    return {name: None if tensors is None else [tensor.to_local() if isinstance(tensor, dtensor) else tensor
                                                for tensor in tensors]
            for name, tensors in lists.items()}


def like_param(param: Tensor, tensor: Tensor) -> Tensor:
    """A tensor the kernel made for a param (SGD's first momentum buffer) in the param's kind: a
    DTensor of the same layout where the param is one, so that checkpoints can reshard it."""
    dtensor = dtensor_type()
    if dtensor is not None and isinstance(param, dtensor) and not isinstance(tensor, dtensor):
        return dtensor.from_local(tensor, param.device_mesh, param.placements, run_check=False,
                                  shape=param.shape, stride=param.stride())
    return tensor


def is_sharded(tensor: Tensor) -> bool:
    """A DTensor whose local tensor is not the whole (a ``Shard`` or ``Partial`` placement)."""
    dtensor = dtensor_type()
    return (dtensor is not None and isinstance(tensor, dtensor)
            and not all(placement.is_replicate() for placement in tensor.placements))


# --- flat buffers -----------------------------------------------------------------------------
def _dense(tensor: Tensor) -> bool:
    return type(tensor) in (Tensor, torch.nn.Parameter) and not tensor.is_sparse and is_non_overlapping_and_dense(tensor)


def _back_to_back(params: Sequence[Tensor]) -> bool:
    """The params' elements fill one stretch of one storage, in order, with no gaps."""
    first = params[0]
    storage = first.untyped_storage().data_ptr()
    offset = first.storage_offset()
    for param in params:
        if param.untyped_storage().data_ptr() != storage or param.storage_offset() != offset:
            return False
        offset += param.numel()
    return True


def _owns_storage(param: Tensor, ours: set[int]) -> bool:
    """Nobody else sees this param's memory: it fills its storage, or the storage is a flat
    buffer of ours."""
    storage = param.untyped_storage()
    return (storage.data_ptr() in ours
            or (param.storage_offset() == 0 and storage.nbytes() == param.numel() * param.element_size()))


class TrackedState(defaultdict):
    """``optimizer.state`` that counts the entries set in it, so a flat layout sees state put in
    behind its back (ZeroRedundancyOptimizer.load_state_dict sets ``optimizer.state[param]``)."""

    version = 0

    def __setitem__(self, key, value) -> None:
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self.version += 1
        super().__delitem__(key)


class FlatRun:
    """The params of one device and dtype in a group, their grads and state, each kind as views
    of one 1-D buffer in the params' order. 0-d state (the step count, NAdam's ``mu_product``)
    is a 1-D buffer of one element per param."""

    def __init__(self, params: list[Tensor], new_state: Callable[[str, Tensor], Tensor | None],
                 names: Sequence[str], scalar: set[str], *, adopt: bool) -> None:
        self.params = params
        self.offsets = [0]
        for param in params:
            self.offsets.append(self.offsets[-1] + param.numel())
        first = params[0]
        if adopt:  # the params already fill this stretch: use it as it is
            self.param_buffer = first.detach().as_strided((self.offsets[-1],), (1,), first.storage_offset())
        else:
            self.param_buffer = first.new_empty(self.offsets[-1])
            views = self.views(self.param_buffer)
            torch._foreach_copy_(views, [param.data for param in params])
            for param, view in zip(params, views):
                param.data = view
        self.data_ptrs = [param.data_ptr() for param in params]
        self.grad_buffer: Tensor | None = None
        self.grad_views: list[Tensor] = []
        self.state: dict[str, Tensor] = {}  # by name: the buffer
        self.state_views: dict[str, list[Tensor]] = {}
        for name in names:
            if name in scalar:  # of the dtype and device torch keeps it in (the step: a CPU float)
                self.state[name] = new_state(name, first).new_zeros(len(params))
                self.state_views[name] = list(self.state[name].unbind())
            else:
                self.state[name] = self.param_buffer.new_zeros(self.param_buffer.shape)
                self.state_views[name] = self.views(self.state[name])
        self.stateful = [False] * len(params)  # its state is in the buffers (torch has made it)
        self.uniform = False  # True: every param's 0-d state (step count...) is known to be equal

    def views(self, buffer: Tensor) -> list[Tensor]:
        """Views of a buffer laid out as the params (shape and strides)."""
        return [buffer.as_strided(param.shape, param.stride(), buffer.storage_offset() + offset)
                for param, offset in zip(self.params, self.offsets)]

    def intact(self) -> bool:
        return list(map(Tensor.data_ptr, self.params)) == self.data_ptrs

    # grads
    def grad_view(self, index: int) -> Tensor:
        if self.grad_buffer is None:
            self.grad_buffer = self.param_buffer.new_empty(self.param_buffer.shape)
            self.grad_views = self.views(self.grad_buffer)
        return self.grad_views[index]

    def take_grad(self, index: int) -> None:
        """Move the param's grad into the buffer, if it can go there (a post-accumulate-grad hook)."""
        param = self.params[index]
        grad = param.grad
        if grad is None or (self.grad_views and grad is self.grad_views[index]):
            return
        if grad.requires_grad or grad.is_sparse or grad.shape != param.shape or grad.dtype != param.dtype:
            return  # a grad with a graph (create_graph=True) or of another kind: the step copies it
        if (len(self.params) == 1 and self.grad_buffer is None and grad.device == param.device
                and grad.stride() == param.stride() and _dense(grad) and _owns_storage(grad, set())):
            # one param: its grad (nobody else's memory) becomes the buffer, as it is
            self.grad_buffer = grad.as_strided((grad.numel(),), (1,), grad.storage_offset())
            self.grad_views = [grad]
            return
        view = self.grad_view(index)
        view.copy_(grad)
        param.grad = view

    def initialize(self, made: list[tuple[int, dict[str, Tensor]]], state: dict) -> None:
        """New params' state, as torch.optim makes it, in the buffers."""
        for index, tensors in made:
            state[self.params[index]].update(tensors)
            self.adopt_state(index, state[self.params[index]], tensors)

    def uninitialize(self, made: list[tuple[int, dict[str, Tensor]]], state: dict) -> None:
        for index, tensors in made:
            for name in tensors:
                state[self.params[index]].pop(name, None)
            self.stateful[index] = False

    def release_grads(self) -> None:
        self.grad_buffer, self.grad_views = None, []

    # state
    def adopt_state(self, index: int, param_state: dict[str, Any], names: Iterable[str]) -> None:
        """Copy a param's state tensors into their buffers and store the views in its place."""
        for name in names:
            view = self.state_views[name][index]
            view.copy_(param_state[name])
            param_state[name] = view
        self.stateful[index] = True


class FlatLayout:
    """A group's flat runs, and the params that take the list path (see the module's docstring)."""

    def __init__(self, group_params: list[Tensor], names: tuple[str, ...], scalar_names: tuple[str, ...],
                 new_state: Callable[[str, Tensor], Tensor | None], ours: set[int], *,
                 run_bytes: int | None = None) -> None:
        self.group_params = list(group_params)
        self.run_bytes = run_bytes
        self.names = names
        self.scalar = set(scalar_names) | {"step"}
        self.runs: list[FlatRun] = []
        self.listed: list[Tensor] = []  # params the flat buffers cannot hold
        by_kind: dict[tuple, list[Tensor]] = {}
        for param in group_params:
            # frozen params apart: ZeRO keeps them out of its buckets, which the others then fill
            if _dense(param):
                by_kind.setdefault((param.device, param.dtype, param.requires_grad), []).append(param)
            else:
                self.listed.append(param)
        for params in (run for kind in by_kind.values() for run in _cut(kind, run_bytes)):
            if _back_to_back(params):
                self.runs.append(FlatRun(params, new_state, names, self.scalar, adopt=True))
            elif all(_owns_storage(param, ours) for param in params):
                self.runs.append(FlatRun(params, new_state, names, self.scalar, adopt=False))
            else:
                self.listed += params
        self.where = {id(run.params[i]): (run, i) for run in self.runs for i in range(len(run.params))}
        self.state_version = -1  # the optimizer's state.version after our last step
        self.hooks = [param.register_post_accumulate_grad_hook(_grad_hook(run, index))
                      for run in self.runs for index, param in enumerate(run.params) if param.requires_grad]

    def storages(self) -> set[int]:
        return {run.param_buffer.untyped_storage().data_ptr() for run in self.runs}

    def close(self) -> None:
        for handle in self.hooks:
            handle.remove()
        self.hooks = []

    def valid(self, group_params: list[Tensor], names: tuple[str, ...], state: "TrackedState",
              run_bytes: int | None = None) -> bool:
        """Still the group's layout: the same params, none given new storage, the same state names,
        no param given new state since our last step (ZeroRedundancyOptimizer.load_state_dict
        writes it straight into ``optimizer.state``), runs cut as asked."""
        return (names == self.names and state.version == self.state_version and run_bytes == self.run_bytes
                and len(group_params) == len(self.group_params)
                and all(map(operator.is_, group_params, self.group_params))
                and all(run.intact() for run in self.runs))

    def plan(self, state: dict, list_plan: Callable[[list[Tensor]], Plan],
             new_state: Callable[[str, Tensor], Tensor | None], runs: Sequence[FlatRun] | None = None) -> Plan:
        """The step of the params whose grads are not None: flat runs as slices of the buffers;
        the params the buffers cannot hold, sparse grads and new state the kernel makes itself
        (SGD's first momentum) through ``list_plan``. New params' state is made in the buffers.
        ``runs``: those runs only (stepped in backward), none of the listed params."""
        listed = [param for param in self.listed if param.grad is not None] if runs is None else []
        flat = Plan(steps=[] if "step" in self.names else None,
                    state={name: [] for name in self.names if name != "step"})
        for run in self.runs if runs is None else runs:
            grads = [param.grad for param in run.params]
            new: dict[int, dict[str, Tensor]] = {}
            if run.grad_views and all(map(operator.is_, grads, run.grad_views)) and all(run.stateful):
                stepping = range(len(run.params))  # the usual case: nothing to look at per param
            else:
                stepping = [i for i, grad in enumerate(grads) if grad is not None]
                new = {i: {name: new_state(name, run.params[i]) for name in self.names}
                       for i in stepping if not run.stateful[i]}
                by_list = {i for i in stepping if grads[i].is_sparse
                           or i in new and any(tensor is None for tensor in new[i].values())}
                listed += [run.params[i] for i in stepping if i in by_list]
                stepping = [i for i in stepping if i not in by_list]
                for i in stepping:
                    _check_grad(run.params[i], grads[i])
                stale = [i for i in stepping if not (run.grad_views and grads[i] is run.grad_views[i])]
                if stale:
                    flat.before.append(_gatherer(run, stale))
                made = [(i, new[i]) for i in stepping if i in new]
                if made:
                    flat.before.append(lambda run=run, made=made: run.initialize(made, state))
                    flat.undo.append(lambda run=run, made=made: run.uninitialize(made, state))
            if stepping:
                self._add_slices(flat, run, stepping, new)
        plan = list_plan(listed) if listed else Plan()
        if listed:
            plan.after.append(lambda: self._adopt(listed, state))
        plan.extend(flat)
        return plan

    def _add_slices(self, plan: Plan, run: FlatRun, stepping: Sequence[int], new: dict[int, dict]) -> None:
        """One slice of every buffer per run of params that step together with equal 0-d state."""
        scalar_names = [name for name in self.names if name in self.scalar]
        everyone = len(stepping) == len(run.params)
        if everyone and run.uniform and not new:  # the usual case: one span, nothing to read
            spans = [(0, len(run.params))]
        else:
            keys = list(zip(*(run.state[name].tolist() for name in scalar_names))) if scalar_names else None
            for i, made in new.items() if keys else ():  # new params start from their initial 0-d state
                keys[i] = tuple(made[name].item() for name in scalar_names)
            spans, start = [], stepping[0]
            for previous, index in zip(stepping, stepping[1:]):
                if index != previous + 1 or (keys and keys[index] != keys[start]):
                    spans.append((start, previous + 1))
                    start = index
            spans.append((start, stepping[-1] + 1))
            # after this step, do all params agree on their 0-d state? (those left out fall behind)
            run.uniform = everyone and len(spans) == 1
        run.grad_view(0)  # allocates the grad buffer if backward has not
        for first, stop in spans:
            whole = stop - first == len(run.params)  # the usual case: the buffers as they are

            def part(buffer: Tensor, first=first, stop=stop, whole=whole) -> Tensor:
                return buffer if whole else buffer[run.offsets[first]:run.offsets[stop]]
            plan.params.append(part(run.param_buffer))
            plan.grads.append(part(run.grad_buffer))
            for name in self.names:
                if name == "step":
                    plan.steps.append(run.state["step"][first])
                elif name in self.scalar:
                    plan.state[name].append(run.state[name][first])
                else:
                    plan.state[name].append(part(run.state[name]))
            if "step" in self.names:
                plan.before.append(_advance(run, first, stop, 1))
                plan.undo.append(_advance(run, first, stop, -1))
            if stop - first > 1 and len(scalar_names) > ("step" in self.names):
                plan.after.append(_spread(run, first, stop, [n for n in scalar_names if n != "step"]))

    def _adopt(self, params: list[Tensor], state: dict) -> None:
        """After their first step (or any step on the list path), params the buffers can hold
        move their state in."""
        for param in params:
            found = self.where.get(id(param))
            param_state = state.get(param)
            if found is None or not param_state or not all(name in param_state for name in self.names):
                continue
            run, index = found
            run.adopt_state(index, param_state, self.names)
            run.take_grad(index)


def _cut(params: list[Tensor], run_bytes: int | None) -> list[list[Tensor]]:
    """Consecutive params, at most ``run_bytes`` each (a larger param alone); all in one if None."""
    if run_bytes is None:
        return [params]
    runs: list[list[Tensor]] = []
    size = 0
    for param in params:
        nbytes = param.numel() * param.element_size()
        if not runs or size + nbytes > run_bytes:
            runs.append([])
            size = 0
        runs[-1].append(param)
        size += nbytes
    return runs


def _check_grad(param: Tensor, grad: Tensor) -> None:
    for what in ("shape", "dtype", "device"):
        if getattr(grad, what) != getattr(param, what):
            raise RuntimeError(f"a grad of {what} {getattr(grad, what)} was set on a param of {what} "
                               f"{getattr(param, what)}")


def _gatherer(run: FlatRun, indices: list[int]) -> Callable[[], None]:
    def gather() -> None:  # grads put in place of the buffer's views (by hand, by DDP): copy them in
        views = [run.grad_view(i) for i in indices]
        torch._foreach_copy_(views, [run.params[i].grad for i in indices])
        for i, view in zip(indices, views):
            run.params[i].grad = view
    return gather


def _advance(run: FlatRun, first: int, stop: int, by: int) -> Callable[[], None]:
    return lambda: run.state["step"][first:stop].add_(by)


def _spread(run: FlatRun, first: int, stop: int, names: list[str]) -> Callable[[], None]:
    def spread() -> None:  # the kernel updated the first param's 0-d state for the whole slice
        for name in names:
            buffer = run.state[name]
            buffer[first + 1:stop] = buffer[first]
    return spread


def _grad_hook(run: FlatRun, index: int) -> Callable[[Tensor], None]:
    ref = weakref.ref(run)

    def move_grad(param: Tensor) -> None:
        target = ref()
        if target is not None:
            target.take_grad(index)
    return move_grad


def warn_once(optimizer: Any, message: str) -> None:
    """One warning per optimizer and message."""
    seen = optimizer.__dict__.setdefault("_warned", set())
    if message not in seen:
        seen.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
