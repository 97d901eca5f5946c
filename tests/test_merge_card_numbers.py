"""The numbers a model card's merge section prints: the share each model got where the method divides the weights by
their sum (weights [2, 1] read as weight=2 / weight=1 of a merge that was 2/3 and 1/3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stage_helpers import done
from tempa.merge.merge_config import MergeStageConfig
from tempa.merge.merge_result import MergedModel, MergeResult, MergeSummary
from tempa.merge.model_card import ModelCardConfig, render_model_card
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
