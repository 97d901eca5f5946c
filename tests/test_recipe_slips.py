"""Slips a new user makes in a recipe (Swallow team's trial, Tokyo), each refused or named when the recipe loads:
an extension forgotten (`path: data/ja_chats` beside data/ja_chats.jsonl passed as a hub id and failed in the stage
as a hub that cannot be reached), a local path one letter off (named without the file it meant), full-width
characters from a Japanese IME (an ideographic space as indentation, a full-width colon), and a recipe's name given
to the commands that read a run."""

from __future__ import annotations

import json
import re
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


def test_a_slip_under_a_linked_data_folder_is_named_as_the_recipe_writes_it(tmp_path, capsys):
    """`data` a link to a shared folder: the suggestion was the shared folder's real path from the recipe's
    ('../../shared/data/ja_chats.jsonl'), not the './data/ja_chats.jsonl' the user writes."""
    (tmp_path / "shared").mkdir()
    _layout(tmp_path / "shared")
    folder = tmp_path / "project" / "recipes"
    folder.mkdir(parents=True)
    (folder / "data").symlink_to(tmp_path / "shared" / "data")
    recipe = _recipe(folder, source="data/ja_chats")
    assert main(["plan", str(recipe), "--run-dir", str(folder / "run")]) == 1
    assert capsys.readouterr().err.strip().endswith("did you mean './data/ja_chats.jsonl'?")


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


# --- full-width characters from an input method ---------------------------------------------------------------------

SWALLOW = """\
name: swallow-ja
base_model: tempa:tiny
description: "日本語：Swallow の継続学習　テスト"
launch: {use_cpu: true}
seed: 42
stages:
  - name: sft
    kind: sft
    data: {sources: [{name: chats, path: ./data/ja_chats.jsonl}]}
    # 学習率：小さめ（日本語のコメント、全角コロン）
    train:
      learning_rate: 1.0e-5
"""


def _swallow(tmp_path: Path, line: int, written: str) -> Path:
    lines = SWALLOW.splitlines()
    lines[line - 1] = written
    path = _layout(tmp_path) / "m.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_recipe_loads_with_full_width_text_in_comments_and_values(tmp_path):
    """The slips below differ from this recipe by one line; its Japanese comment and description are text."""
    loaded = load_recipe(_swallow(tmp_path, 5, "seed: 42"))
    assert loaded.recipe.seed == 42 and loaded.stages[0].train == {"learning_rate": 1e-5}


@pytest.mark.parametrize(("line", "written", "expect"), [
    (5, "seed： 42", r"m\.yaml:5: invalid YAML: line 5 holds U\+FF1A FULLWIDTH COLON \('：'\); write the ASCII ':' "
                     r"\(YAML stopped at line 6: could not find expected ':'\)$"),
    (6, "stages：", r"m\.yaml:6: invalid YAML: line 6 holds U\+FF1A FULLWIDTH COLON \('：'\); write the ASCII ':' "),
    (7, "  － name: sft", r"m\.yaml:7: invalid YAML: line 7 holds U\+FF0D FULLWIDTH HYPHEN-MINUS \('－'\); "
                         r"write the ASCII '-' \(YAML stopped at line 8: "),
    (9, "    data: ｛sources: [{name: chats, path: ./data/ja_chats.jsonl}]}",
     r"m\.yaml:9: invalid YAML: line 9 holds U\+FF5B FULLWIDTH LEFT CURLY BRACKET \('｛'\); write the ASCII '\{' "),
    (8, "　　　　kind: sft", r"m\.yaml:8: invalid YAML: line 8 is indented with U\+3000 IDEOGRAPHIC SPACE; indent with "
                            r"ASCII spaces \(YAML stopped at line 9: "),
    (11, "　　train:", r"m\.yaml:11: 　　train: unknown field; line 11 is indented with U\+3000 IDEOGRAPHIC SPACE; "
                      r"indent with ASCII spaces$"),
    (12, "    　　learning_rate: 1.0e-5", r"m\.yaml:12: stages\[0\]\.　　learning_rate \(stage 'sft'\): unknown field; "
                                       r"line 12 is indented with U\+3000 IDEOGRAPHIC SPACE; indent with ASCII spaces"),
    (12, "      learning_rate:　1.0e-5", r"m\.yaml:11: stages\[0\]\.train \(stage 'sft'\): Input should be a valid "
                                       r"dictionary, got .*; the value holds U\+3000 IDEOGRAPHIC SPACE; write an ASCII "
                                       r"space$"),
    (5, "seed: ４２", r"m\.yaml:5: seed: .*got '４２'; the value holds U\+FF14 FULLWIDTH DIGIT FOUR \('４'\); "
                    r"write the ASCII '4'$"),
], ids=["colon-after-a-key", "colon-after-stages", "dash", "brace", "indent-in-a-stage", "indent-read-as-a-key",
        "indent-in-a-key-of-the-stage", "space-after-a-colon", "digits"])
