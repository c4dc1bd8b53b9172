"""``muon_update`` called as a user calls it, against torch's functional Muon
(``torch.optim._muon.muon``, its only implementation), its Newton–Schulz helper and the
formulas of torch's docstring; and bad input, which must name the argument and change nothing."""

import math

import pytest
import torch
import torch.optim._muon as torch_muon
from torch.testing import assert_close

from optkernels import muon_update, weight_decay_l2
from optkernels.muon import lr_ratio, newton_schulz
from tests.helpers import EXACT, laid_out

SHAPES = [((4, 5), "contiguous"), ((7, 3), "contiguous"), ((6, 3), "transposed"), ((3, 3), "contiguous"),
          ((1, 6), "contiguous")]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
STEPS = 5


def make_tensors(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [laid_out(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype), layout)
            for shape, layout in SHAPES]


def grads_at(params, step):
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype) for p in params]


def torch_step(params, grads, buffers, weight_decay=0.0, **options):
    torch_muon.muon(params, grads, buffers, weight_decay=weight_decay, has_complex=False,
                    **{**TORCH_DEFAULTS, **options})


TORCH_DEFAULTS = dict(momentum=0.95, nesterov=True, ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7,
                      ns_steps=5, adjust_lr_fn=None)

OPTIONS = [
    ("default", dict(lr=0.02)),
    ("no-nesterov", dict(lr=0.02, nesterov=False, momentum=0.8)),
    ("match_rms_adamw", dict(lr=0.01, adjust_lr_fn="match_rms_adamw")),
    ("original-ns6", dict(lr=0.01, adjust_lr_fn="original", ns_steps=6, ns_coefficients=(3.4, -4.7, 2.0))),
    ("tensor-lr", dict(lr=torch.tensor(0.003))),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", [o for _, o in OPTIONS], ids=[name for name, _ in OPTIONS])
def test_matches_torch_functional_muon(options, dtype, monkeypatch):
    if dtype == torch.bfloat16 and not options.get("nesterov", True):
        # torch 2.13 divides a bfloat16 buffer in place there (pytorch#194664); compare with the fix
        original = torch_muon._zeropower_via_newtonschulz
        monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", lambda m, *a: original(m.clone(), *a))
    ours, theirs = make_tensors(dtype), make_tensors(dtype)
    our_buffers, their_buffers = [torch.zeros_like(p) for p in ours], [torch.zeros_like(p) for p in theirs]
    for step in range(STEPS):
        grads = grads_at(ours, step)
        grads_before = [g.clone() for g in grads]
        muon_update(ours, grads, our_buffers, **options)
        torch_step(theirs, grads_at(theirs, step), their_buffers, **options)
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, grads_before))  # grads untouched
    for mine, reference in zip(ours + our_buffers, theirs + their_buffers, strict=True):
        assert_close(mine, reference, **EXACT)


def test_with_decoupled_weight_decay_in_front_matches_torch():
    ours, theirs = make_tensors(torch.float32), make_tensors(torch.float32)
    our_buffers, their_buffers = [torch.zeros_like(p) for p in ours], [torch.zeros_like(p) for p in theirs]
    for step in range(STEPS):
        grads = weight_decay_l2(ours, grads_at(ours, step), weight_decay=0.1, lr=0.02, decoupled=True)
        muon_update(ours, grads, our_buffers, lr=0.02)
        torch_step(theirs, grads_at(theirs, step), their_buffers, lr=0.02, weight_decay=0.1)
    for mine, reference in zip(ours + our_buffers, theirs + their_buffers, strict=True):
        assert_close(mine, reference, **EXACT)


def test_a_mixed_list_equals_each_tensor_alone():
    """Lists of several dtypes are grouped; a tensor's result does not depend on its neighbours."""
    together = make_tensors(torch.float32) + make_tensors(torch.float64, seed=1)
    alone = [t.clone() for t in together]
    buffers_together = [torch.zeros_like(p) for p in together]
    buffers_alone = [torch.zeros_like(p) for p in alone]
    for step in range(3):
        grads = grads_at(together, step)
        muon_update(together, grads, buffers_together, lr=0.05)
        for param, grad, buffer in zip(alone, grads, buffers_alone):
            muon_update([param], [grad], [buffer], lr=0.05)
    for a, b in zip(together + buffers_together, alone + buffers_alone, strict=True):
        assert_close(a, b, **EXACT)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_newton_schulz_is_torchs_and_keeps_its_input(dtype):
    for matrix in make_tensors(dtype):
        before = matrix.clone()
        result = newton_schulz(matrix, (3.4445, -4.775, 2.0315), 5, 1e-7)
        expected = torch_muon._zeropower_via_newtonschulz(matrix.clone(), (3.4445, -4.775, 2.0315), 5, 1e-7)
        assert result.dtype == torch.bfloat16 and result.shape == matrix.shape
        assert_close(result, expected, **EXACT)
        assert torch.equal(matrix, before)


