"""Numbers as Japanese, Chinese, Thai and Vietnamese replies write them: the preference/rl `answer` reward and the
evaluate stage's accuracy suite read the same value from the same reply (one reader, alignment/numbers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tempa.alignment.completions import Completion
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import AnswerReward, RewardSet, ScoreItem, ScoringEnv
from tempa.merge.answers import answer_matches


def reward(language: str | None, reference: object, reply: str) -> float | None:
    """The `answer` reward of one reply, through the reward set the preference and rl stages score with."""
    row = PromptRow(id="p", messages=[{"role": "user", "content": "?"}], language=language, answer=reference,
                    thinking_mode="off")
    item = ScoreItem(row, Completion(text=reply, prefill="<think>\n</think>\n", finish_reason="stop"))
    scores = RewardSet([AnswerReward()], ScoringEnv(policy_dir=Path("."), tokenizer_dir=Path("."))).score([item])
    return scores[0]["scores"]["answer"]


def assert_both(language: str | None, reply: str, expected: object, verdict: bool) -> None:
    assert (reward(language, expected, reply) == 1.0) is verdict, f"reward: {reply!r} vs {expected!r}"
    assert answer_matches(reply, expected, language=language) is verdict, f"accuracy: {reply!r} vs {expected!r}"


@pytest.mark.parametrize(("language", "reply", "value"), [
    ("ja", "答えは－５", -5),  # a full-width minus glued to kana: the reward found no number at all
    ("ja", "答えは－５です。", -5),
    ("ja", "合計は－１２．５です。", -12.5),
    ("ja", "答えは−5です", -5),  # the typeset minus sign (U+2212)
    ("en", "The answer is −5", -5),  # math-verify reads no number in "−5", in any language
    ("zh", "所以答案是-3。", -3),
])
def test_a_minus_sign_as_typed_keeps_its_sign_in_both_readers(language, reply, value):
    assert_both(language, reply, value, True)
    assert_both(language, reply, -value, False)
    assert_both(language, reply, str(value), True)  # a reference read from text, as a data file writes it
