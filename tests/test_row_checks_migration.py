"""Rows written for LLaMA-Factory / axolotl (a migrating team's trial): per-turn training flags, Arrow structs, tool
calls matched to their results and definitions, special tokens in tool definitions, shapes the templates refuse."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets
import pytest

from sft_helpers import EOT, WEATHER, trained_spans
from tempa.sft.data import PreparedData, prepare_sft_data
from tempa.sft.data_config import DataConfig
from tempa.sft.formats import FormatSpec, RowError, normalize_row

SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the web.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _prepare(folder: Path, tokenizer: Any, sources: list[dict]) -> PreparedData:
    cfg = DataConfig.model_validate({"sources": sources, "heldout": 0}, context={"base_dir": str(folder)})
    return prepare_sft_data(cfg, tokenizer, out_dir=folder / "out", cache_dir=folder / "cache", seed=0)


def _rejects(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "out" / "rejects.jsonl").read_text().splitlines()]


def _call(name: str, arguments: dict, call_id: str | None = None) -> dict:
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return call if call_id is None else {"id": call_id, **call}


def _loop(user: str, call: dict, results: list[dict], answer: str, tools: list | None = None) -> dict:
    row: dict[str, Any] = {"messages": [{"role": "user", "content": user},
                                        {"role": "assistant", "content": "", "tool_calls": [call]},
                                        *results, {"role": "assistant", "content": answer}]}
    if tools is not None:
        row["tools"] = tools
    return row


# --- axolotl's per-turn training flag ------------------------------------------------------------------------------


def test_an_assistant_turn_with_weight_0_or_train_false_is_context_only(tmp_path: Path, tokenizer: Any) -> None:
    _write_jsonl(tmp_path / "rows.jsonl", [
        {"messages": [{"role": "user", "content": "first question"},
                      {"role": "assistant", "content": "DO NOT TRAIN ONE", "weight": 0},
                      {"role": "user", "content": "second question"},
                      {"role": "assistant", "content": "train two", "weight": 1}]},
        {"messages": [{"role": "user", "content": "third question"},
                      {"role": "assistant", "content": "DO NOT TRAIN THREE", "train": False},
                      {"role": "user", "content": "fourth question"},
                      {"role": "assistant", "content": "train four", "train": True}]},
        {"messages": [{"role": "user", "content": "fifth question"},
                      {"role": "assistant", "content": "train five"},
                      {"role": "user", "content": "sixth question"},
                      {"role": "assistant", "content": "DO NOT TRAIN SIX", "weight": 0.0}]},
    ])
    prepared = _prepare(tmp_path, tokenizer, [{"name": "rows", "path": "rows.jsonl"}])
    spans = sorted(span for ex in prepared.train for span in trained_spans(tokenizer, ex))
    # one sample per trained turn, none for a context-only one; the first two still show theirs as history
    assert spans == [f"train five{EOT}", f"train four{EOT}", f"train two{EOT}"]
    full = {tokenizer.decode(ex["input_ids"]).split(" question")[0][-5:]: tokenizer.decode(ex["input_ids"])
            for ex in prepared.train}
    assert set(full) == {"first", "third", "fifth"}
    assert "DO NOT TRAIN ONE" in full["first"] and "DO NOT TRAIN THREE" in full["third"]
    assert "SIX" not in full["fifth"]


def test_a_weight_0_step_of_a_tool_loop_is_masked_in_the_loops_sample(tmp_path: Path, tokenizer: Any) -> None:
    row = _loop("Weather in Hue?", _call("get_weather", {"city": "Hue"}), [{"role": "tool", "content": "30C"}],
                "Hue is 30C.", [WEATHER])
    row["messages"][1]["weight"] = 0
    _write_jsonl(tmp_path / "rows.jsonl", [row])
    prepared = _prepare(tmp_path, tokenizer, [{"name": "rows", "path": "rows.jsonl"}])
    assert len(prepared.train) == 1
    ex = prepared.train[0]
    assert '"city": "Hue"' in tokenizer.decode(ex["input_ids"])
    assert trained_spans(tokenizer, ex) == [f"Hue is 30C.{EOT}"]


def test_a_row_whose_assistant_turns_all_have_weight_0_is_a_reject(tmp_path: Path, tokenizer: Any) -> None:
    _write_jsonl(tmp_path / "rows.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]},
    ])
    _prepare(tmp_path, tokenizer, [{"name": "rows", "path": "rows.jsonl"}])
    (reject,) = _rejects(tmp_path)
    assert reject["line"] == 1 and "no assistant turn to train on" in reject["detail"]
    assert "weight 0" in reject["detail"]


@pytest.mark.parametrize("value", [2, 0.5, "0", "yes", [1]])
def test_a_training_flag_other_than_0_1_true_false_is_a_one_line_reject(value: Any) -> None:
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": value}]}
    with pytest.raises(RowError) as caught:
        normalize_row(row, FormatSpec("auto"))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("turn 1 'weight': expected 0 or 1")


def test_a_bad_training_flag_is_rejected_naming_the_line_and_turn(tmp_path: Path, tokenizer: Any) -> None:
    _write_jsonl(tmp_path / "rows.jsonl", [
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "train": "no"}]},
    ])
    _prepare(tmp_path, tokenizer, [{"name": "rows", "path": "rows.jsonl"}])
    (reject,) = _rejects(tmp_path)
    assert reject["line"] == 2 and reject["reason"] == "malformed_row"
    assert reject["detail"].startswith("line 2: turn 1 'train': expected 0 or 1")


def test_unknown_turn_keys_are_warned_of_once_per_source_with_their_rows(tmp_path: Path, tokenizer: Any,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"messages": [{"role": "user", "content": f"q{i}", "lang": "vi"},
                          {"role": "assistant", "content": f"a{i}", "loss_mask": 1}]} for i in range(3)]
    rows.append({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "refusal": None}]})
    _write_jsonl(tmp_path / "rows.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="tempa.sft.data"):
        _prepare(tmp_path, tokenizer, [{"name": "rows", "path": "rows.jsonl"}])
    lines = [record.getMessage() for record in caplog.records if "tempa does not read" in record.getMessage()]
    assert len(lines) == 2  # one per key, not per row; a key left null ("refusal": null) is no key given
    assert any("3 rows" in line and "'lang'" in line for line in lines)
    assert any("3 rows" in line and "'loss_mask'" in line for line in lines)


# --- Arrow structs -------------------------------------------------------------------------------------------------


def _struct_rows() -> list[dict]:
    return [_loop("q1", _call("get_weather", {"city": "東京"}, "1"), [{"role": "tool", "content": "r"}], "done",
                  [WEATHER]),
            _loop("q2", _call("search", {"query": "ramen"}, "1"), [{"role": "tool", "content": "r"}], "done",
                  [SEARCH])]


def test_arrow_struct_arguments_and_tools_lose_the_null_keys_unification_added(tmp_path: Path, tokenizer: Any,
                                                                               caplog: pytest.LogCaptureFixture) -> None:
    datasets.Dataset.from_list(_struct_rows()).to_parquet(str(tmp_path / "structs.parquet"))
    with caplog.at_level(logging.WARNING, logger="tempa.sft.data"):
        prepared = _prepare(tmp_path, tokenizer, [{"name": "pq", "path": "structs.parquet"}])
    texts = [tokenizer.decode(ex["input_ids"]) for ex in prepared.train]
    weather = next(text for text in texts if "get_weather" in text)
    search = next(text for text in texts if "ramen" in text)
    assert '{"city": "東京"}' in weather and '"query"' not in weather  # neither argument nor property
    assert '{"query": "ramen"}' in search and '"city"' not in search
    assert "null" not in weather + search
    lines = [record.getMessage() for record in caplog.records if "Arrow structs" in record.getMessage()]
    assert len(lines) == 1 and ": 2 rows" in lines[0] and "'pq'" in lines[0]


def test_a_null_argument_written_in_json_lines_stays(tmp_path: Path, tokenizer: Any) -> None:
    row = _loop("q", _call("search", {"query": "ramen", "page": None}), [{"role": "tool", "content": "r"}], "done",
                [SEARCH])
    _write_jsonl(tmp_path / "rows.jsonl", [row])
    prepared = _prepare(tmp_path, tokenizer, [{"name": "rows", "path": "rows.jsonl"}])
    assert '{"query": "ramen", "page": null}' in tokenizer.decode(prepared.train[0]["input_ids"])


# --- tool calls and their results and definitions ------------------------------------------------------------------


def test_tool_results_and_calls_that_do_not_match_are_one_line_rejects(tmp_path: Path, tokenizer: Any) -> None:
    good = _loop("ok", _call("get_weather", {"city": "A"}, "a1"),
                 [{"role": "tool", "tool_call_id": "a1", "content": "r"}], "fine", [WEATHER])
    _write_jsonl(tmp_path / "rows.jsonl", [
        good,
        _loop("id", _call("get_weather", {"city": "A"}, "a1"),
              [{"role": "tool", "tool_call_id": "zzz", "content": "r"}], "done", [WEATHER]),
        _loop("two", _call("get_weather", {"city": "A"}, "x"),
              [{"role": "tool", "tool_call_id": "x", "content": "r1"}, {"role": "tool", "content": "r2"}],
              "done", [WEATHER]),
        _loop("undefined", _call("search", {"query": "A"}), [{"role": "tool", "content": "r"}], "done", [WEATHER]),
    ])
    _prepare(tmp_path, tokenizer, [{"name": "rows", "path": "rows.jsonl"}])
    found = {reject["line"]: reject["detail"] for reject in _rejects(tmp_path)}
    assert found == {
        2: "line 2: turn 2: tool_call_id 'zzz' names no call of turn 1; expected one of 'a1'",
        3: "line 3: turn 3: result 2 answering turn 1, which makes 1 tool call; expected one result per call",
        4: "line 4: turn 1: calls 'search', which the row's 'tools' do not define; expected one of 'get_weather'",
    }


def test_a_result_named_for_another_function_or_a_call_left_unanswered_is_a_one_line_reject(
        tmp_path: Path, tokenizer: Any) -> None:
    """A result whose `name` is not the function of the call it answers, and a call turn that gets fewer results
    than calls before the next turn, trained silently (a tools trial); OpenAI's format wants one result per call."""
    weather, search = _call("get_weather", {"city": "A"}, "w1"), _call("search", {"query": "A"}, "s1")

    def two_calls(question: str, results: list[dict], then: list[dict] | None = None) -> dict:
        return {"tools": [WEATHER, SEARCH], "messages": [
            {"role": "user", "content": question}, {"role": "assistant", "content": "", "tool_calls": [weather, search]},
            *results, *(then or [{"role": "assistant", "content": "done"}])]}

    _write_jsonl(tmp_path / "rows.jsonl", [
        _loop("Answered, and named for its function?", weather,
              [{"role": "tool", "tool_call_id": "w1", "name": "get_weather", "content": "r"}], "done", [WEATHER]),
        _loop("Named for another function, by place?", _call("get_weather", {"city": "A"}),
              [{"role": "tool", "name": "search", "content": "r"}], "done", [WEATHER, SEARCH]),
        two_calls("Named for another function, by id?", [
            {"role": "tool", "tool_call_id": "s1", "name": "get_weather", "content": "r"},
            {"role": "tool", "tool_call_id": "w1", "name": "get_weather", "content": "r"}]),
        two_calls("One of two calls answered?", [{"role": "tool", "tool_call_id": "w1", "content": "r"}]),
        two_calls("The same call answered twice?", [{"role": "tool", "tool_call_id": "w1", "content": "r"},
                                                     {"role": "tool", "tool_call_id": "w1", "content": "r"}]),
        two_calls("No result before the next question?", [],
                  [{"role": "user", "content": "And?"}, {"role": "assistant", "content": "done"}]),
    ])
    _prepare(tmp_path, tokenizer, [{"name": "rows", "path": "rows.jsonl"}])
    assert {reject["line"]: reject["detail"] for reject in _rejects(tmp_path)} == {
        2: "line 2: turn 2: result named 'search' answers no call of turn 1 not answered yet; expected the name of "
           "one of them: 'get_weather'",
        3: "line 3: turn 2: result named 'get_weather' answers turn 1's call of 'search'; expected the name 'search'",
        4: "line 4: turn 1: call 2 of 2 ('search') gets no result before turn 3; expected one result per call",
        5: "line 5: turn 1: call 2 of 2 ('search') gets no result before turn 4; expected one result per call",
        6: "line 6: turn 1: call 1 of 2 ('get_weather') gets no result before turn 2; expected one result per call",
    }


