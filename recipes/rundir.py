"""The run directory as the runner keeps it: manifests, DONE markers, the lock, crash-safe clears.

The names of the run directory's entries, and the rule for stage names, are part of the stage
contract (:mod:`tempa.sft.run_layout`); this module is the only writer of a stage's
``manifest.json``, ``metrics.json`` and ``DONE``, and the one reader of manifests (``tempa
status``, ``tempa plan``, ``tempa report`` and the runner itself, for the results of stages it
skips). Everything it deletes lies inside the run directory (:func:`tempa.sft.files.remove_tree`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tempa.recipes.software import Software
from tempa.sft.files import (
    cache_root,
    close_parent_only,
    ensure_inside,
    finite_json,
    flock_held,
    flush_filesystems,
    json_or_none,
    parent_only,
    pid_alive,
    remove_tree,
    write_json,
)
from tempa.sft.run_layout import DONE, FORCED_RUN, LOCK, MANIFEST, METRICS, RESOLVED_RECIPE
from tempa.sft.stage_api import RunPath, StageResult, Upstream

__all__ = ["LockOwner", "Manifest", "RunLock", "RunLockedError", "cache_root", "lock_owner", "read_manifest"]


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
    software: Software | None = Field(
        default=None, description="The software it ran under: tempa (and its git commit), torch, transformers, trl, "
        "... (no part of its fingerprint); None: an older tempa's manifest, which did not record it.")
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
    train_args: dict[str, Any] | None = Field(
        default=None, description="A training stage's trainer arguments as it ran, tempa's defaults included (no part "
        "of its fingerprint: `tempa plan` shows them for a complete stage, and any that this tempa's defaults now set "
        "otherwise); None: a stage that trains nothing, or an older tempa's manifest.")
    profile: str | None = Field(
        default=None, description="The recipe profile it ran with (--profile; '' for none, None: an older tempa's "
        "manifest, which did not say).")
    result: dict[str, Any] | None = Field(default=None, description="The stage's typed result, as JSON.")
    interrupted: str | None = Field(
        default=None, description="What stopped the run during this stage (Ctrl-C, SIGTERM, SIGHUP), as the runner "
        "caught it; '' while nothing did, or where the runner could not say (SIGKILL, the out-of-memory killer, a "
        "crash of the machine); None: an older tempa's manifest, which did not record it.")

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
        return Upstream(self.name, self.kind, config, result, self.duration_s, self.train_args)


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


def lost_record(stage_dir: Path) -> str | None:
    """What is wrong with the record of a stage that ran, where it cannot be read: its manifest.json is there but no
    manifest (cut short by a full disk or a copy, edited by hand), or DONE is there without it. None where the record
    reads, or the stage never started. The runner must not take such a stage for one that never ran: it would clear a
    finished stage's model, or an interrupted one's checkpoints."""
    path = stage_dir / MANIFEST
    if not path.exists() and not path.is_symlink():
        return f"{stage_dir / DONE} is there but {path} is missing" if (stage_dir / DONE).exists() else None
    data = json_or_none(path)
    if not isinstance(data, dict):
        return f"{path} cannot be read (truncated?)"
    try:
        Manifest.model_validate(data, context={"run_dir": stage_dir.parent})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "(top)"
        return f"{path} is not a stage manifest ({where}: {error['msg']})"
    return None


def write_metrics(stage_dir: Path, metrics: dict[str, Any]) -> None:
    """metrics.json, for the user's tools: a metric that is no number (a win rate over no pair) is null there."""
    write_json(stage_dir / METRICS, finite_json(metrics))


class ForcedRun(BaseModel):
    """A `--from`/`--only` run that has not completed (``forced-run.json`` in the run folder, removed when a run
    completes). "Run the same command again to resume" holds for it: the same flags again force only what it has not
    (re)started yet, where they would otherwise re-run the stages it finished, and start its interrupted one over."""

    model_config = ConfigDict(extra="forbid")

    flag: Literal["--from", "--only"]
    stage: str
    started_at: float

    @property
    def command(self) -> str:
        return f"{self.flag} {self.stage}"


