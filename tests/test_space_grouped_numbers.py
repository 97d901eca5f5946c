"""A plain space groups thousands in every language (1 000 is 1000 in English and Thai too), and never joins a list."""

from __future__ import annotations

import pytest

from tempa.alignment.rewards import answer_match
from tempa.merge.answers import answer_matches

LANGUAGES = ["en", "th", "id", "vi", "fr", None]


def agreed(reply: str, reference: object, language: str | None) -> bool:
    """The answer reward's and the accuracy suite's verdict, which must be one."""
    reward = answer_match(reply, reference, language=language)
    assert reward == float(answer_matches(reply, reference, language=language)), (reply, reference, language)
    return reward == 1.0


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize(("reply", "right", "wrong"), [
    ("The answer is 1 000", 1000, 1),
    ("คำตอบคือ 1 000 บาท", 1000, 1),
    ("It ends in 2 000 years.", 2000, 2),
    ("Total: 1 250 000", 1250000, 1250),
    ("The answer is 12 500.5", 12500.5, 500.5),
    # what is no group: a list, and groups other than three digits
    ("The numbers are 1 2 3", 3, 123),
    ("Counted: 1 2 345", 345, 12345),
    ("The answer is 12 3456", 12, 123456),  # the first number after the lead-in: 12
])
def test_a_plain_space_groups_thousands_in_every_language_and_a_list_stays_a_list(reply, right, wrong, language):
    assert agreed(reply, right, language)
    assert not agreed(reply, wrong, language)
