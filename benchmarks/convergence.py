"""Evidence on real data: every algorithm trains three small models, ours beside torch.optim.

    python -m benchmarks.convergence                    # every task and algorithm (about 4 min on 2 cores)
    python -m benchmarks.convergence --scale small      # a quarter of the steps
    python -m benchmarks.convergence --tasks digits --algorithms adam,sgd --steps 50 --out /tmp/convergence

The tasks (:mod:`benchmarks.tasks`): the tutorial's two-layer MLP on random data (500 full-batch
steps), an MNIST-style CNN on scikit-learn's handwritten digits (7 epochs; test accuracy), a
character-level transformer on the standard library's sources (120 steps; validation loss, beside
the text's unigram entropy). Small enough that 168 runs fit in minutes on a CPU.

Each algorithm of :data:`ALGORITHMS` trains each task several ways (:data:`VARIANTS`), from the
same initial weights, on the same batches, with the same dropout draws:

- ``torch``: the torch.optim class in the mode our default equals bit for bit
  (``tests/configs.py``'s ``PARITY``): its CPU default (the for-loop) for all but RAdam and NAdam,
  whose for-loop orders the ops otherwise, so ``foreach=True`` for those. AdaBelief, which torch
  lacks: the official package's per-param loop, its rule as transcribed in ``tests/reference.py``
  (``adabelief-pytorch`` 0.2.1 cannot be installed here), in a minimal ``Optimizer``.
- ``ours``: our wrapper in its default mode (foreach on lists). Expected: every step's loss and
  every evaluation equal to torch's, bit for bit.
- ``ours-flat``: ``flat=True`` where the wrapper is elementwise (all but Adafactor and Muon):
  torch's ops in torch's order on one buffer per group. Expected: bit for bit, as ``ours``.
- ``ours-fast``: ``flat=True, compiled=True`` where the wrapper is elementwise. Its fused ops round
  differently, by about 1e-7 per step (for one, torch's eager ``sqrt`` on the CPU is MKL's, not
  correctly rounded: 0.7 % of float32 results differ from the compiled loop's exact square root by
  an ulp, so no compiled rule can equal eager bit for bit there).
  Training carries that along at that size while it is stable, and amplifies it where it is
  chaotic (minibatches at a high learning rate; RMSprop and Adadelta blowing up past the MLP's
  minimum), so the final losses differ from torch's by up to a few percent there, as torch's own
  fused mode does from its for-loop:
- ``torch-fused``: torch's ``fused=True`` where it has a CPU kernel (Adam, AdamW, SGD, Adagrad), the
  yardstick for that spread.
- ``torch-nudged``: torch at its learning rate times 1 + 1e-4, the yardstick of how sensitive each
  task's final loss is: a change of every update by 0.01 %, smaller than bf16's rounding (0.4 %),
  moves the digits CNN's test loss by percents (its 360 test images, 7 epochs of minibatches).
- ``ours-bf16``, ``ours-8bit``: low-precision moments (``state_precision``; Adam, AdamW, RAdam,
  NAdam, AdaBelief), default mode otherwise. Another update, so their final losses say how much quality the
  precision costs (the target: within 1 % of fp32's). 8-bit applies to params of 4,096 elements
  and more: the MLP's first layer; the CNN's second convolution and first linear layer; the
  language model's embedding, output and feed-forward weights.

The first compiled run compiles (about 15 s on a fresh machine, then a second or two per rule).

The algorithms are the registry's (``wrappers.registry``): every entry with a learning rate for
these tasks (``convergence_lr``). Hyperparameters are the registry's (torch's defaults, SGD with
momentum 0.9), and one learning rate per algorithm and task. Muon takes 2-D params only: as torch.optim.Muon's documentation
advises, the other params (biases, norms, convolution kernels) go to AdamW at its rate for the task.
Not here: LBFGS (a full-batch method whose step re-evaluates the model up to 25 times: not
comparable step for step) and SparseAdam (sparse gradients; these models have none).

Runs use one thread (``--threads``): the numbers then do not depend on the machine's core count,
and on a shared CPU one thread is also the faster. Writes to ``--out`` (default
``benchmarks/results``): ``convergence.md`` (a summary per algorithm, then every run),
``convergence.png`` (one panel per task and metric, every run's curve), ``convergence.json``
(``{"machine", "settings", "tasks", "runs"}``, each run with its per-step losses and evaluations);
one progress line per run on stderr.
"""

