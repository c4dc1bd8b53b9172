"""``optkernels.rmsprop_update`` called as a user calls it, against torch's functional RMSprop
(``torch.optim.rmsprop.rmsprop``) on copies of the same tensors, in both of torch's modes.

torch's two paths run the same ops in the same order, and so does the kernel: fp32, fp64 and
complex64 (viewed as real pairs, as torch does) are equal bit for bit to both. In bf16 torch's
foreach ``_foreach_mul_`` rounds alpha and momentum to bf16 (0.99 becomes 0.98828125); the kernel
keeps them as the for-loop's ``mul_`` does, so bf16 equals the for-loop path and is close to the
foreach one.
"""

import math
from functools import partial
import re

import pytest
import torch
from torch.optim.rmsprop import rmsprop as torch_functional_rmsprop

from optkernels import rmsprop_update, weight_decay_l2
from tests import helpers
from tests.helpers import copies, tolerance

# A matrix, a vector, a 0-d tensor, a transposed matrix, a strided view and an empty tensor.
LAYOUTS = [((4, 5), "contiguous"), ((7,), "contiguous"), ((), "contiguous"), ((6, 3), "transposed"),
           ((5,), "strided"), ((0,), "contiguous")]
CALLS = 8
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.complex64]
# (kwargs, centered)
HPARAMS = {
    "default": (dict(lr=1e-2, alpha=0.99, eps=1e-8, momentum=0.0), False),
    "centered": (dict(lr=1e-2, alpha=0.9, eps=1e-8, momentum=0.0), True),
    "momentum": (dict(lr=1e-2, alpha=0.9, eps=1e-3, momentum=0.9), False),
    "centered-momentum": (dict(lr=0.05, alpha=0.5, eps=1e-2, momentum=0.5), True),
    # alpha=1 keeps the averages at zero, alpha=0 keeps only the last gradient: both edges (not
    # centered at alpha=0: g^2 - g*g rounds to about +-1 ulp, and the square root of -1 ulp is NaN)
    "alpha=1": (dict(lr=1e-3, alpha=1.0, eps=0.5, momentum=0.0), False),
    "alpha=1-centered": (dict(lr=1e-3, alpha=1.0, eps=0.5, momentum=0.0), True),
    "alpha=0": (dict(lr=1e-3, alpha=0.0, eps=1e-3, momentum=0.3), False),
    "tensor-lr": (dict(lr=torch.tensor(0.02), alpha=0.99, eps=1e-8, momentum=0.5), True),
}


random_tensors = partial(helpers.random_tensors, layouts=LAYOUTS)


def torch_rmsprop(params, grads, square_avgs, grad_avgs, buffers, *, foreach, lr, alpha, eps, momentum,
                  weight_decay=0.0):
    steps = [torch.tensor(0.0) for _ in params]  # torch counts them; the rule never reads them
    torch_functional_rmsprop(params, grads, square_avgs, grad_avgs or [], buffers or [], steps, foreach=foreach,
                             has_complex=any(p.is_complex() for p in params), lr=lr, alpha=alpha, eps=eps,
                             weight_decay=weight_decay, momentum=momentum, centered=grad_avgs is not None,
                             maximize=False)


def assert_lists_match(mine, theirs, exact, where):
    for index, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        if b.numel():  # tolerance() scales with the largest entry
            torch.testing.assert_close(a, b, **tolerance(b.dtype, exact, b),
                                       msg=lambda m: f"{where}, tensor {index}: {m}")


class Run:
    """The kernel's params and state, and a copy of each for torch."""

    def __init__(self, dtype, *, centered, momentum):
        self.params = random_tensors(dtype, seed=0)
        zeros = lambda: [torch.zeros_like(p) for p in self.params]  # noqa: E731
        self.square_avgs = zeros()
        self.grad_avgs = zeros() if centered else None
        self.buffers = zeros() if momentum > 0 else None
        self.ref = [None if lst is None else copies(lst)
                    for lst in (self.params, self.square_avgs, self.grad_avgs, self.buffers)]

    def mine(self):
        return [t for lst in (self.params, self.square_avgs, self.grad_avgs, self.buffers) for t in lst or []]

    def theirs(self):
        return [t for lst in self.ref for t in lst or []]


