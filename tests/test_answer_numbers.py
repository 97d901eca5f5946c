"""Numbers in verifiable answers as each language writes them: the answer reward (on the prompt's language) and the
evaluate stage's accuracy suite read them by one rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from tempa.alignment.completions import Completion
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import AnswerReward, RewardSet, ScoreItem, ScoringEnv
from tempa.merge.answers import answer_matches

# (language, reference, the model's answer, right reading, wrong reading): each answer is right for the reference
# and wrong for a reference one reading away (the other decimal mark, or dropped groups).
CASES = [
    ("id", "1,250", "Jadi jumlahnya adalah 1.250 rupiah.", "1250", "1.25"),
    ("id", "1250", "Jadi jumlahnya adalah Rp1.250.", "1250", "1.25"),
    ("id", "2500000", "Jadi total harganya Rp 2.500.000,00.", "2500000", "2500"),
    ("vi", "1250", "Vậy tổng số tiền là 1.250 đồng.", "1250", "1.25"),
    ("vi", "2.5", "Vậy đáp án là 2,5 kg.", "2.5", "25"),
    ("vi", "1000", "Đáp án: 1 000", "1000", "1"),
    ("fr", "1000", "Réponse : 1\u202f000 euros.", "1000", "1"),
    ("th", "1.25", "ดังนั้นคำตอบคือ 1.250 กิโลกรัม", "1.25", "1250"),
    ("th", "1,250", "ดังนั้นคำตอบคือ1,250บาท", "1250", "1.25"),  # Thai puts no space between words and numbers
    ("ta", "1250000", "ராமுவிடம் மொத்தம் 12,50,000 ரூபாய் உள்ளது.", "1250000", "12.5"),
    ("ta", "125000", "மொத்தம் ₹1,25,000 ஆகும்.", "125000", "1.25"),  # Indian lakh grouping
    ("ta", "1.25", "அவளிடம் 1.250 கிலோ அரிசி உள்ளது.", "1.25", "1250"),
    ("ja", "1250", "答えは1,250円です。", "1250", "1.25"),
    ("ja", "1.25", "答えは1.250キロです。", "1.25", "1250"),
]


def _reward(language: str | None, reference: object, answer: str) -> float | None:
    row = PromptRow(
        id="p",
        messages=[{"role": "user", "content": "?"}],
        language=language,
        answer=reference,
        thinking_mode="off",
    )
    item = ScoreItem(row, Completion(text=answer, prefill="<think>\n</think>\n", finish_reason="stop"))
    return RewardSet([AnswerReward()], ScoringEnv(policy_dir=Path("."), tokenizer_dir=Path("."))).score(
        [item]
    )[0]["scores"]["answer"]


@pytest.mark.parametrize(("language", "reference", "answer", "right", "wrong"), CASES)
def test_answer_reward_reads_numbers_as_the_prompt_language_writes_them(
    language, reference, answer, right, wrong
):
    assert _reward(language, reference, answer) == 1.0
    assert _reward(language, right, answer) == 1.0
    assert _reward(language, wrong, answer) == 0.0


@pytest.mark.parametrize(("language", "reference", "answer", "right", "wrong"), CASES)
def test_accuracy_suite_reads_numbers_as_the_answer_reward_does(language, reference, answer, right, wrong):
    for expected, verdict in ((reference, True), (right, True), (wrong, False)):
        assert answer_matches(answer, expected, language=language) is verdict
        assert answer_matches(answer, expected, language=language) == (
            _reward(language, expected, answer) == 1.0
        )


def test_real_math_stays_with_math_verify():
    # fractions, LaTeX and a decimal comma against a fraction: read as today, in any language
    assert _reward("vi", "3/4", "Vậy đáp án là 0,75.") == 1.0
    assert _reward("id", "0.75", r"Jadi hasilnya $\frac{3}{4}$.") == 1.0
    assert _reward("id", r"\frac{1}{2}", "Jadi peluangnya 0,5.") == 1.0
    # A formula math-verify cannot read undelimited is text: the answer must state it ("x21" is in "x^2 + 10")
    assert _reward("id", "x^2+1", "Jawabannya: x^2 + 1") == 1.0
    assert _reward("id", "x^2+1", "Jadi f(x) = x^2 + 10") == 0.0
    assert _reward("id", "0.125", "Jadi peluangnya 0,125.") == 1.0  # a lone 0: a decimal comma, not 125


@pytest.mark.parametrize("language", ["id", "vi", "de", "en", None])
def test_a_numeric_reference_is_its_value_in_every_language(language):
    # A JSON number 1.125 is one value: the row's language says how the model's answer writes numbers, not how the
    # data file stored its reference. "1.1250" reads as 1.125 in every language; "1.125" is 1125 where a dot groups.
    assert _reward(language, 1.125, "Jawabannya 1.1250") == 1.0
    dot_groups = language in ("id", "vi", "de")
    assert _reward(language, 1.125, "Jawabannya 1.125") == (0.0 if dot_groups else 1.0)
    assert _reward(language, 1125, "Jawabannya 1.125") == (1.0 if dot_groups else 0.0)
    for answer in ("Jawabannya 1.1250", "Jawabannya 1.125"):
        assert _reward(language, [1125, 1.125], answer) == 1.0  # one of the accepted answers, either reading
        for reference in (1.125, 1125):  # the accuracy suite compares a number by value too
            assert answer_matches(answer, reference, language=language) == (
                _reward(language, reference, answer) == 1.0
            )


@pytest.mark.parametrize(("reply", "gold", "language", "expected"), [
    ("The answer is 3 100 m sprints", "3", "en", 1.0),  # a count before a three-digit quantity (review)
    ("The answer is 2 400-page books", "2", "en", 1.0),
    ("Jawabannya 1 000 buku", "1000", "id", 1.0),  # a decimal-comma language groups thousands with a space
    ("The answer is 1\u00a0000", "1000", "en", 1.0),  # a no-break space is typed only between digit groups
])
def test_a_plain_space_groups_thousands_only_where_the_language_writes_them_so(reply, gold, language, expected):
    from tempa.alignment.rewards import answer_match

    assert answer_match(reply, gold, language=language) == expected
