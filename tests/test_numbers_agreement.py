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


# (language, reference with a unit or currency, a reply giving it, a reply giving another number)
UNIT_REFERENCES = [
    ("ja", "12,000円", "答えは12000円です。", "答えは13000円です。"),
    ("ja", "１２，０００円", "合計は12,000円です。", "合計は1,200円です。"),
    ("ja", "12 cm", r"\boxed{12}", r"\boxed{13}"),
    ("ja", "3.5キロ", "答えは3.5キロです。", "答えは35キロです。"),
    ("zh", "¥1,200", "答案是1200元。", "答案是1300元。"),
    ("zh", "1200元", "所以答案是 1200", "所以答案是 120"),
    ("zh", "5个", "答案是5个。", "答案是6个。"),
    ("th", "1,250 บาท", "ดังนั้นคำตอบคือ1,250บาท", "ดังนั้นคำตอบคือ1.25บาท"),
    ("th", "61 ผล", "ดังนั้นวีระมีแอปเปิลทั้งหมด 61 ผล", "ดังนั้นวีระมีแอปเปิลทั้งหมด 16 ผล"),
    ("vi", "100.000 đồng", "Đáp án là 100.000 đ.", "Đáp án là 100 đ."),
    ("vi", "100.000đ", "Vậy tổng số tiền là 100000 đồng.", "Vậy tổng số tiền là 10000 đồng."),
    ("vi", "₫100.000", "Đáp án: 100.000₫", "Đáp án: 100₫"),
    ("vi", "2,5 kg", "Vậy đáp án là 2,5 kg.", "Vậy đáp án là 25 kg."),
    ("en", "US$12", "The answer is 12.", "The answer is 21."),
    ("en", "12 km/h", "The answer is 12", "The answer is 1.2"),
    ("en", "-5 °C", "The answer is -5.", "The answer is 5."),
    ("id", "Rp 2.500.000", "Jadi totalnya Rp2.500.000,00.", "Jadi totalnya Rp2.500,00."),
]


@pytest.mark.parametrize(("language", "reference", "right", "wrong"), UNIT_REFERENCES)
def test_a_reference_with_a_unit_is_compared_as_its_number_in_both_readers(language, reference, right, wrong):
    # The accuracy suite compared "12,000円" as text (no reply of 12000 matched it); math-verify read "US$12" as no
    # number at all.
    assert_both(language, right, reference, True)
    assert_both(language, wrong, reference, False)


@pytest.mark.parametrize("reference", ["12 apples", "Tokyo", "cm", "A"])
def test_a_reference_that_is_not_a_number_with_a_unit_stays_text(reference):
    # no unit-like word turns text into a number: the reply must give the text
    assert answer_matches(f"The answer is {reference}.", reference)
    assert not answer_matches("The answer is 12.", reference)
