"""The recipe reference (docs/recipe-reference.md) and `tempa schema`, generated from the pydantic models."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import jsonschema
import pytest

from tempa.recipes import reference
from tempa.recipes.cli import main
from tempa.recipes.loader import shipped_recipe_dir
from tempa.recipes.registry import stage_kinds
from tempa.recipes.yaml_loader import parse_yaml, read_text

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipe-reference.md"


def test_committed_reference_is_up_to_date():
    assert DOC.is_file(), f"docs/recipe-reference.md is missing; generate it: {reference.REGENERATE}"
    assert DOC.read_text(encoding="utf-8") == reference.markdown(), (
        f"docs/recipe-reference.md is out of date with the recipe models; regenerate it: {reference.REGENERATE}")


def test_reference_lists_every_key_of_every_kind():
    text = reference.markdown()
    for name, kind in stage_kinds().items():
        section = text.split(f"## Stage kind: `{name}`", 1)[1].split("\n## ", 1)[0]
        for field_name, info in kind.config.model_fields.items():
            assert f"| `{info.alias or field_name}` |" in section, (name, field_name)
        for key in kind.config.train_defaults:
            assert f"| `{key}` |" in section, (name, key)
    for heading in ("## Data formats", "## Prompt files", "### LoraSettings", "## Logs and tensorboard",
                    "### SourceConfig", "### PromptSource"):
        assert heading in text


def test_every_stage_kind_shows_its_kind_as_required():
    # a stage without `kind` fails "field required" when the recipe loads
    text = reference.markdown()
    for name in stage_kinds():
        section = text.split(f"## Stage kind: `{name}`", 1)[1].split("\n## ", 1)[0]
        assert f"| `kind` | `{name}` | required |" in section, name


@pytest.mark.parametrize("name", ["preference", "rl"])
def test_the_train_defaults_tables_list_what_tempa_plan_prints(name):
    # `tempa plan` prints activation_checkpointing=true* for these kinds: set by their train_args, not train_defaults
    section = reference.markdown().split(f"tempa's `train:` defaults for `{name}`", 1)[1].split("\n## ", 1)[0]
    assert "| `activation_checkpointing` | `true` |" in section
    assert "reward_weights" not in section


def _shipped_recipe(name: str) -> dict:
    return parse_yaml(read_text(shipped_recipe_dir() / name))


@pytest.mark.parametrize("name", sorted(p.name for p in shipped_recipe_dir().glob("*.yaml")))
def test_shipped_recipes_validate_against_the_json_schema(name):
    # every one, those that `extends:` another included (they leave out base_model, and their stages' kinds)
    jsonschema.validate(_shipped_recipe(name), reference.json_schema())


def test_json_schema_requires_the_top_level_fields_of_a_recipe_that_extends_none():
    schema = reference.json_schema()
    recipe = _shipped_recipe("demo.yaml")
    del recipe["base_model"]
    with pytest.raises(jsonschema.ValidationError, match="'base_model' is a required property"):
        jsonschema.validate(recipe, schema)
    recipe = _shipped_recipe("demo.yaml")
    del recipe["stages"][0]["kind"]  # the loader's "field required": only a child recipe may change a stage so
    with pytest.raises(jsonschema.ValidationError, match="'kind' is a required property"):
        jsonschema.validate(recipe, schema)
    child = {"extends": "demo.yaml", "name": "mine", "stages": [{"name": "sft-general", "train": {"max_steps": 2}}]}
    jsonschema.validate(child, schema)
    child["stages"][0]["kind"] = "stf"  # a stage with a kind is checked whole, in a child too
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(child, schema)


def test_json_schema_rejects_what_the_loader_rejects():
    schema = reference.json_schema()
    recipe = _shipped_recipe("demo.yaml")
    recipe["stages"][0]["train"] = {**recipe["stages"][0].get("train", {})}
    recipe["stages"][0]["lerning_rate"] = 1e-5  # a misplaced key on a stage
    with pytest.raises(jsonschema.ValidationError, match="lerning_rate"):
        jsonschema.validate(recipe, schema)
    recipe = _shipped_recipe("demo.yaml")
    recipe["stages"][0]["kind"] = "stf"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(recipe, schema)


def test_tempa_schema_prints_the_schema_and_the_reference(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == reference.json_schema()
    assert main(["schema", "--markdown"]) == 0
    assert capsys.readouterr().out == reference.markdown()


def test_readme_recipe_loads(tmp_path):
    """The README's "Bring your own data and model" recipe is valid as written (given its data files)."""
    from tempa.recipes.loader import load_recipe

    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Bring your own data and model", 1)[1]
    recipe = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "data").mkdir()
    for name in ("chats.jsonl", "sharegpt.json", "extra.parquet", "prompts.jsonl"):
        (tmp_path / "data" / name).write_text("{}\n")
    (tmp_path / "my-model.yaml").write_text(recipe)
    loaded = load_recipe(tmp_path / "my-model.yaml")
    assert [stage.kind for stage in loaded.stages] == ["sft", "preference", "bake"]
    assert loaded.stages[0].lora is not None and len(loaded.stages[0].data.sources) == 4


def test_reference_lists_every_ifeval_instruction_with_its_arguments():
    # An ifeval suite's rows name instructions by `type`; the types and their arguments were written nowhere a user
    # reads (only `word_count` appeared, in an example), so char_count or sentence_count could not be found.
    from tempa.merge import ifeval

    text = reference.markdown()
    assert "(#ifeval-instructions)" in text
    section = text.split("## IFEval instructions", 1)[1].split("\n## ", 1)[0]
    for kind in typing.get_args(typing.get_args(ifeval.Instruction)[0]):
        name = kind.model_fields["type"].default
        row = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
        for argument in kind.model_fields:
            if argument != "type":
                assert f"`{argument}`" in row, (name, argument)
