"""The last line's answer after a colon or before its own punctuation, written with the full-width and ideographic
marks of CJK text as with the ASCII ones."""

from __future__ import annotations

import pytest

from tempa.alignment.rewards import answer_match
from tempa.merge.answers import answer_matches


@pytest.mark.parametrize(("reply", "expected"), [
    ("感情: ネガティブ", "ネガティブ"),
    ("感情：ネガティブ", "ネガティブ"),  # a full-width colon: graded wrong while the ASCII one passed
    ("感情﹕ネガティブ", "ネガティブ"),  # the small colon
    ("情感：消极", "消极"),
    ("Ｂ、理由は否定的な語が多いからです。", "B"),  # before an ideographic comma, as "B, because ..."
    ("B。否定的な語が多いため。", "B"),  # before an ideographic full stop, as "B. Because ..."
    ("「B」否定的な語が多いため。", "B"),  # in corner brackets, as "(B) ..."
    ("（Ｂ）否定的な語が多いため。", "B"),
])
def test_full_width_and_ideographic_marks_set_the_answer_apart(reply, expected):
    assert answer_matches(reply, expected, language="ja")
    assert answer_match(reply, expected, language="ja") == 1.0


@pytest.mark.parametrize(("reply", "expected"), [
    ("感情：ポジティブ", "ネガティブ"),
    ("感情：ネガティブ／ポジティブ", "ネガティブ"),
    ("Ｂではなく、Ｃ。", "B"),
    ("BC。", "B"),  # a longer word
])
def test_full_width_marks_do_not_pass_another_answer(reply, expected):
    assert not answer_matches(reply, expected, language="ja")
    assert answer_match(reply, expected, language="ja") == 0.0
