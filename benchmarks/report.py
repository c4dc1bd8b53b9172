"""Time our optimizers against torch.optim and the memory-bandwidth roofline; write a report.

    python -m benchmarks.report                       # everything, full scale (see below)
    python -m benchmarks.report --scale small         # the same at toy sizes (under a minute)
    python -m benchmarks.report --algorithms adam,radam --workloads many-small,gpt2 --steps 20 --budget 0

For each device (the CPU, and CUDA where there is one), workload and algorithm, every variant of
:mod:`benchmarks.variants` available there steps its own copy of the same params and fixed random
grads (no backward is timed). Each variant's first step (state, flat buffers, compiling) is timed
on its own; then the variants run interleaved, one step each per round, after warm-up rounds
(see :mod:`benchmarks.measure` for how time, first step, bandwidth and peak memory are measured).
A row stops after 20 rounds, or once its timed rounds took 3 s and at least 3 ran, so that the
slow workloads do not stretch the run; ``--steps`` and ``--budget`` change that.
The roofline is the time one step needs to move the algorithm's minimum bytes at the memory
bandwidth, sampled at the start and after each workload; the best sample counts.

The default run (18 algorithms, 4 workloads) took 32 min on the quiet 2-core reference machine
(2026-12-02; 57 min with other jobs running) and 5.3 GB of resident memory at its peak (GPT-2's
rows, ``/usr/bin/time -v``); its first line says what it will time and about how long. It holds
at most ``--memory-gb`` (4.5 GB) of tensors at once, which with the process's own ~1 GB fits a
machine with 8 GB: on GPT-2 the grads take 0.5 GB, and each variant its own params (drawn anew
for each: no master copy is kept) and state (Adam on the CPU: 7 variants, up to 2 GB each), so
there the variants run in pairs, the anchor (torch's fastest mode) and one other (see
:func:`benchmark`). ``--memory-gb 0`` runs all of an algorithm's variants together (16 GB for
GPT-2).

Writes to ``--out`` (default ``benchmarks/results``): ``results.md`` (machine; a summary with one
row per algorithm and workload: the best of torch (where torch lacks the algorithm, its reference) against
our best, time, roofline, first step and peak memory; the median of every variant; then every
variant's numbers), ``results.json``
(``{"machine", "settings", "records"}``), ``results.png`` (one panel per device and workload:
median ms per variant for each algorithm, quartile whiskers, the roofline as a dashed line);
prints progress to stderr and the tables to stdout.
"""

import os

# Compile in this process, not in inductor's pool of worker processes: the pool keeps compiling
# (and warming up) in the background after a variant's first step, and on a 2-core machine that
# slowed the next rounds of whatever ran beside the compiled variant (torch's fused Adam timed at
# 600-1,240 ms beside it, 110 ms elsewhere). Set before torch is imported.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import argparse  # noqa: E402 (after the environment is set)
import ctypes
import datetime
import functools
import gc
import itertools
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .measure import (Progress, Timing, memory_bandwidth, peak_extra_bytes, time_first_step, time_interleaved,
                      warm_compiler)
from .variants import (ALGORITHMS, VARIANTS, Algorithm, available_variants, build_steppers, get_algorithm,
                       torch_default_variant)
from .workloads import SCALES, WORKLOADS, Workload, get_workload

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_WORKLOADS = tuple(WORKLOADS)
SCALE_DEFAULTS = {"full": (20, 3.0), "small": (10, 0.5)}  # (most timed rounds, seconds of timing per row)
MIN_STEPS = 3  # timed rounds at least, whatever the budget
# Seconds one algorithm takes on each workload at full scale on the 2-core reference machine, for
# the first line's estimate: the default run of 2026-12-02 09:09 UTC (32 min, quiet; the same run
# took 57 min with other jobs on the machine that morning).
SECONDS_PER_ROW = {"gpt2": 46, "resnet50": 24, "many-small": 10, "few-large": 27}
VARIANT_BY_NAME = {variant.name: variant for variant in VARIANTS}
DEFAULT_MEMORY_GB = 4.5  # with the process's own ~1 GB, the run fits a machine with 8 GB


