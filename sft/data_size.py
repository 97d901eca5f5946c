"""How many rows and tokens an sft stage's data holds, without preparing it (for `tempa plan --hardware`).

Once the stage has run, its data mix is exact. Before, each source is sized from its ``tokens`` /
``rows`` setting, or the row count of a local file or saved dataset; a ``stage:NAME`` source takes the
size its producer declares (an upper bound until that stage has run). Tokens per row are measured on a
sample of a local source's rows (:func:`scan_local_rows`: JSON Lines, JSON, Parquet, CSV, a
``save_to_disk`` folder, a folder of such data files), which the pipeline's own steps normalise, filter,
render and tokenise (:class:`TemplateCounter`) when the base model's tokenizer is on this machine; without it
the renderings are counted at :data:`BYTES_PER_TOKEN` plus the template's tokens (:class:`ApproximateCounter`).
Hub datasets get an assumed length that depends on their thinking mode.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import functools
import itertools
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from tempa.chat_templates.expand import turn_views
from tempa.chat_templates.json_files import JsonFileError, RowPlace, decode_line, is_blank, is_json_lines
from tempa.chat_templates.one_line import first_line
from tempa.chat_templates.thinking import last_user_index
from tempa.sft import curation
from tempa.sft.config import SFTStageConfig
from tempa.sft.data_config import (
    PREP_DEDUP_ROW_SECONDS,
    PREP_LANGUAGE_ROW_SECONDS,
    PREP_NORMALISE_ROW_SECONDS,
    PREP_ROW_SECONDS,
    PREP_SERIAL_TOKENS_PER_SECOND,
    PREP_TOKENS_PER_CORE_SECOND,
    CurationConfig,
    DataError,
    SourceConfig,
    available_cores,
    normalised_first,
    prep_seconds,
    token_limits,
    workers_for,
)
from tempa.sft.data_report import DataMix
from tempa.sft.formats import Conversation, trains
from tempa.sft.mixing import heldout_count, renders_on
from tempa.sft.stage_api import EstimateInputs, SourceSize, TokenCount, TrainingWorkload
from tempa.sft.throughput_summary import format_eta

SAMPLED_ROWS = 256  # rows of a local source drawn to measure its tokens per row
# Without the base model's tokenizer: UTF-8 bytes of text per token. Llama 3's tokenizer measured 3.5 on
# English model cards, 4.1 on Python code, and 2.4 (Indonesian), 3.6 (Japanese), 7.2 (Thai) on short chat turns.
BYTES_PER_TOKEN = 4.0
# Without the tokenizer, the template's own tokens, as tempa's Llama 3 and ChatML templates render: a turn's
# role header and end marker, the think block every answer after the last user message carries (empty or
# not), the begin-of-text token.
TOKENS_PER_TURN = 5
TOKENS_PER_ANSWER = 5
TOKENS_PER_RENDERING = 1
# The instructions a template adds with tool definitions: 60 tokens in llama3_thinking (which also indents the
# JSON: about 40% more per definition), 92 in chatml_thinking; counted with Llama 3's tokenizer.
TOKENS_WITH_TOOLS = 75
# A sampled line longer than this is not parsed (a 48 MB line took 6 GB to measure): it holds ~250k tokens or
# more, beyond any max_length, and counts as one sample of its bytes / BYTES_PER_TOKEN.
LONG_LINE_BYTES = 1 << 20

TokenCounter = Callable[[list[str]], list[int]]
Lengths = list[list[tuple[int, str | None]]]  # per conversation: its samples' tokens and reject reason (None: kept)


@dataclass(frozen=True)
class LocalRows:
    """A local source's row count, and up to :data:`SAMPLED_ROWS` of its rows drawn evenly at random."""

    rows: int
    # The sampled rows, columns as :func:`tempa.sft.sources.load_source` gives them (JSON: raw text).
    sample: dict[str, list[Any]] = field(default_factory=dict)
    long_lines: tuple[int, ...] = ()  # sampled JSON Lines lines over LONG_LINE_BYTES, by size (not parsed)
    error: str | None = None  # why the pipeline will not read the source at all
    lines: bool = False  # the rows are the lines of JSON Lines files
    # where each sampled row is, as the run names it ("ja.jsonl:8" in a folder, "line 8", "row 20" in a typed source)
    places: tuple[str, ...] = ()

    @property
    def sampled(self) -> int:
        return len(next(iter(self.sample.values()), [])) + len(self.long_lines)

    def sampled_rows(self) -> list[dict[str, Any]]:
        """The sampled rows one by one (JSON Lines: ``{RAW: line text, READ_ERROR: ...}``, as the pipeline reads them)."""
        return [dict(zip(self.sample, values, strict=True)) for values in zip(*self.sample.values(), strict=True)]

    def row_objects(self) -> list[Any]:
        """The sampled rows as values: a JSON Lines line parsed (a line that is no JSON, or unreadable, left out), a
        typed row as it is. What the plan measures; the stages read every row with their own errors."""
        from tempa.sft.sources import RAW

        rows = self.sampled_rows()
        if not self.lines:
            return rows
        out = []
        for row in rows:
            with contextlib.suppress(TypeError, ValueError):
                out.append(json.loads(row.get(RAW)))
        return out


