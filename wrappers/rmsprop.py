"""RMSprop (being written)."""

from .base import KernelOptimizer


class RMSprop(KernelOptimizer):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("RMSprop is being written")
