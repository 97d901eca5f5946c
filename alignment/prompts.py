"""Prompts to sample from: chat prompts plus what the rewards need (target language, reference answer).

A row holds either ``messages`` (a chat ending with a user turn; a trailing assistant turn is
taken off and kept as the ``reference`` answer) or a plain ``prompt`` string, and optionally
the target ``language``, a verifiable ``answer`` (a string, a number or a list of accepted ones) and a per-row
``thinking_mode``. A row whose question is empty, or whose answer the answer reward could not compare, is refused. Turns are read by
the sft row reader (:func:`tempa.sft.formats.normalize_row`), so an agent's history keeps its
``tool_calls`` and ``tool`` results, and the row's ``tools`` come along; such a prompt may end with a
tool result (the next assistant turn is sampled). Only stages that render the tools everywhere accept
them (``load_prompts(with_tools=True)``, the preference stage); the others refuse such a row by name. The shipped
``recipes/data/sample_prompts.jsonl`` is in this format. ``path: stage:NAME`` reads the dataset an
earlier stage wrote (a `translate` or `generate_prompts` stage's prompts, a synthesize stage's rows).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tempa.chat_templates.json_files import (
    JsonFileError,
    Line,
    RowPlace,
    document_rows,
    is_json_lines,
    name_below,
    read_json,
    read_jsonl,
)
from tempa.chat_templates.one_line import first_line
from tempa.chat_templates.thinking import THINKING_DEFAULT_CONTEXT
from tempa.sft.curation import check_tool_results
from tempa.sft.formats import (
    FormatSpec,
    RowError,
    composed,
    normalize_row,
    thinking_mode_of,
    tools_of,
    uses_tools,
)
from tempa.sft.mixing import PROMPT_SHUFFLE, content_key, draw_ranks, thinking_on_count, thinking_picks
from tempa.sft.stage_api import (
    Artifact,
    OnOffMixed,
    Read,
    StageContext,
    StageError,
    looks_local,
    resolve_path,
    stage_ref,
)

log = logging.getLogger("tempa")

T = TypeVar("T")


class PromptSource(BaseModel):
    """Where the prompts come from and which columns hold what."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        description="A .jsonl / .json / .parquet / .csv file, a `save_to_disk` folder, a folder of such data files "
        "(the files of `split`, as `datasets` finds them), a hub dataset id, or `stage:NAME` (the dataset an earlier "
        "stage wrote). Relative paths are resolved against the recipe's folder."
    )
    split: str = Field(default="train", description="Split of a hub dataset, DatasetDict folder or folder of data "
                       "files.")
    messages_field: str = Field(default="messages", description="Column with the chat (list of {role, content}).")
    prompt_field: str = Field(default="prompt", description="Column with a plain prompt string (used when there "
                              "is no messages column).")
    language_field: str = Field(default="language", description="Column with the target language (ISO 639-1).")
    answer_field: str = Field(default="answer", description="Column with the verifiable reference answer: a string, "
                              "a number or a non-empty list of accepted ones (unset or \"\": none).")
    thinking_field: str = Field(default="thinking_mode", description="Column with a per-row thinking mode (on/off).")
    tools_field: str = Field(default="tools", description="Column with the tool definitions the prompt offers (a "
                             "list of OpenAI-style definitions or that list as JSON text; preference stages only).")
    system_prompt: str | None = Field(default=None, description="System message prepended to every prompt "
                                      "that has none.")
    limit: int | None = Field(default=None, ge=1, description="Use at most this many prompts (after shuffling).")
    shuffle: bool = Field(default=False, description="Shuffle (with the recipe seed) before applying `limit`: a draw "
                          "by each row's content, so a reordered file keeps the same prompts.")
    languages: list[str] | None = Field(
        default=None, description="Keep only prompts whose text the language detector places in one of these "
        "(ISO 639-1; applied before `limit`); a prompt without a `language` gets the detected one.",
    )

    @field_validator("languages")
    @classmethod
    def _codes(cls, value: list[str] | None) -> list[str] | None:
        from tempa.sft import language

        return None if value is None else language.check_codes(value)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str, info: ValidationInfo) -> str:
        return value if stage_ref(value) is not None else resolve_path(value, info)

    def reads(self, field: tuple[str | int, ...]) -> list[Read]:
        """The earlier stage whose dataset ``path: stage:NAME`` names (``field``: where the block sits)."""
        name = stage_ref(self.path)
        return [Read(name, Artifact.DATASET, (*field, "path"))] if name else []

    def resolved(self, ctx: StageContext, who: str) -> PromptSource:
        """This source with a `stage:NAME` path replaced by that stage's dataset file."""
        name = stage_ref(self.path)
        return self if name is None else self.model_copy(update={"path": str(ctx.dataset_of(name, who=who))})


