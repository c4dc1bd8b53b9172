"""``python -m benchmarks.in_backward`` end to end at toy size (flat mode, no compiling): it writes
the table, the JSON and the plot, and stepping in backward holds less memory than torch's step
after backward (measured by the profiler: memory is deterministic, unlike time). No timing is
asserted."""

import json

import pytest

from benchmarks import in_backward


@pytest.mark.parametrize("head", [[], ["--untied"]], ids=["tied", "untied"])
def test_toy_run_writes_its_results_and_saves_memory(tmp_path, head):
    out = tmp_path / "in_backward"
    rows = in_backward.main(["--tiny", "--context", "4", "--rounds", "1", "--warmup", "1", "--no-compiled", "--run-bytes", "16384",
                             "--out", str(out), *head])
    assert [row.variant for row in rows] == ["torch", "ours-after", "ours-in-backward"]
    by = {row.variant: row for row in rows}
    assert by["ours-in-backward"].peak_extra_mib < by["torch"].peak_extra_mib
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["saved_bytes"] > 0 and data["grad_bytes"] > 0
    assert "| ours-in-backward |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
