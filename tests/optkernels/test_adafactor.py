"""``optkernels.adafactor_update`` called as a function, against torch's functional
``torch.optim._adafactor.adafactor`` with ``foreach=False`` (torch's default path for
Adafactor): the same ops in the same order, so equal bit for bit in fp32, fp64 and bf16, with
one step count per tensor; against ``foreach=True`` to rounding (torch's foreach path multiplies
the update, then adds it; the for-loop path and ours add with ``alpha``, rounding once). Bad
inputs raise, naming the argument, before anything changes."""

import pytest
import torch
from torch.optim._adafactor import adafactor as torch_adafactor
from torch.testing import assert_close

from optkernels import adafactor_update
from tests.helpers import EXACT, TOLERANCES, laid_out, same_layout_copy, tolerance

# 2-D, 3-D (factored over its last two dims, batched over the first), transposed, vector,
# strided vector, 0-d
LAYOUTS = [((4, 5), "contiguous"), ((2, 3, 4), "contiguous"), ((6, 3), "transposed"), ((7,), "contiguous"),
           ((5,), "strided"), ((), "contiguous")]
STEP_OFFSETS = [0, 3, 1, 9, 2, 5]  # steps each tensor took before the first call
CALLS = 6
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
# lr 0.5 is above 1/sqrt(t) after the first steps, so rho_t changes; eps1 and eps2 large enough
# to bind somewhere (with the small grads given there); d = 1.2 clips some updates, not others.
HPARAMS = {
    "defaults": dict(lr=1e-2),
    "decay-eps-d": dict(lr=0.5, beta2_decay=-0.5, eps1=0.05, eps2=0.3, d=1.2, weight_decay=0.1),
}


def random_tensors(dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    return [laid_out(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype), layout)
            for shape, layout in LAYOUTS]


def new_state(params):
    """(row_vars, col_vars, variances), zeros, as torch.optim.Adafactor creates them."""
    row_vars = [p.new_zeros((*p.shape[:-1], 1)) if p.dim() > 1 else None for p in params]
    col_vars = [p.new_zeros((*p.shape[:-2], 1, p.shape[-1])) if p.dim() > 1 else None for p in params]
    variances = [torch.zeros_like(p) if p.dim() <= 1 else None for p in params]
    return row_vars, col_vars, variances


def copies(tensors):
    return [None if t is None else same_layout_copy(t) for t in tensors]


def run_both(dtype, hparams, foreach):
    """Our kernel and torch's functional on the same tensors and grads; both results."""
    params = random_tensors(dtype, seed=0)
    state = new_state(params)
    ref_params, ref_state = copies(params), [copies(lst) for lst in state]
    eps1 = hparams.get("eps1", torch.finfo(dtype).eps)
    torch_hparams = dict(lr=hparams["lr"], beta2_decay=hparams.get("beta2_decay", -0.8),
                         eps1=eps1, eps2=hparams.get("eps2", 1e-3), d=hparams.get("d", 1.0),
                         weight_decay=hparams.get("weight_decay", 0.0))
    for call in range(CALLS):
        steps = [offset + call + 1 for offset in STEP_OFFSETS]
        grads = random_tensors(dtype, seed=100 + call)
        if "eps1" in hparams:  # small enough that eps1 = 0.05 binds in both of its clamps, for some entries
            grads = [g * 0.1 for g in grads]
        grads_before = copies(grads)
        adafactor_update(params, grads, *state, step=steps, **hparams)
        for grad, before in zip(grads, grads_before):
            assert torch.equal(grad, before), "grads changed"
        torch_steps = [torch.tensor(float(s - 1)) for s in steps]  # torch counts the step itself
        torch_adafactor(ref_params, grads, *ref_state, torch_steps, foreach=foreach, maximize=False,
                        **torch_hparams)
    return (params, *state), (ref_params, *ref_state)


def assert_lists_close(ours, theirs, **tol):
    for name, mine, other in zip(("params", "row_vars", "col_vars", "variances"), ours, theirs):
        for index, (a, b) in enumerate(zip(mine, other)):
            assert (a is None) == (b is None), f"{name}[{index}]"
            if a is not None:
                assert_close(a, b, **tol, msg=lambda m: f"{name}[{index}]: {m}")


