"""Adamax, a drop-in for torch.optim.Adamax."""

from optkernels import adamax_update

from .base import KernelOptimizer


class Adamax(KernelOptimizer):
    """Adamax; see :func:`adamax_update`."""

    state_names = ("exp_avg", "exp_inf")

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, foreach=None, *,
                 maximize=False, differentiable=False, capturable=False, flat=False, compiled=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, capturable=capturable)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _update(self, group, params, grads, state, step):
        adamax_update(params, grads, state["exp_avg"], state["exp_inf"], step=step, lr=group["lr"],
                      beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"],
                      compiled=self.compiled, **self._preparation(group))
