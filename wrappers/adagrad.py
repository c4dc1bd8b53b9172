"""Adagrad (being written)."""

from .base import KernelOptimizer


class Adagrad(KernelOptimizer):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Adagrad is being written")
