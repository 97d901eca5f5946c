"""A relative path whose first folder is beside the recipe is local: misspelt, it is refused when the recipe
loads, not read as a hub id that fails at run time with "the Hugging Face Hub cannot be reached" (new-user trial)."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe


def write_recipe(tmp_path: Path, base_model: str, source: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: t
        base_model: {base_model}
        stages:
          - name: sft
            kind: sft
            data: {{sources: [{{name: rows, path: {source}}}]}}
        """))
    return path


@pytest.fixture
def layout(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "tiny")
    (tmp_path / "data" / "ja_reasoning").mkdir(parents=True)
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    (tmp_path / "data" / "ja_reasoning" / "part-0.jsonl").write_text(json.dumps(row) + "\n")
    return tmp_path


def test_a_misspelt_model_folder_is_refused_at_load_with_the_folder_it_meant(layout):
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(layout, "models/tinyy", "data/ja_reasoning"))
    message = str(info.value)
    assert "base_model" in message and f"local path does not exist: {layout / 'models' / 'tinyy'}" in message
    assert "did you mean 'tiny'?" in message, message


def test_a_misspelt_data_folder_is_refused_at_load(layout):
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(layout, "models/tiny", "data/ja_reasonin"))
    assert "path" in str(info.value) and "did you mean 'ja_reasoning'?" in str(info.value)


def test_the_right_folders_load_and_a_hub_id_without_such_a_folder_stays_a_hub_id(layout):
    loaded = load_recipe(write_recipe(layout, "models/tiny", "data/ja_reasoning"))
    assert loaded.recipe.base_model == str(layout / "models" / "tiny")
    loaded = load_recipe(write_recipe(layout, "meta-llama/Llama-3.1-8B", "data/ja_reasoning"))
    assert loaded.recipe.base_model == "meta-llama/Llama-3.1-8B"
