"""Evaluation rows: load them, and turn a row into the chat prompt a model answers.

A row is a dict. Generation suites read its prompt from ``messages`` (a chat; its closing assistant
turns are dropped, so a reference answer may stay in the file, and a tool loop keeps its calls and
results) or from ``prompt`` (a string, with an optional ``system``). Suites read their own fields beside it: ``answer``,
``language``, ``instructions``, ``thinking_mode``.

The same prompts keep an sft stage's training rows clean (:func:`evaluation_prompts`).

Rows are checked when read, before any model is loaded: a row that is not an object, or whose
``messages`` a chat template would refuse (a message without a role, an unknown role), stops the
stage with one line naming the file and line (or row). Evaluation sets are not filtered: a score
over a silently shortened set would mislead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tempa.chat_templates.json_files import (
    JsonFileError,
    RowPlace,
    document_rows,
    is_json_lines,
    read_json,
    read_jsonl,
)
from tempa.chat_templates.one_line import first_line
from tempa.chat_templates.roles import ROLES
from tempa.sft.formats import FormatSpec, RowError, composed, normalize_row, tools_of
from tempa.sft.stage_api import EvalPrompt, EvalPrompts, StageError, looks_local


def load_rows(source: str, *, split: str = "train", max_rows: int | None = None) -> list[dict[str, Any]]:
    """Rows of a local ``.jsonl``/``.json`` file or folder of them (its ``split``'s files, each read as it is alone),
    or of a hub/local dataset via ``datasets``."""
    return load_named_rows(source, split=split, max_rows=max_rows)[0]


def load_named_rows(source: str, *, split: str = "train",
                    max_rows: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`load_rows`, and how a message names each row: its file and line (JSON Lines) or row
    (:class:`RowPlace`), as every reader of users' rows names them."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
        rows, names = _read_json_rows(path)
        return rows[:max_rows], names[:max_rows]
    if not path.exists() and looks_local(source):
        raise StageError(f"evaluation data not found: {source}")
    import datasets

    from tempa.sft.sources import data_files, is_saved_dataset, json_shards

    try:
        if path.is_dir() and not is_saved_dataset(path):
            shards = json_shards(*data_files(path, split))
            if shards is not None:
                rows, names = [], []
                for shard in shards:
                    shard_rows, shard_names = _read_json_rows(shard)
                    rows += shard_rows
                    names += shard_names
                return rows[:max_rows], names[:max_rows]
        if path.is_file():
            raise StageError(f"{source}: unsupported file type {path.suffix!r}; expected .jsonl or .json (or a folder "
                             "of data files, or a dataset id)")
        dataset = datasets.load_from_disk(source) if path.is_dir() and is_saved_dataset(path) else \
            datasets.load_dataset(source, split=split)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[split]
    except StageError:
        raise
    except Exception as exc:  # one line naming the data, not the loader's traceback
        first = first_line(exc)
        raise StageError(f"{source}: evaluation data could not be loaded: {first}") from None
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    rows = [dict(row) for row in dataset]
    names = [f"{source}: {RowPlace(None, 'row', i)}" for i in range(len(rows))]
    _check_rows(rows, names)
    return rows, names


def row_problem(row: Any) -> str | None:
    """Why ``row`` cannot be an evaluation row (one line), or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    messages = row.get("messages")
    if not messages:
        return None  # a prompt-only row
    if not isinstance(messages, list):
        return f"expected 'messages' to be a list of {{role, content}}, got {type(messages).__name__}"
    expected = f"expected one of {', '.join(ROLES)}"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] is a {type(message).__name__}, expected an object with role and content"
        role = message.get("role")
        if role is None:
            return f"messages[{i}] has no role ({expected})"
        if role not in ROLES:
            return f"messages[{i}] has an unknown role {role!r} ({expected})"
        if message.get("content") is None and not message.get("tool_calls"):
            return f"messages[{i}] ({role}) has no content"
    return None


def _check_rows(rows: list[Any], names: list[str]) -> None:
    for row, name in zip(rows, names, strict=True):
        if (problem := row_problem(row)) is not None:
            raise StageError(f"{name}: {problem}")


