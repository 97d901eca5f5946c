"""The `translate` stage: machine translation of prompts (or whole conversations) by a teacher model.

Swallow v0.3 translated LMSYS-Chat-1M's first-turn prompts into Japanese (with DeepL) and
magpie-ultra's conversations with gemma-2-27b-it; this stage does either with any teacher backend
(an OpenAI-compatible server, vLLM, transformers), into any language::

    - name: translate
      kind: translate
      source: {path: lmsys/lmsys-chat-1m, messages_field: conversation, limit: 200000}
      target_language: ja
      turns: first_user            # or: all (every message: an SFT dataset)
      teacher: {backend: {type: http, base_url: http://127.0.0.1:8000/v1, model: google/gemma-2-27b-it}}
      judge: {backend: ..., min_score: 7}   # optional: rate each translation 1-10

Output ``<stage>/data/translated.jsonl``: ``{"messages": [...], "language": <target>, "provenance"}``
rows, a prompts dataset (``turns: first_user``) or an SFT dataset (``turns: all``) that a later
stage reads with ``path: stage:<name>``; ``rejects.jsonl`` holds what was dropped and why,
``stats.json`` the counts.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from tempa.alignment.judge import language_name, text_or_file
from tempa.alignment.prompts import PromptSource, first_in_languages, read_named_rows, shuffled_positions
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
from tempa.sft.stage_api import Read, SourceSize, StageConfigBase, StageContext, StageError, StageResult

OUTPUT_FILE = "data/translated.jsonl"

TRANSLATE_PROMPT = """Translate the text below into {language}. Keep its meaning, tone, formatting, code and \
names; do not answer it, explain it or add anything. Output only the translation.

[Text]
{text}
[End of text]"""

TRANSLATION_RUBRIC = """You are a strict judge of translations into {language}.

Rate the translation below for faithfulness to the original (nothing added, dropped or answered), fluency \
and naturalness in {language}. First explain briefly, then give a rating from 1 (unusable) to 10 \
(perfect) in exactly this format: [[rating]]

[Original]
{question}