def jsonl_sample(rows: int, lines: Sequence[tuple[int, bytes | int]], places: Sequence[str] | None = None) -> LocalRows:
    """:class:`LocalRows` of sampled JSON Lines ``lines`` ((line number, its bytes, or its size when over
    LONG_LINE_BYTES)), decoded as the pipeline's reader decodes them: line 1's UTF-8 BOM dropped, invalid UTF-8
    a read error. ``places``: where each line given as bytes is, as the run names it (by default ``line N``)."""
    from tempa.sft.sources import RAW, READ_ERROR

    decoded = [decode_line((line.removeprefix(codecs.BOM_UTF8) if number == 1 else line).rstrip(b"\r\n"))
               for number, line in lines if isinstance(line, bytes)]
    batch = {RAW: [text for text, _ in decoded], READ_ERROR: [error for _, error in decoded]} if decoded else {}
    if places is None:
        places = [f"line {number}" for number, line in lines if isinstance(line, bytes)]
    return LocalRows(rows, batch, tuple(line for _, line in lines if isinstance(line, int)), lines=True,
                     places=tuple(places))


def _reservoir(items: Any, sample: int, take: Callable[[Any], Any] = lambda item: item) -> tuple[int, list[Any]]:
    """(how many ``items``, ``take`` of ``sample`` of them drawn evenly by reservoir sampling, with a fixed seed:
    a source sorted by length is sampled as fairly as a shuffled one, and the plan is the same every time).
    ``take`` runs only on the items drawn."""
    kept: list[Any] = []
    pick = random.Random(0)
    count = 0
    for item in items:
        if len(kept) < sample:
            kept.append(take(item))
        elif sample and (slot := pick.randrange(count + 1)) < sample:
            kept[slot] = take(item)
        count += 1
    return count, kept


def scan_local_rows(path: str, sample: int = 0, split: str = "train") -> LocalRows | None:
    """Rows of a local JSONL/JSON/Parquet/CSV file, ``save_to_disk`` folder (``split`` of a dataset dict) or folder
    of Parquet/CSV/JSON files (the files of ``split``, as ``datasets.load_dataset`` finds them: shards named
    ``train-00000-of-00004.parquet``, say), and ``sample`` of them drawn evenly at random, without preparing it;
    None for anything else (a hub dataset, a folder of other files).

    Each kind is read as the pipeline reads it (a CSV with pandas, as ``datasets`` does), in one pass that keeps
    only the sample (a Parquet file: the row groups holding it); a JSON file is parsed whole, as the pipeline
    parses it. What the pipeline cannot read gives :attr:`LocalRows.error`. A source read by several stages or
    sources is read once while it is unchanged.
    """
    file = Path(path)
    if not file.exists():
        return None
    try:
        return _scan(os.path.abspath(file), _changes(file), sample, split)  # a symlink's name says what it holds
    except Exception as exc:  # as the pipeline's loader says it (tempa.sft.sources.load_source)
        first = first_line(exc)
        return LocalRows(0, error=first)


def _changes(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when ``path`` (a file, or any file in a folder) is rewritten: the scan cache's key."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(f), (st := f.stat()).st_size, st.st_mtime_ns) for f in files)


@functools.lru_cache(maxsize=16)
def _scan(path: str, changes: tuple[tuple[str, int, int], ...], sample: int, split: str) -> LocalRows | None:
    from tempa.sft.sources import RAW, is_saved_dataset, json_rows

    file = Path(path)
    suffix = file.suffix.lower()
    if file.is_dir():
        return _saved_dataset_rows(file, sample, split) if is_saved_dataset(file) else \
            _data_files_rows(file, sample, split)
    if is_json_lines(file):
        return _json_file_rows([file], sample)
    if suffix == ".json":
        try:
            texts = json_rows(file)
        except (DataError, JsonFileError) as exc:
            return LocalRows(0, error=str(exc))
        rows, kept = _reservoir(enumerate(texts), sample)
        return LocalRows(rows, {RAW: [text for _, text in kept]} if kept else {}, places=_row_places(i for i, _ in kept))
    if suffix == ".parquet":
        return _parquet_rows([file], sample)
    if suffix == ".csv":
        return _csv_rows([file], sample)
    return None


def _json_file_rows(files: Sequence[Path], sample: int) -> LocalRows:
    """The rows of JSON ``files``, file after file, each read as the pipeline reads it: the non-blank lines of
    JSON Lines, a JSON document's rows (as JSON text)."""
    from tempa.sft.sources import json_rows

    def lines() -> Iterator[tuple[int, bytes, str]]:
        for file in files:
            if not is_json_lines(file):
                # a document's rows: line 0 (no BOM to drop), named by their 0-based row as the run names them
                yield from ((0, text.encode("utf-8"), str(RowPlace(file.name if len(files) > 1 else None, "row", i)))
                            for i, text in enumerate(json_rows(file)))
                continue
            with open(file, "rb") as handle:
                for number, line in enumerate(handle, start=1):
                    # a blank line is no row, as the run skips it (a line of U+00A0 too: not bytes.strip())
                    if not is_blank(line.removeprefix(codecs.BOM_UTF8) if number == 1 else line):
                        yield number, line, f"{file.name}:{number}"

    rows, kept = _reservoir(lines(), sample, lambda item: (item[0], item[1] if len(item[1]) <= LONG_LINE_BYTES
                                                           else len(item[1]), item[2]))
    sampled = jsonl_sample(rows, [(number, line) for number, line, _ in kept],
                           [place for _, line, place in kept if isinstance(line, bytes)])
    return replace(sampled, lines=all(map(is_json_lines, files)))


def _draw(rows: int, sample: int) -> list[int]:
    return sorted(random.Random(0).sample(range(rows), min(rows, sample)))


def _parquet_rows(files: Sequence[Path], sample: int) -> LocalRows:
    """The files' rows as one table (a sharded dataset's files in order), reading only the row groups that hold
    the rows drawn."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquets = [pq.ParquetFile(file) for file in files]
    groups = [(parquet, g, parquet.metadata.row_group(g).num_rows) for parquet in parquets
              for g in range(parquet.num_row_groups)]
    rows = sum(size for _, _, size in groups)
    picked, start, tables = _draw(rows, sample), 0, []
    for parquet, group, size in groups:
        inside = [i - start for i in picked if start <= i < start + size]
        if inside:
            tables.append(parquet.read_row_group(group).take(inside))
        start += size
    return LocalRows(rows, pa.concat_tables(tables, promote_options="default").to_pydict() if tables else {},
                     places=_row_places(picked))


def _csv_rows(files: Sequence[Path], sample: int) -> LocalRows:
    """Read as ``datasets``' CSV builder reads them (pandas with its defaults: a BOM dropped, ``NA``/``null`` cells
    null, invalid UTF-8 an error), in chunks, each row's values converted only when it is drawn."""
    import pandas as pd
    import pyarrow as pa
    from datasets.packaged_modules.csv.csv import CsvConfig

    frames = (frame for file in files for frame in pd.read_csv(file, iterator=True, **CsvConfig().pd_read_csv_kwargs))
    tables = (pa.Table.from_pandas(frame, preserve_index=False) for frame in frames)
    items = enumerate((table, i) for table in tables for i in range(len(table)))
    rows, kept = _reservoir(items, sample, lambda item: (item[0], item[1][0].slice(item[1][1], 1).to_pylist()[0]))
    return LocalRows(rows, _columns([row for _, row in kept]), places=_row_places(n for n, _ in kept))


