"""Drop-in ``torch.optim.Optimizer`` classes that call the kernels of :mod:`optkernels`."""

from .adabelief import AdaBelief
from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .adopt import ADOPT
from .asgd import ASGD
from .base import KernelOptimizer
from .in_backward import StepInBackward, step_in_backward
from .lbfgs import LBFGS
from .lion import Lion
from .muon import Muon
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .schedule_free import AdamWScheduleFree, SGDScheduleFree
from .sgd import SGD
from .sparse_adam import SparseAdam

__all__ = [
    "ADOPT",
    "ASGD",
    "AdaBelief",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "AdamWScheduleFree",
    "Adamax",
    "KernelOptimizer",
    "LBFGS",
    "Lion",
    "Muon",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
    "SGDScheduleFree",
    "SparseAdam",
    "StepInBackward",
    "step_in_backward",
]
