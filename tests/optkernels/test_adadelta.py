"""``optkernels.adadelta_update`` called as a user calls it, against torch's functional Adadelta
(``torch.optim.adadelta.adadelta``) on copies of the same tensors, in both of torch's modes.

torch's two paths run the same ops in the same order, and so does the kernel: fp32 and fp64 are
equal bit for bit to both. Complex params are viewed as real pairs, as torch's foreach path does
(equal bit for bit); its for-loop adds the final step as complex numbers (equal to rounding).
In bf16 torch's foreach ``_foreach_mul_`` rounds rho to bf16 (0.9 becomes 0.8984375); the kernel
keeps it as the for-loop's ``mul_`` does, so bf16 equals the for-loop path and is close to the
foreach one.
"""

import math
from functools import partial
import re

import pytest
import torch
from torch.optim.adadelta import adadelta as torch_functional_adadelta

from optkernels import adadelta_update, weight_decay_l2
from tests import helpers
from tests.helpers import copies, tolerance

# A matrix, a vector, a 0-d tensor, a transposed matrix, a strided view and an empty tensor.
LAYOUTS = [((4, 5), "contiguous"), ((7,), "contiguous"), ((), "contiguous"), ((6, 3), "transposed"),
           ((5,), "strided"), ((0,), "contiguous")]
CALLS = 8
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.complex64]
HPARAMS = {
    "default": dict(lr=1.0, rho=0.9, eps=1e-6),
    "lr-rho-eps": dict(lr=0.5, rho=0.6, eps=1e-2),
    # rho=1 keeps both averages at zero: every step is lr * g (torch allows it)
    "rho=1": dict(lr=0.1, rho=1.0, eps=1e-6),
    "rho=0": dict(lr=1.0, rho=0.0, eps=1e-3),
    "tensor-lr": dict(lr=torch.tensor(0.3), rho=0.9, eps=1e-6),
}


random_tensors = partial(helpers.random_tensors, layouts=LAYOUTS)


def torch_adadelta(params, grads, square_avgs, acc_deltas, *, foreach, lr, rho, eps, weight_decay=0.0):
    steps = [torch.tensor(0.0) for _ in params]  # torch counts them; the rule never reads them
    torch_functional_adadelta(params, grads, square_avgs, acc_deltas, steps, foreach=foreach,
                              has_complex=any(p.is_complex() for p in params), lr=lr, rho=rho, eps=eps,
                              weight_decay=weight_decay, maximize=False)


def assert_lists_match(mine, theirs, exact, where):
    for index, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        if b.numel():  # tolerance() scales with the largest entry
            torch.testing.assert_close(a, b, **tolerance(b.dtype, exact, b),
                                       msg=lambda m: f"{where}, tensor {index}: {m}")


