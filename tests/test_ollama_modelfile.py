"""The Modelfile's TEMPLATE, rendered by Go's text/template exactly as Ollama drives it, against the Jinja
template's text.

tests/ollama/render.go ports what Ollama does with a chat request (its template functions, collate, the
message, tool-call and tool types, the Values of Execute, and thinking.InferTags); Go comes from Debian's
golang-go, which the README's test command installs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tempa.chat_templates import TemplateDefaults, load_template, render_text, with_defaults
from tempa.chat_templates.probes import WEATHER_TOOL
from tempa.chat_templates.thinking import THINK_TAGS
from tempa.merge.ollama_template import ollama_template

TEMPLATES = ("llama3_thinking", "chatml_thinking")
CALL = {"function": {"name": "get_weather", "arguments": {"city": "Huế"}}}
# Conversations as an Ollama client sends them (reasoning in `thinking`, as Ollama returns it).
CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {
    "system once, history reasoning dropped": ([
        {"role": "system", "content": "Jawab singkat."},
        {"role": "user", "content": "Ibu kota Thailand?"},
        {"role": "assistant", "content": "Bangkok.", "thinking": "Soal geografi."},
        {"role": "user", "content": "Dan Vietnam?"},
    ], None),
    "tool loop with reasoning and text beside the call": ([
        {"role": "system", "content": "Dùng công cụ khi cần."},
        {"role": "user", "content": "Thời tiết ở Huế?"},
        {"role": "assistant", "content": "Để tôi kiểm tra.", "thinking": "Gọi công cụ thời tiết.", "tool_calls": [CALL]},
        {"role": "tool", "content": "30C", "tool_name": "get_weather"},
    ], [WEATHER_TOOL]),
    "no system prompt, no tools, history reasoning dropped": ([
        {"role": "user", "content": "Hai"},
        {"role": "assistant", "content": "Halo!", "thinking": "Sapaan."},
        {"role": "user", "content": "Apa kabar?"},
    ], None),
    "tool loop without reasoning": ([
        {"role": "user", "content": "Thời tiết ở Huế?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": "30C"},
    ], [WEATHER_TOOL]),
    "second loop after a finished one": ([
        {"role": "user", "content": "Thời tiết ở Huế?"},
        {"role": "assistant", "content": "", "thinking": "Gọi công cụ.", "tool_calls": [CALL]},
        {"role": "tool", "content": "30C"},
        {"role": "assistant", "content": "Huế 30°C.", "thinking": "30 độ."},
        {"role": "user", "content": "Còn Đà Nẵng?"},
        {"role": "assistant", "content": "", "thinking": "Lại gọi.",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Đà Nẵng", "unit": "C"}}}]},
        {"role": "tool", "content": "31C"},
    ], [WEATHER_TOOL]),
}
# ChatML only: parallel calls and their results grouped in one user turn.
PARALLEL = ([
    {"role": "user", "content": "Huế và Đà Nẵng?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL, {"function": {"name": "get_weather",
                                                                            "arguments": {"city": "Đà Nẵng"}}}]},
    {"role": "tool", "content": "30C"},
    {"role": "tool", "content": "31C"},
], [WEATHER_TOOL])


def _ollama(renderer: Path, template: str, messages: list[dict], tools: list[dict] | None, think: bool | None,
            before_0_12_4: bool = False) -> dict:
    """Ollama's prompt; ``before_0_12_4``: as Ollama renders it before 0.12.4, which left an unset ``think`` unset."""
    payload = {"template": template, "messages": messages, "tools": tools, "think": think,
               "before_0_12_4": before_0_12_4}
    result = subprocess.run([str(renderer)], input=json.dumps(payload), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _as_jinja(messages: list[dict]) -> list[dict]:
    out = []
    for message in messages:
        turn = {"role": message["role"], "content": message["content"]}
        if message.get("thinking"):
            turn["reasoning_content"] = message["thinking"]
        if message.get("tool_calls"):
            turn["tool_calls"] = [{"type": "function", "function": call["function"]} for call in message["tool_calls"]]
        out.append(turn)
    return out


def _cases():
    for name in TEMPLATES:
        conversations = dict(CONVERSATIONS)
        if name == "chatml_thinking":
            conversations["parallel calls, grouped results"] = PARALLEL
        for case in conversations:
            for default in ("on", "off"):
                yield pytest.param(name, case, default, False, id=f"{name}-{case}-default {default}")
            if name == "llama3_thinking":  # Llama 3.1's own system block (recipe stock_preamble: true)
                yield pytest.param(name, case, "on", True, id=f"{name}-{case}-stock preamble")


@pytest.mark.parametrize(("template_name", "case", "default", "stock_preamble"), list(_cases()))
def test_modelfile_template_renders_as_the_jinja_template(
    go_renderer: Path, template_name: str, case: str, default: str, stock_preamble: bool
) -> None:
    defaults = TemplateDefaults(thinking_mode=default, stock_preamble=stock_preamble)
    jinja = with_defaults(load_template(template_name), defaults)
    go = ollama_template(jinja)
    messages, tools = CONVERSATIONS.get(case) or PARALLEL
    # (think, Ollama before 0.12.4): an unset `think` is Ollama's `true` since 0.12.4, the baked default before.
    for think, legacy in ((None, False), (None, True), (True, False), (False, False)):
        out = _ollama(go_renderer, go, messages, tools, think, before_0_12_4=legacy)
        mode = {None: {"thinking_mode": "on"} if not legacy else {}, True: {"thinking_mode": "on"},
                False: {"thinking_mode": "off"}}[think]
        expected = render_text(jinja, _as_jinja(messages), tools=tools, add_generation_prompt=True, **mode)
        # Tool definitions are the one part Go writes differently (compact JSON, Ollama's field order): the
        # same objects, checked as JSON, then swapped in.
        prompt = out["prompt"]
        for tool, written in zip(tools or [], out["tools_json"], strict=True):
            assert json.loads(written) == tool
            ours = json.dumps(tool, ensure_ascii=False, indent=4 if template_name == "llama3_thinking" else None)
            prompt = prompt.replace(written, ours)
        assert prompt == expected, (think, legacy)
        # Ollama sees the thinking tags, so it offers `think` for this model and parses the reasoning out.
        assert tuple(out["thinking_tags"]) == THINK_TAGS
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        if system:
            assert out["prompt"].count(system) == 1


def test_ollama_think_switch_and_default() -> None:
    """The switch decides the prefill; without it, the baked default does (read from the Go source, for the
    part no conversation above shows: which constant the default is)."""
    for default, constant in (("on", "true"), ("off", "false")):
        jinja = with_defaults(load_template("llama3_thinking"), TemplateDefaults(thinking_mode=default))
        assert ollama_template(jinja).startswith(f"{{{{- $think := {constant} }}}}{{{{ if .IsThinkSet }}}}")
    with pytest.raises(ValueError, match="no Ollama template"):
        ollama_template("{{ messages }}<end_of_turn>")


@pytest.mark.parametrize("default", ["on", "off"])
def test_the_modelfile_says_what_ollama_does_when_think_is_unset(go_renderer: Path, tmp_path: Path,
                                                                 tiny_model_dir: Path, default: str) -> None:
    """Ollama 0.12.4+ sends `think: true` for a thinking-capable model when a request leaves it unset, so a
    thinking_default of 'off' is not what an Ollama user gets by default: the Modelfile must not claim it is."""
    from tempa.chat_templates import bake_tokenizer
    from tempa.merge.gguf_export import export_gguf

    jinja_file = tmp_path / "t.jinja"
    jinja_file.write_text(with_defaults(load_template("llama3_thinking"), TemplateDefaults(thinking_mode=default)))
    final = tmp_path / "final"
    bake_tokenizer(tiny_model_dir, str(jinja_file), final, model_dir=tiny_model_dir)
    for name in ("config.json", "model.safetensors"):
        (final / name).write_bytes((tiny_model_dir / name).read_bytes())
    modelfile = export_gguf(final, tmp_path / "out" / "m.gguf").modelfile_path.read_text()
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    messages = [{"role": "user", "content": "Hai"}]
    unset = _ollama(go_renderer, template, messages, None, None)["prompt"]
    jinja = jinja_file.read_text()
    assert unset == render_text(jinja, messages, add_generation_prompt=True, thinking_mode="on")
    header = [line for line in modelfile.splitlines() if line.startswith("#")]
    if default == "off":
        assert unset != render_text(jinja, messages, add_generation_prompt=True)  # not the baked default
        assert any("think: false" in line and "0.12.4" in line for line in header), header
        assert not any("overrides it" in line for line in header), header


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_tool_call_arguments_differ_only_as_go_json_writes_them(
    go_renderer: Path, template_name: str
) -> None:
    """The documented limit of the Go twin: arguments are the same JSON object, written by Go's encoding/json
    (keys sorted, nested values compact, and <, > and & escaped as \\u003c, \\u003e and \\u0026, which Ollama's
    `json` template function does); everything around them renders as the Jinja template does."""
    arguments = {
        "url": "https://example.com/?q=a&b=<c>",
        "city": "Huế",
        "opts": {"unit": "C", "days": [1, 2]},
    }
    messages = [
        {"role": "user", "content": "Fetch it."},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "fetch", "arguments": arguments}}],
        },
        {"role": "tool", "content": "ok"},
    ]
    jinja = load_template(template_name)
    go = _ollama(go_renderer, ollama_template(jinja), messages, None, True)["prompt"]
    expected = render_text(jinja, _as_jinja(messages), add_generation_prompt=True, thinking_mode="on")
    key = '"parameters": ' if template_name == "llama3_thinking" else '"arguments": '
    go_call, jinja_call = (next(line for line in text.splitlines() if key in line) for text in (go, expected))
    written = go_call.split(key, 1)[1].rsplit("}", 1)[0]
    assert json.loads(written) == arguments
    assert "\\u0026" in written and "\\u003c" in written and "&" not in written
    assert go.replace(go_call, jinja_call) == expected


