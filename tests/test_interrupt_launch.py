"""How a training launch ends when it is interrupted: a second Ctrl-C, a worker killed by the OOM killer."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import deque
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


# torchrun's log after one of two ZeRO-3 CPU workers was killed with `kill -9` mid-training (the ops trial's K.log and
# train.log): the survivor fails on the lost peer, torch elastic's summary names the SIGKILLed rank as the root cause.
_SURVIVOR = [
    "[rank0]: Traceback (most recent call last):",
    '[rank0]:   File "/work/main/.venv/lib/python3.12/site-packages/deepspeed/runtime/zero/partition_parameters.py", '
    "line 2270, in all_gather",
    "[rank0]: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
    "[127.0.0.1]:38314: Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the "
    "application. Check the logs of the remote worker before reporting an error. GLHF! \U0001f3d6\ufe0f",
    "W1203 19:12:05.120000 4242 torch/distributed/elastic/multiprocessing/api.py:900] Sending process 4250 closing "
    "signal SIGTERM",
    "E1203 19:12:05.300000 4242 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1) "
    "local_rank: 0 (pid: 4249) of binary: /work/main/.venv/bin/python3",
    "Traceback (most recent call last):",
    "    raise ChildFailedError(",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
    "============================================================",
    "tempa.sft.train_worker FAILED",
    "------------------------------------------------------------",
    "Failures:",
]


def _summary(other: list[str], root: list[str]) -> deque[str]:
    return deque([*_SURVIVOR, *other, "------------------------------------------------------------",
                  "Root Cause (first observed failure):", *root, "============================================================"])


def _failure_block(idx: int, rank: int, exitcode: str, traceback: str) -> list[str]:
    return [f"[{idx}]:", "  time      : 2026-12-03_19:12:04", "  host      : trial-box",
            f"  rank      : {rank} (local_rank: {rank})", f"  exitcode  : {exitcode}", "  error_file: <N/A>",
            f"  traceback : {traceback}"]


_SIGNALLED = "Signal 9 (SIGKILL) received by PID 4250"
_NO_TRACE = "To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html"


@pytest.mark.parametrize(("rank", "code", "name"), [(1, 9, "SIGKILL"), (0, 9, "SIGKILL"), (1, 15, "SIGTERM")])
def test_a_worker_killed_by_a_signal_is_named_over_the_survivors_lost_peer(rank: int, code: int, name: str) -> None:
    """kill -9 of one ZeRO-3 worker (the OOM killer's way) was reported as the survivor's gloo "Connection reset by
    peer", exit code 1, with no resume command, though torchrun's own summary names rank 1's SIGKILL."""
    from tempa.recipes.launcher import _failure

    tail = _summary(_failure_block(1, 1 - rank, "1 (pid: 4249)", _NO_TRACE),
                    _failure_block(0, rank, f"-{code} (pid: 4250) ({name})", _SIGNALLED.replace("9 (SIGKILL)",
                                                                                                f"{code} ({name})")))
    message = _failure(1, tail)
    assert message.startswith(f"a training process was killed by {name}"), message
    assert "resumes from its last complete checkpoint" in message
    assert "Connection reset" not in message


def test_a_signal_death_that_is_a_crash_is_named_over_the_survivors_lost_peer() -> None:
    """A segfaulting worker is a crash (no resume), whatever its survivor's lost peer says."""
    from tempa.recipes.launcher import _failure

    tail = _summary(_failure_block(1, 0, "1 (pid: 4249)", _NO_TRACE),
                    _failure_block(0, 1, "-11 (pid: 4250) (SIGSEGV)", "Signal 11 (SIGSEGV) received by PID 4250"))
    message = _failure(1, tail)
    assert message.startswith("a training process crashed with SIGSEGV"), message
    assert "resumes" not in message


def test_a_root_cause_that_is_a_python_exception_is_still_shown_over_a_killed_peer() -> None:
    """The root cause is rank 0's own exception; rank 1, stopped after it, shows as a signal among the other
    failures: the exception is the cause, not the signal."""
    from tempa.recipes.launcher import _failure

    tail = deque(["[rank0]: Traceback (most recent call last):", "[rank0]: ValueError: the tokenizer has no pad token",
                  *_SURVIVOR[3:], *_failure_block(1, 1, "-15 (pid: 4250) (SIGTERM)", "Signal 15 (SIGTERM) received by PID 4250"),
                  "------------------------------------------------------------", "Root Cause (first observed failure):",
                  *_failure_block(0, 0, "1 (pid: 4249)", _NO_TRACE), "============================================================"])
    assert _failure(1, tail) == "training process exited with code 1: ValueError: the tokenizer has no pad token"
