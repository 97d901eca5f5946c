"""On-policy preference pairs from scored samples (pure functions).

``best_worst``: per prompt, the highest-scoring sample is chosen and the lowest rejected. A
prompt gives no pair when fewer than two samples were scored, when every score is equal,
when the best and worst tie, when their margin is under ``min_margin``, or when the only
candidates for "chosen" were cut off at the token limit (unless allowed). Ties at the top or
bottom are broken by sample order, so the same scores always give the same pair.

``revise``: the rejected sample is the worst one and the chosen is a teacher's or judge's
rewrite of it, kept when the rewrite scores at least ``min_margin`` higher.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scored:
    """What pair building needs to know about one sample."""

    index: int
    total: float | None
    truncated: bool = False
    text: str = ""


@dataclass(frozen=True)
class Pair:
    chosen: int  # sample index (-1: a revision, not one of the samples)
    rejected: int
    chosen_score: float
    rejected_score: float

    @property
    def margin(self) -> float:
        return self.chosen_score - self.rejected_score


# Why a prompt gave no pair (keys of the `dropped` statistics).
NO_SCORES = "fewer_than_two_scored"
ALL_EQUAL = "all_scores_equal"
TIE = "tie"
MARGIN = "below_min_margin"
TRUNCATED = "chosen_truncated"
IDENTICAL = "identical_texts"
NOT_BETTER = "revision_not_better"
UNRENDERABLE = "unrenderable"


def best_worst(
    samples: Sequence[Scored], *, min_margin: float = 0.0, allow_truncated_chosen: bool = False
) -> tuple[Pair | None, str | None]:
    """(pair, None) or (None, reason) for one prompt's samples."""
    scored = [s for s in samples if s.total is not None]
    if len(scored) < 2:
        return None, NO_SCORES
    if len({s.total for s in scored}) == 1:
        return None, ALL_EQUAL
    candidates = scored if allow_truncated_chosen else [s for s in scored if not s.truncated]
    if not candidates:
        return None, TRUNCATED
    chosen = max(candidates, key=lambda s: (s.total, -s.index))
    rejected = min(scored, key=lambda s: (s.total, s.index))
    assert chosen.total is not None and rejected.total is not None
    margin = chosen.total - rejected.total
    if margin <= 0:
        return None, TIE
    if margin < min_margin:
        return None, MARGIN
    if chosen.text and chosen.text == rejected.text:
        return None, IDENTICAL
    return Pair(chosen.index, rejected.index, chosen.total, rejected.total), None


def worst(samples: Sequence[Scored]) -> Scored | None:
    """The lowest-scoring sample (first on ties); None when nothing was scored."""
    scored = [s for s in samples if s.total is not None]
    return min(scored, key=lambda s: (s.total, s.index)) if scored else None


def revision_pair(
    rejected: Scored, revision_total: float | None, *, min_margin: float = 0.0, revision_text: str = ""
) -> tuple[Pair | None, str | None]:
    """The rewrite as chosen against the sample it rewrote, if it scores better by ``min_margin``."""
    if rejected.total is None or revision_total is None:
        return None, NO_SCORES
    margin = revision_total - rejected.total
    if margin <= 0 or margin < min_margin:
        return None, NOT_BETTER
    if revision_text and revision_text == rejected.text:
        return None, IDENTICAL
    return Pair(-1, rejected.index, revision_total, rejected.total), None


@dataclass
class PairStats:
    """Per-round reward statistics (written to round-K/stats.json and the stage metrics)."""

    prompts: int = 0
    pairs: int = 0
    chosen_scores: list[float] = field(default_factory=list)
    rejected_scores: list[float] = field(default_factory=list)
    sample_scores: list[float] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)

    def add(self, pair: Pair | None, reason: str | None, totals: Iterable[float | None]) -> None:
        self.prompts += 1
        self.sample_scores.extend(t for t in totals if t is not None)
        if pair is None:
            self.dropped[reason or "unknown"] += 1
            return
        self.pairs += 1
        self.chosen_scores.append(pair.chosen_score)
        self.rejected_scores.append(pair.rejected_score)

    def summary(self) -> dict[str, object]:
        def mean(values: list[float]) -> float | None:
            return round(statistics.fmean(values), 6) if values else None

        return {
            "prompts": self.prompts,
            "pairs": self.pairs,
            "pair_fraction": round(self.pairs / self.prompts, 6) if self.prompts else 0.0,
            "chosen_reward_mean": mean(self.chosen_scores),
            "rejected_reward_mean": mean(self.rejected_scores),
            "margin_mean": mean([c - r for c, r in zip(self.chosen_scores, self.rejected_scores, strict=True)]),
            "sample_reward_mean": mean(self.sample_scores),
            "samples_scored": len(self.sample_scores),
            "dropped": dict(sorted(self.dropped.items())),
        }
