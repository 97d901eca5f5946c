"""The thinking module: one home for the tags, the split rule (the same in Python and in both templates),
the mode kwargs and the baked defaults; and the stock Llama 3.1 preamble option."""

from __future__ import annotations

import ast
from pathlib import Path

import jinja2
import pytest

from tempa.chat_templates import (
    TemplateDefaults,
    load_template,
    render_text,
    template_defaults,
    with_defaults,
)
from tempa.chat_templates.probes import WEATHER_TOOL
from tempa.chat_templates.thinking import (
    PREFILL,
    THINK_CLOSE,
    THINK_OPEN,
    ThinkSplit,
    end_of_turn_token,
    keeps_reasoning,
    mode_kwargs,
    split_reasoning,
)

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("recipes", "sft", "alignment", "merge", "chat_templates", "bench")
TEMPLATES = ("llama3_thinking", "chatml_thinking")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_only_the_thinking_module_spells_the_think_tags() -> None:
    """Every other module imports the tags: a string literal holding one (docstrings aside) is a copy."""
    home = ROOT / "chat_templates" / "thinking.py"
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == home:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            skip = _docstrings(tree)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                        and any(tag in node.value for tag in ("<think>", "</think>"))):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
    assert (THINK_OPEN, THINK_CLOSE) == ("<think>", "</think>")


# ---------------------------------------------------------------- the split rule

SPLITS = [
    # a leading block, closed by the first closing tag after it
    ("<think>\nplan\n</think>\n\nanswer", ThinkSplit("plan", "answer", opened=True, closed=True)),
    ("  <think>plan</think>answer", ThinkSplit("plan", "answer", opened=True, closed=True)),
    ("<think>\n\n</think>\n\nanswer", ThinkSplit("", "answer", opened=True, closed=True)),
    ("<think>a </think> b </think> c", ThinkSplit("a", "b </think> c", opened=True, closed=True)),
    ("<think>never closed", ThinkSplit("never closed", "", opened=True, closed=False)),
    # R1: no opening tag, the closing one on a line of its own
    ("plan\n</think>\n\nanswer", ThinkSplit("plan", "answer", opened=False, closed=True)),
    ("plan\n  </think>\t\nanswer", ThinkSplit("plan", "answer", opened=False, closed=True)),
    ("</think>\n\nanswer", ThinkSplit("", "answer", opened=False, closed=True)),
    ("plan\n</think>", ThinkSplit("plan", "", opened=False, closed=True)),
    # anywhere else a tag is text
    ("Write the closing tag </think> after the reasoning.",
     ThinkSplit(None, "Write the closing tag </think> after the reasoning.", opened=False, closed=False)),
    ("plan</think>\n\nanswer", ThinkSplit(None, "plan</think>\n\nanswer", opened=False, closed=False)),
    ("a\n</think> b", ThinkSplit(None, "a\n</think> b", opened=False, closed=False)),
    ("x <think>a</think> y", ThinkSplit(None, "x <think>a</think> y", opened=False, closed=False)),
    ("plain answer", ThinkSplit(None, "plain answer", opened=False, closed=False)),
    # only ASCII whitespace is trimmed (C++ Jinja engines strip no other): a Japanese paragraph indent (U+3000)
    # and a no-break space stay, and a tag after one is not leading
    ("\u3000今日は晴れです。\u3000\n", ThinkSplit(None, "\u3000今日は晴れです。\u3000", opened=False, closed=False)),
    ("<think>\n\u00a0plan\n</think>\n\n\u3000答え", ThinkSplit("\u00a0plan", "\u3000答え", opened=True, closed=True)),
    ("\u3000<think>plan</think>answer",
     ThinkSplit(None, "\u3000<think>plan</think>answer", opened=False, closed=False)),
]


@pytest.mark.parametrize(("text", "expected"), SPLITS, ids=[repr(t)[:40] for t, _ in SPLITS])
def test_split_rule(text: str, expected: ThinkSplit) -> None:
    assert split_reasoning(text) == expected


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_templates_split_assistant_content_exactly_as_python_does(template_name: str) -> None:
    """The Jinja templates hold the same rule: for every closed (or absent) block, the thinking-on render of
    the content equals the render of the split's reasoning and answer given as fields."""
    template = load_template(template_name)
    for text, split in SPLITS:
        if split.opened and not split.closed:
            continue
        user = {"role": "user", "content": "q"}
        as_content = render_text(template, [user, {"role": "assistant", "content": text}], thinking_mode="on")
        fields = {"role": "assistant", "content": split.answer}
        if split.reasoning is not None:
            fields["reasoning_content"] = split.reasoning
        assert as_content == render_text(template, [user, fields], thinking_mode="on"), text


