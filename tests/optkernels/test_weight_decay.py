"""``weight_decay_l2``: each mode against its formula, written out per tensor."""

import pytest
import torch

from optkernels import weight_decay_l2

WD, LR = 0.1, 0.5


def _tensors(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 2, generator=generator, dtype=dtype), torch.randn((), generator=generator, dtype=dtype)]
    grads = [torch.randn(p.shape, generator=generator, dtype=dtype) for p in params]
    return params, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coupled_returns_grad_plus_decay_and_leaves_params(dtype):
    params, grads = _tensors(dtype)
    params_before, grads_before = [p.clone() for p in params], [g.clone() for g in grads]
    out = weight_decay_l2(params, grads, weight_decay=WD)
    for p, g, o, p0, g0 in zip(params, grads, out, params_before, grads_before):
        # the kernel rounds once (multiply-add), the formula twice: equal to an ulp
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(o, g0 + WD * p0, rtol=2 * eps, atol=2 * eps)
        assert o.data_ptr() != g.data_ptr()
        assert torch.equal(p, p0) and torch.equal(g, g0)


@pytest.mark.parametrize(("options", "factor"), [
    (dict(lr=LR, decoupled=True), 1 - LR * WD),
    (dict(lr=LR, decoupled=True, fixed=True), 1 - WD),
    (dict(fixed=True), 1 - WD),  # fixed decay is decoupled by definition; lr is not needed
], ids=["decoupled", "fixed", "fixed-implies-decoupled"])
def test_decoupled_scales_params_in_place_and_returns_grads(options, factor):
    params, grads = _tensors()
    params_before, grads_before = [p.clone() for p in params], [g.clone() for g in grads]
    out = weight_decay_l2(params, grads, weight_decay=WD, **options)
    assert out is grads
    for p, g, p0, g0 in zip(params, grads, params_before, grads_before):
        assert torch.equal(p, p0 * factor)
        assert torch.equal(g, g0)


@pytest.mark.parametrize("options", [dict(), dict(lr=LR, decoupled=True), dict(fixed=True)],
                         ids=["coupled", "decoupled", "fixed"])
def test_zero_weight_decay_is_a_no_op(options):
    params, grads = _tensors()
    params_before = [p.clone() for p in params]
    assert weight_decay_l2(params, grads, weight_decay=0.0, **options) is grads
    assert all(torch.equal(p, p0) for p, p0 in zip(params, params_before))
