"""A metric with no value (a win rate without a parsed verdict) is `null` in what a stage saves (README, "Leaderboard
candidates"), and every stage kind's result reads back with it: the runner re-reads a finished stage's result on the
next run, on a resume and for `tempa report`, and a null that did not read back stopped all of them."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tempa.merge.leaderboard import EvaluateResult, Leaderboard, LeaderboardRow
from tempa.merge.merge_result import MergedModel, MergeResult, MergeSummary, Reevaluation, Selection
from tempa.recipes.cli import main
from tempa.recipes.registry import stage_kinds
from tempa.recipes.rundir import Manifest, read_manifest
from tempa.sft.stage_api import StageConfigBase, StageResult

NAN = math.nan


def _board(run_dir: Path) -> Leaderboard:
    return Leaderboard(rows=[
        LeaderboardRow(candidate="a", path=run_dir / "a" / "final", stage="a",
                       metrics={"wr/win_rate": NAN, "wr/rows": 0.0, "heldout/loss": 1.5}),
        LeaderboardRow(candidate="b", path=run_dir / "b" / "final", stage="b",
                       metrics={"wr/win_rate": 0.5, "wr/rows": 2.0, "heldout/loss": NAN}),
    ], rank_by="wr/win_rate")


def _read_back(result: StageResult, kind: str, run_dir: Path) -> StageResult:
    """``result`` saved in a stage's manifest as the runner saves it, and read back as the next run reads it."""
    stage_dir = run_dir / "stage"
    stage_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(name="stage", kind=kind, fingerprint="f", status="done", started_at=0.0,
                        result=result.model_dump(mode="json", context={"run_dir": run_dir}))
    manifest.write(stage_dir, run_dir)
    json.loads((stage_dir / "manifest.json").read_text(), parse_constant=lambda bare: _fail(bare))
    read = read_manifest(stage_dir)
    assert read is not None
    return read.upstream(stage_kinds()[kind].result, StageConfigBase(kind=kind, name="stage"), run_dir).result


def _fail(bare: str) -> None:
    raise AssertionError(f"the manifest holds a bare {bare}, which JSON readers other than Python refuse")


def test_an_evaluate_result_with_a_metric_without_value_reads_back(tmp_path):
    back = _read_back(EvaluateResult(leaderboard=_board(tmp_path), metrics={"candidates": 2}), "evaluate", tmp_path)
    assert isinstance(back, EvaluateResult)
    rows = {row.candidate: row.metrics for row in back.leaderboard.rows}
    assert math.isnan(rows["a"]["wr/win_rate"]) and rows["b"]["wr/win_rate"] == 0.5
    assert math.isnan(rows["b"]["heldout/loss"])
    assert back.leaderboard.best().candidate == "b"  # still no value: ranked last


def test_a_merge_result_with_metrics_without_value_reads_back(tmp_path):
    summary = MergeSummary(
        method="linear", models=[MergedModel(name="a", path=tmp_path / "a" / "final"),
                                 MergedModel(name="b", path=tmp_path / "b" / "final")],
        selection=Selection(evaluate_stage="evaluate", metric="wr/win_rate", top_k=2,
                            values={"a": NAN, "b": 0.5}, tied={"c": NAN}, base="d", base_value=None),
        reevaluation=Reevaluation(metric="wr/win_rate", merged=NAN, best_input=NAN, helped=False,
                                  best_input_name="b", base_value=None))
    result = MergeResult(model=tmp_path / "merge" / "final", summary=summary, leaderboard=_board(tmp_path),
                         metrics={"models_merged": 2, "merged/wr/win_rate": NAN, "best_input": NAN})
    back = _read_back(result, "merge", tmp_path)
    assert isinstance(back, MergeResult)
    assert math.isnan(back.summary.selection.values["a"]) and back.summary.selection.values["b"] == 0.5
    assert math.isnan(back.summary.selection.tied["c"])
    assert math.isnan(back.summary.reevaluation.merged) and math.isnan(back.summary.reevaluation.best_input)
    assert math.isnan(back.leaderboard.rows[0].metrics["wr/win_rate"])
    assert back.metrics["merged/wr/win_rate"] is None and back.metrics["models_merged"] == 2


def test_every_kinds_headline_metrics_read_back_without_a_value(tmp_path):
    """The headline metrics of every kind (an eval loss of no held-out row): null reads back as none, for a kind that
    keeps them as the base result does; none narrows them to numbers, which a null would not read back as."""
    checked = 0
    for name, kind in stage_kinds().items():
        assert kind.result.model_fields["metrics"].annotation == StageResult.model_fields["metrics"].annotation, name
        if any(info.is_required() for info in kind.result.model_fields.values()):
            continue  # the evaluate and merge results are read back above
        back = _read_back(kind.result(metrics={"eval_loss": NAN, "train_loss": 1.5}), name, tmp_path / name)
        assert back.metrics == {"eval_loss": None, "train_loss": 1.5}, name
        checked += 1
    assert checked


RECIPE = """\
name: nm
base_model: {model}
thinking_default: "off"
launch: {{use_cpu: true}}
stages:
  - name: evaluate
    kind: evaluate
    models: [{model}]
    generation: {{max_new_tokens: 4}}
    suites:
      - {{type: win_rate, name: wr, data: wr.jsonl, thinking_mode: "off", baseline: {{type: transformers}},
         judge: {{backend: {{type: transformers}}, max_new_tokens: 2}}, max_unparsable: 1.0}}
"""


def test_a_run_whose_judge_gave_no_verdict_runs_again_and_reports(tmp_path, tiny_model_dir):
    (tmp_path / "wr.jsonl").write_text(json.dumps({"turns": ["Tell me a joke."], "category": "fun"}) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=tiny_model_dir))
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0
    board = json.loads((run_dir / "evaluate" / "leaderboard.json").read_text())
    assert board["rows"][0]["metrics"]["wr/win_rate"] is None  # the tiny judge's two tokens are no verdict
    assert main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0
    assert main(["report", str(run_dir)]) == 0