# Each empty form a turn's content takes in the wild: llama-server logs write every "" as null, transformers drops None
# keys, and the templates render the three alike; the data path reads them alike too.
_EMPTY_FORMS = {"empty": "", "null": None, "absent": ...}


def _emptied(turn: dict, form: str) -> dict:
    turn = {key: value for key, value in turn.items() if key != "content"}
    return turn if _EMPTY_FORMS[form] is ... else {**turn, "content": _EMPTY_FORMS[form]}


def test_a_null_or_absent_content_trains_as_empty_content_for_every_role(tmp_path: Path, tokenizer: Any) -> None:
    """A tool result (or system prompt) with `content: null` or no `content` key was a reject ('expected turn 2
    'content' to be a string, got nothing'), though the templates render it as "" (a tools trial: llama-server logs
    lost whole conversations). Each form trains the sample "" does; an empty user turn is the same reject in each."""
    questions = {"empty": "Weather in Oslo?", "null": "東京の天気は？", "absent": "Cuaca di Jakarta hari ini?"}
    rows = []
    for form, question in questions.items():
        row = _loop(question, _call("get_weather", {"city": "X"}, "c1"),
                    [_emptied({"role": "tool", "tool_call_id": "c1", "name": "get_weather"}, form)], "No data.",
                    [WEATHER])
        row["messages"].insert(0, _emptied({"role": "system"}, form))
        rows.append(row)
    for form in _EMPTY_FORMS:
        rows.append({"messages": [_emptied({"role": "user"}, form), {"role": "assistant", "content": f"a {form}"}]})
    _write_jsonl(tmp_path / "rows.jsonl", rows)
    prepared = _prepare(tmp_path, tokenizer, [{"name": "rows", "path": "rows.jsonl"}])
    samples = {}
    for ex in prepared.train:
        text = tokenizer.decode(ex["input_ids"])
        form = next(form for form, question in questions.items() if question in text)
        samples[form] = (text.replace(questions[form], "Q"), trained_spans(tokenizer, ex))
    assert sorted(samples) == sorted(questions)
    assert samples["null"] == samples["absent"] == samples["empty"]
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n<|eot_id|>" in samples["empty"][0]
    assert {reject["line"]: reject["detail"] for reject in _rejects(tmp_path)} == {
        line: f"line {line}: turn 0: empty user turn" for line in (4, 5, 6)}


