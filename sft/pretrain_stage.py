"""The `pretrain` stage: raw text -> token-budgeted, mixed, chunked documents -> the one training worker.

Data work happens here, once, in the runner's process (as for `sft`): each source's documents are
tokenised as the tokenizer encodes plain text (Llama 3: its bos first) with an eos after each, taken
in order up to the source's token budget (the last document cut; a source with ``repeat`` and fewer
tokens than its budget is gone over again, in order, until the budget is reached), split into
chunks of at most ``max_length`` tokens, and the chunks of all sources are shuffled together with
the recipe seed. A chunk is one row (``input_ids`` and an all-ones ``assistant_masks``); trl's BFD
packing then fills each training sequence with several rows and restarts ``position_ids`` at every
row, which the per-document attention (``sft.packed_attention``) turns into a block-diagonal mask: no
token attends across a document boundary, and every token is in the loss (``assistant_only_loss``
is off). The tokenised data is cached under the shared cache, keyed by the sources' content
fingerprints, the settings, the tokenizer and the seed; training resumes from the last complete
checkpoint, as `sft` does.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tempa.sft.checkpoints import complete_checkpoints
from tempa.sft.files import digest, tree_digest, write_json
from tempa.sft.paths import display_path
from tempa.sft.pretrain_config import PretrainSource, PretrainStageConfig
from tempa.sft.stage import launch_training
from tempa.sft.stage_api import (
    EstimateInputs,
    StageContext,
    StageError,
    StageResult,
    TokenCount,
    TrainingWorkload,
)
from tempa.sft.train_plan import train_plan

COMPLETE = "COMPLETE"
# Bump when the prepared rows change for the same inputs (2: a document starts with its bos; 3: repeat, and no
# held-out chunk also trained on).
_PREPARE_VERSION = 3
TOKENS_METRIC = "tokens:"  # a pretrain stage's metric `tokens:NAME`: the tokens source NAME gave


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
    tokens: int = Field(description="Tokens taken, an eos after each document included.")
    share_of_tokens: float


class PretrainMix(BaseModel):
    """What a pretrain stage trained on: per source, documents and tokens; in all, chunks and epochs."""

    model_config = ConfigDict(extra="forbid")

    sources: list[PretrainSourceMix]
    tokens: int
    chunks: int | None = Field(default=None, description="Rows of at most max_length tokens the documents became.")
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
    """Where the prepared chunks are, and how many tokens each source gave."""

    train_path: Path
    eval_path: Path | None
    tokens: dict[str, int]
    documents: dict[str, int]
    chunks: int
    passes: dict[str, float | None]  # PretrainSourceMix.passes, per source


def chunk_document(ids: list[int], max_length: int) -> list[list[int]]:
    """A document's tokens in pieces of at most ``max_length`` (each piece one packed row)."""
    return [ids[i: i + max_length] for i in range(0, len(ids), max_length)]


def document_tokens(tokenizer: Any, text: str, eos: list[int]) -> list[int]:
    """A document as the base model was pre-trained on it: the tokenizer's own encode of plain text (Llama 3 puts
    <|begin_of_text|> first; a packed document starts at position 0, where the model always saw it), then ``eos``
    (none added when the tokenizer ends an encode with it already)."""
    ids = tokenizer(text)["input_ids"]
    return ids if eos and ids[-len(eos):] == eos else ids + eos


class Taken(NamedTuple):
    """What :func:`budgeted` took of a source."""

    documents: list[list[int]]  # in order; with repeat, the passes one after another (the last one cut)
    tokens: int
    whole: int | None  # the tokens the whole source holds; None when the budget stopped before its end
    distinct: int  # source documents taken, each counted once


def budgeted(documents: Iterable[list[int]], budget: int | None, *, repeat: bool = False) -> Taken:
    """Documents (token lists) in order until ``budget`` tokens, the last one cut; with ``repeat``, a source that
    ends first is gone over again, in the same order, until the budget is reached."""
    taken, total, ended = _take(documents, budget)
    if not ended:
        return Taken(taken, total, None, len(taken))
    whole, distinct = total, len(taken)
    if repeat and budget is not None and 0 < whole < budget:
        one_pass = list(taken)
        while total < budget:
            more, count, _ = _take(one_pass, budget - total)
            taken.extend(more)
            total += count
    return Taken(taken, total, whole, distinct)


def _take(documents: Iterable[list[int]], budget: int | None) -> tuple[list[list[int]], int, bool]:
    """Documents in order until ``budget`` tokens (the last one cut), their tokens, and whether they all fitted."""
    taken, total = [], 0
    for ids in documents:
        if budget is not None and total + len(ids) > budget:
            if budget - total > 0:
                taken.append(ids[: budget - total])
                total = budget
            return taken, total, False
        taken.append(ids)
        total += len(ids)
    return taken, total, True


