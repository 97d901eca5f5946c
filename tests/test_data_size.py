"""`tempa plan` measures a local source's tokens per row instead of assuming 800 or 4,000: with the pipeline's own
rendering and tokenising when the base model's tokenizer is here, else by hand-countable approximation."""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
from pathlib import Path

import pytest

from sft_helpers import WEATHER
from tempa.sft.data_config import DataConfig, DataError, SourceConfig
from tempa.sft.data_size import (
    LONG_LINE_BYTES,
    TOKENS_PER_ANSWER,
    TOKENS_PER_RENDERING,
    TOKENS_PER_TURN,
    ApproximateCounter,
    LocalRows,
    SampledLength,
    jsonl_sample,
    sampled_tokens_per_row,
    scan_local_rows,
    source_size,
)
from tempa.sft.sources import RAW
from tempa.sft.stage_api import SourceSize


def _count_words(texts: list[str]) -> list[int]:
    return [len(text.split()) for text in texts]


_words = ApproximateCounter(_count_words, "words")  # hand-countable: a token is a word


def _lines(*rows: object) -> LocalRows:
    return _raw_lines(*(json.dumps(row, ensure_ascii=False).encode() for row in rows))


def _raw_lines(*lines: bytes) -> LocalRows:
    return jsonl_sample(len(lines), list(enumerate(lines, start=1)))


TWO_QUESTIONS = {"messages": [
    {"role": "user", "content": "a b"},
    {"role": "assistant", "content": "c", "reasoning_content": "r1 r2"},
    {"role": "user", "content": "d"},
    {"role": "assistant", "content": "e f", "reasoning_content": "r3"},
]}


def _source(folder: Path, **mode: object) -> SourceConfig:
    (folder / "x.jsonl").touch()
    return SourceConfig.model_validate({"name": "s", "path": "x.jsonl", **mode}, context={"base_dir": str(folder)})


