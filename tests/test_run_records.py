"""What a run records of itself and what `tempa run`, `plan` and `status` say of it: the stages an --only run never
ran, the input files a moved recipe folder reads, the software a stage ran under, and the trainer arguments a complete
stage trained with.

A small stage kind (`note`) stands in for a real one, added the way any kind is (one StageKind in a package's
STAGE_KINDS); a `trains` variant of it stands for a training kind, whose trainer arguments are tempa's defaults under
the recipe's `train:` block. Nothing here trains.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import Field, field_validator

import tempa.merge
import tempa.recipes
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


REPO = Path(__file__).resolve().parents[1]


def test_a_stages_manifest_records_the_software_it_ran_under_and_status_shows_it(tmp_path, capsys):
    """Manifests recorded only tempa's version string, the same from one commit of a checkout to the next: the
    libraries that decide what a stage computes, and the commit tempa ran from, are recorded (no part of the
    fingerprint), and `tempa status --json` shows them."""
    import accelerate
    import torch
    import transformers
    import trl

    run_dir = tmp_path / "run"
    run_recipe(load_recipe(_recipe(tmp_path, THREE)), run_dir)
    software = json.loads((run_dir / "a" / "manifest.json").read_text())["software"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert software["tempa"] == tempa.recipes.__version__
    assert software["tempa_commit"].split("+")[0] == head  # the tests run from the checkout
    for module in (torch, transformers, trl, accelerate):
        assert software["packages"][module.__name__] == module.__version__
    assert "notapackage" not in software["packages"]

    assert main(["status", str(run_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["software"] for row in rows] == [software] * 3


def _git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   capture_output=True, check=True)


def test_the_commit_is_that_of_tempas_own_checkout_and_says_when_it_was_modified(tmp_path, monkeypatch):
    from tempa.recipes.software import checkout_commit

    checkout = tmp_path / "tempa"
    (checkout / "recipes").mkdir(parents=True)
    (checkout / "recipes" / "runner.py").write_text("one\n")
    _git(checkout, "init", "-q")
    _git(checkout, "add", "-A")
    _git(checkout, "commit", "-q", "-m", "one")
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert checkout_commit(checkout) == commit
    (checkout / "recipes" / "new.py").write_text("untracked: no change of what ran\n")
    assert checkout_commit(checkout) == commit
    (checkout / "recipes" / "runner.py").write_text("two\n")
    assert checkout_commit(checkout) == f"{commit}+modified"
    # an installed tempa inside another project's checkout (its virtual environment) is not that project's commit
    assert checkout_commit(checkout / "recipes") is None
    assert checkout_commit(tmp_path / "elsewhere") is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert checkout_commit(checkout) is None


def test_the_report_names_the_software_the_stages_ran_under():
    from tempa.recipes.report import stages_section
    from tempa.recipes.rundir import Manifest
    from tempa.recipes.software import Software

    def ran(name: str, software: Software | None) -> tuple[Manifest, None]:
        return Manifest(name=name, kind="sft", fingerprint="f", status="done", started_at=0.0, software=software), None

    one = Software(tempa="0.1.0", tempa_commit="0123456789abcdef0123+modified", packages={"torch": "2.9.1"})
    other = Software(tempa="0.1.0", packages={"torch": "2.10.0"})
    assert "<p class='note'>software: tempa 0.1.0 (git 0123456789ab+modified), torch 2.9.1</p>" in stages_section(
        [ran("a", one), ran("b", one), ran("c", None)])
    section = stages_section([ran("a", one), ran("b", other), ran("c", one)])
    assert "software of a, c: tempa 0.1.0 (git 0123456789ab+modified), torch 2.9.1" in section
    assert "software of b: tempa 0.1.0, torch 2.10.0" in section


TRAINING = dataclasses.replace(NOTE, trains=True)


def test_the_plan_shows_a_complete_stage_the_arguments_it_trained_with_and_says_what_new_defaults_would_change(
        tmp_path, capsys, monkeypatch):
    """tempa's own defaults changed (warmup_steps 0.03 -> 0.5), which no fingerprint counts: `tempa plan` said the
    stage was complete and skipped, listed `warmup_steps=0.5*` as its argument and warned that 0.5 is 2 of its 4
    steps, a setting it never trained with. It shows what the stage trained with, says in one line which defaults
    would now differ, and warns only of the stages that will train."""
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], TRAINING))
    recipe = _recipe(tmp_path, "- {name: a, kind: note, train: {max_steps: 4, learning_rate: 1.0e-5}}\n")
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    ran = json.loads((run_dir / "a" / "manifest.json").read_text())["train_args"]
    assert ran == {"warmup_steps": 0.03, "learning_rate": 1e-5, "max_steps": 4}

    monkeypatch.setattr(NoteConfig, "train_defaults", {"warmup_steps": 0.5, "learning_rate": 2e-5, "seed": 3})

    def plan(*flags: str) -> str:
        assert main(["plan", str(recipe), "--run-dir", str(run_dir), *flags]) == 0
        return " ".join(capsys.readouterr().out.split())

    shown = plan()
    assert "complete; fingerprint matches" in shown
    assert ("training arguments of a (as it trained; * tempa's default then): warmup_steps=0.03*, "
            "learning_rate=1e-05, max_steps=4") in shown
    assert ("note: this tempa's defaults for a differ from the ones it trained with: warmup_steps 0.03 → 0.5, "
            "seed unset → 3; defaults are no part of a fingerprint, so it stays complete: `tempa run --from a` "
            "trains it (and the stages after it) with these") in shown
    assert "warmup_steps=0.5" not in shown and "warning" not in shown

    forced = plan("--from", "a")  # what it will train with now
    assert "training arguments of a (* tempa's default): warmup_steps=0.5*, learning_rate=1e-05, seed=3*" in forced
    assert "note: this tempa's defaults" not in forced
    assert "warning: stage 'a' (max_steps 4): warmup_steps 0.5 is 2 of the 4 steps" in forced

    # a manifest of a tempa that did not record them: the plan says whose arguments it shows
    manifest = json.loads((run_dir / "a" / "manifest.json").read_text())
    del manifest["train_args"]
    (run_dir / "a" / "manifest.json").write_text(json.dumps(manifest))
    assert ("training arguments of a (as this tempa gives them: the tempa that trained it did not record its own; "
            "* tempa's default): warmup_steps=0.5*") in plan()


def test_the_manifest_records_the_gradient_accumulation_the_launchs_global_batch_sets(tmp_path, monkeypatch):
    """The training processes set gradient_accumulation_steps from launch.global_batch_size as they start: the
    manifest (what `tempa plan` shows a complete stage trained with, and the model card lists) said the 1 of the
    recipe's defaults where 2 trained."""
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], TRAINING))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nbase_model: tempa:tiny\nlaunch: {accelerate_config: single, global_batch_size: 8}\n"
                      "stages:\n  - {name: a, kind: note, train: {per_device_train_batch_size: 4}}\n")
    run_recipe(load_recipe(recipe), tmp_path / "run")
    ran = json.loads((tmp_path / "run" / "a" / "manifest.json").read_text())["train_args"]
    assert ran["gradient_accumulation_steps"] == 8 // 4