@dataclass(frozen=True)
class Record:
    """One variant's result on one workload: a row of the table, an entry of results.json."""

    device: str
    workload: str
    algorithm: str
    variant: str
    median_ms: float
    min_ms: float
    max_ms: float
    quartiles_ms: tuple[float, float]  # 25th and 75th percentiles
    roofline_ms: float
    min_bytes: int  # the variant's least traffic per step, which the roofline moves at full bandwidth
    peak_extra_bytes: int
    first_step_s: float  # the first step: creates the state, flattens, compiles (see measure.py)
    anchor: str  # the variant timed beside this one in every group (see benchmark())
    x_anchor: float  # median over the anchor's median, both from this variant's group
    x_torch_default: float | None  # over torch's default mode, through the anchor; None without one
    x_roofline: float
    steps: int
    tensors: int
    elements: int
    precision: str = "fp32"  # of params and state (see variants.Variant)
    state_bytes_per_element: float | None = None  # the optimizer's state after the timed steps; None: unknown


@dataclass(frozen=True)
class Measurement:
    """What was measured of one algorithm on one workload; the roofline waits for the run's bandwidth."""

    device: torch.device
    workload: Workload
    algorithm: Algorithm
    timings: dict[str, Timing]  # the anchor's: its rounds in every group
    x_anchor: dict[str, float]  # each variant's median over the anchor's in the same group
    anchor: str
    peaks: dict[str, int]  # peak extra bytes of one step
    first_steps: dict[str, float]  # seconds of each variant's first step
    torch_default: str     # the variant torch.optim runs by default on this device
    state_bytes: dict[str, int | None]  # of each variant's optimizer state; None where not an Optimizer

    def records(self, bandwidth: float) -> list[Record]:
        default = self.x_anchor.get(self.torch_default)
        records = []
        for name, timing in self.timings.items():
            variant = VARIANT_BY_NAME[name]
            min_bytes = variant.min_bytes(self.algorithm, self.workload.shapes, self.workload.element_size)
            roofline_ms = min_bytes / bandwidth * 1e3
            state = self.state_bytes.get(name)
            records.append(Record(
                device=self.device.type, workload=self.workload.name, algorithm=self.algorithm.name,
                variant=name, median_ms=timing.median_ms, min_ms=timing.min_ms, max_ms=timing.max_ms,
                quartiles_ms=timing.quartiles_ms, roofline_ms=roofline_ms, min_bytes=min_bytes,
                peak_extra_bytes=self.peaks[name], first_step_s=self.first_steps[name], anchor=self.anchor,
                x_anchor=self.x_anchor[name], x_torch_default=self.x_anchor[name] / default if default else None,
                x_roofline=timing.median_ms / roofline_ms, steps=len(timing.seconds),
                tensors=len(self.workload.shapes), elements=self.workload.numel, precision=variant.precision,
                state_bytes_per_element=None if state is None else state / self.workload.numel))
        return records


def anchor_variant(names: Sequence[str]) -> str:
    """The variant timed in every group: torch's fastest mode where it has one (it holds no
    temporaries and costs each group least), else the first variant (the reference implementation)."""
    for name in ("torch-fused", "torch-foreach", "torch-forloop"):
        if name in names:
            return name
    return names[0]


def variant_groups(names: Sequence[str], anchor: str, size: int) -> list[list[str]]:
    """``names`` in groups of at most ``size`` (at least 2), the anchor first in each, spread evenly.

    >>> variant_groups(["a", "b", "c", "d", "e"], "b", 3)
    [['b', 'a', 'c'], ['b', 'd', 'e']]
    >>> variant_groups(["a", "b", "c"], "a", 8)
    [['a', 'b', 'c']]
    """
    others = [name for name in names if name != anchor]
    count = math.ceil(len(others) / max(size - 1, 1)) or 1
    per_group = math.ceil(len(others) / count)
    return [[anchor, *others[i:i + per_group]] for i in range(0, max(len(others), 1), per_group)]


