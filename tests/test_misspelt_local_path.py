"""A relative path whose name is a few letters from a folder beside the recipe (`models/tinyy` where `models/tiny`
is) still reads as a hub id, which is what `org/name` spells, but `tempa plan` and the run's start say so: it used
to pass in silence and fail at run time with "the Hugging Face Hub cannot be reached" (new-user trial). An
organisation's folder beside the recipe (`Qwen/`) does not stop a hub id of that organisation from loading."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from tempa.recipes.cli import main
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


def test_a_misspelt_model_folder_is_named_with_the_folder_it_meant(layout, capsys):
    recipe = write_recipe(layout, "models/tinyy", "data/ja_reasonin")
    loaded = load_recipe(recipe)
    assert loaded.recipe.base_model == "models/tinyy"  # as the hub id it spells
    assert loaded.path_warnings == [
        f"'models/tinyy' is read as a hub id, but {layout / 'models'} beside the recipe holds 'tiny': write "
        "'./models/tiny' if you meant that folder",
        f"'data/ja_reasonin' is read as a hub id, but {layout / 'data'} beside the recipe holds 'ja_reasoning': "
        "write './data/ja_reasoning' if you meant that folder",
    ]
    main(["plan", str(recipe), "--run-dir", str(layout / "run")])
    assert "'./models/tiny' if you meant that folder" in " ".join(capsys.readouterr().out.split())


def test_the_right_folders_and_an_organisations_hub_id_load_without_a_warning(layout):
    loaded = load_recipe(write_recipe(layout, "models/tiny", "data/ja_reasoning"))
    assert loaded.recipe.base_model == str(layout / "models" / "tiny") and loaded.path_warnings == []
    (layout / "meta-llama" / "Llama-3.2-1B").mkdir(parents=True)  # one model of the organisation downloaded
    loaded = load_recipe(write_recipe(layout, "meta-llama/Llama-3.1-70B-Instruct", "data/ja_reasoning"))
    assert loaded.recipe.base_model == "meta-llama/Llama-3.1-70B-Instruct" and loaded.path_warnings == []


@pytest.mark.parametrize(("downloaded", "hub_id"), [
    ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct"),
    ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B"),
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-72B-Instruct"),
    ("google-bert/bert-base-cased", "google-bert/bert-base-uncased"),
])
def test_a_hub_id_near_a_downloaded_sibling_is_not_called_a_misspelt_folder(layout, downloaded, hub_id):
    """A closeness ratio warned on these real hub ids ("write './meta-llama/Llama-3.1-8B' if you meant that
    folder"), and no spelling of the id could silence it: sizes and versions differ by digits, variants by more
    than one slip."""
    (layout / downloaded).mkdir(parents=True)
    loaded = load_recipe(write_recipe(layout, hub_id, "data/ja_reasoning"))
    assert loaded.recipe.base_model == hub_id and loaded.path_warnings == []


@pytest.mark.parametrize("typed", ["models/tiyn", "models/tny", "models/tinu", "models/Tiny"])
def test_one_slip_from_a_folder_is_named(layout, typed):
    warnings = load_recipe(write_recipe(layout, typed, "data/ja_reasoning")).path_warnings
    assert len(warnings) == 1 and "write './models/tiny' if you meant that folder" in warnings[0]


def test_a_missing_folder_among_the_data_files_beside_the_recipe_is_warned(layout, capsys):
    """`path: data/chats` (the README's own example name), with data/ beside the recipe holding the data: `tempa plan`
    said nothing and the run failed when that stage loaded it as a hub dataset ("Couldn't reach 'data/chats' on the
    Hub"), after the stages before it trained. A hub id under an organisation's model folder stays silent."""
    (layout / "data" / "ja_chats.jsonl").write_text((layout / "data" / "ja_reasoning" / "part-0.jsonl").read_text())
    recipe = write_recipe(layout, "models/tiny", "data/chats")
    assert load_recipe(recipe).path_warnings == [
        f"'data/chats' is read as a hub dataset id, but {layout / 'data'} beside the recipe is a folder of data files "
        "with no 'chats' in it: write './data/chats' if you meant a local path"]
    main(["plan", str(recipe), "--run-dir", str(layout / "run")])
    assert "write './data/chats' if you meant a local path" in " ".join(capsys.readouterr().out.split())
    (layout / "HuggingFaceH4").mkdir()  # an organisation's folder, without data files in it: no slip
    assert load_recipe(write_recipe(layout, "models/tiny", "HuggingFaceH4/ultrachat_200k")).path_warnings == []


@pytest.mark.parametrize(("typed", "meant"), [("dta/ja_reasoning", "data/ja_reasoning"),
                                              ("modles/tiny", "models/tiny"), ("Data/ja_reasoning", "data/ja_reasoning")])
def test_a_slip_in_the_first_folder_is_named_with_the_path_it_meant(layout, typed, meant):
    """`dta/chats` beside data/chats passed `tempa plan` in silence and failed 47 s into the run as a hub dataset
    that could not be reached: only a slip in the last name was warned of."""
    warnings = load_recipe(write_recipe(layout, typed, "data/ja_reasoning")).path_warnings
    assert warnings == [f"'{typed}' is read as a hub id, but {layout / meant} is beside the recipe: "
                        f"write './{meant}' if you meant it"]


def test_a_hub_organisation_a_slip_from_a_folder_beside_the_recipe_is_no_slip(layout):
    # `dat/...` names nothing under data/: a hub id of an organisation called `dat` loads as one, in silence
    loaded = load_recipe(write_recipe(layout, "models/tiny", "dat/some-dataset"))
    assert loaded.path_warnings == []
