"""An SFT source with no rows is refused before the run's first stage, as the stage itself would refuse it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tempa.sft.data_config import DataError, SourceConfig
from tempa.sft.sources import READ_ERROR, check_source, describe, load_source

ROW = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def _parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"messages": pa.array([r["messages"] for r in rows],
                                                  type=pa.list_(pa.struct([("role", pa.string()),
                                                                           ("content", pa.string())])))}), path)


def _saved(path: Path, rows: list[dict]) -> None:
    import datasets

    datasets.Dataset.from_list(rows or [{"messages": []}]).select(range(len(rows))).save_to_disk(str(path))


def _folder(path: Path, texts: dict[str, str]) -> None:
    path.mkdir()
    for name, text in texts.items():
        (path / name).write_text(text, encoding="utf-8")


NO_ROWS = {
    "empty.jsonl": lambda p: p.write_text(""),
    "blank lines.jsonl": lambda p: p.write_text("\n \u00a0\n\u3000\n", encoding="utf-8"),
    "empty.json": lambda p: p.write_text("  \n"),
    "empty.csv": lambda p: p.write_text(""),
    "notes.txt": lambda p: p.write_text(json.dumps(ROW) + "\n"),
    "none.parquet": lambda p: _parquet(p, []),
    "saved": lambda p: _saved(p, []),
    "shards": lambda p: _folder(p, {"train-00000-of-00002.jsonl": "", "train-00001-of-00002.jsonl": "\n"}),
    "no train split": lambda p: _folder(p, {"test.jsonl": json.dumps(ROW) + "\n"}),
}


@pytest.mark.parametrize("name", list(NO_ROWS))
def test_a_source_with_no_rows_is_refused_with_the_runs_own_message(tmp_path, name):
    path = tmp_path / name
    NO_ROWS[name](path)
    source = SourceConfig(name="s", path=str(path))
    with pytest.raises(DataError) as checked:
        check_source(source)
    try:  # what the stage says when it reads the source: the loader's error, or its "has no rows" for none
        rows = len(load_source(source))
    except DataError as exc:
        # datasets' Parquet builder fails on a file of no rows ("An error occurred while generating the dataset"):
        # the check says what it is
        expected = f"{describe(source)}: has no rows" if name.endswith(".parquet") else str(exc)
    else:
        assert rows == 0
        expected = f"{describe(source)}: has no rows"
    assert str(checked.value) == expected and "\n" not in expected


HAS_ROWS = {
    "rows.jsonl": lambda p: p.write_text("\n" + json.dumps(ROW) + "\n"),
    "rows.json": lambda p: p.write_text(json.dumps([ROW])),
    "rows.csv": lambda p: p.write_text("prompt,completion\na,b\n"),
    "rows.parquet": lambda p: _parquet(p, [ROW]),
    "saved": lambda p: _saved(p, [ROW]),
    "shards": lambda p: _folder(p, {"train-00000-of-00002.jsonl": "", "train-00001-of-00002.jsonl": json.dumps(ROW)}),
    # A bad row is the stage's to find and report among its rejects: the check reads no rows.
    "bad row.jsonl": lambda p: p.write_text("{not json\n"),
}


@pytest.mark.parametrize("name", list(HAS_ROWS))
def test_a_source_with_rows_passes(tmp_path, name):
    path = tmp_path / name
    HAS_ROWS[name](path)
    check_source(SourceConfig(name="s", path=str(path)))
    check_source(SourceConfig(name="hub", path="HuggingFaceH4/no_robots"))  # read when the stage runs


def test_the_plan_warns_when_a_sources_first_rows_fit_no_row_of_its_format(tmp_path, capsys):
    """`format: alpaca` on prompt/completion rows: the plan said nothing, the stage ahead trained, and this one
    failed on 'all 6 rows were rejected'. The plan reads the first rows and says so; a row that fits stops it."""
    from tempa.recipes.cli import main
    from tempa.sft.data_size import format_problem

    pairs = tmp_path / "pc.jsonl"
    pairs.write_text("\n" + "".join(json.dumps({"prompt": f"q{i}", "completion": "a"}) + "\n" for i in range(3)))
    alpaca = SourceConfig(name="pc", path=str(pairs), format="alpaca")
    assert format_problem(alpaca) == ("data source 'pc': none of its first 3 rows is a row of format alpaca (line 2: "
                                      "expected 'instruction' to be a string, got nothing); the run rejects such rows")
    assert format_problem(SourceConfig(name="pc", path=str(pairs))) is None  # auto reads them
    with pairs.open("a") as more:
        more.write(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    assert format_problem(alpaca) is None  # one row of the format in the first 16: the rest are the stage's to judge

    (tmp_path / "rows.jsonl").write_text(json.dumps(ROW) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nbase_model: tempa:tiny\nstages:\n"
                      "  - {name: sft, kind: sft, data: {sources: [{name: t, path: rows.jsonl}]}}\n"
                      "  - {name: sft2, kind: sft, data: {sources: [{name: pc, path: bad.jsonl, format: sharegpt}]}}\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n")
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    assert "warning: stage 'sft2': data source 'pc': its first row is not a row of format sharegpt" in \
        " ".join(capsys.readouterr().out.split())


def test_the_plan_warns_when_a_thinking_source_has_no_traces(tmp_path, capsys):
    """`thinking_mode: on` on plain Q&A rows: each row without a trace trains with thinking off, so the source taught
    no thinking, and the run said so only at its end (a new user's trial). The plan reads the first rows and says so;
    one row with a trace, or a row of its own mode, stops it."""
    from tempa.recipes.cli import main
    from tempa.sft.data_size import trace_problem

    plain = tmp_path / "th.jsonl"
    plain.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"ถาม {i}"},
                                                      {"role": "assistant", "content": "ตอบ"}]}) + "\n"
                             for i in range(3)))
    thinking = SourceConfig(name="th", path=str(plain), thinking_mode="on")
    assert trace_problem(thinking) == (
        "data source 'th': thinking_mode is on, but none of its 3 rows has a reasoning trace (reasoning_content, "
        "thinking, reasoning, or a think block in the answer); a row without one trains with thinking off; give the "
        "rows their traces, or set the source's thinking_mode to off")
    assert trace_problem(SourceConfig(name="th", path=str(plain), thinking_mode="off")) is None
    assert trace_problem(SourceConfig(name="th", path=str(plain))) is None  # the default renders each row as it fits
    with plain.open("a") as more:
        more.write(json.dumps({"messages": [{"role": "user", "content": "ถาม"},
                                            {"role": "assistant", "content": "ตอบ", "reasoning_content": "คิด"}]}) + "\n")
    assert trace_problem(thinking) is None

    (tmp_path / "plain.jsonl").write_text(json.dumps(ROW) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nbase_model: tempa:tiny\nstages:\n"
                      "  - {name: sft, kind: sft, data: {sources: [{name: t, path: plain.jsonl, thinking_mode: 'on'}]}}\n")
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    assert ("warning: stage 'sft': data source 't': thinking_mode is on, but its one row has no reasoning trace"
            in " ".join(capsys.readouterr().out.split()))


def test_the_trace_warning_reads_rows_drawn_across_the_file_not_its_first_rows(tmp_path):
    """A Vietnamese file of plain chats followed by traced ones (two files joined; 19 of 42 traced) was warned of on
    its first 16 rows, on every plan and run: "none of its first 16 rows has a reasoning trace ... set the source's
    thinking_mode to off", advice that would have dropped the 19 traces."""
    from tempa.sft.data_size import trace_problem

    plain = [{"messages": [{"role": "user", "content": f"Hỏi {i}"}, {"role": "assistant", "content": "Đáp."}]}
             for i in range(23)]
    traced = [{"messages": [{"role": "user", "content": f"Tính {i}"},
                            {"role": "assistant", "content": "Đáp.", "reasoning_content": "Nghĩ."}]} for i in range(19)]
    path = tmp_path / "vi.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in plain + traced), encoding="utf-8")
    assert trace_problem(SourceConfig(name="vi", path=str(path), thinking_mode="on")) is None
    many = tmp_path / "many.jsonl"  # more rows than are drawn: the warning says they were drawn
    many.write_text("".join(json.dumps(plain[0]) + "\n" for _ in range(600)))
    assert "none of 256 rows drawn across its 600 has a reasoning trace" in \
        trace_problem(SourceConfig(name="m", path=str(many), thinking_mode="on"))


JAPANESE = [{"messages": [{"role": "user", "content": "日本の首都はどこですか？"},
                          {"role": "assistant", "content": "東京です。"}]}] * 3


def _jsonl_bytes(rows: list[dict], encoding: str) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode(encoding)


@pytest.mark.parametrize(("encoding", "said"), [("shift_jis", "line 1: not UTF-8 text (byte 0x93 at column 44)"),
                                                ("cp932", "line 1: not UTF-8 text"), ("utf-16", "UTF-16 text")])
def test_a_file_saved_in_another_encoding_is_refused_before_the_first_stage(tmp_path, encoding, said):
    """A Shift-JIS file of chats was found when its stage started, after the stage before it had trained: every
    row a reject, then 'all 3 rows were rejected'."""
    path = tmp_path / "ja.jsonl"
    path.write_bytes(_jsonl_bytes(JAPANESE, encoding))
    with pytest.raises(DataError, match="save it as UTF-8") as caught:
        check_source(SourceConfig(name="ja", path=str(path)))
    assert str(caught.value).startswith(f"data source 'ja' ({path}): {said}")
    assert len(str(caught.value).splitlines()) == 1


def test_a_utf8_file_with_a_broken_line_is_read_and_the_line_rejected(tmp_path):
    path = tmp_path / "ja.jsonl"
    path.write_bytes(_jsonl_bytes(JAPANESE[:1], "shift_jis") + _jsonl_bytes(JAPANESE * 2, "utf-8"))
    check_source(SourceConfig(name="ja", path=str(path)))  # two of three rows are UTF-8: the run rejects line 1
    errors = load_source(SourceConfig(name="ja", path=str(path)))[READ_ERROR]
    assert [error is not None for error in errors] == [True] + [False] * 6  # line 1 is the stage's reject


def test_a_shard_in_another_encoding_is_named_in_its_folder(tmp_path):
    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(_jsonl_bytes(JAPANESE, "utf-8"))
    (folder / "b.jsonl").write_bytes(_jsonl_bytes(JAPANESE, "shift_jis"))
    with pytest.raises(DataError, match=r"^data source 'ja' \(.*chats\): b\.jsonl: line 1: not UTF-8 text"):
        check_source(SourceConfig(name="ja", path=str(folder)))


def test_one_broken_line_among_english_rows_is_a_reject_not_a_foreign_file(tmp_path):
    """A review found a UTF-8 file refused whole for one cp1252 line among English rows (1 of the 1 lines with
    non-ASCII bytes in its head); the run rejects that one row."""
    path = tmp_path / "mixed.jsonl"
    english = {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]}
    path.write_bytes(_jsonl_bytes([english] * 300, "utf-8") + '{"prompt": "Brand™", "response": "ok"}\n'.encode("cp1252")
                     + _jsonl_bytes([english] * 2000 + JAPANESE * 100, "utf-8"))  # its head's only non-ASCII line
    check_source(SourceConfig(name="mixed", path=str(path)))


