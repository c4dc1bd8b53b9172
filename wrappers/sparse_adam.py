"""SparseAdam, a drop-in for torch.optim.SparseAdam."""

import torch
from torch import Tensor

from optkernels import sparse_adam_update
from optkernels._validation import step_values

from .base import KernelOptimizer


class SparseAdam(KernelOptimizer):
    """Adam for dense params with sparse gradients (``nn.Embedding(sparse=True)``); see
    :func:`optkernels.sparse_adam_update`.

    As torch.optim.SparseAdam: ``lr`` and ``eps`` must be > 0, params dense and real, grads
    sparse; per-param state ``step`` (a Python int, as torch keeps it), ``exp_avg``,
    ``exp_avg_sq``. A step that meets a dense grad raises before changing anything.
    """

    state_names = ("exp_avg", "exp_avg_sq")
    elementwise = False  # sparse grads: neither flat buffers nor slices
    counts_steps = False  # torch keeps `step` as an int, not a tensor: counted in `_update`
    takes_sparse_grads = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, maximize=maximize)
        super().__init__(params, defaults)
        # torch checks the params given at construction, naming their [group, param] indices
        sparse = self._indices_where(lambda param: param.is_sparse)
        if sparse:
            raise ValueError(f"Sparse params at indices {sparse}: SparseAdam requires dense parameter tensors")
        complex_ = self._indices_where(Tensor.is_complex)
        if complex_:
            raise ValueError(f"Complex params at indices {complex_}: SparseAdam does not support complex parameters")

    def _indices_where(self, predicate) -> list[list[int]]:
        return [[g, p] for g, group in enumerate(self.param_groups)
                for p, param in enumerate(group["params"]) if predicate(param)]

    def _check_group(self, group):
        super()._check_group(group)
        # torch.optim.SparseAdam's rules: lr and eps strictly positive
        if "lr" in group and not group["lr"] > 0:
            raise ValueError(f"Invalid learning rate: {group['lr']} (lr must be > 0 for SparseAdam)")
        if "eps" in group and not group["eps"] > 0:
            raise ValueError(f"Invalid epsilon value: {group['eps']} (eps must be > 0 for SparseAdam)")

    def _check_grads(self, group):
        params = [param for param in group["params"] if param.grad is not None]
        for param in params:
            if not param.grad.is_sparse:
                raise RuntimeError("SparseAdam does not support dense gradients, please consider Adam instead")
            if param.is_complex():
                raise RuntimeError("SparseAdam does not support complex parameters")
        step_values(self._steps(params), len(params))  # a checkpoint's counts must be whole numbers

    def _steps(self, params) -> list:
        """Each param's step count after this step."""
        return [self.state.get(param, {}).get("step", 0) + 1 for param in params]

    def _update(self, group, params, grads, state, step):
        steps = self._steps(params)
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        sparse_adam_update(params, grads, state["exp_avg"], state["exp_avg_sq"], step=steps,
                           lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"])
        for param, count in zip(params, steps):
            param_state = self.state[param]
            if "step" in param_state:
                param_state["step"] = count
            else:  # torch's key order, so state dicts print and save alike
                self.state[param] = {"step": count, **param_state}
