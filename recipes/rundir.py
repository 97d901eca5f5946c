"""The run directory as the runner keeps it: manifests, DONE markers, the lock, crash-safe clears.

The names of the run directory's entries, and the rule for stage names, are part of the stage
contract (:mod:`tempa.sft.run_layout`); this module is the only writer of a stage's
``manifest.json``, ``metrics.json`` and ``DONE``, and the one reader of manifests (``tempa
status``, ``tempa plan``, ``tempa report`` and the runner itself, for the results of stages it
skips). Everything it deletes lies inside the run directory (:func:`tempa.sft.files.remove_tree`).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tempa.sft.files import cache_root, ensure_inside, json_or_none, remove_tree, write_json
from tempa.sft.run_layout import DONE, LOCK, MANIFEST, METRICS, RESOLVED_RECIPE
from tempa.sft.stage_api import RunPath, StageResult, Upstream

__all__ = ["Manifest", "RunLock", "RunLockedError", "cache_root", "read_manifest"]


class Manifest(BaseModel):
    """One stage's record in the run directory (``<stage>/manifest.json``), updated as it runs."""

    model_config = ConfigDict(extra="ignore")  # manifests of older tempa versions still read

    name: str
    kind: str
    fingerprint: str
    components: dict[str, Any] = Field(default_factory=dict, description="What the fingerprint is made of.")
    status: Literal["running", "done", "failed"]
    action: str = ""
    started_at: float
    finished_at: float | None = None
    duration_s: float | None = None
    tempa_version: str = ""
    error: str | None = None
    start_model: RunPath | None = Field(default=None, description="The model the stage started from.")
    run_id: str = Field(default="", description="This run of the stage; a later stage records it in `inputs`.")
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="The run_id of each earlier stage this one read when it ran: another run of one of them since "
        "(`--only`) leaves this stage stale.",
    )
    config: dict[str, Any] | None = Field(
        default=None, description="The stage's resolved config as it ran (`tempa plan` shows what changed since)."
    )
    result: dict[str, Any] | None = Field(default=None, description="The stage's typed result, as JSON.")

    @property
    def metrics(self) -> dict[str, Any]:
        """The headline metrics of a finished stage (what its metrics.json holds)."""
        metrics = (self.result or {}).get("metrics")
        return metrics if isinstance(metrics, dict) else {}

    def write(self, stage_dir: Path, run_dir: Path) -> None:
        write_json(stage_dir / MANIFEST, self.model_dump(mode="json", context={"run_dir": run_dir}))

    def upstream(self, result_type: type[StageResult], config: Any, run_dir: Path) -> Upstream:
        """This stage as a later stage sees it (its result re-anchored in ``run_dir``)."""
        result = result_type.model_validate(self.result or {}, context={"run_dir": run_dir})
        return Upstream(self.name, self.kind, config, result, self.duration_s)


def stale_inputs(manifest: Manifest, current: dict[str, str]) -> list[str]:
    """The earlier stages ``manifest``'s stage read that have run again since (``current``: their run ids)."""
    return [name for name, run_id in manifest.inputs.items() if current.get(name, run_id) != run_id]


def read_manifest(stage_dir: Path) -> Manifest | None:
    """A stage's manifest, or None when there is none (or it cannot be read as one)."""
    data = json_or_none(stage_dir / MANIFEST)
    if not isinstance(data, dict):
        return None
    try:
        return Manifest.model_validate(data, context={"run_dir": stage_dir.parent})
    except ValidationError:
        return None


def write_metrics(stage_dir: Path, metrics: dict[str, Any]) -> None:
    write_json(stage_dir / METRICS, metrics)


def done_fingerprint(stage_dir: Path) -> str | None:
    data = json_or_none(stage_dir / DONE)
    return data.get("fingerprint") if isinstance(data, dict) else None


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
    entries = set(os.listdir(run_dir)) - {LOCK}
    if entries and RESOLVED_RECIPE not in entries:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise NotARunDirError(
            f"{run_dir}: not empty ({shown}) and not a tempa run directory (no {RESOLVED_RECIPE}); choose a new or "
            "empty --run-dir"
        )


class RunLock:
    """An exclusive flock on ``run_dir/.lock``; the kernel drops it when the holder dies."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
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
    path = run_dir / LOCK
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