def test_tokens_per_row_count_the_renderings_the_pipeline_trains_by_hand(tmp_path: Path):
    turn, answer, begin = TOKENS_PER_TURN, TOKENS_PER_ANSWER, TOKENS_PER_RENDERING
    # The last answer's rendering shows the first answer as history (no reasoning, no think block), so
    # the first answer has a rendering of its own in either mode.
    # On: a b | c | d | e f + r3 (7 words), then a b | c + r1 r2 (5 words).
    on = (7 + 4 * turn + answer + begin) + (5 + 2 * turn + answer + begin)
    off = (6 + 4 * turn + answer + begin) + (3 + 2 * turn + answer + begin)
    # A tool loop: the call step is a prefix of the answer's rendering and trains inside it.
    loop = {"messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "tool_calls": [{"type": "function", "function": {
            "name": "f", "arguments": {"x": 1}}}]},
        {"role": "tool", "content": "t u"},
        {"role": "assistant", "content": "c d"},
    ]}
    call = json.dumps([{"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}])
    looped = 6 + len(call.split()) + 4 * turn + 2 * answer + begin
    lines = _lines(TWO_QUESTIONS, loop)
    assert sampled_tokens_per_row(_source(tmp_path), lines, _words) == SampledLength(round((on + looped) / 2), 2, 2)
    off_source = _source(tmp_path, thinking_mode="off")
    assert sampled_tokens_per_row(off_source, lines, _words) == SampledLength(round((off + looped) / 2), 2, 2)
    mixed = _source(tmp_path, thinking_mode="mixed", thinking_ratio=0.5)
    assert sampled_tokens_per_row(mixed, _lines(TWO_QUESTIONS), _words) == SampledLength(round((on + off) / 2), 1, 1)
    # The pipeline drops a sample outside the token limits. With thinking off the samples are the
    # two-question row's two renderings (short, off - short) and the loop's one (looped): 1 of 3 dropped.
    short = 3 + 2 * turn + answer + begin
    assert short < off - short < looped
    # The loop's only sample is over the limit, so the pipeline rejects that row: one row planned, not two at
    # half the tokens each (the same tokens in all, but a step count of rows would be off).
    assert sampled_tokens_per_row(off_source, lines, _words, (None, off - short)) == SampledLength(off, 1, 2, 1 / 3)
    assert sampled_tokens_per_row(off_source, lines, _words, (short + 1, None)) == SampledLength(
        round((off - short + looped) / 2), 2, 2, 1 / 3)


def test_lines_that_are_not_rows_are_left_out_of_the_average(tmp_path: Path):
    one_turn = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b c"}]}
    lone_surrogate = b'{"messages": [{"role": "user", "content": "a\\ud800"}, {"role": "assistant", "content": "b"}]}'
    no_answer = json.dumps({"messages": [{"role": "user", "content": "no answer"}]}).encode()
    lines = _raw_lines(b"{broken", b'"a string"', lone_surrogate, no_answer, json.dumps(one_turn).encode())
    sampled = sampled_tokens_per_row(_source(tmp_path, thinking_mode="off"), lines, _words)
    assert sampled == SampledLength(3 + 2 * TOKENS_PER_TURN + TOKENS_PER_ANSWER + TOKENS_PER_RENDERING, 1, 5)


def _plan_note(folder: Path, lines: list[str], **source: object) -> tuple[SourceSize, str]:
    path = folder / "rows.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    config = SourceConfig.model_validate({"name": "s", "path": "rows.jsonl", "thinking_mode": "off", **source},
                                         context={"base_dir": str(folder)})
    size = source_size(config, 0, 800, {}, _words)
    return size, " ".join(size.how.split())


ROW = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b c"}]})
ROW_TOKENS = 3 + 2 * TOKENS_PER_TURN + TOKENS_PER_ANSWER + TOKENS_PER_RENDERING


def test_lines_that_will_be_rejected_are_not_planned_as_rows(tmp_path: Path):
    size, note = _plan_note(tmp_path, [ROW, "{broken"] * 50)
    assert (size.rows, size.tokens_per_row) == (50, ROW_TOKENS)
    assert "100 lines in the file, ~50 of them kept (~50 rejected)" in note
    assert "50 of 100 sampled lines will be rejected (50 malformed_row; e.g. rows.jsonl:2: malformed_row: not valid JSON" \
        in note


def test_the_plan_says_why_rows_will_be_rejected_and_where_the_first_of_each_reason_is(tmp_path: Path):
    """A new team's data with a few malformed rows: the plan said how many sampled lines would be rejected, not why
    nor where, so the run was the first to tell (after the stages before it trained)."""
    unanswered = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    text_only = json.dumps({"text": "a b"})
    long = json.dumps({"messages": [{"role": "user", "content": "a " * 40}, {"role": "assistant", "content": "b"}]})
    lines = [ROW, "{broken", ROW, unanswered, text_only, long, ROW, "{broken", unanswered, ROW]
    (tmp_path / "rows.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    config = SourceConfig.model_validate({"name": "s", "path": "rows.jsonl", "thinking_mode": "off"},
                                         context={"base_dir": str(tmp_path)})
    note = " ".join(source_size(config, 0, 800, {}, _words, limits=(None, ROW_TOKENS + 10)).how.split())
    assert "10 lines in the file, ~4 of them kept (~6 rejected)" in note
    assert ("6 of 10 sampled lines will be rejected (3 malformed_row, 2 role_order, 1 too_long; e.g. "
            "rows.jsonl:2: malformed_row: not valid JSON") in note
    assert "rows.jsonl:4: role_order: does not end with an assistant turn; rows.jsonl:6: too_long)" in note
    assert "rows.jsonl:8" not in note  # a reason's first reject only


def test_a_folder_of_json_lines_files_names_the_file_of_a_reject(tmp_path: Path):
    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "a.jsonl").write_text(ROW + "\n" + ROW + "\n", encoding="utf-8")
    (folder / "b.jsonl").write_text(ROW + "\n{broken\n", encoding="utf-8")
    config = SourceConfig.model_validate({"name": "s", "path": "chats", "thinking_mode": "off"},
                                         context={"base_dir": str(tmp_path)})
    note = " ".join(source_size(config, 0, 800, {}, _words).how.split())
    assert "(1 malformed_row; e.g. b.jsonl:2: malformed_row: not valid JSON" in note


def test_a_source_the_run_will_fail_on_says_so(tmp_path: Path):
    for lines in (["{broken"] * 20, [json.dumps({"messages": [{"role": "user", "content": "no answer"}]})] * 20):
        size, note = _plan_note(tmp_path, lines)
        assert size.rows == 0 and "none of its 20 sampled lines is a row" in note
        assert "the run will fail on this source" in note
    size, note = _plan_note(tmp_path, [])
    assert size.rows == 0 and "the run will fail on this source, as the file has no rows" in note
    size, note = _plan_note(tmp_path, ["{broken"] * 20, rows=10)  # a budget does not hide it
    assert "the run will fail on this source" in note


def test_a_line_over_a_mebibyte_is_counted_by_its_bytes_not_parsed(tmp_path: Path):
    long_line = json.dumps({"messages": [{"role": "user", "content": "q"},
                                         {"role": "assistant", "content": "x" * (LONG_LINE_BYTES + 10)}]})
    scanned = scan_local_rows(_write(tmp_path / "long.jsonl", [ROW, long_line]), 8)
    assert scanned is not None and scanned.long_lines == (len(long_line) + 1,) and scanned.sampled == 2
    source = SourceConfig.model_validate({"name": "s", "path": "long.jsonl", "thinking_mode": "off"},
                                         context={"base_dir": str(tmp_path)})
    long_tokens = -(-(len(long_line) + 1) // 4)  # 4 bytes a token
    assert sampled_tokens_per_row(source, scanned, _words) == SampledLength(
        round((ROW_TOKENS + long_tokens) / 2), 2, 2)
    assert sampled_tokens_per_row(source, scanned, _words, (None, 2048)) == SampledLength(ROW_TOKENS, 1, 2, 0.5)


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_a_file_sorted_by_length_is_sampled_across_its_length(tmp_path: Path):
    path = tmp_path / "sorted.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(5000):
            handle.write(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "w " * i}]}) + "\n")
            if i % 1000 == 0:
                handle.write("\n")  # blank lines are not rows
    scanned = scan_local_rows(str(path), 256)
    assert scanned is not None and scanned.rows == 5000 and scanned.sampled == 256
    mean_words = sum(len(json.loads(line)["messages"][1]["content"].split()) for line in scanned.sample[RAW]) / 256
    assert abs(mean_words - 2499.5) < 250  # the first 256 rows would average 127.5
    assert scan_local_rows(str(path), 256) == scanned  # a fixed seed: the same plan every time


