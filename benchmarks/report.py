"""Time our optimizers against torch.optim and the memory-bandwidth roofline; write a report.

    python -m benchmarks.report                       # every workload, full scale (1.5-2 min, 2 cores)
    python -m benchmarks.report --scale small         # the same at toy sizes (15 s)
    python -m benchmarks.report --workloads gpt2 --steps 50 --out /tmp/bench

For each workload and algorithm, every variant of :mod:`benchmarks.variants` available on the
CPU steps its own copy of the same params and fixed random grads (no backward is timed);
the variants run interleaved, one step each per round, after warm-up rounds (see
:mod:`benchmarks.measure` for how time, bandwidth and peak memory are measured). The roofline
is the time one step needs to move the algorithm's minimum bytes at the memory bandwidth,
sampled at the start and after each workload; the best sample counts.

Default workloads: all three (gpt2, many-small, few-large). On the 2-core reference machine a
full default run took 1 min 27 s (GPT-2 43 s, few-large 32 s, many-small 6 s; load average 0.9
from other work), and 2 min 11 s with the load near 2: within the 3-minute budget, so nothing is
left out by default. GPT-2 holds about 11 GB: five variants, each with params, grads and two
state tensors.

Writes to ``--out`` (default ``benchmarks/results``): ``results.md`` (machine and tables),
``results.json`` (``{"machine", "settings", "records"}``), ``results.png`` (one panel per
workload: median ms per variant, quartile whiskers, the roofline as a dashed line); prints
progress to stderr and the table to stdout.
"""

import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .measure import Progress, Timing, memory_bandwidth, peak_extra_bytes, time_interleaved
from .variants import ALGORITHMS, VARIANTS, Algorithm, build_steppers, get_algorithm, torch_default_variant
from .workloads import SCALES, WORKLOADS, Workload, get_workload

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_WORKLOADS = ("gpt2", "many-small", "few-large")


@dataclass(frozen=True)
class Record:
    """One variant's result on one workload: a row of the table, an entry of results.json."""

    workload: str
    algorithm: str
    variant: str
    median_ms: float
    min_ms: float
    max_ms: float
    quartiles_ms: tuple[float, float]  # 25th and 75th percentiles
    roofline_ms: float
    min_bytes: int  # the algorithm's least traffic per step, which the roofline moves at full bandwidth
    peak_extra_bytes: int
    x_torch_default: float | None  # median over the median of torch's default mode; None without one
    x_roofline: float
    steps: int
    tensors: int
    elements: int


@dataclass(frozen=True)
class Measurement:
    """What was measured of one algorithm on one workload; the roofline waits for the run's bandwidth."""

    workload: Workload
    algorithm: Algorithm
    timings: dict[str, Timing]
    peaks: dict[str, int]  # peak extra bytes of one step
    torch_default: str     # the variant torch.optim runs by default on this device

    def records(self, bandwidth: float) -> list[Record]:
        min_bytes = self.algorithm.min_bytes(self.workload.numel, self.workload.element_size)
        roofline_ms = min_bytes / bandwidth * 1e3
        default = self.timings.get(self.torch_default)
        return [
            Record(workload=self.workload.name, algorithm=self.algorithm.name, variant=name,
                   median_ms=timing.median_ms, min_ms=timing.min_ms, max_ms=timing.max_ms,
                   quartiles_ms=timing.quartiles_ms, roofline_ms=roofline_ms, min_bytes=min_bytes,
                   peak_extra_bytes=self.peaks[name],
                   x_torch_default=timing.median_ms / default.median_ms if default else None,
                   x_roofline=timing.median_ms / roofline_ms, steps=len(timing.seconds),
                   tensors=len(self.workload.shapes), elements=self.workload.numel)
            for name, timing in self.timings.items()
        ]


