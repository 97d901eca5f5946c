"""Text a teacher writes for a dataset (translations, new prompts): generation, filters and a judge gate.

Shared by the `translate` and `generate_prompts` stages. A teacher is asked with one user message
per item; its answer (think block removed) is the text. Heuristic filters then drop text that is
empty, cut off, led in by the teacher ("Here is the translation:"), too short or long, in the wrong
language or a repeat; an optional judge rates what is left on 1-10 and drops anything under
``min_score``. Every dropped item is kept with its reason.

Both passes are journaled under ``<stage>/data/`` (``teacher.jsonl``, ``judge.jsonl``: appended and
fsynced per batch, or per reply as it arrives from an HTTP server, see :mod:`tempa.alignment.sampling`),
so a run stopped at row 150,000 of 300,000 resumes there instead of paying for the first 150,000 again. A
record is keyed by a hash of its request's text (:func:`tempa.alignment.prompts.content_keys`), not its place, so a row inserted or removed in the source asks
only for what is new; a journal's signature holds the teacher (or judge) and its sampling settings:
a changed instruction, source row, model or temperature is asked again, while settings of how
requests travel (concurrency, timeouts, retries) keep the journal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tempa.alignment.backends import (
    BackendConfig,
    HTTPBackendConfig,
    LazyBackend,
    SamplingBackend,
    TransformersBackendConfig,
    backend_reads,
    build_backend,
    describe_backend,
    sample_at,
)
from tempa.alignment.backends_http import CONTENT_FILTER, check_endpoint
from tempa.alignment.completions import Completion
from tempa.alignment.generation import GenerationParams
from tempa.alignment.judge import Judge, JudgeSettings, fill, parse_judge_score
from tempa.alignment.prompts import content_keys
from tempa.alignment.rewards import JudgeFailures
from tempa.alignment.sampling import JsonlStore, batch_seed, run_incremental
from tempa.sft import language as lang
from tempa.sft.curation import normalize_instruction
from tempa.sft.files import write_json, write_jsonl
from tempa.sft.formats import composed
from tempa.sft.stage_api import NOT_FINGERPRINTED, Read, StageContext, StageError, StageResult, fingerprinted


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
    batch_size: int = Field(default=16, ge=1, description="Requests per backend call; answers are journaled after "
                            "every call, an HTTP backend's each as it arrives.")

    @model_validator(mode="before")
    @classmethod
    def _not_a_backend(cls, data: Any) -> Any:
        # A synthesize stage's `teacher` is the backend block itself; here it is one key of the settings.
        if isinstance(data, dict) and "type" in data and "backend" not in data:
            raise ValueError("is a backend block; here the backend goes under `backend:`: teacher: {backend: {type: "
                             f"{data['type']}, ...}}, max_new_tokens: ...}} (a synthesize stage's teacher is the "
                             "backend block itself)")
        return data

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
    dedup: bool = Field(default=True, description="Drop a text (translate: a whole conversation) equal to an earlier "
                        "one (Unicode form, case and spaces aside, as an sft stage's `dedup` compares).")
    keep_incomplete: bool = Field(default=False, description="Keep text cut off at max_new_tokens (off: dropped).")


class JudgeGate(JudgeSettings):
    """An LLM judge that rates each text 1-10; texts under ``min_score`` (or unrated) are dropped."""

    min_score: float = Field(default=8, ge=1, le=10, description="Keep texts rated at least this (Swallow's "
                             "gemma-magpie rejects <= 7, i.e. keeps >= 8).")
    # Decides only whether the stage stops, never what it keeps (unrated texts are dropped either way): raised after a
    # failure, `tempa run` resumes the stage and its journals instead of clearing them.
    max_unparsable: float = Field(
        default=0.1, ge=0, le=1, json_schema_extra=NOT_FINGERPRINTED, description="Largest share of the judge's replies that may lack a rating (each such "
        "text is dropped as `judge_unrated`); above it the stage fails, quoting one reply (a judge that cannot follow "
        "the rubric decides nothing). Raising it re-reads the journaled replies without asking again.",
    )


def teacher_reads(teacher: TeacherSettings, judge: JudgeGate | None) -> list[Read]:
    reads = backend_reads(teacher.backend, ("teacher", "backend"))
    if judge is not None:
        reads += backend_reads(judge.backend, ("judge", "backend"))
    return reads


TEACHER_JOURNAL = "teacher.jsonl"
JUDGE_JOURNAL = "judge.jsonl"


def _journaled(
    store: JsonlStore, requests: Sequence[str], chunk_size: int, desc: str, ask: Any, measure: Any = None
) -> list[dict[str, Any]]:
    """``ask(requests, chunk_index, places, keep)`` -> one record per request, run only for requests not journaled;
    ``keep(i, record)`` journals request ``i``'s record as its reply arrives (see
    :func:`tempa.alignment.sampling.run_incremental`)."""
    items = list(zip(content_keys(requests), requests, strict=True))

    def work(chunk: list[tuple[str, str]], index: int, places: list[int],
             keep: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
        records = ask([request for _, request in chunk], index, places,
                      lambda i, record: keep({"id": chunk[i][0], **record}))
        return [{"id": key, **record} for (key, _), record in zip(chunk, records, strict=True)]

    records, _ = run_incremental(items, key=lambda item: item[0], work=work, store=store,
                                 chunk_size=chunk_size, desc=desc, measure=measure)
    return records


def ask_teacher(
    backend: SamplingBackend, requests: Sequence[str], params: GenerationParams, store: JsonlStore, *, desc: str
) -> list[tuple[str, str | None]]:
    """The teacher's answer to each request (one user message) and how it ended (``finish_reason``), asked in
    batches of ``params.batch_size`` and journaled in ``store`` (a resumed run asks only what is missing)."""

    def ask(chunk: list[str], index: int, places: list[int],
            keep: Callable[[int, dict[str, Any]], None]) -> list[dict[str, Any]]:
        # Seeded per batch, as the synthesize pass is: a resumed run asks a batch with the seed it had.
        chunk_params = params.model_copy(update={"seed": batch_seed(params.seed, index)})
        groups = sample_at(backend, [[{"role": "user", "content": r}] for r in chunk], chunk_params, places,
                           lambda i, group: keep(i, {"completion": group[0].to_dict()}))
        return [{"completion": group[0].to_dict()} for group in groups]

    def measure(record: dict[str, Any]) -> tuple[int, int | None]:
        return 1, record["completion"].get("completion_tokens")

    from tempa.chat_templates.thinking import split_reasoning

    out = []
    for record in _journaled(store, requests, params.batch_size, desc, ask, measure):
        completion = Completion.from_dict(record["completion"])
        out.append((composed(split_reasoning(completion.full_text).answer.strip()), completion.finish_reason))
    return out


def teacher_store(ctx: StageContext, teacher: TeacherSettings, params: GenerationParams) -> JsonlStore:
    """The teacher pass's journal; its signature is what changes the answers (not how requests travel)."""
    signature = {"models": ctx.model_runs_of(), "backend": fingerprinted(teacher.backend),
                 "params": params.model_dump(mode="json")}
    return JsonlStore(ctx.stage_dir / "data" / TEACHER_JOURNAL, signature)


