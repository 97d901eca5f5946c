"""What a runner killed with SIGKILL leaves: no forked worker lives on, and no process it forked keeps the run
directory locked or a cache build marked as in progress (real processes, real signals)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tempa.recipes.rundir import RunLock, RunLockedError
from tempa.sft.files import sweep_dead_builds


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent (pid 1 of a container may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    for _ in range(1200):  # imports take a few seconds on a busy machine
        # the pid written, not only the file made (a loaded CI machine read it empty once)
        if (path.exists() and path.read_text().strip()) or proc.poll() is not None:
            return
        time.sleep(0.1)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _runner_killed_after_forking(script: str, tmp_path: Path, *args: str) -> Iterator[tuple[int, int]]:
    """Runs ``script`` (which forks a child and writes its pid to ``tmp_path/child``), kills it with SIGKILL once
    the child is there, and yields (the dead runner's pid, the child's pid); the child is killed on the way out."""
    parent = subprocess.Popen([sys.executable, "-c", script, *args])
    child = 0
    try:
        _wait_for(tmp_path / "child", parent)
        child = int((tmp_path / "child").read_text())
        parent.kill()
        parent.wait(timeout=60)
        yield parent.pid, child
    finally:
        parent.kill()
        _kill_all([child] if child else [])


_WORKERS_UNDER_THE_RUNNERS_HANDLERS = """
import io, os, signal, sys, time
from pathlib import Path
from tqdm import tqdm
from tempa.recipes.cli import _on_sigterm
from tempa.sft.forked_workers import run_forked
folder = Path(sys.argv[1])
signal.signal(signal.SIGTERM, _on_sigterm)  # as `tempa run` has it while it tokenises
def task(k, report):
    (folder / f"{os.getpid()}.worker").touch()
    time.sleep(600)
run_forked(task, 4, 2, tqdm(total=0, file=io.StringIO()))
"""


def test_a_sigkilled_runners_workers_end_though_they_inherit_its_sigterm_handler(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", _WORKERS_UNDER_THE_RUNNERS_HANDLERS, str(tmp_path)])
    workers: list[int] = []
    try:
        for _ in range(1200):
            workers = [int(p.stem) for p in tmp_path.glob("*.worker")]
            if len(workers) == 2 or parent.poll() is not None:
                break
            time.sleep(0.1)
        assert len(workers) == 2
        parent.kill()
        parent.wait(timeout=60)
        for _ in range(600):  # before: SIGTERM became an exception in the task, then was ignored: they lived on
            if not any(map(_alive, workers)):
                break
            time.sleep(0.1)
        assert [pid for pid in workers if _alive(pid)] == []
    finally:
        parent.kill()
        _kill_all(workers)


_FORKS_WHILE_HOLDING = """
import os, sys, time
from pathlib import Path
from tempa.recipes.rundir import RunLock
from tempa.sft.files import cache_build
run_dir, cache = Path(sys.argv[1]), Path(sys.argv[2])
with RunLock(run_dir), cache_build(cache, "0" * 16):
    child = os.fork()
    if child == 0:  # any forked process: a pool's worker, a data loader's
        time.sleep(600)
        os._exit(0)
    (run_dir.parent / "child").write_text(str(child))
    time.sleep(600)
"""


def test_a_forked_child_neither_keeps_the_run_lock_nor_a_cache_build_after_the_runner_dies(tmp_path: Path) -> None:
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    with _runner_killed_after_forking(_FORKS_WHILE_HOLDING, tmp_path, str(run_dir), str(cache)) as (_, child):
        assert _alive(child)  # still there: what follows is not owed to its death
        with RunLock(run_dir):  # before: "in use by pid <the dead runner>" for as long as the child lived
            pass
        assert len(sweep_dead_builds(cache)) == 1  # before: the child's copy of the build's flock kept it


def test_a_lock_held_after_its_runner_died_is_said_so_naming_the_holders(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # the runner's own descriptor is closed in its children now: a holder that still has it open (an older tempa's
    # worker) is made by hand, a copy of the descriptor the fork keeps
    script = """
import os, sys, time
from pathlib import Path
run_dir = Path(sys.argv[1]); run_dir.mkdir()
from tempa.recipes.rundir import RunLock
lock = RunLock(run_dir).__enter__()
kept = os.dup(lock._fd)  # not registered: the fork keeps it, as every descriptor was kept before
child = os.fork()
if child == 0:
    time.sleep(600)
    os._exit(0)
(run_dir.parent / "child").write_text(str(child))
time.sleep(600)
"""
    with _runner_killed_after_forking(script, tmp_path, str(run_dir)) as (runner, child):
        try:
            with RunLock(run_dir):
                raise AssertionError("the lock should still be held by the child")
        except RunLockedError as exc:
            message = str(exc)
        assert f"the run that took it (pid {runner} on " in message and "is gone" in message, message
        assert f"pid {child} still holds {run_dir / '.lock'}; end it (kill {child}), then run again" in message, message
