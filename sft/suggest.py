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
    return meant(closest(value, choices))


def meant(hint: str | None) -> str:
    """``"; did you mean 'x'?"`` for a ``hint`` found some other way (a path beside the one written), else ``""``."""
    return f"; did you mean '{hint}'?" if hint else ""


def one_slip_from(typed: str, name: str) -> bool:
    """Whether ``typed`` is one slip of the keyboard from ``name``: a letter added, dropped, replaced, or two
    neighbours swapped, none of them a digit. Stricter than :func:`closest`, for names where a near miss is often
    meant: a hub id of an organisation whose other models sit beside the recipe (Llama-3.1-70B beside Llama-3.1-8B,
    Qwen2.5-72B-Instruct beside Qwen2.5-7B-Instruct) is no typo, and digits name sizes and versions."""
    if typed == name or abs(len(typed) - len(name)) > 1:
        return False
    start = 0
    while start < min(len(typed), len(name)) and typed[start] == name[start]:
        start += 1
    end_t, end_n = len(typed), len(name)
    while end_t > start and end_n > start and typed[end_t - 1] == name[end_n - 1]:
        end_t, end_n = end_t - 1, end_n - 1
    typed_part, name_part = typed[start:end_t], name[start:end_n]
    if any(ch.isdigit() for ch in typed_part + name_part):
        return False
    if len(typed_part) <= 1 and len(name_part) <= 1:  # one letter added, dropped or replaced
        return True
    return len(typed_part) == len(name_part) == 2 and typed_part == name_part[::-1]  # two neighbours swapped

