"""NAdam (and NAdamW), a drop-in for torch.optim.NAdam."""

import torch

from optkernels import nadam_update
from optkernels._validation import check_nonnegative

from .adam import LowPrecisionMoments
from .base import KernelOptimizer, _scalar_dtype


class NAdam(LowPrecisionMoments, KernelOptimizer):
    """NAdam, with decoupled weight decay (NAdamW) when ``decoupled_weight_decay=True``; see
    :func:`nadam_update`.

    Per-param state as torch.optim.NAdam's: ``step``, ``mu_product`` (a 0-d tensor of the
    scalar dtype, created at 1.0), ``exp_avg`` and ``exp_avg_sq``. ``state_precision``,
    ``stochastic_rounding``, ``seed``: see :class:`~wrappers.adam.LowPrecisionMoments`
    (``mu_product`` stays as it is).
    """

    traceable = False  # its step sizes read each param's mu_product as a number: eager inside torch.compile

    state_names = ("mu_product", "exp_avg", "exp_avg_sq")  # torch's order of the keys
    scalar_state_names = ("mu_product",)

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, flat=False, compiled=False, state_precision="fp32", stochastic_rounding=False,
                 seed=0):
        self._set_low_precision(state_precision, stochastic_rounding, seed, flat=flat)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=differentiable)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _check_group(self, group):
        super()._check_group(group)
        check_nonnegative("momentum_decay", group["momentum_decay"])

    def _init_state(self, name, param, group):
        if name == "mu_product":  # the product of the mu_t so far: 1 before the first step
            return torch.tensor(1.0, dtype=_scalar_dtype())
        return super()._init_state(name, param, group)

    def __setstate__(self, state):
        super().__setstate__(state)
        for param_state in self.state.values():  # as torch.optim.NAdam: an old checkpoint's float
            if "mu_product" in param_state and not torch.is_tensor(param_state["mu_product"]):
                param_state["mu_product"] = torch.tensor(param_state["mu_product"], dtype=_scalar_dtype())

    def _update(self, group, params, grads, state, step):
        nadam_update(params, grads, state["exp_avg"], state["exp_avg_sq"], state["mu_product"], step=step,
                     lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"],
                     momentum_decay=group["momentum_decay"], compiled=self.compiled,
                     **self._preparation(group), **self._low_precision_options(state))
