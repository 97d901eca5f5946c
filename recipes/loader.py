"""Load a recipe: YAML (safe) -> `extends:` chain -> `--set` overrides -> validated configs.

Every failure is a `RecipeError` whose message names the file, the line where YAML gives one,
the field path and what was expected, before any work starts.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tempa.chat_templates.templates import (
    TemplateDefaults,
    TemplateNotFoundError,
    defaults_problem,
    read_template,
)
from tempa.chat_templates.thinking import THINKING_DEFAULT_CONTEXT
from tempa.recipes.errors import (
    FieldPath,
    RecipeError,
    dotted,
    from_validation_error,
    locate,
    shown_override,
    where,
)
from tempa.recipes.registry import stage_kinds
from tempa.recipes.schema import LaunchConfig, Recipe
from tempa.recipes.yaml_loader import (
    RecipeTextError,
    compose_and_construct,
    full_width_note,
    full_width_slip,
    parse_yaml,
    read_text,
)
from tempa.sft.global_batch import launch_train_args
from tempa.sft.paths import EARLIER_STAGES, PATH_WARNINGS, WRITTEN_IN
from tempa.sft.stage_api import Read, StageConfigBase
from tempa.sft.suggest import closest, did_you_mean
from tempa.sft.train_args import DEFER_TRAIN_CHECKS


@dataclass
class LoadedRecipe:
    """A validated recipe and the stage configs it resolves to, in run order."""

    path: Path
    recipe: Recipe
    stages: list[StageConfigBase]
    raw: dict[str, Any]
    files: list[Path] = field(default_factory=list)  # the recipe and every file it extends
    profile: str | None = None  # the `profiles:` entry applied (--profile)
    profiles: list[str] = field(default_factory=list)  # every profile the recipe offers
    path_warnings: list[str] = field(default_factory=list)  # references read as hub ids that look misspelt

    def stage(self, name: str, *, who: str | None = None) -> StageConfigBase:
        """The stage called ``name``; ``who`` (a command-line flag) starts the error that names the stages."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise RecipeError(f"{who + ': ' if who else ''}{self.path}: no stage named '{name}' (stages: "
                          f"{', '.join(self.names)}){did_you_mean(name, self.names)}")

    def resolved(self, *, compact: bool = False) -> dict[str, Any]:
        """The recipe as it will run: every default filled in, local paths absolute, bake added.

        It loads back as a recipe (``tempa status`` reads it), and records the defaults of the
        tempa version that ran it. ``compact`` keeps only what the recipe set (for display).
        """
        out = self.recipe.model_dump(mode="json", exclude={"stages"}, exclude_unset=compact)
        out["stages"] = [s.model_dump(mode="json", by_alias=True, exclude_unset=compact) for s in self.stages]
        return out

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def upstream(self, index: int) -> str | None:
        """Name of the stage whose model stage ``index`` starts from (None: the base model)."""
        stage = self.stages[index]
        if stage.from_ is not None:
            return stage.from_
        return self.stages[index - 1].name if index > 0 else None


def shipped_recipe_dir() -> Path:
    return Path(str(resources.files("tempa.recipes")))


