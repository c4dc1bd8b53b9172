"""Two gloo workers on 127.0.0.1, started once per engine, that run every scenario of a test module.

A test module (``test_ddp``, ``test_zero``, ``test_fsdp2``) defines ``SCENARIOS`` (a list of
:class:`Scenario`) and ``run_scenario(scenario, ctx)``, which runs in each worker and returns plain
data (dicts, lists, strings, CPU tensors). Its module-scoped fixture calls :func:`run_engine`, which

- binds a listening socket to a free port on 127.0.0.1 and starts ``WORLD_SIZE`` worker processes
  (``python -m tests.distributed._harness``) with ``MASTER_ADDR=127.0.0.1``; rank 0 serves the
  rendezvous store on that very socket, inherited (a store left to bind the port itself would
  listen on every interface, and another process could take the port in between), and gloo is
  bound to the loopback interface: nothing listens or connects anywhere but 127.0.0.1;
- in each worker, runs every selected scenario in its own gloo process group (so a scenario that
  raises on one rank leaves its half-done collectives behind in that group, not in the next
  scenario's), catching its exception, and writes one result file per scenario and rank at once
  (so a hang later loses no earlier results);
- waits at most ``timeout`` seconds for the workers, kills them (their whole process group) if they
  are still running or as soon as one of them dies, and always reaps them;
- hands back an :class:`EngineRun`, from which each parametrized test takes its scenario's results:
  a missing result or a worker exception fails that test with the reason and the workers' stderr.
"""

import argparse
import datetime
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
WORLD_SIZE = 2
HOST = "127.0.0.1"
# Whole worker run per engine: start, every scenario, exit. Override for slow machines.
ENGINE_TIMEOUT_S = float(os.environ.get("OPTKERNELS_DIST_TIMEOUT", "300"))
# One collective (or group creation) waiting for the other rank, e.g. after that rank raised.
COLLECTIVE_TIMEOUT_S = 30
DEFAULT_GROUP_TIMEOUT_S = 2 * COLLECTIVE_TIMEOUT_S
STDERR_TAIL_CHARS = 4000