def benchmark(workload: Workload, algorithm: Algorithm, *, steps: int, warmup: int, device: torch.device,
              progress: Progress | None = None) -> Measurement:
    """Time every variant of ``algorithm`` on ``workload``, then measure each one's peak memory."""
    params, grads = workload.tensors(seed=0, device=device), workload.tensors(seed=1, device=device)
    steppers = build_steppers(algorithm, params, grads, device)
    del params, grads  # each variant holds its own copies
    timings = time_interleaved(steppers, steps=steps, warmup=warmup, device=device, progress=progress)
    if progress is not None:
        progress("peak memory: one profiled step per variant")
    peaks = {name: peak_extra_bytes(step, device) for name, step in steppers.items()}
    return Measurement(workload, algorithm, timings, peaks, torch_default_variant(device))


# --- the command ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> list[Record]:
    """Run the report with command-line ``argv``; returns the records it wrote."""
    args = parse_args(argv)
    device = torch.device("cpu")
    workloads = [get_workload(name, args.scale) for name in args.workloads]
    algorithms = [get_algorithm(name) for name in args.algorithms]

    load = os.getloadavg()[0]  # before we add any
    if load >= 0.5:
        _say(f"note: the machine is busy (load average {load:.1f}); expect noisy timings and a longer run")
    bandwidths = [_sample_bandwidth(device)]
    measurements = []
    for workload in workloads:
        for algorithm in algorithms:
            progress = _prefixed(f"[{workload.name} {algorithm.name}]")
            started = time.perf_counter()
            progress(workload.description)
            measurements.append(benchmark(workload, algorithm, steps=args.steps, warmup=args.warmup,
                                          device=device, progress=progress))
            gc.collect()  # free this workload's tensors before the next is built
            progress(f"done in {time.perf_counter() - started:.0f} s")
        # Samples spread over the run: a busy machine may slow any one of them, rarely all.
        bandwidths.append(_sample_bandwidth(device))
    bandwidth = max(bandwidths)
    records = [record for measurement in measurements for record in measurement.records(bandwidth)]

    machine = machine_info(device, bandwidths, load)
    settings = dict(scale=args.scale, steps=args.steps, warmup=args.warmup, workloads=list(args.workloads),
                    algorithms=list(args.algorithms), torch_default=torch_default_variant(device))
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(records, machine, settings)
    (args.out / "results.md").write_text(table)
    results = dict(machine=machine, settings=settings, records=[asdict(r) for r in records])
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(records, args.out / "results.png")
    _say(f"wrote {args.out / 'results.md'}, results.json, results.png")
    print(table)
    return records


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=SCALES, default="full",
                        help="full: the real shapes; small: the same structure at toy sizes (default: full)")
    parser.add_argument("--workloads", type=_names(WORKLOADS), default=DEFAULT_WORKLOADS,
                        help=f"comma-separated, from {', '.join(WORKLOADS)} "
                             f"(default: {','.join(DEFAULT_WORKLOADS)})")
    parser.add_argument("--algorithms", type=_names(ALGORITHMS), default=tuple(ALGORITHMS),
                        help=f"comma-separated, from {', '.join(ALGORITHMS)} (default: all)")
    parser.add_argument("--steps", type=_at_least(1), default=20, help="timed rounds (default: 20)")
    parser.add_argument("--warmup", type=_at_least(1), default=3,
                        help="untimed rounds first; the first step creates the optimizer state (default: 3)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    return parser.parse_args(argv)


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
def machine_info(device: torch.device, bandwidths: Sequence[float], load_average: float) -> dict:
    return dict(
        cpu=_cpu_model(),
        logical_cpus=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        device=str(device),
        bandwidth_gb_s=round(max(bandwidths) / 1e9, 2),  # the roofline's: the best sample
        bandwidth_samples_gb_s=[round(sample / 1e9, 2) for sample in bandwidths],
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
    """The report: machine, the roofline of each workload, then one row per variant."""
    lines = [
        "# Optimizer step benchmark",
        "",
        f"- Machine: {machine['cpu']}; {machine['logical_cpus']} logical CPUs, "
        f"torch.get_num_threads() = {machine['torch_threads']}; device {machine['device']}",
        f"- Software: torch {machine['torch']}, Python {machine['python']}, {machine['platform']}",
        f"- Date: {machine['date']}",
        f"- Load average at start: {machine['load_average']:.2f} (other work on the machine; "
        f"above ~0.5, expect noisy timings)",
        f"- Run: scale {settings['scale']}, {settings['steps']} timed steps after {settings['warmup']} warm-up, "
        f"variants interleaved round-robin; torch default here is {settings['torch_default']}",
        f"- Memory bandwidth (best streaming kernel, best of {len(machine['bandwidth_samples_gb_s'])} samples "
        f"over the run): {machine['bandwidth_gb_s']:.1f} GB/s",
        "- Variants: " + "; ".join(f"{v.name}: {v.description}" for v in VARIANTS
                                   if any(r.variant == v.name for r in records)),
        "",
        "| workload | algorithm | tensors | elements | min traffic MB/step | roofline ms |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for first in _unique(records, key=lambda r: (r.workload, r.algorithm)):
        lines.append(f"| {first.workload} | {first.algorithm} | {first.tensors} | {first.elements:,} "
                     f"| {first.min_bytes / 1e6:,.1f} | {_fmt(first.roofline_ms)} |")
    lines += [
        "",
        "| workload | algorithm | variant | median ms | min ms | max ms | × torch default | × roofline "
        "| peak extra MiB |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in records:
        x_default = "—" if r.x_torch_default is None else f"{r.x_torch_default:.2f}"
        cells = [r.workload, r.algorithm, r.variant, _fmt(r.median_ms), _fmt(r.min_ms), _fmt(r.max_ms), x_default,
                 _fmt(r.x_roofline), _fmt(r.peak_extra_bytes / 2**20)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    """One panel per workload, a group of bars per algorithm, a bar per variant, labelled x roofline.

    Bars are medians and whiskers the quartiles (min and max are in the table: on a busy machine
    a few slow rounds would stretch the axis until the bars cannot be compared).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    workloads = [r.workload for r in _unique(records, key=lambda r: r.workload)]
    variants = [v.name for v in VARIANTS]
    colors = {name: f"C{i}" for i, name in enumerate(variants)}
    figure = Figure(figsize=(4.5 * len(workloads), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(workloads), squeeze=False)[0]
    width = 0.8 / len(variants)
    for ax, workload in zip(axes, workloads):
        rows = [r for r in records if r.workload == workload]
        algorithms = [r.algorithm for r in _unique(rows, key=lambda r: r.algorithm)]
        for group, algorithm in enumerate(algorithms):
            group_rows = [r for r in rows if r.algorithm == algorithm]
            for r in group_rows:
                x = group - 0.4 + width * (variants.index(r.variant) + 0.5)
                low, high = r.quartiles_ms
                ax.bar(x, r.median_ms, width, color=colors[r.variant], label=r.variant,
                       yerr=[[max(r.median_ms - low, 0)], [max(high - r.median_ms, 0)]], capsize=2)
                ax.annotate(f"{r.x_roofline:.1f}×", (x, max(high, r.median_ms)), xytext=(0, 2),
                            textcoords="offset points", ha="center", va="bottom", fontsize="x-small")
            ax.hlines(group_rows[0].roofline_ms, group - 0.45, group + 0.45, colors="black",
                      linestyles="dashed", label="roofline (bar labels: time / roofline)")
        ax.set_xticks(range(len(algorithms)), algorithms)
        ax.set_title(f"{workload} ({rows[0].tensors} tensors, {rows[0].elements:,} elements)", fontsize="medium")
        ax.set_ylabel("ms per step (median, quartiles)")
        ax.margins(y=0.1)
    handles = {}
    for ax in axes:  # one legend entry per label, across panels
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    figure.legend(handles.values(), handles.keys(), loc="outside upper center", ncols=len(handles),
                  fontsize="small")
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