def test_a_full_width_slip_is_named_on_its_line_with_the_fix(tmp_path, line, written, expect):
    with pytest.raises(RecipeError, match=expect):
        load_recipe(_swallow(tmp_path, line, written))


# --- a recipe given to the commands that read a run -----------------------------------------------------------------

def _ran(folder: Path, name: str, recipe: str | None = None, profile: str = "") -> Path:
    """A run of recipe ``recipe`` (default: ``name``) with --profile ``profile`` in runs/``name`` under ``folder``: its
    sft stage failed."""
    run_dir = folder / "runs" / name
    (run_dir / "sft").mkdir(parents=True)
    (run_dir / "recipe.resolved.yaml").write_text(f"name: {recipe or name}\nbase_model: tempa:tiny\n"
                                                  "stages: [{name: sft, kind: sft}]\n", encoding="utf-8")
    (run_dir / "sft" / "manifest.json").write_text(json.dumps({
        "name": "sft", "kind": "sft", "status": "failed", "error": "boom", "fingerprint": "f", "started_at": 0,
        "profile": profile}), encoding="utf-8")
    return run_dir


@pytest.mark.parametrize("given", ["m.yaml", "{folder}/m.yaml", "demo"])
def test_status_takes_the_recipe_as_run_does(tmp_path, monkeypatch, capsys, given):
    folder = _layout(tmp_path)
    _recipe(folder)
    monkeypatch.chdir(folder)
    name = "demo" if given == "demo" else "swallow-ja"  # the shipped demo recipe's name
    _ran(folder, name)
    assert main(["status", given.format(folder=folder), "--json"]) == 0
    assert [(row["name"], row["state"], row["error"]) for row in json.loads(capsys.readouterr().out)] == [
        ("sft", "failed", "boom")]


