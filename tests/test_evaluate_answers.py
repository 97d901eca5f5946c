"""The accuracy suite's answer checking on replies as Japanese, Chinese and LaTeX-writing models write them."""

from __future__ import annotations

import pytest

from tempa.merge.answers import extract_final_number


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
