"""The SFT data pipeline: load -> normalise -> curate -> mix -> expand -> tokenise -> cache.

``prepare_sft_data`` is what the ``sft`` stage calls. It returns pre-tokenised ``input_ids`` and
``assistant_masks`` (what trl's SFTTrainer accepts; it builds labels from the masks, truncates and
packs), and writes ``mix.json`` and ``rejects.jsonl`` into the stage folder.

Order of work, per source unless noted:

1. load (JSON/JSONL as raw text, so a broken line is a reject, not a crash; JSON Lines files are read
   by the workers of step 2 or 4, each its own lines);
2. normalise to ``messages`` and run the row-local filters (malformed reasoning, role order,
   PII, language, evaluation prompts) in one ``datasets.map``;
3. thinking mode per conversation (a row's own ``thinking_mode``, else its source's ``on``/``off``/``mixed``: a
   share of the rows the row filters keep, drawn by content, :mod:`tempa.sft.mixing`);
4. expand multi-turn conversations (:mod:`tempa.chat_templates.expand`), tokenise with the tokenizer's own
   template, drop samples outside the token limits; a row a ``mixed`` source drew on that the limits drop whole
   is tokenised again with thinking off;
5. exact/near duplicates (in recipe order across sources), then template instructions, among the
   conversations with a sample left: the copy a duplicate leaves is one that trains; then a ``mixed`` source's
   share on is drawn again among the rows left, rows that fit with thinking on taking the places of rows that
   do not (:func:`_balance_thinking`: only the rows whose mode changes are tokenised again);
6. held-out split (drawn by instruction, so rows added to a source keep the old rows' split), then sizing
   (weight/rows/tokens), on whole conversations;
7. concatenate, shuffle with the seed, save.

Step 4 runs in ``num_proc`` forked worker processes (default: one per core, at most one per 500 rows of
a source; :func:`tempa.sft.data_config.workers_for`), in chunks of equal bytes handed to whichever worker
is free (:func:`tempa.sft.forked_workers.forked_map`); every count gives the same data. Step 2 runs in the
same workers, in one pass with step 4, for a source whose rows no step compares with each other (no
``dedup``, no ``template_instructions``, thinking ``on`` or ``off``: the defaults but ``mixed``); else
first, in worker processes of its own for sources of 10,000+ rows (it costs about 1/10 of step 4
per row). Both give the same data.

Reports (in ``out_dir``; rows are conversations, tokens count every token of the rendered samples):

- ``mix.json`` (:class:`tempa.sft.data_report.DataMix`): per source its size setting and thinking
  mode, ``rows_in`` (rows read), ``rows_curated`` (rows_in less the rows the row filters, duplicates and template
  instructions reject: the last two are found in step 5, so the tokenising progress bar counts rows they then
  reject), ``rows_tokenized`` / ``tokens_in`` (rows_curated less the rows the length limits reject whole, and
  their tokens), ``heldout_rows`` / ``heldout_tokens`` (copies of an
  instruction held out together), ``heldout_rows_trained_elsewhere`` (their instruction trains in
  another source) and ``heldout_rows_trained_earlier`` (an earlier stage trained the start model on it), ``rows_kept`` (with repeats when up-sampled), ``samples_kept``, ``tokens_kept``,
  ``trained_tokens_kept``, ``thinking_on_rows_kept``, ``tool_rows_kept``, ``share_of_tokens`` and rejects by reason, plus totals; the same
  table is logged.
- ``rejects.jsonl``: ``{source, row, reason, detail, data}`` per rejected row, plus ``line`` (1-based)
  for JSON Lines sources; ``row`` is the 0-based row index in the source (for JSON Lines, the line
  index: blank lines count); ``data`` is the row as read, or its normalised messages;
  ``<reason>_turn`` marks one turn dropped from a kept row.

Once a source is prepared (built or cached), one log line gives its rejects by reason, turns
dropped apart, and the path of the stage's ``rejects.jsonl``.

The result is cached under a hash of the data, the chat template, the tokenizer, the data
config, the seed, ``max_length`` and the evaluation prompts kept out; a complete cache entry carries a ``COMPLETE`` marker written
last and is moved into place atomically, so a partial build is never reused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

import datasets
import numpy as np
from datasets import Features, List, Value
from tqdm.auto import tqdm

from tempa.chat_templates.expand import Sample, TurnView, assemble, turn_views
from tempa.chat_templates.json_files import Line, parse_line
from tempa.chat_templates.one_line import first_line
from tempa.sft import curation, language
from tempa.sft.curation import Deduplicator, Reason
from tempa.sft.data_config import (
    NORMALISE_ROWS_PER_PROCESS,
    CurationConfig,
    DataConfig,
    DataError,
    SourceConfig,
    normalised_first,
    token_limits,
    worker_count,
)
from tempa.sft.data_report import TURN_SUFFIX, DataMix, MixTotals, SourceMix
from tempa.sft.files import cache_build, digest, publish_build, remove_tree, sweep_dead_builds
from tempa.sft.forked_workers import Rows, forked_map, frozen_heap
from tempa.sft.formats import (
    ARROW_NULLS,
    TRAIN,
    UNKNOWN_TURN_KEY,
    Conversation,
    FormatSpec,
    RowError,
    check_columns,
    normalize_row,
    spec_for,
    trains,
    user_instruction,
    uses_tools,
)
from tempa.sft.mixing import (
    MIX_SHUFFLE,
    assign_thinking,
    content_key,
    renders_on,
    rng_for,
    select_rows,
    split_heldout,
    thinking_on_count,
    thinking_picks,
)
from tempa.sft.paths import display_path
from tempa.sft.run_layout import COMPLETE
from tempa.sft.sources import (
    RAW,
    READ_ERROR,
    RowNames,
    check_mapping,
    describe,
    is_local,
    json_lines_files,
    load_source,
    row_names,
    source_fingerprint,
)
from tempa.sft.stage_api import EvalPrompts
from tempa.sft.tokenization import (
    ChatEncoder,
    Rendered,
    check_template,
    special_token_texts,
    tokenizer_fingerprint,
)

logger = logging.getLogger(__name__)

# Bump when a change to this pipeline changes its output, so old cache entries are not reused.
# 7: held-out and thinking draws by content; 8: a row's own thinking_mode; 9: a mixed share counted on the rows kept;
# 10, 11: a reject's row holding personal data or a key is not copied into rejects.jsonl; 12: signed JSON Web Tokens
# and AWS secret access keys are credentials; 13: a row's boolean thinking_mode, and turns written as JSON text, are read;
# 14: text read as NFC; 15: a turn's `thinking` key before its `reasoning` key (transformers' order); 16: a turn's
# weight/train flag, Arrow's unified struct keys dropped, tool definitions screened, calls matched to results and tools.
PIPELINE_VERSION = "16"
MIX_FILE, REJECTS_FILE = "mix.json", "rejects.jsonl"
INSTRUCTIONS_FILE = "instructions.npz"  # a cache entry's StageInstructions
_BLANK = "__blank__"  # JSONL blank lines: skipped, neither rows nor rejects

_TOOL_CALL = {
    "id": Value("string"),
    "type": Value("string"),
    "function": {"name": Value("string"), "arguments": Value("string")},
}
_MESSAGE = {
    "role": Value("string"),
    "content": Value("string"),
    "reasoning_content": Value("string"),
    "tool_calls": List(_TOOL_CALL),
    "tool_call_id": Value("string"),
    "name": Value("string"),
    TRAIN: Value("bool"),  # False: context only (``weight: 0`` in the row); None: trained
}
_CURATED = Features(
    {
        "messages": List(_MESSAGE),
        "tools": Value("string"),  # the row's tool definitions as JSON (None without any)
        "row": Value("int64"),
        "reject": Value("string"),
        "detail": Value("string"),
        "data": Value("string"),
        "instruction": Value("string"),
        "has_reasoning": Value("bool"),
        "thinking_mode": Value("string"),  # the row's own (on/off), None: its source's
        "key": Value("int64"),  # the conversation's content, hashed: its place in the thinking draw
        "notes": List(Value("string")),  # :attr:`tempa.sft.formats.Conversation.notes`, for the source's log line
    }
)
_TOKENIZED = Features(
    {
        "input_ids": List(Value("int32")),
        "assistant_masks": List(Value("int8")),
        "conv": Value("int64"),
        "row": Value("int64"),
        "turn": Value("int32"),
        "thinking": Value("bool"),
        "tool_row": Value("bool"),  # its conversation offers tools or holds a tool loop (:func:`uses_tools`)
        "n_tokens": Value("int64"),
        "n_trained": Value("int64"),
        "group": Value("int64"),  # its conversation's instruction as dedup compares it, hashed (held out together)
        "reject": Value("string"),
        "detail": Value("string"),
        "data": Value("string"),  # a reject's row as JSON, for rejects.jsonl (None for a kept sample)
        "notes": List(Value("string")),  # one pass: its row's notes, on the row's first sample only (else empty)
    }
)
TRAIN_COLUMNS = ["input_ids", "assistant_masks"]


@dataclass(frozen=True)
class StageInstructions:
    """The instructions (:func:`_instruction_group` keys, as dedup normalises them) a prepared stage trains on, and
    each source's held-out rows' instructions (one per row, in recipe order of the sources): what a later stage that
    builds on this one's model checks its held-out rows against."""

    trained: frozenset[int]
    held: tuple[tuple[int, ...], ...] = ()

    def write(self, path: Path) -> None:
        arrays = {f"held_{i}": np.array(held, dtype=np.int64) for i, held in enumerate(self.held)}
        with open(path, "wb") as out:  # (np.savez adds .npz to a name without it)
            np.savez(out, trained=np.array(sorted(self.trained), dtype=np.int64), **arrays)

    @classmethod
    def read(cls, path: Path) -> StageInstructions | None:
        """None for no file: a cache entry or stage of a tempa that did not record them."""
        if not Path(path).is_file():
            return None
        with np.load(path) as data:
            held = tuple(tuple(int(k) for k in data[f"held_{i}"])
                         for i in range(sum(name.startswith("held_") for name in data.files)))
            return cls(frozenset(int(k) for k in data["trained"]), held)


