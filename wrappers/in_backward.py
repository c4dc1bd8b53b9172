"""Step in backward: the optimizer's step fused into the backward pass, so a full set of grads
never exists at once.

:func:`step_in_backward` attaches an optimizer of this package to its params' post-accumulate-grad
hooks. During ``loss.backward()`` each *run* of params (consecutive params of a group, at most
``run_bytes`` of them, a larger param alone) steps as soon as backward has accumulated the grads of
all its params, with one kernel call (with ``flat=True``: one call on the run's slice of the flat
buffers, its grads gathered in a buffer of that run only), and its grads are freed. Backward
produces grads in about the reverse order of registration, so runs complete one after another and
the grads held at once are about one run's. At the end of the pass a callback steps the params
whose run never completed (some params of it had no grad in this pass) and leaves alone the params
with no grad at all, as torch.optim would.

With ``accumulation_steps=k`` the grads of k backward passes accumulate in ``.grad`` as usual
(they are held between micro-batches, as any accumulation holds them), and the k-th pass steps
and frees them run by run.

Under DDP (``ddp=model``) the step runs at the end of the pass, after DDP has all-reduced every
bucket and written the averaged grads: a post-accumulate-grad hook fires before DDP's reduction
of that grad, so stepping there would use this rank's grads. DDP keeps every grad in its buckets
anyway, so there the API saves no memory; it keeps the training loop the same.

What stays as it is: ``state_dict``/``load_state_dict`` (the state is the optimizer's, as without
this), schedulers (each run reads its group's hyperparameters when it steps), the modes.
``optimizer.step()`` and ``optimizer.zero_grad()`` do nothing while attached.
"""

import inspect
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from optkernels._torch_private import queue_backward_callback
from optkernels._validation import UnsupportedOptionError

from ._layout import FlatRun
from .base import KernelOptimizer

# Grads one run holds before it steps (fp32: 1 M elements). Large enough that a model's small
# params (norms, biases) step together, in few kernel calls; small against the grads of a model.
RUN_BYTES = 4 * 2**20


@dataclass(eq=False)
class _Run:
    """Params of one group that step together: a flat run (``flat``) or a list of params."""

    group: int
    params: list[Tensor]
    flat: FlatRun | None = None
    arrived: set[int] = field(default_factory=set)  # ids of the params whose grads came this pass


