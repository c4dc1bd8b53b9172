"""Step in backward against torch's fused AdamW stepping after backward: memory and time of one
whole training step (forward + backward + step) of a GPT-2-small-shaped transformer.

The model: GPT-2 small's shape (12 blocks of width 768, 12 heads, MLP 3072, vocabulary 50257,
1024 positions, the output layer tied to the token embedding: 124 M params; ``--untied``: an
output layer of its own, 163 M params), run on a small batch
and context (``--batch 1 --context 64``) so that the optimizer's memory, not activations, sets the
peak. Variants, each on its own copy of the model (same init, same data):

- ``torch``: ``torch.optim.AdamW(fused=True)``, stepping after backward (``zero_grad`` after the step);
- ``ours-after``: ``wrappers.AdamW(flat=True, compiled=True)``, stepping after backward;
- ``ours-in-backward``: the same optimizer attached with ``step_in_backward``: each run of params
  steps when its grads are ready, and they are freed.

Peak memory: one step under ``torch.profiler`` with ``profile_memory=True`` (every allocation and
free of torch's allocator, with its time), in steady state (state made, rules compiled, grads None
when the step starts); the peak of the running sum above the step's start is the most the step
held beyond params and state (grads, activations, temporaries), as
:func:`benchmarks.measure.peak_extra_bytes` measures it. The same events give the memory-over-time
plot. Time: :func:`benchmarks.measure.time_interleaved`, the variants one step each per round.

    python -m benchmarks.in_backward                       # GPT-2 small shape, writes benchmarks/results/in_backward.*
    python -m benchmarks.in_backward --untied              # its output layer untied: .../in_backward_untied.*
    python -m benchmarks.in_backward --tiny --rounds 1     # a toy model (the smoke test)
"""

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import wrappers
from benchmarks.measure import memory_changes, time_interleaved
from wrappers.in_backward import RUN_BYTES, step_in_backward

RESULTS = Path(__file__).resolve().parent / "results"
GPT2_SMALL = dict(vocab=50257, positions=1024, width=768, layers=12, heads=12)
TINY = dict(vocab=256, positions=64, width=64, layers=2, heads=2)


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.c_fc, self.mlp_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, length, width)
        x = x + self.c_proj(attended)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    """GPT-2's layout (pre-norm blocks, learned positions, output tied to the token embedding);
    ``tied=False``: an output layer of its own, as most later models have (LLaMA, ...)."""

    def __init__(self, vocab: int, positions: int, width: int, layers: int, heads: int, tied: bool = True) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(positions, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = None if tied else nn.Linear(width, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight if self.lm_head is None else self.lm_head.weight)


@dataclass
class Row:
    variant: str
    peak_extra_mib: float  # above params and state, during one forward + backward + step
    median_ms: float
    q1_ms: float
    q3_ms: float


def _steppers(shape: dict, batch: int, context: int, device: torch.device, compiled: bool, run_bytes: int):
    torch.manual_seed(0)
    base = GPT(**shape).to(device)
    generator = torch.Generator(device="cpu").manual_seed(1)
    tokens = torch.randint(shape["vocab"], (batch, context + 1), generator=generator).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    steppers, handles, models = {}, [], {}
    for name in ("torch", "ours-after", "ours-in-backward"):
        model = GPT(**shape).to(device)
        model.load_state_dict(base.state_dict())
        if name == "torch":
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
        else:
            optimizer = wrappers.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, flat=True, compiled=compiled)
        if name == "ours-in-backward":
            handles.append(step_in_backward(optimizer, run_bytes=run_bytes))

        def step(model=model, optimizer=optimizer):
            logits = model(inputs)
            F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
            optimizer.step()  # in backward: does nothing
            optimizer.zero_grad()  # after the step, so the next step starts with no grads
        steppers[name] = step
        models[name] = model
    del base
    return steppers, models, handles


def memory_timeline(step, device: torch.device) -> list[tuple[float, int]]:
    """(ms since the step began, bytes held above the start) after each allocation and free."""
    changes = memory_changes(step, device)
    if not changes:
        return [(0.0, 0)]
    start, live, series = changes[0][0], 0, [(0.0, 0)]
    for when, nbytes in changes:
        live += nbytes
        series.append(((when - start) / 1e6, live))
    return series


