"""Row formats: every accepted layout becomes one :class:`Conversation` of turns and its tool definitions.

A turn is ``{role, content, reasoning_content}``, plus ``tool_calls`` on an assistant turn that calls
tools and ``tool_call_id`` / ``name`` on a tool result when the row gives them.

Accepted: OpenAI-style ``messages`` (with ``tool_calls``, whose ``arguments`` are an object or a JSON
string, the legacy ``function_call``, and ``tool`` / ``function`` results); ShareGPT ``conversations``
(``from``/``value``, with ``function_call`` and ``observation`` turns); ``prompt`` + ``response`` (or
``completion``, also trl's conversational prompt/completion lists); ``instruction`` + ``input`` +
``output``. A row's ``tools`` (a list of definitions, or that list as a JSON string) come along, and so
does its ``system`` column, as the first turn, in every format (LLaMA-Factory's ShareGPT keeps it there), and its
own ``thinking_mode`` (``on`` / ``off``, or true / false, :func:`thinking_mode_of`), which wins over its source's. A
reasoning trace is read from a field (``reasoning_content``, ``thinking``, ``reasoning``: the first that holds text, in transformers' order) or from a think
block in the answer, split by :func:`tempa.chat_templates.thinking.split_reasoning`. A turn's null or absent content is
empty text, for every role, as the templates render it.

Tool-call arguments are stored as canonical JSON text (``json.dumps(..., ensure_ascii=False)``), which is
exactly what the templates' ``tojson`` writes for an object, so a row renders the same whichever way it
spelled them.

Text is read in NFC (:func:`composed`), whatever form the file holds.

Everything here is a pure function of the row and a :class:`FormatSpec`. A row that cannot be
read raises :class:`RowError` with a one-line reason; the caller turns that into a reject.
"""

from __future__ import annotations

import ast
import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tempa.chat_templates.roles import TOOL_ROLES
from tempa.chat_templates.thinking import split_reasoning
from tempa.sft.data_config import ColumnMapping, DataError, SourceConfig
from tempa.sft.stage_api import on_off_of_bool
from tempa.sft.suggest import did_you_mean

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
    "ipython": "tool",
}
# ShareGPT speakers whose value is a tool call (JSON: {"name", "arguments"} or a list of them).
CALL_ROLES = frozenset({"function_call", "tool_call", "tool_calls"})

_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")  # transformers' alias order (apply_chat_template)
# A turn's training flag as other trainers write it: axolotl's ``message_field_training`` (``weight``: 0 or 1), and
# ``train`` (true or false).
_TRAIN_FLAGS = ("weight", "train")
# A normalised assistant turn's flag: False for a turn that is context only (absent: it trains).
TRAIN = "train"
# Per-turn keys read besides the spec's role, content and reasoning names.
_TURN_KEYS = frozenset({"tool_calls", "function_call", "tool_call_id", "name", *_TRAIN_FLAGS})
# Notes a row leaves for its source's log line (:attr:`Conversation.notes`): keys schema unification added, and
# per-turn keys tempa does not read (``UNKNOWN_TURN_KEY`` + the key).
ARROW_NULLS = "arrow_nulls"
UNKNOWN_TURN_KEY = "unknown_turn_key:"


class RowError(ValueError):
    """A row that cannot be read; the message says which field and what was expected."""


