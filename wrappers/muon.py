"""Muon, a drop-in for torch.optim.Muon."""

import torch

from optkernels import muon_update, weight_decay_l2
from optkernels.muon import check_adjust_lr_fn, check_matrices, check_ns_options

from .base import KernelOptimizer


class Muon(KernelOptimizer):
    """Muon for 2-D params (hidden-layer weight matrices); see :func:`optkernels.muon_update`.

    torch.optim.Muon's signature, defaults and state: one ``momentum_buffer`` per param and no
    ``step``. Decoupled weight decay ``theta *= 1 - lr * weight_decay`` (the unadjusted lr) is
    composed in front of the kernel, as torch applies it. As torch, a param that is not 2-D is
    refused when it is given, a complex one at the first step that has its grad.
    """

    state_names = ("momentum_buffer",)
    counts_steps = False
    elementwise = False  # orthogonalises each matrix

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        try:
            # complex params are refused when they get a grad, as torch does
            check_matrices(self.param_groups[index]["params"], lambda i: f"param_groups[{index}]['params'][{i}]",
                           real=False)
        except ValueError:
            self.param_groups.pop()  # a group added after construction must not stay half-valid
            raise

    def _check_group(self, group):
        super()._check_group(group)
        check_ns_options(group["ns_coefficients"], group["ns_steps"])
        check_adjust_lr_fn(group["adjust_lr_fn"])

    def _check_grads(self, group):
        # torch checks these while stepping, so a later group's bad param leaves earlier groups
        # updated; here every group is checked before any update.
        index = next(i for i, g in enumerate(self.param_groups) if g is group)
        for position, param in enumerate(group["params"]):
            if param.grad is not None:
                check_matrices([param], lambda _: f"param_groups[{index}]['params'][{position}]")

    def _init_state(self, name, param, group):
        # torch shapes the buffer like the grad: its layout decides the NS iteration's rounding
        return torch.zeros_like(param.grad, memory_format=torch.preserve_format)

    def _update(self, group, params, grads, state, step):
        grads = _decoupled_weight_decay(params, grads, lr=group["lr"], weight_decay=group["weight_decay"])
        muon_update(params, grads, state["momentum_buffer"], lr=group["lr"], momentum=group["momentum"],
                    nesterov=group["nesterov"], ns_coefficients=group["ns_coefficients"], eps=group["eps"],
                    ns_steps=group["ns_steps"], adjust_lr_fn=group["adjust_lr_fn"])


def _decoupled_weight_decay(params, grads, *, lr, weight_decay):
    """``params *= 1 - lr * weight_decay``, with the factor rounded as torch rounds it."""
    if isinstance(lr, torch.Tensor):
        # torch keeps a tensor lr as a tensor, so the factor f is computed (and rounded) in lr's
        # dtype: float32 for torch.tensor(0.01), even for float64 params. The lr-free form scales
        # by 1 - (1 - f), which is f exactly for f in [0.5, 1] (differences of nearby floats).
        factor = (1 - lr.squeeze() * weight_decay).item()
        return weight_decay_l2(params, grads, weight_decay=1 - factor, fixed=True)
    return weight_decay_l2(params, grads, weight_decay=weight_decay, lr=lr, decoupled=True)
