"""The `generate_prompts` stage: a teacher writes new user prompts from topics (Magpie-style, from scratch).

Swallow v0.3's gemma-magpie: "User instructions were created with prompts specific to each topic";
the conversations were then filtered by heuristics and by a judge's 1-10 score. Here the teacher
writes ``per_topic`` prompts for each topic (one request each, sampled, so they differ), in the
target language; heuristic filters and an optional judge (``min_score``) drop weak ones. The output
``<stage>/data/prompts.jsonl`` (``{"messages": [{"role": "user", ...}], "language", "topic"}``)
is a prompts dataset: a later `synthesize` stage answers it (``prompts: {path: stage:<name>}``)
and can judge the whole conversation (``select: {by: judge, min_score: 8}``)::

    - name: magpie-prompts
      kind: generate_prompts
      topics: [cooking, Japanese history, programming]   # or a .txt file, one topic a line
      per_topic: 100
      language: ja
      teacher: {backend: {type: http, ...}, temperature: 1.0, max_new_tokens: 256}
      judge: {backend: {type: http, ...}, min_score: 8}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from tempa.alignment.judge import language_name, text_or_file
from tempa.alignment.teacher_text import (
    JUDGE_JOURNAL,
    PREAMBLE,
    TEACHER_JOURNAL,
    Gate,
    JudgeGate,
    TeacherSettings,
    TeacherTextResult,
    TextFilters,
    ask_teacher,
    check_servers,
    gate_scores,
    gate_stats,
    language_detail,
    output_files,
    result_judges,
    teacher_backend,
    teacher_reads,
    teacher_store,
    write_outputs,
)
from tempa.sft import language
from tempa.sft.stage_api import (
    Read,
    SourceSize,
    StageConfigBase,
    StageContext,
    StageResult,
    resolve_path,
)

OUTPUT_FILE = "data/prompts.jsonl"

WRITE_PROMPT = """{system}Write one realistic message that a user might send to an AI assistant about the topic \
below, in {language}. Make it specific and self-contained: a question, a task or a request for advice. Output \
only the user's message, with no preamble, no answer and no quotation marks.

Topic: {topic}
(variation {index})"""

PROMPT_RUBRIC = """You are a strict judge of user prompts written for training an AI assistant in {language}.

Rate the prompt below for clarity, specificity, naturalness in {language} and usefulness as a training \
instruction (a prompt that is vague, not in {language}, or already contains its answer is poor). First \
explain briefly, then give a rating from 1 to 10 in exactly this format: [[rating]]

