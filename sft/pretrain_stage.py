"""The `pretrain` stage: raw text -> token-budgeted, mixed, chunked documents -> the one training worker.

Data work happens here, once, in the runner's process (as for `sft`): each source's documents are
tokenised as the tokenizer encodes plain text (Llama 3: its bos first) with the end-of-text token after each
(`<|end_of_text|>`, not the baked eos, which is the chat's end of turn: `chat_templates.thinking.end_of_text_id`), taken
up to the source's token budget in a draw across the whole source by content and seed (:func:`draw_order`; the last
document cut; a source with ``repeat`` and fewer tokens than its budget is gone over again, in the same order, until
the budget is reached), a share of
each source's documents held out whole for eval loss (by content and seed, :func:`split_documents`), the rest
split into chunks of at most ``max_length`` tokens, and the chunks of all sources are shuffled together with
the recipe seed. A chunk is one row (``input_ids`` only: every token is in the loss); trl's BFD
packing then fills each training sequence with several rows and restarts ``position_ids`` at every
row, which the per-document attention (``sft.packed_attention``) turns into a block-diagonal mask: no
token attends across a document boundary, and every token is in the loss (``assistant_only_loss``
is off). The tokenised data is cached under the shared cache, keyed by the sources' content
fingerprints, the settings, the tokenizer and the seed; training resumes from the last complete
checkpoint, as `sft` does.

A source is read twice, in worker processes, never whole in one: first every document's content key, bytes and place
(a row; a .txt file's bytes, the file read in ranges of about a megabyte cut between documents: :func:`txt_ranges`),
32 bytes of this process's memory a document of the source, about 70 at the draw's peak; then the documents the draw
takes, tokenised window after window in batches of about a megabyte, until the budget is reached. Their chunks are
mixed as arrays of a few numbers each. So this process's memory follows the documents, never their text (measured, a
300 MB .txt file of 2.2M lines, RSS: 72 bytes a line to draw a small budget, 48 a paragraph by paragraph; every line
taken, about 180 bytes a line of anonymous memory, the tokens memory-mapped): a large web crawl is best read by
paragraph.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tempa.chat_templates.thinking import END_OF_TEXT_TOKENS, end_of_text_id
from tempa.sft.checkpoints import complete_checkpoints
from tempa.sft.files import (
    cache_build,
    digest,
    publish_build,
    remove_tree,
    sweep_dead_builds,
    write_json,
)
from tempa.sft.formats import composed
from tempa.sft.paths import display_path
from tempa.sft.pretrain_config import PretrainSource, PretrainStageConfig
from tempa.sft.run_layout import COMPLETE
from tempa.sft.stage import launch_training
from tempa.sft.stage_api import (
    EstimateInputs,
    StageContext,
    StageError,
    StageResult,
    TokenCount,
    TrainingWorkload,
)
from tempa.sft.tokenization import tokenizer_fingerprint
from tempa.sft.train_plan import train_plan

logger = logging.getLogger(__name__)

# Bump when the prepared rows change for the same inputs (2: a document starts with its bos; 3: repeat, and no
# held-out chunk also trained on; 4: a document ends with the end-of-text token, not the baked eos, a chat's end of
# turn; 5: held out by document, not by chunk; 6: the stats count each source's held-out and training-row tokens; 7: a
# budget takes a draw across the source, not its first documents; a paragraph ends at any blank line; 9: no all-ones
# assistant_masks column, 8 bytes a token the worker dropped unread).
_PREPARE_VERSION = 9
TOKENS_METRIC = "tokens:"  # a pretrain stage's metric `tokens:NAME`: the tokens source NAME gave
TRAINED_METRIC = "trained_tokens:"  # `trained_tokens:NAME`: the tokens of source NAME trained (PretrainSourceMix's)


class PretrainSourceMix(BaseModel):
    """One raw-text source as the stage trained on it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str = Field(default="", description="The source as the recipe names it (a file name or hub id; never "
                      "shown absolute); empty in a result written before tempa recorded it.")
    token_budget: int | None = Field(default=None, description="The recipe's `tokens`; None: every document once.")
    documents: int | None = Field(default=None, description="Documents taken (the last one cut at the budget), "
                                  "each counted once however often `repeat` went over it; None in a result written "
                                  "before tempa recorded it.")
    passes: float | None = Field(default=None, description="Tokens taken over the tokens the whole source holds: "
                                 "above 1 when `repeat` went over its documents again, 1 every document once (also "
                                 "when that fell short of the budget); None when the budget stopped before the "
                                 "source's end, or in a result written before tempa recorded it.")
    tokens: int = Field(description="Tokens taken, an eos after each document included (held-out documents too).")
    heldout_tokens: int | None = Field(default=None, description="Of those, the tokens of the documents held out for "
                                       "eval loss (never trained on); None in a result written before tempa recorded "
                                       "it.")
    trained_tokens: int | None = Field(default=None, description="Tokens trained: the source's training rows' tokens "
                                       "times the epochs the trainer made (a partial last epoch: its share of every "
                                       "source's rows, which are shuffled together); None in a result written before "
                                       "tempa recorded it.")
    share_of_tokens: float


class PretrainMix(BaseModel):
    """What a pretrain stage trained on: per source, documents and tokens; in all, chunks and epochs."""

    model_config = ConfigDict(extra="forbid")

    sources: list[PretrainSourceMix]
    tokens: int
    trained_tokens: int | None = Field(default=None, description="Tokens trained, every source's added up; None in a "
                                       "result written before tempa recorded it.")
    chunks: int | None = Field(default=None, description="Training rows of at most max_length tokens the documents "
                               "became (held-out rows apart; before tempa 0.1's document split: all rows).")
    epochs: float | None = Field(default=None, description="Passes over the chunks the trainer made (fractional "
                                 "when max_steps stopped it).")


class PretrainResult(StageResult):
    """A pretrain stage's result: its model and checkpoints, plus the data mix it trained on."""

    data: PretrainMix | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_result(cls, value: Any) -> Any:
        # Results written before `data` existed were plain StageResults whose metrics held `tokens:NAME` per source:
        # their mix is rebuilt from those, so the report, `tempa status` and later stages still read such a run.
        if not isinstance(value, dict) or "data" in value:
            return value
        metrics = value.get("metrics") or {}
        tokens = {key.removeprefix(TOKENS_METRIC): count for key, count in metrics.items()
                  if key.startswith(TOKENS_METRIC) and isinstance(count, int)}
        if not tokens:
            return value
        return {**value, "data": mix_of(tokens, {}, chunks=metrics.get("chunks"), sources=())}


@dataclass(frozen=True)
class PretrainData:
    """Where the prepared chunks are, and how many tokens each source gave, held out and has in the training rows."""

    train_path: Path
    eval_path: Path | None
    tokens: dict[str, int]
    documents: dict[str, int]
    chunks: int  # training rows
    passes: dict[str, float | None]  # PretrainSourceMix.passes, per source
    heldout: dict[str, int]  # tokens in held-out rows, per source
    trained: dict[str, int]  # tokens in training rows (one epoch), per source: taken, less held out and their copies