def test_tempa_render_tokens_shows_a_null_tool_result_as_an_empty_one(tmp_path: Path, tokenizer_dir: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from tempa.recipes.cli import main

    shown = {}
    for form in _EMPTY_FORMS:
        row = _loop("Search void.", _call("search", {"query": "void"}, "c1"),
                    [_emptied({"role": "tool", "tool_call_id": "c1", "name": "search"}, form)], "No result.", [SEARCH])
        path = _write_jsonl(tmp_path / f"{form}.json", [row])
        assert main(["template", "render", "--tokenizer", str(tokenizer_dir), "--messages", str(path),
                     "--tokens"]) == 0, capsys.readouterr().err
        shown[form] = capsys.readouterr().out
    assert shown["null"] == shown["absent"] == shown["empty"]
    assert "-- sample 1 of 1: trains turns 1, 3" in shown["empty"]


def test_a_special_token_in_a_tool_definition_is_a_reject(tmp_path: Path, tokenizer: Any) -> None:
    tool = json.loads(json.dumps(WEATHER))
    tool["function"]["description"] = "Weather <|eot_id|> now."
    renamed = json.loads(json.dumps(SEARCH))
    renamed["function"]["parameters"]["properties"] = {"<|start_header_id|>": {"type": "string"}}
    _write_jsonl(tmp_path / "rows.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": [tool]},
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}],
         "tools": [WEATHER, renamed]},
        {"messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}], "tools": [WEATHER]},
    ])
    _prepare(tmp_path, tokenizer, [{"name": "rows", "path": "rows.jsonl"}])
    found = {reject["line"]: reject["detail"] for reject in _rejects(tmp_path)}
    assert found == {1: "line 1: tools[0]: contains the special token '<|eot_id|>'",
                     2: "line 2: tools[1]: contains the special token '<|start_header_id|>'"}


