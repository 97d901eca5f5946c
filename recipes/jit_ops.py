"""DeepSpeed's JIT-built CPU op: built once, up front, with a progress line and a bounded wait.

On CPU, every DeepSpeed process group loads ``deepspeed_shm_comm``, which torch's cpp_extension
compiles the first time: minutes on a small machine, with no output. torch serialises builds
with a lock file, ``<build dir>/lock`` (``torch.utils.file_baton.FileBaton``: created with
O_EXCL, removed when the build ends, polled forever by every other process). A build killed
half-way leaves the lock behind, and every later launch then hangs silently.

So before it launches a DeepSpeed group on CPU the runner calls :func:`ensure_shm_op`: a lock
that is old and that no process is working under is removed as stale; a live one is waited for,
at most ``TEMPA_JIT_BUILD_TIMEOUT_S`` seconds; then the op is loaded here, in a subprocess, as the
workers will load it, so that a build it needs (missing, or out of date by ninja's reckoning) happens
here, with a progress line, under the same bound, never silently inside the launch. Run ``python -m tempa.recipes.jit_ops`` to build it by hand.
The load costs seconds (importing DeepSpeed), so a process that loaded the op does not load it again for its next
launch while the op's ``.so`` is the file it loaded: a recipe with several DeepSpeed stages pays once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tempa.recipes.held_signals import held_signals
from tempa.sft.stage_api import StageError

OP = "deepspeed_shm_comm"
LOCK = "lock"  # torch.utils.cpp_extension: FileBaton(os.path.join(build_directory, "lock"))
TIMEOUT_ENV = "TEMPA_JIT_BUILD_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800
# A lock younger than this may belong to a build that has not started its compiler yet.
STALE_AFTER_S = 60.0
_PROGRESS_EVERY_S = 30.0
# build folder -> the .so this process loaded there (inode, size, mtime): unchanged means nothing to build.
_loaded: dict[Path, tuple[int, int, int]] = {}


def build_timeout_s() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise StageError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r}: expected a number of seconds") from None


def build_dir(op: str = OP) -> Path:
    """Where torch builds ``op``: $TORCH_EXTENSIONS_DIR/<op>, else ~/.cache/torch_extensions/<py>_<accel>/<op>."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(op, verbose=False))


def _workers(folder: Path) -> list[int]:
    """Processes working in ``folder`` (a compiler or ninja: their cwd or arguments name it)."""
    target = str(folder)
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == target or target in cmdline:
            pids.append(int(proc.name))
    return pids


def lock_is_stale(folder: Path, *, stale_after_s: float = STALE_AFTER_S) -> bool:
    """True for a lock left by a build that died: old enough, and nobody works in its folder."""
    lock = folder / LOCK
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > stale_after_s and not _workers(folder)