@dataclass
class Conversation:
    """A normalised row: its turns and the tool definitions it offers (None without any)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    thinking_mode: Literal["on", "off"] | None = None  # the row's own, which wins over its source's
    notes: set[str] = field(default_factory=set)  # what its source's log line counts (``ARROW_NULLS``...)


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
    tools: tuple[str, ...] = ("tools",)
    # LLaMA-Factory's Alpaca rows keep earlier rounds here; dropping them would train answers without their context.
    history: tuple[str, ...] = ("history",)
    thinking_mode: tuple[str, ...] = ("thinking_mode",)
    role_names: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLE_NAMES))
    # what an unknown role's error adds: how the reader can map other names (an SFT source's columns.role_names)
    role_hint: str = ""


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
                                          "instruction", "input", "output", "system", "tools",
                                          "thinking_mode")},
        role_names={**DEFAULT_ROLE_NAMES, **{k.lower(): v for k, v in cols.role_names.items()}},
        role_hint=" (map others with the source's columns.role_names)",
    )


def _first_present(row: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    for key in keys:
        if key in row and not _is_missing(row[key]):
            return key
    return None


def _is_missing(value: Any) -> bool:
    # CSV and Parquet give None or NaN for an empty cell.
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_blank_text(value: Any) -> bool:
    # A JSON-text cell left empty (LLaMA-Factory's tools of a row without tools, CSV/Parquet exports): none given.
    return isinstance(value, str) and not value.strip()


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


def expected_formats(spec: FormatSpec) -> str:
    """The columns that would make a row of each format, in the names ``spec`` reads (a source's ``columns:``
    mapping replaces the defaults): "'messages', 'conversations', 'prompt'+'response' or 'instruction'+'output'"."""
    lists = ", ".join(repr(name) for name in spec.messages)
    pairs = ["+".join(repr(names[0]) for names in (first, second))
             for first, second in ((spec.prompt, spec.response), (spec.instruction, spec.output))]
    return f"{lists}, {pairs[0]} or {pairs[1]}"


def check_columns(columns: Sequence[str], spec: FormatSpec, where: str) -> None:
    """Fail early, in one line, when a typed table (Parquet, CSV, Arrow) cannot hold the format."""
    fmt = detect_format(columns, spec)
    found = ", ".join(columns) or "none"
    if fmt is None:
        raise DataError(
            f"{where}: cannot tell the row format from the columns ({found}); expected {expected_formats(spec)}, "
            "or set format/columns"
        )
    for alternatives in required_columns(fmt, spec):
        if not any(name in columns for name in alternatives):
            wanted = " or ".join(repr(n) for n in alternatives)
            raise DataError(f"{where}: format '{fmt}' expects a column {wanted}; found columns: {found}")


# Characters NFC replaces by another one that is a change of character, not of form: the CJK compatibility
# ideographs (塚 U+FA10 → U+585A, as Japanese names are written in some sources) and the letterlike Ω, K and Å signs.
_KEPT_AS_WRITTEN = re.compile("([\uf900-\ufaff\U0002f800-\U0002fa1f\u2126\u212a\u212b])")


def composed(text: str) -> str:
    """``text`` as tempa trains on it and stores it: NFC. Files written on macOS, and some servers, hold text
    decomposed (NFD: Vietnamese 'ạ' as 'a' + U+0323, Japanese 'が' as 'か' + U+3099), which renders alike but is
    other bytes: it tokenises longer (a Vietnamese sentence 113 tokens instead of 67 with the tiny tokenizer; Llama
    3's tokenizer does not normalise), teaches the model to write that form, and escapes every exact comparison
    (dedup, answers, language checks). :data:`_KEPT_AS_WRITTEN` characters stay as they are."""
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return text
    parts = _KEPT_AS_WRITTEN.split(text)  # its odd parts are the characters kept
    return "".join(part if i % 2 else unicodedata.normalize("NFC", part) for i, part in enumerate(parts))


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return composed(value)
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
        return composed("".join(texts))
    kind = "nothing" if _is_missing(value) else type(value).__name__
    raise RowError(f"expected {what} to be a string, got {kind}")


def _optional_text(value: Any, what: str) -> str | None:
    if _is_missing(value):
        return None
    text = _text(value, what)
    return text if text.strip() else None


def thinking_mode_of(value: Any, what: str) -> Literal["on", "off"] | None:
    """A row's own thinking mode: ``on``, ``off`` (or true / false, as other tools write it), or None when it gives
    none (missing, null, an empty cell); raises :class:`RowError` naming ``what`` for anything else."""
    if _is_missing(value) or _is_blank_text(value):
        return None
    value = on_off_of_bool(value)
    if value in ("on", "off"):
        return value
    raise RowError(f"{what} must be 'on' or 'off', got {value!r:.60}")


def _reasoning(holder: Mapping[str, Any], keys: Sequence[str], where: str = "") -> str | None:
    # The first key with text, as the templates read it: exports often carry every spelling, the unused ones blank.
    for key in keys:
        if key in holder:
            value = holder[key]
            if isinstance(value, (bool, int, float)) and not _is_missing(value):
                # what the templates refuse (a trace is text), whereas a number answer from a CSV column is read
                raise RowError(f"expected {where}{key!r} to be text, got {type(value).__name__} {value!r:.40}")
            text = _optional_text(value, f"{where}{key!r}")
            if text is not None:
                return text
    return None


def _turn(role: str, content: str, reasoning: str | None = None, **extra: Any) -> dict[str, Any]:
    turn = {"role": role, "content": content, "reasoning_content": reasoning}
    turn.update({key: value for key, value in extra.items() if value is not None})
    return turn


def _assistant(content: str, reasoning: str | None, tool_calls: list[dict[str, Any]] | None = None,
               train: bool | None = None) -> dict[str, Any]:
    if reasoning is None:
        split = split_reasoning(content)
        if split.closed:
            # A closed block leaves the answer; an unclosed one stays, for the reasoning filter to name.
            reasoning, content = split.reasoning or None, split.answer
    # only the exception is stored: a turn without the flag trains, as every assistant turn did before it
    return _turn("assistant", content, reasoning, tool_calls=tool_calls, train=False if train is False else None)


def _python_literal_hint(text: str) -> str:
    # str(dict) / str(list) is how such cells are usually made; the JSON error alone does not say what to change.
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return ""
    if not isinstance(value, (dict, list, tuple)):
        return ""
    return "; it is a Python literal (single quotes, True/None), not JSON: write it with json.dumps"


def _json_value(value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"expected {what} to be JSON; {exc.msg} at column {exc.colno}"
                           f"{_python_literal_hint(value)}") from None
    return value


def without_arrow_nulls(value: Any) -> Any:
    """``value`` with every null-valued key of its objects left out, at any depth (list items stay).

    For objects read from Arrow structs (Parquet, hub datasets): ``datasets`` gives every row's struct every key any
    row has, the missing ones null, so one row's arguments ``{"city": "東京"}`` arrive as ``{"city": "東京", "query":
    None}``. A key written null on purpose cannot be told apart there; in JSON text it can, and stays."""
    if isinstance(value, Mapping):
        return {key: without_arrow_nulls(item) for key, item in value.items() if not _is_missing(item)}
    if isinstance(value, (list, tuple)):
        return [without_arrow_nulls(item) for item in value]
    return value


def _unified(value: Any, arrow_notes: set[str] | None) -> Any:
    # ``arrow_notes`` is given for a row read from Arrow: its structs lose the keys unification added (noted, if any).
    if arrow_notes is None or isinstance(value, str):
        return value
    kept = without_arrow_nulls(value)
    if kept != value:
        arrow_notes.add(ARROW_NULLS)
    return kept


def _canonical_arguments(value: Any, what: str, arrow_notes: set[str] | None = None) -> str:
    arguments = {} if _is_missing(value) else _json_value(_unified(value, arrow_notes), what)
    if not isinstance(arguments, Mapping):
        raise RowError(f"expected {what} to be a JSON object, got {type(arguments).__name__}")
    return json.dumps(arguments, ensure_ascii=False)


def tool_calls_of(value: Any, what: str, *, single: bool = True,
                  arrow_notes: set[str] | None = None) -> list[dict[str, Any]] | None:
    """OpenAI-style tool calls (or ShareGPT / legacy ``{"name", "arguments"}`` ones) in one shape:
    ``[{"id", "type": "function", "function": {"name", "arguments": <canonical JSON text>}}]``.

    ``single``: one call object is read as a list of it (ShareGPT's ``function_call`` value, the legacy
    ``function_call``); else it is a :class:`RowError`, as OpenAI's ``tool_calls`` is a list the templates iterate.
    ``arrow_notes``: given for a row read from Arrow, :func:`without_arrow_nulls` applies to the arguments (and
    :data:`ARROW_NULLS` is added when that changes them)."""
    if _is_missing(value) or _is_blank_text(value):
        return None
    calls = _json_value(value, what)
    if isinstance(calls, Mapping):
        if not single:
            raise RowError(f"expected {what} to be a list of tool calls, got one call object (write it as [{{...}}])")
        calls = [calls]
    if not isinstance(calls, (list, tuple)):
        raise RowError(f"expected {what} to be a list of tool calls, got {type(calls).__name__}")
    out = []
    for i, call in enumerate(calls):
        where = f"{what}[{i}]"
        if not isinstance(call, Mapping):
            raise RowError(f"expected {where} to be an object, got {type(call).__name__}")
        function = call.get("function", call)
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RowError(f"expected {where} to name its function (a non-empty 'name')")
        call_id = call.get("id")
        out.append({
            "id": call_id if isinstance(call_id, str) else None,
            "type": "function",
            "function": {
                "name": function["name"],
                "arguments": _canonical_arguments(function.get("arguments"), f"{where} arguments", arrow_notes),
            },
        })
    return out or None


def tools_of(value: Any, what: str, *, arrow_notes: set[str] | None = None) -> list[dict[str, Any]] | None:
    """A row's tool definitions as OpenAI ``{"type": "function", "function": {...}}`` objects (bare
    ``{"name", "description", "parameters"}`` ones, as ShareGPT datasets write them, are wrapped).

    ``arrow_notes``: given for a row read from Arrow, the definitions lose their null-valued keys (:func:`without_arrow_nulls`;
    a JSON Schema keyword or property is never null)."""
    if _is_missing(value) or _is_blank_text(value):
        return None
    tools = _json_value(_unified(value, arrow_notes), what)
    if not isinstance(tools, (list, tuple)):
        raise RowError(f"expected {what} to be a list of tool definitions, got {type(tools).__name__}")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise RowError(f"expected {what}[{i}] to be an object, got {type(tool).__name__}")
        tool = dict(tool) if "function" in tool else {"type": "function", "function": dict(tool)}
        function = tool["function"]
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise RowError(f"expected {what}[{i}] to define a function with a 'name'")
        out.append(tool)
    return out or None


def _content(value: Any, what: str) -> str:
    # No content is empty content, as the templates render it: llama-server logs every "" as null, transformers
    # drops None keys, so a turn's null or absent content and "" must read alike.
    return "" if _is_missing(value) else _text(value, what)


def _tool_content(value: Any, what: str) -> str:
    # Results are often objects; the templates write those as JSON (tojson), so store that text.
    if isinstance(value, (Mapping, list, tuple)) and not (
        isinstance(value, (list, tuple)) and value and all(isinstance(p, Mapping) and "type" in p for p in value)
    ):
        return json.dumps(value, ensure_ascii=False)
    return _content(value, what)


def _trains(turn: Mapping[str, Any], i: int) -> bool | None:
    """The turn's training flag (:data:`_TRAIN_FLAGS`), None when it gives none."""
    flags = {}
    for key in _TRAIN_FLAGS:
        value = turn.get(key)
        if _is_missing(value):
            continue
        if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
            flags[key] = bool(value)
        else:
            raise RowError(f"turn {i} {key!r}: expected 0 or 1 (or false / true: whether the turn trains), "
                           f"got {value!r:.40}")
    if len(set(flags.values())) > 1:
        raise RowError(f"turn {i}: 'weight' and 'train' disagree; expected one of them, or the same flag")
    return next(iter(flags.values()), None)


