"""Fingerprints: a stage re-runs exactly when its config, its inputs or tempa's version change."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tempa.sft.files import path_digest


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
    """Digests of every existing absolute path a stage config names (data files, templates), with the path a link
    leads to (a model folder linked to another checkpoint of the same sizes is another input)."""
    found = {}
    for value in _strings(config_dump):
        if value.startswith("/") and len(value) < 4096:
            path = Path(value)
            if path.exists():
                target = os.path.realpath(path)
                found[value] = path_digest(path) + (f" -> {target}" if target != value else "")
    return found


def located(node: Any, files: Mapping[str, str], *, content: bool = True) -> Any:
    """``node`` (a config dump) with each path of ``files`` (:func:`referenced_files`) written as what lies there: its
    name and (``content``) content digest. A fingerprint of it names the same inputs wherever the recipe's folder is:
    moved, or checked out on another machine under another home (every path in a recipe resolves to an absolute
    one)."""
    if isinstance(node, str):
        if node not in files:
            return node
        return f"{Path(node).name}@{files[node].split(' -> ')[0]}" if content else Path(node).name
    if isinstance(node, Mapping):
        return {key: located(value, files, content=content) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [located(value, files, content=content) for value in node]
    return node
