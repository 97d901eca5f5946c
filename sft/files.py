"""File helpers shared by the stages and the runner: atomic writes, staged folders, cache builds, cheap
copies, relative links, content digests and guarded deletes.

Every folder tempa deletes or replaces goes through :func:`remove_tree` or :func:`staging_dir`,
which first check that the target lies inside the roots tempa owns (the run directory, the
cache): a name or path that slipped past validation can never make tempa delete a user's folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import numbers
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tempa.sft.stage_api import StageError

_DIGESTS: dict[tuple[str, int, int], str] = {}


class UnsafePathError(StageError):
    """tempa was about to delete or replace something outside the folders it owns."""


def ensure_inside(path: Path, roots: Iterable[Path], *, action: str = "delete") -> Path:
    """``path`` with its folder resolved, if it lies strictly inside one of ``roots``.

    The last component is not resolved: a symlink is judged (and removed) as the link itself,
    never as the folder it points to.
    """
    path = Path(path)
    roots = [Path(os.path.realpath(root)) for root in roots]
    target = Path(os.path.realpath(path.parent)) / path.name
    if path.name not in ("", ".", "..") and any(target != r and target.is_relative_to(r) for r in roots):
        return target
    where = ", ".join(str(r) for r in roots) or "none given"
    raise UnsafePathError(f"refusing to {action} {path}: it is not inside the run directory or the cache ({where})")


def remove_tree(path: Path, roots: Iterable[Path]) -> None:
    """Delete ``path`` (a folder, file or link; absent is fine) after :func:`ensure_inside` allows it."""
    target = ensure_inside(path, roots)
    if target.is_symlink() or target.is_file():
        target.unlink(missing_ok=True)
    elif target.exists():
        shutil.rmtree(target, ignore_errors=True)


def cache_root() -> Path:
    """Machine-wide cache (tiny default, tokenised data, train-argument specs): $TEMPA_CACHE or ~/.cache/tempa, made
    if missing; a :class:`StageError` naming it where it cannot be written (every caller writes there)."""
    root = Path(os.environ.get("TEMPA_CACHE") or Path.home() / ".cache" / "tempa")
    try:
        root.mkdir(parents=True, exist_ok=True)
        writable = os.access(root, os.W_OK)
    except OSError as exc:
        writable, why = False, exc.strerror
    else:
        why = "read-only to this user or on a read-only file system"
    if not writable:
        named = "TEMPA_CACHE" if os.environ.get("TEMPA_CACHE") else "tempa's cache (TEMPA_CACHE unset)"
        raise StageError(f"{named} {root}: cannot be written ({why}); point TEMPA_CACHE at a writable folder")
    return root


def sync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, and the folders, to the disk before a marker vouches for them.

    The page cache writes back in its own order and time (ext4: up to ~30 s; a new file's data after the rename
    that names the marker), so a node's hard reset or power loss could leave a checkpoint with its COMPLETE
    marker and empty weight files, which every resume then fails to load. The files are already written, so
    this waits only for what the disk would have to write anyway.
    """
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


def umask_modes(folder: Path) -> None:
    """The files under ``folder`` readable as the user's umask says (0644 under the usual 022): safetensors' saver
    creates 0600 files, so a teammate on a shared node could not read a stage's model or resume its checkpoints."""
    mode = 0o666 & ~_umask()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):  # a file system that keeps its own modes: the files are written
                    os.chmod(path, mode)


