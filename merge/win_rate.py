"""Pairwise judge win rate against a baseline model (SEA-MTBench / MT-Bench style).

Each row is a multi-turn conversation (``turns``: the user messages, or the user turns of
``messages``) with a ``category``. The candidate and the baseline each answer the turns one by
one, seeing their own earlier answers; the judge compares the two whole conversations twice, once
with the candidate as assistant A and once as B, so a judge that prefers a position gains nobody
anything. A verdict is ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie). The candidate scores 1 for a win,
0.5 for a tie and 0 for a loss in each order; a row's score is the mean over the two orders (a row
whose two verdicts disagree scores 0.5, as MT-Bench counts inconsistent verdicts as a tie). A row
with an unparsable verdict in either order is not scored (``unparsable:judge`` counts the replies,
``rows`` the rows scored): one order alone is the position bias the swap is there to cancel. The
headline ``win_rate`` is the weighted win rate of the SEA-LION cards: the mean over categories of each
category's mean row score; ``win_rate:<category>`` holds each category's, ``micro_win_rate`` the plain mean
over rows.

The baseline's answers do not depend on the candidate: they are generated once per stage run and
cached (under the shared cache when there is one) keyed by the baseline, the rows, the generation
settings, the template and the seed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tempa.alignment.judge import Judge, fill
from tempa.chat_templates.thinking import split_reasoning
from tempa.sft.files import digest, write_json
from tempa.sft.formats import thinking_mode_of
from tempa.sft.stage_api import StageError

PAIRWISE_RUBRIC = """Please act as an impartial judge and evaluate the two conversations below between a \
user and two AI assistants, A and B. Judge which assistant answers the user's questions better over the \
whole conversation, for helpfulness, correctness, relevance, depth and instruction following.{language_clause} \
Do not let the order of the conversations, their length or the assistants' names influence you. First \
explain your comparison briefly, then give your verdict in exactly this format: [[A]] if assistant A is \
better, [[B]] if assistant B is better, [[C]] for a tie.

[Conversation with assistant A]
{answer}
[End of conversation with assistant A]

[Conversation with assistant B]
{reference}
[End of conversation with assistant B]"""

_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
DEFAULT_CATEGORY = "all"


def parse_verdict(text: str) -> str | None:
    """``A``, ``B`` or ``C`` (tie): the last ``[[X]]`` in the judge's answer (its think block ignored)."""
    found = _VERDICT.findall(split_reasoning(text).answer)
    return found[-1] if found else None


def candidate_points(verdict: str | None, candidate_is: str) -> float | None:
    """What one order's verdict gives the candidate (who was assistant ``candidate_is``)."""
    if verdict is None:
        return None
    if verdict == "C":
        return 0.5
    return 1.0 if verdict == candidate_is else 0.0


def row_score(first: str | None, second: str | None) -> float | None:
    """A row's score from the verdict with the candidate as A (``first``) and as B (``second``); None unless both
    parsed: a judge that always answers [[A]] would otherwise give 1 to every row whose second verdict failed."""
    points = (candidate_points(first, "A"), candidate_points(second, "B"))
    if points[0] is None or points[1] is None:
        return None
    return (points[0] + points[1]) / 2


def win_rates(categories: Sequence[str], scores: Sequence[float | None]) -> dict[str, float]:
    """The weighted (category-averaged) win rate, each category's, and the plain mean over rows."""
    by_category: dict[str, list[float]] = {}
    for category, score in zip(categories, scores, strict=True):
        if score is not None:
            by_category.setdefault(category, []).append(score)
    if not by_category:
        # Not an error: like an unrated reward, it is counted (``unparsable:judge``) and ranks last.
        return {"win_rate": math.nan, "micro_win_rate": math.nan, "rows": 0.0}
    per_category = {c: sum(v) / len(v) for c, v in sorted(by_category.items())}
    judged = [s for s in scores if s is not None]
    out = {"win_rate": sum(per_category.values()) / len(per_category),
           "micro_win_rate": sum(judged) / len(judged), "rows": float(len(judged))}
    out.update({f"win_rate:{category}": value for category, value in per_category.items()})
    return out


