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
        if variant.precision != "fp32":
            continue  # another update to rounding: below
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


def test_low_precision_variants_step_near_the_fp32_update():
    """ours-bf16, ours-8bit, ours-8bit-bf16-params: the same update as the fp32 functional
    kernel's, to within a tenth of how far the params moved (8-bit moments are within 6 % of their
    value) and the bf16 params' rounding; torchao's: its first step."""
    algorithm = ALGORITHMS["adamw"]
    generator = torch.Generator().manual_seed(0)
    # quantised (4,096 elements and more); small enough that bf16 params resolve three steps of lr 1e-3
    params = [1e-3 * torch.randn(64, 128, generator=generator) for _ in range(2)]
    grads = [torch.randn(64, 128, generator=generator) for _ in range(2)]
    low = [variant for variant in available_variants(algorithm, torch.device("cpu")) if variant.precision != "fp32"]
    assert {"ours-bf16", "ours-8bit", "ours-8bit-bf16-params"} <= {variant.name for variant in low}
    reference = [param.clone() for param in params]
    step = next(v for v in VARIANTS if v.name == "ours-functional").build(algorithm, reference, grads)
    for _ in range(3):
        step()
    moved = max((after - before).abs().max() for after, before in zip(reference, params))
    for variant in low:
        own_params = [param.clone() for param in params]
        step = variant.build(algorithm, own_params, grads)
        if variant.name.startswith("torchao"):
            # a peer: its own quantiser's errors (up to 40 % of an update by step 3 here) are its
            # business; its first step, from zero moments, is the fp32 update
            step()
            first = [param.clone() for param in params]
            next(v for v in VARIANTS if v.name == "ours-functional").build(algorithm, first, grads)()
            torch.testing.assert_close(own_params, first, rtol=0, atol=1e-3 * 1e-3, msg=variant.name)
            continue
        for _ in range(3):
            step()
        error = max((got.float() - want).abs().max() for got, want in zip(own_params, reference))
        # bf16 params: the start rounded to nearest (half an ulp, 2**-8 relative at most), then each
        # step's stochastic rounding (under an ulp, 2**-7)
        largest = max(t.abs().max() for t in params + reference)
        rounding = largest * (2**-8 + 3 * 2**-7) if "bf16-params" in variant.name else 0
        assert error <= 0.1 * moved + rounding, (variant.name, error, moved)
        assert rounding < 0.1 * moved  # so a variant that did not step would fail
    assert {variant.name: variant.bytes_per_element for variant in low if variant.name.startswith("ours")} == {
        "ours-bf16": 20, "ours-8bit": 16, "ours-8bit-bf16-params": 10}
