"""Runner mechanics: fingerprints, skip / re-run / --from / --only, failures, interruptions, the lock.

The stage used here is a small real stage kind added for the test (`touch`): it writes a file and
records each call, so what ran and what was skipped can be counted exactly. It is added the way
any new kind is, as one StageKind in a stage package's STAGE_KINDS, without touching `recipes/`.
Real training stages are exercised in test_sft_stage.py and test_resume.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import textwrap
import time
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import Field, field_validator

import tempa.merge
import tempa.sft
from tempa.recipes.loader import load_recipe
from tempa.recipes.registry import stage_kind
from tempa.recipes.rundir import RunLock, RunLockedError, run_in_progress
from tempa.recipes.runner import other_recipe_warning, plan_run, run_recipe, stage_status
from tempa.sft.checkpoints import resume_point
from tempa.sft.files import json_or_none
from tempa.sft.run_layout import CHECKPOINTS_DIR, COMPLETE, DONE, MANIFEST, TRAIN_PROGRESS
from tempa.sft.stage_api import (
    NOT_FINGERPRINTED,
    Artifact,
    StageConfigBase,
    StageContext,
    StageError,
    StageKind,
    StageResult,
    resolve_path,
)
from tempa.sft.throughput_summary import TrainProgress


class TouchConfig(StageConfigBase):
    kind: Literal["touch"] = "touch"
    value: int = 0
    fail: bool = False
    no_model: bool = False  # like synthesize: produces data, no model
    model_file: bool = False  # a file in its model folder
    input: str | None = None
    transport: int = Field(default=0, json_schema_extra=NOT_FINGERPRINTED)  # like a teacher's timeout_s

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | None, info):
        return resolve_path(value, info) if value else value


def run_touch(config: TouchConfig, ctx: StageContext) -> StageResult:
    calls = ctx.stage_dir.parent / "calls.log"  # a test log beside the stages, to count runs
    with open(calls, "a") as f:
        f.write(f"{config.name}\n")
    if config.fail:
        raise StageError("asked to fail")
    if (ctx.stage_dir.parent / f"interrupt-{config.name}").exists():  # a Ctrl-C while the stage runs
        raise KeyboardInterrupt
    (ctx.stage_dir / "out.txt").write_text(f"{config.value} from {ctx.start_model}")
    if config.no_model:
        return StageResult(metrics={"value": config.value})
    own = ctx.stage_dir / "model"
    own.mkdir()
    if config.model_file:
        (own / "config.json").write_text("{}")
    return StageResult(model=own, metrics={"value": config.value})


TOUCH = StageKind("touch", TouchConfig, run_touch, "test stage", produces=frozenset({Artifact.MODEL}))


MERGE_KINDS = tempa.merge.STAGE_KINDS  # with bake, for the tests that load the seed recipes


@pytest.fixture(autouse=True)
def touch_kind(monkeypatch):
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS, TOUCH))
    # No automatic bake: these recipes have no real model to bake.
    monkeypatch.setattr(tempa.merge, "STAGE_KINDS", tuple(k for k in tempa.merge.STAGE_KINDS if k.kind != "bake"))


@pytest.fixture()
def recipe(tmp_path: Path, tiny_model_dir: Path) -> Path:
    (tmp_path / "input.txt").write_text("one")
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(f"""
        name: t
        base_model: {tiny_model_dir}
        stages:
          - {{name: a, kind: touch, value: 1, input: input.txt}}
          - {{name: b, kind: touch, value: 2}}
          - {{name: c, kind: touch, value: 3, from: a}}
        """))
    return path


def calls(run_dir: Path) -> list[str]:
    path = run_dir / "calls.log"
    return path.read_text().split() if path.exists() else []


def reset_calls(run_dir: Path) -> None:
    (run_dir / "calls.log").unlink(missing_ok=True)


def test_first_run_runs_all_then_everything_is_skipped(recipe, tmp_path):
    run_dir = tmp_path / "run"
    summary = run_recipe(load_recipe(recipe), run_dir)
    assert summary.ran == ["a", "b", "c"] and calls(run_dir) == ["a", "b", "c"]
    for name in "abc":
        manifest = json_or_none(run_dir / name / MANIFEST)
        assert manifest["status"] == "done"
        assert json_or_none(run_dir / name / DONE)["fingerprint"] == manifest["fingerprint"]
        assert json.loads((run_dir / name / "metrics.json").read_text())["value"] == "abc".index(name) + 1
    assert (run_dir / "tokenizer" / "chat_template.jinja").is_file()
    resolved = load_recipe(run_dir / "recipe.resolved.yaml")  # loads back as a recipe
    assert resolved.names == ["a", "b", "c"] and resolved.stages[0].input == str(tmp_path / "input.txt")

    reset_calls(run_dir)
    plans = plan_run(load_recipe(recipe), run_dir)
    assert [p.action for p in plans] == ["skip", "skip", "skip"]
    assert plans[0].reason == "complete; fingerprint matches"
    summary = run_recipe(load_recipe(recipe), run_dir)
    assert summary.skipped == ["a", "b", "c"] and calls(run_dir) == []


def test_changing_one_stage_reruns_it_and_its_downstream_only(recipe, tmp_path):
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    reset_calls(run_dir)
    # b changes; c starts from a (not b), so only b re-runs
    plans = plan_run(load_recipe(recipe, ["stages.b.value=5"]), run_dir)
    assert [(p.name, p.action) for p in plans] == [("a", "skip"), ("b", "rerun"), ("c", "skip")]
    assert plans[1].reason == "changed since it ran: stage config changed: value 2 → 5"
    # a setting that is no part of the fingerprint (how a stage runs, not what it makes) is not listed as a change
    plans = plan_run(load_recipe(recipe, ["stages.b.value=5", "stages.b.transport=3"]), run_dir)
    assert plans[1].reason == "changed since it ran: stage config changed: value 2 → 5"
    run_recipe(load_recipe(recipe, ["stages.b.value=5"]), run_dir)
    assert calls(run_dir) == ["b"]
    assert (run_dir / "b" / "out.txt").read_text().startswith("5")

    # a changes: a and everything that starts from it (b, its successor, and c, by `from`) re-run
    reset_calls(run_dir)
    plans = plan_run(load_recipe(recipe, ["stages.a.value=9", "stages.b.value=5"]), run_dir)
    assert [p.action for p in plans] == ["rerun", "rerun", "rerun"]
    assert plans[2].reason == "changed since it ran: model of 'a'"


def test_changed_input_file_reruns_the_stage_that_reads_it(recipe, tmp_path):
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    (tmp_path / "input.txt").write_text("two")
    plans = plan_run(load_recipe(recipe), run_dir)
    assert plans[0].action == "rerun" and "input files" in plans[0].reason


def test_a_recipe_folder_moved_or_checked_out_elsewhere_skips_what_is_complete(tmp_path):
    """Every recipe path resolves to an absolute one, and the config digest held it: the same recipe and data copied
    byte for byte to another folder (another machine's checkout, another home) re-ran all 8 stages of the demo (a
    trial). What a path holds is the input, not where it lies; a run made by an earlier tempa moves too."""
    import shutil

    project = tmp_path / "alice" / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "input.txt").write_text("one")
    (project / "r.yaml").write_text("name: t\nbase_model: tempa:tiny\nstages:\n"
                                    "  - {name: a, kind: touch, value: 1, input: data/input.txt}\n"
                                    "  - {name: b, kind: touch, value: 2}\n")
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(project / "r.yaml"), run_dir)
    moved = tmp_path / "bob" / "checkout"
    moved.parent.mkdir()
    shutil.move(project, moved)
    plans = plan_run(load_recipe(moved / "r.yaml"), run_dir)
    assert [p.action for p in plans] == ["skip", "skip"], [p.reason for p in plans]

    # As an earlier tempa recorded it (its config digest held the old paths): its settings compare by what is there.
    for name in "ab":
        manifest = json.loads((run_dir / name / MANIFEST).read_text())
        old = f"earlier-{name}"
        manifest["components"]["config"], manifest["fingerprint"] = f"a digest of paths {name}", old
        if name == "b":
            manifest["components"]["upstream"] = "earlier-a"  # the fingerprint of the model it started from
        (run_dir / name / MANIFEST).write_text(json.dumps(manifest))
        (run_dir / name / DONE).write_text(json.dumps({"fingerprint": old}))
    assert [p.action for p in plan_run(load_recipe(moved / "r.yaml"), run_dir)] == ["skip", "skip"]

    (moved / "data" / "input.txt").write_text("two")  # what it holds changed: that is an input changed
    plans = plan_run(load_recipe(moved / "r.yaml"), run_dir)
    assert [p.action for p in plans] == ["rerun", "rerun"] and "input files" in plans[0].reason


def test_a_setting_changed_in_a_moved_recipe_folder_is_named_without_the_moved_paths(tmp_path):
    """A moved copy of the recipe with one learning rate changed listed every moved data path as a change before it
    ("input "/alice/…/input.txt" → "/bob/…/input.txt", …, value 1 → 3"), the real change last, cut off in a narrow
    terminal (new-user trial)."""
    import shutil

    project = tmp_path / "alice" / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "input.txt").write_text("one")
    (project / "r.yaml").write_text("name: t\nbase_model: tempa:tiny\nstages:\n"
                                    "  - {name: a, kind: touch, value: 1, input: data/input.txt}\n")
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(project / "r.yaml"), run_dir)
    moved = tmp_path / "bob" / "checkout"
    moved.parent.mkdir()
    shutil.move(project, moved)
    (moved / "r.yaml").write_text((moved / "r.yaml").read_text().replace("value: 1", "value: 3"))
    (plan,) = plan_run(load_recipe(moved / "r.yaml"), run_dir)
    assert plan.action == "rerun" and plan.reason == "changed since it ran: stage config changed: value 1 → 3"

def test_an_input_linked_to_another_folder_reruns_the_stage(tmp_path):
    """A recipe path keeps its last name when it is a link (a model folder `best -> checkpoint-1000`); pointing the
    link at another checkpoint with files of the same sizes is another input."""
    for name in ("ck1", "ck2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.bin").write_bytes(name.encode() * (3 << 20))  # 9 MiB: digested by samples, not in full
    (tmp_path / "best").symlink_to(tmp_path / "ck1")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nbase_model: tempa:tiny\nstages:\n  - {name: a, kind: touch, value: 1, input: best}\n")
    run_recipe(load_recipe(recipe), tmp_path / "run")
    assert load_recipe(recipe).stages[0].input == str(tmp_path / "best")
    (tmp_path / "best").unlink()
    (tmp_path / "best").symlink_to(tmp_path / "ck2")
    plans = plan_run(load_recipe(recipe), tmp_path / "run")
    assert plans[0].action == "rerun" and "input files" in plans[0].reason


def test_a_base_model_retrained_in_place_reruns_every_stage(tmp_path, tiny_model_dir):
    """A base model folder whose weights were rewritten with new values of the same shapes (retrained, re-exported):
    same config.json, same file sizes. Large files were digested by size alone, so every stage was skipped as
    complete and the run shipped a model trained from the old base."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    weights = base / "extra.safetensors"
    weights.write_bytes(bytes(range(256)) * (24 << 10))  # 6 MiB, above the size digested in full
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nbase_model: {base}\nstages:\n  - {{name: a, kind: touch, value: 1}}\n"
                      "  - {name: b, kind: touch, value: 2}\n")
    run_recipe(load_recipe(recipe), tmp_path / "run")
    assert [p.action for p in plan_run(load_recipe(recipe), tmp_path / "run")] == ["skip", "skip"]

    with open(weights, "r+b") as f:  # new values in the middle of the file: the size does not change
        f.seek(3 << 20)
        f.write(b"\xff" * (1 << 20))
    plans = plan_run(load_recipe(recipe), tmp_path / "run")
    assert [p.action for p in plans] == ["rerun", "rerun"]
    assert plans[0].reason == "changed since it ran: base model"

    shutil.copy(weights, tmp_path / "copy")  # a copy (new mtime, same bytes) is the same model
    (tmp_path / "copy").replace(weights)
    run_recipe(load_recipe(recipe), tmp_path / "run")
    assert [p.action for p in plan_run(load_recipe(recipe), tmp_path / "run")] == ["skip", "skip"]