def _conversation(rng: random.Random, words: list[str], i: int) -> dict:
    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    if i % 10 == 5:  # a tool loop with its tool's definition
        return {"tools": [WEATHER], "messages": [
            {"role": "user", "content": text(5, 20)},
            {"role": "assistant", "content": "", "reasoning_content": text(10, 40), "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": rng.choice(words)}}}]},
            {"role": "tool", "content": text(2, 6)},
            {"role": "assistant", "content": text(5, 30), "reasoning_content": text(5, 30)}]}
    messages = [{"role": "system", "content": text(5, 15)}] if i % 7 == 0 else []
    for _ in range(2 if i % 3 == 0 else 1):
        messages.append({"role": "user", "content": text(5, 40)})
        answer = {"role": "assistant", "content": text(10, 80)}
        if i % 4:
            answer["reasoning_content"] = text(20, 150)
        messages.append(answer)
    return {"messages": messages}


def _pipeline_tokens(config: DataConfig, tokenizer, folder: Path, max_length: int | None) -> list:
    from tempa.sft.data import prepare_sft_data

    return prepare_sft_data(config, tokenizer, out_dir=folder / f"out{max_length}", cache_dir=folder / "cache",
                            seed=0, max_length=max_length).mix.sources


@pytest.mark.parametrize("template", ["llama3_thinking", "chatml_thinking"])
def test_the_estimate_is_what_the_pipeline_renders(tmp_path: Path, llama3_model_dir: Path, template: str):
    """Meta's Llama 3 tokenizer; multilingual rows, multi-turn, system prompts, tool loops with their tools'
    definitions, with and without reasoning. With the tokenizer and template the plan renders and tokenises a
    sample as the pipeline does: when the sample is the whole file, its tokens per row are the pipeline's
    (a ``mixed`` source weighs each row's two renderings where the run draws which rows think: within 5%). Before, constants for the
    template's tokens counted llama3_thinking's tool definitions 24% low."""
    from transformers import AutoTokenizer

    from tempa.chat_templates import load_template
    from tempa.sft.data_size import TemplateCounter

    rng = random.Random(7)
    words = ["ibu", "kota", "adalah", "Jakarta", "東京", "日本の", "首都", "กรุงเทพ", "เมืองหลวง", "thời", "tiết",
             "weather", "capital", "because", "the", "answer", "42", "số", "ครับ", "です"]
    path = tmp_path / "rows.jsonl"
    rows = [_conversation(rng, words, i) for i in range(240)]
    for row in rows[5::10]:  # the tool rows: many definitions, as an agent dataset has
        row["tools"] = [WEATHER] * 6
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    modes = [{"thinking_mode": "on"}, {"thinking_mode": "off"}, {"thinking_mode": "mixed", "thinking_ratio": 0.5}]
    config = DataConfig.model_validate(
        {"sources": [{"name": f"s{k}", "path": str(path), **mode} for k, mode in enumerate(modes)], "heldout": 0})
    tokenizer = AutoTokenizer.from_pretrained(llama3_model_dir)
    tokenizer.chat_template = load_template(template)
    counter = TemplateCounter(tokenizer)
    sample = scan_local_rows(str(path), 256)
    # Without limits, then with a max_length that rejects the longer samples as too long.
    for max_length in (None, 200):
        for source, prepared in zip(config.sources, _pipeline_tokens(config, tokenizer, tmp_path, max_length),
                                    strict=True):
            estimate = sampled_tokens_per_row(source, sample, counter, (None, max_length))
            if source.thinking_mode == "mixed":  # the plan weighs each row's two renderings; the run draws rows
                planned = estimate.rows * estimate.tokens_per_row
                assert abs(planned / prepared.tokens_kept - 1) < 0.05, (max_length, estimate, prepared.tokens_kept)
            else:  # the rows the length limits leave, and their tokens
                assert estimate.rows == prepared.rows_tokenized, (source.thinking_mode, max_length, estimate)
                assert estimate.tokens_per_row == round(prepared.tokens_kept / prepared.rows_tokenized), (
                    source.thinking_mode, max_length, estimate, prepared)
            assert (estimate.rows < 240) == (estimate.outside_limits > 0.1) == (max_length is not None)


