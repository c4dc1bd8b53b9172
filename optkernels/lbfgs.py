"""L-BFGS with an optional strong-Wolfe line search, on lists of tensors.

The model is never flattened into one vector: a "vector" here is a list of tensors, one per
param and shaped like it (complex params as their real pairs, ``torch.view_as_real``), dot
products are sums of per-tensor dots, and updates are ``torch._foreach_*`` ops.
"""

from collections.abc import Callable, MutableMapping, Sequence
from numbers import Real
from typing import Any, TypedDict

import torch
from torch import Tensor

from ._validation import as_float, check_lr, check_nonnegative, check_tensor_lists

Vector = list[Tensor]  # one tensor per param, shaped like its real view


class LBFGSState(TypedDict, total=False):
    """What :func:`lbfgs_update` keeps between calls: torch.optim.LBFGS's keys, vectors as lists.

    Start from ``{}``. Keys appear as torch's appear (``al`` from the second iteration on).
    """

    func_evals: int  # closure evaluations, all calls together
    n_iter: int  # iterations, all calls together
    d: Vector  # the last search direction
    t: float | Tensor  # the last step length
    old_dirs: list[Vector]  # y_i = g_{i+1} - g_i, oldest first
    old_stps: list[Vector]  # s_i = t_i d_i
    ro: list[Tensor]  # 1 / (y_i^T s_i)
    H_diag: float | Tensor  # scale of the initial inverse Hessian, y^T s / y^T y
    prev_flat_grad: Vector  # the gradient at the last iterate
    prev_loss: float
    al: list[Tensor | None]  # scratch of the two-loop recursion (torch keeps it in state)


