"""``nadam_update`` against torch's functional NAdam (``torch.optim.nadam.nadam``) and against the
docstring's rule written out per tensor; its ``mu_products``; its input checks."""

import math

import pytest
import torch
from torch.optim.nadam import nadam as torch_nadam

import optkernels.adam
from optkernels import nadam_update
from optkernels.quantization import MIN_QUANTIZED_NUMEL, load_state, new_scales, new_state
from tests.helpers import FIRST_MOMENT_TRACKING, LOW_PRECISION_TRACKING, LAYOUTS, laid_out, same_layout_copy

STEPS = 8
HPARAMS = dict(lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6, momentum_decay=0.05)


def _params(dtypes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [laid_out(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype), layout)
            for (shape, layout), dtype in zip(LAYOUTS, dtypes)]


def _grads(params, step):
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype) for p in params]


class Run:
    """Params and NAdam state, stepped by us or by torch's functional NAdam."""

    def __init__(self, params):
        self.params = [same_layout_copy(p) for p in params]
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        self.mu_products = [torch.tensor(1.0) for _ in params]
        self.steps = [torch.tensor(0.0) for _ in params]

    def pick(self, indices):
        fields = (self.params, self.exp_avgs, self.exp_avg_sqs, self.mu_products, self.steps)
        return [[field[i] for i in indices] for field in fields]

    def ours(self, grads, indices, **hparams):
        params, exp_avgs, exp_avg_sqs, mu_products, steps = self.pick(indices)
        torch._foreach_add_(steps, 1)
        nadam_update(params, grads, exp_avgs, exp_avg_sqs, mu_products, step=steps, **hparams)

    def torch(self, grads, indices, foreach, **hparams):
        params, *state = self.pick(indices)
        torch_nadam(params, grads, *state, foreach=foreach, weight_decay=0.0,
                    has_complex=any(p.is_complex() for p in params), **hparams)

    def state(self):
        return self.params + self.exp_avgs + self.exp_avg_sqs + self.mu_products + self.steps


def _assert_same(ours, theirs, **tolerance):
    for index, (a, b) in enumerate(zip(ours.state(), theirs.state(), strict=True)):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **(tolerance or dict(rtol=0, atol=0)), msg=lambda m: f"tensor {index}: {m}")


def _active(step, count):
    """Param 1 has no grad on every third step, so step counts differ within one call."""
    return [i for i in range(count) if not (i == 1 and step % 3 == 2)]


DTYPE_LISTS = {
    "float32": [torch.float32] * 5,
    "float64": [torch.float64] * 5,
    "mixed": [torch.float32, torch.float64, torch.float32, torch.float64, torch.float32],
}


@pytest.mark.parametrize("dtypes", DTYPE_LISTS.values(), ids=DTYPE_LISTS.keys())
def test_equals_torch_foreach_bit_for_bit(dtypes):
    initial = _params(dtypes)
    ours, theirs = Run(initial), Run(initial)
    for step in range(STEPS):
        indices = _active(step, len(initial))
        grads = [_grads(initial, step)[i] for i in indices]
        grads_before = [g.clone() for g in grads]
        ours.ours(grads, indices, **HPARAMS)
        theirs.torch(grads, indices, foreach=True, **HPARAMS)
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, grads_before))  # grads are never touched
    _assert_same(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_equals_torch_for_loop_to_rounding(dtype):
    # torch's for-loop path takes sqrt(v / (1 - beta2^t)), its foreach path (ours) sqrt(v) / sqrt(...)
    initial = _params([dtype] * 5)
    ours, theirs = Run(initial), Run(initial)
    for step in range(STEPS):
        indices = _active(step, len(initial))
        grads = [_grads(initial, step)[i] for i in indices]
        ours.ours(grads, indices, **HPARAMS)
        theirs.torch(grads, indices, foreach=False, **HPARAMS)
    eps = torch.finfo(dtype).eps
    _assert_same(ours, theirs, rtol=16 * eps, atol=16 * eps)


def test_changing_beta1_and_momentum_decay_midway_uses_the_stored_product_as_torch_does():
    initial = _params([torch.float32] * 5)
    ours, theirs = Run(initial), Run(initial)
    for step in range(STEPS):
        hparams = HPARAMS if step < 4 else {**HPARAMS, "beta1": 0.6, "momentum_decay": 0.3}
        indices = list(range(len(initial)))
        grads = _grads(initial, step)
        ours.ours(grads, indices, **hparams)
        theirs.torch(grads, indices, foreach=True, **hparams)
    _assert_same(ours, theirs)


def test_complex_params_equal_torch_foreach():
    generator = torch.Generator().manual_seed(0)
    initial = [torch.randn(4, 3, generator=generator, dtype=torch.complex64), torch.randn((), generator=generator,
                                                                                      dtype=torch.complex64)]
    ours, theirs = Run(initial), Run(initial)
    for step in range(STEPS):
        grads = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in initial]
        ours.ours(grads, [0, 1], **HPARAMS)
        theirs.torch(grads, [0, 1], foreach=True, **HPARAMS)
    _assert_same(ours, theirs)


