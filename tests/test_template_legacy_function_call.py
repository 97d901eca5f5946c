"""OpenAI's legacy function calling in the chat templates.

Before `tool_calls`, an OpenAI assistant message called a function with `function_call: {"name", "arguments"}`
and the result came back as a `function` message (`{"role": "function", "name", "content"}`). LLaMA-Factory and
axolotl exports still hold that shape, and sft/formats.py trains it as the one-element `tool_calls` and the `tool`
result it stands for. A client that sends the same messages (transformers' apply_chat_template, vLLM's OpenAI
server, which passes messages through) must get the same text: these tests render the legacy list and its modern
equivalent with tokenizers saved and reloaded from disk (Meta's Llama 3 tokenizer for llama3_thinking) and compare
them byte for byte, token for token and mask for mask.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
from transformers import AutoTokenizer

from tempa.chat_templates import bake_tokenizer

TEMPLATES = ("llama3_thinking", "chatml_thinking")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}

# The thinking switches a client can send: none (the baked default), each mode, and the Qwen3/vLLM alias.
THINKING = {
    "default": {},
    "on": {"thinking_mode": "on"},
    "off": {"thinking_mode": "off"},
    "enable_thinking": {"enable_thinking": True},
    "no enable_thinking": {"enable_thinking": False},
}


@pytest.fixture(scope="module")
def tokenizers(tiny_tokenizer_dir: Path, llama3_final_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    chatml = bake_tokenizer(tiny_tokenizer_dir, "chatml_thinking", tmp_path_factory.mktemp("legacy") / "chatml")
    return {"llama3_thinking": AutoTokenizer.from_pretrained(llama3_final_dir),
            "chatml_thinking": AutoTokenizer.from_pretrained(chatml)}


def _modern(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same conversation written the current way: function_call as a one-element tool_calls (with the
    `type` and `id` an OpenAI client adds; it replaces an empty or null tool_calls beside the legacy call), a
    function message as a tool message."""
    out = []
    for message in copy.deepcopy(messages):
        if "function_call" in message:
            message["tool_calls"] = [{"id": "call_0", "type": "function", "function": message.pop("function_call")}]
        if message["role"] == "function":
            message["role"] = "tool"
            message["tool_call_id"] = "call_0"
        out.append(message)
    return out


def _call(arguments: Any) -> dict[str, Any]:
    call: dict[str, Any] = {"name": "get_weather"}
    if arguments is not None:
        call["arguments"] = arguments
    return call


# Legacy conversations (each ends with an assistant turn), spelled as migrated datasets and old clients spell them.
LEGACY: dict[str, list[dict[str, Any]]] = {
    "content null, arguments as JSON text (edge.jsonl line 8)": [
        {"role": "user", "content": "E12 legacy function"},
        {"role": "assistant", "content": None, "function_call": _call('{"city": "Hue"}')},
        {"role": "function", "name": "get_weather", "content": "30C"},
        {"role": "assistant", "content": "Hue 30C"},
    ],
    "text before the call, arguments as an object": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Thời tiết ở Huế thế nào?"},
        {"role": "assistant", "content": "Để tôi xem.", "function_call": _call({"city": "Huế"})},
        {"role": "function", "name": "get_weather", "content": {"temp_c": 30}},
        {"role": "assistant", "content": "Huế đang 30°C."},
    ],
    "no content key, no arguments, reasoning on the call (a tool loop)": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "reasoning_content": "I need the weather tool.", "function_call": _call(None)},
        {"role": "function", "name": "get_weather", "content": ""},
        {"role": "assistant", "content": "The tool returned nothing."},
    ],
    "tool_calls empty or null beside the call (what OpenAI SDK dumps send)": [
        {"role": "user", "content": "Weather in Hue?"},
        {"role": "assistant", "content": "", "tool_calls": [], "function_call": _call('{"city": "Hue"}')},
        {"role": "function", "name": "get_weather", "content": "30C"},
        {"role": "user", "content": "And Hanoi?"},
        {"role": "assistant", "content": None, "tool_calls": None, "function_call": _call('{"city": "Hanoi"}')},
        {"role": "function", "name": "get_weather", "content": "25C"},
        {"role": "assistant", "content": "Hanoi 25C"},
    ],
}


