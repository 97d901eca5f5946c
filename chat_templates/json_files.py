"""Reading users' JSON and JSON Lines files, the one way tempa does it everywhere.

Files are UTF-8; a byte-order mark at the start is dropped (editors on Windows write one), not
taken as part of the first row. A JSON Lines file is read line by line as bytes, so one line
that is not UTF-8 or not JSON is reported with its line number and the other lines still count;
what to do with such a line (reject it, or stop) is the caller's decision. Lines end at LF (CRLF too); a line
that ``str.strip()`` leaves nothing of is blank (:func:`is_blank`): no row, to every reader. An empty file is an
error naming the file. It lives on the ground floor because the template tools read JSON too.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CHUNK = 1 << 16

# What ``str.strip()`` removes (the characters ``str.isspace()`` holds true): a line of these alone is blank. The
# run decodes a line and strips it; the plan counts the lines of multi-GB files in bytes, so the same characters
# as UTF-8 bytes, which ``bytes.strip()`` is not (it keeps U+00A0, U+3000, NEL, \x1c...).
_SPACE_CHARS = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
                + "\u2028\u2029\u202f\u205f\u3000")
# A run of them as bytes (UTF-8 is prefix-free: one way to read it): a line is tested without decoding it.
_SPACES = re.compile(b"(?:" + b"|".join(re.escape(char.encode("utf-8")) for char in _SPACE_CHARS) + b")*")
_SPACE_STARTS = frozenset(char.encode("utf-8")[0] for char in _SPACE_CHARS)  # a line starting otherwise has text
# JSON's own whitespace: all that ``json.loads`` lets stand around a document.
_JSON_SPACES = re.compile(rb"[ \t\r\n]*")


class JsonFileError(ValueError):
    """A JSON/JSONL file cannot be used at all; the message is one line naming the file."""


@dataclass(frozen=True)
class RowPlace:
    """Where a row is in the user's files, as every reader names it: its file (in a folder, by its path below the
    folder: :func:`name_below`) and its line (JSON Lines: 1-based, as an editor shows it) or row (a JSON
    document's list, or a typed source: 0-based, as ``rejects.jsonl``'s ``row`` counts)."""

    file: str | None
    unit: str  # "line" or "row"
    number: int

    def __str__(self) -> str:
        return f"{self.file} {self.unit} {self.number}" if self.file is not None else f"{self.unit} {self.number}"


def name_below(file: Path, folder: Path) -> str:
    """``file``'s path below ``folder``, which may be a link: ``datasets`` names a folder's files by its real path."""
    for base in (folder, folder.resolve()):
        if file.is_relative_to(base):
            return file.relative_to(base).as_posix()
    return file.name


@dataclass(frozen=True)
class Line:
    """One line of a JSON Lines file: its text, or why it could not be read."""

    number: int  # 1-based, as an editor shows it
    text: str  # without the line break; undecodable bytes shown as U+FFFD when ``error`` is set
    error: str | None = None  # e.g. "invalid UTF-8 (byte 0xff at column 12)"
    value: Any = None  # the parsed JSON value (``read_jsonl`` only)

    @property
    def blank(self) -> bool:
        """What :func:`is_blank` says of the line's bytes: nothing left by ``str.strip()`` (a line that is not
        UTF-8 is a reject, never blank)."""
        return self.error is None and not self.text.strip()


def is_blank(raw: bytes) -> bool:
    """Whether a line (its bytes, a line break or not) is blank: UTF-8 of nothing ``str.strip()`` keeps, as
    :attr:`Line.blank` says of its text. A BOM (U+FEFF) is no whitespace; line 1's is the caller's to drop."""
    if raw and raw[0] not in _SPACE_STARTS:  # most rows ("{"): 1M in 0.19 s (the pattern alone 0.53, bytes.strip 0.13)
        return False
    return _SPACES.fullmatch(raw) is not None


def decode_line(raw: bytes) -> tuple[str, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return raw.decode("utf-8", "replace"), f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"


_HEAD_BYTES = 1 << 16
_FOREIGN_LINES = 3  # fewer lines not UTF-8 are broken rows (one cp1252 line among English ones), rejected one by one


def encoding_problem(path: Path, head: int = _HEAD_BYTES) -> str | None:
    """Why ``path`` is no UTF-8 text, judged on its first ``head`` bytes (a file saved as Shift-JIS, cp1252 or
    UTF-16), or None. Most of its lines with non-ASCII bytes, and at least three, must fail to decode: a UTF-8 file
    with a few broken lines is rows the reader rejects one by one, while a file in another encoding fails every such row, which the
    run found only when the stage that reads it started, after the stages before it had trained."""
    with open(path, "rb") as handle:
        data = handle.read(head)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "UTF-16 text (it starts with UTF-16's byte-order mark); save it as UTF-8"
    lines = data.split(b"\n")
    foreign, first = 0, None
    non_ascii = [(number, line) for number, line in enumerate(lines, 1) if not line.isascii()]
    for number, line in non_ascii:
        try:  # the head's last line may end mid-character: only a byte no UTF-8 continues is an error
            codecs.getincrementaldecoder("utf-8")().decode(line, final=number < len(lines) or len(data) < head)
        except UnicodeDecodeError as exc:
            foreign += 1
            first = first or f"line {number}: not UTF-8 text (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
    if foreign < _FOREIGN_LINES or 2 * foreign <= len(non_ascii):
        return None
    return (f"{first}; {foreign} of the {len(non_ascii)} lines with non-ASCII bytes in its first {head >> 10} KiB are "
            "not: it is saved in another encoding (Shift-JIS, say); save it as UTF-8")


def check_not_empty(path: Path, what: str = "one JSON object per line") -> None:
    """``JsonFileError`` when ``path`` holds nothing but whitespace (and maybe a BOM)."""
    if not has_text(path):
        raise JsonFileError(f"{path}: empty file (expected {what})")


def has_text(path: Path) -> bool:
    """Whether ``path`` holds more than blank lines (:func:`is_blank`; and maybe a BOM)."""
    with open(path, "rb") as handle:
        return _skip(handle, _SPACES) is not None


def is_json_lines(path: Path) -> bool:
    """Whether ``path`` holds JSON Lines: a ``.jsonl`` file, or a ``.json`` file of more than one line whose first
    line is a JSON value of its own (or a broken one), which is what ``datasets`` and most hub datasets mean by a
    ``.json`` file of rows. A ``.json`` file holding one JSON document (a list, pretty-printed or not; an object
    on one line, or pretty-printed, whose first line only starts it) is not; nor is any other file."""
    suffix = path.suffix.lower()
    if suffix != ".json":
        return suffix == ".jsonl"
    key = file_identity(path)
    if key not in _JSON_LINES:
        _JSON_LINES[key] = _holds_json_lines(path)
    return _JSON_LINES[key]


def file_identity(path: Path) -> tuple[str, int, int, int]:
    """What changes when ``path`` is rewritten or replaced: the key of what is remembered about a file."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino


