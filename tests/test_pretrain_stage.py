"""The `pretrain` stage: token budgets, chunking, packing that keeps document boundaries, a real training run."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest

from tempa.sft.pretrain_config import PretrainStageConfig
from tempa.sft.pretrain_stage import budgeted, chunk_document, prepare_pretrain_data

WORDS = ["rice", "river", "mango", "temple", "harbour", "monsoon", "lantern", "market", "island", "forest"]


def _docs(path: Path, n: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))), "id": i} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_budget_and_chunks_pure():
    docs = [[1] * 5, [2] * 7, [3] * 4]
    assert budgeted(iter(docs), 9) == ([[1] * 5, [2] * 4], 9, None, 2)  # the last document is cut at the budget
    assert budgeted(iter(docs), None) == (docs, 16, 16, 3)
    assert budgeted(iter(docs), 40) == (docs, 16, 16, 3)  # short of its budget: every document once
    # repeat: passes over the documents in order until the budget, the last one cut
    assert budgeted(iter(docs), 40, repeat=True) == (docs + docs + [[1] * 5, [2] * 3], 40, 16, 3)
    assert chunk_document(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_pretrain_config_checks():
    base = {"name": "cpt", "sources": [{"name": "a", "path": "org/corpus"}],
            "train": {"lr_scheduler_kwargs": {"num_decay_steps": 2}}}
    assert PretrainStageConfig.model_validate(base).train_args()["assistant_only_loss"] is False
    with pytest.raises(ValueError, match="num_decay_steps"):
        PretrainStageConfig.model_validate({**base, "train": {}})
    with pytest.raises(ValueError, match="every token"):
        PretrainStageConfig.model_validate({**base, "train": {**base["train"], "assistant_only_loss": True}})


def test_a_blank_line_is_skipped_and_a_broken_one_named_in_a_folder_of_jsonl_or_one_file(tmp_path, tiny_model_dir):
    """A blank line of a JSON Lines source stopped the stage with a JSONDecodeError traceback; a line that is not
    JSON too. Now the blank line is skipped (as every other stage does) and the broken line is one error naming
    it; a folder of JSON Lines files is read the same way, file after file."""
    from transformers import AutoTokenizer

    from tempa.sft.stage_api import StageError

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    (tmp_path / "shards").mkdir()
    _docs(tmp_path / "shards" / "a.jsonl", 4, 1)
    (tmp_path / "shards" / "b.jsonl").write_text('{"text": "river rice"}\n\n{"text": "temple"}\n', encoding="utf-8")
    one = tmp_path / "one.jsonl"
    one.write_text((tmp_path / "shards" / "b.jsonl").read_text(encoding="utf-8"), encoding="utf-8")

    def prepare(path: Path, cache: str):
        config = PretrainStageConfig.model_validate({
            "name": "cpt", "sources": [{"name": "web", "path": str(path)}],
            "train": {"max_length": 64, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
        return prepare_pretrain_data(config, tokenizer, tmp_path / cache, seed=0)

    assert prepare(one, "c1").documents["web"] == 2
    assert prepare(tmp_path / "shards", "c2").documents["web"] == 6
    one.write_text('{"text": "river"}\n{"text": "rice"\n', encoding="utf-8")
    with pytest.raises(StageError, match=r"^data source 'web', line 2: not valid JSON"):
        prepare(one, "c3")
    as_json = one.rename(tmp_path / "one.json")  # JSON Lines in a .json file, as many hub datasets ship them
    with pytest.raises(StageError, match=r"^data source 'web', line 2: not valid JSON"):
        prepare(as_json, "c4")


def test_packed_documents_never_see_each_other(tmp_path, tiny_model_dir):
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tempa.sft.packed_attention import document_cuts

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = PretrainStageConfig.model_validate({
        "name": "cpt", "sources": [{"name": "web", "path": _docs(tmp_path / "web.jsonl", 30, 1), "tokens": 1500},
                                   {"name": "news", "path": _docs(tmp_path / "news.jsonl", 30, 2)}],
        "train": {"max_length": 64, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
    data = prepare_pretrain_data(config, tokenizer, tmp_path / "cache", seed=3)
    assert data.tokens["web"] == 1500  # the budget, exactly (the last document cut)
    rows = load_from_disk(str(data.train_path))
    chunks = [list(r) for r in rows["input_ids"]]
    assert sum(map(len, chunks)) == sum(data.tokens.values()) and max(map(len, chunks)) <= 64
    assert rows.column_names == ["input_ids"]  # every token is in the loss: no mask
    # a cached second preparation reads the same chunks back
    again = prepare_pretrain_data(config, tokenizer, tmp_path / "cache", seed=3)
    assert load_from_disk(str(again.train_path))["input_ids"] == rows["input_ids"]

    # trl's BFD packing and padding-free collator, as the worker trains (several chunks per sequence)
    packed = pack_dataset(rows, seq_length=64, strategy="bfd")
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id or 0, padding_free=True)
    seen = []
    multi = 0
    for example in packed:
        batch = collator([example])
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        cuts = document_cuts(1, ids.shape[-1], dict(batch)) or [0, ids.shape[-1]]
        cuts = cuts[0] if isinstance(cuts[0], list) else cuts
        multi += len(cuts) > 2
        for start, end in itertools.pairwise(cuts):
            seen.append(ids[start:end].tolist())
            # the per-document attention mask is block diagonal: every row attends inside its span only
            assert int(batch["position_ids"][0, start]) == 0
            # every token is a target except a document's first (nothing predicts across a boundary)
            assert labels[start] == -100 and torch.equal(labels[start + 1:end], ids[start + 1:end])
    assert multi, "no packed sequence held more than one document: the test would prove nothing"
    assert sorted(seen) == sorted(chunks)  # the spans the attention sees are exactly the documents


@pytest.mark.slow
def test_pretrain_stage_trains_as_the_first_stage_and_plans(tmp_path):
    from tempa.recipes.estimate import estimate_recipe
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import run_recipe

    docs = _docs(tmp_path / "docs.jsonl", 40, 7)
    recipe = tmp_path / "cpt.yaml"
    recipe.write_text(f"""name: cpt