def test_from_and_only_force_stages(recipe, tmp_path):
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    reset_calls(run_dir)
    run_recipe(load_recipe(recipe), run_dir, from_stage="b")
    assert calls(run_dir) == ["b", "c"]
    reset_calls(run_dir)
    run_recipe(load_recipe(recipe), run_dir, only="a")
    assert calls(run_dir) == ["a"]


@pytest.mark.parametrize("flags", [{"from_stage": "a"}, {"only": "b"}])
def test_the_same_forced_command_again_continues_its_interrupted_run(recipe, tmp_path, flags):
    """`tempa run --from a` stopped in a later stage says "run the same command again to resume"; the same command
    forced `a` (and what followed it) again, re-running every stage the stopped run had finished: hours of a 70B."""
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    stopped = "c" if "from_stage" in flags else "b"
    (run_dir / f"interrupt-{stopped}").touch()
    reset_calls(run_dir)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(recipe), run_dir, **flags)
    first = calls(run_dir)
    assert first == (["a", "b", "c"] if "from_stage" in flags else ["b"])
    (run_dir / f"interrupt-{stopped}").unlink()
    plans = {p.name: p for p in plan_run(load_recipe(recipe), run_dir, **flags)}
    command = "--from a" if "from_stage" in flags else "--only b"
    for name in first[:-1]:  # finished by the stopped run: they stand
        assert plans[name].action == "skip", plans[name]
        assert plans[name].reason.endswith(f"the unfinished `{command}` run re-ran it, and this one continues that run")
    assert plans[stopped].action == "rerun" and "not a resumable stage" in plans[stopped].reason
    reset_calls(run_dir)
    run_recipe(load_recipe(recipe), run_dir, **flags)
    assert calls(run_dir) == [stopped]
    # Complete now: the same command once more forces its stages anew, and so does another forced command.
    reset_calls(run_dir)
    run_recipe(load_recipe(recipe), run_dir, **flags)
    assert calls(run_dir) == first
    (run_dir / "interrupt-c").touch()
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(recipe), run_dir, from_stage="b")
    (run_dir / "interrupt-c").unlink()
    reset_calls(run_dir)
    run_recipe(load_recipe(recipe), run_dir, **flags)  # other flags than the unfinished run's: forced anew
    assert calls(run_dir) == first


def test_status_says_an_input_started_again_and_unfinished_has_not_run_again(recipe, tmp_path):
    """A release trial: after a kill in an upstream stage, status said "'sft-distill' ran again since" of the stages
    after it, though it had not finished."""
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    (run_dir / "interrupt-a").touch()
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(recipe), run_dir, from_stage="a")
    (run_dir / "interrupt-a").unlink()
    states = {row.name: (row.state, row.note) for row in stage_status(["a", "b", "c"], run_dir)}
    assert states["a"][0] == "interrupted"
    assert states["b"][0] == "stale" and "'a' started again since and has not finished" in states["b"][1]
    assert "ran again" not in states["b"][1]


def test_only_leaves_later_stages_stale_until_a_plain_run(recipe, tmp_path):
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    plans = plan_run(load_recipe(recipe), run_dir, only="a")
    assert [(p.name, p.action) for p in plans] == [("a", "rerun"), ("b", "skip"), ("c", "skip")]
    assert "stale once 'a' re-ran" in plans[1].reason and plans[1].stale == ["a"]
    summary = run_recipe(load_recipe(recipe), run_dir, only="a")
    assert summary.stale == ["b", "c"]
    states = {row.name: (row.state, row.note) for row in stage_status(["a", "b", "c"], run_dir)}
    assert states["a"] == ("done", None)
    assert states["b"][0] == "stale" and "'a' ran again since" in states["b"][1]
    assert states["c"][0] == "stale"

    plans = plan_run(load_recipe(recipe), run_dir)  # a plain run re-runs what --only left stale
    assert [(p.name, p.action) for p in plans] == [("a", "skip"), ("b", "rerun"), ("c", "rerun")]
    assert plans[1].reason == "stale: 'a' ran again since it ran"
    reset_calls(run_dir)
    run_recipe(load_recipe(recipe), run_dir)
    assert calls(run_dir) == ["b", "c"]
    assert {row.state for row in stage_status(["a", "b", "c"], run_dir)} == {"done"}
    assert [p.action for p in plan_run(load_recipe(recipe), run_dir)] == ["skip", "skip", "skip"]


