"""Rejection sampling: which of a prompt's scored samples are kept (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

BELOW = "below_threshold"
UNSCORED = "no_score"


def select_samples(
    scores: Sequence[float | None],
    *,
    strategy: Literal["best", "all"] = "best",
    min_score: float | None = None,
) -> tuple[list[int], str | None]:
    """Indices of the kept samples (and the reason when none is kept).

    ``best``: the highest score (first on ties), kept when it reaches ``min_score`` (any score
    when ``min_score`` is None). ``all``: every sample scoring at least ``min_score``. A sample
    without a score (``None``: e.g. an unparsable judge reply) is never kept.
    """
    scored = [(i, s) for i, s in enumerate(scores) if s is not None]
    if not scored:
        return [], UNSCORED
    if strategy == "best":
        index, best = max(scored, key=lambda pair: (pair[1], -pair[0]))
        if min_score is not None and best < min_score:
            return [], BELOW
        return [index], None
    if min_score is None:
        raise ValueError("strategy 'all' needs min_score")
    kept = [i for i, s in scored if s >= min_score]
    return kept, (None if kept else BELOW)
