"""Recipe errors: one line naming the file, the field path, the line and what was expected."""

from __future__ import annotations

import re
import typing
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tempa.recipes.yaml_loader import full_width_note
from tempa.sft.stage_api import SECRET_INPUT_ERROR, is_secret_key, secret_path
from tempa.sft.suggest import closest, did_you_mean, meant


class RecipeError(ValueError):
    """A recipe cannot be used as written. ``str()`` is the one-line message for the user."""


FieldPath = tuple[str | int, ...]
LineMap = Mapping[FieldPath, tuple[Path | str, int]]  # (file, line), or ("--set ...", 0)


def shown_override(override: str) -> str:
    """A ``--set KEY=VALUE`` argument as an error quotes it: the value left out where it may be a secret (a key or
    token under a secret-looking name, in a mapping, or a URL's user:password), as an error in a recipe file names
    the file and line and never the value."""
    key, sep, text = override.partition("=")
    if sep and _may_be_secret(key, text):
        return f"{key}=<value not shown>"
    return override


def _may_be_secret(key: str, text: str) -> bool:
    if any(is_secret_key(part) for part in re.split(r"[.\[\]]+", key) if part):
        return True
    if "@" in urllib.parse.urlsplit(text.strip()).netloc:
        return True
    import yaml

    try:
        return secret_path(yaml.safe_load(text), key) is not None
    except (yaml.YAMLError, RecursionError):
        return False


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
    model: type[BaseModel] | None = None,
    top_keys: Sequence[str] = (),
) -> RecipeError:
    """Turn pydantic's report into one line per problem; ``raw`` is the YAML under ``prefix``.

    ``model`` is the class ``raw`` was validated as: an unknown key then gets the closest allowed one
    (``top_keys``: further keys allowed at the top, which the loader reads before validation)."""
    messages = []
    explained = 0  # messages of full-width keys, at the front
    errors = exc.errors(include_url=False)
    # A value no member of a union type takes fails once per member, each located at the member's name
    # (`heldout.float`, `heldout.int`): the field gets one message, naming every type it takes.
    members: dict[FieldPath, list[Any]] = {}
    # A misspelt key (`base-model:`) leaves the field it meant missing: the key's line says both, so the field's
    # own "field required" (with no line: nothing was written there) is dropped.
    meant_fields: set[FieldPath] = set()
    for err in errors:
        if _past_value(err["loc"], raw):
            members.setdefault((*prefix, *_yaml_path(err["loc"], raw)), []).append(err)
        if err["type"] == "extra_forbidden" and (guess := _spelling_of(err, model, top_keys, raw, prefix)):
            meant_fields.add((*prefix, *_yaml_path(err["loc"][:-1], raw), guess))
    for err in errors:
        path = (*prefix, *_yaml_path(err["loc"], raw))
        note = None
        msg = err["msg"].removeprefix("Value error, ")
        if len(alternatives := members.get(path, [])) > 1:
            if err is not alternatives[0]:
                continue
            msg = f"expected {_expected(alternatives)}, got {err.get('input')!r}"
        elif err["type"] == "extra_forbidden" and (note := full_width_note(str(err["loc"][-1]))) is not None:
            # an input method's full-width space or mark inside the key (`　　train`): invisible, or nearly
            line = locate(path, lines, file)[1]
            msg = f"unknown field; {f'line {line}' if line else 'the key'} {note}"
        elif err["type"] == "extra_forbidden":
            hint = _misplaced(err["loc"][-1], model, err["loc"][:-1], raw, prefix) or \
                meant(_spelling_of(err, model, top_keys, raw, prefix))
            msg = f"unknown field (not allowed here; check the spelling){hint}"
        elif err["type"] == "missing":
            if path in meant_fields:
                continue
            msg = "field required"
        elif err["type"] == "union_tag_invalid":  # a `type:` / `kind:` no member has: its closest, as for keys
            tags = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected_tags", "")))
            msg += did_you_mean((err.get("ctx") or {}).get("tag", ""), tags)
        elif "input" in err and err["type"] not in ("union_tag_invalid", SECRET_INPUT_ERROR):
            got = err["input"]
            if not isinstance(got, Mapping | list) and repr(got) not in msg and f"'{got}'" not in msg:
                head, sep, hint = msg.partition("; did you mean ")  # the guess stays last, where a reader looks
                msg = f"{head}, got {got!r}{sep}{hint}"
            if err["type"] in _PARSED and isinstance(got, str) and (note := full_width_note(got)) is not None:
                msg += f"; the value {note}"
            if err["type"] in _WORDS and (isinstance(got, bool) or got is None):
                # `languages: [en, no]` (Norwegian), `name: off`: YAML 1.1 read the word as a boolean (or nothing)
                msg += ("; YAML reads an empty value, a bare null or ~ as no value: quote a word meant as text" if got is None else
                        "; YAML reads a bare no/off/yes/on as a boolean: quote it ('no')")
        # Validators of free-form mappings (e.g. `train:`) name the offending key first: 'key': ...
        if msg.startswith("'") and (*path, msg.split("'")[1]) in lines:
            key = msg.split("'")[1]
            path = (*path, key)
            msg = msg.split("'", 2)[2].lstrip(": ")
            if _NOT_A_FIELD.match(msg) and (where_to := _misplaced(key, model, err["loc"], raw, prefix)):
                # an exact key of another block says more than the closest spelling in this one
                msg = msg.partition("; did you mean ")[0] + where_to
        # A validator of a whole block names the field it refuses first (`parameters.t: not a parameter ...`): point
        # at that field's line, not the block's.
        elif (named := _NAMED_FIELD.match(msg) or _NAMED_VALUE.match(msg)) and \
                (*path, *named[1].split(".")) in lines:
            path = (*path, *named[1].split("."))
            msg = msg[named.end():]
        msg += _closest_choice(msg)
        message = f"{where(path, lines, file)}: {_human_path(path, stage_names)}: {msg}"
        if err["type"] == "extra_forbidden" and note is not None:
            # a full-width key explains the errors it causes (its field then missing): it goes first
            messages.insert(explained, message)
            explained += 1
        else:
            messages.append(message)
    return RecipeError("; ".join(messages) if messages else f"{file}: invalid recipe")