# --- shapes the templates refuse -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [5, 2.5, True])
def test_a_reasoning_trace_that_is_no_text_is_a_reject(value: Any) -> None:
    row = {"messages": [{"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a", "reasoning_content": value}]}
    with pytest.raises(RowError, match=r"^expected turn 1 'reasoning_content' to be text, got "):
        normalize_row(row, FormatSpec("auto"))


def test_tool_calls_given_as_one_object_are_a_reject_and_a_function_call_object_is_read() -> None:
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "A"}}}
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": call}]}
    with pytest.raises(RowError, match=r"^expected turn 1 'tool_calls' to be a list of tool calls, got one call"):
        normalize_row(row, FormatSpec("auto"))
    with pytest.raises(RowError, match="got one call"):
        normalize_row({"messages": [row["messages"][0], {**row["messages"][1], "tool_calls": json.dumps(call)}]},
                      FormatSpec("auto"))
    legacy = {"messages": [row["messages"][0],
                           {"role": "assistant", "content": None, "function_call": call["function"]}]}
    (read,) = normalize_row(legacy, FormatSpec("auto")).messages[1]["tool_calls"]
    assert read["function"] == {"name": "get_weather", "arguments": '{"city": "A"}'}


def test_tempa_plan_counts_no_sample_for_a_context_only_turn() -> None:
    from tempa.sft.data_size import _renderings

    row = {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "weight": 0},
                        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}
    messages = normalize_row(row, FormatSpec("auto")).messages
    assert [[turn["content"] for turn in view] for view in _renderings(messages, False)] == [["q1", "a1", "q2", "a2"]]