def trains(turn: Mapping[str, Any]) -> bool:
    """Whether a normalised turn is trained: an assistant turn not marked context only (``weight`` 0, ``train``
    false in the row)."""
    return turn["role"] == "assistant" and turn.get(TRAIN) is not False


def _read_turns(turns: Any, spec: FormatSpec, field_name: str, notes: set[str] | None = None,
                arrow: bool = False) -> list[dict[str, Any]]:
    """``notes`` collects the row's :attr:`Conversation.notes`; ``arrow``: the row was read from Arrow."""
    arrow_notes = notes if arrow else None
    shape = f"a list of {{{spec.role[0]}, {spec.content[0]}}}"  # ShareGPT's {from, value}, OpenAI's {role, content}
    if isinstance(turns, str) and turns.lstrip().startswith("["):
        # CSV has no lists, and Parquet files are often written with the turns as JSON text (as tools are read)
        turns = _json_value(turns, repr(field_name))
    if not isinstance(turns, (list, tuple)) or not turns:
        got = ("an empty list" if isinstance(turns, (list, tuple)) else "nothing" if _is_missing(turns)
               else f"text that is no JSON list ({turns.strip()[:40]!r})" if isinstance(turns, str)
               else type(turns).__name__)
        raise RowError(f"expected {field_name!r} to be {shape}, got {got}")
    out: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise RowError(f"expected {field_name!r} to be {shape}; turn {i} is a {type(turn).__name__}")
        # (Arrow gives every turn every key of the schema: only keys with a value count)
        known = _TURN_KEYS.union(spec.role, spec.content, spec.reasoning)
        unknown = [key for key, value in turn.items() if key not in known and not _is_missing(value)]
        if notes is not None:
            notes.update(UNKNOWN_TURN_KEY + str(key) for key in unknown)
        flag = _trains(turn, i)
        role_key = _first_present(turn, spec.role)
        content_key = next((k for k in spec.content if k in turn), None)
        # No content key is empty content (below), but not beside a key the reader does not know: that is the
        # content under another name (`text`, `value` in a messages source), and every row would train as empty.
        if role_key is None or (content_key is None and unknown):
            raise RowError(f"expected {field_name!r} to be {shape}; turn {i} has keys {sorted(turn)}")
        raw_role = turn[role_key]
        name = str(raw_role).lower() if isinstance(raw_role, str) else None
        content = turn[content_key] if content_key is not None else None
        if name in CALL_ROLES:
            # ShareGPT: the turn's value is the call; it joins a text-only assistant turn right before it.
            calls = tool_calls_of(content, f"turn {i} {content_key!r}", arrow_notes=arrow_notes)
            if calls is None:
                raise RowError(f"turn {i}: a {raw_role!r} turn without a tool call")
            previous = out[-1] if out else None
            if previous is not None and previous["role"] == "assistant" and "tool_calls" not in previous:
                previous["tool_calls"] = calls
                if flag is False:
                    previous[TRAIN] = False
            else:
                out.append(_turn("assistant", "", None, tool_calls=calls, train=False if flag is False else None))
            continue
        role = spec.role_names.get(name) if name is not None else None
        if role is None:
            raise RowError(f"turn {i}: unknown role {raw_role!r}; expected one of {', '.join(sorted(spec.role_names))}"
                           f"{did_you_mean(name, spec.role_names)}{spec.role_hint}")
        if role == "assistant":
            calls = tool_calls_of(turn.get("tool_calls"), f"turn {i} 'tool_calls'", single=False,
                                  arrow_notes=arrow_notes) or tool_calls_of(turn.get("function_call"), f"turn {i} 'function_call'",
                                                                arrow_notes=arrow_notes)
            text = _content(content, f"turn {i} {content_key!r}")
            out.append(_assistant(text, _reasoning(turn, spec.reasoning, f"turn {i} "), calls, flag))
        elif role == "tool":
            call_id, tool_name = turn.get("tool_call_id"), turn.get("name")
            out.append(_turn(
                "tool", _tool_content(content, f"turn {i} {content_key!r}"),
                tool_call_id=call_id if isinstance(call_id, str) else None,
                name=tool_name if isinstance(tool_name, str) else None,
            ))
        else:
            # A trace on a non-assistant turn is never rendered; keeping it would only mislead.
            out.append(_turn(role, _content(content, f"turn {i} {content_key!r}")))
    return out


