"""How a training launch ends when it is interrupted: a second Ctrl-C, a worker killed by the OOM killer."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stage_helpers import group_alive
from tempa.recipes.launcher import run_launch
from tempa.recipes.schema import LaunchConfig
from tempa.sft.stage_api import StageError


def test_a_second_ctrl_c_while_the_training_group_stops_still_leaves_no_process_behind(tmp_path: Path) -> None:
    """The user presses Ctrl-C again while the group is shutting down (a worker finishing a save ignores SIGTERM
    for a while): the runner used to leave the wait and exit, the group still running with its memory and port."""
    started, stopping = tmp_path / "started", tmp_path / "stopping"
    runner = textwrap.dedent(f"""
        import logging, os, sys
        from pathlib import Path
        from tempa.recipes.launcher import _stream
        # the worker notes the SIGTERM and goes on (as one finishing a save does)
        worker = ("import signal, time; "
                  "signal.signal(signal.SIGTERM, lambda *_: open({str(stopping)!r}, 'w').close()); "
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
    # A deadline of its own: on a loaded machine (CI's two workers) starting the runner can use most of the first.
    deadline = time.monotonic() + 60
    while not stopping.exists() and time.monotonic() < deadline:  # the runner is inside the group's grace period
        time.sleep(0.05)
    assert stopping.exists(), "the first Ctrl-C never reached the training group"
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=8) == 130, "the second Ctrl-C should cut the grace short"
        alive = group_alive(pgid)
    finally:
        proc.kill()
        if group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
    assert not alive, "the runner exited on the second Ctrl-C with its training group still running"


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_a_worker_killed_by_the_oom_killer_is_named_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             launcher: str) -> None:
    """accelerate's launcher reports a SIGKILLed worker as a CalledProcessError, torch elastic in a box of "="; the
    stage said "training process exited with code 1: subprocess.CalledProcessError: Command [...] died with
    <Signals.SIGKILL: 9>", or quoted the box's last border."""
    (tmp_path / "oom_worker.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(StageError) as caught:
        run_launch(LaunchConfig(launcher=launcher, use_cpu=True), "oom_worker", [], tmp_path / "logs" / "train.log",
                   log=logging.getLogger("t"))
    message = str(caught.value)
    assert message.startswith("a training process was killed by SIGKILL (the kernel's out-of-memory killer")
    assert "resumes from its last complete checkpoint" in message
    assert "CalledProcessError" not in message and "\n" not in message


def test_a_worker_that_crashes_on_a_signal_is_not_told_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segfault or a C++/NCCL abort (SIGSEGV, SIGABRT) is a crash the same command meets again: it was reported as
    "killed ... the same command again resumes", and the worker's last words were dropped."""
    (tmp_path / "crash_worker.py").write_text(
        "import os, signal, sys\nprint('cuda kernel failed: illegal memory access', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(StageError) as caught:
        run_launch(LaunchConfig(launcher="torchrun", use_cpu=True), "crash_worker", [],
                   tmp_path / "logs" / "train.log", log=logging.getLogger("t"))
    message = str(caught.value)
    assert message.startswith("a training process crashed with SIGSEGV: cuda kernel failed: illegal memory access"), \
        message
    assert "resumes" not in message and "\n" not in message


@pytest.mark.timeout(60)
def test_the_training_log_holds_each_line_as_the_worker_writes_it(tmp_path: Path) -> None:
    """`tail -f logs/train.log` showed nothing for minutes: the runner kept the worker's lines in its file buffer
    until 8 KB had gathered. The worker here writes a line, then waits for the test to see it in the log."""
    import threading

    log_file, seen = tmp_path / "train.log", tmp_path / "seen"
    worker = (f"import pathlib, time\nprint('step', 6 * 7, flush=True)\n"  # the line is not in the command line
              f"while not pathlib.Path({str(seen)!r}).exists():\n    time.sleep(0.05)\n")
    from tempa.recipes.launcher import _stream

    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(
        _stream([sys.executable, "-c", worker], dict(os.environ), log_file, logging.getLogger("test"))[0]))
    thread.start()
    try:
        while "step 42" not in (log_file.read_text(encoding="utf-8") if log_file.exists() else ""):
            time.sleep(0.05)  # the hang guard above fails the test when the line never comes
    finally:
        seen.touch()
        thread.join()
    assert done == [0]


def test_of_several_processes_failures_the_error_names_the_cause_not_a_lost_peer() -> None:
    """LoRA under FSDP2 failed on rank 0; rank 1 then lost its peer, and the one-line error quoted rank 1's gloo
    "Connection closed by peer ... remote worker crashing", the cause only in train.log."""
    from collections import deque

    from tempa.recipes.launcher import _reason

    tail = deque([
        "[rank0]: Traceback (most recent call last):",
        "[rank0]: RuntimeError: Attempted to access the data pointer on an invalid python storage.",
        "[rank1]: Traceback (most recent call last):",
        "[rank1]: RuntimeError: [/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by "
        "peer [127.0.0.1]:48341. This is typically caused by a remote worker crashing.",
        "    raise ChildFailedError(",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
    ])
    assert _reason(tail) == "RuntimeError: Attempted to access the data pointer on an invalid python storage."
    # a lost peer alone (the other process was killed, say) is still what the log says
    assert _reason(deque(list(tail)[2:])).startswith("RuntimeError: [/__w/pytorch/third_party/gloo")


def test_the_written_launch_script_re_runs_the_training_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs say to re-run a stage's training by hand from logs/launch.sh: it was written 0644, so `./launch.sh`
    failed with "Permission denied"."""
    runs = tmp_path / "runs.txt"
    (tmp_path / "count_worker.py").write_text(f"open({str(runs)!r}, 'a').write('ran\\n')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    run_launch(LaunchConfig(launcher="torchrun", use_cpu=True), "count_worker", [], tmp_path / "logs" / "train.log",
               log=logging.getLogger("t"))
    by_hand = subprocess.run(["./launch.sh"], cwd=tmp_path / "logs", capture_output=True, text=True)
    assert by_hand.returncode == 0, by_hand.stderr
    assert runs.read_text().splitlines() == ["ran", "ran"]
