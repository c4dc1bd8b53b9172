"""``optkernels.adagrad_update`` called as a user calls it, against torch's functional Adagrad
(``torch.optim.adagrad.adagrad``) on copies of the same tensors, in both of torch's modes.

The kernel runs torch's for-loop op order, which in fp32, fp64 and complex64 also equals its
foreach path bit for bit; in bf16 torch's foreach path rounds ``grad * -lr`` to bf16 before
dividing (its for-loop ``addcdiv`` does not), so there we equal the for-loop path only and agree
with foreach to a few bf16 ulps.
"""

import math
from functools import partial
import re

import pytest
import torch
from torch.optim.adagrad import adagrad as torch_functional_adagrad

from optkernels import adagrad_update, weight_decay_l2
from tests import helpers
from tests.helpers import copies, tolerance

# A matrix, a vector, a 0-d tensor, a transposed matrix, a strided view and an empty tensor.
LAYOUTS = [((4, 5), "contiguous"), ((7,), "contiguous"), ((), "contiguous"), ((6, 3), "transposed"),
           ((5,), "strided"), ((0,), "contiguous")]
STEP_OFFSETS = [0, 3, 5, 9, 1, 2]  # steps each tensor took before: lr decay differs per tensor
CALLS = 8
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.complex64]
HPARAMS = {
    "default": dict(lr=1e-2, lr_decay=0.0, eps=1e-10),
    "lr_decay": dict(lr=0.1, lr_decay=0.5, eps=1e-10),
    "large-eps": dict(lr=0.1, lr_decay=0.1, eps=0.5),  # eps comparable to sqrt(sum): where it goes shows
}


random_tensors = partial(helpers.random_tensors, layouts=LAYOUTS)