def test_push_and_export_take_the_recipe_as_run_does(tmp_path, monkeypatch, capsys):
    folder = _layout(tmp_path)
    _recipe(folder)
    monkeypatch.chdir(folder)
    run_dir = _ran(folder, "swallow-ja")
    for argv in (["push", "m.yaml", "--repo", "swallow/ja", "--dry-run"], ["export", "gguf", "m.yaml"],
                 ["export", "gguf", str(run_dir)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "runs/swallow-ja/final" in err, (argv, err)  # the run's final model, not yet made


@pytest.mark.parametrize("given", ["m.yaml", "runs/swallow-ja", "runs/swallow-ja/final"])
def test_export_of_a_run_whose_stages_are_not_all_current_warns_first(tmp_path, monkeypatch, capsys, given):
    """`tempa export gguf` of a run with stale stages exported the old final model without a word (Swallow trial:
    after `--only eval`, merge and bake stale); `tempa push` refuses such a run."""
    folder = _layout(tmp_path)
    _recipe(folder)
    monkeypatch.chdir(folder)
    run_dir = _ran(folder, "swallow-ja")
    (run_dir / "final").mkdir()
    assert main(["export", "gguf", given]) == 1  # the final folder holds no model here: the export's own error
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert warning == ("tempa: warning: runs/swallow-ja: not every stage is complete and current: sft (failed); this "
                       "exports the final model an earlier run left (run `tempa run` first to bring it up to date)")
    assert error.startswith("tempa: error: ")
    manifest = json.loads((run_dir / "sft" / "manifest.json").read_text())
    (run_dir / "sft" / "manifest.json").write_text(json.dumps({**manifest, "status": "done"}))
    (run_dir / "sft" / "DONE").write_text(json.dumps({"fingerprint": manifest["fingerprint"]}))
    assert main(["export", "gguf", given]) == 1
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("command", [["status"], ["report"], ["push", "--repo", "swallow/ja"]])
def test_a_run_that_is_not_there_says_what_to_give(tmp_path, monkeypatch, capsys, command):
    folder = _layout(tmp_path)
    _recipe(folder)
    monkeypatch.chdir(folder)
    assert main([command[0], "m.yaml", *command[1:]]) == 1
    assert capsys.readouterr().err.strip() == (
        f"tempa: error: m.yaml: the recipe's default run directory runs/swallow-ja does not exist under {folder}; "
        "give the --run-dir it ran with, or run it first (tempa run m.yaml)")
    assert main([command[0], "runs/ja", *command[1:]]) == 1
    assert capsys.readouterr().err.strip() == (
        "tempa: error: runs/ja: no such run directory, and no recipe of that name; give the folder `tempa run` wrote "
        "(runs/<recipe name>, or runs/<recipe name>-<profile>, unless --run-dir) or the recipe it ran")


# --- a toy run and the full-scale one of the same recipe ------------------------------------------------------------

def _with_profiles(folder: Path, *profiles: str) -> Path:
    recipe = _recipe(folder)
    overlays = "".join(f"  {name}: {{seed: 7}}\n" for name in profiles)
    recipe.write_text(recipe.read_text(encoding="utf-8") + f"profiles:\n{overlays}", encoding="utf-8")
    return recipe


def test_a_run_with_a_profile_has_a_default_run_directory_of_its_own(tmp_path, monkeypatch):
    import argparse

    from tempa.recipes.cli import _run_dir

    folder = _layout(tmp_path)
    recipe = _with_profiles(folder, "tiny", "big one")
    monkeypatch.chdir(folder)
    none = argparse.Namespace(run_dir=None)
    assert _run_dir(none, load_recipe(recipe)) == Path("runs/swallow-ja")
    assert _run_dir(none, load_recipe(recipe, profile="tiny")) == Path("runs/swallow-ja-tiny")
    assert _run_dir(argparse.Namespace(run_dir=Path("x")), load_recipe(recipe, profile="tiny")) == Path("x")
    with pytest.raises(RecipeError, match=r"^--profile big one: the default run directory 'swallow-ja-big one' is not "
                                          r"a safe name: .*; give --run-dir$"):
        _run_dir(none, load_recipe(recipe, profile="big one"))


@pytest.mark.parametrize("ran_with", ["tiny", ""])
def test_a_profiles_run_started_in_the_plain_folder_goes_on_there(tmp_path, monkeypatch, capsys, ran_with):
    """A run with --profile started before such runs had a folder of their own lives in runs/<name>: the same
    command went to a new, empty runs/<name>-<profile> and trained every stage again (a review of the change)."""
    import argparse

    from tempa.recipes.cli import _run_dir

    folder = _layout(tmp_path)
    recipe = _with_profiles(folder, "tiny")
    monkeypatch.chdir(folder)
    manifest = _ran(folder, "swallow-ja") / "sft" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "profile": ran_with}))
    got = _run_dir(argparse.Namespace(run_dir=None), load_recipe(recipe, profile="tiny"))
    if ran_with == "tiny":
        assert got == Path("runs/swallow-ja")
        assert "runs/swallow-ja holds this recipe's --profile tiny run" in capsys.readouterr().err
    else:  # the plain folder is the full-scale run's
        assert got == Path("runs/swallow-ja-tiny")