def _row_places(indices: Iterable[int]) -> tuple[str, ...]:
    """How the run names a typed source's rows (their 0-based row in the source, a folder's files as one table)."""
    return tuple(str(RowPlace(None, "row", i)) for i in indices)


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Rows as columns, each row's missing fields null, at every depth, as Arrow gives a typed file's rows (a turn
    without ``reasoning_content`` among turns with one has it null); rows Arrow cannot type together keep their
    own fields (the run's loader says what it makes of them)."""
    import pyarrow as pa

    names = list(dict.fromkeys(name for row in rows for name in row))  # (from_pylist takes the first row's)
    columns = {name: [row.get(name) for row in rows] for name in names}
    try:
        return pa.Table.from_pydict(columns).to_pydict()
    except (pa.ArrowException, TypeError, ValueError):
        return columns


def _data_files_rows(folder: Path, sample: int, split: str) -> LocalRows | None:
    """A folder of data files, the files of ``split`` found as the run finds them
    (:func:`tempa.sft.sources.data_files`); None for files other than Parquet, CSV or JSON."""
    from tempa.sft.sources import data_files, json_shards

    kind, files = data_files(folder, split)
    shards = json_shards(kind, files)
    if shards is not None:
        return _json_file_rows(shards, sample)  # read by tempa's readers, each file as it is alone
    read = {"parquet": _parquet_rows, "csv": _csv_rows}.get(kind)
    plain = {"parquet": {".parquet"}, "csv": {".csv"}}.get(kind, set())
    if read is None or any(file.suffix.lower() not in plain for file in files):  # compressed (.gz...), or other
        return None
    return read(files, sample)


def _saved_dataset_rows(folder: Path, sample: int, split: str) -> LocalRows | None:
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            return LocalRows(0, error=f"has no split {split!r}; splits: {', '.join(loaded)}")
        loaded = loaded[split]
    picked = _draw(len(loaded), sample) if sample else []
    return LocalRows(len(loaded), loaded.select(picked)[:] if sample else {}, places=_row_places(picked))


def count_local_rows(path: str) -> int | None:
    """Rows of a local JSONL/JSON/CSV/Parquet file or saved dataset without preparing it; None for anything else."""
    found = scan_local_rows(path, SAMPLED_ROWS)  # the scan an sft source of the same file makes: read once
    return found.rows if found is not None and found.error is None else None


def _bytes_per_token(texts: list[str]) -> list[int]:
    return [math.ceil(len(t.encode("utf-8")) / BYTES_PER_TOKEN) for t in texts]


class SampleCounter(Protocol):
    """Measures the samples the pipeline makes of conversations: :func:`tempa.sft.data.sample_lengths`' result."""

    how: str  # said in the plan: "measured ... with {how}"
    specials: Sequence[str]  # texts the pipeline rejects inside a row (the tokenizer's special tokens)

    def lengths(self, conversations: Sequence[Conversation], thinking: Sequence[bool],
                limits: tuple[int | None, int | None]) -> Lengths: ...


class TemplateCounter:
    """The pipeline's own rendering and tokenising, with the base model's tokenizer and the recipe's template:
    the tokens a sample gets are the tokens training gets."""

    how = "the base model's tokenizer and the recipe's template"

    def __init__(self, tokenizer: Any) -> None:
        from tempa.sft.tokenization import ChatEncoder, special_token_texts

        self.encoder = ChatEncoder(tokenizer)
        self.specials = special_token_texts(tokenizer)

    def lengths(self, conversations: Sequence[Conversation], thinking: Sequence[bool],
                limits: tuple[int | None, int | None]) -> Lengths:
        from tempa.sft.data import sample_lengths

        return sample_lengths(conversations, thinking, self.encoder, limits)


class ApproximateCounter:
    """Without the tokenizer: each text of a rendering counted by ``count``, plus :data:`TOKENS_PER_TURN` and the
    like for what the template adds."""

    specials: Sequence[str] = ()

    def __init__(self, count: TokenCounter = _bytes_per_token, how: str = f"~{BYTES_PER_TOKEN:g} bytes of text per token"):
        self.count, self.how = count, how

    def lengths(self, conversations: Sequence[Conversation], thinking: Sequence[bool],
                limits: tuple[int | None, int | None]) -> Lengths:
        renderings = [(_renderings(c.messages, on), c.tools) for c, on in zip(conversations, thinking, strict=True)]
        texts = sorted({text for views, tools in renderings for text in _texts(views, tools)})
        tokens = dict(zip(texts, self.count(texts), strict=True))
        return [[(n, _outside(n, limits)) for n in (_rendering_tokens(view, tools, tokens) for view in views)]
                for views, tools in renderings]


def _outside(tokens: int, limits: tuple[int | None, int | None]) -> str | None:
    low, high = limits
    if high is not None and tokens > high:
        return curation.TOO_LONG
    return curation.TOO_SHORT if low is not None and tokens < low else None


def sample_counter(tokenizer: Any = None) -> SampleCounter:
    """:class:`TemplateCounter` with ``tokenizer`` (the base model's, the recipe's template set), else the
    approximation."""
    if tokenizer is not None:
        try:
            return TemplateCounter(tokenizer)
        except DataError:  # not a fast tokenizer: the run says so when it prepares the data
            pass
    return ApproximateCounter()


@dataclass(frozen=True)
class SampledLength:
    """What a sample of a source's rows says of its length, as the pipeline will tokenise it."""

    tokens_per_row: int  # tokens of the samples kept, per row measured
    rows: int  # sampled rows the pipeline keeps (the others become rejects)
    lines: int  # rows (JSON Lines: lines) sampled
    outside_limits: float = 0.0  # share of the samples longer or shorter than the token limits (dropped)
    # (where, why) of the sampled rows the pipeline rejects, in sample order; a row over LONG_LINE_BYTES is not named
    rejects: tuple[tuple[str, str], ...] = field(default=(), compare=False)


_ROW_REJECTS = frozenset({curation.TEMPLATE_ERROR, curation.NO_TRAINABLE_TOKENS})


def sampled_tokens_per_row(source: SourceConfig, sample: LocalRows, counter: SampleCounter,
                           limits: tuple[int | None, int | None] = (None, None), cur: CurationConfig | None = None,
                           accepted: frozenset[str] | None = None) -> SampledLength:
    """Tokens the pipeline's samples hold per row it keeps, measured on ``sample``.

    Each row is normalised and filtered by the pipeline's own row-local steps (:func:`tempa.sft.data.normalize_sample`:
    ``cur``'s filters, ``accepted`` languages), then measured by ``counter`` as rendered with thinking on
    where the pipeline would (a row with a trace, in an ``on`` source or with its own ``thinking_mode: on``; in a
    ``mixed`` source, a traced row that fits with thinking on weighs its two renderings by the share that makes the
    ratio of the traced rows kept). A sample outside ``limits`` (min, max tokens) is dropped, and a row none of whose
    samples is left is rejected, as the pipeline does. A row of more than :data:`LONG_LINE_BYTES` of text is
    not rendered: one sample of its bytes / :data:`BYTES_PER_TOKEN`. Rows compared with each other (``dedup``)
    are not measured.
    """
    from tempa.sft.data import normalize_sample

    batch, long_rows, kept = _without_long_rows(sample.sample)
    normalized = normalize_sample(batch, source, cur or CurationConfig(), accepted, counter.specials) if batch else []
    if len(sample.places) == len(normalized):  # JSON Lines: its long lines were never in the batch
        places = sample.places
    elif len(sample.places) == sample.sampled - len(sample.long_lines):
        places = tuple(sample.places[i] for i in kept)
    else:
        places = tuple(f"sampled row {i + 1}" for i in range(len(normalized)))
    rejects = [(place, row) for place, row in zip(places, normalized, strict=True) if isinstance(row, str)]
    conversations = [row for row in normalized if not isinstance(row, str)]
    read = [place for place, row in zip(places, normalized, strict=True) if not isinstance(row, str)]
    traced = [any(turn.get("reasoning_content") for turn in c.messages) for c in conversations]
    fixed = [renders_on(t, c.thinking_mode, source.thinking_mode) for t, c in zip(traced, conversations, strict=True)]
    as_fixed = counter.lengths(conversations, fixed, limits) if conversations else []
    rejects += [(place, next(reason for _, reason in row if reason)) for place, row in zip(read, as_fixed, strict=True)
                if source.thinking_mode != "mixed" and row and not _fits(row)]  # (mixed: rendered either way)
    measured: list[tuple[float, list[tuple[int, str | None]]]] = [(1.0, row) for row in as_fixed]
    if source.thinking_mode == "mixed" and conversations:
        # The run draws its ratio of the traced rows it keeps among those that fit with thinking on (tempa.sft.mixing
        # .thinking_picks): each such row is on with the share that makes up, the others train off.
        drawn = [t and c.thinking_mode is None for t, c in zip(traced, conversations, strict=True)]
        as_on = counter.lengths(conversations, [f or d for f, d in zip(fixed, drawn, strict=True)], limits)
        kept = [d and (_fits(on) or _fits(off)) for d, on, off in zip(drawn, as_on, as_fixed, strict=True)]
        fit_on = [k and _fits(on) for k, on in zip(kept, as_on, strict=True)]
        share_on = min(1.0, (source.thinking_ratio or 0.0) * sum(kept) / sum(fit_on)) if any(fit_on) else 0.0
        measured = [(1.0, off) if not fits else (1 - share_on, off)
                    for off, fits in zip(as_fixed, fit_on, strict=True)]
        measured += [(share_on, on) for on, fits in zip(as_on, fit_on, strict=True) if fits and share_on]
    for size in [*sample.long_lines, *long_rows]:
        tokens = math.ceil(size / BYTES_PER_TOKEN)
        measured.append((1.0, [(tokens, _outside(tokens, limits))]))
    rows = kept = samples = outside = 0.0
    for share, row in measured:
        if all(reason in _ROW_REJECTS for _, reason in row):
            continue  # a row the template refuses or trains nothing of: a reject
        samples += share * len(row)
        outside += share * sum(reason in (curation.TOO_LONG, curation.TOO_SHORT) for _, reason in row)
        if any(reason is None for _, reason in row):  # else every sample is outside the limits: a reject
            rows += share
            kept += share * sum(tokens for tokens, reason in row if reason is None)
    order = {place: k for k, place in enumerate(sorted(places, key=_place_order))}
    rejects.sort(key=lambda reject: order[reject[0]])
    if rows <= 0:
        return SampledLength(0, 0, sample.sampled, outside / samples if samples else 0.0, tuple(rejects))
    return SampledLength(round(kept / rows), max(1, round(rows)), sample.sampled, outside / samples, tuple(rejects))


def _place_order(place: str) -> tuple[str, int]:
    """A sampled row's place ("ja.jsonl:8", "line 8", "row 20") in file order: by file, then line or row number."""
    name, _, number = place.replace(" ", ":").rpartition(":")
    return (name, int(number)) if number.isdigit() else (place, 0)


def _fits(samples: Sequence[tuple[int, str | None]]) -> bool:
    """Whether the length limits keep a sample of a row (``samples``: its samples' tokens and rejects)."""
    return any(reason is None for _, reason in samples)


def _without_long_rows(batch: Mapping[str, list[Any]]) -> tuple[dict[str, list[Any]], list[int], list[int]]:
    """``batch`` without its rows of more than :data:`LONG_LINE_BYTES` of text, those rows' sizes, and the positions
    of the rows kept."""
    count = len(next(iter(batch.values()), []))
    sizes = [sum(_text_bytes(column[i]) for column in batch.values()) for i in range(count)]
    keep = [i for i, size in enumerate(sizes) if size <= LONG_LINE_BYTES]
    return {name: [column[i] for i in keep] for name, column in batch.items()}, \
        [size for size in sizes if size > LONG_LINE_BYTES], keep


def _text_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, Mapping):
        return sum(_text_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_text_bytes(v) for v in value)
    return 0


