"""Fingerprints: a stage re-runs exactly when its config, its inputs or tempa's version change."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tempa.sft.files import path_digest
from tempa.sft.stage_api import fingerprinted


def stage_settings(config: BaseModel) -> dict[str, Any]:
    """What of a stage's config its fingerprint holds: the dump (by alias) less the fields marked NOT_FINGERPRINTED and
    those its ``unfingerprinted()`` names, where ``field.key`` names one key of a mapping field (a trainer argument:
    ``train.save_steps``, which changes when a run saves, not what it trains)."""
    kept = fingerprinted(config)
    idle = config.unfingerprinted() if callable(getattr(config, "unfingerprinted", None)) else frozenset()
    fields = type(config).model_fields
    for name in idle:
        field, dot, key = name.partition(".")
        info = fields.get(field)
        alias = (info.serialization_alias or info.alias or field) if info is not None else field
        if dot and isinstance(kept.get(alias), dict):
            kept[alias] = {k: v for k, v in kept[alias].items() if k != key}
    return kept


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