def test_the_commands_that_read_a_run_find_the_profiles_run_and_ask_when_both_are_there(tmp_path, monkeypatch, capsys):
    folder = _layout(tmp_path)
    _with_profiles(folder, "tiny")
    monkeypatch.chdir(folder)
    assert main(["status", "m.yaml"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"tempa: error: m.yaml: the recipe's default run directory runs/swallow-ja does not exist under {folder}, "
        "nor do its --profile ones (runs/swallow-ja-tiny); give the --run-dir it ran with, or run it first "
        "(tempa run m.yaml)")
    _ran(folder, "swallow-ja-tiny", recipe="swallow-ja", profile="tiny")
    assert main(["status", "m.yaml", "--json"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == ["sft"]
    _ran(folder, "swallow-ja")
    assert main(["status", "m.yaml", "--json"]) == 1
    assert capsys.readouterr().err.strip() == (
        "tempa: error: m.yaml: the recipe has runs in runs/swallow-ja, runs/swallow-ja-tiny (one per --profile it ran "
        "with); give the folder of the one you mean")


def test_a_recipe_whose_default_folder_holds_another_recipes_run_is_not_run_or_read_there(tmp_path, monkeypatch,
                                                                                         capsys):
    """Recipe "swallow-ja" with --profile tiny and a recipe named "swallow-ja-tiny" share runs/swallow-ja-tiny: the
    second re-ran (and cleared) the first's stages of the same name, and `tempa status` showed the other's run."""
    import argparse

    from tempa.recipes.cli import _run_dir

    folder = _layout(tmp_path)
    _with_profiles(folder, "tiny")
    other = folder / "other.yaml"
    other.write_text(_recipe(folder).read_text(encoding="utf-8").replace("name: swallow-ja\n", "name: swallow-ja-tiny\n"),
                     encoding="utf-8")
    _with_profiles(folder, "tiny")
    monkeypatch.chdir(folder)
    run_dir = _ran(folder, "swallow-ja-tiny", recipe="swallow-ja", profile="tiny")
    assert _run_dir(argparse.Namespace(run_dir=None), load_recipe("m.yaml", profile="tiny")) == Path("runs/swallow-ja-tiny")
    with pytest.raises(RecipeError, match=r"^runs/swallow-ja-tiny: the default run directory holds the run of recipe "
                                          r"'swallow-ja' --profile tiny, not of 'swallow-ja-tiny'; give --run-dir \(a "
                                          r"new folder, or that one to run this recipe there on purpose\)$"):
        _run_dir(argparse.Namespace(run_dir=None), load_recipe(other))
    # on purpose: a child recipe may go on in its parent's folder, whose finished stages it shares
    assert _run_dir(argparse.Namespace(run_dir=Path("runs/swallow-ja-tiny")), load_recipe(other)) == Path(
        "runs/swallow-ja-tiny")
    assert main(["status", "other.yaml", "--json"]) == 1
    assert capsys.readouterr().err.strip() == (
        "tempa: error: other.yaml: runs/swallow-ja-tiny holds the run of recipe 'swallow-ja' --profile tiny, not of "
        "'swallow-ja-tiny'; give the --run-dir this recipe ran with")
    assert main(["status", "m.yaml", "--json"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == ["sft"]
    # and the other way round: once recipe 'swallow-ja-tiny' ran there on purpose (the last to run writes the
    # folder's recipe.resolved.yaml), the folder is still 'swallow-ja' --profile tiny's own default one
    (run_dir / "recipe.resolved.yaml").write_text("name: swallow-ja-tiny\nbase_model: tempa:tiny\nstages: []\n",
                                                  encoding="utf-8")
    assert _run_dir(argparse.Namespace(run_dir=None), load_recipe("m.yaml", profile="tiny")) == Path("runs/swallow-ja-tiny")
    assert main(["status", "m.yaml", "--json"]) == 0


@pytest.mark.parametrize("where", ["profile", "extends"])
def test_a_misspelt_stage_name_in_an_overlay_is_named_with_the_stage_it_meant(tmp_path, where):
    """A profile (or a recipe extending another) changes a stage by its name; a slip in the name made a new stage,
    refused as "stages[1].kind: field required" on a line that has no kind to fix."""
    folder = _layout(tmp_path)
    recipe = _recipe(folder)
    if where == "profile":
        recipe.write_text(recipe.read_text(encoding="utf-8") + "profiles:\n  tiny:\n    stages:\n"
                          "      - name: sft\n        train: {max_steps: 2}\n"
                          "      - name: evalaute\n        suites: []\n", encoding="utf-8")
        line, field = 15, "profiles.tiny.stages[1].name"
    else:
        recipe = folder / "child.yaml"
        recipe.write_text("extends: m.yaml\nname: child\nstages:\n  - name: sft\n    train: {max_steps: 2}\n"
                          "  - name: evalaute\n    suites: []\n", encoding="utf-8")
        line, field = 6, "stages[1].name"
    with pytest.raises(RecipeError, match=rf"^{recipe}:{line}: {re.escape(field)}: no stage named 'evalaute' to change "
                                          r"\(stages: sft, evaluate; a new stage needs a kind\); did you mean "
                                          r"'evaluate'\?$"):
        load_recipe(recipe, profile="tiny" if where == "profile" else None)


def test_status_finds_a_childs_run_after_its_parent_renamed_the_stage_the_child_changes(tmp_path, monkeypatch, capsys):
    """`tempa status child.yaml` loaded the whole chain to learn the run's folder, and refused it for the overlay
    slip (the child changes a stage its parent no longer has): the run that exists could not be looked at."""
    folder = _layout(tmp_path)
    parent = _recipe(folder)
    child = folder / "child.yaml"
    child.write_text("extends: m.yaml\nname: child\nprofiles: {tiny: {seed: 3}}\nstages:\n  - name: sft\n"
                     "    train: {max_steps: 2}\n", encoding="utf-8")
    monkeypatch.chdir(folder)
    _ran(folder, "child")
    parent.write_text(parent.read_text(encoding="utf-8").replace("  - name: sft\n", "  - name: sft-ja\n"),
                      encoding="utf-8")
    with pytest.raises(RecipeError, match="no stage named 'sft' to change"):
        load_recipe(child)  # the recipe itself is refused, as it should be
    assert main(["status", "child.yaml", "--json"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == ["sft"]
    _ran(folder, "child-tiny", recipe="child")  # and its profile, from the child's own `profiles:`
    assert main(["status", "child.yaml"]) == 1
    assert "runs/child, runs/child-tiny" in capsys.readouterr().err


def test_the_light_read_of_a_recipe_chain_checks_extends_as_the_loader_does(tmp_path):
    """What status/report/push/export read of a recipe to find its run (its name and profiles) accepted an `extends:`
    cycle and a profile the child sets to null, which the full loader refuses and drops (a review's finding)."""
    from tempa.recipes.loader import recipe_name, recipe_profiles

    folder = _layout(tmp_path)
    _with_profiles(folder, "tiny", "big")
    child = folder / "child.yaml"
    child.write_text("extends: m.yaml\nname: child\nprofiles: {big: null, small: {seed: 1}}\n", encoding="utf-8")
    assert recipe_name(child) == "child"
    assert recipe_profiles(child) == ["tiny", "small"]
    load_recipe(child, profile="small")
    with pytest.raises(RecipeError, match="big"):  # the full loader has dropped it too
        load_recipe(child, profile="big")
    (folder / "a.yaml").write_text("extends: b.yaml\nname: a\n", encoding="utf-8")
    (folder / "b.yaml").write_text("extends: a.yaml\nname: b\n", encoding="utf-8")
    for read in (recipe_name, load_recipe):
        with pytest.raises(RecipeError, match=r"extends: cycle"):
            read(folder / "a.yaml")
    (folder / "c.yaml").write_text("extends: [m.yaml]\nname: c\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"c\.yaml:1: extends: expected a recipe path or name$"):
        recipe_name(folder / "c.yaml")


@pytest.mark.parametrize("given", ["runs/swallow-ja", "runs/swallow-ja/final"])
def test_export_of_a_run_whose_final_link_dangles_says_why(tmp_path, monkeypatch, capsys, given):
    """A `--from merge` re-run killed in bake left `final -> bake/final` pointing at nothing: export warned that it
    "exports the final model an earlier run left", then failed with "final: no such file or folder"."""
    folder = _layout(tmp_path)
    _recipe(folder)
    monkeypatch.chdir(folder)
    run_dir = _ran(folder, "swallow-ja")
    (run_dir / "final").symlink_to(Path("bake") / "final")
    assert main(["export", "gguf", given]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == ("tempa: error: runs/swallow-ja: the run has no final model now: runs/swallow-ja/final points at "
                    "bake/final, which a stopped re-run removed (sft (failed)); run `tempa run` to finish it")


def test_a_missing_data_file_is_never_offered_a_recipe_as_the_file_it_meant(tmp_path, capsys):
    """`path: ./nope.jsonl` beside the recipe r_nope.jsonl.yaml: "did you mean './r_nope.jsonl.yaml'?"."""
    (tmp_path / "r_nope.jsonl.yaml").write_text(textwrap.dedent("""
        name: t
        base_model: tempa:tiny
        stages:
          - {name: s, kind: sft, data: {sources: [{name: x, path: ./nope.jsonl}]}}
        """), encoding="utf-8")
    assert main(["plan", str(tmp_path / "r_nope.jsonl.yaml"), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"local path does not exist: {tmp_path / 'nope.jsonl'}, got './nope.jsonl'"), err
