"""Slips of a new user who ran every snippet of the docs as written: each is refused with a one-line error that says
what was meant, and the docs say what the code does."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe


def _write(folder: Path, text: str, name: str = "r.yaml") -> Path:
    (folder / "chats.jsonl").write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n", encoding="utf-8")
    (folder / "prompts.jsonl").write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n", encoding="utf-8")
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_algorithm_on_an_rl_stage_is_named_as_trainer(tmp_path):
    # trl's and other tools' docs say "algorithm"; tempa's field is `trainer`, too far in spelling for a guess
    path = _write(tmp_path, """
        name: r
        base_model: "tempa:tiny"
        stages:
          - name: rl
            kind: rl
            algorithm: rloo
            prompts: {path: prompts.jsonl}
            rewards: [{type: answer}]
        """)
    assert _error(path) == (f"{path}:6: stages[0].algorithm (stage 'rl'): unknown field (not allowed here; check the "
                            "spelling); did you mean 'trainer'?")


@pytest.mark.parametrize(("top", "languages", "where", "got", "hint"), [
    # Norwegian's code read as false
    ("name: r", "[en, no]", "6: stages[0].data.sources[0].languages[1] (stage 'sft')", "False",
     "YAML reads a bare no/off/yes/on as a boolean: quote it ('no')"),
    ("name: off", "[en]", "1: name", "False", "YAML reads a bare no/off/yes/on as a boolean: quote it ('no')"),
    ("name: r", "[en, ~]", "6: stages[0].data.sources[0].languages[1] (stage 'sft')", "None",
     "YAML reads an empty value, a bare null or ~ as no value: quote a word meant as text"),
])
def test_a_yaml_boolean_where_a_string_was_expected_says_to_quote_it(tmp_path, top, languages, where, got, hint):
    path = _write(tmp_path, f"""
        {top}
        base_model: "tempa:tiny"
        stages:
          - name: sft
            kind: sft
            data: {{sources: [{{name: c, path: chats.jsonl, languages: {languages}}}]}}
        """)
    assert _error(path) == f"{path}:{where}: Input should be a valid string, got {got}; {hint}"


def test_a_boolean_where_no_string_was_expected_gets_no_quoting_hint(tmp_path):
    path = _write(tmp_path, """
        name: r
        base_model: "tempa:tiny"
        stages:
          - name: sft
            kind: sft
            data: {sources: [{name: c, path: chats.jsonl, languages: no}]}
        """)
    assert _error(path) == (f"{path}:6: stages[0].data.sources[0].languages (stage 'sft'): Input should be a valid "
                            "list, got False")


@pytest.mark.parametrize(("top", "stage", "where", "hint"), [
    ("", "learning_rate: 1.0e-5", "6: stages[0].learning_rate (stage 'sft')", "it belongs under `train:`"),
    ("", "heldout: 0.05", "6: stages[0].heldout (stage 'sft')", "it belongs under `data:`"),
    ("train: {learning_rate: 1.0e-5}", "", "3: train", "it belongs inside a stage (an entry of `stages:`)"),
    ("kind: sft", "", "3: kind", "it belongs inside a stage (an entry of `stages:`)"),
    ("learning_rate: 1.0e-5", "", "3: learning_rate", "it belongs under a stage's `train:`"),
])
def test_a_key_at_the_wrong_level_names_the_level_it_belongs_at(tmp_path, top, stage, where, hint):
    path = _write(tmp_path, f"""
        name: r
        base_model: "tempa:tiny"
        {top or 'seed: 1'}
        stages:
          - name: sft
            {stage}
            kind: sft
            data: {{sources: [{{name: c, path: chats.jsonl}}]}}
        """)
    assert _error(path) == f"{path}:{where}: unknown field (not allowed here; check the spelling); {hint}"


@pytest.mark.parametrize(("stages", "where", "expected"), [
    ("  sft: {kind: sft}", "3: stages", "expected a list of stages (each starting with `- name:`)"),
    ("  - sft", "4: stages[0]", "expected a mapping with a string 'name' and a 'kind'"),
])
def test_stages_not_written_as_a_list_of_stages_names_the_line(tmp_path, stages, where, expected):
    path = _write(tmp_path, 'name: r\nbase_model: "tempa:tiny"\nstages:\n' + stages + "\n")
    assert _error(path) == f"{path}:{where}: {expected}"


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_lists_every_name_the_run_directory_reserves():
    from tempa.sft.run_layout import RESERVED_NAMES

    readme = README.read_text(encoding="utf-8")
    listed = readme.split("A stage name may not be one of the run directory's own entries", 1)[1].split(")", 1)[0]
    assert sorted(name for name in RESERVED_NAMES if f"`{name}`" not in listed) == []


def test_readmes_example_error_is_the_one_tempa_gives(tmp_path):
    from tempa.recipes.loader import shipped_recipe_dir

    readme = README.read_text(encoding="utf-8")
    example = readme.split("valid. For example:\n  `/…/recipes/demo.yaml", 1)[1].split("`", 1)[0]
    demo = (shipped_recipe_dir() / "demo.yaml").read_text(encoding="utf-8")
    (tmp_path / "demo.yaml").write_text(demo.replace("learning_rate:", "lerning_rate:", 1), encoding="utf-8")
    (tmp_path / "data").symlink_to(shipped_recipe_dir() / "data")
    assert _error(tmp_path / "demo.yaml") == f"{tmp_path / 'demo.yaml'}{example}"


def test_readmes_showcase_recipe_plans_a_schedule_that_fits_its_steps(tmp_path):
    # it decayed over 10 steps of the 4 its sft-reasoning stage trains: the run warned that the rate never held its peak
    from tempa.recipes.estimate import estimate_recipe
    from tempa.recipes.loader import shipped_recipe_dir

    recipe = README.read_text(encoding="utf-8").split("## A recipe, top to bottom", 1)[1]
    (tmp_path / "demo.yaml").write_text(recipe.split("```yaml\n", 1)[1].split("```", 1)[0], encoding="utf-8")
    (tmp_path / "data").symlink_to(shipped_recipe_dir() / "data")
    estimates = estimate_recipe(load_recipe(tmp_path / "demo.yaml"), "1xH100")  # the recipe's launch: one process
    assert [e.name for e in estimates if e.steps] == ["sft-general", "sft-reasoning"]
    assert [w for e in estimates for w in e.warnings] == []
