"""How a training launch ends when it is interrupted."""

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


def test_a_second_ctrl_c_while_the_training_group_stops_still_leaves_no_process_behind(tmp_path: Path) -> None:
    """The user presses Ctrl-C again while the group is shutting down (a worker finishing a save ignores SIGTERM
    for a while): the runner used to leave the wait and exit, the group still running with its memory and port."""
    started = tmp_path / "started"
    runner = textwrap.dedent(f"""
        import logging, os, sys
        from pathlib import Path
        from tempa.recipes.launcher import _stream
        worker = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "open({str(started)!r}, 'w').close(); time.sleep(120)")
        try:
            _stream([sys.executable, "-c", worker], dict(os.environ), Path({str(tmp_path / "train.log")!r}),
                    logging.getLogger("t"))
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", runner])
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the training process never started"
    pgid = int((tmp_path / "launch.pid").read_text())
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # inside the 10 s grace the group gets to stop on SIGTERM
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=8) == 130, "the second Ctrl-C should cut the grace short"
        alive = _group_alive(pgid)
    finally:
        proc.kill()
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
    assert not alive, "the runner exited on the second Ctrl-C with its training group still running"