def _reference_step(param, grad, state, t, lr, beta1, beta2, eps, momentum_decay):
    """The docstring's rule for one tensor, in float64."""
    mu = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    state["product"] *= mu
    state["m"] = beta1 * state["m"] + (1 - beta1) * grad
    state["v"] = beta2 * state["v"] + (1 - beta2) * grad * grad
    denom = state["v"].sqrt() / math.sqrt(1 - beta2**t) + eps
    param -= lr * (1 - mu) / (1 - state["product"]) * grad / denom
    param -= lr * mu_next / (1 - state["product"] * mu_next) * state["m"] / denom


def test_follows_the_documented_rule():
    params = _params([torch.float64] * 5)
    mu_products = [torch.tensor(1.0, dtype=torch.float64) for _ in params]
    exp_avgs, exp_avg_sqs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    expected = [p.clone() for p in params]
    states = [dict(product=1.0, m=torch.zeros_like(p), v=torch.zeros_like(p)) for p in params]
    for t in range(1, STEPS + 1):
        grads = _grads(params, t)
        nadam_update(params, grads, exp_avgs, exp_avg_sqs, mu_products, step=t, **HPARAMS)
        for param, grad, state in zip(expected, grads, states):
            _reference_step(param, grad, state, t, **HPARAMS)
    for param, reference, mu_product, state in zip(params, expected, mu_products, states):
        torch.testing.assert_close(param, reference, rtol=1e-13, atol=1e-13)
        assert mu_product.dtype == torch.float64
        torch.testing.assert_close(mu_product.item(), state["product"], rtol=1e-15, atol=0)


