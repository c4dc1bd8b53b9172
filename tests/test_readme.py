"""The README's commands are the ones CI runs (its examples run as doctests via pytest)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands_in_readme() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line for line in lines if line.startswith("python3 -m venv .venv && ")]


def test_ci_runs_the_readme_test_command():
    commands = _commands_in_readme()
    test_commands = [c for c in commands if c.endswith("-m pytest")]
    assert len(test_commands) == 1, commands
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_commands[0] in ci_lines


def test_readme_has_the_benchmark_command():
    assert any(c.endswith("-m benchmarks.report") for c in _commands_in_readme())