def forced_run(run_dir: Path, from_stage: str | None, only: str | None) -> ForcedRun | None:
    """The unfinished run that ``from_stage``/``only`` (a command's flags) would continue: the recorded one, when it
    forced the same stage with the same flag; else None."""
    if from_stage is None and only is None:
        return None
    data = json_or_none(run_dir / FORCED_RUN)
    try:
        recorded = ForcedRun.model_validate(data) if isinstance(data, dict) else None
    except ValidationError:
        return None  # unreadable: the run forces what its flags say, as if none were recorded
    flag, stage = ("--from", from_stage) if from_stage is not None else ("--only", only)
    return recorded if recorded is not None and (recorded.flag, recorded.stage) == (flag, stage) else None


def record_forced_run(run_dir: Path, from_stage: str | None, only: str | None) -> None:
    """Before a run's first stage: record what its flags force (kept when it continues an unfinished one), or that
    it forces nothing."""
    if from_stage is None and only is None:
        (run_dir / FORCED_RUN).unlink(missing_ok=True)
    elif forced_run(run_dir, from_stage, only) is None:
        flag, stage = ("--from", from_stage) if from_stage is not None else ("--only", only)
        write_json(run_dir / FORCED_RUN, ForcedRun(flag=flag, stage=stage, started_at=time.time()).model_dump())


def done_fingerprint(stage_dir: Path) -> str | None:
    data = json_or_none(stage_dir / DONE)
    return data.get("fingerprint") if isinstance(data, dict) else None


def damaged_output(manifest: Manifest, run_dir: Path) -> list[str]:
    """What the model folder a complete stage made in its own folder lacks since (a file deleted, a copy or sync cut
    short), as export and push judge a model folder (:func:`~tempa.merge.publish.whole_model_problems`): each
    safetensors header, each JSON file parses, and the names and sizes of the record the stage left; nothing is
    hashed. Empty for a stage that made none; another stage's model it hands on is that stage's to judge. Its own
    folder is judged wherever it lies: moved to another disk and linked back, it is still what the stage made."""
    from tempa.merge.publish import FINAL_RECORD, NO_WEIGHTS, whole_model_problems

    model = (manifest.result or {}).get("model")
    if not isinstance(model, str) or not model:
        return []
    recorded = Path(model)  # relative to the run directory when the stage wrote it there (stage_api)
    if recorded.is_absolute() or recorded.parts[:1] != (manifest.name,) or ".." in recorded.parts:
        return []
    folder = run_dir / recorded
    if not folder.is_dir():
        return [f"{model}: missing"]
    problems = whole_model_problems(folder)
    if (folder / FINAL_RECORD).is_file():  # the record names the weights the stage made, if it made any
        problems = [problem for problem in problems if problem != NO_WEIGHTS]
    return problems


def mark_done(stage_dir: Path, fingerprint: str) -> None:
    """Call the stage complete. What it wrote (its folder, and the caches it filled) is flushed to the disks first:
    the page cache writes back in its own order, so a node's hard reset could keep DONE and lose the weights or data
    it vouches for. Once per stage: the wait is for writes the disk had to make anyway."""
    flush_filesystems([stage_dir, cache_root()])
    write_json(stage_dir / DONE, {"fingerprint": fingerprint, "finished_at": time.time()})


def clear_stage(stage_dir: Path, run_dir: Path) -> None:
    """Remove a folder of ``run_dir``: renamed away first, so a kill mid-delete leaves no half-folder."""
    stage_dir = ensure_inside(stage_dir, [run_dir])
    if not stage_dir.exists() and not stage_dir.is_symlink():
        return
    trash = stage_dir.with_name(f".trash-{stage_dir.name}-{os.getpid()}-{time.time_ns()}")
    os.replace(stage_dir, trash)
    remove_tree(trash, [run_dir])


