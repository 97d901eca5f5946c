"""Recipe errors that named the file and field but no line: each now names the line of the field it is about."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe, recipe_name

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    (folder / "rows.jsonl").write_text(json.dumps(ROW) + "\n", encoding="utf-8")
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


STAGES = """\
stages:
  - name: sft
    kind: sft
    data: {sources: [{name: rows, path: rows.jsonl}]}
"""


def test_stock_preamble_on_a_template_without_one_names_its_line_and_what_to_do(tmp_path):
    path = write(tmp_path, 'name: t\nbase_model: "tempa:tiny"\nchat_template: chatml_thinking\nstock_preamble: true\n'
                 + STAGES)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == (
        f"{path}:4: stock_preamble: chat template chatml_thinking has no stock preamble to switch on (no "
        "'{%- set default_stock_preamble = ... %}' line), so stock_preamble: true cannot be baked into it: remove "
        "stock_preamble, or use a chat template with that line (llama3_thinking)")


def test_thinking_default_on_a_template_without_its_line_names_its_line(tmp_path):
    (tmp_path / "plain.jinja").write_text("{{ messages[0].content }}<|im_end|>", encoding="utf-8")
    path = write(tmp_path, 'name: t\nbase_model: "tempa:tiny"\nchat_template: plain.jinja\nseed: 1\n'
                 'thinking_default: "off"\n' + STAGES)
    with pytest.raises(RecipeError, match=r"recipe\.yaml:5: thinking_default: chat template .*plain\.jinja has no "
                                          r"default thinking mode to set .*thinking_default: off cannot be baked"):
        load_recipe(path)
    # the built-in defaults need no line
    assert load_recipe(write(tmp_path, 'name: t\nbase_model: "tempa:tiny"\nchat_template: plain.jinja\n' + STAGES))


def test_an_extends_cycle_names_the_line_that_closes_it(tmp_path):
    write(tmp_path, "name: a\nseed: 1\nextends: b.yaml\n", "a.yaml")
    path = write(tmp_path, "name: b\nextends: a.yaml\n", "b.yaml")
    with pytest.raises(RecipeError, match=r"a\.yaml:3: extends: cycle \(.*b\.yaml -> .*a\.yaml -> .*b\.yaml\)"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"a\.yaml:3: extends: cycle"):
        recipe_name(path)


def test_a_profile_that_is_no_mapping_names_its_line(tmp_path):
    path = write(tmp_path, 'name: t\nbase_model: "tempa:tiny"\nprofiles:\n  tiny: 3\n' + STAGES)
    with pytest.raises(RecipeError, match=r"recipe\.yaml:4: profiles\.tiny: expected a mapping of recipe fields"):
        load_recipe(path, profile="tiny")


def test_a_name_that_is_no_text_names_its_line(tmp_path):
    path = write(tmp_path, 'seed: 1\nname: [t]\nbase_model: "tempa:tiny"\n' + STAGES)
    with pytest.raises(RecipeError, match=r"recipe\.yaml:2: name: expected the recipe's name"):
        recipe_name(path)
