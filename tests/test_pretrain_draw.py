"""The `pretrain` stage's token budgets drawn across the whole source, and big .txt files read in bounded batches."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from tempa.sft.pretrain_config import PretrainStageConfig
from tempa.sft.pretrain_stage import prepare_pretrain_data

WORDS = ["rice", "river", "mango", "temple", "harbour", "monsoon", "lantern", "market", "island", "forest"]


def _config(path: Path, **source) -> PretrainStageConfig:
    return PretrainStageConfig.model_validate({
        "name": "cpt", "sources": [{"name": "web", "path": str(path), **source}],
        "train": {"max_length": 4096, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})


def _taken(data, documents: list[list[int]]) -> tuple[set[int], int]:
    """Which documents (indices) the rows hold whole, and how many rows are a document cut short."""
    from datasets import load_from_disk

    index = {tuple(ids): k for k, ids in enumerate(documents)}
    whole, cut = set(), 0
    for row in load_from_disk(str(data.train_path))["input_ids"]:
        if tuple(row) in index:
            whole.add(index[tuple(row)])
        else:
            assert any(ids[: len(row)] == list(row) for ids in documents), "a row that is no document's start"
            cut += 1
    return whole, cut


def test_a_budget_takes_a_seeded_draw_across_the_whole_source_not_its_first_documents(tmp_path, tiny_model_dir):
    """A budget below its source took the documents first in file order (one crawl date, one site): 30 documents'
    worth of a 300-document file were documents 0-29. Now it takes documents drawn across the whole source by
    content and seed: the same for the same seed, others for another seed, and a source that grows keeps its
    documents but at the margin (what it takes of the old documents is a part of what it took before)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rng = random.Random(0)
    texts = [f"page {k} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for k in range(400)]
    documents = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    path = tmp_path / "web.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:300]), encoding="utf-8")
    budget = sum(map(len, documents[:30]))  # the first 30 documents exactly

    def taken(seed: int, cache: str) -> set[int]:
        data = prepare_pretrain_data(_config(path, tokens=budget), tokenizer, tmp_path / cache,
                                     seed=seed)
        whole, cut = _taken(data, documents)
        assert data.tokens["web"] == budget and cut <= 1  # the budget exactly: the last document cut
        assert data.documents["web"] == len(whole) + cut
        return whole

    first = taken(1, "a")
    assert first != set(range(30)) and max(first) >= 200  # drawn across the file, not its first 30
    assert len(first & set(range(100))) < 25 and len(first & set(range(200, 300))) > 2
    assert taken(1, "b") == first  # the same seed draws the same documents
    assert taken(2, "c") != first  # another seed, others
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")  # the source grows
    grown = taken(1, "d")
    assert grown & set(range(300)) <= first and grown - set(range(300))  # old ones kept but at the margin


def test_a_big_txt_file_is_tokenised_in_bounded_batches_across_workers(tmp_path, tiny_model_dir):
    """A .txt file was read whole (``read_bytes``) and its documents were one batch in one worker: a 20 GB file of one
    language held 20 GB of text and its tokens in one process. Now a file is read in ranges cut between documents,
    and its documents tokenised in batches of about a megabyte in every worker: here a 3 MB file by line and by
    paragraph, a budget of a part of it; no tokenizer call holds more than ~1 MB of text, nor is the file tokenised
    whole, and the ranges tile the file, each range's documents the whole file's, in order."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rng = random.Random(1)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(25_000)]
    for k in range(0, len(lines), 7):
        lines[k] = ""  # a blank line between paragraphs now and then
    path = tmp_path / "big.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    size = path.stat().st_size
    assert size > 2_500_000
    for mode in ("line", "paragraph"):
        log = tmp_path / f"{mode}.log"
        config = _config(path, txt_document=mode, tokens=150_000)
        data = prepare_pretrain_data(config, _Logging(tokenizer, log), tmp_path / mode, seed=0,
                                     num_proc=2)
        assert data.tokens["web"] == 150_000
        calls = [tuple(map(int, line.split())) for line in log.read_text(encoding="utf-8").splitlines()]
        assert max(chars for _, chars in calls) < 1.2 * (1 << 20)  # a batch of about a megabyte, not the file
        assert sum(chars for _, chars in calls) < size / 2  # a budget of a part tokenises about that part
        assert len({pid for pid, _ in calls} - {os.getpid()}) >= 2  # in the workers
        from tempa.sft.pretrain_stage import txt_range_documents, txt_ranges

        source = config.sources[0]
        ranges = txt_ranges(source, [path])
        assert len(ranges) >= 3 and max(end - start for _, start, end in ranges) < 1.2 * (1 << 20)
        assert [r[1] for r in ranges] == [0] + [r[2] for r in ranges[:-1]] and ranges[-1][2] == size
        read = [text for file, start, end in ranges for text, _, _ in txt_range_documents(source, [path], file, start, end)]
        text = path.read_text(encoding="utf-8")
        by_hand = text.split("\n") if mode == "line" else [b.strip("\n") for b in text.split("\n\n")]
        assert read == [d for d in by_hand if d.strip()]


class _Logging:
    """The real tokenizer, with each call's process and characters of text written to ``log``."""

    def __init__(self, tokenizer, log: Path):
        self._tokenizer, self._log = tokenizer, log

    def __call__(self, texts, *args, **kwargs):
        with self._log.open("a", encoding="utf-8") as out:
            out.write(f"{os.getpid()} {sum(map(len, texts)) if isinstance(texts, list) else len(texts)}\n")
        return self._tokenizer(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.mark.parametrize("size", [300 << 20])
def test_a_txt_file_too_big_to_be_one_document_is_refused_naming_it(tmp_path, tiny_model_dir, size):
    """`txt_document: file` makes a file one document, read and tokenised at once in one process: a 20 GB file
    took that process's memory many times over. Now a file above 256 MiB is refused, by name, before any work
    (a sparse file here: no disk is written)."""
    from transformers import AutoTokenizer

    from tempa.sft.pretrain_stage import check_inputs
    from tempa.sft.stage_api import StageError

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "small.txt").write_text("river rice\n", encoding="utf-8")
    with open(tmp_path / "docs" / "huge.txt", "wb") as out:
        out.truncate(size)
    config = _config(tmp_path / "docs")
    message = r"^data source 'web', huge\.txt: 300\.0 MiB, above the 256 MiB a `txt_document: file` document may hold"
    with pytest.raises(StageError, match=message):
        check_inputs(config)
    with pytest.raises(StageError, match=message):
        prepare_pretrain_data(config, tokenizer, tmp_path / "cache", seed=0)
