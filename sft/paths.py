"""Recipe paths: which references are local files, and how they resolve against the recipe's folder."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationInfo

from tempa.sft.suggest import closest, meant, one_slip_from

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
            file = _file_of_that_name(candidate, Path(base_dir))
            if file is not None and must_exist:
                # `data/ja_chats` beside data/ja_chats.jsonl: an extension forgotten, not a hub id (which would fail
                # at run time, after every stage before it, as a hub that cannot be reached)
                raise ValueError(f"local path does not exist: {candidate}{meant(_as_written(file, value, base_dir))}")
            close = _misspelt_sibling(candidate, Path(base_dir))
            meant_path = _under_a_misspelt_folder(candidate, Path(base_dir))
            warnings = info.context.get(PATH_WARNINGS) if info is not None and info.context else None
            warning = None
            if close is not None:
                what = "folder" if (candidate.parent / close).is_dir() else "file"
                warning = (f"'{value}' is read as a hub id, but {candidate.parent} beside the recipe holds '{close}': "
                           f"write './{Path(value).parent / close}' if you meant that {what}")
            elif meant_path is not None:
                warning = (f"'{value}' is read as a hub id, but {Path(base_dir) / meant_path} is beside the recipe: "
                           f"write './{meant_path}' if you meant it")
            elif info.field_name == "path" and _data_folder_beside(candidate, Path(base_dir)):
                # `data/chats` where data/ beside the recipe holds the data files: a local folder not made yet, or
                # misnamed, not a hub dataset (it failed when its stage loaded it, after the stages before trained)
                warning = (f"'{value}' is read as a hub dataset id, but {Path(base_dir) / Path(value).parts[0]} beside "
                           f"the recipe is a folder of data files with no '{Path(value).relative_to(Path(value).parts[0])}'"
                           f" in it: write './{value}' if you meant a local path")
            if warning is not None and warnings is not None and warning not in warnings:
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
            near = _nearest_existing(resolved)
            raise ValueError(f"local path does not exist: {resolved}"
                             f"{meant(_as_written(near, value, base_dir) if near is not None else None)}")
        return str(resolved)
    return value


def _misspelt_sibling(candidate: Path, base_dir: Path) -> str | None:
    """The name beside ``candidate`` (which is not there) that it is a few letters from, under a first folder beside
    the recipe (`models/tinyy` where `models/tiny` is; `data/ja_chat` where `data/ja_chats.jsonl` is), or None. Such a
    value still reads as a hub id (`Qwen/` beside the recipe may hold Qwen2.5-7B while the recipe names Qwen2.5-72B on
    the hub), so `tempa plan` warns: a misspelt folder would otherwise fail at run time as a hub that cannot be
    reached."""
    if not _under_a_folder_beside(candidate, base_dir):
        return None
    return next((entry.name for entry in sorted(candidate.parent.iterdir())
                 if one_slip_from(candidate.name, entry.name) or one_slip_from(candidate.name, _without_suffix(entry.name))),
                None)


def _under_a_misspelt_folder(candidate: Path, base_dir: Path) -> Path | None:
    """The path, relative to the recipe's folder, that ``candidate`` (which is not there) names with its first folder
    one slip from a folder beside the recipe (`dta/chats` where `data/chats` is), or None. Only a path that then
    exists: a hub organisation a letter from a local folder's name is no slip."""
    parts = candidate.relative_to(base_dir).parts
    if len(parts) < 2 or (base_dir / parts[0]).exists():
        return None
    try:
        folders = sorted(entry.name for entry in base_dir.iterdir() if entry.is_dir())
    except OSError:
        return None
    return next((Path(name, *parts[1:]) for name in folders
                 if one_slip_from(parts[0], name) and (base_dir / name).joinpath(*parts[1:]).exists()), None)


def _file_of_that_name(candidate: Path, base_dir: Path) -> Path | None:
    """The file beside ``candidate`` (which is not there) whose name is ``candidate``'s and a file suffix
    (`data/ja_chats.jsonl` for `data/ja_chats`), under a first folder beside the recipe, or None. No hub id sits
    beside a file of its name: that is the extension forgotten. A bare name (`gsm8k` beside gsm8k.jsonl) is left to be
    the hub id or stage it also spells."""
    if not _under_a_folder_beside(candidate, base_dir):
        return None
    return next((entry for entry in sorted(candidate.parent.iterdir())
                 if entry.name != candidate.name and _without_suffix(entry.name) == candidate.name), None)


