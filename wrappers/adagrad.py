"""Adagrad, a drop-in for torch.optim.Adagrad."""

import torch

from optkernels import adagrad_update
from optkernels._validation import check_nonnegative

from .base import KernelOptimizer


class Adagrad(KernelOptimizer):
    """Adagrad with lr decay; see :func:`adagrad_update`. Takes sparse gradients (without weight decay).

    As torch.optim.Adagrad, it creates every param's state (``step`` and ``sum``) when it is
    constructed, so a state_dict taken before the first step already holds it; params of groups
    added later get theirs at their first step. The accumulators start at the constructor's
    ``initial_accumulator_value``, also in groups that give their own, as in torch.
    """

    state_names = ("sum",)
    takes_sparse_grads = True

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 foreach=None, *, maximize=False, differentiable=False, fused=None, flat=False, compiled=False):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, flat=flat, compiled=compiled)
        for group in self.param_groups:
            for param in group["params"]:
                self.state[param].update({name: self._new_state(name, param, group) for name in ("step", "sum")})

    def _check_group(self, group):
        super()._check_group(group)
        check_nonnegative("lr_decay", group["lr_decay"])
        check_nonnegative("initial_accumulator_value", group["initial_accumulator_value"])

    def _init_state(self, name, param, group):
        # torch reads the constructor's value here, never the group's
        value = self.defaults["initial_accumulator_value"]
        value = complex(value, value) if param.is_complex() else value
        return torch.full_like(param, value, memory_format=torch.preserve_format)

    def _check_grads(self, group):
        for index, param in enumerate(group["params"]):
            if param.grad is None or not param.grad.is_sparse:
                continue
            if group["weight_decay"] != 0:
                raise RuntimeError("weight_decay option is not compatible with sparse gradients")
            if param.is_complex():
                # torch squares the complex values (not |g|^2): its sums would be wrong
                raise RuntimeError(f"params[{index}] of this group is complex with a sparse grad; Adagrad "
                                   "takes sparse grads of real params only")

    def _update(self, group, params, grads, state, step):
        adagrad_update(params, grads, state["sum"], step=step, lr=group["lr"], lr_decay=group["lr_decay"],
                       eps=group["eps"], compiled=self.compiled,
                       **self._preparation(group))

    def share_memory(self) -> None:
        """Move the ``sum`` accumulators to shared memory (as torch.optim.Adagrad does, for Hogwild)."""
        for param_state in self.state.values():
            if "sum" in param_state:
                param_state["sum"].share_memory_()
