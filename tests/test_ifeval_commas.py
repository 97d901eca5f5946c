"""IFEval's no_commas in the scripts tempa's users write: every form of the comma breaks it."""

from __future__ import annotations

import pytest

from tempa.merge.ifeval import check_all, parse_instructions


@pytest.mark.parametrize("reply", [
    "りんご､みかん",  # U+FF64, the half-width ideographic comma: passed as no comma
    "りんご、みかん",  # U+3001, the ideographic comma (Japanese 読点, Chinese 顿号)
    "一，二",  # U+FF0C, the full-width comma
    "one﹐ two",  # U+FE50, the small comma
    "りんご﹑みかん",  # U+FE51, the small ideographic comma
    "one︐ two",  # U+FE10, the vertical comma
    "one, two",
    "واحد، اثنان",  # the Arabic comma
])
def test_every_form_of_the_comma_breaks_no_commas(reply):
    assert check_all(parse_instructions([{"type": "no_commas"}]), reply) == [False]


@pytest.mark.parametrize("reply", ["りんごとみかん。", "没有逗号", "one. two", "１．５"])
def test_a_reply_without_a_comma_keeps_no_commas(reply):
    assert check_all(parse_instructions([{"type": "no_commas"}]), reply) == [True]
