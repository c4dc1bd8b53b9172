"""torch.compile around ``opt.step()``: our Adam against torch.optim.Adam, compiled the same way.

torch's recipe for compiling the optimizer (its tutorials "Compiling the optimizer with
torch.compile" and "Running the compiled optimizer with an LR scheduler") compiles the step::

    @torch.compile(fullgraph=False)
    def step():
        opt.step()

with the lr a tensor, so that a scheduler's new lr changes a tensor's value rather than a
constant baked into the graph. This builds that step for torch.optim.Adam and for
``wrappers.Adam`` (its default list path, ``flat=True``, and ``flat=True, compiled=True``,
whose own compiled rules then run inside the outer compile), with a tensor lr and with a float
lr, on a tiny and a medium set of params with fixed random grads (no backward), and prints per
variant:

- graphs: how many graphs dynamo compiled on the first call, and then over the timed steps (0
  when the lr schedule never recompiles; dynamo stops recompiling a frame after
  ``torch._dynamo.config.recompile_limit`` graphs, 8 by default, and runs it eagerly from then on);
- first call: its seconds (tracing, compiling, creating the state);
- ms per step: the median and the least over the steps after the first, with a cosine lr
  schedule stepped between calls (untimed): ``--steps`` of them, or fewer once they took
  ``--budget`` seconds and at least 3 ran (a variant that recompiles at every step takes
  seconds per step);
- × torch.optim: that median over torch.optim.Adam's with the same kind of lr.

Each variant starts from cleared dynamo caches (``torch.compiler.reset()``), so it pays its own
compiling; inductor's on-disk cache stays, as in :func:`benchmarks.measure.time_first_step`.
Variants run one after another, not interleaved (each would clear the others' compiled code):
compare them on a quiet machine. ::

    python -m benchmarks.compiled_step                        # both models, both lrs, every variant
    python -m benchmarks.compiled_step --models tiny --steps 5 --lrs tensor --variants torch,ours-compiled

``--backend eager`` has dynamo trace and count graphs without inductor compiling them (the
tests' smoke run); our ``compiled=True`` rules are compiled by inductor whatever the backend.
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod

import torch
from torch.optim import Optimizer, lr_scheduler

import wrappers
from optkernels._torch_private import dynamo_counters

from .measure import _gc_disabled, synchronize
from .report import _fmt
from .workloads import gpt2_shapes

LR = 1e-2
MODELS: dict[str, tuple[tuple[int, ...], ...]] = {
    "tiny": ((64, 64), (64,)) * 5,                                        # 10 params, 20,800 elements
    "medium": gpt2_shapes(n_embd=128, n_layer=4, vocab=4096, n_ctx=256),  # 52 params, 1,350,400 elements
}
LRS: dict[str, Callable[[], float | torch.Tensor]] = {"tensor": lambda: torch.tensor(LR), "float": lambda: LR}
MIN_STEPS = 3  # timed steps at least, whatever the budget


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    build: Callable[..., Optimizer]  # (params, lr=...) -> the optimizer


VARIANTS = (
    Variant("torch", "torch.optim.Adam", torch.optim.Adam),
    Variant("ours", "wrappers.Adam", wrappers.Adam),
    Variant("ours-flat", "wrappers.Adam(flat=True)", lambda params, lr: wrappers.Adam(params, lr=lr, flat=True)),
    Variant("ours-compiled", "wrappers.Adam(flat=True, compiled=True)",
            lambda params, lr: wrappers.Adam(params, lr=lr, flat=True, compiled=True)),
)
BASELINE = "torch"


@dataclass(frozen=True)
class Row:
    model: str
    lr: str
    variant: str
    first_graphs: int   # compiled by the first call
    later_graphs: int   # compiled by the timed calls after it
    first_s: float
    median_ms: float    # of the timed calls
    min_ms: float       # of the timed calls: on a busy machine, closer to what the code can do
    steps: int          # timed calls


def measure(variant: Variant, model: str, lr: str, *, steps: int, budget_s: float, backend: str,
            device: torch.device) -> Row:
    """Build the variant on fresh params; time its compiled step's first call, then the later ones."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator).to(device)) for shape in MODELS[model]]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator).to(device)
    optimizer = variant.build(params, lr=LRS[lr]())
    schedule = lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps + 1)

    @torch.compile(fullgraph=False, backend=backend)
    def compiled_step():
        optimizer.step()

    stats = dynamo_counters()["stats"]
    torch.compiler.reset()
    seconds, graphs = [], [stats["unique_graphs"]]
    with _gc_disabled():
        for _ in range(1 + steps):
            synchronize(device)
            start = time.perf_counter()
            compiled_step()
            synchronize(device)
            seconds.append(time.perf_counter() - start)
            graphs.append(stats["unique_graphs"])
            schedule.step()
            if len(seconds) > MIN_STEPS and sum(seconds[1:]) >= budget_s:
                break
    torch.compiler.reset()
    return Row(model, lr, variant.name, first_graphs=graphs[1] - graphs[0], later_graphs=graphs[-1] - graphs[1],
               first_s=seconds[0], median_ms=statistics.median(seconds[1:]) * 1e3, min_ms=min(seconds[1:]) * 1e3,
               steps=len(seconds) - 1)


