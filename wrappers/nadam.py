"""NAdam (being written)."""

from .base import KernelOptimizer


class NAdam(KernelOptimizer):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("NAdam is being written")