# Keys other tools use for a field tempa names otherwise: too far from its spelling for a closest-key guess.
_OTHER_TOOLS_KEYS = {"algorithm": "trainer"}


def _spelling_of(err: Any, model: type[BaseModel] | None, top_keys: Sequence[str], raw: object,
                prefix: FieldPath) -> str | None:
    """The allowed key an unknown key (an ``extra_forbidden`` error) is a slip of, if any; None as well when the key
    is an exact key of another block (:func:`_misplaced` names that one instead)."""
    key, loc = err["loc"][-1], err["loc"][:-1]
    if _misplaced(key, model, loc, raw, prefix):
        return None
    allowed = _keys_at(model, loc) + (list(top_keys) if not loc else [])
    other = _OTHER_TOOLS_KEYS.get(str(key))
    return other if other in allowed else closest(key, allowed)


def _misplaced(key: object, model: type[BaseModel] | None, loc: Sequence[str | int], raw: object = None,
               prefix: FieldPath = ()) -> str:
    """Where a key unknown at pydantic location ``loc`` (inside ``model``; ``raw`` is the YAML there, at ``prefix``)
    is a key after all, as ``"; it belongs ..."``; else ``""``. Written a level too deep (`train:` indented under
    `data:`; `lora:` under `train:`): the mapping one or two levels up takes it. Written a level too high: a block
    one level down takes it (`accelerate_config:` under `launch:`, `thinking_mode:` on each of `data.sources`), or
    a stage's `train:`, or, at the top of a recipe, a stage."""
    if model is None or not isinstance(key, str):
        return ""
    ancestors = _mapping_ancestors(loc, raw)
    if ancestors and key in _keys_at(model, ancestors[0][0]):
        return _up(ancestors[0], "one level up", prefix, raw)
    if hint := _one_level_down(key, model, loc, (*prefix, *_yaml_path(loc, raw))):
        return hint
    if len(ancestors) > 1 and key in _keys_at(model, ancestors[1][0]):
        return _up(ancestors[1], "two levels up", prefix, raw)
    if loc:
        return ""
    from tempa.recipes.registry import stage_kinds  # the stage packages import this module

    configs = [kind.config for kind in stage_kinds().values()]
    if "kind" in model.model_fields:  # a stage's config, validated on its own: the recipe's keys are above it
        from tempa.recipes.schema import LaunchConfig, Recipe

        if key in Recipe.model_fields:
            return "; it belongs at the top of the recipe, not inside a stage"
        return "; it belongs under the recipe's `launch:` (every stage trains with it)" \
            if key in LaunchConfig.model_fields else ""
    if any(key in _keys_at(config, ()) for config in configs):
        return "; it belongs inside a stage (an entry of `stages:`)"
    if any(_train_takes(config, key) for config in configs):
        return "; it belongs under a stage's `train:`"
    return ""


