"""Pair building and rejection-sampling selection: edge cases."""

from __future__ import annotations

import pytest

from tempa.alignment.pairs import (
    ALL_EQUAL,
    IDENTICAL,
    INCOMPLETE,
    MARGIN,
    NO_SCORES,
    NOT_BETTER,
    PairStats,
    Scored,
    best_worst,
    revision_pair,
    worst,
)
from tempa.alignment.selection import BELOW, UNSCORED, select_samples


def group(*totals, truncated=()):
    return [Scored(i, t, i in truncated, (i,)) for i, t in enumerate(totals)]


def test_best_against_worst():
    pair, reason = best_worst(group(0.2, 0.9, -0.4, 0.5))
    assert reason is None
    assert (pair.chosen, pair.rejected) == (1, 2)
    assert pair.margin == pytest.approx(1.3)


def test_ties_at_the_top_and_bottom_break_by_sample_order():
    pair, _ = best_worst(group(1.0, 0.0, 1.0, 0.0))
    assert (pair.chosen, pair.rejected) == (0, 1)


@pytest.mark.parametrize(
    ("samples", "kwargs", "reason"),
    [
        (group(0.5, 0.5, 0.5), {}, ALL_EQUAL),
        (group(0.5), {}, NO_SCORES),
        (group(None, 0.3, None), {}, NO_SCORES),
        (group(None, None), {}, NO_SCORES),
        (group(0.5, 0.4), {"min_margin": 0.2}, MARGIN),
        # the best sample was cut off; the two that ended tie
        (group(0.9, 0.1, 0.1, truncated=(0,)), {}, ALL_EQUAL),
        (group(0.9, 0.5, 0.1, truncated=(0, 1)), {}, INCOMPLETE),
        ([Scored(0, 1.0, False, (5, 6)), Scored(1, 0.0, False, (5, 6))], {}, IDENTICAL),
    ],
)
def test_prompts_without_a_usable_pair(samples, kwargs, reason):
    assert best_worst(samples, **kwargs) == (None, reason)


def test_margin_at_the_minimum_is_kept_and_none_scores_are_ignored():
    pair, reason = best_worst(group(None, 0.75, 0.5, None), min_margin=0.25)
    assert reason is None and (pair.chosen, pair.rejected) == (1, 2)


def test_incomplete_samples_are_neither_chosen_nor_rejected():
    pair, _ = best_worst(group(0.9, 0.4, 0.3, 0.1, truncated=(0, 3)))
    assert (pair.chosen, pair.rejected) == (1, 2)


def test_the_rejected_side_is_the_worst_sample_that_renders_differently():
    samples = [Scored(0, 0.9, False, (1, 2)), Scored(1, 0.88, False, (1, 2)), Scored(2, 0.5, False, (1, 3)),
               Scored(3, 0.1, False, (1, 2))]
    pair, _ = best_worst(samples)
    assert (pair.chosen, pair.rejected) == (0, 2)
    stats = PairStats()
    stats.add(pair, None, samples)
    assert stats.summary()["identical_renderings"] == 1


def test_revision_pairs():
    rejected = worst(group(0.4, -0.2, 0.1))
    assert rejected.index == 1
    pair, reason = revision_pair(rejected, Scored(-1, 0.5, False, (9,)), min_margin=0.5)
    assert reason is None and (pair.chosen, pair.rejected) == (-1, 1) and pair.margin == pytest.approx(0.7)
    assert revision_pair(rejected, Scored(-1, 0.2), min_margin=0.5) == (None, NOT_BETTER)
    assert revision_pair(rejected, Scored(-1, -0.2)) == (None, NOT_BETTER)  # a tie is no preference
    assert revision_pair(rejected, Scored(-1, None)) == (None, NO_SCORES)
    assert revision_pair(rejected, Scored(-1, 0.5, False, rejected.rendered)) == (None, IDENTICAL)
    assert worst(group(None, None)) is None
    assert worst(group(0.4, -0.2, truncated=(1,))).index == 0


def test_pair_stats_summary():
    stats = PairStats()
    for samples in (group(1.0, 0.0), group(0.5, 0.5), group(2.0, 1.0, 0.0)):
        stats.add(*best_worst(samples), samples)
    summary = stats.summary()
    assert summary["prompts"] == 3 and summary["pairs"] == 2
    assert summary["pair_fraction"] == pytest.approx(2 / 3, abs=1e-6)
    assert summary["chosen_reward_mean"] == pytest.approx(1.5)
    assert summary["rejected_reward_mean"] == pytest.approx(0.0)
    assert summary["dropped"] == {ALL_EQUAL: 1}
    assert summary["samples_scored"] == summary["samples"] == 7
    assert PairStats().summary()["pair_fraction"] == 0.0


def test_select_best_above_threshold_or_all_passing():
    assert select_samples([3.0, 9.0, 9.0, 7.0], strategy="best", min_score=9) == ([1], None)
    assert select_samples([3.0, 8.5], strategy="best", min_score=9) == ([], BELOW)
    assert select_samples([3.0, 8.5], strategy="best") == ([1], None)
    assert select_samples([9.0, None, 10.0, 2.0], strategy="all", min_score=9) == ([0, 2], None)
    assert select_samples([None, None], strategy="best") == ([], UNSCORED)
    with pytest.raises(ValueError, match="min_score"):
        select_samples([1.0], strategy="all")
