"""Choosing the models to merge: the top-k of a leaderboard by one metric."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from tempa.merge.candidates import model_identity
from tempa.merge.leaderboard import Leaderboard, LeaderboardRow, format_value
from tempa.sft.stage_api import StageError
from tempa.sft.suggest import closest

log = logging.getLogger(__name__)


def select_top_k(
    board: Leaderboard,
    metric: str,
    k: int,
    *,
    higher_is_better: bool | None = None,
    include_merged: bool = False,
    leave_out: Path | None = None,
) -> list[LeaderboardRow]:
    """The ``k`` best rows by ``metric`` (:func:`select_top_k_with_ties`, without the rows tied at the cut)."""
    return select_top_k_with_ties(board, metric, k, higher_is_better=higher_is_better, include_merged=include_merged,
                                  leave_out=leave_out)[0]


def select_top_k_with_ties(
    board: Leaderboard,
    metric: str,
    k: int,
    *,
    higher_is_better: bool | None = None,
    include_merged: bool = False,
    leave_out: Path | None = None,
) -> tuple[list[LeaderboardRow], list[LeaderboardRow]]:
    """The ``k`` best rows by ``metric``, best first; ties keep leaderboard order.

    ``leave_out``: a model that cannot be one of the ``k`` (a task-vector merge's base, scored beside the
    candidates to compare with: its task vector is zero, so picking it merged one model fewer than asked).

    The direction defaults to the board's for the metric (a recipe's, else the name's: losses and perplexities
    lower, the rest higher).
    Rows without the metric (or with NaN) are not eligible; fewer than ``k`` eligible rows is an
    error rather than a smaller merge. Second: the eligible rows left out with the very value of the ``k``-th (the
    metric did not choose between them and the last chosen, leaderboard order did).
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    known = board.metric_names
    if metric not in known:
        # the board has dozens of names (per-language and per-type breakdowns): one likely meant says more
        suite = metric.partition("/")[0]
        reported = any(name.startswith(f"{suite}/") for name in known)
        hint = closest(metric, known)
        raise StageError(f"metric '{metric}' is not on the leaderboard"
                         + (f": suite '{suite}' reported it for no candidate" if reported else "")
                         + (f" (did you mean '{hint}'?)" if hint else f" ({len(known)} metrics are, in its "
                            "leaderboard.json)"))
    higher = (not board.lower_is_better(metric)) if higher_is_better is None else higher_is_better
    left_out = None if leave_out is None else model_identity(leave_out)
    considered = [  # in the board's displayed order: a tie at the cut keeps the rows the user sees first
        row for row in board.ranked()
        if (include_merged or not row.merged) and (left_out is None or model_identity(Path(row.path)) != left_out)
    ]
    lacking = [row.candidate for row in considered
               if row.metrics.get(metric) is None or math.isnan(row.metrics[metric])]
    eligible = [row for row in considered if row.candidate not in lacking]
    ranked: list[LeaderboardRow] = []
    picked_as: dict[Path, str] = {}
    again: list[str] = []
    for row in sorted(eligible, key=lambda row: -row.metrics[metric] if higher else row.metrics[metric]):
        # A board holding one set of weights twice (written before candidates were told apart by their weights, or
        # a folder given by path that is a stage's model): picking both merged a model with itself.
        identity = model_identity(Path(row.path))
        if identity in picked_as:
            again.append(f"{row.candidate} is the weights of {picked_as[identity]}")
            log.info("select: %s: not picked twice", again[-1])
            continue
        picked_as[identity] = row.candidate
        ranked.append(row)
    if len(ranked) < k:
        besides = " besides the base model" if leave_out is not None else ""
        why = [f"none for {', '.join(lacking)}"] * bool(lacking) + again
        raise StageError(f"top_k={k} but only {len(ranked)} candidate(s){besides} have '{metric}'"
                         + (f" ({'; '.join(why)})" if why else ""))
    tied = [row for row in ranked[k:] if row.metrics[metric] == ranked[k - 1].metrics[metric]]
    if tied:
        # (every candidate at 0 when all were cut off while thinking, say): the metric did not choose
        log.warning("select: %s ties at the top_k=%d cut (%s): %s chosen over %s by leaderboard order, not by the "
                    "metric", metric, k, format_value(tied[0].metrics[metric]), ranked[k - 1].candidate,
                    ", ".join(row.candidate for row in tied))
    return ranked[:k], tied