@dataclass
class PreparedData:
    """What ``prepare_sft_data`` hands the training stage.

    ``train``/``eval`` have exactly the columns ``input_ids`` and ``assistant_masks`` (0/1, same
    length); they are memory-mapped from ``train_path``/``eval_path`` in the cache, which a
    launched training process can ``load_from_disk`` directly.
    """

    train: datasets.Dataset
    eval: datasets.Dataset | None
    mix: DataMix
    cache_hit: bool
    cache_path: Path
    train_path: Path
    eval_path: Path | None = None
    instructions: StageInstructions | None = None  # None: a cache entry of a tempa that did not record them


def prepare_sft_data(
    config: DataConfig,
    tokenizer: Any,
    *,
    out_dir: Path,
    cache_dir: Path,
    seed: int,
    max_length: int | None = None,
    eval_prompts: EvalPrompts | None = None,
    trained_before: frozenset[int] = frozenset(),
) -> PreparedData:
    """Build (or reuse from ``cache_dir``) the tokenised SFT data described by ``config``.

    Args:
        config: the stage's data block.
        tokenizer: a fast tokenizer whose chat template (with ``{% generation %}``) is the recipe's.
        out_dir: the stage folder; receives mix.json and rejects.jsonl.
        cache_dir: where tokenised data is cached across runs.
        seed: the recipe seed; the same seed and inputs give the same rows in the same order.
        max_length: the trainer's ``max_length``; longer samples are rejected (``too_long``)
            instead of being truncated, which would cut off the answer and its end-of-turn token.
        eval_prompts: the recipe's evaluation prompts; with ``curation.decontaminate`` a row whose
            instruction is one is rejected (``contaminated``).
        trained_before: the instructions the stages before this one trained its start model on
            (:class:`StageInstructions`); held-out rows with one of them are counted in mix.json
            (``heldout_rows_trained_earlier``) and warned about: their eval loss is not on unseen prompts.

    Raises:
        DataError: one line naming the source, the row and what was expected, for a source that
            cannot be read or whose rows are all rejected.
    """
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    template = check_template(tokenizer)
    languages = check_languages(config)
    contaminants = contamination_index(config, eval_prompts)
    loaded: dict[str, datasets.Dataset] = {}
    key = cache_key(config, tokenizer, template, seed=seed, max_length=max_length, loaded=loaded, cache_dir=cache_dir,
                    contaminants=contaminants)
    entry = cache_dir / key
    hit = (entry / COMPLETE).exists()
    if hit:
        logger.info("SFT data: cache hit %s", entry)
    else:
        if entry.exists():
            logger.warning("SFT data: discarding incomplete cache entry %s", entry)
            remove_tree(entry, [cache_dir])
        for path in sweep_dead_builds(cache_dir):
            logger.warning("SFT data: removed %s, a build its killed process left in the cache", path)
        with cache_build(cache_dir, key) as build_dir:
            try:
                with frozen_heap():
                    _build(config, tokenizer, build_dir, seed=seed, max_length=max_length, languages=languages,
                           contaminants=contaminants, loaded=loaded, cache_dir=cache_dir, key=key,
                           shown_rejects=out_dir / REJECTS_FILE)
            except DataError:
                # The error points at rejects.jsonl: leave the rejects found so far where the user looks.
                if (build_dir / REJECTS_FILE).exists():
                    out_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(build_dir / REJECTS_FILE, out_dir / REJECTS_FILE)
                raise
            publish_build(build_dir, entry, COMPLETE, key + "\n")
    return _open_entry(entry, out_dir, hit, config.sources, trained_before)


def _open_entry(entry: Path, out_dir: Path, hit: bool, sources: Sequence[SourceConfig],
                trained_before: frozenset[int] = frozenset()) -> PreparedData:
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(entry / REJECTS_FILE, out_dir / REJECTS_FILE)
    mix = DataMix.read(entry / MIX_FILE)
    instructions = StageInstructions.read(entry / INSTRUCTIONS_FILE)
    if instructions is not None and trained_before:
        # Counted after the cache: the same prepared rows serve a stage whatever trained before it.
        mix = _count_heldout_trained_earlier(mix, instructions, sources, trained_before)
    mix.write(out_dir / MIX_FILE)
    logger.info("SFT data mix (seed %s%s):\n%s", mix.seed, ", cached" if hit else "", mix.table())
    for source, stats in zip(sources, mix.sources, strict=True):
        if stats.rejects:
            logger.info("%s: %s; see %s", describe(source), stats.rejects_summary(), out_dir / REJECTS_FILE)
        _log_notes(source, stats.notes)
    eval_path = entry / "eval"
    return PreparedData(
        train=datasets.load_from_disk(str(entry / "train")),
        eval=datasets.load_from_disk(str(eval_path)) if eval_path.exists() else None,
        mix=mix,
        cache_hit=hit,
        cache_path=entry,
        train_path=entry / "train",
        eval_path=eval_path if eval_path.exists() else None,
        instructions=instructions,
    )


def _count_heldout_trained_earlier(mix: DataMix, instructions: StageInstructions, sources: Sequence[SourceConfig],
                                   trained_before: frozenset[int]) -> DataMix:
    """``mix`` with each source's held-out rows whose instruction an earlier stage trained the start model on
    counted (``heldout_rows_trained_earlier``), one warning per source that has any."""
    counted = []
    for source, stats, held in zip(sources, mix.sources, instructions.held, strict=True):
        n = sum(1 for group in held if group in trained_before)
        if n:
            logger.warning("%s: %d of its %d held-out rows have an instruction an earlier stage trained this stage's "
                           "start model on; their eval loss is not on unseen prompts (hold out rows no earlier stage "
                           "trains on, or the same heldout in the earlier stage)", describe(source), n, len(held))
        counted.append(stats.model_copy(update={"heldout_rows_trained_earlier": n}))
    return mix.model_copy(update={"sources": counted})


# --- cache key ------------------------------------------------------------------------------------


