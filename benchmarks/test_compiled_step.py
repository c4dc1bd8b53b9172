"""``python -m benchmarks.compiled_step`` end to end, at toy size: the tiny model, two variants,
one timed call, dynamo's eager backend (it traces and counts graphs; inductor would spend
seconds compiling them). No timing is asserted."""

from benchmarks import compiled_step


def test_prints_a_row_per_variant_with_its_graphs(device, capsys):
    rows = compiled_step.main(["--models", "tiny", "--lrs", "tensor", "--variants", "torch,ours", "--steps", "1",
                               "--backend", "eager", "--device", device.type])
    assert [(row.model, row.lr, row.variant, row.steps) for row in rows] == [
        ("tiny", "tensor", "torch", 1), ("tiny", "tensor", "ours", 1)]
    assert all(row.first_graphs >= 1 and row.first_s > 0 and row.median_ms > 0 for row in rows)
    torch_row = rows[0]
    assert torch_row.later_graphs == 0  # torch's recipe: a tensor lr, so the schedule does not recompile
    table = capsys.readouterr().out
    lines = {line.split(" | ")[2]: line for line in table.splitlines() if line.startswith("| tiny |")}
    assert set(lines) == {"torch.optim.Adam", "wrappers.Adam"}, table
    assert lines["torch.optim.Adam"].startswith("| tiny | tensor | torch.optim.Adam | 1 | 0 |")
    assert lines["torch.optim.Adam"].endswith("| 1 | 1.00 |")  # one later call; the baseline of its ratio


def test_budget_stops_timing_once_the_least_steps_ran():
    rows = compiled_step.main(["--models", "tiny", "--lrs", "float", "--variants", "torch", "--steps", "50",
                               "--budget", "0", "--backend", "eager"])
    assert rows[0].steps == compiled_step.MIN_STEPS
