"""Hints of recipe errors that a new user's likely slips get: where a misplaced key belongs, which --set wrote a
field, one message per field of several types, the cause before its consequence, the closest name."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe

ROWS = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def error_of(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    (tmp_path / "rows.jsonl").write_text(ROWS)
    path = tmp_path / "r.yaml"
    path.write_text("".join(line + "\n" for line in textwrap.dedent(text).splitlines() if line.strip()))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, overrides)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def sft_recipe(data: str = "", train: str = "{max_steps: 2}", top: str = "") -> str:
    return f"""
    name: t
    base_model: "tempa:tiny"
    {top}
    stages:
      - name: sft-general
        kind: sft
        data:
          sources:
            - {{name: rows, path: rows.jsonl}}
          {data}
        train: {train}
    """


# --------------------------------------------------------------------------- 1: a key one level off


def test_stage_key_indented_under_data_is_sent_up_not_spelled_as_a_data_key(tmp_path):
    message = error_of(tmp_path, sft_recipe(data="train: {learning_rate: 1.0e-3}"))
    assert "r.yaml:9: stages[0].data.train (stage 'sft-general'): unknown field" in message
    assert "it belongs one level up, in stages[0] beside `data:`" in message
    assert "did you mean" not in message  # it was 'curation', by spelling


def test_stage_key_indented_under_train_is_sent_up(tmp_path):
    message = error_of(tmp_path, sft_recipe(train="{max_steps: 2, lora: {r: 16}}"))
    assert "r.yaml:9: stages[0].train.lora (stage 'sft-general'): is not a SFTConfig field" in message
    assert "it belongs one level up, in stages[0] beside `train:`" in message
    assert "did you mean" not in message


def test_key_of_a_source_on_data_is_sent_to_each_source(tmp_path):
    message = error_of(tmp_path, sft_recipe(data='thinking_mode: "off"'))
    assert "stages[0].data.thinking_mode (stage 'sft-general'): unknown field" in message
    assert "it belongs on each entry of `sources:` (stages[0].data.sources[i])" in message


def test_launch_key_at_the_top_is_sent_under_launch(tmp_path):
    message = error_of(tmp_path, sft_recipe(top="accelerate_config: zero3"))
    assert message.endswith("r.yaml:3: accelerate_config: unknown field (not allowed here; check the spelling); "
                            "it belongs under `launch:`")


def test_key_two_levels_too_deep_is_sent_up_two_levels(tmp_path):
    text = sft_recipe().replace("{name: rows, path: rows.jsonl}", "{name: rows, path: rows.jsonl, train: {}}")
    message = error_of(tmp_path, text)
    assert "stages[0].data.sources[0].train (stage 'sft-general'): unknown field" in message
    assert "it belongs two levels up, in stages[0] beside `data:`" in message


# --------------------------------------------------------------------------- 2: keys a --set made


@pytest.mark.parametrize("override", [
    "stages.sft-general.trian.learning_rate=2e-5",  # a middle key misspelt: the recipe has no `trian`
    "stages.sft-general.data.curation.dedupe.x=1",  # the --set makes two levels
])
def test_error_on_a_key_a_set_made_names_the_set_not_the_file(tmp_path, override):
    message = error_of(tmp_path, sft_recipe(), (override,))
    assert message.startswith(f"--set {override}: stages[0]."), message
    assert "r.yaml" not in message


def test_error_under_a_key_the_file_wrote_still_names_the_set(tmp_path):
    override = "stages.sft-general.train.max_stepz=3"
    message = error_of(tmp_path, sft_recipe(), (override,))
    assert message.startswith(f"--set {override}: stages[0].train.max_stepz"), message


# --------------------------------------------------------------------------- 3: a field of several types


@pytest.mark.parametrize(("written", "got"), [("5%", "'5%'"), ("[1]", "[1]"), ("{a: 1}", "{'a': 1}")])
def test_value_no_member_of_a_union_takes_is_one_message_without_member_names(tmp_path, written, got):
    message = error_of(tmp_path, sft_recipe(data=f"heldout: {written}"))
    assert message == (f"{tmp_path / 'r.yaml'}:9: stages[0].data.heldout (stage 'sft-general'): "
                       f"expected a number or a whole number, got {got}")


# --------------------------------------------------------------------------- 4: the cause, not its consequence


def test_misspelt_required_top_key_is_one_message_on_its_line(tmp_path):
    text = sft_recipe().replace("base_model:", "base-model:")
    message = error_of(tmp_path, text)
    assert message == (f"{tmp_path / 'r.yaml'}:2: base-model: unknown field (not allowed here; check the spelling); "
                       "did you mean 'base_model'?")


def test_misspelt_kind_names_the_misspelt_key(tmp_path):
    text = sft_recipe().replace("kind: sft", "kidn: sft")
    message = error_of(tmp_path, text)
    assert message == (f"{tmp_path / 'r.yaml'}:5: stages[0].kidn (stage 'sft-general'): unknown field (not allowed "
                       "here; check the spelling); did you mean 'kind'?")


def test_missing_field_with_no_misspelt_key_is_still_required(tmp_path):
    text = sft_recipe().replace('base_model: "tempa:tiny"', 'description: "x"')
    assert error_of(tmp_path, text) == f"{tmp_path / 'r.yaml'}: base_model: field required"


# --------------------------------------------------------------------------- 5: the closest name


def test_from_naming_no_earlier_stage_suggests_the_closest(tmp_path):
    text = sft_recipe() + """
      - name: second
        kind: sft
        from: sft-genral
        data:
          sources:
            - {name: rows, path: rows.jsonl}
    """
    message = error_of(tmp_path, text)
    assert "stages[1].from (stage 'second'): 'sft-genral' is not an earlier stage (earlier stages: sft-general); " \
           "did you mean 'sft-general'?" in message


def test_unknown_recipe_name_suggests_the_closest_shipped_recipe(tmp_path, monkeypatch):
    from tempa.recipes.loader import find_recipe

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as caught:
        find_recipe("dmeo")
    assert str(caught.value).startswith("dmeo: recipe file not found (shipped recipes: demo, ")
    assert str(caught.value).endswith("; did you mean 'demo'?")


def test_refused_loss_type_names_its_key_and_the_closest_loss(tmp_path):
    text = sft_recipe() + """
      - name: align
        kind: preference
        prompts: {path: rows.jsonl}
        rewards: [{type: format}]
        train: {loss_type: apo-zero}
    """
    message = error_of(tmp_path, text)
    assert f"{tmp_path / 'r.yaml'}:14: stages[1].train.loss_type (stage 'align'): 'apo-zero' is not a loss" in message
    assert message.endswith("; did you mean 'apo_zero'?")


# --------------------------------------------------------------------------- 6: the editor's schema and the loader


def test_json_schema_takes_the_booleans_the_loader_reads_as_on_off(tmp_path):
    import jsonschema

    from tempa.recipes import reference
    from tempa.recipes.loader import shipped_recipe_dir
    from tempa.recipes.yaml_loader import parse_yaml, read_text

    schema = reference.json_schema()
    # the demo's quoted modes written bare, as the README allows: YAML 1.1 (PyYAML, many editors) reads booleans
    text = read_text(shipped_recipe_dir() / "demo.yaml").replace('"off"', "off").replace('"on"', "on")
    demo = parse_yaml("thinking_default: Off\n" + text)
    assert demo["thinking_default"] is False and demo["stages"][0]["data"]["sources"][0]["thinking_mode"] is False
    jsonschema.validate(demo, schema)
    # ... and the loader reads them as the modes
    (tmp_path / "rows.jsonl").write_text(ROWS)
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(sft_recipe(top="thinking_default: yes")).replace(
        "path: rows.jsonl}", "path: rows.jsonl, thinking_mode: Off}"))
    loaded = load_recipe(path)
    assert loaded.recipe.thinking_default == "on" and loaded.stages[0].data.sources[0].thinking_mode == "off"
    jsonschema.validate(parse_yaml(path.read_text()), schema)


def test_every_on_off_field_of_the_json_schema_takes_a_boolean():
    from tempa.recipes import reference

    found: list[bool] = []

    def walk(node: object, alternatives: list) -> None:
        if isinstance(node, dict):
            if node.get("enum") in (["on", "off"], ["on", "off", "mixed"]):
                found.append(any(other.get("type") == "boolean" for other in alternatives))
            for key, value in node.items():
                walk(value, value if key == "anyOf" else [])
        elif isinstance(node, list):
            for item in node:
                walk(item, alternatives)

    walk(reference.json_schema(), [])
    assert found and all(found), found


@pytest.mark.parametrize(("key", "hint"), [
    ("launch: {accelerate_config: zero3}", "it belongs at the top of the recipe, not inside a stage"),
    ("num_processes: 2", "it belongs under the recipe's `launch:` (every stage trains with it)"),
])
def test_a_recipe_key_inside_a_stage_is_sent_to_the_top(tmp_path, key, hint):
    """Stages are validated on their own: a recipe's key written in one got no hint (review of the hints above)."""
    text = sft_recipe().replace("        kind: sft\n", f"        kind: sft\n        {key}\n")
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'r.yaml'}:6: stages[0].{key.split(':')[0]} (stage 'sft-general'): unknown")
    assert message.endswith(hint)
