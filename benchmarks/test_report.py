"""``python -m benchmarks.report`` end to end, at the small scale, into a temporary folder."""

import json

import pytest
import torch

from benchmarks import report
from benchmarks.variants import ALGORITHMS, available_variants
from benchmarks.workloads import get_workload

REQUIRED_KEYS = {"device", "workload", "algorithm", "variant", "median_ms", "min_ms", "max_ms", "roofline_ms",
                 "peak_extra_bytes", "first_step_s"}


def test_report_writes_markdown_json_and_plot(tmp_path):
    algorithms = ["adam", "adabelief"]  # one torch has, with a fused mode, and one it lacks
    workloads = ["gpt2", "many-small"]  # each workload adds a bandwidth sample (seconds): two will do
    report.main(["--scale", "small", "--algorithms", ",".join(algorithms), "--workloads", ",".join(workloads),
                 "--steps", "2", "--warmup", "1", "--out", str(tmp_path)])

    for name in ("results.md", "results.json", "results.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"cpu", "torch_threads", "torch", "date", "bandwidth_gb_s"} <= set(results["machine"])
    records = results["records"]
    assert all(REQUIRED_KEYS <= set(record) for record in records)
    for device in report._available_devices():
        for algorithm in algorithms:
            variants = sorted(v.name for v in available_variants(ALGORITHMS[algorithm], torch.device(device)))
            for workload in workloads:
                assert sorted(r["variant"] for r in records if (r["device"], r["workload"], r["algorithm"])
                              == (device, workload, algorithm)) == variants, (device, workload, algorithm)
    assert {r["variant"] for r in records if r["algorithm"] == "adabelief"} == {
        "reference", "ours-functional", "ours-wrapper", "ours-flat", "ours-compiled"}
    foreach = next(r for r in records if r["variant"] == "torch-foreach")
    assert foreach["peak_extra_bytes"] > 0
    assert all(r["roofline_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"] for r in records)
    assert all(r["first_step_s"] > 0 for r in records)
    table = (tmp_path / "results.md").read_text()
    assert "## Summary" in table and all(f"| {r['variant']} |" in table for r in records)
    summary = table.split("## Summary")[1].split("\n## ")[0]
    for device in report._available_devices():
        for workload in workloads:
            rows = [r for r in records if (r["device"], r["workload"]) == (device, workload)]
            for algorithm, baseline in (("adam", "torch"), ("adabelief", "reference")):
                ours = min((r for r in rows if r["algorithm"] == algorithm and r["variant"].startswith("ours")),
                           key=lambda r: r["x_anchor"])
                theirs = min((r for r in rows if r["algorithm"] == algorithm and r["variant"].startswith(baseline)),
                             key=lambda r: r["x_anchor"])
                # the row names both best variants, their ratio and our best's first step
                row = next(line for line in summary.splitlines()
                           if line.startswith(f"| {device} | {workload} | {algorithm} |"))
                cells = [cell.strip() for cell in row.strip("|").split("|")]
                assert cells[4] == theirs["variant"] and cells[6] == ours["variant"], row
                assert cells[8] == f"{ours['x_anchor'] / theirs['x_anchor']:.2f}", row
                assert cells[10] == report._fmt(ours["first_step_s"] * 1e3), row


def test_the_docstring_counts_what_the_default_run_runs():
    # the counts are written out in report.py's docstring: this keeps them true
    adam_variants = len(available_variants(ALGORITHMS["adam"], torch.device("cpu")))
    text = " ".join(report.__doc__.split())
    assert f"({len(ALGORITHMS)} algorithms, {len(report.DEFAULT_WORKLOADS)} workloads)" in text
    assert f"Adam on the CPU: {adam_variants} variants" in text


def test_options_select_and_validate():
    args = report.parse_args(["--workloads", "few-large,gpt2", "--algorithms", "adam,sgd"])
    assert args.workloads == ("few-large", "gpt2") and args.algorithms == ("adam", "sgd")
    assert report.parse_args([]).algorithms == tuple(ALGORITHMS)
    for bad in (["--workloads", "gpt3"], ["--algorithms", "adam,lamb"], ["--devices", "tpu"]):
        with pytest.raises(SystemExit):
            report.parse_args(bad)


def test_scale_sets_rounds_and_budget_unless_given():
    assert (report.parse_args([]).steps, report.parse_args([]).budget) == (20, 3.0)
    small = report.parse_args(["--scale", "small"])
    assert (small.steps, small.budget) == (10, 0.5)
    assert report.parse_args(["--budget", "0"]).budget is None


def test_a_memory_budget_times_the_variants_in_groups_beside_the_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "warm_compiler", lambda device: None)  # nothing here compiles
    # Adafactor (no flat or compiled variant: nothing to compile) on small many-small, 16,000
    # elements: 0.0003 GB of tensors fit the shared params and grads, and two variants at a time
    # (the anchor and one other)
    records = report.main(["--scale", "small", "--algorithms", "adafactor", "--workloads", "many-small",
                           "--steps", "3", "--budget", "0", "--memory-gb", "0.0003", "--devices", "cpu",
                           "--out", str(tmp_path)])
    variants = [v.name for v in available_variants(ALGORITHMS["adafactor"], torch.device("cpu"))]
    assert [r.variant for r in records] == variants  # each once, in order
    anchor = report.anchor_variant(variants)
    assert anchor == "torch-foreach" and {r.anchor for r in records} == {anchor}
    by_name = {r.variant: r for r in records}
    others = len(variants) - 1
    assert by_name[anchor].steps == 3 * others  # timed in every group
    assert all(r.steps == 3 for r in records if r.variant != anchor)
    assert by_name[anchor].x_anchor == 1.0
    default = by_name[report.torch_default_variant(torch.device("cpu"))]
    for r in records:
        assert r.x_torch_default == pytest.approx(r.x_anchor / default.x_anchor)
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["memory_gb"] == 0.0003


