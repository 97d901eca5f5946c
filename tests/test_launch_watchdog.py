"""A training group never outlives a runner killed with SIGKILL, even before the worker has started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_sigkilled_runner_takes_its_training_group_with_it(tmp_path: Path) -> None:
    # The "training" is a process that ignores the runner entirely (as a worker still importing torch does).
    runner = textwrap.dedent(f"""
        import logging, sys
        from pathlib import Path
        from tempa.recipes.launcher import _stream
        _stream([sys.executable, "-c", "import time; time.sleep(120)"], dict(__import__("os").environ),
                Path({str(tmp_path / "train.log")!r}), logging.getLogger("t"))
    """)
    proc = subprocess.Popen([sys.executable, "-c", runner])
    pid_file = tmp_path / "launch.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    pgid = int(pid_file.read_text())
    time.sleep(0.5)
    assert _group_alive(pgid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _group_alive(pgid)
    if alive:
        os.killpg(pgid, signal.SIGKILL)
    assert not alive, "the training group outlived its SIGKILLed runner"


def test_a_finished_launch_leaves_no_watchdog_behind(tmp_path: Path) -> None:
    import logging

    from tempa.recipes.launcher import _stream

    before = {p.name for p in Path("/proc").iterdir() if p.name.isdigit()}
    code, _ = _stream([sys.executable, "-c", "print('done')"], dict(os.environ), tmp_path / "train.log",
                      logging.getLogger("t"))
    assert code == 0
    children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and p.name not in before
                and (p / "stat").exists() and f" {os.getpid()} " in (p / "stat").read_text().split(")", 1)[-1][:20]]
    assert children == [], "a watchdog (or a zombie) outlived the launch"


def test_stopping_a_launch_returns_only_once_every_process_of_its_group_is_gone(tmp_path: Path) -> None:
    """The launcher can exit on SIGTERM while its worker is still shutting down (seen in CI: the runner said
    "interrupted" with a training process alive); the runner must wait for the whole group."""
    from tempa.recipes.launcher import _stop

    ready = tmp_path / "ready"
    worker = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.5), sys.exit(0)))\n"
              f"open({str(ready)!r}, 'w').close()\n"
              "time.sleep(60)\n")
    launcher = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {worker!r}])\ntime.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", launcher], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the worker never started"
        _stop(proc)
        assert proc.poll() is not None
        assert not _group_alive(proc.pid), "the worker outlived the stop"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
