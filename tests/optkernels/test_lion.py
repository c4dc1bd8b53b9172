"""``optkernels.lion.lion_update`` against lion-pytorch 0.2.5's own per-tensor update
(``lion_pytorch.lion_pytorch.update_fn``, what its ``Lion`` runs): the same ops in the same
order, so equal bit for bit in fp32, fp64 and bf16. The compiled rule equals the foreach path to
rounding (fused multiply-adds round once)."""

import pytest
import torch
from torch.testing import assert_close

from optkernels.lion import lion_rule, lion_update
from tests.helpers import laid_out, same_layout_copy
from tests.optkernels.test_adopt import light_compile  # noqa: F401  (a fixture)

lion_pytorch = pytest.importorskip("lion_pytorch.lion_pytorch")

LAYOUTS = [((4, 5), "contiguous"), ((7,), "contiguous"), ((), "contiguous"), ((6, 3), "transposed"),
           ((5,), "strided"), ((0,), "contiguous")]
STEPS = 20
LR = 1e-2
EXACT = dict(rtol=0, atol=0)
OPTIONS = {
    "defaults": dict(beta1=0.9, beta2=0.99, weight_decay=0.0),
    "decay": dict(beta1=0.9, beta2=0.99, weight_decay=0.5),
    "betas": dict(beta1=0.5, beta2=0.8, weight_decay=0.1),
    "betas=1": dict(beta1=1.0, beta2=0.5, weight_decay=0.0),  # lion-pytorch allows 1: sign of m alone
}


def tensors(dtype, seed, layouts=LAYOUTS):
    generator = torch.Generator().manual_seed(seed)
    return [laid_out(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype), layout)
            for shape, layout in layouts]


def run(dtype, *, beta1, beta2, weight_decay, maximize=False, compiled=False, steps=STEPS, layouts=LAYOUTS):
    """``steps`` kernel calls beside lion-pytorch's update_fn per tensor; returns both sides."""
    params = tensors(dtype, 0, layouts)
    exp_avgs = [torch.zeros_like(p) for p in params]
    ref_params, ref_exp_avgs = [same_layout_copy(p) for p in params], [same_layout_copy(m) for m in exp_avgs]
    for step in range(1, steps + 1):
        grads = tensors(dtype, 1000 + step, layouts)
        before = [g.clone() for g in grads]
        lion_update(params, grads, exp_avgs, lr=LR, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
                    maximize=maximize, compiled=compiled)
        assert all(torch.equal(g, b) for g, b in zip(grads, before)), "the kernel changed a grad"
        for p, g, m in zip(ref_params, grads, ref_exp_avgs):
            lion_pytorch.update_fn(p, -g if maximize else g, m, LR, weight_decay, beta1, beta2)
    return params + exp_avgs, ref_params + ref_exp_avgs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
@pytest.mark.parametrize("options", list(OPTIONS.values()), ids=list(OPTIONS))
def test_matches_lion_pytorch(options, maximize, dtype):
    mine, theirs = run(dtype, maximize=maximize, **options)
    for index, (a, b) in enumerate(zip(mine, theirs)):
        assert a.stride() == b.stride()
        assert_close(a, b, **EXACT, msg=lambda m: f"tensor {index}: {m}")
    assert not torch.equal(mine[0], tensors(dtype, 0)[0]), "a param never moved"


def test_mixed_dtypes_in_one_call():
    """fp32 and fp64 tensors in one call: grouped by the kernel, each exactly as alone."""
    dtypes = [torch.float32, torch.float64, torch.float32]
    params = [torch.randn(5, dtype=d) for d in dtypes]
    grads = [torch.randn(5, dtype=d) for d in dtypes]
    exp_avgs = [torch.randn(5, dtype=d) for d in dtypes]
    alone = [(same_layout_copy(p), same_layout_copy(m)) for p, m in zip(params, exp_avgs)]
    lion_update(params, grads, exp_avgs, lr=0.1, weight_decay=0.1)
    for (p, m), g in zip(alone, grads):
        lion_update([p], [g], [m], lr=0.1, weight_decay=0.1)
    for (p, m), mine_p, mine_m in zip(alone, params, exp_avgs):
        assert torch.equal(p, mine_p) and torch.equal(m, mine_m)


def test_zero_lr_moves_no_param():
    params, grads = tensors(torch.float64, 0), tensors(torch.float64, 1)
    initial = [p.clone() for p in params]
    exp_avgs = [torch.zeros_like(p) for p in params]
    lion_update(params, grads, exp_avgs, lr=0.0, weight_decay=0.5)
    assert all(torch.equal(p, q) for p, q in zip(params, initial))
    assert exp_avgs[0].abs().sum() > 0, "the momentum is still updated"


def test_compiled_equals_foreach(light_compile):  # noqa: F811
    """The compiled rule (traced by dynamo, dynamic shapes, scalars as tensors) against the
    foreach path: equal to rounding; a sign flips only where the momentum is zero to rounding,
    which random data does not produce."""
    layouts, options = LAYOUTS[:2], dict(beta1=0.9, beta2=0.99, weight_decay=0.5, maximize=True)
    mine, _ = run(torch.float32, compiled=True, steps=3, layouts=layouts, **options)
    theirs, _ = run(torch.float32, compiled=False, steps=3, layouts=layouts, **options)
    for a, b in zip(mine, theirs):
        assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert light_compile.rules() == {lion_rule.__name__}


# --- bad input ------------------------------------------------------------------------------

def _arguments():
    params = [torch.randn(3), torch.randn(2, 2)]
    return dict(params=params, grads=[torch.randn_like(p) for p in params],
                exp_avgs=[torch.randn_like(p) for p in params], lr=0.1)


_COMPLEX = [torch.zeros(3, dtype=torch.complex64)]


@pytest.mark.parametrize("change, error, match", [
    (dict(lr=-1.0), ValueError, "learning rate"),
    (dict(lr=float("nan")), ValueError, "learning rate"),
    (dict(beta1=1.5), ValueError, "beta1"),
    (dict(beta2=-0.1), ValueError, "beta2"),
    (dict(beta2=float("nan")), ValueError, "beta2"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(maximize=1), TypeError, "maximize"),
    (dict(exp_avgs=[torch.zeros(3)]), ValueError, "exp_avgs has 1 tensors"),
    (dict(exp_avgs=[torch.zeros(3), torch.zeros(4)]), ValueError, r"exp_avgs\[1\] has shape"),
    (dict(grads=[torch.zeros(3, dtype=torch.float64), torch.zeros(2, 2)]), TypeError, r"grads\[0\]"),
    (dict(params=_COMPLEX, grads=_COMPLEX, exp_avgs=_COMPLEX), TypeError, r"params\[0\] is torch.complex64"),
], ids=["lr<0", "lr-nan", "beta1>1", "beta2<0", "beta2-nan", "decay<0", "maximize-int", "length", "shape",
        "dtype", "complex"])
def test_bad_input_raises_and_changes_nothing(change, error, match):
    arguments = _arguments()
    originals = [t for name in ("params", "grads", "exp_avgs") for t in arguments[name]]
    before = [t.clone() for t in originals] + [t.clone() for t in _COMPLEX]
    arguments.update(change)
    with pytest.raises(error, match=match):
        lion_update(arguments.pop("params"), arguments.pop("grads"), arguments.pop("exp_avgs"), **arguments)
    assert all(torch.equal(a, b) for a, b in zip(originals + _COMPLEX, before))
