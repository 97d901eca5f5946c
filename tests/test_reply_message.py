"""``reply_message``: a served tool loop, each reply sent back as the message it makes, is prompted as it trained.

A server without tool or reasoning parsers returns what the model wrote after the generation prompt. Sent back as
it came, a tool loop step was refused (the result after it follows no tool call) or, with the call given again as
``tool_calls``, rendered its call twice (a tools trial). Here each trained loop step's written text, taken from the
training sample itself, goes through ``reply_message``; the next generation prompt must be the sample's prefix,
token for token, on both templates and both tokenizers, as transformers renders the message and as vLLM reads it
(its request parsing, read from ``vllm/entrypoints/chat_utils.py``, not run).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from tempa.chat_templates import load_template, mode_kwargs, reply_message
from tempa.chat_templates.cli import training_samples
from tempa.chat_templates.thinking import end_of_turn_token, last_user_index

TEMPLATES = ("llama3_thinking", "chatml_thinking")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "local_time", "description": "Local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _call(name: str, city: str) -> dict[str, Any]:
    return {"id": f"{name}-{city}", "type": "function", "function": {"name": name, "arguments": {"city": city}}}


def _result(call: dict[str, Any], text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"], "content": text}


def _loop(template_name: str) -> list[dict[str, Any]]:
    """History, then a loop: a step with text before its call, a step with calls only (two at once where the
    template takes several), and the answer; every assistant turn reasons."""
    hue, danang, time = _call("get_weather", "Huế"), _call("get_weather", "Đà Nẵng"), _call("local_time", "Đà Nẵng")
    second = [danang, time] if template_name == "chatml_thinking" else [danang]
    return [
        {"role": "system", "content": "Bạn là trợ lý thời tiết."},
        {"role": "user", "content": "Chào bạn"},
        {"role": "assistant", "content": "Chào! Tôi giúp gì được?", "reasoning_content": "Chào lại."},
        {"role": "user", "content": "Thời tiết ở Huế và Đà Nẵng thế nào?"},
        {"role": "assistant", "content": "Để tôi xem Huế trước.", "reasoning_content": "Cần gọi công cụ cho Huế.",
         "tool_calls": [hue]},
        _result(hue, "30°C, nắng"),
        {"role": "assistant", "content": None, "reasoning_content": "Giờ đến Đà Nẵng.", "tool_calls": second},
        *[_result(call, text) for call, text in zip(second, ["31°C, mưa", "14:05"], strict=False)],
        {"role": "assistant", "content": "Huế 30°C, Đà Nẵng 31°C.", "reasoning_content": "Đủ dữ liệu."},
    ]


def _as_vllm_reads_it(message: dict[str, Any]) -> dict[str, Any]:
    """A request's assistant message as vLLM's OpenAI server hands it to the template (chat_utils.py,
    _parse_chat_message_content and _postprocess_messages): content text (null: ""), tool_calls as given with
    their JSON text arguments parsed, and `reasoning` copied to `reasoning_content`."""
    out = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("tool_calls") is not None:
        out["tool_calls"] = copy.deepcopy(message["tool_calls"])
        for call in out["tool_calls"]:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    if message.get("reasoning") is not None:
        out["reasoning"] = out["reasoning_content"] = message["reasoning"]
    return out


def _prompt_ids(tokenizer: Any, template: str, messages: list[dict[str, Any]], mode: str) -> list[int]:
    text = tokenizer.apply_chat_template(messages, chat_template=template, tools=[WEATHER, TIME], tokenize=False,
                                         add_generation_prompt=True, **mode_kwargs(mode))
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # a server tokenises the rendered prompt so


@pytest.mark.parametrize("mode", ["on", "off"])
@pytest.mark.parametrize("template_name", TEMPLATES)
@pytest.mark.parametrize("tokenizer_fixture", ["tiny_tokenizer_dir", "llama3_model_dir"])
def test_each_loop_step_sent_back_as_its_reply_message_prompts_the_next_as_it_trained(
    tokenizer_fixture: str, template_name: str, mode: str, request: pytest.FixtureRequest
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(Path(request.getfixturevalue(tokenizer_fixture)))
    template = load_template(template_name)
    messages = _loop(template_name)
    sample = training_samples(tokenizer, template, messages, [WEATHER, TIME], thinking=mode == "on")[-1]
    first = last_user_index(messages) + 1
    steps = [i for i in range(first, len(messages)) if messages[i]["role"] == "assistant"]
    assert sample.turns == steps and len(sample.trained) == len(steps)  # the loop: one sample, a span per step

    eot = end_of_turn_token(template)
    as_sent, as_vllm_reads = list(messages[:first]), list(messages[:first])
    for (start, end), step in zip(sample.trained, steps, strict=True):
        assert _prompt_ids(tokenizer, template, as_sent, mode) == sample.input_ids[:start]
        assert _prompt_ids(tokenizer, template, as_vllm_reads, mode) == sample.input_ids[:start]
        written = tokenizer.decode(sample.input_ids[start:end], clean_up_tokenization_spaces=False)
        # what a server without parsers returns: the text before the end of turn (a tokenizer without ChatML's
        # <|im_end|> as one token trains the line break after it too, in the same token)
        message = reply_message(written[:written.rindex(eot)], thinking=mode == "on")
        calls = message.get("tool_calls") or []
        assert [call["function"]["name"] for call in calls] == [
            call["function"]["name"] for call in messages[step].get("tool_calls") or []]
        results = [{**turn, "tool_call_id": call["id"]}
                   for turn, call in zip(messages[step + 1:step + 1 + len(calls)], calls, strict=True)]
        as_sent += [message, *results]
        as_vllm_reads += [_as_vllm_reads_it(message), *results]
    full = tokenizer.apply_chat_template(as_sent, chat_template=template, tools=[WEATHER, TIME], tokenize=False,
                                         **mode_kwargs(mode))
    assert tokenizer(full, add_special_tokens=False)["input_ids"] == sample.input_ids


CALL = '{"name": "get_weather", "parameters": {"city": "Huế"}}'
BLOCK = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Huế"}}\n</tool_call>'


def _arguments(message: dict[str, Any]) -> list[str]:
    return [call["function"]["arguments"] for call in message.get("tool_calls") or []]


@pytest.mark.parametrize(("text", "content", "reasoning", "arguments"), [
    # thinking on: the reasoning, then a call alone, or after the text on a line of its own
    (f"Cần Huế.\n</think>\n\n{CALL}", None, "Cần Huế.", ['{"city": "Huế"}']),
    (f"Cần Huế.\n</think>\n\nXem Huế.\n{CALL}", "Xem Huế.", "Cần Huế.", ['{"city": "Huế"}']),
    (f"</think>\n\n{CALL}", None, None, ['{"city": "Huế"}']),  # on, with no reasoning written
    # thinking off (the prefill closed the block): the answer only
    ("Huế 30°C.", "Huế 30°C.", None, []),
    (f"<think>\nCần Huế.\n</think>\n\n{CALL}", None, "Cần Huế.", ['{"city": "Huế"}']),  # the prefill sent along
    # ChatML blocks, after the text, one per call
    (f"r\n</think>\n\nXem.\n{BLOCK}\n{BLOCK.replace('Huế', 'Vinh')}", "Xem.", "r",
     ['{"city": "Huế"}', '{"city": "Vinh"}']),
    # the arguments as the model spelled them, when the call is spelled as the template writes one
    ('{"name": "f", "parameters": {"b":1,  "a": [ ]}}', None, None, ['{"b":1,  "a": [ ]}']),
    # a call spelled otherwise: its arguments as training writes them (the template writes the call its own way)
    ('{"name":"f","parameters":{"city":"Huế"}}', None, None, ['{"city": "Huế"}']),
    ('{"parameters": {"city": "Huế"}, "name": "f"}', None, None, ['{"city": "Huế"}']),
    # not the layout the templates write calls in: text, rendered back as written
    (f"{CALL}\nthen more text", f"{CALL}\nthen more text", None, []),
    (f"{BLOCK}\nthen more text", f"{BLOCK}\nthen more text", None, []),
    ("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}", "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}", None, []),
    ('{"name": "f"}', '{"name": "f"}', None, []),  # names no arguments: JSON, not a call
])
def test_reply_message_splits_reasoning_text_and_calls(text: str, content: str | None, reasoning: str | None,
                                                       arguments: list[str]) -> None:
    message = reply_message(text)
    assert message["role"] == "assistant" and message["content"] == content
    assert message.get("reasoning") == reasoning and _arguments(message) == arguments
    assert ("tool_calls" in message) == bool(arguments)
    ids = [call["id"] for call in message.get("tool_calls") or []]
    assert len(set(ids)) == len(ids) and all(isinstance(i, str) and i for i in ids)


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_the_raw_reply_a_trial_sent_back_renders_as_generated_through_reply_message(template_name: str) -> None:
    """The trial's step (send_back_raw.py): as raw content the tool result after it was refused; as its reply
    message the whole step renders back to exactly what the model wrote."""
    import jinja2

    from tempa.chat_templates import render_text

    template = load_template(template_name)
    call = (CALL.replace("Huế", "Oslo") if template_name == "llama3_thinking"
            else BLOCK.replace("Huế", "Oslo"))
    raw = f"I need Oslo first.\n</think>\n\n{call}"
    user = {"role": "user", "content": "Weather in Oslo?"}
    prompt = render_text(template, [user], tools=[WEATHER], add_generation_prompt=True, thinking_mode="on")
    result = {"role": "tool", "tool_call_id": "c1", "content": "-2C"}
    with pytest.raises(jinja2.TemplateError, match="must follow an assistant message with tool_calls"):
        render_text(template, [user, {"role": "assistant", "content": raw}, result], tools=[WEATHER],
                    thinking_mode="on")
    message = reply_message(raw)
    rendered = render_text(template, [user, message, {**result, "tool_call_id": message["tool_calls"][0]["id"]}],
                           tools=[WEATHER], thinking_mode="on")
    eot = end_of_turn_token(template)
    assert rendered.startswith(prompt + raw + eot)


@pytest.mark.parametrize("call", [CALL, BLOCK], ids=["llama3", "chatml"])
def test_a_call_written_inside_reasoning_that_never_closed_is_no_call_when_the_prompt_was_thinking(call: str) -> None:
    """A reply cut off in its reasoning (no </think>) that wrote a call while reasoning came back as a real call: a
    client would run a call the model only thought about (review of reply_message)."""
    text = f"Maybe I should check:\n{call}"
    message = reply_message(text, thinking=True)
    assert "tool_calls" not in message and message["reasoning"] == text and message["content"] == ""
    assert reply_message(f"<think>\n{text}")["reasoning"] == text  # the prefill sent along: the same
    # closed reasoning, then the call: a call, with thinking=True as without
    closed = f"Need Huế.\n</think>\n\n{call}"
    assert _arguments(reply_message(closed, thinking=True)) == _arguments(reply_message(closed)) == ['{"city": "Huế"}']