@torch.no_grad()
def lbfgs_update(
    params: Sequence[Tensor],
    closure: Callable[[], Any],
    state: MutableMapping[str, Any],
    *,
    lr: float | Tensor = 1,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: str | None = None,
) -> Any:
    r"""Up to ``max_iter`` L-BFGS iterations, in place, on a list of params.

    With gradient :math:`g_k`, pairs :math:`s_i = x_{i+1} - x_i`, :math:`y_i = g_{i+1} - g_i`
    (kept only when :math:`y_i^\top s_i > 10^{-10}`, the newest ``history_size`` of them) and
    :math:`\rho_i = 1 / y_i^\top s_i`, the direction is the two-loop recursion
    (:func:`lbfgs_direction`):

    .. math::
        q = -g_k;\quad \alpha_i = \rho_i s_i^\top q,\ q \mathrel{-}= \alpha_i y_i
            \ \ (i = k-1, \dots, 0);\quad
        r = \frac{s_{k-1}^\top y_{k-1}}{y_{k-1}^\top y_{k-1}} q;\quad
        r \mathrel{+}= (\alpha_i - \rho_i y_i^\top r)\, s_i\ \ (i = 0, \dots, k-1);\quad d_k = r

    (:math:`d_0 = -g_0`), and :math:`x_{k+1} = x_k + t_k d_k` with
    :math:`t_0 = \min(1, 1/\lVert g_0 \rVert_1)\,\mathrm{lr}`, then :math:`t_k = \mathrm{lr}`, or
    the step :func:`strong_wolfe` finds from there. Iterations stop after ``max_iter`` of them,
    ``max_eval`` closure calls, or when :math:`\lVert g \rVert_\infty \le` ``tolerance_grad``,
    :math:`g^\top d > -`\ ``tolerance_change``, :math:`\lVert t d \rVert_\infty \le`
    ``tolerance_change`` or the loss changes by less than ``tolerance_change``.

    Args:
        params: the tensors to optimize (complex ones are optimized as real pairs).
        closure: re-evaluates the model and returns the loss; it either fills ``param.grad``
            (``loss.backward()``, as torch.optim closures do; a ``None`` grad counts as zeros)
            or returns ``(loss, grads)`` with one gradient per param. Called with grad enabled.
        state: an :class:`LBFGSState` dict, ``{}`` at first, mutated in place: all history
            lives there (no hidden state), under torch.optim.LBFGS's keys.
        lr, max_iter, max_eval, tolerance_grad, tolerance_change, history_size,
        line_search_fn: as in ``torch.optim.LBFGS`` (``max_eval`` defaults to
        ``max_iter * 5 // 4``; ``line_search_fn`` is ``None`` or ``"strong_wolfe"``).

    Returns the loss of the first closure call, as ``torch.optim.LBFGS.step`` does: the loss
    is the one result that lives in neither the params nor the state.

    Mutates params and ``state``. Never grads (each evaluation copies them). A bad argument or
    state, or bad gradients from the first evaluation, raise before anything changes; an error
    raised by the closure itself leaves the iterations already done applied, as in
    torch.optim.LBFGS (a line-search trial point is undone first).

    This is torch.optim.LBFGS's algorithm (2.13) op for op: the elementwise ops, the scalar
    arithmetic (0-d tensors where torch has them) and every branch are torch's, so with one
    param the iterates equal torch's bit for bit. With several params a dot product (and
    :math:`\lVert g \rVert_1`) sums per-tensor partial results instead of one flat vector, which
    rounds differently: iterates then agree to rounding.

    Example:
        >>> import torch
        >>> from optkernels import lbfgs_update
        >>> x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> def closure():
        ...     x.grad = None
        ...     loss = ((x - torch.tensor([1.0, -2.0], dtype=torch.float64)) ** 2).sum()
        ...     loss.backward()
        ...     return loss
        >>> state = {}
        >>> lbfgs_update([x], closure, state, line_search_fn="strong_wolfe").item()
        5.0
        >>> [round(value, 6) for value in x.tolist()], state["n_iter"], len(state["old_dirs"])
        ([1.0, -2.0], 2, 1)

    Reference: Nocedal & Wright, "Numerical Optimization", 2nd ed., 2006: Algorithm 7.4
    (two-loop recursion), 7.5 (L-BFGS), 3.5 and 3.6 (strong-Wolfe line search); Liu &
    Nocedal, 1989. Ported from torch.optim.LBFGS, itself after Schmidt's minFunc.
    """
    if check_tensor_lists(params=params) == 0:
        raise ValueError("params is empty: L-BFGS needs at least one tensor")
    max_eval = check_hparams(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                             tolerance_change=tolerance_change, history_size=history_size,
                             line_search_fn=line_search_fn)
    real_params = _as_real(params)
    _check_state(state, real_params)
    lr = lr.squeeze() if isinstance(lr, Tensor) and lr.dim() != 0 else lr  # as torch's _to_scalar
    closure = torch.enable_grad()(closure)

    def evaluate() -> tuple[Any, Vector]:
        return _evaluate(closure, params, real_params)

    def obj_func(x: Vector, t, d: Vector) -> tuple[float, Vector]:  # the loss and grad at x + t d
        _add_(real_params, d, t)
        try:
            loss, grads = evaluate()
            return float(loss), grads
        finally:
            torch._foreach_copy_(real_params, x)

    # evaluate initial f(x) and df/dx
    orig_loss, flat_grad = evaluate()
    loss = float(orig_loss)
    state.setdefault("func_evals", 0)
    state.setdefault("n_iter", 0)
    current_evals = 1
    state["func_evals"] += 1
    opt_cond = _max_abs(flat_grad) <= tolerance_grad
    if opt_cond:
        return orig_loss

    d, t = state.get("d"), state.get("t")
    old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
    H_diag = state.get("H_diag")
    prev_flat_grad, prev_loss = state.get("prev_flat_grad"), state.get("prev_loss")

    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        state["n_iter"] += 1

        # direction
        if state["n_iter"] == 1:
            d = list(torch._foreach_neg(flat_grad))
            old_dirs, old_stps, ro, H_diag = [], [], [], 1
        else:
            y = list(torch._foreach_sub(flat_grad, prev_flat_grad))
            s = list(torch._foreach_mul(d, _scalar(t)))
            ys = _dot(y, s)
            if ys > 1e-10:  # keep the pair only where the curvature condition holds
                if len(old_dirs) == history_size:
                    old_dirs.pop(0)
                    old_stps.pop(0)
                    ro.pop(0)
                old_dirs.append(y)
                old_stps.append(s)
                ro.append(1.0 / ys)
                H_diag = ys / _dot(y, y)
            al = state.setdefault("al", [None] * history_size)
            if len(al) < len(old_dirs):  # history_size grew since al was made (torch fails here)
                al.extend([None] * (len(old_dirs) - len(al)))
            d = lbfgs_direction(flat_grad, old_dirs, old_stps, ro, H_diag, al)

        prev_flat_grad = flat_grad  # never mutated in place (each evaluation makes new tensors)
        prev_loss = loss

        # step length
        t = min(1.0, 1.0 / _abs_sum(flat_grad)) * lr if state["n_iter"] == 1 else lr
        gtd = _dot(flat_grad, d)  # directional derivative
        if gtd > -tolerance_change:
            break

        ls_func_evals = 0
        if line_search_fn is not None:
            x_init = [p.clone(memory_format=torch.contiguous_format) for p in real_params]
            # torch passes no tolerance_change here: the search keeps its default
            loss, flat_grad, t, ls_func_evals = strong_wolfe(obj_func, x_init, t, d, loss, flat_grad, gtd,
                                                             max_ls=max_eval - current_evals)
            _add_(real_params, d, t)
            opt_cond = _max_abs(flat_grad) <= tolerance_grad
        else:
            _add_(real_params, d, t)
            if n_iter != max_iter:  # the last iterate is evaluated by the next call
                loss, flat_grad = evaluate()
                loss = float(loss)
                opt_cond = _max_abs(flat_grad) <= tolerance_grad
                ls_func_evals = 1
        current_evals += ls_func_evals
        state["func_evals"] += ls_func_evals

        # stopping conditions
        if n_iter == max_iter or current_evals >= max_eval or opt_cond:
            break
        # max|t d| <= tol; max|fl(t d_i)| = fl(t max|d_i|) as rounding is monotone: no temporary
        if _max_abs(d) * abs(_scalar(t)) <= tolerance_change:
            break
        if abs(loss - prev_loss) < tolerance_change:
            break

    state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=H_diag,
                 prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
    return orig_loss


