"""Adadelta (being written)."""

from .base import KernelOptimizer


class Adadelta(KernelOptimizer):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Adadelta is being written")