class ThinkingSettings(BaseModel):
    """The thinking mode each prompt is sampled with (a row's own `thinking_mode` wins)."""

    model_config = ConfigDict(extra="forbid")

    mode: OnOffMixed = Field(
        default="on", description="`on`, `off`, or `mixed`: a seeded `ratio` share of the prompts on, the rest off "
        "(exactly: ratio * prompts rounded half up, at least 1 and at most all but 1 when 0 < ratio < 1; drawn by each "
        "prompt's content, as SFT's mixed sources are, so a reordered file keeps its modes). Unset: "
        "the recipe's `thinking_default`, the mode the model ships in.",
        json_schema_extra={"default_shown": "the recipe's `thinking_default`"},  # `on` only outside a recipe
    )
    ratio: float | None = Field(default=None, ge=0, le=1, description="With `mixed`: share of prompts with "
                                "thinking on.")

    @model_validator(mode="before")
    @classmethod
    def _recipe_default(cls, value: Any, info: ValidationInfo) -> Any:
        # Sampling in another mode than the model ships in trains the mode its users do not call.
        default = (info.context or {}).get(THINKING_DEFAULT_CONTEXT)
        if isinstance(value, dict) and "mode" not in value and default is not None:
            return {**value, "mode": default}
        return value

    @model_validator(mode="after")
    def _ratio(self) -> ThinkingSettings:
        if self.mode == "mixed" and self.ratio is None:
            raise ValueError("thinking mode 'mixed' needs ratio (0..1)")
        if self.mode != "mixed" and self.ratio is not None:
            raise ValueError("ratio applies only to thinking mode 'mixed'")
        return self


@dataclass
class PromptRow:
    """One prompt, ready for a backend and the rewards."""

    id: str
    messages: list[dict[str, Any]]
    language: str | None = None
    answer: Any = None
    reference: str | None = None
    thinking_mode: Literal["on", "off"] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None  # the tool definitions offered (rendered with the prompt)

    @property
    def uses_tools(self) -> bool:
        """Offers tools or holds a tool loop: rendering it without the tools (or the loop) changes the prompt."""
        return uses_tools(self.messages, self.tools)

    @property
    def question(self) -> str:
        """The last user message (what a judge is shown as the question)."""
        return next((str(m.get("content", "")) for m in reversed(self.messages) if m.get("role") == "user"), "")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "messages": self.messages, "language": self.language, "answer": self.answer,
                "reference": self.reference, "thinking_mode": self.thinking_mode, "tools": self.tools}


def content_keys(texts: Sequence[str]) -> list[str]:
    """Each text's journal key: a hash of the text, and from its second occurrence on its count (``<hash>-2``), so
    equal requests (a topic's variations without ``{index}``, two equal source rows) are each asked, as they were.
    No place in it: a row inserted above moves no other row's key, and the journal keeps every answer paid for."""
    seen: Counter[str] = Counter()
    keys = []
    for text in texts:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
        seen[digest] += 1
        keys.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    return keys


def keyed_by_content(prompts: list[PromptRow]) -> list[PromptRow]:
    """The prompts, each with an id that is a hash of what is sampled and scored (messages, tools, thinking mode,
    language, reference answer): the key of the sampling, scoring and later journals of the stages that keep them.
    A prompt's own id holds its place in the file, so a row inserted at the top gave every prompt a new id and the
    journals, signed with the list of ids, were started over, 150,000 paid answers with them; the mode is in the
    key, so a prompt whose mode changed (its row's, a `mixed` draw's) is sampled again and no other. Its place stays
    in ``meta['row']``."""
    contents = [json.dumps({**p.to_dict(), "id": None}, sort_keys=True, ensure_ascii=False, default=str)
                for p in prompts]
    return [dataclasses.replace(p, id=key) for p, key in zip(prompts, content_keys(contents), strict=True)]