@pytest.mark.parametrize("hparams", list(HPARAMS))
@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torch_functional(dtype, foreach, hparams):
    """0-d, non-contiguous and empty tensors in one call; grads are never changed."""
    hp = HPARAMS[hparams]
    params = random_tensors(dtype, seed=0)
    square_avgs, acc_deltas = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    ref = [copies(params), copies(square_avgs), copies(acc_deltas)]
    for call in range(1, CALLS + 1):
        grads = random_tensors(dtype, seed=100 + call)
        before = copies(grads)
        adadelta_update(params, grads, square_avgs, acc_deltas, **hp)
        assert all(torch.equal(g, b) for g, b in zip(grads, before)), "the kernel changed a grad"
        torch_adadelta(*ref[:1], grads, *ref[1:], foreach=foreach, **hp)
        # torch's for-loop adds the step to a complex param as complex numbers (``add_`` with a
        # real alpha rounds differently from the real pairs, unless lr is a power of 2)
        exact = not (foreach and dtype == torch.bfloat16 or not foreach and dtype.is_complex)
        assert_lists_match(params + square_avgs + acc_deltas, sum(ref, []), exact, f"call {call}")
    if dtype != torch.bfloat16:  # in bf16 an Adadelta step (about sqrt(eps)) is below half an ulp
        assert all(p.numel() == 0 or not torch.equal(p, r) for p, r in zip(params, random_tensors(dtype, seed=0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_coupled_weight_decay_in_front_matches_torch(dtype):
    """``weight_decay_l2`` then the kernel is torch's Adadelta with ``weight_decay``, bit for bit."""
    params = random_tensors(dtype, seed=0)
    square_avgs, acc_deltas = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    ref = [copies(params), copies(square_avgs), copies(acc_deltas)]
    for call in range(1, CALLS + 1):
        grads = random_tensors(dtype, seed=100 + call)
        adadelta_update(params, weight_decay_l2(params, grads, weight_decay=0.9), square_avgs, acc_deltas,
                        lr=0.5, rho=0.95, eps=1e-6)
        torch_adadelta(*ref[:1], grads, *ref[1:], foreach=True, lr=0.5, rho=0.95, eps=1e-6, weight_decay=0.9)
    assert_lists_match(params + square_avgs + acc_deltas, sum(ref, []), True, "end")


def test_mixed_dtypes_in_one_call_equal_separate_calls():
    dtypes = [torch.float32, torch.float64, torch.float64, torch.float32, torch.float64, torch.float32]
    params = [p.to(d) for p, d in zip(random_tensors(torch.float64, seed=0), dtypes)]
    states = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    alone = [copies(params), copies(states[0]), copies(states[1])]
    for call in range(1, CALLS + 1):
        grads = [g.to(d) for g, d in zip(random_tensors(torch.float64, seed=100 + call), dtypes)]
        adadelta_update(params, grads, *states, lr=1.0)
        for i in range(len(params)):
            adadelta_update([alone[0][i]], [grads[i]], [alone[1][i]], [alone[2][i]], lr=1.0)
    assert_lists_match(params + states[0] + states[1], sum(alone, []), True, "end")


# --- bad input: an error naming the argument, and nothing changed ----------------------------------

def valid_call():
    params = random_tensors(torch.float32, seed=0, layouts=LAYOUTS[:2])
    return dict(params=params, grads=random_tensors(torch.float32, seed=1, layouts=LAYOUTS[:2]),
                square_avgs=[torch.full_like(p, 0.1) for p in params],
                acc_deltas=[torch.full_like(p, 0.2) for p in params], lr=1.0, rho=0.9, eps=1e-6)


BAD_CALLS = {
    "negative-lr": (lambda c: c.update(lr=-1.0), ValueError, "lr"),
    "nan-lr": (lambda c: c.update(lr=math.nan), ValueError, "lr"),
    "rho-above-1": (lambda c: c.update(rho=1.1), ValueError, "rho"),
    "negative-rho": (lambda c: c.update(rho=-0.1), ValueError, "rho"),
    "nan-rho": (lambda c: c.update(rho=math.nan), ValueError, "rho"),
    "inf-eps": (lambda c: c.update(eps=math.inf), ValueError, "eps"),
    "acc_deltas-too-few": (lambda c: c["acc_deltas"].pop(), ValueError, "acc_deltas"),
    "square_avgs-wrong-shape": (lambda c: c["square_avgs"].__setitem__(1, torch.zeros(3)), ValueError,
                                "square_avgs[1]"),
    "acc_deltas-wrong-dtype": (lambda c: c["acc_deltas"].__setitem__(0, c["acc_deltas"][0].double()), TypeError,
                               "acc_deltas[0]"),
    "grads-sparse": (lambda c: c["grads"].__setitem__(0, c["grads"][0].to_sparse()), RuntimeError, "grads[0]"),
    "square_avgs-missing": (lambda c: c.update(square_avgs=None), TypeError, "square_avgs"),
}


@pytest.mark.parametrize("bad", list(BAD_CALLS))
def test_bad_input_raises_naming_the_argument_and_changes_nothing(bad):
    change, error, name = BAD_CALLS[bad]
    call = valid_call()
    change(call)
    lists = [call.pop(key) for key in ("params", "grads", "square_avgs", "acc_deltas")]
    tensors = [t for lst in lists for t in (lst or [])]
    before = [t.clone() for t in tensors]
    with pytest.raises(error, match=rf"(?<![\w]){re.escape(name)}(?![\w\[])"):
        adadelta_update(*lists, **call)
    for tensor, copy in zip(tensors, before):
        assert torch.equal(tensor.to_dense(), copy.to_dense())
