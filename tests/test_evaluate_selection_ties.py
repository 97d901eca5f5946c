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
