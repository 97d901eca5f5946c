"""What a merge stage hands on: the merged model, what went into it and why, and whether it helped."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tempa.merge.leaderboard import Leaderboard, MetricValue
from tempa.sft.stage_api import RunPath, StageResult

# The name a merge gives the recipe's base model when it merges onto it (the card names the model instead).
RECIPE_BASE = "base model"


class MergedModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: RunPath
    parameters: dict[str, Any] = Field(default_factory=dict, description="Per-model mergekit parameters.")


class Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    evaluate_stage: str
    metric: str
    top_k: int
    values: dict[str, MetricValue] = Field(description="The chosen candidates' values of the metric.")
    tied: dict[str, MetricValue] = Field(default_factory=dict, description=(
        "Candidates left out with the last chosen one's very value (a tie at the top_k cut: leaderboard order "
        "chose, not the metric), and that value."))
    base: str | None = Field(default=None, description=(
        "The candidate of the board that is the merge's base, left out of the top_k as the base (a task-vector "
        "merge's base is no pick); None where the board did not score the base."))
    base_value: float | None = Field(default=None, description="The base's value of the metric (None: it has none).")


class Reevaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str
    merged: MetricValue
    best_input: MetricValue
    helped: bool = Field(description="Whether the merge scored better than its best input.")
    best_input_name: str | None = None
    base: str | None = Field(default=None, description=(
        "The candidate of the board that is the merge's base (merged onto, not one of the inputs), where the board "
        "scored it on the metric; None otherwise."))
    base_value: float | None = None
    beat_base: bool | None = Field(default=None, description="Whether the merge scored better than its base.")


class MergeSummary(BaseModel):
    """What was merged, how, why these models, and whether it helped."""

    model_config = ConfigDict(extra="forbid")

    method: str
    models: list[MergedModel]
    base_model: MergedModel | None = None
    parameters: dict[str, Any] = Field(default_factory=dict, description="Method-level mergekit parameters.")
    selection: Selection | None = None
    reevaluation: Reevaluation | None = None


class MergeResult(StageResult):
    """A merge stage's result: the merged model, the summary, and the leaderboard with the merge on it."""

    summary: MergeSummary
    leaderboard: Leaderboard | None = None

    def model_origin(self) -> str | None:
        return f"a {self.summary.method} merge of {', '.join(m.name for m in self.summary.models)}"
