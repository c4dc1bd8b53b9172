"""How things are measured: step times, memory bandwidth, and the peak memory a step allocates.

Step times
    :func:`time_interleaved` times the variants round-robin in one process: each round times
    one step of every variant, starting one variant later each round, so that drift of the
    machine (clock, other load, memory state) falls on every variant alike instead of on
    whichever ran last. Python's garbage collector is off while timing, as in :mod:`timeit`.

First step
    :func:`time_first_step` times a variant's first step on its own, before any round: the
    step that creates the optimizer state, moves params into flat buffers and compiles. It
    first clears dynamo's compiled code (``torch.compiler.reset()``), so a variant that compiles
    pays its own tracing and compiling even where an earlier variant, algorithm or workload
    compiled the same rule; inductor's on-disk cache stays, as it does for a user's second run.
    One-off costs of the process (importing inductor) fall on :func:`warm_compiler`, called once
    before any first step, not on whichever variant compiles first. Later compiles of the same
    variant (RAdam's rectified branch at step 6) happen in the untimed settle steps.

Memory bandwidth
    :func:`memory_bandwidth` is the best rate of two streaming kernels, in place as an optimizer
    updates its state: ``a += s * b`` (2 reads, 1 write per element) and ``a += s * b * c``
    (3 reads, 1 write), over tensors of 512 MiB, larger than the last-level cache of current
    CPUs (300 MiB on the reference machine), best of several repeats. The roofline is a bound,
    so it takes the fastest streaming the machine showed. Bytes are those the kernel must move,
    not the extra read a cache may make before a write. On a busy machine a repeat may run
    with fewer cores than asked, so the report samples the rate at the start and after each
    workload and keeps the best. A kernel with more streams can still stream a few percent
    faster than these two: on the reference machine torch's fused Adam measures 0.95-1.0x
    roofline, i.e. at the machine's limit. Workloads small enough to stay in the cache (the
    small scale) are not bound by this memory roofline at all.

Peak extra memory
    :func:`peak_extra_bytes` runs one step under ``torch.profiler`` with ``profile_memory=True``,
    after the timed rounds: in steady state, once the state, flat buffers and compiled code
    exist, which are not the step's extra memory. The profiler reports every allocation and
    free of torch's allocator on the device (the CPU allocator included) with its size and
    time; the peak of the running sum, from the step's
    start, is the most memory the step held beyond what existed before it: temporaries (for
    example the square-root buffer of foreach Adam, one float per parameter), plus whatever
    the step keeps. It is measured, not estimated, and it is exact for torch's allocations,
    which is all an optimizer makes. It does not see memory that bypasses torch's allocator
    (Python objects), and it counts bytes allocated, not memory an allocator keeps reserved
    (torch's CPU allocator keeps none: it returns every block to the system allocator).
"""

import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from optkernels._torch_private import is_dynamo_supported

Stepper = Callable[[], Any]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Timing:
    """Seconds per step of one variant, one value per timed round."""

    seconds: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1e3

    @property
    def min_ms(self) -> float:
        return min(self.seconds) * 1e3

    @property
    def max_ms(self) -> float:
        return max(self.seconds) * 1e3

    @property
    def quartiles_ms(self) -> tuple[float, float]:
        """The 25th and 75th percentiles: the spread without the outliers a busy machine adds."""
        if len(self.seconds) < 2:
            return self.median_ms, self.median_ms
        q1, _, q3 = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return q1 * 1e3, q3 * 1e3


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer read afterwards covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steppers: Mapping[str, Stepper], *, steps: int, warmup: int, device: torch.device,
                     budget_s: float | None = None, min_steps: int = 5,
                     progress: Progress | None = None) -> dict[str, Timing]:
    """Time ``steps`` rounds of one step of every stepper, after ``warmup`` untimed rounds.

    With ``budget_s``, timing stops early once the timed rounds have taken that long and at
    least ``min_steps`` of them ran: a slow workload gets fewer rounds, not a longer run.
    ``progress`` is called with a one-line summary after each round.
    """
    names = list(steppers)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    timed_s = 0.0
    with _gc_disabled():
        for round_ in range(warmup + steps):
            timed_rounds = round_ - warmup
            if budget_s is not None and timed_rounds >= min_steps and timed_s >= budget_s:
                break
            shift = round_ % len(names)
            this_round = {}
            for name in names[shift:] + names[:shift]:
                synchronize(device)
                start = time.perf_counter()
                steppers[name]()
                synchronize(device)
                this_round[name] = time.perf_counter() - start
            timed = round_ >= warmup
            if timed:
                timed_s += sum(this_round.values())
                for name, value in this_round.items():
                    seconds[name].append(value)
            if progress is not None:
                label = f"round {round_ - warmup + 1}/{steps}" if timed else f"warm-up {round_ + 1}/{warmup}"
                times = "  ".join(f"{name} {this_round[name] * 1e3:.1f}" for name in names)
                progress(f"{label}: {times} ms")
    return {name: Timing(tuple(values)) for name, values in seconds.items()}


def warm_compiler(device: torch.device) -> None:
    """Compile and run a tiny function once: the process's one-off costs of torch.compile."""
    if not is_dynamo_supported():
        return
    try:
        torch.compile(lambda x: x.mul_(2.0), dynamic=True)(torch.ones(4, device=device))
    except Exception:  # noqa: BLE001 - any compiler failure (no C++ compiler here, ...): the compiled
        pass  # variants then run their rules eagerly, as optkernels._compiled falls back
    torch.compiler.reset()


def time_first_step(step: Stepper, device: torch.device) -> float:
    """Seconds of one call of ``step``, its first, with no compiled code left from before: see above."""
    torch.compiler.reset()
    with _gc_disabled():
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        return time.perf_counter() - start


def memory_bandwidth(device: torch.device, *, nbytes: int = 512 * 2**20, repeats: int = 10) -> float:
    """Sustained memory bandwidth in bytes per second: see the module docstring."""
    a, b, c = (torch.ones(nbytes // 4, dtype=torch.float32, device=device) for _ in range(3))
    kernels = (  # each with the bytes it moves
        (lambda: a.add_(b, alpha=1e-6), 3 * nbytes),
        (lambda: a.addcmul_(b, c, value=1e-6), 4 * nbytes),
    )
    best = 0.0
    for kernel, moved in kernels:
        kernel()  # warm-up: one-off costs are not bandwidth
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            kernel()
            synchronize(device)
            best = max(best, moved / (time.perf_counter() - start))
    return best


def memory_changes(step: Stepper, device: torch.device) -> list[tuple[int, int]]:
    """(ns, bytes) of every allocation (positive) and free (negative) on ``device`` during one
    call of ``step``, in time order: see the module's docstring."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keep the profiler's start/stop lines off stderr
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities, profile_memory=True) as prof:
        step()
        synchronize(device)
    device_type = DeviceType.CUDA if device.type == "cuda" else DeviceType.CPU
    # the raw events: the profiler's tables add allocations up per op instead
    return sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == device_type
    )


def peak_extra_bytes(step: Stepper, device: torch.device) -> int:
    """Peak bytes allocated on ``device`` during one call of ``step``, above its start: see above."""
    changes = memory_changes(step, device)
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak


@contextmanager
def _gc_disabled() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
