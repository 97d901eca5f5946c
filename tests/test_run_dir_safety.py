"""tempa deletes and replaces only inside the run directory and the cache, whatever a name or path says.

Names are checked when the recipe loads (tests/bad_inputs.py: `../../escape`, `tokenizer`, ...);
these tests hand the delete helpers crafted paths outside directly, as a bug would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe
from tempa.recipes.rundir import clear_stage, sweep_trash
from tempa.sft.checkpoints import remove_incomplete_checkpoints
from tempa.sft.files import UnsafePathError, remove_tree, staging_dir


@pytest.fixture()
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory and, beside it, a user's folder that must survive everything."""
    run_dir = tmp_path / "run"
    (run_dir / "sft").mkdir(parents=True)
    outside = tmp_path / "precious"
    (outside / "checkpoint-3").mkdir(parents=True)
    (outside / "notes.txt").write_text("keep me")
    return run_dir, outside


def untouched(outside: Path) -> bool:
    return (outside / "notes.txt").read_text() == "keep me" and (outside / "checkpoint-3").is_dir()


def test_every_delete_helper_refuses_a_path_outside_its_roots(layout) -> None:
    run_dir, outside = layout
    escape = run_dir / "sft" / ".." / ".." / outside.name  # what `../../precious` as a stage name would give
    with pytest.raises(UnsafePathError, match="refusing to delete"):
        remove_tree(escape, [run_dir])
    with pytest.raises(UnsafePathError):
        clear_stage(escape, run_dir)
    with pytest.raises(UnsafePathError, match="refusing to replace"), staging_dir(escape, inside=[run_dir]) as tmp:
        (tmp / "x").write_text("new")
    with pytest.raises(UnsafePathError):
        remove_incomplete_checkpoints(outside, [run_dir])
    with pytest.raises(UnsafePathError):
        remove_tree(run_dir, [run_dir])  # the root itself is not "inside"
    assert untouched(outside)
    assert not any(p.name.startswith(".") for p in outside.parent.iterdir())  # no staging folder left outside


def test_a_link_inside_the_run_dir_is_removed_as_a_link(layout) -> None:
    run_dir, outside = layout
    (run_dir / "final").symlink_to(outside)
    (run_dir / ".trash-old").symlink_to(outside)
    remove_tree(run_dir / "final", [run_dir])
    sweep_trash(run_dir)
    assert untouched(outside) and not (run_dir / "final").is_symlink() and not (run_dir / ".trash-old").is_symlink()
    (run_dir / "sft" / "logs").mkdir()
    clear_stage(run_dir / "sft", run_dir)  # and a real stage folder goes, with nothing left behind
    assert sorted(p.name for p in run_dir.iterdir()) == []


def test_a_recipe_naming_a_stage_after_a_path_outside_loads_nothing(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: t\nbase_model: tempa:tiny\nstages:\n"
        "  - {name: ../../escape, kind: sft, data: {sources: [{name: r, path: rows.jsonl}]}}\n"
    )
    with pytest.raises(RecipeError, match=r"r\.yaml:4: stages\[0\]\.name .*not a safe name"):
        load_recipe(recipe)


def test_template_bake_overwrite_replaces_only_an_earlier_bake(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    from tempa.chat_templates import bake_tokenizer

    mistyped = tmp_path / "my-project"
    mistyped.mkdir()
    (mistyped / "train.py").write_text("print('years of work')")
    with pytest.raises(FileExistsError, match="holds no tokenizer"):
        bake_tokenizer(tiny_tokenizer_dir, "llama3_thinking", mistyped, overwrite=True)
    assert (mistyped / "train.py").read_text() == "print('years of work')"
    out = bake_tokenizer(tiny_tokenizer_dir, "llama3_thinking", tmp_path / "baked")
    assert bake_tokenizer(tiny_tokenizer_dir, "llama3_thinking", out, overwrite=True) == out  # an earlier bake: fine


def test_a_kill_while_the_old_final_folder_is_deleted_leaves_a_whole_final_folder(tmp_path, monkeypatch) -> None:
    """staging_dir deleted the old folder in place before renaming the new one in: a kill mid-delete left a final/
    with some of the old files, which push and export read as the model."""
    import shutil

    import tempa.sft.files as files

    final = tmp_path / "bake" / "final"
    final.mkdir(parents=True)
    old = {f"model-{i}.safetensors": f"old {i}" for i in range(4)}
    for name, text in old.items():
        (final / name).write_text(text)
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        entries = sorted(Path(path).iterdir()) if Path(path).is_dir() else []
        if entries and entries[0].read_text() == "old 0":  # the old model's folder: one file gone, then the kill
            entries[0].unlink()
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(files.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt), staging_dir(final, inside=[tmp_path]) as tmp:
        for i in range(4):
            (tmp / f"model-{i}.safetensors").write_text(f"new {i}")
    held = {p.name: p.read_text() for p in final.iterdir()}
    assert held in (old, {name: text.replace("old", "new") for name, text in old.items()})
