"""The one line of an exception that a user-facing error quotes.

tempa's errors are one line each, naming the file, field or row; a library's message may run to many
lines (a traceback of its own, a hint block), so only its first line is quoted. It lives on the ground
floor because every package reports errors this way.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (surrounding blank lines dropped), or its type's name when empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def typed_line(exc: BaseException) -> str:
    """``Type: first line`` of an unexpected exception (whose type says what went wrong), or the type alone."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__
