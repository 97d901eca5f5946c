"""The leaderboard's columns stay grouped by suite whichever candidate was scored first."""

from __future__ import annotations

from tempa.merge.leaderboard import Leaderboard, LeaderboardRow, format_value


def test_a_metric_the_first_candidates_lacked_stays_beside_its_suite():
    # The demo's aligned checkpoints answered in no detected language (no language_share); the SFT ones did, and
    # were scored after them: the column landed after every other suite's.
    first = {"heldout/loss": 5.6, "language/accuracy": 0.0, "thinking/compliance": 0.5}
    later = {"heldout/loss": 5.5, "language/accuracy": 0.0, "language/language_share": 1.0, "thinking/compliance": 0.5}
    board = Leaderboard(rows=[LeaderboardRow(candidate="align/checkpoint-2", path="/a", metrics=first),
                              LeaderboardRow(candidate="sft", path="/b", metrics=later)], rank_by="heldout/loss")
    assert board.metric_names == ["heldout/loss", "language/accuracy", "language/language_share",
                                  "thinking/compliance"]
    header = next(line for line in board.to_markdown().splitlines() if line.startswith("| model"))
    assert header.index("language/language_share") < header.index("thinking/compliance"), header


def test_a_step_column_is_shown_only_where_a_model_has_a_step():
    # A model card's table of final models (a merge, the baked model) had an empty `step` column.
    def table(*steps: int | None) -> list[list[str]]:
        rows = [LeaderboardRow(candidate=f"m{i}", path=f"/{i}", step=step, metrics={"heldout/loss": 5.0 + i})
                for i, step in enumerate(steps)]
        lines = [line for line in Leaderboard(rows=rows, rank_by="heldout/loss").to_markdown().splitlines()
                 if line.startswith("|")]
        return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]

    five, six = format_value(5.0), format_value(6.0)
    assert table(None, None) == [["model", "heldout/loss ↓"], ["---", "---:"], ["m0", f"**{five}**"], ["m1", six]]
    assert table(4, None) == [["model", "step", "heldout/loss ↓"], ["---", "---:", "---:"], ["m0", "4", f"**{five}**"],
                              ["m1", "", six]]
