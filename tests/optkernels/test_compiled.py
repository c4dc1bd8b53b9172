"""``compiled=True`` where torch.compile cannot run: one warning, then the rules run eagerly and
give the compiled path's numbers. (Parity of every compiled rule with torch.optim is in
tests/wrappers/test_parity.py; recompiles and memory in tests/wrappers/test_modes.py.)"""

import warnings

import pytest
import torch

import optkernels
from optkernels import _compiled


@pytest.fixture
def fresh_runners(monkeypatch):
    """Runners built anew in the test and dropped after it, so no other test sees its fallback."""
    monkeypatch.setattr(_compiled, "_EAGER", set())
    _compiled._runner.cache_clear()
    yield
    _compiled._runner.cache_clear()


def _adam_twice(compiled: bool):
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=generator), torch.randn(5, generator=generator)]
    grads = [torch.randn(p.shape, generator=generator) for p in params]
    state = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    for step in (1, 2):
        optkernels.adam_update(params, grads, *state, step=step, lr=0.1, compiled=compiled)
    return params


def _broken_compile(rule, **options):
    def fail(*args, **kwargs):
        raise torch._dynamo.exc.BackendCompilerFailed(rule, RuntimeError("no C++ compiler"), None)
    return fail


@pytest.mark.parametrize("breakage", ["no dynamo", "compiler fails"])
def test_falls_back_to_eager_with_one_warning(breakage, fresh_runners, monkeypatch):
    if breakage == "no dynamo":
        monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    else:
        monkeypatch.setattr(torch, "compile", _broken_compile)
    with pytest.warns(RuntimeWarning, match="torch.compile") as caught:
        fallback = _adam_twice(compiled=True)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _adam_twice(compiled=True)  # warned once per process, not per call
    for ours, eager in zip(fallback, _adam_twice(compiled=False)):
        torch.testing.assert_close(ours, eager)


def test_the_rule_is_the_kernels_update_on_one_tensor():
    compiled, foreach = _adam_twice(compiled=True), _adam_twice(compiled=False)
    for ours, eager in zip(compiled, foreach):
        torch.testing.assert_close(ours, eager)


# --- why the compiled pass equals torch.optim to rounding, not bit for bit, on the CPU -----------
def test_eager_cpu_sqrt_is_not_correctly_rounded_but_the_compiled_one_is():
    """The README says no compiled rule can equal eager's square roots bit for bit: eager's is MKL's
    (within an ulp), the compiled loop's is exact. Should torch change either, this fails, and the
    compiled rules could then be made to equal eager."""
    if not torch.backends.mkl.is_available():
        pytest.skip("eager sqrt is MKL's only where torch is built with MKL")
    values = torch.rand(100_000, generator=torch.Generator().manual_seed(0))
    exact = values.double().sqrt().float()  # double rounding is innocuous for sqrt (53 >= 2 * 24 + 2)
    compiled = torch.compile(torch.sqrt, dynamic=True)(values)
    assert torch.equal(compiled, exact)
    ulps = (values.sqrt().view(torch.int32) - exact.view(torch.int32)).abs()
    assert ulps.max() == 1 and ulps.count_nonzero() > 100
