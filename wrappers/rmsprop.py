"""RMSprop, a drop-in for torch.optim.RMSprop."""

from optkernels import rmsprop_update
from optkernels.rmsprop import check_alpha

from .base import KernelOptimizer


class RMSprop(KernelOptimizer):
    """RMSprop, centered and with momentum; see :func:`rmsprop_update`.

    State as torch.optim.RMSprop keeps it: ``step``, ``square_avg``, plus ``momentum_buffer``
    when ``momentum > 0`` and ``grad_avg`` when ``centered``.
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 capturable=False, foreach=None, maximize=False, differentiable=False, *, flat=False, compiled=False):
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach, maximize=maximize,
                        differentiable=differentiable)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _check_group(self, group):
        super()._check_group(group)
        check_alpha(group["alpha"])

    def _state_names(self, group):
        return ("square_avg",) + (("momentum_buffer",) if group["momentum"] > 0 else ()) + \
            (("grad_avg",) if group["centered"] else ())

    def _update(self, group, params, grads, state, step):
        rmsprop_update(params, grads, state["square_avg"], state.get("grad_avg"), state.get("momentum_buffer"),
                       lr=group["lr"], alpha=group["alpha"], eps=group["eps"], momentum=group["momentum"],
                       compiled=self.compiled, **self._preparation(group))
