"""The run directory: one folder per stage, a manifest each, a DONE marker written last, a lock.

Layout::

    run_dir/
      .lock                      held (flock) by the runner writing this folder
      recipe.resolved.yaml       the recipe after extends + --set
      tokenizer/                 base tokenizer with the recipe's chat template baked in
      <stage>/manifest.json      fingerprint, status, timings, metrics (updated as it runs)
      <stage>/metrics.json       the stage's metrics
      <stage>/DONE               {"fingerprint": ...}; present only for a complete stage
      final -> <last stage>/final
      report/                    `tempa report`

A stage's name is its folder: a safe name (``tempa.sft.stage_api.safe_name``) that is none of
the entries above (``RESERVED_NAMES``).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from tempa.sft.files import ensure_inside, remove_tree, write_atomic

DONE = "DONE"
RESOLVED_RECIPE = "recipe.resolved.yaml"  # in the run folder: the recipe after extends, profile and --set
TOKENIZER_DIR = "tokenizer"
FINAL_LINK = "final"
REPORT_DIR = "report"
LOCK_FILE = ".lock"
# The run directory's own entries: a stage (whose folder is run_dir/<name>) may not take one of
# these names, or running it would replace the run's tokenizer, final model, report, ...
# Compared case-insensitively, for case-insensitive filesystems.
RESERVED_NAMES = frozenset({RESOLVED_RECIPE, TOKENIZER_DIR, FINAL_LINK, REPORT_DIR, LOCK_FILE, "logs"})


def reserved_name(name: str) -> str | None:
    """Why ``name`` cannot be a stage folder in the run directory, or None when it can."""
    if name.lower() in RESERVED_NAMES:
        return f"'{name}' is one of the run directory's own entries ({', '.join(sorted(RESERVED_NAMES))})"
    return None





MANIFEST = "manifest.json"


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def done_fingerprint(stage_dir: Path) -> str | None:
    data = read_json(stage_dir / DONE)
    return data.get("fingerprint") if data else None


def mark_done(stage_dir: Path, fingerprint: str) -> None:
    write_json(stage_dir / DONE, {"fingerprint": fingerprint, "finished_at": time.time()})


def clear_stage(stage_dir: Path, run_dir: Path) -> None:
    """Remove a folder of ``run_dir``: renamed away first, so a kill mid-delete leaves no half-folder."""
    stage_dir = ensure_inside(stage_dir, [run_dir])
    if not stage_dir.exists() and not stage_dir.is_symlink():
        return
    trash = stage_dir.with_name(f".trash-{stage_dir.name}-{os.getpid()}-{time.time_ns()}")
    os.replace(stage_dir, trash)
    remove_tree(trash, [run_dir])


def sweep_trash(run_dir: Path) -> None:
    for path in run_dir.glob(".trash-*"):
        remove_tree(path, [run_dir])


class RunLockedError(RuntimeError):
    pass


class NotARunDirError(RuntimeError):
    """A --run-dir that holds someone's files: tempa would clear folders in it that share a stage's name."""


def check_run_dir(run_dir: Path) -> None:
    """A run goes into a new or empty folder, or one that an earlier run of tempa made."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise NotARunDirError(f"{run_dir}: --run-dir is a file; choose a new or empty folder")
    entries = set(os.listdir(run_dir)) - {LOCK_FILE}
    if entries and RESOLVED_RECIPE not in entries:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise NotARunDirError(
            f"{run_dir}: not empty ({shown}) and not a tempa run directory (no {RESOLVED_RECIPE}); choose a new or "
            "empty --run-dir"
        )


class RunLock:
    """An exclusive flock on ``run_dir/.lock``; the kernel drops it when the holder dies."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent}: run directory is in use by pid {holder}; wait for it or pick another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def run_in_progress(run_dir: Path) -> bool:
    """True while some runner holds the run directory's lock."""
    path = run_dir / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    return False