def _renderings(messages: Sequence[Mapping[str, Any]], thinking: bool) -> list[list[dict[str, Any]]]:
    """The conversations the pipeline renders for one row.

    A turn trains inside a later rendering only where that rendering shows it as it was generated: a
    step of the same tool loop (after the last user message); before a later user message it is history.
    """
    kept: list[list[dict[str, Any]]] = []
    for view in turn_views(messages, thinking):  # last turn first, as expand() assembles them
        if not trains(messages[view.turn]):
            continue  # context only (weight 0): it renders in the other turns' samples
        if not any(view.turn > last_user_index(later) and later[: len(view.messages)] == view.messages
                   for later in kept):
            kept.append(view.messages)
    return kept


def _turn_texts(turn: Mapping[str, Any]) -> list[str]:
    texts = [turn["content"] or "", turn.get("reasoning_content") or ""]
    if turn.get("tool_calls"):
        texts.append(json.dumps(turn["tool_calls"], ensure_ascii=False))
    return texts


def _texts(views: Sequence[Sequence[Mapping[str, Any]]], tools: Any) -> list[str]:
    texts = [text for view in views for turn in view for text in _turn_texts(turn)]
    return texts + ([json.dumps(tools, ensure_ascii=False)] if tools else [])


def _rendering_tokens(view: Sequence[Mapping[str, Any]], tools: Any, tokens: Mapping[str, int]) -> int:
    # History answers render without their think block.
    answers = sum(turn["role"] == "assistant" for turn in view[last_user_index(view) + 1:])
    own = (sum(tokens[text] for turn in view for text in _turn_texts(turn)) + TOKENS_PER_TURN * len(view)
           + TOKENS_PER_ANSWER * answers + TOKENS_PER_RENDERING)
    return own + (tokens[json.dumps(tools, ensure_ascii=False)] + TOKENS_WITH_TOOLS if tools else 0)


