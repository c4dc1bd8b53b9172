"""Schedule-free AdamW and SGD, drop-ins for ``schedulefree.AdamWScheduleFree`` and
``schedulefree.SGDScheduleFree`` (1.4.1).

As the reference: params hold :math:`y` in train mode and :math:`x` in eval mode; call
``optimizer.train()`` before training steps and ``optimizer.eval()`` before evaluating or saving a
checkpoint (a new optimizer starts in eval mode, and ``step()`` in eval mode raises). The step count
``k``, the running weight sum ``weight_sum``, ``lr_max`` and ``scheduled_lr`` live in each param
group, under the reference's keys, and the per-param state is the reference's (``z``, and
``exp_avg_sq`` for AdamW; no per-param ``step``), so checkpoints load both ways.

Where we differ from the reference, on purpose:

- grads are never changed (the reference normalises AdamW's grads in place and adds SGD's weight
  decay into them);
- ``step()`` in eval mode raises a ``RuntimeError`` naming the groups in eval mode and the fix,
  checked for every group (the reference checks the first only) before anything changes;
- a group added with ``add_param_group`` takes the first group's mode (the reference's starts in
  eval mode whatever the others are in, so ``eval()`` and ``train()`` then move its params the
  wrong way);
- a step that raises changes nothing, group counters included;
- ``foreach`` is kept (so checkpoints carry it) but ignored: the kernels always run foreach ops,
  which give the numbers of both of the reference's paths.

As in the reference, a group's ``k`` and weight sum advance on every ``step()``, also when none of
its params has a grad (its params then do not move): the warm-up and the averaging weights count
optimizer steps, not param updates.
"""

import torch
from torch import Tensor

from optkernels._validation import check_finite, check_nonnegative
from optkernels.schedule_free import (
    check_interpolation,
    check_warmup_steps,
    schedule_free_adamw_update,
    schedule_free_eval,
    schedule_free_sgd_update,
    schedule_free_train,
    schedule_free_weights,
)

from ._layout import Plan, local_lists
from .base import KernelOptimizer

_DEFAULT_FOREACH = hasattr(torch, "_foreach_mul_")  # the reference's default


