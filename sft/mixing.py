"""Mixing: thinking-mode assignment, held-out split and per-source sizing, all seeded and pure.

The held-out split and the thinking draw rank their units by a hash of the unit's content and the recipe seed
(:func:`draw_ranks`) and take the lowest ranks (bottom-k sampling). A unit's rank depends on nothing else, so a
source that grows keeps its old rows' assignment but at the margin: the old rows chosen before and after are nested
(one set holds the other), and each added row moves at most one old row across the cut. A permutation of positions
(the earlier draw) gave every row a new place when one row was added: rows held out for evaluation trained in the
next run, and two runs' held-out losses were on different rows. The counts stay exact (:func:`heldout_count`,
:func:`thinking_on_count`).

Ranks are not salted with the source name: copies of an instruction in two sources rank alike, so a prompt held
out of one tends to be held out of the other, and renaming a source changes nothing. Sizing (weight, rows, tokens)
draws from a random stream private to (seed, source), so one source's draw never shifts another's.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from fractions import Fraction

import numpy as np

from tempa.sft.data_config import SourceConfig

# Separate draws per purpose, so e.g. adding a held-out split does not change the thinking draw.
_THINKING, _HELDOUT, _SIZE, _BUDGET = 1, 2, 3, 5  # _BUDGET: a pretrain source's budget
MIX_SHUFFLE = 4  # the prepared training set's order (tempa.sft.data)
PROMPT_SHUFFLE = 6  # a prompt source's `shuffle` before its `limit` (tempa.alignment.prompts)


def rng_for(seed: int, source_name: str, purpose: int) -> np.random.Generator:
    """A random generator private to one (seed, source, purpose)."""
    return np.random.default_rng([seed, zlib.crc32(source_name.encode()), purpose])


def content_key(text: str) -> int:
    """A stable signed 64-bit hash of ``text`` (the same in every process and Python version): a unit's identity in
    :func:`draw_ranks`."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def draw_ranks(keys: Sequence[int], seed: int, purpose: int) -> np.ndarray:
    """Each key's place in the draw of ``purpose`` under ``seed`` (lower draws first): a 64-bit mix of the three.

    A bijection of the key for a given (seed, purpose) (splitmix64's finaliser), so distinct keys never tie and
    every key's rank is independent of the other keys.
    """
    salt = np.uint64(content_key(f"tempa-draw {seed} {purpose}") & 0xFFFF_FFFF_FFFF_FFFF)
    x = np.asarray(keys, dtype=np.int64).view(np.uint64) ^ salt
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _draw_order(keys: Sequence[int], seed: int, purpose: int) -> list[int]:
    """Positions of ``keys`` in draw order (equal keys: the earlier position first)."""
    return np.argsort(draw_ranks(keys, seed, purpose), kind="stable").tolist()


def assign_thinking(
    has_reasoning: Sequence[bool],
    source: SourceConfig,
    seed: int,
    keys: Sequence[int],
    row_modes: Sequence[str | None] | None = None,
) -> list[bool]:
    """Per conversation: render with thinking on? (The draw before the length limits: see :func:`thinking_picks`.)

    A row's own ``thinking_mode`` (``row_modes``: on, off or None) wins over the source's. Else ``on``: rows with a
    trace; ``off``: none; ``mixed``: of the rows with a trace and no mode of their own, the
    :func:`thinking_on_count` first in the draw by ``keys`` (each row's content), so the share is exact rather than
    a coin flip's. Rows without a trace are never on: there is nothing to think with.
    """
    modes = list(row_modes) if row_modes is not None else [None] * len(has_reasoning)
    out = [renders_on(h, mode, source.thinking_mode) for h, mode in zip(has_reasoning, modes, strict=True)]
    if source.thinking_mode == "mixed":
        drawn = [i for i, (h, mode) in enumerate(zip(has_reasoning, modes, strict=True)) if h and mode is None]
        n_on = thinking_on_count(source.thinking_ratio or 0.0, len(drawn))
        for i in thinking_picks(drawn, [keys[i] for i in drawn], seed, n_on, {})[1]:
            out[i] = True
    return out


def renders_on(has_reasoning: bool, row_mode: str | None, source_mode: str) -> bool:
    """Whether a row renders with thinking on, a ``mixed`` source's draw aside: it has a trace, and its own mode (else
    its source's) is ``on``."""
    return bool(has_reasoning) and (row_mode or source_mode) == "on"


def thinking_picks(
    eligible: Sequence[int], keys: Sequence[int], seed: int, n_on: int, fits_on: Mapping[int, bool]
) -> tuple[list[int], list[int]]:
    """The rows of a ``mixed`` source that render with thinking on: of ``eligible`` (row positions; ``keys``, their
    content keys), the first ``n_on`` in the draw whose rendering with thinking on the length limits keep.

    ``fits_on`` is what is known so far (row -> its rendering on keeps a sample). Returns (the rows known to be on,
    the rows to render on and try); while the second is not empty the caller renders them, adds what it saw to
    ``fits_on`` and asks again. A row too long with thinking on thus gives its place to the next in the draw, and
    the share of the rows kept that think stays the ratio asked for (fewer only when too few rows fit with it on).
    """
    on: list[int] = []
    untried: list[int] = []
    for position in _draw_order(keys, seed, _THINKING):
        if len(on) + len(untried) >= n_on:
            break
        row = eligible[position]
        fits = fits_on.get(row)
        if fits is None:
            untried.append(row)
        elif fits:
            on.append(row)
    return on, untried


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


def split_heldout(keys: Sequence[int], setting: float | int, seed: int) -> tuple[list[int], list[int]]:
    """(train positions, held-out positions) of the units ``keys`` (their content keys), both in ascending order:
    the :func:`heldout_count` first in the draw by key."""
    n_out = heldout_count(setting, len(keys))
    held = sorted(_draw_order(keys, seed, _HELDOUT)[:n_out])
    chosen = set(held)
    return [p for p in range(len(keys)) if p not in chosen], held


def budget_order(keys: np.ndarray, seed: int) -> np.ndarray:
    """Positions of ``keys`` (content keys) in the order a token budget takes them: a draw of its own, so it is not
    the held-out draw; equal keys side by side."""
    return np.argsort(draw_ranks(keys, seed, _BUDGET), kind="stable")


def heldout_positions(distinct_keys: np.ndarray, n_out: int, seed: int) -> np.ndarray:
    """Positions of the ``n_out`` (at most their number) of ``distinct_keys`` first in :func:`split_heldout`'s draw, in
    arrays: a pretrain source holds millions of documents."""
    if n_out <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.argpartition(draw_ranks(distinct_keys, seed, _HELDOUT), n_out - 1)[:n_out]


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