def test_literal_closing_tag_in_an_off_answer_is_rendered_whole() -> None:
    # Before the fix, "Write the closing tag " became reasoning and vanished in thinking-off mode.
    sentence = f"Write the closing tag {THINK_CLOSE} after the reasoning."
    for name in TEMPLATES:
        text = render_text(load_template(name), [{"role": "user", "content": "q"},
                                                 {"role": "assistant", "content": sentence}], thinking_mode="off")
        assert text.rstrip("\n").endswith(PREFILL["off"] + sentence + end_of_turn_token(text)), name


def test_mode_kwargs_and_the_reasoning_rule() -> None:
    assert mode_kwargs(None) == {}
    assert mode_kwargs("on") == {"thinking_mode": "on", "enable_thinking": True}
    assert mode_kwargs("off") == {"thinking_mode": "off", "enable_thinking": False}
    with pytest.raises(ValueError, match="'on' or 'off'"):
        mode_kwargs("maybe")
    loop = [{"role": "user"}, {"role": "assistant"}, {"role": "user"}, {"role": "assistant"}, {"role": "tool"},
            {"role": "assistant"}]
    assert [keeps_reasoning(loop, i) for i in (1, 3, 5)] == [False, True, True]


# ---------------------------------------------------------------- baked defaults


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_thinking_default_off_is_the_render_without_kwargs(template_name: str) -> None:
    original = load_template(template_name)
    baked = with_defaults(original, TemplateDefaults(thinking_mode="off"))
    assert template_defaults(original).thinking_mode == "on"
    assert template_defaults(baked) == TemplateDefaults(thinking_mode="off")
    messages = [{"role": "user", "content": "Hi"}]
    assert render_text(baked, messages, add_generation_prompt=True).endswith(PREFILL["off"])
    assert render_text(original, messages, add_generation_prompt=True).endswith(PREFILL["on"])
    # The switch still works both ways on the baked template.
    assert render_text(baked, messages, add_generation_prompt=True, enable_thinking=True).endswith(PREFILL["on"])
    assert with_defaults(baked, TemplateDefaults()) == original


def test_defaults_a_template_cannot_hold_are_refused() -> None:
    with pytest.raises(ValueError, match=r"chatml_thinking has no .*default_stock_preamble.*stock_preamble: true"):
        with_defaults(load_template("chatml_thinking"), TemplateDefaults(stock_preamble=True), origin="chatml_thinking")
    plain = "{{ messages[0].content }}<|im_end|>"
    assert with_defaults(plain, TemplateDefaults()) == plain
    with pytest.raises(ValueError, match="thinking_default: off"):
        with_defaults(plain, TemplateDefaults(thinking_mode="off"))


# ---------------------------------------------------------------- stock Llama 3.1 preamble


def _stock_llama31() -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / "llama3_1.jinja").read_text(encoding="utf-8")


STOCK_CASES = {
    "no system": ([{"role": "user", "content": "Hi"}], {}),
    "system + history": (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}],
        {"date_string": "17 Aug 2025"},
    ),
    "tools in the first user message, a finished tool loop": (
        [{"role": "user", "content": "Weather in Jakarta?"},
         {"role": "assistant", "content": "", "tool_calls": [
             {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Jakarta"}}}]},
         # An object: the stock template writes even a string result through tojson ("31C" in quotes), a
         # quirk tempa does not copy (Meta's reference encoder, llama_models' chat_format, writes it raw).
         {"role": "tool", "content": {"temperature_c": 31}}, {"role": "assistant", "content": "31 C."},
         {"role": "user", "content": "Thanks"}],
        {"tools": [WEATHER_TOOL]},
    ),
    "tools in the system message": (
        [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather?"}],
        {"tools": [WEATHER_TOOL], "tools_in_user_message": False},
    ),
}


@pytest.mark.parametrize("case", sorted(STOCK_CASES))
@pytest.mark.parametrize("mode", ["on", "off"])
def test_stock_preamble_renders_exactly_as_the_stock_llama31_template(case: str, mode: str) -> None:
    """With stock_preamble, a prompt is Llama 3.1 Instruct's own render plus the thinking prefill."""
    messages, kwargs = STOCK_CASES[case]
    stock = render_text(_stock_llama31(), messages, add_generation_prompt=True, bos_token="<|begin_of_text|>",
                        **kwargs)
    ours = render_text(load_template("llama3_thinking"), messages, add_generation_prompt=True, stock_preamble=True,
                       thinking_mode=mode, **kwargs)
    assert ours == stock + PREFILL[mode]
    baked = with_defaults(load_template("llama3_thinking"), TemplateDefaults(stock_preamble=True))
    assert render_text(baked, messages, add_generation_prompt=True, thinking_mode=mode, **kwargs) == ours
    without = render_text(load_template("llama3_thinking"), messages, add_generation_prompt=True,
                          thinking_mode=mode, **kwargs)
    assert "Cutting Knowledge Date" not in without


def test_stock_preamble_must_be_a_boolean() -> None:
    with pytest.raises(jinja2.TemplateError, match="stock_preamble must be true or false"):
        render_text(load_template("llama3_thinking"), [{"role": "user", "content": "Hi"}], stock_preamble="yes")


def _render_as_a_cpp_engine(template: str, messages: list[dict], strip_chars: str, **kwargs: object) -> str:
    """Render the GGUF's template with the ``trim`` filter of a C++ Jinja engine: llama.cpp's own (since b7756,
    ``common/jinja``) strips C ``isspace`` (" \\t\\n\\v\\f\\r"), minja (before it) " \\t\\n\\r"; Python's
    ``str.strip()`` strips Unicode whitespace too. Everything else as transformers' environment has it."""
    from tempa.chat_templates.rendering import compile_template
    from tempa.merge.gguf_export import serving_template

    environment = compile_template(template).environment.overlay()
    environment.filters = {**environment.filters, "trim": lambda value, chars=None: value.strip(chars or strip_chars)}
    return environment.from_string(serving_template(template)).render(messages=messages, **kwargs)


# Japanese text starting a paragraph with an ideographic space (U+3000), and a no-break space, at every trimmed end.
UNICODE_SPACED = [
    {"role": "system", "content": "\u3000丁寧に答えてください。\u3000"},
    {"role": "user", "content": "\u3000東京の天気は？\u00a0"},
    {"role": "assistant", "content": "", "reasoning_content": "\u3000道具を呼ぶ。",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "東京"}}}]},
    {"role": "tool", "content": "\u3000晴れ\u3000"},
    {"role": "assistant", "content": "<think>\n\u3000晴れだ。\u3000\n</think>\n\n\u3000晴れです。\u3000"},
    {"role": "user", "content": "\u3000大阪は？"},
    {"role": "assistant", "content": "\u3000雨です。\u3000", "reasoning_content": "\u3000雨。"},
]


