"""Time our optimizers against torch.optim and the memory-bandwidth roofline; write a report.

    python -m benchmarks.report                       # every workload, full scale (~2-3 min, 2 cores)
    python -m benchmarks.report --scale small         # the same at toy sizes (seconds)
    python -m benchmarks.report --workloads gpt2 --steps 50 --out /tmp/bench

For each workload and algorithm, every variant of :mod:`benchmarks.variants` available on the
CPU steps its own copy of the same params and fixed random grads (no backward is timed);
the variants run interleaved, one step each per round, after warm-up rounds (see
:mod:`benchmarks.measure` for how time, bandwidth and peak memory are measured). The roofline
is the time one step needs to move the algorithm's minimum bytes at the measured bandwidth.

Default workloads: all three (gpt2, many-small, few-large). Measured on the 2-core reference
machine, a full default run takes about 2-3 minutes, most of it GPT-2; within the budget, so
nothing is left out by default.

Writes to ``--out`` (default ``benchmarks/results``): ``results.md`` (machine and tables),
``results.json`` (``{"machine", "settings", "records"}``), ``results.png`` (one panel per
workload: median ms per variant, min-max whiskers, the roofline as a dashed line); prints
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .measure import Progress, memory_bandwidth, peak_extra_bytes, time_interleaved
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
    roofline_ms: float
    min_bytes: int  # the algorithm's least traffic per step, which the roofline moves at full bandwidth
    peak_extra_bytes: int
    x_torch_default: float | None  # median over the median of torch's default mode; None without one
    x_roofline: float
    steps: int
    tensors: int
    elements: int


def benchmark(workload: Workload, algorithm: Algorithm, *, steps: int, warmup: int, device: torch.device,
              bandwidth: float, progress: Progress | None = None) -> list[Record]:
    """Time every variant of ``algorithm`` on ``workload``, then measure each one's peak memory."""
    params, grads = workload.tensors(seed=0, device=device), workload.tensors(seed=1, device=device)
    steppers = build_steppers(algorithm, params, grads, device)
    del params, grads  # each variant holds its own copies
    timings = time_interleaved(steppers, steps=steps, warmup=warmup, device=device, progress=progress)
    peaks = {name: peak_extra_bytes(step, device) for name, step in steppers.items()}
    min_bytes = algorithm.min_bytes(workload.numel, workload.element_size)
    roofline_ms = min_bytes / bandwidth * 1e3
    default = timings.get(torch_default_variant(device))
    return [
        Record(workload=workload.name, algorithm=algorithm.name, variant=name,
               median_ms=timing.median_ms, min_ms=timing.min_ms, max_ms=timing.max_ms,
               roofline_ms=roofline_ms, min_bytes=min_bytes, peak_extra_bytes=peaks[name],
               x_torch_default=timing.median_ms / default.median_ms if default else None,
               x_roofline=timing.median_ms / roofline_ms,
               steps=steps, tensors=len(workload.shapes), elements=workload.numel)
        for name, timing in timings.items()
    ]


# --- the command ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> list[Record]:
    args = parse_args(argv)
    device = torch.device("cpu")
    workloads = [get_workload(name, args.scale) for name in args.workloads]
    algorithms = [get_algorithm(name) for name in args.algorithms]

    _say("measuring memory bandwidth ...")
    bandwidth = memory_bandwidth(device)
    _say(f"memory bandwidth {bandwidth / 1e9:.1f} GB/s")
    records = []
    for workload in workloads:
        for algorithm in algorithms:
            _say(f"[{workload.name} {algorithm.name}] {workload.description}")
            records += benchmark(workload, algorithm, steps=args.steps, warmup=args.warmup, device=device,
                                 bandwidth=bandwidth,
                                 progress=lambda line, w=workload, a=algorithm: _say(f"[{w.name} {a.name}] {line}"))
            gc.collect()  # free this workload's tensors before the next is built

    machine = machine_info(device, bandwidth)
    settings = dict(scale=args.scale, steps=args.steps, warmup=args.warmup, workloads=list(args.workloads),
                    algorithms=list(args.algorithms), torch_default=torch_default_variant(device))
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(records, machine, settings)
    (args.out / "results.md").write_text(table)
    (args.out / "results.json").write_text(
        json.dumps(dict(machine=machine, settings=settings, records=[asdict(r) for r in records]), indent=2) + "\n")
    plot(records, args.out / "results.png")
    _say(f"wrote {args.out / 'results.md'}, results.json, results.png")
    print(table)
    return records


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=SCALES, default="full",
                        help="full: the real shapes; small: the same structure at toy sizes (default: full)")
    parser.add_argument("--workloads", type=_names(WORKLOADS), default=DEFAULT_WORKLOADS,
                        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: {','.join(DEFAULT_WORKLOADS)})")
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


# --- what is written -----------------------------------------------------------------------------
def machine_info(device: torch.device, bandwidth: float) -> dict:
    return dict(
        cpu=_cpu_model(),
        logical_cpus=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        device=str(device),
        bandwidth_gb_s=round(bandwidth / 1e9, 2),
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
        f"- Run: scale {settings['scale']}, {settings['steps']} timed steps after {settings['warmup']} warm-up, "
        f"variants interleaved round-robin; torch default here is {settings['torch_default']}",
        f"- Memory bandwidth (best streaming kernel): {machine['bandwidth_gb_s']:.1f} GB/s",
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
        lines.append(f"| {r.workload} | {r.algorithm} | {r.variant} | {_fmt(r.median_ms)} | {_fmt(r.min_ms)} "
                     f"| {_fmt(r.max_ms)} | {x_default} | {r.x_roofline:.2f} | {_fmt(r.peak_extra_bytes / 2**20)} |")
    return "\n".join(lines) + "\n"


def _fmt(ms: float) -> str:
    """About three significant digits, never in exponent form."""
    decimals = max(0, 2 - math.floor(math.log10(ms))) if ms > 0 else 0
    return f"{ms:,.{decimals}f}"


def _unique(records, key):
    seen = {}
    for record in records:
        seen.setdefault(key(record), record)
    return list(seen.values())


def plot(records: Sequence[Record], path: Path) -> None:
    """One panel per workload; within it a group of bars per algorithm, one bar per variant."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    workloads = [r.workload for r in _unique(records, key=lambda r: r.workload)]
    variants = [v.name for v in VARIANTS]
    colors = {name: f"C{i}" for i, name in enumerate(variants)}
    figure = Figure(figsize=(4.5 * len(workloads), 4.2), layout="constrained")
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
                ax.bar(x, r.median_ms, width, color=colors[r.variant],
                       yerr=[[r.median_ms - r.min_ms], [r.max_ms - r.median_ms]], capsize=2,
                       label=r.variant if group == 0 else None)
            ax.hlines(group_rows[0].roofline_ms, group - 0.45, group + 0.45, colors="black", linestyles="dashed",
                      label="roofline" if group == 0 else None)
        ax.set_xticks(range(len(algorithms)), algorithms)
        ax.set_title(f"{workload} ({rows[0].elements:,} elements)")
        ax.set_ylabel("ms per step (median, min-max)")
    axes[0].legend(fontsize="small")
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