def cache_key(
    config: DataConfig,
    tokenizer: Any,
    template: str,
    *,
    seed: int,
    max_length: int | None,
    loaded: dict[str, datasets.Dataset] | None = None,
    cache_dir: Path | None = None,
    contaminants: Mapping[str, str] | None = None,
) -> str:
    """Hash of everything the prepared data depends on: data, template, tokenizer, config, seed, and the
    evaluation prompts kept out of it (``contaminants``, :func:`contamination_index`).

    The chat template is hashed on its own: a changed template must miss even when the tokenizer
    files are otherwise identical (open-instruct once reused masks built with an old template).
    """
    data = {}
    for source in config.sources:
        if not is_local(source) and loaded is not None:
            # Hub sources are fingerprinted by the loaded split; keep it for the build.
            loaded[source.name] = load_source(source, cache_dir=cache_dir)
        data[source.name] = source_fingerprint(source, dataset=(loaded or {}).get(source.name))
    settings = config.model_dump(mode="json", exclude={"num_proc"})
    payload = {
        "pipeline": PIPELINE_VERSION,
        "config": settings,
        "seed": seed,
        "max_length": max_length,
        "template": digest(template),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "data": data,
        "eval_prompts": digest(sorted((contaminants or {}).items())),
    }
    return digest(payload)[:32]


def contamination_index(config: DataConfig, eval_prompts: EvalPrompts | None) -> dict[str, str]:
    """The evaluation prompts training rows must not be, by normalised instruction (none with decontaminate off)."""
    if not config.curation.decontaminate or eval_prompts is None:
        return {}
    return curation.contamination_index([(p.instruction, p.where) for p in eval_prompts.prompts])


def check_languages(config: DataConfig) -> dict[str, frozenset[str]]:
    """Accepted language codes per source, failing early on a code the detector does not know."""
    if config.curation.language is None:
        return {}
    out = {}
    for source in config.sources:
        if not source.languages:
            continue
        try:
            language.check_codes(source.languages)
        except ValueError as error:
            raise DataError(f"{describe(source)}: {error}") from None
        out[source.name] = language.accepted(source.languages, config.curation.language.equivalent)
    return out


# --- the build ------------------------------------------------------------------------------------


@dataclass
class _SourceState:
    source: SourceConfig
    raw: datasets.Dataset | Rows | None = None  # as read; normalised in the tokenising pass (``_one_pass``)
    normalize: dict[str, Any] = field(default_factory=dict)  # ``_normalize_batch``'s settings for the source
    names: RowNames = field(default_factory=RowNames)  # how messages name its rows
    curated: datasets.Dataset | None = None  # normalised ahead of tokenising (rows compared with each other)
    rows_in: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)  # rows by :attr:`Conversation.notes` entry
    first_rejects: dict[str, str] = field(default_factory=dict)  # each reason's first reject's detail
    stats: dict[str, Any] = field(default_factory=dict)
    thinking: list[bool] = field(default_factory=list)  # per curated row: rendered with thinking on (first draw)
    renderings: _Renderings | None = None  # a ``mixed`` source's rows as rendered on and off (:class:`_Renderings`)
    held_groups: list[int] = field(default_factory=list)  # the held-out rows' instructions (``_instruction_group``)
    trained_groups: set[int] = field(default_factory=set)  # the instructions of the rows it trains on


class _RejectWriter:
    """rejects.jsonl: one line per rejected row, with its source, row, reason and data.

    ``shown`` is where the user finds the file (the stage folder), named in error messages.
    """

    def __init__(self, handle: TextIO, shown: Path) -> None:
        self.handle = handle
        self.shown = shown

    def write(self, state: _SourceState, row: int, reason: str, detail: str, data: Any) -> None:
        state.rejects[reason] += 1
        state.first_rejects.setdefault(reason, detail)
        record: dict[str, Any] = {"source": state.source.name, "row": row}
        place = state.names.place(row)
        if place.file is not None:  # in a folder: the file, and the line or row in it
            record.update(file=place.file, **{"line" if place.unit == "line" else "file_row": place.number})
        elif place.unit == "line":
            record["line"] = place.number
        record.update(reason=reason, detail=detail, data=data)
        self.handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def _build(
    config: DataConfig,
    tokenizer: Any,
    build_dir: Path,
    *,
    seed: int,
    max_length: int | None,
    languages: Mapping[str, frozenset[str]],
    contaminants: Mapping[str, str],
    loaded: dict[str, datasets.Dataset],
    cache_dir: Path,
    key: str,
    shown_rejects: Path,
) -> None:
    work = build_dir / "work"
    work.mkdir()
    cur = config.curation
    specials = special_token_texts(tokenizer)
    states = [_SourceState(source) for source in config.sources]
    with open(build_dir / REJECTS_FILE, "w", encoding="utf-8") as handle:
        rejects = _RejectWriter(handle, shown_rejects)
        # 1-2: load, normalise, row-local filters (for a one-pass source, in step 4's workers).
        for i, state in enumerate(states):
            # JSON Lines files are read by the workers that map them, each its own lines: no Arrow copy first.
            lines = json_lines_files(state.source)
            raw: datasets.Dataset | Rows | None = lines
            if raw is None:
                raw = loaded.get(state.source.name)
                if raw is None:
                    raw = load_source(state.source, cache_dir=cache_dir)
                _check_raw(raw, state.source)
            state.names = row_names(state.source, lines)  # after loading: a JSON document's rows are counted then
            state.normalize = _normalize_settings(state.source, cur, languages.get(state.source.name), specials,
                                                  state.names, contaminants)
            if _one_pass(cur, state.source):
                state.raw = raw
            else:
                state.curated = forked_map(
                    raw, _normalize_batch,
                    workers=worker_count(config.num_proc, len(raw), NORMALISE_ROWS_PER_PROCESS),
                    fn_kwargs=state.normalize, features=_CURATED, cache_file=work / f"{i}-curated.arrow",
                    desc=f"Normalising {state.source.name}",
                )
        # Every source's normalising rejects, and its "no usable row" error, before any source's tokenising
        # rejects: the same rejects.jsonl and the same first error for either path.
        encoder = ChatEncoder(tokenizer)
        limits = token_limits(cur, max_length)
        tokenized: list[datasets.Dataset | None] = [None] * len(states)
        for i, state in enumerate(states):
            if state.curated is not None:
                state.curated = _split_rejects(state, rejects)
            else:
                tokenized[i] = _tokenize(state, encoder, limits, seed=seed, num_proc=config.num_proc,
                                         cache_file=work / f"{i}-tokens.arrow")
                _split_row_rejects(state, tokenized[i], rejects)
        # 3-4: thinking, tokenise; a row a mixed source drew on that is too long so rendered off.
        tokenize = {"encoder": encoder, "min_tokens": limits[0], "max_tokens": limits[1]}
        for i, state in enumerate(states):
            if tokenized[i] is None:
                tokenized[i] = _tokenize(state, encoder, limits, seed=seed, num_proc=config.num_proc,
                                         cache_file=work / f"{i}-tokens.arrow")
                if state.source.thinking_mode == "mixed":
                    state.renderings = _Renderings(tokenized[i], state.thinking, work / f"{i}-tokens.arrow")
                    tokenized[i] = _fit_thinking(state, tokenize=tokenize, num_proc=config.num_proc)
        ready = [tokens for tokens in tokenized if tokens is not None]
        # 5: rows compared with each other, in recipe order, among the rows that can train: a copy kept that the
        # length limits then reject would leave its prompt in no source.
        compared = _compare_rows(states, ready, cur)
        # 5b: a mixed source's share on, among the rows that train or are held out.
        for i, (state, dropped) in enumerate(zip(states, compared, strict=True)):
            if state.renderings is not None:
                ready[i] = _balance_thinking(state, dropped, seed=seed, tokenize=tokenize, num_proc=config.num_proc)
        # 6: held-out split and sizing.
        parts, train_index, eval_index, offset = [], [], [], 0
        for state, tokens, dropped in zip(states, ready, compared, strict=True):
            train_rows, eval_rows = _mix(state, tokens, rejects, seed=seed, heldout=config.heldout_for(state.source),
                                         dropped=dropped)
            parts.append(tokens)
            train_index.extend(offset + r for r in train_rows)
            eval_index.extend(offset + r for r in eval_rows)
            offset += len(tokens)
    _count_heldout_trained_elsewhere(states)
    # 7: one shuffled training set, one eval set, both with exactly the trainer's columns.
    everything = datasets.concatenate_datasets(parts).select_columns(TRAIN_COLUMNS, new_fingerprint=_unhashed())
    order = rng_for(seed, "__mix__", MIX_SHUFFLE).permutation(len(train_index))
    train = everything.select([train_index[i] for i in order], new_fingerprint=_unhashed())
    if len(train) == 0:
        # Every source kept rows (else it failed above) and held some back for training: sizing took none.
        raise DataError(f"no training rows left: no source's size setting selects a row (see the warnings "
                        f"above); rejects: {shown_rejects}")
    train.save_to_disk(str(build_dir / "train"))
    if eval_index:
        everything.select(eval_index, new_fingerprint=_unhashed()).save_to_disk(str(build_dir / "eval"))
    _report(states, seed=seed, key=key, n_train=len(train), n_eval=len(eval_index)).write(build_dir / MIX_FILE)
    StageInstructions(frozenset().union(*(state.trained_groups for state in states)),
                      tuple(tuple(state.held_groups) for state in states)).write(build_dir / INSTRUCTIONS_FILE)
    del parts, everything, train
    remove_tree(work, [build_dir])