def _history_turns(value: Any, what: str) -> list[dict[str, Any]]:
    """LLaMA-Factory's ``history``: earlier rounds as ``[instruction, response]`` pairs, as user/assistant turns."""
    if _is_missing(value) or _is_blank_text(value) or (isinstance(value, (list, tuple)) and not value):
        return []
    expected = f"expected {what} to be a list of [instruction, response] pairs"
    if not isinstance(value, (list, tuple)):
        raise RowError(f"{expected}, got {type(value).__name__}")
    turns: list[dict[str, Any]] = []
    for i, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowError(f"{expected}; item {i} is not a pair")
        turns.append(_turn("user", _text(pair[0], f"{what}[{i}][0] (of an [instruction, response] pair)")))
        turns.append(_assistant(_text(pair[1], f"{what}[{i}][1] (of an [instruction, response] pair)"), None))
    return turns


def _with_system(turns: list[dict[str, Any]], system: str | None, column: str | None) -> list[dict[str, Any]]:
    # LLaMA-Factory's ShareGPT (and some OpenAI-style exports) keep the system prompt in a column beside the turns.
    if system is None:
        return turns
    if turns[0]["role"] != "system":
        return [_turn("system", system), *turns]
    if turns[0]["content"].strip() != system.strip():
        raise RowError(f"{column!r} and turn 0 are both system prompts and differ; expected at most one of them")
    return turns