def lbfgs_direction(grads: Vector, old_dirs: list[Vector], old_stps: list[Vector], ro: list[Tensor],
                    H_diag: float | Tensor, al: list[Tensor | None]) -> Vector:
    r"""The L-BFGS direction :math:`d = -H g` by the two-loop recursion, on lists of tensors.

    ``old_dirs`` (the :math:`y_i`) and ``old_stps`` (the :math:`s_i`) hold the history oldest
    first, ``ro`` the :math:`1 / y_i^\top s_i`, ``H_diag`` the initial inverse Hessian's scale;
    ``al`` (at least ``len(old_dirs)`` long) receives the :math:`\alpha_i`. Returns new
    tensors; reads the others only. See :func:`lbfgs_update` for the math.
    """
    q = torch._foreach_neg(grads)
    for i in range(len(old_dirs) - 1, -1, -1):
        al[i] = _dot(old_stps[i], q) * ro[i]
        torch._foreach_add_(q, old_dirs[i], alpha=_scalar(-al[i]))
    r = torch._foreach_mul(q, _scalar(H_diag))  # multiply by the initial inverse Hessian
    for i in range(len(old_dirs)):
        be_i = _dot(old_dirs[i], r) * ro[i]
        torch._foreach_add_(r, old_stps[i], alpha=_scalar(al[i] - be_i))
    return list(r)