base_model: "tempa:tiny"
launch: {{accelerate_config: single, mixed_precision: "no", use_cpu: true}}
stages:
  - name: cpt
    kind: pretrain
    heldout: 0.1
    sources: [{{name: docs, path: "{docs}", tokens: 2000}}]
    train: {{max_steps: 2, max_length: 128, per_device_train_batch_size: 2, learning_rate: 1.0e-3,
            lr_scheduler_kwargs: {{num_decay_steps: 1}}, save_steps: 1, logging_steps: 1}}
  - name: bake
    kind: bake
    smoke_test: false
""")
    loaded = load_recipe(recipe)
    summary = run_recipe(loaded, tmp_path / "run")
    assert summary.ran == ["cpt", "bake"]
    metrics = json.loads((tmp_path / "run" / "cpt" / "metrics.json").read_text())
    flat = metrics.get("metrics", metrics)
    assert flat["global_step"] == 2 and flat["tokens:docs"] == 2000
    # max_steps, not the budget, set what was trained: the run says so with what it trained (one pass over the
    # training rows is data_tokens, the budget less the held-out documents)
    assert flat["data_tokens"] < 2000 and flat["trained_tokens:docs"] > 0
    (note,) = summary.notes
    assert note.startswith("train.max_steps 2, not the token budgets of docs") and note.endswith(
        f"it trained {flat['trained_tokens:docs']:,} tokens, {flat['trained_tokens:docs'] / flat['data_tokens']:.1%} "
        f"of one pass over the budgets' {flat['data_tokens']:,}")
    assert (tmp_path / "run" / "cpt" / "checkpoints").is_dir()
    # `tempa plan --hardware` sizes it from the token budget
    (estimate,) = estimate_recipe(load_recipe(recipe), "8xH100")
    assert estimate.tokens_per_epoch == 2000 and estimate.hours


def test_a_pretrain_source_with_no_rows_is_refused_before_the_first_stage(tmp_path):
    """As an SFT source's: a later pretrain stage's empty file is not found after the stages before it trained."""
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import check_stage_inputs, plan_run
    from tempa.sft.stage_api import StageError

    docs = _docs(tmp_path / "docs.jsonl", 4, 7)
    (tmp_path / "more.jsonl").write_text("\n")
    train = "train: {max_steps: 2, lr_scheduler_kwargs: {num_decay_steps: 1}}"
    recipe = tmp_path / "cpt.yaml"
    recipe.write_text(f"""name: cpt
