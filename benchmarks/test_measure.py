"""The peak-memory measurement counts what a step allocates (no timing is asserted anywhere)."""

import torch

from benchmarks.measure import memory_bandwidth, peak_extra_bytes, time_first_step, time_interleaved
from benchmarks.variants import ALGORITHMS, build_steppers
from benchmarks.workloads import get_workload
from optkernels._torch_private import dynamo_counters


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


def test_first_step_compiles_again_after_another_variant_compiled_the_same_rule(device):
    # adamw runs Adam's rule: without the reset its first step would reuse adam's graph
    workload = get_workload("many-small", "small")
    counters = dynamo_counters()["stats"]
    for name in ("adam", "adamw"):
        step = build_steppers(ALGORITHMS[name], workload.tensors(0, device), workload.tensors(1, device), device,
                              names=["ours-compiled"])["ours-compiled"]
        graphs = counters["unique_graphs"]
        assert time_first_step(step, device) > 0
        assert counters["unique_graphs"] > graphs, name  # this variant's first step paid its own compile
        graphs = counters["unique_graphs"]
        step()
        assert counters["unique_graphs"] == graphs, name  # and later steps compile nothing


def test_steady_state_peak_leaves_out_the_flat_buffers(device):
    workload = get_workload("gpt2", "small")
    param_bytes = workload.numel * workload.element_size
    steppers = build_steppers(ALGORITHMS["adam"], workload.tensors(0, device), workload.tensors(1, device), device,
                              names=["ours-flat", "ours-compiled"])
    for name, step in steppers.items():
        # the first step allocates the param, grad and two state buffers: four times the params
        assert peak_extra_bytes(step, device) >= 4 * param_bytes, name
        # then foreach Adam on the flat buffers holds one param-sized temporary, the compiled rule
        # none (both a few 0-d scalars besides)
        limit = (param_bytes if name == "ours-flat" else 0) + 1024
        assert peak_extra_bytes(step, device) <= limit, name


def test_time_interleaved_times_every_stepper_each_round(device):
    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               steps=3, warmup=1, device=device)
    assert sorted(calls) == ["a"] * 4 + ["b"] * 4
    assert calls[:4] == ["a", "b", "b", "a"]  # the starting variant rotates each round
    assert {name: len(timing.seconds) for name, timing in timings.items()} == {"a": 3, "b": 3}


def test_memory_bandwidth_is_a_positive_rate(device):
    assert memory_bandwidth(device, nbytes=2**20, repeats=1) > 0