def strong_wolfe(obj_func: Callable[[Vector, Any, Vector], tuple[float, Vector]], x: Vector, t, d: Vector,
                 f: float, g: Vector, gtd: Tensor, c1: float = 1e-4, c2: float = 0.9,
                 tolerance_change: float = 1e-9, max_ls: int = 25) -> tuple[float, Vector, Any, int]:
    r"""A step length ``t`` along ``d`` meeting the strong Wolfe conditions, on lists of tensors.

    .. math::
        f(x + t d) \le f(x) + c_1 t\, g^\top d \qquad |\nabla f(x + t d)^\top d| \le -c_2\, g^\top d

    Brackets an interval holding such a step, then zooms into it by cubic interpolation
    (Nocedal & Wright, Algorithms 3.5 and 3.6), with at most ``max_ls`` evaluations.
    ``obj_func(x, t, d)`` returns the loss (a float) and a new gradient list at ``x + t d``;
    ``f``, ``g``, ``gtd`` are the loss, gradient and :math:`g^\top d` at ``x``. Returns
    ``(f_new, g_new, t, evaluations)``. The logic and scalar arithmetic are torch.optim.LBFGS's
    ``_strong_wolfe``, with dot products over the lists; no tensor passed in is mutated.
    """
    d_norm = _max_abs(d)
    # evaluate objective and gradient using initial step
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = _dot(g_new, d)

    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break

        # interpolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))

        # next step
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = _dot(g_new, d)
        ls_iter += 1

    # reached max number of iterations?
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom phase: refine the bracket until a point satisfies the criteria
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:  # bracket too small
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1],
                               bracket_gtd[1])

        # A t close to the bracket's ends makes little progress: if the last one did too, or
        # t is at an end, evaluate 0.1 of the bracket's length away from the nearest end.
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = _dot(g_new, d)
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo condition not satisfied or not lower than lowest point
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:  # Wolfe conditions satisfied
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:  # old high becomes new low
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            # new point becomes new low
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new, gtd_new

    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimizer of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped to ``bounds``
    (default: [x1, x2]); their midpoint when the cubic has none. torch's arithmetic, verbatim:
    the arguments mix floats and 0-d tensors, and the result's rounding depends on which."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = d2_square.sqrt()
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


# --- reductions over a list, each summing per-tensor results ---------------------------------

def _dot(xs: Vector, ys: Vector) -> Tensor:
    """``x^T y`` over all tensors: a 0-d tensor, as torch's flat ``dot``. With one tensor it is
    that very ``dot``; with several, per-tensor dots summed (rounds differently from flat)."""
    return _total([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys)])


def _abs_sum(xs: Vector) -> Tensor:
    return _total([x.abs().sum() for x in xs])


def _max_abs(xs: Vector) -> Tensor:
    """``max |x|`` over all elements: exact, whatever the grouping. Empty tensors have no max."""
    partials = [x.abs().max() for x in xs if x.numel()]
    return _total(partials, reduce=torch.max) if partials else xs[0].new_zeros(())


def _total(partials: list[Tensor], reduce=torch.sum) -> Tensor:
    return partials[0] if len(partials) == 1 else reduce(torch.stack(partials))


def _scalar(value):
    """A Python number for a foreach op's scalar argument; torch's flat ops turn a 0-d tensor
    into the same number (and a 0-d tensor operand would type-promote a 0-d param's tensors)."""
    return value.item() if isinstance(value, Tensor) else value


def _add_(params: Vector, d: Vector, t) -> None:
    """``params += t d``, as torch's ``p.add_(d_view, alpha=t)``."""
    torch._foreach_add_(params, d, alpha=_scalar(t))


# --- gradients, checks ------------------------------------------------------------------------

def _as_real(tensors: Sequence[Tensor]) -> Vector:
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]


