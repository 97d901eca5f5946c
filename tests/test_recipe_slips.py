"""Slips a new user makes in a recipe (Swallow team's trial, Tokyo), each refused or named when the recipe loads:
an extension forgotten (`path: data/ja_chats` beside data/ja_chats.jsonl passed as a hub id and failed in the stage
as a hub that cannot be reached), a local path one letter off (named without the file it meant), full-width
characters from a Japanese IME (an ideographic space as indentation, a full-width colon), and a recipe's name given
to the commands that read a run."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tempa.recipes.cli import main
from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe

ROW = {"messages": [{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "こんにちは!"}]}


def _layout(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ja_chats.jsonl").write_text(json.dumps(ROW) + "\n", encoding="utf-8")
    return tmp_path


def _recipe(folder: Path, *, source: str = "./data/ja_chats.jsonl", suite: str = "./data/ja_chats.jsonl",
            base_model: str = "tempa:tiny") -> Path:
    path = folder / "m.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: swallow-ja
        base_model: {base_model}
        stages:
          - name: sft
            kind: sft
            data: {{sources: [{{name: chats, path: {source}}}]}}
          - name: evaluate
            kind: evaluate
            suites: [{{type: loss, name: heldout, data: {suite}}}]
        """), encoding="utf-8")
    return path


@pytest.mark.parametrize("field", ["source", "suite"])
@pytest.mark.parametrize("written", ["data/ja_chats", "data/ja_chats.json", "./data/ja_chat.jsonl",
                                     "./dta/ja_chats.jsonl", "data/ja_chat.jsonl"])
def test_a_data_path_slip_is_refused_at_plan_time_with_the_file_it_meant(tmp_path, capsys, field, written):
    folder = _layout(tmp_path)
    recipe = _recipe(folder, **{field: written})
    assert main(["plan", str(recipe), "--run-dir", str(folder / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "m.yaml:" in err, err
    assert err.endswith(f"local path does not exist: {folder / written.removeprefix('./')}, got '{written}'; "
                        "did you mean './data/ja_chats.jsonl'?"), err
    assert not (folder / "run").exists()


def test_a_misspelt_base_model_folder_names_the_folder_it_meant(tmp_path):
    (tmp_path / "models" / "swallow-8b").mkdir(parents=True)
    with pytest.raises(RecipeError, match=r"m\.yaml:2: base_model: local path does not exist: .*swallow-8c, got '\./models/swallow-8c'; "
                                          r"did you mean './models/swallow-8b'\?$"):
        load_recipe(_recipe(_layout(tmp_path), base_model="./models/swallow-8c"))


def test_an_absolute_path_slip_is_named_absolute(tmp_path):
    folder = _layout(tmp_path)
    with pytest.raises(RecipeError, match=rf"did you mean '{folder / 'data' / 'ja_chats.jsonl'}'\?$"):
        load_recipe(_recipe(folder, source=str(folder / "data" / "ja_chat.jsonl")))


def test_a_path_with_no_close_name_gets_no_guess(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(_recipe(_layout(tmp_path), source="./data/english_news.jsonl"))
    assert str(info.value).endswith(f"local path does not exist: {tmp_path / 'data' / 'english_news.jsonl'}, "
                                    "got './data/english_news.jsonl'")


def test_one_slip_and_an_extension_from_a_file_is_a_warning_naming_the_file(tmp_path):
    loaded = load_recipe(_recipe(_layout(tmp_path), source="data/ja_chat"))
    assert loaded.stages[0].data.sources[0].path == "data/ja_chat"  # the hub id it spells, as for folders
    assert loaded.path_warnings == [
        f"'data/ja_chat' is read as a hub id, but {tmp_path / 'data'} beside the recipe holds 'ja_chats.jsonl': "
        "write './data/ja_chats.jsonl' if you meant that file"]


def test_hub_ids_beside_files_of_other_names_and_a_bare_name_still_load(tmp_path):
    folder = _layout(tmp_path)
    (folder / "gsm8k.jsonl").write_text(json.dumps(ROW) + "\n", encoding="utf-8")
    (folder / "HuggingFaceH4").mkdir()
    (folder / "HuggingFaceH4" / "notes.txt").write_text("downloaded by hand\n", encoding="utf-8")
    for hub_id in ("HuggingFaceH4/ultrachat_200k", "gsm8k"):
        loaded = load_recipe(_recipe(folder, source=hub_id))
        assert loaded.stages[0].data.sources[0].path == hub_id and loaded.path_warnings == []
