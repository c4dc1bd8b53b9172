"""Fixtures of the pytest-benchmark suite (``bench_*.py``).

The normal test run passes ``--benchmark-disable`` (see pyproject.toml): every benchmark then
runs once, as a smoke test, at the small scale. To time for real, at the full scale::

    OPTKERNELS_BENCH_SCALE=full pytest benchmarks --benchmark-enable

(An environment variable rather than a pytest option: pytest only reads options from the root
conftest when it is run with no path, and the suite should take the scale however it is run.)
"""

import os

import pytest
import torch

from benchmarks.workloads import SCALES


@pytest.fixture(scope="session")
def bench_scale() -> str:
    scale = os.environ.get("OPTKERNELS_BENCH_SCALE", "small")
    if scale not in SCALES:
        raise pytest.UsageError(f"OPTKERNELS_BENCH_SCALE={scale!r}: choose from {', '.join(SCALES)}")
    return scale


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session", params=DEVICES)
def device(request) -> torch.device:
    """Every benchmark runs on the CPU, and on CUDA too where there is one."""
    return torch.device(request.param)