def plot(timelines: dict[str, list[tuple[float, int]]], grad_bytes: int, title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    labels = {"torch": "torch fused AdamW, step after backward", "ours-after": "ours (flat), step after backward",
              "ours-in-backward": "ours (flat), step in backward"}
    for name, series in timelines.items():
        axes.step([t for t, _ in series], [b / 2**20 for _, b in series], where="post", label=labels[name])
    axes.axhline(grad_bytes / 2**20, color="grey", linestyle=":", label="grad bytes")
    axes.set_xlabel("ms since the step began (forward, backward, step)")
    axes.set_ylabel("MiB held above params and state")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a toy model instead of GPT-2 small's shape")
    parser.add_argument("--untied", action="store_true",
                        help="an output layer of its own, not GPT-2's tied token embedding (163 M params)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-compiled", dest="compiled", action="store_false", help="ours with flat=True only")
    parser.add_argument("--run-bytes", type=int, default=RUN_BYTES, help="step_in_backward's run_bytes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="writes OUT.{md,json,png} (default: benchmarks/results/in_backward[_untied])")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shape = dict(TINY if args.tiny else GPT2_SMALL, tied=not args.untied)
    args.out = args.out or RESULTS / ("in_backward_untied" if args.untied else "in_backward")
    steppers, models, handles = _steppers(shape, args.batch, args.context, device, args.compiled, args.run_bytes)
    params = sum(p.numel() for p in models["torch"].parameters())
    grad_bytes = sum(p.numel() * p.element_size() for p in models["torch"].parameters())
    largest = max(p.numel() * p.element_size() for p in models["torch"].parameters())
    for _ in range(args.warmup):  # state, flat buffers, compiled rules
        for step in steppers.values():
            step()
    timelines = {name: memory_timeline(step, device) for name, step in steppers.items()}
    timings = time_interleaved(steppers, steps=args.rounds, warmup=0, device=device)
    rows = [Row(name, max(b for _, b in timelines[name]) / 2**20, timings[name].median_ms, *timings[name].quartiles_ms)
            for name in steppers]
    by = {row.variant: row for row in rows}
    for a, b in zip(models["torch"].parameters(), models["ours-in-backward"].parameters()):
        assert a.shape == b.shape
    saved = (by["torch"].peak_extra_mib - by["ours-in-backward"].peak_extra_mib) * 2**20
    mode = "flat=True, compiled=True" if args.compiled else "flat=True"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"# Step in backward: {'toy model' if args.tiny else 'GPT-2 small shape'}"
        f"{', untied output layer' if args.untied else ''}, batch {args.batch}, "
        f"context {args.context}, {device.type}",
        "",
        f"{stamp}, torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
        f"load average {load:.2f}; {params / 1e6:.1f} M params, grad bytes {grad_bytes / 2**20:.0f} MiB "
        f"(largest grad: {largest / 2**20:.0f} MiB, the token embedding's"
        f"{'' if args.untied else ', tied to the output layer'}); ours: wrappers.AdamW({mode}), "
        f"runs of {args.run_bytes / 2**20:g} MiB; {args.rounds} interleaved rounds after {args.warmup} warm-up steps.",
        "",
        "| variant | peak above params and state (MiB) | below torch (× grad bytes) | forward+backward+step, median ms (q1–q3) | × torch |",
        "|---|--:|--:|--:|--:|",
    ]
    for row in rows:
        below = (by["torch"].peak_extra_mib - row.peak_extra_mib) * 2**20 / grad_bytes
        lines.append(f"| {row.variant} | {row.peak_extra_mib:.1f} | {below:.2f} | {row.median_ms:.0f} "
                     f"({row.q1_ms:.0f}–{row.q3_ms:.0f}) | {row.median_ms / by['torch'].median_ms:.2f} |")
    lines += ["", f"Memory saved by stepping in backward: {saved / 2**20:.0f} MiB = {saved / grad_bytes:.2f} × grad bytes."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(dict(
        shape=shape, batch=args.batch, context=args.context, device=device.type, mode=mode, params=params,
        grad_bytes=grad_bytes, largest_grad_bytes=largest, run_bytes=args.run_bytes, saved_bytes=saved,
        saved_over_grad_bytes=saved / grad_bytes, rows=[asdict(row) for row in rows],
        seconds={name: list(timing.seconds) for name, timing in timings.items()}, when=stamp, load_average=load),
        indent=1))
    plot({name: timelines[name] for name in ("torch", "ours-in-backward")}, grad_bytes,
         f"One training step, {'toy' if args.tiny else 'GPT-2 small shape'}: memory above params and state",
         args.out.with_suffix(".png"))
    for handle in handles:
        handle.remove()
    return rows


if __name__ == "__main__":
    main()
