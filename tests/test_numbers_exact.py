"""A numeric reference and the number a reply commits to compare exactly when both are exact as written: the
preference/rl `answer` reward and the evaluate stage's accuracy suite (one rule, answer_text.numbers_agree)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tempa.alignment.completions import Completion
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import AnswerReward, RewardSet, ScoreItem, ScoringEnv
from tempa.chat_templates.thinking import PREFILL
from tempa.merge.answers import answer_matches


def reward(language: str | None, reference: object, reply: str) -> float | None:
    row = PromptRow(id="p", messages=[{"role": "user", "content": "?"}], language=language, answer=reference,
                    thinking_mode="off")
    item = ScoreItem(row, Completion(text=reply, prefill=PREFILL["off"], finish_reason="stop"))
    scores = RewardSet([AnswerReward()], ScoringEnv(policy_dir=Path("."), tokenizer_dir=Path("."))).score([item])
    return scores[0]["scores"]["answer"]


def assert_both(language: str | None, reply: str, expected: object, verdict: bool) -> None:
    assert (reward(language, expected, reply) == 1.0) is verdict, f"reward: {reply!r} vs {expected!r}"
    assert answer_matches(reply, expected, language=language) is verdict, f"accuracy: {reply!r} vs {expected!r}"


@pytest.mark.parametrize(("language", "reference", "reply"), [
    ("en", 1000000, "The answer is 1,000,001."),
    ("en", 1000000, "The answer is 1000001."),
    ("en", 20000000, "The answer is 20,000,020."),
    ("en", 999999, "The answer is 1,000,000."),
    ("en", 1234567, "The answer is 1234568."),
    ("en", "1234567", "The answer is 1234568."),
    ("id", "Rp 2.500.000", "Jawabannya adalah Rp 2.500.001."),
    ("vi", 15000000, "Đáp án là 15.000.001 đồng."),
    ("en", 12, r"\boxed{12.000001}"),
    ("en", 1000000, r"\boxed{1000000.5}"),
    ("en", 0.1, "The answer is 0.1000001."),
    ("en", "45%", "The answer is 0.4500001."),
    ("en", 1024, r"\boxed{2^{10} + 1}"),
    ("en", 10000000, r"\boxed{10^{7} + 1}"),
])
def test_an_exact_number_off_by_a_little_is_wrong_in_both_readers(language, reference, reply):
    assert_both(language, reply, reference, False)


@pytest.mark.parametrize(("language", "reference", "reply"), [
    ("en", 1000000, "The answer is 1,000,000."),
    ("id", "Rp 2.500.000", "Jawabannya adalah Rp 2.500.000."),
    ("en", 0.5, "The answer is 1/2."),
    ("en", "1/3", "The answer is 2/6."),
    ("en", 0.1, "The answer is 0.10."),
    ("en", "45%", "The answer is 0.45."),
    ("en", 1024, r"\boxed{2^{10}}"),
    ("en", 35000, r"\boxed{3.5\times10^4}"),
    ("en", 0.3, r"\boxed{0.1 + 0.2}"),
])
def test_an_exact_number_equal_as_written_is_right_in_both_readers(language, reference, reply):
    assert_both(language, reply, reference, True)


@pytest.mark.parametrize(("reference", "reply", "verdict"), [
    ("1/3", "The answer is 0.3333333.", True),  # a decimal can only round a fraction whose decimal never ends
    ("0.3333333", "The answer is 1/3.", True),
    ("1/3", "The answer is 0.33.", False),
    ("2/3", "The answer is 0.6666667.", True),
    (1.4142136, r"\boxed{\sqrt{2}}", True),  # an irrational value is no exact one: within the tolerance
    (1.41, r"\boxed{\sqrt{2}}", False),
])
def test_a_tolerance_only_where_the_two_cannot_be_equal_as_written(reference, reply, verdict):
    assert_both("en", reply, reference, verdict)
