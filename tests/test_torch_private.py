"""The private torch APIs we use (``optkernels/_torch_private.py``) still do what we rely on.

Each test exercises one entry on a tiny input; its failure message names the torch API that
moved or changed, so a torch upgrade that breaks one says which. The last tests check that the
package imports private torch modules nowhere else, and that every ``torch._foreach_<op>`` it
calls exists.
"""

import ast
import re
from pathlib import Path

import pytest
import torch

from optkernels import _torch_private

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("optkernels", "wrappers")  # the installed code, where the rule applies
POLICY_MODULE = ROOT / "optkernels" / "_torch_private.py"


def _moved(api: str) -> str:
    return (f"torch {torch.__version__} moved or changed {api}, which optkernels relies on: "
            f"update optkernels/_torch_private.py (and its entry's comment)")


# --- the entries -------------------------------------------------------------------------------
def test_group_tensors_by_device_and_dtype():
    api = "torch.utils._foreach_utils._group_tensors_by_device_and_dtype"
    params = [torch.ones(2), torch.ones(3, dtype=torch.float64), torch.ones(4)]
    states = [torch.zeros(2), torch.zeros(3, dtype=torch.float64), None]  # None entries stay (Adafactor's)
    groups = _torch_private.group_tensors_by_device_and_dtype([params, states], with_indices=True)
    cpu = torch.device("cpu")
    assert set(groups) == {(cpu, torch.float32), (cpu, torch.float64)}, _moved(api)
    (f32_params, f32_states), f32_indices = groups[cpu, torch.float32]
    (f64_params, f64_states), f64_indices = groups[cpu, torch.float64]
    assert list(f32_indices) == [0, 2] and list(f64_indices) == [1], _moved(api)
    # the same tensor objects, in order: the kernels update them in place
    assert [t is p for t, p in zip(f32_params, (params[0], params[2]))] == [True, True], _moved(api)
    assert f32_states[0] is states[0] and f32_states[1] is None, _moved(api)
    assert f64_params[0] is params[1] and f64_states[0] is states[1], _moved(api)


def test_foreach_kernels_supported_devices():
    api = "torch.utils._foreach_utils._get_foreach_kernels_supported_devices"
    devices = _torch_private.foreach_kernels_supported_devices()
    assert all(isinstance(device, str) for device in devices), _moved(api)
    # torch.optim's default: foreach on CUDA, the for-loop on the CPU
    assert "cuda" in devices and "cpu" not in devices, _moved(api)


@pytest.mark.parametrize("make, dense", [
    (lambda: torch.empty(3, 4), True),
    (lambda: torch.empty(3, 4).t(), True),                        # a permutation of a contiguous layout
    (lambda: torch.empty(2, 3, 4, 5).to(memory_format=torch.channels_last), True),
    (lambda: torch.empty(()), True),
    (lambda: torch.empty(0, 3), True),
    (lambda: torch.empty(10)[2:7], True),                         # an offset does not matter
    (lambda: torch.empty(3, 1, 2).as_strided((3, 1, 2), (1, 0, 3)), True),  # a size-1 dim's stride does not
    (lambda: torch.empty(10)[::2], False),                        # gaps
    (lambda: torch.empty(4, 6)[:, :3], False),
    (lambda: torch.empty(3, 1).expand(3, 4), False),              # overlapping
    (lambda: torch.empty(5).as_strided((3, 2), (1, 1)), False),
    (lambda: torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1), (3,), check_invariants=False), False),
])
def test_is_non_overlapping_and_dense(make, dense):
    # a public replacement of torch._prims_common.is_non_overlapping_and_dense_or_false: it relies
    # on empty_like's documented preserve_format (strides kept exactly when non-overlapping and dense)
    tensor = make()
    assert _torch_private.is_non_overlapping_and_dense(tensor) == dense, (
        f"torch {torch.__version__}: empty_like(preserve_format) no longer keeps exactly the strides of "
        f"non-overlapping and dense tensors (shape {tuple(tensor.shape)}, strides "
        f"{tensor.stride() if tensor.layout == torch.strided else tensor.layout}): "
        "fix is_non_overlapping_and_dense in optkernels/_torch_private.py")


def test_is_dynamo_supported_reads_torch_at_each_call(monkeypatch):
    api = "torch._dynamo.is_dynamo_supported"
    assert _torch_private.is_dynamo_supported() in (True, False), _moved(api)
    import torch._dynamo
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)  # as tests/optkernels/test_compiled.py
    assert _torch_private.is_dynamo_supported() is False, _moved(api)


def _needs_dynamo():
    if not _torch_private.is_dynamo_supported():
        pytest.skip("torch.compile cannot run on this Python or platform")


def test_dynamo_counters_count_compiled_graphs():
    _needs_dynamo()
    api = 'torch._dynamo.utils.counters["stats"]["unique_graphs"]'
    stats = _torch_private.dynamo_counters()["stats"]
    torch.compiler.reset()
    before = stats["unique_graphs"]
    function = torch.compile(lambda x: x + 1, backend="eager")
    function(torch.ones(3))
    assert stats["unique_graphs"] == before + 1, _moved(api)
    function(torch.ones(3))
    assert stats["unique_graphs"] == before + 1, _moved(api)  # a cached graph is not counted again
    torch.compiler.reset()