def test_first_step_moves_each_param_by_about_lr():
    # on step 1, m_1 = (1-beta1) g and d_1 = |g|, so the step is lr (1 + mu_2 (1-beta1)/(1-mu_1 mu_2)) sign(g)
    params, grads = [torch.zeros(4, dtype=torch.float64)], [torch.tensor([2.0, -3.0, 0.5, -1e-3], dtype=torch.float64)]
    nadam_update(params, grads, [torch.zeros(4, dtype=torch.float64)], [torch.zeros(4, dtype=torch.float64)],
                 [torch.tensor(1.0)], step=1, lr=0.1, eps=0.0)
    mu, mu_next = 0.9 * (1 - 0.5 * 0.96**0.004), 0.9 * (1 - 0.5 * 0.96**0.008)
    size = 0.1 * (1 + mu_next * 0.1 / (1 - mu * mu_next))
    torch.testing.assert_close(params[0], -size * grads[0].sign(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("step", [3, torch.tensor(3.0), [3, 3], [torch.tensor(3.0), 3]],
                         ids=["int", "tensor", "list", "mixed-list"])
def test_step_forms_agree(step):
    results = []
    for form in (step, 3):
        params = [torch.ones(2), torch.ones(())]
        nadam_update(params, [torch.full((2,), 0.5), torch.tensor(-1.0)], [torch.zeros(2), torch.zeros(())],
                     [torch.zeros(2), torch.zeros(())], [torch.tensor(0.2), torch.tensor(0.2)], step=form, lr=0.1)
        results.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def _valid():
    params = [torch.ones(3), torch.ones(2)]
    return dict(params=params, grads=[torch.ones(3), torch.ones(2)], exp_avgs=[torch.zeros(3), torch.zeros(2)],
                exp_avg_sqs=[torch.zeros(3), torch.zeros(2)], mu_products=[torch.tensor(1.0), torch.tensor(1.0)])


BAD_INPUTS = [
    (dict(mu_products=[torch.tensor(1.0)]), ValueError, "mu_products has 1 tensors"),
    (dict(mu_products=[1.0, 1.0]), TypeError, r"mu_products\[0\] must be a Tensor"),
    (dict(mu_products=None), TypeError, "mu_products must be a list"),
    (dict(mu_products=torch.ones(2)), TypeError, "mu_products must be a list"),
    (dict(mu_products=[torch.tensor(1.0), torch.ones(2)]), ValueError, r"mu_products\[1\] must be a 1-element"),
    (dict(mu_products=[torch.tensor(1), torch.tensor(1)]), ValueError, r"mu_products\[0\] must be a 1-element real"),
    (dict(exp_avgs=[torch.zeros(3)]), ValueError, "exp_avgs has 1 tensors"),
    (dict(exp_avg_sqs=[torch.zeros(3), torch.zeros(4)]), ValueError,
     r"exp_avg_sqs\[1\] (has shape|must be a tensor of its param's shape)"),
    (dict(momentum_decay=-0.1), ValueError, "momentum_decay"),
    (dict(momentum_decay=math.nan), ValueError, "momentum_decay"),
    (dict(beta1=1.0), ValueError, "beta1"),
    (dict(beta2=-0.1), ValueError, "beta2"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(lr=math.inf), ValueError, "lr"),
    (dict(step=0), ValueError, "step"),
    (dict(step=[1]), ValueError, "step has 1 values"),
]


@pytest.mark.parametrize("state_precision", ["fp32", "bf16"])
@pytest.mark.parametrize(("change", "error", "pattern"), BAD_INPUTS, ids=lambda value: None)
def test_bad_inputs_raise_before_changing_anything(change, error, pattern, state_precision):
    arguments = _valid()
    hparams = dict(step=1, lr=0.1, state_precision=state_precision)
    for name, value in change.items():
        (arguments if name in arguments else hparams)[name] = value
    before = {name: [t.clone() if isinstance(t, torch.Tensor) else t for t in value]
              for name, value in arguments.items() if isinstance(value, list)}
    with pytest.raises(error, match=pattern):
        nadam_update(*arguments.values(), **hparams)
    for name, tensors in before.items():
        assert all(not isinstance(t, torch.Tensor) or torch.equal(t, t0) for t, t0 in zip(arguments[name], tensors))


# --- low-precision state (state_precision="bf16" / "8bit", stochastic rounding of bf16 params) ---
# Shapes: quantised (whole blocks), kept float (under 4096 elements), quantised with a partial block
LOW_PRECISION_SHAPES = [(16, 256), (7, 5), (MIN_QUANTIZED_NUMEL + 3,)]
LOW_PRECISION_CASES = {"bf16": dict(state_precision="bf16"), "8bit": dict(state_precision="8bit"),
                       "bf16-params-8bit": dict(state_precision="8bit", stochastic_rounding=True)}
LR = HPARAMS["lr"]


def low_precision_run(steps=STEPS, *, state_precision="fp32", stochastic_rounding=False, bf16_params=False,
                      upcast=False, float_state=False, products=None, **options):
    """``steps`` calls from the same start on the same grads whatever the options. ``bf16_params``:
    params and grads rounded to bf16 (``upcast``: then held in float32, the fp32 algorithm's run
    from the same start); ``float_state``: float32 state whatever ``state_precision`` (nothing
    rounded: the low-precision rule alone); ``products``: each param's mu_product to start from.
    Returns the params, mu_products, the moments' float32 values, and the stored moments and scales."""
    dtype = torch.bfloat16 if bf16_params else torch.float32
    as_run = (lambda t: t.to(dtype).float()) if upcast else (lambda t: t.to(dtype))
    generator = torch.Generator().manual_seed(0)
    params = [as_run(torch.randn(shape, generator=generator)) for shape in LOW_PRECISION_SHAPES]
    precision = "fp32" if float_state else state_precision
    state = {name: [new_state(p, precision, stochastic_rounding=stochastic_rounding) for p in params]
             for name in ("exp_avgs", "exp_avg_sqs")}
    mu_products = [torch.tensor(value) for value in (products or [1.0] * len(params))]
    scales = {}
    if state_precision == "8bit":
        scales = {f"{name[:-1]}_scales": [new_scales(s) for s in state[name]] for name in state}
    for step in range(1, steps + 1):
        generator = torch.Generator().manual_seed(100 + step)
        grads = [as_run(torch.randn(p.shape, generator=generator)) for p in params]
        nadam_update(params, grads, state["exp_avgs"], state["exp_avg_sqs"], mu_products, step=step,
                     **{"lr": LR, **options}, state_precision=state_precision, stochastic_rounding=stochastic_rounding,
                     seed=3, **scales)
    values = {name: [load_state(s, scales[f"{name[:-1]}_scales"][i] if scales else None, signed=name == "exp_avgs")
                     for i, s in enumerate(state[name])] for name in state}
    return dict(params=params, mu_products=mu_products, **values, stored=state, scales=scales)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("case", list(LOW_PRECISION_CASES.values()), ids=list(LOW_PRECISION_CASES))
def test_low_precision_tracks_fp32(case, compiled, one_thread):
    """8 steps of lr 0.01 against the fp32 kernel from the same start on the same grads: params
    within the format's share of the distance they move (8 lr; ``LOW_PRECISION_TRACKING``: a
    tenth for bf16 state, a quarter for 8-bit codes rounded stochastically; bf16 params rounded
    stochastically also within the bf16 spacing each step's rounding may add, 8 times 2^-7 |p|),
    the first moment within ``FIRST_MOMENT_TRACKING`` of its largest value, mu_products equal."""
    bf16_params = case.get("stochastic_rounding", False)
    precision = case["state_precision"]
    share = LOW_PRECISION_TRACKING[precision]
    reference = low_precision_run(bf16_params=bf16_params, upcast=True)
    ours = low_precision_run(bf16_params=bf16_params, compiled=compiled, **case)
    rtol = STEPS * 2**-7 if bf16_params else 0
    for index, (mine, theirs) in enumerate(zip(ours["params"], reference["params"])):
        torch.testing.assert_close(mine.float(), theirs, rtol=rtol, atol=share * STEPS * LR, msg=f"param {index}")
    m = ours["exp_avgs"][0]
    torch.testing.assert_close(m, reference["exp_avgs"][0], rtol=0, atol=FIRST_MOMENT_TRACKING[precision] * m.abs().max().item())
    assert all(torch.equal(a, b) for a, b in zip(ours["mu_products"], reference["mu_products"]))


# the native kernel in every case; torch.compile's rule (a compile of 5-15 s per graph) in one
@pytest.mark.parametrize("case,native", [
    *(pytest.param(case, True, id=f"{name}-native") for name, case in LOW_PRECISION_CASES.items()),
    pytest.param(LOW_PRECISION_CASES["8bit"], False, id="8bit-inductor")])
def test_low_precision_compiled_equals_eager(case, native, one_thread, monkeypatch):
    """The same rule compiled (the native CPU kernel; ``inductor``: torch.compile's, as off CPU):
    scales equal to rounding; codes equal but where a value sits on a rounding boundary (then the
    next code: at under 1% of the elements); bf16 moments one bf16 step apart at under 1% of the
    elements (stochastic rounding of a value one float32 ulp apart); float32 state to rounding,
    params too but at under 1% of the elements (there, within a bf16 step per step taken)."""
    if not native:
        monkeypatch.setattr(optkernels.adam, "native_low_precision_steps", lambda lists, **scalars: lists)
    bf16_params = case.get("stochastic_rounding", False)
    eager = low_precision_run(bf16_params=bf16_params, **case)
    compiled = low_precision_run(bf16_params=bf16_params, compiled=True, **case)
    for name, scales in eager["scales"].items():
        for mine, theirs in zip(compiled["scales"][name], scales):
            torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=0)
    for name in ("exp_avgs", "exp_avg_sqs"):
        for mine, theirs in zip(compiled["stored"][name], eager["stored"][name]):
            if theirs.dtype == torch.float32:
                torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7, msg=name)
                continue
            assert (mine != theirs).float().mean() < 0.01, name
            if theirs.dtype == torch.uint8:  # e4m3 codes as signed indices, monotone in the value
                index = lambda codes: torch.where(codes >= 0x80, 0x80 - codes.int(), codes.int())
                assert (index(mine) - index(theirs)).abs().max() <= 1, name
            else:
                torch.testing.assert_close(mine.float(), theirs.float(), rtol=2**-7, atol=0, msg=name)
    for mine, theirs in zip(compiled["params"], eager["params"]):
        # beyond rounding only where an earlier step's code or bf16 value took its neighbour
        apart = (mine.float() - theirs.float()).abs() > 1e-5 * theirs.float().abs() + 1e-6
        assert apart.float().mean() < 0.01
        torch.testing.assert_close(mine.float(), theirs.float(), rtol=STEPS * 2**-7, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(compiled["mu_products"], eager["mu_products"]))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("decay", [{}, dict(weight_decay=0.01), dict(param_scale=1 - LR * 0.01)],
                         ids=["no-decay", "coupled", "decoupled"])
