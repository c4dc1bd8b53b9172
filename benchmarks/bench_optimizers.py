"""One step of every algorithm, variant and workload, with pytest-benchmark.

Each test builds only its own variant (every one in ``VARIANTS``: torch's modes, the reference
implementation where torch lacks the algorithm, our functional kernels and our wrapper's list, flat and compiled paths), steps it
until the optimizer state exists (flat buffers built, rule compiled) and the update has its steady
form, then times ``step()``. The interleaved comparison with the roofline, and the first step's
time, are in ``python -m benchmarks.report``.
"""

import pytest

from benchmarks.variants import ALGORITHMS, VARIANTS, build_steppers
from benchmarks.workloads import WORKLOADS, get_workload


@pytest.mark.parametrize("workload_name", WORKLOADS)
@pytest.mark.parametrize("variant_name", [variant.name for variant in VARIANTS])
@pytest.mark.parametrize("algorithm_name", ALGORITHMS)
def test_step(benchmark, bench_scale, device, algorithm_name, variant_name, workload_name):
    algorithm, workload = ALGORITHMS[algorithm_name], get_workload(workload_name, bench_scale)
    params, grads = workload.tensors(seed=0, device=device), workload.tensors(seed=1, device=device)
    steppers = build_steppers(algorithm, params, grads, device, names=[variant_name])
    if variant_name not in steppers:
        pytest.skip(f"{variant_name} is not available for {algorithm_name} on {device}")
    if benchmark.disabled and variant_name.startswith("torchao") and workload_name != "few-large":
        # the smoke run (benchmarks disabled): torchao compiles its step once per param shape, a
        # minute on ResNet-50's; few-large (one shape) runs it, test_variants checks its update
        pytest.skip("torchao's smoke step runs on few-large only")
    step = steppers[variant_name]
    for _ in range(1 + algorithm.settle_steps):  # creates the state, then reaches the steady update
        step()
    benchmark.group = f"{device.type} {workload.name} {algorithm_name}"
    benchmark.extra_info.update(workload=workload.name, elements=workload.numel, tensors=len(workload.shapes))
    benchmark(step)
