"""Recipe paths: which references are local files, and how they resolve against the recipe's folder."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationInfo

from tempa.sft.suggest import one_slip_from

_LOCAL_PREFIXES = ("/", "./", "../", "~")
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".yaml", ".yml", ".jinja", ".txt", ".arrow")

# Validation-context key: {(field name, value as written): folder of the file that wrote it}. In an
# `extends:` chain one stage holds values from several files; each resolves against its own file.
WRITTEN_IN = "written_in"
# Validation-context key: the names of the stages before the one being validated (the loader sets it), for a
# field that takes a stage's name or a folder.
EARLIER_STAGES = "earlier_stages"
# Validation-context key: a list the loader reads back, of references that look misspelt (one line each).
PATH_WARNINGS = "path_warnings"


def display_path(path: str) -> str:
    """A local source by its file name (the card and logs never show this machine's folders)."""
    return Path(path).name if Path(path).is_absolute() else path


def looks_local(value: str) -> bool:
    """A model/data reference is a local path when it is spelled like one; otherwise a hub id."""
    return value.startswith(_LOCAL_PREFIXES) or value.lower().endswith(_LOCAL_SUFFIXES)


def resolve_path(value: str, info: ValidationInfo | None, *, must_exist: bool = True) -> str:
    """Resolve a recipe path against the folder of the file that wrote it.

    That is ``context[WRITTEN_IN][(field, value)]`` where the loader knows it, else ``context["base_dir"]``.

    Use from a pydantic ``field_validator``. Hub ids (``org/name``) pass through untouched.
    A local path becomes absolute, because mergekit and hub helpers treat a relative path as
    a hub id; ``must_exist`` makes a missing local path a validation error.
    """
    base_dir = None
    if info is not None and info.context:
        base_dir = info.context.get("base_dir")
        base_dir = (info.context.get(WRITTEN_IN) or {}).get((info.field_name, value), base_dir)
    expanded = os.path.expanduser(value)
    candidate = Path(expanded)
    if not candidate.is_absolute() and base_dir is not None:
        # Relative to the recipe's folder, never to wherever tempa happens to be started from.
        candidate = Path(base_dir) / candidate
        if not (candidate.exists() or candidate.is_symlink() or looks_local(value)):
            close = _misspelt_sibling(candidate, Path(base_dir))
            warnings = info.context.get(PATH_WARNINGS) if info is not None and info.context else None
            if close is not None and warnings is not None:
                warning = (f"'{value}' is read as a hub id, but {candidate.parent} beside the recipe holds '{close}': "
                           f"write './{Path(value).parent / close}' if you meant that folder")
                if warning not in warnings:
                    warnings.append(warning)
            return value
    if candidate.is_absolute() or looks_local(value) or candidate.exists():
        # The folders resolved (a `..` after a linked folder goes where the OS goes), the last name kept: a file in
        # the Hugging Face cache (snapshots/<rev>/train.json) links to a blob named by its hash, and the link's name
        # says what the file holds.
        resolved = (Path(os.path.realpath(candidate.parent)) / candidate.name if candidate.name not in ("", ".", "..")
                    else Path(os.path.realpath(candidate)))
        if must_exist and not resolved.exists():
            if resolved.is_symlink():  # not a hub id: a link whose target is gone
                raise ValueError(f"local path is a link to a path that does not exist: {resolved} -> "
                                 f"{os.readlink(resolved)}")
            raise ValueError(f"local path does not exist: {resolved}")
        return str(resolved)
    return value


def _misspelt_sibling(candidate: Path, base_dir: Path) -> str | None:
    """The name beside ``candidate`` (which is not there) that it is a few letters from, under a first folder beside
    the recipe (`models/tinyy` where `models/tiny` is), or None. Such a value still reads as a hub id (`Qwen/` beside
    the recipe may hold Qwen2.5-7B while the recipe names Qwen2.5-72B on the hub), so `tempa plan` warns: a
    misspelt folder would otherwise fail at run time as a hub that cannot be reached."""
    parts = candidate.relative_to(base_dir).parts
    if len(parts) < 2 or not (base_dir / parts[0]).is_dir() or not candidate.parent.is_dir():
        return None
    return next((entry.name for entry in sorted(candidate.parent.iterdir()) if one_slip_from(candidate.name, entry.name)),
                None)


def stage_or_folder(value: str, info: ValidationInfo | None) -> str:
    """A reference that names an earlier stage or a folder: a folder resolved (it must exist), a stage's name (or
    ``stage/checkpoint-N``) kept; a bare name that is both is an error, since either reading loses the other."""
    resolved = resolve_path(value, info, must_exist=True)
    earlier = (info.context or {}).get(EARLIER_STAGES, ()) if info is not None else ()
    if resolved != value and not looks_local(value) and value.split("/", 1)[0] in earlier:
        raise ValueError(f"'{value}' names both the earlier stage '{value.split('/', 1)[0]}' and the folder "
                         f"{resolved}: write './{value}' for the folder, or rename one of them")
    return resolved
