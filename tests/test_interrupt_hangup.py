"""An ssh connection that drops while `tempa run` trains outside tmux: the terminal's SIGHUP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from stage_helpers import group_alive
from tempa.recipes.rundir import LOCK_OWNER
from tempa.recipes.runner import stage_status
from tempa.sft.files import json_or_none
from tempa.sft.run_layout import MANIFEST

# A runner of a recipe whose one stage trains the way the real ones do, in a process group of its own started by the
# launcher; the worker notes the SIGTERM it is stopped with (SIGKILL leaves no trace) and ends.
RUNNER = """
import os, sys
from pathlib import Path
from typing import Literal
import tempa.merge, tempa.sft
from tempa.recipes.launcher import _stream
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import run_recipe
from tempa.sft.stage_api import StageConfigBase, StageKind, StageResult

STOPPED, STARTED = sys.argv[3], sys.argv[4]
WORKER = ("import signal, sys, time, pathlib; "
          f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({STOPPED!r}).write_text('SIGTERM'), sys.exit(0))); "
          f"pathlib.Path({STARTED!r}).touch(); time.sleep(120)")

class TrainsConfig(StageConfigBase):
    kind: Literal["trains"] = "trains"

def run(config, ctx):
    _stream([sys.executable, "-c", WORKER], dict(os.environ), ctx.stage_dir / "logs" / "train.log", ctx.log)
    return StageResult()

tempa.sft.STAGE_KINDS = (*tempa.sft.STAGE_KINDS, StageKind("trains", TrainsConfig, run, "test", resumable=True))
tempa.merge.STAGE_KINDS = tuple(k for k in tempa.merge.STAGE_KINDS if k.kind != "bake")
try:
    run_recipe(load_recipe(sys.argv[1]), Path(sys.argv[2]))
except KeyboardInterrupt as exc:
    print(type(exc).__name__, flush=True)
    sys.exit(130)
"""


def test_a_dropped_ssh_connection_stops_the_run_cleanly_and_says_why_in_the_stage_log(tmp_path: Path,
                                                                                        tiny_model_dir: Path) -> None:
    """SIGHUP's default action ended the runner at once: its training group was SIGKILLed by the watchdog (and left
    running if the hangup came while it started), the lock's owner record stayed behind, and nothing the user could
    read after reconnecting said why the run had stopped. It now stops as on Ctrl-C."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: t
        base_model: {tiny_model_dir}
        stages:
          - {{name: train, kind: trains}}
        """))
    run_dir, stopped, started = tmp_path / "run", tmp_path / "stopped", tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(recipe), str(run_dir), str(stopped), str(started)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the training process never started"
        pgid = int((run_dir / "train" / "logs" / "launch.pid").read_text())
        proc.send_signal(signal.SIGHUP)
        out, _ = proc.communicate(timeout=60)
        alive = group_alive(pgid)
    finally:
        proc.kill()
    if alive:
        os.killpg(pgid, signal.SIGKILL)
    assert (proc.returncode, out.strip()) == (130, "HungUp")
    assert not alive and stopped.is_file() and stopped.read_text() == "SIGTERM"  # stopped with its grace, not SIGKILLed
    assert not (run_dir / LOCK_OWNER).exists()
    assert json_or_none(run_dir / "train" / MANIFEST)["status"] == "running"
    row = stage_status(["train"], run_dir)[0]
    assert row.state == "interrupted"
    assert row.note.startswith("stopped by SIGHUP: the terminal it was started from closed; run tempa in tmux or "
                               "screen, or under nohup, to outlive it"), row.note
    last = (run_dir / "train" / "logs" / "stage.log").read_text().splitlines()[-1]
    assert last.endswith("stage train interrupted (SIGHUP: the terminal it was started from closed; run tempa in tmux "
                         "or screen, or under nohup, to outlive it); run the same command again to resume")


def test_a_run_under_nohup_keeps_its_hangup_ignored(tmp_path: Path) -> None:
    """`nohup tempa run` asks for the run to outlive the terminal: the runner leaves an ignored SIGHUP ignored."""
    script = textwrap.dedent("""
        import os, signal
        from tempa.recipes.held_signals import hangup_stops
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with hangup_stops():
            os.kill(os.getpid(), signal.SIGHUP)
            print("outlived", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "outlived")
