"""A merge's top-k selection when candidates tie at the cut: chosen by leaderboard order, and said so."""

from __future__ import annotations

import logging

from tempa.merge.leaderboard import Leaderboard, LeaderboardRow
from tempa.merge.selection import select_top_k


def _board(values: list[float]) -> Leaderboard:
    return Leaderboard(rows=[LeaderboardRow(candidate=f"align/checkpoint-{2 * (i + 1)}", path=f"/c{i}",
                                            metrics={"math/accuracy": v}) for i, v in enumerate(values)])


def test_a_tie_at_the_top_k_cut_is_named_in_a_warning(caplog):
    # Every candidate at accuracy 0 (all cut off while thinking): top_k 2 merged the first two scored, silently.
    with caplog.at_level(logging.WARNING, logger="tempa"):
        chosen = select_top_k(_board([0.0, 0.0, 0.0]), "math/accuracy", 2)
    assert [row.candidate for row in chosen] == ["align/checkpoint-2", "align/checkpoint-4"]  # leaderboard order
    (record,) = caplog.records
    assert record.getMessage() == (
        "select: math/accuracy ties at the top_k=2 cut (0.0000): align/checkpoint-4 chosen over align/checkpoint-6 "
        "by leaderboard order, not by the metric")


def test_no_warning_when_the_cut_falls_between_different_values(caplog):
    with caplog.at_level(logging.WARNING, logger="tempa"):
        chosen = select_top_k(_board([0.5, 0.5, 0.25]), "math/accuracy", 2)  # a tie above the cut changes nothing
    assert [row.candidate for row in chosen] == ["align/checkpoint-2", "align/checkpoint-4"]
    assert caplog.records == []


def test_the_candidates_tied_at_the_cut_are_returned_and_named_on_the_model_card(tmp_path):
    from stage_helpers import done
    from tempa.merge.merge_result import MergedModel, MergeResult, MergeSummary, Selection
    from tempa.merge.model_card import ModelCardConfig, render_model_card
    from tempa.merge.selection import select_top_k_with_ties
    from tempa.sft.stage_api import RecipeInfo

    # 0.5, then three at 0.25 for the second place: the metric chose checkpoint-2 only
    chosen, tied = select_top_k_with_ties(_board([0.5, 0.25, 0.25, 0.25]), "math/accuracy", 2)
    assert [row.candidate for row in chosen] == ["align/checkpoint-2", "align/checkpoint-4"]
    assert [row.candidate for row in tied] == ["align/checkpoint-6", "align/checkpoint-8"]
    assert select_top_k_with_ties(_board([0.5, 0.5, 0.25]), "math/accuracy", 2)[1] == []

    summary = MergeSummary(method="ties", models=[MergedModel(name="align/checkpoint-2", path=tmp_path / "a"),
                                                  MergedModel(name="align/checkpoint-4", path=tmp_path / "b")],
                           selection=Selection(evaluate_stage="evaluate", metric="math/accuracy", top_k=2,
                                               values={"align/checkpoint-2": 0.5, "align/checkpoint-4": 0.25},
                                               tied={"align/checkpoint-6": 0.25, "align/checkpoint-8": 0.25}))
    card = render_model_card(ModelCardConfig(), recipe=RecipeInfo("t", "tempa:tiny", "llama3_thinking"),
                             stages={"merge": done("merge", MergeResult(summary=summary), kind="merge")})
    assert ("Chosen as the top 2 of `evaluate` by `math/accuracy`: align/checkpoint-2 = 0.5, align/checkpoint-4 = "
            "0.25; tied at the cut and left out by leaderboard order, not by the metric: align/checkpoint-6 = 0.25, "
            "align/checkpoint-8 = 0.25") in card


def test_a_tie_at_the_top_is_in_the_leaderboard_note_and_the_report():
    from types import SimpleNamespace

    from tempa.merge.leaderboard import EvaluateResult
    from tempa.recipes.report import leaderboard_section

    board = Leaderboard(rows=_board([1.0, 0.5, 1.0]).rows, rank_by="math/accuracy")
    note = ("Tied at the top on `math/accuracy` (1.0000): align/checkpoint-2, align/checkpoint-6; align/checkpoint-2 "
            "is first by scoring order, not by the metric.")
    assert board.tie_note() == note and note in board.to_markdown()
    section = leaderboard_section([(SimpleNamespace(name="evaluate"), EvaluateResult(leaderboard=board))])
    assert "Tied at the top on `math/accuracy` (1.0000): align/checkpoint-2, align/checkpoint-6" in section
    untied = Leaderboard(rows=_board([1.0, 0.5]).rows, rank_by="math/accuracy")
    assert untied.tie_note() is None and "Tied" not in untied.to_markdown()