def write_marker(path: Path, text: str) -> None:
    """Write a completion marker durably: its content, then its name in the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flush_filesystems(paths: Iterable[Path]) -> None:
    """Write the file systems holding ``paths`` to their disks (Linux's syncfs: those file systems alone, not every
    one on a node shared with others; elsewhere, sync)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    syncfs = getattr(libc, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # not there (a cache never made): nothing of it to flush
            continue
        try:
            syncfs(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a text file (UTF-8; bytes as they are) via a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's private 0600 would stick to the published file
        with os.fdopen(fd, "wb") as f:
            f.write(text if isinstance(text, bytes) else text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a failed write names no file (a full disk: "[Errno 28] No space left on device")
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write a JSON file atomically (UTF-8, indented, keys in the order given)."""
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def finite_json(data: Any) -> Any:
    """``data`` with every float that is no finite number (NaN, Infinity) as None, for JSON that readers other than
    Python take: Python writes NaN and Infinity bare, which jq, JavaScript and most JSON readers refuse."""
    if isinstance(data, bool | int | str) or data is None:
        return data
    if getattr(getattr(data, "dtype", None), "kind", None) == "b":  # numpy's bool: no bool to json
        return bool(data)
    if isinstance(data, numbers.Integral):  # numpy's integers
        return int(data)
    if isinstance(data, numbers.Real):  # a float, numpy's included
        return float(data) if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite_json(value) for value in data]
    return data


def write_jsonl(path: Path, rows: Sequence[Any]) -> None:
    """Write a whole JSON Lines file atomically."""
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))


def json_or_none(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (a file being replaced)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def point_link(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to ``target``, atomically (never a moment without one)."""
    tmp = link.with_name(f".{link.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


def digest(data: Any) -> str:
    """sha256 of a JSON-serialisable value (keys sorted, so dict order does not matter)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path) -> str:
    """Content hash of a file, memoised per (path, size, mtime) within one process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


SAMPLE_BLOCKS = 64
SAMPLE_BYTES = 16 << 10
_SAMPLED: dict[tuple[str, int, int], str] = {}


def sampled_digest(path: Path) -> str:
    """A large file's size and the hash of 64 blocks of 16 KiB spread evenly over it (first and last included).

    Training rewrites nearly every byte of a weights file, so a model retrained or re-exported in place with
    the same shapes (the same config.json, the same file sizes) reads as changed, for 1 MiB read per file; a
    copy of the file reads as the same (no mtime in it). Memoised per (path, size, mtime) like file_digest.
    """
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SAMPLED:
        h = hashlib.sha256(f"{st.st_size}\0".encode())
        last = max(st.st_size - SAMPLE_BYTES, 0)
        with open(path, "rb") as f:
            for i in range(SAMPLE_BLOCKS):
                f.seek(last * i // (SAMPLE_BLOCKS - 1))
                h.update(f.read(SAMPLE_BYTES))
        _SAMPLED[key] = h.hexdigest()
    return _SAMPLED[key]


def tree_digest(root: Path, *, full_content_below: int | None = 4 << 20) -> str:
    """A folder: relative names, sizes and the content hash of every file below ``full_content_below``.

    With the default, the weights of a multi-GB model are not re-read on every `tempa plan`: a larger
    file is digested by :func:`sampled_digest` (by its size alone, a base model retrained in place kept
    its fingerprint and every stage was skipped as complete). ``None`` hashes every file's content
    (data folders). Hidden files and folders are left out.
    """
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        size = path.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        full = full_content_below is None or size <= full_content_below
        h.update((file_digest(path) if full else sampled_digest(path)).encode())
    return h.hexdigest()


def path_digest(path: Path) -> str:
    return tree_digest(path) if path.is_dir() else file_digest(path)


@contextmanager
def staging_dir(final: Path, *, inside: Iterable[Path]) -> Iterator[Path]:
    """A temporary sibling of ``final`` that replaces it on success and vanishes on failure.

    A crash leaves at most a ``.<name>.partial-*`` folder, never a half-written ``final``.
    ``final`` must lie inside one of the ``inside`` roots (the run directory, the cache).
    """
    final = ensure_inside(Path(final), inside, action="replace")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp's private 0700 would stick to the published folder
    old: Path | None = None
    try:
        yield tmp
        if final.is_symlink() or final.is_file():
            final.unlink()
        elif final.exists():
            # renamed away whole before the new one goes in: a kill mid-delete leaves a .partial folder, not a final
            # folder holding some of the old files
            os.replace(final, old := tmp.with_name(tmp.name + "-old"))
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None:
                os.replace(old, final)  # the old folder back where it was
            raise
        if old is not None:  # the new folder is in place: what is left of the old one is no reason to fail
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_BUILD = re.compile(r"^\.tmp-[0-9a-f]{16}-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
_BUILD_LOCK = ".building"  # in a build folder: flock'ed by the process building it, for as long as it builds


@contextmanager
def cache_build(cache_dir: Path, key: str) -> Iterator[Path]:
    """A new folder in ``cache_dir`` to build the cache entry ``key`` (a hex digest) in, removed on the way out,
    published (:func:`publish_build`) or not.

    Each build is its own folder, so two runs building the same entry never write into one; it names its host and
    pid and holds a flock while it builds, so :func:`sweep_dead_builds` tells one a SIGKILL left from one in progress.
    """
    build_dir = Path(cache_dir) / f".tmp-{key[:16]}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    build_dir.mkdir(parents=True)
    held = _hold(build_dir)
    try:
        yield build_dir
    finally:
        remove_tree(build_dir, [cache_dir])
        if held is not None:
            close_parent_only(held)


def publish_build(build_dir: Path, entry: Path, marker: str, text: str) -> None:
    """Make ``build_dir`` the cache entry ``entry``: its files on the disk first, then its ``marker`` (durably), then
    the rename. Without the flush a node's hard reset could keep the marker beside files the page cache never wrote,
    and every later run would reuse them."""
    sync_tree(build_dir)
    write_marker(build_dir / marker, text)
    try:
        os.replace(build_dir, entry)
    except OSError:
        # Another process finished the same build first; its entry is as good as ours.
        if not (entry / marker).exists():
            raise
        return
    # The lock marks a build in progress, which an entry is not; dropped only once the folder is no longer a .tmp-*
    # build a sweep could find without it (its flock stays on the descriptor cache_build closes).
    (entry / _BUILD_LOCK).unlink(missing_ok=True)


_PARENT_ONLY: set[int] = set()


def parent_only(fd: int) -> int:
    """``fd`` (a descriptor holding a flock) closed in every process this one forks: a flock belongs to the open
    file, which a fork shares, so a forked worker kept the run directory locked, or a cache build marked as in
    progress, after the runner was killed, for as long as the worker lived. Close it with :func:`close_parent_only`."""
    _PARENT_ONLY.add(fd)
    return fd


def close_parent_only(fd: int) -> None:
    """Close a descriptor :func:`parent_only` registered (forgotten first: a later descriptor may get its number)."""
    _PARENT_ONLY.discard(fd)
    os.close(fd)


def _close_parent_only_in_child() -> None:
    for fd in list(_PARENT_ONLY):
        with contextlib.suppress(OSError):
            os.close(fd)  # the parent's lock stays: only this process's reference to the open file goes
    _PARENT_ONLY.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_parent_only_in_child)


def _hold(build_dir: Path) -> int | None:
    """An open descriptor holding ``build_dir``'s flock (the kernel drops it when the process dies, however it dies);
    None where the file system has no flock."""
    fd = os.open(build_dir / _BUILD_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return parent_only(fd)


def sweep_dead_builds(cache_dir: Path) -> list[Path]:
    """Remove the builds (:func:`cache_build`) in ``cache_dir`` whose process (on this host) is gone, and return them.

    A SIGKILL (OOM killer, preemption, a node's hard reset) during data prep skips the ``finally`` that removes a
    build, and the tokenised rows of a large mix are many GB: each kill left one more in the shared cache. A build
    names its host and pid, and holds a flock while it builds: another host's, or a held one (a run building now, in
    this container or another one on the host whose pids this one cannot see), is left alone.
    """
    removed = []
    for path in Path(cache_dir).glob(".tmp-*"):
        match = _BUILD.match(path.name)
        if match is None or match["host"] != socket.gethostname():
            continue
        held = flock_held(path / _BUILD_LOCK)  # None: a build of an older tempa, or a moment before it took it
        if held or (held is None and pid_alive(int(match["pid"]))):
            continue
        remove_tree(path, [cache_dir])
        removed.append(path)
    return removed


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no extra disk for large weights), copying across filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _umask() -> int:
    # Linux says it without setting it: os.umask(0) and back left a window in which another thread (a trainer's
    # data loader, a save) created files 0666
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (in this pid namespace); another user's counts."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def flock_held(path: Path) -> bool | None:
    """Whether a process holds ``path``'s flock (the kernel drops it when its holder dies, however it dies, and it
    is seen across the containers of one host); None when that cannot be told: no such file, no flock on this file
    system."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops a lock this probe took
    return False