def chunk_spans(lengths: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Documents of ``lengths`` tokens in pieces of at most ``max_length`` (each piece one packed row), in order:
    per piece, its document (index into ``lengths``), its first token and its tokens."""
    lengths = np.asarray(lengths, dtype=np.int64)
    counts = -(-lengths // max_length)  # a document of no tokens has no piece
    document = np.repeat(np.arange(len(lengths)), counts)
    firsts = np.cumsum(counts) - counts
    start = (np.arange(int(counts.sum())) - np.repeat(firsts, counts)) * max_length
    return document, start, np.minimum(max_length, lengths[document] - start)


def chunk_document(ids: list[int], max_length: int) -> list[list[int]]:
    """A document's tokens in pieces of at most ``max_length`` (each piece one packed row)."""
    _, starts, counts = chunk_spans(np.array([len(ids)]), max_length)
    return [ids[start: start + count] for start, count in zip(starts.tolist(), counts.tolist(), strict=True)]


def document_tokens(tokenizer: Any, text: str, eos: list[int]) -> list[int]:
    """A document as the base model was pre-trained on it: the tokenizer's own encode of plain text (Llama 3 puts
    <|begin_of_text|> first; a packed document starts at position 0, where the model always saw it), then ``eos``
    (none added when the tokenizer ends an encode with it already)."""
    return documents_tokens(tokenizer, [text], eos)[0]


def documents_tokens(tokenizer: Any, texts: list[str], eos: list[int]) -> list[list[int]]:
    """:func:`document_tokens` of each of ``texts``, in one call of the tokenizer (a fast tokenizer encodes a batch
    as it encodes each text alone), each in its composed form (NFC), as SFT rows are read."""
    if not texts:
        return []
    # a document longer than the model's context is meant (it is chunked after): no "Token indices sequence length
    # is longer than the specified maximum" warning
    encoded = tokenizer([composed(text) for text in texts], verbose=False)["input_ids"]
    return [ids if eos and ids[-len(eos):] == eos else ids + eos for ids in encoded]


class Pieces(NamedTuple):
    """What :func:`budget_pieces` takes of a source: documents (or the start of one) in the order given."""

    document: np.ndarray  # per piece, its document (index into the lengths); with repeat, the passes in turn
    tokens_of: np.ndarray  # per piece, its tokens (the last piece's cut at the budget)
    tokens: int
    whole: int | None  # the tokens the whole source holds; None when the budget stopped before its end
    distinct: int  # source documents taken, each counted once


def budget_cut(lengths: np.ndarray, budget: int | None) -> tuple[int, int | None]:
    """Documents of ``lengths`` tokens taken in order until ``budget`` tokens: how many are taken whole, and the
    tokens taken of the next one (0: none; None: every document fitted, the source ended first)."""
    if budget is None:
        return len(lengths), None
    cumulative = np.cumsum(lengths, dtype=np.int64)
    first_over = int(np.searchsorted(cumulative, budget, side="right"))  # the first document that passes it
    if first_over == len(lengths):
        return first_over, None
    return first_over, budget - (int(cumulative[first_over - 1]) if first_over else 0)


def budget_pieces(lengths: np.ndarray, budget: int | None, *, repeat: bool = False) -> Pieces:
    """Documents of ``lengths`` tokens in the order given (the draw's: :func:`draw_order`) until ``budget`` tokens, the
    last one cut; with ``repeat``, a source that ends first is gone over again, in the same order, until the budget is
    reached (whole passes, then a part of one)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    whole_taken, cut = budget_cut(lengths, budget)
    if cut is not None:
        document = np.arange(whole_taken + (cut > 0))
        tokens_of = lengths[document].copy()
        if cut > 0:
            tokens_of[-1] = cut
        return Pieces(document, tokens_of, int(tokens_of.sum()), None, len(document))
    whole = int(lengths.sum())
    document, tokens_of = np.arange(len(lengths)), lengths
    if repeat and budget is not None and 0 < whole < budget:
        passes, rest = divmod(budget, whole)
        document, tokens_of = np.tile(document, passes), np.tile(lengths, passes)
        if rest:  # the last pass stops at the budget, as the first would have
            last = budget_pieces(lengths, rest)
            document = np.concatenate([document, last.document])
            tokens_of = np.concatenate([tokens_of, last.tokens_of])
    return Pieces(document, tokens_of, int(tokens_of.sum()), whole, len(lengths))


def draw_order(keys: np.ndarray, seed: int) -> np.ndarray:
    """Documents (their content ``keys``, in the source's order) in the order a token budget takes them: by a rank of
    content and seed (SFT's draw, :func:`~tempa.sft.mixing.draw_ranks`), so a budget below its source is a sample of it
    all, not its first documents (one crawl date, one site), and a source that grows keeps what it took but at the
    margin; copies of a document side by side."""
    from tempa.sft.mixing import budget_order

    return budget_order(keys, seed)


def split_documents(keys: np.ndarray, heldout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Of a source's pieces (their documents' content ``keys``, in order), (those trained, those held out): the
    :func:`~tempa.sft.mixing.heldout_count` of its distinct documents first in the draw by content and seed (SFT's
    held-out draw: a source that grows keeps its old documents' sides but at the margin) are held out whole, each
    once (a document repeated, or held twice, measures eval loss once), and never trained on. At least one document
    is trained: a source of one document (a .txt file read whole) holds none out."""
    from tempa.sft.mixing import heldout_count, heldout_positions

    distinct, first = np.unique(keys, return_index=True)
    n_out = min(heldout_count(heldout, len(distinct)), len(distinct) - 1)
    if n_out <= 0:
        return np.arange(len(keys)), np.zeros(0, dtype=np.int64)
    held = np.zeros(len(distinct), dtype=bool)
    held[heldout_positions(distinct, n_out, seed)] = True
    return np.flatnonzero(~held[np.searchsorted(distinct, keys)]), np.sort(first[held])


class Taken(NamedTuple):
    """What :func:`budgeted` took of a source."""

    documents: list[list[int]]  # in order; with repeat, the passes one after another (the last one cut)
    tokens: int
    whole: int | None  # the tokens the whole source holds; None when the budget stopped before its end
    distinct: int  # source documents taken, each counted once


def budgeted(documents: Iterable[list[int]], budget: int | None, *, repeat: bool = False) -> Taken:
    """:func:`budget_pieces` of documents given as token lists, the pieces as token lists."""
    documents = list(documents)
    pieces = budget_pieces(np.array([len(ids) for ids in documents], dtype=np.int64), budget, repeat=repeat)
    taken = [documents[k][:n] for k, n in zip(pieces.document.tolist(), pieces.tokens_of.tolist(), strict=True)]
    return Taken(taken, pieces.tokens, pieces.whole, pieces.distinct)


def _check_text_column(source: PretrainSource, loaded: Any) -> bool:
    """Whether ``loaded`` holds raw JSON text (else its rows' ``text_field`` column); a missing column is an error."""
    from tempa.sft.sources import RAW

    raw = RAW in loaded.column_names
    if not raw and source.text_field not in loaded.column_names:
        raise StageError(f"data source '{source.name}': no '{source.text_field}' column (columns: "
                         f"{', '.join(loaded.column_names)}); set text_field")
    return raw


def _row_text(source: PretrainSource, row: dict[str, Any], raw: bool, where: str) -> str | None:
    """A row's document text; None for a blank JSON line; a row without a text string (in JSON Lines: a line that
    is not JSON) is an error naming it (``where``)."""
    from tempa.chat_templates.json_files import Line, parse_line
    from tempa.sft.sources import RAW, READ_ERROR

    if raw:
        line = parse_line(Line(0, row[RAW], row.get(READ_ERROR)))
        if line.blank:
            return None
        if line.error is not None:
            raise StageError(f"{where}: {line.error}")
        if not isinstance(line.value, dict):
            raise StageError(f"{where}: {_kind(line.value)}; expected a JSON object with a "
                             f"'{source.text_field}' field")
        if source.text_field not in line.value:
            raise StageError(f"{where}: no '{source.text_field}' field (fields: {', '.join(line.value)}); "
                             "set text_field")
        value = line.value[source.text_field]
    else:
        value = row[source.text_field]
    if not isinstance(value, str):
        raise StageError(f"{where}: '{source.text_field}' is {_kind(value)}; expected a string")
    return value


def _kind(value: Any) -> str:
    """How a message names a JSON value that is not what was expected."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({type(value).__name__})"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), f"a {type(value).__name__}")


def txt_files(source: PretrainSource) -> list[Path] | None:
    """The local .txt file, or the .txt files of a folder's split (as ``datasets`` finds a folder's files), that
    ``source`` reads; None for every other source."""
    from tempa.sft.sources import data_files, is_saved_dataset

    path = Path(source.path)
    if not (path.is_absolute() and path.exists()):
        return None
    if path.is_file():
        return [path] if path.suffix.lower() == ".txt" else None
    if is_saved_dataset(path):
        return None
    try:
        kind, files = data_files(path, source.split)
    except Exception:  # no such split, say: the loader says it, as for every other folder
        return None
    return files if kind == "text" else None


_TXT_RANGE_BYTES = 1 << 20  # a .txt file is read in ranges of about this much text, cut between documents
# A `txt_document: file` document is read and tokenised at once in one process (its text, the tokenizer's encoding
# and the id list all held together, many times the file's bytes): above this, refused rather than a worker killed for
# memory hours in. A judgement, not a measured bound.
_MAX_FILE_DOCUMENT = 256 << 20
_BOM = b"\xef\xbb\xbf"
_BLANK_LINE = re.compile(rb"\n[ \t]*\r?\n")  # a newline, then a line of spaces and tabs (CRLF read as LF)


def check_file_document(source: PretrainSource, file: Path) -> None:
    """A `txt_document: file` document no bigger than a process can tokenise at once (:data:`_MAX_FILE_DOCUMENT`)."""
    size = file.stat().st_size
    if (source.txt_document or "file") == "file" and size > _MAX_FILE_DOCUMENT:
        raise StageError(f"data source '{source.name}', {_name_in(file, Path(source.path))}: {size / 2**20:.1f} MiB, "
                         f"above the {_MAX_FILE_DOCUMENT >> 20} MiB a `txt_document: file` document may hold (read and "
                         "tokenised at once, in one process); set txt_document: paragraph or line")


def txt_ranges(source: PretrainSource, files: Sequence[Path]) -> list[tuple[int, int, int]]:
    """(file, first byte, end byte) ranges that tile ``files`` (a file: its place in them), each about
    :data:`_TXT_RANGE_BYTES` and cut where no document of ``source.txt_document`` goes on across (after a newline; by
    paragraph, after a blank line), so each range splits on its own as its file would; by file, a file a range."""
    ranges = []
    for number, file in enumerate(files):
        check_file_document(source, file)
        size = file.stat().st_size
        if (source.txt_document or "file") == "file":
            ranges.append((number, 0, size))
            continue
        with open(file, "rb") as handle:
            first = 0
            while first < size:
                end = _boundary_after(handle, first + _TXT_RANGE_BYTES, source.txt_document == "line", size)
                ranges.append((number, first, end))
                first = end
    return ranges


def _boundary_after(handle: Any, position: int, by_line: bool, size: int) -> int:
    """The first place at or after ``position`` (the file's end at most) that is after a newline (``by_line``), else
    after a blank line: read from there, a block at a time, as far as the next one."""
    if position >= size:
        return size
    handle.seek(position - 1)
    buffer = bytearray()  # buffer[i] is the file's byte position - 1 + i
    while block := handle.read(1 << 16):
        searched = len(buffer)
        buffer += block
        if by_line:
            found = buffer.find(b"\n", searched)
            if found >= 0:
                return position + found
        else:  # a blank line that began in what was searched began at its last newline
            line = buffer.rfind(b"\n", 0, searched)
            match = _BLANK_LINE.search(buffer, line if line >= 0 else searched)
            if match:
                return position - 1 + match.end()
    return size


def txt_range_documents(source: PretrainSource, files: Sequence[Path], file: int, start: int,
                        end: int) -> list[tuple[str, int, int]]:
    """The documents of bytes ``[start, end)`` of ``files[file]`` (a :func:`txt_ranges` range, or one document's own
    bytes), each with the bytes it spans, as ``source.txt_document`` cuts them: the whole text, the lines between
    blank lines (CC-100's layout; joined by newlines), or a line; a BOM dropped, CRLF read as LF, blank documents left
    out; a byte that is not UTF-8 is an error naming its line."""
    with open(files[file], "rb") as handle:
        return _range_documents(source, files[file], handle, start, end)


def _range_documents(source: PretrainSource, path: Path, handle: Any, start: int,
                     end: int) -> list[tuple[str, int, int]]:
    handle.seek(start)
    data = handle.read(end - start)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(source, path, handle, start, data, error) from None
    skip = len(_BOM) if start == 0 and data.startswith(_BOM) else 0
    if (source.txt_document or "file") == "file":
        text = data[skip:].decode("utf-8").replace("\r\n", "\n")
        return [(text, start + skip, end)] if text.strip() else []
    by_line = source.txt_document == "line"
    documents: list[tuple[str, int, int]] = []
    lines: list[str] = []  # the paragraph so far
    first = last = position = start + skip

    def paragraph() -> None:
        text = "\n".join(lines)
        if text.strip():
            documents.append((text, first, last))
        lines.clear()

    for raw in data[skip:].split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if by_line:
            text = line.decode("utf-8")
            if text.strip():
                documents.append((text, position, position + len(line)))
        elif line.strip(b" \t"):
            if not lines:
                first = position
            lines.append(line.decode("utf-8"))
            last = position + len(line)
        elif lines:
            paragraph()
        position += len(raw) + 1
    if lines:
        paragraph()
    return documents


def _not_utf8(source: PretrainSource, path: Path, handle: Any, start: int, data: bytes,
              error: UnicodeDecodeError) -> StageError:
    """The error naming the line and column of ``data``'s (bytes from ``start`` of ``path``) first byte not UTF-8."""
    handle.seek(0)
    before = sum(handle.read(min(1 << 20, start - done)).count(b"\n") for done in range(0, start, 1 << 20))
    line, line_start = before + data.count(b"\n", 0, error.start) + 1, data.rfind(b"\n", 0, error.start) + 1
    return StageError(f"data source '{source.name}', {_name_in(path, Path(source.path))}: line {line}: invalid UTF-8 "
                      f"(byte 0x{data[error.start]:02x} at column {error.start - line_start + 1})")


def _name_in(file: Path, folder: Path) -> str:
    from tempa.chat_templates.json_files import name_below

    return name_below(file, folder) if folder.is_dir() else file.name


def _as_sft_source(source: PretrainSource):
    from tempa.sft.data_config import SourceConfig

    return SourceConfig.model_construct(name=source.name, path=source.path, split=source.split,
                                        subset=source.subset, revision=source.revision)


def check_inputs(config: PretrainStageConfig) -> None:
    """Before the run's first stage: every local source has rows to read (:func:`~tempa.sft.sources.check_source`), a
    local file of rows holds its `text_field` in its first rows (:func:`_check_first_rows`), and a .txt file's first
    bytes are UTF-8 (:func:`_check_head_utf8`)."""
    from tempa.chat_templates.json_files import encoding_problem, has_text
    from tempa.sft.data_config import DataError
    from tempa.sft.sources import check_source

    for source in config.sources:
        files = txt_files(source)
        if files is None:
            check_source(_as_sft_source(source))
            _check_first_rows(source)
            continue
        if not any(map(has_text, files)):
            raise DataError(f"data source '{source.name}' ({source.path}): has no text (its .txt files are empty or blank)")
        for file in files:
            check_file_document(source, file)
            if (problem := encoding_problem(file)) is not None:
                raise DataError(f"data source '{source.name}', {_name_in(file, Path(source.path))}: {problem}")
            _check_head_utf8(source, file)


def _check_head_utf8(source: PretrainSource, file: Path) -> None:
    """A .txt file's first bytes are UTF-8, as :func:`_check_first_rows` checks a file of rows' first rows: the stage
    stops at a .txt file's first byte that is not (:func:`_not_utf8`), so `tempa plan` refuses it too, not only a
    file in another encoding (:func:`~tempa.chat_templates.json_files.encoding_problem`)."""
    import codecs

    from tempa.chat_templates.json_files import _HEAD_BYTES
    from tempa.sft.data_config import DataError

    with open(file, "rb") as handle:
        data = handle.read(_HEAD_BYTES)
        try:  # the head may end mid-character: only a byte no UTF-8 continues is an error, unless the file ends there
            codecs.getincrementaldecoder("utf-8")().decode(data, final=len(data) < _HEAD_BYTES)
        except UnicodeDecodeError as error:
            raise DataError(str(_not_utf8(source, file, handle, 0, data, error))) from None


def _check_first_rows(source: PretrainSource) -> None:
    """The first rows of a local file of rows (JSON Lines, JSON, Parquet, CSV) each hold a `text_field` string, as
    the stage reads them: a misspelt text_field is refused before the run, not after the stage read the whole file."""
    from tempa.sft.data_config import DataError
    from tempa.sft.data_size import _head_batch

    batch, places = _head_batch(_as_sft_source(source), _HEAD_ROWS)
    if not places:
        return
    try:
        raw = _check_text_column(source, _Columns(list(batch)))
        for values, place in zip(zip(*batch.values(), strict=True), places, strict=True):
            _row_text(source, dict(zip(batch, values, strict=True)), raw,
                      f"data source '{source.name}', {place}")
    except StageError as error:
        raise DataError(str(error)) from None


class _Columns(NamedTuple):
    """What :func:`_check_text_column` reads of a dataset: its column names."""

    column_names: list[str]


def input_warnings(config: PretrainStageConfig) -> list[str]:
    """What is likely, not certainly, wrong: max_steps deciding the tokens (:func:`max_steps_line`), .txt files
    of a source's folder that hold no text (skipped; a source of only such files is refused), and a `repeat: true`
    source gone over more than :data:`_MANY_REPEATS` times to reach its budget."""
    from tempa.chat_templates.json_files import has_text

    lines = [line] if (line := max_steps_line(config)) else []
    for source in config.sources:
        files = txt_files(source) or []
        blank = [file for file in files if not has_text(file)]
        if blank and len(blank) < len(files):
            shown = ", ".join(_name_in(file, Path(source.path)) for file in blank[:3])
            lines.append(f"data source '{source.name}': {len(blank)} of its {len(files)} .txt files hold no text "
                         f"and give no document ({shown}{', ...' if len(blank) > 3 else ''})")
        if source.repeat and source.tokens is not None and (held := held_tokens(source)) is not None \
                and _repeats(source, held[0]) > _MANY_REPEATS:
            lines.append(f"data source '{source.name}': `repeat: true` goes over it ~{_times(_repeats(source, held[0]))} "
                         f"times to reach its token budget {source.tokens:,} (it holds ~{held[0]:,} tokens, "
                         f"{held[1]}); past about 16 passes repeated text adds next to nothing: a smaller budget, or "
                         "more text")
    return lines


# Tokens read per window of a budgeted source (see _tokenise_source), over the bytes its rows hold: a first guess
# above what text gives (English about 0.22 tokens a byte with Llama 3's tokenizer, JSON-escaped Thai less), so that
# the first window stops short of the budget rather than far past it; later windows go by the rate measured so far.
_FIRST_TOKENS_PER_BYTE = 0.4
_WINDOW_MARGIN = 1.05  # a window reads this much more than the measured rate says the budget needs
_WINDOW_GROWTH = 0.125  # and at least this share of the bytes read before it: a few windows (each a pool), not many
_TOKENISE_BATCH_BYTES = 1 << 20  # text per tokenised batch: its token lists are Python ints (~36 B a token) until written
_CHUNK_BATCH_TOKENS = 1 << 20  # tokens of chunks per written batch (a few arrays of 4-8 B a token; int32 offsets)


def _features() -> tuple[Any, Any, Any, Any]:
    """The Arrow features of a source's index (per document: its content key, its place, its bytes; or why a row is no
    document), of the tokenised documents, of the chunk hashes and of the prepared rows (input_ids as
    ``Dataset.from_dict`` typed them when this stage built its rows in one list: int32 ids)."""
    import datasets

    ids = datasets.List(datasets.Value("int32"))
    at = datasets.Value("int64")
    return (datasets.Features({"key": at, "row": at, "start": at, "end": at, "error": datasets.Value("string")}),
            datasets.Features({"input_ids": ids}),
            datasets.Features({"hash": datasets.Value("uint64")}),
            datasets.Features({"input_ids": ids}))


@dataclass(frozen=True)
class _TxtRanges:
    """A .txt source's :func:`txt_ranges` as rows for :func:`~tempa.sft.forked_workers.forked_map`, a range a batch."""

    ranges: Sequence[tuple[int, int, int]]

    def __len__(self) -> int:
        return len(self.ranges)

    def costs(self) -> np.ndarray:
        return np.array([end - start for _, start, end in self.ranges], dtype=np.float64)

    def batches(self, start: int, end: int, size: int) -> Iterator[dict[str, list[Any]]]:
        for k in range(start, end):
            yield {"range": [self.ranges[k]]}


def _indexed(batch: dict[str, list[Any]], indices: list[int], *, source: PretrainSource, raw: bool | None,
             names: Any, files: Sequence[Path] | None) -> dict[str, list[Any]]:
    """Per document of a batch of a source's rows (or of a .txt range), in order: its content key (the budget's and
    the held-out draws', as SFT's rows'), its place (its row, or its file; its bytes there) and, from ``start`` to
    ``end``, its bytes of text; blank documents left out; a row that is no document, or a range not UTF-8, its error."""
    from tempa.sft.mixing import content_key

    out: dict[str, list[Any]] = {"key": [], "row": [], "start": [], "end": [], "error": []}

    def add(key: int, row: int, start: int, end: int, error: str | None = None) -> None:
        for column, value in zip(out, (key, row, start, end, error), strict=True):
            out[column].append(value)

    if raw is None:  # .txt ranges
        for file, start, end in batch["range"]:
            try:
                for text, first, last in txt_range_documents(source, files or [], file, start, end):
                    add(content_key(text), file, first, last)
            except StageError as error:
                add(0, file, start, end, str(error))
        return out
    rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    for index, row in zip(indices, rows, strict=True):
        try:
            text = _row_text(source, row, raw, f"data source '{source.name}', {names.label(index)}")
        except StageError as error:
            add(0, index, 0, 0, str(error))
            continue
        if text is not None and text.strip():  # a blank document has nothing to learn
            add(content_key(text), index, 0, len(text.encode("utf-8")))
    return out


@dataclass(frozen=True)
class _Documents:
    """Documents of a source (as :func:`_indexed` placed them: ``row``, ``start``, ``end``) as rows for
    :func:`~tempa.sft.forked_workers.forked_map`, their text read again: a dataset's rows (``rows``), or a .txt
    source's bytes (``files``)."""

    source: PretrainSource
    rows: Any
    raw: bool | None
    files: Sequence[Path] | None
    row: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def costs(self) -> np.ndarray:
        return (self.end - self.start).astype(np.float64)

    def batches(self, start: int, end: int, size: int) -> Iterator[dict[str, list[Any]]]:
        for first in range(start, end, size):
            batch = slice(first, min(end, first + size))
            if self.files is None:
                columns = self.rows[self.row[batch].tolist()]
                rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
                yield {"text": [_row_text(self.source, row, self.raw, "") for row in rows]}
                continue
            texts, handles = [], {}
            try:
                for file, a, b in zip(self.row[batch].tolist(), self.start[batch].tolist(), self.end[batch].tolist(),
                                      strict=True):
                    if file not in handles:
                        handles[file] = open(self.files[file], "rb")  # noqa: SIM115 (closed below)
                    ((text, _, _),) = _range_documents(self.source, self.files[file], handles[file], a, b)
                    texts.append(text)
            finally:
                for handle in handles.values():
                    handle.close()
            yield {"text": texts}


def _tokenised(batch: dict[str, list[Any]], indices: list[int], *, tokenizer: Any, eos: list[int]) -> dict[str, list[Any]]:
    """A batch of documents' texts as their tokens."""
    return {"input_ids": documents_tokens(tokenizer, batch["text"], eos)}


@dataclass(frozen=True)
class _Chunks:
    """Chunks of the tokenised documents as rows for :func:`~tempa.sft.forked_workers.forked_map`: row k is chunk
    ``order[k]``, tokens ``start`` to ``start + length`` of document ``document`` (a row of ``ids``)."""

    ids: Any  # pa.ChunkedArray of every source's documents' tokens, memory-mapped
    document: np.ndarray
    start: np.ndarray
    length: np.ndarray
    order: np.ndarray

    def __len__(self) -> int:
        return len(self.order)

    def costs(self) -> np.ndarray:
        return self.length[self.order].astype(np.float64)

    def batches(self, start: int, end: int, size: int) -> Iterator[dict[str, list[Any]]]:
        for first in range(start, end, size):
            yield {"input_ids": self.tokens(self.order[first: min(end, first + size)])}

    @functools.cached_property
    def _firsts(self) -> np.ndarray:
        """Each Arrow chunk of ``ids``'s first document, then the document count."""
        return np.cumsum([0, *(len(part) for part in self.ids.chunks)])

    def tokens(self, chunks: np.ndarray) -> Any:
        """The tokens of ``chunks`` (positions in ``document``), as an Arrow list array."""
        import pyarrow as pa

        # Each chunk reads only its own tokens from the memory-mapped values: taking its whole document (Arrow's
        # `take`) copied a long document once per chunk, and a batch of its ~2,000 chunks ~2,000 times.
        document, lengths = self.document[chunks], self.length[chunks]
        ends = np.cumsum(lengths)
        values = np.empty(int(ends[-1]) if len(ends) else 0, dtype=self.ids.type.value_type.to_pandas_dtype())
        part = np.searchsorted(self._firsts, document, side="right") - 1
        for p in np.unique(part).tolist():
            mine = np.flatnonzero(part == p)
            lists, counts = self.ids.chunk(p), lengths[mine]
            firsts = lists.offsets.to_numpy()[document[mine] - self._firsts[p]] + self.start[chunks][mine]
            within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            values[np.repeat(ends[mine] - counts, counts) + within] = lists.values.to_numpy()[
                np.repeat(firsts, counts) + within]
        return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], ends]).astype(np.int32)), pa.array(values))


