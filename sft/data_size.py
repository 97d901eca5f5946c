"""How many rows and tokens an sft stage's data holds, without preparing it (for `tempa plan --hardware`).

Once the stage has run, its data mix is exact. Before, each source is sized from its ``tokens`` /
``rows`` setting, or the row count of a local file; a ``stage:NAME`` source takes the size its
producer declares (an upper bound until that stage has run). Tokens per row are measured on a sample
of a local JSON Lines file (:func:`sampled_tokens_per_row`: the samples the pipeline would build from
each row, counted with the base model's tokenizer when it is on this machine, else at
:data:`BYTES_PER_TOKEN`); other sources get an assumed length that depends on their thinking mode.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tempa.chat_templates.json_files import text_error
from tempa.chat_templates.thinking import last_user_index
from tempa.sft.config import SFTStageConfig
from tempa.sft.data_config import (
    PREP_SERIAL_TOKENS_PER_SECOND,
    PREP_TOKENS_PER_CORE_SECOND,
    DataError,
    SourceConfig,
    available_cores,
    prep_seconds,
    token_limits,
    workers_for,
)
from tempa.sft.data_report import DataMix
from tempa.sft.expand import turn_views
from tempa.sft.formats import RowError, normalize_row, spec_for
from tempa.sft.stage_api import EstimateInputs, SourceSize, TokenCount, TrainingWorkload
from tempa.sft.throughput_summary import format_eta

SAMPLED_ROWS = 256  # rows of a local JSON Lines file read to measure its tokens per row
# Without the base model's tokenizer: UTF-8 bytes of text per token. Llama 3's tokenizer measured 3.5 on
# English model cards, 4.1 on Python code, and 2.4 (Indonesian), 3.6 (Japanese), 7.2 (Thai) on short chat turns.
BYTES_PER_TOKEN = 4.0
# Template tokens, as tempa's Llama 3 and ChatML templates render: a turn's role header and end marker,
# the think block every answer after the last user message carries (empty or not), the begin-of-text token.
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
SampledLine = bytes | int  # a line, or the length of one over LONG_LINE_BYTES


@dataclass(frozen=True)
class LocalRows:
    """A local file's row count, and up to :data:`SAMPLED_ROWS` of its lines drawn evenly at random (JSONL)."""

    rows: int
    sample: list[SampledLine]


def scan_local_rows(path: str, sample: int = 0) -> LocalRows | None:
    """Rows of a local JSONL/CSV/Parquet file without loading it, in one pass; None for anything else.

    ``sample``: JSON Lines only, that many non-blank lines kept by reservoir sampling (a fixed seed), so
    a file sorted by length is sampled as fairly as a shuffled one.
    """
    file = Path(path)
    if not file.is_file():
        return None
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return LocalRows(int(pq.ParquetFile(file).metadata.num_rows), [])
    if suffix == ".csv":  # records, not lines: a quoted field may hold newlines
        with open(file, encoding="utf-8", errors="replace", newline="") as text:
            return LocalRows(max(0, sum(1 for record in csv.reader(text) if record) - 1), [])
    if suffix != ".jsonl":
        return None
    kept: list[SampledLine] = []
    pick = random.Random(0)
    lines = 0
    with open(file, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            if len(kept) < sample:
                kept.append(line if len(line) <= LONG_LINE_BYTES else len(line))
            elif sample and (slot := pick.randrange(lines + 1)) < sample:
                kept[slot] = line if len(line) <= LONG_LINE_BYTES else len(line)
            lines += 1
    return LocalRows(lines, kept)


def count_local_rows(path: str) -> int | None:
    """Rows of a local JSONL/CSV/Parquet file without loading it; None for anything else."""
    found = scan_local_rows(path)
    return found.rows if found is not None else None


def _bytes_per_token(texts: list[str]) -> list[int]:
    return [math.ceil(len(t.encode("utf-8")) / BYTES_PER_TOKEN) for t in texts]


def token_counter(tokenizer_file: Path | None) -> tuple[TokenCounter, str]:
    """Counts the tokens of texts, and how: the base model's ``tokenizer.json``, else UTF-8 bytes / 4."""
    fallback = f"~{BYTES_PER_TOKEN:g} bytes of text per token"
    if tokenizer_file is not None:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # the plan still stands without it; say why it was not used
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return _bytes_per_token, f"{fallback} ({tokenizer_file} could not be read: {first})"
        return (lambda texts: [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)],
                "the base model's tokenizer")
    return _bytes_per_token, fallback


