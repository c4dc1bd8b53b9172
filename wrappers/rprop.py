"""Rprop (being written)."""

from .base import KernelOptimizer


class Rprop(KernelOptimizer):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Rprop is being written")
