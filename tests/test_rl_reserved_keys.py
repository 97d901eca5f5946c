"""A train key the rl stage sets itself is refused saying what decides it: reward_weights come from each reward's
`weight` (the refusal said "the stage folder and launch decide it", which sent users looking in the wrong place)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tempa.alignment.rl_config import RLStageConfig

PROMPTS = str(Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl")


def refusal(train: dict) -> str:
    with pytest.raises(ValidationError) as info:
        RLStageConfig.model_validate({"name": "rl", "prompts": {"path": PROMPTS},
                                      "rewards": [{"type": "answer"}, {"type": "format", "weight": 0.25}],
                                      "train": train})
    (error,) = info.value.errors()
    return error["msg"]


def test_reward_weights_are_refused_as_set_by_each_rewards_weight():
    message = refusal({"reward_weights": [1.0, 0.5]})
    assert "'reward_weights' is set by tempa (each reward's `weight` in rewards decides it); remove it" in message
    assert "stage folder" not in message


def test_the_template_kwargs_are_refused_as_set_by_the_thinking_mode():
    message = refusal({"chat_template_kwargs": {"enable_thinking": True}})
    assert "each prompt's thinking mode decides it" in message


def test_the_output_folder_is_still_the_stage_folders():
    assert "'output_dir' is set by tempa (the stage folder and launch decide it)" in refusal({"output_dir": "/tmp/x"})
