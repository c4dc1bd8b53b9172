"""AdaBelief, with the options of the official adabelief-pytorch and torch.optim's conventions."""

from optkernels import adabelief_update

from .adam import LowPrecisionMoments
from .base import KernelOptimizer


class AdaBelief(LowPrecisionMoments, KernelOptimizer):
    """AdaBelief; see :func:`adabelief_update`.

    The official ``AdaBelief(weight_decouple=...)`` is ``decoupled_weight_decay`` here, named as
    torch.optim names it; its ``print_change_log`` is gone. State keys are the official ones
    (``step``, ``exp_avg``, ``exp_avg_var``, ``max_exp_avg_var``), with ``step`` a tensor as in
    torch.optim (an official checkpoint's int steps are converted on load). ``state_precision``,
    ``stochastic_rounding``, ``seed``: see :class:`~wrappers.adam.LowPrecisionMoments` (in
    ``"8bit"`` the scales are ``exp_avg_scale`` and ``exp_avg_var_scale``; not with AMSGrad).
    """

    traceable = False  # its rectification switches on at a step count read as a number (as RAdam's): eager inside torch.compile

    state_names = ("exp_avg", "exp_avg_var")
    moments = {"exp_avg": True, "exp_avg_var": False}  # name: signed (s_t is not)
    amsgrad_state_name = "max_exp_avg_var"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0, amsgrad=False, *,
                 decoupled_weight_decay=True, fixed_decay=False, rectify=True, degenerated_to_sgd=True,
                 maximize=False, flat=False, compiled=False, state_precision="fp32", stochastic_rounding=False,
                 seed=0):
        self._set_low_precision(state_precision, stochastic_rounding, seed, flat=flat, amsgrad=amsgrad)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        decoupled_weight_decay=decoupled_weight_decay, fixed_decay=fixed_decay,
                        rectify=rectify, degenerated_to_sgd=degenerated_to_sgd, maximize=maximize)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _update(self, group, params, grads, state, step):
        adabelief_update(params, grads, state["exp_avg"], state["exp_avg_var"], state.get("max_exp_avg_var"),
                         step=step, lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                         eps=group["eps"], rectify=group["rectify"], degenerated_to_sgd=group["degenerated_to_sgd"],
                         compiled=self.compiled, **self._preparation(group, fixed=group["fixed_decay"]),
                         **self._low_precision_options(state))
