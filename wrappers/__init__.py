"""Drop-in ``torch.optim.Optimizer`` classes that call the kernels of :mod:`optkernels`."""

from .adabelief import AdaBelief
from .adam import Adam, AdamW
from .base import KernelOptimizer
from .radam import RAdam
from .sgd import SGD

__all__ = ["AdaBelief", "Adam", "AdamW", "KernelOptimizer", "RAdam", "SGD"]
