"""Adam and AdamW, drop-ins for torch.optim.Adam and torch.optim.AdamW."""

from torch import Tensor

from optkernels import adam_update

from .base import KernelOptimizer


def _check_tensor_hparams(lr, betas, foreach) -> None:
    # torch.optim.Adam's construction rules for tensor hyperparameters, kept so the same
    # configurations fail the same way (our kernels would take them).
    if isinstance(lr, Tensor) and foreach:
        raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
    if isinstance(betas, (tuple, list)) and len(betas) == 2:
        if isinstance(betas[0], Tensor) != isinstance(betas[1], Tensor):
            raise ValueError("betas must be either both floats or both Tensors")
        if isinstance(betas[0], Tensor) and foreach:
            raise ValueError("betas[0] as a Tensor is not supported for capturable=False and foreach=True")


class Adam(KernelOptimizer):
    """Adam (and AMSGrad, and AdamW with ``decoupled_weight_decay=True``); see :func:`adam_update`."""

    state_names = ("exp_avg", "exp_avg_sq")
    amsgrad_state_name = "max_exp_avg_sq"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, flat=False, compiled=False):
        _check_tensor_hparams(lr, betas, foreach)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _update(self, group, params, grads, state, step):
        adam_update(params, grads, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"),
                    step=step, lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                    eps=group["eps"], compiled=self.compiled, **self._preparation(group))


class AdamW(Adam):
    """Adam with decoupled weight decay; torch.optim.AdamW's signature and defaults."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                 flat=False, compiled=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         foreach=foreach, maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
                         flat=flat, compiled=compiled)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # as torch.optim.AdamW: always decoupled
            group["decoupled_weight_decay"] = True