[Prompt]
{question}
[End of prompt]"""


class GeneratePromptsStageConfig(StageConfigBase):
    """A teacher writes user prompts per topic; heuristic filters and a judge threshold keep the good ones."""

    kind: Literal["generate_prompts"] = "generate_prompts"
    topics: list[str] = Field(min_length=1, description="Topics (or one .txt path: one topic a line).")
    per_topic: int = Field(default=10, ge=1, description="Prompts requested per topic (before filtering).")
    language: str = Field(description="ISO 639-1 code of the prompts' language.")
    system_prompt: str | None = Field(
        default=None, description="A persona or scenario for the prompts (inline or a .txt path), given to the "
        "teacher before each request (the `{system}` placeholder).",
    )
    instruction: str = Field(
        default=WRITE_PROMPT, description="The request per prompt (inline or .txt), with {topic}, {language}, "
        "{index} and {system} placeholders.",
    )
    teacher: TeacherSettings = Field(
        default_factory=lambda: TeacherSettings(temperature=1.0, max_new_tokens=256),
        description="Who writes the prompts (sampled: temperature > 0 makes them differ).",
    )
    filters: TextFilters = Field(default_factory=lambda: TextFilters(min_chars=10, max_chars=2000),
                                 description="Heuristic filters (length, language, duplicates).")
    judge: JudgeGate | None = Field(default=None, description="Optional: rate each prompt 1-10, keep >= min_score.")

    @field_validator("topics")
    @classmethod
    def _topics(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if len(value) == 1 and value[0].endswith(".txt"):
            text = Path(resolve_path(value[0], info)).read_text(encoding="utf-8")
            value = [line.strip() for line in text.splitlines() if line.strip()]
            if not value:
                raise ValueError("the topics file has no topics")
        return value

    @field_validator("language")
    @classmethod
    def _code(cls, value: str) -> str:
        return language.check_codes([value])[0]

    @field_validator("system_prompt", "instruction")
    @classmethod
    def _text(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else text_or_file(value, info)

    def reads(self, earlier: Sequence[str]) -> list[Read]:
        return teacher_reads(self.teacher, self.judge)


class GeneratePromptsResult(TeacherTextResult):
    """The prompts dataset (``dataset``), how many prompts it holds, and what was rejected."""


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def run_generate_prompts(config: GeneratePromptsStageConfig, ctx: StageContext) -> GeneratePromptsResult:
    check_servers(ctx, [("teacher", "teacher.backend", config.teacher.backend, [TEACHER_JOURNAL])]
                  + ([("judge", "judge.backend", config.judge.backend, [JUDGE_JOURNAL])] if config.judge else []))
    target = language_name(config.language) or config.language
    system = f"{config.system_prompt.strip()}\n\n" if config.system_prompt else ""
    jobs = [(topic, i) for topic in config.topics for i in range(config.per_topic)]
    requests = [_fill(config.instruction, topic=topic, language=target, index=str(i + 1), system=system)
                for topic, i in jobs]
    teacher = teacher_backend(config.teacher.backend, ctx, "teacher")
    ctx.log.info("%s: %d prompt(s) requested (%d topic(s) x %d) in %s from %s", ctx.stage_name, len(jobs),
                 len(config.topics), config.per_topic, target, teacher.describe)
    params = config.teacher.params(ctx.seed)
    try:
        answers = ask_teacher(teacher, requests, params, teacher_store(ctx, config.teacher, params),
                              desc=f"{ctx.stage_name}: write prompts")
    finally:
        teacher.close()

    gate, dropped, kept = Gate(config.filters), [], []
    for (topic, i), (text, finish_reason) in zip(jobs, answers, strict=True):
        text = text.strip().strip('"“”「」').strip()
        reason = gate.reason(text, finish_reason, config.language)
        detail = ({"detail": language_detail(text, config.language, config.filters.min_letters)}
                  if reason and reason.startswith("language_") else {})
        (dropped if reason else kept).append({"topic": topic, "index": i, "text": text, "reason": reason, **detail})
    judged: dict[str, float | int] = {}
    if config.judge is not None and kept:
        scores = gate_scores(config.judge, PROMPT_RUBRIC,
                             [{"question": k["text"], "language": config.language} for k in kept], ctx)
        judged = gate_stats(scores)
        passed = []
        for item, score in zip(kept, scores, strict=True):
            item["judge"] = score
            if score is None or score < config.judge.min_score:
                dropped.append({**item, "reason": "judge_unrated" if score is None else "judge_score"})
            else:
                passed.append(item)
        kept = passed

    rows = [{"messages": [{"role": "user", "content": k["text"]}], "language": config.language, "topic": k["topic"],
             **({"judge": k["judge"]} if "judge" in k else {}),
             "provenance": {"stage": ctx.stage_name, "teacher": teacher.describe, "seed": ctx.seed, "index": k["index"]}}
            for k in kept]
    stats = {"requested": len(jobs), "kept": len(rows), "rejected": dict(Counter(d["reason"] for d in dropped)),
             "teacher": teacher.describe, **({"judge": judged} if judged else {})}
    output = write_outputs(ctx, OUTPUT_FILE, rows, dropped, stats, "prompts")
    return GeneratePromptsResult(dataset=output, rows=len(rows), files=output_files(ctx), requested=len(jobs),
                                 rejected=stats["rejected"], judges=result_judges(judged),
                                 metrics={"rows": len(rows), "kept_fraction": round(len(rows) / len(jobs), 6),
                                          "rejected_preamble": stats["rejected"].get(PREAMBLE, 0)})


def generated_size(config: GeneratePromptsStageConfig, result: StageResult | None) -> SourceSize:
    """At most topics x per_topic prompts (exact once run)."""
    per_row = config.teacher.max_new_tokens // 2
    if isinstance(result, GeneratePromptsResult):
        return SourceSize(result.rows, per_row, f"{config.name}'s output")
    total = len(config.topics) * config.per_topic
    return SourceSize(total, per_row, f"at most {total:,} prompts from stage {config.name}", at_most=True)