import argparse
import datetime
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from wrappers import registry
from wrappers.adam import LowPrecisionMoments

from .tasks import TASKS, CharLM, Task

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SCALES = {"full": 1.0, "small": 0.25}  # fraction of each task's default steps
EVALUATIONS = 10  # per run, evenly spaced, the last after the last step
LOSS_FLOOR = 1e-6  # of the first loss: relative differences of losses below it are taken relative to it

# Algorithms that train only a model's matrices: the other params go to AdamW at its rate for the task.
MATRICES_ONLY = frozenset({"muon"})


@dataclass(frozen=True)
class Algorithm:
    """One registry entry (``wrappers.registry``) as the report trains it."""

    entry: registry.Algorithm

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def wrapper(self) -> type[Optimizer]:
        return self.entry.wrapper

    @property
    def torch_class(self) -> type[Optimizer] | None:
        return self.entry.torch_class

    @property
    def options(self) -> dict[str, Any]:
        """Constructor kwargs besides lr: the registry's (torch's defaults, SGD's momentum 0.9, ...)."""
        return {name: value for name, value in self.entry.options.items() if name != "lr"}

    @property
    def torch_mode(self) -> dict[str, bool]:
        """The torch.optim mode ours equals bit for bit: its for-loop (the CPU default), or foreach
        where the registry says ours follows that op order (RAdam, NAdam)."""
        exact = self.entry.parity.exact_modes
        return dict(foreach=True) if exact is not None and exact == frozenset({"foreach"}) else {}

    @property
    def matrices_only(self) -> bool:
        return self.name in MATRICES_ONLY

    def lr(self, task: str) -> float:
        return self.entry.convergence_lr[task]


def algorithms() -> dict[str, Algorithm]:
    """Every registered algorithm with a learning rate for the report's tasks, read from the registry now.

    The rates (``convergence_lr`` in ``wrappers.registry``): the best of a sweep by factors of
    about 3 around torch's default (the MLP: around the tutorial's 1e-4), seed 0, at about the
    default scale, by the final train loss (mlp), test loss (digits) or validation loss (charlm);
    between equals, the default.
    """
    return {name: Algorithm(entry) for name, entry in registry.ALGORITHMS.items() if entry.convergence_lr}


ALGORITHMS: dict[str, Algorithm] = algorithms()


# --- the variants: how one algorithm is built on a model's params ----------------------------------
class Chain:
    """Several optimizers stepped as one: Muon's on the matrices, AdamW's on the other params."""

    def __init__(self, *optimizers: Optimizer) -> None:
        self.optimizers = optimizers

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad()

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


Builder = Callable[[list[Tensor], float], Optimizer]  # (params, lr) -> an optimizer


def _torch(algorithm: Algorithm) -> Builder | None:
    if algorithm.torch_class is None:  # the reference implementation's own optimizer
        return lambda params, lr: algorithm.entry.reference_class()(params, lr=lr, **algorithm.options)
    return lambda params, lr: algorithm.torch_class(params, lr=lr, **algorithm.options, **algorithm.torch_mode)