def group_size(algorithm: Algorithm, workload: Workload, memory_bytes: float | None) -> int:
    """How many variants fit in ``memory_bytes`` beside the shared grads (None: all)."""
    if memory_bytes is None:
        return len(VARIANTS)
    shared = workload.numel * workload.element_size  # the grads every variant reads
    held = algorithm.held_bytes(workload.shapes, workload.element_size)
    return max(2, int((memory_bytes - shared) // held))


def benchmark(workload: Workload, algorithm: Algorithm, params: Callable[[], list[torch.Tensor]],
              grads: list[torch.Tensor], *, steps: int, warmup: int, budget_s: float | None, device: torch.device,
              memory_bytes: float | None = None, progress: Progress | None = None) -> Measurement:
    """Time every variant of ``algorithm`` on its own ``params()`` (the same values for each) and the
    shared ``grads``, then each one's peak memory.

    As many variants as ``memory_bytes`` holds are built and timed together; where that is not
    all of them, they run in groups, one after the other, each with the anchor (torch's fastest
    mode) timed beside it, and every ratio goes through the anchor's time in the same group:
    a variant is compared with another only through times taken side by side. The timing budget
    is shared out among the groups, so a row takes as long as before.
    """
    names = [variant.name for variant in available_variants(algorithm, device)]
    anchor = anchor_variant(names)
    groups = variant_groups(names, anchor, group_size(algorithm, workload, memory_bytes))
    say = progress or (lambda line: None)
    anchor_seconds: list[float] = []
    timings, x_anchor, peaks, first_steps, state_bytes = {}, {}, {}, {}, {}
    for number, group in enumerate(groups, 1):
        if len(groups) > 1:
            say(f"group {number}/{len(groups)} (within the memory budget): {', '.join(group)}")
        firsts, group_timings, group_peaks, group_states = _measure_group(
            algorithm, params, grads, device, group, steps=steps, warmup=warmup, say=say, progress=progress,
            budget_s=budget_s / len(groups) if budget_s else None, profiled=peaks.keys())
        release_memory()  # this group's copies are gone before the next group's are built
        for name, seconds in firsts.items():
            first_steps.setdefault(name, seconds)
        peaks.update(group_peaks)
        state_bytes.update(group_states)
        anchor_seconds += group_timings[anchor].seconds
        for name, timing in group_timings.items():
            if name != anchor:
                timings[name] = timing
                x_anchor[name] = timing.median_ms / group_timings[anchor].median_ms
    timings[anchor], x_anchor[anchor] = Timing(tuple(anchor_seconds)), 1.0
    timings = {name: timings[name] for name in names}  # the variants' order
    return Measurement(device, workload, algorithm, timings, x_anchor, anchor, peaks, first_steps,
                       torch_default_variant(device), state_bytes)


def _measure_group(algorithm: Algorithm, params: Callable[[], list[torch.Tensor]], grads: list[torch.Tensor],
                   device: torch.device, group: Sequence[str], *, steps: int, warmup: int, budget_s: float | None, say: Progress,
                   progress: Progress | None, profiled: Collection[str]):
    """First steps, timings, and the peaks of those not yet ``profiled``, of one group of variants.

    A function of its own so that the group's optimizers, params and state, which only its
    locals hold, are gone when it returns.
    """
    steppers = build_steppers(algorithm, params, grads, device, names=group)
    # one variant at a time, each with dynamo's caches cleared: no variant's compile lands on another;
    # the anchor's last: the others' first steps (flat mode copies the params into its buffer, a
    # model's worth held twice for a moment) then run before the anchor holds its state
    order = [name for name in group if name != group[0]] + [group[0]]
    firsts = {name: time_first_step(steppers[name], device) for name in order}
    say("first step: " + "  ".join(f"{name} {seconds * 1e3:.1f}" for name, seconds in firsts.items()) + " ms")
    if algorithm.settle_steps:
        say(f"{algorithm.settle_steps} untimed steps per variant first, to its steady update")
    for step in steppers.values():
        for _ in range(algorithm.settle_steps):
            step()
    timings = time_interleaved(steppers, steps=steps, warmup=warmup, min_steps=MIN_STEPS, budget_s=budget_s,
                               device=device, progress=progress)
    say("peak memory: one profiled step per variant")
    peaks = {name: peak_extra_bytes(step, device)  # in steady state
             for name, step in steppers.items() if name not in profiled}
    return firsts, timings, peaks, {name: state_bytes(step) for name, step in steppers.items()}


def state_bytes(step: Callable[[], None]) -> int | None:
    """Bytes of the state of the optimizer whose ``step`` this is (its tensors of one dimension or
    more: not the 0-d step counts); None for a step that is not an Optimizer's (functional calls)."""
    optimizer = getattr(step, "__self__", None)
    if not isinstance(optimizer, torch.optim.Optimizer):
        return None
    return sum(_tensor_bytes(value) for state in optimizer.state.values() for value in state.values()
               if isinstance(value, torch.Tensor) and value.dim() > 0)


def _tensor_bytes(tensor: torch.Tensor) -> int:
    """A tensor's bytes; for a tensor subclass (torchao's quantised state), those of the tensors it is made of."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) is not torch.Tensor:
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def release_memory() -> None:
    """Free what no variant holds any more, and hand the C heap's free pages back to the system:
    glibc's malloc keeps freed blocks under 32 MB (most of GPT-2's tensors) in its heap, so
    without a trim about 0.7 GB more than is live stayed resident after each of GPT-2's Adam
    groups (measured), and the next group's peak sat on top of it."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


# --- the command ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> list[Record]:
    """Run the report with command-line ``argv``; returns the records it wrote."""
    args = parse_args(argv)
    workloads = [get_workload(name, args.scale) for name in args.workloads]
    algorithms = [get_algorithm(name) for name in args.algorithms]

    _say(plan(args))
    load = os.getloadavg()[0]  # before we add any
    if load >= 0.5:
        _say(f"note: the machine is busy (load average {load:.1f}); expect noisy timings and a longer run")
    started = time.perf_counter()
    records, bandwidths = [], {}
    total, count = len(args.devices) * len(workloads) * len(algorithms), itertools.count(1)
    for device in map(torch.device, args.devices):
        samples = bandwidths[device.type] = [_sample_bandwidth(device)]
        warm_compiler(device)
        measurements = []
        for workload in workloads:
            # each variant's params are drawn anew (seed 0): no master copy held beside the variants'
            params = functools.partial(workload.tensors, seed=0, device=device)
            grads = workload.tensors(seed=1, device=device)
            for algorithm in algorithms:
                progress = _prefixed(f"[{next(count)}/{total} {device.type} {workload.name} {algorithm.name}]")
                progress(f"{workload.description}; {time.perf_counter() - started:.0f} s so far")
                measurements.append(benchmark(workload, algorithm, params, grads, steps=args.steps, warmup=args.warmup,
                                              budget_s=args.budget, device=device, memory_bytes=args.memory_bytes,
                                              progress=progress))
                release_memory()  # free this algorithm's copies before the next are built
            del params, grads
            # Samples spread over the run: a busy machine may slow any one of them, rarely all.
            # (The small scale's workloads fit in the cache: one sample is plenty there.)
            if args.scale == "full":
                samples.append(_sample_bandwidth(device))
        records += [record for measurement in measurements for record in measurement.records(max(samples))]

    machine = machine_info(bandwidths, load)
    settings = dict(scale=args.scale, steps=args.steps, warmup=args.warmup, budget_s=args.budget,
                    memory_gb=args.memory_gb,
                    devices=list(args.devices), workloads=list(args.workloads), algorithms=list(args.algorithms),
                    torch_default={name: torch_default_variant(torch.device(name)) for name in args.devices},
                    run_s=round(time.perf_counter() - started, 1))
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(records, machine, settings)
    (args.out / "results.md").write_text(table)
    results = dict(machine=machine, settings=settings, records=[asdict(r) for r in records])
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(records, args.out / "results.png")
    _say(f"wrote {args.out / 'results.md'}, results.json, results.png in {settings['run_s']:.0f} s")
    print(table)
    return records


def plan(args: argparse.Namespace) -> str:
    """The first line of a run: what it will time, about how long that takes, and the memory it needs."""
    rows = len(args.devices) * len(args.algorithms) * len(args.workloads)
    if args.scale == "full":
        seconds = len(args.devices) * len(args.algorithms) * sum(SECONDS_PER_ROW[name] for name in args.workloads)
        duration = f"about {max(1, round(seconds / 60))} min"
    else:
        duration = f"about {max(1, round(rows * 0.5 / 60))} min"
    memory = (f"at most {args.memory_gb:g} GB of tensors at once, plus about 1 GB for torch and the compiler"
              if args.memory_bytes else "every variant of an algorithm in memory at once (no limit)")
    return (f"timing {len(args.algorithms)} algorithms x {len(args.workloads)} workloads "
            f"({', '.join(args.workloads)}) on {', '.join(args.devices)}, scale {args.scale}: {rows} rows, "
            f"{duration} on a quiet 2-core machine (up to twice that on a busy one); {memory}")


def _available_devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=SCALES, default="full",
                        help="full: the real shapes; small: the same structure at toy sizes (default: full)")
    parser.add_argument("--workloads", type=_names(WORKLOADS), default=DEFAULT_WORKLOADS,
                        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--algorithms", type=_names(ALGORITHMS), default=tuple(ALGORITHMS),
                        help=f"comma-separated, from {', '.join(ALGORITHMS)} (default: all)")
    parser.add_argument("--devices", type=_names(_available_devices()), default=_available_devices(),
                        help=f"comma-separated, from {', '.join(_available_devices())} (default: all of them)")
    parser.add_argument("--steps", type=_at_least(1), default=None,
                        help="timed rounds at most (default: 20 at full scale, 10 at small)")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds of timed rounds per workload and algorithm, after which timing stops "
                             f"once {MIN_STEPS} rounds ran; 0 for no limit (default: 3 at full scale, 0.5 at small)")
    parser.add_argument("--warmup", type=_at_least(1), default=1,
                        help="untimed rounds after each variant's first step, which is timed on its own "
                             "(default: 1)")
    parser.add_argument("--memory-gb", type=float, default=DEFAULT_MEMORY_GB,
                        help="GB of tensors to hold at once: variants that would not fit together are timed in "
                             "groups, each beside torch's fastest mode; the process adds about 1 GB (torch, the "
                             f"compiler); 0 for no limit (default: {DEFAULT_MEMORY_GB:g})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    steps, budget = SCALE_DEFAULTS[args.scale]
    args.steps = steps if args.steps is None else args.steps
    args.budget = budget if args.budget is None else args.budget or None
    args.memory_bytes = args.memory_gb * 1e9 if args.memory_gb > 0 else None
    return args

def _names(known):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(known)}")
        return names
    return parse


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _sample_bandwidth(device: torch.device) -> float:
    bandwidth = memory_bandwidth(device)
    _say(f"memory bandwidth {bandwidth / 1e9:.1f} GB/s")
    return bandwidth


