"""Text a teacher writes for a dataset (translations, new prompts): generation, filters and a judge gate.

Shared by the `translate` and `generate_prompts` stages. A teacher is asked with one user message
per item; its answer (think block removed) is the text. Heuristic filters then drop text that is
empty, cut off, too short or long, in the wrong language or a repeat; an optional judge rates what
is left on 1-10 and drops anything under ``min_score``. Every dropped item is kept with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tempa.alignment.backends import (
    BackendConfig,
    LazyBackend,
    SamplingBackend,
    TransformersBackendConfig,
    backend_reads,
    build_backend,
    describe_backend,
)
from tempa.alignment.generation import GenerationParams
from tempa.alignment.judge import Judge, JudgeSettings, fill
from tempa.sft import language as lang
from tempa.sft.files import write_json, write_jsonl
from tempa.sft.stage_api import Read, StageContext, StageError


class TeacherSettings(BaseModel):
    """Who writes the text and how it samples."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendConfig = Field(
        default_factory=TransformersBackendConfig,
        description="`{type: transformers|vllm|http, ...}`. Default: the model this stage starts from.",
    )
    temperature: float = Field(default=0.0, ge=0, description="0: greedy.")
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=1024, ge=1, description="Most tokens per text; longer ones are dropped.")
    batch_size: int = Field(default=16, ge=1, description="Requests per backend call.")

    def params(self, seed: int) -> GenerationParams:
        return GenerationParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                n=1, seed=seed, thinking_mode="off", batch_size=self.batch_size)


class TextFilters(BaseModel):
    """Heuristic filters on the teacher's text."""

    model_config = ConfigDict(extra="forbid")

    min_chars: int = Field(default=1, ge=1, description="Shortest text kept (characters, stripped).")
    max_chars: int | None = Field(default=None, ge=1, description="Longest text kept.")
    language: bool = Field(default=True, description="Drop text whose detected language is not the target "
                           "(text with too few letters to tell is kept).")
    min_letters: int = Field(default=lang.MIN_LETTERS, ge=1, description="Letters needed to judge a language.")
    dedup: bool = Field(default=True, description="Drop a text equal to an earlier one (case and spaces aside).")
    keep_incomplete: bool = Field(default=False, description="Keep text cut off at max_new_tokens (off: dropped).")


class JudgeGate(JudgeSettings):
    """An LLM judge that rates each text 1-10; texts under ``min_score`` (or unrated) are dropped."""

    min_score: float = Field(default=8, ge=1, le=10, description="Keep texts rated at least this (Swallow's "
                             "gemma-magpie rejects <= 7, i.e. keeps >= 8).")


def teacher_reads(teacher: TeacherSettings, judge: JudgeGate | None) -> list[Read]:
    reads = backend_reads(teacher.backend, ("teacher", "backend"))
    if judge is not None:
        reads += backend_reads(judge.backend, ("judge", "backend"))
    return reads


def ask_teacher(backend: SamplingBackend, requests: Sequence[str], params: GenerationParams) -> list[tuple[str, bool]]:
    """The teacher's answer to each request (one user message), and whether it ended by itself."""
    from tempa.chat_templates.thinking import split_reasoning

    out = []
    for group in backend.sample([[{"role": "user", "content": r}] for r in requests], params):
        completion = group[0]
        text = split_reasoning(completion.full_text).answer.strip()
        out.append((text, completion.finish_reason != "length"))
    return out


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass
class Gate:
    """Applies :class:`TextFilters` in order, remembering what it has kept (for dedup)."""

    filters: TextFilters
    seen: set[str] = field(default_factory=set)

    def reason(self, text: str, finished: bool, target: str | None) -> str | None:
        """Why ``text`` is dropped, or None when it passes."""
        if not finished and not self.filters.keep_incomplete:
            return "cut_off"
        if len(text) < self.filters.min_chars:
            return "too_short"
        if self.filters.max_chars is not None and len(text) > self.filters.max_chars:
            return "too_long"
        if self.filters.language and target:
            detected = lang.detect(text, min_letters=self.filters.min_letters)
            if detected.language is not None and detected.language not in lang.accepted([target]):
                return f"language_{detected.language}"
        if self.filters.dedup:
            key = _normalised(text)
            if key in self.seen:
                return "duplicate"
            self.seen.add(key)
        return None


def judge_scores(judge: Judge, rubric: str, items: Sequence[dict[str, Any]]) -> list[float | None]:
    """Ratings of ``items`` (each the rubric's placeholder values: question, answer, language, ...)."""
    return [verdict.score for verdict in judge.rate([fill(rubric, **item) for item in items])]


def teacher_backend(block: Any, ctx: StageContext, who: str) -> LazyBackend:
    """The backend a recipe block names, built on first use (a stage with nothing to ask loads nothing)."""
    name = describe_backend(block, ctx.start_model)
    return LazyBackend(lambda: build_backend(block, policy_dir=ctx.start_model, tokenizer_dir=ctx.tokenizer_dir,
                                             stage_models=ctx.stage_models, trust_remote_code=ctx.trust_remote_code,
                                             who=who), name)


def gate_scores(gate: JudgeGate, rubric: str, items: Sequence[dict[str, Any]], ctx: StageContext
                ) -> list[float | None]:
    """The judge's 1-10 ratings of ``items`` (rubric placeholder values), its backend closed after."""
    judge = Judge(teacher_backend(gate.backend, ctx, "judge"), gate, seed=ctx.seed)
    try:
        return judge_scores(judge, gate.rubric or rubric, items)
    finally:
        judge.backend.close()


def write_outputs(ctx: StageContext, output_file: str, rows: list[dict[str, Any]], rejects: list[dict[str, Any]],
                  stats: dict[str, Any], what: str) -> Path:
    """``rejects.jsonl`` and ``stats.json``, then the output (last: its presence means the stage finished)."""
    data_dir = ctx.stage_dir / "data"
    write_jsonl(data_dir / "rejects.jsonl", rejects)
    write_json(data_dir / "stats.json", stats)
    if not rows:
        raise StageError(f"stage '{ctx.stage_name}': no {what} passed the filters ({stats['rejected']}); "
                         f"see {data_dir / 'rejects.jsonl'}")
    output = ctx.stage_dir / output_file
    write_jsonl(output, rows)
    ctx.log.info("%s: kept %d %s; rejected %s", ctx.stage_name, len(rows), what, stats["rejected"] or "none")
    return output


def output_files(ctx: StageContext) -> dict[str, Path]:
    data_dir = ctx.stage_dir / "data"
    return {"rejects": data_dir / "rejects.jsonl", "stats": data_dir / "stats.json"}
