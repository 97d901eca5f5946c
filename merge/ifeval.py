"""IFEval-style verifiable instructions: each is a small pydantic model with a pure ``check``.

A data row lists its instructions as dicts with a ``type`` and that type's arguments, e.g.
``{"type": "word_count", "min": 50, "max": 120}``. The checks read the user-visible answer (the
text after any think block) and are script-agnostic where they can be: words are runs of word
characters and combining marks, sentences end at ``. ! ?`` and the Devanagari dandas ``। ॥`` before a space,
and at ``。 ！ ？`` wherever they stand, as Japanese and Chinese write them (Thai marks a sentence's end with a
space, so unpunctuated Thai is one sentence). A blank answer follows no
instruction, as in IFEval's reference.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator


class _Instruction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def check(self, text: str) -> bool:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


class _CountRange(_Instruction):
    min: int | None = Field(default=None, ge=0, description="Smallest allowed count (inclusive).")
    max: int | None = Field(default=None, ge=0, description="Largest allowed count (inclusive).")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min is None and self.max is None:
            raise ValueError("give at least one of min / max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self

    def in_range(self, count: int) -> bool:
        return (self.min is None or count >= self.min) and (self.max is None or count <= self.max)


class StartsWith(_Instruction):
    """The answer begins with a phrase."""

    type: Literal["starts_with"] = "starts_with"
    value: str = Field(min_length=1, description="Phrase the answer must start with.")
    case_sensitive: bool = Field(default=False, description="Compare case-sensitively.")

    def check(self, text: str) -> bool:
        text, value = text.strip(), self.value.strip()
        if not self.case_sensitive:
            text, value = text.casefold(), value.casefold()
        return text.startswith(value)


class EndsWith(_Instruction):
    """The answer ends with a phrase (trailing whitespace ignored)."""

    type: Literal["ends_with"] = "ends_with"
    value: str = Field(min_length=1, description="Phrase the answer must end with.")
    case_sensitive: bool = Field(default=False, description="Compare case-sensitively.")

    def check(self, text: str) -> bool:
        text, value = text.strip(), self.value.strip()
        if not self.case_sensitive:
            text, value = text.casefold(), value.casefold()
        return text.endswith(value)


class WordCount(_CountRange):
    """The answer has between ``min`` and ``max`` words."""

    type: Literal["word_count"] = "word_count"

    def check(self, text: str) -> bool:
        return self.in_range(count_words(text))


class CharCount(_CountRange):
    """The answer has between ``min`` and ``max`` characters, whitespace not counted: the length limit of languages
    written without spaces (Japanese 「五十文字以内で」, Chinese, Thai), where a word count sees one word per clause."""

    type: Literal["char_count"] = "char_count"

    def check(self, text: str) -> bool:
        return self.in_range(count_chars(text))


class SentenceCount(_CountRange):
    """The answer has between ``min`` and ``max`` sentences."""

    type: Literal["sentence_count"] = "sentence_count"

    def check(self, text: str) -> bool:
        return self.in_range(count_sentences(text))


class BulletCount(_CountRange):
    """The answer has between ``min`` and ``max`` markdown bullet points (``*``, ``-``, ``+``, ``•``)."""

    type: Literal["bullet_count"] = "bullet_count"

    def check(self, text: str) -> bool:
        return self.in_range(count_bullets(text))


class JsonFormat(_Instruction):
    """The whole answer is valid JSON (a surrounding ```json fence is allowed)."""

    type: Literal["json_format"] = "json_format"

    def check(self, text: str) -> bool:
        return is_json(text)


class AllLowercase(_Instruction):
    """No uppercase letters anywhere in the answer (trivially true for uncased scripts)."""

    type: Literal["all_lowercase"] = "all_lowercase"

    def check(self, text: str) -> bool:
        return bool(text.strip()) and text == text.lower()


# After NFKC (which makes the full-width ，, the half-width ､ and the small and vertical forms , or 、): the comma,
# the ideographic comma (Japanese 読点, Chinese 顿号: a comma in what the instruction asks of CJK text), and the
# commas of the Arabic, Armenian, Ethiopic and Mongolian scripts.
_COMMAS = re.compile("[,、،՝፣᠂᠈]")


class NoCommas(_Instruction):
    """No commas: the ASCII one, the full-width ，, the ideographic 、 and its half-width ､, the small and vertical
    forms, and the Arabic ، (and other scripts' commas)."""

    type: Literal["no_commas"] = "no_commas"

    def check(self, text: str) -> bool:
        return bool(text.strip()) and _COMMAS.search(unicodedata.normalize("NFKC", text)) is None


Instruction = Annotated[
    StartsWith
    | EndsWith
    | WordCount
    | CharCount
    | SentenceCount
    | BulletCount
    | JsonFormat
    | AllLowercase
    | NoCommas,
    Field(discriminator="type"),
]
_INSTRUCTIONS = TypeAdapter(list[Instruction])

_WORD_RE = re.compile(r"\w+(?:['’-]\w+)*")
# ". ! ?" and the dandas end a sentence before a space or a closing quote ("2.5" and "e.g." end none); the CJK
# stops carry their own spacing and end one wherever they stand, unless a closing quote or bracket follows (彼は
# 「行きます。」と言った。 is one sentence).
_CLOSERS, _OPENERS = "」』）】〕〉》”’\"')\\]", "「『（【〔〈《“‘\"'(\\["
# ... and a line of dialogue (「はい。」) is one, when its closing bracket ends the line or another line opens.
_SENTENCE_END_RE = re.compile(rf"[.!?।॥]+(?=\s|$|[\"'”’)\]])|[。！？]+(?:[{_CLOSERS}]+(?=\s|$|[{_OPENERS}])|(?![{_CLOSERS}]))")
_BULLET_RE = re.compile(r"^\s*(?:[*+•]\s+|-\s+)\S", re.MULTILINE)
_FENCE_RE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL | re.IGNORECASE)


def count_words(text: str) -> int:
    """Runs of word characters (contractions and hyphenations count once).

    Combining marks (Thai, Tamil and Devanagari vowel signs and viramas) belong to the word they sit in:
    ``re``'s ``\\w`` does not match them, so "வணக்கம்" would be three words. Scripts written without
    spaces between words (Thai, Japanese, Chinese) count each run between spaces or punctuation once: give them
    ``char_count`` limits instead.
    """
    return len(_WORD_RE.findall(_marks_as_letters(text)))


def count_chars(text: str) -> int:
    """Characters other than whitespace (combining marks count as the characters they are)."""
    return sum(not ch.isspace() for ch in text)


def _marks_as_letters(text: str) -> str:
    return "".join("a" if unicodedata.category(ch).startswith("M") else ch for ch in text)


def count_sentences(text: str) -> int:
    """Sentences: text segments ending at sentence punctuation, plus a trailing unterminated one."""
    text = text.strip()
    if not text:
        return 0
    count = 0
    start = 0
    for match in _SENTENCE_END_RE.finditer(text):
        if _WORD_RE.search(text[start : match.start()]):
            count += 1
        start = match.end()
    if _WORD_RE.search(text[start:]):
        count += 1
    return count


def count_bullets(text: str) -> int:
    """Lines that are markdown bullets (``* x``, ``- x``, ``+ x``, ``• x``); ``---`` rules do not count."""
    return len(_BULLET_RE.findall(text))


def is_json(text: str) -> bool:
    """The text (optionally fenced in ```json ... ```) parses as JSON."""
    text = text.strip()
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if not text:
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# Each instruction type by its `type` tag, in the union's order (the reference lists them so).
INSTRUCTION_KINDS: dict[str, type[_Instruction]] = {
    kind.model_fields["type"].default: kind for kind in get_args(get_args(Instruction)[0])
}


def parse_instructions(raw: Iterable[Mapping[str, Any]] | None) -> list[Instruction]:
    """Validate a row's instruction list; ValueError in one line naming the entry, its type, the key and what the
    type takes (pydantic's own message names the whole union of types, over several lines)."""
    if isinstance(raw, str | Mapping):
        raise ValueError(
            f"instructions: expected a list of objects such as [{{type: word_count, max: 50}}], got {raw!r}"
        )
    entries = list(raw or [])
    try:
        return _INSTRUCTIONS.validate_python(entries)
    except ValidationError as exc:
        raise ValueError(_describe(exc.errors()[0], entries)) from None


def _describe(error: Mapping[str, Any], entries: list[Any]) -> str:
    loc = list(error["loc"])
    index = loc.pop(0) if loc and isinstance(loc[0], int) else None
    entry = entries[index] if index is not None and index < len(entries) else None
    where = f"instructions[{index}]" if index is not None else "instructions"
    kind = entry.get("type") if isinstance(entry, Mapping) else None
    known = ", ".join(INSTRUCTION_KINDS)
    if not isinstance(entry, Mapping) and index is not None:
        return f"{where}: expected an object such as {{type: word_count, max: 50}}, got {entry!r}"
    if kind not in INSTRUCTION_KINDS:
        got = "no 'type'" if kind is None else f"unknown type {kind!r}"
        return f"{where}: {got}; expected one of {known}"
    takes = [name for name in INSTRUCTION_KINDS[kind].model_fields if name != "type"]
    key = ".".join(str(part) for part in loc[1:])  # loc[0] is the union tag
    if error["type"] == "extra_forbidden":
        problem = f"unknown key {key!r}"
    else:
        problem = f"{key}: {error['msg']}" if key else error["msg"].removeprefix("Value error, ")
    return f"{where} ({kind}): {problem}; {kind} takes {', '.join(takes) or 'no arguments'}"


def check_all(instructions: Iterable[Instruction], text: str) -> list[bool]:
    """One pass/fail per instruction, in order; a blank answer follows none of them.

    As in IFEval's reference (``response.strip() and instruction.check_following(response)``): without it an
    answer that never came (a think block cut off at the token limit leaves none) passes every "at most N
    words / sentences / bullets" instruction.
    """
    instructions = list(instructions)
    if not text.strip():
        return [False] * len(instructions)
    return [instruction.check(text) for instruction in instructions]


def ifeval_scores(results: list[tuple[list[Instruction], list[bool]]]) -> dict[str, float]:
    """Aggregate per-prompt results into IFEval's strict metrics.

    ``prompt_accuracy``: prompts whose every instruction passed; ``instruction_accuracy``: all
    instructions pooled; ``instruction_accuracy:<type>``: per instruction type.
    """
    if not results:
        return {}
    prompt_pass = [all(passed) for _, passed in results if passed]
    pooled = [ok for _, passed in results for ok in passed]
    by_type: dict[str, list[bool]] = {}
    for instructions, passed in results:
        for instruction, ok in zip(instructions, passed, strict=True):
            by_type.setdefault(instruction.type, []).append(ok)
    scores = {
        "prompt_accuracy": sum(prompt_pass) / len(prompt_pass) if prompt_pass else 0.0,
        "instruction_accuracy": sum(pooled) / len(pooled) if pooled else 0.0,
    }
    for name in sorted(by_type):
        scores[f"instruction_accuracy:{name}"] = sum(by_type[name]) / len(by_type[name])
    return scores
