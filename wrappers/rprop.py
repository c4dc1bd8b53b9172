"""Rprop, a drop-in for torch.optim.Rprop."""

import torch

from optkernels import rprop_update
from optkernels._validation import as_float
from optkernels.rprop import check_etas, check_step_size_bounds

from .base import KernelOptimizer


def _check_pair(name: str, value) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair, got {value!r}")


class Rprop(KernelOptimizer):
    """Resilient backpropagation; see :func:`optkernels.rprop_update`.

    State as torch.optim.Rprop's: ``step``, ``prev`` (zeros) and ``step_size`` (filled with the
    group's lr on the param's first step; later changes of lr do not affect it, as in torch).
    """

    state_names = ("prev", "step_size")

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *, capturable=False,
                 foreach=None, maximize=False, differentiable=False, flat=False, compiled=False):
        defaults = dict(lr=lr, etas=etas, step_sizes=step_sizes, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, capturable=capturable)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _check_group(self, group):
        super()._check_group(group)
        _check_pair("etas", group["etas"])
        check_etas(*group["etas"])
        _check_pair("step_sizes", group["step_sizes"])
        check_step_size_bounds(*group["step_sizes"])

    def _init_state(self, name, param, group):
        if name == "step_size":
            # as torch: shaped like the grad, and lr + lr*i for a complex param (its real and
            # imaginary parts step as two reals)
            lr = as_float(group["lr"], "lr")
            return torch.full_like(param.grad, complex(lr, lr) if param.is_complex() else lr)
        return super()._init_state(name, param, group)

    def _update(self, group, params, grads, state, step):
        (etaminus, etaplus), (step_size_min, step_size_max) = group["etas"], group["step_sizes"]
        rprop_update(params, grads, state["prev"], state["step_size"], etaminus=etaminus, etaplus=etaplus,
                     step_size_min=step_size_min, step_size_max=step_size_max,
                     compiled=self.compiled, **self._preparation(group))
