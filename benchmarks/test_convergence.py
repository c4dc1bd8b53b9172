"""The convergence report: ours trains as torch.optim does, every task learns, the command writes its files.

Reduced scale throughout (a few steps for the parity checks); one compiled algorithm only, since
each compiled rule costs seconds.
"""

import json
import math

import pytest
import torch

from benchmarks import convergence
from benchmarks.convergence import ALGORITHMS, VARIANTS, relative_difference, same_curves, train
from wrappers import registry
from benchmarks.tasks import TASKS, CharLM, Digits, MLP, unigram_entropy


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """As the report runs (its ``--threads`` default): on a shared CPU, two threads are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _runs(task, algorithm, variants=("torch", "ours")):
    return [train(task, ALGORITHMS[algorithm], VARIANTS[name], evaluations=2) for name in variants]


# Every algorithm on the cheap task; on the others, one of each way the torch baseline is built:
# torch's default mode (adam), its foreach mode (radam, nadam), the official AdaBelief loop, the
# for-loop mode that ASGD's parity is with, and Muon chained with AdamW.
PARITY_CASES = ([("mlp", name) for name in ALGORITHMS]
                + [("digits", name) for name in ("adam", "nadam", "adabelief", "asgd", "muon")]
                + [("charlm", name) for name in ("adam", "radam", "adabelief", "adafactor", "muon")])


@pytest.mark.parametrize("task_name, algorithm", PARITY_CASES, ids=[f"{t}-{a}" for t, a in PARITY_CASES])
def test_ours_trains_as_torch_bit_for_bit(task_name, algorithm):
    theirs, ours = _runs(TASKS[task_name](steps=4), algorithm)
    assert torch.equal(torch.tensor(ours.losses), torch.tensor(theirs.losses))
    assert ours.evals == theirs.evals
    assert same_curves(ours, theirs)
    assert len(set(ours.losses)) > 1  # the model moved


FLAT_CASES = [name for name, algorithm in ALGORITHMS.items() if algorithm.wrapper.elementwise]


@pytest.mark.parametrize("algorithm", FLAT_CASES)
def test_the_flat_mode_trains_as_torch_bit_for_bit(algorithm):
    theirs, flat = _runs(MLP(steps=4), algorithm, ("torch", "ours-flat"))
    assert torch.equal(torch.tensor(flat.losses), torch.tensor(theirs.losses))
    assert same_curves(flat, theirs)


def test_a_different_run_is_told_apart():
    task = MLP(steps=4)
    theirs, ours = _runs(task, "adam")
    ours.losses[-1] = math.nextafter(ours.losses[-1], math.inf)
    assert not same_curves(ours, theirs)


def test_a_nudged_learning_rate_moves_the_loss():
    """torch-nudged, the sensitivity yardstick, trains another curve (its lr times 1 + 1e-4)."""
    theirs, nudged = _runs(MLP(steps=20), "adam", ("torch", "torch-nudged"))
    assert not same_curves(nudged, theirs)
    assert 0 < relative_difference(nudged, theirs) < 1e-2


def test_the_fast_mode_ends_near_torch():
    # one compiled rule, on the cheapest task (compiling costs seconds)
    theirs, fast = _runs(MLP(steps=20), "adam", ("torch", "ours-fast"))
    assert relative_difference(fast, theirs) <= 1e-4
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(fast.losses, theirs.losses))


def test_algorithms_without_a_fast_mode_have_no_fast_run():
    assert train(MLP(steps=1), ALGORITHMS["adafactor"], VARIANTS["ours-fast"]) is None
    assert train(MLP(steps=1), ALGORITHMS["muon"], VARIANTS["ours-fast"]) is None


def test_every_algorithm_has_a_learning_rate_for_every_task():
    # every registered algorithm that can train these models (not LBFGS, SparseAdam: see the module)
    assert set(ALGORITHMS) == set(registry.ALGORITHMS) - {"lbfgs", "sparse_adam"}
    assert all(set(a.entry.convergence_lr) == set(TASKS) and all(lr > 0 for lr in a.entry.convergence_lr.values())
               for a in ALGORITHMS.values())


# --- each task learns, with its best algorithm, at a reduced scale ---------------------------------------
def test_the_mlp_fits_its_random_data():
    run = train(MLP(steps=250), ALGORITHMS["adam"], VARIANTS["ours"])
    assert run.final["train_loss"] < 1e-3 * run.losses[0]


def test_the_cnn_reads_the_digits():
    run = train(Digits(steps=88), ALGORITHMS["nadam"], VARIANTS["ours"])  # 4 epochs
    assert run.final["test_accuracy"] >= 0.95


def test_the_language_model_beats_the_unigram_entropy():
    task = CharLM(steps=60)
    run = train(task, ALGORITHMS["adam"], VARIANTS["ours"])
    assert 3.0 < task.entropy < 3.3  # Python source: about 4.5 bits per character
    assert run.final["val_loss"] < task.entropy - 0.3


def test_unigram_entropy():
    assert unigram_entropy("aaaa") == 0
    assert unigram_entropy("abab") == pytest.approx(math.log(2))
    assert unigram_entropy("abcd") == pytest.approx(math.log(4))


# --- the command -------------------------------------------------------------------------------------
def test_the_command_writes_table_plot_and_json(tmp_path, capsys):
    runs = convergence.main(["--steps", "3", "--algorithms", "adam,muon", "--out", str(tmp_path)])
    # Muon: neither a fast mode (not elementwise) nor a fused one in torch
    assert {(run.task, run.algorithm, run.variant) for run in runs} == {
        (task, algorithm, variant) for task in TASKS for algorithm, variants in (
            ("adam", ("torch", "ours", "ours-flat", "ours-fast", "ours-bf16", "ours-8bit", "torch-fused",
                      "torch-nudged")),
            ("muon", ("torch", "ours", "torch-nudged")))
        for variant in variants}
    progress = capsys.readouterr().err.splitlines()
    assert len(progress) == len(TASKS) * 2 * len(VARIANTS) and "charlm muon ours-fast: none" in "\n".join(progress)

    results = json.loads((tmp_path / "convergence.json").read_text())
    assert set(results) == {"machine", "settings", "tasks", "runs"}
    assert results["settings"]["steps"] == {name: 3 for name in TASKS}
    assert results["tasks"]["charlm"]["unigram_entropy"] == pytest.approx(CharLM(steps=1).entropy)
    assert all(len(run["losses"]) == 3 and run["final"] for run in results["runs"])
    assert (tmp_path / "convergence.png").stat().st_size > 10_000

    table = (tmp_path / "convergence.md").read_text()
    summary = table.split("## Summary")[1].split("## Every run")[0]
    adam, muon = (next(line for line in summary.splitlines() if line.startswith(f"| {name} |")) for name in ("adam", "muon"))
    assert adam.split(" | ")[5:7] == ["bit for bit", "bit for bit"]  # ours and ours-flat vs torch, every task
    assert muon.split(" | ")[5] == "bit for bit"  # ours; then the fast and fused columns empty
    assert table.count("| charlm | adam |") == 8
