"""Fingerprints: a stage re-runs exactly when its config, its inputs or tempa's version change."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

_FILE_CACHE: dict[tuple[str, int, int], str] = {}


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path) -> str:
    """Content hash of a file, memoised per (path, size, mtime) within one process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_CACHE[key] = h.hexdigest()
    return _FILE_CACHE[key]


def tree_digest(root: Path) -> str:
    """A folder: content of small files (configs, tokenizer), name + size of large ones (weights).

    Weights of a multi-GB model are not re-read on every `tempa plan`; a changed checkpoint
    changes its size or its config/index files in practice.
    """
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        size = path.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if size <= 4 << 20:
            h.update(file_digest(path).encode())
    return h.hexdigest()


def path_digest(path: Path) -> str:
    return tree_digest(path) if path.is_dir() else file_digest(path)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from _strings(value)


def referenced_files(config_dump: Mapping[str, Any]) -> dict[str, str]:
    """Digests of every existing absolute path a stage config names (data files, templates)."""
    found = {}
    for value in _strings(config_dump):
        if value.startswith("/") and len(value) < 4096:
            path = Path(value)
            if path.exists():
                found[value] = path_digest(path)
    return found
