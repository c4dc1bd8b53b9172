"""The one class that knows about param groups and per-parameter state."""

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._layout import FlatLayout, Plan, TrackedState, is_sharded, like_param, local_lists, warn_once

from optkernels import _math
from optkernels._math import chunks
from optkernels._validation import (
    UnsupportedOptionError,
    check_beta,
    check_eps,
    check_lr,
    check_nonnegative,
    check_scalar_lists,
    check_tensor_lists,
)
from optkernels.weight_decay import decoupled_scale

TORCH_ONLY_SWITCHES = ("capturable", "differentiable", "fused")
# Param-sized lists one chunk of a step may allocate at once, with room to spare: the kernel's
# grads prepared for maximize or coupled weight decay, and its own (Adadelta, centered RMSprop: two).
_TEMPORARY_LISTS = 5


def _check_betas(betas) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        check_beta(f"betas[{index}]", beta, index=index)


# Hyperparameters every optimizer checks the same way, wherever a group has them.
_HPARAM_CHECKS: dict[str, Callable[[Any], Any]] = {
    "lr": check_lr,
    "eps": check_eps,
    "betas": _check_betas,
    "weight_decay": lambda value: check_nonnegative("weight_decay", value),
    "momentum": lambda value: check_nonnegative("momentum", value),
    "dampening": lambda value: check_nonnegative("dampening", value),
}