def _cuts(messages: list[dict[str, Any]]) -> list[tuple[list[dict[str, Any]], bool]]:
    """Every prefix a client sends or a trainer renders: each one ending after a result or a user turn with the
    generation prompt, each one ending after an assistant turn without it (and the whole conversation)."""
    cuts = []
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    for end in range(first_user + 1, len(messages) + 1):
        last = messages[end - 1]["role"]
        cuts.append((messages[:end], last != "assistant"))
    return cuts


def _render(tokenizer: Any, messages: list[dict[str, Any]], prompt: bool, kwargs: dict[str, Any]) -> tuple:
    tools = [WEATHER]
    text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=prompt, tokenize=False,
                                         **kwargs)
    encoded = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=prompt, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True, **kwargs)
    return text, encoded["input_ids"], encoded["assistant_masks"]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("case", list(LEGACY))
def test_a_legacy_function_call_and_result_render_as_the_tool_call_and_tool_result_they_stand_for(
    tokenizers: dict, template: str, case: str
) -> None:
    tokenizer = tokenizers[template]
    legacy = LEGACY[case]
    modern = _modern(legacy)
    assert all("function_call" not in m and m["role"] != "function" for m in modern)
    for (legacy_cut, prompt), (modern_cut, _) in zip(_cuts(legacy), _cuts(modern), strict=True):
        for mode, kwargs in THINKING.items():
            for add_generation_prompt in {prompt, False}:
                got = _render(tokenizer, legacy_cut, add_generation_prompt, kwargs)
                want = _render(tokenizer, modern_cut, add_generation_prompt, kwargs)
                where = f"{len(legacy_cut)} messages, thinking {mode}, add_generation_prompt={add_generation_prompt}"
                assert got[0].encode() == want[0].encode(), where
                assert got[1] == want[1], where
                assert got[2] == want[2], where


@pytest.mark.parametrize(("mode", "prefill"), [("off", "<think>\n</think>\n"), ("on", "<think>\n</think>\n\n")])
def test_the_trial_reproducer_renders_the_call_sft_trains(tokenizers: dict, mode: str, prefill: str) -> None:
    """/tmp/t_migrate/repro/legacy_function_call.py: the call was dropped, an empty turn rendered instead."""
    tokenizer = tokenizers["llama3_thinking"]
    messages = [{"role": "user", "content": "Weather in Hue?"},
                {"role": "assistant", "content": None, "function_call": _call('{"city": "Hue"}')}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, thinking_mode=mode)
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWeather in Hue?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n" + prefill
        + '{"name": "get_weather", "parameters": {"city": "Hue"}}<|eot_id|>'
    )


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("case", list(LEGACY))
def test_a_legacy_row_renders_as_the_sft_data_path_reads_it(tokenizers: dict, template: str, case: str) -> None:
    """The SFT data path normalises function_call/function (sft/formats.py) and renders what it read; a client
    sending the row's messages as they are must get those same bytes."""
    from tempa.sft.formats import FormatSpec, normalize_row

    tokenizer = tokenizers[template]
    row = {"messages": LEGACY[case], "tools": [WEATHER]}
    read = normalize_row(json.loads(json.dumps(row)), FormatSpec(format="auto"))
    assert "function" not in [m["role"] for m in read.messages]
    for mode, kwargs in THINKING.items():
        trained = tokenizer.apply_chat_template(read.messages, tools=read.tools, tokenize=False, **kwargs)
        served = tokenizer.apply_chat_template(LEGACY[case], tools=[WEATHER], tokenize=False, **kwargs)
        assert served.encode() == trained.encode(), mode


