"""`tempa export` and `tempa push` refuse a run directory that a `tempa run` holds (a real process holding the lock
the runner takes): the run may replace the final model under them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

_HOLDS = """
import sys, time
from pathlib import Path
from tempa.recipes.rundir import RunLock
with RunLock(Path(sys.argv[1])):
    (Path(sys.argv[1]) / "held").touch()
    time.sleep(600)
"""


@pytest.fixture
def held_run(tmp_path: Path):
    run = tmp_path / "run"
    (run / "bake" / "final").mkdir(parents=True)
    (run / "recipe.resolved.yaml").write_text("name: r\nstages:\n  - {name: bake, kind: bake}\n")
    (run / "bake" / "final" / "config.json").write_text("{}")
    os.symlink("bake/final", run / "final")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDS, str(run)])
    try:
        for _ in range(1200):
            if (run / "held").exists() or holder.poll() is not None:
                break
            time.sleep(0.1)
        assert (run / "held").exists()
        yield run, holder.pid
    finally:
        holder.kill()
        holder.wait()


def _tempa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tempa.recipes.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("given", ["final", "bake/final", "."])
def test_export_refuses_while_a_run_holds_the_folder(held_run, given: str) -> None:
    run, pid = held_run
    done = _tempa("export", "gguf", str(run / given), "--type", "f16")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert f"a `tempa run` (pid {pid} on " in lines[0] and "wait for it, then export again" in lines[0], lines[0]
    assert not list(run.rglob("*.gguf"))


def test_push_refuses_while_a_run_holds_the_folder(held_run) -> None:
    run, pid = held_run
    done = _tempa("push", str(run), "--repo", "org/name", "--dry-run")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert f"a `tempa run` (pid {pid} on " in lines[0] and "wait for it, then push again" in lines[0], lines[0]
