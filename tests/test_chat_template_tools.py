"""Tool-calling rows as users have them, from the data path's reader to both templates' renders.

The reference is the template itself: a row written the way a client sends it to
``apply_chat_template`` must train on the text inference renders for it, so the data path's
normalised conversation has to render exactly as the raw messages do.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tempa.chat_templates import load_template, mode_kwargs, render_text
from tempa.sft.data_config import SourceConfig
from tempa.sft.formats import FormatSpec, RowError, normalize_row, spec_for

TEMPLATES = ("llama3_thinking", "chatml_thinking")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _call(city: str, *, as_text: bool = False, call_id: str | None = None) -> dict[str, Any]:
    arguments: Any = {"city": city}
    call = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "arguments": json.dumps(arguments, ensure_ascii=False) if as_text else arguments,
        },
    }
    return {**call, "id": call_id} if call_id else call


def _loop(
    result: Any, *, reasoning: str | None = "道具を呼ぶ。", as_text: bool = False
) -> list[dict[str, Any]]:
    call_turn = {
        "role": "assistant",
        "content": None,
        "tool_calls": [_call("東京", as_text=as_text, call_id="c1")],
    }
    if reasoning is not None:
        call_turn["reasoning_content"] = reasoning
    return [
        {"role": "user", "content": "東京の天気は？"},
        call_turn,
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": result},
        {"role": "assistant", "content": "<think>\nอากาศดี\n</think>\n\n晴れ、25度です。"},
    ]


# OpenAI-style rows a client could send to the template as they are.
RAW_ROWS: dict[str, list[dict[str, Any]]] = {
    "arguments_as_object": _loop("晴れ 25度"),
    "arguments_as_json_text": _loop("晴れ 25度", as_text=True),
    "result_as_object": _loop({"sky": "晴れ", "temp_c": 25}),
    "result_as_json_array": _loop([{"sky": "晴れ"}, {"sky": "雨"}]),
    "result_as_text_parts": _loop([{"type": "text", "text": "晴れ "}, {"type": "text", "text": "25度"}]),
    "history_before_a_new_question": [
        *_loop("晴れ 25度"),
        {"role": "user", "content": "大阪は？"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "もう一度。",
            "tool_calls": [_call("大阪")],
        },
        {"role": "tool", "content": "雨"},
        {"role": "assistant", "content": "雨です。", "reasoning": "雨。"},
    ],
}


# Exports that carry every reasoning key, the unused ones blank (a Qwen3 row with its trace left in the content,
# an OpenAI-compatible server that writes `reasoning` and leaves `reasoning_content` empty).
BLANK_FIELD_ROWS: dict[str, list[dict[str, Any]]] = {
    "blank_reasoning_field_and_a_think_block": [
        *_loop("晴れ", reasoning="")[:1],
        {**_loop("晴れ")[1], "reasoning_content": "", "content": "<think>\n道具を呼ぶ。\n</think>\n\n"},
        *_loop("晴れ")[2:],
    ],
    "blank_reasoning_field_then_reasoning": [
        *_loop("晴れ")[:1],
        {**_loop("晴れ")[1], "reasoning_content": " ", "reasoning": "道具を呼ぶ。"},
        *_loop("晴れ")[2:],
    ],
}
RAW_ROWS.update(BLANK_FIELD_ROWS)


@pytest.mark.parametrize("template_name", TEMPLATES)
@pytest.mark.parametrize("case", sorted(BLANK_FIELD_ROWS))
def test_a_blank_reasoning_field_is_no_reasoning_field(case: str, template_name: str) -> None:
    raw = BLANK_FIELD_ROWS[case]
    conversation = normalize_row({"messages": raw}, FormatSpec(format="auto"))
    assert conversation.messages[1]["reasoning_content"] == "道具を呼ぶ。"
    assert "<think>\n道具を呼ぶ。\n</think>" in render_text(
        load_template(template_name), raw, thinking_mode="on"
    )


@pytest.mark.parametrize("mode", ["on", "off"])
@pytest.mark.parametrize("template_name", TEMPLATES)
@pytest.mark.parametrize("case", sorted(RAW_ROWS))
def test_a_tool_row_trains_on_the_text_its_raw_messages_render_to(
    case: str, template_name: str, mode: str
) -> None:
    template = load_template(template_name)
    raw = RAW_ROWS[case]
    conversation = normalize_row({"messages": raw, "tools": [WEATHER]}, FormatSpec(format="auto"))
    kwargs = mode_kwargs(mode)
    want = render_text(template, raw, tools=[WEATHER], **kwargs)
    assert render_text(template, conversation.messages, tools=conversation.tools, **kwargs) == want


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_a_tool_result_of_text_parts_renders_as_its_text(template_name: str) -> None:
    template = load_template(template_name)
    parts = render_text(
        template, _loop([{"type": "text", "text": "晴れ "}, {"type": "text", "text": "25度"}])
    )
    assert parts == render_text(template, _loop("晴れ 25度"))
    # A JSON array that is not content parts is a result object, written as JSON.
    assert '[{"sky": "晴れ"}, {"sky": "雨"}]' in render_text(
        template, _loop([{"sky": "晴れ"}, {"sky": "雨"}])
    )


# LLaMA-Factory's ShareGPT layout: the system prompt and the tools are columns beside the turns.
LLAMA_FACTORY_ROW = {
    "system": "あなたは天気アシスタントです。",
    "tools": json.dumps([WEATHER["function"]], ensure_ascii=False),
    "conversations": [
        {"from": "human", "value": "東京の天気は？"},
        {
            "from": "function_call",
            "value": json.dumps({"name": "get_weather", "arguments": {"city": "東京"}}),
        },
        {"from": "observation", "value": "晴れ"},
        {"from": "gpt", "value": "晴れです。"},
    ],
}


def _spec(tmp_path: Any, **source: Any) -> FormatSpec:
    path = tmp_path / "rows.jsonl"
    path.write_text("")
    return spec_for(SourceConfig.model_validate({"name": "s", "path": str(path), **source}))


@pytest.mark.parametrize("fmt", ["sharegpt", "auto"])
def test_a_turn_list_rows_system_column_is_its_system_turn(tmp_path: Any, fmt: str) -> None:
    conversation = normalize_row(LLAMA_FACTORY_ROW, _spec(tmp_path, format=fmt))
    assert conversation.messages[0] == {
        "role": "system",
        "content": LLAMA_FACTORY_ROW["system"],
        "reasoning_content": None,
    }
    assert [turn["role"] for turn in conversation.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    for name in TEMPLATES:
        assert LLAMA_FACTORY_ROW["system"] in render_text(
            load_template(name), conversation.messages, tools=conversation.tools
        )
    # A renamed column, on an OpenAI-style row.
    row = {
        "persona": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }
    got = normalize_row(row, _spec(tmp_path, columns={"system": "persona"})).messages
    assert got[0] == {"role": "system", "content": "Be brief.", "reasoning_content": None}


def test_a_system_column_and_a_different_system_turn_are_refused_naming_the_column(tmp_path: Any) -> None:
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    spec = _spec(tmp_path)
    # The same prompt twice is one system turn; an empty column is no prompt.
    for system in ("Be brief.", "", None):
        assert (
            normalize_row({"system": system, "messages": turns}, spec).messages[0]["content"] == "Be brief."
        )
        assert [t["role"] for t in normalize_row({"system": system, "messages": turns}, spec).messages].count(
            "system"
        ) == 1
    with pytest.raises(RowError, match=r"'system'.*turn 0"):
        normalize_row({"system": "Be verbose.", "messages": turns}, spec)


@pytest.mark.parametrize("blank", ["", "  ", "[]"])
def test_a_blank_tools_cell_is_a_row_without_tools(tmp_path: Any, blank: str) -> None:
    # LLaMA-Factory and Parquet/CSV exports leave the tools cell of a row without tools as an empty string.
    row = {**LLAMA_FACTORY_ROW, "tools": blank, "conversations": LLAMA_FACTORY_ROW["conversations"][:1]}
    row["conversations"] = [*row["conversations"], {"from": "gpt", "value": "晴れです。"}]
    assert normalize_row(row, _spec(tmp_path, format="sharegpt")).tools is None
    with pytest.raises(RowError, match=r"expected 'tools' to be JSON"):
        normalize_row({**row, "tools": "[{"}, _spec(tmp_path, format="sharegpt"))
    # The same for an assistant turn's tool_calls cell.
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "tool_calls": blank},
    ]
    assert "tool_calls" not in normalize_row({"messages": turns}, _spec(tmp_path)).messages[1]


@pytest.mark.parametrize("written", ["{'city': 'Huế'}", "{'city': 'Huế', 'metric': True, 'hint': None}"])
def test_arguments_written_as_a_python_dict_say_how_to_write_them(tmp_path: Any, written: str) -> None:
    # str(dict) is the usual way such rows are made: the JSON error alone does not say what to change.
    turns = [
        {"role": "user", "content": "Thời tiết ở Huế?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": written}}]},
    ]
    hint = r"; it is a Python literal \(single quotes, True/None\), not JSON: write it with json\.dumps"
    with pytest.raises(RowError, match=r"expected turn 1 'tool_calls'\[0\] arguments to be JSON; .*" + hint):
        normalize_row({"messages": turns}, _spec(tmp_path))
    with pytest.raises(RowError, match=r"expected 'tools' to be JSON; .*" + hint):
        normalize_row({"messages": turns[:1], "tools": str([{"name": "get_weather"}])}, _spec(tmp_path))
    # Text that is neither JSON nor a Python literal gets no such hint.
    with pytest.raises(RowError, match=r"to be JSON; [^;]*$"):
        normalize_row({"messages": turns[:1], "tools": "[{"}, _spec(tmp_path))


def _render_as_given(template: str, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """Render with transformers' Jinja renderer on the messages exactly as given, None values kept: what
    llama.cpp (its minja engine), llama-cpp-python's formatter and any server that does not drop None keys
    do. (``apply_chat_template`` and ``render_text`` drop them first, which hides a template's None bugs.)"""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template, **kwargs)
    return rendered[0]


@pytest.mark.parametrize("mode", ["on", "off"])
@pytest.mark.parametrize("template_name", TEMPLATES)
def test_an_openai_tool_call_turn_with_null_content_renders_in_every_engine(
    template_name: str, mode: str
) -> None:
    """OpenAI clients send a tool-call turn as ``"content": null`` (the SDK's own message, echoed back), and so
    do llama.cpp's server and llama-cpp-python; it must render as a turn without text, not fail."""
    template = load_template(template_name)
    for messages in (RAW_ROWS["arguments_as_object"], RAW_ROWS["history_before_a_new_question"]):
        assert any("content" in m and m["content"] is None for m in messages)
        kwargs = {"tools": [WEATHER], **mode_kwargs(mode)}
        assert _render_as_given(template, messages, **kwargs) == render_text(template, messages, **kwargs)
        prompt = messages[:-1]
        assert _render_as_given(template, prompt, add_generation_prompt=True, **kwargs) == render_text(
            template, prompt, add_generation_prompt=True, **kwargs
        )


# Conversations with one empty content each, as a client sends them: llama.cpp's server turns every "" content into
# null before it renders (common/chat.cpp, common_chat_msgs_to_json_oaicompat), transformers drops None keys, so
# "", null and no content at all must render alike, or one request renders (or fails) differently per engine.
EMPTY_CONTENT_ROWS: dict[str, tuple[list[dict[str, Any]], int]] = {
    "system prompt left empty by a UI": (
        [{"role": "system", "content": ""}, {"role": "user", "content": "こんにちは"}], 0),
    "empty user turn": ([{"role": "user", "content": ""}], 0),
    "history reply that was all reasoning (max_tokens hit)": (
        [{"role": "user", "content": "Hai"}, {"role": "assistant", "content": "", "reasoning_content": "Hmm."},
         {"role": "user", "content": "Lanjut?"}], 1),
    "loop step that was all reasoning": (
        [{"role": "user", "content": "Hai"}, {"role": "assistant", "content": "", "reasoning_content": "Hmm."}], 1),
    "tool that printed nothing": (
        [*_loop("")[:2], *_loop("")[2:3]], 2),
}


@pytest.mark.parametrize("mode", ["on", "off"])
@pytest.mark.parametrize("template_name", TEMPLATES)
@pytest.mark.parametrize("case", sorted(EMPTY_CONTENT_ROWS))
def test_empty_null_and_absent_content_render_alike_in_every_engine(template_name: str, case: str, mode: str) -> None:
    template = load_template(template_name)
    messages, index = EMPTY_CONTENT_ROWS[case]
    nulled = [dict(m) for m in messages]
    nulled[index]["content"] = None
    absent = [dict(m) for m in messages]
    del absent[index]["content"]
    kwargs = {"add_generation_prompt": messages[-1]["role"] != "assistant", **mode_kwargs(mode)}
    expected = render_text(template, messages, **kwargs)  # transformers and vLLM, given ""
    assert _render_as_given(template, nulled, **kwargs) == expected  # llama.cpp and llama-cpp-python, given null
    assert render_text(template, nulled, **kwargs) == expected  # transformers, given null (dropped)
    assert _render_as_given(template, absent, **kwargs) == expected


def test_tools_in_user_message_none_counts_as_unset_and_a_non_boolean_is_refused():
    """A `datasets` column of per-row chat_template_kwargs fills a row's missing keys with None: None moved the tool
    definitions into the system message (the `false` layout), and the string "false" counted as true."""
    import jinja2

    template = load_template("llama3_thinking")
    messages = [{"role": "user", "content": "Weather in Jakarta?"}]
    tools = [WEATHER]
    unset = render_text(template, messages, tools=tools, add_generation_prompt=True)
    assert render_text(template, messages, tools=tools, add_generation_prompt=True, tools_in_user_message=None) == unset
    assert render_text(template, messages, tools=tools, add_generation_prompt=True, tools_in_user_message=True) == unset
    in_system = render_text(template, messages, tools=tools, add_generation_prompt=True, tools_in_user_message=False)
    assert in_system != unset and in_system.index("get_weather") < in_system.index("Weather in Jakarta?")
    with pytest.raises(jinja2.TemplateError, match='tools_in_user_message must be true or false, got "false"'):
        render_text(template, messages, tools=tools, add_generation_prompt=True, tools_in_user_message="false")


@pytest.mark.parametrize("template_name", TEMPLATES)
@pytest.mark.parametrize("name", ["get_weather", 'say "hi"', "path\\to", "天気"])
def test_a_rendered_tool_call_is_json_that_gives_back_its_name_and_arguments(template_name: str, name: str) -> None:
    """The model learns to write calls as the template renders them, and a client parses what it writes: a name
    the template pasted between quotes unescaped (one with a quote or a backslash) trained calls no parser reads."""
    arguments = {"city": 'Đà "Nẵng"'}
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    text = render_text(load_template(template_name), messages, tools=[WEATHER], **mode_kwargs("off"))
    if template_name == "chatml_thinking":
        written = text.rsplit("<tool_call>\n", 1)[1].split("\n</tool_call>")[0]
        assert json.loads(written) == {"name": name, "arguments": arguments}
    else:
        written = text.rsplit("<|end_header_id|>\n\n", 1)[1].split("<|eot_id|>")[0].split("</think>\n")[-1]
        assert json.loads(written) == {"name": name, "parameters": arguments}
