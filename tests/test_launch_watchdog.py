"""A training group never outlives a runner killed with SIGKILL, even before the worker has started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from stage_helpers import group_alive


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
    assert group_alive(pgid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = group_alive(pgid)
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
        assert not group_alive(proc.pid), "the worker outlived the stop"
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_sigterm_while_the_group_starts_stops_the_group(tmp_path: Path) -> None:
    """Seen in CI: SIGTERM landed after `launch.pid` was written but before the stop was in place; the runner
    said "interrupted" and exited with the training group still running."""
    runner = textwrap.dedent(f"""
        import logging, os, signal, sys
        from pathlib import Path
        from tempa.recipes import launcher
        from tempa.recipes.cli import Terminated, _on_sigterm

        signal.signal(signal.SIGTERM, _on_sigterm)
        real = launcher._start_watchdog

        def starting(group):
            os.kill(os.getpid(), signal.SIGTERM)  # lands between the pid file and the watchdog
            return real(group)

        launcher._start_watchdog = starting
        try:
            launcher._stream([sys.executable, "-c", "import time; time.sleep(120)"], dict(os.environ),
                             Path({str(tmp_path / "train.log")!r}), logging.getLogger("t"))
        except Terminated:
            print("terminated")
    """)
    done = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, timeout=120)
    pgid = int((tmp_path / "launch.pid").read_text())
    alive = group_alive(pgid)
    if alive:
        os.killpg(pgid, signal.SIGKILL)
    assert done.stdout.strip() == "terminated", done.stderr[-2000:]
    assert not alive, "the training group outlived the runner's SIGTERM"


def test_held_signals_arrive_once_on_release_and_the_handler_is_put_back() -> None:
    from tempa.recipes.held_signals import held_signals

    got: list[int] = []

    def handler(signum: int, frame: object) -> None:
        got.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with held_signals() as held:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert got == [], "a held signal reached the handler"
            held.release()
            time.sleep(0.05)
            assert got == [signal.SIGTERM]
            held.release()
        assert got == [signal.SIGTERM], "a held signal was delivered twice"
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)
