"""Every private torch API the project uses, in one place.

The rule: a private torch API (a module or name starting with ``_``: ``torch._dynamo``,
``torch.utils._foreach_utils``, ...) is used only where no public one does the job; it is
imported here and nowhere else, with a line on why no public API does the job; and
``tests/test_torch_private.py`` checks each entry on a tiny input, so that a torch release that
moves or changes one fails there, by name, instead of deep inside a kernel.
``tests/test_torch_private.py`` also fails if any other module of ``optkernels/`` or
``wrappers/`` uses a private torch API: imports a private torch module or name, reaches one
as ``torch._x...``, or calls one of torch's private Tensor or Optimizer methods (``._values()``).

What the rule does not cover:

- ``torch._foreach_*`` ops (``torch._foreach_add_``, ...): the foreach ops the kernels are
  built on, called directly as ``torch._foreach_<op>``. Torch documents them (torch's docs
  list them, and torch.optim's foreach paths call them); the underscore predates that. Torch
  2.13 has no other spelling; later torch adds a public ``torch.foreach`` namespace that calls
  the same ops (pytorch/pytorch#193607), which the kernels can switch to once the lowest torch
  they support has it. The test checks that every ``torch._foreach_<op>`` the package sources
  name exists.
- Tests and benchmarks: the grep test does not read them, but they take the entries below
  from this module where they use them. The tests also take torch's own optimizer
  configurations from its test suite, ``torch.testing._internal.common_optimizers.optim_db``
  (``tests/configs.py``), which is for tests only: it is not imported here, but
  ``tests/test_torch_private.py`` checks it with the rest.

(``torch._C``, torch's compiled extension, is no exception: the package does not use it.)

Replaced by public APIs (recorded so that they do not come back):

- ``torch._prims_common.is_non_overlapping_and_dense_or_false``: see
  :func:`is_non_overlapping_and_dense`, which uses only public calls.
- ``torch._dynamo.reset()``: ``torch.compiler.reset()`` is the public spelling.
- ``Tensor._values()`` and ``Tensor._indices()`` of sparse grads (Adagrad, SparseAdam): the
  public ``values()`` and ``indices()``, which need a coalesced tensor, as the kernels make.

The dynamo entries are functions that import on call: ``torch._dynamo`` takes a second or two
to import, which ``import optkernels`` must not pay (``import torch`` does not load it).
"""

import torch
from torch import Tensor
# No public function groups tensor lists by device and dtype. This is torch.optim's own grouping,
# a single C++ pass; the same loop in Python costs more per kernel call, on every step, for
# models of many tensors (the kernels group on every call).
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype as group_tensors_by_device_and_dtype
# No public API says which devices torch.optim runs foreach kernels on by default; the benchmark
# report names torch's default mode from the list torch.optim itself reads.
from torch.utils._foreach_utils import (
    _get_foreach_kernels_supported_devices as foreach_kernels_supported_devices,
)

__all__ = [
    "group_tensors_by_device_and_dtype",
    "foreach_kernels_supported_devices",
    "is_non_overlapping_and_dense",
    "is_dynamo_supported",
    "dynamo_counters",
    "queue_backward_callback",
]


def is_non_overlapping_and_dense(tensor: Tensor) -> bool:
    """Whether ``tensor``'s elements fill exactly ``numel()`` places of its storage, in some order
    of its dimensions (so a 1-D buffer can back it with its strides kept).

    Public calls only. Torch has no public predicate (``torch._prims_common`` has one, which this
    replaces; the C++ flag has no Python binding), but it documents ``preserve_format``:
    ``empty_like`` keeps the strides of a non-overlapping and dense tensor and gives any other
    one contiguous strides, which are not its own. On the meta device that allocates nothing:
    about 1.5 us a call, against about 45 us for ``torch._prims_common``'s, which also answers
    False for some dense tensors (a size-1 dimension of stride 0) that torch's C++ flag calls dense.
    """
    return tensor.layout == torch.strided and torch.empty_like(tensor, device="meta").stride() == tensor.stride()


def is_dynamo_supported() -> bool:
    """Whether torch.compile can run on this Python and platform."""
    # No public query: torch.compile() itself raises a plain RuntimeError where it cannot run,
    # which cannot be told apart from other errors. Looked up at each call, so a test's
    # monkeypatch of torch._dynamo.is_dynamo_supported applies.
    import torch._dynamo
    return torch._dynamo.is_dynamo_supported()


def dynamo_counters():
    """Dynamo's process-wide event counters: ``dynamo_counters()["stats"]["unique_graphs"]`` is
    how many graphs it has compiled (it grows by one per compile and recompile)."""
    # No public count of compiled graphs (torch.compiler has none; TORCH_LOGS only logs them).
    # The benchmarks and tests use it to show which step compiles.
    import torch._dynamo.utils
    return torch._dynamo.utils.counters


def queue_backward_callback(callback) -> None:
    """Run ``callback()`` once the backward pass now running has finished (all of its grads
    accumulated, DDP's finalisation included when DDP queued it first). Only callable during a
    backward pass, e.g. from a hook; a callback may queue another, which runs after those queued
    before it."""
    # No public API runs code at the end of a backward pass: post-accumulate-grad hooks fire per
    # param, and register_multi_grad_hook fires before the last grads are accumulated (and only
    # for tensors of one forward). Stepping in backward (wrappers.in_backward) must step the params
    # whose grads never arrive in a pass (unused, or accumulated in an earlier micro-batch) at its
    # end. torch's own FSDP, DDP (from C++) and torchtune's optimizer-in-backward use this engine.
    torch.autograd.Variable._execution_engine.queue_callback(callback)