@pytest.mark.parametrize("template_name", TEMPLATES)
@pytest.mark.parametrize("name", ['say "hi"', "path\\to", "天気"])
def test_a_tool_calls_name_renders_as_the_jinja_template_writes_it(
    go_renderer: Path, template_name: str, name: str
) -> None:
    """The Jinja templates write a call's name as JSON (tojson); the Go twin pasted it between quotes, so Ollama
    rendered `{"name": "say "hi""` where the template the model was trained on wrote `"say \\"hi\\""`."""
    messages = [
        {"role": "user", "content": "Go."},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": name, "arguments": {"x": 1}}}]},
        {"role": "tool", "content": "ok"},
    ]
    jinja = load_template(template_name)
    go = _ollama(go_renderer, ollama_template(jinja), messages, None, True)["prompt"]
    assert go == render_text(jinja, _as_jinja(messages), add_generation_prompt=True, thinking_mode="on")


def test_llama3_twin_refuses_parallel_calls_as_the_jinja_template_does(go_renderer: Path) -> None:
    """Llama 3.1's format has one call per assistant message: the Jinja template refuses two (a template error in
    transformers, vLLM and llama.cpp), so Ollama must not render them glued together as JSON the model never saw."""
    import jinja2

    messages, tools = PARALLEL
    jinja = load_template("llama3_thinking")
    with pytest.raises(jinja2.TemplateError, match="allows one tool call per assistant message"):
        render_text(jinja, _as_jinja(messages), tools=tools, add_generation_prompt=True)
    payload = {"template": ollama_template(jinja), "messages": messages, "tools": tools, "think": True,
               "before_0_12_4": False}
    result = subprocess.run([str(go_renderer)], input=json.dumps(payload), capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stdout
    assert "the Llama 3.1 format allows one tool call per assistant message" in result.stderr
