"""The recipe reference, generated from the pydantic models: Markdown for people, JSON Schema for editors.

Everything a recipe may say is declared once, in the models (:class:`tempa.recipes.schema.Recipe`
and each stage kind's config, collected from the stage packages by
:func:`tempa.recipes.registry.stage_kinds`), so a new kind or key appears here without an edit.
The committed ``docs/recipe-reference.md`` is this module's output; regenerate it with::

    python -m tempa.recipes.reference > docs/recipe-reference.md

(``tempa schema --markdown`` prints the same). ``tempa schema`` prints the JSON Schema.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, Field, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tempa.recipes.registry import stage_kinds
from tempa.recipes.schema import Recipe

REGENERATE = "python -m tempa.recipes.reference > docs/recipe-reference.md"

# Keys the loader reads before validation (recipes/loader.py), declared here so that editors know them.
_LOADER_KEYS: dict[str, Any] = {
    "extends": (str | None, Field(default=None, description="Another recipe file this one inherits (relative "
                                  "to this file); stages merge by name, new stages are appended.")),
    "profiles": (dict[str, Any], Field(default_factory=dict, description="Named overlays applied with "
                                       "`--profile NAME` (any recipe keys; stages merge by name).")),
}


def stage_union() -> Any:
    """Every stage kind's config, told apart by `kind` (a discriminated union)."""
    configs = tuple(kind.config for kind in stage_kinds().values())
    return Annotated[Union[configs], Field(discriminator="kind")]  # noqa: UP007 (a runtime tuple of types)


