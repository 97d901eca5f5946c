"""The accuracy suite's answer checking on replies as Japanese, Chinese and LaTeX-writing models write them."""

from __future__ import annotations

import pytest

from tempa.merge.answers import answer_matches, extract_final_number


@pytest.mark.parametrize(("reply", "value"), [
    ("答えは－５です。", -5),  # a full-width minus: its sign was dropped, so -5 was graded as 5
    ("答えは＋５です。", 5),
    ("答えは３／４です。", 0.75),  # a full-width slash: the numerator was the answer
    ("答えは１．５キロです。", 1.5),  # a full-width point: read as 1
    ("答え：１２－５＝７", 7),  # a worked line with full-width signs commits to what its last '=' gives
])
def test_full_width_signs_points_and_slashes_are_read_as_their_ascii_forms(reply, value):
    assert extract_final_number(reply, "ja") == value


@pytest.mark.parametrize(("reply", "value"), [
    (r"\boxed{1{,}234}", 1234),  # LaTeX's thousands comma: the number was 234
    (r"The total is $10{,}000$ yen.", 10000),
    (r"\boxed{1\,000}", 1000),  # a thin space between digit groups
    (r"The answer is $\frac{1}{3}$.", 1 / 3),  # a fraction outside \boxed{}: the numerator was the answer
    (r"So $x = -\dfrac{3}{4}$", -0.75),  # the last number, unboxed: the denominator was the answer
    (r"答えは \(\tfrac{2}{5}\) です。", 0.4),
])
def test_latex_numbers_outside_and_inside_boxed(reply, value):
    assert extract_final_number(reply) == pytest.approx(value)


@pytest.mark.parametrize(("reply", "value"), [
    ("The answer is 3. Check: 3 + 4 = 7.", 3),  # the check's '=' was taken as the worked line's result
    ("答えは3です。検算：3+4=7", 3),  # Japanese puts no newline (and no space) after 。
    ("答え：3個。3+4=7なので合計7個です。", 3),
    ("所以答案是12。验算：12+3=15。", 12),
    ("The answer is 12 - 5 = 7. Good.", 7),  # a worked line still commits to its last '='
    ("The answer is 1.5. Check: 1.5 * 2 = 3.", 1.5),  # a decimal point ends no sentence
])
def test_the_committed_line_ends_at_its_sentence_end(reply, value):
    assert extract_final_number(reply, "ja") == value
    assert answer_matches(reply, value, language="ja")


@pytest.mark.parametrize(("reply", "expected", "verdict"), [
    ("The answer is Tokyo. It is the capital of Japan.", "Tokyo", True),  # the next sentence was compared too
    ("正解はBです。", "B", True),  # a copula after the answer
    ("答えは東京です。", "東京", True),
    ("答えは東京都です。", "東京", False),  # a longer word is another answer
    ("答えはCです。Bではありません。", "B", False),
    ("Let's check whether the answer is Osaka. No: it is Tokyo.", "Osaka", False),  # a hedged lead-in commits to nothing
])
def test_a_text_answer_is_the_sentence_after_the_lead_in(reply, expected, verdict):
    assert answer_matches(reply, expected, language="ja") is verdict