[Translation]
{answer}
[End of translation]"""


# The source fields translate reads; the others shape prompts for sampling stages.
_READ = ("messages_field", "prompt_field", "limit", "shuffle", "languages")
_NOT_READ = frozenset(PromptSource.model_fields) - {"path", "split", *_READ}


class TranslateStageConfig(StageConfigBase):
    """Translate prompts (first user turns) or whole conversations with a teacher; filter and judge them."""

    kind: Literal["translate"] = "translate"
    source: PromptSource = Field(description="What to translate: rows with `messages` (or a `prompt` string). It "
                                 "reads path, split, messages_field, prompt_field, shuffle, limit and languages (the "
                                 "language of each row's first user message); the other fields are refused.")
    target_language: str = Field(description="ISO 639-1 code of the language to translate into (ja, id, th...).")
    turns: Literal["first_user", "all"] = Field(
        default="first_user",
        description="`first_user`: the first user message only (a prompts dataset, as Swallow's LMSYS first "
        "turns); `all`: every message of the conversation (an SFT dataset, as Swallow's magpie-ultra-ja).",
    )
    response_field: str | None = Field(
        default=None, description="With `turns: all` and rows of a prompt string: the column with the assistant's "
        "answer (e.g. magpie-ultra's `response`), so the pair is translated as a two-turn conversation.",
    )
    teacher: TeacherSettings = Field(default_factory=TeacherSettings, description="The translator.")
    instruction: str = Field(
        default=TRANSLATE_PROMPT,
        description="The request sent per text (inline or a .txt path), with {text} and {language} placeholders.",
    )
    filters: TextFilters = Field(default_factory=TextFilters, description="Heuristic filters per translated text.")
    max_length_ratio: float = Field(
        default=4.0, gt=1, description="Drop a translation more than this many times longer than the original "
        "(or shorter than its inverse): a sign the teacher answered instead of translating.",
    )
    judge: JudgeGate | None = Field(
        default=None, description="Optional: an LLM judge rates each translated conversation 1-10 (default rubric: "
        "faithfulness and fluency); under min_score it is dropped.",
    )

    @field_validator("target_language")
    @classmethod
    def _code(cls, value: str) -> str:
        return language.check_codes([value])[0]

    @field_validator("source")
    @classmethod
    def _read_fields(cls, value: PromptSource) -> PromptSource:
        # A prompt source's other fields shape prompts for sampling; translate copies rows as they are, so one set here
        # would be ignored in silence (a system_prompt never sent, an answer column not carried).
        ignored = sorted(_NOT_READ & value.model_fields_set)
        if ignored:
            them = "it" if len(ignored) == 1 else "them"
            raise ValueError(f"{', '.join(ignored)}: translate does not read {them} (it reads path, split, "
                             f"{', '.join(_READ)}); remove {them}")
        return value

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, value: str, info: ValidationInfo) -> str:
        text = text_or_file(value, info)
        if "{text}" not in text:
            raise ValueError("the instruction needs a {text} placeholder")
        return text

    def reads(self, earlier: Sequence[str]) -> list[Read]:
        """The stage whose dataset `source.path: stage:NAME` reads; stages whose models the backends name."""
        return self.source.reads(("source",)) + teacher_reads(self.teacher, self.judge)


class TranslateResult(TeacherTextResult):
    """The translated dataset (``dataset``), how many rows it holds, and what was rejected."""


NO_USER_MESSAGE = "no_user_message"


def _conversations(config: TranslateStageConfig, rows: Sequence[Any],
                   names: Sequence[str]) -> tuple[list[list[dict[str, Any]]], list[int]]:
    """Each row's messages to translate (the first user message only, or all of them), and the rows that have no
    user message to translate (with ``first_user``: a system-only or assistant-only row, as hub exports hold: left
    for the rejects, their messages as read). A row of another shape (no messages, not an object) is a StageError
    naming it as ``names`` do (its line in JSON Lines, as every prompt reader names rows): the source's field names
    are wrong, not one row."""
    source, out, unusable = config.source, [], []
    for row, name in zip(rows, names, strict=True):
        where = f"{source.path}: {name}"
        if not isinstance(row, dict):
            raise StageError(f"{where}: expected a JSON object, got {type(row).__name__}")
        messages = row.get(source.messages_field)
        if messages is None and isinstance(row.get(source.prompt_field), str):
            messages = [{"role": "user", "content": row[source.prompt_field]}]
            if config.response_field and config.turns == "all":
                response = row.get(config.response_field)
                if not isinstance(response, str):
                    raise StageError(f"{where}: no '{config.response_field}' string")
                messages.append({"role": "assistant", "content": response})
        if not isinstance(messages, list) or not messages:
            raise StageError(f"{where}: has neither a '{source.messages_field}' list nor a "
                             f"'{source.prompt_field}' string")
        if not all(isinstance(m, dict) for m in messages):
            raise StageError(f"{where}: '{source.messages_field}' must be a list of {{role, content}} objects")
        messages = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
        if config.turns == "first_user":
            users = [m for m in messages if m["role"] == "user"][:1]
            if not users or not isinstance(users[0]["content"], str) or not users[0]["content"].strip():
                unusable.append(len(out))
            else:
                messages = users
        out.append(messages)
    return out, unusable


def _in_languages(config: TranslateStageConfig, rows: Sequence[Any], names: Sequence[str],
                  order: Sequence[int]) -> list[int]:
    """The positions in ``order`` whose first user message the language detector places in ``source.languages``,
    up to ``source.limit`` (the filter comes before the limit, as for a sampling stage's prompts)."""
    def first_user_text(i: int) -> str:
        (messages,), _ = _conversations(config, [rows[i]], [names[i]])
        return next((m["content"] for m in messages if m["role"] == "user" and isinstance(m["content"], str)), "")

    kept = first_in_languages(order, first_user_text, config.source.languages or [], config.source.limit)
    return [i for i, _ in kept]


def run_translate(config: TranslateStageConfig, ctx: StageContext) -> TranslateResult:
    check_servers(ctx, [("teacher", "teacher.backend", config.teacher.backend, [TEACHER_JOURNAL])]
                  + ([("judge", "judge.backend", config.judge.backend, [JUDGE_JOURNAL])] if config.judge else []))
    source = config.source.resolved(ctx, who=f"stage '{ctx.stage_name}'")
    rows, names = read_named_rows(source)
    order = shuffled_positions(rows, ctx.seed) if source.shuffle else list(range(len(rows)))
    if source.languages:
        order = _in_languages(config, rows, names, order)
        if not order:
            raise StageError(f"stage '{ctx.stage_name}': {source.path}: no row's first user message is in "
                             f"{', '.join(source.languages)} (source.languages)")
    order = order[: source.limit] if source.limit else order
    conversations, unusable = _conversations(config, [rows[i] for i in order], [names[i] for i in order])
    if not conversations:
        raise StageError(f"stage '{ctx.stage_name}': {source.path} has no rows")
    if len(unusable) == len(conversations):
        raise StageError(f"stage '{ctx.stage_name}': {source.path}: no row has a user message to translate (the first: "
                         f"{names[order[0]]}); check source.messages_field and the rows' roles")
    if unusable:
        ctx.log.warning("%s: %d of %d row(s) have no user message to translate (rejects.jsonl: %s, the first %s)",
                        ctx.stage_name, len(unusable), len(conversations), NO_USER_MESSAGE, names[order[unusable[0]]])
    target = language_name(config.target_language) or config.target_language
    teacher = teacher_backend(config.teacher.backend, ctx, "teacher")
    # Every message with text is one request; system prompts and empty turns pass through unchanged.
    skipped = set(unusable)
    requests = [(c, m) for c, conv in enumerate(conversations) if c not in skipped for m, msg in enumerate(conv)
                if isinstance(msg["content"], str) and msg["content"].strip() and msg["role"] != "system"]
    ctx.log.info("%s: translating %d text(s) of %d row(s) into %s with %s", ctx.stage_name, len(requests),
                 len(conversations), target, teacher.describe)
    params = config.teacher.params(ctx.seed)
    try:
        answers = ask_teacher(teacher, [config.instruction.replace("{language}", target).replace(
            "{text}", conversations[c][m]["content"]) for c, m in requests], params,
            teacher_store(ctx, config.teacher, params), desc=f"{ctx.stage_name}: translate")
    finally:
        teacher.close()

    # Texts are filtered one by one but deduplicated as whole conversations: a short turn two conversations share
    # ('Thanks!') is no duplicate of either.
    gate, details = Gate(config.filters.model_copy(update={"dedup": False})), {}
    dropped: dict[int, str] = dict.fromkeys(unusable, NO_USER_MESSAGE)
    translated = [[dict(m) for m in conv] for conv in conversations]
    for (c, m), (text, finish_reason) in zip(requests, answers, strict=True):
        original = conversations[c][m]["content"]
        reason = gate.reason(text, finish_reason, config.target_language, original) if c not in dropped else None
        ratio = (len(text) + 1) / (len(original) + 1)
        if reason is None and not 1 / config.max_length_ratio <= ratio <= config.max_length_ratio:
            reason = "length_ratio"
        if reason is not None and c not in dropped:
            dropped[c] = reason
            if reason.startswith("language_"):
                details[c] = language_detail(text, config.target_language, config.filters.min_letters)
        translated[c][m]["content"] = text

    kept = [c for c in range(len(conversations)) if c not in dropped]
    if config.filters.dedup:
        whole = Gate(config.filters)
        for c in kept:
            if whole.duplicate("\n".join(m["content"] for m in translated[c] if isinstance(m["content"], str))):
                dropped[c] = "duplicate"
        kept = [c for c in kept if c not in dropped]
    scores: dict[int, float | None] = {}
    judged: dict[str, float | int] = {}
    if config.judge is not None and kept:
        rated = gate_scores(config.judge, TRANSLATION_RUBRIC, [
            {"question": _plain(conversations[c]), "answer": _plain(translated[c]),
             "language": config.target_language} for c in kept], ctx)
        judged = gate_stats(rated)
        for c, score in zip(kept, rated, strict=True):
            scores[c] = score
            if score is None or score < config.judge.min_score:
                dropped[c] = "judge_unrated" if score is None else "judge_score"
        kept = [c for c in kept if c not in dropped]

    provenance = {"stage": ctx.stage_name, "teacher": teacher.describe, "source": config.source.path,
                  "turns": config.turns, "seed": ctx.seed}
    places = [row_place(names[i], i) for i in order]
    out_rows = [{"messages": translated[c], "language": config.target_language,
                 **({"judge": scores[c]} if c in scores else {}),
                 "provenance": {**provenance, **places[c]}} for c in kept]
    rejects = [{**places[c], "reason": reason, **({"detail": details[c]} if c in details else {}),
                "original": conversations[c], "messages": translated[c]} for c, reason in sorted(dropped.items())]
    stats = {"rows": len(conversations), "kept": len(out_rows), "texts": len(requests),
             "rejected": dict(Counter(dropped.values())), "teacher": teacher.describe,
             **({"judge": judged} if judged else {})}
    output = write_outputs(ctx, OUTPUT_FILE, out_rows, rejects, stats, "translations")
    return TranslateResult(dataset=output, rows=len(out_rows), files=output_files(ctx), requested=len(conversations),
                           rejected=stats["rejected"], judges=result_judges(judged),
                           metrics={"rows": len(out_rows), "kept_fraction": round(len(out_rows) / len(conversations), 6),
                                    "rejected_preamble": stats["rejected"].get(PREAMBLE, 0)})


_PLACE = re.compile(r"(?:(?P<file>.+) )?(?P<unit>line|row) (?P<number>\d+)")


def row_place(name: str, index: int) -> dict[str, Any]:
    """A row's place as an sft source's ``rejects.jsonl`` gives it, from its name (``line 8``, ``part-1.jsonl line
    3``, ``row 5``): in a JSON Lines file its 1-based ``line`` and ``row`` = line - 1 (blank and unreadable lines
    counted, as an editor counts them); in a folder the ``file`` and its ``line`` (or ``file_row``), with ``row``
    the row's place among the rows read; else the 0-based ``row``."""
    match = _PLACE.fullmatch(name)
    if match is None:
        return {"row": index}
    number = int(match["number"])
    if match["file"] is not None:
        return {"row": index, "file": match["file"], ("line" if match["unit"] == "line" else "file_row"): number}
    return {"row": number - 1, "line": number} if match["unit"] == "line" else {"row": number}


def translated_size(config: TranslateStageConfig, result: StageResult | None) -> SourceSize:
    """Rows a later stage may expect: exact once run, else at most the source's limit."""
    per_row = 200 if config.turns == "first_user" else config.teacher.max_new_tokens
    if isinstance(result, TranslateResult):
        return SourceSize(result.rows, per_row, f"{config.name}'s output")
    if config.source.limit is None:
        return SourceSize(None, per_row, f"unknown size: set source.limit on stage {config.name}")
    return SourceSize(config.source.limit, per_row, f"at most {config.source.limit:,} rows from stage {config.name}",
                      at_most=True)


def _plain(messages: Sequence[dict[str, Any]]) -> str:
    from tempa.alignment.judge import render_conversation

    return render_conversation(messages) if len(messages) > 1 else str(messages[0].get("content") or "")