def _mapping_ancestors(loc: Sequence[str | int], raw: object) -> list[tuple[tuple[str | int, ...], str]]:
    """The mappings that hold the one at pydantic location ``loc``, nearest first: each as its own location and the key
    under which it holds the way down to ``loc`` (a list's index, a union's tag belong to no mapping of their own)."""
    keys = [i for i in _yaml_indices(loc, raw) if isinstance(loc[i], str)]
    return [(tuple(loc[:i]), str(loc[i])) for i in reversed(keys)]


def _up(ancestor: tuple[tuple[str | int, ...], str], how_far: str, prefix: FieldPath, raw: object) -> str:
    loc, beside = ancestor
    at = dotted((*prefix, *_yaml_path(loc, raw))) if prefix or loc else "the top level"
    return f"; it belongs {how_far}, in {at} beside `{beside}:` (indent it as that key is)"


def _one_level_down(key: str, model: type[BaseModel], loc: Sequence[str | int], at: FieldPath) -> str:
    """``"; it belongs under `launch:`"`` when a block of the mapping at ``loc`` (a field whose value is a mapping, or a
    list of them, of one kind) takes ``key``; a stage's `train:` asks the stage's own check. ``at``: ``loc``'s YAML
    path, to name a list's entries by."""
    tp: Any = model
    for part in loc:
        tp = _step(tp, part)
    holders = [m for m in _members(tp) if isinstance(m, type) and issubclass(m, BaseModel)]
    if len(holders) != 1:
        return ""
    holder = holders[0]
    if _train_takes(holder, key):
        return "; it belongs under `train:`"
    for name, info in holder.model_fields.items():
        field_key = info.alias or name
        if key in _keys_at(holder, (name,)):
            return f"; it belongs under `{field_key}:`"
        items = [typing.get_args(m)[0] for m in _members(info.annotation)
                 if typing.get_origin(m) in (list, tuple, Sequence) and typing.get_args(m)]
        if len(items) == 1 and key in _keys_at(items[0], ()):
            return f"; it belongs on each entry of `{field_key}:` ({dotted((*at, field_key))}[i])"
    return ""


def _train_takes(model: type[BaseModel], key: str) -> bool:
    """Whether the `train:` block of a stage kind's config takes ``key``: asked of its own validator, which checks
    the keys against trl's dataclass (sft/train_args.py), so the answer follows trl's version."""
    if "train" not in model.model_fields or "kind" not in model.model_fields:
        return False
    try:
        # None: any field's value passes, so only the key is judged; the stage's other fields are missing, as errors
        model.model_validate({"kind": model.model_fields["kind"].default, "train": {key: None}})
    except ValidationError as exc:
        return not any(error["loc"][:1] == ("train",) for error in exc.errors())
    return True


# Errors of a value that has to be read as a number, a truth value, one of some words, a mapping or a list: a full-width
# mark in it is why (`seed: ４２`; `learning_rate:　1e-5` under `train:`, one string for YAML).
_PARSED = ("int_parsing", "float_parsing", "bool_parsing", "literal_error", "enum", "dict_type", "list_type",
           "model_type", "model_attributes_type")
# Errors of a value that has to be a string (or one of some words).
_WORDS = ("string_type", "literal_error", "enum")
_NAMED_FIELD = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*): ")
# ... or names it before the value it refuses: `loss_type 'apo-zero' is not a loss ...`.
_NAMED_VALUE = re.compile(r"([A-Za-z_]\w*) (?=')")
# A check's list of the values it takes: `expected one of sigmoid, hinge, apo_zero (or alias ...)`.
_CHOICES = re.compile(r"expected one of ([^;()]+)")


def _closest_choice(msg: str) -> str:
    """``"; did you mean 'apo_zero'?"`` for a message that refuses a quoted value and lists the values it takes (a
    check of a stage package's, worded by its own module), when one is spelt close to it and none is guessed yet."""
    refused, choices = re.match(r"'([^']*)'", msg), _CHOICES.search(msg)
    if refused is None or choices is None or "did you mean" in msg:
        return ""
    return did_you_mean(refused[1], [choice.strip() for choice in choices[1].split(",")])


# How a check of a free-form mapping (a stage's `train:`) refuses a key: `'lora' is not a SFTConfig field`.
_NOT_A_FIELD = re.compile(r"is not an? \w+ field\b")


def _yaml_path(loc: Sequence[str | int], raw: object) -> FieldPath:
    """Keep only the parts of pydantic's location that are real keys/indices of the YAML.

    pydantic adds union tags and validator names (e.g. 'sft') to locations; users never wrote them.
    """
    return tuple(loc[i] for i in _yaml_indices(loc, raw))


