"""Adafactor (being written)."""

from .base import KernelOptimizer


class Adafactor(KernelOptimizer):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Adafactor is being written")