def find_recipe(ref: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe path, or the name of a shipped recipe (``demo`` -> recipes/demo.yaml)."""
    candidates = [Path(ref)]
    if relative_to is not None:
        candidates.insert(0, relative_to / ref)
    name = str(ref)
    candidates.append(shipped_recipe_dir() / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    shipped = sorted(p.stem for p in shipped_recipe_dir().glob("*.yaml"))
    nearby = _nearby_recipe(Path(ref), relative_to)
    # a file beside the one named is the likelier meaning; a bare name (`tempa run dmeo`) may mean a shipped one
    hint = "" if nearby or Path(ref).name != name else did_you_mean(Path(name).stem, shipped)
    raise RecipeError(f"{ref}: recipe file not found{nearby} (shipped recipes: {', '.join(shipped)}){hint}")


def recipe_name(ref: str | Path) -> str:
    """The ``name:`` of a recipe (a path or a shipped recipe's name, through ``extends:``), read without validating the
    rest: the commands that read a run find its default folder, runs/<name>, even where the recipe's data has moved."""
    path = find_recipe(ref)
    raw, lines = next(((raw, lines) for raw, lines in _chain_files(path) if "name" in raw), ({}, {}))
    if not isinstance(raw.get("name"), str):
        raise RecipeError(f"{where(('name',), lines, path)}: name: expected the recipe's name (its run directory is "
                          "runs/<name>, runs/<name>-<profile> with --profile)")
    return raw["name"]


def recipe_profiles(ref: str | Path) -> list[str]:
    """The ``profiles:`` a recipe offers (through ``extends:``), read without validating the rest."""
    names: dict[str, None] = {}
    for raw, _ in reversed(_chain_files(find_recipe(ref))):  # a child's `tiny: null` drops its parent's, as merged
        profiles = raw.get("profiles")
        for name, overlay in profiles.items() if isinstance(profiles, dict) else ():
            if overlay is None:
                names.pop(name, None)
            elif isinstance(name, str):
                names[name] = None
    return list(names)


def _chain_files(path: Path) -> list[tuple[dict[str, Any], dict[FieldPath, tuple[Path, int]]]]:
    """The raw mappings of a recipe and the recipes it extends, with their positions, child first, read without
    checking how the child changes its parent's stages (a parent that renamed one must not hide a run of the child
    from `tempa status`); ``extends:`` is checked as :func:`_load_chain` checks it."""
    chain = []
    seen: tuple[Path, ...] = ()
    while True:
        seen = (*seen, path)
        raw, lines = _read_yaml(path)
        chain.append((raw, lines))
        parent = _parent_recipe(raw.get("extends"), lines, seen)
        if parent is None:
            return chain
        path = parent


def _parent_recipe(ref: Any, lines: Mapping[FieldPath, tuple[Path, int]], seen: tuple[Path, ...]) -> Path | None:
    """The recipe that the ``extends:`` of ``seen[-1]`` names (None: it extends none); ``seen``: the chain read so
    far, child first. A RecipeError names its line."""
    path = seen[-1]
    if ref is None:
        return None
    if not isinstance(ref, str):
        raise RecipeError(f"{where(('extends',), lines, path)}: extends: expected a recipe path or name")
    try:
        parent = find_recipe(ref, relative_to=path.parent)
    except RecipeError as exc:
        raise RecipeError(f"{where(('extends',), lines, path)}: extends: {exc}") from None
    if parent in seen:
        raise RecipeError(f"{where(('extends',), lines, path)}: extends: cycle "
                          f"({' -> '.join(str(p) for p in (*seen, parent))})")
    return parent


def _nearby_recipe(ref: Path, relative_to: Path | None) -> str:
    """``; did you mean 'mine.yaml'?`` for a recipe file beside ``ref`` spelled almost like it."""
    folder = (relative_to or Path()) / ref.parent
    try:
        nearby = [p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]
    except OSError:
        return ""
    hint = closest(ref.name, nearby)
    return f"; did you mean '{ref.with_name(hint)}'?" if hint else ""


# What users of trl, axolotl, LLaMA-Factory and open-instruct call a stage, and tempa's kind for it.
_OTHER_TOOLS_KINDS = {
    **dict.fromkeys(("dpo", "apo", "ipo", "orpo", "simpo", "kto"), "'preference' (DPO/APO: train.loss_type)"),
    **dict.fromkeys(("grpo", "ppo", "rlvr", "rloo"), "'rl' (trainer: grpo)"),
    **dict.fromkeys(("cpt", "pt", "pretraining", "continued_pretraining"), "'pretrain'"),
    **dict.fromkeys(("eval", "evaluation", "benchmark"), "'evaluate'"),
    **dict.fromkeys(("distill", "distillation", "rejection_sampling"), "'synthesize'"),
    **dict.fromkeys(("export", "final"), "'bake' (tempa adds one last)"),
}


def load_recipe(ref: str | Path, overrides: Sequence[str] = (), *, profile: str | None = None) -> LoadedRecipe:
    """Load, merge (`extends`, then the named `profiles:` entry, then `--set`) and validate."""
    path = find_recipe(ref)
    raw, lines, origins, files = _load_chain(path, seen=())
    profiles = raw.pop("profiles", None) or {}
    if profile is not None:
        if not isinstance(profiles, dict) or profile not in profiles:
            known = ", ".join(profiles) if isinstance(profiles, dict) and profiles else "none"
            raise RecipeError(f"{path}: --profile {profile}: no such profile (profiles: {known})")
        overlay = profiles[profile]
        if not isinstance(overlay, dict):
            raise RecipeError(f"{where(('profiles', profile), lines, path)}: profiles.{profile}: expected a mapping of "
                              "recipe fields")
        if isinstance(overlay.get("stages"), list):
            _check_changed_stages(overlay["stages"], raw, lambda i: where(("profiles", profile, "stages", i, "name"),
                                                                           lines, path) + f": profiles.{profile}.")
        raw = _merge_recipes(raw, overlay)
        lines = {**lines, **_profile_lines(lines, profile, overlay)}
    for override in overrides:
        # Errors in an overridden value point at the command line, not at the line it replaced.
        key, created = _apply_override(raw, override)
        lines = {k: v for k, v in lines.items() if k[: len(key)] != key}  # the file's positions under it are gone
        # Keys the --set made (`stages.x.trian.learning_rate` makes `trian`) are its own: an error on one names it,
        # not the file's line of the mapping above.
        for end in range(created, len(key) + 1):
            lines[key[:end]] = (f"--set {shown_override(override)}", 0)
    loaded = _validate(path, raw, lines, origins, files)
    loaded.profile = profile
    loaded.profiles = list(profiles) if isinstance(profiles, dict) else []
    return loaded


def _profile_lines(lines, profile: str, overlay: dict) -> dict:
    """Positions of a profile's values, re-keyed as the top-level fields they override."""
    stages = overlay.get("stages") if isinstance(overlay.get("stages"), list) else []
    out = {}
    for key, value in lines.items():
        if key[:2] != ("profiles", profile) or len(key) < 3:
            continue
        rest = key[2:]
        if rest[0] == "stages" and len(rest) >= 2 and isinstance(rest[1], int) and rest[1] < len(stages):
            rest = ("stages", stages[rest[1]].get("name"), *rest[2:])
        out[rest] = value
    return out


# --------------------------------------------------------------------------- YAML + positions


def _yaml_hint(problem: str) -> str:
    # PyYAML speaks of tokens; what a recipe's author got wrong is nearly always the indentation.
    if "'\\t'" in problem:
        return " (YAML indents with spaces, not tabs)"
    if problem.startswith("expected <block end>"):
        return " (check this line's indentation against the lines above it)"
    if problem.startswith("mapping values are not allowed"):
        return " (check this line's indentation, or quote a value that holds ': ')"
    return ""


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[FieldPath, tuple[Path, int]]]:
    try:
        text = read_text(path)
    except RecipeTextError as exc:
        raise RecipeError(str(exc)) from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc.strerror}") from None
    try:
        data, node = compose_and_construct(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        slip = full_width_slip(text, mark.line + 1 if mark is not None else None)
        if slip is not None:
            # YAML reads `seed： 42` as text and stops a line or more later, naming neither the line nor the mark
            at, note = slip
            raise RecipeError(f"{path}:{at}: invalid YAML: line {at} {note} (YAML stopped"
                              f"{' at line ' + line[1:] if line else ''}: {problem})") from None
        raise RecipeError(f"{path}{line}: invalid YAML: {problem}{_yaml_hint(problem)}") from None
    except RecursionError:
        raise RecipeError(f"{path}: invalid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of recipe fields at the top level")
    lines: dict[FieldPath, tuple[Path, int]] = {}
    _walk_positions(node, (), path, lines)
    return data, lines


def _walk_positions(node: Any, prefix: FieldPath, path: Path, out: dict) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, key_node.value)
            out[key] = (path, key_node.start_mark.line + 1)
            _walk_positions(value_node, key, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*prefix, i)
            out[key] = (path, item.start_mark.line + 1)
            _walk_positions(item, key, path, out)


