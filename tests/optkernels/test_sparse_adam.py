"""``optkernels.sparse_adam_update`` called as a function, against torch's functional
``torch.optim._functional.sparse_adam`` (the only implementation torch.optim.SparseAdam has):
the same ops in the same order, so equal bit for bit, in fp32, fp64 and bf16, with one step
count per tensor, float and tensor ``lr``; and bad inputs raise, naming the argument, before
anything changes."""

import pytest
import torch
from torch.optim._functional import sparse_adam as torch_sparse_adam
from torch.testing import assert_close

from optkernels import sparse_adam_update
from tests.helpers import EXACT, laid_out, same_layout_copy

# (shape, layout, sparse dims of the grad): embedding-like, transposed, vector, fully sparse, 0-d
LAYOUTS = [((10, 4), "contiguous", 1), ((8, 3), "transposed", 1), ((9,), "strided", 1),
           ((5, 6), "contiguous", 2), ((), "contiguous", 0)]
STEP_OFFSETS = [0, 3, 1, 7, 2]  # steps each tensor took before the first call
CALLS = 6
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def sparse_grad(shape, sparse_dims, dtype, generator, coalesced, nnz=6):
    if sparse_dims == 0:
        indices = torch.zeros(0, nnz, dtype=torch.long)
    else:
        indices = torch.stack([torch.randint(0, size, (nnz,), generator=generator) for size in shape[:sparse_dims]])
        indices[:, -1] = indices[:, 0]  # a repeated index
    values = torch.randn((nnz, *shape[sparse_dims:]), generator=generator, dtype=torch.float64).to(dtype)
    grad = torch.sparse_coo_tensor(indices, values, shape, check_invariants=True)
    return grad.coalesce() if coalesced else grad


def make_tensors(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = [laid_out(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype), layout)
              for shape, layout, _ in LAYOUTS]
    return params, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]


def grads_for_call(dtype, call):
    generator = torch.Generator().manual_seed(100 + call)
    return [sparse_grad(shape, sparse_dims, dtype, generator, coalesced=(call + i) % 2 == 0)
            for i, (shape, _, sparse_dims) in enumerate(LAYOUTS)]


def copies(tensors):
    return [t.clone() if t.is_sparse else same_layout_copy(t) for t in tensors]


@pytest.mark.parametrize("lr", [0.05, torch.tensor(0.05)], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torch_functional(dtype, lr):
    params, exp_avgs, exp_avg_sqs = make_tensors(dtype)
    ref_params, ref_exp_avgs, ref_exp_avg_sqs = copies(params), copies(exp_avgs), copies(exp_avg_sqs)
    for call in range(CALLS):
        steps = [offset + call + 1 for offset in STEP_OFFSETS]
        grads = grads_for_call(dtype, call)
        sparse_adam_update(params, grads, exp_avgs, exp_avg_sqs, step=steps, lr=lr, beta1=0.8, beta2=0.95,
                           eps=1e-6)
        torch_sparse_adam(ref_params, grads_for_call(dtype, call), ref_exp_avgs, ref_exp_avg_sqs, steps,
                          eps=1e-6, beta1=0.8, beta2=0.95, lr=lr, maximize=False)
    for name, ours, theirs in (("params", params, ref_params), ("exp_avgs", exp_avgs, ref_exp_avgs),
                               ("exp_avg_sqs", exp_avg_sqs, ref_exp_avg_sqs)):
        for index, (mine, other) in enumerate(zip(ours, theirs)):
            assert_close(mine, other, **EXACT, msg=lambda m: f"{name}[{index}]: {m}")


def test_step_as_int_and_as_tensors_agree():
    runs = []
    for step in (3, [3] * len(LAYOUTS), [torch.tensor(3.0)] * len(LAYOUTS)):
        params, exp_avgs, exp_avg_sqs = make_tensors(torch.float32)
        sparse_adam_update(params, grads_for_call(torch.float32, 0), exp_avgs, exp_avg_sqs, step=step, lr=0.1)
        runs.append(params)
    for params in runs[1:]:
        for mine, first in zip(params, runs[0]):
            assert torch.equal(mine, first)


def test_repeated_indices_are_summed_before_the_update():
    """Uncoalesced grads step as their coalesced sum, not as several updates of one entry."""
    param, exp_avg, exp_avg_sq = torch.zeros(4), torch.zeros(4), torch.zeros(4)
    grad = torch.sparse_coo_tensor([[1, 1, 2]], [1.0, 2.0, 3.0], (4,), check_invariants=True)
    sparse_adam_update([param], [grad], [exp_avg], [exp_avg_sq], step=1, lr=0.1, beta1=0.5, beta2=0.5, eps=0.0)
    assert_close(exp_avg, torch.tensor([0.0, 1.5, 1.5, 0.0]), **EXACT)
    assert_close(exp_avg_sq, torch.tensor([0.0, 4.5, 4.5, 0.0]), **EXACT)
    assert_close(param, torch.tensor([0.0, -0.1, -0.1, 0.0]))  # first Adam step: -lr * sign(g)


def test_grads_are_not_changed_and_other_entries_stay():
    params, exp_avgs, exp_avg_sqs = make_tensors(torch.float32)
    before = copies(params)
    grads = grads_for_call(torch.float32, 1)
    saved = [(g._indices().clone(), g._values().clone(), g.is_coalesced()) for g in grads]
    sparse_adam_update(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.1)
    for grad, (indices, values, coalesced) in zip(grads, saved):
        assert torch.equal(grad._indices(), indices) and torch.equal(grad._values(), values)
        assert grad.is_coalesced() == coalesced
    # rows of the embedding-like param that the grad does not store keep their values
    stored = set(grads[0].coalesce()._indices()[0].tolist())
    for row in range(LAYOUTS[0][0][0]):
        assert torch.equal(params[0][row], before[0][row]) == (row not in stored)
        assert bool(exp_avgs[0][row].eq(0).all()) == (row not in stored)


def test_a_grad_that_stores_nothing_changes_nothing():
    param, exp_avg, exp_avg_sq = torch.randn(5, 2), torch.randn(5, 2), torch.rand(5, 2)
    before = copies([param, exp_avg, exp_avg_sq])
    grad = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long), torch.zeros(0, 2), (5, 2),
                                   check_invariants=True)
    sparse_adam_update([param], [grad], [exp_avg], [exp_avg_sq], step=4, lr=0.1)
    for tensor, old in zip((param, exp_avg, exp_avg_sq), before):
        assert torch.equal(tensor, old)