def recipe_model() -> type[BaseModel]:
    """:class:`Recipe` with its stages typed by kind, plus the keys the loader handles (extends, profiles)."""
    stages = (list[stage_union()], Field(min_length=1, description=Recipe.model_fields["stages"].description))
    return create_model("Recipe", __base__=Recipe, __doc__=Recipe.__doc__, stages=stages, **_LOADER_KEYS)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe file (for YAML editors: `# yaml-language-server: $schema=...`)."""
    schema = recipe_model().model_json_schema(by_alias=True, mode="validation")
    # A recipe that `extends:` another inherits its required fields, and its stages without a `kind` change the
    # parent's stage of their name (loader._merge_recipes): only a recipe that extends none must have them all.
    required = schema.pop("required")
    stages = schema["properties"]["stages"]
    stages["items"] = {"anyOf": [stages["items"], _CHANGED_STAGE]}
    schema["if"] = {"required": ["extends"], "properties": {"extends": {"type": "string"}}}
    schema["else"] = {"required": required, "properties": {"stages": {"items": {"required": ["kind"]}}}}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "tempa recipe"}


_CHANGED_STAGE: dict[str, Any] = {
    "type": "object",
    "description": "In a recipe that extends another: changes the parent's stage of this name (any of its keys).",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
    "not": {"required": ["kind"]},  # a stage with a kind is a whole stage, checked as one
}


# --------------------------------------------------------------------------- Markdown


def markdown() -> str:
    """The whole reference as Markdown (docs/recipe-reference.md)."""
    model = recipe_model()
    kinds = stage_kinds()
    queue: list[type[BaseModel]] = []
    out = [
        "# Recipe reference",
        "",
        f"<!-- generated from the pydantic models; do not edit. Regenerate: {REGENERATE} -->",
        "",
        "Every key a recipe may hold, with its type, default and meaning, generated from the models tempa "
        "validates recipes with (a key not listed here is an error naming the closest one). `tempa schema` "
        "prints the same as a JSON Schema for editors, e.g. with the YAML language server: "
        "`tempa schema > tempa-recipe.schema.json` and a first line "
        "`# yaml-language-server: $schema=tempa-recipe.schema.json` in the recipe.",
        "",
        "Contents: [the recipe](#the-recipe), " + ", ".join(f"[`{k}`](#stage-kind-{k})" for k in kinds)
        + ", [data formats](#data-formats), [prompt files](#prompt-files), [training defaults and `train:`]"
        "(#training-arguments-train), [logs and tensorboard](#logs-and-tensorboard), "
        "[IFEval instructions](#ifeval-instructions).",
        "",
        "## The recipe",
        "",
        _doc(Recipe),
        "",
        _fields_table(model, queue, skip={"stages"}),
        "",
        "`stages`: a list of stages, each a mapping whose `kind` is one of the kinds below. Every stage has "
        "`name`, `kind` and `from`; the bake stage is added last when a recipe has none.",
        "",
    ]
    for name, kind in kinds.items():
        # `kind` has its own value as default only to tell the configs apart: the loader requires it
        out += [f"## Stage kind: `{name}`", "", f"*{kind.summary}.*", "", _doc(kind.config), "",
                _fields_table(kind.config, queue, required={"kind"}), ""]
        defaults = _train_defaults(kind.config)
        if defaults:
            out += [f"tempa's `train:` defaults for `{name}` (on top of trl's; a key you set wins):", "",
                    _mapping_table(defaults), ""]
    out += _nested_sections(queue)
    out += [_STATIC_SECTIONS.strip(), ""]
    out += _ifeval_section()
    return "\n".join(out)


def _train_defaults(config: type[BaseModel]) -> dict[str, Any]:
    """The `train:` arguments a stage of this kind that sets none trains with, from its own ``train_args()`` (what
    `tempa plan` prints): a default set there, not in ``train_defaults`` (activation_checkpointing), is listed too."""
    if not getattr(config, "train_defaults", None):
        return {}
    fields: dict[str, Any] = {"train": {}} | ({"rewards": []} if "rewards" in config.model_fields else {})
    args = config.model_construct(**fields).train_args()
    args.pop("reward_weights", None)  # the weights of the stage's own rewards: set by tempa, no default
    return args


def _ifeval_section() -> list[str]:
    """The instruction types an evaluation row may list, from the models that check them (merge/ifeval.py)."""
    from tempa.merge.ifeval import INSTRUCTION_KINDS

    rows = ["| type | arguments | checks |", "| --- | --- | --- |"]
    for name, kind in INSTRUCTION_KINDS.items():
        arguments = "; ".join(f"`{key}`" + (f": {info.description.rstrip('.')}" if info.description else "")
                              for key, info in kind.model_fields.items() if key != "type")
        rows.append(f"| `{name}` | {_cell(arguments or '-')} | {_cell(_doc(kind))} |")
    return [
        "## IFEval instructions",
        "",
        "The rows of an `ifeval` suite ([IFEvalSuite](#ifevalsuite)) list their `instructions`, each an object with "
        "a `type` and that type's arguments; each is checked on the answer after the think block, and a blank "
        "answer follows none. A row with an unknown type or argument stops the stage, named by its line, before any "
        "model loads (and in `tempa plan`). Languages written without spaces (Japanese, Chinese, Thai) read a "
        "whole clause as one word: limit their length with `char_count`.",
        "",
        *rows,
        "",
        "```jsonl",
        '{"prompt": "東京について五十文字以内で説明してください。", "language": "ja", '
        '"instructions": [{"type": "char_count", "max": 50}, {"type": "sentence_count", "max": 2}]}',
        "```",
        "",
    ]


def _nested_sections(queue: list[type[BaseModel]]) -> list[str]:
    out, seen = [], set()
    while queue:
        model = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        out += [f"### {model.__name__}", "", _doc(model), "", _fields_table(model, queue), ""]
    return out


def _doc(model: type[BaseModel]) -> str:
    doc = typing.cast(str, model.__doc__ or "").strip()
    return re.sub(r"\s*\n\s*", " ", doc.split("\n\n")[0]) if doc else ""


def _fields_table(model: type[BaseModel], queue: list[type[BaseModel]], skip: set[str] = frozenset(),
                 required: set[str] = frozenset()) -> str:
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        key = info.alias or name
        # What a recipe may write: a before-validator's declared input type, else the field's type.
        inputs = [m.json_schema_input_type for m in info.metadata if isinstance(m, BeforeValidator)
                  and m.json_schema_input_type is not PydanticUndefined]
        default = "required" if name in required else _default(info)
        rows.append(f"| `{key}` | {_cell(_type(inputs[0] if inputs else info.annotation, queue) + _limits(info))} | {_cell(default)} "
                    f"| {_cell(info.description or '')} |")
    return "\n".join(rows)


def _mapping_table(values: Mapping[str, Any]) -> str:
    rows = ["| key | value |", "| --- | --- |"]
    rows += [f"| `{key}` | {_cell(_value(value))} |" for key, value in values.items()]
    return "\n".join(rows)


def _cell(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).replace("|", "\\|") or " "


def _type(tp: Any, queue: list[type[BaseModel]]) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if origin is Annotated:
        return _type(args[0], queue)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_type(arg, queue) for arg in args))
    if origin is Literal:
        return " or ".join(f"`{json.dumps(arg)}`" if not isinstance(arg, str) else f"`{arg}`" for arg in args)
    if origin in (list, tuple, set, frozenset, typing.Sequence) or (
            origin is not None and getattr(origin, "__name__", "") in ("Sequence", "Iterable")):
        return f"list of {_type(args[0], queue)}" if args else "list"
    if origin in (dict, Mapping) or tp is dict:
        return f"mapping of {_type(args[1], queue)}" if len(args) == 2 and args[1] is not Any else "mapping"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp not in queue:
            queue.append(tp)
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
        getattr(tp, "__name__", ""), getattr(tp, "__name__", str(tp)))


def _limits(info: FieldInfo) -> str:
    words = {"ge": "≥ {}", "gt": "> {}", "le": "≤ {}", "lt": "< {}", "min_length": "at least {} items",
             "max_length": "at most {} items"}
    parts = [text.format(getattr(meta, attr)) for meta in info.metadata for attr, text in words.items()
             if getattr(meta, attr, None) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if isinstance(info.json_schema_extra, dict) and "default_shown" in info.json_schema_extra:
        return str(info.json_schema_extra["default_shown"])  # a default the recipe fills in when it loads
    value = info.get_default(call_default_factory=True)
    # A block defaulted as `{}` and validated (validate_default) is its model's defaults, filled in at load.
    if isinstance(value, BaseModel) or (value == {} and info.validate_default and _is_model(info.annotation)):
        return "its defaults"
    return _value(value)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value, ensure_ascii=False)}`"


_STATIC_SECTIONS = """
## Data formats

