"""Mixing: thinking-mode assignment, held-out split and per-source sizing, all seeded and pure.

Every function takes the recipe seed and the source name and draws from its own random stream,
so one source's draw never shifts another's, and the same recipe gives the same mix.
Units are conversations (rows of the curated source), identified by their position.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from tempa.sft.data_config import SourceConfig

# Separate streams per purpose, so e.g. adding a held-out split does not change the thinking draw.
_THINKING, _HELDOUT, _SIZE, _SHUFFLE = 1, 2, 3, 4


def rng_for(seed: int, source_name: str, purpose: int) -> np.random.Generator:
    """A random generator private to one (seed, source, purpose)."""
    return np.random.default_rng([seed, zlib.crc32(source_name.encode()), purpose])


def assign_thinking(has_reasoning: Sequence[bool], source: SourceConfig, seed: int) -> list[bool]:
    """Per conversation: render with thinking on?

    ``on``: rows with a trace; ``off``: none; ``mixed``: exactly :func:`thinking_on_count` of the
    n rows that have a trace, chosen at random, so the share is exact rather than a coin flip's.
    Rows without a trace are never on: there is nothing to think with.
    """
    flags = [bool(h) for h in has_reasoning]
    if source.thinking_mode == "off":
        return [False] * len(flags)
    if source.thinking_mode == "on":
        return flags
    candidates = np.flatnonzero(np.asarray(flags, dtype=bool))
    n_on = thinking_on_count(source.thinking_ratio or 0.0, len(candidates))
    chosen = rng_for(seed, source.name, _THINKING).permutation(candidates)[:n_on]
    out = [False] * len(flags)
    for i in chosen:
        out[int(i)] = True
    return out


def thinking_on_count(ratio: float, n: int) -> int:
    """How many of ``n`` rows render with thinking on for a ``mixed`` ratio.

    ``ratio * n`` rounded half up (Python's ``round`` rounds half to even: 2.5 -> 2), then kept
    inside ``[1, n - 1]`` when the ratio is strictly between 0 and 1 and there are at least two
    rows: a mix asked for is a mix delivered, so 0.05 of 10 rows is 1 row on, 0.95 of 10 is 9.
    A ratio of exactly 0 or 1 gives none or all.
    """
    # On the ratio as written (its shortest decimal): in binary, 0.29 * 50 is 14.4999... and rounds down.
    count = min(n, int(Fraction(str(ratio)) * n + Fraction(1, 2)))
    if 0 < ratio < 1 and n >= 2:
        count = min(max(count, 1), n - 1)
    return count


def heldout_count(setting: float | int, n_rows: int) -> int:
    """Rows to hold out: a fraction (rounded, at least 1 when the fraction is positive) or a count."""
    if isinstance(setting, float) and not float(setting).is_integer():
        return min(n_rows, max(1, round(setting * n_rows))) if setting > 0 else 0
    return min(n_rows, int(setting))


def split_heldout(n_rows: int, setting: float | int, source_name: str, seed: int) -> tuple[list[int], list[int]]:
    """(train positions, held-out positions), both in ascending order."""
    n_out = heldout_count(setting, n_rows)
    if n_out == 0:
        return list(range(n_rows)), []
    held = np.sort(rng_for(seed, source_name, _HELDOUT).permutation(n_rows)[:n_out])
    mask = np.zeros(n_rows, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask).tolist(), held.tolist()


def _draw(n: int, n_target: int, rng: np.random.Generator) -> list[int]:
    # Whole copies first, then a random part of one more: weight 2.5 = every row twice + half once.
    copies, remainder = divmod(n_target, n)
    picks = [np.arange(n)] * copies + [rng.permutation(n)[:remainder]]
    return np.concatenate(picks).astype(int).tolist() if picks else []


def select_rows(
    candidates: Sequence[int], tokens: Sequence[int], source: SourceConfig, seed: int
) -> list[int]:
    """The conversations (positions from ``candidates``, repeats allowed) that ``source`` contributes.

    ``tokens[i]`` is the token count of ``candidates[i]``. Size by ``weight`` (fraction, above 1
    up-samples), ``rows`` or ``tokens`` (draw in random order, cycling, until the next row would
    exceed the budget); with none set, every candidate once.
    """
    n = len(candidates)
    if n == 0:
        return []
    rng = rng_for(seed, source.name, _SIZE)
    if source.tokens is not None:
        picked: list[int] = []
        total = 0
        if min(tokens) > source.tokens:
            return []
        while True:
            for i in rng.permutation(n):
                if total + tokens[i] > source.tokens:
                    return [candidates[j] for j in picked]
                total += tokens[i]
                picked.append(int(i))
    if source.rows is not None:
        n_target = source.rows
    elif source.weight is not None:
        n_target = round(source.weight * n)
    else:
        return list(candidates)
    return [candidates[i] for i in _draw(n, n_target, rng)]