def test_queue_backward_callback_runs_after_every_grad_and_may_queue_another():
    api = "torch.autograd.Variable._execution_engine.queue_callback"
    first, second = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    seen = []

    def later():
        seen.append(("later", first.grad is not None, second.grad is not None))

    def at_end():
        seen.append(("end", first.grad is not None, second.grad is not None))
        _torch_private.queue_backward_callback(later)  # a callback may queue another (DDP's order)

    def hook(param):
        if not seen:
            _torch_private.queue_backward_callback(at_end)
        seen.append("hook")
    first.register_post_accumulate_grad_hook(hook)
    (first * second).sum().backward()
    assert seen == ["hook", ("end", True, True), ("later", True, True)], _moved(api)
    with pytest.raises(RuntimeError):  # outside backward: refused, not run
        _torch_private.queue_backward_callback(later)


def test_optim_db_of_the_tests():
    # tests/configs.py (not the package) takes torch's optimizer configurations from torch's test suite
    api = "torch.testing._internal.common_optimizers.optim_db"
    from torch.testing._internal.common_optimizers import optim_db
    classes = {info.optim_cls for info in optim_db}
    assert {torch.optim.Adam, torch.optim.SGD} <= classes, _moved(api)


# --- the rule ----------------------------------------------------------------------------------
def _package_sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> list[str] | None:
    """``torch.a.b`` as ["torch", "a", "b"]; None for anything not a chain of names."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def private_torch_uses(source: str) -> list[tuple[int, str]]:
    """Private torch APIs a module's code reaches (docstrings and comments are not code):

    - imports of a torch module with a private component (``from torch._dynamo import ...``,
      ``import torch.utils._foreach_utils``), or of a private name from a torch module
      (``from torch.optim.optimizer import _use_grad``);
    - attribute chains from ``torch`` with a private component (``torch._dynamo.reset()``),
      ``torch._C`` included, except the foreach ops ``torch._foreach_<op>``;
    - torch's private Tensor and Optimizer methods (``grad._values()``), by name: those of
      ``dir(torch.Tensor)`` and ``dir(torch.optim.Optimizer)`` that start with one underscore.
    """
    private_methods = {name for name in (*dir(torch.Tensor), *dir(torch.optim.Optimizer)) if _is_private(name)}
    tree = ast.parse(source)
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}  # a.b of a.b.c
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            uses += [(node.lineno, f"import {alias.name}") for alias in node.names
                     if alias.name.split(".")[0] == "torch" and any(map(_is_private, alias.name.split(".")))]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch":
            if any(map(_is_private, node.module.split("."))) or any(_is_private(a.name) for a in node.names):
                uses.append((node.lineno, f"from {node.module} import {', '.join(a.name for a in node.names)}"))
        elif isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if chain and chain[0] == "torch":
                if id(node) not in inner and not chain[1].startswith("_foreach_") and any(map(_is_private, chain[1:])):
                    uses.append((node.lineno, ".".join(chain)))
            elif node.attr in private_methods:
                uses.append((node.lineno, f"{ast.unparse(node)} (a private method of torch's)"))
    return sorted(uses)


def test_the_checker_finds_what_it_should():
    source = '''
"""torch._dynamo in a docstring is not code"""
import torch
import torch._dynamo
from torch._prims_common import x
from torch.optim.optimizer import _use_grad_for_differentiable
torch._dynamo.reset()  # torch._inductor in a comment is not code
torch._foreach_add_(a, b)
torch._C._log_api_usage_once("x")
grad._values()
self._update()
torch.__version__
'''
    found = [text for _, text in private_torch_uses(source)]
    assert found == ["import torch._dynamo", "from torch._prims_common import x",
                     "from torch.optim.optimizer import _use_grad_for_differentiable", "torch._dynamo.reset",
                     "torch._C._log_api_usage_once", "grad._values (a private method of torch's)"], found


def test_private_torch_apis_are_used_only_through_torch_private():
    offenders = []
    for path in _package_sources():
        if path == POLICY_MODULE:
            continue
        offenders += [f"{path.relative_to(ROOT)}:{line}: {text}" for line, text in private_torch_uses(path.read_text())]
    assert not offenders, (
        "private torch APIs used outside optkernels/_torch_private.py (import them from there, with a "
        "comment on why no public API does the job, and a test in tests/test_torch_private.py):\n  "
        + "\n  ".join(offenders))


def test_every_foreach_op_the_package_calls_exists():
    names = sorted({match for path in _package_sources()
                    for match in re.findall(r"\btorch\._foreach_([a-z]\w*)", path.read_text())})
    assert names, "found no torch._foreach_ ops: has the package stopped using them? update this test"
    missing = [f"torch._foreach_{name}" for name in names if not hasattr(torch, f"_foreach_{name}")]
    assert not missing, f"torch {torch.__version__} has no {', '.join(missing)}, which optkernels calls"
