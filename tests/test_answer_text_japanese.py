"""Text answers as Japanese and Korean models state them without a lead-in: graded as the English ones are, by the
accuracy suite and the answer reward alike."""

from __future__ import annotations

import pytest

from tempa.alignment.rewards import answer_match
from tempa.merge.answers import answer_matches


@pytest.mark.parametrize(("reply", "expected"), [
    # What "Positive.", "B." and "It is positive." are in English: graded wrong while those passed
    ("ポジティブです。", "ポジティブ"),
    ("ネガティブです。", "ネガティブ"),
    ("Ｂです。", "B"),
    ("この文はネガティブです。", "ネガティブ"),
    ("ネガティブだ。", "ネガティブ"),
    ("ネガティブである。", "ネガティブ"),
    ("この文は、ネガティブです。", "ネガティブ"),
    ("つまり、ネガティブです。", "ネガティブ"),
    ("否定的な語が多いので判断できます。この文はネガティブです。", "ネガティブ"),  # the line's last sentence
    ("選択肢Bです。", "B"),
    ("긍정입니다.", "긍정"),
    ("이 문장은 긍정입니다.", "긍정"),
    ("정답은 긍정입니다.", "긍정"),  # after a lead-in, as 答えはBです。
])
def test_an_answer_stated_before_a_final_copula_is_the_answer(reply, expected):
    assert answer_matches(reply, expected, language="ja")
    assert answer_match(reply, expected, language="ja") == 1.0


@pytest.mark.parametrize(("reply", "expected"), [
    ("ポジティブではありません。", "ポジティブ"),  # a denial
    ("この文はポジティブではないです。", "ポジティブ"),
    ("ネガティブではなくポジティブです。", "ネガティブ"),
    ("ネガティブですか？", "ネガティブ"),  # a question
    ("この文はネガティブです？", "ネガティブ"),
    ("この文はポジティブです。", "ネガティブ"),  # another answer
    ("この文は超ネガティブです。", "ネガティブ"),  # a longer word is another answer
    ("ポジティブかネガティブです。", "ネガティブ"),  # two options named
    ("ポジティブかネガティブです。", "ポジティブ"),
    ("ポジティブまたはネガティブです。", "ネガティブ"),
    ("ポジティブもしくはネガティブです。", "ネガティブ"),
    ("ポジティブあるいはネガティブです。", "ネガティブ"),
    ("ポジティブ、ネガティブです。", "ネガティブ"),
    ("긍정 또는 부정입니다.", "부정"),
    ("긍정 혹은 부정입니다.", "부정"),
    ("긍정이 아닙니다.", "긍정"),
    ("Bは正解ではありません。Cです。", "B"),  # the last sentence commits to C
])
def test_a_denial_a_question_or_two_options_before_a_copula_is_not_the_answer(reply, expected):
    assert not answer_matches(reply, expected, language="ja")
    assert answer_match(reply, expected, language="ja") == 0.0
