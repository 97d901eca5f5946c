"""The bake's model card prints the recipe (its description, the whole resolved recipe), so what it prints is part of
the bake's fingerprint: a changed `description:`, or a setting no other stage's fingerprint holds, skipped every stage
and left the card of the earlier recipe in final/README.md while recipe.resolved.yaml said the new one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import plan_run, run_recipe

# mergekit imports numpy.core, which numpy 2 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")


def _recipe(folder: Path, description: str, base: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "rows.jsonl").write_text("{}\n")
    path = folder / "r.yaml"
    path.write_text(f"name: card\ndescription: {description}\nbase_model: {base}\n{extra}"
                    "stages:\n  - {name: bake, kind: bake, smoke_test: false, model_card: {extra: data/rows.jsonl}}\n")
    return path


def test_a_changed_description_bakes_the_card_again(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(_recipe(tmp_path / "a", "First words.", tiny_model_dir)), run_dir)
    assert "First words." in (run_dir / "final" / "README.md").read_text()
    manifest = json.loads((run_dir / "bake" / "manifest.json").read_text())
    assert manifest["software"]["tempa"] and "transformers" in manifest["software"]["packages"]  # a real stage's record

    changed = load_recipe(_recipe(tmp_path / "a", "Second words.", tiny_model_dir))
    [bake] = plan_run(changed, run_dir)
    assert (bake.action, bake.reason) == (
        "rerun", 'changed since it ran: the recipe it shows changed: description "First words." → "Second words."')
    summary = run_recipe(changed, run_dir)
    assert summary.ran == ["bake"]
    card = (run_dir / "final" / "README.md").read_text()
    assert "Second words." in card and "First words." not in card  # its header and its embedded recipe

    # the recipe folder moved: the card names its paths by name, so nothing is made again
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert [d.action for d in plan_run(load_recipe(tmp_path / "b" / "r.yaml"), run_dir)] == ["skip"]
    # the hardware a run used is not in the card: a run moved to other hardware bakes nothing again
    launch = "launch: {num_processes: 3}\n"
    assert [d.action for d in plan_run(load_recipe(_recipe(tmp_path / "b", "Second words.", tiny_model_dir, launch)),
                                       run_dir)] == ["skip"]


def test_a_bake_re_run_that_fails_keeps_the_last_good_final_model(tmp_path, tiny_model_dir, monkeypatch):
    """A full disk during a bake re-run removed bake/final before the new one was written (the operator trial: the
    run's final link pointed at nothing); the last good final stays until its replacement is in place."""
    import errno

    import tempa.merge.bake as bake

    run_dir = tmp_path / "run"
    run_recipe(load_recipe(_recipe(tmp_path / "a", "First words.", tiny_model_dir)), run_dir)
    final = run_dir / "bake" / "final"
    before = {path.name: path.read_bytes() for path in final.iterdir() if path.is_file()}

    def disk_full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bake, "copy_model_files", disk_full)
    with pytest.raises(Exception, match="No space left"):
        run_recipe(load_recipe(_recipe(tmp_path / "a", "Second words.", tiny_model_dir)), run_dir)
    assert {path.name: path.read_bytes() for path in final.iterdir() if path.is_file()} == before
    assert (run_dir / "final" / "README.md").is_file()  # the run's final link still leads to a model
    assert not (run_dir / "bake" / "DONE").exists()  # ... of a bake that reads as unfinished
    assert not [path for path in (run_dir / "bake").iterdir() if path.name.startswith(".final.partial")]

    monkeypatch.undo()
    assert run_recipe(load_recipe(_recipe(tmp_path / "a", "Second words.", tiny_model_dir)), run_dir).ran == ["bake"]
    assert "Second words." in (final / "README.md").read_text()