def _texts(source: PretrainSource, loaded: Any) -> Any:
    """Each document's text, in order; a row without a text string (in JSON Lines: a line that is not JSON) is an
    error naming it; blank lines are skipped."""
    from tempa.chat_templates.json_files import Line, parse_line
    from tempa.sft.sources import RAW, READ_ERROR, row_names

    raw = RAW in loaded.column_names
    if not raw and source.text_field not in loaded.column_names:
        raise StageError(f"data source '{source.name}': no '{source.text_field}' column (columns: "
                         f"{', '.join(loaded.column_names)}); set text_field")
    names = row_names(_as_sft_source(source))
    for index, row in enumerate(loaded):
        where = f"data source '{source.name}', {names.label(index)}"
        if raw:
            line = parse_line(Line(index + 1, row[RAW], row.get(READ_ERROR)))
            if line.blank:
                continue
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
        yield value


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


def txt_documents(source: PretrainSource, files: list[Path]) -> Iterator[str]:
    """The documents of .txt ``files``, file after file, as ``source.txt_document`` cuts them (a file, a block
    between blank lines, a line); a BOM dropped, CRLF read as LF; a byte that is not UTF-8 is an error naming it."""
    mode = source.txt_document or "file"
    folder = Path(source.path)
    for file in files:
        name = _name_in(file, folder)
        text = _utf8(file.read_bytes(), f"data source '{source.name}', {name}")
        text = text.removeprefix("\ufeff").replace("\r\n", "\n")
        if mode == "file":
            yield text
        elif mode == "paragraph":
            yield from (block.strip("\n") for block in re.split(r"\n[ \t]*\n", text))
        else:
            yield from text.split("\n")


def _name_in(file: Path, folder: Path) -> str:
    from tempa.chat_templates.json_files import name_below

    return name_below(file, folder) if folder.is_dir() else file.name


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line, line_start = data.count(b"\n", 0, error.start) + 1, data.rfind(b"\n", 0, error.start) + 1
        raise StageError(f"{where}: line {line}: invalid UTF-8 (byte 0x{data[error.start]:02x} at column "
                         f"{error.start - line_start + 1})") from None


def _as_sft_source(source: PretrainSource):
    from tempa.sft.data_config import SourceConfig

    return SourceConfig.model_construct(name=source.name, path=source.path, split=source.split,
                                        subset=source.subset, revision=source.revision)


def check_inputs(config: PretrainStageConfig) -> None:
    """Before the run's first stage: every local source has rows to read (:func:`~tempa.sft.sources.check_source`)."""
    from tempa.chat_templates.json_files import has_text
    from tempa.sft.data_config import DataError
    from tempa.sft.sources import check_source

    for source in config.sources:
        files = txt_files(source)
        if files is None:
            check_source(_as_sft_source(source))
        elif not any(map(has_text, files)):
            raise DataError(f"data source '{source.name}' ({source.path}): has no text (its .txt files are empty or blank)")


