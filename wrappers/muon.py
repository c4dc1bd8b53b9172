"""Muon (being written)."""

from .base import KernelOptimizer


class Muon(KernelOptimizer):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Muon is being written")
