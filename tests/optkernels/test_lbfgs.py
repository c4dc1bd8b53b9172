"""``optkernels.lbfgs_update`` against torch.optim.LBFGS, on a least-squares problem and on the
Rosenbrock function, with the history kept in a plain dict.

Exactness: the kernel runs torch's elementwise ops and scalar arithmetic in torch's order, so
where its reductions see the same numbers as torch's flat ones they are equal, and so is every
iterate, bit for bit. That is the case with one param (plus params that add exact zeros: an
empty one, one that never gets a grad), in every dtype torch takes, any layout included.

With several params a dot product is a sum of per-tensor dots, where torch takes one dot of
the concatenated vector: the two round differently (an ulp or so of each dot). L-BFGS feeds
those dots back (rho, H_diag, the two-loop alphas, the line search's Wolfe tests), so the
difference grows with the iterations, faster the worse the problem is conditioned (Rosenbrock's
curved valley more than least squares). Measured over the runs below (20 iterations in fp64,
8 in fp32) the largest difference, relative to the largest element of the vector compared,
is 8e-12 (fp64) and 2e-5 (fp32); ``MULTI_TOLERANCES`` (1e-9, 1e-3) keep a margin of 50-100x
over that, as another CPU's BLAS rounds torch's flat dots differently. The counts (iterations,
evaluations) must be equal, so every branch (line-search bracket, curvature test, stopping
rule) went the same way as torch's.
"""

import pytest
import torch
from torch.testing import assert_close

from optkernels import lbfgs_update
from optkernels.lbfgs import lbfgs_direction
from tests.helpers import LAYOUTS, laid_out

EXACT = dict(rtol=0, atol=0)
MULTI_TOLERANCES = {
    torch.float64: dict(rtol=1e-9, atol=1e-12),
    torch.float32: dict(rtol=1e-3, atol=1e-6),
}
# (calls, max_iter) for several params. fp32 runs 8 iterations: further on, its differences
# reach 3e-4 and, near convergence, decide branches (a loss change below tolerance_change, a
# Wolfe test) by the last bit, so the counts part from torch's.
MULTI_RUNS = {torch.float64: (4, 5), torch.float32: (2, 4)}
HPARAMS = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size", "line_search_fn")
LINE_SEARCHES = [None, "strong_wolfe"]
STEPS = 4


# --- problems: a loss of a list of tensors ------------------------------------------------------

