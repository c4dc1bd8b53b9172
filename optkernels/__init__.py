"""Functional optimizer kernels: pure functions that update lists of tensors in place.

Every kernel takes lists of tensors (params, grads, then the algorithm's state) and
keyword-only hyperparameters, keeps no hidden state, never mutates grads and returns None (the
schedule-free kernels return the running averaging weights the caller keeps for the next step).
"""

from ._validation import UnsupportedOptionError
from .adabelief import adabelief_update
from .adadelta import adadelta_update
from .adafactor import adafactor_update
from .adagrad import adagrad_update
from .adam import adam_update
from .adamax import adamax_update
from .adopt import adopt_update
from .asgd import asgd_update
from .lbfgs import lbfgs_update
from .lion import lion_update
from .muon import muon_update
from .nadam import nadam_update
from .quantization import dequantize_blockwise, e4m3_stochastic, quantize_blockwise, stochastic_round_to_bf16
from .radam import radam_update
from .rmsprop import rmsprop_update
from .rprop import rprop_update
from .schedule_free import schedule_free_adamw_update, schedule_free_sgd_update
from .sgd import sgd_update
from .sparse_adam import sparse_adam_update
from .weight_decay import weight_decay_l1, weight_decay_l2

__all__ = [
    "UnsupportedOptionError",
    "adabelief_update",
    "adadelta_update",
    "adafactor_update",
    "adagrad_update",
    "adam_update",
    "adamax_update",
    "adopt_update",
    "asgd_update",
    "dequantize_blockwise",
    "e4m3_stochastic",
    "lbfgs_update",
    "lion_update",
    "muon_update",
    "nadam_update",
    "quantize_blockwise",
    "radam_update",
    "rmsprop_update",
    "rprop_update",
    "schedule_free_adamw_update",
    "schedule_free_sgd_update",
    "sgd_update",
    "sparse_adam_update",
    "stochastic_round_to_bf16",
    "weight_decay_l1",
    "weight_decay_l2",
]
__version__ = "0.1.0"