def run(models: Sequence[str], lrs: Sequence[str], variants: Sequence[Variant], **options) -> list[Row]:
    rows = []
    for model in models:
        for lr in lrs:
            for variant in variants:
                row = measure(variant, model, lr, **options)
                rows.append(row)
                print(f"[{model} {lr} lr] {variant.label}: {row.first_graphs} + {row.later_graphs} graphs, first "
                      f"call {row.first_s:.2f} s, {row.median_ms:.3f} ms per step over {row.steps} steps",
                      file=sys.stderr, flush=True)
    return rows


def markdown(rows: Sequence[Row]) -> str:
    labels = {variant.name: variant.label for variant in VARIANTS}
    baseline = {(row.model, row.lr): row.median_ms for row in rows if row.variant == BASELINE}
    lines = [
        "| model | lr | optimizer | graphs, first call | graphs, later calls | first call s "
        "| ms per later call, median | least | later calls | median × torch.optim |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        base = baseline.get((row.model, row.lr))
        ratio = _fmt(row.median_ms / base) if base else "—"
        lines.append(f"| {row.model} | {row.lr} | {labels[row.variant]} | {row.first_graphs} | {row.later_graphs} "
                     f"| {_fmt(row.first_s)} | {_fmt(row.median_ms)} | {_fmt(row.min_ms)} | {row.steps} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run with command-line ``argv``; print the table and return its rows."""
    args = parse_args(argv)
    device = torch.device(args.device)
    header = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device.type}, backend {args.backend}, "
        f"load average {os.getloadavg()[0]:.2f} at the start; up to {args.steps} calls after the first, "
        f"or {args.budget:g} s of them (at least {MIN_STEPS})",
        "models: " + "; ".join(f"{name} {len(MODELS[name])} params, {sum(map(prod, MODELS[name])):,} elements"
                               for name in args.models),
    ]
    rows = run(args.models, args.lrs, [variant for variant in VARIANTS if variant.name in args.variants],
               steps=args.steps, budget_s=args.budget, backend=args.backend, device=device)
    print("\n".join(header) + "\n\n" + markdown(rows))
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    def names(known):
        def parse(text: str) -> tuple[str, ...]:
            chosen = tuple(name.strip() for name in text.split(",") if name.strip())
            if not chosen or any(name not in known for name in chosen):
                raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(known)}")
            return chosen
        return parse

    variant_names = [variant.name for variant in VARIANTS]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compiled_step", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=names(MODELS), default=tuple(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)} (default: all)")
    parser.add_argument("--lrs", type=names(LRS), default=tuple(LRS),
                        help="comma-separated: the lr as a tensor, as a float (default: both)")
    parser.add_argument("--variants", type=names(variant_names), default=tuple(variant_names),
                        help=f"comma-separated, from {', '.join(variant_names)} (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="timed calls after the first, at most (default: 20)")
    parser.add_argument("--budget", type=float, default=20.0,
                        help=f"seconds of timed calls per row, after which timing stops once {MIN_STEPS} ran "
                             "(default: 20)")
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend (default: inductor)")
    parser.add_argument("--device", default="cpu", help="default: cpu")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


if __name__ == "__main__":
    main()