def test_the_run_summary_after_only_calls_the_final_model_out_of_date(recipe, tmp_path, capsys):
    """The operator trial read only the closing lines after `--only`: they named the final model without saying it
    was built before the re-run stage."""
    from tempa.recipes.cli import main

    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0
    assert "out of date" not in capsys.readouterr().out
    assert main(["run", str(recipe), "--run-dir", str(run_dir), "--only", "a"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("  stale: b, c") for line in lines)
    assert any(line.startswith("  final model (out of date: stale, see above): ") for line in lines)


def test_a_stage_built_on_a_stale_stage_is_stale_too(tmp_path, tiny_model_dir):
    """a -> b -> c, where c reads only b: after `--only a`, b is stale because a ran again, and c, built on b's
    out-of-date model, is stale as well. Status called c done (it compared c's inputs' run ids only, and b has not
    run again), and the run's summary left it out of the stages it calls out of date."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nbase_model: {tiny_model_dir}\nstages:\n  - {{name: a, kind: touch, value: 1}}\n"
                      "  - {name: b, kind: touch, value: 2}\n  - {name: c, kind: touch, value: 3}\n")
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    summary = run_recipe(load_recipe(recipe), run_dir, only="a")
    assert summary.stale == ["b", "c"]
    for names in (["a", "b", "c"], None):  # `tempa status` (the recipe's order) and `tempa push` (no recipe)
        states = {row.name: (row.state, row.note) for row in stage_status(names, run_dir)}
        assert states["a"] == ("done", None)
        assert states["b"] == ("stale", "'a' ran again since; the next `tempa run` re-runs it")
        assert states["c"] == ("stale", "'b' is stale; the next `tempa run` re-runs it")
    plans = plan_run(load_recipe(recipe), run_dir)
    assert [(p.name, p.action) for p in plans] == [("a", "skip"), ("b", "rerun"), ("c", "rerun")]
    # Another `--only a` leaves b stale and skipped, and c stale as b is: b has not re-run (the plan said so).
    plans = plan_run(load_recipe(recipe), run_dir, only="a")
    assert plans[2].reason == ("not selected by --only; stale: 'b' is stale (the next plain `tempa run` re-runs "
                               "it)")


def test_report_states_each_stage_as_status_does(recipe, tmp_path):
    """`tempa report` on a half-finished run: a stage cut off by a kill is interrupted (its manifest still reads
    `running`, which the report showed), and one built on a stage that ran again is stale (the report said done)."""
    import html
    import re

    from tempa.recipes.report import write_report

    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    run_recipe(load_recipe(recipe), run_dir, only="a")  # b and c (both built on a) are stale now
    manifest = json_or_none(run_dir / "b" / MANIFEST)
    manifest["status"] = "running"  # b's next run was killed: no DONE, and no runner holds the folder
    (run_dir / "b" / MANIFEST).write_text(json.dumps(manifest))
    (run_dir / "b" / DONE).unlink()
    page = write_report(run_dir, samples=False).read_text(encoding="utf-8")
    stages = page[page.index("<section id='stages'>"):]
    stages = stages[:stages.index("</section>")]
    rows = {cells[0]: cells[2] for cells in (
        [html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<td>(.*?)</td>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", stages)) if cells}
    assert rows["a"] == "done"
    assert rows["b"] == f"interrupted ({STOPPED.removesuffix('; ')})"  # why it stopped, where the status says it
    assert rows["c"].startswith("stale") and "'a' ran again since" in rows["c"]


def test_only_on_a_fresh_run_dir_runs_that_stage_alone(recipe, tmp_path):
    # The stages it does not select have never run: they stay unrun, which is no error.
    run_dir = tmp_path / "run"
    summary = run_recipe(load_recipe(recipe), run_dir, only="a")
    assert calls(run_dir) == ["a"] and summary.ran == ["a"] and summary.skipped == [] and summary.not_run == ["b", "c"]
    assert summary.stale == [] and summary.final_model is None
    assert [row.state for row in stage_status(["a", "b", "c"], run_dir)] == ["done", "pending", "pending"]
    reset_calls(run_dir)
    run_recipe(load_recipe(recipe), run_dir, only="c")  # c starts from a, now complete; b still never ran
    assert calls(run_dir) == ["c"]
    reset_calls(run_dir)
    run_recipe(load_recipe(recipe), run_dir)
    assert calls(run_dir) == ["b"]
    plans = plan_run(load_recipe(recipe), tmp_path / "fresh", only="a")
    assert [(p.name, p.action, p.reason) for p in plans] == [
        ("a", "run", "not run yet"),
        ("b", "skip", "not selected by --only; not run yet"),
        ("c", "skip", "not selected by --only; not run yet"),
    ]


def test_only_passes_over_a_stage_whose_last_run_failed(recipe, tmp_path):
    chain = ["stages.c.from=b"]
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe, chain), run_dir)
    with pytest.raises(StageError, match="stage 'b' failed"):
        run_recipe(load_recipe(recipe, [*chain, "stages.b.fail=true"]), run_dir, from_stage="b")
    reset_calls(run_dir)
    summary = run_recipe(load_recipe(recipe, chain), run_dir, only="a")  # c, complete, starts from the failed b
    assert calls(run_dir) == ["a"] and summary.stale == ["c"]
    assert plan_run(load_recipe(recipe, chain), run_dir, only="a")[1].reason == (
        "not selected by --only; its last run did not finish")
    with pytest.raises(StageError, match="--only c: its input stage 'b' is not complete"):
        plan_run(load_recipe(recipe, chain), run_dir, only="c")


def test_only_needs_the_model_behind_an_input_stage_that_makes_none(recipe, tmp_path, monkeypatch):
    # b makes no model (as evaluate and synthesize): c, starting from b, starts from a's model, so a is needed too.
    no_model = dataclasses.replace(TOUCH, produces=frozenset())
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], no_model))
    chain = ["stages.b.no_model=true", "stages.c.from=b"]
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe, chain), run_dir)
    with pytest.raises(StageError, match="stage 'a' failed"):
        run_recipe(load_recipe(recipe, [*chain, "stages.a.fail=true"]), run_dir, from_stage="a")
    with pytest.raises(StageError, match="--only c: its input stage 'a' is not complete"):
        run_recipe(load_recipe(recipe, chain), run_dir, only="c")


def test_plan_names_the_keys_that_changed(tmp_path):
    from tempa.recipes.runner import config_diff

    old = {"train": {"learning_rate": 2e-5, "max_length": 512}, "data": {"sources": [{"name": "x", "weight": 1.0}]}}
    new = {"train": {"learning_rate": 1e-5, "max_length": 512}, "data": {"sources": [{"name": "x", "weight": 0.5}]},
           "lora": {"r": 8}}
    assert config_diff(old, new) == ("train.learning_rate 2e-05 → 1e-05, data.sources[0].weight 1 → 0.5, "
                                     "lora.r unset → 8")
    # A block that was null (as dumped configs write an unset one) reads as unset too, never "unset → unset".
    assert config_diff({"lora": None, "seed": 1}, {"lora": {"r": 16, "lora_alpha": 32}, "seed": 1}) == (
        "lora.r unset → 16, lora.lora_alpha unset → 32")
    # The same settings under a fingerprint that counts them another way (an upgrade left a field out): said so, where
    # it said "stage config changed: no visible key".
    assert config_diff(old, old) == "no setting; this tempa fingerprints the same settings another way (an upgrade)"


def test_only_refuses_a_stage_whose_input_is_incomplete(recipe, tmp_path):
    with pytest.raises(StageError, match="--only c: its input stage 'a' is not complete"):
        run_recipe(load_recipe(recipe), tmp_path / "run", only="c")


def test_unknown_stage_for_from(recipe, tmp_path):
    from tempa.recipes.errors import RecipeError

    with pytest.raises(RecipeError, match="no stage named 'zz'"):
        plan_run(load_recipe(recipe), tmp_path / "run", from_stage="zz")
    # a mistyped name is named with the flag and the stage it is a letter from
    with pytest.raises(RecipeError, match=r"^--only bb: .*: no stage named 'bb' \(stages: a, b, c\); did you mean 'b'\?$"):
        plan_run(load_recipe(recipe), tmp_path / "run", only="bb")


def test_failed_stage_is_recorded_and_the_next_run_continues_there(recipe, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(StageError, match="stage 'b' failed: asked to fail"):
        run_recipe(load_recipe(recipe, ["stages.b.fail=true"]), run_dir)
    assert calls(run_dir) == ["a", "b"]
    manifest = json_or_none(run_dir / "b" / MANIFEST)
    assert manifest["status"] == "failed" and manifest["error"] == "asked to fail"
    assert not (run_dir / "b" / DONE).exists()
    states = {row.name: row.state for row in stage_status(load_recipe(recipe).names, run_dir)}
    assert states == {"a": "done", "b": "failed", "c": "pending"}

    reset_calls(run_dir)
    run_recipe(load_recipe(recipe), run_dir)
    assert calls(run_dir) == ["b", "c"]


def test_a_failed_stage_logs_why_and_the_plan_calls_it_failed(recipe, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(StageError):
        run_recipe(load_recipe(recipe, ["stages.b.fail=true"]), run_dir)
    assert "stage b failed: asked to fail" in (run_dir / "b" / "logs" / "stage.log").read_text()
    again = plan_run(load_recipe(recipe, ["stages.b.fail=true"]), run_dir)[1]
    assert again.action == "rerun" and again.reason.startswith("failed; starts over")
    changed = plan_run(load_recipe(recipe), run_dir)[1]
    assert changed.action == "rerun" and changed.reason.startswith("failed and changed since: stage config")
    assert "interrupted" not in again.reason + changed.reason


def test_interrupted_stage_is_never_taken_as_complete(recipe, tmp_path):
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    # What a kill mid-stage leaves: outputs and a running manifest, but no DONE.
    (run_dir / "b" / DONE).unlink()
    manifest = json_or_none(run_dir / "b" / MANIFEST)
    manifest["status"], manifest["duration_s"] = "running", None
    (run_dir / "b" / MANIFEST).write_text(json.dumps(manifest))
    (run_dir / "b" / "half-written.bin").write_text("x")
    plans = plan_run(load_recipe(recipe), run_dir)
    assert [p.action for p in plans] == ["skip", "rerun", "skip"]
    assert "interrupted" in plans[1].reason
    reset_calls(run_dir)
    run_recipe(load_recipe(recipe), run_dir)
    assert calls(run_dir) == ["b"]
    assert not (run_dir / "b" / "half-written.bin").exists()  # a non-training stage starts over


def test_corrupt_done_marker_means_not_done(recipe, tmp_path):
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    (run_dir / "c" / DONE).write_text("{trunc")
    assert plan_run(load_recipe(recipe), run_dir)[2].action != "skip"


def test_a_stage_whose_manifest_cannot_be_read_is_refused_not_trained_again(recipe, tmp_path, capsys):
    """A truncated manifest.json (a full disk, a copy cut short) read as no manifest at all: the next run called the
    finished stage "changed since it ran: tempa version, stage config, input files, ..." and deleted its model to
    train it again; `tempa status` called it pending."""
    from tempa.recipes.cli import main

    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    manifest = run_dir / "b" / MANIFEST
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    reset_calls(run_dir)
    refusal = (rf"^stage 'b': {re.escape(str(manifest))} cannot be read \(truncated\?\): the stage's record is lost; "
               r"restore it, or force the stage to run again with --from b / --only b$")
    with pytest.raises(StageError, match=refusal):
        plan_run(load_recipe(recipe), run_dir)
    with pytest.raises(StageError, match=refusal):
        run_recipe(load_recipe(recipe), run_dir)
    assert calls(run_dir) == [] and (run_dir / "b" / "model").is_dir() and (run_dir / "b" / DONE).is_file()
    assert main(["plan", str(recipe), "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tempa: error: stage 'b': ") and err.count("\n") == 1
    rows = {row.name: row for row in stage_status(load_recipe(recipe).names, run_dir)}
    assert {name: row.state for name, row in rows.items()} == {"a": "done", "b": "unreadable", "c": "done"}
    assert rows["b"].note.endswith("restore it, or run the stage again with --from b")
    assert [row.state for row in stage_status(None, run_dir) if row.name == "b"] == ["unreadable"]  # `tempa push`

    chain = tmp_path / "chain.yaml"  # a stage built on the unreadable one: b did not re-run, whatever its run id
    chain.write_text(recipe.read_text().replace("- {name: c, kind: touch, value: 3, from: a}",
                                                "- {name: c, kind: touch, value: 3, from: b}"))
    chain_run = tmp_path / "chain-run"
    run_recipe(load_recipe(chain), chain_run)
    (chain_run / "b" / MANIFEST).write_text("{")
    only_a = {p.name: p for p in plan_run(load_recipe(chain), chain_run, only="a")}
    assert only_a["b"].action == only_a["c"].action == "skip"
    assert "'b' re-ran" not in only_a["c"].reason, only_a["c"].reason

    run_recipe(load_recipe(recipe), run_dir, only="c")  # c starts from a: b is left as it is
    assert calls(run_dir) == ["c"] and manifest.read_text() == text[: len(text) // 2]
    manifest.unlink()  # DONE without the manifest beside it: as lost
    with pytest.raises(StageError, match=rf"^stage 'b': {re.escape(str(run_dir / 'b' / DONE))} is there but "
                                         rf"{re.escape(str(manifest))} is missing: the stage's record is lost"):
        plan_run(load_recipe(recipe), run_dir)
    (run_dir / "a" / MANIFEST).write_text("[]")
    with pytest.raises(StageError, match=r"^--only c: its input stage 'a': .* cannot be read \(truncated\?\)"):
        plan_run(load_recipe(recipe), run_dir, only="c")

    reset_calls(run_dir)
    plans = plan_run(load_recipe(recipe), run_dir, from_stage="a")  # forced, from it or a stage before it: re-run
    assert [p.action for p in plans] == ["rerun", "rerun", "rerun"] and "cannot be read" in plans[0].reason
    run_recipe(load_recipe(recipe), run_dir, from_stage="a")
    assert calls(run_dir) == ["a", "b", "c"]
    assert [p.action for p in plan_run(load_recipe(recipe), run_dir)] == ["skip", "skip", "skip"]


def test_a_refused_run_leaves_the_run_directory_as_it_was(recipe, tmp_path, capsys):
    """A run refused before its first stage wrote its recipe.resolved.yaml first: refused into another recipe's folder,
    `tempa status` (and push) read the refused recipe's stages there afterwards; refused into a new folder, it left a
    folder holding only that file, which read as a run."""
    from tempa.recipes.cli import main

    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    resolved = (run_dir / "recipe.resolved.yaml").read_text()
    other = tmp_path / "other.yaml"
    other.write_text(recipe.read_text().replace("name: t", "name: other").replace("value: 2}", "value: 2, from: x}")
                     .replace("stages:", "stages:\n  - {name: x, kind: touch, value: 4}"))
    reset_calls(run_dir)
    with pytest.raises(StageError, match=r"^--only b: its input stage 'x' is not complete"):
        run_recipe(load_recipe(other), run_dir, only="b")
    assert (run_dir / "recipe.resolved.yaml").read_text() == resolved and calls(run_dir) == []
    assert main(["status", str(run_dir), "--json"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == ["a", "b", "c"]

    new = tmp_path / "new" / "run"
    with pytest.raises(StageError, match="its input stage 'x' is not complete"):
        run_recipe(load_recipe(other), new, only="b")
    assert not (tmp_path / "new").exists()  # nor the parent the run made for it
    assert main(["run", str(other), "--run-dir", str(new), "--only", "b"]) == 1
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()  # a folder the user made stays, and reads as no run
    with pytest.raises(StageError):
        run_recipe(load_recipe(other), tmp_path / "empty", only="b")
    assert main(["status", str(tmp_path / "empty")]) == 1 and "not a tempa run directory" in capsys.readouterr().err

    assert run_recipe(load_recipe(other), new).ran == ["x", "a", "b", "c"]  # a run that passes writes it, as before
    assert load_recipe(new / "recipe.resolved.yaml").recipe.name == "other"


def test_a_run_into_the_folder_of_an_unrelated_recipe_says_what_it_replaces(recipe, tmp_path, caplog, capsys):
    """`tempa run other.yaml --run-dir r/other` where r/other holds a run of another recipe went on silently: it
    replaced recipe.resolved.yaml and the `final` link, and `tempa status` hid the other recipe's stages. A warning, not
    a refusal: a child recipe goes on in its parent's folder on purpose."""
    from tempa.recipes.cli import main

    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    other = tmp_path / "other.yaml"
    other.write_text(f"name: other\nbase_model: {load_recipe(recipe).recipe.base_model}\nstages:\n"
                     "  - {name: p, kind: touch, value: 1}\n")
    warning = (f"{run_dir}: holds the run of recipe 't' (stages a, b, c), which shares no stage with 'other': this run "
               "replaces its recipe.resolved.yaml and its final model link, and `tempa status` will show only this "
               "recipe's stages; give another --run-dir to keep both")
    assert main(["plan", str(other), "--run-dir", str(run_dir)]) == 0
    assert f"warning: {warning}\n" in capsys.readouterr().out
    with caplog.at_level("WARNING", logger="tempa"):
        assert run_recipe(load_recipe(other), run_dir).ran == ["p"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [warning]

    # Not for a recipe that extends the one that ran there (its stages may differ), nor one that shares a stage name
    caplog.clear()
    (tmp_path / "parent.yaml").write_text(other.read_text().replace("name: p", "name: x"))
    child = tmp_path / "child.yaml"
    child.write_text("extends: parent.yaml\nname: child\nstages:\n  - {name: q, kind: touch, value: 2}\n")
    assert load_recipe(child).names == ["x", "q"]
    shares = tmp_path / "shares.yaml"
    shares.write_text(other.read_text().replace("name: other", "name: shares").replace("name: p", "name: q"))
    for path, folder in ((child, run_dir), (shares, run_dir), (other, tmp_path / "new")):
        assert main(["plan", str(path), "--run-dir", str(folder)]) == 0
        assert "shares no stage" not in capsys.readouterr().out
        with caplog.at_level("WARNING", logger="tempa"):
            run_recipe(load_recipe(path), folder)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert load_recipe(run_dir / "recipe.resolved.yaml").recipe.name == "shares"


def test_lock_stops_a_second_run(recipe, tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(run_dir), pytest.raises(RunLockedError, match="run directory is in use by pid"):
        run_recipe(load_recipe(recipe), run_dir)
    run_recipe(load_recipe(recipe), run_dir)  # released: the next run goes through
    assert calls(run_dir) == ["a", "b", "c"]


def test_final_points_at_the_last_model(recipe, tmp_path):
    run_dir = tmp_path / "run"
    summary = run_recipe(load_recipe(recipe), run_dir)
    assert summary.final_model == run_dir / "final"
    assert (run_dir / "final").resolve() == (run_dir / "c" / "model").resolve()
    # each stage started from its upstream's model: b from a (previous), c from a (`from: a`)
    assert (run_dir / "b" / "out.txt").read_text() == f"2 from {run_dir / 'a' / 'model'}"
    assert (run_dir / "c" / "out.txt").read_text() == f"3 from {run_dir / 'a' / 'model'}"


def test_a_stage_without_a_model_hands_on_the_one_it_started_from(recipe, tmp_path):
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe, ["stages.b.no_model=true"]), run_dir)
    manifest = json_or_none(run_dir / "b" / MANIFEST)
    assert manifest["start_model"] == "a/model" and manifest["result"]["model"] is None
    # and again when b is skipped: the next stage still gets a's model through b
    run_recipe(load_recipe(recipe, ["stages.b.no_model=true", "stages.c.from=b", "stages.c.value=4"]), run_dir)
    assert (run_dir / "c" / "out.txt").read_text() == f"4 from {run_dir / 'a' / 'model'}"


def test_a_training_stage_cut_off_before_its_first_checkpoint_is_planned_as_starting_over(
    recipe, tmp_path, monkeypatch
):
    # The touch kind made resumable the way training kinds are, with the checkpoint hook they use.
    trains = dataclasses.replace(TOUCH, resumable=True, resume_point=resume_point)
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], trains))
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    (run_dir / "b" / DONE).unlink()  # what a Ctrl-C before the first checkpoint leaves
    manifest = json_or_none(run_dir / "b" / MANIFEST)
    manifest["status"], manifest["duration_s"] = "running", None
    (run_dir / "b" / MANIFEST).write_text(json.dumps(manifest))
    checkpoints = run_dir / "b" / CHECKPOINTS_DIR
    (checkpoints / "checkpoint-5").mkdir(parents=True)  # half-saved: no COMPLETE marker

    decision = plan_run(load_recipe(recipe), run_dir)[1]
    assert (decision.action, decision.reason) == ("rerun", "interrupted with nothing complete to continue from; "
                                                           "starts over")
    (checkpoints / "checkpoint-5" / COMPLETE).write_text("")
    (checkpoints / "checkpoint-10").mkdir()
    decision = plan_run(load_recipe(recipe), run_dir)[1]
    assert (decision.action, decision.reason) == ("resume", "interrupted; continues from checkpoint-5")
    # The real training kinds carry the hook.
    assert all(stage_kind(k).resume_point is resume_point for k in ("sft", "pretrain", "rl"))