def clear_stage_but(stage_dir: Path, run_dir: Path, keep: Iterable[Path]) -> None:
    """Clear a stage's folder but for the files in ``keep`` (journals a re-run reuses what it can of). DONE goes first,
    so a kill part-way leaves a folder that reads as unfinished, never as complete; every other entry is renamed into
    one trash folder (swept at the next run's start if the kill comes first); the kept files never move."""
    stage_dir = ensure_inside(stage_dir, [run_dir])
    kept = {_unresolved_leaf(path) for path in keep}
    if not kept:
        clear_stage(stage_dir, run_dir)
        return
    if not stage_dir.is_dir() or stage_dir.is_symlink():
        return
    (stage_dir / DONE).unlink(missing_ok=True)
    trash = stage_dir.with_name(f".trash-{stage_dir.name}-{os.getpid()}-{time.time_ns()}")
    _trash_all_but(stage_dir, stage_dir, trash, kept)
    if trash.exists():
        remove_tree(trash, [run_dir])


def _unresolved_leaf(path: Path) -> Path:
    """``path`` with its folder resolved and its last part as it is (a link is judged as the link)."""
    return Path(os.path.realpath(Path(path).parent)) / Path(path).name


def _trash_all_but(folder: Path, stage_dir: Path, trash: Path, kept: set[Path]) -> None:
    for entry in sorted(folder.iterdir()):
        entry = _unresolved_leaf(entry)
        if entry in kept:
            continue
        if entry.is_dir() and not entry.is_symlink() and any(path.is_relative_to(entry) for path in kept):
            _trash_all_but(entry, stage_dir, trash, kept)
            continue
        target = trash / entry.relative_to(stage_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(entry, target)


def sweep_trash(run_dir: Path) -> None:
    for path in run_dir.glob(".trash-*"):
        remove_tree(path, [run_dir])


class RunLockedError(RuntimeError):
    pass


class NotARunDirError(RuntimeError):
    """A --run-dir that holds someone's files: tempa would clear folders in it that share a stage's name."""


def check_run_dir(run_dir: Path) -> None:
    """A run goes into a new or empty folder, or one that an earlier run of tempa made, where it can write."""
    existing = next(folder for folder in (run_dir, *run_dir.parents) if folder.exists())
    if existing.is_dir():
        try:  # a file made and removed: access() says yes to root on any mount that is not read-only
            os.close(os.open(probe := existing / f".tempa-probe-{os.getpid()}", os.O_CREAT | os.O_WRONLY, 0o600))
            os.unlink(probe)
        except OSError as exc:
            raise NotARunDirError(f"{run_dir}: the run directory cannot be written in {existing} ({exc.strerror}); "
                                  "pick a writable --run-dir") from None
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise NotARunDirError(f"{run_dir}: --run-dir is a file; choose a new or empty folder")
    entries = {e for e in os.listdir(run_dir) if e != LOCK and not e.startswith(LOCK + ".")}
    if entries and RESOLVED_RECIPE not in entries:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise NotARunDirError(
            f"{run_dir}: not empty ({shown}) and not a tempa run directory (no {RESOLVED_RECIPE}); choose a new or "
            "empty --run-dir"
        )


def remove_unused_run_dir(made: list[Path]) -> None:
    """Remove the run directory a run made and stopped in before it wrote anything (``made``: that folder and the
    parents made with it, deepest first), where only its lock file is left: a refused run leaves no folder behind.
    A folder another runner has begun to use holds more and stays."""
    run_dir = made[0]
    try:
        if set(os.listdir(run_dir)) - {LOCK}:
            return
        (run_dir / LOCK).unlink(missing_ok=True)
        for folder in made:
            folder.rmdir()
    except OSError:  # not empty (another runner's), or gone: what is there stays
        return


def resolved_recipe(run_dir: Path) -> dict[str, Any] | None:
    """The run directory's recipe.resolved.yaml (the recipe its last run ran), read without validating it, or None
    where there is none or it cannot be read: the commands that read a run need its names and stages only, and
    validating would import trl and fail on files that moved since."""
    import yaml

    from tempa.recipes.yaml_loader import RecipeTextError, parse_yaml, read_text

    try:
        document = parse_yaml(read_text(run_dir / RESOLVED_RECIPE))
    except (OSError, yaml.YAMLError, RecipeTextError):
        return None
    return document if isinstance(document, dict) else None


def recipe_ran(run_dir: Path) -> str | None:
    """The name of the recipe the run directory's last run ran, or None where it cannot be read."""
    name = (resolved_recipe(run_dir) or {}).get("name")
    return name if isinstance(name, str) else None


def require_run_dir(run_dir: Path) -> None:
    """A folder a run made, for the commands that read one (status, report)."""
    if not run_dir.exists():
        raise NotARunDirError(f"{run_dir}: no such run directory")
    if not (run_dir / RESOLVED_RECIPE).is_file():
        inside = enclosing_run_dir(run_dir)
        raise NotARunDirError(f"{run_dir}: not a tempa run directory (no {RESOLVED_RECIPE})"
                              + (f"; it lies inside the run {inside}: give that" if inside is not None else ""))


LOCK_OWNER = LOCK + ".owner"  # who holds the run directory: host, pid, start; its mtime is the heartbeat
LEASE_S = float(os.environ.get("TEMPA_LOCK_LEASE_S", "120"))  # a holder silent this long (other host) is gone


class LockOwner(BaseModel):
    model_config = ConfigDict(extra="ignore")

    host: str
    pid: int
    token: str
    started_at: float


def _read_owner(path: Path) -> LockOwner | None:
    data = json_or_none(path)
    try:
        return LockOwner.model_validate(data) if isinstance(data, dict) else None
    except ValidationError:
        return None


def _server_now(folder: Path) -> float:
    """The file system's clock: the mtime of a file just written in ``folder`` (hosts' clocks may differ)."""
    probe = folder / f"{LOCK}.probe-{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"
    probe.write_bytes(b"")
    try:
        return probe.stat().st_mtime
    finally:
        probe.unlink(missing_ok=True)


def _stale(owner: LockOwner, path: Path, *, flock_held_by_us: bool, probe: bool = True) -> bool:
    """Whether the recorded holder is gone: same host, its process (or flock) is; another host, its heartbeat.

    ``probe``: read the file server's clock by writing a probe file; a reader that must not write
    (a joining node) uses its own clock with twice the lease, for clocks that disagree.
    """
    if owner.host == socket.gethostname():
        return flock_held_by_us or not pid_alive(owner.pid)
    try:
        if probe:
            return _server_now(path.parent) - path.stat().st_mtime > LEASE_S
        return time.time() - path.stat().st_mtime > 2 * LEASE_S
    except FileNotFoundError:
        return True


def lock_owner(run_dir: Path) -> LockOwner | None:
    """The live holder of ``run_dir`` (any host), or None; writes nothing."""
    path = run_dir / LOCK_OWNER
    owner = _read_owner(path)
    if owner is None:
        return None
    if owner.host == socket.gethostname():
        return owner if pid_alive(owner.pid) and _flock_busy(run_dir) is not False else None
    return None if _stale(owner, path, flock_held_by_us=False, probe=False) else owner


def _flock_busy(run_dir: Path) -> bool | None:
    """Whether a process holds ``run_dir``'s flock; None where the file system has no flock."""
    path = run_dir / LOCK
    return flock_held(path) if path.exists() else False


class RunLock:
    """One orchestrator per run directory, on a local disk or shared storage (NFS, Lustre, GPFS).

    Two layers: an exclusive ``flock`` on ``.lock`` (the kernel drops it when the holder dies;
    on NFS it is a POSIX lock through the server, on Lustre only with the ``flock`` mount option,
    node-local with ``localflock``; a file system without flock skips it), and an owner record
    ``.lock.owner`` created with ``link()``, which is atomic on every POSIX and network file
    system, holding host, pid and start time. A background thread touches the record every
    ``LEASE_S / 4`` seconds; another host takes a record over only once its heartbeat is older
    than ``LEASE_S`` (``TEMPA_LOCK_LEASE_S``, by the file server's clock), the same host as soon
    as its process is gone.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self.owner_path = run_dir / LOCK_OWNER
        self._fd: int | None = None
        self._token = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except BlockingIOError:
            os.close(fd)
            owner = _read_owner(self.owner_path)
            raise RunLockedError(self._in_use(owner, flocked=True)) from None
        except OSError:  # no flock here (e.g. Lustre without -o flock): the owner record alone decides
            flocked = False
        try:
            self._claim(flocked)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = parent_only(fd)
        self._beat = threading.Thread(target=self._heartbeat, name="tempa-run-lock", daemon=True)
        self._beat.start()
        return self

    def _claim(self, flocked: bool) -> None:
        me = LockOwner(host=socket.gethostname(), pid=os.getpid(), token=self._token, started_at=time.time())
        tmp = self.path.parent / f"{LOCK}.tmp-{self._token}"
        tmp.write_text(me.model_dump_json())
        try:
            for _ in range(2):
                try:
                    os.link(tmp, self.owner_path)
                    return
                except FileExistsError:
                    pass
                owner = _read_owner(self.owner_path)
                if owner is not None and not _stale(owner, self.owner_path, flock_held_by_us=flocked):
                    raise RunLockedError(self._in_use(owner))
                self._break(owner)
            raise RunLockedError(self._in_use(_read_owner(self.owner_path)))
        finally:
            tmp.unlink(missing_ok=True)

    def _break(self, stale: LockOwner | None) -> None:
        """Move a dead holder's record aside; put it back if another process replaced it meanwhile."""
        aside = self.path.parent / f"{LOCK}.stale-{self._token}"
        try:
            os.rename(self.owner_path, aside)
        except FileNotFoundError:
            return
        moved = _read_owner(aside)
        if stale is not None and moved is not None and moved.token != stale.token:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.owner_path)
        aside.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(LEASE_S / 4):
            owner = _read_owner(self.owner_path)
            if owner is None or owner.token != self._token:
                return
            with contextlib.suppress(OSError):
                os.utime(self.owner_path)  # no times: the file server stamps its own clock

    def _in_use(self, owner: LockOwner | None, *, flocked: bool = False) -> str:
        if flocked and owner is not None and owner.host == socket.gethostname() and not pid_alive(owner.pid):
            # the flock outlived the runner: a process it started still has the lock file open
            holders = lock_holders(self.path)
            held_by = (f"pid {', '.join(map(str, holders))} still hold{'s' if len(holders) == 1 else ''} {self.path}; "
                       f"end {'it' if len(holders) == 1 else 'them'} (kill {' '.join(map(str, holders))})"
                       if holders else f"another process still holds {self.path}; end it (fuser -v {self.path})")
            return (f"{self.path.parent}: run directory is locked, but the run that took it (pid {owner.pid} on "
                    f"{owner.host}) is gone: {held_by}, then run again")
        who = f"pid {owner.pid} on {owner.host}" if owner is not None else "another process"
        return f"{self.path.parent}: run directory is in use by {who}; wait for it or pick another --run-dir"

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        owner = _read_owner(self.owner_path)
        if owner is not None and owner.token == self._token:
            self.owner_path.unlink(missing_ok=True)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            close_parent_only(self._fd)
            self._fd = None


