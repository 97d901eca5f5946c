"""Row formats: every accepted layout becomes one list of turns ``{role, content, reasoning_content}``.

Accepted: OpenAI-style ``messages``; ShareGPT ``conversations`` (``from``/``value``); ``prompt`` +
``response`` (or ``completion``, also trl's conversational prompt/completion lists); ``instruction``
+ ``input`` + ``output``. A reasoning trace is read from a field (``reasoning_content``,
``reasoning``, ``thinking``) or from R1-style ``<think>...</think>`` at the start of an answer.

Everything here is a pure function of the row and a :class:`FormatSpec`. A row that cannot be
read raises :class:`RowError` with a one-line reason; the caller turns that into a reject.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tempa.sft.data_config import ColumnMapping, DataError, SourceConfig

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_THINK_TAG = re.compile(r"</?think>")

# Speaker names seen in the wild, mapped to the roles chat templates know.
DEFAULT_ROLE_NAMES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "ipython",
}

_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


class RowError(ValueError):
    """A row that cannot be read; the message says which field and what was expected."""


@dataclass(frozen=True)
class FormatSpec:
    """How to read rows of one source: the format (or ``auto``) and the column names to try."""

    format: str
    messages: tuple[str, ...] = ("messages", "conversations")
    role: tuple[str, ...] = ("role", "from")
    content: tuple[str, ...] = ("content", "value")
    reasoning: tuple[str, ...] = _REASONING_KEYS
    prompt: tuple[str, ...] = ("prompt",)
    response: tuple[str, ...] = ("response", "completion")
    instruction: tuple[str, ...] = ("instruction",)
    input: tuple[str, ...] = ("input",)
    output: tuple[str, ...] = ("output",)
    system: tuple[str, ...] = ("system",)
    role_names: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLE_NAMES))


def spec_for(source: SourceConfig) -> FormatSpec:
    """The :class:`FormatSpec` of a source: explicit column names replace the defaults."""
    cols: ColumnMapping = source.columns
    fmt = source.format
    defaults = FormatSpec(format=fmt)
    if fmt == "sharegpt":
        # ShareGPT spells the list, the speaker and the text differently; try its names first.
        defaults = FormatSpec(
            format=fmt, messages=("conversations", "messages"), role=("from", "role"), content=("value", "content")
        )

    def pick(name: str) -> tuple[str, ...]:
        explicit = getattr(cols, name)
        return (explicit,) if explicit else getattr(defaults, name)

    return FormatSpec(
        format=fmt,
        **{name: pick(name) for name in ("messages", "role", "content", "reasoning", "prompt", "response",
                                          "instruction", "input", "output", "system")},
        role_names={**DEFAULT_ROLE_NAMES, **{k.lower(): v for k, v in cols.role_names.items()}},
    )


def _first_present(row: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    for key in keys:
        if key in row and not _is_missing(row[key]):
            return key
    return None


def _is_missing(value: Any) -> bool:
    # CSV and Parquet give None or NaN for an empty cell.
    return value is None or (isinstance(value, float) and math.isnan(value))


def detect_format(keys: Sequence[str] | Mapping[str, Any], spec: FormatSpec) -> str | None:
    """The format a row (or a table with these columns) is in, or None when none fits.

    Given a mapping, keys whose value is missing (None/NaN) do not count.
    """
    row = keys if isinstance(keys, Mapping) else dict.fromkeys(keys, "")
    if spec.format != "auto":
        return spec.format
    if _first_present(row, spec.messages):
        return "messages"
    if _first_present(row, spec.prompt) and _first_present(row, spec.response):
        return "prompt_response"
    if _first_present(row, spec.instruction) and _first_present(row, spec.output):
        return "alpaca"
    return None


def required_columns(fmt: str, spec: FormatSpec) -> list[tuple[str, ...]]:
    """Column alternatives a table must have for ``fmt`` (each tuple: any one of these names)."""
    return {
        "messages": [spec.messages],
        "sharegpt": [spec.messages],
        "prompt_response": [spec.prompt, spec.response],
        "alpaca": [spec.instruction, spec.output],
    }[fmt]


def check_columns(columns: Sequence[str], spec: FormatSpec, where: str) -> None:
    """Fail early, in one line, when a typed table (Parquet, CSV, Arrow) cannot hold the format."""
    fmt = detect_format(columns, spec)
    found = ", ".join(columns) or "none"
    if fmt is None:
        raise DataError(
            f"{where}: cannot tell the row format from the columns ({found}); expected 'messages', "
            "'conversations', 'prompt'+'response' or 'instruction'+'output', or set format/columns"
        )
    for alternatives in required_columns(fmt, spec):
        if not any(name in columns for name in alternatives):
            wanted = " or ".join(repr(n) for n in alternatives)
            raise DataError(f"{where}: format '{fmt}' expects a column {wanted}; found columns: {found}")


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise RowError(f"expected {what} to be a string, got a boolean")
    if isinstance(value, (int, float)) and not _is_missing(value):
        # CSV readers type a column of short answers ("5") as numbers.
        return str(value)
    if isinstance(value, list) and all(isinstance(p, Mapping) for p in value):
        # OpenAI content parts: only text parts can be trained on here.
        texts = []
        for part in value:
            if part.get("type", "text") != "text" or not isinstance(part.get("text"), str):
                raise RowError(f"expected {what} to be text; found a {part.get('type')!r} content part")
            texts.append(part["text"])
        return "".join(texts)
    kind = "nothing" if _is_missing(value) else type(value).__name__
    raise RowError(f"expected {what} to be a string, got {kind}")


def _optional_text(value: Any, what: str) -> str | None:
    if _is_missing(value):
        return None
    text = _text(value, what)
    return text if text.strip() else None


def split_think(content: str) -> tuple[str | None, str]:
    """Split R1-style ``<think>trace</think>answer`` into (trace, answer).

    Returns ``(None, content)`` unchanged when the tags are not well formed; the
    malformed-reasoning filter then finds the tags still in the answer and says what is wrong.
    Also accepts a lone ``</think>`` with no opening tag: R1's template pre-fills ``<think>\\n``,
    so raw R1 completions start inside the trace. An empty trace (``<think></think>``, R1's
    non-thinking output) is treated as no trace.
    """
    tags = _THINK_TAG.findall(content)
    if not tags:
        return None, content
    stripped = content.lstrip()
    if tags == [THINK_OPEN, THINK_CLOSE] and stripped.startswith(THINK_OPEN):
        trace, _, answer = stripped[len(THINK_OPEN):].partition(THINK_CLOSE)
    elif tags == [THINK_CLOSE]:
        trace, _, answer = content.partition(THINK_CLOSE)
    else:
        return None, content
    trace = trace.strip()
    return (trace or None), answer.lstrip()


def think_problem(content: str) -> str | None:
    """Why the think tags left in an answer are malformed, or None when there are none."""
    tags = _THINK_TAG.findall(content)
    if not tags:
        return None
    depth = 0
    for tag in tags:
        depth += 1 if tag == THINK_OPEN else -1
        if depth > 1:
            return "nested <think> tags"
        if depth < 0:
            return "</think> without a matching <think>"
    if depth > 0:
        return "unclosed <think> tag"
    if not content.lstrip().startswith(THINK_OPEN):
        return "<think> block is not at the start of the answer"
    return "more than one <think> block in one answer"


def _turn(role: str, content: str, reasoning: str | None = None) -> dict[str, Any]:
    return {"role": role, "content": content, "reasoning_content": reasoning}


def _assistant(content: str, reasoning: str | None) -> dict[str, Any]:
    if reasoning is None:
        reasoning, content = split_think(content)
    return _turn("assistant", content, reasoning)


def _read_turns(turns: Any, spec: FormatSpec, field_name: str) -> list[dict[str, Any]]:
    shape = "a list of {role, content}"
    if not isinstance(turns, (list, tuple)) or not turns:
        raise RowError(f"expected {field_name!r} to be {shape}")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise RowError(f"expected {field_name!r} to be {shape}; turn {i} is a {type(turn).__name__}")
        role_key = _first_present(turn, spec.role)
        content_key = next((k for k in spec.content if k in turn), None)
        if role_key is None or content_key is None:
            raise RowError(f"expected {field_name!r} to be {shape}; turn {i} has keys {sorted(turn)}")
        raw_role = turn[role_key]
        role = spec.role_names.get(str(raw_role).lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise RowError(f"turn {i}: unknown role {raw_role!r}; map it with columns.role_names")
        content = _text(turn[content_key], f"turn {i} {content_key!r}")
        reasoning_key = _first_present(turn, spec.reasoning)
        reasoning = _optional_text(turn[reasoning_key], f"turn {i} {reasoning_key!r}") if reasoning_key else None
        if role == "assistant":
            out.append(_assistant(content, reasoning))
        else:
            # A trace on a non-assistant turn is never rendered; keeping it would only mislead.
            out.append(_turn(role, content))
    return out


def normalize_row(row: Mapping[str, Any], spec: FormatSpec) -> list[dict[str, Any]]:
    """The row as a list of turns ``{role, content, reasoning_content}``; raises :class:`RowError`."""
    if not isinstance(row, Mapping):
        raise RowError(f"expected a JSON object per row, got {type(row).__name__}")
    fmt = detect_format(row, spec)
    if fmt is None:
        raise RowError(
            f"expected 'messages', 'conversations', 'prompt'+'response' or 'instruction'+'output'; "
            f"found keys {sorted(row)}"
        )
    if fmt in ("messages", "sharegpt"):
        key = _first_present(row, spec.messages) or spec.messages[0]
        return _read_turns(row.get(key), spec, key)

    system_key = _first_present(row, spec.system)
    system = _optional_text(row[system_key], repr(system_key)) if system_key else None
    reasoning_key = _first_present(row, spec.reasoning)
    reasoning = _optional_text(row[reasoning_key], repr(reasoning_key)) if reasoning_key else None
    head = [_turn("system", system)] if system else []

    if fmt == "prompt_response":
        prompt_key = _first_present(row, spec.prompt) or spec.prompt[0]
        response_key = _first_present(row, spec.response) or spec.response[0]
        prompt, response = row.get(prompt_key), row.get(response_key)
        if isinstance(prompt, (list, tuple)) and isinstance(response, (list, tuple)):
            # trl's conversational prompt/completion: two turn lists to join.
            turns = _read_turns(list(prompt), spec, prompt_key) + _read_turns(list(response), spec, response_key)
            if reasoning is not None and turns[-1]["role"] == "assistant" and turns[-1]["reasoning_content"] is None:
                turns[-1]["reasoning_content"] = reasoning
            return head + turns
        user = _text(prompt, repr(prompt_key))
        answer = _text(response, repr(response_key))
    else:
        instruction_key = _first_present(row, spec.instruction) or spec.instruction[0]
        output_key = _first_present(row, spec.output) or spec.output[0]
        user = _text(row.get(instruction_key), repr(instruction_key))
        input_key = _first_present(row, spec.input)
        extra = _optional_text(row[input_key], repr(input_key)) if input_key else None
        if extra:
            user = f"{user}\n\n{extra}"
        answer = _text(row.get(output_key), repr(output_key))
    return [*head, _turn("user", user), _assistant(answer, reasoning)]


def user_instruction(messages: Sequence[Mapping[str, Any]]) -> str:
    """All user turns joined: the instruction that dedup and the template filter compare."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")
