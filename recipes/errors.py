"""Recipe errors: one line naming the file, the field path, the line and what was expected."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError


class RecipeError(ValueError):
    """A recipe cannot be used as written. ``str()`` is the one-line message for the user."""


FieldPath = tuple[str | int, ...]
LineMap = Mapping[FieldPath, tuple[Path | str, int]]  # (file, line), or ("--set ...", 0)


def dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def locate(path: FieldPath, lines: LineMap, default_file: Path) -> tuple[Path | str, int | None]:
    """The file and line of the deepest prefix of ``path`` that the YAML gives a position for."""
    for end in range(len(path), -1, -1):
        hit = lines.get(tuple(path[:end]))
        if hit is not None:
            return hit
    return default_file, None


def where(path: FieldPath, lines: LineMap, default_file: Path) -> str:
    file, line = locate(path, lines, default_file)
    return f"{file}:{line}" if line else str(file)


def from_validation_error(
    exc: ValidationError,
    *,
    file: Path,
    lines: LineMap,
    raw: object,
    prefix: FieldPath = (),
    stage_names: Sequence[str] = (),
) -> RecipeError:
    """Turn pydantic's report into one line per problem; ``raw`` is the YAML under ``prefix``."""
    messages = []
    for err in exc.errors(include_url=False):
        path = (*prefix, *_yaml_path(err["loc"], raw))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here; check the spelling)"
        elif err["type"] == "missing":
            msg = "field required"
        elif "input" in err and err["type"] not in ("union_tag_invalid",):
            got = err["input"]
            if not isinstance(got, Mapping | list) and repr(got) not in msg and f"'{got}'" not in msg:
                msg = f"{msg}, got {got!r}"
        # Validators of free-form mappings (e.g. `train:`) name the offending key first: 'key': ...
        if msg.startswith("'") and (*path, msg.split("'")[1]) in lines:
            key = msg.split("'")[1]
            path = (*path, key)
            msg = msg.split("'", 2)[2].lstrip(": ")
        messages.append(f"{where(path, lines, file)}: {_human_path(path, stage_names)}: {msg}")
    return RecipeError("; ".join(messages) if messages else f"{file}: invalid recipe")


def _yaml_path(loc: Sequence[str | int], raw: object) -> FieldPath:
    """Keep only the parts of pydantic's location that are real keys/indices of the YAML.

    pydantic adds union tags and validator names (e.g. 'sft') to locations; users never wrote them.
    """
    path: list[str | int] = []
    node = raw
    for part in loc:
        if (isinstance(node, Mapping) and part in node) or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]
            path.append(part)
        elif isinstance(node, Mapping | list):
            # A union tag (the node's own `kind`/`type` value) or a validator name is no YAML key;
            # a missing or unknown key is, and it is the message.
            is_tag = isinstance(node, Mapping) and part in (node.get("type"), node.get("kind"))
            if isinstance(part, str) and not is_tag and "[" not in part and "(" not in part:
                path.append(part)
                node = None
        else:
            path.append(part)
    return tuple(path)


def _human_path(path: FieldPath, stage_names: Sequence[str]) -> str:
    text = dotted(path)
    if len(path) >= 2 and path[0] == "stages" and isinstance(path[1], int) and path[1] < len(stage_names):
        text += f" (stage '{stage_names[path[1]]}')"
    return text
