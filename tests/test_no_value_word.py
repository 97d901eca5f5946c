"""A metric with no value is `null` in leaderboard.json (README, "Leaderboard candidates"): leaderboard.md and the
model card print the same word, where they printed `nan`."""

from __future__ import annotations

import json
import math
import re

from stage_helpers import done
from tempa.merge.leaderboard import EvaluateResult, Leaderboard, LeaderboardRow
from tempa.merge.model_card import ModelCardConfig, render_model_card
from tempa.sft.stage_api import RecipeInfo, StageResult


def _board() -> Leaderboard:
    rows = [LeaderboardRow(candidate="sft/checkpoint-2", path="/x/a", metrics={"mt/win_rate": 0.5}),
            LeaderboardRow(candidate="sft/checkpoint-4", path="/x/b", metrics={"mt/win_rate": math.nan})]
    return Leaderboard(rows=rows, rank_by="mt/win_rate")


def test_leaderboard_md_prints_a_metric_without_a_value_as_the_json_holds_it():
    board = _board()
    assert json.loads(json.dumps(board.to_json()))["rows"][1]["metrics"]["mt/win_rate"] is None
    row = next(line for line in board.to_markdown().splitlines() if line.startswith("| sft/checkpoint-4"))
    assert row.split("|")[-2].strip() == "null"


def test_the_model_card_prints_null_not_nan():
    stages = {"sft": done("sft", StageResult(metrics={"eval_loss": math.nan, "train_loss": 1.5})),
              "evaluate": done("evaluate", EvaluateResult(leaderboard=_board()), kind="evaluate")}
    card = render_model_card(ModelCardConfig(), recipe=RecipeInfo("t", "tempa:tiny", "llama3_thinking"), stages=stages)
    assert "eval_loss=null" in card and "| sft/checkpoint-4 | null |" in card
    assert re.search(r"\bnan\b", card) is None