@pytest.mark.parametrize("hparams", list(HPARAMS))
@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torch_functional(dtype, foreach, hparams):
    """0-d, non-contiguous and empty tensors in one call; grads are never changed."""
    hp, centered = HPARAMS[hparams]
    run = Run(dtype, centered=centered, momentum=hp["momentum"])
    for call in range(1, CALLS + 1):
        grads = random_tensors(dtype, seed=100 + call)
        before = copies(grads)
        rmsprop_update(run.params, grads, run.square_avgs, run.grad_avgs, run.buffers, **hp)
        assert all(torch.equal(g, b) for g, b in zip(grads, before)), "the kernel changed a grad"
        params, square_avgs, grad_avgs, buffers = run.ref
        torch_rmsprop(params, grads, square_avgs, grad_avgs, buffers, foreach=foreach, **hp)
        exact = not (foreach and dtype == torch.bfloat16)
        assert_lists_match(run.mine(), run.theirs(), exact, f"call {call}")
    if dtype != torch.bfloat16:  # in bf16 a late step can be below half an ulp of the param
        assert all(p.numel() == 0 or not torch.equal(p, r) for p, r in zip(run.params, random_tensors(dtype, seed=0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_coupled_weight_decay_in_front_matches_torch(dtype):
    """``weight_decay_l2`` then the kernel is torch's RMSprop with ``weight_decay``, bit for bit."""
    hp = dict(lr=0.01, alpha=0.9, eps=1e-8, momentum=0.1)
    run = Run(dtype, centered=True, momentum=hp["momentum"])
    for call in range(1, CALLS + 1):
        grads = random_tensors(dtype, seed=100 + call)
        rmsprop_update(run.params, weight_decay_l2(run.params, grads, weight_decay=0.1), run.square_avgs,
                       run.grad_avgs, run.buffers, **hp)
        params, square_avgs, grad_avgs, buffers = run.ref
        torch_rmsprop(params, grads, square_avgs, grad_avgs, buffers, foreach=True, weight_decay=0.1, **hp)
    assert_lists_match(run.mine(), run.theirs(), True, "end")


def test_empty_optional_lists_mean_off_and_buffers_are_ignored_without_momentum():
    """``grad_avgs=[]`` is plain RMSprop (torch's functional API passes ``[]``); momentum buffers
    given with ``momentum=0`` are left alone, as torch.optim.RMSprop does."""
    plain, off = Run(torch.float32, centered=False, momentum=0), Run(torch.float32, centered=False, momentum=0)
    unused = [torch.zeros_like(p) for p in off.params]
    for call in range(1, 4):
        grads = random_tensors(torch.float32, seed=100 + call)
        rmsprop_update(plain.params, grads, plain.square_avgs, lr=0.01)
        rmsprop_update(off.params, grads, off.square_avgs, [], unused, lr=0.01)
    assert_lists_match(off.mine(), plain.mine(), True, "end")
    assert all(not b.any() for b in unused)


def test_mixed_dtypes_in_one_call_equal_separate_calls():
    dtypes = [torch.float32, torch.float64, torch.float64, torch.float32, torch.float64, torch.float32]
    params = [p.to(d) for p, d in zip(random_tensors(torch.float64, seed=0), dtypes)]
    states = [[torch.zeros_like(p) for p in params] for _ in range(3)]
    alone = [copies(params)] + [copies(state) for state in states]
    for call in range(1, CALLS + 1):
        grads = [g.to(d) for g, d in zip(random_tensors(torch.float64, seed=100 + call), dtypes)]
        rmsprop_update(params, grads, *states, lr=0.01, momentum=0.9)
        for i in range(len(params)):
            rmsprop_update(*([lst[i]] for lst in alone[:1] + [grads] + alone[1:]), lr=0.01, momentum=0.9)
    assert_lists_match(params + sum(states, []), sum(alone, []), True, "end")


# --- bad input: an error naming the argument, and nothing changed ----------------------------------

def valid_call():
    params = random_tensors(torch.float32, seed=0, layouts=LAYOUTS[:2])
    return dict(params=params, grads=random_tensors(torch.float32, seed=1, layouts=LAYOUTS[:2]),
                square_avgs=[torch.full_like(p, 0.1) for p in params],
                grad_avgs=[torch.full_like(p, 0.01) for p in params],
                momentum_buffers=[torch.full_like(p, 0.2) for p in params], lr=0.01, alpha=0.99, eps=1e-8,
                momentum=0.9)


BAD_CALLS = {
    "negative-lr": (lambda c: c.update(lr=-1.0), ValueError, "lr"),
    "nan-lr": (lambda c: c.update(lr=math.nan), ValueError, "lr"),
    "alpha-above-1": (lambda c: c.update(alpha=1.5), ValueError, "alpha"),
    "negative-alpha": (lambda c: c.update(alpha=-0.1), ValueError, "alpha"),
    "nan-alpha": (lambda c: c.update(alpha=math.nan), ValueError, "alpha"),
    "negative-eps": (lambda c: c.update(eps=-1e-8), ValueError, "eps"),
    "negative-momentum": (lambda c: c.update(momentum=-0.5), ValueError, "momentum"),
    "nan-momentum": (lambda c: c.update(momentum=math.nan), ValueError, "momentum"),
    "momentum-without-buffers": (lambda c: c.update(momentum_buffers=None), ValueError, "momentum_buffers"),
    "square_avgs-too-few": (lambda c: c["square_avgs"].pop(), ValueError, "square_avgs"),
    "grad_avgs-wrong-shape": (lambda c: c["grad_avgs"].__setitem__(1, torch.zeros(3)), ValueError, "grad_avgs[1]"),
    "momentum_buffers-wrong-dtype": (lambda c: c["momentum_buffers"].__setitem__(0, c["momentum_buffers"][0].double()),
                                     TypeError, "momentum_buffers[0]"),
    "grads-sparse": (lambda c: c["grads"].__setitem__(0, c["grads"][0].to_sparse()), RuntimeError, "grads[0]"),
}


@pytest.mark.parametrize("bad", list(BAD_CALLS))
def test_bad_input_raises_naming_the_argument_and_changes_nothing(bad):
    change, error, name = BAD_CALLS[bad]
    call = valid_call()
    change(call)
    lists = [call.pop(key) for key in ("params", "grads", "square_avgs", "grad_avgs", "momentum_buffers")]
    tensors = [t for lst in lists for t in (lst or [])]
    before = [t.clone() for t in tensors]
    with pytest.raises(error, match=rf"(?<![\w]){re.escape(name)}(?![\w\[])"):
        rmsprop_update(*lists, **call)
    for tensor, copy in zip(tensors, before):
        assert torch.equal(tensor.to_dense(), copy.to_dense())