def test_a_journaling_stage_cut_off_before_its_first_record_is_planned_without_checkpoints(recipe, tmp_path,
                                                                                           monkeypatch):
    """A teacher or preference stage resumes from its journals, not from checkpoints: killed before its first record,
    the plan said it was cut off 'before its first complete checkpoint' and 'starts over from step 0', neither of
    which it has."""
    from tempa.alignment.teacher_text import teacher_text_resume_point

    journals = dataclasses.replace(TOUCH, resumable=True, resume_point=teacher_text_resume_point)
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], journals))
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    killed_while_running(run_dir / "b")
    decision = plan_run(load_recipe(recipe), run_dir)[1]
    assert decision.action == "rerun"
    assert "checkpoint" not in decision.reason and "step" not in decision.reason
    assert decision.reason == "interrupted with nothing complete to continue from; starts over"
    (run_dir / "b" / "data").mkdir()
    (run_dir / "b" / "data" / "teacher.jsonl").write_text('{"id": "a"}\n')
    decision = plan_run(load_recipe(recipe), run_dir)[1]
    assert (decision.action, decision.reason) == ("resume", "interrupted; continues from 1 teacher answer journaled")


# what status says of a stage whose runner was killed without a chance to record why
STOPPED = "the runner stopped without saying why: SIGKILL, the out-of-memory killer or a machine that went down; "


def killed_while_running(stage_dir: Path) -> dict:
    """A finished stage's folder as a kill mid-stage leaves it: its manifest says running, no DONE marker."""
    manifest = json_or_none(stage_dir / MANIFEST)
    manifest["status"], manifest["duration_s"] = "running", None
    (stage_dir / MANIFEST).write_text(json.dumps(manifest))
    (stage_dir / DONE).unlink()
    return manifest


def test_the_bake_every_recipe_gets_does_not_make_two_recipes_related(recipe, tmp_path, monkeypatch):
    """The warning above never showed for real recipes: tempa adds a stage named `bake` to each, so any two shared
    a stage name (a docs trial planned an unrelated recipe into the demo's folder: no warning)."""
    monkeypatch.setattr(tempa.merge, "STAGE_KINDS", MERGE_KINDS)  # the bake tempa adds, as in a real run
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    base = load_recipe(recipe).recipe.base_model
    ran = tmp_path / "ran.yaml"
    ran.write_text(f"name: demo\nbase_model: {base}\nstages:\n  - {{name: a, kind: touch, value: 1}}\n")
    (run_dir / "recipe.resolved.yaml").write_text(yaml.safe_dump(load_recipe(ran).resolved()))
    other = tmp_path / "other.yaml"
    other.write_text(f"name: other\nbase_model: {base}\nstages:\n  - {{name: p, kind: touch, value: 1}}\n")
    assert load_recipe(other).names == ["p", "bake"]
    warning = other_recipe_warning(load_recipe(other), run_dir)
    assert warning is not None and warning.startswith(f"{run_dir}: holds the run of recipe 'demo' (stages a), ")
    # a stage of its own in common still relates them
    other.write_text(other.read_text().replace("name: p", "name: a"))
    assert other_recipe_warning(load_recipe(other), run_dir) is None