_JSON_LINES: dict[tuple[str, int, int, int], bool] = {}  # is_json_lines by file identity: asked once per file


def _holds_json_lines(path: Path) -> bool:
    with open(path, "rb") as handle:
        start = _skip(handle, _SPACES)  # past blank lines
        if start is None:
            return False
        first = handle.read(1)
        if first == b"[":  # a list of rows: one document
            return False
        end = _line_end(handle)
        if _skip(handle, _JSON_SPACES) is None:  # one line: one document, however long, where json.loads can
            handle.seek(0)                        # read it (JSON's whitespace around it, no other blank line)
            if _skip(handle, _JSON_SPACES) == start:
                return False
        handle.seek(start)
        raw = handle.read(end - start)
    try:
        line = raw.decode("utf-8").rstrip()
    except UnicodeDecodeError:  # a row that is not UTF-8: a reject, as in a .jsonl file
        return True
    try:
        json.loads(line)
    except json.JSONDecodeError as exc:  # (its position counts characters, as len(line) does)
        # A pretty-printed document's first line is an unfinished value ('{', '{"data": ['): it only errs at its
        # end. A broken row errs before that.
        return exc.pos < len(line)
    return True


def _skip(handle: Any, spaces: re.Pattern[bytes]) -> int | None:
    """Move past what ``spaces`` matches (and a BOM at the start); the offset of the next byte, or None at the
    end."""
    while True:
        at = handle.tell()
        chunk = handle.read(_CHUNK)
        if not chunk:
            return None
        whole = len(chunk) == _CHUNK  # else the file ends in this chunk
        if at == 0 and chunk.startswith(codecs.BOM_UTF8):
            chunk, at = chunk[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
        end = spaces.match(chunk).end()  # type: ignore[union-attr]  # (a pattern of `*`: it always matches)
        if end == len(chunk):
            continue
        if whole and len(chunk) - end < 3:  # maybe a space of 2-3 bytes cut at the chunk's end: read it whole
            handle.seek(at + end)
            continue
        handle.seek(at + end)
        return at + end


def _line_end(handle: Any) -> int:
    """Move past the end of the current line (its line break included); the offset where its text ends."""
    while chunk := handle.read(_CHUNK):
        found = chunk.find(b"\n")
        if found >= 0:
            end = handle.tell() - len(chunk) + found
            handle.seek(end + 1)
            return end
    return handle.tell()


def document_rows(path: Path, data: Any) -> list[Any]:
    """The rows of ``data``, a JSON document read from ``path``: a list of rows; or an object holding one list of
    rows (``{"data": [...], "version": 2}``); or an object that is one row (a conversation, whose lists hold chat
    messages; one whose lists hold no objects). ``JsonFileError`` naming the file otherwise."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise JsonFileError(f"{path}: expected a JSON list of rows, or an object, got {type(data).__name__}")
    if any(isinstance(value, list) and any(_is_message(item) for item in value) for value in data.values()):
        return [data]  # a conversation
    lists = [key for key, value in data.items()  # an empty list is no list of rows: a row's empty `history`
             if isinstance(value, list) and value and all(isinstance(item, dict) for item in value)]
    if len(lists) > 1:
        raise JsonFileError(f"{path}: holds lists of rows under {', '.join(map(repr, lists))}; expected one list of "
                            "rows, or one row")
    return data[lists[0]] if lists else [data]


def _is_message(item: Any) -> bool:
    return isinstance(item, dict) and ("role" in item or "from" in item)


def read_lines(
    path: Path, on_bytes: Callable[[int], None] | None = None, span: tuple[int, int] | None = None
) -> Iterator[Line]:
    """Every line of a JSON Lines file (blank lines too, so numbers match the file), decoded.

    ``on_bytes`` is told each line's size on disk, line break included (a progress bar's update).
    ``span`` (from :func:`line_spans`) reads only the lines that start in that byte range; their numbers
    then count from the range's first line.
    """
    start, end = span if span is not None else (0, None)
    with open(path, "rb") as handle:
        handle.seek(start)
        position = start
        for number, raw in enumerate(handle, start=1):
            if end is not None and position >= end:
                break
            position += len(raw)
            if on_bytes is not None:
                on_bytes(len(raw))
            if number == 1 and start == 0 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            text, error = decode_line(raw.rstrip(b"\r\n"))
            yield Line(number, text, error)


def line_spans(path: Path, parts: int) -> list[tuple[int, int]]:
    """Up to ``parts`` byte ranges that cover the file, each starting where a line starts (fewer when a
    line is longer than a part), for reading the lines in separate processes."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as handle:
        for k in range(1, parts):
            handle.seek(max(k * size // parts, cuts[-1] + 1) - 1)
            handle.readline()  # to the start of the next line (a byte already at one stays there)
            if cuts[-1] < handle.tell() < size:
                cuts.append(handle.tell())
    return list(zip(cuts, [*cuts[1:], size], strict=True))


# A \u escape of a UTF-16 surrogate (U+D800-U+DFFF): JSON allows one alone, but alone it is no character, and
# UTF-8 (Arrow, tokenizers, files) cannot hold it. Two of them in a pair make one character above U+FFFF.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _unpaired_surrogate(text: str, value: Any) -> str | None:
    """The escape (e.g. ``\\ud800``) of a surrogate that ``text``'s \\u escapes left unpaired in the
    strings of ``value`` (``text`` parsed as JSON), or None."""
    if not _SURROGATE_ESCAPE.search(text):  # the one way a decoded str gets a surrogate: most text skips the walk
        return None
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found is not None:
                return f"\\u{ord(found.group()):04x}"
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _not_text(escape: str) -> str:
    return f"not valid text: an unpaired surrogate {escape} (half of a UTF-16 pair)"


def text_error(text: str, value: Any) -> str | None:
    """Why ``value``, parsed from the JSON ``text``, is not text that tempa can store or tokenise, or None."""
    escape = _unpaired_surrogate(text, value)
    return None if escape is None else _not_text(escape)


def _json_error(exc: json.JSONDecodeError) -> str:
    """``Expecting ',' delimiter, column 12``; ``Unterminated string starting at column 43`` (not "at, column");
    what a file whose lines end in CR alone gives, said so."""
    said = f"{exc.msg}{' ' if exc.msg.endswith(' at') else ', '}column {exc.colno}"
    before = exc.doc[:exc.pos]
    gap = before[len(before.rstrip(" \t\r\n")):]  # the whitespace between a value and what follows it
    if exc.msg == "Extra data" and "\r" in gap and "\n" not in gap:
        # (old Mac files: tempa's lines end at LF, as its byte offsets and line numbers count them)
        said += "; the lines end in CR alone: save the file with LF or CRLF line breaks"
    return said


def parse_line(line: Line) -> Line:
    """``line`` with its JSON value, or with the reason it is not JSON (or not text)."""
    if line.error is not None or line.blank:
        return line
    try:
        value = json.loads(line.text)
    except json.JSONDecodeError as exc:
        return Line(line.number, line.text, error=f"not valid JSON ({_json_error(exc)})")
    error = text_error(line.text, value)
    if error is not None:
        return Line(line.number, line.text, error=error)
    return Line(line.number, line.text, value=value)


def read_jsonl(path: Path) -> Iterator[Line]:
    """The non-blank lines of a JSON Lines file, each parsed or carrying its error.

    Raises ``JsonFileError`` for an empty file.
    """
    check_not_empty(path)
    for line in read_lines(path):
        if not line.blank:
            yield parse_line(line)


def read_json(path: Path, what: str = "a JSON document") -> Any:
    """A whole JSON file; ``JsonFileError`` (file, line, reason) when it is empty, not UTF-8 or not JSON."""
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise JsonFileError(f"{path}:{line}: invalid UTF-8 (byte 0x{data[exc.start]:02x})") from None
    if not text.strip():
        raise JsonFileError(f"{path}: empty file (expected {what})")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonFileError(f"{path}:{exc.lineno}: not valid JSON ({_json_error(exc)})") from None
    escape = _unpaired_surrogate(text, value)
    if escape is not None:
        found = re.search(re.escape(escape), text, re.IGNORECASE)
        line = text[: found.start()].count("\n") + 1 if found else 1
        raise JsonFileError(f"{path}:{line}: {_not_text(escape)}")
    return value
