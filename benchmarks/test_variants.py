"""Every variant steps the same update: its params after some steps match our functional kernels'."""

import pytest
import torch

from benchmarks.variants import ALGORITHMS, VARIANTS, available_variants
from benchmarks.workloads import get_workload


@pytest.mark.parametrize("algorithm_name", ALGORITHMS)
def test_every_variant_reaches_the_functional_params(device, algorithm_name):
    algorithm = ALGORITHMS[algorithm_name]
    workload = get_workload("resnet50", "small")  # matrices, 4-d and 1-d tensors of several sizes
    params, grads = workload.tensors(seed=0, device=device), workload.tensors(seed=1, device=device)
    original_grads = [grad.clone() for grad in grads]
    stepped = {}
    for variant in available_variants(algorithm, device):
        own_params = [param.clone() for param in params]  # flat=True repoints .data: read these after
        step = variant.build(algorithm, own_params, grads)  # shared, as the report shares them
        for _ in range(algorithm.settle_steps + 3):  # past the rectification switch, where there is one
            step()
        stepped[variant.name] = own_params
        assert all(torch.equal(grad, original) for grad, original in zip(grads, original_grads)), variant.name
    for name, got in stepped.items():
        torch.testing.assert_close(got, stepped["ours-functional"], msg=lambda m: f"{name}: {m}")


def test_flat_and_compiled_only_where_the_update_is_elementwise():
    cpu = torch.device("cpu")
    for algorithm in ALGORITHMS.values():
        names = {variant.name for variant in available_variants(algorithm, cpu)}
        assert ({"ours-flat", "ours-compiled"} <= names) == algorithm.wrapper.elementwise, algorithm.name
        assert ("reference" in names) == (algorithm.torch_class is None), algorithm.name
    assert not ALGORITHMS["adafactor"].wrapper.elementwise  # so the rule above is not vacuous


def test_variant_names_are_unique_and_ours_say_so():
    names = [variant.name for variant in VARIANTS]
    assert len(names) == len(set(names))
    assert {"ours-functional", "ours-wrapper", "ours-flat", "ours-compiled"} <= set(names)