class StepInBackward:
    """The handle :func:`step_in_backward` returns; ``remove()`` detaches the optimizer.

    ``micro_batch``: how many backward passes have accumulated grads since the last step.
    """

    def __init__(self, optimizer: KernelOptimizer, *, accumulation_steps: int, run_bytes: int,
                 ddp: torch.nn.Module | None) -> None:
        self.optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self.run_bytes = run_bytes
        self._ddp = ddp
        self.micro_batch = 0
        self._hooks: dict[int, Any] = {}  # id(param): its hook's handle
        self._runs: dict[int, tuple[_Run, int]] = {}  # id(param): its run and place in it, this pass
        self._in_pass = False  # our end-of-pass callback is queued
        self._arrived: set[int] = set()  # ids of the params whose grads arrived this pass

    # --- attaching ------------------------------------------------------------------------------
    def attach(self, params: Iterable[Tensor]) -> None:
        """Hook ``params`` (those that require grad); the optimizer's ``add_param_group`` calls it."""
        params = list(params)
        for index, param in enumerate(params):
            if not param.is_leaf:
                raise ValueError(f"step_in_backward: params[{index}] is not a leaf tensor: backward never "
                                 "accumulates a grad into it, so it would never step")
        ref = weakref.ref(self)
        for param in params:
            if param.requires_grad and id(param) not in self._hooks:
                def hook(param: Tensor) -> None:
                    handle = ref()
                    if handle is not None:
                        handle._on_grad(param)
                self._hooks[id(param)] = param.register_post_accumulate_grad_hook(hook)

    def remove(self) -> None:
        """Detach: hooks removed, ``step()`` and ``zero_grad()`` work again, flat buffers go back to
        one run per device and dtype at the next step. Grads accumulated so far stay in ``.grad``."""
        for handle in self._hooks.values():
            handle.remove()
        self._hooks = {}
        if self.optimizer._in_backward is self:
            self.optimizer._in_backward = None

    def check_step(self, closure: Any) -> None:
        """``optimizer.step()`` while attached: nothing to do; a closure cannot work."""
        if closure is not None:
            raise RuntimeError(
                f"{type(self.optimizer).__name__} steps in backward (step_in_backward): step(closure) cannot "
                "re-evaluate the model, the step has already happened in backward; call step() without a "
                "closure (it does nothing) or remove() the handle first")

    def flush(self) -> None:
        """Step now the params whose grads are waiting (an epoch that ends inside an accumulation
        window), outside backward, and free those grads."""
        self._step_waiting()
        self.micro_batch = 0

    # --- in backward ----------------------------------------------------------------------------
    def _on_grad(self, param: Tensor) -> None:
        if not self._in_pass or id(param) in self._arrived:  # a new pass (the last one failed midway)
            self._start_pass()
        self._arrived.add(id(param))
        if param.grad is not None and param.grad.is_sparse:
            self._in_pass = False
            raise RuntimeError("step_in_backward: a param got a sparse grad; stepping in backward needs dense "
                               "grads (use a dense embedding, or step after backward)")
        if self._ddp is not None or self.micro_batch + 1 < self.accumulation_steps:
            return  # DDP: at the end of the pass, after its all-reduce; else: accumulating
        run, index = self._runs[id(param)]
        if run.flat is not None:
            run.flat.take_grad(index)  # into the run's buffer, if the layout's own hook has not yet
        run.arrived.add(id(param))
        if len(run.arrived) == len(run.params):
            self._step_run(run)

    def _start_pass(self) -> None:
        self._check_engines()
        self._in_pass = True
        self._arrived = set()
        queue_backward_callback(self._end_pass_after_ddp if self._ddp is not None else self._end_pass)
        self._runs = {}
        for run in self._make_runs():
            for index, param in enumerate(run.params):
                self._runs[id(param)] = (run, index)

    def _make_runs(self) -> list[_Run]:
        """This pass's runs: the flat layouts' runs, and runs of listed params (list mode)."""
        runs = []
        optimizer = self.optimizer
        for index, group in enumerate(optimizer.param_groups):
            layout = optimizer._layout(index, group)  # with our run_bytes: built or rebuilt if needed
            listed = group["params"] if layout is None else layout.listed
            if layout is not None:
                runs += [_Run(index, [p for p in run.params if p.requires_grad], run) for run in layout.runs]
            run: list[Tensor] = []
            size = 0
            for param in listed:
                if not param.requires_grad:
                    continue
                nbytes = param.numel() * param.element_size()
                if run and size + nbytes > self.run_bytes:
                    runs.append(_Run(index, run))
                    run, size = [], 0
                run.append(param)
                size += nbytes
            if run:
                runs.append(_Run(index, run))
        return [run for run in runs if run.params]

    def _end_pass_after_ddp(self) -> None:
        # DDP queued its finalisation (which writes the averaged grads) during the pass, after our
        # callback: queued now, ours runs after it
        queue_backward_callback(self._end_pass)

    def _end_pass(self) -> None:
        self._in_pass = False
        self.micro_batch += 1
        if self.micro_batch >= self.accumulation_steps:
            self.micro_batch = 0
            self._step_waiting()

    def _step_waiting(self) -> None:
        """Step every run's params whose grads are not None (none of a run stepped this pass has)."""
        if not self._in_pass:
            self._runs = {}
            for run in self._make_runs():
                for index, param in enumerate(run.params):
                    self._runs[id(param)] = (run, index)
        seen = set()
        for run, _ in list(self._runs.values()):
            if id(run) not in seen:
                seen.add(id(run))
                if any(param.grad is not None for param in run.params):
                    self._step_run(run)

    @torch.no_grad()
    def _step_run(self, run: _Run) -> None:
        """One run's step (its params whose grad is not None), then its grads freed."""
        optimizer = self.optimizer
        group = optimizer.param_groups[run.group]
        try:
            optimizer._check(group)
            if run.flat is not None:
                plan = optimizer._layouts[run.group].plan(
                    optimizer.state, lambda params: optimizer._collect(group, params),
                    lambda name, param: optimizer._new_state(name, param, group), runs=[run.flat])
            else:
                plan = optimizer._collect(group, [param for param in run.params if param.grad is not None])
            optimizer._apply(group, plan)
        except BaseException:
            self._in_pass = False  # the pass is over (backward raises): the next one starts afresh
            raise
        for param in run.params:
            param.grad = None
        if run.flat is not None:
            run.flat.release_grads()
        run.arrived.clear()

    def _check_engines(self) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self._ddp is None and distributed and torch.distributed.get_world_size() > 1:
            raise UnsupportedOptionError(
                "step_in_backward in a distributed run: a post-accumulate-grad hook sees this rank's grad "
                "before DDP all-reduces it. Under DistributedDataParallel pass the model: "
                "step_in_backward(optimizer, ddp=model) (the step then runs after DDP's all-reduce); other "
                "engines (FSDP2, ZeroRedundancyOptimizer) are not supported: step after backward")


