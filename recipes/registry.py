"""The stage kinds a recipe may use, collected from the stage packages.

Each stage package exports its kinds as ``STAGE_KINDS`` (a tuple of :class:`StageKind`); this is
the only place the runner learns about them. A new kind is one ``StageKind`` in its package's
tuple plus its module; nothing in `recipes/` names it. Importing the packages is cheap (their
modules import torch, trl, transformers and mergekit inside the functions that use them), so a
recipe is validated without loading them.
"""

from __future__ import annotations

from collections.abc import Mapping

import tempa.alignment
import tempa.merge
import tempa.sft
from tempa.sft.stage_api import StageKind
from tempa.sft.suggest import did_you_mean

STAGE_PACKAGES = (tempa.sft, tempa.alignment, tempa.merge)


def stage_kinds() -> Mapping[str, StageKind]:
    """Every kind by name, in package order (sft, alignment, merge)."""
    kinds: dict[str, StageKind] = {}
    for package in STAGE_PACKAGES:
        for kind in package.STAGE_KINDS:
            if kind.kind in kinds:
                raise RuntimeError(f"stage kind {kind.kind!r} is exported by two packages")
            kinds[kind.kind] = kind
    return kinds


def stage_kind(name: str) -> StageKind:
    """The kind called ``name``; a KeyError names the known kinds and the closest one."""
    kinds = stage_kinds()
    if name not in kinds:
        raise KeyError(f"unknown stage kind {name!r}; known kinds: {', '.join(kinds)}{did_you_mean(name, kinds)}")
    return kinds[name]


def known_kinds() -> list[str]:
    return list(stage_kinds())
