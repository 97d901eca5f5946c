"""What a run records of itself and what `tempa run`, `plan` and `status` say of it: the stages an --only run never
ran, the input files a moved recipe folder reads, the software a stage ran under, and the trainer arguments a complete
stage trained with.

A small stage kind (`note`) stands in for a real one, added the way any kind is (one StageKind in a package's
STAGE_KINDS); a `trains` variant of it stands for a training kind, whose trainer arguments are tempa's defaults under
the recipe's `train:` block. Nothing here trains.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import Field, field_validator

import tempa.merge
import tempa.sft
from tempa.recipes.cli import main
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import plan_run, run_recipe
from tempa.sft.stage_api import Artifact, StageConfigBase, StageContext, StageKind, StageResult, resolve_path


class NoteConfig(StageConfigBase):
    kind: Literal["note"] = "note"
    value: int = 0
    inputs: list[str] = Field(default_factory=list)
    train: dict[str, Any] = Field(default_factory=dict)

    train_defaults: ClassVar[dict[str, Any]] = {"warmup_steps": 0.03, "learning_rate": 2e-5}

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: list[str], info) -> list[str]:
        return [resolve_path(path, info) for path in value]


def run_note(config: NoteConfig, ctx: StageContext) -> StageResult:
    model = ctx.stage_dir / "model"
    model.mkdir()
    return StageResult(model=model, metrics={"value": config.value})


NOTE = StageKind("note", NoteConfig, run_note, "test stage", produces=frozenset({Artifact.MODEL}))


@pytest.fixture(autouse=True)
def note_kind(monkeypatch):
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS, NOTE))
    # No automatic bake: these recipes have no real model to bake.
    monkeypatch.setattr(tempa.merge, "STAGE_KINDS", tuple(k for k in tempa.merge.STAGE_KINDS if k.kind != "bake"))


def _recipe(folder: Path, stages: str) -> Path:
    path = folder / "r.yaml"
    path.write_text("name: t\nbase_model: tempa:tiny\nstages:\n" + textwrap.indent(textwrap.dedent(stages), "  "))
    return path


THREE = """\
    - {name: a, kind: note, value: 1}
    - {name: b, kind: note, value: 2}
    - {name: c, kind: note, value: 3, from: a}
    """


def test_an_only_run_does_not_call_the_stages_it_never_ran_skipped(tmp_path, capsys):
    """`tempa run --only a` on a new folder closed with `skipped: b, c`, as if b and c were complete (`tempa status`
    said pending)."""
    recipe, run_dir = _recipe(tmp_path, THREE), tmp_path / "run"
    summary = run_recipe(load_recipe(recipe), run_dir, only="a")
    assert summary.ran == ["a"] and summary.skipped == [] and summary.not_run == ["b", "c"]
    # a complete stage --only passes over is skipped: its results stand
    assert main(["run", str(recipe), "--run-dir", str(run_dir), "--only", "c"]) == 0
    closing = capsys.readouterr().out
    assert "ran: c; skipped: a; not run (--only c): b\n" in closing


def test_a_moved_recipe_folder_names_the_file_whose_content_changed(tmp_path):
    """A recipe folder moved and one data file edited: the plan listed both files as (new), each with a (no longer
    read) twin, never saying which one changed. The fingerprint counts a file by its name and content, so the plan
    pairs them by name: the edited one is (changed), the one moved as it was is no change."""
    import shutil

    project = tmp_path / "alice"
    (project / "data").mkdir(parents=True)
    for name in ("instruct", "edited"):
        (project / "data" / f"{name}.jsonl").write_text(f"{name}\n")
    (project / "old.jsonl").write_text("gone\n")
    stages = "- {name: a, kind: note, inputs: [data/instruct.jsonl, data/edited.jsonl, %s]}\n"
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(_recipe(project, stages % "old.jsonl")), run_dir)
    moved = tmp_path / "bob"
    shutil.move(project, moved)
    (moved / "data" / "edited.jsonl").write_text("edited again\n")
    (moved / "new.jsonl").write_text("new\n")
    [decision] = plan_run(load_recipe(_recipe(moved, stages % "new.jsonl")), run_dir)
    assert decision.action == "rerun"
    files = decision.reason.split("input files: ")[1]
    assert files == (f"{moved / 'data' / 'edited.jsonl'} (changed), {moved / 'new.jsonl'} (new), "
                     f"{project / 'old.jsonl'} (no longer read)")