def test_status_tells_running_from_interrupted(recipe, tmp_path):
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    killed_while_running(run_dir / "b")
    with RunLock(run_dir):
        assert stage_status(load_recipe(recipe).names, run_dir)[1].state == "running"
        # `tempa plan` during the run says the same as status, not "interrupted"
        plans = plan_run(load_recipe(recipe), run_dir, running_elsewhere=run_in_progress(run_dir))
        assert (plans[1].action, plans[1].reason) == ("running", "another `tempa run` is running it now "
                                                                 "(`tempa status` follows it)")
    assert stage_status(load_recipe(recipe).names, run_dir)[1].state == "interrupted"
    assert "interrupted" in plan_run(load_recipe(recipe), run_dir,
                                     running_elsewhere=run_in_progress(run_dir))[1].reason
    # a manifest of a tempa that did not record why a run stopped is not taken for a SIGKILL (a review's finding)
    manifest = json_or_none(run_dir / "b" / MANIFEST)
    assert manifest.pop("interrupted") == ""
    (run_dir / "b" / MANIFEST).write_text(json.dumps(manifest))
    assert stage_status(load_recipe(recipe).names, run_dir)[1].note == ("why it stopped is not recorded (an older "
                                                                        "tempa ran it)")


def test_status_names_where_a_running_or_interrupted_stage_stands(recipe, tmp_path, monkeypatch):
    """`tempa status` said only `interrupted` (or `running`) for a stage hours into training, or a preference stage in
    its second round: it names what the stage has completed, as its kind's resume hook reports it (the checkpoint
    of a training stage; the round, for a kind with rounds), and what a re-run does with it."""
    def rounds_done(stage_dir: Path) -> str | None:  # a kind with rounds, reporting the way the hook is meant to
        last = resume_point(stage_dir / "round-2")
        return f"round 2, {last}" if last is not None else resume_point(stage_dir)

    trains = dataclasses.replace(TOUCH, resumable=True, resume_point=rounds_done)
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], trains))
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    manifest = killed_while_running(run_dir / "b")
    names = load_recipe(recipe).names

    row = stage_status(names, run_dir)[1]
    assert (row.state, row.note) == ("interrupted", STOPPED + "nothing complete to continue from: a re-run starts it over")
    checkpoint = run_dir / "b" / "round-2" / CHECKPOINTS_DIR / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / COMPLETE).write_text("")
    row = stage_status(names, run_dir)[1]
    assert (row.state, row.note) == ("interrupted", STOPPED + "the same recipe run again continues from round 2, checkpoint-2")
    with RunLock(run_dir):
        row = stage_status(names, run_dir)[1]
        assert (row.state, row.note) == ("running", "so far: round 2, checkpoint-2")
        assert row.duration_s is not None and row.duration_s > 0  # its time so far (status showed '-')
        # and how far the launch training now is, from its last progress line (the record it leaves)
        progress = TrainProgress(step=3, max_steps=8, eta_s=100.0, at=time.time())
        (checkpoint.parent / TRAIN_PROGRESS).write_text(progress.model_dump_json())
        row = stage_status(names, run_dir)[1]
        assert re.fullmatch(r"so far: round 2, checkpoint-2; step 3/8, eta 0:01:[0-4]\d \(\d+ s ago\)", row.note), \
            row.note
        # ... and for scripts as numbers (`status --json`), not only in the English note
        assert row.progress == progress.model_dump()
    row = stage_status(names, run_dir)[1]  # interrupted: what a re-run continues from, not a step it will redo
    assert (row.state, row.note) == ("interrupted", STOPPED + "the same recipe run again continues from round 2, checkpoint-2")
    assert row.progress is None  # a step it will redo is not where it stands
    # killed after its manifest said done and before its DONE marker (what a re-run resumes): it was 'pending'
    manifest["status"] = "done"
    (run_dir / "b" / MANIFEST).write_text(json.dumps(manifest))
    row = stage_status(names, run_dir)[1]
    assert (row.state, row.note) == ("interrupted", STOPPED + "the same recipe run again continues from round 2, checkpoint-2")


def test_status_names_what_a_failed_stage_keeps(recipe, tmp_path, monkeypatch, capsys):
    """A stage that failed hours into training said only its error: whether a re-run after the fix continues from a
    checkpoint or starts over is what the user deciding what to do next needs, and what `tempa plan` says."""
    trains = dataclasses.replace(TOUCH, resumable=True, resume_point=resume_point)
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], trains))
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    manifest = killed_while_running(run_dir / "b")
    manifest["status"], manifest["error"] = "failed", "CUDA out of memory"
    (run_dir / "b" / MANIFEST).write_text(json.dumps(manifest))
    names = load_recipe(recipe).names
    row = stage_status(names, run_dir)[1]
    assert (row.state, row.error, row.note) == ("failed", "CUDA out of memory",
                                                "nothing complete to continue from: a re-run starts it over")
    checkpoint = run_dir / "b" / CHECKPOINTS_DIR / "checkpoint-40"
    checkpoint.mkdir(parents=True)
    (checkpoint / COMPLETE).write_text("")
    row = stage_status(names, run_dir)[1]
    assert (row.state, row.note) == ("failed", "the same recipe run again continues from checkpoint-40")
    assert plan_run(load_recipe(recipe), run_dir)[1].reason == "failed; continues from checkpoint-40"
    from tempa.recipes.cli import main

    assert main(["status", str(run_dir)]) == 0  # the table: what failed, then what a re-run keeps
    assert "error: CUDA out of memory; the same recipe run again continues from checkpoint-40" in capsys.readouterr().out


def test_a_rerun_that_removes_a_gguf_export_says_so_first(recipe, tmp_path, caplog):
    """`tempa export gguf RUN/final` writes into the last stage's final folder; a re-run of that stage clears
    the folder, so the plan and the run's log name the export files it removes (they were made from the
    previous model), rather than the GGUF quietly disappearing."""
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    final = run_dir / "c" / "final"
    final.mkdir()
    (final / "t-q8_0.gguf").write_bytes(b"GGUF")
    (final / "Modelfile").write_text("FROM ./t-q8_0.gguf\n")
    assert "removes" not in plan_run(load_recipe(recipe), run_dir)[2].reason  # a skip removes nothing

    decision = plan_run(load_recipe(recipe), run_dir, from_stage="c")[2]
    assert decision.action == "rerun"
    assert decision.reason.endswith("; removes Modelfile, t-q8_0.gguf that `tempa export gguf` wrote into its "
                                    "final folder (made from the previous model: export again)")
    with caplog.at_level("WARNING", logger="tempa"):
        run_recipe(load_recipe(recipe), run_dir, from_stage="c")
    assert "stage c: removing Modelfile, t-q8_0.gguf" in caplog.text
    assert not final.exists()


def test_a_rerun_of_a_stage_that_replaces_its_final_folder_itself_leaves_the_exports_to_it(recipe, tmp_path,
                                                                                          monkeypatch, caplog):
    """The bake keeps its final folder until the new one replaces it, and keeps the GGUF exports when what they were
    made from is unchanged: the plan said it removes them ('made from the previous model') and the run warned so
    before the bake, when the model was unchanged and the exports stayed right."""
    keeps = dataclasses.replace(TOUCH, kept_until_replaced=("final",))
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], keeps))
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    final = run_dir / "c" / "final"
    final.mkdir()
    (final / "t-q8_0.gguf").write_bytes(b"GGUF")
    decision = plan_run(load_recipe(recipe), run_dir, from_stage="c")[2]
    assert decision.reason.endswith("; keeps t-q8_0.gguf that `tempa export gguf` wrote into its final folder if the "
                                    "weights, tokenizer, chat template, generation config and licence they were made "
                                    "from come out unchanged, else removes them")
    with caplog.at_level("WARNING", logger="tempa"):
        run_recipe(load_recipe(recipe), run_dir, from_stage="c")
    assert "t-q8_0.gguf" not in caplog.text  # the stage, not the runner, says what becomes of them


def test_a_stage_whose_records_cannot_be_written_is_failed_not_interrupted(recipe, tmp_path, monkeypatch):
    """A full disk as the stage ends: its work is there, but without DONE it is not complete. The run said
    'OSError' and left the manifest 'running', which `tempa status` read as interrupted."""
    import errno

    import tempa.recipes.runner as runner
    from tempa.sft.stage_api import StageError

    real = runner.mark_done

    def full(stage_dir, fingerprint):
        if stage_dir.name == "b":
            raise OSError(errno.ENOSPC, "No space left on device", str(stage_dir / DONE))
        real(stage_dir, fingerprint)

    monkeypatch.setattr(runner, "mark_done", full)
    run_dir = tmp_path / "run"
    with pytest.raises(StageError) as info:
        run_recipe(load_recipe(recipe), run_dir)
    assert str(info.value).startswith("stage 'b' failed: its work ended, but its records could not be written: "
                                      "OSError: [Errno 28] No space left on device")
    states = {row.name: row.state for row in stage_status(["a", "b", "c"], run_dir)}
    assert states == {"a": "done", "b": "failed", "c": "pending"}
    monkeypatch.setattr(runner, "mark_done", real)
    assert run_recipe(load_recipe(recipe), run_dir).ran == ["b", "c"]


def test_a_teachers_transport_settings_are_not_part_of_the_stage_fingerprint(tmp_path):
    """Raising a finished (or interrupted) synthesize stage's `concurrency` re-ran it, paying the teacher for every
    prompt again, and cleared its sample journal: the stage's fingerprint held settings that change no output."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Berapa 2 + 3?"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: r
        base_model: tempa:tiny
        stages:
          - kind: synthesize
            name: syn
            prompts: {{path: {prompts}}}
            teacher: {{type: http, base_url: "http://127.0.0.1:9/v1", model: teacher-a, api_key_env: KEY}}
            rewards: [{{type: format}}]
        """))

    def fingerprint(*overrides: str) -> str:
        (decision,) = [d for d in plan_run(load_recipe(recipe, list(overrides)), tmp_path / "run") if d.name == "syn"]
        return decision.fingerprint

    base = fingerprint()
    for transport in ("concurrency=64", "timeout_s=30", "max_retries=9", "backoff_s=5", "api_key_env=OTHER_KEY"):
        assert fingerprint(f"stages.syn.teacher.{transport}") == base, transport
    assert fingerprint("stages.syn.teacher.model=teacher-b") != base
    assert fingerprint("stages.syn.sampling.temperature=0.2") != base