@pytest.mark.parametrize("shape", [(8, 5), (5, 8), (6, 6)])
def test_newton_schulz_orthogonalises(shape):
    """Keller Jordan's iteration maps every singular value into roughly (0.7, 1.2), keeping U and V."""
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = newton_schulz(matrix, (3.4445, -4.775, 2.0315), 5, 1e-7).double()
    singular_values = torch.linalg.svdvals(result)
    assert singular_values.min() > 0.6 and singular_values.max() < 1.3
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    assert torch.linalg.norm(result - u @ vh) / torch.linalg.norm(u @ vh) < 0.3  # near U V^T, not -U V^T


def test_lr_ratio_formulas():
    assert lr_ratio((8, 2), None) == lr_ratio((8, 2), "original") == 2.0
    assert lr_ratio((2, 8), "original") == 1.0  # wide: max(1, m/n) = 1
    assert lr_ratio((9, 4), "match_rms_adamw") == 0.2 * 3.0
    assert lr_ratio((4, 16), "match_rms_adamw") == 0.2 * 4.0


def test_one_step_from_zero_by_hand():
    """From zero momentum, B_1 = (1-mu) g; the step is -lr * s(m, n) * NS(B_1 or Nesterov's mix)."""
    param, grad = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    updated, buffer = param.clone(), torch.zeros_like(param)
    muon_update([updated], [grad], [buffer], lr=0.1, momentum=0.9, nesterov=True)
    assert torch.equal(buffer, torch.zeros_like(grad).lerp_(grad, 1 - 0.9))  # not 0.1: one ulp apart
    nesterov = grad.lerp(buffer, 0.9)
    expected = param.clone().add_(newton_schulz(nesterov, (3.4445, -4.775, 2.0315), 5, 1e-7), alpha=-0.1 * math.sqrt(3))
    assert_close(updated, expected, **EXACT)


def test_lr_zero_moves_only_the_buffers():
    params, buffers = make_tensors(torch.float32), [torch.zeros(s) for s, _ in SHAPES]
    before = [p.clone() for p in params]
    muon_update(params, grads_at(params, 0), buffers, lr=0.0)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(b.abs().sum() > 0 for b in buffers)


# --- bad input: an error naming the argument, and nothing mutated ------------------------------

def _call(**changes):
    params = make_tensors(torch.float32)
    lists = dict(params=params, grads=grads_at(params, 0), momentum_buffers=[torch.zeros_like(p) for p in params])
    options = dict(lr=0.01)
    for name, value in changes.items():
        (lists if name in lists else options)[name] = value(lists) if callable(value) else value
    return lists, options


BAD = [
    ("buffers-short", dict(momentum_buffers=lambda l: l["momentum_buffers"][:-1]), ValueError, "momentum_buffers"),
    ("buffer-shape", dict(momentum_buffers=lambda l: [torch.zeros(2, 2)] + l["momentum_buffers"][1:]),
     ValueError, r"momentum_buffers\[0\]"),
    ("grads-none", dict(grads=None), TypeError, "grads"),
    ("grad-dtype", dict(grads=lambda l: [g.double() for g in l["grads"]]), TypeError, r"grads\[0\]"),
    ("param-1d", dict(params=lambda l: l["params"][:-1] + [torch.zeros(6)],
                      grads=lambda l: l["grads"][:-1] + [torch.zeros(6)],
                      momentum_buffers=lambda l: l["momentum_buffers"][:-1] + [torch.zeros(6)]),
     ValueError, r"2D parameters.*params\[4\]"),
    ("param-complex", dict(params=lambda l: [torch.zeros(2, 2, dtype=torch.complex64)],
                           grads=lambda l: [torch.zeros(2, 2, dtype=torch.complex64)],
                           momentum_buffers=lambda l: [torch.zeros(2, 2, dtype=torch.complex64)]),
     RuntimeError, r"complex.*params\[0\]"),
    ("lr", dict(lr=-1.0), ValueError, r"\blr\b"),
    ("momentum", dict(momentum=float("nan")), ValueError, r"\bmomentum\b"),
    ("eps", dict(eps=-1e-7), ValueError, r"\beps\b"),
    ("ns_steps", dict(ns_steps=100), ValueError, r"\bns_steps\b"),
    ("ns_steps-type", dict(ns_steps="5"), TypeError, r"\bns_steps\b"),
    ("ns_coefficients", dict(ns_coefficients=(1.0, 2.0, 3.0, 4.0)), ValueError, r"\bns_coefficients\b"),
    ("ns_coefficients-type", dict(ns_coefficients=(1.0, "b", 3.0)), TypeError, r"ns_coefficients\[1\]"),
    ("adjust_lr_fn", dict(adjust_lr_fn="rms"), ValueError, r"\badjust_lr_fn\b"),
]


@pytest.mark.parametrize(("changes", "error", "pattern"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_argument_and_changes_nothing(changes, error, pattern):
    lists, options = _call(**changes)
    snapshot = {name: None if lst is None else [t.clone() for t in lst] for name, lst in lists.items()}
    with pytest.raises(error, match=pattern):
        muon_update(lists["params"], lists["grads"], lists["momentum_buffers"], **options)
    for name, lst in lists.items():
        if lst is not None:
            assert all(torch.equal(t, t0) for t, t0 in zip(lst, snapshot[name])), name