def test_low_precision_rule_with_float_state_equals_the_fp32_kernel(decay, compiled, one_thread):
    """The low-precision rule with float32 state (nothing rounded) is the fp32 kernel's update to
    rounding, mu_products equal; params that start from different mu_products (so different step
    sizes in one call) included; coupled decay and NAdamW's decoupled decay."""
    products = [1.0, 0.5, 1.0]
    reference = low_precision_run(products=products, **HPARAMS, **decay)
    ours = low_precision_run(products=products, state_precision="8bit", float_state=True, compiled=compiled,
                             **HPARAMS, **decay)
    for name in ("params", "exp_avgs", "exp_avg_sqs"):
        for mine, theirs in zip(ours[name], reference[name]):
            torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6, msg=name)
    assert all(torch.equal(a, b) for a, b in zip(ours["mu_products"], reference["mu_products"]))


def test_low_precision_checks():
    run = low_precision_run(0, state_precision="8bit")
    params, mu_products = run["params"], run["mu_products"]
    args = (params, [torch.ones_like(p) for p in params], run["stored"]["exp_avgs"], run["stored"]["exp_avg_sqs"],
            mu_products)
    with pytest.raises(ValueError, match="exp_avg_scales"):
        nadam_update(*args, step=1, lr=0.1, state_precision="8bit")
    with pytest.raises(ValueError, match="state_precision"):
        nadam_update(*args, step=1, lr=0.1, state_precision="int4")
    with pytest.raises(ValueError, match="go with"):
        nadam_update(*args, step=1, lr=0.1, exp_avg_sq_scales=[None] * len(params))
    with pytest.raises(TypeError, match="seed"):
        nadam_update(*args, step=1, lr=0.1, state_precision="8bit", seed=-1, **run["scales"])
    assert all(torch.equal(p, q) for p, q in zip(params, low_precision_run(0)["params"]))  # nothing changed
    assert all(product.item() == 1.0 for product in mu_products)
