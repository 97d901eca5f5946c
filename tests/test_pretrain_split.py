"""The `pretrain` stage's held-out split: by document, by content and seed, as the SFT side draws its held-out rows."""

from __future__ import annotations

import json
from pathlib import Path

from tempa.sft.pretrain_config import PretrainStageConfig
from tempa.sft.pretrain_stage import prepare_pretrain_data

MAX_LENGTH = 16


WORDS = ["rice", "river", "mango", "temple", "harbour", "monsoon", "lantern", "market", "island", "forest"]


def _documents(tokenizer, n: int, first: int = 0) -> list[str]:
    """Documents of three chunks or more, no two chunks alike (random words), none ending in a short last chunk
    (which could match another document's)."""
    import random

    out: list[str] = []
    rng = random.Random(first)
    while len(out) < n:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 60)))
        if (len(tokenizer(text)["input_ids"]) + 1) % MAX_LENGTH >= MAX_LENGTH // 2:
            out.append(text)
    return out


def _prepare(tmp_path: Path, tokenizer, model_dir: Path, texts: list[str], seed: int, cache: str, **source):
    path = tmp_path / f"{cache}.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    config = PretrainStageConfig.model_validate({
        "name": "cpt", "heldout": 0.25, "sources": [{"name": "web", "path": str(path), **source}],
        "train": {"max_length": MAX_LENGTH, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
    return prepare_pretrain_data(config, tokenizer, tmp_path / cache, seed=seed)


def _sides(data, documents: dict[tuple[int, ...], str]) -> tuple[dict[str, list[list[int]]], dict[str, list[list[int]]]]:
    """Per document text, its chunks in the training rows and in the held-out rows."""
    from datasets import load_from_disk

    def of(path) -> dict[str, list[list[int]]]:
        out: dict[str, list[list[int]]] = {}
        for row in (load_from_disk(str(path))["input_ids"] if path else []):
            row = list(row)
            (text,) = [t for ids, t in documents.items() if any(ids[i: i + len(row)] == tuple(row)
                                                                 for i in range(0, len(ids), MAX_LENGTH))]
            out.setdefault(text, []).append(row)
        return out

    return of(data.train_path), of(data.eval_path)


def test_a_document_is_wholly_trained_or_wholly_held_out_by_content_and_seed(tmp_path, tiny_model_dir):
    """The held-out rows were drawn chunk by chunk, so a document of several chunks had some trained and the rest
    held out: the eval loss was measured on the text the model had just trained on. Now each document is on one
    side, whole; the draw is the seed's and each document's content's, so the same recipe gives the same split, and
    a source that grows keeps its old documents where they were but at the margin (at most one moves per added
    document, as SFT's held-out rows)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = _documents(tokenizer, 16)
    encoded = {tuple(tokenizer(t)["input_ids"] + [tokenizer.eos_token_id]): t for t in texts}
    assert min(map(len, encoded)) > 2 * MAX_LENGTH  # the premise: every document is three chunks or more
    data = _prepare(tmp_path, tokenizer, tiny_model_dir, texts, 3, "a")
    train, held = _sides(data, encoded)
    assert not set(train) & set(held), f"{len(set(train) & set(held))} documents both trained and held out"
    assert len(held) == 4 and len(train) == 12  # a quarter of the documents
    for ids, text in encoded.items():  # whole: every chunk of the document, on its side
        assert sum(map(len, (train | held)[text])) == len(ids)
    # the seed's draw: the same again, another with another seed
    assert _sides(_prepare(tmp_path, tokenizer, tiny_model_dir, texts, 3, "b"), encoded)[1].keys() == held.keys()
    assert _sides(_prepare(tmp_path, tokenizer, tiny_model_dir, texts, 4, "c"), encoded)[1].keys() != held.keys()
    # a source that grows (and is read in another order) keeps its held-out documents but at the margin
    more = _documents(tokenizer, 4, first=16)
    encoded |= {tuple(tokenizer(t)["input_ids"] + [tokenizer.eos_token_id]): t for t in more}
    grown = _sides(_prepare(tmp_path, tokenizer, tiny_model_dir, (texts + more)[::-1], 3, "d"), encoded)[1]
    assert len(grown) == 5 and len(set(held) - set(grown)) <= 1


def test_the_tokens_trained_per_source_are_the_training_rows_not_the_tokens_taken(tmp_path, tiny_model_dir):
    """The mix, the metrics and the report said each source's tokens taken (held-out documents included) as what
    the stage trained, and nothing per source of what was trained. Now the preparation counts, per source, the
    tokens of the held-out rows and of the training rows (measured here on the rows written), and the mix says the
    tokens trained: the training rows' times the epochs the trainer made."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from tempa.sft.pretrain_stage import mix_of

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    th, en = _documents(tokenizer, 6), _documents(tokenizer, 20, first=1)
    (tmp_path / "th.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in th), encoding="utf-8")
    (tmp_path / "en.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in en), encoding="utf-8")
    encoded = {name: {tuple(tokenizer(t)["input_ids"] + [tokenizer.eos_token_id]) for t in texts}
               for name, texts in (("th", th), ("en", en))}
    th_whole = sum(map(len, encoded["th"]))
    config = PretrainStageConfig.model_validate({
        "name": "cpt", "heldout": 0.25,
        "sources": [{"name": "th", "path": str(tmp_path / "th.jsonl"), "tokens": th_whole * 2, "repeat": True},
                    {"name": "en", "path": str(tmp_path / "en.jsonl"), "tokens": th_whole * 2}],
        "train": {"max_length": 512, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
    data = prepare_pretrain_data(config, tokenizer, tmp_path / "cache", seed=0)

    def tokens_by_source(path) -> dict[str, int]:  # every document fits one row: a row is (the start of) one
        out = {"th": 0, "en": 0}
        for row in load_from_disk(str(path))["input_ids"]:
            (name,) = [n for n, docs in encoded.items() if any(d[: len(row)] == tuple(row) for d in docs)]
            out[name] += len(row)
        return out

    trained, held = tokens_by_source(data.train_path), tokens_by_source(data.eval_path)
    assert data.trained == trained and data.heldout == held
    assert data.tokens == {"th": th_whole * 2, "en": th_whole * 2}  # the budgets: taken, not trained
    assert held["th"] > 0 and held["en"] > 0 and trained["en"] + held["en"] == data.tokens["en"]
    # th went over its documents twice: a held-out document measures eval loss once, its second pass on no side
    assert trained["th"] + held["th"] < data.tokens["th"]
    mix = mix_of(data.tokens, data.documents, chunks=data.chunks, sources=config.sources, passes=data.passes,
                 epochs=1.5, heldout=data.heldout, trained=data.trained)
    assert [(s.name, s.tokens, s.heldout_tokens, s.trained_tokens) for s in mix.sources] == [
        (n, data.tokens[n], held[n], round(1.5 * trained[n])) for n in ("th", "en")]
    assert mix.trained_tokens == sum(round(1.5 * trained[n]) for n in ("th", "en"))