def test_consecutive_function_and_tool_results_share_one_chatml_user_turn(tokenizers: dict) -> None:
    # Qwen2.5 writes consecutive results as <tool_response> blocks of one user turn, whatever role names them.
    tokenizer = tokenizers["chatml_thinking"]
    calls = [{"type": "function", "function": _call({"city": c})} for c in ("Hue", "Hanoi")]
    mixed = [{"role": "user", "content": "Hue and Hanoi?"},
             {"role": "assistant", "content": None, "tool_calls": calls},
             {"role": "function", "name": "get_weather", "content": "30C"},
             {"role": "tool", "content": "25C"}]
    modern = [*mixed[:2], {"role": "tool", "content": "30C"}, {"role": "tool", "content": "25C"}]
    for prompt in (True, False):
        got = tokenizer.apply_chat_template(mixed, tools=[WEATHER], add_generation_prompt=prompt, tokenize=False)
        assert got == tokenizer.apply_chat_template(modern, tools=[WEATHER], add_generation_prompt=prompt,
                                                    tokenize=False)
        assert got.count("<|im_start|>user\n<tool_response>\n30C\n</tool_response>\n<tool_response>\n25C") == 1


# ---------------------------------------------------------------- errors


def _error(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    with pytest.raises(jinja2.TemplateError) as raised:
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return str(raised.value)


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_unknown_role_error_lists_exactly_the_roles_the_template_accepts(tokenizers: dict, template: str) -> None:
    tokenizer = tokenizers[template]
    listed = re.fullmatch(r'messages\[0\]\.role: unknown role "bot"; expected (.+)',
                          _error(tokenizer, [{"role": "bot", "content": "Hi"}]))
    assert listed is not None
    *head, last = listed.group(1).split(" or ")
    named = {role.strip() for part in head for role in part.split(",")} | {last.strip()}
    accepted = set()
    for role in ("system", "user", "assistant", "tool", "ipython", "function", "observation", "model", "human"):
        # after a call, so that every result role is in its place; a misplaced role fails otherwise, not as unknown
        messages = [{"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": None, "tool_calls": [{"function": _call({"city": "Hue"})}]},
                    {"role": role, "content": "30C"}]
        try:
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except jinja2.TemplateError as error:
            if "unknown role" not in str(error):
                accepted.add(role)
        else:
            accepted.add(role)
    assert named == accepted
    assert {"function", "tool"} <= accepted


ASSISTANT_ERRORS = [
    ({"content": "Hello.", "reasoning_content": 5}, "messages[1].reasoning_content must be a string, got 5"),
    ({"content": None, "tool_calls": {"type": "function", "function": _call("{}")}},
     "messages[1].tool_calls must be a list of calls, got one object (a single call goes in a list too)"),
    ({"content": None, "tool_calls": '[{"function": {"name": "get_weather"}}]'},
     "messages[1].tool_calls must be a list of calls, got a string (a template cannot parse JSON text: send the "
     "list itself)"),
    ({"content": None, "function_call": '{"name": "get_weather", "arguments": "{}"}'},
     'messages[1].function_call must be an object {"name": <string>, "arguments": <object or JSON text>}, got a '
     "string (a template cannot parse JSON text: send the object itself)"),
    ({"content": None, "function_call": ["get_weather"]},
     'messages[1].function_call must be an object {"name": <string>, "arguments": <object or JSON text>}, got '
     '["get_weather"]'),
    ({"content": None, "function_call": {"arguments": "{}"}}, "messages[1].function_call needs a function name (string)"),
]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize(("fields", "message"), ASSISTANT_ERRORS, ids=[m for _, m in ASSISTANT_ERRORS])
def test_a_malformed_assistant_message_is_refused_in_one_line_naming_message_field_and_expectation(
    tokenizers: dict, template: str, fields: dict[str, Any], message: str
) -> None:
    error = _error(tokenizers[template], [{"role": "user", "content": "Hi"}, {"role": "assistant", **fields}])
    assert error == message
    assert "\n" not in error


@pytest.mark.parametrize("template", TEMPLATES)
def test_a_function_result_without_a_call_is_refused_like_a_tool_result(tokenizers: dict, template: str) -> None:
    error = _error(tokenizers[template], [{"role": "user", "content": "Hi"},
                                          {"role": "function", "name": "get_weather", "content": "30C"}])
    assert error == "messages[1]: a tool message must follow an assistant message with tool_calls (or a function_call)"