def _randn(shape, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Drawn in double precision, then rounded: every dtype sees the same numbers."""
    wide = torch.complex128 if dtype.is_complex else torch.float64
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=wide).to(dtype)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class LeastSquares:
    """``|A x - b|^2 + 0.1 |x|_4^4`` with x all params in a row: the quartic term makes the
    Hessian change, so the history matters."""

    def __init__(self, numel: int, dtype: torch.dtype):
        self.A = _randn((2 * numel + 3, numel), 101, dtype) / numel**0.5
        self.b = _randn(2 * numel + 3, 102, dtype)

    def __call__(self, params):
        x = _flat(params)
        return ((self.A @ x - self.b).abs() ** 2).sum() + 0.1 * (x.abs() ** 4).sum()


class Rosenbrock:
    """The extended Rosenbrock function over all params in a row: a curved, ill-conditioned valley."""

    def __init__(self, numel: int = 0, dtype: torch.dtype | None = None):
        pass  # the arguments LeastSquares takes, so the problems are made alike; it needs none

    def __call__(self, params):
        x = _flat(params)
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


PROBLEMS = {"least_squares": LeastSquares, "rosenbrock": Rosenbrock}


# --- params: ours in awkward layouts, torch's the same values in layouts its flat views take ---

def param_values(shapes, dtype, seed=0, scale=0.5):
    return [_randn(shape, seed + i, dtype) * scale for i, shape in enumerate(shapes)]


def ours_and_torch_params(values, layouts):
    """Leaf tensors for us in ``layouts``; for torch the same values, a transposed one made
    contiguous (torch's LBFGS calls ``grad.view(-1)``, which a transposed grad refuses)."""
    ours = [torch.nn.Parameter(laid_out(v, layout)) for v, layout in zip(values, layouts)]
    theirs = [torch.nn.Parameter(laid_out(v, "contiguous" if layout == "transposed" else layout))
              for v, layout in zip(values, layouts)]
    return ours, theirs


MULTI_SHAPES = [shape for shape, _ in LAYOUTS]  # (4, 5), (7,), (), (6, 3) transposed, (5,) strided
MULTI_LAYOUTS = [layout for _, layout in LAYOUTS]


def make_closure(params, problem, unused=()):
    """A torch.optim-style closure: fills ``.grad``; ``unused`` params are never in the loss,
    so their grad stays None."""
    def closure():
        for p in list(params) + list(unused):
            p.grad = None
        loss = problem(params)
        loss.backward()
        return loss
    return closure


def run_kernel(params, closure, steps=STEPS, **hparams):
    state, losses, counts = {}, [], []
    for _ in range(steps):
        losses.append(lbfgs_update(params, closure, state, **hparams))
        counts.append((state["func_evals"], state["n_iter"]))
    return state, losses, counts


def run_torch(params, closure, steps=STEPS, **hparams):
    optimizer = torch.optim.LBFGS(params, **hparams)
    losses, counts = [], []
    for _ in range(steps):
        losses.append(optimizer.step(closure))
        state = optimizer.state[params[0]]
        counts.append((state["func_evals"], state["n_iter"]))
    return optimizer.state[params[0]], losses, counts


def flat_state(state: dict) -> dict:
    """Our state in torch.optim.LBFGS's form: every vector (a list of tensors) concatenated."""
    flat = dict(state)
    for key in ("d", "prev_flat_grad"):
        if key in flat:
            flat[key] = _flat(flat[key])
    for key in ("old_dirs", "old_stps"):
        if key in flat:
            flat[key] = [_flat(v) for v in flat[key]]
    return flat


def assert_same_lbfgs_state(ours: dict, theirs: dict, tol: dict) -> None:
    """Same keys, same kinds of values (a float stays a float, a 0-d tensor a 0-d tensor of the
    same dtype), equal counts and history lengths, values within ``tol``.

    A vector is compared relative to its largest element: ``y = g_new - g_old`` subtracts
    nearby gradients, so a small element of it carries the rounding of the large ones; the
    scalars ``ro`` and ``al`` are compared as one vector each, as a small alpha is a dot
    product of nearly orthogonal vectors and carries the rounding of their norms."""
    assert ours.keys() == theirs.keys()

    def check(mine, value, what):
        if isinstance(value, torch.Tensor) and value.numel() > 1 and tol != EXACT:
            scale = value.abs().max().item()
            check_tol = dict(rtol=tol["rtol"], atol=max(tol["atol"], tol["rtol"] * scale))
        else:
            check_tol = tol
        assert_close(mine, value, **check_tol, msg=lambda m: f"{what}: {m}")

    for key, value in theirs.items():
        mine = ours[key]
        if key in ("func_evals", "n_iter"):
            assert mine == value, key
        elif isinstance(value, list):
            assert isinstance(mine, list) and len(mine) == len(value), key
            assert [a is None for a in mine] == [b is None for b in value], key
            pairs = [(a, b) for a, b in zip(mine, value) if b is not None]
            if pairs and pairs[0][1].dim() == 0:  # ro, al: the scalars of one recursion, a vector
                check(torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs]), key)
                continue
            for index, (a, b) in enumerate(pairs):
                check(a, b, f"{key}[{index}]")
        else:
            assert type(mine) is type(value), f"{key}: {type(mine)} vs {type(value)}"
            check(mine, value, key)


def assert_same_run(ours, theirs, ours_params, their_params, tol):
    (our_state, our_losses, our_counts), (their_state, their_losses, their_counts) = ours, theirs
    assert our_counts == their_counts  # every branch went the same way
    assert_close(torch.stack(our_losses).detach(), torch.stack(their_losses).detach(), **tol)
    for index, (mine, theirs_) in enumerate(zip(ours_params, their_params, strict=True)):
        assert_close(mine.detach(), theirs_.detach(), **tol, msg=lambda m: f"param {index}: {m}")
    assert_same_lbfgs_state(flat_state(our_state), their_state, tol)


# --- one param: torch's numbers bit for bit ----------------------------------------------------

