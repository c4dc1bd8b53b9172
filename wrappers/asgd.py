"""ASGD (being written)."""

from .base import KernelOptimizer


class ASGD(KernelOptimizer):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("ASGD is being written")