def test_groups_fit_the_budget_and_keep_every_variant():
    gpt2, adam = get_workload("gpt2"), ALGORITHMS["adam"]
    shared = 2 * gpt2.numel * gpt2.element_size
    held = adam.held_bytes(gpt2.shapes, gpt2.element_size)
    assert held >= 4 * gpt2.numel * gpt2.element_size  # param, grad buffer, two moments
    assert report.group_size(adam, gpt2, None) == len(report.VARIANTS)
    assert report.group_size(adam, gpt2, shared + 3 * held) == 3
    assert report.group_size(adam, gpt2, 1.0) == 2  # never fewer: the anchor and one more
    names = [f"v{i}" for i in range(7)]
    for size in range(2, 9):
        groups = report.variant_groups(names, "v3", size)
        assert all(group[0] == "v3" and len(group) <= max(size, 2) for group in groups)
        assert sorted(name for group in groups for name in group[1:]) == sorted(set(names) - {"v3"})
        assert max(map(len, groups)) - min(map(len, groups)) <= 1  # spread evenly


def _record(variant, precision="fp32", x_anchor=1.0, state=8.0, min_bytes=28):
    return report.Record(device="cpu", workload="w", algorithm="adamw", variant=variant, median_ms=10 * x_anchor,
                         min_ms=1, max_ms=100, quartiles_ms=(5, 20), roofline_ms=5, min_bytes=min_bytes * 100,
                         peak_extra_bytes=0, first_step_s=1, anchor="torch-fused", x_anchor=x_anchor,
                         x_torch_default=None, x_roofline=2 * x_anchor, steps=3, tensors=1, elements=100,
                         precision=precision, state_bytes_per_element=state)


def test_low_precision_rows_stand_beside_the_anchor_and_stay_out_of_the_fp32_summary():
    records = [_record("torch-fused"), _record("ours-compiled", x_anchor=0.9),
               _record("ours-8bit", "8-bit state", x_anchor=0.6, state=2.03, min_bytes=16),
               _record("torchao-8bit", "8-bit state", x_anchor=0.5, state=2.03, min_bytes=16)]
    table = report.low_precision_table(records)
    rows = [line for line in table if line.startswith("| cpu |")]
    assert [row.split(" | ")[3] for row in rows] == ["torch-fused", "ours-compiled", "ours-8bit", "torchao-8bit"]
    assert rows[2].split(" | ")[4:9] == ["8-bit state", "2.03", "16.0", "6.00", "0.60"]
    assert report.low_precision_table(records[:2]) == []  # no such rows, no section
    machine = dict(cpu="x", logical_cpus=2, torch_threads=2, gpu=None, torch="t", python="p", platform="l",
                   date="d", load_average=0.0, bandwidth_gb_s={"cpu": 20.0}, bandwidth_samples_gb_s={"cpu": [20.0]})
    settings = dict(run_s=1, scale="full", steps=3, budget_s=1, warmup=1, torch_default={"cpu": "torch-forloop"},
                    memory_gb=4.5)
    summary = report.markdown(records, machine, settings).split("## Summary")[1].split("\n## ")[0]
    row = next(line for line in summary.splitlines() if line.startswith("| cpu | w | adamw |"))
    assert "| torch-fused |" in row and "| ours-compiled |" in row  # fp32 against fp32, though torchao is faster


def test_state_bytes_count_the_state_tensors_not_the_step():
    params = [torch.zeros(4096, requires_grad=True), torch.zeros(10, requires_grad=True)]
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer = torch.optim.Adam(params)
    optimizer.step()
    assert report.state_bytes(optimizer.step) == 2 * 4 * (4096 + 10)
    assert report.state_bytes(lambda: None) is None
    import wrappers
    quantised = wrappers.AdamW(params, state_precision="8bit")
    quantised.step()
    # codes and one scale per 256 elements for the large param; fp32 moments for the small one
    assert report.state_bytes(quantised.step) == 2 * (4096 + 4 * 16) + 2 * 4 * 10
