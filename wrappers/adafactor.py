"""Adafactor, a drop-in for torch.optim.Adafactor."""

import math

import torch

from optkernels.adafactor import adafactor_update, check_adafactor_state
from optkernels._validation import as_float

from .base import KernelOptimizer

FACTOR_NAMES = ("row_var", "col_var", "variance")  # torch's state keys besides step


class Adafactor(KernelOptimizer):
    """Adafactor as torch.optim.Adafactor computes it; see :func:`optkernels.adafactor_update`.

    Per-param state as torch keeps it: ``step``, then ``row_var`` and ``col_var`` for a param of
    2 or more dims, ``variance`` for a 0-d or 1-d one.
    """

    elementwise = False  # row and column factors: a param's update reads its whole matrix

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *,
                 foreach=None, maximize=False):
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group):
        super()._check_group({name: value for name, value in group.items() if name != "eps"})  # a pair here
        if "eps" in group:
            eps = group["eps"]
            if not isinstance(eps, (tuple, list)) or len(eps) != 2:
                raise ValueError(f"eps must be a pair (eps1, eps2), got {eps!r}")
            for index, value in enumerate(eps):
                if index == 0 and value is None:
                    continue
                number = as_float(value, f"eps[{index}]")
                if not (math.isfinite(number) and number >= 0):
                    raise ValueError(f"epsilon{index + 1} should be >= 0 but is: {value} "
                                     f"(eps[{index}] must be finite and >= 0)")
        if "beta2_decay" in group and not as_float(group["beta2_decay"], "beta2_decay") <= 0:
            raise ValueError(f"beta2_decay should be <= 0 but is: {group['beta2_decay']}")
        if "d" in group and not as_float(group["d"], "d") >= 1:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {group['d']}")

    def _check_grads(self, group):
        for param in group["params"]:
            if param.grad is not None and param.is_complex():
                raise RuntimeError("Adafactor does not support complex parameters")

    def _collect(self, group, params):
        # The factors are not the param's shape, so they are collected (and checked, before any
        # group is stepped) here rather than by the base class; new ones join the state with the
        # base class's new steps, after every group is checked.
        plan = super()._collect(group, params)
        factors = [self._factors(param, grad) for param, grad in zip(plan.params, plan.grads)]
        for index, name in enumerate(FACTOR_NAMES):
            plan.state[name] = [tensors[index] for tensors in factors]
        check_adafactor_state(plan.params, plan.state["row_var"], plan.state["col_var"], plan.state["variance"])
        plan.created += [(param, made) for param, (*_, made) in zip(plan.params, factors) if made]
        return plan

    def _update(self, group, params, grads, state, step):
        eps1, eps2 = group["eps"]
        if eps1 is None:  # torch's for-loop path takes the first param's dtype for the whole group
            eps1 = torch.finfo(params[0].dtype).eps
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        adafactor_update(params, grads, state["row_var"], state["col_var"], state["variance"], step=step,
                         lr=group["lr"], beta2_decay=group["beta2_decay"], eps1=eps1, eps2=eps2, d=group["d"],
                         weight_decay=group["weight_decay"])

    def _factors(self, param, grad):
        """(row_var, col_var, variance, made) of a param: None where it keeps none; new zeros (as
        torch makes them) where it has none yet, which ``made`` holds by name."""
        param_state = self.state.get(param, {})
        if grad.dim() > 1:
            row_var = param_state.get("row_var")
            col_var = param_state.get("col_var")
            made = {}
            if row_var is None:
                row_var = made["row_var"] = grad.new_zeros((*grad.shape[:-1], 1))
            if col_var is None:
                col_var = made["col_var"] = grad.new_zeros((*grad.shape[:-2], 1, grad.shape[-1]))
            return row_var, col_var, None, made
        variance = param_state.get("variance")
        if variance is None:
            variance = torch.zeros_like(grad, memory_format=torch.preserve_format)
            return None, None, variance, {"variance": variance}
        return None, None, variance, {}