def _stage_list(raw: Mapping[str, Any], path: Path, lines: Mapping[FieldPath, tuple[Path, int]] | None = None
                ) -> list[dict[str, Any]]:
    stages = raw.get("stages", [])
    if not isinstance(stages, list):
        note = full_width_note(stages) if isinstance(stages, str) else None  # `stages: ［］`
        raise RecipeError(f"{where(('stages',), lines or {}, path)}: stages: expected a list of stages"
                          f"{' (each starting with `- name:`)' if isinstance(stages, dict) else ''}"
                          f"{'; the value ' + note if note else ''}")
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
            raise RecipeError(f"{where(('stages', i), lines or {}, path)}: stages[{i}]: expected a mapping with a "
                              "string 'name' and a 'kind'")
    return stages


def _by_name(lines: Mapping[FieldPath, tuple[Path, int]], stages: list[dict]) -> dict[tuple, tuple[Path, int]]:
    """Re-key stage positions by stage name, so they survive the merge of an `extends` chain."""
    out = {}
    for key, value in lines.items():
        if len(key) >= 2 and key[0] == "stages" and isinstance(key[1], int) and key[1] < len(stages):
            out[("stages", stages[key[1]]["name"], *key[2:])] = value
        else:
            out[key] = value
    return out


def _load_chain(path: Path, seen: tuple[Path, ...]):
    """Returns (merged raw, positions by merged index, stage name -> defining file, files)."""
    raw, lines = _read_yaml(path)
    stages = _stage_list(raw, path, lines)
    named_lines = _by_name(lines, stages)
    # Relative paths resolve against the file that wrote them (`_path_context`). A value with no
    # file (--set) falls back to: a stage's first-defining file; for top-level fields the file that set base_model.
    origins = {stage["name"]: path for stage in stages}
    if "base_model" in raw:
        origins["<top>"] = path
    files = [path]
    parent_path = _parent_recipe(raw.pop("extends", None), lines, (*seen, path))
    if parent_path is not None:
        parent_raw, parent_named, parent_origins, parent_files = _load_chain(parent_path, (*seen, path))
        _check_changed_stages(stages, parent_raw, lambda i: where(("stages", i, "name"), lines, path) + ": ")
        raw = _merge_recipes(parent_raw, raw)
        named_lines = {**parent_named, **named_lines}
        origins = {**origins, **parent_origins} | ({"<top>": path} if "<top>" in origins else {})
        files = parent_files + files
    origins.setdefault("<top>", path)
    return raw, named_lines, origins, files