def lock_holders(path: Path) -> list[int]:
    """The processes of this host (those this user may see) with ``path`` open, from /proc; [] elsewhere."""
    target = os.path.realpath(path)
    holders = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == target for fd in fd_dir.iterdir()):
                holders.append(int(fd_dir.parent.name))
    return sorted(holders)


def run_in_progress(run_dir: Path) -> bool:
    """True while some runner (on any host) holds the run directory."""
    return bool(_flock_busy(run_dir)) or lock_owner(run_dir) is not None


def refuse_while_running(run_dir: Path, command: str) -> None:
    """Refuse ``command`` (export, push) on ``run_dir`` while a `tempa run` holds it, by the lock the runner takes:
    the run may clear or replace the final model under it (an export said "wrote" a GGUF the run then deleted)."""
    if not run_in_progress(run_dir):
        return
    owner = _read_owner(run_dir / LOCK_OWNER)
    who = f"pid {owner.pid} on {owner.host}" if owner is not None else "another process"
    raise RunLockedError(f"{run_dir}: a `tempa run` ({who}) is using this run directory and may replace its final "
                         f"model; wait for it, then {command} again")


def enclosing_run_dir(path: Path) -> Path | None:
    """The run directory ``path`` lies in (a stage's final/ folder, a GGUF in it), or None."""
    for folder in Path(os.path.realpath(path)).parents:
        if (folder / RESOLVED_RECIPE).is_file():
            return folder
    return None
