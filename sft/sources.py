"""Loading sources: local JSONL/JSON/Parquet/CSV files, ``save_to_disk`` folders and hub datasets.

JSON Lines and JSON are read as raw text (one JSON document per row, in the column ``RAW``), so
a line that is not valid JSON, or whose fields change type from row to row, becomes a rejected
row instead of an Arrow schema error that stops the whole run. A ``.json`` file is read as its content says
(:func:`~tempa.chat_templates.json_files.is_json_lines`): JSON Lines, or one document holding a list of rows.
JSON Lines files go through
tempa's one reader (``tempa.chat_templates.json_files``): a line that is not UTF-8 carries its
reason in ``READ_ERROR`` and becomes a reject too, a leading BOM is dropped, and an empty file
is a one-line error. A folder of JSON files is read file after file (the files of its ``split``, as ``datasets``
finds them), each as it would be alone. :func:`load_source` writes the rows into Arrow files in the cache; the
SFT pipeline skips that copy: its workers read their own lines of the files (:class:`JsonLinesFiles`), the
same rows. Typed sources (Parquet, CSV, compressed JSON in a folder, Arrow, hub) are loaded with ``datasets``.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import functools
import itertools
import json
import logging
import mmap
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm

from tempa.chat_templates.json_files import (
    JsonFileError,
    RowPlace,
    check_not_empty,
    document_rows,
    encoding_problem,
    file_identity,
    has_text,
    is_json_lines,
    line_spans,
    name_below,
    read_json,
    read_lines,
)
from tempa.chat_templates.one_line import first_line
from tempa.sft.data_config import DataError, SourceConfig, read_processes
from tempa.sft.files import cache_root, digest, file_digest, remove_tree, tree_digest
from tempa.sft.forked_workers import dataset_of_files, run_forked

logger = logging.getLogger(__name__)

# Column holding one raw JSON document per row for JSON/JSONL sources.
RAW = "__tempa_raw__"
# JSON Lines: why a line could not be read (not UTF-8), else None; such a row becomes a reject.
READ_ERROR = "__tempa_read_error__"
_JSONL_READER_VERSION = "3"  # bump when the rows read_lines yields, or the Arrow file written of them, change
_JSONL_FEATURES = datasets.Features({RAW: datasets.Value("string"), READ_ERROR: datasets.Value("string")})
_BATCH_CHARS = 64 << 20  # characters of JSON Lines text per Arrow record batch
_PROGRESS_DELAY_S = 3.0  # a read shows its bar once it has taken this long
_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv"}
_COMPRESSED = (".gz", ".zst", ".bz2", ".xz")  # read by datasets in a folder's data files, not as a file of their own
_SEARCH_BYTES = 1 << 20  # bytes of JSON Lines searched for line breaks at a time


def describe(source: SourceConfig) -> str:
    """``data source 'name' (path)``: how every message about a source starts."""
    return f"data source {source.name!r} ({source.path})"


def is_local(source: SourceConfig) -> bool:
    """Whether the source's path is on disk; otherwise it is a hub dataset id."""
    return Path(source.path).is_absolute() and Path(source.path).exists()


@dataclass(frozen=True)
class RowNames:
    """How messages name a source's rows: a JSON Lines file's by line number (what an editor shows), a folder of
    JSON files' by file and line (or row, in a file holding one JSON document), other sources' by row (0-based)."""

    lines: bool = False  # one JSON Lines file
    files: tuple[str, ...] = ()  # a folder's JSON files, by path below the folder
    firsts: tuple[int, ...] = ()  # each file's first row
    documents: frozenset[int] = frozenset()  # the files (by position) holding one JSON document: rows, not lines

    def place(self, index: int) -> RowPlace:
        if self.files:
            k = max(0, bisect.bisect_right(self.firsts, index) - 1)
            within = index - self.firsts[k]
            return RowPlace(self.files[k], "row", within) if k in self.documents else \
                RowPlace(self.files[k], "line", within + 1)
        return RowPlace(None, "line", index + 1) if self.lines else RowPlace(None, "row", index)

    def label(self, index: int) -> str:
        return str(self.place(index))