def clear_stale_lock(folder: Path, log: logging.Logger, *, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Remove a stale build lock (see :func:`lock_is_stale`); returns whether one was removed."""
    if not lock_is_stale(folder, stale_after_s=stale_after_s):
        return False
    (folder / LOCK).unlink(missing_ok=True)
    log.warning("removed a stale build lock %s (a build of %s was interrupted); building again", folder / LOCK, OP)
    return True


def wait_for_lock(folder: Path, timeout_s: float, log: logging.Logger, *, stale_after_s: float = STALE_AFTER_S) -> None:
    """Wait while another process builds in ``folder``; StageError after ``timeout_s``."""
    lock = folder / LOCK
    started = last_note = time.monotonic()
    while lock.exists():
        if clear_stale_lock(folder, log, stale_after_s=stale_after_s):
            return
        waited = time.monotonic() - started
        if waited > timeout_s:
            raise StageError(
                f"waited {waited:.0f}s for another build of DeepSpeed's {OP} op to finish ({lock} is held by "
                f"pids {', '.join(map(str, _workers(folder))) or 'unknown'}); stop that build or delete the lock "
                f"(limit: {TIMEOUT_ENV}={timeout_s:g})"
            )
        if time.monotonic() - last_note > _PROGRESS_EVERY_S:
            log.info("waiting for another process to finish building DeepSpeed's %s op (%.0fs)", OP, waited)
            last_note = time.monotonic()
        time.sleep(0.5)


def load_command() -> list[str]:
    """The command that loads the op as a worker will (:func:`_build`), building it where torch decides it must."""
    return [sys.executable, "-m", "tempa.recipes.jit_ops"]


# ninja's line for a build step it runs (`[1/3] c++ ...`): the load compiles, it is not a no-op.
_NINJA_STEP = re.compile(rb"^\[\d+/\d+\] ", re.MULTILINE)
# A load quiet for this long is said to be building even if ninja has not printed a step yet (its output may lag).
_QUIET_S = 20.0


def _compiling(log_file: Path, offset: int) -> bool:
    """Whether the load's output (``log_file`` from ``offset``) shows ninja running a build step."""
    with open(log_file, "rb") as handle:
        handle.seek(offset)
        return _NINJA_STEP.search(handle.read()) is not None


def _so_stamp(folder: Path) -> tuple[int, int, int] | None:
    try:
        st = (folder / f"{OP}.so").stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def ensure_shm_op(log: logging.Logger, log_file: Path, *, timeout_s: float | None = None) -> None:
    """Make sure ``deepspeed_shm_comm`` is built before a CPU DeepSpeed group needs it (see module doc).

    The op is loaded here, in a subprocess, before every such launch, as the workers will load it: whether it needs
    building is ninja's call (sources, flags and torch as they are now), not a ``.so`` being there. A ``.so`` left by
    an older build was taken as built, and the workers then rebuilt it, minutes with no output. A load with nothing to
    build takes seconds and says nothing; one that compiles gets the progress line. A process that loaded it loads it
    again only once its ``.so`` changed (another environment rebuilt it, or it was deleted)."""
    timeout_s = build_timeout_s() if timeout_s is None else timeout_s
    folder = build_dir()
    clear_stale_lock(folder, log)
    wait_for_lock(folder, timeout_s, log)
    if (stamp := _so_stamp(folder)) is not None and _loaded.get(folder) == stamp:
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = last_note = time.monotonic()
    building = False
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    with open(log_file, "a", encoding="utf-8") as out, held_signals() as held:
        offset = out.tell()
        proc = subprocess.Popen(load_command(), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            held.release()  # a Ctrl-C or SIGTERM that came while starting is raised here, and stops the build
            while (code := proc.poll()) is None:
                waited = time.monotonic() - started
                if waited > timeout_s:
                    raise StageError(
                        f"building DeepSpeed's {OP} op took more than {timeout_s:g}s ({TIMEOUT_ENV}); see {log_file}, "
                        f"or build it by hand: python -m tempa.recipes.jit_ops"
                    )
                time.sleep(0.5)
                if not building and (waited > _QUIET_S or _compiling(log_file, offset)):
                    building, last_note = True, time.monotonic()
                    log.info("building DeepSpeed's %s op for this machine, once (minutes on a small CPU machine); "
                             "log: %s", OP, log_file)
                elif building and time.monotonic() - last_note > _PROGRESS_EVERY_S:
                    log.info("still building DeepSpeed's %s op (%.0fs)", OP, waited)
                    last_note = time.monotonic()
        finally:
            if proc.poll() is None:
                _kill(proc)
                (folder / LOCK).unlink(missing_ok=True)  # ours: the build it guarded is gone
    if code != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise StageError(f"building DeepSpeed's {OP} op failed (exit code {code}): {tail[0]} (log: {log_file})")
    if building or _compiling(log_file, offset):  # a build that ended before its progress line still says so
        log.info("built DeepSpeed's %s op in %.0fs", OP, time.monotonic() - started)
    if (stamp := _so_stamp(folder)) is not None:
        _loaded[folder] = stamp


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _build() -> int:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not builder.is_compatible():
        print(f"{OP}: not available on this machine; DeepSpeed falls back to torch.distributed")
        return 0
    builder.jit_load(verbose=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_build())
