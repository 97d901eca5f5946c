"""DeepSpeed's JIT-built CPU op: a stale torch_extensions lock is detected, a live one waited for, boundedly.

The locks are crafted in a temporary TORCH_EXTENSIONS_DIR, the way torch's FileBaton leaves them.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tempa.recipes import jit_ops
from tempa.sft.stage_api import StageError

log = logging.getLogger("tempa")


@pytest.fixture()
def op_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    folder = jit_ops.build_dir()
    assert folder == tmp_path / "ext" / "deepspeed_shm_comm" and folder.is_dir()
    return folder


def _lock(folder: Path, age_s: float) -> Path:
    lock = folder / "lock"
    lock.touch()
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def _load(monkeypatch, script: str) -> None:
    """The op's load (``python -m tempa.recipes.jit_ops``) replaced by ``script``: what ninja prints, and when."""
    monkeypatch.setattr(jit_ops, "load_command", lambda: [sys.executable, "-c", script])


_NO_WORK = "print('Emitting ninja build file build.ninja...'); print('ninja: no work to do.')"


def test_a_lock_left_by_a_killed_build_is_stale_and_removed(op_dir, caplog, monkeypatch) -> None:
    lock = _lock(op_dir, age_s=600)
    _load(monkeypatch, _NO_WORK)  # built earlier: nothing to build now
    with caplog.at_level("WARNING", logger="tempa"):
        jit_ops.ensure_shm_op(log, op_dir / "build.log", timeout_s=5)
    assert not lock.exists() and "removed a stale build lock" in caplog.text


def test_a_lock_that_is_young_or_worked_under_is_not_stale(op_dir) -> None:
    _lock(op_dir, age_s=1)
    assert not jit_ops.lock_is_stale(op_dir)  # the build may not have started its compiler yet
    _lock(op_dir, age_s=600)
    compiler = subprocess.Popen(["sleep", "30"], cwd=op_dir)  # ninja and the compiler run in the build folder
    try:
        assert not jit_ops.lock_is_stale(op_dir)
    finally:
        compiler.kill()
        compiler.wait()
    assert jit_ops.lock_is_stale(op_dir)


def test_waiting_on_a_live_lock_is_bounded_with_a_clear_error(op_dir) -> None:
    lock = _lock(op_dir, age_s=0)
    started = time.monotonic()
    with pytest.raises(StageError) as err:
        jit_ops.wait_for_lock(op_dir, timeout_s=1, log=log)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert str(lock) in message and "TEMPA_JIT_BUILD_TIMEOUT_S=1" in message and "\n" not in message
    assert lock.exists()  # a live build's lock is never taken away


def test_an_op_built_earlier_that_ninja_finds_out_of_date_is_rebuilt_up_front_with_the_progress_line(
        op_dir, caplog, monkeypatch) -> None:
    """A .so from an earlier build made the up-front step skip the load; the workers' load then found it out of date
    and rebuilt it inside the launch, 3 min 42 s with no output. Now the up-front step loads it as the workers will,
    and a load that compiles says so."""
    (op_dir / "deepspeed_shm_comm.so").write_bytes(b"")
    ran = op_dir / "loaded"
    _load(monkeypatch, f"open({str(ran)!r}, 'w').close(); print('Building extension module deepspeed_shm_comm...'); "
                       "print('[1/2] c++ -MMD -MF shm.o.d -c shm.cpp -o shm.o', flush=True); "
                       "import time; time.sleep(1.5)")
    with caplog.at_level("INFO", logger="tempa"):
        jit_ops.ensure_shm_op(log, op_dir / "build.log", timeout_s=60)
    assert ran.exists(), "the op was not loaded up front"
    assert "building DeepSpeed's deepspeed_shm_comm op for this machine" in caplog.text
    assert "built DeepSpeed's deepspeed_shm_comm op in" in caplog.text


def test_an_op_that_is_up_to_date_is_loaded_up_front_without_a_progress_line(op_dir, caplog, monkeypatch) -> None:
    ran = op_dir / "loaded"
    _load(monkeypatch, f"open({str(ran)!r}, 'w').close(); {_NO_WORK}")
    with caplog.at_level("INFO", logger="tempa"):
        jit_ops.ensure_shm_op(log, op_dir / "build.log", timeout_s=60)
    assert ran.exists()
    assert "building" not in caplog.text and "built" not in caplog.text


def test_a_process_loads_the_op_once_until_its_so_changes(op_dir, monkeypatch) -> None:
    """Each load costs seconds (DeepSpeed's import): a recipe with several DeepSpeed stages paid it per launch."""
    loads = op_dir / "loads"
    so = op_dir / "deepspeed_shm_comm.so"
    # The load writes the .so as a build would, and counts itself.
    _load(monkeypatch, f"open({str(loads)!r}, 'a').write('x'); p = {str(so)!r}; import os; "
                       f"os.path.exists(p) or open(p, 'wb').write(b'op'); {_NO_WORK}")
    for _ in range(3):
        jit_ops.ensure_shm_op(log, op_dir / "build.log", timeout_s=60)
    assert loads.read_text() == "x"
    so.write_bytes(b"rebuilt by another environment")  # a different size: the op this process loaded is gone
    jit_ops.ensure_shm_op(log, op_dir / "build.log", timeout_s=60)
    assert loads.read_text() == "xx"
    so.unlink()
    jit_ops.ensure_shm_op(log, op_dir / "build.log", timeout_s=60)
    assert loads.read_text() == "xxx"