def _torch_fused(algorithm: Algorithm) -> Builder | None:
    if algorithm.torch_class is None or algorithm.matrices_only:
        return None
    try:  # torch checks on construction that the class has a fused kernel for the device
        algorithm.torch_class([torch.zeros(1)], **algorithm.options, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return None
    return lambda params, lr: algorithm.torch_class(params, lr=lr, **algorithm.options, fused=True)


LR_NUDGE = 1e-4  # torch-nudged's relative change of the learning rate


def _torch_nudged(algorithm: Algorithm) -> Builder | None:
    build = _torch(algorithm)
    return lambda params, lr: build(params, lr * (1 + LR_NUDGE))


def _ours(algorithm: Algorithm) -> Builder | None:
    return lambda params, lr: algorithm.wrapper(params, lr=lr, **algorithm.options)


def _ours_flat(algorithm: Algorithm) -> Builder | None:
    if not algorithm.wrapper.elementwise:
        return None  # no flat mode
    return lambda params, lr: algorithm.wrapper(params, lr=lr, **algorithm.options, flat=True)


def _ours_low_precision(state_precision: str) -> Callable[[Algorithm], Builder | None]:
    def builder(algorithm: Algorithm) -> Builder | None:
        if not issubclass(algorithm.wrapper, LowPrecisionMoments):
            return None  # no such option
        return lambda params, lr: algorithm.wrapper(params, lr=lr, **algorithm.options,
                                                    state_precision=state_precision)
    return builder


def _ours_fast(algorithm: Algorithm) -> Builder | None:
    if not algorithm.wrapper.elementwise:
        return None  # no faster mode than the default
    return lambda params, lr: algorithm.wrapper(params, lr=lr, **algorithm.options, flat=True, compiled=True)


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    builder: Callable[[Algorithm], Builder | None]  # returns None where the algorithm has no such variant
    is_baseline: bool = False  # the variant the others are compared with


VARIANTS: dict[str, Variant] = {variant.name: variant for variant in (
    Variant("torch", "the torch.optim class in the mode ours follows op for op (an algorithm torch lacks: its "
            "reference implementation)",
            _torch, is_baseline=True),
    Variant("ours", "our wrapper, default mode (foreach on lists)", _ours),
    Variant("ours-flat", "our wrapper, flat=True (elementwise algorithms only): torch's ops on one buffer per "
            "group", _ours_flat),
    Variant("ours-fast", "our wrapper, flat=True, compiled=True (elementwise algorithms only): one compiled "
            "pass", _ours_fast),
    Variant("ours-bf16", "our wrapper, state_precision='bf16' (moments in bfloat16, stochastically rounded; "
            "Adam, AdamW, RAdam, NAdam, AdaBelief)", _ours_low_precision("bf16")),
    Variant("ours-8bit", "our wrapper, state_precision='8bit' (moments of params of 4,096 elements and more as "
            "blockwise 8-bit codes, stochastically rounded; Adam, AdamW, RAdam, NAdam, AdaBelief)",
            _ours_low_precision("8bit")),
    Variant("torch-fused", "the torch.optim class, fused=True, where torch has a fused CPU kernel: a yardstick, "
            "how far another rounding of the same update moves the curves", _torch_fused),
    Variant("torch-nudged", f"the torch.optim class at its learning rate times 1 + {LR_NUDGE:g}: a yardstick, how far "
            "a change of the update far below any low-precision format's rounding moves the final losses",
            _torch_nudged),
)}


def make_optimizer(algorithm: Algorithm, variant: Variant, task: str, model: nn.Module) -> Optimizer | Chain | None:
    """``variant`` of ``algorithm`` on ``model``'s params at the task's lr; None where there is no such variant."""
    build = variant.builder(algorithm)
    if build is None:
        return None
    params = list(model.parameters())
    if not algorithm.matrices_only:
        return build(params, algorithm.lr(task))
    adamw = Algorithm(registry.ALGORITHMS["adamw"])
    return Chain(build([p for p in params if p.dim() == 2], algorithm.lr(task)),
                 variant.builder(adamw)([p for p in params if p.dim() != 2], adamw.lr(task)))


# --- training -----------------------------------------------------------------------------------------
@dataclass
class Run:
    """One variant of one algorithm trained on one task: its curves."""

    task: str
    algorithm: str
    variant: str
    lr: float
    losses: list[float]  # the training batch's loss at each step, before that step's update
    evals: dict[str, list[float]]  # "step" (steps taken), then each of the task's metrics
    seconds: float

    @property
    def final(self) -> dict[str, float]:
        return {name: values[-1] for name, values in self.evals.items() if name != "step"}


def train(task: Task, algorithm: Algorithm, variant: Variant, evaluations: int = EVALUATIONS) -> Run | None:
    """Train a fresh model of ``task`` with ``variant`` of ``algorithm``; None where there is no such variant.

    Evaluates ``evaluations`` times, evenly spaced, the last after the last step. A minibatch
    task's ``train_loss`` there is the mean batch loss since the previous evaluation."""
    model = task.model()
    optimizer = make_optimizer(algorithm, variant, task.name, model)
    if optimizer is None:
        return None
    every = max(1, task.steps // evaluations)
    losses, evals = [], {"step": []}
    task.batch(0)  # loads the data set, once per process: not part of any run's time
    start = time.perf_counter()
    # schedule-free optimizers step in train mode and are evaluated in eval mode (their x, not y)
    schedule_free = hasattr(optimizer, "train")
    with torch.random.fork_rng():
        torch.manual_seed(task.seed)  # dropout: the same draws in every run
        if schedule_free:
            optimizer.train()
        for step in range(1, task.steps + 1):
            optimizer.zero_grad()
            loss = task.loss(model, task.batch(step - 1))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if step % every == 0 or step == task.steps:
                since = losses[evals["step"][-1] if evals["step"] else 0:]
                if schedule_free:
                    optimizer.eval()
                metrics = {"train_loss": sum(since) / len(since)} | task.evaluate(model)
                if schedule_free:
                    optimizer.train()
                evals["step"].append(step)
                for name, value in metrics.items():
                    evals.setdefault(name, []).append(value)
    return Run(task.name, algorithm.name, variant.name, algorithm.lr(task.name), losses, evals,
               time.perf_counter() - start)


def same_curves(run: Run, baseline: Run) -> bool:
    """Every step's loss and every evaluation equal, bit for bit."""
    return run.losses == baseline.losses and run.evals == baseline.evals


def relative_difference(run: Run, baseline: Run) -> float:
    """The largest difference of the final losses, relative to the baseline's, or to a millionth of
    its first loss where the final one is smaller: the MLP's loss falls by nine orders of magnitude,
    down to where the rounding of any fp32 update sets its digits. (Accuracy, counted in whole
    images, is left out.)"""
    floor = LOSS_FLOOR * abs(baseline.losses[0])
    return max(abs(run.final[name] - value) / max(abs(value), floor)
               for name, value in baseline.final.items() if name.endswith("loss"))


def run_all(tasks: Sequence[Task], algorithms: Sequence[Algorithm], variants: Sequence[Variant],
            progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> list[Run]:
    count = len(tasks) * len(algorithms) * len(variants)
    runs, done, start = [], 0, time.perf_counter()
    for task in tasks:
        for algorithm in algorithms:
            for variant in variants:
                done += 1
                run = train(task, algorithm, variant)
                if run is None:
                    progress(f"[{done}/{count}] {task.name} {algorithm.name} {variant.name}: none (no such variant)")
                    continue
                runs.append(run)
                finals = ", ".join(f"{name} {value:.4g}" for name, value in run.final.items())
                progress(f"[{done}/{count}] {task.name} {algorithm.name} {variant.name} (lr {run.lr:g}): {finals} "
                         f"in {run.seconds:.1f} s; {time.perf_counter() - start:.0f} s so far")
    return runs


# --- the outputs -------------------------------------------------------------------------------------
METRIC_TITLES = {"train_loss": "train loss", "test_loss": "test loss", "test_accuracy": "test accuracy",
                 "val_loss": "validation loss"}


def _baselines(runs: Sequence[Run]) -> dict[tuple[str, str], Run]:
    base = {name for name, variant in VARIANTS.items() if variant.is_baseline}
    return {(run.task, run.algorithm): run for run in runs if run.variant in base}


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _comparison(run: Run | None, baseline: Run | None) -> str:
    """"bit for bit", or the relative difference of the final losses; empty where either did not run."""
    if run is None or baseline is None or run is baseline:
        return ""
    return "bit for bit" if same_curves(run, baseline) else f"{relative_difference(run, baseline):.1e}"


HEADLINE = {"mlp": "train_loss", "digits": "test_accuracy", "charlm": "val_loss"}  # a task's one number


def summary_table(runs: Sequence[Run], tasks: Sequence[Task]) -> list[str]:
    """One row per algorithm: its lr and torch's headline number on each task, then how each other
    variant compares with torch, task by task ("=": bit for bit)."""
    index = {(run.task, run.algorithm, run.variant): run for run in runs}
    baseline = next(name for name, variant in VARIANTS.items() if variant.is_baseline)
    compared = [name for name in VARIANTS if name != baseline and any(run.variant == name for run in runs)]
    per_task = " / ".join(task.name for task in tasks)
    columns = ([f"lr: {per_task}"] + [f"{task.name} {METRIC_TITLES[HEADLINE[task.name]]}" for task in tasks]
               + [f"{name} vs {baseline}" for name in compared])
    lines = [f"| algorithm | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for algorithm in dict.fromkeys(run.algorithm for run in runs):
        results = []
        for task in tasks:
            run = index.get((task.name, algorithm, baseline))
            value = run.final[HEADLINE[task.name]] if run else None
            results.append("" if value is None else f"{value:.1%}" if HEADLINE[task.name].endswith("accuracy")
                           else _fmt(value))
        comparisons = []
        for name in compared:
            cells = [_comparison(index.get((task.name, algorithm, name)), index.get((task.name, algorithm, baseline)))
                     for task in tasks]
            comparisons.append("" if not any(cells) else "bit for bit" if set(cells) == {"bit for bit"}
                               else " / ".join(cell.replace("bit for bit", "=") or "-" for cell in cells))
        rates = " / ".join(f"{ALGORITHMS[algorithm].lr(task.name):g}" for task in tasks)
        lines.append(f"| {algorithm} | {rates} | {' | '.join(results + comparisons)} |")
    return lines


def runs_table(runs: Sequence[Run]) -> list[str]:
    baselines = _baselines(runs)
    metrics = list(dict.fromkeys(name for run in runs for name in run.final))  # train loss first
    lines = [f"| task | algorithm | variant | lr | {' | '.join(METRIC_TITLES[m] for m in metrics)} | vs torch | s |",
             "|---" * (len(metrics) + 6) + "|"]
    for run in runs:
        values = [("" if m not in run.final else f"{run.final[m]:.2%}" if m.endswith("accuracy")
                   else _fmt(run.final[m])) for m in metrics]
        lines.append(f"| {run.task} | {run.algorithm} | {run.variant} | {run.lr:g} | {' | '.join(values)} | "
                     f"{_comparison(run, baselines.get((run.task, run.algorithm)))} | {run.seconds:.1f} |")
    return lines


def markdown(runs: Sequence[Run], tasks: Sequence[Task], machine: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = ["# Convergence: ours against torch.optim on three training tasks", "",
             f"{machine['cpu']}, torch {machine['torch']}, Python {machine['python']}, {settings['threads']} thread(s), "
             f"scale {settings['scale']}, seed {settings['seed']}, {settings['seconds']:.0f} s.", "",
             "Tasks:"]
    for task in tasks:
        extra = f"; unigram entropy of the training text {task.entropy:.3f} nats" if isinstance(task, CharLM) else ""
        lines.append(f"- `{task.name}`: {task.description}; {task.steps} steps{extra}.")
    lines += ["", "Variants:"] + [f"- `{v.name}`: {v.description}." for v in VARIANTS.values()
                                  if v.name in settings["variants"]]
    lines += ["", "## Summary", "",
              "torch's final numbers, then how each variant compares with torch on each task: \"bit for bit\" "
              "(\"=\") where every step's loss and every evaluation are equal, else the largest relative difference "
              f"of the final losses (relative to {LOSS_FLOOR:g} of the first loss at least); \"-\": no such run.", ""]
    lines += summary_table(runs, tasks)
    lines += ["", "Where ours-fast differs from torch: its fused ops round differently, by about 1e-7 relative "
              "per step (torch's eager square root on the CPU is MKL's, not correctly rounded; the compiled "
              "loop's is), while ours-flat, the same flat buffers without compiling, keeps torch's ops and "
              "their rounding. Training keeps that size while it is stable and amplifies it where it is chaotic "
              "(minibatches at a high learning rate; RMSprop and Adadelta blowing up past the MLP's minimum), "
              "as it amplifies the rounding of torch's own fused mode (torch-fused)."]
    lines += ["", "## Every run", "", "Final evaluations (losses in nats).", ""] + runs_table(runs)
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[Run], tasks: Sequence[Task], path: Path) -> None:
    """One panel per task and metric: each algorithm one colour, each variant one line style (not
    ours-flat, whose curves are ours', bit for bit, as the table says, nor ours-bf16, which the
    table gives: a panel has lines enough)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    panels = [(task, metric) for task in tasks for metric in task.metrics
              if metric != "test_loss" and any(run.task == task.name for run in runs)]
    algorithms = list(dict.fromkeys(run.algorithm for run in runs))
    colours = {name: f"C{i}" if len(algorithms) <= 10 else _tab20(i) for i, name in enumerate(algorithms)}
    styles = {"torch": dict(linestyle="-", linewidth=3, alpha=0.35), "ours": dict(linestyle="--", linewidth=1.2),
              "ours-fast": dict(linestyle=":", linewidth=1.5), "torch-fused": dict(linestyle="-.", linewidth=0.8),
              "ours-8bit": dict(linestyle=(0, (1, 3)), linewidth=1.2)}
    columns = 3
    rows = math.ceil((len(panels) + 1) / columns)
    figure = Figure(figsize=(5 * columns, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (task, metric) in zip(axes, panels):
        for run in runs:
            if run.task == task.name and run.variant in styles:
                steps, values = _train_curve(run, task) if metric == "train_loss" else (run.evals["step"],
                                                                                          run.evals[metric])
                ax.plot(steps, values, color=colours[run.algorithm], **styles[run.variant])
        if isinstance(task, CharLM):
            ax.axhline(task.entropy, color="black", linewidth=0.8, linestyle="-.")
            ax.text(0.98, task.entropy, "unigram entropy", transform=ax.get_yaxis_transform(), ha="right",
                    va="bottom", fontsize=8)
        elif metric.endswith("accuracy"):
            ax.set_ylim(0.8, 1.0)  # the early evaluations, below, are off the panel
        else:
            ax.set_yscale("log")
        ax.set(title=f"{task.name}: {METRIC_TITLES[metric]}", xlabel="step")
        ax.grid(alpha=0.3)
    legend_ax = axes[len(panels)]
    legend_ax.axis("off")
    handles = [Line2D([], [], color=colours[name], linewidth=2) for name in algorithms]
    variants = [name for name in styles if any(run.variant == name for run in runs)]
    handles += [Line2D([], [], color="grey", **styles[name]) for name in variants]
    legend_ax.legend(handles, algorithms + variants, loc="center", ncol=2, frameon=False)
    for ax in axes[len(panels) + 1:]:
        ax.axis("off")
    figure.savefig(path, dpi=100)


def _train_curve(run: Run, task: Task, points: int = 50) -> tuple[list[int], list[float]]:
    """Every step's loss for a full-batch task; else means over windows of steps, as the evaluations' train loss."""
    if task.full_batch:
        return list(range(1, len(run.losses) + 1)), run.losses
    width = max(1, len(run.losses) // points)
    starts = range(0, len(run.losses) - width + 1, width)
    return [start + width for start in starts], [sum(run.losses[start:start + width]) / width for start in starts]


def _tab20(i: int) -> tuple[float, ...]:
    """tab20's ten dark colours first, then the light ones: neighbours in the list look apart."""
    from matplotlib import colormaps
    return colormaps["tab20"](2 * i % 20 + 2 * i // 20 % 2)


def machine_info() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "system": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def write(runs: Sequence[Run], tasks: Sequence[Task], settings: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    (out / "convergence.md").write_text(markdown(runs, tasks, machine, settings))
    task_info = {task.name: {"description": task.description, "steps": task.steps, "metrics": list(task.metrics)}
                 | ({"unigram_entropy": task.entropy} if isinstance(task, CharLM) else {}) for task in tasks}
    (out / "convergence.json").write_text(json.dumps(
        {"machine": machine, "settings": settings, "tasks": task_info,
         "runs": [asdict(run) | {"final": run.final} for run in runs]}))
    plot(runs, tasks, out / "convergence.png")


def _names(text: str, known: dict[str, Any], what: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def main(argv: Sequence[str] | None = None) -> list[Run]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.convergence", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="full")
    parser.add_argument("--steps", type=int, help="steps per run on every task (overrides --scale)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    tasks = [TASKS[name](steps=args.steps or max(1, round(TASKS[name].full_steps * SCALES[args.scale])),
                         seed=args.seed) for name in _names(args.tasks, TASKS, "tasks")]
    algorithms = [ALGORITHMS[name] for name in _names(args.algorithms, ALGORITHMS, "algorithms")]
    variants = [VARIANTS[name] for name in _names(args.variants, VARIANTS, "variants")]
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        start = time.perf_counter()
        runs = run_all(tasks, algorithms, variants)
        settings = {"scale": args.scale, "steps": {task.name: task.steps for task in tasks}, "seed": args.seed,
                    "threads": args.threads, "algorithms": [a.name for a in algorithms],
                    "variants": [v.name for v in variants],
                    "learning_rates": {a.name: dict(a.entry.convergence_lr) for a in algorithms},
                    "seconds": time.perf_counter() - start}
    finally:
        torch.set_num_threads(threads)
    write(runs, tasks, settings, args.out)
    print((args.out / "convergence.md").read_text())
    return runs


if __name__ == "__main__":
    main()
