"""The `pretrain` stage's data preparation at scale: the rows it prepares, worked out by hand, whatever the
process count."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from tempa.sft.pretrain_config import PretrainStageConfig
from tempa.sft.pretrain_stage import prepare_pretrain_data

WORDS = ["rice", "river", "mango", "temple", "harbour", "monsoon", "lantern", "market", "island", "forest"]
MAX_LENGTH = 32


def _texts(seed: int, n: int, low: int = 3, high: int = 25) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def _jsonl(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


def _drawn(texts: list[str], seed: int) -> list[int]:
    """A budgeted source's documents in the order its budget takes them: SFT's draw by content and seed, with the
    budget's own purpose (5), lowest first."""
    from tempa.sft.mixing import content_key, draw_ranks

    ranks = draw_ranks([content_key(t) for t in texts], seed, 5)
    return sorted(range(len(texts)), key=lambda k: (int(ranks[k]), k))


def _by_hand(documents: list[list[int]], budget: int | None, repeat: bool,
             order: list[int]) -> tuple[list[tuple[int, list[int]]], int, int]:
    """The documents a source gives (each with its index; in ``order``, the draw's; the last one cut at the budget;
    with repeat, passes in that order until the budget), the source documents taken and the tokens of the whole
    source: the stage's rule, written out plainly."""
    whole = sum(map(len, documents))
    drawn = [(k, documents[k]) for k in order]
    if budget is None or (whole <= budget and not repeat):
        return drawn, len(documents), whole
    taken, total, distinct = [], 0, 0
    stream = drawn * (budget // whole + 1) if repeat else drawn
    for n, (k, ids) in enumerate(stream):
        if total + len(ids) > budget:
            if budget > total:
                taken.append((k, ids[: budget - total]))
                distinct = max(distinct, min(n + 1, len(documents)))
            break
        taken.append((k, ids))
        total += len(ids)
        distinct = max(distinct, min(n + 1, len(documents)))
    return taken, distinct, whole


def _held_out(texts: list[str], taken: list[tuple[int, list[int]]], heldout: float, seed: int) -> set[str]:
    """The documents a source holds out: of the distinct ones taken, a share (rounded, at least one, at most all but
    one) lowest in SFT's held-out draw by content and seed."""
    from tempa.sft.mixing import content_key, draw_ranks

    distinct = sorted({texts[k] for k, _ in taken})
    n_out = min(max(1, round(heldout * len(distinct))), len(distinct) - 1)
    ranks = draw_ranks([content_key(t) for t in distinct], seed, 2)  # 2: SFT's held-out purpose
    return {t for _, t in sorted(zip(ranks.tolist(), distinct, strict=True))[:n_out]}


@pytest.fixture()
def mix(tmp_path: Path, tiny_model_dir: Path):
    """A SEA-LION-style mix: a small Thai source repeated 2.5x to its budget, English cut inside a document, a
    source with a document many rows long, a .txt source read by paragraph; blank documents here and there."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = [tokenizer.eos_token_id]

    def encoded(texts: list[str]) -> list[list[int]]:
        return [tokenizer(t)["input_ids"] + eos for t in texts if t.strip()]

    th = _texts(1, 6)
    en = _texts(2, 40)
    en[3] = "  "  # blank documents are skipped
    long = [*_texts(3, 3), " ".join(WORDS * 12), *_texts(4, 5)]
    paragraphs = _texts(5, 7)
    (tmp_path / "id.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    th_docs, en_docs, long_docs, id_docs = encoded(th), encoded(en), encoded(long), encoded(paragraphs)
    texts = {name: [t for t in source if t.strip()] for name, source in
             (("th", th), ("en", en), ("long", long), ("id", paragraphs))}
    th_whole, en_lengths = sum(map(len, th_docs)), np.cumsum([len(d) for d in en_docs])
    budgets = {"th": th_whole * 5 // 2, "en": int(en_lengths[20]) + len(en_docs[21]) // 2, "long": None, "id": None}
    assert len(en_docs[21]) // 2 > 0 and max(map(len, long_docs)) > 3 * MAX_LENGTH  # the premises: a cut, a long one
    config = PretrainStageConfig.model_validate({
        "name": "cpt", "heldout": 0.2,
        "sources": [{"name": "th", "path": _jsonl(tmp_path / "th.jsonl", th), "tokens": budgets["th"], "repeat": True},
                    {"name": "en", "path": _jsonl(tmp_path / "en.jsonl", en), "tokens": budgets["en"]},
                    {"name": "long", "path": _jsonl(tmp_path / "long.jsonl", long)},
                    {"name": "id", "path": str(tmp_path / "id.txt"), "txt_document": "paragraph"}],
        "train": {"max_length": MAX_LENGTH, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
    documents = {"th": th_docs, "en": en_docs, "long": long_docs, "id": id_docs}
    return config, tokenizer, documents, budgets, texts


def _expected(config: PretrainStageConfig, documents: dict, budgets: dict, texts: dict, seed: int):
    chunks, is_eval, stats = [], [], {"tokens": {}, "documents": {}, "passes": {}}
    for source in config.sources:
        names = texts[source.name]
        order = list(range(len(names))) if budgets[source.name] is None else _drawn(names, seed)
        taken, distinct, whole = _by_hand(documents[source.name], budgets[source.name], source.repeat, order)
        tokens = sum(len(ids) for _, ids in taken)
        stats["tokens"][source.name], stats["documents"][source.name] = tokens, distinct
        full = budgets[source.name] is None or whole <= budgets[source.name]
        stats["passes"][source.name] = round(tokens / whole, 4) if full else None
        out = _held_out(names, taken, config.heldout, seed)
        trained = [ids for k, ids in taken if names[k] not in out]
        first: dict[str, list[int]] = {}  # a held-out document once, its first time
        for k, ids in taken:
            if names[k] in out:
                first.setdefault(names[k], ids)
        for side, pieces in enumerate((trained, list(first.values()))):
            cut = [ids[i: i + MAX_LENGTH] for ids in pieces for i in range(0, len(ids), MAX_LENGTH)]
            chunks += cut
            is_eval += [bool(side)] * len(cut)
    order = np.random.default_rng(seed).permutation(len(chunks))
    held = [chunks[i] for i in order if is_eval[i]]
    train = [chunks[i] for i in order if not is_eval[i] and chunks[i] not in held]
    return train, held, len(chunks), stats


def _rows(path: Path | None) -> list[list[int]]:
    from datasets import load_from_disk

    rows = load_from_disk(str(path))
    assert {name: str(feature) for name, feature in rows.features.items()} == {"input_ids": "List(Value('int32'))"}
    return [list(r) for r in rows["input_ids"]]


def test_the_prepared_rows_are_the_documents_budgeted_chunked_and_shuffled_as_worked_out_by_hand(tmp_path, mix,
                                                                                                  tiny_model_dir):
    """The rows a SEA-LION-size preparation must still give, row for row and in order, whatever does the work:
    each source's documents (blank ones skipped) taken up to its budget in the draw by content and seed (the last
    one cut; repeated in that order with `repeat`), a share of each source's documents held out whole (once), cut into chunks of max_length, shuffled
    with the seed, and every training copy of a held-out chunk dropped; the stats say the same."""
    config, tokenizer, documents, budgets, texts = mix
    train, held, n_chunks, stats = _expected(config, documents, budgets, texts, seed=5)
    assert len(train) < n_chunks - len(held)  # the premise: copies of held-out chunks were dropped
    en, _, _ = _by_hand(documents["en"], budgets["en"], False, _drawn(texts["en"], 5))
    assert 0 < len(en[-1][1]) < len(documents["en"][en[-1][0]])  # and English is cut inside a document
    data = prepare_pretrain_data(config, tokenizer, tmp_path / "cache", seed=5)
    assert _rows(data.train_path) == train
    assert _rows(data.eval_path) == held
    assert (data.tokens, data.documents, data.passes, data.chunks) == (
        stats["tokens"], stats["documents"], stats["passes"], len(train))
    assert stats["passes"]["th"] == pytest.approx(2.5, abs=0.01) and stats["passes"]["en"] is None
    again = prepare_pretrain_data(config, tokenizer, tmp_path / "cache", seed=5)  # from the cache
    assert _rows(again.train_path) == train and again.tokens == data.tokens


class _Counting:
    """The real tokenizer, with each call's process and texts written to ``log`` (calls run in worker processes)."""

    def __init__(self, tokenizer, log: Path):
        self._tokenizer, self._log = tokenizer, log

    def __call__(self, texts, *args, **kwargs):
        with self._log.open("a", encoding="utf-8") as out:
            out.write(f"{os.getpid()} {len(texts) if isinstance(texts, list) else 1}\n")
        return self._tokenizer(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def _calls(log: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in log.read_text(encoding="utf-8").splitlines()]


def test_every_process_count_prepares_the_same_rows(tmp_path, mix, tiny_model_dir):
    """The preparation held every token of the mix in Python lists in one process (about 104 bytes of RAM a token,
    111k tokens/s: a day and a terabyte for a 10B-token mix). Now the sources are tokenised in worker processes
    into memory-mapped Arrow files; two processes give exactly the rows one gives, and the rows worked out by hand."""
    config, tokenizer, documents, budgets, texts = mix
    train, held, _, _ = _expected(config, documents, budgets, texts, seed=5)
    rows = {}
    for procs in (1, 2):
        log = tmp_path / f"calls{procs}"
        data = prepare_pretrain_data(config, _Counting(tokenizer, log), tmp_path / f"cache{procs}",
                                     seed=5, num_proc=procs)
        rows[procs] = (_rows(data.train_path), _rows(data.eval_path))
        pids = {pid for pid, _ in _calls(log)}
        # one process, or (a pool for each source's tokenising; a single .txt file is tokenised here) workers
        assert (pids == {os.getpid()}) if procs == 1 else len(pids - {os.getpid()}) >= 2
    assert rows[2] == rows[1] == (train, held)


def test_a_budget_tokenises_little_more_than_it_takes(tmp_path, tiny_model_dir):
    """A budget far below its source (37.5B tokens of Dolma's trillions) tokenises little more than it takes. Its
    documents are drawn across the whole source, so every row is read (not tokenised) first: a broken row is an
    error naming it wherever it is (a budget that took the first rows in order never read one after its last)."""
    from transformers import AutoTokenizer

    from tempa.sft.stage_api import StageError

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = _texts(7, 3000)
    lines = [json.dumps({"text": t}) for t in texts]
    budget = sum(len(tokenizer(t)["input_ids"]) + 1 for t in texts[:100]) - 3
    path = tmp_path / "web.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def prepare(cache: str):
        config = PretrainStageConfig.model_validate({
            "name": "cpt", "sources": [{"name": "web", "path": str(path), "tokens": budget}],
            "train": {"max_length": MAX_LENGTH, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
        return prepare_pretrain_data(config, _Counting(tokenizer, tmp_path / f"{cache}.log"),
                                     tmp_path / cache / "c", seed=0)

    data = prepare("lazy")
    total, drawn = 0, 0  # the documents first in the draw until the budget, the last one cut
    for k in _drawn(texts, 0):
        total, drawn = total + len(tokenizer(texts[k])["input_ids"]) + 1, drawn + 1
        if total >= budget:
            break
    assert data.tokens["web"] == budget and data.documents["web"] == drawn
    assert 100 <= sum(n for _, n in _calls(tmp_path / "lazy.log")) < 600  # of the 3,000 documents
    lines[2500], lines[2700] = "[1, 2]", '{"text": "river"'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(StageError, match=r"^data source 'web', line 2501: a list; expected a JSON object with a "):
        prepare("broken")


def test_the_plan_says_how_long_preparing_a_pretrain_stage_takes(tmp_path):
    """`tempa plan` said how long an SFT stage's data takes to prepare, and nothing for a pretrain stage, whose
    10B-token mixes take hours to tokenise. Now it says it the same way, from the token budgets."""
    import re

    from tempa.sft.data_config import PREP_TOKENS_PER_CORE_SECOND, available_cores
    from tempa.sft.pretrain_stage import estimate_pretrain

    def prep_line(sources: list[dict]) -> str:
        config = PretrainStageConfig.model_validate({
            "name": "cpt", "sources": sources, "train": {"lr_scheduler_kwargs": {"num_decay_steps": 1}}})
        (line,) = [note for note in estimate_pretrain(config, None).tokens.notes if "data prep" in note]
        return line

    budget = 10_000_000_000
    line = prep_line([{"name": "web", "path": "org/web", "tokens": budget}])
    here, node = (int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in re.findall(r"~(\d+):(\d\d):(\d\d)", line))
    # at least the tokenising, spread over the cores (10B tokens: one process per core), and no more than on one
    assert budget / (PREP_TOKENS_PER_CORE_SECOND * available_cores()) <= here <= budget / PREP_TOKENS_PER_CORE_SECOND
    assert budget / (PREP_TOKENS_PER_CORE_SECOND * 128) <= node < here
    assert "on a node's 128 cores" in line and "cached after" in line
    assert "step: >=" in prep_line([{"name": "web", "path": "org/web", "tokens": budget},
                                    {"name": "more", "path": "org/more"}])  # an unsized source: at least


def test_a_long_documents_chunks_read_only_their_own_tokens():
    """A batch of one long document's chunks materialises about the batch's tokens, not the document once per
    chunk (a 1 MB `txt_document: file` document peaked at 846 MB, 2 MB at 2.18 GB): the peak of what numpy
    (tracemalloc) and Arrow (its memory pool) allocate is counted, and every chunk's tokens are its own."""
    import tracemalloc

    import pyarrow as pa

    from tempa.sft.pretrain_stage import _Chunks, chunk_spans

    long = 10_000
    lengths = np.array([37, long, 5, 64, 3])
    documents = [np.arange(n, dtype=np.int32) + 100_000 * k for k, n in enumerate(lengths)]
    list_type = pa.list_(pa.int32())
    ids = pa.chunked_array([pa.array([d.tolist() for d in documents[:2]], type=list_type),
                            pa.array([d.tolist() for d in documents[2:]], type=list_type)])
    document, start, length = chunk_spans(lengths, 10)
    order = np.random.default_rng(0).permutation(len(document))
    chunks = _Chunks(ids, document, start, length, order=order)

    pool, default = pa.proxy_memory_pool(pa.default_memory_pool()), pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        got = chunks.tokens(order)
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(default)
    assert got.to_pylist() == [documents[document[k]][start[k]: start[k] + length[k]].tolist() for k in order]
    assert (document == 1).sum() == 1_000  # the long document's chunks: the old take copied it 1,000 times (40 MB)
    batch_bytes = 4 * int(lengths.sum())
    assert numpy_peak + pool.max_memory() < 32 * batch_bytes
