"""On-policy preference pairs from scored samples (pure functions).

``best_worst``: per prompt, the highest-scoring sample is chosen and the lowest rejected. Only
*complete* samples take part: a sample cut off at the token limit, or one whose think block the
template would close for it, would be trained with an ending the model never wrote (an
end-of-turn, a ``</think>``), so it is neither chosen nor rejected (see alignment/README.md,
"Pairs"). Samples are compared on their rendered token ids: the rejected sample is the worst one
that renders differently from the chosen one, so a pair is never two identical sequences. A
prompt gives no pair when fewer than two complete samples were scored, when every score is
equal, when the best and worst tie, when their margin is under ``min_margin``, or when every
other sample renders like the best. Ties at the top or bottom are broken by sample order, so the
same scores always give the same pair.

``revise``: the rejected sample is the worst one and the chosen is a teacher's or judge's
rewrite of it, kept when the rewrite scores at least ``min_margin`` higher.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scored:
    """What pair building needs to know about one sample."""

    index: int
    total: float | None
    incomplete: bool = False  # cut off, or its think block would be closed by the template
    rendered: tuple[int, ...] | None = None  # token ids as trained (None: unknown, never equal to another)


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
INCOMPLETE = "fewer_than_two_complete"
IDENTICAL = "identical_rendering"
NOT_BETTER = "revision_not_better"


def same_rendering(a: Scored, b: Scored) -> bool:
    return a.rendered is not None and a.rendered == b.rendered


def best_worst(samples: Sequence[Scored], *, min_margin: float = 0.0) -> tuple[Pair | None, str | None]:
    """(pair, None) or (None, reason) for one prompt's samples."""
    # An incomplete sample is not judged (a judge call is paid for), so it may have no total: it counts as scored here,
    # and what stands in the way of a pair is then that it is incomplete.
    if len([s for s in samples if s.total is not None or s.incomplete]) < 2:
        return None, NO_SCORES
    complete = [s for s in samples if s.total is not None and not s.incomplete]
    if len(complete) < 2:
        return None, INCOMPLETE
    if len({s.total for s in complete}) == 1:
        return None, ALL_EQUAL
    chosen = max(complete, key=lambda s: (s.total, -s.index))
    others = [s for s in complete if not same_rendering(s, chosen)]
    if not others:
        return None, IDENTICAL
    rejected = min(others, key=lambda s: (s.total, s.index))
    assert chosen.total is not None and rejected.total is not None
    margin = chosen.total - rejected.total
    if margin <= 0:
        return None, TIE
    if margin < min_margin:
        return None, MARGIN
    return Pair(chosen.index, rejected.index, chosen.total, rejected.total), None


def worst(samples: Sequence[Scored]) -> Scored | None:
    """The lowest-scoring complete sample (first on ties); None when none was scored."""
    scored = [s for s in samples if s.total is not None and not s.incomplete]
    return min(scored, key=lambda s: (s.total, s.index)) if scored else None


def revision_pair(
    rejected: Scored, revision: Scored, *, min_margin: float = 0.0
) -> tuple[Pair | None, str | None]:
    """The rewrite as chosen against the sample it rewrote, if it scores better by ``min_margin``."""
    if rejected.total is None or revision.total is None:
        return None, NO_SCORES
    if rejected.incomplete or revision.incomplete:
        return None, INCOMPLETE
    margin = revision.total - rejected.total
    if margin <= 0 or margin < min_margin:
        return None, NOT_BETTER
    if same_rendering(revision, rejected):
        return None, IDENTICAL
    return Pair(-1, rejected.index, revision.total, rejected.total), None


@dataclass
class PairStats:
    """Per-round reward statistics (written to round-K/stats.json and the stage metrics)."""

    prompts: int = 0
    pairs: int = 0
    samples: int = 0
    truncated: int = 0  # samples cut off at the token limit (never in a pair)
    incomplete: int = 0  # samples out of the running: cut off, or a think block the template would close
    identical: int = 0  # prompts where a sample rendered exactly like the chosen one (skipped as rejected)
    chosen_scores: list[float] = field(default_factory=list)
    rejected_scores: list[float] = field(default_factory=list)
    sample_scores: list[float] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)

    def add(self, pair: Pair | None, reason: str | None, samples: Sequence[Scored], *, truncated: int = 0) -> None:
        self.prompts += 1
        self.samples += len(samples)
        self.truncated += truncated
        self.incomplete += sum(s.incomplete for s in samples)
        self.sample_scores.extend(s.total for s in samples if s.total is not None)
        best = next((s for s in samples if pair is not None and s.index == pair.chosen), None)
        if reason == IDENTICAL or (best is not None and any(
                s.index != best.index and same_rendering(s, best) for s in samples)):
            self.identical += 1
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
            "samples": self.samples,
            "truncated": self.truncated,
            "truncated_fraction": round(self.truncated / self.samples, 6) if self.samples else 0.0,
            "incomplete": self.incomplete,
            "identical_renderings": self.identical,
            "dropped": dict(sorted(self.dropped.items())),
        }
