"""``python -m benchmarks.report`` end to end, at the small scale, into a temporary folder."""

import json

import pytest

from benchmarks import report
from benchmarks.variants import ADAM, available_variants

REQUIRED_KEYS = {"workload", "algorithm", "variant", "median_ms", "min_ms", "max_ms", "roofline_ms",
                 "peak_extra_bytes"}


def test_report_writes_markdown_json_and_plot(tmp_path, device):
    report.main(["--scale", "small", "--steps", "2", "--warmup", "1", "--out", str(tmp_path)])

    for name in ("results.md", "results.json", "results.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"cpu", "torch_threads", "torch", "date"} <= set(results["machine"])
    records = results["records"]
    assert all(REQUIRED_KEYS <= set(record) for record in records)
    variants = sorted(variant.name for variant in available_variants(ADAM, device))
    for workload in report.DEFAULT_WORKLOADS:
        assert sorted(r["variant"] for r in records if r["workload"] == workload) == variants, workload
    foreach = next(r for r in records if r["variant"] == "torch-foreach")
    assert foreach["peak_extra_bytes"] > 0
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {variant} |" in table for variant in variants)


def test_workloads_option_selects_and_validates():
    assert report.parse_args(["--workloads", "few-large,gpt2"]).workloads == ("few-large", "gpt2")
    with pytest.raises(SystemExit):
        report.parse_args(["--workloads", "gpt3"])