def torch_adagrad(params, grads, state_sums, steps, *, foreach, lr, lr_decay, eps, weight_decay=0.0):
    """torch's functional Adagrad; it adds 1 to each tensor in ``steps`` itself."""
    torch_functional_adagrad(params, grads, state_sums, steps, foreach=foreach,
                             has_sparse_grad=any(g.is_sparse for g in grads),
                             has_complex=any(p.is_complex() for p in params), lr=lr,
                             weight_decay=weight_decay, lr_decay=lr_decay, eps=eps, maximize=False)


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
    """Per-tensor step counts (one 0-d tensor each, as torch keeps them), an initial accumulator
    value, 0-d, non-contiguous and empty tensors; grads are never changed."""
    hp = HPARAMS[hparams]
    params = random_tensors(dtype, seed=0)
    state_sums = [torch.full_like(p, 0.1) for p in params]
    ref_params, ref_sums = copies(params), copies(state_sums)
    ref_steps = [torch.tensor(float(offset)) for offset in STEP_OFFSETS]
    for call in range(1, CALLS + 1):
        grads = random_tensors(dtype, seed=100 + call)
        before = copies(grads)
        adagrad_update(params, grads, state_sums, step=[torch.tensor(float(call + o)) for o in STEP_OFFSETS], **hp)
        assert all(torch.equal(g, b) for g, b in zip(grads, before)), "the kernel changed a grad"
        torch_adagrad(ref_params, grads, ref_sums, ref_steps, foreach=foreach, **hp)
        exact = not (foreach and dtype == torch.bfloat16)
        assert_lists_match(params + state_sums, ref_params + ref_sums, exact, f"call {call}")
    if dtype != torch.bfloat16:  # in bf16 a late step can be below half an ulp of the param
        assert all(p.numel() == 0 or not torch.equal(p, r) for p, r in zip(params, random_tensors(dtype, seed=0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_coupled_weight_decay_in_front_matches_torch(dtype):
    """``weight_decay_l2`` then the kernel is torch's Adagrad with ``weight_decay``, bit for bit."""
    params = random_tensors(dtype, seed=0)
    state_sums = [torch.zeros_like(p) for p in params]
    ref_params, ref_sums, ref_steps = copies(params), copies(state_sums), [torch.tensor(0.0) for _ in params]
    for call in range(1, CALLS + 1):
        grads = random_tensors(dtype, seed=100 + call)
        decayed = weight_decay_l2(params, grads, weight_decay=0.3)
        adagrad_update(params, decayed, state_sums, step=call, lr=0.1, lr_decay=0.2)
        torch_adagrad(ref_params, grads, ref_sums, ref_steps, foreach=True, lr=0.1, lr_decay=0.2, eps=1e-10,
                      weight_decay=0.3)
    assert_lists_match(params + state_sums, ref_params + ref_sums, True, "end")


def test_mixed_dtypes_and_step_forms_in_one_call():
    """fp32 and fp64 tensors with different step counts in one call equal separate calls; one
    int, a list of ints and a list of 0-d tensors give the same bits."""
    dtypes = [torch.float32, torch.float64, torch.float64, torch.float32, torch.float64, torch.float32]
    params = [p.to(d) for p, d in zip(random_tensors(torch.float64, seed=0), dtypes)]
    state_sums = [torch.zeros_like(p) for p in params]
    alone_params, alone_sums = copies(params), copies(state_sums)
    for call in range(1, CALLS + 1):
        grads = [g.to(d) for g, d in zip(random_tensors(torch.float64, seed=100 + call), dtypes)]
        adagrad_update(params, grads, state_sums, step=[call + o for o in STEP_OFFSETS], lr=0.1, lr_decay=0.5)
        for i, offset in enumerate(STEP_OFFSETS):
            adagrad_update([alone_params[i]], [grads[i]], [alone_sums[i]], step=torch.tensor(float(call + offset)),
                           lr=0.1, lr_decay=0.5)
    assert_lists_match(params + state_sums, alone_params + alone_sums, True, "end")

    runs = {}
    for kind, step in (("int", 3), ("ints", [3] * 6), ("tensors", [torch.tensor(3.0)] * 6)):
        ps = random_tensors(torch.float32, seed=0)
        sums = [torch.zeros_like(p) for p in ps]
        adagrad_update(ps, random_tensors(torch.float32, seed=7), sums, step=step, lr=0.1, lr_decay=0.5)
        runs[kind] = ps + sums
    assert_lists_match(runs["ints"], runs["int"], True, "ints")
    assert_lists_match(runs["tensors"], runs["int"], True, "tensors")


# --- sparse gradients ---------------------------------------------------------------------------

def sparse_grad(shape, rows, generator, dtype=torch.float32):
    """A COO gradient of an embedding table: ``rows`` may repeat (an id seen twice in a batch), so
    the tensor is uncoalesced, as ``nn.Embedding(sparse=True)`` makes it."""
    indices = torch.tensor([rows])
    values = torch.randn(len(rows), shape[1], generator=generator, dtype=torch.float64).to(dtype)
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=True)


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_sparse_grads_match_torch(dtype, foreach):
    """Sparse and dense grads in one call, per-tensor steps and lr decay: torch runs a group that
    has a sparse grad one tensor at a time (in both modes); the numbers are the same bits."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(10, 3, generator=generator, dtype=torch.float64).to(dtype),
              torch.randn(4, 2, generator=generator, dtype=torch.float64).to(dtype),
              torch.randn(6, 2, generator=generator, dtype=torch.float64).to(dtype)]
    state_sums = [torch.full_like(p, 0.05) for p in params]
    ref_params, ref_sums = copies(params), copies(state_sums)
    offsets = [0, 2, 5]
    ref_steps = [torch.tensor(float(o)) for o in offsets]
    untouched_rows = torch.ones(10, dtype=torch.bool)
    for call in range(1, CALLS + 1):
        rows = torch.randint(0, 8, (5,), generator=generator).tolist() + [1, 1]  # row 1 twice; 8, 9 never
        untouched_rows[rows] = False
        grads = [sparse_grad((10, 3), rows, generator, dtype),
                 torch.randn(4, 2, generator=generator, dtype=torch.float64).to(dtype),
                 sparse_grad((6, 2), [call % 6], generator, dtype)]
        before = [(g.clone(), g.is_sparse and g.is_coalesced()) for g in grads]
        assert not grads[0].is_coalesced()
        adagrad_update(params, grads, state_sums, step=[call + o for o in offsets], lr=0.1, lr_decay=0.3)
        for grad, (copy, coalesced) in zip(grads, before):
            assert grad.is_sparse == copy.is_sparse and torch.equal(grad.to_dense(), copy.to_dense())
            assert not grad.is_sparse or grad.is_coalesced() == coalesced, "the kernel coalesced a grad in place"
        torch_adagrad(ref_params, grads, ref_sums, ref_steps, foreach=foreach, lr=0.1, lr_decay=0.3, eps=1e-10)
        assert_lists_match(params + state_sums, ref_params + ref_sums, True, f"call {call}")
    assert untouched_rows.any(), "every row got a gradient: the sparse path was not tested"
    initial = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    assert torch.equal(params[0][untouched_rows], initial[untouched_rows]), "rows without a gradient moved"
    assert (state_sums[0][untouched_rows] == 0.05).all()


def test_only_sparse_grads():
    params, state_sums = [torch.zeros(3, 2)], [torch.zeros(3, 2)]
    grad = torch.sparse_coo_tensor(torch.tensor([[2]]), torch.tensor([[3.0, -4.0]]), (3, 2), check_invariants=True)
    adagrad_update(params, [grad], state_sums, step=1, lr=0.5, eps=0.0)
    assert torch.equal(params[0], torch.tensor([[0.0, 0.0], [0.0, 0.0], [-0.5, 0.5]]))
    assert torch.equal(state_sums[0], torch.tensor([[0.0, 0.0], [0.0, 0.0], [9.0, 16.0]]))


# --- bad input: an error naming the argument, and nothing changed ----------------------------------

def valid_call():
    params = random_tensors(torch.float32, seed=0, layouts=LAYOUTS[:2])
    return dict(params=params, grads=random_tensors(torch.float32, seed=1, layouts=LAYOUTS[:2]),
                state_sums=[torch.full_like(p, 0.1) for p in params], step=2, lr=0.1, lr_decay=0.1, eps=1e-10)


def _sparse_state(call):
    call["state_sums"][0] = call["state_sums"][0].to_sparse()


def _complex_sparse_grad(call):
    call["params"][0] = call["params"][0].to(torch.complex64)
    call["state_sums"][0] = call["state_sums"][0].to(torch.complex64)
    call["grads"][0] = call["grads"][0].to(torch.complex64).to_sparse()


BAD_CALLS = {
    "negative-lr": (lambda c: c.update(lr=-0.1), ValueError, "lr"),
    "nan-lr": (lambda c: c.update(lr=math.nan), ValueError, "lr"),
    "two-element-lr": (lambda c: c.update(lr=torch.tensor([0.1, 0.1])), ValueError, "lr"),
    "negative-lr_decay": (lambda c: c.update(lr_decay=-0.5), ValueError, "lr_decay"),
    "inf-lr_decay": (lambda c: c.update(lr_decay=math.inf), ValueError, "lr_decay"),
    "nan-eps": (lambda c: c.update(eps=math.nan), ValueError, "eps"),
    "step-0": (lambda c: c.update(step=0), ValueError, "step"),
    "step-per-tensor-too-few": (lambda c: c.update(step=[1]), ValueError, "step"),
    "step-fraction": (lambda c: c.update(step=[1, 1.5]), ValueError, "step[1]"),
    "state_sums-too-few": (lambda c: c["state_sums"].pop(), ValueError, "state_sums"),
    "state_sums-wrong-shape": (lambda c: c["state_sums"].__setitem__(1, torch.zeros(3)), ValueError,
                               "state_sums[1]"),
    "state_sums-wrong-dtype": (lambda c: c["state_sums"].__setitem__(0, c["state_sums"][0].double()), TypeError,
                               "state_sums[0]"),
    "state_sums-sparse": (_sparse_state, RuntimeError, "state_sums[0]"),
    "grads-missing": (lambda c: c.update(grads=None), TypeError, "grads"),
    "grads-complex-sparse": (_complex_sparse_grad, RuntimeError, "grads[0]"),
}


@pytest.mark.parametrize("bad", list(BAD_CALLS))
def test_bad_input_raises_naming_the_argument_and_changes_nothing(bad):
    change, error, name = BAD_CALLS[bad]
    call = valid_call()
    change(call)
    tensors = [t for key in ("params", "grads", "state_sums") for t in (call[key] or [])]
    before = [t.clone() for t in tensors]
    with pytest.raises(error, match=rf"(?<![\w]){re.escape(name)}(?![\w\[])"):
        adagrad_update(call.pop("params"), call.pop("grads"), call.pop("state_sums"), **call)
    for tensor, copy in zip(tensors, before):
        assert torch.equal(tensor.to_dense(), copy.to_dense())
