"""The peak-memory measurement counts what a step allocates (no timing is asserted anywhere)."""

import torch

from benchmarks.measure import memory_bandwidth, peak_extra_bytes, time_interleaved
from benchmarks.variants import ALGORITHMS, build_steppers
from benchmarks.workloads import get_workload


def test_peak_of_a_step_that_allocates_nothing_is_zero(device):
    assert peak_extra_bytes(lambda: None, device) == 0


def test_peak_counts_a_temporary_freed_within_the_step(device):
    assert peak_extra_bytes(lambda: torch.empty(1000, device=device).fill_(1.0), device) >= 4000


def test_foreach_adam_peak_covers_its_sqrt_buffer(device):
    workload = get_workload("gpt2", "small")
    steppers = build_steppers(ALGORITHMS["adam"], workload.tensors(0, device), workload.tensors(1, device), device,
                              names=["torch-foreach", "ours-functional"])
    for name, step in steppers.items():
        step()  # state exists from here on, so the measured step allocates only temporaries
        # foreach Adam holds sqrt(exp_avg_sq) for every param at once: one float per element
        assert peak_extra_bytes(step, device) >= workload.numel * workload.element_size, name


def test_time_interleaved_times_every_stepper_each_round(device):
    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               steps=3, warmup=1, device=device)
    assert sorted(calls) == ["a"] * 4 + ["b"] * 4
    assert calls[:4] == ["a", "b", "b", "a"]  # the starting variant rotates each round
    assert {name: len(timing.seconds) for name, timing in timings.items()} == {"a": 3, "b": 3}


def test_memory_bandwidth_is_a_positive_rate(device):
    assert memory_bandwidth(device, nbytes=2**20, repeats=1) > 0
