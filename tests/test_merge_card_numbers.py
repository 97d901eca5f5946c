"""The numbers a model card's merge section prints: the share each model got where the method divides the weights by
their sum (weights [2, 1] read as weight=2 / weight=1 of a merge that was 2/3 and 1/3), values set side by side with
the digits that tell them apart, and the best input the selection ranked first."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from stage_helpers import done
from tempa.merge.candidates import model_identity
from tempa.merge.leaderboard import Leaderboard, LeaderboardRow, format_compared
from tempa.merge.merge_config import MergeStageConfig
from tempa.merge.merge_result import MergedModel, MergeResult, MergeSummary, Reevaluation
from tempa.merge.merge_stage import best_input
from tempa.merge.model_card import ModelCardConfig, render_model_card
from tempa.merge.selection import select_top_k
from tempa.sft.stage_api import RecipeInfo

RECIPE = RecipeInfo("t", "tempa:tiny", "llama3_thinking")


def _card(summary: MergeSummary) -> str:
    return render_model_card(ModelCardConfig(), recipe=RECIPE,
                             stages={"merge": done("merge", MergeResult(summary=summary), kind="merge")})


def _summary(tmp_path: Path, method: str, weights: list, parameters: dict | None = None) -> MergeSummary:
    return MergeSummary(method=method, parameters=parameters or {}, models=[
        MergedModel(name=name, path=tmp_path / name, parameters={"weight": weight})
        for name, weight in zip(("sft-b", "sft-c", "sft-d"), weights, strict=False)])


@pytest.mark.parametrize(("method", "parameters"), [("linear", {}), ("multislerp", {})])
def test_the_card_shows_the_share_of_each_weight_where_the_method_divides_by_their_sum(tmp_path, method, parameters):
    card = _card(_summary(tmp_path, method, [2.0, 1.0], parameters))
    assert "- `sft-b` (weight=2; share 0.6667 of the merge)" in card
    assert "- `sft-c` (weight=1; share 0.3333 of the merge)" in card
    assert f"{method} divides the weights by their sum" in card


@pytest.mark.parametrize(("method", "weights", "parameters"), [
    ("linear", [2.0, 1.0], {"normalize": False}),  # used as given
    ("task_arithmetic", [2.0, 1.0], {}),
    ("linear", [[0.0, 1.0], [1.0, 0.0]], {}),  # layer gradients: no one share per model
])
def test_the_card_shows_no_share_where_the_weights_are_used_as_given(tmp_path, method, weights, parameters):
    card = _card(_summary(tmp_path, method, weights, parameters))
    assert "share" not in card


def test_the_weights_field_says_which_methods_divide_them_by_their_sum():
    text = MergeStageConfig.model_fields["weights"].description
    assert "divide them by their sum" in text and "[2, 1] merges 2/3 and 1/3" in text


# Values a card and a merge's note set side by side: "scored 6.593 ... did not improve on its best input (..., 6.593)"
# hid 6.592819 against 6.592697.
@pytest.mark.parametrize(("values", "shown"), [
    ((6.592819, 6.592697), ["6.5928", "6.5927"]),
    ((6.592819, 6.592819, 6.585), ["6.593", "6.593", "6.585"]),  # equal values need no more digits
    ((0.5, 0.5000001), ["0.5", "0.5000001"]),
    ((1.0, math.nan, None), ["1", "null", "–"]),
])
def test_compared_values_print_with_the_digits_that_tell_them_apart(values, shown):
    assert format_compared(*values) == shown


def test_the_card_prints_a_merge_and_its_best_input_apart_when_they_differ(tmp_path):
    summary = _summary(tmp_path, "linear", [1.0, 1.0])
    summary.reevaluation = Reevaluation(metric="heldout/loss", merged=6.592819, best_input=6.592697, helped=False,
                                        best_input_name="sft-b")
    card = _card(summary)
    assert "The merge scored 6.5928 on `heldout/loss` and did not improve on its best input (`sft-b`, 6.5927)." in card


def test_the_best_input_of_tied_inputs_is_the_one_the_selection_ranked_first(tmp_path):
    # every input at 0 on the select metric: the selection ranked sft-c first (the board's order, by its loss), and the
    # card named sft-b, the first scored
    board = Leaderboard(rows=[
        LeaderboardRow(candidate="sft-b", path=tmp_path / "b", metrics={"acc/accuracy": 0.0, "heldout/loss": 2.0}),
        LeaderboardRow(candidate="sft-c", path=tmp_path / "c", metrics={"acc/accuracy": 0.0, "heldout/loss": 1.0}),
        LeaderboardRow(candidate="sft-d", path=tmp_path / "d", metrics={"acc/accuracy": math.nan, "heldout/loss": 0.5}),
    ], rank_by="heldout/loss")
    inputs = {model_identity(tmp_path / name) for name in "bcd"}
    best = best_input(board, "acc/accuracy", inputs)
    assert best is not None and best.candidate == "sft-c"
    assert best is select_top_k(board, "acc/accuracy", 2)[0]
    assert best_input(board, "heldout/loss", inputs).candidate == "sft-d"
    assert best_input(board, "wr/win_rate", inputs) is None