def _check_changed_stages(stages: list[Any], parent: Mapping[str, Any], at: Callable[[int], str]) -> None:
    """A stage of an overlay (a profile, a recipe that extends another) with no ``kind`` changes the parent's stage of
    its name; with a name the parent lacks it is a slip, not a new stage, and is named as one (it was refused as a
    stage missing its kind). ``at(i)``: where stage ``i`` is, with the field path's start."""
    names = [stage.get("name") for stage in parent.get("stages") or [] if isinstance(stage, dict)]
    for i, stage in enumerate(stages):
        name = stage.get("name") if isinstance(stage, dict) else None
        if isinstance(name, str) and name not in names and "kind" not in stage:
            raise RecipeError(f"{at(i)}stages[{i}].name: no stage named '{name}' to change (stages: "
                              f"{', '.join(map(str, names))}; a new stage needs a kind)"
                              f"{did_you_mean(name, [str(n) for n in names])}")


def _merge_recipes(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``child`` over ``parent``; stages merge by name, new stages are appended, before the parent's bake
    stage when it ends with one (the bake ships the model of the stage before it: an `rl` stage a recipe adds to one
    that bakes trains after it, or the bake would ship the model without it)."""
    out = copy.deepcopy(parent)
    for key, value in child.items():
        if key == "stages":
            merged = copy.deepcopy(parent.get("stages", []))
            index = {stage["name"]: i for i, stage in enumerate(merged)}
            bake = merged.pop() if merged and merged[-1].get("kind") == "bake" else None
            bake_at = len(merged)
            for stage in value:
                if stage["name"] in index:
                    at = index[stage["name"]]
                    if bake is not None and at == bake_at:
                        bake = _deep_merge(bake, stage)
                    else:
                        merged[at] = _deep_merge(merged[at], stage)
                else:
                    merged.append(copy.deepcopy(stage))
            out["stages"] = [*merged, bake] if bake is not None else merged
        elif value is None:  # back to the default, as inside a stage (_deep_merge)
            out.pop(key, None)
        else:
            out[key] = _deep_merge(out.get(key), value)
    return out


_TAGS = ("type", "kind")


def _deep_merge(base: Any, override: Any) -> Any:
    """Mappings merge key by key, except when the override switches a tagged union's `type`:
    then it replaces the mapping (an http teacher's base_url means nothing to a transformers one).
    A key the override sets to null is dropped: the field goes back to its default, whatever its type (`select:
    null` and `parameters: null` alike; a mapping could not be cleared, as null is no mapping)."""
    switches = isinstance(base, dict) and isinstance(override, dict) and any(
        tag in override and tag in base and override[tag] != base[tag] for tag in _TAGS
    )
    if isinstance(base, dict) and isinstance(override, dict) and not switches:
        out = dict(base)
        for key, value in override.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _deep_merge(base.get(key), value)
        return out
    return copy.deepcopy(override)


# --------------------------------------------------------------------------- --set overrides


def _apply_override(raw: dict[str, Any], override: str) -> tuple[FieldPath, int]:
    """``stages.<name>.train.learning_rate=2e-5``: stages are addressed by name (or position); an item of any other
    list by its name or position, ``rewards.1`` or ``rewards[1]``; values are YAML.

    Returns the overridden field's path, stages named (as the position map keys them), and the length of its
    longest prefix that was there before (the keys after it the override made)."""
    shown = f"--set {shown_override(override)}"
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise RecipeError(f"{shown}: expected KEY.PATH=VALUE")
    try:
        value = parse_yaml(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise RecipeError(f"{shown}: value is not valid YAML: {problem}") from None
    except RecursionError:
        raise RecipeError(f"{shown}: value is nested too deeply") from None
    parts: list[str | int] = [part for part in _INDEX.sub(r".\1", key).split(".")]
    node: Any = raw
    created = len(parts)
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if parts[:i] == ["stages"]:
                node = _stage_by_name(node, str(part), shown)
                parts[i] = node.get("name", part)  # positions key the stages by name
            else:
                parts[i] = _list_index(node, str(part), parts[:i], shown)  # and every other list by index
                node = node[parts[i]]
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"{shown}: '{'.'.join(map(str, parts[:i]))}' is not a mapping")
        if part not in node:
            created = min(created, i + 1)
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        raise RecipeError(f"{shown}: name a field inside the stage, e.g. stages.{last}.train.x=1")
    if not isinstance(node, dict):
        raise RecipeError(f"{shown}: '{'.'.join(map(str, parts[:-1]))}' is not a mapping")
    node[last] = value
    return tuple(parts), created


_INDEX = re.compile(r"\[(\d+)\]")  # rewards[1] reads as rewards.1


def _list_index(items: list, part: str, above: list, shown: str) -> int:
    """The position of the item ``part`` names in a list other than the stages: its ``name``, or its position."""
    named = [i for i, item in enumerate(items) if isinstance(item, dict) and item.get("name") == part]
    if named:
        return named[0]
    if part.isdigit() and int(part) < len(items):
        return int(part)
    name = ".".join(map(str, above))
    count = f"{len(items)} item{'' if len(items) == 1 else 's'}"
    if part.isdigit():
        raise RecipeError(f"{shown}: {name} has {count}, so there is no {name}[{part}] (positions count from 0)")
    raise RecipeError(f"{shown}: {name} has no item named '{part}' ({count}): name one by its name or its position, "
                      f"{name}.0 or {name}[0]")


def _stage_by_name(stages: list, name: str, shown: str) -> dict:
    for stage in stages:
        if isinstance(stage, dict) and stage.get("name") == name:
            return stage
    if name.isdigit() and int(name) < len(stages):
        return stages[int(name)]
    names = [s.get("name") for s in stages if isinstance(s, dict)]
    raise RecipeError(f"{shown}: no stage named '{name}' (stages: {', '.join(map(str, names))})"
                      f"{did_you_mean(name, [str(n) for n in names])}")


# --------------------------------------------------------------------------- validation


def _validate(path: Path, raw: dict[str, Any], named_lines, origins, files) -> LoadedRecipe:
    stages_raw = _stage_list(raw, path)
    names = [stage["name"] for stage in stages_raw]
    lines = _by_index(named_lines, names)
    top_dir = origins.get("<top>", path).parent
    path_warnings: list[str] = []
    try:
        top = {key: value for key, value in raw.items() if key != "stages"}
        recipe = Recipe.model_validate(raw, context=_path_context(top, (), lines, top_dir, path_warnings))
    except ValidationError as exc:
        raise from_validation_error(exc, file=path, lines=lines, raw=raw, stage_names=names, model=Recipe,
                                    top_keys=("extends", "profiles")) from None

    _check_template_defaults(recipe, lines, path)
    kinds = stage_kinds()
    seen: dict[str, int] = {}
    # Stage names are folder names: 'sft' and 'SFT' are one folder on macOS's and Windows' file systems.
    folded: dict[str, int] = {}
    stages: list[StageConfigBase] = []
    for i, stage_raw in enumerate(stages_raw):
        loc = ("stages", i)
        name = stage_raw["name"]
        if name.lower() in folded:
            j = folded[name.lower()]
            other = "" if stages_raw[j]["name"] == name else (
                f", named '{stages_raw[j]['name']}': stage folders may not differ only in case")
            raise RecipeError(
                f"{where((*loc, 'name'), lines, path)}: stages[{i}].name: duplicate stage name '{name}' "
                f"(also stages[{j}]{other})"
            )
        seen[name] = i
        folded[name.lower()] = i
        kind = stage_raw.get("kind")
        slip = next((key for key in stage_raw if key != "kind" and closest(key, ["kind"])), None)
        if kind is None and slip is not None:
            # `kidn: sft`: the misspelt key is the cause, the missing kind only its consequence
            raise RecipeError(
                f"{where((*loc, slip), lines, path)}: stages[{i}].{slip} (stage '{name}'): unknown field (not allowed "
                f"here; check the spelling); did you mean 'kind'?"
            )
        if kind is None:
            raise RecipeError(
                f"{where(loc, lines, path)}: stages[{i}].kind (stage '{name}'): field required; "
                f"one of: {', '.join(kinds)}"
            )
        if kind not in kinds:
            other = _OTHER_TOOLS_KINDS.get(str(kind).lower())
            hint = f"; did you mean {other}?" if other else did_you_mean(kind, kinds)
            raise RecipeError(
                f"{where((*loc, 'kind'), lines, path)}: stages[{i}].kind (stage '{name}'): unknown stage kind "
                f"{kind!r}; known kinds: {', '.join(kinds)}{hint}"
            )
        context = {**_path_context(stage_raw, loc, lines, origins.get(name, path).parent, path_warnings),
                   DEFER_TRAIN_CHECKS: True, EARLIER_STAGES: names[:i], THINKING_DEFAULT_CONTEXT: recipe.thinking_default}
        try:
            config = kinds[kind].config.model_validate(stage_raw, context=context)
        except ValidationError as exc:
            raise from_validation_error(
                exc, file=path, lines=lines, raw=stage_raw, prefix=loc, stage_names=names, model=kinds[kind].config
            ) from None
        if config.from_ is not None and (config.from_ not in seen or config.from_ == name):
            earlier = [n for n in names[:i]]
            raise RecipeError(
                f"{where((*loc, 'from'), lines, path)}: stages[{i}].from (stage '{name}'): "
                f"'{config.from_}' is not an earlier stage (earlier stages: {', '.join(earlier) or 'none'})"
                f"{did_you_mean(config.from_, earlier)}"
            )
        for read in config.reads(names[:i]):
            _check_read(read, stages, kinds, loc, name, lines, path)
        stages.append(config)

    bake_kind = kinds.get("bake")
    bake = None
    if bake_kind is not None and not any(stage.kind == "bake" for stage in stages):
        if "bake" in folded:
            i = folded["bake"]
            raise RecipeError(
                f"{where(('stages', i, 'name'), lines, path)}: stages[{i}].name: '{stages_raw[i]['name']}' is the "
                "folder of the bake stage tempa adds last (in any case); rename this stage (or give it kind: bake)"
            )
        bake = bake_kind.config.model_validate(
            {"name": "bake", "kind": "bake", "generation": recipe.generation.model_dump(exclude_none=True)}
        )

    # Everything else is valid: now the `train:` checks, which need trl's config spec (cached; the
    # first time on a machine, or after an upgrade, it is read from trl itself: seconds of imports).
    for i, (stage_raw, config) in enumerate(zip(stages_raw, stages, strict=True)):
        if stage_raw.get("train") is None:
            continue
        context = {**_path_context(stage_raw, ("stages", i), lines, origins.get(config.name, path).parent,
                                    path_warnings),
                   EARLIER_STAGES: names[:i], THINKING_DEFAULT_CONTEXT: recipe.thinking_default}
        try:
            stages[i] = type(config).model_validate(stage_raw, context=context)
        except ValidationError as exc:
            raise from_validation_error(
                exc, file=path, lines=lines, raw=stage_raw, prefix=("stages", i), stage_names=names, model=type(config)
            ) from None

    _check_global_batch(recipe, stages, kinds, lines, path)
    defaults = recipe.generation.model_dump(exclude_none=True)
    for i, (stage_raw, config) in enumerate(zip(stages_raw, stages, strict=True)):
        # The recipe's top-level `generation` is for the bake, whoever writes the bake stage: a bake of the recipe's
        # own took its own (none) and shipped no sampling defaults, silently.
        if config.kind != "bake" or not defaults:
            continue
        if stage_raw.get("generation"):
            file, line = locate(("generation",), lines, path)
            raise RecipeError(
                f"{where(('stages', i, 'generation'), lines, path)}: stages[{i}].generation (stage '{config.name}'): "
                f"the recipe's top-level generation ({file}:{line}) sets the bake's sampling defaults too; keep one"
            )
        stages[i] = config.model_copy(update={"generation": recipe.generation})
    if bake is not None:
        stages.append(bake)
    return LoadedRecipe(path=path, recipe=recipe, stages=stages, raw=raw, files=files,
                        path_warnings=path_warnings)


def _check_template_defaults(recipe: Recipe, lines, path: Path) -> None:
    """Refuse a ``thinking_default`` / ``stock_preamble`` the chat template has no ``default_*`` line for, at that
    field: the run refused it only as it baked the template, naming no line. A template that cannot be read is
    the bake's to name."""
    defaults = TemplateDefaults(thinking_mode=recipe.thinking_default, stock_preamble=recipe.stock_preamble)
    if defaults == TemplateDefaults():
        return  # every template renders the built-in defaults
    try:
        text, _ = read_template(recipe.chat_template)
    except (OSError, UnicodeDecodeError, TemplateNotFoundError):
        return
    problem = defaults_problem(text, defaults, f"chat template {recipe.chat_template}")
    if problem is not None:
        field, why = problem
        raise RecipeError(f"{where((field,), lines, path)}: {field}: {why}")


def _check_global_batch(recipe: Recipe, stages: list[StageConfigBase], kinds, lines, path: Path) -> None:
    """Refuse a ``launch.global_batch_size`` that a training stage cannot make on the launch's processes: the worker
    refused it only once its launch was up, after the stages before it and the stage's own data preparation. A launch
    whose process count accelerate decides is checked by the worker alone (`tempa plan` says so)."""
    launch = recipe.launch
    processes = launch.processes()
    if launch.global_batch_size is None or processes is None:
        return
    for config in stages:
        if not kinds[config.kind].trains:
            continue
        try:
            launch_train_args(config.train_args(), launch.global_batch_size, processes, launch.sequence_parallel)
        except ValueError as exc:
            problem = str(exc).removeprefix(f"launch.global_batch_size {launch.global_batch_size} ")
            raise RecipeError(
                f"{where(('launch', 'global_batch_size'), lines, path)}: launch.global_batch_size: "
                f"{launch.global_batch_size} {problem}, as stage '{config.name}' trains on the {processes} "
                f"process{'es' if processes != 1 else ''} of {launch_processes_source(launch)}; set one of those, or "
                "another per_device_train_batch_size"
            ) from None


def launch_processes_source(launch: LaunchConfig) -> str:
    """What sets the training processes of ``launch``, as a recipe's author finds it."""
    if launch.num_processes is not None:
        return "launch.num_processes"
    if launch.launcher == "torchrun":
        return f"launch.num_machines {launch.num_machines} ({launch.launcher}: one process a machine)"
    return f"launch.accelerate_config {launch.accelerate_config}"


def _path_context(raw: Any, prefix: FieldPath, lines, base_dir: Path, warnings: list[str]) -> dict[str, Any]:
    """Validation context: every string under ``prefix`` keyed (field, value) to its file's folder.

    After an `extends:` merge, the position map holds, for each key, the file whose value won, so a
    path the child wrote resolves against the child's folder and an inherited one against the parent's.
    (``--set`` values have no file: they keep ``base_dir``.) ``warnings`` collects references that look misspelt."""
    written_in: dict[tuple[str, str], Path] = {}

    def walk(node: Any, loc: FieldPath, field_name: str | None) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*loc, key), str(key))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, (*loc, i), field_name)
        elif isinstance(node, str) and field_name is not None:
            file = lines.get(loc, (None,))[0]
            if isinstance(file, Path):
                written_in[(field_name, node)] = file.parent

    walk(raw, prefix, None)
    return {"base_dir": base_dir, WRITTEN_IN: written_in, PATH_WARNINGS: warnings}


