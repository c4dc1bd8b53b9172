"""RAdam, a drop-in for torch.optim.RAdam."""

from optkernels import radam_update

from .adam import LowPrecisionMoments
from .base import KernelOptimizer


class RAdam(LowPrecisionMoments, KernelOptimizer):
    """RAdam; see :func:`radam_update`. ``state_precision``, ``stochastic_rounding``, ``seed``: see
    :class:`~wrappers.adam.LowPrecisionMoments`."""

    traceable = False  # its rectification switches on at a step count read as a number: eager inside torch.compile

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, flat=False, compiled=False, state_precision="fp32", stochastic_rounding=False,
                 seed=0):
        self._set_low_precision(state_precision, stochastic_rounding, seed, flat=flat)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, capturable=capturable,
                        decoupled_weight_decay=decoupled_weight_decay, differentiable=differentiable)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _update(self, group, params, grads, state, step):
        radam_update(params, grads, state["exp_avg"], state["exp_avg_sq"], step=step, lr=group["lr"],
                     beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"],
                     compiled=self.compiled, **self._preparation(group), **self._low_precision_options(state))