class _ScheduleFree(KernelOptimizer):
    """What both algorithms share: train/eval switching and the per-group counters."""

    counts_steps = False  # the count is per group (``k``), as in the reference
    traceable = False  # the per-group counters are Python numbers: eager inside torch.compile

    def _momentum(self, group: dict) -> float:
        raise NotImplementedError

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        self._momentum(group)  # in (0, 1)
        check_warmup_steps(group["warmup_steps"])
        check_finite("r", group["r"])
        check_nonnegative("weight_lr_power", group["weight_lr_power"])
        check_nonnegative("weight_sum", group["weight_sum"])
        check_finite("lr_max", group["lr_max"])
        k = group["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"Invalid k value: {k!r} (k, the group's step count, must be an int >= 0)")
        if not isinstance(group["train_mode"], bool):
            raise TypeError(f"train_mode must be True or False, got {group['train_mode']!r}")
        if group.get("foreach") not in (None, True, False):
            raise TypeError(f"foreach must be None, True or False, got {group['foreach']!r}")

    def _init_state(self, name: str, param: Tensor, group: dict) -> Tensor:
        if name == "z":  # z starts at the param (x = y = z)
            return param.detach().clone(memory_format=torch.preserve_format)
        return super()._init_state(name, param, group)

    # --- train / eval ------------------------------------------------------------------------------
    @torch.no_grad()
    def train(self) -> None:
        """Params to :math:`y`, the point the gradient is taken at, in every group in eval mode."""
        self._switch(to_train=True)

    @torch.no_grad()
    def eval(self) -> None:
        """Params to :math:`x`, the average to evaluate and save, in every group in train mode."""
        self._switch(to_train=False)

    def _switch(self, *, to_train: bool) -> None:
        groups = [group for group in self.param_groups if group["train_mode"] != to_train]
        for group in groups:  # every group checked before any param moves
            self._momentum(group)
        for group in groups:
            params = [param for param in group["params"] if "z" in self.state.get(param, ())]
            lists = local_lists({"params": params, "zs": [self.state[param]["z"] for param in params]})
            switch = schedule_free_train if to_train else schedule_free_eval
            switch(lists["params"], lists["zs"], momentum=self._momentum(group))
            group["train_mode"] = to_train

    def add_param_group(self, param_group: dict) -> None:
        """As torch.optim's; a new group takes the first group's mode (its params have no state
        yet, so they are :math:`x` and :math:`y` both)."""
        inherits = isinstance(param_group, dict) and bool(self.param_groups) and "train_mode" not in param_group
        mode = self.param_groups[0]["train_mode"] if inherits else None
        super().add_param_group(param_group)
        if inherits:  # set after: the group's keys keep the reference's order
            self.param_groups[-1]["train_mode"] = mode

    # --- the step ---------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One step; raises (changing nothing) in eval mode, as the reference does."""
        in_eval = [index for index, group in enumerate(self.param_groups) if not group["train_mode"]]
        if in_eval:
            raise RuntimeError(
                f"{type(self).__name__}.step() was called in eval mode (param group(s) {in_eval}): call "
                "optimizer.train() before training steps, and optimizer.eval() before evaluating or saving "
                "a checkpoint; a new optimizer starts in eval mode")
        return super().step(closure)

    def _step(self) -> None:
        self._advanced: set[int] = set()  # ids of the groups advanced in this step
        try:
            super()._step()  # advances the groups whose params stepped, each after its kernel
            for group in self.param_groups:  # and, as the reference, those without grads
                if id(group) not in self._advanced:
                    self._advance(group)
        finally:
            del self._advanced

    def _plan(self, index: int, group: dict) -> Plan:
        plan = super()._plan(index, group)
        plan.after.append(lambda: self._advance(group))
        return plan

    def _advance(self, group: dict) -> None:
        """The group's counters after its step (its kernel computed the same values)."""
        weights = schedule_free_weights(group["k"] + 1, group["lr"], **self._weight_options(group))
        group["k"] += 1
        group["scheduled_lr"] = weights.lr  # for logging, as the reference
        group["lr_max"] = weights.lr_max
        group["weight_sum"] = weights.weight_sum
        self._advanced.add(id(group))

    @staticmethod
    def _weight_options(group: dict) -> dict:
        return dict(weight_sum=group["weight_sum"], lr_max=group["lr_max"], warmup_steps=group["warmup_steps"],
                    r=group["r"], weight_lr_power=group["weight_lr_power"])


class AdamWScheduleFree(_ScheduleFree):
    """Schedule-free AdamW; see :func:`optkernels.schedule_free.schedule_free_adamw_update`.

    ``schedulefree.AdamWScheduleFree``'s signature, defaults, group keys and state keys
    (``z``, ``exp_avg_sq``), plus the keyword-only modes ``flat`` and ``compiled``.
    """

    state_names = ("z", "exp_avg_sq")

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0, foreach=_DEFAULT_FOREACH, *, flat=False, compiled=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, r=r, k=0, warmup_steps=warmup_steps, train_mode=False,
                        weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, weight_lr_power=weight_lr_power,
                        weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _momentum(self, group: dict) -> float:
        return check_interpolation("betas[0]", group["betas"][0])

    def _update(self, group, params, grads, state, step):
        schedule_free_adamw_update(params, grads, state["z"], state["exp_avg_sq"], step=group["k"] + 1,
                                   lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                                   eps=group["eps"], weight_decay=group["weight_decay"], compiled=self.compiled,
                                   **self._weight_options(group))


class SGDScheduleFree(_ScheduleFree):
    """Schedule-free SGD; see :func:`optkernels.schedule_free.schedule_free_sgd_update`.

    ``schedulefree.SGDScheduleFree``'s signature, defaults, group keys and state key (``z``),
    plus the keyword-only modes ``flat`` and ``compiled``.
    """

    state_names = ("z",)

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=0, warmup_steps=0, r=0.0, weight_lr_power=2,
                 foreach=_DEFAULT_FOREACH, *, flat=False, compiled=False):
        defaults = dict(lr=lr, momentum=momentum, r=r, k=0, warmup_steps=warmup_steps, train_mode=False,
                        weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, weight_lr_power=weight_lr_power,
                        weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _momentum(self, group: dict) -> float:
        return check_interpolation("momentum", group["momentum"])

    def _update(self, group, params, grads, state, step):
        schedule_free_sgd_update(params, grads, state["z"], step=group["k"] + 1, lr=group["lr"],
                                 momentum=group["momentum"], weight_decay=group["weight_decay"],
                                 compiled=self.compiled, **self._weight_options(group))
