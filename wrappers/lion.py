"""Lion, a drop-in for lion-pytorch's ``Lion``."""

from optkernels._validation import UnsupportedOptionError, as_float, check_flag, check_lr, check_nonnegative
from optkernels.lion import check_lion_beta, check_real, lion_update

from .base import KernelOptimizer


class Lion(KernelOptimizer):
    """Lion; see :func:`optkernels.lion.lion_update`.

    lion-pytorch 0.2.5's signature and state (``exp_avg`` per param, no ``step``), so checkpoints
    load both ways. ``decoupled_weight_decay=True`` divides ``weight_decay`` by the initial lr (the
    constructor's ``lr``, as lion-pytorch's ``_init_lr``), so params decay by
    ``lr * weight_decay / initial_lr`` per step. It is kept per param group (lion-pytorch keeps it
    on the optimizer; a checkpoint of lion-pytorch, whose groups lack it, takes the constructor's).
    ``use_triton=True`` is refused: ``flat=True, compiled=True`` is the fused path here. Betas
    may be 1, as lion-pytorch allows; lr may be 0 (lion-pytorch asserts lr > 0) unless weight
    decay is decoupled, which divides by it. ``maximize`` is ours (lion-pytorch has none).
    """

    counts_steps = False  # lion-pytorch keeps no step count
    state_names = ("exp_avg",)

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, use_triton=False,
                 decoupled_weight_decay=False, *, maximize=False, flat=False, compiled=False):
        if use_triton:
            raise UnsupportedOptionError("use_triton=True is not supported by Lion: optkernels runs its own "
                                         "kernels; flat=True, compiled=True is the one-pass fused path")
        if decoupled_weight_decay is True and check_lr(lr) == 0:
            raise ValueError("Invalid learning rate: 0 with decoupled_weight_decay=True, which divides "
                             "weight_decay by the initial lr")
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _check_group(self, group):
        check_lr(group["lr"])
        check_nonnegative("weight_decay", group["weight_decay"])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for index, beta in enumerate(betas):
            check_lion_beta(f"betas[{index}]", beta)
        check_flag("maximize", group["maximize"])
        check_flag("decoupled_weight_decay", group["decoupled_weight_decay"])

    def _check_grads(self, group):
        check_real("params", [param for param in group["params"] if param.grad is not None])

    def _update(self, group, params, grads, state, step):
        weight_decay = group["weight_decay"]
        if group["decoupled_weight_decay"]:
            # as lion-pytorch: wd /= init_lr, the constructor's lr (not a group's, which a schedule moves)
            weight_decay /= as_float(self.defaults["lr"], "lr")
        lion_update(params, grads, state["exp_avg"], lr=group["lr"], beta1=group["betas"][0],
                    beta2=group["betas"][1], weight_decay=weight_decay, maximize=group["maximize"],
                    compiled=self.compiled)
