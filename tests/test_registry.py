"""``wrappers.registry``: one entry makes an algorithm appear in the parity tests, the benchmarks
and the README's table, with no other edit. Shown with a toy (sign descent) written here: a
kernel, a wrapper, a reference optimizer and one entry."""

from pathlib import Path

import pytest
import torch

from benchmarks import variants
from benchmarks.workloads import get_workload
from optkernels._math import grouped
from tests import configs
from tests.wrappers import test_parity
from wrappers import registry
from wrappers.base import KernelOptimizer

README = Path(__file__).resolve().parent.parent / "README.md"


def sign_descent_update(params, grads, *, lr):
    r"""Sign descent, in place: :math:`\theta_t = \theta_{t-1} - \gamma\,\mathrm{sign}(g_t)`."""
    for (params_, grads_), _ in grouped([params, grads], None):
        torch._foreach_add_(params_, torch._foreach_sign(grads_), alpha=-lr)


class SignDescent(KernelOptimizer):
    counts_steps = False
    elementwise = False  # no one-tensor rule: no flat or compiled mode

    def __init__(self, params, lr=1e-3):
        super().__init__(params, dict(lr=lr))

    def _update(self, group, params, grads, state, step):
        sign_descent_update(params, grads, lr=group["lr"])


class SignDescentReference(torch.optim.Optimizer):
    """The toy's reference: one param at a time."""

    def __init__(self, params, lr=1e-3):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.sub_(param.grad.sign() * group["lr"])


TOY = registry.Algorithm(
    "sign_descent", SignDescent, sign_descent_update, (), "tests.test_registry:SignDescentReference",
    "the toy of tests/test_registry.py", "bitwise", passes=3, options=dict(lr=1e-3),
    parity=registry.Parity(complex=False), configs=(registry.Config("large lr", dict(lr=0.5)),))


@pytest.fixture
def toy():
    with registry.registered(TOY):
        yield TOY


def test_a_registered_algorithm_runs_in_the_parity_tests(toy, monkeypatch):
    cases = [case for case in configs.registry_cases() if case.ours is SignDescent]
    assert [case.desc for case in cases] == ["default", "large lr"]
    assert all(case.reference is SignDescentReference for case in cases)
    for case in cases:  # the generic parity test, as pytest runs it for every case
        for dtype in (torch.float32, torch.float64):
            test_parity.test_wrapper_matches_torch(case, dtype, "list", monkeypatch)
            test_parity.test_wrapper_matches_torch(case, dtype, "chunked", monkeypatch)


def test_the_generic_parity_test_fails_a_wrong_toy(monkeypatch):
    wrong = registry.Algorithm(**{**TOY.__dict__, "name": "wrong_sign_descent",
                                  "reference": "tests.test_registry:WrongReference"})
    with registry.registered(wrong):
        (case, *_) = configs.registry_cases([wrong])
        with pytest.raises(AssertionError):
            test_parity.test_wrapper_matches_torch(case, torch.float32, "list", monkeypatch)


class WrongReference(SignDescentReference):
    """Half the step: a reference the toy does not match."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.sub_(param.grad.sign() * group["lr"] / 2)


def test_a_registered_algorithm_runs_in_the_benchmarks(toy):
    row = variants.get_algorithm("sign_descent")
    assert row.min_bytes([(10,)], 4) == 120
    cpu = torch.device("cpu")
    names = [variant.name for variant in variants.available_variants(row, cpu)]
    assert names == ["reference", "ours-wrapper"]  # no functional builder, not elementwise
    workload = get_workload("many-small", "small")
    params, grads = workload.tensors(0), workload.tensors(1)
    steppers = variants.build_steppers(row, params, grads, cpu)
    for step in steppers.values():
        step()


def test_a_registered_algorithm_shows_in_the_readme_table(toy):
    assert "| sign_descent | `SignDescent` | `sign_descent_update` |" in registry.table()
    assert registry.table() not in README.read_text()  # so the README check below would fail until it is added


def test_the_readme_table_is_the_registry_s():
    # regenerate with: python -c "from wrappers import registry; print(registry.table())"
    assert registry.table() in README.read_text()


def test_every_wrapper_is_registered_once():
    import wrappers
    classes = {getattr(wrappers, name) for name in wrappers.__all__}
    optimizers = {cls for cls in classes if isinstance(cls, type) and issubclass(cls, KernelOptimizer)}
    registered = [algorithm.wrapper for algorithm in registry.ALGORITHMS.values()]
    assert optimizers - {KernelOptimizer} == set(registered)
    assert len(registered) == len(set(registered))
    with pytest.raises(ValueError, match="adam"):
        registry.register(registry.ALGORITHMS["adam"])


def test_references_resolve():
    for algorithm in registry.ALGORITHMS.values():
        reference = algorithm.reference_class()
        assert issubclass(reference, torch.optim.Optimizer), algorithm.name
        assert (algorithm.torch_class is reference) == algorithm.reference.startswith("torch.optim.")
