"""The `synthesize` stage's recipe block: a teacher, verifiers/judges, a selection rule, optional second turns.

Example (YAML; Swallow v0.3's recipe: n=6, judge rejection sampling, second turns kept at >= 9)::

    - name: distill
      kind: synthesize
      prompts: {path: data/prompts_ja.jsonl}
      teacher: {type: http, base_url: http://127.0.0.1:8000/v1, model: gemma-2-27b-it}
      sampling: {n: 6, temperature: 0.7, max_new_tokens: 2048, thinking: {mode: "off"}}
      rewards:
        - {type: judge, backend: {type: http, base_url: http://127.0.0.1:8000/v1, model: gemma-2-27b-it}}
      select: {strategy: best, by: judge}
      second_turn:
        select: {strategy: best, by: judge, min_score: 9}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tempa.alignment.backends import BackendConfig, TransformersBackendConfig, backend_reads
from tempa.alignment.judge import FOLLOWUP_PROMPT, text_or_file
from tempa.alignment.preference_config import SamplingSettings
from tempa.alignment.prompts import PromptSource
from tempa.alignment.rewards import RewardConfig, check_reward_names, judge_reads
from tempa.sft.stage_api import Read, StageConfigBase

OUTPUT_FILE = "data/synthesized.jsonl"


class SelectSettings(BaseModel):
    """Which scored samples of a prompt are kept."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["best", "all"] = Field(
        default="best",
        description="`best`: the prompt's best sample, if it reaches `min_score`; `all`: every sample reaching "
        "`min_score` (several rows per prompt).",
    )
    by: str = Field(default="total", description="The score compared: `total` (weighted sum) or a reward's name.")
    min_score: float | None = Field(
        default=None, description="Keep samples scoring at least this (inclusive). Unset: `best` keeps the best "
        "sample whatever its score; `all` requires it.",
    )

    @model_validator(mode="after")
    def _threshold(self) -> SelectSettings:
        if self.strategy == "all" and self.min_score is None:
            raise ValueError("select strategy 'all' needs min_score")
        return self


class SecondTurnSettings(BaseModel):
    """Multi-turn synthesis: the teacher writes a follow-up user turn, answers it, the answer is judged."""

    model_config = ConfigDict(extra="forbid")

    followup_backend: BackendConfig | None = Field(
        default=None, description="Who writes the follow-up user message. Default: the teacher."
    )
    followup_prompt: str = Field(
        default=FOLLOWUP_PROMPT,
        description="Instruction (text or a .txt path) for writing the follow-up, with {conversation} and "
        "{language} placeholders; the reply (think block removed) is the second user turn.",
    )
    followup_max_new_tokens: int = Field(default=256, ge=1, description="Budget of a follow-up message.")
    followup_temperature: float = Field(default=0.7, ge=0, description="Temperature for follow-up messages.")
    n: int = Field(default=1, ge=1, description="Second-turn answers sampled per conversation (Swallow: 1).")
    rewards: list[RewardConfig] | None = Field(
        default=None, description="How second answers are scored. Default: the stage's rewards."
    )
    select: SelectSettings = Field(
        default_factory=SelectSettings,
        description="Which second answer is kept (e.g. by: judge, min_score: 9); one per conversation, the best "
        "that passes, whatever the strategy.",
    )
    on_reject: Literal["drop_turn", "drop_conversation"] = Field(
        default="drop_turn",
        description="When no second answer is kept: `drop_turn` keeps the one-turn conversation (the rejected "
        "follow-up instruction goes with its answer), `drop_conversation` drops the whole row.",
    )

    @field_validator("followup_prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        return text_or_file(value, info)

    @field_validator("rewards")
    @classmethod
    def _rewards(cls, value: list[Any] | None) -> list[Any] | None:
        return None if value is None else check_reward_names(value)


def _check_by(select: SelectSettings, rewards: list[Any], where: str) -> None:
    names = [r.key for r in rewards]
    if select.by != "total" and select.by not in names:
        raise ValueError(f"{where}.by: {select.by!r} is neither 'total' nor a reward name ({', '.join(names)})")


class SynthesizeStageConfig(StageConfigBase):
    """Teacher distillation with rejection sampling: n responses (with reasoning) per prompt, scored by
    verifiers and judges, the best (or every passing) one kept, written as an SFT dataset with scores
    and provenance at `<stage>/data/synthesized.jsonl`."""

    kind: Literal["synthesize"] = "synthesize"
    prompts: PromptSource = Field(description="The prompts the teacher answers.")
    teacher: BackendConfig = Field(
        default_factory=TransformersBackendConfig,
        description="The teacher: `{type: transformers|vllm|http, ...}`. Default: the model this stage starts from.",
    )
    sampling: SamplingSettings = Field(
        default_factory=dict, validate_default=True,  # an unwritten block still gets the recipe's thinking mode
        description="Teacher sampling: n per prompt, temperature, thinking mode.",
    )
    rewards: list[RewardConfig] = Field(min_length=1, description="Verifiers and judges scoring each response.")
    select: SelectSettings = Field(default_factory=SelectSettings, description="Which responses are kept.")
    keep_incomplete: bool = Field(
        default=False,
        description="Also select responses cut off at max_new_tokens or with an empty answer (an unclosed think "
        "block has none). Off: such responses are never kept, whatever their score. A cut-off response scores 0 on "
        "an `answer` reward either way.",
    )
    second_turn: SecondTurnSettings | None = Field(
        default=None, description="Add a judged second turn to every kept conversation (Swallow v0.3)."
    )

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_shape(cls, value: Any) -> Any:
        # translate and generate_prompts nest the backend under `teacher.backend`, with sampling settings beside it;
        # the Swallow recipe uses both shapes, so a recipe written from one of them meets the other here.
        if not isinstance(value, dict):
            return value
        misplaced = [key for key in SamplingSettings.model_fields if key in value]
        if "backend" in value and "type" not in value:
            backend = value["backend"]
            moved = f"; {', '.join(f'`{k}`' for k in misplaced)} goes under `sampling:`" if misplaced else ""
            raise ValueError("a synthesize stage's teacher is the backend block itself: teacher: {type: "
                             f"{backend.get('type', 'http') if isinstance(backend, dict) else 'http'}, ...}}{moved} (translate and "
                             "generate_prompts nest it under `teacher.backend`)")
        if misplaced:
            raise ValueError(f"{', '.join(f'`{k}`' for k in misplaced)} goes under `sampling:` (the teacher block "
                             "is the backend only)")
        return value

    @field_validator("rewards")
    @classmethod
    def _rewards(cls, value: list[Any]) -> list[Any]:
        return check_reward_names(value)

    @model_validator(mode="after")
    def _select_by(self) -> SynthesizeStageConfig:
        _check_by(self.select, self.rewards, "select")
        if self.second_turn is not None:
            _check_by(self.second_turn.select, self.second_turn.rewards or self.rewards, "second_turn.select")
        return self

    def reads(self, earlier: Sequence[str]) -> list[Read]:
        """Earlier stages whose models the teacher, the follow-up writer or a judge name as `stage:NAME`, and
        the stage whose dataset `prompts.path: stage:NAME` reads."""
        reads = (backend_reads(self.teacher, ("teacher",)) + judge_reads(self.rewards, ("rewards",))
                 + self.prompts.reads(("prompts",)))
        if self.second_turn is not None:
            reads += backend_reads(self.second_turn.followup_backend, ("second_turn", "followup_backend"))
            reads += judge_reads(self.second_turn.rewards or [], ("second_turn", "rewards"))
        return reads