@pytest.mark.parametrize("hparams", HPARAMS.values(), ids=HPARAMS.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torch_for_loop_bitwise(dtype, hparams):
    ours, theirs = run_both(dtype, hparams, foreach=False)
    assert_lists_close(ours, theirs, **EXACT)


@pytest.mark.parametrize("hparams", HPARAMS.values(), ids=HPARAMS.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_torch_foreach_to_rounding(dtype, hparams):
    # one rounding apart per step in the final add (see the module docstring); the state, which
    # the params do not feed back into, is equal bit for bit
    ours, theirs = run_both(dtype, hparams, foreach=True)
    assert_lists_close(ours[:1], theirs[:1], **TOLERANCES[dtype])
    assert_lists_close(ours[1:], theirs[1:], **EXACT)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tensor_lr_is_used_as_its_value(dtype):
    """A tensor lr gives the numbers of the same float. torch's for-loop path computes the step
    size and the decay factor with the tensor, in float32 (in float64 for a 0-d param), so it
    agrees with those to rounding."""
    hparams = dict(weight_decay=0.05, eps1=0.05, eps2=0.3)
    ours, theirs = run_both(dtype, dict(hparams, lr=torch.tensor(0.2)), foreach=False)
    ours_with_float, _ = run_both(dtype, dict(hparams, lr=torch.tensor(0.2).item()), foreach=False)
    assert_lists_close(ours, ours_with_float, **EXACT)
    precision = torch.float32 if dtype == torch.float64 else dtype  # of torch's arithmetic on the lr
    for mine, other in zip(ours[0], theirs[0]):
        assert_close(mine, other, **tolerance(precision, exact=False, reference=other))
    assert_lists_close(ours[1:], theirs[1:], **EXACT)  # the state does not depend on lr


def test_eps1_none_takes_each_tensors_dtype():
    """Mixed dtypes in one call: each group of one dtype runs with its own finfo(dtype).eps."""
    dtypes = [torch.float32, torch.float64, torch.bfloat16]
    params = [random_tensors(dtype, seed=0)[:4] for dtype in dtypes]
    grads = [[g * 1e-5 for g in random_tensors(dtype, seed=1)[:4]] for dtype in dtypes]  # eps1 binds
    mixed_params = [same_layout_copy(p) for group in params for p in group]
    mixed_state = new_state(mixed_params)
    adafactor_update(mixed_params, [g for group in grads for g in group], *mixed_state, step=1, lr=0.1)
    for index, dtype in enumerate(dtypes):
        alone = [same_layout_copy(p) for p in params[index]]
        state = new_state(alone)
        adafactor_update(alone, grads[index], *state, step=1, lr=0.1, eps1=torch.finfo(dtype).eps)
        for mine, expected in zip(mixed_params[4 * index: 4 * index + 4], alone):
            assert torch.equal(mine, expected), dtype


def test_factored_state_is_what_the_paper_says():
    """R_t, C_t are EMAs of the row and column means of g^2; V_t of g^2 itself (step 1: 1 - beta2 = 1)."""
    grad, vector_grad = torch.arange(1.0, 7.0).reshape(2, 3), torch.tensor([1.0, -2.0])
    params = [torch.ones(2, 3), torch.ones(2)]
    row_vars, col_vars, variances = [torch.zeros(2, 1), None], [torch.zeros(1, 3), None], [None, torch.zeros(2)]
    adafactor_update(params, [grad, vector_grad], row_vars, col_vars, variances, step=1, lr=0.01)
    assert_close(row_vars[0], (grad**2).mean(dim=-1, keepdim=True))
    assert_close(col_vars[0], (grad**2).mean(dim=-2, keepdim=True))
    assert_close(variances[1], vector_grad**2)
    # the update is clipped to RMS 1 (d = 1) and scaled by max(eps2, RMS(param)) * min(lr, 1) = 0.01
    estimate = row_vars[0] @ col_vars[0] / row_vars[0].mean()
    update = grad / estimate.sqrt()
    update = update / max(1.0, update.pow(2).mean().sqrt().item())
    assert_close(params[0], 1 - 0.01 * update)


def test_whole_lists_may_be_none_and_empty_tensors_are_skipped():
    params = [torch.ones(3), torch.ones(0), torch.ones(0, 4)]
    variances = [torch.zeros(3), torch.zeros(0), None]
    row_vars, col_vars = [None, None, torch.zeros(0, 1)], [None, None, torch.zeros(1, 4)]
    adafactor_update(params, [torch.ones(3), torch.ones(0), torch.ones(0, 4)], row_vars, col_vars, variances,
                     step=1, lr=0.01)
    assert torch.equal(col_vars[2], torch.zeros(1, 4))  # torch divides by their size: nothing to do
    vectors = [torch.ones(3)]
    adafactor_update(vectors, [torch.ones(3)], None, None, [torch.zeros(3)], step=1, lr=0.01)
    assert torch.equal(vectors[0], params[0])
    adafactor_update([], [], None, None, None, step=1, lr=0.01)


def test_lr_zero_changes_no_param():
    params = random_tensors(torch.float32, seed=0)
    before = copies(params)
    adafactor_update(params, random_tensors(torch.float32, seed=1), *new_state(params), step=1, lr=0.0,
                     weight_decay=0.5)
    for param, old in zip(params, before):
        assert torch.equal(param, old)


# --- bad inputs raise, naming the argument, and change nothing ------------------------------------

def _args():
    params = random_tensors(torch.float32, seed=0)
    row_vars, col_vars, variances = new_state(params)
    return dict(params=params, grads=random_tensors(torch.float32, seed=1), row_vars=row_vars,
                col_vars=col_vars, variances=variances)


def _set(name, index, value):
    def change(args, kwargs):
        args[name][index] = value(args) if callable(value) else value
    return change


def _kw(**values):
    def change(args, kwargs):
        kwargs.update(values)
    return change


def _complex(args, kwargs):
    args["params"][3] = args["params"][3].to(torch.complex64)
    args["grads"][3] = args["grads"][3].to(torch.complex64)
    args["variances"][3] = args["variances"][3].to(torch.complex64)


BAD_INPUTS = [
    ("complex-param", _complex, TypeError, r"params\[3\].*complex"),
    ("sparse-grad", _set("grads", 3, lambda a: a["grads"][3].to_sparse()), RuntimeError, r"grads\[3\].*sparse"),
    ("grad-of-wrong-shape", _set("grads", 0, torch.ones(5, 4)), ValueError, r"grads\[0\]"),
    ("row-var-of-wrong-shape", _set("row_vars", 1, torch.zeros(2, 3, 4)), ValueError, r"row_vars\[1\]"),
    ("col-var-of-wrong-shape", _set("col_vars", 0, torch.zeros(4, 1)), ValueError, r"col_vars\[0\]"),
    ("row-var-of-wrong-dtype", _set("row_vars", 0, torch.zeros(4, 1, dtype=torch.float64)), TypeError,
     r"row_vars\[0\]"),
    ("missing-col-var", _set("col_vars", 2, None), ValueError, r"col_vars\[2\]"),
    ("factor-for-a-vector", _set("row_vars", 3, torch.zeros(7, 1)), ValueError, r"row_vars\[3\]"),
    ("variance-for-a-matrix", _set("variances", 0, torch.zeros(4, 5)), ValueError, r"variances\[0\]"),
    ("missing-variance", _set("variances", 5, None), ValueError, r"variances\[5\]"),
    ("variance-of-wrong-shape", _set("variances", 4, torch.zeros(4)), ValueError, r"variances\[4\]"),
    ("short-list", lambda args, kwargs: args["col_vars"].pop(), ValueError, r"col_vars"),
    ("step-zero", _kw(step=0), ValueError, r"\bstep\b"),
    ("negative-lr", _kw(lr=-0.1), ValueError, r"\blr\b"),
    ("positive-beta2_decay", _kw(beta2_decay=0.8), ValueError, r"\bbeta2_decay\b"),
    ("nan-beta2_decay", _kw(beta2_decay=float("nan")), ValueError, r"\bbeta2_decay\b"),
    ("negative-eps1", _kw(eps1=-1e-30), ValueError, r"\beps1\b"),
    ("nan-eps2", _kw(eps2=float("nan")), ValueError, r"\beps2\b"),
    ("d-below-1", _kw(d=0.5), ValueError, r"\bd\b"),
    ("negative-weight_decay", _kw(weight_decay=-0.1), ValueError, r"\bweight_decay\b"),
]


@pytest.mark.parametrize(("change", "error", "pattern"), [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS])
def test_bad_input_raises_and_changes_nothing(change, error, pattern):
    args, kwargs = _args(), dict(step=1, lr=0.1, weight_decay=0.1)
    change(args, kwargs)
    before = {name: copies(args[name]) for name in ("params", "row_vars", "col_vars", "variances")}
    with pytest.raises(error, match=pattern):
        adafactor_update(*args.values(), **kwargs)
    for name, tensors in before.items():
        for mine, old in zip(args[name], tensors):
            assert (mine is None and old is None) or torch.equal(mine, old), name


# Above 2**15 elements a vector or matrix takes its own path on the CPU (U_t made in one reused
# tensor, a matrix's column sums of squares added up row by row), and the norms of smaller tensors
# of one shape are taken as rows of one matrix: contiguous, transposed and strided, a single row
# or column, 3-D, and runs of equal shapes.
LARGE_LAYOUTS = [((300, 200), "contiguous"), ((200, 300), "transposed"), ((2, 30000), "contiguous"),
                 ((40000, 1), "contiguous"), ((1, 40000), "contiguous"), ((50000,), "contiguous"),
                 ((40000,), "strided"), ((2, 3, 6000), "contiguous"),
                 *[((33,), "contiguous")] * 5, *[((), "contiguous")] * 3]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_and_same_shape_tensors_match_torch_for_loop_bitwise(dtype):
    generator = torch.Generator().manual_seed(0)

    def tensors(power):  # grads of many scales: power 4 spreads them
        return [laid_out((torch.randn(shape, generator=generator, dtype=torch.float64)
                          * torch.rand(shape, generator=generator, dtype=torch.float64) ** power).to(dtype), layout)
                for shape, layout in LARGE_LAYOUTS]

    params = tensors(power=0)
    state = new_state(params)
    ref_params, ref_state = copies(params), [copies(lst) for lst in state]
    for step in range(1, 4):
        grads = tensors(power=4)
        adafactor_update(params, grads, *state, step=step, lr=0.5, weight_decay=0.1, d=1.2)
        torch_adafactor(ref_params, grads, *ref_state, [torch.tensor(step - 1.0) for _ in params], foreach=False,
                        maximize=False, lr=0.5, beta2_decay=-0.8, eps1=torch.finfo(dtype).eps, eps2=1e-3, d=1.2,
                        weight_decay=0.1)
    assert_lists_close((params, *state), (ref_params, *ref_state), **EXACT)