def avg_tokens_per_row(source: SourceConfig, avg_on: int, avg_off: int) -> int:
    if source.thinking_mode == "off":
        return avg_off
    if source.thinking_mode == "mixed":
        ratio = source.thinking_ratio or 0.0
        return round(ratio * avg_on + (1 - ratio) * avg_off)
    return avg_on


def _limits_text(limits: tuple[int | None, int | None]) -> str:
    low, high = limits
    return ", ".join(text for text in (f"min {low:,}" if low else "", f"max {high:,}" if high else "") if text)


def source_size(source: SourceConfig, heldout: float | int, avg: int, dataset_sizes: Mapping[str, SourceSize],
                counter: SampleCounter, limits: tuple[int | None, int | None] = (None, None),
                cur: CurationConfig | None = None, accepted: frozenset[str] | None = None) -> SourceSize:
    """Rows per epoch of one source (held-out rows removed, weight applied) and its tokens per row.

    ``avg``: the tokens per row assumed where they cannot be measured; ``counter`` measures them on a sample
    of a local source (:func:`sampled_tokens_per_row`, with ``limits``, ``cur`` and ``accepted``).
    """
    local = None if source.stage_ref is not None else scan_local_rows(source.path, SAMPLED_ROWS, source.split)
    where = _what_is_read(Path(source.path))
    if local is not None and (local.error is not None or local.rows == 0):
        has = "have" if where.endswith("files") else "has"
        problem = f"{where} cannot be read: {local.error}" if local.error is not None else f"{where} {has} no rows"
        return SourceSize(0, avg, f"the run will fail on this source, as {problem}")
    measured = f"~{avg:,} tokens/row assumed ({source.thinking_mode})"
    usable = 1.0  # the share of the source's rows (JSON Lines: lines) that the pipeline keeps
    unit = "line" if local is not None and local.lines else "row"
    if local is not None and local.sampled:
        sampled = sampled_tokens_per_row(source, local, counter, limits, cur, accepted)
        usable = sampled.rows / sampled.lines
        if not sampled.rows:
            why = "not JSON, not the source's format" if unit == "line" else "not the source's format"
            measured += (f"; none of its {_many(sampled.lines, 'sampled ' + unit)} is a row tempa can train on ({why}, "
                         "filtered out, no assistant turn, or outside the token limits): the run will fail on this "
                         f"source{_rejects_text(sampled.rejects)}")
        else:
            avg = sampled.tokens_per_row
            measured = (f"~{sampled.tokens_per_row:,} tokens/row measured on {_many(sampled.rows, 'sampled row')} "
                        f"with {counter.how} ({source.thinking_mode})")
            if sampled.rows < sampled.lines:
                bad = sampled.lines - sampled.rows
                measured += (f"; {bad:,} of {_many(sampled.lines, 'sampled ' + unit)} will be rejected"
                             f"{_rejects_text(sampled.rejects)}")
            if sampled.outside_limits:
                measured += (f"; {sampled.outside_limits:.0%} of their samples fall outside the token limits "
                             f"({_limits_text(limits)}) and will be rejected")
            if cur is not None and cur.dedup is not None:
                measured += "; any duplicates among these rows are counted, and dedup drops them when the stage runs"
    counted = round(local.rows * usable) if local is not None and local.sampled else None
    if source.tokens is not None:
        rows = max(1, source.tokens // max(1, avg))
        repeats = _repeats(rows, counted, usable, heldout)
        return SourceSize(rows, avg, f"token budget {source.tokens:,}, {measured}{repeats}")
    if source.rows is not None:
        repeats = _repeats(source.rows, counted, usable, heldout)
        return SourceSize(source.rows, avg, f"rows {source.rows:,}, {measured}{repeats}")
    if source.stage_ref is not None and source.stage_ref in dataset_sizes:
        size = dataset_sizes[source.stage_ref]
        measured = f"~{size.tokens_per_row:,} tokens/row assumed ({source.thinking_mode})"
    elif local is not None:
        rows = round(local.rows * usable)
        how = f"{_many(local.rows, 'row')} in {where}" if rows == local.rows else \
            f"{_many(local.rows, unit)} in {where}, ~{rows:,} of them kept (~{local.rows - rows:,} rejected)"
        size = SourceSize(rows, avg, how)
    elif Path(source.path).is_file():
        size = SourceSize(None, avg, f"a local {Path(source.path).suffix or 'file'} file, not counted before preparing")
    elif Path(source.path).is_dir():
        size = SourceSize(None, avg, "a folder of files other than Parquet, CSV or JSON (or compressed), not counted "
                                     "before preparing")
    else:
        size = SourceSize(None, avg, "unknown size (a hub dataset, with no rows/tokens setting)")
    if size.rows is None:
        return size
    kept = size.rows * (1 - heldout) if isinstance(heldout, float) else max(0, size.rows - heldout)
    weight = source.weight if source.weight is not None else 1.0
    held = f" less {heldout:g} held out" if heldout else ""
    return replace(size, rows=round(kept * weight), how=f"{size.how}{held} x weight {weight:g}, {measured}")


REJECTS_SHOWN = 3  # sampled rejects the plan names, with their place and reason


def _rejects_text(rejects: Sequence[tuple[str, str]]) -> str:
    """The reasons of a sample's rejects, counted, and the first few with where they are: what to fix before the run
    (which writes every reject to its rejects file, but only once it prepares the data)."""
    if not rejects:
        return " (not a row it can train on, or every sample outside the token limits)"
    counts: dict[str, int] = {}
    firsts: dict[str, str] = {}  # each reason's first reject, in file order
    for place, why in rejects:
        reason = why.split(":")[0]
        counts[reason] = counts.get(reason, 0) + 1
        firsts.setdefault(reason, f"{place}: {why}")
    shown = "; ".join(list(firsts.values())[:REJECTS_SHOWN])
    return f" ({', '.join(f'{n:,} {reason}' for reason, n in counts.items())}; e.g. {shown})"


def _repeats(planned: int, counted: int | None, usable: float, heldout: float | int) -> str:
    """The note for a rows or token budget beyond the ``counted`` rows of a source less its held-out ones: the run
    up-samples, each row repeated (and seen again every epoch)."""
    if not counted:
        return ""
    held = heldout_count(heldout, counted)
    available = counted - held
    if available <= 0 or planned <= available:
        return ""
    rows = ("~" if usable < 1 else "") + _many(available, "row") + (f" left after {held:,} held out" if held else "")
    return f"; more than its {rows}: each row ~{planned / available:.1f} times (up-sampled)"


def _what_is_read(path: Path) -> str:
    if not path.is_dir():
        return "the file"
    from tempa.sft.sources import is_saved_dataset

    return "the saved dataset" if is_saved_dataset(path) else "the folder's data files"


def _many(count: int, thing: str) -> str:
    return f"{count:,} {thing}{'' if count == 1 else 's'}"


def tokens_from_recipe(config: SFTStageConfig, inputs: EstimateInputs) -> TokenCount:
    total_tokens, total_rows, normalised_rows, notes, unknown, upper = 0, 0, 0, [], [], []
    data = config.data
    sizes = dict(inputs.dataset_sizes)
    counter = sample_counter(inputs.tokenizer)
    limits = token_limits(data.curation, config.train_args().get("max_length"))
    languages = accepted_languages(config)
    for source in data.sources:
        avg = avg_tokens_per_row(source, inputs.avg_tokens_thinking_on, inputs.avg_tokens_thinking_off)
        size = source_size(source, data.heldout_for(source), avg, sizes, counter, limits, data.curation,
                           languages.get(source.name))
        if size.rows is None:
            unknown.append(source.name)
            notes.append(f"source {source.name}: {size.how}; set rows or tokens to estimate it")
            continue
        tokens = source.tokens if source.tokens is not None else size.rows * size.tokens_per_row
        total_tokens, total_rows = total_tokens + tokens, total_rows + size.rows
        if normalised_first(data.curation, source):
            normalised_rows += size.rows
        if size.at_most:
            upper.append(source.name)
        notes.append(f"source {source.name}: {size.how}")
    where = "recipe sizes x tokens/row"
    if len(unknown) == len(data.sources):
        return TokenCount(None, None, where, notes)
    if unknown:
        where += f"; at least: {', '.join(unknown)} not counted"
    bound = {(True, False): ">=", (False, True): "<=", (True, True): "~"}.get((bool(unknown), bool(upper)), "")
    notes.append(prep_note(total_tokens, total_rows, data.num_proc, bound, language=data.curation.language is not None,
                           dedup=data.curation.dedup is not None, normalised_rows=normalised_rows))
    return TokenCount(total_tokens, total_rows, where, notes, bound=bound)


def accepted_languages(config: SFTStageConfig) -> Mapping[str, frozenset[str]]:
    """Each source's accepted languages (``languages:`` under ``curation.language``), by source name; {} where the
    recipe names a language the detector does not know (the recipe's own check refuses it)."""
    from tempa.sft.data import check_languages

    try:
        return check_languages(config.data)
    except DataError:  # a language code the detector does not know: the recipe's check says so; size unfiltered
        return {}


def prep_note(tokens: int, rows: int, num_proc: int | None, bound: str = "", cores: int | None = None, *,
              language: bool = False, dedup: bool = False, normalised_rows: int = 0) -> str:
    """The plan's data-prep line: how long reading, rendering and tokenising ``tokens`` takes before training
    starts, and the phases the curation adds (:func:`~tempa.sft.data_config.prep_seconds`), each named with its rate.

    The plan may run elsewhere than the training node, so it gives this machine's figure and a 128-core
    node's (an 8-GPU node has 100+ cores).
    """
    here = cores or available_cores()
    workers = workers_for(rows, num_proc, here)
    phases = {"language": language, "dedup": dedup, "normalised_rows": normalised_rows}
    node = format_eta(prep_seconds(tokens, rows, num_proc, 128, **phases))
    counted = [f"reading and saving {PREP_SERIAL_TOKENS_PER_SECOND:,} tokens/s in one process",
               f"tokenising {PREP_TOKENS_PER_CORE_SECOND:,} tokens/s and {PREP_ROW_SECONDS * 1000:g} ms a row per process"]
    if normalised_rows:
        counted.append(f"normalising {_many(normalised_rows, 'row')} first {PREP_NORMALISE_ROW_SECONDS * 1000:g} ms a "
                       "row per process")
    if language:
        counted.append(f"language ID {PREP_LANGUAGE_ROW_SECONDS * 1000:g} ms a row per process")
    if dedup:
        counted.append(f"dedup {PREP_DEDUP_ROW_SECONDS * 1000:g} ms a row in one process")
    return (f"data prep before the first step: {bound or '~'}"
            f"{format_eta(prep_seconds(tokens, rows, num_proc, here, **phases))} "
            f"(h:mm:ss) in {workers} process{'es' if workers > 1 else ''} on this machine's {here} cores, "
            f"{bound or '~'}{node} on a node's 128 cores (counts {'; '.join(counted)}); cached after")


def tokens_from_mix(mix: DataMix) -> TokenCount:
    samples = sum(source.samples_kept for source in mix.sources)
    return TokenCount(mix.total.tokens_kept, samples or mix.total.rows_kept, "the stage's data mix (it has run)")


def estimate_sft(config: SFTStageConfig, inputs: EstimateInputs) -> TrainingWorkload:
    """The sft stage's plan hook: one epoch's tokens, its trl arguments and LoRA settings."""
    from tempa.sft.stage import SFTResult

    result = inputs.result
    tokens = (tokens_from_mix(result.data) if isinstance(result, SFTResult)
              else tokens_from_recipe(config, inputs))
    return TrainingWorkload(tokens=tokens, train_args=config.train_args(), lora=config.lora)


FORMAT_PROBE_ROWS = 16  # rows `tempa plan` reads of each local JSON Lines source to tell a format that fits none


def _first_rows(source: SourceConfig, rows: int) -> list[tuple[int, Any]]:
    """(line number, the row as a Conversation, or why it is none) of the first ``rows`` rows of a local JSON Lines
    source; [] for any other source. What `tempa plan` reads of a source's data: those lines only."""
    from tempa.chat_templates.json_files import parse_line, read_lines
    from tempa.sft.formats import RowError, normalize_row, spec_for

    path = Path(source.path)
    if source.stage_ref is not None or not path.is_file() or not is_json_lines(path):
        return []
    spec, out = spec_for(source), []
    for line in read_lines(path):
        if line.blank:
            continue
        parsed = parse_line(line)
        read: Any = parsed.error
        if read is None:
            try:
                read = normalize_row(parsed.value, spec)
            except RowError as exc:
                read = str(exc)
        out.append((line.number, read))
        if len(out) >= rows:
            break
    return out


def format_problem(source: SourceConfig, rows: int = FORMAT_PROBE_ROWS) -> str | None:
    """Why none of the first ``rows`` rows of a local JSON Lines source is one its ``format`` reads (the run would
    reject them all, and most likely every row after them), or None: `tempa plan` warns with it, where before the
    stage ahead trained and this one failed on "all N rows were rejected"."""
    read = _first_rows(source, rows)
    if not read or any(not isinstance(row, str) for _, row in read):
        return None
    number, error = read[0]
    rows_read = "its first row is not" if len(read) == 1 else f"none of its first {len(read):,} rows is"
    return (f"data source '{source.name}': {rows_read} a row of format {source.format} (line {number}: {error}); "
            "the run rejects such rows")


def _head_batch(source: SourceConfig, rows: int) -> tuple[dict[str, list[Any]], list[str]]:
    """The first ``rows`` rows of a local file source, columns as :func:`tempa.sft.sources.load_source` gives them,
    and where each is ("line 3", "row 0"); empty for other sources. Only those rows are read (a JSON document:
    parsed whole, as the run parses it)."""
    from tempa.chat_templates.json_files import read_lines
    from tempa.sft.sources import RAW, READ_ERROR, csv_head, json_rows

    path = Path(source.path)
    if source.stage_ref is not None or not path.is_file():
        return {}, []
    suffix = path.suffix.lower()
    if is_json_lines(path):
        lines = list(itertools.islice((line for line in read_lines(path) if not line.blank), rows))
        return ({RAW: [line.text for line in lines], READ_ERROR: [line.error for line in lines]},
                [f"line {line.number}" for line in lines])
    if suffix == ".json":
        texts = json_rows(path)[:rows]
        return {RAW: texts}, [str(RowPlace(None, "row", i)) for i in range(len(texts))]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows), None)
        table = batch.to_pydict() if batch is not None else {}
    elif suffix == ".csv":
        import pyarrow as pa

        table = pa.Table.from_pandas(csv_head(path, rows), preserve_index=False).to_pydict()
    else:
        return {}, []
    count = len(next(iter(table.values()), []))
    return table, [str(RowPlace(None, "row", i)) for i in range(count)]