def row_names(source: SourceConfig, lines: JsonLinesFiles | None = None) -> RowNames:
    """The source's :class:`RowNames`; a folder of JSON Lines files' from ``lines``, its :func:`json_lines_files`
    when already found."""
    path = Path(source.path)
    if not (is_local(source) and path.is_dir()):
        return RowNames(lines=is_local(source) and is_json_lines(path))
    if lines is not None:
        files, counts = list(lines.files), [len(starts) - 1 for starts in lines.starts]
    else:
        files = None
        with contextlib.suppress(DataError):  # a folder the loader cannot read fails there, with its own message
            files = _json_folder_files(source)
        if files is None:
            return RowNames()
        # counted as the loader reads them: a document's rows (parsed by then), a JSON Lines file's lines
        counts = [len(_line_starts(file)) - 1 if is_json_lines(file) else _document_size(file) for file in files]
    documents = frozenset(k for k, file in enumerate(files) if not is_json_lines(file))
    return RowNames(files=tuple(name_below(file, path) for file in files),
                    firsts=tuple(int(first) for first in np.cumsum([0, *counts[:-1]])), documents=documents)


def is_saved_dataset(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def load_source(source: SourceConfig, *, cache_dir: Path | None = None) -> datasets.Dataset:
    """The source's rows as a ``datasets.Dataset`` (raw JSON text in ``RAW`` for JSON files).

    Raises :class:`DataError` (one line) when the source cannot be read at all.
    """
    where = describe(source)
    hf_cache = str(cache_dir / "hf") if cache_dir is not None else None
    try:
        if not is_local(source):
            # Hub downloads go to the user's usual HF cache, where earlier downloads already are.
            loaded = datasets.load_dataset(source.path, name=source.subset, split=source.split, revision=source.revision)
            return _one_split(loaded, source)
        path = Path(source.path)
        if path.is_dir():
            if is_saved_dataset(path):
                return _one_split(datasets.load_from_disk(str(path)), source)
            files = _json_folder_files(source)
            if files is not None:  # tempa's readers, file after file: a bad line is a reject, as in one file
                return _json_files_rows(files, hf_cache)
            # Other data files: datasets infers the builder from the extensions.
            return _one_split(datasets.load_dataset(str(path), split=source.split, cache_dir=hf_cache), source)
        suffix = path.suffix.lower()
        if is_json_lines(path):
            return _jsonl_rows(path, hf_cache)
        if suffix == ".json":
            return datasets.Dataset.from_dict({RAW: json_rows(path)})
        if suffix in _FILE_BUILDERS:
            return datasets.load_dataset(
                _FILE_BUILDERS[suffix], data_files=str(path), split="train", cache_dir=hf_cache
            )
    except DataError:
        raise
    except JsonFileError as exc:  # its message starts with the file (and line)
        raise DataError(f"data source {source.name!r}: {exc}") from None
    except Exception as exc:
        # Any loader failure becomes one actionable line.
        raise DataError(f"{where}: could not be loaded: {_load_error(exc, source)}") from exc
    if suffix in _COMPRESSED:
        raise DataError(f"{where}: a single compressed file ({path.name}) is not read; put it in a folder of its own "
                        "and give the folder as the path (a folder's .jsonl.gz, .json.gz or .csv.gz files are read), "
                        "or decompress it")
    raise DataError(f"{where}: unsupported file type {path.suffix!r}; expected .jsonl, .json, .parquet or .csv "
                    "(a pretrain source: also .txt)")


# pandas' CSV tokenizer counts records from 0 (the header first, a blank line one too), and a record that a quoted
# line break spans once: its "row"/"line" is not the file's line past the first such field.
_CSV_RECORD_ERRORS = (
    (re.compile(r"EOF inside string starting at row (\d+)"), 0, "a quoted field opened here is never closed"),
    (re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)"), -1, "expected {0} fields, saw {2}"),
)


def _load_error(exc: BaseException, source: SourceConfig) -> str:
    """The first line of what made a load fail: the reader's own error (pandas', pyarrow's) under datasets'
    "An error occurred while generating the dataset"; for a CSV file whose record pandas names, the line of the file
    the record starts on instead (pandas' number is not one past a quoted line break)."""
    cause = exc
    while (inner := cause.__cause__ or cause.__context__) is not None:
        cause = inner
    message = first_line(cause)
    path = Path(source.path)
    if not (is_local(source) and path.is_file() and path.suffix.lower() == ".csv"):
        return message
    for pattern, shift, words in _CSV_RECORD_ERRORS:
        if (found := pattern.search(message)) is not None:
            record = int(found.group(2 if shift else 1)) + shift
            return f"line {_csv_record_line(path, record)}: {words.format(*found.groups())}"
    return message


def _csv_record_line(path: Path, record: int) -> int:
    """The file line (1-based) where CSV record ``record`` (0-based, the header first) starts, read as datasets'
    CSV builder reads it (a BOM dropped, ``"`` quoting with doubled quotes)."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        for _ in itertools.islice(reader, record):
            pass
        return reader.line_num + 1


def check_source(source: SourceConfig) -> None:
    """What :func:`load_source` refuses of a local source that is found without a pass over its rows: a file or
    folder with no rows (empty or blank, every JSON shard of its split empty, a Parquet file or saved dataset of
    none), a split it does not have, a file type no reader takes. Raises :class:`DataError` as the run does.

    For the run's first moments (``StageKind.check_inputs``): the rows themselves are read when the stage prepares
    them, as a 30 GB file takes a minute to read.
    """
    if not is_local(source):
        return  # a hub dataset, or an earlier stage's output: read when the stage runs
    path = Path(source.path)
    if path.is_dir() and not is_saved_dataset(path):
        try:
            files = _json_folder_files(source)  # the split's files, found by name; all its JSON shards empty: no rows
        except DataError:
            raise
        except Exception as exc:  # no such split, say
            raise DataError(f"{describe(source)}: could not be loaded: {first_line(exc)}") from None
        for file in files or ():
            _check_encoding(source, file)
        return
    if path.is_dir():
        rows = len(load_source(source))  # memory-mapped Arrow: its row count costs no reading
    elif path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception:
            rows = len(load_source(source))  # it says what is wrong, as the run says it
    else:
        if not has_text(path) or path.suffix.lower() not in (".jsonl", ".json", *_FILE_BUILDERS):
            load_source(source)  # nothing to read, or a type no reader takes: the loader's own one-line error
        _check_encoding(source, path)
        return
    if rows == 0:
        raise DataError(f"{describe(source)}: has no rows")


HEAD_ROWS = 16  # rows of a CSV file the checks before the first stage parse: a bad header shows in them


def csv_head(path: Path, rows: int) -> Any:
    """The first ``rows`` rows of a CSV file as datasets' CSV builder reads it (a BOM dropped, its own quoting), as a
    pandas DataFrame: what the checks before the first stage and the plan's look at a source read of it."""
    import pandas as pd
    from datasets.packaged_modules.csv.csv import CsvConfig

    return pd.read_csv(path, **{**CsvConfig().pd_read_csv_kwargs, "nrows": rows, "chunksize": None})


# The fields of a ``columns:`` mapping that name a column of a row (``role`` and ``content`` name keys inside a
# turn; ``reasoning`` a column of prompt/response and instruction/output rows, else a key of a turn).
_ROW_FIELDS = ("messages", "prompt", "response", "instruction", "input", "output", "system", "tools", "thinking_mode")
_TURN_FIELDS = ("role", "content")
# What a row of its format cannot do without. A JSON row may lack the other keys (a system prompt, a trace, only
# some rows have), so of JSON rows only these are checked; a table's columns are every row's.
_NEEDED = ("messages", "prompt", "response", "instruction", "output", *_TURN_FIELDS)


def check_mapping(source: SourceConfig, columns: Sequence[str], turn_keys: Sequence[str] | None = None, *,
                  rows: int | None = None) -> None:
    """Refuse a ``columns:`` mapping that names a column, or a key inside a turn, the source does not have, whatever
    its ``format``: else every row is rejected as a row of no format, in words that never name the mapping.

    ``columns``: a table's columns; or, with ``rows``, the keys of its first ``rows`` JSON rows, and ``turn_keys``
    the keys of their turns (None: no turn read). A table's turns are values, their keys not read here.
    """
    from tempa.sft.formats import detect_format, spec_for
    from tempa.sft.suggest import did_you_mean

    fields = [*_ROW_FIELDS] if rows is None else [field for field in _NEEDED if field not in _TURN_FIELDS]
    if rows is None and detect_format(columns, spec_for(source)) in ("prompt_response", "alpaca"):
        fields.append("reasoning")
    if rows is not None and turn_keys is not None:
        fields += _TURN_FIELDS
    for field in fields:
        name = getattr(source.columns, field)
        known = turn_keys if field in _TURN_FIELDS else columns
        if name is None or known is None or name in known:
            continue
        if rows is None:
            said = "a column the source does not have (columns"
        else:
            place = "its first row" if rows == 1 else f"its first {rows:,} rows"
            said = f"a key of no turn in {place} (turn keys" if field in _TURN_FIELDS else f"a key not in {place} (keys"
        raise DataError(f"{describe(source)}: columns.{field} is {name!r}, {said}: {', '.join(known) or 'none'})"
                        f"{did_you_mean(name, known)}")


def check_source_rows(source: SourceConfig) -> None:
    """What the sft pipeline refuses of a local file source as a whole once it reads it, found before the run's
    first stage: a JSON document that does not parse (parsed whole, as the run parses it), a CSV or Parquet file
    whose columns name no row format, a ``columns:`` mapping that names a column (a JSON row's key) the first rows
    do not have (:func:`check_mapping`), or a CSV whose header or first rows do not parse. Raises :class:`DataError`
    in the words the run uses. Only the header and first rows of a CSV or Parquet file are read, so a 30 GB file
    costs no more than a small one; JSON Lines lines are rows of their own (a bad one is a reject, not a refusal).
    """
    from tempa.sft.formats import check_columns, spec_for

    path = Path(source.path)
    if not is_local(source):
        return
    if path.is_dir():
        if is_saved_dataset(path):  # memory-mapped: its columns cost no read of its rows
            check_mapping(source, load_source(source).column_names)
        return
    if not path.is_file():
        return
    suffix = path.suffix.lower()
    try:
        if suffix == ".json" and not is_json_lines(path):
            _check_json_mapping(source, json_rows(path)[:HEAD_ROWS])
            return
        if is_json_lines(path):
            lines = (line for line in read_lines(path) if not line.blank and line.error is None)
            _check_json_mapping(source, [line.text for line in itertools.islice(lines, HEAD_ROWS)])
            return
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            columns = list(pq.ParquetFile(path).schema_arrow.names)
        elif suffix == ".csv":
            columns = [str(name) for name in csv_head(path, HEAD_ROWS).columns]
        else:
            return
    except DataError:
        raise
    except JsonFileError as exc:  # its message starts with the file (and line)
        raise DataError(f"data source {source.name!r}: {exc}") from None
    except Exception as exc:
        raise DataError(f"{describe(source)}: could not be loaded: {_load_error(exc, source)}") from None
    check_mapping(source, columns)
    check_columns(columns, spec_for(source), describe(source))


def _check_json_mapping(source: SourceConfig, texts: Sequence[str]) -> None:
    """:func:`check_mapping` on the keys of the JSON rows ``texts`` (those that parse to an object) and of their turns
    (the dicts in the lists the row's turn-list keys hold)."""
    from tempa.sft.formats import spec_for

    rows = []
    for text in texts:
        with contextlib.suppress(ValueError):
            if isinstance(row := json.loads(text), dict):
                rows.append(row)
    if not rows:
        return  # nothing to compare with: the rows' own rejects say what they are
    turn_lists = [row[key] for row in rows for key in spec_for(source).messages if isinstance(row.get(key), list)]
    turn_keys = sorted({key for turns in turn_lists for turn in turns if isinstance(turn, dict) for key in turn})
    check_mapping(source, sorted({key for row in rows for key in row}), turn_keys if turn_lists else None,
                  rows=len(rows))


def _check_encoding(source: SourceConfig, file: Path) -> None:
    if (problem := encoding_problem(file)) is not None:
        where = f"{name_below(file, Path(source.path))}: " if file != Path(source.path) else ""
        raise DataError(f"{describe(source)}: {where}{problem}")


@dataclass(frozen=True)
class JsonLinesFiles:
    """JSON Lines files' lines as rows, file after file (``RAW``, ``READ_ERROR``, as :func:`load_source` gives them;
    blank lines too, so row i of one file is line i+1), read straight from the files by the processes that map
    them (:func:`tempa.sft.forked_workers.forked_map`): no Arrow copy of the files is written first and read back
    in one process (measured on 121 MB of JSON Lines: 0.6-1.4 s of a 17 s prepare in two processes)."""

    files: tuple[Path, ...]
    starts: tuple[np.ndarray, ...]  # per file: the byte where each line starts, then the file's size

    @functools.cached_property
    def firsts(self) -> np.ndarray:
        """Each file's first row, then the row count."""
        return np.cumsum([0, *(len(starts) - 1 for starts in self.starts)])

    def __len__(self) -> int:
        return int(self.firsts[-1])

    def costs(self) -> np.ndarray:
        return np.concatenate([np.diff(starts) for starts in self.starts]).astype(np.float64)

    def batches(self, start: int, end: int, size: int) -> Iterator[dict[str, list[Any]]]:
        texts: list[str] = []
        errors: list[str | None] = []
        for file, starts, first, after in zip(self.files, self.starts, self.firsts, self.firsts[1:], strict=False):
            low, high = max(start, first) - first, min(end, after) - first
            if low >= high:
                continue
            for line in read_lines(file, span=(int(starts[low]), int(starts[high]))):
                texts.append(line.text)
                errors.append(line.error)
                if len(texts) == size:
                    yield {RAW: texts, READ_ERROR: errors}
                    texts, errors = [], []
        if texts:
            yield {RAW: texts, READ_ERROR: errors}


def json_lines_files(source: SourceConfig) -> JsonLinesFiles | None:
    """The local JSON Lines file, or folder of JSON Lines files, that ``source`` reads, their lines found but not
    read; None for other sources.

    Raises :class:`DataError` (one line) as :func:`load_source` does for a source it cannot read.
    """
    path = Path(source.path)
    try:
        if not is_local(source) or (path.is_dir() and is_saved_dataset(path)):
            return None
        if path.is_dir():
            files = _json_folder_files(source)
            if files is None or not all(map(is_json_lines, files)):
                return None
        elif is_json_lines(path):
            check_not_empty(path)
            files = [path]
        else:
            return None
        return JsonLinesFiles(tuple(files), tuple(_line_starts(file) for file in files))
    except DataError:
        raise
    except JsonFileError as exc:
        raise DataError(f"data source {source.name!r}: {exc}") from None
    except Exception as exc:
        raise DataError(f"{describe(source)}: could not be loaded: {first_line(exc)}") from None


def data_files(folder: Path, split: str) -> tuple[str, list[Path]]:
    """The builder ``datasets.load_dataset(folder)`` picks for a folder of data files (``parquet``, ``json``,
    ``csv``...) and the files of ``split``, found as it finds them (shards named ``train-00000-of-00004.parquet``,
    a README's ``configs``), without building anything."""
    cards = logging.getLogger("huggingface_hub.repocard")
    level = cards.level
    cards.setLevel(logging.ERROR)  # not "Repo card metadata block was not found" for a README without YAML
    try:
        with tempfile.TemporaryDirectory(prefix="tempa-") as cache:  # the builder's lock files, not the user's
            builder = datasets.load_dataset_builder(str(folder), cache_dir=cache)
    finally:
        cards.setLevel(level)
    found = {str(name): files for name, files in (builder.config.data_files or {}).items()}
    if split not in found:
        raise ValueError(f'Unknown split "{split}". Should be one of {list(found)}.')  # as datasets says it
    read = {Path(file).resolve() for files in found.values() for file in files}
    # datasets takes the files of the folder's most common data extension and drops the rest without a word
    # (a.txt beside c.jsonl: only c.jsonl; b.TXT: not a text file to it); a row never read is a silent loss.
    left_out = [] if is_saved_dataset(folder) else sorted(  # save_to_disk's own .json files beside its .arrow
        name_below(file, folder) for file in folder.rglob("*")
        if file.is_file() and file.suffix.lower() in _DATA_SUFFIXES and file.resolve() not in read
        and not any(part.startswith(".") for part in file.relative_to(folder).parts))
    if left_out:
        shown = ", ".join(left_out[:5]) + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
        raise ValueError(f"{shown} would not be read: a folder is read as one kind of data file, here its "
                         f"{builder.name} files; give the other files a source (or folder) of their own")
    return builder.name, [Path(file) for file in found[split]]


# The data files a folder source may hold, as datasets' builders read them (compressed forms included).
_DATA_SUFFIXES = frozenset({".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zst", ".bz2",
                            ".xz", ".zip"})


def json_shards(kind: str, files: list[Path]) -> list[Path] | None:
    """Of a folder's data files (:func:`data_files`), the ones tempa reads itself, each as one file alone is read
    (JSON Lines, or one JSON document: :func:`is_json_lines`), when they are all JSON (``.jsonl``/``.json``, not
    compressed): those with some text (not empty, blank or a BOM alone: a shard left empty); None otherwise."""
    if kind != "json" or any(file.suffix.lower() not in (".json", ".jsonl") for file in files):
        return None
    return [file for file in files if has_text(file)]


def _json_folder_files(source: SourceConfig) -> list[Path] | None:
    """The :func:`json_shards` of the source's folder and split; None for other folders."""
    files = json_shards(*data_files(Path(source.path), source.split))
    if files == []:
        raise DataError(f"{describe(source)}: has no rows (its {source.split} files are empty)")
    return files


def _line_starts(path: Path) -> np.ndarray:
    """The byte where each line of ``path`` starts (as ``for line in handle`` splits them), then its size."""
    size = path.stat().st_size
    found = [np.zeros(1, dtype=np.int64)]
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped, \
            tqdm(total=size, desc=f"Finding the lines of {path.name}", unit="B", unit_scale=True,
                 delay=_PROGRESS_DELAY_S) as bar:
        data = np.frombuffer(mapped, dtype=np.uint8)
        # Slices that stay in the CPU's cache: 118 MB in 0.06 s, against 0.29 s searched whole.
        for at in range(0, size, _SEARCH_BYTES):
            found.append(np.flatnonzero(data[at:at + _SEARCH_BYTES] == ord("\n")) + (at + 1))
            bar.update(min(_SEARCH_BYTES, size - at))
        del data  # the map cannot close while an array views it
    starts = np.concatenate(found)
    return starts if starts[-1] == size else np.append(starts, size)


def _one_split(loaded: Any, source: SourceConfig) -> datasets.Dataset:
    if isinstance(loaded, datasets.DatasetDict):
        if source.split not in loaded:
            raise DataError(
                f"{describe(source)}: has no split {source.split!r}; splits: {', '.join(loaded)}"
            )
        return loaded[source.split]
    if isinstance(loaded, datasets.Dataset):
        return loaded
    raise DataError(f"{describe(source)}: expected a Dataset, got {type(loaded).__name__}")


def _jsonl_rows(path: Path, hf_cache: str | None) -> datasets.Dataset:
    return dataset_of_files(_jsonl_parts(path, hf_cache))


def _json_files_rows(files: list[Path], hf_cache: str | None) -> datasets.Dataset:
    """A folder's JSON files' rows, file after file, each file read as it is alone: JSON Lines through the Arrow
    copy, a JSON document's rows as raw text (``READ_ERROR`` none)."""
    if all(map(is_json_lines, files)):
        return dataset_of_files([part for file in files for part in _jsonl_parts(file, hf_cache)])
    parts = []
    for file in files:
        if is_json_lines(file):
            parts.append(_jsonl_rows(file, hf_cache))
        else:
            texts = json_rows(file)
            parts.append(datasets.Dataset.from_dict({RAW: texts, READ_ERROR: [None] * len(texts)},
                                                    features=_JSONL_FEATURES))
    return datasets.concatenate_datasets(parts)


def _jsonl_parts(path: Path, hf_cache: str | None) -> list[Path]:
    """The Arrow files holding one row per line, blank lines included, so row i is line i+1 in every message.

    Written in batches into Arrow files in the cache (memory stays flat for multi-GB files) and
    memory-mapped from there, keyed by the file's identity and modification time, as ``datasets`` keys
    its own file loaders. ``datasets``' own writer, not its generator builder: the builder's locks, split
    bookkeeping and per-row encoding made reading the one serial step of a prepare that worker processes
    cannot share (0.45 s of 3,000 rows, about 13,000 rows a second). A large file is read in parts, one
    forked process per part (:func:`tempa.sft.data_config.read_processes`): one process reads 130-210 MB/s,
    minutes for the tens of GB of a large reasoning set.
    """
    check_not_empty(path)
    stat = path.stat()
    key = digest([str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, _JSONL_READER_VERSION])[:32]
    folder = Path(hf_cache) if hf_cache is not None else cache_root() / "hf"
    entry = folder / f"jsonl-{key}"
    if not entry.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        # Renamed into place once every part is complete: an interrupted read never passes for the file.
        partial = folder / f".{entry.name}.{uuid.uuid4().hex}.partial"
        partial.mkdir()
        try:
            _read_jsonl_parts(path, partial, line_spans(path, read_processes(stat.st_size)))
            try:
                os.replace(partial, entry)
            except OSError:
                if not entry.is_dir():  # else another process read the same file first: theirs is as good
                    raise
        finally:
            remove_tree(partial, [folder])
    return sorted(entry.glob("part-*.arrow"))


def _read_jsonl_parts(path: Path, folder: Path, spans: list[tuple[int, int]]) -> None:
    """``spans`` of ``path`` into ``folder/part-NNNNN.arrow``, in forked worker processes when more than one."""
    outs = [folder / f"part-{k:05d}.arrow" for k in range(len(spans))]
    # Reading a few hundred MB takes seconds: the bar shows only once a read has taken that long.
    with tqdm(total=path.stat().st_size, desc=f"Reading {path.name}", unit="B", unit_scale=True,
              delay=_PROGRESS_DELAY_S) as bar:
        run_forked(lambda k, report: _write_jsonl_arrow(path, outs[k], spans[k], report), len(spans), len(spans),
                   bar)


def _write_jsonl_arrow(path: Path, out: Path, span: tuple[int, int], report: Callable[[int], None]) -> None:
    """The lines of ``span``, in record batches of about ``_BATCH_CHARS`` characters; ``report`` is told the
    bytes read at every batch."""
    texts: list[str] = []
    errors: list[str | None] = []
    size = 0
    unreported = 0

    def count(n: int) -> None:
        nonlocal unreported
        unreported += n

    with ArrowWriter(features=_JSONL_FEATURES, path=str(out)) as writer:
        for line in read_lines(path, on_bytes=count, span=span):
            texts.append(line.text)
            errors.append(line.error)
            size += len(line.text)
            if size >= _BATCH_CHARS:
                writer.write_batch({RAW: texts, READ_ERROR: errors})
                texts, errors, size = [], [], 0
                report(unreported)
                unreported = 0
        if texts:
            writer.write_batch({RAW: texts, READ_ERROR: errors})
        writer.finalize()
    report(unreported)


def json_rows(path: Path) -> list[str]:
    """The rows of a JSON document file (:func:`document_rows`), each as JSON text (``RAW``); the caller must not
    change the list (the last document parsed is kept: the checks before the first stage, the plan's sample and the
    data preparation each read it, and a multi-GB ShareGPT export took a parse each)."""
    return _parsed_document(file_identity(path), path)


def forget_parsed_documents() -> None:
    """Let the last JSON document parsed go (the runner calls it before stages train: a multi-GB export's rows held
    through training compete with ZeRO offload for host memory)."""
    _parsed_document.cache_clear()


@functools.lru_cache(maxsize=1)
def _parsed_document(identity: tuple[str, int, int, int], path: Path) -> list[str]:
    rows = [json.dumps(row, ensure_ascii=False) for row in document_rows(path, read_json(path, "a JSON list of rows"))]
    _DOCUMENT_SIZES[identity] = len(rows)
    return rows


# Rows of the JSON documents read in this process, by file identity: naming a folder's rows after loading it does
# not parse its documents again.
_DOCUMENT_SIZES: dict[tuple[str, int, int, int], int] = {}


def _document_size(path: Path) -> int:
    size = _DOCUMENT_SIZES.get(file_identity(path))
    return size if size is not None else len(json_rows(path))


def source_fingerprint(source: SourceConfig, *, dataset: datasets.Dataset | None = None) -> str:
    """A digest that changes whenever the source's data changes.

    Local files and folders are hashed by content (path changes alone do not matter); hub
    datasets by the fingerprint ``datasets`` gives the loaded split, which follows the cached
    revision, so an unpinned dataset that moved on upstream is not mistaken for the old one.
    Pass the already loaded ``dataset`` of a hub source to avoid loading it twice.
    """
    if is_local(source):
        path = Path(source.path)
        return tree_digest(path, full_content_below=None) if path.is_dir() else file_digest(path)
    loaded = dataset if dataset is not None else load_source(source)
    return digest([source.path, source.subset, source.split, source.revision, loaded._fingerprint])