@dataclass(frozen=True)
class PairwiseRow:
    """One evaluation conversation: its user turns and its category."""

    turns: list[str]
    category: str
    system: str | None = None
    thinking_mode: str | None = None  # the row's own; the suite's `thinking_mode` wins, as in the other suites


def pairwise_row(row: dict[str, Any], turns_field: str, category_field: str) -> PairwiseRow:
    """A row as user turns + category; ValueError (one line, the row's problem) when it has no user turn."""
    turns = row.get(turns_field)
    system = row.get("system")
    if turns is None and isinstance(row.get("messages"), list):
        turns = [m.get("content") for m in row["messages"] if m.get("role") == "user"]
        system = next((m.get("content") for m in row["messages"] if m.get("role") == "system"), system)
    if isinstance(turns, str):
        turns = [turns]
    if turns is None and isinstance(row.get("prompt"), str):
        turns = [row["prompt"]]
    if not turns or not all(isinstance(t, str) and t for t in turns):
        raise ValueError(f"expected '{turns_field}' (a list of user messages), 'messages' with user turns, or a "
                         f"'prompt' string; got {str(row)[:120]}")
    category = row.get(category_field)
    return PairwiseRow(list(turns), str(category) if category not in (None, "") else DEFAULT_CATEGORY, system,
                       thinking_mode_of(row.get("thinking_mode"), "thinking_mode"))


def pairwise_rows(rows: Sequence[dict[str, Any]], turns_field: str, category_field: str) -> list[PairwiseRow]:
    """Rows checked when read (:func:`tempa.merge.suites.suite_row_problem`) as :class:`PairwiseRow`."""
    return [pairwise_row(row, turns_field, category_field) for row in rows]


def answer_conversations(scorer: Any, rows: Sequence[PairwiseRow], mode: str | None,
                         max_new_tokens: int | None) -> list[list[dict[str, Any]]]:
    """Each row's conversation as ``scorer``'s model holds it: turn by turn, seeing its own answers, in ``mode``
    (else the row's own ``thinking_mode``, else the template's default)."""
    conversations: list[list[dict[str, Any]]] = [
        ([{"role": "system", "content": row.system}] if row.system else []) for row in rows
    ]
    for turn in range(max(len(row.turns) for row in rows)):
        active = [i for i, row in enumerate(rows) if turn < len(row.turns)]
        prompts = [conversations[i] + [{"role": "user", "content": rows[i].turns[turn]}] for i in active]
        texts = scorer.complete(prompts, [mode or rows[i].thinking_mode for i in active], max_new_tokens)
        for i, prompt, text in zip(active, prompts, texts, strict=True):
            conversations[i] = [*prompt, {"role": "assistant", "content": scorer.answer(text)}]
    return conversations


def transcript(conversation: Sequence[dict[str, Any]]) -> str:
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"### {names.get(m['role'], m['role'])}:\n{m.get('content') or ''}" for m in conversation)


def judge_pairs(judge: Judge, rubric: str, candidate: Sequence[list[dict[str, Any]]],
                baseline: Sequence[list[dict[str, Any]]], language: str | None = None,
                max_unparsable: float = 1.0, where: str = "win rate") -> tuple[list[str | None], list[str | None]]:
    """The judge's verdicts with the candidate as A, then with the candidate as B.

    Raises StageError (one line, quoting a reply) when more than ``max_unparsable`` of the replies have no verdict.
    """
    def prompts(first, second):
        return [fill(rubric, answer=transcript(a), reference=transcript(b), language=language)
                for a, b in zip(first, second, strict=True)]

    replies = judge.ask(prompts(candidate, baseline) + prompts(baseline, candidate))
    verdicts = [parse_verdict(reply) for reply in replies]
    failed = [reply for reply, verdict in zip(replies, verdicts, strict=True) if verdict is None]
    judge.unparsable += len(failed)
    if replies and len(failed) / len(replies) > max_unparsable:
        reply = " ".join(failed[0].split())[:160]
        raise StageError(f"{where}: the judge gave no [[A]]/[[B]]/[[C]] verdict in {len(failed)} of {len(replies)} "
                         f"replies ({len(failed) / len(replies):.0%} > max_unparsable {max_unparsable:g}); e.g. "
                         f"{reply!r}. Use a judge that follows the rubric, or raise max_unparsable")
    half = len(candidate)
    return verdicts[:half], verdicts[half:]