def _unhashed() -> str:
    """A fingerprint for a ``datasets`` transform, so that it does not hash its arguments to make one: the
    index lists and new columns of a prepare, pickled and hashed, took 0.1 s of a 3,000-row prepare's part
    that stays in one process. ``datasets`` uses fingerprints only for its own map cache; tempa caches by
    its own key."""
    return uuid.uuid4().hex


def _values(ds: datasets.Dataset, column: str) -> list[Any]:
    """A column as a list. Iterating ``ds[column]`` (a lazy ``Column``) formats one row at a time: about
    50x slower, 0.1 s of a 3,000-row prepare's serial part."""
    return ds[column][:]


# --- 2: normalise + row-local filters -------------------------------------------------------------


@lru_cache(maxsize=8)
def _specials_pattern(specials: tuple[str, ...]) -> re.Pattern[str] | None:
    # One alternation instead of a substring test per token: Llama 3 has 256 reserved tokens.
    return re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))) if specials else None


def row_rejects(
    messages: list[dict[str, Any]],
    curation_config: CurationConfig,
    accepted_languages: frozenset[str] | None,
    specials: Sequence[str] = (),
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> Reason | None:
    """The first row-local filter that rejects ``messages`` (offering ``tools``), in the documented order, or None."""
    pattern = _specials_pattern(tuple(specials))
    # The tokenizer would read a special token's text as the control token and corrupt the turn structure; the tool
    # definitions are rendered into the prompt as well.
    places = [*((f"turn {i}", curation.turn_texts(turn)) for i, turn in enumerate(messages)),
              *((f"tools[{k}]", curation.json_texts(tool)) for k, tool in enumerate(tools or ()))]
    for where, texts in places:
        for text in texts:
            found = pattern.search(text) if pattern is not None else None
            if found is not None:
                return curation.MALFORMED_ROW, f"{where}: contains the special token {found.group()!r}"
    tool_calls = curation.check_tool_calls(messages, tools)
    if tool_calls is not None:
        return tool_calls
    checks: list[Callable[[], Reason | None]] = []
    if curation_config.malformed_reasoning:
        checks.append(lambda: curation.check_reasoning(messages))
    if curation_config.role_order:
        checks.append(lambda: curation.check_role_order(messages))
    if curation_config.pii is not None:
        pii = curation_config.pii
        checks.append(lambda: curation.check_pii(messages, pii))
    if curation_config.language is not None and accepted_languages:
        lang = curation_config.language
        checks.append(lambda: curation.check_language(messages, accepted_languages, lang))
    for check in checks:
        reason = check()
        if reason is not None:
            return reason
    if not any(trains(t) for t in messages):
        marked = any(t["role"] == "assistant" for t in messages)
        return curation.MALFORMED_ROW, "no assistant turn to train on" + (
            " (every one is marked weight 0 / train false)" if marked else "")
    return None


def _normalize_batch(
    batch: dict[str, list[Any]],
    indices: list[int],
    *,
    spec: FormatSpec,
    names: RowNames,
    curation_config: CurationConfig,
    accepted_languages: frozenset[str] | None,
    specials: Sequence[str],
    contaminants: Mapping[str, str],
) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {name: [] for name in _CURATED}

    def emit(row: int, conversation: Conversation, reason: Reason | None, data: Any = None) -> None:
        messages = conversation.messages
        out["messages"].append(messages)
        out["tools"].append(None if conversation.tools is None else json.dumps(conversation.tools, ensure_ascii=False))
        out["row"].append(row)
        out["reject"].append(reason[0] if reason else None)
        out["detail"].append(reason[1] if reason else None)
        text = None if reason is None else json.dumps(data, ensure_ascii=False, default=str)
        if text is not None and curation_config.pii is not None and curation.find_pii(text, curation_config.pii):
            # a row another check rejected first is not scanned by the PII check: what it holds stays in the source
            text = json.dumps(None)
        out["data"].append(text)
        out["instruction"].append(user_instruction(messages) if reason is None else "")
        out["has_reasoning"].append(any(t.get("reasoning_content") for t in messages))
        out["thinking_mode"].append(conversation.thinking_mode)
        out["key"].append(_conversation_key(conversation) if reason is None else 0)
        out["notes"].append(sorted(conversation.notes))

    columns = [name for name in batch if name != READ_ERROR]
    read_errors = batch.get(READ_ERROR)
    for k, index in enumerate(indices):
        label = names.label(index)
        if RAW in batch:
            line = parse_line(Line(index + 1, batch[RAW][k], read_errors[k] if read_errors else None))
            if line.blank:
                emit(index, Conversation([]), (_BLANK, ""))
                continue
            if line.error is not None:
                emit(index, Conversation([]), (curation.MALFORMED_ROW, f"{label}: {line.error}"), line.text)
                continue
            row = line.value
        else:
            row = {name: batch[name][k] for name in columns}
        try:
            conversation = normalize_row(row, spec, arrow=RAW not in batch)
        except RowError as exc:
            emit(index, Conversation([]), (curation.MALFORMED_ROW, f"{label}: {exc}"), row)
            continue
        reason = row_rejects(conversation.messages, curation_config, accepted_languages, specials, conversation.tools)
        if reason is None:
            reason = curation.check_contamination(user_instruction(conversation.messages), contaminants)
        if reason is not None:
            # The personal data or credential a row was rejected for is not copied into rejects.jsonl: the detail
            # names the turn and the kind, the label the source line.
            data = None if reason[0] == curation.PII else conversation.messages
            emit(index, conversation, (reason[0], f"{label}: {reason[1]}"), data)
        else:
            emit(index, conversation, None)
    return out


def normalize_sample(
    batch: Mapping[str, list[Any]], source: SourceConfig, cur: CurationConfig,
    accepted: frozenset[str] | None = None, specials: Sequence[str] = (),
) -> list[Conversation | str]:
    """The conversation the pipeline makes of each row of ``batch`` (columns as :func:`load_source` gives
    them), or for a row normalising or a row-local filter rejects, why (``malformed_row: not JSON ...``): what
    ``tempa plan`` measures a source on, and says of its rows."""
    rows = len(next(iter(batch.values()), []))
    settings = _normalize_settings(source, cur, accepted, specials, RowNames(), {})  # (the plan names its rows)
    curated = _normalize_batch(dict(batch), list(range(rows)), **settings)
    return [Conversation(messages, json.loads(tools) if tools else None, mode) if reason is None else
            f"{reason}: {detail.removeprefix(f'row {row}: ')}"
            for messages, tools, mode, reason, detail, row in zip(
                curated["messages"], curated["tools"], curated["thinking_mode"], curated["reject"], curated["detail"],
                curated["row"], strict=True)]


def sample_lengths(
    conversations: Sequence[Conversation], thinking: Sequence[bool], encoder: ChatEncoder,
    limits: tuple[int | None, int | None],
) -> list[list[tuple[int, str | None]]]:
    """Per conversation (rendered with thinking on where ``thinking`` says), the samples tokenising makes of
    it: their tokens and the reason each is rejected (``too_long``...), None for one kept."""
    rows = list(range(len(conversations)))
    out = _tokenize_batch(
        {"messages": [c.messages for c in conversations],
         "tools": [None if c.tools is None else json.dumps(c.tools, ensure_ascii=False) for c in conversations],
         "row": rows, "thinking": list(thinking)},
        rows, encoder=encoder, min_tokens=limits[0], max_tokens=limits[1])
    samples: list[list[tuple[int, str | None]]] = [[] for _ in rows]
    for conv, tokens, reject in zip(out["conv"], out["n_tokens"], out["reject"], strict=True):
        samples[conv].append((tokens, reject))
    return samples


def _check_raw(raw: datasets.Dataset, source: SourceConfig) -> None:
    if RAW not in raw.column_names:
        check_mapping(source, raw.column_names)
        check_columns(raw.column_names, spec_for(source), describe(source))
    if len(raw) == 0:
        raise DataError(f"{describe(source)}: has no rows")


def _normalize_settings(
    source: SourceConfig, cur: CurationConfig, accepted: frozenset[str] | None, specials: Sequence[str],
    names: RowNames, contaminants: Mapping[str, str],
) -> dict[str, Any]:
    """:func:`_normalize_batch`'s keyword arguments for ``source`` (``names``: how its rows are named;
    ``contaminants``: :func:`contamination_index`)."""
    return {
        "spec": spec_for(source),
        "names": names,
        "curation_config": cur,
        "accepted_languages": accepted,
        "specials": list(specials),
        "contaminants": contaminants,
    }


def _one_pass(cur: CurationConfig, source: SourceConfig) -> bool:
    """Whether ``source`` is normalised inside the tokenising workers, in one pass over its rows: when no step
    compares its rows with each other (:func:`~tempa.sft.data_config.normalised_first`). That saves normalising in one process (a
    pool for it pays only from about 10,000 rows) and the normalised copy of the source written and read back; the
    data is the same either way."""
    return not normalised_first(cur, source)


# --- 5: duplicates and templates ------------------------------------------------------------------


def _trainable(tokenized: datasets.Dataset) -> list[int]:
    """The conversations (positions in the curated source) with at least one sample the length limits keep."""
    meta = tokenized.select_columns(["conv", "reject"], new_fingerprint=_unhashed()).to_pandas()
    return sorted(int(conv) for conv in meta.loc[meta["conv"].ge(0) & meta["reject"].isna(), "conv"].unique())


def _compare_rows(
    states: Sequence[_SourceState], tokenized: Sequence[datasets.Dataset], cur: CurationConfig
) -> list[dict[int, Reason]]:
    """Per source, the conversations that duplicates and template instructions reject, by position in its curated
    rows (a one-pass source: none, no step compares its rows).

    Only conversations that can train take part (:func:`_trainable`), so the copy kept is one that trains. Every
    worker count gives the same tokenised rows, and this runs in one process in recipe order: the same rejects.
    """
    dropped: list[dict[int, Reason]] = [{} for _ in states]
    if cur.dedup is None and cur.template_instructions is None:
        return dropped
    candidates: list[list[tuple[int, str, int]]] = []  # per source: (position, instruction, row)
    for state, tokens in zip(states, tokenized, strict=True):
        ds = state.curated
        if ds is None:
            candidates.append([])
            continue
        positions = _trainable(tokens)
        instructions, rows = _values(ds, "instruction"), _values(ds, "row")
        candidates.append([(p, instructions[p], rows[p]) for p in positions])
    _mark_duplicates(states, candidates, cur, dropped)
    _mark_templates(states, candidates, cur, dropped)
    return dropped


def _mark_duplicates(states: Sequence[_SourceState], candidates: Sequence[Sequence[tuple[int, str, int]]],
                     cur: CurationConfig, dropped: list[dict[int, Reason]]) -> None:
    if cur.dedup is None:
        return
    dedup = Deduplicator(cur.dedup)
    for state, rows, out in zip(states, candidates, dropped, strict=True):
        if cur.dedup.scope == "source":
            dedup = Deduplicator(cur.dedup)
        for position, instruction, row in tqdm(rows, desc=f"Dedup {state.source.name}", disable=len(rows) < 10_000):
            found = dedup.offer(instruction, f"{state.source.name} {state.names.label(row)}")
            if found is not None:
                out[position] = (found[0], f"{state.names.label(row)}: {found[1]}")


def _mark_templates(states: Sequence[_SourceState], candidates: Sequence[Sequence[tuple[int, str, int]]],
                    cur: CurationConfig, dropped: list[dict[int, Reason]]) -> None:
    config = cur.template_instructions
    if config is None:
        return
    indices = list(range(len(states)))
    groups = [indices] if config.scope == "global" else [[i] for i in indices]
    for group in groups:
        owners = [(i, position, row) for i in group for position, _, row in candidates[i] if position not in dropped[i]]
        skeletons = [curation.instruction_skeleton(instruction, config.prefix_chars)
                     for i in group for position, instruction, _ in candidates[i] if position not in dropped[i]]
        for (i, position, row), found in zip(owners, curation.template_rejects(skeletons, config), strict=True):
            if found is not None:
                dropped[i][position] = (found[0], f"{states[i].names.label(row)}: {found[1]}")


def _split_rejects(state: _SourceState, rejects: _RejectWriter) -> datasets.Dataset:
    """Write the rejected rows out, count them, and return the kept rows; fail if none are kept."""
    ds = state.curated
    assert ds is not None
    kept = [position for position, reason in enumerate(_values(ds, "reject")) if reason is None]
    _count_notes(state, _values(ds, "notes"))
    _write_normalising_rejects(state, ds, rejects, usable=len(kept))
    return ds.select(kept, new_fingerprint=_unhashed()).select_columns(
        ["messages", "tools", "row", "has_reasoning", "instruction", "thinking_mode", "key"],
        new_fingerprint=_unhashed())


def _split_row_rejects(state: _SourceState, tokenized: datasets.Dataset, rejects: _RejectWriter) -> None:
    """One pass: :func:`_split_rejects` for the rows normalising rejected, which come with the samples (``conv``
    -1, in row order)."""
    convs = np.asarray(tokenized["conv"][:])
    _count_notes(state, _values(tokenized, "notes"))
    dropped = tokenized.select(np.flatnonzero(convs < 0), new_fingerprint=_unhashed())
    _write_normalising_rejects(state, dropped, rejects, usable=len(np.unique(convs[convs >= 0])))


def _count_notes(state: _SourceState, notes: Sequence[Sequence[str] | None]) -> None:
    """Count each note once per row (``notes``: one list per row, or per sample with a row's on its first)."""
    state.notes.update(note for row_notes in notes for note in row_notes or ())


def _log_notes(source: SourceConfig, notes: Mapping[str, int]) -> None:
    """One line per note a source's rows left (:attr:`tempa.sft.formats.Conversation.notes`), each with its rows."""
    for note, n in sorted(notes.items()):
        if note == ARROW_NULLS:
            logger.warning("%s: %d rows had tool-call arguments or tool definitions stored as Arrow structs, which "
                           "give every row each key another row has, set to null; those null keys were left out (a "
                           "key set to null on purpose cannot be told apart there: store the arguments and tools as "
                           "JSON text to keep one)", describe(source), n)
        elif note.startswith(UNKNOWN_TURN_KEY):
            logger.warning("%s: %d rows have turns with a key %r that tempa does not read; it is ignored (a turn's "
                           "keys read: role, content, reasoning_content, tool_calls, tool_call_id, name, and weight "
                           "or train: whether an assistant turn trains)", describe(source), n,
                           note.removeprefix(UNKNOWN_TURN_KEY))


def _write_normalising_rejects(state: _SourceState, ds: datasets.Dataset, rejects: _RejectWriter, *,
                               usable: int) -> None:
    """Write out the rows of ``ds`` that normalising rejected (a blank line is no row), count the source's rows
    (``usable`` of them kept), and fail when it has none, or none usable."""
    rows_in = usable
    for position, reason in enumerate(_values(ds, "reject")):
        if reason is None or reason == _BLANK:
            continue
        rows_in += 1
        record = ds[position]
        rejects.write(state, record["row"], reason, record["detail"], _reject_data(record["data"]))
    state.rows_in = rows_in
    if rows_in == 0:
        raise DataError(f"{describe(state.source)}: has no rows")
    if not usable:
        raise _all_rejected(state, rejects.shown)


def _reject_data(text: str | None) -> Any:
    """A reject's row from its JSON; a line that was not JSON stays as its text."""
    with contextlib.suppress(json.JSONDecodeError, TypeError):
        return json.loads(text)  # type: ignore[arg-type]
    return text


def _all_rejected(state: _SourceState, shown: Path) -> DataError:
    counts = ", ".join(f"{reason} {n}" for reason, n in state.rejects.most_common())
    # the example is of the commonest reason: 255 rows too long and 5 evaluation prompts is a max_length problem
    common = state.rejects.most_common(1)[0][0]
    return DataError(
        f"{describe(state.source)}: all {state.rows_in} rows were rejected ({counts}); first {common}: "
        f"{state.first_rejects[common]} (see {shown})"
    )


# --- 3, 4, 6: thinking, tokenise, held out, size ----------------------------------------------------


def _sample_rows(
    samples: Sequence[Sample], min_tokens: int | None, max_tokens: int | None
) -> list[tuple[Sample | None, Reason | None]]:
    if not samples:
        return [(None, (curation.NO_TRAINABLE_TOKENS, "the template marks no assistant tokens"))]
    rows: list[tuple[Sample | None, Reason | None]] = []
    for sample in samples:
        n = len(sample.input_ids)
        reason = None
        if max_tokens is not None and n > max_tokens:
            reason = (curation.TOO_LONG, f"{n} tokens > max {max_tokens}")
        elif min_tokens is not None and n < min_tokens:
            reason = (curation.TOO_SHORT, f"{n} tokens < min {min_tokens}")
        rows.append((sample, reason))
    return rows


def _trainer_columns(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``assistant_masks`` as the arrays Arrow stores (from Python lists: 5x the time)."""
    ids = np.fromiter(sample.input_ids, dtype=np.int32, count=len(sample.input_ids))
    mask = np.zeros(len(ids), dtype=np.int8)
    for start, end in sample.trained:
        mask[start:end] = 1
    return ids, mask


_NOTHING = (np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int8))


def _tokenize_batch(
    batch: dict[str, list[Any]],
    indices: list[int],
    *,
    encoder: ChatEncoder,
    min_tokens: int | None,
    max_tokens: int | None,
) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {name: [] for name in _TOKENIZED}
    # Render every conversation of the batch first, then tokenise all texts in a row (see ChatEncoder).
    planned: list[tuple[list[TurnView], list[Rendered]] | Reason] = []
    for k in range(len(indices)):
        tools = json.loads(batch["tools"][k]) if batch["tools"][k] else None
        try:
            # a turn marked context only (weight 0) renders as history in the others' samples, and trains in none
            views = [view for view in turn_views(batch["messages"][k], batch["thinking"][k])
                     if trains(batch["messages"][k][view.turn])]
            planned.append((views, [encoder.text(view.messages, view.thinking, tools) for view in views]))
        except Exception as exc:
            # The template refuses some rows (e.g. roles out of order when that filter is off):
            # a reject with the template's message, never a crash of the whole run.
            message = first_line(exc)
            planned.append((curation.TEMPLATE_ERROR, f"chat template: {message}"))
    encoded = iter(encoder.encode([text for plan in planned if isinstance(plan[0], list) for text in plan[1]]))
    # A ``conv`` column: some rows of a source rendered again (:func:`_render_rows`), named by their place in it.
    convs = batch.get("conv", indices)
    for k, (conv, plan) in enumerate(zip(convs, planned, strict=True)):
        samples_out: list[tuple[Sample | None, Reason | None]]
        if isinstance(plan[0], list):
            views = plan[0]
            chats = [next(encoded) for _ in views]
            samples_out = _sample_rows(assemble(views, [(c.input_ids, c.trained) for c in chats]), min_tokens,
                                       max_tokens)
        else:
            samples_out = [(None, plan)]
        data = None
        notes = list(batch["notes"][k] or ()) if "notes" in batch else []
        group = _instruction_group(batch["messages"][k])
        tool_row = uses_tools(batch["messages"][k], batch["tools"][k])
        for sample, reason in samples_out:
            ids, mask = _trainer_columns(sample) if sample is not None and reason is None else _NOTHING
            if reason is not None and data is None:
                data = json.dumps(_without_nulls(batch["messages"][k]), ensure_ascii=False)
            out["input_ids"].append(ids)
            out["assistant_masks"].append(mask)
            out["conv"].append(conv)
            out["row"].append(batch["row"][k])
            out["turn"].append(sample.turns[-1] if sample is not None else -1)
            out["thinking"].append(sample.thinking if sample is not None else False)
            out["tool_row"].append(tool_row)
            out["n_tokens"].append(len(sample.input_ids) if sample is not None else 0)
            out["n_trained"].append(sample.n_trained if sample is not None else 0)
            out["group"].append(group)
            out["reject"].append(reason[0] if reason else None)
            out["detail"].append(reason[1] if reason else None)
            out["data"].append(data if reason else None)
            out["notes"].append(notes)
            notes = []
    return out


def _instruction_group(messages: Sequence[Mapping[str, Any]]) -> int:
    """A conversation's instruction, normalised as dedup compares it, as a 64-bit number: copies share it (and its
    place in the held-out draw, :func:`tempa.sft.mixing.split_heldout`)."""
    return content_key(curation.normalize_instruction(user_instruction(messages)))


def _conversation_key(conversation: Conversation) -> int:
    """A normalised conversation (turns and tools) as a 64-bit number: the same row gives the same number whatever
    its position in the file, so rows added to a source leave the old rows' draw alone."""
    # default=str: a tool definition read from Parquet may hold a timestamp or bytes, which JSON has no form for
    return content_key(json.dumps([conversation.messages, conversation.tools], ensure_ascii=False, sort_keys=True,
                                  default=str))


def _without_nulls(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # Arrow gives every turn every key of the schema; rejects.jsonl shows the turn as normalised.
    return [{key: value for key, value in turn.items() if value is not None} for turn in messages]


def _normalize_and_tokenize_batch(
    batch: dict[str, list[Any]],
    indices: list[int],
    *,
    normalize: Mapping[str, Any],
    tokenize: Mapping[str, Any],
    mode: str,
) -> dict[str, list[Any]]:
    """A one-pass batch (:func:`_one_pass`): raw rows normalised, then tokenised as conversation ``row``.

    The rows normalising rejects follow the batch's samples as rows of no conversation (``conv`` -1),
    for :func:`_mix` to write out; ``mode``: the source's thinking mode (``on`` or ``off``; a row's own wins).
    """
    curated = _normalize_batch(batch, indices, **normalize)
    kept = [k for k, reason in enumerate(curated["reject"]) if reason is None]
    out = _tokenize_batch(
        {
            "messages": [curated["messages"][k] for k in kept],
            "tools": [curated["tools"][k] for k in kept],
            "row": [curated["row"][k] for k in kept],
            "thinking": [renders_on(curated["has_reasoning"][k], curated["thinking_mode"][k], mode) for k in kept],
            "notes": [curated["notes"][k] for k in kept],
        },
        [curated["row"][k] for k in kept],
        **tokenize,
    )
    for k, reason in enumerate(curated["reject"]):
        if reason is None:
            continue
        for name, value in (("input_ids", _NOTHING[0]), ("assistant_masks", _NOTHING[1]), ("conv", -1),
                            ("row", curated["row"][k]), ("turn", -1), ("thinking", False), ("tool_row", False),
                            ("n_tokens", 0),
                            ("n_trained", 0), ("group", 0), ("reject", reason), ("detail", curated["detail"][k]),
                            ("data", curated["data"][k]), ("notes", curated["notes"][k])):
            out[name].append(value)
    return out


def _tokenize(
    state: _SourceState,
    encoder: ChatEncoder,
    limits: tuple[int | None, int | None],
    *,
    seed: int,
    num_proc: int | None,
    cache_file: Path,
) -> datasets.Dataset:
    """The tokenised samples of one source (its rows' order; normalised first for a one-pass source)."""
    source = state.source
    tokenize = {"encoder": encoder, "min_tokens": limits[0], "max_tokens": limits[1]}
    if state.raw is not None:
        rows, function = state.raw, _normalize_and_tokenize_batch
        kwargs = {"normalize": state.normalize, "tokenize": tokenize, "mode": source.thinking_mode}
    else:
        assert state.curated is not None
        thinking = assign_thinking(_values(state.curated, "has_reasoning"), source, seed, _values(state.curated, "key"),
                                   _values(state.curated, "thinking_mode"))
        state.thinking = thinking
        rows = state.curated.add_column("thinking", thinking, feature=Value("bool"), new_fingerprint=_unhashed())
        function, kwargs = _tokenize_batch, tokenize
    return forked_map(
        rows,
        function,
        workers=worker_count(num_proc, len(rows)),
        fn_kwargs=kwargs,
        features=_TOKENIZED,
        cache_file=cache_file,
        desc=f"Tokenising {source.name}",
        batch_size=64,
    )


class _Renderings:
    """A ``mixed`` source's conversations tokenised in each thinking mode tried so far (the first draw, then the rows
    rendered again), and the mode each one trains with (``on``, by position in its curated rows). Arrays, not a
    dict per conversation: a reasoning source holds millions of rows."""

    def __init__(self, tokenized: datasets.Dataset, on: Sequence[bool], cache_file: Path) -> None:
        self.on = np.asarray(on, dtype=bool)
        self.cache_file = cache_file
        # per part: the dataset, its samples' positions in conversation order, and their conversations in that order
        self.parts: list[tuple[datasets.Dataset, np.ndarray, np.ndarray]] = []
        # per mode, per conversation: the part holding its rendering in that mode (-1: none yet), and whether the
        # length limits keep a sample of it
        self.part = {mode: np.full(len(self.on), -1) for mode in (True, False)}
        self.kept = {mode: np.zeros(len(self.on), dtype=bool) for mode in (True, False)}
        self.add(tokenized, None)

    def add(self, tokenized: datasets.Dataset, mode: bool | None) -> None:
        """``tokenized``'s conversations, all rendered in ``mode`` (None: each in its ``on``)."""
        convs = np.asarray(_values(tokenized, "conv"), dtype=np.int64)
        order = np.argsort(convs, kind="stable")
        self.parts.append((tokenized, order, convs[order]))
        kept = np.zeros(len(self.on), dtype=bool)
        kept[convs[[reject is None for reject in _values(tokenized, "reject")]]] = True
        present = np.unique(convs)
        modes = self.on[present] if mode is None else np.full(len(present), mode)
        for flag in (True, False):
            rendered = present[modes == flag]
            self.part[flag][rendered] = len(self.parts) - 1
            self.kept[flag][rendered] = kept[rendered]

    def fits(self, mode: bool) -> dict[int, bool]:
        """Per conversation rendered in ``mode``: whether the length limits keep a sample of it."""
        rendered = np.flatnonzero(self.part[mode] >= 0)
        return dict(zip(rendered.tolist(), self.kept[mode][rendered].tolist(), strict=True))

    def kept_now(self) -> np.ndarray:
        """Per conversation: whether the length limits keep a sample of it in the mode it trains with."""
        return np.where(self.on, self.kept[True], self.kept[False])

    def next_cache_file(self) -> Path:
        return self.cache_file.with_name(f"{self.cache_file.stem}-{len(self.parts)}{self.cache_file.suffix}")

    def dataset(self) -> datasets.Dataset:
        """Every conversation's samples in the mode it trains with, in conversation order."""
        source_part = np.where(self.on, self.part[True], self.part[False])
        positions, convs, offset = [], [], 0
        for k, (part, order, sorted_convs) in enumerate(self.parts):
            mine = source_part[sorted_convs] == k
            positions.append(offset + order[mine])
            convs.append(sorted_convs[mine])
            offset += len(part)
        picks = np.concatenate(positions)[np.argsort(np.concatenate(convs), kind="stable")]
        everything = self.parts[0][0] if len(self.parts) == 1 else datasets.concatenate_datasets(
            [part for part, _, _ in self.parts])
        return everything.select(picks.tolist(), new_fingerprint=_unhashed())


def _render_rows(state: _SourceState, convs: Sequence[int], on: bool, *, tokenize: Mapping[str, Any],
                 num_proc: int | None) -> None:
    """Tokenise the conversations ``convs`` of a ``mixed`` source again, all with thinking ``on`` (or off), into its
    :class:`_Renderings`."""
    assert state.curated is not None and state.renderings is not None
    convs = [int(conv) for conv in convs]
    rows = state.curated.select(convs, new_fingerprint=_unhashed())
    rows = rows.add_column("thinking", [on] * len(convs), feature=Value("bool"), new_fingerprint=_unhashed())
    rows = rows.add_column("conv", convs, feature=Value("int64"), new_fingerprint=_unhashed())
    mode = "on" if on else "off"
    state.renderings.add(forked_map(rows, _tokenize_batch, workers=worker_count(num_proc, len(rows)), fn_kwargs=tokenize,
                                    features=_TOKENIZED, cache_file=state.renderings.next_cache_file(),
                                    desc=f"Tokenising {state.source.name} (thinking {mode})", batch_size=64), on)


def _own_mode(state: _SourceState) -> np.ndarray:
    """Per curated row of ``state``: whether it gives a thinking mode of its own (then no draw moves it)."""
    assert state.curated is not None
    return np.asarray([mode is not None for mode in _values(state.curated, "thinking_mode")], dtype=bool)


def _fit_thinking(state: _SourceState, *, tokenize: Mapping[str, Any], num_proc: int | None) -> datasets.Dataset:
    """A ``mixed`` source's rows that the first draw put on and the length limits drop whole, rendered off (their
    place on goes to others in :func:`_balance_thinking`); the source's samples as they stand."""
    assert state.renderings is not None
    renderings = state.renderings
    redo = np.flatnonzero(renderings.on & ~renderings.kept[True] & ~_own_mode(state))
    if len(redo):
        _render_rows(state, redo.tolist(), False, tokenize=tokenize, num_proc=num_proc)
        renderings.on[redo] = False
    return renderings.dataset()


def _balance_thinking(state: _SourceState, dropped: Mapping[int, Reason], *, seed: int, tokenize: Mapping[str, Any],
                      num_proc: int | None) -> datasets.Dataset:
    """A ``mixed`` source with exactly its share on among the rows that go on to the held-out split and sizing (those
    with a trace and no mode of their own that the length limits keep, duplicates and templates dropped): the first
    in the draw whose rendering on fits (:func:`tempa.sft.mixing.thinking_picks`), rendered on as needed; the others
    off, unless only their rendering on fits."""
    assert state.curated is not None and state.renderings is not None
    renderings, source = state.renderings, state.source
    candidates = np.asarray(_values(state.curated, "has_reasoning"), dtype=bool) & ~_own_mode(state)
    candidates &= renderings.kept_now()
    candidates[list(dropped)] = False
    eligible = np.flatnonzero(candidates).tolist()
    n_on = thinking_on_count(source.thinking_ratio or 0.0, len(eligible))
    keys = _values(state.curated, "key")
    eligible_keys = [keys[conv] for conv in eligible]
    while True:
        on, untried = thinking_picks(eligible, eligible_keys, seed, n_on, renderings.fits(True))
        if not untried:
            break
        _render_rows(state, untried, True, tokenize=tokenize, num_proc=num_proc)
    chosen = np.zeros(len(renderings.on), dtype=bool)
    chosen[on] = True
    unrendered_off = [conv for conv in eligible if not chosen[conv] and renderings.part[False][conv] < 0]
    if unrendered_off:
        _render_rows(state, unrendered_off, False, tokenize=tokenize, num_proc=num_proc)
    # A row that fits only with thinking on (min_tokens) stays on rather than be lost.
    renderings.on[eligible] = chosen[eligible] | ~renderings.kept[False][eligible]
    return renderings.dataset()


def _mix(
    state: _SourceState,
    tokenized: datasets.Dataset,
    rejects: _RejectWriter,
    *,
    seed: int,
    heldout: float | int,
    dropped: Mapping[int, Reason],
) -> tuple[list[int], list[int]]:
    """Which of a source's tokenised samples train and which are held out (positions in ``tokenized``); its
    rejects written, its stats kept. ``dropped``: the conversations the steps comparing rows reject, and why."""
    source = state.source
    meta = tokenized.select_columns(
        ["conv", "row", "turn", "thinking", "tool_row", "n_tokens", "n_trained", "group", "reject", "detail", "data"],
        new_fingerprint=_unhashed()).to_pandas()
    meta = meta[meta["conv"] >= 0]  # one pass: the rows normalising rejected (``_split_row_rejects``) left out
    meta = meta[~meta["conv"].isin(list(dropped))]  # rejected whole, for what ``dropped`` says (below)
    ok = meta[meta["reject"].isna()]
    surviving = set(ok["conv"].tolist())
    curated_rows = int(meta["conv"].nunique())
    if dropped:
        assert state.curated is not None
        rows = state.curated.select(sorted(dropped), new_fingerprint=_unhashed())
        for (_, (reason, detail)), row, turns in zip(sorted(dropped.items()), _values(rows, "row"),
                                                     _values(rows, "messages"), strict=True):
            rejects.write(state, int(row), reason, detail, _without_nulls(turns))
    # A conversation survives when at least one of its samples does. A wholly rejected one counts
    # once, under its first reason; a turn dropped from a surviving one counts as `<reason>_turn`.
    counted: set[int] = set()
    for record in meta[meta["reject"].notna()].itertuples(index=False):
        conv = int(record.conv)
        label = state.names.label(int(record.row))
        where = f"{label}: turn {int(record.turn)}" if record.turn >= 0 else label
        if conv in surviving:
            rejects.write(state, int(record.row), f"{record.reject}{TURN_SUFFIX}", f"{where}: {record.detail}",
                          _reject_data(record.data))
        elif conv not in counted:
            counted.add(conv)
            rejects.write(state, int(record.row), str(record.reject), f"{where}: {record.detail}",
                          _reject_data(record.data))
    if not surviving:
        raise _all_rejected(state, rejects.shown)

    convs = sorted(surviving)
    samples_of: dict[int, list[int]] = {}
    for position, conv in zip(ok.index.tolist(), ok["conv"].tolist(), strict=True):
        samples_of.setdefault(int(conv), []).append(int(position))
    conv_tokens = ok.groupby("conv")["n_tokens"].sum().to_dict()
    conv_trained = ok.groupby("conv")["n_trained"].sum().to_dict()
    conv_thinking = ok.groupby("conv")["thinking"].any().to_dict()
    conv_tools = ok.groupby("conv")["tool_row"].any().to_dict()
    conv_group = ok.groupby("conv")["group"].first().to_dict()

    # Copies of an instruction are held out together: one held out while its copy trains would score memory.
    # Without copies each conversation is its own group, and the split is the one by conversation.
    groups: dict[int, list[int]] = {}
    for conv in convs:
        groups.setdefault(int(conv_group[conv]), []).append(conv)
    members = list(groups.values())
    train_pos, held_pos = split_heldout(list(groups), heldout, seed)
    if not train_pos:
        raise _all_held_out(state, heldout, len(members), len(convs))
    train_convs = sorted(c for p in train_pos for c in members[p])
    held_convs = sorted(c for p in held_pos for c in members[p])
    chosen = select_rows(train_convs, [int(conv_tokens[c]) for c in train_convs], source, seed)
    if not chosen:
        setting = ", ".join(f"{k}: {v}" for k, v in _size_setting(source).items())
        logger.warning("%s: its size setting (%s) selects no rows", describe(source), setting)

    def total(values: Mapping[int, Any], picked: Sequence[int]) -> int:
        return int(sum(int(values[c]) for c in picked))

    state.stats = {
        "rows_in": state.rows_in,
        "rows_curated": curated_rows,
        "rows_tokenized": len(convs),
        "samples": len(ok),
        "tokens_in": total(conv_tokens, convs),
        "heldout_rows": len(held_convs),
        "heldout_samples": sum(len(samples_of[c]) for c in held_convs),
        "heldout_tokens": total(conv_tokens, held_convs),
        "rows_kept": len(chosen),
        "unique_rows_kept": len(set(chosen)),
        "samples_kept": sum(len(samples_of[c]) for c in chosen),
        "tokens_kept": total(conv_tokens, chosen),
        "trained_tokens_kept": total(conv_trained, chosen),
        "thinking_on_rows_kept": sum(1 for c in chosen if conv_thinking[c]),
        "tool_rows_kept": sum(1 for c in chosen if conv_tools[c]),
    }
    state.held_groups = [int(conv_group[c]) for c in held_convs]
    state.trained_groups = {int(conv_group[c]) for c in chosen}
    train_rows = [s for c in chosen for s in samples_of[c]]
    eval_rows = [s for c in held_convs for s in samples_of[c]]
    return train_rows, eval_rows


def _count_heldout_trained_elsewhere(states: Sequence[_SourceState]) -> None:
    """Per source, its held-out rows whose instruction another source trains on (dedup off, or ``scope: source``):
    counted in mix.json and warned about, not dropped: the other source's rows are training data of their own."""
    for state in states:
        others = set().union(*(other.trained_groups for other in states if other is not state))
        n = sum(1 for group in state.held_groups if group in others)
        state.stats["heldout_rows_trained_elsewhere"] = n
        if n:
            logger.warning("%s: %d of its %d held-out rows have an instruction another source trains on; their eval "
                           "loss is not on unseen prompts (dedup across sources, `curation.dedup`, removes the copies)",
                           describe(state.source), n, len(state.held_groups))


def _all_held_out(state: _SourceState, heldout: float | int, usable: int, rows: int) -> DataError:
    """``usable``: the distinct instructions the split draws from, of ``rows`` usable rows (the same without copies)."""
    rejected = state.rows_in - rows
    # the main reasons, as curation left a source of 12 rows one (11 near_duplicate): the cause, not the setting
    reasons = ", ".join(f"{count} {reason}" for reason, count in state.rejects.most_common(3))
    after = f" ({state.rows_in} read, {rejected} rejected{f': {reasons}' if reasons else ''})" if rejected else ""
    if rows != usable:
        after += f" (its {rows} rows hold {usable} distinct instructions, and copies are held out together)"
    key = "its `heldout`" if state.source.heldout is not None else "`data.heldout` (or `heldout` on this source)"
    # any positive fraction holds out at least one row: of a single row, only 0 leaves it to train on
    fix = f"set {key} to at most {usable - 1} rows" if usable > 1 else "set `heldout: 0` on this source to train on it"
    if rejected:
        fix += " (or let more rows through curation: the stage's rejects.jsonl says why each was rejected)"
    return DataError(f"{describe(state.source)}: heldout {heldout} takes {usable} of its {usable} usable rows{after} "
                     f"and leaves none to train on; {fix}")


# --- reports --------------------------------------------------------------------------------------


def _size_setting(source: SourceConfig) -> dict[str, Any]:
    for key in ("weight", "rows", "tokens"):
        if getattr(source, key) is not None:
            return {key: getattr(source, key)}
    return {"weight": 1.0}


def _report(states: Sequence[_SourceState], *, seed: int, key: str, n_train: int, n_eval: int) -> DataMix:
    total_tokens = sum(s.stats["tokens_kept"] for s in states) or 1
    sources = [
        SourceMix(
            name=state.source.name,
            path=display_path(state.source.path),
            size=_size_setting(state.source),
            thinking_mode=state.source.thinking_mode,
            thinking_ratio=state.source.thinking_ratio,
            **state.stats,
            share_of_tokens=round(state.stats["tokens_kept"] / total_tokens, 4),
            rejects=dict(sorted(state.rejects.items())),
            notes=dict(sorted(state.notes.items())),
        )
        for state in states
    ]
    totals = MixTotals(
        rows_in=sum(s.rows_in for s in sources),
        rows_kept=sum(s.rows_kept for s in sources),
        train_samples=n_train,
        eval_samples=n_eval,
        tokens_kept=sum(s.tokens_kept for s in sources),
        trained_tokens_kept=sum(s.trained_tokens_kept for s in sources),
        heldout_tokens=sum(s.heldout_tokens for s in sources),
        thinking_on_rows_kept=sum(s.thinking_on_rows_kept for s in sources),
        tool_rows_kept=sum(s.tool_rows_kept for s in sources),
        rejects=sum(sum(s.rejects.values()) for s in sources),
    )
    return DataMix(seed=seed, cache_key=key, sources=sources, total=totals)