BROKEN_WHOLE = {
    # a JSON document cut off mid-row: the run parses it whole when the stage prepares it
    "cut.json": (lambda p: p.write_text('[\n {"prompt": "q", "response": "a"},\n {"prompt": "q2", "resp'),
                 lambda p: f"data source 'bad': {p}:3: not valid JSON"),
    "qa.csv": (lambda p: p.write_text("question,answer\nq,a\n"),
               lambda p: f"data source 'bad' ({p}): cannot tell the row format from the columns (question, answer)"),
    "qa.parquet": (lambda p: __import__("pyarrow.parquet").parquet.write_table(
                       __import__("pyarrow").table({"question": ["q"], "answer": ["a"]}), p),
                   lambda p: f"data source 'bad' ({p}): cannot tell the row format from the columns (question, answer)"),
}


@pytest.mark.parametrize("name", list(BROKEN_WHOLE))
def test_a_later_stages_unreadable_file_is_refused_by_plan_and_run_before_the_first_stage(tmp_path, capsys, name):
    """A truncated JSON document, or a CSV/Parquet file whose columns name no row format, in stage 2: the plan exited
    0 and the run failed on it only after stage 1 had trained. Both refuse it now, in one line naming the file."""
    from tempa.recipes.cli import main

    write, said = BROKEN_WHOLE[name]
    write(tmp_path / name)
    (tmp_path / "rows.jsonl").write_text(json.dumps(ROW) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nbase_model: tempa:tiny\nstages:\n"
                      "  - {name: s1, kind: sft, data: {sources: [{name: ok, path: rows.jsonl}]}}\n"
                      f"  - {{name: s2, kind: sft, data: {{sources: [{{name: bad, path: {name}}}]}}}}\n")
    for command in ("plan", "run"):
        assert main([command, str(recipe), "--run-dir", str(tmp_path / "run")]) != 0
        err = capsys.readouterr().err
        assert f"stage 's2' would fail: {said(tmp_path / name)}" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "run" / "s1").exists()  # stage 1 never started