def _check_read(read: Read, earlier: list[StageConfigBase], kinds, loc, name: str, lines, path: Path) -> None:
    """A stage may read only an earlier stage, and only what that stage's kind produces."""
    field = (*loc, *read.field)
    producer = next((stage for stage in earlier if stage.name == read.stage), None)
    if producer is None:
        known = ", ".join(stage.name for stage in earlier) or "none"
        raise RecipeError(
            f"{where(field, lines, path)}: {dotted(field)} (stage '{name}'): '{read.stage}' is not an earlier stage "
            f"(earlier stages: {known}){did_you_mean(read.stage, [stage.name for stage in earlier])}"
        )
    if read.artifact not in kinds[producer.kind].produces:
        makers = [s.name for s in earlier if read.artifact in kinds[s.kind].produces] or ["none"]
        raise RecipeError(
            f"{where(field, lines, path)}: {dotted(field)} (stage '{name}'): stage '{read.stage}' (kind "
            f"{producer.kind}) produces no {read.artifact.value} (earlier stages that do: {', '.join(makers)})"
        )
    if read.needs is not None and (problem := read.needs(producer)) is not None:
        at = (*loc, *read.needs_at)
        raise RecipeError(f"{where(at, lines, path)}: {dotted(at)} (stage '{name}'): {problem} (stage '{read.stage}')")


def stage_reads(loaded: LoadedRecipe, index: int) -> list[str]:
    """Names of the stages stage ``index`` reads besides its ``from`` (in recipe order, no repeats)."""
    earlier = loaded.names[:index]
    names = {read.stage for read in loaded.stages[index].reads(earlier)}
    return [name for name in earlier if name in names]


def _by_index(named_lines, names: list[str]) -> dict[FieldPath, tuple[Path, int]]:
    index = {name: i for i, name in enumerate(names)}
    out = {}
    for key, value in named_lines.items():
        if len(key) >= 2 and key[0] == "stages" and key[1] in index:
            out[("stages", index[key[1]], *key[2:])] = value
        else:
            out[key] = value
    return out