A data source (`data.sources[]`, see [SourceConfig](#sourceconfig)) is read from:

| `path` | read as |
| --- | --- |
| `file.jsonl`, or `file.json` holding JSON Lines | one conversation per line, read as UTF-8 line by line: a bad line becomes a reject in `rejects.jsonl` with its line number |
| `file.json` holding one JSON document | a list of rows, or an object holding exactly one list (`{"data": [...]}`) |
| `file.parquet`, `file.csv` | loaded with `datasets` |
| a folder written by `Dataset.save_to_disk` (or a `DatasetDict`, with `split`) | loaded with `datasets.load_from_disk` |
| a folder of JSON files (`.jsonl`, `.json`) | file after file, each read as it would be alone (a bad line a reject named by file and line): the files of `split` as `datasets` finds them (`train-00000-of-00004.jsonl`, a `train/` folder) |
| a folder of other data files (Parquet, CSV, compressed JSON) | loaded with `datasets.load_dataset(folder, split=split)` |
| a hub dataset id, e.g. `HuggingFaceH4/ultrachat_200k` | `datasets.load_dataset(path, name=subset, split=split, revision=revision)` |
| `stage:NAME` | the dataset an earlier stage wrote (`synthesize`, `translate`; `generate_prompts` writes prompts, for a prompt file) |

Each row is one conversation in one of these layouts (`format: auto` tells them apart by the columns present;
`columns:` renames them, see [ColumnMapping](#columnmapping)):

```jsonl
{"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}, {"role": "assistant", "content": "...", "reasoning_content": "optional trace"}]}
{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}
{"prompt": "...", "response": "..."}
{"instruction": "...", "input": "optional", "output": "..."}
```

`messages` is OpenAI's layout (assistant `tool_calls`, `tool` results with `tool_call_id`/`name`); `conversations`
is ShareGPT (`function_call` and `observation` turns for tools); `prompt` + `response` (or `completion`) and
Alpaca's `instruction` + `input` + `output` are single turns. A row's `tools` (a list of definitions, or that
list as JSON text) is rendered with it. A reasoning trace is read from `reasoning_content`, `thinking` or
`reasoning`, or from a think block at the start of the answer; the source's `thinking_mode` decides whether it is
trained, and a row's own `thinking_mode` (`on` or `off`, as in prompt files) wins over it. Text (turns,
reasoning, system prompts) is read in Unicode's NFC, and so are prompts, preference pairs, evaluation prompts and
texts, and `pretrain` documents: a file saved decomposed (NFD, as macOS tools write Vietnamese diacritics or Japanese
kana with dakuten) trains on the same tokens as its NFC twin. CJK compatibility ideographs (塚 U+FA10, which NFC
replaces by U+585A) and the Ω, K and Å signs stay as written, and so do tool definitions and tool-call arguments.

## Prompt files

The `prompts:` ([PromptSource](#promptsource)) of the `preference`, `synthesize` and `rl` stages read rows
with `messages` (a chat ending with a user turn, or, in a tool loop, with the `tool` results of an assistant turn's
`tool_calls`; a trailing assistant turn without tool calls is taken off and kept as the reference answer, one with
tool calls is refused: its results are missing) or a plain `prompt` string, and optionally:

| field | meaning |
| --- | --- |
| `language` | the target language (ISO 639-1) the language rewards check |
| `answer` | a verifiable reference answer (math / exact-match verifiers) |
| `thinking_mode` | `on` or `off` for this row (overrides the stage's `thinking`) |
| `tools` | the tool definitions the prompt offers (a list, or that list as JSON text); `preference` stages only (`alignment/README.md`, "Tool-calling prompts") |

```jsonl
{"messages": [{"role": "user", "content": "Apa ibu kota Indonesia?"}], "language": "id", "answer": "Jakarta"}
{"prompt": "What is 12 * 7?", "answer": "84", "thinking_mode": "on"}
```

The field names are set with `messages_field`, `prompt_field`, `language_field`, `answer_field`,
`thinking_field` and `tools_field`. A `language` or `answer` reward does not apply to a row without its field, but a stage whose
prompts all lack it is refused (the reward would never apply: a misspelt field name). A local prompts file is
read, every row checked, by `tempa plan` and before the run's first stage; an earlier stage's dataset when the
stage starts.

## Training arguments (`train:`)

A training stage's `train:` takes any field of trl's `SFTConfig` (`sft`, `pretrain`), `DPOConfig`
(`preference`) or `GRPOConfig` / `RLOOConfig` (`rl`, by its `trainer`),
checked against trl's own dataclass when the recipe loads (unknown keys, wrong types, unknown choices, a
scheduler's required `lr_scheduler_kwargs`, non-positive counts and learning rates). tempa's defaults for each kind are listed
with it above; `tempa plan` prints the effective arguments of every training stage (defaults included).
tempa itself sets `output_dir`, `logging_dir`, `resume_from_checkpoint`, `deepspeed` and `save_safetensors`
(a recipe may not). Refused too: `hub_token` and any secret inside a mapping such as `model_init_kwargs: {token:
...}` (a token belongs in `HF_TOKEN` or `hf auth login`, never in a recipe that is copied into the run folder and
the trackers' config), `push_to_hub` (`tempa push` uploads the checked final model, not
the checkpoints), `trust_remote_code`, also inside `model_init_kwargs` (set it at the recipe's top level,
which every loader reads), and `restore_callback_states_from_checkpoint` (tempa's throughput meter restores its own
totals on resume; the Trainer would re-create it after the trackers). `report_to` names trackers (`tensorboard`, `wandb`, `trackio`, `mlflow`, ...); one that is
not installed fails when the recipe loads. The run's name (`<recipe>/<stage>`) becomes `run_name` unless
the recipe sets one.

`lora:` (on an `sft` stage, see [LoraSettings](#lorasettings)) trains LoRA adapters with peft instead of all
weights; the adapters are merged into the stage's saved model, so every later stage sees a plain model:

```yaml
lora: {r: 16, lora_alpha: 32, lora_dropout: 0.05, target_modules: all-linear}
lora: {r: 64, lora_alpha: 64, use_rslora: true, modules_to_save: [embed_tokens, lm_head]}  # a new language's tokens
```

A base whose embeddings are tied (`tie_word_embeddings`: small Qwen models, Llama 3.2, Gemma) stays tied: the one
matrix trains as input and output embedding (naming `lm_head` too trains it once). FSDP cannot shard a tied copy
that trains: there the stage refuses before its first step; ZeRO-3 and one process train it.

Under ZeRO-3 and FSDP2 (every process holding a shard of each weight) the adapter is saved whole and merged into
the stage's start model on the first process's CPU, which needs the memory of one copy of the model there.

## Logs and tensorboard

| what | where |
| --- | --- |
| what the runner did (each stage's decisions, warnings) | `RUN_DIR/<stage>/logs/stage.log`, and the terminal |
| a training process's output and progress lines | `RUN_DIR/<stage>/logs/train.log` (preference: one per round) |
| the exact launch command, to re-run by hand | `RUN_DIR/<stage>/logs/launch.sh` |
| a failed stage's traceback | `RUN_DIR/<stage>/logs/traceback.txt` |
| tensorboard event files (`report_to: tensorboard`) | `RUN_DIR/<stage>/checkpoints/runs/<date>_<host>/` (trainer `output_dir`; `TENSORBOARD_LOGGING_DIR` overrides); `tensorboard --logdir RUN_DIR` finds them all |
| an evaluate stage's scores, per candidate at its training step (to the trackers its candidates' training stages report to) | tensorboard: `RUN_DIR/<evaluate stage>/runs/<date>_<host>/`, under `eval/` |
| the loss / learning-rate / grad-norm history | `log_history` in each model's `tempa_train_metrics.json`, and `tempa report` |
| how the training processes held the model (each rank's share of the parameters under FSDP2 / ZeRO-3) | `shards` in each model's `tempa_train_metrics.json` |

When output goes to a file or a pipe, tempa writes full-width lines and one progress line per logging
interval, never carriage-return progress bars.
"""


if __name__ == "__main__":
    print(markdown(), end="")