@dataclass(frozen=True)
class SampledLength:
    """What a sample of a source's rows says of its length, as the pipeline will tokenise it."""

    tokens_per_row: int  # tokens of the samples kept, per row measured
    rows: int  # sampled lines that are rows the pipeline keeps (the others become rejects)
    lines: int  # lines sampled
    outside_limits: float = 0.0  # share of the samples longer or shorter than the token limits (dropped)


def sampled_tokens_per_row(source: SourceConfig, lines: Sequence[SampledLine], count: TokenCounter,
                           limits: tuple[int | None, int | None] = (None, None)) -> SampledLength:
    """Tokens the pipeline's samples hold per row, measured on ``lines`` of a JSON Lines source.

    Each row is normalised as the pipeline does and expanded into the renderings that train its turns
    (:func:`tempa.sft.expand.turn_views`; a rendering that is a prefix of a later one trains inside it),
    so history without reasoning and repeated prefixes count as they will; a ``mixed`` source weighs the
    thinking and non-thinking renderings by its ratio. A sample outside ``limits`` (min, max tokens: the
    curation's and the stage's ``max_length``) is dropped, as the pipeline drops it. Lines that are not
    rows of the source are skipped (they become rejects); a line over :data:`LONG_LINE_BYTES` is one sample
    of its bytes / :data:`BYTES_PER_TOKEN`. Template tokens: :data:`TOKENS_PER_TURN` and the like.
    """
    spec = spec_for(source)
    conversations = []
    for line in lines:
        if isinstance(line, int):
            continue
        try:
            text = line.decode("utf-8-sig")
            row = json.loads(text)
            usable = isinstance(row, dict) and text_error(text, row) is None
            conversations.append(normalize_row(row, spec) if usable else None)
        except (ValueError, RowError, DataError):
            continue
    # A row with nothing to train is a reject, not a row of no tokens.
    conversations = [c for c in conversations if c is not None and any(t["role"] == "assistant" for t in c.messages)]
    long_lines = [math.ceil(line / BYTES_PER_TOKEN) for line in lines if isinstance(line, int)]
    rows = len(conversations) + len(long_lines)
    if not rows:
        return SampledLength(0, 0, len(lines))
    share_on = {"on": 1.0, "off": 0.0}.get(source.thinking_mode, source.thinking_ratio or 0.0)
    renderings = [(share, _renderings(conv.messages, thinking), conv.tools)
                  for conv in conversations for thinking, share in ((True, share_on), (False, 1 - share_on)) if share]
    texts = sorted({text for _, views, tools in renderings for text in _texts(views, tools)})
    tokens = dict(zip(texts, count(texts), strict=True))
    low, high = limits
    kept = samples = outside = 0.0
    measured = [(share, _rendering_tokens(view, tools, tokens)) for share, views, tools in renderings for view in views]
    for share, n in measured + [(1.0, n) for n in long_lines]:
        samples += share
        if (low is not None and n < low) or (high is not None and n > high):
            outside += share
        else:
            kept += share * n
    return SampledLength(round(kept / rows), rows, len(lines), outside / samples)


def _renderings(messages: Sequence[Mapping[str, Any]], thinking: bool) -> list[list[dict[str, Any]]]:
    """The conversations the pipeline renders for one row.

    A turn trains inside a later rendering only where that rendering shows it as it was generated: a
    step of the same tool loop (after the last user message); before a later user message it is history.
    """
    kept: list[list[dict[str, Any]]] = []
    for view in turn_views(messages, thinking):  # last turn first, as expand() assembles them
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


