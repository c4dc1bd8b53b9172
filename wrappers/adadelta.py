"""Adadelta, a drop-in for torch.optim.Adadelta."""

from optkernels import adadelta_update
from optkernels.adadelta import check_rho

from .base import KernelOptimizer


class Adadelta(KernelOptimizer):
    """Adadelta; see :func:`adadelta_update`. Keeps ``step`` as torch does, though the rule never reads it."""

    state_names = ("square_avg", "acc_delta")

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *, capturable=False,
                 maximize=False, differentiable=False, flat=False, compiled=False):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _check_group(self, group):
        super()._check_group(group)
        check_rho(group["rho"])

    def _update(self, group, params, grads, state, step):
        adadelta_update(params, grads, state["square_avg"], state["acc_delta"], lr=group["lr"], rho=group["rho"],
                        eps=group["eps"], compiled=self.compiled,
                        **self._preparation(group))
