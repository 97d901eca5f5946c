"""A merge opens the models it lists or selects, never a model it starts from: a change of the stage before it in the
recipe (its implicit `from`) neither changes its fingerprint nor makes it stale (a changed held-out file re-ran three
merges of `models: [sft-b, sft-c]` into byte-identical outputs)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from stage_helpers import record_done
from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import plan_run

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}

SFT = "    kind: sft\n    data: {sources: [{name: s, path: sft.jsonl, thinking_mode: 'off'}]}\n"
STAGES = (
    "  - name: sft-a\n" + SFT
    + "  - name: sft-b\n    from: sft-a\n" + SFT
    + "  - name: sft-c\n    from: sft-a\n" + SFT
    + "  - name: evaluate\n    kind: evaluate\n    stages: [sft-a, sft-b, sft-c]\n    rank_by: heldout/loss\n"
      "    suites: [{type: loss, name: heldout, data: heldout.jsonl}]\n"
    + "  - name: merge-linear\n    kind: merge\n    evaluate_stage: evaluate\n"
      "    select: {metric: heldout/loss, top_k: 2}\n"
    + "  - name: merge-ties\n    kind: merge\n    method: ties\n    models: [sft-b, sft-c]\n    base_model: sft-a\n"
      "    reevaluate: false\n"
    + "  - name: merge-slerp\n    kind: merge\n    method: slerp\n    models: [sft-b, sft-c]\n    reevaluate: false\n"
)


def _recipe(tmp_path: Path, stages: str = STAGES) -> Path:
    for name in ("sft", "heldout"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(ROW) + "\n", encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: t\nbase_model: tempa:tiny\nstages:\n" + stages, encoding="utf-8")
    return recipe


def test_a_merge_of_listed_models_stands_when_the_stage_before_it_changes(tmp_path):
    recipe, run_dir = _recipe(tmp_path), tmp_path / "run"
    record_done(run_dir, *plan_run(load_recipe(recipe), run_dir))
    (tmp_path / "heldout.jsonl").write_text(json.dumps(ROW) * 2 + "\n", encoding="utf-8")
    plan = {d.name: d for d in plan_run(load_recipe(recipe), run_dir)}
    assert plan["evaluate"].action == "rerun"
    assert plan["merge-linear"].action == "rerun"  # it merges what the evaluate stage's board selects
    assert (plan["merge-ties"].action, plan["merge-slerp"].action) == ("skip", "skip"), \
        (plan["merge-ties"].reason, plan["merge-slerp"].reason)


def test_a_merge_depends_on_the_stages_it_reads_and_on_no_start_model(tmp_path):
    recipe = _recipe(tmp_path)
    plan = {d.name: d for d in plan_run(load_recipe(recipe), tmp_path / "run")}
    ties, linear = plan["merge-ties"], plan["merge-linear"]
    assert ties.upstream is None and sorted(ties.inputs) == ["sft-a", "sft-b", "sft-c"]
    assert linear.inputs == ["evaluate"]
    # what the merge reads still re-runs it: here a new model of one it merges
    run_dir = tmp_path / "run"
    record_done(run_dir, *plan.values())
    (tmp_path / "sft.jsonl").write_text(json.dumps(ROW) * 3 + "\n", encoding="utf-8")
    again = {d.name: d for d in plan_run(load_recipe(recipe), run_dir)}
    assert again["merge-ties"].action == "rerun" and again["merge-slerp"].action == "rerun"


def test_a_merge_refuses_from(tmp_path):
    stages = STAGES.replace("    method: slerp\n", "    method: slerp\n    from: sft-a\n")
    with pytest.raises(RecipeError, match=r"a merge starts from no model.*to merge .sft-a., name it in .models."):
        load_recipe(_recipe(tmp_path, stages))


def test_the_plan_says_a_merge_starts_from_its_models(tmp_path, capsys):
    """The plan's "starts from" column showed merge-linear's model for merge-ties, a model it never reads."""
    from tempa.recipes.cli import main

    assert main(["plan", str(_recipe(tmp_path)), "--run-dir", str(tmp_path / "run")]) == 0
    rows = {line.split("│")[2].strip(): line.split("│")[4].strip()
            for line in capsys.readouterr().out.splitlines() if line.count("│") > 6}
    assert rows["merge-ties"] == rows["merge-slerp"] == rows["merge-linear"] == "its models"
    assert rows["sft-b"] == "sft-a's model"


def test_a_merge_finished_by_an_earlier_tempa_stands_after_the_upgrade(tmp_path):
    """An earlier tempa counted the stage before a merge (its implicit `from`) in the merge's fingerprint: dropping it
    re-ran every finished merge that does not read that stage, and what is built on it, after the upgrade, naming
    "base model" as the change (review of 2a4bf5b)."""
    from tempa.recipes.rundir import Manifest, mark_done
    from tempa.recipes.runner import _fingerprinted
    from tempa.sft.files import digest

    recipe, run_dir = _recipe(tmp_path), tmp_path / "run"
    plan = plan_run(load_recipe(recipe), run_dir)
    record_done(run_dir, *plan)
    fps = {d.name: d.fingerprint for d in plan}
    # merge-ties as an earlier tempa recorded it: started from merge-linear, the stage before it
    ties = next(d for d in plan if d.name == "merge-ties")
    old = {**ties.components, "upstream": fps["merge-linear"]}
    old_fp = digest(_fingerprinted(old))
    assert old_fp != ties.fingerprint
    Manifest(name=ties.name, kind=ties.kind, fingerprint=old_fp, components=old, status="done", action="run",
             started_at=time.time(), config=ties.config).write(run_dir / ties.name, run_dir)
    mark_done(run_dir / ties.name, old_fp)
    again = {d.name: d for d in plan_run(load_recipe(recipe), run_dir)}
    assert again["merge-ties"].action == "skip", again["merge-ties"].reason
    assert again["merge-ties"].fingerprint == old_fp  # what is built on it recorded this one
    # had the stage before it changed since, the merge would not know what it counted: it re-runs, once
    (tmp_path / "heldout.jsonl").write_text(json.dumps(ROW) * 2 + "\n", encoding="utf-8")
    assert {d.name: d for d in plan_run(load_recipe(recipe), run_dir)}["merge-ties"].action == "rerun"