def normalize_row(row: Mapping[str, Any], spec: FormatSpec, *, arrow: bool = False) -> Conversation:
    """The row as a :class:`Conversation`; raises :class:`RowError`.

    ``arrow``: the row was read from Arrow (Parquet, a hub or saved dataset), whose struct-typed tool arguments and
    tool definitions lose the null-valued keys schema unification added (:func:`without_arrow_nulls`)."""
    notes: set[str] = set()
    arrow_notes = notes if arrow else None
    if not isinstance(row, Mapping):
        raise RowError(f"expected a JSON object per row, got {type(row).__name__}")
    fmt = detect_format(row, spec)
    if fmt is None:
        # a column that is there but null (an empty CSV cell, "response": null) counts as absent: say which
        read = {*spec.messages, *spec.prompt, *spec.response, *spec.instruction, *spec.output}
        empty = [key for key in sorted(row) if key in read and _is_missing(row[key])]
        raise RowError(
            f"expected {expected_formats(spec)}; found keys {sorted(row)}"
            + (f", but {' and '.join(map(repr, empty))} {'is' if len(empty) == 1 else 'are'} null (empty)"
               if empty else "")
        )
    tools_key = _first_present(row, spec.tools)
    tools = tools_of(row[tools_key], repr(tools_key), arrow_notes=arrow_notes) if tools_key else None
    system_key = _first_present(row, spec.system)
    system = _optional_text(row[system_key], repr(system_key)) if system_key else None
    mode_key = _first_present(row, spec.thinking_mode)
    mode = thinking_mode_of(row[mode_key], repr(mode_key)) if mode_key else None
    if fmt in ("messages", "sharegpt"):
        key = _first_present(row, spec.messages) or spec.messages[0]
        turns = _read_turns(row.get(key), spec, key, notes, arrow)
        return Conversation(_with_system(turns, system, system_key), tools, mode, notes)

    reasoning = _reasoning(row, spec.reasoning)
    history_key = _first_present(row, spec.history)
    history = _history_turns(row[history_key], repr(history_key)) if history_key else []
    head = [*([_turn("system", system)] if system else []), *history]

    if fmt == "prompt_response":
        prompt_key = _first_present(row, spec.prompt) or spec.prompt[0]
        response_key = _first_present(row, spec.response) or spec.response[0]
        prompt, response = row.get(prompt_key), row.get(response_key)
        if isinstance(prompt, (list, tuple)) and isinstance(response, (list, tuple)):
            # trl's conversational prompt/completion: two turn lists to join.
            turns = (_read_turns(list(prompt), spec, prompt_key, notes, arrow)
                     + _read_turns(list(response), spec, response_key, notes, arrow))
            if reasoning is not None and turns[-1]["role"] == "assistant" and turns[-1]["reasoning_content"] is None:
                turns[-1]["reasoning_content"] = reasoning
            return Conversation(head + turns, tools, mode, notes)
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
    return Conversation([*head, _turn("user", user), _assistant(answer, reasoning)], tools, mode, notes)


def user_instruction(messages: Sequence[Mapping[str, Any]]) -> str:
    """All user turns joined: the instruction that dedup and the template filter compare."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def uses_tools(messages: Sequence[Mapping[str, Any]], tools: Any) -> bool:
    """Whether a conversation offers tool definitions (``tools``: a list, or its JSON text) or holds a tool loop (an
    assistant turn that calls a tool, a turn that carries a tool's result): what SFT counts as a tool row, and what a
    prompt renders only with its tools."""
    return bool(tools) or any(turn.get("tool_calls") or turn.get("role") in TOOL_ROLES for turn in messages)