def _evaluate(closure: Callable[[], Any], params: Sequence[Tensor], real_params: Vector) -> tuple[Any, Vector]:
    """Run the closure; return its loss and a copy of the gradients as a vector (zeros for a
    ``None`` grad and sparse ones densified, as torch's ``_gather_flat_grad``)."""
    out = closure()
    if isinstance(out, tuple):
        if len(out) != 2:
            raise ValueError(f"closure must return a loss or (loss, grads), got a {len(out)}-tuple")
        loss, grads = out
        if isinstance(grads, Tensor) or not isinstance(grads, Sequence) or len(grads) != len(params):
            raise ValueError("closure returned (loss, grads): grads must be a list with one tensor per param")
    else:
        loss, grads = out, [p.grad for p in params]
    flat_grad = []
    for param, grad in zip(real_params, grads):
        if grad is None:
            flat_grad.append(torch.zeros(param.shape, dtype=param.dtype, device=param.device))
            continue
        if not isinstance(grad, Tensor):
            raise TypeError(f"a gradient must be a Tensor or None, got {type(grad).__name__}")
        if grad.is_sparse:
            grad = grad.to_dense()
        grad = torch.view_as_real(grad) if grad.is_complex() else grad
        flat_grad.append(grad.clone(memory_format=torch.contiguous_format))
    check_tensor_lists(params=real_params, grads=flat_grad)
    return loss, flat_grad


def check_hparams(*, lr, max_iter, max_eval, tolerance_grad, tolerance_change, history_size,
                  line_search_fn) -> int:
    """Check L-BFGS's hyperparameters; return ``max_eval`` (its default filled in).

    Stricter than torch.optim.LBFGS, which takes anything here and fails later or never stops:
    counts must be whole numbers >= 1, tolerances finite and >= 0.
    """
    check_lr(lr)
    _check_count("max_iter", max_iter)
    max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
    _check_count("max_eval", max_eval)
    check_nonnegative("tolerance_grad", tolerance_grad)
    check_nonnegative("tolerance_change", tolerance_change)
    _check_count("history_size", history_size)
    if line_search_fn not in (None, "strong_wolfe"):
        raise ValueError(f"Invalid line_search_fn: {line_search_fn!r} (only None and 'strong_wolfe' are supported)")
    return max_eval


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a whole number, got {type(value).__name__}")
    number = as_float(value, name)
    if not (number >= 1 and number.is_integer()):  # NaN and inf fail too
        raise ValueError(f"Invalid {name} value: {value} ({name} must be a whole number >= 1)")


def _check_state(state, real_params: Vector) -> None:
    """The vectors in ``state`` line up with the params, so a step cannot fail half-way."""
    if not isinstance(state, MutableMapping):
        raise TypeError(f"state must be a dict (start from {{}}), got {type(state).__name__}")
    vectors = {key: state[key] for key in ("d", "prev_flat_grad") if state.get(key) is not None}
    history = [state.get(key) or [] for key in ("old_dirs", "old_stps", "ro")]
    if len({len(entries) for entries in history}) != 1:
        raise ValueError("state['old_dirs'], state['old_stps'] and state['ro'] must have the same length")
    for key, entries in zip(("old_dirs", "old_stps"), history):
        vectors.update({f"{key}[{i}]": entry for i, entry in enumerate(entries)})
    for key, vector in vectors.items():
        if isinstance(vector, Tensor):
            raise TypeError(f"state[{key!r}] is one tensor; lbfgs_update keeps one tensor per param "
                            "(wrappers.LBFGS converts torch.optim.LBFGS's flat vectors)")
    check_tensor_lists(params=real_params, **{f"state[{key!r}]": vector for key, vector in vectors.items()})
    missing = [key for key in _HISTORY_KEYS if state.get(key) is None]
    if state.get("n_iter", 0) > 0 and missing:
        raise ValueError(f"state has n_iter > 0 but no {', '.join(missing)}: it is not an L-BFGS state")


_HISTORY_KEYS = ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad")

