"""Golden renders of both templates, and the format rules they encode, checked without a tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest

from tempa.chat_templates import (
    available_templates,
    end_of_turn_token,
    load_template,
    render_text,
    render_with_generation_spans,
)
from tempa.chat_templates.probes import WEATHER_TOOL
from tempa.chat_templates.templates import TemplateNotFoundError

GOLDEN = Path(__file__).parent / "golden"
CASES = json.loads((GOLDEN / "conversations.json").read_text(encoding="utf-8"))
TEMPLATES = ("llama3_thinking", "chatml_thinking")
MODES = ("on", "off")
OPEN, CLOSE = "⟦", "⟧"


def _marked(text: str, spans: list[tuple[int, int]]) -> str:
    out, position = [], 0
    for start, end in spans:
        out += [text[position:start], OPEN, text[start:end], CLOSE]
        position = end
    return "".join([*out, text[position:]])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("template_name", TEMPLATES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_golden(case: str, template_name: str, mode: str) -> None:
    spec = CASES[case]
    text, spans = render_with_generation_spans(
        load_template(template_name),
        spec["messages"],
        tools=spec.get("tools"),
        add_generation_prompt=spec.get("add_generation_prompt", False),
        thinking_mode=mode,
    )
    expected = (GOLDEN / f"{case}.{template_name}.{mode}.txt").read_text(encoding="utf-8")
    assert _marked(text, spans) == expected


@pytest.mark.parametrize("mode", MODES)
def test_golden_marks_fall_on_token_boundaries_of_metas_llama3_tokenizer(mode: str, llama3_final_dir: Path) -> None:
    """Through the real Llama 3 tokenizer, every golden text tokenises losslessly and its trained tokens are
    exactly the marked spans: no token straddles a mark, so the masks train what the goldens specify."""
    from transformers import AutoTokenizer

    from tempa.chat_templates.rendering import mask_spans

    tokenizer = AutoTokenizer.from_pretrained(llama3_final_dir)
    for case, spec in sorted(CASES.items()):
        golden = (GOLDEN / f"{case}.llama3_thinking.{mode}.txt").read_text(encoding="utf-8")
        out = tokenizer.apply_chat_template(
            spec["messages"], tools=spec.get("tools"), add_generation_prompt=spec.get("add_generation_prompt", False),
            tokenize=True, return_dict=True, return_assistant_tokens_mask=True, thinking_mode=mode,
        )
        ids = out["input_ids"]
        assert tokenizer.decode(ids) == golden.replace(OPEN, "").replace(CLOSE, ""), case
        marked = [part.split(CLOSE)[0] for part in golden.split(OPEN)[1:]]
        assert [tokenizer.decode(ids[a:b]) for a, b in mask_spans(out["assistant_masks"])] == marked, case


def test_every_golden_file_is_exercised() -> None:
    expected = {f"{case}.{name}.{mode}.txt" for case in CASES for name in TEMPLATES for mode in MODES}
    assert {path.name for path in GOLDEN.glob("*.txt")} == expected


def test_card_example_prompt_makes_the_mode_visible() -> None:
    # The SEA-LION v3.5 card call: the two modes differ only in the prefilled think block.
    messages = CASES["id_sentiment_prompt"]["messages"]
    template = load_template("llama3_thinking")
    on = render_text(template, messages, add_generation_prompt=True, thinking_mode="on")
    off = render_text(template, messages, add_generation_prompt=True, thinking_mode="off")
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert on.endswith(header + "<think>\n")
    assert off.endswith(header + "<think>\n</think>\n")
    assert on.removesuffix("<think>\n") == off.removesuffix("<think>\n</think>\n")


# ---------------------------------------------------------------- registry


def test_available_templates_lists_the_shipped_files() -> None:
    assert available_templates() == ["chatml_thinking", "llama3_thinking"]


def test_load_template_by_path_and_unknown_name(tmp_path: Path) -> None:
    path = tmp_path / "mine.jinja"
    path.write_text("{{ messages[0].content }}<|im_end|>", encoding="utf-8")
    assert load_template(str(path)) == "{{ messages[0].content }}<|im_end|>"
    with pytest.raises(TemplateNotFoundError, match=r"'nope'.*known: chatml_thinking, llama3_thinking"):
        load_template("nope")
    with pytest.raises(TemplateNotFoundError, match="is a folder"):
        load_template(str(tmp_path))


def test_load_template_reports_syntax_errors_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jinja"
    path.write_text("line one\n{% if %}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jinja: line 2"):
        load_template(str(path))


def test_end_of_turn_token_detection() -> None:
    assert end_of_turn_token(load_template("llama3_thinking")) == "<|eot_id|>"
    assert end_of_turn_token(load_template("chatml_thinking")) == "<|im_end|>"
    with pytest.raises(ValueError, match="end-of-turn"):
        end_of_turn_token("{{ messages }}")


# ---------------------------------------------------------------- format rules


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_reasoning_sources_are_equivalent(template_name: str) -> None:
    template = load_template(template_name)
    user = {"role": "user", "content": "Q"}
    renders = {
        key: render_text(template, [user, {"role": "assistant", "content": "A", key: "R."}])
        for key in ("reasoning_content", "reasoning", "thinking")
    }
    renders["r1-style"] = render_text(template, [user, {"role": "assistant", "content": "R.\n</think>\n\nA"}])
    renders["inline"] = render_text(
        template, [user, {"role": "assistant", "content": "<think>\nR.\n</think>\n\nA"}]
    )
    assert len(set(renders.values())) == 1
    assert "<think>\nR.\n</think>\n\nA" in renders["inline"]


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_a_turn_with_several_reasoning_keys_trains_what_transformers_renders(
        template_name: str, tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    """transformers' apply_chat_template copies the first of reasoning_content / thinking / reasoning that is set into
    reasoning_content before the template reads it; the SFT reader and the template took reasoning before thinking,
    so a turn with both trained on one trace and was prompted, in a tool loop, with the other."""
    from transformers import AutoTokenizer

    from tempa.chat_templates import bake_tokenizer
    from tempa.sft.formats import FormatSpec, normalize_row

    tokenizer = AutoTokenizer.from_pretrained(bake_tokenizer(tiny_tokenizer_dir, template_name, tmp_path / "baked"))
    user = {"role": "user", "content": "Q"}
    for keys in ({"reasoning": "R.", "thinking": "T."}, {"reasoning": "R.", "thinking": "T.", "reasoning_content": ""},
                 {"reasoning": "R.", "thinking": ""}):
        turn = {"role": "assistant", "content": "A", **keys}
        (trained,) = [m["reasoning_content"] for m in normalize_row({"messages": [user, turn]},
                                                                     FormatSpec(format="auto")).messages[1:]]
        rendered = tokenizer.apply_chat_template([user, turn], tokenize=False, thinking_mode="on")
        assert f"<think>\n{trained}\n</think>\n\nA" in rendered, keys
        # vLLM and llama.cpp hand the template the message as it is: the same trace
        assert render_text(load_template(template_name), [user, turn], thinking_mode="on") == \
            render_text(load_template(template_name), [user, {**turn, "reasoning_content": trained}],
                        thinking_mode="on"), keys


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_explicit_reasoning_wins_and_inline_block_is_always_removed(template_name: str) -> None:
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "<think>inline</think>A", "reasoning_content": "explicit"},
    ]
    on = render_text(load_template(template_name), messages, thinking_mode="on")
    off = render_text(load_template(template_name), messages, thinking_mode="off")
    assert "<think>\nexplicit\n</think>\n\nA" in on
    assert "inline" not in on and "inline" not in off and "explicit" not in off


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_on_mode_without_reasoning_renders_an_empty_block(template_name: str) -> None:
    text, spans = render_with_generation_spans(
        load_template(template_name),
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    )
    assert "<think>\n</think>\n\nA" in text
    ((start, end),) = spans
    assert text[start:end] == f"</think>\n\nA{end_of_turn_token(load_template(template_name))}"


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_every_assistant_turn_is_a_generation_span_ending_with_its_end_of_turn(template_name: str) -> None:
    template = load_template(template_name)
    eot = end_of_turn_token(template)
    for case in ("th_multiturn", "agent_loop", "tool_call"):
        messages = CASES[case]["messages"]
        for mode in MODES:
            text, spans = render_with_generation_spans(template, messages, tools=CASES[case].get("tools"),
                                                       thinking_mode=mode)
            assert len(spans) == sum(m["role"] == "assistant" for m in messages), case
            for start, end in spans:
                assert text[start:end].endswith(eot) and text[start:end].count(eot) == 1, case
    # A turn before the last user message is history: its answer alone, no think block, no reasoning.
    text, spans = render_with_generation_spans(template, CASES["th_multiturn"]["messages"], thinking_mode="on")
    assert text[spans[0][0] : spans[0][1]] == f"ประเทศไทย{eot}"


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_a_turn_renders_the_same_whether_or_not_it_is_the_last_message(template_name: str) -> None:
    # The regression behind trl's prefix check: a final tool-call turn used to render its think block, and
    # lost it once a tool result followed.
    template = load_template(template_name)
    messages, tools = CASES["agent_loop"]["messages"], CASES["agent_loop"]["tools"]
    for mode in MODES:
        for cut in (2, 6):  # after each tool-call turn
            alone = render_text(template, messages[:cut], tools=tools, thinking_mode=mode)
            continued = render_text(template, messages[: cut + 1], tools=tools, thinking_mode=mode,
                                    add_generation_prompt=True)
            assert continued.startswith(alone), (cut, mode)


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_text_beside_a_tool_call_renders_before_the_call(template_name: str) -> None:
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Huế"}}}
    messages = [{"role": "user", "content": "Thời tiết ở Huế?"},
                {"role": "assistant", "content": "Để tôi kiểm tra.", "tool_calls": [call]}]
    text = render_text(load_template(template_name), messages, tools=[WEATHER_TOOL], thinking_mode="off")
    key = "parameters" if template_name == "llama3_thinking" else "arguments"
    call_text = f'{{"name": "get_weather", "{key}": {{"city": "Huế"}}}}'
    if template_name == "chatml_thinking":
        call_text = f"<tool_call>\n{call_text}\n</tool_call>"
    assert f"Để tôi kiểm tra.\n{call_text}{end_of_turn_token(load_template(template_name))}" in text


def test_llama3_tool_definitions_in_system_message_when_asked() -> None:
    messages = [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": "Weather?"}]
    text = render_text(
        load_template("llama3_thinking"),
        messages,
        tools=[WEATHER_TOOL],
        tools_in_user_message=False,
        add_generation_prompt=True,
    )
    system, user = text.split("<|start_header_id|>user<|end_header_id|>\n\n")
    assert system.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n\n"
    )
    assert "You have access to the following functions." in system and '"name": "get_weather"' in system
    assert system.endswith("Be helpful.<|eot_id|>")
    assert user.startswith("Weather?<|eot_id|>")


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_tool_call_arguments_as_json_string_are_emitted_verbatim(template_name: str) -> None:
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Hanoi"}'}}
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "tool_calls": [call]}]
    text = render_text(load_template(template_name), messages, tools=[WEATHER_TOOL], thinking_mode="off")
    key = "parameters" if template_name == "llama3_thinking" else "arguments"
    assert f'{{"name": "get_weather", "{key}": {{"city": "Hanoi"}}}}' in text


def test_chatml_groups_consecutive_tool_results_in_one_user_turn() -> None:
    calls = [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
        for city in ("A", "B")
    ]
    messages = [
        {"role": "user", "content": "Weather in A and B?"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": {"sky": "rain"}},
    ]
    text = render_text(
        load_template("chatml_thinking"), messages, tools=[WEATHER_TOOL], add_generation_prompt=True
    )
    assert text.endswith(
        '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "B"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\n"
        '{"sky": "rain"}\n</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n'
    )


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_text_parts_content_renders_like_a_string(template_name: str) -> None:
    template = load_template(template_name)
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    as_parts = render_text(template, [{"role": "user", "content": parts}], add_generation_prompt=True)
    as_text = render_text(template, [{"role": "user", "content": "Hello there"}], add_generation_prompt=True)
    assert as_parts == as_text


@pytest.mark.parametrize(
    ("template_name", "messages", "kwargs", "message"),
    [
        (
            "llama3_thinking",
            [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "tool_calls": [{"function": {"name": "a", "arguments": {}}}] * 2},
            ],
            {},
            r"messages\[1\]\.tool_calls: .*one tool call per assistant message, got 2",
        ),
        (
            "llama3_thinking",
            [{"role": "system", "content": "S"}],
            {"tools": [WEATHER_TOOL]},
            "no user message",
        ),
        (
            "chatml_thinking",
            [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]},
            ],
            {},
            r"messages\[1\]\.tool_calls\[0\] needs a function name",
        ),
    ],
)
def test_template_specific_invalid_input(
    template_name: str, messages: list, kwargs: dict, message: str
) -> None:
    with pytest.raises(jinja2.TemplateError, match=message):
        render_text(load_template(template_name), messages, **kwargs)