@pytest.mark.parametrize("mode", ["on", "off"])
@pytest.mark.parametrize("template_name", TEMPLATES)
def test_unicode_whitespace_renders_the_same_in_python_and_cpp_jinja_engines(template_name: str, mode: str) -> None:
    """llama-server renders the GGUF's template with a C++ engine whose trim strips ASCII whitespace only: a reply
    beginning with U+3000 must render as transformers (training, vLLM) renders it, or a prompt differs from the
    text the model was trained on."""
    template = load_template(template_name)
    for messages, kwargs in ((UNICODE_SPACED, {}), (UNICODE_SPACED[:-1], {"add_generation_prompt": True})):
        kwargs = {**kwargs, "tools": [WEATHER_TOOL], **mode_kwargs(mode)}
        expected = render_text(template, messages, **kwargs)
        assert "\u3000晴れです。\u3000" in expected
        for engine, chars in (("llama.cpp", " \t\n\v\f\r"), ("minja", " \t\n\r")):
            assert _render_as_a_cpp_engine(template, messages, chars, **kwargs) == expected, engine
    # and no strip without its characters, which the override above cannot reach (str.strip() itself)
    from tempa.merge.gguf_export import serving_template

    tree = jinja2.Environment().parse(serving_template(template))
    strips = [node for node in tree.find_all(jinja2.nodes.Call)
              if isinstance(node.node, jinja2.nodes.Getattr) and node.node.attr in ("strip", "lstrip", "rstrip")]
    assert strips and all(len(node.args) == 1 for node in strips)
    assert not [node for node in tree.find_all(jinja2.nodes.Filter) if node.name == "trim"]


@pytest.mark.parametrize("name", ["llama3_thinking", "chatml_thinking"])
def test_the_gguf_template_lets_a_requests_thinking_mode_win_over_llama_servers_enable_thinking(name: str):
    """llama-server passes `enable_thinking` to every render (true unless started with `--reasoning off`) and merges a
    request's chat_template_kwargs over it: a request's `thinking_mode` that differed raised "contradicts
    enable_thinking" from the GGUF's template, so the documented switch failed on llama.cpp's server."""
    from tempa.merge.gguf_export import serving_template

    template = load_template(name)
    served = serving_template(template)
    user = [{"role": "user", "content": "Hi"}]
    for server, request in ((True, "off"), (False, "on"), (True, "on"), (False, "off")):
        text = render_text(served, user, add_generation_prompt=True, enable_thinking=server, thinking_mode=request)
        assert text.endswith(PREFILL[request]), (server, request)
    for server in (True, False):  # a request without thinking_mode: the server's enable_thinking decides
        assert render_text(served, user, add_generation_prompt=True, enable_thinking=server).endswith(
            PREFILL["on" if server else "off"])
    # transformers and vLLM render the tokenizer's own template: a caller contradicting itself is still told
    with pytest.raises(jinja2.TemplateError, match="contradicts enable_thinking"):
        render_text(template, user, add_generation_prompt=True, enable_thinking=True, thinking_mode="off")
