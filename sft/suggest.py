"""Spelling hints for one-line errors: every "did you mean" in tempa reads the same."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(value: object, choices: Iterable[str]) -> str | None:
    """The choice closest to ``value``'s spelling, if one is close enough to be a likely typo."""
    hint = difflib.get_close_matches(str(value), list(choices), n=1)
    return hint[0] if hint else None


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for a likely typo of one of ``choices``, else ``""``."""
    hint = closest(value, choices)
    return f"; did you mean '{hint}'?" if hint else ""