def test_the_run_tokenizer_is_baked_again_when_any_tokenizer_file_of_the_base_changes(tmp_path, tiny_model_dir,
                                                                                     monkeypatch):
    """The run's baked tokenizer was reused while the base's `tokenizer_config.json` was unchanged: a base whose
    `generation_config.json` (the stop ids and sampling defaults the bake writes) or `tokenizer.json` changed in
    place kept the old bake, and every stage trained and the final model shipped with it."""
    import logging
    import shutil

    from tempa.chat_templates import load_template
    from tempa.recipes.runner import prepare_tokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    template = load_template("llama3_thinking")
    log = logging.getLogger("test")
    out = prepare_tokenizer(base, "llama3_thinking", template, tmp_path / "run", log)
    baked = json.loads((out / "generation_config.json").read_text())
    assert baked.get("temperature") != 0.6
    generation = json.loads((base / "generation_config.json").read_text())
    (base / "generation_config.json").write_text(json.dumps({**generation, "temperature": 0.6, "do_sample": True}))
    out = prepare_tokenizer(base, "llama3_thinking", template, tmp_path / "run", log)
    assert json.loads((out / "generation_config.json").read_text())["temperature"] == 0.6
    # unchanged, it is not baked again (the weights are no input of the bake)
    stamp = (out / "tokenizer.json").stat().st_mtime_ns
    (base / "model.safetensors").touch()
    assert prepare_tokenizer(base, "llama3_thinking", template, tmp_path / "run", log) == out
    assert (out / "tokenizer.json").stat().st_mtime_ns == stamp
    # another tempa bakes again: the bake itself may have changed (which pad token it picks)
    import tempa.recipes.runner as runner

    monkeypatch.setattr(runner, "__version__", runner.__version__ + ".next")
    prepare_tokenizer(base, "llama3_thinking", template, tmp_path / "run", log)
    assert (out / "tokenizer.json").stat().st_mtime_ns != stamp


def test_a_stage_is_flushed_to_the_disk_before_its_done_marker(recipe, tmp_path, monkeypatch):
    """DONE vouches for what the stage wrote; the page cache writes back in its own order, so without a flush a
    node's hard reset could keep DONE and lose the files (the flush itself cannot be undone here: its order is)."""
    from tempa.recipes import rundir

    run_dir = tmp_path / "run"
    flushed: list[tuple[bool, bool, list]] = []
    real_flush = rundir.flush_filesystems

    def flush(paths) -> None:
        stage = run_dir / "b"
        flushed.append(((stage / "out.txt").exists(), (stage / DONE).exists(), list(paths)))
        real_flush(paths)

    monkeypatch.setattr(rundir, "flush_filesystems", flush)
    run_recipe(load_recipe(recipe), run_dir)
    # b's output written, its DONE not yet; its folder's file system flushed, and the cache's
    assert any(out and not done and run_dir / "b" in paths for out, done, paths in flushed), flushed
    assert (run_dir / "b" / DONE).exists()


def test_the_closing_summary_says_which_stage_the_final_model_is_and_what_a_merge_holds(recipe, tmp_path):
    """The demo's final model is a merge of two SFT stages (its preference stage ranked out): the summary named only
    `runs/demo/final`, and a new user took it for the aligned model."""
    from types import SimpleNamespace

    from tempa.merge.merge_result import MergedModel, MergeResult, MergeSummary
    from tempa.recipes.runner import model_origin
    from tempa.sft.stage_api import Upstream

    summary = run_recipe(load_recipe(recipe), tmp_path / "run")
    assert summary.final_origin == "the model of stage 'c'"

    merged = MergeResult(model=tmp_path, summary=MergeSummary(method="linear", models=[
        MergedModel(name="sft-reasoning", path=tmp_path), MergedModel(name="sft-distill", path=tmp_path)]))
    done = {"merge": Upstream("merge", "merge", None, merged)}
    decisions = [SimpleNamespace(name="merge", kind="merge", upstream="align"),
                 SimpleNamespace(name="bake", kind="bake", upstream="merge")]
    assert model_origin(decisions, done) == "the model of stage 'merge': a linear merge of sft-reasoning, sft-distill"


def test_a_metric_that_is_no_number_is_null_in_metrics_json(recipe, tmp_path, monkeypatch):
    """metrics.json is for the user's tools (jq, a dashboard): Python wrote a win rate over no pair as a bare NaN,
    which they refuse to read. It is null there; the run still reads its own manifest back."""
    def no_pairs(config: TouchConfig, ctx: StageContext) -> StageResult:
        import numpy as np  # a metric taken from a tensor or an array, as trainers' logs hold them

        return StageResult(metrics={"win_rate": math.nan, "gain": math.inf, "value": config.value,
                                    "share": np.float32(0.5), "spread": np.float32("nan"), "rows": np.int64(7),
                                    "helped": np.bool_(True)})

    kind = dataclasses.replace(TOUCH, run=no_pairs, produces=frozenset())
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], kind))
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)

    def refuse(constant: str) -> None:
        raise AssertionError(f"metrics.json holds {constant}, which is not JSON")

    metrics = json.loads((run_dir / "a" / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics == {"win_rate": None, "gain": None, "value": 1, "share": 0.5, "spread": None, "rows": 7,
                       "helped": True}
    assert {row.state for row in stage_status(load_recipe(recipe).names, run_dir)} == {"done"}


def test_a_change_handed_on_by_a_stage_that_makes_no_model_is_not_called_its_model(recipe, tmp_path, monkeypatch):
    """A merge after an evaluate stage was re-run with "changed since it ran: model of 'evaluate'", a model evaluate
    does not make: the change is evaluate's own (its leaderboard) or the model it handed on."""
    scores = dataclasses.replace(TOUCH, produces=frozenset())  # as evaluate: its leaderboard, no model
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], scores))
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    plans = plan_run(load_recipe(recipe, ["stages.a.value=9"]), run_dir)
    assert plans[1].reason == "changed since it ran: 'a' (or what it started from)"


REPO = Path(__file__).resolve().parents[1]


def test_the_data_preparation_process_count_is_not_part_of_the_fingerprint(tmp_path, tiny_model_dir):
    """`data.num_proc` changes how fast the data is prepared, never the data ("the same for every setting"): setting
    it on a finished run re-ran the sft stage, which found its data cached and trained again to the same loss, and
    the bake after it (data trial)."""
    (tmp_path / "rows.jsonl").write_text('{"messages": [{"role": "user", "content": "Hai"}, '
                                         '{"role": "assistant", "content": "Halo"}]}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: t
        base_model: {tiny_model_dir}
        stages:
          - {{name: sft, kind: sft, data: {{sources: [{{name: rows, path: rows.jsonl}}]}}, train: {{max_steps: 1}}}}
        """))
    fingerprints = {next(d.fingerprint for d in plan_run(load_recipe(recipe, overrides), tmp_path / "run"))
                    for overrides in ([], ["stages.sft.data.num_proc=1"], ["stages.sft.data.num_proc=2"])}
    assert len(fingerprints) == 1
    changed = load_recipe(recipe, ["stages.sft.data.heldout=1"])  # a data setting that changes the data still counts
    assert next(d.fingerprint for d in plan_run(changed, tmp_path / "run")) not in fingerprints

def test_a_training_stages_logging_settings_are_not_part_of_its_fingerprint(tmp_path, monkeypatch):
    """Raising `logging_steps`, or adding a tracker, in a training stage days into its run changed its fingerprint: the
    next run cleared its folder, checkpoints included, and trained it again from step 0. Trainer arguments that change
    how a run logs and waits, never its weights, are no part of it, for every training kind; what does change the
    weights still is, and so is the saving, which decides the checkpoints evaluate and merge read (a review found
    evaluate skipped over a checkpoint set the recipe no longer described), and the logging where it is the
    evaluation's cadence."""
    (tmp_path / "docs.jsonl").write_text('{"text": "Selamat pagi semua."}\n')
    pretrain = tmp_path / "cpt.yaml"
    pretrain.write_text(textwrap.dedent(f"""\
        name: cpt
        base_model: "tempa:tiny"
        stages:
          - {{name: cpt, kind: pretrain, sources: [{{name: docs, path: "{tmp_path / 'docs.jsonl'}"}}],
             train: {{max_steps: 4, lr_scheduler_kwargs: {{num_decay_steps: 1}}}}}}
        """))
    from tempa.sft.stage_api import fingerprinted

    monkeypatch.setattr(tempa.merge, "STAGE_KINDS", MERGE_KINDS)  # the rlvr recipe names its bake stage
    demo, rlvr = load_recipe(REPO / "recipes" / "demo.yaml"), load_recipe(REPO / "recipes" / "sea-lion-v3.5-8b-r-rlvr.yaml",
                                                                           profile="tiny")
    configs = [demo.stage("sft-general"), demo.stage("align"), rlvr.stage("rlvr"), load_recipe(pretrain).stage("cpt")]
    for config in configs:
        def settings(config=config, **train) -> dict:
            return fingerprinted(config.model_copy(update={"train": {**config.train, **train}}))

        assert settings() == fingerprinted(config)
        for setting in ({"logging_steps": 3}, {"logging_first_step": True}, {"run_name": "second-try"},
                        {"disable_tqdm": True}, {"ddp_timeout": 7200}, {"report_to": ["tensorboard"]}):
            assert settings(**setting) == settings(), (config.name, setting)
        for setting in ({"learning_rate": 0.123}, {"save_strategy": "epoch"}, {"seed": 11}, {"save_steps": 7},
                        {"save_total_limit": 9}):
            assert settings(**setting) != settings(), (config.name, setting)
        # evaluating by steps without eval_steps, transformers evaluates every logging_steps
        by_logging = {"eval_strategy": "steps"}
        assert settings(**by_logging, logging_steps=3) != settings(**by_logging, logging_steps=5), config.name
        assert settings(**by_logging, eval_steps=2, logging_steps=3) == settings(**by_logging, eval_steps=2,
                                                                                 logging_steps=5), config.name
    # and the stage's fingerprint, as the run decides by it
    fingerprints = {next(d.fingerprint for d in plan_run(load_recipe(pretrain, [f"stages.cpt.train.{o}"]),
                                                          tmp_path / "run"))
                    for o in ("logging_steps=1", "logging_steps=30", "report_to=tensorboard")}
    assert len(fingerprints) == 1


def interrupted_at_a_checkpoint(recipe: Path, run_dir: Path, monkeypatch) -> Path:
    """Stage b of ``recipe``, a training-like stage, as a kill days into its run leaves it: a complete checkpoint."""
    trains = dataclasses.replace(TOUCH, resumable=True, resume_point=resume_point)
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], trains))
    run_recipe(load_recipe(recipe), run_dir)
    killed_while_running(run_dir / "b")
    shutil.rmtree(run_dir / "b" / "model")  # killed before its final model
    checkpoint = run_dir / "b" / CHECKPOINTS_DIR / "checkpoint-5"
    checkpoint.mkdir(parents=True)
    (checkpoint / COMPLETE).write_text("")
    reset_calls(run_dir)
    return checkpoint


