"""A human-readable view of a tokenised conversation that shows which tokens are trained."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SEPARATOR = "·"  # between token pieces
NEWLINE = "↵"  # shown before each line break, so "\n" tokens stay visible
TRAINED_OPEN, TRAINED_CLOSE = "[[", "]]"  # plain-text marking of trained runs
_GREEN, _DIM, _UNDIM, _RESET = "\x1b[30;42m", "\x1b[2m", "\x1b[22m", "\x1b[0m"


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded string.

    Byte-level tokens can end inside a multi-byte character (Thai, emoji); such a token adds "" and the token
    that completes the character carries it, so the pieces always join to the decoded text.
    """
    pieces: list[str] = []
    start = 0  # first token not yet reflected in ``pieces``
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(
            list(ids[start:end]), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        if text.endswith("\ufffd") and end < len(ids):
            pieces.append("")  # incomplete character: wait for the next token
            continue
        pieces.append(text)
        start = end
    return pieces


def format_token_view(pieces: Sequence[str], mask: Sequence[int], *, color: bool) -> str:
    """Token pieces separated by ``·``, trained runs in green (``color``) or between ``[[ ]]`` (plain)."""
    out: list[str] = []
    trained_run = False
    first = True
    for piece, trained in _units(pieces, mask):
        if trained != trained_run:
            if color:
                out.append(_GREEN if trained else _RESET)
            else:
                out.append(TRAINED_OPEN if trained else TRAINED_CLOSE)
            trained_run = trained
        elif not first:
            out.append(f"{_DIM}{SEPARATOR}{_UNDIM}" if color else SEPARATOR)
        out.append(piece.replace("\n", f"{NEWLINE}\n"))
        first = False
    if trained_run:
        out.append(_RESET if color else TRAINED_CLOSE)
    return "".join(out)


def _units(pieces: Sequence[str], mask: Sequence[int]) -> list[tuple[str, bool]]:
    # Tokens that add "" (split characters) join the next token, so no separator lands inside a character.
    units: list[tuple[str, bool]] = []
    pending = False
    for piece, trained in zip(pieces, mask, strict=True):
        pending = pending or bool(trained)
        if piece:
            units.append((piece, pending))
            pending = False
    return units
