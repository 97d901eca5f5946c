"""The leaderboard: one row per scored model, written as JSON (for code) and markdown (for people)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from tempa.sft.files import finite_json, write_atomic, write_json
from tempa.sft.stage_api import RunPath, StageResult

LEADERBOARD_JSON = "leaderboard.json"
LEADERBOARD_MD = "leaderboard.md"
# lm-eval's wikitext reports word_perplexity, byte_perplexity and bits_per_byte; unparsable counts judge failures.
_LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error", "stderr", "bits_per_byte", "unparsable", "unanswered",
                    "undetermined", "truncated")


_UNREAD_SHARES = ("undetermined", "unparsable", "unanswered")  # as a breakdown's qualifier: the share goes down
_COUNTS = ("rows", "tokens")
# Shown only where some candidate has a non-zero value: replies cut off while thinking (merge.answers.unanswered).
# and answers whose language could not be told (merge.language), and replies cut off at max_new_tokens
_WHEN_NONZERO = ("unanswered", "undetermined", "truncated")


def is_headline(metric: str) -> bool:
    """Shown in the markdown table: not a breakdown (``name:qualifier``) and not a count."""
    last = metric.rsplit("/", 1)[-1]
    return ":" not in last and last not in _COUNTS


def lower_is_better(metric: str) -> bool:
    """Direction of a metric, from its last name component: losses and perplexities go down.

    A breakdown's qualifier (after ``:``) is data, a win-rate category, a language or an instruction type, and
    says nothing of the direction (``win_rate:error_analysis`` is a win rate), except a share of replies that could
    not be read: ``language:undetermined`` goes down like ``undetermined``.
    """
    name, _, qualifier = metric.rsplit("/", 1)[-1].lower().partition(":")
    return any(word in name for word in _LOWER_IS_BETTER) or qualifier in _UNREAD_SHARES


def _nan_for_null(value: Any) -> Any:
    return math.nan if value is None else value


# A metric a result keeps: NaN in memory (no value; ranked last), null as written (:func:`tempa.sft.files.finite_json`,
# and pydantic's JSON), NaN again as read back, so a run whose judge gave no verdict is resumed, re-run and reported.
MetricValue = Annotated[float, BeforeValidator(_nan_for_null)]


def metrics_from_json(metrics: dict[str, float | None]) -> dict[str, float]:
    """Metrics as written (:data:`MetricValue`: a value that is no finite number as null) read back: null is NaN
    again (no value; ranked last)."""
    return {name: float(_nan_for_null(value)) for name, value in metrics.items()}


class LeaderboardRow(BaseModel):
    """One scored model."""

    model_config = ConfigDict(extra="forbid")

    candidate: str = Field(description='Unique display name: "sft/checkpoint-200", "sft", "merge".')
    path: RunPath = Field(description="The model folder that was scored.")
    stage: str | None = Field(default=None, description="The stage that produced it.")
    step: int | None = Field(default=None, description="Checkpoint step, when it is a checkpoint.")
    merged: bool = Field(default=False, description="Produced by a merge stage.")
    metrics: dict[str, MetricValue] = Field(default_factory=dict)


class Leaderboard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[LeaderboardRow]
    rank_by: str | None = None
    # Where the recipe says a metric's direction (a merge's select.higher_is_better): metric -> lower is better.
    # Every other metric's comes from its name (:func:`lower_is_better`).
    lower: dict[str, bool] = Field(default_factory=dict)
    # Lines a reader of the table must see (a ranking on mostly undetermined answers), above the table.
    notes: list[str] = Field(default_factory=list)

    def lower_is_better(self, metric: str) -> bool:
        return self.lower.get(metric, lower_is_better(metric))

    @property
    def metric_names(self) -> list[str]:
        """All metrics, suite by suite (the suites in the order first seen, each suite's metrics as first seen): a
        metric the first candidates lacked (no answer in a detected language, say) stays beside its suite's."""
        names = list(dict.fromkeys(name for row in self.rows for name in row.metrics))
        suites = list(dict.fromkeys(name.split("/", 1)[0] for name in names))
        return sorted(names, key=lambda name: suites.index(name.split("/", 1)[0]))

    def ranked(self) -> list[LeaderboardRow]:
        """Rows best first by ``rank_by`` (missing/NaN last), else in scoring order."""
        if not self.rank_by:
            return list(self.rows)
        metric = self.rank_by
        sign = 1.0 if self.lower_is_better(metric) else -1.0

        def key(row: LeaderboardRow) -> tuple[int, float]:
            value = row.metrics.get(metric)
            if value is None or math.isnan(value):
                return (1, 0.0)
            return (0, sign * value)

        return sorted(self.rows, key=key)

    def best(self) -> LeaderboardRow | None:
        """The first row by ``rank_by``; None when no row has a value of it (a judge that never gave a verdict, say)."""
        if not self.rank_by or not self.rows:
            return None
        first = self.ranked()[0]
        value = first.metrics.get(self.rank_by)
        return None if value is None or math.isnan(value) else first

    def tied_with_best(self) -> list[LeaderboardRow]:
        """The rows other than :meth:`best` with its very value of ``rank_by``: the metric did not choose between
        them (every checkpoint at accuracy 1.0 on a small suite, say), scoring order did."""
        best = self.best()
        if best is None:
            return []
        value = best.metrics[self.rank_by]
        return [row for row in self.rows if row is not best and row.metrics.get(self.rank_by) == value]

    def tie_note(self) -> str | None:
        """One line naming the candidates tied with the best on ``rank_by`` (None without a tie): the table's first
        row alone reads as the metric's choice."""
        best, tied = self.best(), self.tied_with_best()
        if best is None or not tied:
            return None
        return (f"Tied at the top on `{self.rank_by}` ({format_value(best.metrics[self.rank_by])}): "
                f"{', '.join([best.candidate, *(row.candidate for row in tied)])}; {best.candidate} is first by "
                "scoring order, not by the metric.")

    def to_json(self) -> dict[str, Any]:
        return {
            "rank_by": self.rank_by,
            **({"notes": self.notes} if self.notes else {}),
            "metrics": {name: ("min" if self.lower_is_better(name) else "max") for name in self.metric_names},
            "rows": [{**row.model_dump(mode="json"), "metrics": finite_json(row.metrics)} for row in self.ranked()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Leaderboard:
        said = {name: direction == "min" for name, direction in (data.get("metrics") or {}).items()}
        return cls(rows=[LeaderboardRow.model_validate(row) for row in data.get("rows", [])],
                   rank_by=data.get("rank_by"), notes=data.get("notes") or [],
                   lower={name: low for name, low in said.items() if low != lower_is_better(name)})

    def uneven_rows(self) -> dict[str, dict[str, float]]:
        """Per ``<suite>/rows`` metric whose value differs between candidates, each candidate's: their scores are
        over different rows (a win rate drops a row whose verdict could not be read), so the table shows the count
        beside them."""
        uneven = {}
        for name in self.metric_names:
            if name.rsplit("/", 1)[-1] == "rows":
                counts = {row.candidate: row.metrics[name] for row in self.rows if name in row.metrics}
                if len(set(counts.values())) > 1:
                    uneven[name] = counts
        return uneven

    def to_markdown(self, title: str | None = None, *, rest_in: str | None = "leaderboard.json") -> str:
        """A readable table of the headline metrics; the best value of each is in bold, arrows show
        the direction. Breakdowns (``metric:language``, ``metric:type``) and counts stay in the JSON, which
        ``rest_in`` names (None where the reader has no such file: a model card on the hub)."""
        uneven = set(self.uneven_rows())
        names = [name for name in self.metric_names if name in uneven or (is_headline(name) and (
            name.rsplit("/", 1)[-1] not in _WHEN_NONZERO or any(row.metrics.get(name) for row in self.rows)))]
        hidden = len(self.metric_names) - len(names)
        rows = self.ranked()
        best: dict[str, float] = {}
        for name in names:
            values = [r.metrics[name] for r in rows if name in r.metrics and not math.isnan(r.metrics[name])]
            if values and min(values) != max(values) and name not in uneven:  # a count is no better for being larger
                best[name] = min(values) if self.lower_is_better(name) else max(values)
        steps = any(row.step is not None for row in rows)  # final models alone (a merge's, a card's): no column
        header = ["model", *(["step"] if steps else []), *[
            n if n in uneven else f"{n} {'↓' if self.lower_is_better(n) else '↑'}" for n in names]]
        lines = []
        if title:
            lines += [f"## {title}", ""]
        if self.rank_by:
            lines += [f"Ranked by `{self.rank_by}`.", ""]
        if note := self.tie_note():
            lines += [note, ""]
        lines += [line for note in self.notes for line in (f"Note: {note}.", "")]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |")
        for row in rows:
            label = f"{row.candidate} (merged)" if row.merged else row.candidate
            cells = [label, *(["" if row.step is None else str(row.step)] if steps else [])]
            for name in names:
                value = row.metrics.get(name)
                if value is None:
                    cells.append("–")
                    continue
                text = f"{value:g}" if name in uneven else format_value(value)
                cells.append(f"**{text}**" if best.get(name) == value else text)
            lines.append("| " + " | ".join(cells) + " |")
        if hidden and rest_in:
            lines += [
                "",
                f"{hidden} more metrics (per-language and per-type breakdowns, counts) in {rest_in}.",
            ]
        return "\n".join(lines) + "\n"


# SEA-IFEval's normalised accuracy keeps the score of an answer too short to tell its language: a candidate that
# collapsed into bare numbers or one-word replies loses nothing to it, and can rank first on it.
MOSTLY_UNDETERMINED = 0.5


def undetermined_warning(board: Leaderboard, metric: str | None, row: LeaderboardRow | None) -> str | None:
    """One line when ``metric`` is a language suite's normalised accuracy and ``row`` (the best, or a merge's first
    pick) has at least :data:`MOSTLY_UNDETERMINED` of that suite's answers undetermined; else None."""
    if not metric or row is None or "/" not in metric:
        return None
    suite, name = metric.rsplit("/", 1)
    share = row.metrics.get(f"{suite}/undetermined")
    if name.partition(":")[0] != "normalized_accuracy" or share is None or not share >= MOSTLY_UNDETERMINED:
        return None
    return (f"{row.candidate} ranks first on {metric}, but {share:.0%} of its answers in suite '{suite}' are too "
            "short (or too few Han characters) to tell their language (undetermined), and normalized accuracy keeps their score: a checkpoint "
            "that collapsed into very short replies ranks first; check its answers, or rank by another metric")


class EvaluateResult(StageResult):
    """An evaluate stage's result: the leaderboard of its candidates (the model it started from passes on)."""

    leaderboard: Leaderboard


# A metric with no value (a win rate without a parsed verdict), as leaderboard.json holds it: one word everywhere.
NO_VALUE = "null"


def format_value(value: float) -> str:
    """A metric in leaderboard.md and the card: ``null`` for no value (NaN), the word leaderboard.json writes."""
    if math.isnan(value):
        return NO_VALUE
    if abs(value) >= 1000:
        return f"{value:.1f}"
    return f"{value:.4f}"


def format_compared(*values: float | None) -> list[str]:
    """Values set side by side (a merge's score and its best input's), as :func:`tempa.sft.stage_api.format_metric`
    prints them, with as many more significant digits as tell apart two that differ (6.592819 and 6.592697 read
    6.593 twice beside "did not improve"); none as '–', no value (NaN) as ``null``."""
    from tempa.sft.stage_api import format_metric

    finite = {value for value in values if value is not None and math.isfinite(value)}
    digits = 4
    while digits < 17 and len({f"{value:.{digits}g}" for value in finite}) < len(finite):
        digits += 1
    return [format_metric(value) if value is None else NO_VALUE if math.isnan(value) else f"{value:.{digits}g}"
            for value in values]


def write_leaderboard(board: Leaderboard, out_dir: Path, title: str | None = None) -> tuple[Path, Path]:
    """Write ``leaderboard.json`` and ``leaderboard.md`` into ``out_dir``."""
    json_path, md_path = out_dir / LEADERBOARD_JSON, out_dir / LEADERBOARD_MD
    write_json(json_path, board.to_json())
    write_atomic(md_path, board.to_markdown(title))
    return json_path, md_path


def read_leaderboard(stage_dir: Path) -> Leaderboard:
    path = stage_dir / LEADERBOARD_JSON
    return Leaderboard.from_json(json.loads(path.read_text(encoding="utf-8")))
