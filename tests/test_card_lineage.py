"""The model card tells the stages the shipped model descends from apart from the run's other stages: the Swallow
trial shipped merge-linear, and the card described all twelve merges alike, each "Chosen as the top 2 of
`evaluate`", so a reader took dare_ties, karcher and the rest for part of the model."""

from __future__ import annotations

from pathlib import Path

from stage_helpers import done
from tempa.merge.leaderboard import EvaluateResult, Leaderboard, LeaderboardRow
from tempa.merge.merge_result import MergedModel, MergeResult, MergeSummary, Selection
from tempa.merge.model_card import ModelCardConfig, lineage, render_model_card
from tempa.sft.stage_api import Checkpoint, RecipeInfo, StageConfigBase, StageResult, Upstream

RECIPE = RecipeInfo("swallow-ja-tiny", "tempa:tiny", "llama3_thinking")


def merge(run: Path, name: str, method: str, *inputs: tuple[str, Path], chosen_by: str | None = "evaluate") -> Upstream:
    selection = None if chosen_by is None else Selection(evaluate_stage=chosen_by, metric="heldout/loss", top_k=2,
                                                         values={label: 1.0 for label, _ in inputs})
    summary = MergeSummary(method=method, models=[MergedModel(name=label, path=path) for label, path in inputs],
                           selection=selection)
    return done(name, MergeResult(model=run / name / "final", summary=summary), kind="merge")


def swallow_run(run: Path) -> dict[str, Upstream]:
    """sft (a checkpoint and its final model), a side sft started from it, an evaluation of both, the merge that
    ships (of sft's two models) and two side merges (of the side sft)."""
    sft = done("sft", StageResult(model=run / "sft" / "final",
                                  checkpoints=[Checkpoint(step=20, path=run / "sft" / "checkpoints" / "checkpoint-20")]))
    side = done("sft-more", StageResult(model=run / "sft-more" / "final"),
                config=StageConfigBase.model_validate({"kind": "sft", "name": "sft-more", "from": "sft"}))
    board = Leaderboard(rows=[LeaderboardRow(candidate="sft", path=run / "sft" / "final", metrics={"heldout/loss": 1.0})],
                        rank_by="heldout/loss")
    evaluate = done("evaluate", EvaluateResult(leaderboard=board), kind="evaluate")
    stages = [sft, side, evaluate,
              merge(run, "merge-linear", "linear", ("sft", run / "sft" / "final"),
                    ("sft/checkpoint-20", run / "sft" / "checkpoints" / "checkpoint-20")),
              merge(run, "merge-ties", "ties", ("sft", run / "sft" / "final"), ("sft-more", run / "sft-more" / "final")),
              merge(run, "merge-dare", "dare_ties", ("sft-more", run / "sft-more" / "final"),
                    ("sft", run / "sft" / "final"))]
    return {stage.name: stage for stage in stages}


def test_the_card_describes_the_shipped_merge_and_names_the_others_as_not_in_the_model(tmp_path):
    stages = swallow_run(tmp_path)
    card = render_model_card(ModelCardConfig(), recipe=RECIPE, stages=stages, weights_from="merge-linear")
    merge_section = card.split("## Merge\n", 1)[1].split("\n## ", 1)[0]
    assert "Stage `merge-linear` (the model in this folder): **linear** merge of:" in merge_section
    assert "Stage `merge-ties`" not in merge_section and "Stage `merge-dare`" not in merge_section
    assert merge_section.count("Chosen as the top 2 of `evaluate`") == 1
    assert "Other merges of the run, not in this model: `merge-ties` (ties), `merge-dare` (dare_ties)" in merge_section
    stages_section = card.split("## Stages\n", 1)[1].split("\n## ", 1)[0]
    ours, others = stages_section.split("Other stages of the run, not in this model")
    assert "The stages the model in this folder descends from:" in ours
    for name in ("sft", "evaluate", "merge-linear"):
        assert f"\n| {name} |" in ours and f"\n| {name} |" not in others, name
    for name in ("sft-more", "merge-ties", "merge-dare"):
        assert f"\n| {name} |" in others and f"\n| {name} |" not in ours, name


def test_a_merge_of_merges_descends_from_each_and_what_they_merged(tmp_path):
    stages = swallow_run(tmp_path)
    stages["merge-final"] = merge(tmp_path, "merge-final", "slerp", ("merge-ties", tmp_path / "merge-ties" / "final"),
                                  ("merge-dare", tmp_path / "merge-dare" / "final"), chosen_by=None)
    # the evaluation that chose their inputs too; not merge-linear, which it also chose for
    assert lineage(stages, "merge-final") == {"merge-final", "merge-ties", "merge-dare", "sft", "sft-more", "evaluate"}
    card = render_model_card(ModelCardConfig(), recipe=RECIPE, stages=stages, weights_from="merge-final")
    assert "Stage `merge-final` (the model in this folder): **slerp** merge of:" in card
    assert "Stage `merge-ties`: **ties** merge of:" in card
    assert "Other merges of the run, not in this model: `merge-linear` (linear)" in card


def test_a_model_started_from_an_evaluation_descends_from_what_it_evaluated_from(tmp_path):
    """An evaluation hands on the model it started from: a stage after it descends from that model's stage, not from
    every candidate the evaluation scored."""
    stages = swallow_run(tmp_path)
    stages["polish"] = done("polish", StageResult(model=tmp_path / "polish" / "final"),
                            config=StageConfigBase.model_validate({"kind": "sft", "name": "polish", "from": "evaluate"}))
    stages["evaluate"] = done("evaluate", stages["evaluate"].result, kind="evaluate",
                              config=StageConfigBase.model_validate({"kind": "evaluate", "name": "evaluate",
                                                                     "from": "sft-more"}))
    assert lineage(stages, "polish") == {"polish", "evaluate", "sft-more", "sft"}
    # the default start is the stage before it
    stages["after"] = done("after", StageResult(model=tmp_path / "after" / "final"))
    assert lineage(stages, "after") == {"after", "polish", "evaluate", "sft-more", "sft"}


def test_a_card_of_the_base_models_weights_puts_every_stage_outside_the_model(tmp_path):
    stages = swallow_run(tmp_path)
    card = render_model_card(ModelCardConfig(), recipe=RECIPE, stages=stages, weights_from=None)
    assert "Stages of the run, not in this model" in card and "descends from" not in card
    assert "Merges of the run, not in this model: `merge-linear` (linear), `merge-ties` (ties)" in card
    assert "Chosen as the top" not in card