@dataclass(frozen=True)
class Scenario:
    """One case an engine's workers run; ``id`` is also the pytest id."""

    id: str
    params: dict = field(default_factory=dict, hash=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.params[key]


def ids(scenarios: list[Scenario]) -> list[str]:
    return [scenario.id for scenario in scenarios]


@dataclass
class Context:
    """What a scenario gets in the worker: its rank, its own process group, a directory shared by
    the ranks (created by the parent, empty)."""

    rank: int
    world_size: int
    group: Any  # torch.distributed.ProcessGroup
    shared_dir: Path


class Sections:
    """Parts of one scenario that fail separately (training, then saving, then loading ...): an
    exception in one is recorded under its name and the scenario goes on with the parts that do not
    need it, so that a failed checkpoint does not hide the training's results. The scenario returns
    ``errors`` with its data; tests read it through :meth:`EngineRun.ranks`."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def run(self, name: str, function, *, needs: tuple[str, ...] = ()) -> None:
        failed = [need for need in needs if need in self.errors]
        if failed:
            self.errors[name] = f"not run: it needs {', '.join(failed)}, which failed"
            return
        try:
            function()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # DCP's CheckpointException is a BaseException
            self.errors[name] = traceback.format_exc()


# --- the parent side ---------------------------------------------------------------------------

def listening_socket() -> socket.socket:
    """A TCP socket listening on a free port of 127.0.0.1, for rank 0's store to serve on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, 0))
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock


def loopback_interface() -> str | None:
    """The loopback interface's name (``lo`` on Linux, ``lo0`` on macOS), for GLOO_SOCKET_IFNAME:
    without it gloo binds the address the host name resolves to."""
    names = [name for _, name in socket.if_nameindex()]
    for name in names:
        if name == "lo" or name == "lo0":
            return name
    return next((name for name in names if name.startswith("lo")), None)


@dataclass
class EngineRun:
    """The results of one engine's workers: ``results[scenario_id][rank]`` (None where missing)."""

    engine: str
    results: dict[str, list[dict | None]]
    problem: str | None  # why the run ended abnormally (timeout, a worker died), else None
    stderr: list[str]
    wall_s: float

    def ranks(self, scenario: Scenario, *sections: str) -> list[dict]:
        """Every rank's data for ``scenario``; fails the calling test if a rank has none, raised,
        or raised in one of ``sections`` (see :class:`Sections`)."""
        per_rank = self.results.get(scenario.id, [None] * WORLD_SIZE)
        errors = []
        for rank, result in enumerate(per_rank):
            if result is None:
                errors.append(f"rank {rank}: no result for {scenario.id}")
            elif result["error"] is not None:
                errors.append(f"rank {rank} raised in {scenario.id}:\n{result['error']}")
            else:
                recorded = result["data"].get("errors", {}) if isinstance(result["data"], dict) else {}
                errors.extend(f"rank {rank} raised in {scenario.id}, section {section!r}:\n{recorded[section]}"
                              for section in sections if section in recorded)
        if errors:
            message = "\n".join(errors)
            if any(result is None for result in per_rank):
                message += f"\n\nworkers: {self.problem or 'exited normally'}" + self._stderr_tails()
            pytest.fail(message, pytrace=False)
        return [result["data"] for result in per_rank]

    def _stderr_tails(self) -> str:
        return "".join(f"\n--- rank {rank} stderr (tail) ---\n{text[-STDERR_TAIL_CHARS:]}"
                       for rank, text in enumerate(self.stderr))


def selected(request, scenarios: list[Scenario]) -> list[Scenario]:
    """The scenarios of the requesting module that this pytest run selected (``-k`` etc.), so a
    narrowed run spawns workers for those only."""
    wanted = {item.callspec.params["scenario"].id for item in request.session.items
              if getattr(item, "module", None) is request.module and hasattr(item, "callspec")
              and isinstance(item.callspec.params.get("scenario"), Scenario)}
    return [scenario for scenario in scenarios if scenario.id in wanted]


def run_engine(module: str, scenarios: list[Scenario], work_dir: Path, *,
               timeout: float = ENGINE_TIMEOUT_S) -> EngineRun:
    """Run ``scenarios`` of test module ``module`` in ``WORLD_SIZE`` fresh worker processes."""
    work_dir = Path(work_dir)
    results_dir, shared_dir = work_dir / "results", work_dir / "shared"
    results_dir.mkdir(parents=True)
    for scenario in scenarios:
        (shared_dir / scenario.id).mkdir(parents=True)
    plan = work_dir / "scenarios.json"
    plan.write_text(json.dumps([scenario.id for scenario in scenarios]))

    store_socket = listening_socket()
    env = dict(os.environ)
    env.update(
        MASTER_ADDR=HOST, MASTER_PORT=str(store_socket.getsockname()[1]), WORLD_SIZE=str(WORLD_SIZE),
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        OMP_NUM_THREADS="1",  # torch.set_num_threads(1) too, in the worker
        TORCHINDUCTOR_COMPILE_THREADS="1",  # no compile worker pool: fewer processes to reap
        PYTHONUNBUFFERED="1",
    )
    interface = loopback_interface()
    if interface is not None:
        env["GLOO_SOCKET_IFNAME"] = interface

    procs: list[subprocess.Popen] = []
    logs = []
    start = time.monotonic()
    problem = None
    try:
        for rank in range(WORLD_SIZE):
            log = open(work_dir / f"rank{rank}.log", "wb")
            logs.append(log)
            store_fd = store_socket.fileno() if rank == 0 else -1
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.distributed._harness", module, str(rank), str(store_fd), str(plan),
                 str(results_dir), str(shared_dir)],
                pass_fds=(store_fd,) if rank == 0 else (),
                cwd=REPO_ROOT, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed whole, with any children
            ))
        deadline = start + timeout
        while True:
            codes = [proc.poll() for proc in procs]
            if all(code is not None for code in codes):
                if any(codes):
                    problem = f"worker exit codes {codes}"
                break
            if any(code not in (None, 0) for code in codes):
                problem = f"a worker died (exit codes {codes}); the others were killed"
                break
            if time.monotonic() > deadline:
                problem = (f"timed out after {timeout:.0f} s (OPTKERNELS_DIST_TIMEOUT); workers still "
                           f"running were killed (exit codes {codes})")
                break
            time.sleep(0.05)
    finally:
        store_socket.close()  # rank 0 has its own copy
        for proc in procs:
            if proc.poll() is None:  # not reaped yet, so its pid (= its group's id) is still ours
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        for log in logs:
            log.close()
    wall = time.monotonic() - start

    import torch  # the parent needs torch only to read the results

    results: dict[str, list[dict | None]] = {}
    for scenario in scenarios:
        per_rank = []
        for rank in range(WORLD_SIZE):
            path = results_dir / f"{scenario.id}.rank{rank}.pt"
            per_rank.append(torch.load(path, weights_only=False) if path.exists() else None)
        results[scenario.id] = per_rank
    stderr = [(work_dir / f"rank{rank}.log").read_text(errors="replace") for rank in range(WORLD_SIZE)]
    return EngineRun(module, results, problem, stderr, wall)