def test_empty_lists_do_nothing():
    sparse_adam_update([], [], [], [], step=1, lr=0.1)


# --- bad inputs raise, naming the argument, and change nothing ------------------------------------

def _args():
    params, exp_avgs, exp_avg_sqs = make_tensors(torch.float32)
    return dict(params=params, grads=grads_for_call(torch.float32, 0), exp_avgs=exp_avgs,
                exp_avg_sqs=exp_avg_sqs)


def _set(name, index, value):
    def change(args, kwargs):
        args[name][index] = value(args) if callable(value) else value
    return change


def _kw(**values):
    def change(args, kwargs):
        kwargs.update(values)
    return change


def _make_complex(args, index):
    for name in ("params", "exp_avgs", "exp_avg_sqs"):
        args[name][index] = args[name][index].to(torch.complex64)
    args["grads"][index] = args["grads"][index].to(torch.complex64)


BAD_INPUTS = [
    ("dense-grad", _set("grads", 3, torch.ones(5, 6)), RuntimeError, r"grads\[3\].*dense"),
    ("complex-param", lambda args, kwargs: _make_complex(args, 2), TypeError, r"params\[2\].*complex"),
    ("grad-of-wrong-shape", _set("grads", 2, lambda a: torch.ones(8).to_sparse()), ValueError, r"grads\[2\]"),
    ("grad-of-wrong-dtype", _set("grads", 0, lambda a: a["grads"][0].double()), TypeError, r"grads\[0\]"),
    ("state-of-wrong-shape", _set("exp_avgs", 1, torch.zeros(3)), ValueError, r"exp_avgs\[1\]"),
    ("state-of-wrong-dtype", _set("exp_avg_sqs", 4, torch.zeros((), dtype=torch.float64)), TypeError,
     r"exp_avg_sqs\[4\]"),
    ("sparse-state", _set("exp_avgs", 0, torch.zeros(10, 4).to_sparse()), RuntimeError, r"exp_avgs\[0\].*sparse"),
    ("short-list", lambda args, kwargs: args["exp_avgs"].pop(), ValueError, r"exp_avgs"),
    ("step-zero", _kw(step=0), ValueError, r"\bstep\b"),
    ("steps-too-few", _kw(step=[1, 2]), ValueError, r"\bstep\b"),
    ("negative-lr", _kw(lr=-0.1), ValueError, r"\blr\b"),
    ("nan-lr-tensor", _kw(lr=torch.tensor(float("nan"))), ValueError, r"\blr\b"),
    ("beta1-is-1", _kw(beta1=1.0), ValueError, r"\bbeta1\b"),
    ("beta2-nan", _kw(beta2=float("nan")), ValueError, r"\bbeta2\b"),
    ("negative-eps", _kw(eps=-1e-8), ValueError, r"\beps\b"),
]


@pytest.mark.parametrize(("change", "error", "pattern"), [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS])
def test_bad_input_raises_and_changes_nothing(change, error, pattern):
    args, kwargs = _args(), dict(step=1, lr=0.1)
    change(args, kwargs)
    before = {name: copies(args[name]) for name in ("params", "exp_avgs", "exp_avg_sqs")}
    with pytest.raises(error, match=pattern):
        sparse_adam_update(args["params"], args["grads"], args["exp_avgs"], args["exp_avg_sqs"], **kwargs)
    for name, tensors in before.items():
        for mine, old in zip(args[name], tensors):
            assert torch.equal(mine.to_dense(), old.to_dense()), name
