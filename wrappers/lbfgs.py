"""LBFGS (being written)."""

from .base import KernelOptimizer


class LBFGS(KernelOptimizer):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("LBFGS is being written")
