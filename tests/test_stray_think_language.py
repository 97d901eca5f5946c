"""A think block the model opens after the template's block is reasoning: the language reward and the language
suite judge the answer without it, as the answer reward and the accuracy suite read the answer
(:func:`tempa.chat_templates.thinking.outside_think`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tempa.alignment.completions import Completion
from tempa.alignment.generation import GenerationBackend
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import LanguageReward, RewardSet, ScoreItem, ScoringEnv
from tempa.chat_templates.thinking import THINK_CLOSE, THINK_OPEN
from tempa.merge.evaluate_config import EvalGeneration, LanguageSuite
from tempa.merge.suites import CandidateScorer

OFF = f"{THINK_OPEN}\n{THINK_CLOSE}\n"  # what llama3_thinking pre-fills with thinking off
ENGLISH = ("Let me think about this carefully in English first: the shop had twenty apples in the morning and "
           "sold five of them before noon, so fifteen apples remain on the shelf for the afternoon customers.")
INDONESIAN = "Jadi masih ada lima belas buah apel di rak toko itu."
STRAY = f"{THINK_OPEN}\n{ENGLISH}\n{THINK_CLOSE}\n\n{INDONESIAN}"


def language_score(text: str, finish_reason: str = "stop") -> float | None:
    row = PromptRow(id="p", messages=[{"role": "user", "content": "Berapa apel yang tersisa?"}], language="id",
                    thinking_mode="off")
    rewards = RewardSet([LanguageReward()], ScoringEnv(policy_dir=Path("."), tokenizer_dir=Path(".")))
    item = ScoreItem(row, Completion(text=text, prefill=OFF, finish_reason=finish_reason))
    return rewards.score([item])[0]["scores"]["language"]


def test_the_language_reward_judges_the_answer_not_a_think_block_opened_after_the_templates():
    assert language_score(INDONESIAN) == 1.0
    assert language_score(f"{ENGLISH}\n\n{INDONESIAN}") == 0.0  # English prose in the answer still counts
    assert language_score(STRAY) == 1.0


def test_a_reply_cut_off_inside_such_a_block_has_no_answer_to_judge():
    assert language_score(f"{THINK_OPEN}\n{ENGLISH}", finish_reason="length") is None


class Replies(GenerationBackend):
    def generate(self, prompts, params, *, thinking_modes=None):
        return [[STRAY] for _ in prompts]


def test_the_language_suite_judges_the_answer_not_a_think_block_opened_after_the_templates(tmp_path, tokenizer_dir):
    rows = [{"prompt": "Berapa apel yang tersisa?", "language": "id"}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    suite = LanguageSuite.model_validate({"type": "language", "data": str(data), "thinking_mode": "off"})
    scorer = CandidateScorer(Replies(), AutoTokenizer.from_pretrained(tokenizer_dir), EvalGeneration())
    scores = scorer.run(suite, rows)
    assert scores["language_share"] == pytest.approx(1.0)