def prepare_pretrain_data(config: PretrainStageConfig, tokenizer: Any, tokenizer_dir: Path, cache_dir: Path,
                          seed: int) -> PretrainData:
    """Tokenise, budget, chunk and mix the sources (cached: a second call with the same inputs reads the cache)."""
    import datasets
    import numpy as np

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
                  "tokenizer": tree_digest(Path(tokenizer_dir))})
    entry = cache_dir / key[:16]
    if (entry / COMPLETE).is_file():
        stats = json.loads((entry / "stats.json").read_text(encoding="utf-8"))
        return PretrainData(entry / "train", entry / "eval" if (entry / "eval").is_dir() else None,
                            stats["tokens"], stats["documents"], stats["chunks"], stats["passes"])

    chunks: list[list[int]] = []
    tokens, documents, passes = {}, {}, {}
    eos = [tokenizer.eos_token_id] if config.add_eos and tokenizer.eos_token_id is not None else []
    for source in config.sources:
        def encoded(source=source):
            files = texts[source.name]
            read = _texts(source, loaded[source.name]) if files is None else txt_documents(source, files)
            for text in read:
                if text.strip():  # a blank document has nothing to learn
                    yield document_tokens(tokenizer, text, eos)

        taken = budgeted(encoded(), source.tokens, repeat=source.repeat)
        if taken.tokens == 0:
            raise StageError(f"data source '{source.name}': no text to train on")
        tokens[source.name], documents[source.name] = taken.tokens, taken.distinct
        passes[source.name] = round(taken.tokens / taken.whole, 4) if taken.whole else None
        chunks.extend(piece for ids in taken.documents for piece in chunk_document(ids, max_length))
    order = np.random.default_rng(seed).permutation(len(chunks))
    n_eval = round(config.heldout * len(chunks))
    if config.heldout and n_eval == 0 and len(chunks) > 1:
        n_eval = 1
    train_order = order[n_eval:]
    if n_eval:
        # A repeated document (or one the source holds twice) must not be trained on while its copy measures eval
        # loss: every copy of a held-out chunk leaves the training rows.
        held = {tuple(chunks[i]) for i in order[:n_eval]}
        train_order = [i for i in train_order if tuple(chunks[i]) not in held]

    def dataset(indices) -> datasets.Dataset:
        rows = [chunks[i] for i in indices]
        return datasets.Dataset.from_dict({"input_ids": rows, "assistant_masks": [[1] * len(r) for r in rows]})

    shutil.rmtree(entry, ignore_errors=True)  # an incomplete earlier attempt
    dataset(train_order).save_to_disk(str(entry / "train"))
    if n_eval:
        dataset(order[:n_eval]).save_to_disk(str(entry / "eval"))
    write_json(entry / "stats.json", {"tokens": tokens, "documents": documents, "chunks": len(chunks),
                                      "passes": passes})
    (entry / COMPLETE).write_text("")  # last: a folder without it is never reused
    return PretrainData(entry / "train", entry / "eval" if n_eval else None, tokens, documents, len(chunks),
                        passes)


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
    data = prepare_pretrain_data(config, tokenizer, ctx.tokenizer_dir,
                                 (ctx.cache_dir or ctx.stage_dir / "cache") / "pretrain-data", ctx.seed)
    ctx.log.info("%s: %s tokens in %d chunks (%s)", ctx.stage_name, f"{sum(data.tokens.values()):,}", data.chunks,
                 ", ".join(f"{name} {count:,}" for name, count in data.tokens.items()))
    for level, line in budget_lines(config, data):
        ctx.log.log(level, "%s: %s", ctx.stage_name, line)
    plan = train_plan(ctx, trainer="sft", start_model=ctx.start_model, train_data=data.train_path,
                      eval_data=data.eval_path, out_dir=ctx.stage_dir, train_args=config.train_args(), seed=ctx.seed)
    outcome = launch_training(plan, ctx)
    metrics = {**outcome.headline(), "data_tokens": sum(data.tokens.values()), "chunks": data.chunks,
               **{f"{TOKENS_METRIC}{name}": count for name, count in data.tokens.items()}}
    epochs = outcome.train.get("epoch")
    mix = mix_of(data.tokens, data.documents, chunks=data.chunks, sources=config.sources, passes=data.passes,
                 epochs=float(epochs) if isinstance(epochs, int | float) else None)
    return PretrainResult(model=plan.final_dir, checkpoints=complete_checkpoints(plan.checkpoints_dir),
                          metrics=metrics, data=mix)


def mix_of(tokens: dict[str, int], documents: dict[str, int], *, chunks: int | None,
           sources: Sequence[PretrainSource], epochs: float | None = None,
           passes: dict[str, float | None] | None = None) -> PretrainMix:
    """The mix of per-source ``tokens``, ``documents`` and ``passes``; ``sources``: their recipe entries (path and
    budget)."""
    total = sum(tokens.values())
    entries = {source.name: source for source in sources}
    return PretrainMix(
        sources=[PretrainSourceMix(
            name=name, tokens=count, documents=documents.get(name), share_of_tokens=round(count / (total or 1), 4),
            passes=(passes or {}).get(name),
            path=display_path(entries[name].path) if name in entries else "",
            token_budget=entries[name].tokens if name in entries else None) for name, count in tokens.items()],
        tokens=total, chunks=chunks, epochs=epochs)


def estimate_pretrain(config: PretrainStageConfig, inputs: EstimateInputs) -> TrainingWorkload:
    """Tokens per epoch: the sum of the sources' token budgets (unbudgeted sources are not sized)."""
    budgets = [s.tokens for s in config.sources]
    known = sum(b for b in budgets if b is not None)
    unsized = [s.name for s in config.sources if s.tokens is None]
    notes = [_budget_note(s) for s in config.sources]
    tokens = TokenCount(known or None, None, "token budgets", notes, bound=">=" if unsized and known else "")
    return TrainingWorkload(tokens=tokens, train_args=config.train_args())


def _budget_note(source: PretrainSource) -> str:
    if source.tokens is None:
        return f"source {source.name}: no token budget, not sized"
    if source.repeat:
        return f"source {source.name}: token budget {source.tokens:,} (repeat: gone over again if it holds fewer)"
    return (f"source {source.name}: token budget {source.tokens:,} (fewer if it holds fewer; `repeat: true` goes "
            "over it again up to the budget)")