def engine_fixture(request, tmp_path_factory, scenarios: list[Scenario], name: str) -> EngineRun:
    """The body of each test module's module-scoped fixture."""
    run = run_engine(request.module.__name__, selected(request, scenarios), tmp_path_factory.mktemp(name))
    # Per-scenario seconds, for whoever tunes the suite's wall time (shown with -rA / -s).
    timings = sorted(((r["seconds"], sid) for sid, ranks in run.results.items() for r in ranks[:1] if r),
                     reverse=True)
    total = sum(seconds for seconds, _ in timings)
    print(f"\n[{name}] workers ran {run.wall_s:.1f} s, {total:.1f} s of it in scenarios; slowest: "
          + ", ".join(f"{sid} {seconds:.2f} s" for seconds, sid in timings[:5]))
    return run


# --- the worker side ---------------------------------------------------------------------------

def _save(path: Path, result: dict) -> None:
    import torch

    partial = path.with_suffix(".partial")
    torch.save(result, partial)
    os.replace(partial, path)  # the parent never reads half a file


def _worker(module_name: str, rank: int, store_fd: int, plan: Path, results_dir: Path, shared_dir: Path) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=DEFAULT_GROUP_TIMEOUT_S)
    port = int(os.environ["MASTER_PORT"])
    if rank == 0:  # serve on the socket the parent bound to 127.0.0.1
        store = dist.TCPStore(HOST, port, WORLD_SIZE, is_master=True, timeout=timeout, master_listen_fd=store_fd)
    else:
        store = dist.TCPStore(HOST, port, WORLD_SIZE, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD_SIZE, timeout=timeout)
    try:
        module = importlib.import_module(module_name)
        by_id = {scenario.id: scenario for scenario in module.SCENARIOS}
        for scenario_id in json.loads(plan.read_text()):
            scenario = by_id[scenario_id]
            start = time.perf_counter()
            try:
                # its own group: collectives a failed scenario left pending stay in it
                group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
                context = Context(rank, WORLD_SIZE, group, shared_dir / scenario_id)
                result = {"data": module.run_scenario(scenario, context), "error": None}
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:  # (DCP's CheckpointException is one) recorded; on to the next scenario
                result = {"data": None, "error": traceback.format_exc()}
            result["seconds"] = time.perf_counter() - start
            _save(results_dir / f"{scenario_id}.rank{rank}.pt", result)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module")
    parser.add_argument("rank", type=int)
    parser.add_argument("store_fd", type=int, help="rank 0: the inherited listening socket; others: -1")
    parser.add_argument("plan", type=Path)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("shared_dir", type=Path)
    args = parser.parse_args(argv)
    _worker(args.module, args.rank, args.store_fd, args.plan, args.results_dir, args.shared_dir)


if __name__ == "__main__":
    # run as ``python -m``: use the module under its import name, the one the test modules share
    from tests.distributed import _harness

    _harness.main()
