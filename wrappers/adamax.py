"""Adamax (being written)."""

from .base import KernelOptimizer


class Adamax(KernelOptimizer):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Adamax is being written")