def _yaml_indices(loc: Sequence[str | int], raw: object) -> list[int]:
    """The positions in ``loc`` of the parts :func:`_yaml_path` keeps."""
    return _walk(loc, raw)[0]


def _past_value(loc: Sequence[str | int], raw: object) -> bool:
    """Whether ``loc`` goes on past a value the YAML wrote (a number, a word, null): into a union's member names."""
    return _walk(loc, raw)[1]


def _expected(alternatives: Sequence[Any]) -> str:
    """What the members of a union take, from their errors: ``a number or a whole number``."""
    wanted: list[str] = []
    for err in alternatives:
        said = err["msg"].removeprefix("Value error, ")
        if err["type"].startswith("float_"):
            said = "a number"
        elif err["type"].startswith("int_"):
            said = "a whole number"
        elif said.startswith("Input should be "):
            said = said.removeprefix("Input should be ").split(",")[0].replace("a valid ", "a ")
        if said not in wanted:
            wanted.append(said)
    return " or ".join(wanted)


_GONE = object()  # below a key the YAML lacks: no node at all (a YAML null is None)
# The names pydantic gives the members of a union of plain types in an error's location: no recipe key is one.
_TYPE_NAMES = frozenset({"float", "int", "str", "bool", "none"})


def _walk(loc: Sequence[str | int], raw: object) -> tuple[list[int], bool]:
    """The positions in ``loc`` that are keys or indices of the YAML, and whether it goes past a written value."""
    kept: list[int] = []
    node: Any = raw
    for i, part in enumerate(loc):
        if node is not _GONE and not isinstance(node, Mapping | list):
            # a value (`heldout: 5%`): the rest names the members of the field's union type, which no one wrote
            return kept, True
        if (isinstance(node, Mapping) and part in node) or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]
            kept.append(i)
        elif (isinstance(node, list) and isinstance(part, str)) or (isinstance(node, Mapping) and part in _TYPE_NAMES):
            # a list or mapping where a union of scalars was expected (`heldout: [1]`): the rest names its members
            return kept, True
        elif isinstance(node, Mapping | list):
            # A union tag (the node's own `kind`/`type` value) or a validator name is no YAML key;
            # a missing or unknown key is, and it is the message.
            is_tag = isinstance(node, Mapping) and part in (node.get("type"), node.get("kind"))
            if isinstance(part, str) and not is_tag and "[" not in part and "(" not in part:
                kept.append(i)
                node = _GONE
        else:
            kept.append(i)
    return kept, False


def _human_path(path: FieldPath, stage_names: Sequence[str]) -> str:
    text = dotted(path)
    if len(path) >= 2 and path[0] == "stages" and isinstance(path[1], int) and path[1] < len(stage_names):
        text += f" (stage '{stage_names[path[1]]}')"
    return text


def _keys_at(model: type[BaseModel] | None, loc: Sequence[str | int]) -> list[str]:
    """The keys a recipe may write at pydantic location ``loc`` inside ``model`` ([] when unknown)."""
    tp: Any = model
    for part in loc:
        tp = _step(tp, part)
    models = [m for m in _members(tp) if isinstance(m, type) and issubclass(m, BaseModel)]
    if len(models) != 1:
        return []
    return [info.alias or name for name, info in models[0].model_fields.items()]


def _members(tp: Any) -> list[Any]:
    """The alternatives of a type: Optional/Union members, Annotated unwrapped."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return [m for arg in typing.get_args(tp) for m in _members(arg) if m is not type(None)]
    return [tp]


def _step(tp: Any, part: str | int) -> Any:
    """The type one step down ``part`` (a field, list index, mapping key or union tag) from ``tp``."""
    for member in _members(tp):
        origin, args = typing.get_origin(member), typing.get_args(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            for name, info in member.model_fields.items():
                if part in (name, info.alias):
                    return info.annotation
        elif isinstance(part, int) and origin in (list, tuple, set, Sequence) and args:
            return args[0]
        elif origin in (dict, Mapping) and len(args) == 2:
            return args[1]
    # a union tag (`type: http` -> loc 'http') or a model's name: the member it selects
    for member in _members(tp):
        if isinstance(member, type) and issubclass(member, BaseModel) and (
            member.__name__ == part or any(
                typing.get_origin(info.annotation) is typing.Literal and part in typing.get_args(info.annotation)
                for info in member.model_fields.values()
            )
        ):
            return member
    return tp if isinstance(part, str) and "[" in part else None  # a validator's name: same node