def _rows_of(batch: dict[str, Any], indices: list[int]) -> dict[str, Any]:
    """Prepared rows: a chunk's tokens. No assistant mask: every token is in the loss, which trl's labels give
    without one (an all-ones int64 mask was 8 bytes a token on disk, dropped unread by the worker)."""
    return {"input_ids": batch["input_ids"]}


def _hashes_of(batch: dict[str, Any], indices: list[int]) -> dict[str, Any]:
    """A 64-bit digest of each chunk's tokens: equal chunks have equal digests (the converse is checked)."""
    import hashlib

    import pyarrow as pa

    ids = batch["input_ids"]
    offsets, values = ids.offsets.to_numpy(), ids.values.to_numpy()
    digests = [int.from_bytes(hashlib.blake2b(values[a:b].tobytes(), digest_size=8).digest(), "little")
               for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]
    return {"hash": pa.array(digests, type=pa.uint64())}


def _chunk_map(chunks: _Chunks, function: Any, features: Any, work: Path, name: str, desc: str,
               num_proc: int | None) -> Any:
    """``function`` over ``chunks`` in worker processes, into memory-mapped Arrow files under ``work``."""
    import datasets

    from tempa.sft.data_config import worker_count
    from tempa.sft.forked_workers import forked_map

    if not len(chunks):
        return datasets.Dataset.from_dict({column: [] for column in features}, features=features)
    size = max(1, _CHUNK_BATCH_TOKENS // max(1, int(chunks.length.max())))
    return forked_map(chunks, function, workers=worker_count(num_proc, len(chunks)), fn_kwargs={}, features=features,
                      cache_file=work / f"{name}.arrow", desc=desc, batch_size=size)


_HEAD_ROWS = 16  # rows of a source of rows checked before any work, and by `tempa plan` (check_inputs)


def _first_error(errors: list[str | None]) -> None:
    """Raise the first of ``errors`` (per row, :func:`_indexed`'s) that is one."""
    if (error := next((error for error in errors if error is not None), None)) is not None:
        raise StageError(error)


def _index_source(source: PretrainSource, rows: Any, reader: dict[str, Any], *, work: Path,
                  num_proc: int | None) -> dict[str, np.ndarray]:
    """Every document of a source (:func:`_indexed`'s columns, as arrays), read in worker processes; a row that is no
    document is an error naming it (the first in the source's order)."""
    from tempa.sft.data_config import ROWS_PER_PROCESS, worker_count
    from tempa.sft.forked_workers import ArrowRows, forked_map

    txt = isinstance(rows, _TxtRanges)
    if not txt:  # a wrong text_field fails every row: said on the first rows, not after the whole source is read
        head = rows[:_HEAD_ROWS]
        _first_error(_indexed(head, list(range(len(next(iter(head.values()), [])))), **reader)["error"])
    workers = worker_count(num_proc, len(rows) * (ROWS_PER_PROCESS if txt else 1))  # a range: many documents
    size = 1 if txt else max(1, int(_TOKENISE_BATCH_BYTES * len(rows) / max(1.0, ArrowRows(rows).costs().sum())))
    table = forked_map(rows, _indexed, workers=workers, features=_features()[0], batch_size=size, fn_kwargs=reader,
                       cache_file=work / f"{source.name}-index.arrow", desc=f"Reading {source.name}").data.table
    errors = table.column("error")
    if errors.null_count < len(errors):
        raise StageError(errors.filter(errors.is_valid())[0].as_py())
    return {column: table.column(column).to_numpy() for column in ("key", "row", "start", "end")}


def _tokenise_source(source: PretrainSource, rows: Any, reader: dict[str, Any], *, tokenizer: Any, eos: list[int],
                     work: Path, num_proc: int | None, seed: int) -> tuple[list[str], np.ndarray, Pieces]:
    """A source's documents indexed (:func:`_index_source`), then those its budget takes in :func:`draw_order` (all,
    in the source's order, without one) tokenised into Arrow files under ``work`` (their paths; the content keys of the
    documents they hold; the pieces, which point into them), window after window of the draw, so that a budget far
    below the source tokenises little more than it takes."""
    import pyarrow.compute as pc

    from tempa.sft.data_config import worker_count
    from tempa.sft.forked_workers import forked_map

    index = _index_source(source, rows, reader, work=work, num_proc=num_proc)
    order = np.arange(len(index["key"])) if source.tokens is None else draw_order(index["key"], seed)
    costs = np.cumsum(index["end"][order] - index["start"][order])
    files: list[str] = []
    lengths: list[np.ndarray] = []  # per window, the tokens of its documents in the draw's order
    places: list[np.ndarray] = []  # and their rows in the tokenised files
    windows: list[np.ndarray] = []  # per window, its documents in the source's order (as tokenised)
    done, tokens, tokenised = 0, 0, 0
    while done < len(costs):
        end, read = len(costs), costs[done - 1] if done else 0
        if source.tokens is not None:  # the documents whose bytes should give the tokens still wanted, and a little more
            rate = tokens / read if tokens else _FIRST_TOKENS_PER_BYTE
            more = max((source.tokens - tokens + 1) / rate * _WINDOW_MARGIN, read * _WINDOW_GROWTH)
            end = max(done + 1, min(end, int(np.searchsorted(costs, read + more)) + 1))
        window = np.sort(order[done:end])  # read in the source's order
        documents = _Documents(source, rows if reader["raw"] is not None else None, reader["raw"], reader["files"],
                               *(index[column][window] for column in ("row", "start", "end")))
        size = max(1, int(_TOKENISE_BATCH_BYTES * len(window) / max(1, costs[end - 1] - read)))
        part = forked_map(documents, _tokenised, workers=worker_count(num_proc, len(window)), features=_features()[1],
                          batch_size=size, fn_kwargs={"tokenizer": tokenizer, "eos": eos},
                          cache_file=work / f"{source.name}-{len(windows):05d}.arrow", desc=f"Tokenising {source.name}")
        files.extend(f["filename"] for f in part.cache_files)
        got = pc.list_value_length(part.data.table.column("input_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
        at = np.searchsorted(window, order[done:end])
        lengths.append(got[at])
        places.append(tokenised + at)
        windows.append(window)
        tokens, tokenised, done = tokens + int(got.sum()), tokenised + len(window), end
        if source.tokens is not None and tokens > source.tokens:  # the budget is reached: the rest is never tokenised
            break
    nothing = np.zeros(0, dtype=np.int64)
    pieces = budget_pieces(np.concatenate(lengths) if lengths else nothing, source.tokens, repeat=source.repeat)
    place = np.concatenate(places) if places else nothing
    keys = index["key"][np.concatenate(windows)] if windows else nothing
    return files, keys, pieces._replace(document=place[pieces.document])


def _drop_copies(chunks: _Chunks, hashes: np.ndarray, held: np.ndarray, train: np.ndarray) -> np.ndarray:
    """``train`` (chunks, in order) without the copies of a ``held`` chunk: equal tokens (``hashes`` find the
    suspects, their tokens decide)."""
    suspects = train[np.isin(hashes[train], np.unique(hashes[held]))]
    if not len(suspects):
        return train
    by_hash: dict[int, list[int]] = {}
    for k in held.tolist():
        by_hash.setdefault(int(hashes[k]), []).append(k)
    held_tokens: dict[int, np.ndarray] = {}

    def tokens_of(k: int) -> np.ndarray:
        if k not in held_tokens:
            held_tokens[k] = chunks.tokens(np.array([k])).values.to_numpy()
        return held_tokens[k]

    copies = []
    size = max(1, _CHUNK_BATCH_TOKENS // max(1, int(chunks.length.max())))
    for first in range(0, len(suspects), size):
        batch = suspects[first: first + size]
        lists = chunks.tokens(batch)
        offsets, values = lists.offsets.to_numpy(), lists.values.to_numpy()
        for i, k in enumerate(batch.tolist()):
            mine = values[offsets[i]: offsets[i + 1]]
            if any(np.array_equal(mine, tokens_of(h)) for h in by_hash[int(hashes[k])]):
                copies.append(k)
    return train[~np.isin(train, copies)]


def prepare_pretrain_data(config: PretrainStageConfig, tokenizer: Any, cache_dir: Path,
                          seed: int, *, num_proc: int | None = None) -> PretrainData:
    """Tokenise, budget, chunk and mix the sources (cached: a second call with the same inputs reads the cache).

    The tokens stay on disk, memory-mapped: the work runs in ``num_proc`` forked processes (unset: one per core, at
    most one per 500 rows, as SFT data prepares), and this process holds a few numbers per document and per chunk.
    Every process count prepares the same rows. The cache is keyed by ``tokenizer``'s content
    (:func:`~tempa.sft.tokenization.tokenizer_fingerprint`), not by its folder's files, so runs whose tokenizer
    folders differ only in run markers share an entry."""
    from tempa.sft.data_config import DataError
    from tempa.sft.sources import load_source, source_fingerprint

    max_length = int(config.train_args()["max_length"])
    texts = {s.name: txt_files(s) for s in config.sources}
    try:
        loaded = {s.name: load_source(_as_sft_source(s), cache_dir=cache_dir) for s in config.sources
                  if texts[s.name] is None}
        fingerprints = {s.name: source_fingerprint(_as_sft_source(s), dataset=loaded.get(s.name))
                        for s in config.sources}
    except DataError as error:
        raise StageError(str(error)) from None
    key = digest({"version": _PREPARE_VERSION, "sources": [s.model_dump(exclude={"path"}) for s in config.sources],
                  "data": fingerprints, "heldout": config.heldout, "add_eos": config.add_eos, "max_length": max_length,
                  "seed": seed,
                  # what the tokenizer encodes, as SFT's cache keys it: the run's baked tokenizer folder also holds
                  # its run markers (DONE's finished_at), which made every run directory prepare the data again
                  "tokenizer": tokenizer_fingerprint(tokenizer)})
    entry = cache_dir / key[:16]
    if not (entry / COMPLETE).is_file():
        if entry.exists():  # an incomplete entry of an older tempa, which built in place
            remove_tree(entry, [cache_dir])
        for path in sweep_dead_builds(cache_dir):
            logger.warning("pretrain data: removed %s, a build its killed process left in the cache", path)
        with cache_build(cache_dir, key) as build:
            _build(config, tokenizer, build, texts=texts, loaded=loaded, max_length=max_length, seed=seed,
                   num_proc=num_proc)
            publish_build(build, entry, COMPLETE, "")
    stats = json.loads((entry / "stats.json").read_text(encoding="utf-8"))
    return PretrainData(entry / "train", entry / "eval" if (entry / "eval").is_dir() else None,
                        stats["tokens"], stats["documents"], stats["chunks"], stats["passes"], stats["heldout"],
                        stats["trained"])


def _build(config: PretrainStageConfig, tokenizer: Any, build: Path, *, texts: dict[str, list[Path] | None],
           loaded: dict[str, Any], max_length: int, seed: int, num_proc: int | None) -> None:
    """The prepared rows (``train``, ``eval`` when a document is held out) and ``stats.json``, written in ``build``."""
    from tempa.sft.forked_workers import dataset_of_files
    from tempa.sft.sources import row_names

    work = build / "work"  # the tokenised documents, until the rows are written
    work.mkdir(parents=True)
    files: list[str] = []
    held = 0  # documents tokenised so far, all sources: the first row of the next source's
    # per source, its chunks: document, first token, tokens, whether held out, the source
    spans: list[tuple[np.ndarray, ...]] = []
    tokens, documents, passes = {}, {}, {}
    end = end_of_text_id(tokenizer)
    if config.add_eos and end is None:
        raise StageError(f"add_eos: the tokenizer has no end-of-text token ({', '.join(END_OF_TEXT_TOKENS)}) and its "
                         f"eos {tokenizer.eos_token!r} ends a chat turn; set add_eos: false")
    eos = [end] if config.add_eos else []
    # a .txt file too big to be one document: refused before any work
    ranges = {s.name: txt_ranges(s, texts[s.name]) for s in config.sources if texts[s.name] is not None}
    for number, source in enumerate(config.sources):
        if texts[source.name] is None:
            rows = loaded[source.name]
            reader = {"source": source, "raw": _check_text_column(source, rows),
                      "names": row_names(_as_sft_source(source)), "files": None}
        else:
            rows = _TxtRanges(ranges[source.name])
            reader = {"source": source, "raw": None, "names": None, "files": texts[source.name]}
        source_files, keys, taken = _tokenise_source(source, rows, reader, tokenizer=tokenizer, eos=eos, work=work,
                                                     num_proc=num_proc, seed=seed)
        if taken.tokens == 0:
            raise StageError(f"data source '{source.name}': no text to train on")
        tokens[source.name], documents[source.name] = taken.tokens, taken.distinct
        passes[source.name] = round(taken.tokens / taken.whole, 4) if taken.whole else None
        for side, picked in enumerate(split_documents(keys[taken.document], config.heldout, seed)):
            piece, start, length = chunk_spans(taken.tokens_of[picked], max_length)
            spans.append((held + taken.document[picked][piece], start, length, np.full(len(piece), side, dtype=bool),
                          np.full(len(piece), number)))
        files.extend(source_files)
        held += len(keys)
    ids = dataset_of_files([Path(f) for f in files]).data.table.column("input_ids")
    document, start, length, is_eval, source_of = (np.concatenate([span[i] for span in spans]) for i in range(5))
    order = np.random.default_rng(seed).permutation(len(document))
    chunks = _Chunks(ids, document, start, length, order=order)
    train_order, eval_order = order[~is_eval[order]], order[is_eval[order]]
    _, _, hash_features, row_features = _features()
    if len(eval_order):
        # A document held out is never trained on; nor is a chunk equal to a held-out one that another document
        # holds (the same page in two sources, boilerplate): every copy of a held-out chunk leaves the training rows.
        hashes = _chunk_map(replace(chunks, order=np.arange(len(document))), _hashes_of, hash_features, work, "hashes",
                            "Finding copies of held-out chunks", num_proc)
        train_order = _drop_copies(chunks, hashes.data.table.column("hash").to_numpy(), eval_order, train_order)
    _chunk_map(replace(chunks, order=train_order), _rows_of, row_features, work, "train", "Writing training rows",
               num_proc).save_to_disk(str(build / "train"))
    if len(eval_order):
        _chunk_map(replace(chunks, order=eval_order), _rows_of, row_features, work, "eval",
                   "Writing held-out rows", num_proc).save_to_disk(str(build / "eval"))
    shutil.rmtree(work)

    def per_source(chunk_order: np.ndarray) -> dict[str, int]:  # the tokens of these rows, by source
        counts = np.bincount(source_of[chunk_order], weights=length[chunk_order], minlength=len(config.sources))
        return {source.name: int(count) for source, count in zip(config.sources, counts.tolist(), strict=True)}

    stats = {"tokens": tokens, "documents": documents, "chunks": len(train_order), "passes": passes,
             "heldout": per_source(eval_order), "trained": per_source(train_order)}
    write_json(build / "stats.json", stats)


def budget_lines(config: PretrainStageConfig, data: PretrainData) -> list[tuple[int, str]]:
    """(log level, line) per source whose tokens are not its budget: repeated to reach it, or short of it."""
    lines = []
    for source in config.sources:
        passes, count = data.passes.get(source.name), data.tokens[source.name]
        if source.tokens is None or passes is None or (count == source.tokens and passes <= 1):
            continue
        if passes > 1:
            lines.append((logging.INFO, f"data source '{source.name}': its {data.documents[source.name]:,} documents "
                          f"({round(count / passes):,} tokens) repeated {passes:.2f} times to its budget of "
                          f"{source.tokens:,} tokens"))
        else:
            lines.append((logging.WARNING, f"data source '{source.name}': holds {count:,} tokens, "
                          f"{100 * count / source.tokens:.1f}% of its budget of {source.tokens:,}: every document "
                          "once, so the mix's shares are not the budgets'; set `repeat: true` to go over it again "
                          "up to the budget"))
    return lines


def run_pretrain(config: PretrainStageConfig, ctx: StageContext) -> PretrainResult:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctx.tokenizer_dir)
    data = prepare_pretrain_data(config, tokenizer, (ctx.cache_dir or ctx.stage_dir / "cache") / "pretrain-data", ctx.seed)
    ctx.log.info("%s: %s tokens in %d chunks (%s)", ctx.stage_name, f"{sum(data.tokens.values()):,}", data.chunks,
                 ", ".join(f"{name} {count:,}" for name, count in data.tokens.items()))
    for level, line in budget_lines(config, data):
        ctx.log.log(level, "%s: %s", ctx.stage_name, line)
    steps_line = max_steps_line(config)
    one_pass = sum(data.trained.values())
    if steps_line:  # the run's start warned with the same line (the kind's input_warnings); here, the measured pass
        ctx.log.info("%s: one pass over the budgets' training rows is %s tokens; train.max_steps %s decides how many "
                     "are trained", ctx.stage_name, f"{one_pass:,}", config.train_args()["max_steps"])
    plan = train_plan(ctx, trainer="sft", start_model=ctx.start_model, train_data=data.train_path,
                      eval_data=data.eval_path, out_dir=ctx.stage_dir, train_args=config.train_args(), seed=ctx.seed)
    outcome = launch_training(plan, ctx)
    epochs = outcome.train.get("epoch")
    mix = mix_of(data.tokens, data.documents, chunks=data.chunks, sources=config.sources, passes=data.passes,
                 epochs=float(epochs) if isinstance(epochs, int | float) else None, heldout=data.heldout,
                 trained=data.trained)
    # `data_tokens`: one pass over the training rows (as SFT's); `tokens:NAME` what each source gave (held-out
    # documents included), `trained_tokens:NAME` what of it was trained
    metrics = {**outcome.headline(), "data_tokens": sum(data.trained.values()), "chunks": data.chunks,
               **{f"{TOKENS_METRIC}{name}": count for name, count in data.tokens.items()},
               **{f"{TRAINED_METRIC}{s.name}": s.trained_tokens for s in mix.sources if s.trained_tokens is not None}}
    notes = []
    if mix.trained_tokens is not None:
        ctx.log.info("%s: trained %s tokens (%s)", ctx.stage_name, f"{mix.trained_tokens:,}",
                     ", ".join(f"{s.name} {s.trained_tokens:,}" for s in mix.sources))
        if steps_line:  # what it came to, measured: in the run's closing notes, not only in the log
            notes.append(f"{steps_line}: it trained {mix.trained_tokens:,} tokens, "
                         f"{mix.trained_tokens / max(1, one_pass):.1%} of one pass over the budgets' {one_pass:,}")
            ctx.log.warning("%s: %s", ctx.stage_name, notes[-1])
    return PretrainResult(model=plan.final_dir, checkpoints=complete_checkpoints(plan.checkpoints_dir),
                          metrics=metrics, data=mix, notes=notes)


def max_steps_line(config: PretrainStageConfig) -> str | None:
    """What ``train.max_steps`` does to a stage with token budgets, for `tempa plan` and the run alike (None when it is
    unset, or no source has a budget): it, not the budgets, sets how many tokens are trained; a budget then sets a
    source's share, no longer its tokens."""
    steps = int(config.train_args().get("max_steps", -1) or -1)
    budgeted = [s.name for s in config.sources if s.tokens is not None]
    if steps <= 0 or not budgeted:
        return None
    return (f"train.max_steps {steps}, not the token budgets of {', '.join(budgeted)}, sets how many tokens this "
            f"stage trains ({steps} steps of the tokens a batch holds: less or more than one pass over the budgets); "
            "unset it to train the budgets num_train_epochs times")


def mix_of(tokens: dict[str, int], documents: dict[str, int], *, chunks: int | None,
           sources: Sequence[PretrainSource], epochs: float | None = None,
           passes: dict[str, float | None] | None = None, heldout: dict[str, int] | None = None,
           trained: dict[str, int] | None = None) -> PretrainMix:
    """The mix of per-source ``tokens``, ``documents``, ``passes`` and ``heldout`` tokens, and the tokens trained:
    each source's training-row tokens (``trained``, one epoch) times ``epochs``; ``sources``: their recipe entries
    (path and budget)."""
    total = sum(tokens.values())
    entries = {source.name: source for source in sources}

    def trained_of(name: str) -> int | None:
        return None if trained is None or epochs is None else round(trained[name] * epochs)

    mixed = [PretrainSourceMix(
        name=name, tokens=count, documents=documents.get(name), share_of_tokens=round(count / (total or 1), 4),
        passes=(passes or {}).get(name), heldout_tokens=None if heldout is None else heldout[name],
        trained_tokens=trained_of(name), path=display_path(entries[name].path) if name in entries else "",
        token_budget=entries[name].tokens if name in entries else None) for name, count in tokens.items()]
    trained_counts = [s.trained_tokens for s in mixed]
    return PretrainMix(sources=mixed, tokens=total, chunks=chunks, epochs=epochs,
                       trained_tokens=None if None in trained_counts else sum(trained_counts))


# Tokens of a document, for the plan's guess at how many processes a preparation gets (one per core and per
# ROWS_PER_PROCESS documents): about a web page's (Dolma's and FineWeb's averages are 500-1,500 with Llama 3's).
_PLAN_TOKENS_PER_DOCUMENT = 1_000


_SAMPLED_TXT_FILES = 16  # .txt files of a source the plan reads the start of, spread over its files
_SAMPLED_TXT_BYTES = 64 << 10  # read from each
_MEASURED_ROWS_BYTES = 2 << 30  # a source of rows (JSON Lines, Parquet, ...) above this is not measured by the plan


def held_tokens(source: PretrainSource, tokenizer: Any = None) -> tuple[int, str] | None:
    """About how many tokens a local source holds, for the plan, and how that was measured: its .txt files' bytes
    at the tokens per byte of their starts, or its rows at the tokens per row of 256 drawn rows' `text_field` (the
    base model's tokenizer where it is here, else ~4 bytes a token). None where the plan cannot tell (a hub dataset,
    a source the run will refuse, rows above 2 GiB, which counting would read whole)."""
    from tempa.sft.data_size import BYTES_PER_TOKEN, SAMPLED_ROWS, scan_local_rows

    def count(texts: list[str]) -> int:
        if tokenizer is not None:
            return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"])
        return round(sum(len(text.encode("utf-8")) for text in texts) / BYTES_PER_TOKEN)

    how = "with the base model's tokenizer" if tokenizer is not None else f"at ~{BYTES_PER_TOKEN:g} bytes a token"
    files = txt_files(source)
    if files is not None:
        picks = files[::max(1, len(files) // _SAMPLED_TXT_FILES)][:_SAMPLED_TXT_FILES]
        starts = []
        for file in picks:
            with open(file, "rb") as handle:
                starts.append(handle.read(_SAMPLED_TXT_BYTES).decode("utf-8", errors="ignore"))
        sampled = sum(len(text.encode("utf-8")) for text in starts)
        if not sampled:
            return None
        total = sum(file.stat().st_size for file in files)
        return round(total * count(starts) / sampled), f"its .txt files' bytes, {how} on their starts"
    path = Path(source.path)
    if not path.exists():
        return None  # a hub dataset
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    if size > _MEASURED_ROWS_BYTES:
        return None  # counting its rows reads it whole: too long for a plan
    found = scan_local_rows(source.path, SAMPLED_ROWS, source.split)
    if found is None or found.error is not None:
        return None
    texts = [text for row in found.row_objects() if isinstance(row, dict)
             and isinstance(text := row.get(source.text_field), str)]
    if not texts:
        return None
    return round(found.rows * count(texts) / len(texts)), f"{len(texts)} drawn rows {how}"


def estimate_pretrain(config: PretrainStageConfig, inputs: EstimateInputs | None) -> TrainingWorkload:
    """Tokens per epoch: each source's token budget, or what a local source holds where that is less (without
    `repeat`) or it has no budget (:func:`held_tokens`; other unbudgeted sources are not sized); how long preparing
    them takes, as the SFT plan says it (:func:`~tempa.sft.data_size.prep_note`); and that ``max_steps``, where set,
    decides the tokens trained instead (:func:`max_steps_line`)."""
    from tempa.sft.data_size import prep_note

    tokenizer = inputs.tokenizer if inputs is not None else None
    planned: list[int | None] = []
    notes = []
    for source in config.sources:
        held = held_tokens(source, tokenizer)
        if held is not None and source.tokens is None:
            planned.append(held[0])
            notes.append(f"source {source.name}: no token budget: every document, ~{held[0]:,} tokens ({held[1]})")
        elif held is not None and held[0] < source.tokens:
            planned.append(source.tokens if source.repeat else held[0])  # repeated, it reaches its budget
            notes.append(_held_note(source, held))
        else:
            planned.append(source.tokens)
            notes.append(_budget_note(source))
    known = sum(tokens for tokens in planned if tokens is not None)
    unsized = [source.name for source, tokens in zip(config.sources, planned, strict=True) if tokens is None]
    if (steps_line := max_steps_line(config)) is not None:
        notes.append(f"{steps_line}: `trained` below, not tokens/epoch")
    if known:
        notes.append(prep_note(known, max(1, known // _PLAN_TOKENS_PER_DOCUMENT), None, ">=" if unsized else ""))
    measured = any(tokens != source.tokens for source, tokens in zip(config.sources, planned, strict=True))
    tokens = TokenCount(known or None, None, "token budgets" + (", sources measured" if measured else ""), notes,
                        bound=">=" if unsized and known else "")
    return TrainingWorkload(tokens=tokens, train_args=config.train_args())


# Passes over a `repeat: true` source above which its budget is warned of as likely a mistake (a budget with a zero
# too many, the wrong source): past about 16 passes repeated text adds next to nothing (Muennighoff et al. 2023,
# "Scaling Data-Constrained Language Models"); 100 leaves room for a small, valued source upsampled on purpose.
_MANY_REPEATS = 100


def _held_note(source: PretrainSource, held: tuple[int, str]) -> str:
    """The plan's note on a source that holds less than its token budget: what it holds, and what the budget does
    with it (trains it once, or goes over it again: how many times)."""
    assert source.tokens is not None
    share = (f"source {source.name}: holds ~{held[0]:,} tokens ({held[1]}), {100 * held[0] / source.tokens:.2g}% of "
             f"its token budget {source.tokens:,}")
    if source.repeat:
        return f"{share}: repeat: gone over again up to the budget, ~{_times(_repeats(source, held[0]))} times in all"
    return f"{share}: it trains those; `repeat: true` goes over it again up to the budget"


def _times(passes: float) -> str:
    return f"{passes:,.0f}" if passes >= 10 else f"{passes:.2g}"


def _repeats(source: PretrainSource, held: int) -> float:
    """How many times a `repeat: true` source holding ``held`` tokens is gone over to reach its budget."""
    return (source.tokens or 0) / max(1, held)


def _budget_note(source: PretrainSource) -> str:
    if source.tokens is None:
        return f"source {source.name}: no token budget, not sized"
    # the prep time below counts the budget's tokens; drawing them reads (hashes, not tokenises) the whole source too
    drawn = "drawn across the whole source: every document read once, those drawn tokenised"
    if source.repeat:
        return (f"source {source.name}: token budget {source.tokens:,} ({drawn}; repeat: gone over again if it holds "
                "fewer)")
    return (f"source {source.name}: token budget {source.tokens:,} ({drawn}; fewer if it holds fewer; `repeat: true` "
            "goes over it again up to the budget)")