def _formats(folder: Path, rows: list[dict]) -> dict[str, Path]:
    """The same alpaca-style rows as every kind of local source the pipeline reads."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {"jsonl": folder / "rows.jsonl", "json": folder / "rows.json", "parquet": folder / "rows.parquet",
             "csv": folder / "rows.csv", "saved": folder / "saved", "json-lines": folder / "lines.json"}
    paths["jsonl"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    paths["json-lines"].write_bytes(b"\xef\xbb\xbf\r\n" + paths["jsonl"].read_bytes())  # JSON Lines in a .json file
    paths["json"].write_text(json.dumps({"data": rows}, ensure_ascii=False), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"], row_group_size=64)  # 5 row groups
    _write_csv(paths["csv"], rows)
    datasets.Dataset.from_list(rows).save_to_disk(str(paths["saved"]))
    return {**paths, **_shards(folder, rows)}


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _shards(folder: Path, rows: list[dict], test_rows: list[dict] = ()) -> dict[str, Path]:
    """``rows`` as folders of data files, as a dataset downloaded from the hub has them: Parquet shards in
    ``data/`` (with ``test_rows`` as a test split), JSON Lines in three files (one with a blank line) and a fourth
    holding only a BOM (and the same as ``.json`` files), JSON lists in two, CSV in two (for rows of text fields
    only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    third = len(rows) // 3
    parts = [rows[:third], rows[third:2 * third], rows[2 * third:]]
    flat = all(isinstance(value, str) for row in rows for value in row.values())
    paths = {kind: folder / f"{kind}-shards" for kind in ("parquet", "jsonl", "json", "csv")[:4 if flat else 3]}
    (paths["parquet"] / "data").mkdir(parents=True)
    for k, part in enumerate(parts):
        pq.write_table(pa.Table.from_pylist(part), paths["parquet"] / "data" / f"train-{k:05d}-of-00003.parquet",
                       row_group_size=40)
    if test_rows:
        pq.write_table(pa.Table.from_pylist(list(test_rows)), paths["parquet"] / "data" / "test-00000-of-00001.parquet")
    for kind in list(paths)[1:]:
        paths[kind].mkdir()
    for k, part in enumerate(parts):
        lines = [json.dumps(r, ensure_ascii=False) for r in part]
        if k == 1:
            lines.insert(5, "")
        (paths["jsonl"] / f"part{k}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (paths["jsonl"] / "part3.jsonl").write_bytes(b"\xef\xbb\xbf\n")  # a shard left empty: no row in plan or run
    paths["json-lines"] = folder / "json-lines-shards"
    paths["json-lines"].mkdir()
    for shard in paths["jsonl"].iterdir():
        (paths["json-lines"] / f"{shard.stem}.json").write_bytes(shard.read_bytes())
    for k, part in enumerate((rows[:third], rows[third:])):
        (paths["json"] / f"rows{k}.json").write_text(json.dumps(part, ensure_ascii=False), encoding="utf-8")
        if flat:
            _write_csv(paths["csv"] / f"rows{k}.csv", part)
    return {f"{kind}-folder": path for kind, path in paths.items()}


def test_every_local_source_kind_is_sampled_and_measured_as_the_pipeline_tokenises_it(
        tmp_path: Path, tiny_tokenizer):
    """JSON, Parquet, CSV and saved datasets were counted but not sampled (their length assumed); JSON not even
    counted; folders of data files neither. Rows with a multi-line field, an empty input and an instruction that
    is a special token (rejected)."""
    from tempa.chat_templates import load_template
    from tempa.sft.data_size import TemplateCounter

    rng = random.Random(3)
    rows = [{"instruction": " ".join(rng.choice(["ibu", "kota", "東京", "answer"]) for _ in range(rng.randint(2, 30))),
             "input": "" if i % 3 else "line one\nline two",
             "output": " ".join(rng.choice(["ya", "tidak", "首都", "42"]) for _ in range(rng.randint(1, 60)))}
            for i in range(300)]
    rows[17]["instruction"] = "<|eot_id|>"
    tiny_tokenizer.chat_template = load_template("llama3_thinking")
    counter = TemplateCounter(tiny_tokenizer)
    measured = {}
    for kind, path in _formats(tmp_path, rows).items():
        config = DataConfig.model_validate({"sources": [{"name": kind, "path": str(path), "format": "alpaca",
                                                         "thinking_mode": "off"}], "heldout": 0})
        (source,) = config.sources
        (prepared,) = _pipeline_tokens(config, tiny_tokenizer, tmp_path / kind, None)
        sample = scan_local_rows(str(path), 300)
        assert sample is not None and sample.rows == 300 and sample.sampled == 300, kind
        estimate = sampled_tokens_per_row(source, sample, counter)
        assert estimate.rows == prepared.rows_tokenized == 299, kind  # the special token's row is a reject
        assert estimate.tokens_per_row == round(prepared.tokens_kept / 299), kind
        size = source_size(source, 0, 800, {}, counter)  # the plan's 256 rows of 300
        assert size.rows == 299 and abs(size.tokens_per_row / estimate.tokens_per_row - 1) < 0.05, (kind, size)
        measured[kind] = estimate
        partial = sampled_tokens_per_row(source, scan_local_rows(str(path), 50), counter)
        assert partial.lines == 50 and abs(partial.tokens_per_row / estimate.tokens_per_row - 1) < 0.25, kind
    assert len({m.tokens_per_row for m in measured.values()}) == 1, measured


def test_a_folder_of_data_files_is_sampled_as_datasets_loads_it(tmp_path: Path, tiny_tokenizer):
    """Conversations in shards, some answers with reasoning and some without, some rows with tools: ``datasets``
    types a folder's rows together (a turn without ``reasoning_content`` gets it null, a tool definition every
    field any definition has), and the plan measures the rows so typed. The split's files only: the Parquet
    folder's test split is planned on its own rows."""
    from tempa.chat_templates import load_template
    from tempa.sft.data_size import TemplateCounter

    rng = random.Random(5)
    words = ["ibu", "kota", "東京", "answer", "because", "ครับ"]
    rows = [_conversation(rng, words, i) for i in range(150)]
    tests = [_conversation(rng, words, i) for i in range(40, 70)]
    for row in tests:
        row["messages"][-1]["content"] += " longer" * 30
    tiny_tokenizer.chat_template = load_template("llama3_thinking")
    counter = TemplateCounter(tiny_tokenizer)
    for kind, path in _shards(tmp_path, rows, tests).items():
        for split, expected in ("train", rows), ("test", tests):
            if split == "test" and kind != "parquet-folder":
                continue
            config = DataConfig.model_validate({"sources": [{"name": "s", "path": str(path), "split": split,
                                                             "thinking_mode": "on"}], "heldout": 0})
            (prepared,) = _pipeline_tokens(config, tiny_tokenizer, tmp_path / f"{kind}-{split}", None)
            sample = scan_local_rows(str(path), 300, split)
            assert sample is not None and sample.rows == sample.sampled == len(expected), (kind, split, sample)
            estimate = sampled_tokens_per_row(config.sources[0], sample, counter)
            assert estimate.rows == prepared.rows_tokenized == len(expected), (kind, split)
            assert estimate.tokens_per_row == round(prepared.tokens_kept / len(expected)), (kind, split, estimate)
    # Sampled across the shards (a reservoir over every file), the same rows every time.
    first = scan_local_rows(str(tmp_path / "jsonl-shards"), 30)
    assert first == scan_local_rows(str(tmp_path / "jsonl-shards"), 30) and first.rows == 150
    position = {row["messages"][0]["content"]: i for i, row in enumerate(rows)}
    drawn = [position[json.loads(line)["messages"][0]["content"]] for line in first.sample[RAW]]
    assert len(set(drawn)) == 30 and {i // 50 for i in drawn} == {0, 1, 2}, drawn


def _edge_files(folder: Path) -> dict[str, Path]:
    """Files a reviewer found the plan and the run disagreeing on: the plan must read each as the run does."""
    import datasets

    row = {"prompt": "a question", "response": "an answer"}
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {name: folder / name for name in ("two_lists.json", "deep.json", "corrupt.parquet", "big_field.csv",
                                              "bom.csv", "latin1.csv", "na.csv", "empty.csv", "header.csv", "dict",
                                              "shards", "corrupt_shard", "empty_folder", "csv_folder",
                                              "unicode_blank.jsonl", "unicode_blank_first.json",
                                              "unicode_blank_shard")}
    files["two_lists.json"].write_text(json.dumps({"a": [row], "b": [row]}), encoding="utf-8")
    files["deep.json"].write_text("[" * 100_000, encoding="utf-8")
    files["corrupt.parquet"].write_text("not parquet", encoding="utf-8")
    files["big_field.csv"].write_text(f'prompt,response\nq,"{"w " * 100_000}"\nq2,a2\n', encoding="utf-8")
    files["bom.csv"].write_bytes(b"\xef\xbb\xbfprompt,response\nq,a\n")
    files["latin1.csv"].write_bytes("prompt,response\nq,caf\u00e9\n".encode("latin-1"))
    files["na.csv"].write_text("prompt,response\nq,NA\nq,null\nq,fine\n", encoding="utf-8")
    files["empty.csv"].write_text("", encoding="utf-8")
    files["header.csv"].write_text("prompt,response\n", encoding="utf-8")
    datasets.DatasetDict({"train": datasets.Dataset.from_list([row] * 3),
                          "test": datasets.Dataset.from_list([row] * 2)}).save_to_disk(str(files["dict"]))
    for name in ("shards", "corrupt_shard", "empty_folder", "csv_folder"):
        files[name].mkdir()
    files["unicode_blank_shard"].mkdir()
    for k in range(2):  # a train split only
        pq.write_table(pa.Table.from_pylist([row] * 3), files["shards"] / f"train-{k:05d}-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist([row] * 3), files["corrupt_shard"] / "train-00000-of-00002.parquet")
    (files["corrupt_shard"] / "train-00001-of-00002.parquet").write_text("not parquet", encoding="utf-8")
    (files["csv_folder"] / "a.csv").write_bytes(b"\xef\xbb\xbfprompt,response\nq,a\nq,NA\n")
    (files["csv_folder"] / "b.csv").write_text("prompt,response\nq2,a2\n", encoding="utf-8")
    # Lines of whitespace that str.strip() removes and bytes.strip() keeps: no-break, ideographic, em spaces,
    # NEL, a file separator, a line separator; the run skipped them as blank, the plan counted them as rows.
    line = json.dumps(row)
    files["unicode_blank.jsonl"].write_text(f"{line}\n\u00a0\n{line}\n\u3000 \n\x85\n\x1c\u2003\n\u2028\n{line}\n\u00a0",
                                            encoding="utf-8")
    # A .json file whose first line is such a line is JSON Lines, as with a first line of spaces (it was taken
    # for a document, and failed as one).
    files["unicode_blank_first.json"].write_text(f"\u00a0\n{line}\n{line}\n", encoding="utf-8")
    (files["unicode_blank_shard"] / "a.json").write_text(f"{line}\n{line}\n", encoding="utf-8")
    (files["unicode_blank_shard"] / "b.json").write_text("\u3000\n", encoding="utf-8")  # a shard left blank
    return files


def test_the_plan_reads_every_file_as_the_run_does(tmp_path: Path, tiny_tokenizer):
    """The plan says the run will fail exactly where it does, and otherwise plans the rows the run keeps (a CSV
    read as pandas reads it, a dataset dict's split, a folder's split); it never stops on a file (before: a CSV field over 128 KiB,
    a corrupt Parquet file or a deeply nested JSON stopped the plan with an error)."""
    from tempa.chat_templates import load_template
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_size import TemplateCounter

    tiny_tokenizer.chat_template = load_template("llama3_thinking")
    counter = TemplateCounter(tiny_tokenizer)
    for name, path in _edge_files(tmp_path).items():
        for split in ("train", "test") if name in ("dict", "shards") else ("train",):
            config = DataConfig.model_validate({"sources": [{"name": "s", "path": str(path), "split": split,
                                                             "format": "prompt_response", "thinking_mode": "off"}],
                                                "heldout": 0})
            size = source_size(config.sources[0], 0, 800, {}, counter)
            try:
                mix = prepare_sft_data(config, tiny_tokenizer, out_dir=tmp_path / f"out-{name}-{split}",
                                       cache_dir=tmp_path / "cache", seed=0).mix
            except DataError as exc:
                assert size.rows == 0 and "the run will fail on this source" in size.how, (name, size)
                assert not name.startswith("unicode_blank"), exc  # rows and blank lines: both read the rows
                continue
            assert "fail" not in size.how and size.rows == mix.total.rows_kept, (name, split, size, mix.total)
            # and counts the rows the run reads (a blank line is none), not just the rows it keeps
            assert scan_local_rows(str(path), 256, split).rows == mix.total.rows_in, (name, split, size, mix.total)
    assert "cannot be read: Parquet magic bytes not found" in source_size(DataConfig.model_validate(
        {"sources": [{"name": "s", "path": str(tmp_path / "corrupt.parquet")}]}).sources[0], 0, 800, {}, counter).how
    # A folder of files the plan does not read says so; its size is not guessed.
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("one line\n", encoding="utf-8")
    texts = source_size(DataConfig.model_validate({"sources": [{"name": "s", "path": str(tmp_path / "texts")}]})
                        .sources[0], 0, 800, {}, counter)
    assert texts.rows is None and "a folder of files other than Parquet, CSV or JSON" in texts.how, texts
    # Compressed shards (the run's datasets loader reads them) are not sampled either, rather than called unreadable.
    (tmp_path / "gz").mkdir()
    with gzip.open(tmp_path / "gz" / "train-00000-of-00001.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    packed = source_size(DataConfig.model_validate({"sources": [{"name": "s", "path": str(tmp_path / "gz")}]})
                         .sources[0], 0, 800, {}, counter)
    assert packed.rows is None and "(or compressed), not counted before preparing" in packed.how, packed


def test_a_csv_counts_records_not_lines(tmp_path: Path):
    (tmp_path / "rows.csv").write_text('prompt,response\n"two\nlines","x"\n"a","b\nc\nd"\n', encoding="utf-8")
    scanned = scan_local_rows(str(tmp_path / "rows.csv"), 8)
    assert scanned is not None and scanned.rows == 2 and scanned.sample == {
        "prompt": ["two\nlines", "a"], "response": ["x", "b\nc\nd"]}


def test_with_dedup_on_the_plan_says_its_rows_include_duplicates(tmp_path: Path):
    """The plan samples rows one by one, so it cannot see duplicates; a reviewer's source of 180 rows, 80 of them
    repeats, was planned at 168 rows and kept 92. The note says so rather than implying they were left out."""
    from tempa.sft.data_config import CurationConfig

    path = tmp_path / "rows.jsonl"
    path.write_text((ROW + "\n") * 10, encoding="utf-8")
    config = SourceConfig.model_validate({"name": "s", "path": "rows.jsonl", "thinking_mode": "off"},
                                         context={"base_dir": str(tmp_path)})
    with_dedup = source_size(config, 0, 800, {}, _words, cur=CurationConfig.model_validate({"dedup": {}}))
    assert with_dedup.rows == 10 and "any duplicates among these rows are counted, and dedup drops them when the stage runs" in \
        with_dedup.how
    assert "duplicates" not in source_size(config, 0, 800, {}, _words, cur=CurationConfig()).how


def test_a_budget_beyond_the_source_says_its_rows_repeat(tmp_path: Path):
    """Rows and token budgets up-sample a source smaller than they are (repeats, seen again every epoch); the plan
    knows the source's rows and says so, where before it named the budget alone."""
    lines = [ROW] * 40
    size, note = _plan_note(tmp_path, lines, rows=100)
    assert size.rows == 100 and "more than its 40 rows: each row ~2.5 times (up-sampled)" in note
    held = source_size(SourceConfig.model_validate({"name": "s", "path": "rows.jsonl", "thinking_mode": "off",
                                                    "rows": 100}, context={"base_dir": str(tmp_path)}),
                       8, 800, {}, _words)
    assert "more than its 32 rows left after 8 held out: each row ~3.1 times (up-sampled)" in " ".join(held.how.split())
    budget = 100 * ROW_TOKENS
    size, note = _plan_note(tmp_path, lines, tokens=budget)
    assert size.rows == 100 and "more than its 40 rows: each row ~2.5 times (up-sampled)" in note
    for fits in ({"rows": 40}, {"tokens": 40 * ROW_TOKENS}, {"rows": 10}):
        assert "up-sampled" not in _plan_note(tmp_path, lines, **fits)[1]


@pytest.mark.parametrize("kind", ["parquet", "csv", "saved"])
def test_a_typed_sources_rejects_are_named_by_the_row_the_run_names(tmp_path: Path, kind: str):
    """The plan named a Parquet source's rejects by their place in its sample, 1-based ("sampled row 21"), where the run's
    rejects.jsonl and log name the same row "row 20" (0-based, as pandas and datasets count): a user opening row 21 saw
    the wrong row. A reason's first reject is the first in the source, by number ("row 3" before "row 10")."""
    import datasets

    from tempa.sft.sources import row_names

    unanswered = [{"role": "user", "content": "no answer"}]
    chats = [[{"role": "user", "content": f"a {i}"}, {"role": "assistant", "content": "b c"}] for i in range(12)]
    for bad in (10, 3):
        chats[bad] = unanswered
    table = datasets.Dataset.from_dict({"messages": chats})
    path = {"parquet": "rows.parquet", "csv": "rows.csv", "saved": "rows"}[kind]
    if kind == "parquet":
        table.to_parquet(str(tmp_path / path))
    elif kind == "csv":
        with open(tmp_path / path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([["messages"], *([json.dumps(chat)] for chat in chats)])
    else:
        table.save_to_disk(str(tmp_path / path))
    config = SourceConfig.model_validate({"name": "s", "path": path, "thinking_mode": "off"},
                                         context={"base_dir": str(tmp_path)})
    note = " ".join(source_size(config, 0, 800, {}, _words).how.split())
    named = row_names(config).label(3)
    assert named == "row 3"  # the run's name for the row at index 3 (rejects.jsonl: "row": 3)
    assert f"e.g. {named}: role_order: does not end with an assistant turn" in note, note
    assert not re.search(r"sampled row \d|row 4\b", note)


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_a_json_documents_rejects_are_named_by_the_row_the_run_names(tmp_path: Path, folder: bool):
    # A .json file holding a list of rows: the plan said "sampled row 4" (a folder's: "a.json:", no row) where the
    # run says "row 3" ("a.json row 3") (a review of the fix for typed sources).
    from tempa.sft.sources import row_names

    chats = [{"messages": [{"role": "user", "content": f"a {i}"}, {"role": "assistant", "content": "b c"}]}
             for i in range(6)]
    chats[3] = {"messages": [{"role": "user", "content": "no answer"}]}
    where = tmp_path / "docs" if folder else tmp_path
    where.mkdir(exist_ok=True)
    (where / "a.json").write_text(json.dumps(chats), encoding="utf-8")
    if folder:
        (where / "b.json").write_text(json.dumps(chats[:2]), encoding="utf-8")
    config = SourceConfig.model_validate({"name": "s", "path": "docs" if folder else "a.json", "thinking_mode": "off"},
                                         context={"base_dir": str(tmp_path)})
    note = " ".join(source_size(config, 0, 800, {}, _words).how.split())
    named = row_names(config).label(3)
    assert named == ("a.json row 3" if folder else "row 3")
    assert f"e.g. {named}: role_order: does not end with an assistant turn" in note, note