def step_in_backward(optimizer: KernelOptimizer, *, accumulation_steps: int = 1, run_bytes: int = RUN_BYTES,
                     ddp: torch.nn.Module | None = None, max_grad_norm: float | None = None) -> StepInBackward:
    """Step ``optimizer`` inside backward: after ``loss.backward()`` the step has happened and the
    grads of every stepped param are None. Returns a handle; ``handle.remove()`` undoes it.

    Args:
        optimizer: an optimizer of ``wrappers`` (any mode: list, ``flat``, ``compiled``), with its
            own ``step`` (not LBFGS, which needs a closure).
        accumulation_steps: backward passes whose grads accumulate before the step (the k-th steps
            and frees them).
        run_bytes: at most this many bytes of params step together, in one kernel call; their grads
            are what backward holds before they step (a larger param is a run alone).
        ddp: the ``DistributedDataParallel`` model whose params these are: the step then runs at the
            end of backward, after DDP's all-reduce. Required in a distributed run; no other engine
            is supported.
        max_grad_norm: refused: clipping by the global norm needs every grad before any param steps.

    While attached ``optimizer.step()`` (no closure) and ``optimizer.zero_grad()`` do nothing;
    ``state_dict``, ``load_state_dict`` and lr schedulers work as usual.

    >>> import torch, wrappers
    >>> from wrappers.in_backward import step_in_backward
    >>> model = torch.nn.Linear(3, 2)
    >>> optimizer = wrappers.AdamW(model.parameters(), lr=0.1, flat=True)
    >>> handle = step_in_backward(optimizer)
    >>> model(torch.ones(4, 3)).sum().backward()  # steps AdamW
    >>> model.weight.grad is None
    True
    >>> handle.remove()
    """
    if not isinstance(optimizer, KernelOptimizer):
        raise TypeError(f"step_in_backward takes an optimizer of wrappers, got {type(optimizer).__name__}")
    if inspect.unwrap(type(optimizer).step) is not inspect.unwrap(KernelOptimizer.step):  # torch wraps step
        raise UnsupportedOptionError(f"{type(optimizer).__name__} cannot step in backward: its step() is its own "
                                     "(LBFGS re-evaluates the model through a closure)")
    if max_grad_norm is not None:
        raise UnsupportedOptionError(
            "step_in_backward cannot clip by the global grad norm: the norm needs every grad, and in backward "
            "each run steps before the next grads exist; clip after backward and step after backward instead")
    if not isinstance(accumulation_steps, int) or isinstance(accumulation_steps, bool) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be an int >= 1, got {accumulation_steps!r}")
    if not isinstance(run_bytes, int) or isinstance(run_bytes, bool) or run_bytes < 1:
        raise ValueError(f"run_bytes must be an int >= 1, got {run_bytes!r}")
    if ddp is not None:
        from torch.nn.parallel import DistributedDataParallel

        if not isinstance(ddp, DistributedDataParallel):
            raise TypeError(f"ddp must be the DistributedDataParallel model, got {type(ddp).__name__}")
        theirs = {id(param) for param in ddp.parameters()}
        if any(id(param) not in theirs for group in optimizer.param_groups for param in group["params"]):
            raise ValueError("ddp: the optimizer has params that are not the DDP model's")
    if optimizer._in_backward is not None:
        raise RuntimeError("this optimizer already steps in backward: remove() its handle first")
    handle = StepInBackward(optimizer, accumulation_steps=accumulation_steps, run_bytes=run_bytes, ddp=ddp)
    handle.attach([param for group in optimizer.param_groups for param in group["params"]])
    optimizer._in_backward = handle
    for index, group in enumerate(optimizer.param_groups):  # flat: runs of run_bytes, now
        optimizer._layout(index, group)
    return handle