def _data_folder_beside(candidate: Path, base_dir: Path) -> bool:
    """Whether ``candidate`` (which is not there) lies under a folder beside the recipe that holds data files (an
    organisation's model folder, `meta-llama/`, does not: a hub id of that organisation is no slip)."""
    parts = candidate.relative_to(base_dir).parts
    folder = base_dir / parts[0]
    if len(parts) < 2 or not folder.is_dir():
        return False
    data = tuple(suffix for suffix in _LOCAL_SUFFIXES if suffix not in (".yaml", ".yml", ".jinja", ".txt"))
    try:
        return any(entry.name.lower().endswith(data) for entry in folder.iterdir() if entry.is_file())
    except OSError:
        return False


def _under_a_folder_beside(candidate: Path, base_dir: Path) -> bool:
    parts = candidate.relative_to(base_dir).parts
    return len(parts) >= 2 and (base_dir / parts[0]).is_dir() and candidate.parent.is_dir()


def _without_suffix(name: str) -> str:
    """``name`` less a suffix that makes a reference local (``ja_chats.jsonl`` -> ``ja_chats``)."""
    lower = name.lower()
    return next((name[: -len(suffix)] for suffix in _LOCAL_SUFFIXES if lower.endswith(suffix)), name)


_RECIPE_SUFFIXES = (".yaml", ".yml")


def _nearest_existing(missing: Path) -> Path | None:
    """The existing path ``missing`` likely meant: from its deepest existing folder, each name that is not there
    replaced by the closest one that is (`data/ja_chat.jsonl` -> `data/ja_chats.jsonl`, `dta/x.jsonl` ->
    `data/x.jsonl`), or None when some name has no close one."""
    found = Path(missing.anchor)
    for part in missing.parts[1:]:
        if (found / part).exists():
            found = found / part
            continue
        try:
            names = [entry.name for entry in found.iterdir()]
        except OSError:  # a file, or a folder that cannot be read
            return None
        if part == missing.name and not part.lower().endswith(_RECIPE_SUFFIXES):
            # a recipe beside the data (r_nope.jsonl.yaml for nope.jsonl) is never the data file meant
            names = [name for name in names if not name.lower().endswith(_RECIPE_SUFFIXES)]
        hint = closest(part, names)
        if hint is None:
            return None
        found = found / hint
    return found if found != missing and found.exists() else None


def _as_written(path: Path, value: str, base_dir: str | os.PathLike | None) -> str:
    """``path`` as the recipe would write it: relative to the recipe's folder (``./data/x.jsonl``) where ``value``
    was relative, else absolute."""
    if base_dir is None or os.path.isabs(os.path.expanduser(value)):
        return str(path)
    # As the folders read, links and all (`data` a link to a shared folder: './data/x.jsonl', not the shared folder's
    # path from here); by their real places only where that does not reach the file (/tmp and /private/tmp)
    relative = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(base_dir)))
    if relative.parts[0] == "..":
        relative = Path(os.path.relpath(Path(os.path.realpath(path.parent)) / path.name, os.path.realpath(base_dir)))
    return str(relative) if relative.parts[0] == ".." else f"./{relative}"


def stage_or_folder(value: str, info: ValidationInfo | None) -> str:
    """A reference that names an earlier stage or a folder: a folder resolved (it must exist), a stage's name (or
    ``stage/checkpoint-N``) kept; a bare name that is both is an error, since either reading loses the other."""
    resolved = resolve_path(value, info, must_exist=True)
    earlier = (info.context or {}).get(EARLIER_STAGES, ()) if info is not None else ()
    if resolved != value and not looks_local(value) and value.split("/", 1)[0] in earlier:
        raise ValueError(f"'{value}' names both the earlier stage '{value.split('/', 1)[0]}' and the folder "
                         f"{resolved}: write './{value}' for the folder, or rename one of them")
    return resolved