def journaled(path: Path) -> int:
    """Records a journal holds (whole lines: a torn last one is not counted), read without opening its store."""
    if not path.is_file():
        return 0
    with path.open("rb") as lines:
        return sum(line.endswith(b"\n") for line in lines)


def journals_resume_point(stage_dir: Path, passes: Sequence[tuple[str, str]]) -> str | None:
    """What an unfinished stage's journals hold, pass by pass (``passes``: file under ``data/``, what its records are,
    with ``{s}`` where a plural takes its s), as `tempa status` and `tempa plan` say where a re-run continues; None
    when none holds a record, the only case in which the runner may clear the stage's folder."""
    held = [(journaled(Path(stage_dir) / "data" / name), what) for name, what in passes]
    return ", ".join(f"{count:,} {what.format(s='s' if count != 1 else '')}" for count, what in held if count) or None


def teacher_text_resume_point(stage_dir: Path) -> str | None:
    """Where a re-run of an unfinished translate or generate_prompts stage continues: its teacher's answers and its
    judge's ratings journaled so far."""
    return journals_resume_point(stage_dir, ((TEACHER_JOURNAL, "teacher answer{s} journaled"),
                                                (JUDGE_JOURNAL, "judge rating{s} journaled")))


def teacher_text_journals(stage_dir: Path) -> list[Path]:
    """The journals a changed translate or generate_prompts stage keeps: its teacher's answers and its judge's replies
    (their signatures and content keys decide which are still asked for); its dataset is written anew."""
    data = Path(stage_dir) / "data"
    return [file for name in (TEACHER_JOURNAL, JUDGE_JOURNAL) for file in JsonlStore.files(data / name)]