def prompt_id(index: int, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """Stable id: position plus a content hash, so changed data is never mistaken for finished work."""
    content: Any = messages if tools is None else {"messages": messages, "tools": tools}  # old ids stay valid
    digest = hashlib.sha1(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"{index:06d}-{digest[:10]}"


def read_rows(source: PromptSource) -> list[dict[str, Any]]:
    """The source's raw rows (a local file or folder, or a hub dataset); StageError when unreadable."""
    return read_named_rows(source)[0]


def read_named_rows(source: PromptSource) -> tuple[list[Any], list[str]]:
    """:func:`read_rows`, and how messages name each row (:class:`RowPlace`, as an SFT source's rejects name it):
    by line in JSON Lines (and by file in a folder), else by its 0-based row."""
    path = Path(source.path)
    where = source.path
    try:
        if path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
            return _json_rows([path], where, None)
        import datasets

        from tempa.sft.sources import data_files, is_saved_dataset, json_shards

        if path.is_dir() and is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_dir():  # a folder of data files, its split's files found as datasets finds them
            shards = json_shards(*data_files(path, source.split))
            if shards is not None:
                return _json_rows(shards, where, path)
            loaded = datasets.load_dataset(str(path), split=source.split)
        elif path.is_file():
            builder = {".parquet": "parquet", ".csv": "csv"}.get(path.suffix.lower())
            if builder is None:
                raise StageError(f"{where}: unsupported file type {path.suffix!r}; expected .jsonl, .json, .parquet, .csv")
            loaded = datasets.load_dataset(builder, data_files=str(path), split="train")
        elif looks_local(source.path):
            raise StageError(f"{where}: no such file or folder")
        else:
            loaded = datasets.load_dataset(source.path, split=source.split)
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[source.split]
        return [dict(row) for row in loaded], [str(RowPlace(None, "row", i)) for i in range(len(loaded))]
    except StageError:
        raise
    except JsonFileError as exc:
        raise StageError(str(exc)) from None
    except Exception as exc:
        first = first_line(exc)
        raise StageError(f"{where}: could not load prompts: {first}") from None


def _json_rows(files: list[Path], where: str, folder: Path | None) -> tuple[list[Any], list[str]]:
    """The rows of JSON files (a file, or the files of ``folder``), file after file, each read as its content says
    (JSON Lines, or one document holding a list of rows), and their names; as SFT sources do, an unreadable line is
    left out and named, the others are used."""
    rows: list[Any] = []
    names: list[str] = []
    bad: list[tuple[str | None, Line]] = []
    read = 0
    for file in files:
        name = name_below(file, folder) if folder is not None else None  # in a folder, even of one file
        if not is_json_lines(file):  # one document: readable whole or not at all
            found = document_rows(file, read_json(file, "a JSON list of rows"))
            rows.extend(found)
            names.extend(str(RowPlace(name, "row", k)) for k in range(len(found)))
            continue
        for line in read_jsonl(file):
            read += 1
            if line.error is None:
                rows.append(line.value)
                names.append(str(RowPlace(name, "line", line.number)))
            else:
                bad.append((name, line))
    if bad:
        shown = "; ".join(f"{f'{name}:' if name is not None else 'line '}{line.number}: {line.error}"
                          for name, line in bad[:3])
        log.warning("%s: skipped %d unreadable line(s) of %d: %s%s", where, len(bad), read, shown,
                    " ..." if len(bad) > 3 else "")
    return rows, names


def _turns_and_tools(row: dict[str, Any], source: PromptSource) -> tuple[list[dict[str, Any]], Any]:
    """The row's turns and tools as the sft row reader reads them (RowError names what is wrong)."""
    listed = row.get(source.messages_field)
    if listed is not None:
        if not isinstance(listed, list | tuple) or not all(isinstance(m, dict) and "role" in m for m in listed):
            raise RowError(f"'{source.messages_field}' must be a list of {{role, content}} objects")
        spec = FormatSpec(format="messages", messages=(source.messages_field,), tools=(source.tools_field,))
        # Only the turns and tools: a prompts row's other columns (language, answer, ...) are not turns.
        conversation = normalize_row({source.messages_field: list(listed),
                                      source.tools_field: row.get(source.tools_field)}, spec)
        return conversation.messages, conversation.tools
    prompt = row.get(source.prompt_field)
    if isinstance(prompt, str):
        return [{"role": "user", "content": composed(prompt)}], tools_of(
            row.get(source.tools_field), repr(source.tools_field))
    if prompt is not None:
        raise RowError(f"'{source.prompt_field}' must be a string (the question to sample answers to), got "
                       f"{type(prompt).__name__} {prompt!r:.60}")
    # The row's own columns, to show which one holds the prompt when the file names it otherwise (`question`).
    columns = ", ".join(f"'{key}'" for key in list(row)[:8]) + (", ..." if len(row) > 8 else "")
    raise RowError(f"has neither a '{source.messages_field}' list nor a '{source.prompt_field}' string (its fields: "
                   f"{columns or 'none'}); set prompts.messages_field or prompts.prompt_field to the column that "
                   "holds the chat or the prompt")


def answer_problem(value: Any) -> str | None:
    """What is wrong with a row's reference answer, or None when the answer reward can use it. The reward compares
    text: a mapping or a boolean would be compared as its Python spelling ("{'v': 4}", "True"), and an empty list
    (or an empty item in one) would fail every sample of the row. Unset or "" means the row has no answer ("" is
    named by :func:`tempa.alignment.input_checks.empty_answer_warning`: an export's missing value as often)."""
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | list | tuple):
        return f"expected a string, a number or a non-empty list of them, got {type(value).__name__} {value!r:.60}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {value!r}"
    if isinstance(value, list | tuple):
        if not value:
            return "expected a string, a number or a non-empty list of them (the accepted answers), got []"
        for index, item in enumerate(value):
            if isinstance(item, list | tuple) or (isinstance(item, str) and not item.strip()):
                return f"item {index}: expected a non-empty string or a number, got {item!r:.60}"
            problem = answer_problem(item)
            if problem is not None:
                return f"item {index}: {problem}"
    return None


def _compact(turn: dict[str, Any]) -> dict[str, Any]:
    # Unset fields left out: a plain turn stays {role, content}, as prompts (and their ids) always were.
    return {key: value for key, value in turn.items() if value is not None}


def to_prompt(row: dict[str, Any], index: int, source: PromptSource, name: str | None = None, *,
              with_tools: bool = False) -> PromptRow:
    """A raw row as a :class:`PromptRow`; raises StageError naming the row (``name``, else its 0-based row) when it
    cannot be used. ``with_tools``: the caller renders a prompt's tools and tool loop everywhere; without it such a
    row is refused rather than sampled without them."""
    where = f"{source.path}: {name or RowPlace(None, 'row', index)}"
    if not isinstance(row, dict):
        raise StageError(f"{where}: expected a JSON object, got {type(row).__name__}")
    try:
        turns, tools = _turns_and_tools(row, source)
    except RowError as exc:
        raise StageError(f"{where}: {exc}") from None
    stray = check_tool_results(turns)
    if stray is not None:
        raise StageError(f"{where}: {stray[1]}")
    messages = [_compact(turn) for turn in turns]
    reference = None
    while messages and messages[-1]["role"] == "assistant":
        if messages[-1].get("tool_calls"):  # taken off, the call's prompt would be sampled as a different one
            raise StageError(f"{where}: turn {len(messages) - 1}: ends with an assistant tool call and no tool result "
                             "after it; a prompt ends with a user message or a tool result (add the call's result)")
        reference = reference if reference is not None else str(messages[-1].get("content") or "")
        messages.pop()
    if not messages or messages[-1]["role"] not in ("user", "tool"):
        raise StageError(f"{where}: the conversation must end with a user message (or, in a tool loop, a tool "
                         "result)")
    prompt_row = PromptRow(id="", messages=messages, tools=tools)
    if prompt_row.uses_tools and not with_tools:
        what = f"'{source.tools_field}'" if tools else "a tool loop (tool_calls / tool turns)"
        raise StageError(f"{where}: has {what}, which only a preference stage samples with; this stage would "
                         "render the prompt without it")
    if messages[-1]["role"] == "user" and isinstance(messages[-1].get("content"), str) and not messages[-1][
            "content"].strip():
        field = source.prompt_field if source.messages_field not in row else source.messages_field
        raise StageError(f"{where}: {field}: the last user message is empty; expected the question to sample "
                         "answers to")
    answer = row.get(source.answer_field)
    problem = answer_problem(answer)
    if problem is not None:
        raise StageError(f"{where}: {source.answer_field}: {problem}")
    if source.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": source.system_prompt})
    try:  # one reader for a row's own mode, as the SFT rows' (a blank cell gives none)
        mode = thinking_mode_of(row.get(source.thinking_field), source.thinking_field)
    except RowError as exc:
        raise StageError(f"{where}: {exc}") from None
    language = row.get(source.language_field)
    if language:
        from tempa.sft import language as languages

        try:  # a code the detector never returns would fail every sample's language reward, silently
            language = languages.check_codes([str(language)])[0]
        except ValueError as exc:
            raise StageError(f"{where}: {source.language_field}: {exc}") from None
    return PromptRow(
        id=prompt_id(index, messages, tools),
        messages=messages,
        language=language or None,
        answer=answer,
        reference=reference,
        thinking_mode=mode,
        tools=tools,
        meta={"row": name or str(RowPlace(None, "row", index))},
    )


def first_in_languages(items: Iterable[T], text_of: Callable[[T], str], languages: Sequence[str],
                       limit: int | None) -> list[tuple[T, str]]:
    """The first ``limit`` of ``items`` whose text the language detector places in one of ``languages``, each with
    the language detected: a source's ``languages`` filter, before its ``limit``, for every stage that reads one."""
    from tempa.sft import language

    accepted, kept = language.accepted(list(languages)), []
    for item in items:
        detected = language.detect(text_of(item)).language
        if detected is None or detected not in accepted:
            continue
        kept.append((item, detected))
        if limit is not None and len(kept) >= limit:
            break
    return kept


def _in_languages(prompts: Iterable[PromptRow], languages: list[str], limit: int | None) -> list[PromptRow]:
    """The first ``limit`` prompts in ``languages``; a prompt without a ``language`` gets the detected one."""
    kept = first_in_languages(prompts, lambda prompt: prompt.question, languages, limit)
    for prompt, detected in kept:
        prompt.language = prompt.language or detected
    return [prompt for prompt, _ in kept]


def shuffled_positions(rows: Sequence[Any], seed: int) -> list[int]:
    """A source's `shuffle`: row positions in a seeded order that goes by each row's content (bottom-k,
    :func:`tempa.sft.mixing.draw_ranks`), for every stage that reads a :class:`PromptSource`. `limit` then keeps the
    same rows when the file is reordered, and those it kept but at the margin when it grows (a permutation of
    positions drew other rows for either)."""
    keys = [content_key(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)) for row in rows]
    ranks = draw_ranks(keys, seed, PROMPT_SHUFFLE)
    return sorted(range(len(rows)), key=lambda i: (int(ranks[i]), i))


