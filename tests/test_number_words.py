"""Numbers written with words and marks: scale words after a number (15 ribu, 1,5 triệu, 2 ล้าน 5 แสน, 1만 5천), sign
words before one (minus 5, âm 7, ลบ 5), mixed numbers (1 1/2) and vulgar fractions (½). The answer reward and the
accuracy suite read them alike (alignment/numbers.py: plain_number_words): each row is checked against its value and
against the values a misreading gives, through both graders."""

from __future__ import annotations

import unicodedata

import pytest

from tempa.alignment.answer_text import gives_reference
from tempa.alignment.numbers import plain_number_words
from tempa.alignment.rewards import answer_match
from tempa.merge.answers import answer_matches


def graded(reply: str, reference: object, language: str | None) -> tuple[bool, bool, bool]:
    """Whether ``reply`` gives ``reference`` by the shared rule, the answer reward (match: auto) and the suite."""
    return (gives_reference(reply, reference, language), answer_match(reply, reference, "auto", None, language) == 1.0,
            answer_matches(reply, reference, language=language))


@pytest.mark.parametrize(("language", "text", "plain"), [
    ("id", "Harga 15 ribu dan 2 juta", "Harga 15000 dan 2000000"),
    ("vi", "1,25 nghìn", "1250"),  # a decimal comma
    ("en", "1,125 thousand", "1125000"),  # a comma before three digits groups, in every language
    ("id", "0,001125 juta", "1125"),
    ("vi", "0,001125 nghìn", "1.1250"),  # 1.125 as 1.1250: no three decimals for a dot to group
    ("vi", "500 nghìn 2 triệu", "500000 2000000"),  # rising: two numbers
    ("th", "2 ล้าน 15 แสน", "2000000 1500000"),
    ("vi", unicodedata.normalize("NFD", "2 triệu đồng"), unicodedata.normalize("NFD", "2000000 đồng")),
    ("vi", unicodedata.normalize("NFD", "3 triệu chứng"), unicodedata.normalize("NFD", "3 triệu chứng")),
    ("id", "15 ribu ribu", "15 ribu ribu"),
    ("id", "1,2,3 juta", "1,2,3 juta"),  # a list
    ("en", "2^3 thousand", "2^3 thousand"),  # an exponent is multiplied by nothing
    ("en", "1/2 million", "1/2 million"),
])
def test_plain_number_words(language: str, text: str, plain: str) -> None:
    assert plain_number_words(text, language) == plain


def test_math_verify_reads_the_words_too() -> None:
    """A math reference is compared by math-verify, after the same reading."""
    assert graded("The answer is x = minus 5.", "x=-5", "en") == (True, True, True)
    assert graded("The answer is x = 5.", "x=-5", "en") == (False, False, False)
    assert graded("The answer is x = 1 1/2.", "x=3/2", "en") == (True, True, True)
