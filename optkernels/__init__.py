"""Functional optimizer kernels: pure functions that update lists of tensors in place.

Every kernel takes lists of tensors (params, grads, then the algorithm's state) and
keyword-only hyperparameters, keeps no hidden state, never mutates grads and returns None.
"""

from ._validation import UnsupportedOptionError
from .adabelief import adabelief_update
from .adam import adam_update
from .radam import radam_update
from .sgd import sgd_update
from .weight_decay import weight_decay_l2

__all__ = [
    "UnsupportedOptionError",
    "adabelief_update",
    "adam_update",
    "radam_update",
    "sgd_update",
    "weight_decay_l2",
]
__version__ = "0.1.0"