def _prefixed(prefix: str) -> Progress:
    return lambda line: _say(f"{prefix} {line}")


# --- what is written -----------------------------------------------------------------------------
def machine_info(bandwidths: dict[str, Sequence[float]], load_average: float) -> dict:
    """What ran the benchmark; ``bandwidths`` has each device's samples in bytes per second."""
    return dict(
        cpu=_cpu_model(),
        logical_cpus=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        gpu=torch.cuda.get_device_name() if "cuda" in bandwidths else None,
        torch=torch.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        # the roofline's: each device's best sample
        bandwidth_gb_s={device: round(max(samples) / 1e9, 2) for device, samples in bandwidths.items()},
        bandwidth_samples_gb_s={device: [round(sample / 1e9, 2) for sample in samples]
                                for device, samples in bandwidths.items()},
        load_average=round(load_average, 2),  # 1-minute, at the start: other work on the machine
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(records: Sequence[Record], machine: dict, settings: dict) -> str:
    """The report: machine and run, a summary (one row per algorithm), then one row per variant."""
    variants = [v for v in VARIANTS if any(r.variant == v.name for r in records)]
    bandwidths = ", ".join(f"{device} {value:.1f} GB/s (samples: {machine['bandwidth_samples_gb_s'][device]})"
                           for device, value in machine["bandwidth_gb_s"].items())
    lines = [
        "# Optimizer step benchmark",
        "",
        f"- Machine: {machine['cpu']}; {machine['logical_cpus']} logical CPUs, "
        f"torch.get_num_threads() = {machine['torch_threads']}" + (f"; GPU {machine['gpu']}" if machine["gpu"] else ""),
        f"- Software: torch {machine['torch']}, Python {machine['python']}, {machine['platform']}",
        f"- Date: {machine['date']}; the run took {settings['run_s']:.0f} s",
        f"- Load average at start: {machine['load_average']:.2f} (other work on the machine; "
        f"above ~0.5, expect noisy timings)",
        f"- Run: scale {settings['scale']}, up to {settings['steps']} timed steps (fewer once "
        f"{settings['budget_s']} s of timing per row ran, at least {MIN_STEPS}) after each variant's first step "
        f"(timed alone) and {settings['warmup']} warm-up round(s), variants interleaved round-robin; torch's default mode: "
        + ", ".join(f"{device} {mode}" for device, mode in settings["torch_default"].items()),
        f"- Memory: at most {settings['memory_gb']:g} GB of tensors at once (0: no limit); where an algorithm's "
        "variants do not fit together they run in groups, each with the anchor (torch's fastest mode) timed "
        "beside it, and ratios between groups go through the anchor's time in each",
        f"- Memory bandwidth (best streaming kernel, best sample over the run): {bandwidths}",
        "- Variants: " + "; ".join(f"{v.name}: {v.description}" for v in variants),
        "",
        "## Summary: best against best",
        "",
        "Per row, the fastest variant (median ms per step) of torch.optim (for an algorithm torch "
        "lacks: its reference implementation) and of ours; their ratio (through the anchor, where they ran in "
        "different groups); ours × the roofline; the first step of "
        "our best variant (state, flat buffers, compiling); the peak extra memory of a steady-state step.",
        "",
        "| device | workload | algorithm | roofline ms | torch best | ms | ours best | ms | ours / torch "
        "| ours × roofline | ours first step ms | ours peak extra MiB | torch peak extra MiB |",
        "|---|---|---|--:|---|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    groups = _unique(records, key=lambda r: (r.device, r.workload, r.algorithm))
    for first in groups:
        rows = [r for r in records
                if (r.device, r.workload, r.algorithm) == (first.device, first.workload, first.algorithm)]
        ours = _fastest(r for r in rows if _is_ours(r.variant) and r.precision == "fp32")
        theirs = _fastest(r for r in rows if not _is_ours(r.variant) and r.precision == "fp32")
        ratio = f"{ours.x_anchor / theirs.x_anchor:.2f}" if ours and theirs else "—"
        cells = [first.device, first.workload, first.algorithm, _fmt(first.roofline_ms),
                 *((theirs.variant, _fmt(theirs.median_ms)) if theirs else ("—", "—")),
                 *((ours.variant, _fmt(ours.median_ms)) if ours else ("—", "—")), ratio,
                 _fmt(ours.x_roofline) if ours else "—", _fmt(ours.first_step_s * 1e3) if ours else "—",
                 _fmt(ours.peak_extra_bytes / 2**20) if ours else "—",
                 _fmt(theirs.peak_extra_bytes / 2**20) if theirs else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += low_precision_table(records)
    lines += [
        "",
        "## Median ms per step (× roofline), every variant",
        "",
        "| device | workload | algorithm | roofline ms | " + " | ".join(v.name for v in variants) + " |",
        "|---|---|---|--:|" + "--:|" * len(variants),
    ]
    for first in groups:
        rows = {r.variant: r for r in records
                if (r.device, r.workload, r.algorithm) == (first.device, first.workload, first.algorithm)}
        cells = [f"{_fmt(rows[v.name].median_ms)} ({_fmt(rows[v.name].x_roofline)})" if v.name in rows else "—"
                 for v in variants]
        lines.append(f"| {first.device} | {first.workload} | {first.algorithm} | {_fmt(first.roofline_ms)} | "
                     + " | ".join(cells) + " |")
    lines += [
        "",
        "## Every variant",
        "",
        "| device | workload | algorithm | variant | median ms | min ms | max ms | anchor | × anchor | × torch default "
        "| × roofline | first step ms | peak extra MiB | state B/element | steps |",
        "|---|---|---|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in records:
        x_default = "—" if r.x_torch_default is None else f"{r.x_torch_default:.2f}"
        cells = [r.device, r.workload, r.algorithm, r.variant, _fmt(r.median_ms), _fmt(r.min_ms), _fmt(r.max_ms),
                 r.anchor, f"{r.x_anchor:.2f}", x_default, _fmt(r.x_roofline), _fmt(r.first_step_s * 1e3),
                 _fmt(r.peak_extra_bytes / 2**20), _state(r), str(r.steps)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Workloads", "", "| workload | tensors | elements |", "|---|--:|--:|"]
    for first in _unique(records, key=lambda r: r.workload):
        lines.append(f"| {first.workload} | {first.tensors} | {first.elements:,} |")
    return "\n".join(lines) + "\n"


def low_precision_table(records: Sequence[Record]) -> list[str]:
    """Where low-precision variants ran: each beside the anchor (torch's fused fp32 step) and our
    fp32 best, with its state per element and its roofline at its own least traffic."""
    keys = _unique([r for r in records if r.precision != "fp32"], key=lambda r: (r.device, r.workload, r.algorithm))
    if not keys:
        return []
    lines = ["", "## Low-precision state", "",
             "Each low-precision variant beside the anchor (torch's fused fp32 step) and our fastest fp32 variant: "
             "the optimizer state per element (moments, their scales), the least bytes per element its step moves, "
             "and its roofline at that traffic.", "",
             "| device | workload | algorithm | variant | precision | state B/element | least B/element | median ms "
             "| × anchor | roofline ms | × its roofline | first step ms |",
             "|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for key in keys:
        rows = [r for r in records if (r.device, r.workload, r.algorithm) == (key.device, key.workload, key.algorithm)]
        anchor = next(r for r in rows if r.variant == r.anchor)
        ours = _fastest(r for r in rows if _is_ours(r.variant) and r.precision == "fp32")
        for r in [anchor, *([ours] if ours else []), *(r for r in rows if r.precision != "fp32")]:
            cells = [r.device, r.workload, r.algorithm, r.variant, r.precision, _state(r),
                     _fmt(r.min_bytes / r.elements), _fmt(r.median_ms), f"{r.x_anchor:.2f}", _fmt(r.roofline_ms),
                     _fmt(r.x_roofline), _fmt(r.first_step_s * 1e3)]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _state(record: Record) -> str:
    return "—" if record.state_bytes_per_element is None else f"{record.state_bytes_per_element:.2f}"


def _is_ours(variant: str) -> bool:
    return variant.startswith("ours")


def _fastest(records: Iterable[Record]) -> Record | None:
    # by the time relative to the anchor: variants of different groups were not timed side by side
    return min(records, key=lambda r: r.x_anchor, default=None)


def _fmt(value: float) -> str:
    """About three significant digits, never in exponent form."""
    decimals = max(0, 2 - math.floor(math.log10(value))) if value > 0 else 0
    return f"{value:,.{decimals}f}"


def _unique(records: Sequence[Record], key: Callable[[Record], Hashable]) -> list[Record]:
    """The first record of each key, in order."""
    seen: dict[Hashable, Record] = {}
    for record in records:
        seen.setdefault(key(record), record)
    return list(seen.values())


def plot(records: Sequence[Record], path: Path) -> None:
    """One panel per device and workload, a group of bars per algorithm, a bar per variant.

    Bars are medians, whiskers the quartiles (min and max are in the table: on a busy machine a
    few slow rounds would stretch the axis until the bars cannot be compared), labels the
    multiple of the roofline, which is the dashed line over each group.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(r.device, r.workload) for r in _unique(records, key=lambda r: (r.device, r.workload))]
    variants = [v.name for v in VARIANTS]
    colors = {name: f"C{i}" for i, name in enumerate(variants)}
    algorithm_count = len(_unique(records, key=lambda r: r.algorithm))
    figure = Figure(figsize=(max(7.0, 1.2 * algorithm_count + 2), 3.3 * len(panels)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.8 / len(variants)
    for ax, (device, workload) in zip(axes, panels):
        rows = [r for r in records if (r.device, r.workload) == (device, workload)]
        algorithms = [r.algorithm for r in _unique(rows, key=lambda r: r.algorithm)]
        for group, algorithm in enumerate(algorithms):
            group_rows = [r for r in rows if r.algorithm == algorithm]
            for r in group_rows:
                x = group - 0.4 + width * (variants.index(r.variant) + 0.5)
                low, high = r.quartiles_ms
                ax.bar(x, r.median_ms, width, color=colors[r.variant], label=r.variant,
                       yerr=[[max(r.median_ms - low, 0)], [max(high - r.median_ms, 0)]], capsize=1.5)
                ax.annotate(f"{r.x_roofline:.1f}×", (x, max(high, r.median_ms)), xytext=(0, 2),
                            textcoords="offset points", ha="center", va="bottom", fontsize=6, rotation=90)
            ax.hlines(group_rows[0].roofline_ms, group - 0.45, group + 0.45, colors="black",
                      linestyles="dashed", label="roofline (bar labels: time / roofline)")
        ax.set_xticks(range(len(algorithms)), algorithms)
        ax.set_xlim(-0.5, len(algorithms) - 0.5)
        ax.set_title(f"{workload} on {device} ({rows[0].tensors} tensors, {rows[0].elements:,} elements)",
                     fontsize="medium")
        ax.set_ylabel("ms per step")
        ax.margins(y=0.18)
    handles = {}
    for ax in axes:  # one legend entry per label, across panels
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    figure.legend(handles.values(), handles.keys(), loc="outside upper center", ncols=len(handles),
                  fontsize="small")
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
