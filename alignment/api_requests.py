"""What a stage will ask of its HTTP servers (hosted APIs, or a vLLM / llama.cpp server), for `tempa plan`.

One line per server: the most requests a full run sends it, from the prompt counts the recipe gives (a prompts
file's rows, a `limit`, topics x per_topic). A re-run asks fewer: replies journaled earlier are read, not asked, and
no judge rates a sample its stage can never take. A server that honours `n` answers a prompt's samples in one
request; `supports_n: false` sends one per sample. What each request costs depends on its tokens, which the plan
does not know: the stage's metrics.json counts what was sent (`api_requests`, and the tokens servers report).
"""

from __future__ import annotations

from typing import Any

from tempa.alignment.backends import HTTPBackendConfig
from tempa.alignment.rewards import JudgeReward
from tempa.sft.data_size import count_local_rows
from tempa.sft.stage_api import stage_ref


def _prompts(source: Any, noun: str = "prompts") -> tuple[int | None, str]:
    """(how many prompts, or rows, a source gives, how that is known): its `limit` or its local file's rows."""
    if stage_ref(source.path) is not None:
        return source.limit, (f"at most its limit of {source.limit:,} {noun}" if source.limit
                              else f"the {noun} of stage {stage_ref(source.path)!r} (unknown until it runs)")
    rows = count_local_rows(source.path)
    count = min(rows, source.limit) if rows is not None and source.limit else (rows or source.limit)
    return count, f"{count:,} {noun}" if count is not None else f"an unknown number of {noun} (set a limit)"


def _line(who: str, backend: HTTPBackendConfig, count: int | None, per: str) -> str:
    asked = f"up to {count:,} requests" if count is not None else "an unknown number of requests"
    return f"{who}, model {backend.model}: {asked}, {per}"


def _sampled(count: int | None, n: int, backend: HTTPBackendConfig) -> tuple[int | None, str]:
    if backend.supports_n or n == 1:
        return count, "one per prompt" + (f" ({n} samples each, as `n`)" if n > 1 else "")
    return None if count is None else count * n, f"one per sample ({n} a prompt: supports_n is false)"


def _judges(rewards: list[Any], count: int | None, n: int, where: str, skipped: str) -> list[str]:
    samples = None if count is None else count * n
    return [_line(f"judge {reward.key!r} ({where}[{i}].backend)", reward.backend, samples,
                  f"one per sample ({skipped})")
            for i, reward in enumerate(rewards)
            if isinstance(reward, JudgeReward) and isinstance(reward.backend, HTTPBackendConfig)]


def synthesize_requests(config: Any) -> list[str]:
    """The teacher's and the judges' requests of a synthesize stage (first turns; second turns ask about as many
    again)."""
    count, known = _prompts(config.prompts)
    n = config.sampling.n
    out = []
    if isinstance(config.teacher, HTTPBackendConfig):
        asked, per = _sampled(count, n, config.teacher)
        out.append(_line("teacher", config.teacher, asked, f"{per}, for {known}"))
    skipped = "fewer: samples cut off or empty are not judged" if not config.keep_incomplete else "every sample"
    out += _judges(config.rewards, count, n, "rewards", skipped)
    if config.second_turn is not None and out:
        out.append("second turns: about as many requests again, for the kept first turns")
    return out


def preference_requests(config: Any) -> list[str]:
    """Per on-policy round, the judges' ratings and the reviser's rewrites (the policy samples on this machine)."""
    if not config.rounds or config.prompts is None:
        return []
    count, known = _prompts(config.prompts)
    rounds = config.rounds
    total = None if count is None else count * rounds
    n = config.sampling.n
    out = _judges(config.rewards, total, n, "rewards",
                   f"{known} x {rounds} round(s); fewer: samples that cannot be paired are not judged")
    revise = config.pairs.revise if config.pairs.strategy == "revise" else None
    if revise is not None and isinstance(revise.backend, HTTPBackendConfig):
        out.append(_line("reviser (pairs.revise.backend)", revise.backend, total, "one per prompt and round"))
    return out


def translate_requests(config: Any) -> list[str]:
    count, known = _prompts(config.source, "rows")
    per = "one per row" if config.turns == "first_user" else "one per turn translated (a row has several)"
    out = []
    if isinstance(config.teacher.backend, HTTPBackendConfig):
        out.append(_line("translator (teacher.backend)", config.teacher.backend,
                         count if config.turns == "first_user" else None, f"{per}, for {known}"))
    if config.judge is not None and isinstance(config.judge.backend, HTTPBackendConfig):
        out.append(_line("judge (judge.backend)", config.judge.backend, None if config.turns != "first_user" else count,
                         "one per translation kept by the filters"))
    return out


def generate_prompts_requests(config: Any) -> list[str]:
    count = len(config.topics) * config.per_topic
    out = []
    if isinstance(config.teacher.backend, HTTPBackendConfig):
        out.append(_line("writer (teacher.backend)", config.teacher.backend, count,
                         f"one per prompt ({len(config.topics)} topics x per_topic {config.per_topic})"))
    if config.judge is not None and isinstance(config.judge.backend, HTTPBackendConfig):
        out.append(_line("judge (judge.backend)", config.judge.backend, count, "one per prompt kept by the filters"))
    return out