SINGLE_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.complex64]
SINGLE_CONFIGS = {
    "default": {},
    "lr": dict(lr=0.1),
    "tensor_lr": dict(lr=torch.tensor(0.5)),
    "history_2": dict(history_size=2, max_iter=6),
    "max_eval_3": dict(max_eval=3),
}


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("config", list(SINGLE_CONFIGS))
@pytest.mark.parametrize("line_search_fn", LINE_SEARCHES, ids=str)
@pytest.mark.parametrize("dtype", SINGLE_DTYPES, ids=str)
def test_one_param_equals_torch_bitwise(dtype, line_search_fn, config, layout):
    shape = (6, 3) if layout == "transposed" else (9,)
    values = param_values([shape], dtype)
    ours, theirs = ours_and_torch_params(values, [layout])
    problem = LeastSquares(values[0].numel(), dtype)
    hparams = dict(dict(max_iter=5), **SINGLE_CONFIGS[config], line_search_fn=line_search_fn)
    result = run_kernel(ours, make_closure(ours, problem), **hparams)
    expected = run_torch(theirs, make_closure(theirs, problem), **hparams)
    assert_same_run(result, expected, ours, theirs, EXACT)
    assert result[2][-1][1] >= 8 or config == "max_eval_3"  # the comparison covers many iterations


