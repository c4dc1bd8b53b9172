"""ASGD, a drop-in for torch.optim.ASGD."""

import torch

from optkernels import asgd_update
from optkernels._validation import as_float, check_nonnegative
from optkernels.asgd import check_t0

from .base import KernelOptimizer, _scalar_dtype


class ASGD(KernelOptimizer):
    """Averaged SGD; see :func:`optkernels.asgd_update`.

    State as torch.optim.ASGD's: ``step``, ``eta`` and ``mu`` (0-d tensors of torch's scalar
    dtype on the param's device) and ``ax`` (the running average of the param).
    """

    traceable = False  # its eta and mu are read as numbers: eager inside torch.compile

    state_names = ("eta", "mu", "ax")  # torch's order of the keys
    scalar_state_names = ("eta", "mu")

    def __init__(self, params, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0, foreach=None,
                 maximize=False, differentiable=False, capturable=False, *, flat=False, compiled=False):
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, capturable=capturable)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _check_group(self, group):
        super()._check_group(group)
        check_nonnegative("lambd", group["lambd"])
        check_nonnegative("alpha", group["alpha"])
        check_t0(group["t0"])

    def _new_state(self, name, param, group):
        if name == "step":  # torch keeps ASGD's step on the param's device
            return torch.zeros((), dtype=_scalar_dtype(), device=param.device)
        return super()._new_state(name, param, group)

    def _init_state(self, name, param, group):
        if name in self.scalar_state_names:  # eta starts at the group's lr, mu at 1
            value = as_float(group["lr"], "lr") if name == "eta" else 1.0
            return torch.tensor(value, dtype=_scalar_dtype(), device=param.device)
        return super()._init_state(name, param, group)

    def _update(self, group, params, grads, state, step):
        asgd_update(params, grads, state["ax"], state["mu"], state["eta"], step=step, lr=group["lr"],
                    lambd=group["lambd"], alpha=group["alpha"], t0=group["t0"],
                    compiled=self.compiled, **self._preparation(group))

    def __setstate__(self, state):
        super().__setstate__(state)
        for param, param_state in self.state.items():  # as torch: an old checkpoint's float eta and mu
            for name in ("eta", "mu"):
                if name in param_state and not torch.is_tensor(param_state[name]):
                    param_state[name] = torch.tensor(float(param_state[name]), dtype=_scalar_dtype(),
                                                     device=param.device)
