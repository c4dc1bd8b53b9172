"""``adamax_update`` against torch's functional Adamax (``torch.optim.adamax.adamax``), both of its
paths, and against the docstring's rule written out per tensor; its input checks."""

import math

import pytest
import torch
from torch.optim.adamax import adamax as torch_adamax

from optkernels import adamax_update
from tests.helpers import LAYOUTS, laid_out, same_layout_copy

STEPS = 8
HPARAMS = dict(lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6)


def _params(dtypes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [laid_out(torch.randn(shape, generator=generator, dtype=_wide(dtype)).to(dtype), layout)
            for (shape, layout), dtype in zip(LAYOUTS, dtypes)]


def _wide(dtype):
    return torch.complex128 if dtype.is_complex else torch.float64


def _grads(params, step):
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=generator, dtype=_wide(p.dtype)).to(p.dtype) for p in params]


class Run:
    """Params and Adamax state, stepped by us or by torch's functional Adamax."""

    def __init__(self, params):
        self.params = [same_layout_copy(p) for p in params]
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_infs = [torch.zeros_like(p) for p in params]
        self.steps = [torch.tensor(0.0) for _ in params]

    def pick(self, indices):
        return [[field[i] for i in indices] for field in (self.params, self.exp_avgs, self.exp_infs, self.steps)]

    def ours(self, grads, indices):
        params, exp_avgs, exp_infs, steps = self.pick(indices)
        torch._foreach_add_(steps, 1)
        adamax_update(params, grads, exp_avgs, exp_infs, step=steps, **HPARAMS)

    def torch(self, grads, indices, foreach):
        params, *state = self.pick(indices)
        torch_adamax(params, grads, *state, foreach=foreach, weight_decay=0.0,
                     has_complex=any(p.is_complex() for p in params), **HPARAMS)

    def state(self):
        return self.params + self.exp_avgs + self.exp_infs + self.steps


DTYPE_LISTS = {
    "float32": [torch.float32] * 5,
    "float64": [torch.float64] * 5,
    "bfloat16": [torch.bfloat16] * 5,
    "complex64": [torch.complex64] * 5,
    "mixed": [torch.float32, torch.float64, torch.complex64, torch.float64, torch.float32],
}


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("dtypes", DTYPE_LISTS.values(), ids=DTYPE_LISTS.keys())
def test_equals_torch_bit_for_bit(dtypes, foreach):
    if foreach and torch.bfloat16 in dtypes:
        pytest.skip("torch's CPU _foreach_mul_ rounds beta2 to bf16 (0.95 -> 0.94921875); we equal its for-loop path")
    initial = _params(dtypes)
    ours, theirs = Run(initial), Run(initial)
    for step in range(STEPS):
        # param 1 has no grad on every third step, so step counts differ within one call
        indices = [i for i in range(len(initial)) if not (i == 1 and step % 3 == 2)]
        grads = [_grads(initial, step)[i] for i in indices]
        grads_before = [g.clone() for g in grads]
        ours.ours(grads, indices)
        theirs.torch(grads, indices, foreach)
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, grads_before))  # grads are never touched
    for index, (a, b) in enumerate(zip(ours.state(), theirs.state(), strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"tensor {index}: {m}")


def test_follows_the_documented_rule():
    params = _params([torch.float64] * 5)
    exp_avgs, exp_infs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    expected = [p.clone() for p in params]
    ms, us = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    lr, beta1, beta2, eps = HPARAMS["lr"], HPARAMS["beta1"], HPARAMS["beta2"], HPARAMS["eps"]
    for t in range(1, STEPS + 1):
        grads = _grads(params, t)
        adamax_update(params, grads, exp_avgs, exp_infs, step=t, **HPARAMS)
        for i, grad in enumerate(grads):
            ms[i] = beta1 * ms[i] + (1 - beta1) * grad
            us[i] = torch.maximum(beta2 * us[i], grad.abs() + eps)
            expected[i] -= lr / (1 - beta1**t) * ms[i] / us[i]
    for param, reference, exp_inf, u in zip(params, expected, exp_infs, us):
        torch.testing.assert_close(param, reference, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(exp_inf, u, rtol=1e-15, atol=0)


def test_first_step_moves_each_param_by_lr_and_a_zero_grad_by_nothing():
    # m_1 / (1 - beta1) = g and u_1 = |g| + eps: the first step is lr * g / (|g| + eps)
    params = [torch.zeros(4, dtype=torch.float64)]
    grads = [torch.tensor([2.0, -3.0, 0.0, -1e-3], dtype=torch.float64)]
    adamax_update(params, grads, [torch.zeros(4, dtype=torch.float64)], [torch.zeros(4, dtype=torch.float64)],
                  step=1, lr=0.1)
    torch.testing.assert_close(params[0], -0.1 * grads[0] / (grads[0].abs() + 1e-8), rtol=1e-15, atol=0)
    assert params[0][2] == 0  # eps inside the maximum: 0 / eps, not 0 / 0


def _valid():
    return dict(params=[torch.ones(3), torch.ones(2)], grads=[torch.ones(3), torch.ones(2)],
                exp_avgs=[torch.zeros(3), torch.zeros(2)], exp_infs=[torch.zeros(3), torch.zeros(2)])


@pytest.mark.parametrize(("change", "error", "pattern"), [
    (dict(exp_infs=[torch.zeros(3)]), ValueError, "exp_infs has 1 tensors"),
    (dict(exp_infs=None), TypeError, "exp_infs must be a list"),
    (dict(exp_avgs=[torch.zeros(3), torch.zeros(2, dtype=torch.float64)]), TypeError, r"exp_avgs\[1\] is torch.float64"),
    (dict(grads=[torch.ones(3), torch.ones(2).to_sparse()]), RuntimeError, r"grads\[1\] is sparse"),
    (dict(beta1=-0.1), ValueError, "beta1"),
    (dict(beta2=1.0), ValueError, "beta2"),
    (dict(eps=math.nan), ValueError, "eps"),
    (dict(lr=-0.1), ValueError, "lr"),
    (dict(step=1.5), ValueError, "step"),
])
def test_bad_inputs_raise_before_changing_anything(change, error, pattern):
    arguments = _valid()
    hparams = dict(step=1, lr=0.1)
    for name, value in change.items():
        (arguments if name in arguments else hparams)[name] = value
    params_before = [p.clone() for p in arguments["params"]]
    state_before = [t.clone() for t in arguments["exp_avgs"] + (arguments["exp_infs"] or [])]
    with pytest.raises(error, match=pattern):
        adamax_update(*arguments.values(), **hparams)
    assert all(torch.equal(p, p0) for p, p0 in zip(arguments["params"], params_before))
    assert all(torch.equal(t, t0) for t, t0 in zip(arguments["exp_avgs"] + (arguments["exp_infs"] or []), state_before))
