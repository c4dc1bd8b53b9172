"""ADOPT, a drop-in for the authors' ``ADOPT`` (github.com/iShohei220/adopt)."""

from optkernels._validation import check_flag
from optkernels.adopt import adopt_update, clip_values, default_clip_lambda

from .base import KernelOptimizer


class ADOPT(KernelOptimizer):
    """ADOPT; see :func:`optkernels.adopt.adopt_update`.

    The authors' signature, defaults and state (``step``, ``exp_avg``, ``exp_avg_sq`` per param;
    ``clip_lambda`` on the optimizer, not in the param groups, as theirs), so checkpoints load both
    ways. The default ``clip_lambda`` is :func:`~optkernels.adopt.default_clip_lambda`, the
    authors' ``step**0.25`` as a named function: the optimizer pickles and deep-copies, keeping
    it (a ``load_state_dict`` keeps the optimizer's own). The step runs eagerly inside a
    ``torch.compile`` around ``step()`` (``traceable = False``): the first step takes another
    branch, read from the step count as a number.

    A checkpoint of pytorch-optimizer's ``ADOPT`` loads too: its group-wide ``step`` becomes each
    param's, its ``weight_decouple`` our ``decouple``; its ``fixed_decay=True`` is refused.
    """

    traceable = False
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, clip_lambda=default_clip_lambda,
                 weight_decay=0.0, decouple=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, flat=False, compiled=False):
        if clip_lambda is not None and not callable(clip_lambda):
            raise TypeError(f"clip_lambda must be callable or None, got {type(clip_lambda).__name__}")
        self.clip_lambda = clip_lambda
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decouple=decouple,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _check_group(self, group):
        super()._check_group(group)
        check_flag("decouple", group["decouple"])
        check_flag("maximize", group["maximize"])

    def _check_grads(self, group):
        # Every group is checked before any steps: clip_lambda is called here (as the kernel
        # calls it) for each step count this group will take, so that a schedule that raises or
        # returns a bad clip for one group's count stops the step before another group moved.
        counts = {float(self.state[p]["step"]) + 1 if "step" in self.state.get(p, {}) else 1.0
                  for p in group["params"] if p.grad is not None}
        clip_values(self.clip_lambda, sorted(counts))

    def _update(self, group, params, grads, state, step):
        adopt_update(params, grads, state["exp_avg"], state["exp_avg_sq"], step=step, lr=group["lr"],
                     beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"],
                     clip_lambda=self.clip_lambda, weight_decay=group["weight_decay"],
                     decoupled=group["decouple"], maximize=group["maximize"], compiled=self.compiled)

    def __getstate__(self):
        return {**super().__getstate__(), "clip_lambda": self.clip_lambda}

    def __setstate__(self, state):
        # load_state_dict comes here too, without clip_lambda: the optimizer keeps its own
        self.clip_lambda = state.pop("clip_lambda", getattr(self, "clip_lambda", default_clip_lambda))
        groups = state.get("param_groups", [])
        for group in groups:
            _from_pytorch_optimizer(group, state.get("state", {}))
        super().__setstate__(state)


def _from_pytorch_optimizer(group, state) -> None:
    """A param group of pytorch-optimizer's ADOPT checkpoint in ours, in place."""
    if "weight_decouple" in group and "decouple" not in group:
        if group.get("fixed_decay") and group.get("weight_decay"):
            raise ValueError("fixed_decay=True (a pytorch-optimizer ADOPT checkpoint) is not supported: "
                             "ADOPT's decoupled decay is scaled by the lr, as the authors'")
        group["decouple"] = group.pop("weight_decouple")
        group.pop("fixed_decay", None)
    if "step" in group:  # pytorch-optimizer counts per group; the authors, torch.optim and we per param
        count = group.pop("step")
        for param in group["params"]:
            if param in state and "step" not in state[param]:
                state[param]["step"] = count   # made a tensor by KernelOptimizer.__setstate__