def test_an_interrupted_training_stage_whose_config_changed_keeps_its_checkpoints_until_told(
    recipe, tmp_path, monkeypatch, capsys
):
    """A real change to a training stage cut off at a checkpoint cleared its folder, the hours of checkpoints with it,
    with one info line among the run's logs. The run (and the plan) now refuses before any work, naming the setting and
    the checkpoint and both ways on; --from says to start it over."""
    run_dir = tmp_path / "run"
    checkpoint = interrupted_at_a_checkpoint(recipe, run_dir, monkeypatch)
    changed = load_recipe(recipe, ["stages.b.value=5"])
    with pytest.raises(StageError) as refused:
        run_recipe(changed, run_dir)
    assert str(refused.value) == (
        "stage 'b': interrupted at checkpoint-5 and changed since: stage config changed: value 2 → 5; `tempa run` will "
        "not delete what it completed and start it over unless told: run with --from b to start it over, or undo the "
        "change to continue from checkpoint-5")
    assert checkpoint.is_dir() and calls(run_dir) == []
    from tempa.recipes.cli import main

    # `tempa plan` says it too, after the table that shows what changed where (it printed nothing else)
    assert main(["plan", str(recipe), "--set", "stages.b.value=5", "--run-dir", str(run_dir)]) == 1
    out, err = capsys.readouterr()
    assert "stages, in run order" in out and "value 2 → 5" in out
    assert err.strip().endswith("undo the change to continue from checkpoint-5") and len(err.strip().splitlines()) == 1
    # A setting that is no part of the fingerprint resumes it, checkpoint kept.
    run_recipe(load_recipe(recipe, ["stages.b.transport=3"]), run_dir)
    assert calls(run_dir) == ["b"] and checkpoint.is_dir()

    killed_while_running(run_dir / "b")
    shutil.rmtree(run_dir / "b" / "model")
    reset_calls(run_dir)
    summary = run_recipe(changed, run_dir, from_stage="b")
    assert summary.ran == ["b", "c"] and not checkpoint.exists()
    assert (run_dir / "b" / "out.txt").read_text().startswith("5")


def test_an_interrupted_stage_fingerprinted_another_way_after_an_upgrade_resumes(recipe, tmp_path, monkeypatch):
    """A tempa that leaves a setting out of the fingerprint (as `train.save_steps` now is) gives an interrupted stage a
    new fingerprint for the same settings and inputs: it resumes, where a changed input still does not."""
    run_dir = tmp_path / "run"
    checkpoint = interrupted_at_a_checkpoint(recipe, run_dir, monkeypatch)
    manifest = json_or_none(run_dir / "b" / MANIFEST)
    manifest["fingerprint"], manifest["components"]["config"] = "counted-the-old-way", "digest-of-more-settings"
    (run_dir / "b" / MANIFEST).write_text(json.dumps(manifest))

    decision = plan_run(load_recipe(recipe), run_dir)[1]
    assert (decision.action, decision.reason) == ("resume", "interrupted; continues from checkpoint-5")
    assert decision.discards is None
    manifest["components"]["seed"] = 7
    (run_dir / "b" / MANIFEST).write_text(json.dumps(manifest))
    decision = plan_run(load_recipe(recipe), run_dir)[1]
    assert (decision.action, decision.discards) == ("rerun", "checkpoint-5") and "recipe seed" in decision.reason
    assert checkpoint.is_dir()


def test_an_interrupted_stage_whose_input_stage_ran_again_since_is_not_resumed_on_the_old_model(
    recipe, tmp_path, monkeypatch
):
    """b was cut off at a checkpoint; a re-ran alone (--only a) since. The next run resumed b from its checkpoint, trained
    from a's previous model, and recorded a's new run as its input: a finished stage in that place is called stale and
    re-run, an unfinished one was not. It is refused as a change is (nothing deleted), and --from b starts it over."""
    run_dir = tmp_path / "run"
    checkpoint = interrupted_at_a_checkpoint(recipe, run_dir, monkeypatch)
    run_recipe(load_recipe(recipe), run_dir, only="a")
    decision = plan_run(load_recipe(recipe), run_dir)[1]
    assert (decision.action, decision.reason) == ("rerun", "interrupted at checkpoint-5 and stale: 'a' ran again since "
                                                           "it ran")
    reset_calls(run_dir)
    with pytest.raises(StageError) as refused:
        run_recipe(load_recipe(recipe), run_dir)
    assert str(refused.value) == (
        "stage 'b': interrupted at checkpoint-5 and stale: 'a' ran again since it ran; `tempa run` will not delete what "
        "it completed and start it over unless told: run with --from b to start it over")
    assert checkpoint.is_dir() and calls(run_dir) == []
    assert run_recipe(load_recipe(recipe), run_dir, from_stage="b").ran == ["b", "c"]


def as_an_earlier_tempa_wrote_it(run_dir: Path, names: list[str], *, finished: bool = True) -> None:
    """The stages' manifests (and DONE markers) as the previous tempa wrote them: its input files as one digest, its
    config digested with more settings (it fingerprinted `train.logging_steps`), so every fingerprint differs."""
    from tempa.sft.files import digest

    renamed: dict[str, str] = {}
    for name in names:
        manifest = json_or_none(run_dir / name / MANIFEST)
        components = manifest["components"]
        components["files"] = digest(components["files"]) if isinstance(components["files"], dict) else components["files"]
        components["config"] = f"{name}: a digest of more settings"
        components["upstream"] = renamed.get(components["upstream"], components["upstream"])
        renamed[manifest["fingerprint"]] = manifest["fingerprint"] = f"{name} as an earlier tempa counted it"
        (run_dir / name / MANIFEST).write_text(json.dumps(manifest))
        if finished:
            (run_dir / name / DONE).write_text(json.dumps({"fingerprint": manifest["fingerprint"], "finished_at": 0}))


def test_a_finished_run_stands_after_an_upgrade_that_only_counts_its_settings_another_way(recipe, tmp_path):
    """A review found that the upgrade which left `logging_steps` out of fingerprints gave every training stage of
    every shipped recipe a new fingerprint: a finished run would have trained each again, days of GPU time, over a
    setting the upgrade meant to stop mattering. A stage whose settings and inputs are as it ran them stands, with the
    fingerprint the stages built on it recorded; a real change still re-runs it."""
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    as_an_earlier_tempa_wrote_it(run_dir, ["a", "b", "c"])
    reset_calls(run_dir)
    decisions = plan_run(load_recipe(recipe), run_dir)
    assert [(d.action, d.complete) for d in decisions] == [("skip", True)] * 3, [d.reason for d in decisions]
    run_recipe(load_recipe(recipe), run_dir)
    assert calls(run_dir) == []
    changed = plan_run(load_recipe(recipe, ["stages.a.value=9"]), run_dir)
    assert [d.action for d in changed] == ["rerun", "rerun", "rerun"]  # a changed; b and c are built on it
    assert changed[0].reason.startswith("changed since it ran: stage config changed: value")


@pytest.mark.parametrize("version", [None, "0.0.1"])
def test_an_interrupted_stage_resumes_after_an_upgrade(recipe, tmp_path, monkeypatch, version):
    """... and an interrupted stage resumes from its checkpoint, where it was refused ('undo the change to continue')
    for a change the user never made: a manifest's input files in the old one-digest form, or another tempa version."""
    run_dir = tmp_path / "run"
    interrupted_at_a_checkpoint(recipe, run_dir, monkeypatch)
    as_an_earlier_tempa_wrote_it(run_dir, ["b"], finished=False)
    if version is not None:
        manifest = json_or_none(run_dir / "b" / MANIFEST)
        manifest["components"]["tempa_version"] = version
        (run_dir / "b" / MANIFEST).write_text(json.dumps(manifest))
    decision = plan_run(load_recipe(recipe), run_dir)[1]
    assert (decision.action, decision.discards) == ("resume", None), decision.reason


def test_a_changed_journaling_stage_keeps_its_journals_and_clears_the_rest(recipe, tmp_path, monkeypatch):
    """A teacher stage cut off hours into its requests, then edited, was refused as a training stage is ('a re-run
    would delete its checkpoints'), and a finished one cleared its folder, journals with it. Its kind's journals are
    kept (and left to their own signatures), everything else it wrote goes, DONE first; --from, a changed chat
    template or a changed tempa still clear the whole folder."""
    from tempa.alignment.teacher_text import teacher_text_journals, teacher_text_resume_point
    from tempa.recipes.runner import JOURNALS_DELETED, JOURNALS_KEPT

    journaled = dataclasses.replace(TOUCH, resumable=True, resume_point=teacher_text_resume_point,
                                    journals=teacher_text_journals)
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], journaled))
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    killed_while_running(run_dir / "b")
    data = run_dir / "b" / "data"
    data.mkdir()
    journal = [data / name for name in ("teacher.jsonl", "teacher.jsonl.meta.json", "judge.jsonl",
                                        "judge.jsonl.complete")]
    for path in journal:
        path.write_text('{"id": "a"}\n')
    (data / "translated.jsonl").write_text("an output of the last run\n")
    shutil.rmtree(run_dir / "b" / "model")

    changed = load_recipe(recipe, ["stages.b.value=5"])
    decision = plan_run(changed, run_dir)[1]
    assert (decision.action, decision.discards, decision.keeps_journals) == ("rerun", None, True)
    assert decision.reason == ("interrupted at 1 teacher answer journaled, 1 judge rating journaled and changed since: "
                               f"stage config changed: value 2 → 5; {JOURNALS_KEPT}")
    reset_calls(run_dir)
    assert run_recipe(changed, run_dir).ran == ["b"]  # c starts from a
    assert all(path.read_text() == '{"id": "a"}\n' for path in journal)
    assert not (data / "translated.jsonl").exists()  # outputs are the new run's
    assert (run_dir / "b" / "out.txt").read_text().startswith("5")
    assert not list(run_dir.glob(".trash-*"))

    # finished and changed: kept again; forced by --from: cleared whole
    decision = plan_run(load_recipe(recipe, ["stages.b.value=6"]), run_dir)[1]
    assert decision.keeps_journals and decision.reason.endswith(JOURNALS_KEPT)
    forced = plan_run(load_recipe(recipe, ["stages.b.value=6"]), run_dir, from_stage="b")[1]
    assert not forced.keeps_journals
    # said in the plan: a user re-running a teacher stage with --only to redo its selection pays for it all again
    assert forced.reason.endswith(f"; {JOURNALS_DELETED}") and "asked for again" in JOURNALS_DELETED
    manifest = json_or_none(run_dir / "b" / MANIFEST)
    manifest["components"]["template"] = "another template"  # requests a local sampler renders with it differ
    (run_dir / "b" / MANIFEST).write_text(json.dumps(manifest))
    (run_dir / "b" / DONE).write_text(json.dumps({"fingerprint": "made with another template"}))
    decision = plan_run(changed, run_dir)[1]
    assert decision.action == "rerun" and not decision.keeps_journals and JOURNALS_KEPT not in decision.reason
    run_recipe(changed, run_dir)
    assert not any(path.exists() for path in journal)