def _scalar_dtype() -> torch.dtype:
    # torch.optim keeps `step` as a float tensor of this dtype, so checkpoints match
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class KernelOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` that collects tensor lists per param group and calls a kernel.

    Subclasses give their state keys (torch.optim's names, so checkpoints cross-load), their
    defaults, and ``_update``, which calls the kernels. This class does the rest: checks
    hyperparameters, skips params whose grad is None, creates state lazily, keeps ``step``,
    and makes a step that raises change nothing.
    """

    state_names: ClassVar[tuple[str, ...]] = ()  # per-param state tensors, zero-initialised
    scalar_state_names: ClassVar[tuple[str, ...]] = ()  # those of them that are 0-d, not param-shaped
    amsgrad_state_name: ClassVar[str | None] = None  # also kept when group["amsgrad"]
    counts_steps: ClassVar[bool] = True  # keeps state["step"], as torch.optim does
    takes_sparse_grads: ClassVar[bool] = False  # True: sparse grads reach ``_update`` (SparseAdam)
    # Each element's update reads only that element: params may be cut into slices and flattened
    elementwise: ClassVar[bool] = True
    # Inside torch.compile around step(), the step is traced into the graph (its step counts and
    # hyperparameters stay tensors there); False: it runs eagerly (its scalars are read as numbers)
    traceable: ClassVar[bool] = True
    # Set while ``wrappers.in_backward.step_in_backward`` steps this optimizer in backward: then
    # step() and zero_grad() do nothing, and flat buffers are cut in runs of its ``run_bytes``
    _in_backward: Any = None

    def __init__(self, params, defaults: dict[str, Any], *, flat: bool = False, compiled: bool = False) -> None:
        """``flat``: keep each group's params, grads and state in one buffer per device and dtype
        (see ``wrappers._layout``). ``compiled``: run the kernels' compiled rules (see
        ``optkernels._compiled``). Both default off; together they make one pass over memory."""
        # Options first, as torch.optim does, so a bad lr is reported whatever params are.
        self._check_options(defaults)
        if isinstance(params, (set, frozenset)):
            raise TypeError(
                "params must be an ordered collection (a list), not a set: a set's order changes "
                "between runs, so a checkpoint would give state to the wrong tensors"
            )
        for name, value in (("flat", flat), ("compiled", compiled)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if flat and not self.elementwise:
            raise UnsupportedOptionError(f"flat=True is not supported by {type(self).__name__}: its update "
                                         "is not elementwise, so its params cannot share one buffer")
        self.flat, self.compiled = flat, compiled
        self._layouts: dict[int, FlatLayout] = {}  # flat=True: by group index
        super().__init__(params, defaults)
        self.state = TrackedState(dict, self.state)

    # --- what subclasses provide -------------------------------------------------------------
    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                state: dict[str, list[Tensor]], step: list[Tensor] | None) -> None:
        raise NotImplementedError

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError for a bad hyperparameter; subclasses add their own rules."""
        for name, check in _HPARAM_CHECKS.items():
            if name in group:
                check(group[name])

    def _check_grads(self, group: dict[str, Any]) -> None:
        """Raise for a grad (or its param) this optimizer cannot step: a dense grad for SparseAdam,
        a non-matrix for Muon. Called for every group before any group is stepped."""

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        names = self.state_names
        if self.amsgrad_state_name and group.get("amsgrad"):
            names += (self.amsgrad_state_name,)
        return names

    def _kernel_checked_state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        """State that need not have its param's shape and dtype (low-precision codes, their
        scales): the kernel checks it. None by default."""
        return ()

    def _init_state(self, name: str, param: Tensor, group: dict[str, Any]) -> Tensor | None:
        """A new state tensor; ``None`` lets the kernel create it on the first step."""
        return torch.zeros_like(param, memory_format=torch.preserve_format)

    @staticmethod
    def _preparation(group: dict[str, Any], *, fixed: bool = False) -> dict[str, Any]:
        """The elementwise kernels' keywords for torch.optim's preparation of grads and params:
        ``maximize``, and the group's weight decay, coupled as ``weight_decay`` or decoupled
        (``decoupled_weight_decay``; ``fixed``: lr-free) as the factor ``param_scale``. The kernel
        applies them in its own pass, which with ``compiled`` is the update's."""
        options: dict[str, Any] = {"maximize": group["maximize"]}
        weight_decay = group.get("weight_decay", 0)
        if weight_decay and group.get("decoupled_weight_decay", False):
            options["param_scale"] = decoupled_scale(weight_decay, group["lr"], fixed=fixed)
        elif weight_decay:
            options["weight_decay"] = weight_decay
        return options

    # --- the machinery -------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict):
            # ZeroRedundancyOptimizer hands us copies of its groups, which hold the options it was
            # given (ours included): the modes are the optimizer's, never a group's
            param_group = {name: value for name, value in param_group.items() if name not in _MODES}
            self._check_options({**self.defaults, **param_group})
        super().add_param_group(param_group)
        if self._in_backward is not None:  # the new params step in backward too
            self._in_backward.attach(self.param_groups[-1]["params"])

    def _check_options(self, options: dict[str, Any]) -> None:
        for name in TORCH_ONLY_SWITCHES:
            if options.get(name):
                raise UnsupportedOptionError(
                    f"{name}=True is not supported by {type(self).__name__}: optkernels runs its "
                    f"own foreach kernels; leave {name} unset or False"
                )
        self._check_group(options)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "flat": self.flat, "compiled": self.compiled}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # load_state_dict comes here too, with no modes in ``state``: the modes stay as they are
        self.flat = state.pop("flat", getattr(self, "flat", False))
        self.compiled = state.pop("compiled", getattr(self, "compiled", False))
        self._drop_layouts()
        defaults = state.get("defaults", getattr(self, "defaults", {}))
        takes_differentiable = "differentiable" in defaults
        super().__setstate__(state)
        self.state = TrackedState(dict, self.state)
        if not takes_differentiable:  # torch's __setstate__ adds it; AdaBelief has no such option
            self.defaults.pop("differentiable", None)
        for group in self.param_groups:
            for name in _MODES:  # as ZeroRedundancyOptimizer copies its options into the groups
                group.pop(name, None)
            for name, default in self.defaults.items():
                group.setdefault(name, default)
            if not self.counts_steps:
                continue
            for param in group["params"]:
                param_state = self.state.get(param)
                if param_state and "step" in param_state and not torch.is_tensor(param_state["step"]):
                    # e.g. a checkpoint of the official AdaBelief, which counts with an int
                    param_state["step"] = torch.tensor(float(param_state["step"]), dtype=_scalar_dtype())

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        for group in state_dict["param_groups"]:  # ZeroRedundancyOptimizer copies its options in
            for name in _MODES:
                group.pop(name, None)
        return state_dict

    def _drop_layouts(self) -> None:
        for layout in getattr(self, "_layouts", {}).values():
            layout.close()
        self._layouts: dict[int, FlatLayout] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch.optim's. With ``flat=True``, ``set_to_none=True`` also frees the flat grad
        buffers, as torch frees the grads; backward makes a new one. Stepped in backward
        (``step_in_backward``): nothing, backward frees the grads it steps, and grads being
        accumulated over micro-batches stay."""
        if self._in_backward is not None:
            return
        super().zero_grad(set_to_none)
        if set_to_none:
            for layout in self._layouts.values():
                for run in layout.runs:
                    run.release_grads()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss.
        Stepped in backward (``step_in_backward``): nothing, backward has stepped."""
        if self._in_backward is not None:
            self._in_backward.check_step(closure)
            return None
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():  # torch.compile around step(): torch's "compiling the optimizer"
            if not self.traceable:
                _step_eagerly(self)
                return loss
            if self._new_params():
                # The checks and the new state run eagerly, outside the graph, which then holds no
                # hyperparameter as a constant and only reads optimizer.state. Once every param has
                # its state, the step is one graph (dynamo guards on the state's keys) and, as
                # torch.optim's, checks nothing.
                _prepare_eagerly(self)
        self._step()
        return loss

    def _step(self) -> None:
        # Every group is checked and planned before any tensor changes, so an error changes nothing.
        plans = [self._plan(index, group) for index, group in enumerate(self.param_groups)]
        for group, plan in zip(self.param_groups, plans):
            self._apply(group, plan)

    def _apply(self, group: dict[str, Any], plan: Plan) -> None:
        """Run one group's checked plan (all of it, or a part stepped in backward)."""
        if not plan.params:
            return
        for param, new_state in plan.created:
            self.state[param].update(new_state)
        try:
            for action in plan.before:
                action()
            self._update_in_chunks(group, plan)
        except BaseException:  # step counts go back, new state goes: the step did not happen
            for action in plan.undo:
                action()
            for param, new_state in plan.created:
                for name in new_state:
                    self.state[param].pop(name, None)
            raise
        for name in plan.kernel_made:  # state the kernel created in place of None (SGD's buffers)
            for param, tensor in zip(plan.kernel_made_for, plan.state[name]):
                self.state[param][name] = like_param(param, tensor)
        for action in plan.after:
            action()
        for layout in self._layouts.values():  # what this step wrote into self.state is known
            layout.state_version = self.state.version

    def _new_params(self) -> bool:
        """Some param with a grad has no state yet."""
        return any(param.grad is not None and param not in self.state
                   for group in self.param_groups for param in group["params"])

    def _plan(self, index: int, group: dict[str, Any]) -> Plan:
        """This group's step: which params step (those whose grad is not None, as in torch.optim)
        and the kernel's lists for them, in the group's layout."""
        if not torch.compiler.is_compiling():
            self._check(group)
        layout = self._layout(index, group)
        if layout is None:
            return self._collect(group, [param for param in group["params"] if param.grad is not None])
        return layout.plan(self.state, lambda params: self._collect(group, params),
                           lambda name, param: self._new_state(name, param, group))

    def _check(self, group: dict[str, Any]) -> None:
        """Raise for a bad hyperparameter or grad of this group, before any group steps."""
        self._check_group(group)
        self._check_grads(group)
        if not self.elementwise:
            for param in group["params"]:
                if param.grad is not None and is_sharded(param):
                    raise UnsupportedOptionError(
                        f"{type(self).__name__} needs whole tensors (its update is not elementwise) but a "
                        f"param is a sharded DTensor ({param.placements}); use replicated params")

    def _layout(self, index: int, group: dict[str, Any]) -> FlatLayout | None:
        """The group's flat layout (``flat=True``), built or rebuilt when the group changed."""
        if not self.flat or torch.compiler.is_compiling():
            return None
        names = self._all_state_names(group)
        run_bytes = None if self._in_backward is None else self._in_backward.run_bytes
        layout = self._layouts.get(index)
        if layout is not None and layout.valid(group["params"], names, self.state, run_bytes):
            return layout
        ours = set()
        if layout is not None:
            ours = layout.storages()
            layout.close()
        layout = self._layouts[index] = FlatLayout(group["params"], names, self.scalar_state_names,
                                                   lambda name, param: self._new_state(name, param, group), ours,
                                                   run_bytes=run_bytes)
        if layout.listed:
            warn_once(self, f"{type(self).__name__}(flat=True): {len(layout.listed)} param(s) of group {index} "
                      "take the list path (same numbers, not one buffer): their memory belongs to another "
                      "tensor or engine (views, DTensor shards, tensor subclasses), so it stays where it is")
        for run in layout.runs:
            for position, param in enumerate(run.params):
                param_state = self.state.get(param)
                if param_state and all(name in param_state for name in names):
                    run.adopt_state(position, param_state, names)
                    run.take_grad(position)
        layout.state_version = self.state.version
        return layout

    def _update_in_chunks(self, group: dict[str, Any], plan: Plan) -> None:
        """``_update`` on runs of params small enough that its temporaries (the grads the kernel
        prepares for ``maximize`` or coupled weight decay, and its own) stay within the budget.
        DTensors reach the kernel as their local shards."""
        lists = {"params": plan.params, "grads": plan.grads, "step": plan.steps, **plan.state}
        lists = local_lists(lists)
        shared = {"step", *self.scalar_state_names}
        positions = [i for i, name in enumerate(lists) if name in shared]
        if plan.kernel_made or not self.elementwise or self.compiled or torch.compiler.is_compiling():
            # the kernel fills lists we pass (SGD's first step), reads whole tensors, or allocates
            # nothing (compiled rules): one call
            runs = [list(lists.values())]
        else:
            runs = list(chunks(list(lists.values()), _math.TEMPORARY_BYTES // _TEMPORARY_LISTS, shared=positions))
        before: dict[int, Tensor] = {}
        for run in runs:
            named = dict(zip(lists, run))
            if len(runs) > 1:  # a param cut in slices: each slice starts from the 0-d state it had
                self._restore(before, [named[name] for name in self.scalar_state_names if name in named])
            params, grads, step = named.pop("params"), named.pop("grads"), named.pop("step")
            self._update(group, params, grads, named, step)
        for name in plan.kernel_made:  # the kernel filled in the list it was given (one run)
            plan.state[name] = lists[name]

    @staticmethod
    def _restore(before: dict[int, Tensor], scalar_lists: list[list[Tensor]]) -> None:
        for tensors in scalar_lists:
            for tensor in tensors:
                if id(tensor) in before:
                    tensor.copy_(before[id(tensor)])
                else:
                    before[id(tensor)] = tensor.clone()

    def _collect(self, group: dict[str, Any], params: list[Tensor]) -> Plan:
        """torch.optim's lists for ``params``: their grads and state, new state made (not stored)."""
        names = self._all_state_names(group)
        plan = Plan(params=list(params), grads=[param.grad for param in params],
                    state={name: [] for name in names})
        if not self.takes_sparse_grads and any(grad.is_sparse for grad in plan.grads):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        for param in params:
            param_state = self.state.get(param, {})
            new_state = {}
            for name in names:
                tensor = param_state.get(name)
                if tensor is None:
                    tensor = self._new_state(name, param, group)
                    if tensor is None:
                        plan.kernel_made.add(name)
                        plan.kernel_made_for = list(params)
                    else:
                        new_state[name] = tensor
                plan.state[name].append(tensor)
            if new_state:
                plan.created.append((param, new_state))
        steps = plan.state.pop("step", None)
        if steps is not None:
            plan.steps = steps
            plan.before.append(lambda: _advance_steps(steps, 1))
            plan.undo.append(lambda: _advance_steps(steps, -1))
        unshaped = (*self.scalar_state_names, *self._kernel_checked_state_names(group))
        shaped = local_lists({"params": plan.params, "grads": plan.grads,
                              **{name: tensors for name, tensors in plan.state.items()
                                 if name not in unshaped}})
        check_tensor_lists(fillable=tuple(plan.kernel_made), sparse=("grads",) if self.takes_sparse_grads else (),
                           **shaped)
        check_scalar_lists(len(params), **{name: plan.state[name] for name in self.scalar_state_names
                                           if name in plan.state})
        return plan

    def _all_state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("step",) + self._state_names(group) if self.counts_steps else self._state_names(group)

    def _new_state(self, name: str, param: Tensor, group: dict[str, Any]) -> Tensor | None:
        if name == "step":
            return torch.tensor(0.0, dtype=_scalar_dtype())
        return self._init_state(name, param, group)


_MODES = ("flat", "compiled")


@torch.compiler.disable
@torch.no_grad()
def _step_eagerly(optimizer: KernelOptimizer) -> None:
    optimizer._step()


@torch.compiler.disable
def _prepare_eagerly(optimizer: KernelOptimizer) -> None:
    for group in optimizer.param_groups:
        optimizer._check(group)
    for group in optimizer.param_groups:
        params = [param for param in group["params"] if param.grad is not None]
        for param, new_state in optimizer._collect(group, params).created:
            optimizer.state[param].update(new_state)
        for param in params:
            optimizer.state.setdefault(param, {})  # where the state the kernel makes (SGD's momentum) goes


def _advance_steps(steps: list[Tensor], by: int) -> None:
    if steps[0].is_cpu:  # as torch.optim: a Python 1 becomes a tensor per param (3 ms for 1,000)
        torch._foreach_add_(steps, torch.tensor(float(by)), alpha=1.0)
    else:
        torch._foreach_add_(steps, by)