base_model: "tempa:tiny"
stages:
  - {{name: cpt, kind: pretrain, sources: [{{name: docs, path: "{docs}"}}], {train}}}
  - {{name: cpt2, kind: pretrain, sources: [{{name: more, path: more.jsonl}}], {train}}}
""")
    loaded = load_recipe(recipe)
    with pytest.raises(StageError) as info:
        check_stage_inputs(loaded, plan_run(loaded, tmp_path / "run"))
    assert str(info.value) == (f"stage 'cpt2' would fail: data source 'more': {tmp_path / 'more.jsonl'}: empty file "
                               "(expected one JSON object per line)")


def test_every_document_starts_as_the_base_model_encodes_it_bos_included(tmp_path, llama3_model_dir):
    """Llama 3's tokenizer starts every plain encode with <|begin_of_text|>, and the base model was pre-trained so;
    the stage tokenised documents without it, so every packed document started on a text token at position 0. Now a
    document is the tokenizer's own encode of it (bos where it puts one) with an eos after it."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama3_model_dir)
    texts = ["Selamat pagi, apa kabar?", "Xin chào thế giới.", "สวัสดีครับ"]
    path = tmp_path / "sea.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    config = PretrainStageConfig.model_validate({
        "name": "cpt", "sources": [{"name": "sea", "path": str(path)}],
        "train": {"max_length": 64, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
    data = prepare_pretrain_data(config, tokenizer, tmp_path / "cache", seed=0)
    chunks = [list(row) for row in load_from_disk(str(data.train_path))["input_ids"]]
    expected = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    assert all(ids[0] == tokenizer.bos_token_id for ids in expected)  # the test's premise: Llama 3 adds a bos
    assert sorted(chunks) == sorted(expected)
    assert data.tokens["sea"] == sum(map(len, expected))


def test_documents_end_with_the_end_of_text_token_not_the_baked_end_of_turn(tmp_path, llama3_model_dir):
    """The stage reads the run's baked tokenizer, whose eos the bake made the chat's end of turn (<|eot_id|>): every
    raw document ended with it, so continued pre-training taught the base to end a document as a chat turn ends
    (CPT new-user trial: 205 of 214 chunks held <|eot_id|>, none <|end_of_text|>)."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from tempa.chat_templates import bake_tokenizer

    baked = AutoTokenizer.from_pretrained(bake_tokenizer(llama3_model_dir, "llama3_thinking", tmp_path / "tok"))
    assert baked.eos_token == "<|eot_id|>"  # the premise
    end = baked.convert_tokens_to_ids("<|end_of_text|>")
    path = tmp_path / "sea.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in ["Selamat pagi.", "สวัสดี"]),
                    encoding="utf-8")
    config = PretrainStageConfig.model_validate({
        "name": "cpt", "sources": [{"name": "sea", "path": str(path)}],
        "train": {"max_length": 64, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
    data = prepare_pretrain_data(config, baked, tmp_path / "cache", seed=0)
    chunks = [list(row) for row in load_from_disk(str(data.train_path))["input_ids"]]
    assert sorted(chunks) == sorted(baked(t)["input_ids"] + [end] for t in ["Selamat pagi.", "สวัสดี"])
    assert not any(baked.eos_token_id in chunk for chunk in chunks)


def _encoded(tokenizer, path: Path) -> list[tuple[int, ...]]:
    """The documents of a JSON Lines file as the stage should train them: the tokenizer's encode, then eos."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [tuple(tokenizer(json.loads(line)["text"])["input_ids"] + [tokenizer.eos_token_id]) for line in lines]


@pytest.mark.parametrize("repeat", [True, False])
def test_a_budget_above_its_source_is_reached_by_repeating_it_or_said_to_fall_short(tmp_path, tiny_model_dir, repeat):
    """A SEA-LION-style mix (a small Thai source budgeted 2.5x what it holds, English replay cut at its budget) gave
    Thai its documents once and the run said nothing: the trained mix was not the recipe's, silently. Now
    `repeat: true` goes over the source again, in order, up to its budget (no held-out chunk trained on through a
    copy), and without it a warning says the source fell short; measured on the prepared rows."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from tempa.sft.pretrain_stage import budget_lines, estimate_pretrain

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    thai, english = _docs(tmp_path / "th.jsonl", 6, 1), _docs(tmp_path / "en.jsonl", 40, 2)
    th_docs, en_docs = _encoded(tokenizer, Path(thai)), _encoded(tokenizer, Path(english))
    th_whole = sum(map(len, th_docs))
    th_budget, en_budget = th_whole * 5 // 2, th_whole * 2
    assert en_budget < sum(map(len, en_docs))  # the premise: English is cut at its budget

    def prepare(heldout: float):
        config = PretrainStageConfig.model_validate({
            "name": "cpt", "heldout": heldout,
            "sources": [{"name": "th", "path": thai, "tokens": th_budget, "repeat": repeat},
                        {"name": "en", "path": english, "tokens": en_budget}],
            "train": {"max_length": 512, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
        data = prepare_pretrain_data(config, tokenizer, tmp_path / f"cache{heldout}", seed=0)
        train = [tuple(r) for r in load_from_disk(str(data.train_path))["input_ids"]]
        held = [tuple(r) for r in load_from_disk(str(data.eval_path))["input_ids"]] if data.eval_path else []
        return config, data, train, held

    _, _, train, held = prepare(0.2)
    assert held and not set(train) & set(held)  # a held-out document is never also trained on, through a copy
    config, data, train, _ = prepare(0.0)

    def of(docs, rows):  # the rows that are (a prefix of) one of these documents: every document fits one row
        return [r for r in rows if any(d[: len(r)] == r for d in docs)]

    th_rows, en_rows = of(th_docs, train), of(en_docs, train)
    assert len(th_rows) + len(en_rows) == len(train)
    th_tokens, en_tokens = sum(map(len, th_rows)), sum(map(len, en_rows))
    assert en_tokens == en_budget
    assert data.documents["th"] == len(th_docs)
    (line,) = budget_lines(config, data)
    if repeat:
        assert th_tokens == th_budget and th_tokens / en_tokens == pytest.approx(th_budget / en_budget, abs=1e-9)
        assert data.passes["th"] == pytest.approx(th_budget / th_whole, abs=1e-3)
        assert "'th'" in line[1] and "repeated 2.50 times" in line[1]
    else:
        assert th_tokens == th_whole
        assert line[0] == logging.WARNING and "'th'" in line[1] and "repeat: true" in line[1]
    notes = estimate_pretrain(config, None).tokens.notes  # `tempa plan` says what a budget above the source does
    assert ("repeat: gone over again" in notes[0]) is repeat and "`repeat: true`" in notes[1]


def test_blank_documents_are_skipped_and_a_row_without_its_text_is_named(tmp_path, tiny_model_dir):
    """An empty or whitespace-only document became a "document" of an eos alone (or of spaces and an eos), counted
    and trained on; a source of nothing but those trained on eos tokens instead of saying it had no text. A row
    without the text field said only "'text' is not a string". Now blank documents are skipped, a source of only
    those is refused, and a row without its field, or with a null or a number there, says which and what it has."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from tempa.sft.stage_api import StageError

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def prepare(name: str, rows: list[dict]):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        config = PretrainStageConfig.model_validate({
            "name": "cpt", "sources": [{"name": name, "path": str(path)}],
            "train": {"max_length": 64, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
        return prepare_pretrain_data(config, tokenizer, tmp_path / name, seed=0)

    data = prepare("web", [{"text": ""}, {"text": "  \n\t"}, {"text": "river rice"}])
    assert [list(r) for r in load_from_disk(str(data.train_path))["input_ids"]] == [
        tokenizer("river rice")["input_ids"] + [tokenizer.eos_token_id]]
    assert data.documents["web"] == 1
    with pytest.raises(StageError, match=r"^data source 'blank': no text to train on"):
        prepare("blank", [{"text": ""}, {"text": " "}])
    with pytest.raises(StageError, match=r"^data source 'body', line 2: no 'text' field \(fields: body, id\); "
                                         r"set text_field$"):
        prepare("body", [{"text": "ok"}, {"body": "x", "id": 1}])
    with pytest.raises(StageError, match=r"^data source 'null', line 1: 'text' is null; expected a string$"):
        prepare("null", [{"text": None}])
    with pytest.raises(StageError, match=r"^data source 'number', line 1: 'text' is a number \(int\); expected a "
                                         r"string$"):
        prepare("number", [{"text": 3}])


def test_plain_text_files_are_documents_as_the_source_says(tmp_path, tiny_model_dir):
    """Raw text is what a continued-pretraining team has most: a .txt file was refused ("unsupported file type"),
    and a folder of .txt shards was read by `datasets` one line per document, so every line of an article became
    a document of its own, with an eos after it and no attention to the line before. Now a .txt file, or a folder
    of them, is read by `txt_document`: one document per file (the default), per blank-line-separated block
    (CC-100's layout) or per line; a byte that is not UTF-8 is an error naming the file, line and column."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from tempa.sft.stage_api import StageError

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.txt").write_text("river rice\nmango temple\n\nharbour island\n", encoding="utf-8")
    (shards / "b.txt").write_text("\ufeffmonsoon lantern\r\nmarket forest\r\n", encoding="utf-8")

    def prepare(path: Path, **source):
        config = PretrainStageConfig.model_validate({
            "name": "cpt", "sources": [{"name": "web", "path": str(path), **source}],
            "train": {"max_length": 64, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
        data = prepare_pretrain_data(config, tokenizer, tmp_path / f"c{len(list(tmp_path.iterdir()))}",
                                     seed=0)
        return sorted(list(r) for r in load_from_disk(str(data.train_path))["input_ids"])

    def rows(*texts: str):
        return sorted(tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts)

    assert prepare(shards) == rows("river rice\nmango temple\n\nharbour island\n", "monsoon lantern\nmarket forest\n")
    assert prepare(shards, txt_document="paragraph") == rows(
        "river rice\nmango temple", "harbour island", "monsoon lantern\nmarket forest")
    assert prepare(shards, txt_document="line") == rows(
        "river rice", "mango temple", "harbour island", "monsoon lantern", "market forest")
    assert prepare(shards / "a.txt", txt_document="line") == rows("river rice", "mango temple", "harbour island")

    from tempa.sft.data_config import DataError
    from tempa.sft.pretrain_stage import check_inputs

    def config_of(path: Path):
        return PretrainStageConfig.model_validate({
            "name": "cpt", "sources": [{"name": "web", "path": str(path)}],
            "train": {"lr_scheduler_kwargs": {"num_decay_steps": 1}}})

    check_inputs(config_of(shards / "a.txt"))  # the run's first check takes a .txt source (it refused the type)
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^data source 'web' \(.*blank\.txt\): has no text"):
        check_inputs(config_of(tmp_path / "blank.txt"))
    (shards / "c.txt").write_bytes(b"river\ncaf\xe9 rice\n")
    with pytest.raises(StageError, match=r"^data source 'web', c\.txt: line 2: invalid UTF-8 \(byte 0xe9 at column "
                                         r"4\)$"):
        prepare(shards)
    # ... and a file saved in another encoding is refused by the run's first check, before any stage trains
    (shards / "c.txt").write_bytes(b"river\ncaf\xe9 rice\nna\xefve\nse\xf1or\n")
    with pytest.raises(DataError, match=r"^data source 'web', c\.txt: line 2: not UTF-8 text \(byte 0xe9 at column "
                                        r"4\); 3 of the 3 lines .* save it as UTF-8$"):
        check_inputs(config_of(shards))
    with pytest.raises(ValueError, match="txt_document"):
        PretrainStageConfig.model_validate({
            "name": "cpt", "sources": [{"name": "web", "path": "org/corpus", "txt_document": "line"}],
            "train": {"lr_scheduler_kwargs": {"num_decay_steps": 1}}})


def test_blank_txt_files_in_a_source_folder_are_named_in_a_warning(tmp_path):
    """A folder of .txt files, one of them empty: the empty one gave no document and nothing said so (Thai trial);
    a folder of nothing but blank files is refused, as before."""
    from tempa.sft.pretrain_stage import input_warnings

    folder = tmp_path / "th"
    folder.mkdir()
    (folder / "a.txt").write_text("ข้าวมันไก่อร่อยมาก\n", encoding="utf-8")
    (folder / "empty.txt").write_text("", encoding="utf-8")
    (folder / "spaces.txt").write_text(" \n\t\n", encoding="utf-8")
    config = PretrainStageConfig.model_validate({"name": "cpt", "sources": [{"name": "th", "path": str(folder)}],
                                                 "train": {"lr_scheduler_kwargs": {"num_decay_steps": 1}}})
    assert input_warnings(config) == ["data source 'th': 2 of its 3 .txt files hold no text and give no document "
                                      "(empty.txt, spaces.txt)"]
    (folder / "empty.txt").write_text("ต้มยำกุ้ง\n", encoding="utf-8")
    (folder / "spaces.txt").write_text("ส้มตำ\n", encoding="utf-8")
    assert input_warnings(config) == []


def test_the_prepared_data_is_reused_by_a_run_whose_tokenizer_folder_differs_only_in_its_markers(tmp_path,
                                                                                                   tiny_model_dir):
    """The same recipe run twice with only `name` changed prepared its data twice: the cache was keyed by the baked
    tokenizer folder's files, DONE's finished_at among them. Now by what the tokenizer encodes (SFT's key), so the
    second run reads the first's entry; a tokenizer that encodes differently still gets its own."""
    import shutil

    from transformers import AutoTokenizer

    runs = []
    for run, finished in (("run-a", 1.0), ("run-b", 2.0)):
        folder = tmp_path / run / "tokenizer"
        shutil.copytree(tiny_model_dir, folder)
        (folder / "DONE").write_text(json.dumps({"fingerprint": "f", "finished_at": finished}), encoding="utf-8")
        runs.append(folder)
    config = PretrainStageConfig.model_validate({
        "name": "cpt", "sources": [{"name": "web", "path": _docs(tmp_path / "web.jsonl", 6, 1)}],
        "train": {"max_length": 64, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
    cache = tmp_path / "cache"
    first, second = (prepare_pretrain_data(config, AutoTokenizer.from_pretrained(folder), cache, seed=0)
                     for folder in runs)
    assert first.train_path == second.train_path
    assert [p.name for p in cache.iterdir() if (p / "train").is_dir()] == [first.train_path.parent.name]

    other = AutoTokenizer.from_pretrained(runs[0])
    other.add_tokens(["monsoon"])  # a token of the data: its ids change
    assert prepare_pretrain_data(config, other, cache, seed=0).train_path != first.train_path


def test_pretrain_rows_hold_no_mask_and_the_worker_trains_rows_written_with_or_without_one(tmp_path, tiny_model_dir):
    """The prepared rows stored an all-ones int64 `assistant_masks` (8 of their ~12 bytes a token) that the worker
    dropped unread. Now they hold `input_ids` only, and the worker's trainer labels every token of rows written
    either way (a cache entry of an earlier tempa keeps its column)."""
    from datasets import Sequence, Value, load_from_disk
    from transformers import AutoTokenizer

    from tempa.sft.kernels import KernelChoice
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import sft_trainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = PretrainStageConfig.model_validate({
        "name": "cpt", "sources": [{"name": "web", "path": _docs(tmp_path / "web.jsonl", 8, 4)}],
        "train": {"max_length": 64, "lr_scheduler_kwargs": {"num_decay_steps": 1}, "report_to": "none"}})
    data = prepare_pretrain_data(config, tokenizer, tmp_path / "cache", seed=0)
    rows = load_from_disk(str(data.train_path))
    assert rows.column_names == ["input_ids"]
    older = rows.add_column("assistant_masks", [[1] * len(ids) for ids in rows["input_ids"]],
                            feature=Sequence(Value("int64")))
    older.save_to_disk(str(tmp_path / "older"))

    trained = []
    for name, path in (("new", data.train_path), ("older", tmp_path / "older")):
        plan = TrainPlan.standalone(tiny_model_dir, tmp_path / f"out-{name}", config.train_args(), train_data=path)
        packed = sft_trainer(plan, tokenizer, KernelChoice(None, False)).train_dataset
        assert packed["labels"] == packed["input_ids"]  # every token is in the loss
        trained.append(sorted(map(tuple, packed["input_ids"])))
    assert trained[0] == trained[1]


def test_a_wrong_text_field_is_refused_before_the_run_and_on_the_first_rows_of_the_stage(tmp_path, tiny_model_dir,
                                                                                        monkeypatch):
    """`text_field: txt` (a typo) on a JSON Lines source passed `tempa plan`, and the stage read the whole source
    before it said "line 1: no 'txt' field". Now the check before the run (plan and run start) reads the first rows
    of a local file (JSON Lines or Parquet), and the stage checks its first rows before it reads every one."""
    import pandas as pd
    from transformers import AutoTokenizer

    from tempa.sft import pretrain_stage
    from tempa.sft.data_config import DataError
    from tempa.sft.pretrain_stage import check_inputs
    from tempa.sft.stage_api import StageError

    def config(path: str, text_field: str) -> PretrainStageConfig:
        return PretrainStageConfig.model_validate({
            "name": "cpt", "sources": [{"name": "ja", "path": path, "text_field": text_field}],
            "train": {"max_length": 64, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})

    lines = _docs(tmp_path / "ja.jsonl", 200, 1)
    check_inputs(config(lines, "text"))
    with pytest.raises(DataError, match=r"^data source 'ja', line 1: no 'txt' field \(fields: text, id\); "
                                        r"set text_field$"):
        check_inputs(config(lines, "txt"))
    parquet = tmp_path / "ja.parquet"
    pd.read_json(lines, lines=True).to_parquet(parquet)
    with pytest.raises(DataError, match=r"^data source 'ja': no 'txt' column \(columns: text, id\); set text_field$"):
        check_inputs(config(str(parquet), "txt"))
    (tmp_path / "num.jsonl").write_text('{"text": "rice"}\n{"text": 7}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"^data source 'ja', line 2: 'text' is a number \(int\); expected a string$"):
        check_inputs(config(str(tmp_path / "num.jsonl"), "text"))

    read = []  # rows the stage's workers read, after the first rows were checked
    indexed = pretrain_stage._indexed
    monkeypatch.setattr(pretrain_stage, "_indexed",
                        lambda batch, indices, **kwargs: read.append(len(indices)) or indexed(batch, indices, **kwargs))
    with pytest.raises(StageError, match=r"^data source 'ja', line 1: no 'txt' field"):
        prepare_pretrain_data(config(lines, "txt"), AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "c",
                              seed=0, num_proc=1)
    assert read == [16]  # the first rows only, not the 200


def test_a_document_longer_than_the_model_is_chunked_without_a_warning_and_the_entry_holds_no_build_lock(
        tmp_path, tiny_model_dir):
    """transformers warned "Token indices sequence length is longer than the specified maximum sequence length" in
    `tempa plan --hardware` and the run for a long document the stage chunks on purpose; and a completed cache entry
    still held its build's `.building` lock file. Neither now."""
    from transformers import AutoTokenizer

    from tempa.sft.pretrain_stage import held_tokens
    from tempa.sft.run_layout import COMPLETE

    class Records(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    path = tmp_path / "long.txt"
    path.write_text(" ".join(WORDS * 40), encoding="utf-8")
    config = PretrainStageConfig.model_validate({
        "name": "cpt", "sources": [{"name": "web", "path": str(path)}],
        "train": {"max_length": 16, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
    records = Records()
    logging.getLogger("transformers").addHandler(records)
    try:
        for step in ("plan", "run"):  # a fresh tokenizer each: transformers warns once per tokenizer
            tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
            tokenizer.model_max_length = 64
            if step == "plan":
                assert held_tokens(config.sources[0], tokenizer)[0] > 64
            else:
                data = prepare_pretrain_data(config, tokenizer, tmp_path / "cache", seed=0, num_proc=1)
    finally:
        logging.getLogger("transformers").removeHandler(records)
    assert not [m for m in records.messages if "Token indices sequence length" in m]
    assert data.chunks > 64 // 16  # the document was longer than the model and is chunked
    assert sorted(p.name for p in data.train_path.parent.iterdir()) == [COMPLETE, "stats.json", "train"]


def test_a_single_compressed_file_is_refused_with_the_folder_that_reads_it(tmp_path, tiny_model_dir):
    """A single .jsonl.gz was refused as "unsupported file type '.gz'; expected .jsonl, .json, .parquet or .csv",
    which left out .txt and that a folder holding the same file is read. Now the message says both; the folder
    route it names prepares the rows."""
    import gzip

    from transformers import AutoTokenizer

    from tempa.sft.data_config import DataError
    from tempa.sft.pretrain_stage import check_inputs

    (tmp_path / "ja").mkdir()
    packed = tmp_path / "ja" / "ja.jsonl.gz"
    packed.write_bytes(gzip.compress(Path(_docs(tmp_path / "ja.jsonl", 5, 2)).read_bytes()))

    def config(path: Path) -> PretrainStageConfig:
        return PretrainStageConfig.model_validate({
            "name": "cpt", "sources": [{"name": "ja", "path": str(path)}],
            "train": {"max_length": 64, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})

    with pytest.raises(DataError, match=r"a single compressed file \(ja.jsonl.gz\) is not read; put it in a folder "
                                        r"of its own and give the folder as the path"):
        check_inputs(config(packed))
    check_inputs(config(tmp_path / "ja"))
    data = prepare_pretrain_data(config(tmp_path / "ja"), AutoTokenizer.from_pretrained(tiny_model_dir),
                                 tmp_path / "cache", seed=0, num_proc=1)
    assert data.documents["ja"] == 5


@pytest.mark.parametrize(("name", "body", "where"), [
    ("latin.txt", b"caf\xe9 ol\xff\nriver rice\n", r"latin\.txt: line 1: invalid UTF-8 \(byte 0xe9 at column 4\)"),
    ("late.txt", b"river rice\n\nmango temple\nharbour \xfe\n", r"late\.txt: line 4: invalid UTF-8 \(byte 0xfe at column 9\)"),
])
def test_a_txt_source_with_a_byte_not_utf8_is_refused_by_the_check_before_the_run(tmp_path, name, body, where):
    """A .txt source with one line of non-UTF-8 bytes passed `tempa plan` (only a file mostly in another encoding was
    refused there) and the stage then stopped on it, while the same bytes in a .jsonl source were refused by the plan:
    now the check before the run refuses it with the stage's own message."""
    from tempa.sft.data_config import DataError
    from tempa.sft.pretrain_stage import check_inputs

    (tmp_path / name).write_bytes(body)
    config = PretrainStageConfig.model_validate({
        "name": "cpt", "sources": [{"name": "e", "path": str(tmp_path / name), "txt_document": "paragraph"}],
        "train": {"max_length": 64, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
    with pytest.raises(DataError, match=rf"^data source 'e', {where}$"):
        check_inputs(config)
    (tmp_path / name).write_bytes(body.decode("latin-1").encode("utf-8"))  # the same text, saved as UTF-8
    check_inputs(config)
