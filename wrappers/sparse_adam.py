"""SparseAdam (being written)."""

from .base import KernelOptimizer


class SparseAdam(KernelOptimizer):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("SparseAdam is being written")