PREAMBLE = "preamble"
EMPTY = "empty"  # the teacher answered nothing (empty content): a reply to look into, not a short text
# A teacher's own first line before the text it was asked for ("Sure! Here is the translation:", "Here's a realistic
# user message."): English, as teachers write it whatever the target; a user's own lead-in ("Here is my essay:") names
# none of these things.
_LEAD_IN = re.compile(
    r"(?:(?:sure|certainly|of course|okay|ok|absolutely)\b[!,.]*\s*)?"
    r"(?:here(?:'s|’s|\s+is|\s+are)\s+(?:a|an|the|one|your)\b[^\n]{0,80}?"
    r"\b(?:message|prompt|question|request|query|translation|translated|version)s?\b[^\n]{0,40}?"
    r"|(?:the\s+)?translation\b[^\n]{0,40}?)\s*[:.!]?", re.IGNORECASE)


def opens_with_lead_in(text: str, original: str | None = None) -> bool:
    """Whether ``text``'s first line is the teacher's lead-in to it rather than part of it: a line such as 'Sure!
    Here is the translation:' with the text below it, and (a translation) one line more than ``original`` has, so a
    source that opens with a lead-in of its own keeps its translated one."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or _LEAD_IN.fullmatch(lines[0]) is None:
        return False
    return original is None or len(lines) > sum(1 for line in original.splitlines() if line.strip())


@dataclass
class Gate:
    """Applies :class:`TextFilters` in order, remembering what it has kept (for dedup)."""

    filters: TextFilters
    seen: set[str] = field(default_factory=set)

    def reason(self, text: str, finish_reason: str | None, target: str | None,
               original: str | None = None) -> str | None:
        """Why ``text`` is dropped, or None when it passes (``original``: the text it translates)."""
        if finish_reason == CONTENT_FILTER:  # refused, or cut where the filter struck: never a whole text
            return CONTENT_FILTER
        if finish_reason == "length" and not self.filters.keep_incomplete:
            return "cut_off"
        # Dropped, not cut off: where a lead-in ends is a guess, and a text cut at a wrong guess would train as whole.
        if not text.strip():  # a teacher that answered nothing: no short text, a reply to look into
            return EMPTY
        if opens_with_lead_in(text, original):
            return PREAMBLE
        if len(text) < self.filters.min_chars:
            return "too_short"
        if self.filters.max_chars is not None and len(text) > self.filters.max_chars:
            return "too_long"
        if self.filters.language and target:
            # is_in, not the detector's label: its rules (a kanji-only term for a Japanese target) decide.
            detected = lang.detect(text, min_letters=self.filters.min_letters)
            if detected.is_in(lang.accepted([target])) is False:
                return f"language_{detected.language}"
        if self.filters.dedup and self.duplicate(text):
            return "duplicate"
        return None

    def duplicate(self, text: str) -> bool:
        """Whether ``text`` equals one seen before as an sft stage's dedup compares text (NFKC, case and spaces
        aside); remembers it."""
        key = normalize_instruction(text)
        if key in self.seen:
            return True
        self.seen.add(key)
        return False


def language_detail(text: str, target: str, min_letters: int) -> str:
    """What the detector made of a text dropped for its language, and its odds for the target: Vietnamese written
    without its diacritics comes out as 'fuv' at 0.23, which says more than the reason's code alone."""
    detected = lang.detect(text, min_letters=min_letters)
    return (f"detected {detected.language!r} with probability {detected.probability:.2f}; {target!r}: "
            f"{detected.probability_of(lang.accepted([target])):.2f}")