def test_a_run_directory_is_gone_on_with_the_profile_its_stages_ran_with(recipe, tmp_path, capsys):
    """A forgotten `--profile tiny` read every stage as changed (the plan listed a dozen setting diffs, nothing said a
    profile), and a run made with it would clear what the other profile's run had finished: a toy run and a
    full-scale one share the recipe's default run directory."""
    from tempa.recipes.cli import main

    recipe.write_text(recipe.read_text() + "profiles:\n  tiny:\n    stages:\n      - {name: a, value: 7}\n")
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe, profile="tiny"), run_dir)
    reset_calls(run_dir)
    with pytest.raises(StageError, match=r"its stages ran with --profile tiny, and this run has none; give the same "
                                         r"--profile to go on with that run, or another --run-dir for this one$"):
        run_recipe(load_recipe(recipe), run_dir)
    assert calls(run_dir) == [] and (run_dir / "a" / DONE).is_file()
    assert main(["plan", str(recipe), "--run-dir", str(run_dir)]) == 1  # first, as the run (so with --only too)
    assert "ran with --profile tiny" in capsys.readouterr().err
    assert main(["plan", str(recipe), "--only", "c", "--run-dir", str(run_dir)]) == 1
    assert "ran with --profile tiny" in capsys.readouterr().err
    assert run_recipe(load_recipe(recipe, profile="tiny"), run_dir).ran == []


def _journaling_touch(monkeypatch) -> None:
    from tempa.alignment.teacher_text import teacher_text_journals, teacher_text_resume_point

    kind = dataclasses.replace(TOUCH, resumable=True, resume_point=teacher_text_resume_point,
                               journals=teacher_text_journals)
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS[:-1], kind))


def test_from_starts_over_the_stage_it_names_and_leaves_later_journals_to_their_signatures(recipe, tmp_path,
                                                                                          monkeypatch):
    """A review found `--from translate-lmsys` (to translate it again) cleared the journals of every journaling stage
    after it, tens of thousands of paid answers of stages that never read it, where a plain run after an edit kept
    them for their signatures to judge."""
    _journaling_touch(monkeypatch)
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    journals = {name: run_dir / name / "data" / "teacher.jsonl" for name in ("b", "c")}
    for journal in journals.values():
        journal.parent.mkdir()
        journal.write_text('{"id": "paid"}\n')
    decisions = plan_run(load_recipe(recipe), run_dir, from_stage="b")
    assert [(d.name, d.keeps_journals) for d in decisions[1:]] == [("b", False), ("c", True)]
    run_recipe(load_recipe(recipe), run_dir, from_stage="b")
    assert not journals["b"].exists() and journals["c"].is_file()


def test_a_changed_journaling_stage_keeps_its_journals_across_an_upgrade_as_an_interrupted_one_resumes(
        recipe, tmp_path, monkeypatch):
    """The journals of an older tempa were resumed from when nothing else changed, and dropped (the stage refused,
    in checkpoint words) when a setting changed too: the signatures decide in both cases."""
    _journaling_touch(monkeypatch)
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    killed_while_running(run_dir / "b")
    (run_dir / "b" / "data").mkdir()
    (run_dir / "b" / "data" / "teacher.jsonl").write_text('{"id": "a"}\n')
    manifest = json_or_none(run_dir / "b" / MANIFEST)
    manifest["components"]["tempa_version"] = "0.0.1"
    (run_dir / "b" / MANIFEST).write_text(json.dumps(manifest))
    assert plan_run(load_recipe(recipe), run_dir)[1].action == "resume"
    changed = plan_run(load_recipe(recipe, ["stages.b.value=5"]), run_dir)[1]
    assert (changed.action, changed.keeps_journals, changed.discards) == ("rerun", True, None)


def test_a_folder_moved_with_its_recipe_keeps_a_changed_stages_journals(tmp_path):
    """A prompts folder at another path with the same name and content (the recipe folder moved) counted as a folder
    changed in place: a stage re-run for another reason (a learning rate) discarded its journals (found by review)."""
    from tempa.recipes.runner import _journals_signed

    moved = tmp_path / "bob" / "prompts"
    moved.mkdir(parents=True)
    old = {"files": {str(tmp_path / "alice" / "prompts"): "d1"}}
    assert _journals_signed(old, {"files": {str(moved): "d1"}})
    assert not _journals_signed(old, {"files": {str(moved): "d2"}})  # what it holds changed


def test_a_complete_stage_whose_model_folder_lost_a_file_is_damaged_and_runs_again_with_what_is_built_on_it(
        recipe, tmp_path):
    """A finished run with a file deleted from a stage's model folder showed `done` and `tempa run` skipped every
    stage ("run complete"); only export and push noticed (release trial: final/tokenizer.json removed)."""
    recipe.write_text(recipe.read_text().replace("value: 1,", "value: 1, model_file: true,"))
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    (run_dir / "a" / "model" / "config.json").unlink()

    rows = {row.name: row for row in stage_status(["a", "b", "c"], run_dir)}
    assert [rows[name].state for name in "abc"] == ["damaged", "stale", "stale"]
    assert "its output is damaged: config.json: missing" in rows["a"].note
    assert "the next `tempa run` re-runs it" in rows["a"].note
    decisions = {d.name: d for d in plan_run(load_recipe(recipe), run_dir)}
    assert [decisions[name].action for name in "abc"] == ["rerun", "rerun", "rerun"]
    assert decisions["a"].reason.startswith("its output is damaged: config.json: missing")
    assert not decisions["a"].complete

    reset_calls(run_dir)
    summary = run_recipe(load_recipe(recipe), run_dir)
    assert summary.ran == ["a", "b", "c"] and calls(run_dir) == ["a", "b", "c"]
    assert [row.state for row in stage_status(["a", "b", "c"], run_dir)] == ["done", "done", "done"]


def test_a_model_folder_an_older_tempa_left_without_its_record_is_judged_by_its_weights(recipe, tmp_path):
    from tempa.merge.publish import FINAL_RECORD

    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    (run_dir / "c" / "model" / FINAL_RECORD).unlink()
    rows = {row.name: row for row in stage_status(["a", "b", "c"], run_dir)}
    assert [rows[name].state for name in "abc"] == ["done", "done", "damaged"]
    assert "no *.safetensors weights" in rows["c"].note
    shutil.rmtree(run_dir / "b" / "model")
    rows = {row.name: row for row in stage_status(["a", "b", "c"], run_dir)}
    assert rows["b"].state == "damaged" and "b/model: missing" in rows["b"].note


def test_damage_that_keeps_names_and_sizes_is_found_in_weights_and_json_files(recipe, tmp_path):
    """With its record, a stage's folder was judged by names and sizes alone: a weight file zeroed in place, or a
    tokenizer.json / config.json cut short, showed `done`, where the same folder without a record was `damaged` by its
    safetensors header (review of the record)."""
    import torch
    from safetensors.torch import save_file

    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    weights = run_dir / "a" / "model" / "model.safetensors"
    save_file({"w": torch.ones(64)}, str(weights))
    (run_dir / "a" / "model" / "tokenizer.json").write_text('{"version": "1.0", "model": {}}')
    from tempa.merge.publish import write_final_record
    write_final_record(run_dir / "a" / "model")
    assert [row.state for row in stage_status(["a", "b", "c"], run_dir)] == ["done", "done", "done"]

    size = weights.stat().st_size
    weights.write_bytes(b"\0" * size)  # same size, no header
    row = stage_status(["a"], run_dir)[0]
    assert row.state == "damaged" and "model.safetensors: not a whole safetensors file" in row.note
    save_file({"w": torch.ones(64)}, str(weights))
    (run_dir / "a" / "model" / "tokenizer.json").write_text('{"version": "1.0", "mod')  # cut short
    row = stage_status(["a"], run_dir)[0]
    assert row.state == "damaged" and "tokenizer.json: not readable JSON" in row.note
    assert plan_run(load_recipe(recipe), run_dir)[0].action == "rerun"


def test_a_model_folder_moved_to_another_disk_and_linked_back_is_still_judged(recipe, tmp_path):
    """`final/` moved elsewhere and symlinked back was never checked (its real path lies outside the stage's
    folder, read as another stage's model handed on): a weight file deleted there showed `done`."""
    recipe.write_text(recipe.read_text().replace("value: 1,", "value: 1, model_file: true,"))
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    elsewhere = tmp_path / "other-disk" / "a-model"
    elsewhere.parent.mkdir()
    shutil.move(run_dir / "a" / "model", elsewhere)
    (run_dir / "a" / "model").symlink_to(elsewhere)
    assert stage_status(["a"], run_dir)[0].state == "done"
    (elsewhere / "config.json").unlink()
    rows = {row.name: row for row in stage_status(["a", "b", "c"], run_dir)}
    assert [rows[name].state for name in "abc"] == ["damaged", "stale", "stale"]
    assert "config.json: missing" in rows["a"].note


def test_an_edit_of_the_sample_data_names_why_the_tiny_default_changed(tmp_path, monkeypatch):
    """A release trial edited a row of recipes/data/*.jsonl and the plan said only "changed since it ran: base model":
    true (the tiny default's tokenizer is trained on those files) but unexplained."""
    from tempa.recipes import tiny

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nbase_model: tempa:tiny\nstages:\n  - {name: a, kind: touch, value: 1}\n")
    run_recipe(load_recipe(recipe), tmp_path / "run")
    key = tiny.tiny_default_key()
    monkeypatch.setattr(tiny, "tiny_default_key", lambda: key[::-1])  # what an edited sample file gives
    [plan] = plan_run(load_recipe(recipe), tmp_path / "run")
    assert plan.action == "rerun"
    assert plan.reason == ("changed since it ran: base model (the embedded tiny default is built from the sample "
                           "data in recipes/data/)")