def _read_json_rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Evaluation rows must all be readable: a score over a silently shortened set would mislead."""
    try:
        if not is_json_lines(path):
            data = document_rows(path, read_json(path, "a JSON list of rows"))
            names = [f"{path}: {RowPlace(None, 'row', i)}" for i in range(len(data))]
            _check_rows(data, names)
            return [dict(row) for row in data], names
        rows, names = [], []
        for line in read_jsonl(path):
            problem = line.error if line.error is not None else row_problem(line.value)
            if problem is not None:
                raise StageError(f"{path}:{line.number}: {problem}")
            rows.append(line.value)
            names.append(f"{path}:{line.number}")  # as its read errors name it
        return rows, names
    except JsonFileError as exc:
        raise StageError(str(exc)) from None


def prompt_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat a model should answer: the row's messages without their closing assistant turns. A tool loop keeps
    its calls and results, so an agent is asked where its answer is due, from the results it was given. Its text is
    composed as training reads text (:func:`~tempa.sft.formats.composed`)."""
    messages = row.get("messages")
    if messages:
        if not any(m.get("role") == "user" for m in messages):
            raise StageError(f"evaluation row has no user message: {str(row)[:120]}")
        end = len(messages)
        while messages[end - 1].get("role") == "assistant":
            end -= 1
        return [{**m, "content": composed(m["content"])} if isinstance(m.get("content"), str) else dict(m)
                for m in messages[:end]]
    prompt = row.get("prompt")
    if prompt == "":
        raise StageError(f"evaluation row's 'prompt' is empty (and it has no 'messages'): {str(row)[:120]}")
    if not isinstance(prompt, str):
        raise StageError(f"evaluation row has neither 'messages' nor a 'prompt' string: {str(row)[:120]}")
    chat = [{"role": "system", "content": composed(row["system"])}] if row.get("system") else []
    chat.append({"role": "user", "content": composed(prompt)})
    return chat


def row_tools(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tool definitions a row offers (its `tools`: a list, or its JSON text), as training renders them."""
    try:
        return tools_of(row.get("tools"), "'tools'")
    except RowError as error:
        raise StageError(str(error)) from None


def chat_messages(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The full chat of a row (for held-out loss), its turns read as an SFT source's are (a think block in the answer
    as its reasoning, tool-call arguments as JSON text); None when it has no assistant turn."""
    messages = row.get("messages")
    if not messages or not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        return None
    try:
        return normalize_row({"messages": messages}, FormatSpec("messages")).messages
    except RowError as error:
        raise StageError(str(error)) from None


def evaluation_prompts(stages: Sequence[Any]) -> EvalPrompts:
    """The prompts a recipe's evaluate stages (among ``stages``) ask, read from their suites' local data (the rows each suite uses);
    a suite whose rows would need a download (hub data, lm-eval tasks) is named as not checked, not read."""
    from tempa.merge.evaluate_config import EvaluateStageConfig

    prompts: list[EvalPrompt] = []
    unchecked: list[str] = []
    for config in stages:
        if not isinstance(config, EvaluateStageConfig):
            continue
        for suite in config.suites:
            label = f"suite '{suite.key}' of stage '{config.name}'"
            data = getattr(suite, "data", None)
            if data is None or not Path(data).exists():
                why = "lm-eval tasks" if data is None else "not found" if looks_local(data) else "a hub dataset"
                unchecked.append(f"{label} ({data or ', '.join(getattr(suite, 'tasks', []))}: {why})")
                continue
            rows, names = load_named_rows(data, split=suite.split, max_rows=suite.max_rows)
            prompts += [EvalPrompt(text, f"{label} ({name})") for row, name in zip(rows, names, strict=True)
                        if (text := _suite_instruction(suite, row))]
    return EvalPrompts(tuple(prompts), tuple(unchecked))


def _suite_instruction(suite: Any, row: dict[str, Any]) -> str | None:
    """The user turns a suite asks of ``row``, joined as a training row's instruction; None for a row that asks none."""
    from tempa.merge.evaluate_config import WinRateSuite
    from tempa.merge.win_rate import pairwise_row
    from tempa.sft.formats import user_instruction

    try:
        if isinstance(suite, WinRateSuite):
            return "\n".join(pairwise_row(row, suite.turns_field, suite.category_field).turns)
        return user_instruction([{**m, "content": str(m.get("content") or "")} for m in prompt_messages(row)])
    except (StageError, ValueError):
        return None  # (evaluate's own input check names such a row)