def consistency(first: Sequence[str | None], second: Sequence[str | None]) -> float:
    """Share of rows whose two verdicts name the same winner (A in one order is B in the other)."""
    swapped = {"A": "B", "B": "A", "C": "C"}
    pairs = [(a, b) for a, b in zip(first, second, strict=True) if a is not None and b is not None]
    return sum(swapped[a] == b for a, b in pairs) / len(pairs) if pairs else float("nan")


class BaselineAnswers:
    """The baseline's conversations per suite, generated once and cached on disk."""

    def __init__(self, cache_dir: Path, make_scorer: Any, describe: str, material: dict[str, Any]) -> None:
        self.cache_dir = cache_dir
        self.make_scorer = make_scorer  # () -> a scorer over the baseline model (loaded only when needed)
        self.describe = describe
        self.material = material
        self._memory: dict[str, list[list[dict[str, Any]]]] = {}
        self.generated = 0  # rows the baseline answered in this process (0 when every answer was cached)

    def get(self, suite_key: str, rows: Sequence[PairwiseRow], mode: str | None,
            max_new_tokens: int | None) -> list[list[dict[str, Any]]]:
        key = digest({**self.material, "baseline": self.describe, "rows": [r.__dict__ for r in rows],
                      "mode": mode, "max_new_tokens": max_new_tokens})
        if key in self._memory:
            return self._memory[key]
        path = self.cache_dir / f"{key}.json"
        if path.is_file():
            conversations = json.loads(path.read_text(encoding="utf-8"))["conversations"]
        else:
            scorer = self.make_scorer()
            try:
                conversations = answer_conversations(scorer, rows, mode, max_new_tokens)
            finally:
                scorer.backend.close()
            self.generated += len(rows)
            write_json(path, {"suite": suite_key, "baseline": self.describe, "conversations": conversations})
        self._memory[key] = conversations
        return conversations


class PairwiseJudging:
    """What win-rate suites share across candidates: one judge and one baseline per suite, built lazily.

    ``make_backend(config, who)`` builds a sampling backend from a recipe block; ``make_scorer(backend)``
    wraps one as a scorer (the same generation settings the candidates get).
    """

    def __init__(self, make_backend: Any, make_scorer: Any, cache_dir: Path, material: dict[str, Any],
                 seed: int = 0, identity: Any = None) -> None:
        self.make_backend = make_backend
        self.make_scorer = make_scorer
        self.cache_dir = cache_dir
        self.material = material
        self.seed = seed
        # identity(baseline block) -> what its answers depend on (its model's weights, say)
        self.identity = identity or (lambda block: block.model_dump(mode="json"))
        self._judges: dict[str, Judge] = {}
        self._baselines: dict[str, BaselineAnswers] = {}

    def judge(self, suite: Any) -> Judge:
        if suite.key not in self._judges:
            backend = self.make_backend(suite.judge.backend, f"suite '{suite.key}' judge")
            self._judges[suite.key] = Judge(backend, suite.judge, seed=self.seed)
        return self._judges[suite.key]

    def baseline(self, suite: Any) -> BaselineAnswers:
        if suite.key not in self._baselines:
            describe = json.dumps(self.identity(suite.baseline), sort_keys=True, default=str)
            self._baselines[suite.key] = BaselineAnswers(
                self.cache_dir, lambda: self.make_scorer(self.make_backend(suite.baseline, f"suite '{suite.key}' baseline")),
                describe, self.material,
            )
        return self._baselines[suite.key]

    def close(self) -> None:
        for judge in self._judges.values():
            judge.backend.close()
        self._judges.clear()