def load_prompts(source: PromptSource, *, seed: int, thinking: ThinkingSettings | None = None,
                 with_tools: bool = False) -> list[PromptRow]:
    """The prompts in a stable order, each with its thinking mode decided (seeded for `mixed`); ``with_tools``: see
    :func:`to_prompt`."""
    rows, names = read_named_rows(source)
    order = shuffled_positions(rows, seed) if source.shuffle else list(range(len(rows)))
    prompts_of = (to_prompt(rows[i], i, source, names[i], with_tools=with_tools) for i in order)
    if source.languages:
        prompts = _in_languages(prompts_of, source.languages, source.limit)
    else:
        prompts = list(itertools.islice(prompts_of, source.limit))
    if not prompts:
        within = f" in {', '.join(source.languages)}" if source.languages else ""
        raise StageError(f"{source.path}: no prompts{within}")
    if thinking is not None:
        unset = [prompt for prompt in prompts if prompt.thinking_mode is None]  # a row's own mode wins
        on: set[int] = set(range(len(unset))) if thinking.mode == "on" else set()
        if thinking.mode == "mixed":
            # Exactly the documented share, not a coin flip per prompt (which can turn 0.5 of 6 into 6 of 6), drawn
            # as SFT's mixed sources are: by each prompt's content, so a reordered or grown file keeps its modes.
            count = thinking_on_count(thinking.ratio or 0.0, len(unset))
            keys = [content_key(json.dumps([p.messages, p.tools], sort_keys=True, ensure_ascii=False)) for p in unset]
            on = set(thinking_picks(range(len(unset)), keys, seed, count, dict.fromkeys(range(len(unset)), True))[0])
        for index, prompt in enumerate(unset):
            prompt.thinking_mode = "on" if index in on else "off"
    return prompts