def teacher_backend(block: Any, ctx: StageContext, who: str) -> LazyBackend:
    """The backend a recipe block names, built on first use (a stage with nothing to ask loads nothing)."""
    name = describe_backend(block, ctx.start_model)
    return LazyBackend(lambda: build_backend(block, policy_dir=ctx.start_model, tokenizer_dir=ctx.tokenizer_dir,
                                             stage_models=ctx.stage_models, trust_remote_code=ctx.trust_remote_code,
                                             who=who), name)


def check_servers(ctx: StageContext, endpoints: Sequence[tuple[str, str, Any, Sequence[str]]]) -> None:
    """Reach each HTTP server a stage still needs before it asks anything (``endpoints``: who, its recipe field, its
    backend block, the journals under ``data/`` its passes write): a judge whose server is down was found after the
    teacher's whole pass, a teacher's after the first batch's retries. A server whose passes are journaled complete is
    not needed, and not asked (a resumed run judges with the teacher's server gone)."""
    for who, where, block, journals in endpoints:
        if not isinstance(block, HTTPBackendConfig) or all(
                JsonlStore.completed(ctx.stage_dir / "data" / journal) for journal in journals):
            continue
        backend = teacher_backend(block, ctx, who)
        try:
            check_endpoint(backend.backend, who, where)  # the runner's error says which stage
        finally:
            backend.close()


def gate_scores(gate: JudgeGate, rubric: str, items: Sequence[dict[str, Any]], ctx: StageContext
                ) -> list[float | None]:
    """The judge's 1-10 ratings of ``items`` (rubric placeholder values), journaled; its backend closed after."""
    judge = Judge(teacher_backend(gate.backend, ctx, "judge"), gate, seed=ctx.seed)
    prompts = [fill(gate.rubric or rubric, **item) for item in items]
    # What reads the replies (the threshold, the unparsable limit) is not part of what the judge was asked.
    signature = {"models": ctx.model_runs_of(), "backend": fingerprinted(gate.backend), "seed": ctx.seed,
                 "settings": gate.model_dump(mode="json", exclude={"backend", "min_score", "max_unparsable"})}
    store = JsonlStore(ctx.stage_dir / "data" / JUDGE_JOURNAL, signature)

    def ask(chunk: list[str], index: int, places: list[int],
            keep: Callable[[int, dict[str, Any]], None]) -> list[dict[str, Any]]:
        return [{"reply": reply} for reply in judge.ask(chunk, lambda i, reply: keep(i, {"reply": reply}))]

    try:
        records = _journaled(store, prompts, gate.batch_size, f"{ctx.stage_name}: judge", ask)
    finally:
        judge.backend.close()
    # Parsed on reading, not stored: a fixed parser rescores a journaled reply without asking again.
    scores = [parse_judge_score(record["reply"]) for record in records]
    failures = JudgeFailures(replies=len(scores))
    for record, score in zip(records, scores, strict=True):
        if score is None:
            failures.count(record["reply"])
    if (refusal := failures.refusal(gate.max_unparsable, "judge", "judge.max_unparsable")) is not None:
        raise StageError(f"stage '{ctx.stage_name}': {refusal} (its replies are journaled in {store.path})")
    return scores


class TeacherTextResult(StageResult):
    """A translate or generate_prompts stage's dataset (``dataset``), how many rows it holds, and what was asked
    for, rejected by reason, and left unrated by its judge (the report shows them, as it does a synthesize stage's)."""

    rows: int
    requested: int = Field(default=0, description="Source rows read (translate) or prompts asked for "
                           "(generate_prompts).")
    rejected: dict[str, int] = Field(default_factory=dict, description="Rejected rows by reason (rejects.jsonl).")
    judges: dict[str, float | int] = Field(default_factory=dict, description="The judge gate's replies and unrated "
                                           "ones (judge_replies, judge_unparsable), as a synthesize stage's judges.")


def result_judges(judged: dict[str, float | int]) -> dict[str, float | int]:
    """:func:`gate_stats` as a result's ``judges`` (named as a synthesize stage names its judges' counts)."""
    return {f"judge_{key}": value for key, value in judged.items()}


def gate_stats(scores: Sequence[float | None]) -> dict[str, float | int]:
    """The judge's replies and those without a rating, for ``stats.json``."""
    unparsable = sum(score is None for score in scores)
    return {"replies": len(scores), "unparsable": unparsable,
            "unparsable_fraction": round(unparsable / len(scores), 6) if scores else 0.0}


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