def test_the_plan_warns_when_the_stages_filters_reject_every_first_row(tmp_path, capsys):
    """English rows in a source that keeps only Japanese: the stage ahead trained, then this one failed on 'all rows
    were rejected'. The plan reads the first rows through the stage's filters and names the commonest reason."""
    from tempa.recipes.cli import main

    (tmp_path / "rows.jsonl").write_text(json.dumps(ROW) + "\n")
    (tmp_path / "en.jsonl").write_text("".join(
        json.dumps({"prompt": f"How many apples does Alice have after buying {i} more at the market today?",
                    "response": f"Alice has {i + 4} apples now, counting the ones she bought."}) + "\n"
        for i in range(3)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nbase_model: tempa:tiny\nstages:\n"
                      "  - {name: s1, kind: sft, data: {sources: [{name: ok, path: rows.jsonl}]}}\n"
                      "  - {name: s2, kind: sft, data: {sources: [{name: en, path: en.jsonl, languages: [ja]}],"
                      " curation: {language: true}}}\n")
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("warning: stage 's2': data source 'en': the stage's filters reject all of its first 3 rows (3 language; "
            "e.g. line 1: language: detected 'en'") in out, out


def test_the_plan_warns_that_a_sources_languages_filter_nothing_without_the_language_filter(tmp_path, capsys):
    """`languages: [ja]` on a source, no `curation.language`: English rows trained without a word (the filter is off
    unless set, and `languages` only names its targets)."""
    from tempa.recipes.cli import main

    (tmp_path / "rows.jsonl").write_text(json.dumps(ROW) + "\n")
    recipe = tmp_path / "r.yaml"
    stage = "  - {name: s1, kind: sft, data: {sources: [{name: ja, path: rows.jsonl, languages: [ja]}, " \
            "{name: all, path: rows.jsonl}]%s}}\n"
    recipe.write_text("name: r\nbase_model: tempa:tiny\nstages:\n" + stage % "")
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("warning: stage 's1': data source 'ja' set `languages`, but the stage's language filter is off, so no row "
            "is checked against them: set `curation: {language: true}`") in out, out
    recipe.write_text("name: r\nbase_model: tempa:tiny\nstages:\n" + stage % ", curation: {language: true}")
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    assert "language filter is off" not in capsys.readouterr().out


def test_the_plan_parses_a_json_document_source_once(tmp_path, capsys, monkeypatch):
    """The checks before the first stage, the filters' look at its first rows and the plan's sample each parsed a
    JSON document whole: a 374 MB ShareGPT export took 34 s and 1.5 GB to plan, where one parse took 8 s."""
    from tempa.recipes.cli import main
    from tempa.sft import sources

    rows = [{"conversations": [{"from": "human", "value": f"Soalan {i}?"}, {"from": "gpt", "value": f"Jawapan {i}."}]}
            for i in range(40)]
    (tmp_path / "share.json").write_text(json.dumps(rows), encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nbase_model: tempa:tiny\nstages:\n"
                      "  - {name: s1, kind: sft, data: {sources: [{name: sg, path: share.json}]}}\n")
    parsed = []
    read = sources.read_json
    monkeypatch.setattr(sources, "read_json", lambda path, *a: parsed.append(path) or read(path, *a))
    if hasattr(sources, "_parsed_document"):
        sources._parsed_document.cache_clear()  # another test's parse of a file at this path and time
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    assert [p.name for p in parsed] == ["share.json"]
    # a file rewritten since is parsed again, not served stale
    (tmp_path / "share.json").write_text(json.dumps([*rows[:5], {"messages": "broken"}]), encoding="utf-8")
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    assert [p.name for p in parsed] == ["share.json", "share.json"]
    # the sft stage lets it go once its data is prepared: held through training, a multi-GB export's rows competed
    # with ZeRO offload for the runner's host memory
    sources.forget_parsed_documents()
    sources.json_rows(tmp_path / "share.json")
    assert len(parsed) == 3


def _csv_broken_late(path: Path, *, good: int, multiline: int, last: str) -> int:
    """``good`` rows, ``multiline`` of them first with a quoted line break, then ``last``; the line ``last`` is on."""
    lines = ["instruction,input,output"]
    lines += [f'"Baris\nke-{i}",,Ya.' for i in range(multiline)]
    lines += [f"Apa itu nomor {i}?,,Itu nomor {i}." for i in range(good - multiline)]
    lines += [last, "Apa itu angklung?,,Alat musik."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 1 + good + multiline + 1  # the header, the rows, their extra lines, then ``last``


@pytest.mark.parametrize(("multiline", "last", "said"), [
    (0, '"Apa itu batik?,,Kain.', "a quoted field opened here is never closed"),
    (5, '"Apa itu batik?,,Kain.', "a quoted field opened here is never closed"),
    (0, "Apa,itu,batik,lagi", "expected 3 fields, saw 4"),
    (5, "Apa,itu,batik,lagi", "expected 3 fields, saw 4"),
])
def test_a_csv_broken_past_its_first_rows_names_the_line_it_breaks_on(tmp_path, multiline, last, said):
    """3,000 good rows then an unclosed quote passed the plan (it reads 16 rows) and failed the run on datasets' "An
    error occurred while generating the dataset", the row only in an earlier log line, counted as pandas counts: not
    the file's line past a quoted line break. The error names the file's line and what is wrong there."""
    path = tmp_path / "late_bad.csv"
    line = _csv_broken_late(path, good=3000, multiline=multiline, last=last)
    with pytest.raises(DataError) as raised:
        load_source(SourceConfig(name="s", path=str(path)), cache_dir=tmp_path / "cache")
    assert str(raised.value) == f"data source 's' ({path}): could not be loaded: line {line}: {said}"


QA = {"question": ["Apa itu batik?", "Apa itu angklung?"], "answer": ["Kain.", "Alat musik."]}


def _qa_table(kind: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import datasets
        import pyarrow as pa
        import pyarrow.parquet as pq

        if kind == "csv":
            path.write_text("question,answer\n" + "".join(f"{q},{a}\n" for q, a in zip(*QA.values(), strict=True)))
        elif kind == "parquet":
            pq.write_table(pa.table(QA), path)
        else:
            datasets.Dataset.from_dict(QA).save_to_disk(str(path))

    return write


def _rows_file(rows: list[dict], document: bool = False) -> Callable[[Path], None]:
    return lambda p: p.write_text(json.dumps(rows) if document else "".join(json.dumps(r) + "\n" for r in rows))


TWO_ROWS = [ROW, {"messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]}]
# (file, its rows, the source's format and columns, what is said after the source's name and path)
WRONG_MAPPINGS = {
    "jsonl list": ("good.jsonl", _rows_file(TWO_ROWS), {"columns": {"messages": "convo"}},
                   "columns.messages is 'convo', a key not in its first 2 rows (keys: messages)"),
    "jsonl list, sharegpt": ("good.jsonl", _rows_file(TWO_ROWS), {"format": "sharegpt", "columns": {"messages": "mesages"}},
                             "columns.messages is 'mesages', a key not in its first 2 rows (keys: messages); "
                             "did you mean 'messages'?"),
    "jsonl turn key": ("good.jsonl", _rows_file(TWO_ROWS), {"columns": {"content": "text"}},
                       "columns.content is 'text', a key of no turn in its first 2 rows (turn keys: content, role)"),
    "json document": ("qa.json", _rows_file([{"q": "Apa?", "a": "Ya."}], document=True),
                      {"columns": {"prompt": "q", "response": "answer"}},
                      "columns.response is 'answer', a key not in its first row (keys: a, q)"),
    "csv, auto": ("qa.csv", _qa_table("csv"), {"columns": {"prompt": "question", "response": "answr"}},
                  "columns.response is 'answr', a column the source does not have (columns: question, answer); "
                  "did you mean 'answer'?"),
    "csv, prompt_response": ("qa.csv", _qa_table("csv"),
                             {"format": "prompt_response", "columns": {"prompt": "question", "response": "answr"}},
                             "columns.response is 'answr', a column the source does not have (columns: question, "
                             "answer); did you mean 'answer'?"),
    "csv, optional column": ("qa.csv", _qa_table("csv"),
                             {"columns": {"prompt": "question", "response": "answer", "system": "sistem"}},
                             "columns.system is 'sistem', a column the source does not have (columns: question, "
                             "answer)"),
    "csv, reasoning column": ("qa.csv", _qa_table("csv"),
                              {"columns": {"prompt": "question", "response": "answer", "reasoning": "nalar"}},
                              "columns.reasoning is 'nalar', a column the source does not have (columns: question, "
                              "answer)"),
    "parquet": ("qa.parquet", _qa_table("parquet"), {"columns": {"prompt": "questoin", "response": "answer"}},
                "columns.prompt is 'questoin', a column the source does not have (columns: question, answer); "
                "did you mean 'question'?"),
    "saved dataset": ("qa", _qa_table("saved"), {"columns": {"instruction": "question", "output": "jawab"}},
                      "columns.output is 'jawab', a column the source does not have (columns: question, answer)"),
}


@pytest.mark.parametrize("case", list(WRONG_MAPPINGS))
def test_a_column_mapping_naming_what_the_source_does_not_have_is_refused(tmp_path, case):
    """`columns: {messages: convo}` on rows of `messages` was a plan warning saying "expected 'messages' ... found
    keys ['messages']" and a run that rejected every row; on a CSV, `response: answr` with format auto was "cannot
    tell the row format ... or set format/columns". Whatever the format and the source type, the mapping field and
    the name it gives are refused before the run's first stage, with what the source has."""
    from tempa.sft.sources import check_source_rows

    name, write, settings, said = WRONG_MAPPINGS[case]
    write(tmp_path / name)
    source = SourceConfig(name="s", path=str(tmp_path / name), **settings)
    with pytest.raises(DataError) as raised:
        check_source_rows(source)
    assert str(raised.value) == f"{describe(source)}: {said}"


def test_a_jsonl_mapping_of_an_optional_key_some_rows_lack_and_a_right_mapping_pass(tmp_path):
    """A JSON row may lack an optional key (a system prompt only later rows have): only what every row of its format
    needs is checked in JSON rows; a mapping the rows have passes."""
    from tempa.sft.sources import check_source_rows

    renamed = [{"convo": [{"speaker": "user", "text": "2+2?"}, {"speaker": "assistant", "text": "4"}]}]
    (tmp_path / "rows.jsonl").write_text(json.dumps(renamed[0]) + "\n")
    check_source_rows(SourceConfig(name="s", path=str(tmp_path / "rows.jsonl"),
                                   columns={"messages": "convo", "role": "speaker", "content": "text", "system": "sys"}))


def test_the_plan_refuses_a_wrong_column_mapping_naming_it(tmp_path, capsys):
    from tempa.recipes.cli import main

    (tmp_path / "good.jsonl").write_text(json.dumps(ROW) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nbase_model: tempa:tiny\nstages:\n  - {name: s1, kind: sft, data: {sources: "
                      "[{name: s, path: good.jsonl, columns: {messages: convo}}]}}\n")
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert ("stage 's1' would fail: data source 's' (" + str(tmp_path / "good.jsonl") + "): columns.messages is "
            "'convo', a key not in its first row (keys: messages)") in err, err


def test_a_row_of_no_format_is_told_the_names_the_mapping_reads():
    """The row error listed the default names whatever `columns:` mapped: "expected 'messages', ...; found keys
    ['messages']" for `columns: {messages: convo}`."""
    from tempa.sft.formats import RowError, normalize_row, spec_for

    source = SourceConfig(name="s", path="org/rows", columns={"messages": "convo", "response": "answr"})
    with pytest.raises(RowError) as raised:
        normalize_row({"messages": ROW["messages"]}, spec_for(source))
    assert str(raised.value).startswith("expected 'convo', 'prompt'+'answr' or 'instruction'+'output'; found keys "
                                        "['messages']")