@pytest.mark.parametrize("problem_name", list(PROBLEMS))
@pytest.mark.parametrize("line_search_fn", LINE_SEARCHES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_empty_and_gradless_params_change_nothing_bitwise(dtype, line_search_fn, problem_name):
    # An empty param and one outside the loss (grad None: zeros) add exact zeros to each dot.
    values = param_values([(8,), (0,), (3,)], dtype)
    ours, theirs = ours_and_torch_params(values, ["contiguous"] * 3)
    problem = PROBLEMS[problem_name](8, dtype)
    run = lambda params: make_closure(params[:1], problem, unused=params[1:])  # noqa: E731
    result = run_kernel(ours, run(ours), line_search_fn=line_search_fn, max_iter=5)
    expected = run_torch(theirs, run(theirs), line_search_fn=line_search_fn, max_iter=5)
    assert_same_run(result, expected, ours, theirs, EXACT)
    assert torch.equal(ours[2], values[2]) and ours[2].grad is None


# --- several params: torch's numbers to rounding ----------------------------------------------

@pytest.mark.parametrize("lr", [1, 0.1])
@pytest.mark.parametrize("problem_name", list(PROBLEMS))
@pytest.mark.parametrize("line_search_fn", LINE_SEARCHES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_several_params_match_torch(dtype, line_search_fn, problem_name, lr):
    values = param_values(MULTI_SHAPES, dtype)
    ours, theirs = ours_and_torch_params(values, MULTI_LAYOUTS)
    assert not ours[3].is_contiguous() and not ours[4].is_contiguous() and ours[2].dim() == 0
    problem = PROBLEMS[problem_name](sum(v.numel() for v in values), dtype)
    steps, max_iter = MULTI_RUNS[dtype]
    hparams = dict(lr=lr, line_search_fn=line_search_fn, max_iter=max_iter)
    result = run_kernel(ours, make_closure(ours, problem), steps=steps, **hparams)
    expected = run_torch(theirs, make_closure(theirs, problem), steps=steps, **hparams)
    assert_same_run(result, expected, ours, theirs, MULTI_TOLERANCES[dtype])
    assert result[0]["n_iter"] >= 4 and len(result[0]["old_dirs"]) >= 3  # the history is in use


@pytest.mark.parametrize("line_search_fn", LINE_SEARCHES, ids=str)
def test_several_params_complex_match_torch(line_search_fn):
    values = param_values(MULTI_SHAPES, torch.complex128)
    ours, theirs = ours_and_torch_params(values, MULTI_LAYOUTS)
    problem = LeastSquares(sum(v.numel() for v in values), torch.complex128)
    result = run_kernel(ours, make_closure(ours, problem), line_search_fn=line_search_fn, max_iter=5)
    expected = run_torch(theirs, make_closure(theirs, problem), line_search_fn=line_search_fn, max_iter=5)
    assert_same_run(result, expected, ours, theirs, MULTI_TOLERANCES[torch.float64])
    assert all(v.dtype == torch.float64 for v in result[0]["d"])  # complex params as real pairs


# --- the functional interface -----------------------------------------------------------------

def test_closure_may_return_loss_and_grads():
    """``(loss, grads)`` from ``torch.autograd.grad`` gives the same iterates as ``.grad``."""
    dtype = torch.float64
    values = param_values(MULTI_SHAPES, dtype)
    problem = Rosenbrock(0, dtype)
    with_grad_attr = [torch.nn.Parameter(v.clone()) for v in values]
    functional = [v.clone().requires_grad_() for v in values]
    seen_grads = []

    def closure():
        loss = problem(functional)
        grads = list(torch.autograd.grad(loss, functional))
        seen_grads.append((grads, [g.clone() for g in grads]))
        return loss, grads

    for line_search_fn in LINE_SEARCHES:
        result = run_kernel(functional, closure, line_search_fn=line_search_fn, max_iter=5)
        expected = run_kernel(with_grad_attr, make_closure(with_grad_attr, problem),
                              line_search_fn=line_search_fn, max_iter=5)
        assert_same_run(result, (flat_state(expected[0]), *expected[1:]), functional, with_grad_attr, EXACT)
    assert all(p.grad is None for p in functional)
    for grads, copies in seen_grads:  # never mutated (the kernel keeps copies)
        assert all(torch.equal(g, c) for g, c in zip(grads, copies))


def test_state_is_all_in_the_dict():
    """Two problems stepped in turn, each with its own dict, end as each run alone: nothing is
    kept outside the dict. Its vectors are lists (of one tensor per param)."""
    dtype = torch.float64
    problems = [LeastSquares(9, dtype), Rosenbrock(9, dtype)]
    hparams = dict(max_iter=4, line_search_fn="strong_wolfe")

    def fresh():
        return [torch.nn.Parameter(v) for v in param_values([(9,)], dtype, seed=5)], {}

    alone = []
    for problem in problems:
        params, state = fresh()
        for _ in range(3):
            lbfgs_update(params, make_closure(params, problem), state, **hparams)
        alone.append((params, state))
    in_turn = [fresh() for _ in problems]
    for _ in range(3):
        for (params, state), problem in zip(in_turn, problems):
            lbfgs_update(params, make_closure(params, problem), state, **hparams)
    for (params, state), (params_alone, state_alone) in zip(in_turn, alone):
        assert torch.equal(params[0], params_alone[0])
        assert_same_lbfgs_state(flat_state(state), flat_state(state_alone), EXACT)
        assert all(type(state[key]) is list for key in ("d", "prev_flat_grad", "old_dirs", "old_stps", "ro", "al"))
    assert not torch.equal(in_turn[0][0][0], in_turn[1][0][0])


def test_history_size_truncation_keeps_the_newest_pairs():
    dtype = torch.float64
    values = param_values([(9,)], dtype)
    ours, theirs = ours_and_torch_params(values, ["contiguous"])
    problem = LeastSquares(9, dtype)
    long_history = [torch.nn.Parameter(values[0].clone())]
    state, _, _ = run_kernel(ours, make_closure(ours, problem), steps=2, history_size=3, max_iter=5)
    full, _, _ = run_kernel(long_history, make_closure(long_history, problem), steps=1, history_size=100, max_iter=4)
    expected = run_torch(theirs, make_closure(theirs, problem), steps=2, history_size=3, max_iter=5)
    assert state["n_iter"] == 10 and len(state["old_dirs"]) == len(state["old_stps"]) == len(state["ro"]) == 3
    assert len(state["al"]) == 3
    assert len(full["old_dirs"]) == 3  # 4 iterations make 3 pairs: the first 3 pairs of the long run
    assert_same_lbfgs_state(flat_state(state), expected[0], EXACT)
    # after truncation the oldest pairs are gone: none of the first run's pairs is kept
    kept = [_flat(v) for v in state["old_dirs"]]
    assert not any(torch.equal(k, _flat(v)) for k in kept for v in full["old_dirs"])


def test_history_size_grown_between_calls_extends_al():
    dtype = torch.float64
    problem = LeastSquares(9, dtype)
    params = [torch.nn.Parameter(v) for v in param_values([(9,)], dtype)]
    state = {}
    lbfgs_update(params, make_closure(params, problem), state, history_size=2, max_iter=5)
    lbfgs_update(params, make_closure(params, problem), state, history_size=4, max_iter=5)
    assert len(state["old_dirs"]) == 4 and len(state["al"]) == 4


# --- stopping ---------------------------------------------------------------------------------

def _one_call(dtype=torch.float64, **hparams):
    values = param_values([(9,)], dtype)
    ours, theirs = ours_and_torch_params(values, ["contiguous"])
    problem = LeastSquares(9, dtype)
    calls = []

    def counted(closure):
        def wrapped():
            calls.append(1)
            return closure()
        return wrapped

    result = run_kernel(ours, counted(make_closure(ours, problem)), steps=1, **hparams)
    expected = run_torch(theirs, make_closure(theirs, problem), steps=1, **hparams)
    assert_same_run(result, expected, ours, theirs, EXACT)
    return result[0], len(calls), ours[0], values[0]


@pytest.mark.parametrize("max_iter", [1, 2, 7])
def test_max_iter_without_line_search(max_iter):
    # one evaluation per iteration, but none after the last one
    state, calls, _, _ = _one_call(max_iter=max_iter, max_eval=100)
    assert state["n_iter"] == max_iter and state["func_evals"] == calls == max_iter


@pytest.mark.parametrize("line_search_fn", LINE_SEARCHES, ids=str)
@pytest.mark.parametrize("max_eval", [1, 2, 5])
def test_max_eval(line_search_fn, max_eval):
    # checked after each iteration, so the last one may pass max_eval by one evaluation
    state, calls, _, _ = _one_call(max_iter=50, max_eval=max_eval, line_search_fn=line_search_fn)
    assert state["func_evals"] == calls <= max_eval + 1 and state["n_iter"] <= max_eval


@pytest.mark.parametrize("max_iter", [4, 8])
def test_max_eval_defaults_to_five_quarters_of_max_iter(max_iter):
    """An lr of 50 overshoots, so each line search zooms: max_eval binds before max_iter."""
    def evals(max_eval):
        params = [torch.nn.Parameter(v) for v in param_values([(9,)], torch.float64, scale=1.5)]
        state = {}
        lbfgs_update(params, make_closure(params, Rosenbrock(9, torch.float64)), state, lr=50,
                     max_iter=max_iter, max_eval=max_eval, line_search_fn="strong_wolfe")
        return state["func_evals"], state["n_iter"]

    default = evals(None)
    assert default == evals(max_iter * 5 // 4) != evals(max_iter * 5 // 4 + 1)
    assert default[1] < max_iter


def test_tolerance_grad_stops_before_any_iteration():
    state, calls, param, initial = _one_call(tolerance_grad=1e6)
    assert state == {"func_evals": 1, "n_iter": 0} and calls == 1
    assert torch.equal(param, initial)


def test_tolerance_change_stops_on_small_directional_derivative():
    # gtd = -|g|^2 > -tolerance_change: stops before moving, with the state of one iteration
    state, calls, param, initial = _one_call(tolerance_change=1e6)
    assert state["n_iter"] == 1 and calls == 1 and torch.equal(param, initial)


@pytest.mark.parametrize("stop", ["small_step", "small_loss_change"])
def test_tolerance_change_stops_on_lack_of_progress(stop):
    """Two bowls where the first iteration makes one kind of progress and not the other.

    ``small_step``: on a steep bowl the first step is short (t = lr / |g|_1) but lowers the
    loss a lot, max|t d| ~ 1e-4 against a drop of ~1; tolerance_change=1e-3 lies between.
    ``small_loss_change``: on |x|^2 with |g|_1 < 1 the first step is t = lr = 1 along -g = -2x,
    to -x: a long step to a point with the same loss."""
    dtype = torch.float64
    if stop == "small_step":
        values = param_values([(9,)], dtype, scale=1.0)
        problem = lambda params: 1000 * (params[0] ** 2).sum()  # noqa: E731
        hparams = dict(lr=1e-3, tolerance_change=1e-3)
    else:
        values = param_values([(9,)], dtype, scale=0.05)
        problem = lambda params: (params[0] ** 2).sum()  # noqa: E731
        hparams = dict(lr=1)
        assert 2 * values[0].abs().sum() < 1
    ours, theirs = ours_and_torch_params(values, ["contiguous"])
    result = run_kernel(ours, make_closure(ours, problem), steps=1, **hparams)
    expected = run_torch(theirs, make_closure(theirs, problem), steps=1, **hparams)
    assert_same_run(result, expected, ours, theirs, EXACT)
    state = result[0]
    assert state["n_iter"] == 1 and state["func_evals"] == 2  # not the max_iter=20 it had
    step_size = (_flat(state["d"]).abs().max() * state["t"]).item()
    loss_change = abs(problem(ours).item() - state["prev_loss"])
    tolerance = hparams.get("tolerance_change", 1e-9)
    if stop == "small_step":
        assert step_size <= tolerance < loss_change
    else:
        assert loss_change < tolerance < step_size


@pytest.mark.parametrize("line_search_fn", LINE_SEARCHES, ids=str)
def test_converges_and_stops_on_its_own(line_search_fn):
    state, calls, param, _ = _one_call(max_iter=200, max_eval=400, line_search_fn=line_search_fn)
    assert state["n_iter"] < 200  # a tolerance stopped it, as it stopped torch (same counts)


# --- the two-loop recursion -------------------------------------------------------------------

def test_two_loop_recursion_is_the_inverse_hessian_of_a_quadratic():
    """With the pairs of a quadratic along n H-conjugate steps (here H's eigenvectors), the
    two-loop recursion applies the exact inverse Hessian; with any pairs, it meets the newest
    secant condition H^{-1} y = s. Vectors split into two tensors (a vector and a matrix)."""
    n = 4
    generator = torch.Generator().manual_seed(7)
    M = torch.randn(n, n, generator=generator, dtype=torch.float64)
    hessian = M @ M.T + n * torch.eye(n, dtype=torch.float64)
    grad = torch.randn(n, generator=generator, dtype=torch.float64)
    split = lambda v: [v[:1], v[1:].reshape(1, 3)]  # noqa: E731

    def direction(steps, g):
        diffs = steps @ hessian  # y_i = H s_i, one per row
        ro = [1.0 / (y @ s) for y, s in zip(diffs, steps)]
        H_diag = (diffs[-1] @ steps[-1]) / (diffs[-1] @ diffs[-1])
        al = [None] * n
        d = lbfgs_direction(split(g), [split(y) for y in diffs], [split(s) for s in steps], ro, H_diag, al)
        assert all(a is not None for a in al)
        return _flat(d), diffs

    conjugate_steps = torch.linalg.eigh(hessian).eigenvectors.T * 0.3
    d, _ = direction(conjugate_steps, grad)
    assert_close(d, -torch.linalg.solve(hessian, grad), rtol=1e-12, atol=1e-12)
    any_steps = torch.randn(n, n, generator=generator, dtype=torch.float64)
    d, diffs = direction(any_steps, torch.zeros(n, dtype=torch.float64))
    assert_close(d, torch.zeros(n, dtype=torch.float64), rtol=0, atol=0)
    d, diffs = direction(any_steps, any_steps[-1] @ hessian)
    assert_close(d, -any_steps[-1], rtol=1e-12, atol=1e-12)


# --- validation: before anything changes ------------------------------------------------------

def _fixture():
    params = [torch.nn.Parameter(torch.ones(3))]
    calls = []

    def closure():
        calls.append(1)
        params[0].grad = torch.ones(3)
        return torch.tensor(1.0)
    return params, closure, calls


BAD = [
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "lr"),
    (dict(max_iter=0), ValueError, "max_iter"),
    (dict(max_iter=2.5), ValueError, "max_iter"),
    (dict(max_iter="5"), TypeError, "max_iter"),
    (dict(max_eval=0), ValueError, "max_eval"),
    (dict(tolerance_grad=-1e-7), ValueError, "tolerance_grad"),
    (dict(tolerance_change=float("nan")), ValueError, "tolerance_change"),
    (dict(history_size=0), ValueError, "history_size"),
    (dict(line_search_fn="armijo"), ValueError, "line_search_fn"),
]


@pytest.mark.parametrize(("hparams", "error", "name"), BAD, ids=[f"{n}-{i}" for i, (_, _, n) in enumerate(BAD)])
def test_bad_hyperparameters_raise_before_anything(hparams, error, name):
    params, closure, calls = _fixture()
    state = {}
    with pytest.raises(error, match=name):
        lbfgs_update(params, closure, state, **hparams)
    assert calls == [] and state == {} and torch.equal(params[0], torch.ones(3))


def test_bad_inputs_raise_before_anything():
    params, closure, calls = _fixture()
    with pytest.raises(ValueError, match="params"):
        lbfgs_update([], closure, {})
    with pytest.raises(TypeError, match="params"):
        lbfgs_update(params[0], closure, {})
    with pytest.raises(TypeError, match="state"):
        lbfgs_update(params, closure, None)
    # torch.optim.LBFGS's flat vectors: the wrapper converts them, the kernel refuses them
    flat_state_ = {"func_evals": 3, "n_iter": 2, "d": torch.ones(3), "t": 1.0, "old_dirs": [], "old_stps": [],
                   "ro": [], "H_diag": 1, "prev_flat_grad": torch.ones(3), "prev_loss": 1.0}
    with pytest.raises(TypeError, match="one tensor per param"):
        lbfgs_update(params, closure, dict(flat_state_))
    wrong_shape = dict(flat_state_, d=[torch.ones(4)], prev_flat_grad=[torch.ones(3)])
    with pytest.raises(ValueError, match=r"state\['d'\]"):
        lbfgs_update(params, closure, wrong_shape)
    with pytest.raises(ValueError, match="same length"):
        lbfgs_update(params, closure, dict(flat_state_, d=[torch.ones(3)], prev_flat_grad=[torch.ones(3)],
                                           ro=[torch.tensor(1.0)]))
    with pytest.raises(ValueError, match="not an L-BFGS state"):
        lbfgs_update(params, closure, {"func_evals": 1, "n_iter": 1})
    assert calls == [] and torch.equal(params[0], torch.ones(3))


def test_bad_grads_from_the_first_evaluation_change_no_state():
    params = [torch.nn.Parameter(torch.ones(3))]
    state = {}

    def closure():
        return torch.tensor(1.0), [torch.ones(4)]
    with pytest.raises(ValueError, match="grads"):
        lbfgs_update(params, closure, state)
    assert state == {} and torch.equal(params[0], torch.ones(3))


def test_a_closure_failing_in_the_line_search_leaves_params_at_the_last_iterate():
    dtype = torch.float64
    problem = Rosenbrock(0, dtype)
    params = [torch.nn.Parameter(v) for v in param_values([(6,)], dtype)]
    closure = make_closure(params, problem)
    trace = []

    def failing():
        trace.append(params[0].detach().clone())
        if len(trace) == 4:
            raise RuntimeError("out of memory, say")
        return closure()

    with pytest.raises(RuntimeError, match="out of memory"):
        lbfgs_update(params, failing, {}, line_search_fn="strong_wolfe", max_iter=10)
    # With a line search every evaluation after the first is a trial point x_k + t d, and the
    # iterate x_k is the start or an accepted trial point: the failing trial is undone.
    assert not torch.equal(params[0], trace[3])
    assert any(torch.equal(params[0], x) for x in trace[:3])


def test_sparse_grads_are_densified_as_torch_does():
    dtype = torch.float64
    ours = torch.nn.Embedding(6, 2, sparse=True, dtype=dtype)
    theirs = torch.nn.Embedding(6, 2, sparse=True, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    indices = torch.tensor([0, 2, 2, 5])

    def make(module):
        def closure():
            module.zero_grad()
            loss = ((module(indices) - 1) ** 2).sum() ** 1.5
            loss.backward()
            return loss
        return closure

    result = run_kernel([ours.weight], make(ours), max_iter=4)
    expected = run_torch([theirs.weight], make(theirs), max_iter=4)
    assert_same_run(result, expected, [ours.weight], [theirs.weight], EXACT)
    assert ours.weight.grad.is_sparse