def source_size(source: SourceConfig, heldout: float | int, avg: int,
                dataset_sizes: dict[str, SourceSize], count: TokenCounter, counted_by: str,
                limits: tuple[int | None, int | None] = (None, None)) -> SourceSize:
    """Rows per epoch of one source (held-out rows removed, weight applied) and its tokens per row.

    ``avg``: the tokens per row assumed where they cannot be measured; ``count`` measures them on a sample
    of a local JSON Lines file (``counted_by`` says how it counts), keeping the samples within ``limits``.
    """
    local = None if source.stage_ref is not None else scan_local_rows(source.path, SAMPLED_ROWS)
    measured = f"~{avg:,} tokens/row assumed ({source.thinking_mode})"
    usable = 1.0  # the share of the file's lines that are rows the pipeline keeps
    if local is not None and local.rows == 0:
        measured += "; the file has no rows: the run will fail on this source"
    elif local is not None and local.sample:
        sampled = sampled_tokens_per_row(source, local.sample, count, limits)
        usable = sampled.rows / sampled.lines
        if not sampled.rows:
            measured += (f"; none of its {sampled.lines:,} sampled lines is a row tempa can train on (not JSON, not "
                         "the source's format, or no assistant turn): the run will fail on this source")
        else:
            avg = sampled.tokens_per_row
            measured = (f"~{sampled.tokens_per_row:,} tokens/row measured on {sampled.rows:,} sampled rows with "
                        f"{counted_by} ({source.thinking_mode})")
            if sampled.rows < sampled.lines:
                bad = sampled.lines - sampled.rows
                measured += (f"; {bad:,} of {sampled.lines:,} sampled lines {'is not a row' if bad == 1 else 'are not rows'}"
                             " it can train on and will be rejected")
            if sampled.outside_limits:
                measured += (f"; {sampled.outside_limits:.0%} of their samples fall outside the token limits "
                             f"({_limits_text(limits)}) and will be rejected")
    if source.tokens is not None:
        return SourceSize(max(1, source.tokens // max(1, avg)), avg, f"token budget {source.tokens:,}, {measured}")
    if source.rows is not None:
        return SourceSize(source.rows, avg, f"rows {source.rows:,}, {measured}")
    if source.stage_ref is not None and source.stage_ref in dataset_sizes:
        size = dataset_sizes[source.stage_ref]
        measured = f"~{size.tokens_per_row:,} tokens/row assumed ({source.thinking_mode})"
    elif local is not None:
        rows = round(local.rows * usable)
        how = f"{local.rows:,} rows in the file" if rows == local.rows else \
            f"{local.rows:,} lines in the file, ~{rows:,} of them rows"
        size = SourceSize(rows, avg, how)
    elif Path(source.path).is_file():
        size = SourceSize(None, avg, f"a local {Path(source.path).suffix or 'file'} file, not counted before preparing")
    else:
        size = SourceSize(None, avg, "unknown size (a hub dataset or folder with no rows/tokens setting)")
    if size.rows is None:
        return size
    kept = size.rows * (1 - heldout) if isinstance(heldout, float) else max(0, size.rows - heldout)
    weight = source.weight if source.weight is not None else 1.0
    held = f" less {heldout:g} held out" if heldout else ""
    return replace(size, rows=round(kept * weight), how=f"{size.how}{held} x weight {weight:g}, {measured}")


def tokens_from_recipe(config: SFTStageConfig, inputs: EstimateInputs) -> TokenCount:
    total_tokens, total_rows, notes, unknown, upper = 0, 0, [], [], []
    data = config.data
    sizes = dict(inputs.dataset_sizes)
    count, counted_by = token_counter(inputs.tokenizer_file)
    limits = token_limits(data.curation, config.train_args().get("max_length"))
    for source in data.sources:
        avg = avg_tokens_per_row(source, inputs.avg_tokens_thinking_on, inputs.avg_tokens_thinking_off)
        size = source_size(source, data.heldout_for(source), avg, sizes, count, counted_by, limits)
        if size.rows is None:
            unknown.append(source.name)
            notes.append(f"source {source.name}: {size.how}; set rows or tokens to estimate it")
            continue
        tokens = source.tokens if source.tokens is not None else size.rows * size.tokens_per_row
        total_tokens, total_rows = total_tokens + tokens, total_rows + size.rows
        if size.at_most:
            upper.append(source.name)
        notes.append(f"source {source.name}: {size.how}")
    where = "recipe sizes x tokens/row"
    if len(unknown) == len(data.sources):
        return TokenCount(None, None, where, notes)
    if unknown:
        where += f"; at least: {', '.join(unknown)} not counted"
    bound = {(True, False): ">=", (False, True): "<=", (True, True): "~"}.get((bool(unknown), bool(upper)), "")
    notes.append(prep_note(total_tokens, total_rows, data.num_proc, bound))
    return TokenCount(total_tokens, total_rows, where, notes, bound=bound)


def prep_note(tokens: int, rows: int, num_proc: int | None, bound: str = "", cores: int | None = None) -> str:
    """The plan's data-prep line: how long rendering and tokenising ``tokens`` takes before training starts.

    The plan may run elsewhere than the training node, so it gives this machine's figure and a 128-core
    node's (an 8-GPU node has 100+ cores).
    """
    here = cores or available_cores()
    workers = workers_for(rows, num_proc, here)
    node = format_eta(prep_seconds(tokens, rows, num_proc, 128))
    return (f"data prep before the first step: {bound or '~'}{format_eta(prep_seconds(tokens, rows, num_proc, here))} "
            f"(h:mm:ss) in {workers} process{'es' if workers > 1 else ''} on this machine's {here} cores, "
            f"{bound or '~'}{node} on 128 cores ({PREP_TOKENS_PER_CORE_SECOND:,} tokens/s per process, reading and "
            f"saving {PREP_SERIAL_TOKENS_PER_SECOND:,} tokens/s in one); cached after")


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