def rejects_problem(source: SourceConfig, cur: CurationConfig, accepted: frozenset[str] | None,
                    rows: int = FORMAT_PROBE_ROWS) -> str | None:
    """Why the stage's filters (``cur``, the ``accepted`` languages) would reject every one of the first ``rows`` rows
    of a local file source, with the commonest reason and the first row it rejects, or None: `tempa plan` and the
    run's start warn with it, where before a later stage failed on "all N rows were rejected" after the stages
    ahead of it trained. A warning, not a refusal: the rows after the first may be kept."""
    from tempa.sft.data import normalize_sample

    try:
        batch, places = _head_batch(source, rows)
        normalized = normalize_sample(batch, source, cur, accepted) if places else []
    except Exception:  # a file the run cannot read: check_inputs refuses it, in the run's words
        return None
    if not normalized or any(not isinstance(row, str) for row in normalized):
        return None
    reasons = collections.Counter(row.split(":")[0] for row in normalized)
    commonest, count = reasons.most_common(1)[0]
    place, why = next((place, row) for place, row in zip(places, normalized, strict=True)
                      if row.split(":")[0] == commonest)
    rows_read = "its one row" if len(normalized) == 1 else f"all of its first {len(normalized):,} rows"
    return (f"data source '{source.name}': the stage's filters reject {rows_read} ({count:,} {commonest}; "
            f"e.g. {place}: {why}); the run fails on a source with no rows left")


