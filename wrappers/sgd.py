"""SGD, a drop-in for torch.optim.SGD."""

from optkernels import sgd_update

from .base import KernelOptimizer


class SGD(KernelOptimizer):
    """SGD with momentum, dampening and Nesterov; see :func:`sgd_update`.

    As torch.optim.SGD it keeps no ``step``, and no state at all without momentum.
    """

    counts_steps = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None, flat=False, compiled=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _check_group(self, group):
        super()._check_group(group)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _state_names(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _init_state(self, name, param, group):
        return None  # the kernel copies the first gradient in, as torch.optim.SGD does

    def _update(self, group, params, grads, state, step):
        sgd_update(params, grads, state.get("momentum_buffer"), lr=group["lr"], momentum=group["momentum"],
                   dampening=group["dampening"], nesterov=group["nesterov"],
                   compiled=self.compiled, **self._preparation(group))