def _drawn_conversations(source: SourceConfig) -> tuple[list[Any], int]:
    """The rows of :data:`SAMPLED_ROWS` drawn evenly across a local source that its format reads (Conversations), and
    how many rows it holds; ([], 0) for a source the plan cannot read (a hub dataset, an earlier stage's data)."""
    from tempa.sft.formats import RowError, normalize_row, spec_for

    if source.stage_ref is not None:
        return [], 0
    found = scan_local_rows(source.path, SAMPLED_ROWS, source.split)
    if found is None or found.error is not None:
        return [], 0
    spec, conversations = spec_for(source), []
    for row in found.row_objects():
        with contextlib.suppress(RowError, TypeError, AttributeError):
            conversations.append(normalize_row(row, spec))
    return conversations, found.rows


def trace_problem(source: SourceConfig) -> str | None:
    """Why a source set to think (``thinking_mode: on``) will teach no thinking, or None: none of up to 256 readable
    rows drawn across it has a reasoning trace in an assistant turn, and a row without one trains with thinking off.
    The run said so only at its end, in the bake's note on the default mode (a new user's trial). The rows are drawn
    across the file: a file of plain rows followed by traced ones (two files joined) was warned of on its first rows."""
    # ``on`` is the default, which renders each row in the mode its text fits: only a source the recipe sets to
    # think says it expects traces
    if source.thinking_mode != "on" or "thinking_mode" not in source.model_fields_set:
        return None
    conversations, total = _drawn_conversations(source)
    own = [c for c in conversations if c.thinking_mode is None]  # a row's own mode wins over the source's
    if not own or any(turn.get("reasoning_content") for c in own for turn in c.messages
                      if turn.get("role") == "assistant"):
        return None
    if total == 1:
        rows_read = "its one row has no"
    elif len(own) == total:
        rows_read = f"none of its {total:,} rows has a"
    else:
        rows_read = f"none of {len(own):,} rows drawn across its {total:,} has a"
    return (f"data source '{source.name}': thinking_mode is on, but {rows_read} reasoning "
            "trace (reasoning_content, thinking, reasoning, or a think block in the answer); a row without one "
            "trains with thinking off; give the rows their traces, or set the source's thinking_mode to off")

