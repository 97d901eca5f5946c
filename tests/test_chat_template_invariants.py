"""Invariants a-j (+ pad) of both templates, on real tokenizers baked to disk and reloaded.

Every tokenizer here is baked by ``bake_tokenizer`` and loaded back with ``AutoTokenizer.from_pretrained``.
Prefix and mask bugs depend on how the tokenizer splits and merges newlines, so each test runs on four of them:
  gpt2-split    the tiny byte-level BPE as built (GPT-2 pre-tokenizer pattern)
  llama3-split  the tiny BPE with Llama 3's pattern, which real Llama 3 / Qwen2 tokenizers use (newlines join
                the punctuation before)
  nn-merge      GPT-2 pattern plus a guaranteed "\n\n" merge, so a prompt ending in two newlines tokenises
                differently from the same newlines followed by text (the tiny vocabulary may or may not have it)
  llama3-real   Meta's Llama 3 tokenizer itself (128,256 tokens; llama3_thinking only: it has no ChatML tokens)
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import jinja2
import pytest
from transformers import AutoTokenizer, GenerationConfig

from tempa.chat_templates import bake_tokenizer, check_tokenizer, end_of_turn_token, load_template
from tempa.chat_templates.probes import INVALID_INPUTS, PROBES
from tempa.chat_templates.rendering import mask_spans
from tempa.chat_templates.thinking import last_user_index, split_reasoning

TEMPLATES = ("llama3_thinking", "chatml_thinking")
MODES = ("on", "off")
GOLDEN = json.loads((Path(__file__).parent / "golden" / "conversations.json").read_text(encoding="utf-8"))
# Llama 3's split pattern (Qwen2's differs only in digit grouping): newlines stick to the punctuation before them.
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _conversations() -> list[tuple[str, list[dict[str, Any]], list[dict[str, Any]] | None]]:
    """Training conversations (ending in the trained assistant turn): the check probes plus the golden cases."""
    rows = [(probe.name, probe.messages, probe.tools) for probe in PROBES]
    rows += [
        (name, spec["messages"], spec.get("tools"))
        for name, spec in sorted(GOLDEN.items())
        if spec["messages"][-1]["role"] == "assistant"
    ]
    return rows


CONVERSATIONS = _conversations()
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


@pytest.fixture(scope="module")
def baked_dirs(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("baked")
    return {name: bake_tokenizer(tiny_tokenizer_dir, name, root / name) for name in TEMPLATES}


@pytest.fixture(scope="module")
def llama3_split_dirs(
    baked_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    from tokenizers import Regex, pre_tokenizers

    root = tmp_path_factory.mktemp("llama3-split")
    out = {}
    for name, folder in baked_dirs.items():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tokenizer.save_pretrained(root / name)
        shutil.copy(folder / "generation_config.json", root / name / "generation_config.json")
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def nn_merge_dirs(baked_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nn-merge")
    out = {}
    for name, folder in baked_dirs.items():
        shutil.copytree(folder, root / name)
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
        if "ĊĊ" not in vocab:  # byte-level symbols: "Ċ" is "\n"
            vocab["ĊĊ"] = 1 + max([*vocab.values(), *(token["id"] for token in spec["added_tokens"])])
            merges.append(["Ċ", "Ċ"] if merges and isinstance(merges[0], list) else "Ċ Ċ")
        (root / name / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def llama3_real_dirs(llama3_final_dir: Path) -> dict[str, Path]:
    return {"llama3_thinking": llama3_final_dir}


VARIANTS = ("gpt2-split", "llama3-split", "nn-merge", "llama3-real")
PAIRS = [(t, v) for t in TEMPLATES for v in VARIANTS if not (v == "llama3-real" and t != "llama3_thinking")]


_LOADED: dict[tuple[str, str], Any] = {}


@pytest.fixture(params=PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def tokenizer(request: pytest.FixtureRequest) -> Any:
    """Loaded from disk once per module and shared (treat as read-only): the real Llama 3 one takes seconds."""
    name, variant = request.param
    if request.param in _LOADED:
        return _LOADED[request.param]
    fixture = {"gpt2-split": "baked_dirs", "llama3-split": "llama3_split_dirs", "nn-merge": "nn_merge_dirs",
               "llama3-real": "llama3_real_dirs"}[variant]
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture)[name])
    # The variant must have survived the save and reload, or its runs test nothing new.
    if variant == "llama3-split":
        assert "Split" in str(tokenizer.backend_tokenizer.pre_tokenizer)
    if variant == "nn-merge":
        assert (
            tokenizer.convert_ids_to_tokens(tokenizer.encode("A\n\n", add_special_tokens=False))[-1] == "ĊĊ"
        )
    if variant == "llama3-real":
        assert len(tokenizer) == 128256 and tokenizer.convert_tokens_to_ids("<|eot_id|>") == 128009
    _LOADED[request.param] = tokenizer
    return tokenizer


def _ids(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, **kwargs: Any) -> list[int]:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True, **kwargs)[
        "input_ids"
    ]


def _text(tokenizer: Any, messages: list[dict[str, Any]], tools: Any = None, **kwargs: Any) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)


def _history_and_loop(messages: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Reasoning of earlier assistant turns: before the last user message (history), and after it (tool loop)."""
    cut = last_user_index(messages)
    return _reasoning_texts(messages[:cut]), _reasoning_texts(messages[cut:-1])


def _reasoning_texts(messages: list[dict[str, Any]]) -> list[str]:
    found = []
    for message in messages:
        for key in REASONING_KEYS:
            if message.get(key):
                found.append(message[key].strip())
        content = message.get("content")
        if isinstance(content, str) and split_reasoning(content).reasoning:
            found.append(split_reasoning(content).reasoning)
    return found


# ---------------------------------------------------------------- a. prefix


def test_a_prompt_tokens_are_a_prefix_of_the_conversation(tokenizer: Any) -> None:
    for name, messages, tools in CONVERSATIONS:
        for mode in MODES:
            prompt = _ids(tokenizer, messages[:-1], tools, add_generation_prompt=True, thinking_mode=mode)
            full = _ids(tokenizer, messages, tools, thinking_mode=mode)
            assert full[: len(prompt)] == prompt, f"{name} [{mode}]"
            assert len(full) > len(prompt)


# ---------------------------------------------------------------- b. mask


def test_b_every_assistant_turn_trains_through_its_end_of_turn_and_the_last_is_what_is_generated(
    tokenizer: Any,
) -> None:
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer.chat_template))
    never_trained = {
        tokenizer.convert_tokens_to_ids(t)
        for t in ("<|start_header_id|>", "<|end_header_id|>", "<|im_start|>", "<|begin_of_text|>")
    }
    for name, messages, tools in CONVERSATIONS:
        for mode in MODES:
            prompt = _ids(tokenizer, messages[:-1], tools, add_generation_prompt=True, thinking_mode=mode)
            out = tokenizer.apply_chat_template(
                messages,
                tools=tools,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                thinking_mode=mode,
            )
            ids, mask = out["input_ids"], out["assistant_masks"]
            spans = mask_spans(mask)
            assert len(spans) == sum(m["role"] == "assistant" for m in messages), f"{name} [{mode}]"
            for start, end in spans:  # each turn: its text through its end-of-turn token, no header
                assert ids[end - 1] == eot_id and eot_id not in ids[start : end - 1], f"{name} [{mode}]"
                assert not never_trained & set(ids[start:end]), f"{name} [{mode}]"
            # The last span starts right after the prompt (no header or prefilled token); after it at most the
            # newline ChatML writes after <|im_end|>, which is never generated.
            assert spans[-1][0] == len(prompt), f"{name} [{mode}]"
            assert tokenizer.decode(ids[spans[-1][1] :]).strip() == "", f"{name} [{mode}]"


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_b_trained_text_of_the_card_example(template_name: str, baked_dirs: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(baked_dirs[template_name])
    messages = GOLDEN["id_sentiment"]["messages"]
    reasoning = messages[-1]["reasoning_content"]
    eot = end_of_turn_token(tokenizer.chat_template)
    expected = {"on": f"{reasoning}\n</think>\n\nNegatif{eot}", "off": f"Negatif{eot}"}
    for mode in MODES:
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, thinking_mode=mode
        )
        trained = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
        assert tokenizer.decode(trained) == expected[mode]


def test_b_a_generation_prompt_trains_what_the_conversation_trains_up_to_it(tokenizer: Any) -> None:
    """Its earlier assistant turns carry the same mask as in the whole conversation; a first turn's prompt
    and the prefill carry none."""
    for name, messages, tools in CONVERSATIONS:
        for mode in MODES:
            kwargs = {"tools": tools, "tokenize": True, "return_dict": True, "return_assistant_tokens_mask": True,
                      "thinking_mode": mode}
            prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, **kwargs)
            full = tokenizer.apply_chat_template(messages, **kwargs)
            n = len(prompt["input_ids"])
            assert list(prompt["assistant_masks"]) == list(full["assistant_masks"][:n]), f"{name} [{mode}]"
            if not any(m["role"] == "assistant" for m in messages[:-1]):
                assert not any(prompt["assistant_masks"]), f"{name} [{mode}]"


# ---------------------------------------------------------------- c. stop


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_c_generation_config_stops_on_end_of_turn(template_name: str, baked_dirs: dict[str, Path]) -> None:
    folder = baked_dirs[template_name]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = GenerationConfig.from_pretrained(folder)
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn_token(load_template(template_name)))
    assert tokenizer.encode(end_of_turn_token(load_template(template_name)), add_special_tokens=False) == [
        eot_id
    ]
    assert eot_id in config.eos_token_id and tokenizer.eos_token_id in config.eos_token_id
    assert config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_c_unbaked_tokenizer_fails_the_stop_check(
    template_name: str, tiny_tokenizer: Any, tiny_tokenizer_dir: Path
) -> None:
    template = load_template(template_name)
    raw_config = json.loads((tiny_tokenizer_dir / "generation_config.json").read_text())
    for config in (None, raw_config):  # tokenizer eos alone, then the base model's generation config
        row = _row(check_tokenizer(tiny_tokenizer, template, generation_config=config), "c.")
        assert not row.passed and end_of_turn_token(template) in row.detail


# ---------------------------------------------------------------- d, e. reasoning


def test_d_reasoning_in_think_block_when_on_and_absent_when_off(tokenizer: Any) -> None:
    for name, messages, tools in CONVERSATIONS:
        final = _reasoning_texts(messages[-1:])
        on = _text(tokenizer, messages, tools, thinking_mode="on")
        off = _text(tokenizer, messages, tools, thinking_mode="off")
        start = on.rindex("<think>") + len("<think>")
        block = on[start : on.index("</think>", start)]
        assert block.strip() == (final[0] if final else ""), name
        assert on.rindex("<think>") > on.rindex("assistant"), name  # the block belongs to the final turn
        for reasoning in _reasoning_texts(messages):
            assert reasoning not in off, f"{name}: {reasoning!r} in thinking-off render"
            assert reasoning not in _text(
                tokenizer, messages[:-1], tools, add_generation_prompt=True, thinking_mode="off"
            )


def test_e_reasoning_before_the_last_user_message_never_renders_and_in_a_tool_loop_it_does(tokenizer: Any) -> None:
    multi_turn = [row for row in CONVERSATIONS if _reasoning_texts(row[1][:-1])]
    assert len(multi_turn) >= 4
    assert sum(bool(_history_and_loop(row[1])[1]) for row in multi_turn) >= 3
    for name, messages, tools in multi_turn:
        history, loop = _history_and_loop(messages)
        for mode in MODES:
            for rendered in (
                _text(tokenizer, messages, tools, thinking_mode=mode),
                _text(tokenizer, messages[:-1], tools, add_generation_prompt=True, thinking_mode=mode),
            ):
                for reasoning in history:
                    assert reasoning not in rendered, f"{name} [{mode}]"
                for reasoning in loop:
                    assert (reasoning in rendered) == (mode == "on"), f"{name} [{mode}]: {reasoning!r}"


# ---------------------------------------------------------------- f. defaults and aliases


def test_f_no_kwarg_is_on_and_enable_thinking_is_an_alias(tokenizer: Any) -> None:
    for name, messages, tools in CONVERSATIONS:
        for rows, prompt in ((messages, False), (messages[:-1], True)):

            def render(**kwargs: Any) -> str:
                return _text(tokenizer, rows, tools, add_generation_prompt=prompt, **kwargs)  # noqa: B023

            on, off = render(thinking_mode="on"), render(thinking_mode="off")
            assert on != off, name
            assert render() == on == render(enable_thinking=True), name
            assert render(enable_thinking=False) == off, name


def test_f_none_kwargs_from_a_datasets_column_count_as_unset(tokenizer: Any) -> None:
    from datasets import Dataset

    # Rows that set different keys: Arrow fills the missing one with None in every other row.
    rows = Dataset.from_list(
        [
            {
                "messages": GOLDEN["id_sentiment"]["messages"],
                "chat_template_kwargs": {"thinking_mode": "off"},
            },
            {
                "messages": GOLDEN["id_sentiment"]["messages"],
                "chat_template_kwargs": {"enable_thinking": True},
            },
        ]
    )
    assert rows[0]["chat_template_kwargs"] == {"thinking_mode": "off", "enable_thinking": None}
    messages = GOLDEN["id_sentiment"]["messages"]
    assert _text(tokenizer, messages, **rows[0]["chat_template_kwargs"]) == _text(
        tokenizer, messages, thinking_mode="off"
    )
    assert _text(tokenizer, messages, **rows[1]["chat_template_kwargs"]) == _text(
        tokenizer, messages, thinking_mode="on"
    )


# ---------------------------------------------------------------- g. save / reload


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_g_renders_are_identical_after_save_and_reload(
    template_name: str, baked_dirs: dict[str, Path], tmp_path: Path
) -> None:
    original = AutoTokenizer.from_pretrained(baked_dirs[template_name])
    assert (baked_dirs[template_name] / "chat_template.jinja").read_text(encoding="utf-8") == load_template(
        template_name
    )
    original.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == original.chat_template == load_template(template_name)
    for _name, messages, tools in CONVERSATIONS:
        for mode in MODES:
            for rows, prompt in ((messages, False), (messages[:-1], True)):
                kwargs = {"add_generation_prompt": prompt, "thinking_mode": mode}
                assert (
                    _text(reloaded, rows, tools, **kwargs).encode()
                    == _text(original, rows, tools, **kwargs).encode()
                )
                assert _ids(reloaded, rows, tools, **kwargs) == _ids(original, rows, tools, **kwargs)


# ---------------------------------------------------------------- h. invalid input

EXPECTED_ERRORS = {
    "unknown role": 'messages[0].role: unknown role "bot"',
    "missing role": "messages[0].role: unknown role (missing)",
    "system message in the middle": "messages[2]: a system message is only allowed as the first message",
    "assistant turn first": "messages[0]: the conversation must start with a user message",
    "assistant first after system": "messages[1]: the conversation must start with a user message",
    "tool result without a tool call": "messages[1]: a tool message must follow an assistant message with tool_calls",
    "non-string user content": "messages[0].content must be a string (or a list of text parts), got 42",
    "dict user content": "messages[0].content must be a string",
    "image part where text is required": "messages[0].content: list content must hold",
    "non-string reasoning": "messages[1].reasoning_content must be a string",
    "unterminated think block": "messages[1].content starts with <think> but has no closing </think>",
    "thinking_mode not on/off": 'thinking_mode must be "on" or "off", got "maybe"',
    "thinking_mode as a bool": 'thinking_mode must be "on" or "off", got true',
    "enable_thinking not a bool": 'enable_thinking must be true or false, got "yes"',
    "thinking_mode contradicts enable_thinking": 'thinking_mode="on" contradicts enable_thinking=false',
}


def test_h_every_invalid_input_has_an_expected_message() -> None:
    assert {case.name for case in INVALID_INPUTS} == set(EXPECTED_ERRORS)


@pytest.mark.parametrize("template_name", TEMPLATES)
@pytest.mark.parametrize("case", INVALID_INPUTS, ids=lambda case: case.name)
def test_h_invalid_input_raises_a_clear_template_error(
    template_name: str, case: Any, baked_dirs: dict[str, Path]
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(baked_dirs[template_name])
    for tokenize in (False, True):
        with pytest.raises(jinja2.TemplateError, match=re.escape(EXPECTED_ERRORS[case.name])):
            tokenizer.apply_chat_template(
                case.messages, add_generation_prompt=True, tokenize=tokenize, **case.kwargs
            )


# ---------------------------------------------------------------- the check itself


@pytest.mark.parametrize("template_name", [*TEMPLATES, "llama3_thinking on Meta's Llama 3 tokenizer"])
def test_check_tokenizer_passes_every_row_on_the_baked_tokenizer(
    template_name: str, baked_dirs: dict[str, Path], request: pytest.FixtureRequest
) -> None:
    if template_name in baked_dirs:
        folder = baked_dirs[template_name]
    else:
        folder = request.getfixturevalue("llama3_final_dir")
    config = json.loads((folder / "generation_config.json").read_text())
    results = check_tokenizer(AutoTokenizer.from_pretrained(folder), generation_config=config)
    assert [r.name[:2] for r in results] == ["a.", "b.", "c.", "d.", "e.", "f.", "g.", "h.", "i.", "j."]
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def _row(results: list[Any], prefix: str) -> Any:
    return next(r for r in results if r.name.startswith(prefix))


def _variant(template: str, old: str, new: str) -> str:
    assert template.count(old) >= 1, old
    return template.replace(old, new)


LLAMA3 = load_template("llama3_thinking")
BROKEN_TEMPLATES = {
    # Qwen3's off prefill ends in "\n\n": not a token prefix under a GPT-2-style pre-tokenizer.
    "two-newline prefill": (
        _variant(LLAMA3, '"<think>\\n</think>\\n"', '"<think>\\n\\n</think>\\n\\n"'),
        {"a."},
    ),
    # Training render differs from inference: the conversation drops the prefill the prompt writes.
    "prefill missing from training render": (
        _variant(
            LLAMA3,
            '{%- if current %}\n            {{- "<think>\\n" if thinking else "<think>\\n</think>\\n" }}\n        {%- endif %}',
            "",
        ),
        {"a.", "b."},
    ),
    # The classic never-stops bug: the end-of-turn token outside the trained span.
    "eot outside generation": (
        _variant(
            LLAMA3,
            '{{- answer.text ~ "<|eot_id|>" }}\n        {%- endgeneration %}',
            '{{- answer.text }}\n        {%- endgeneration %}\n        {{- "<|eot_id|>" }}',
        ),
        {"b."},
    ),
    # Every turn's reasoning rendered, history included.
    "history reasoning rendered": (
        _variant(LLAMA3, '{{- answer.text ~ "<|eot_id|>" }}', '{{- reasoning.text ~ answer.text ~ "<|eot_id|>" }}'),
        {"d.", "e."},
    ),
    # tempa's old rule: only the last message is "current", so a tool loop's reasoning is dropped and a call
    # turn renders differently once a result follows it.
    "only the last turn current": (
        _variant(LLAMA3, "{%- set current = loop.index0 > last_user.index %}", "{%- set current = loop.last %}"),
        {"e.", "j."},
    ),
    "off mode ignored": (
        _variant(LLAMA3, '{%- set thinking = mode.value == "on" %}', "{%- set thinking = true %}"),
        {"d.", "f."},
    ),
    "no validation": (_variant(LLAMA3, "raise_exception(where", "(where"), {"h."}),
}


@pytest.mark.parametrize("variant", sorted(BROKEN_TEMPLATES))
def test_check_tokenizer_catches_broken_templates(variant: str, nn_merge_dirs: dict[str, Path]) -> None:
    template, must_fail = BROKEN_TEMPLATES[variant]
    folder = nn_merge_dirs["llama3_thinking"]
    config = json.loads((folder / "generation_config.json").read_text())
    results = check_tokenizer(AutoTokenizer.from_pretrained(folder), template, generation_config=config)
    failed = {r.name[:2] for r in results if not r.passed}
    assert must_fail <= failed, results


def test_check_tokenizer_catches_trls_plain_llama3_template(nn_merge_dirs: dict[str, Path]) -> None:
    import trl

    template = (Path(trl.__file__).parent / "chat_templates" / "llama3_training.jinja").read_text(
        encoding="utf-8"
    )
    results = check_tokenizer(AutoTokenizer.from_pretrained(nn_merge_dirs["llama3_thinking"]), template)
    failed = {r.name[:2] for r in results if not r.passed}
    # Its prompt ends in "<|end_header_id|>\n\n" (one merged token alone, two before text), it has no think
    # block, and it ignores thinking_mode and malformed conversations.
    assert {"a.", "d.", "f.", "h."} <= failed


def test_check_tokenizer_flags_pad_equal_to_eos(baked_dirs: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(baked_dirs["chatml_thinking"])
    tokenizer.pad_token = "<|im_end|>"
    assert not _row(check_tokenizer(tokenizer), "i.").passed


def test_check_tokenizer_without_a_template_is_a_usage_error(tiny_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="no chat template"):
        check_tokenizer(tiny_tokenizer)


# ---------------------------------------------------------------- SFT (trl-style tokenisation)


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_sft_thinking_off_row_has_no_reasoning_tokens_and_trains_end_of_turn(
    template_name: str, baked_dirs: dict[str, Path]
) -> None:
    from trl.data_utils import _tokenize  # what SFTTrainer's tokenize_fn calls for conversational rows

    tokenizer = AutoTokenizer.from_pretrained(baked_dirs[template_name])
    row = {"messages": GOLDEN["th_multiturn"]["messages"], "chat_template_kwargs": {"thinking_mode": "off"}}
    out = _tokenize(
        tokenizer,
        row["messages"],
        chat_template=None,
        tools=None,
        return_assistant_tokens_mask=True,
        **row["chat_template_kwargs"],
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    text = tokenizer.decode(ids)
    for reasoning in _reasoning_texts(row["messages"]):
        assert reasoning not in text
        # Token-level too: the reasoning's own token sequence appears nowhere in the ids.
        needle = tokenizer.encode(reasoning, add_special_tokens=False)
        assert not any(ids[i : i + len(needle)] == needle for i in range(len(ids)))
    eot = end_of_turn_token(tokenizer.chat_template)
    trained = [t for t, m in zip(ids, mask, strict=True) if m]
    assert trained[-1] == tokenizer.convert_tokens_to_ids(eot)
    # trl trains every assistant turn as it renders: the earlier one as history, the last after its prefill.
    answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
    assert tokenizer.decode(trained) == "".join(f"{answer}{eot}" for answer in answers)


# ---------------------------------------------------------------- trl's own template checks


def test_trl_prefix_preserving_and_stop_token_checks_pass(tokenizer: Any) -> None:
    """What trl's tool-calling trainers and SFTTrainer check before they trust a template."""
    from trl.chat_template_utils import (
        is_chat_template_prefix_preserving,
        is_chat_template_stop_token_trained,
    )

    assert is_chat_template_prefix_preserving(tokenizer)
    assert is_chat_template_stop_token_trained(tokenizer)


def test_baked_eos_is_the_end_of_turn_token(tokenizer: Any) -> None:
    # As in Llama 3.1 Instruct's tokenizer: a client that stops on tokenizer.eos_token stops at the turn's end.
    assert tokenizer.eos_token == end_of_turn_token(tokenizer.chat_template)
    assert tokenizer.pad_token not in (tokenizer.eos_token, "<|end_of_text|>")


@pytest.mark.parametrize(("template_name", "refused"), [("llama3_thinking", set()), ("chatml_thinking", {"ipython"})])
def test_the_templates_accept_the_roles_of_the_one_role_list(template_name: str, refused: set[str]) -> None:
    """tempa.chat_templates.roles is what data, curation and evaluation accept; each template's own role check
    must agree with it (ChatML has no `ipython` header: the default normalisation maps it to `tool`)."""
    from tempa.chat_templates.roles import ROLES

    listed = re.search(r"message\.role not in \[([^\]]*)\]", load_template(template_name))
    assert listed is not None, "the template no longer checks roles where this test reads them"
    assert set(json.loads(f"[{listed.group(1)}]")) == set(ROLES) - refused


# String methods as C++ Jinja engines implement them (google/minja, which llama.cpp's `--jinja` renders chat
# templates with): the number of arguments each takes. Python's Jinja takes more (split's maxsplit, say); a
# template that uses them renders in transformers and fails in llama-server.
PORTABLE_METHODS = {"strip": (0, 1), "lstrip": (0, 1), "rstrip": (0, 1), "split": (1, 1), "startswith": (1, 1),
                    "endswith": (1, 1), "capitalize": (0, 0), "title": (0, 0), "get": (1, 2), "items": (0, 0)}


@pytest.mark.parametrize("name", TEMPLATES)
def test_a_template_calls_only_methods_a_cpp_jinja_engine_has(name):
    # parsed by Python's Jinja, which has no generation tags (transformers' extension): as the GGUF embeds it
    from tempa.merge.gguf_export import serving_template

    calls = [(node.node.attr, len(node.args) + len(node.kwargs))
             for node in jinja2.Environment().parse(serving_template(load_template(name))).find_all(jinja2.nodes.Call)
             if isinstance(node.node, jinja2.nodes.Getattr)]
    assert calls, "no method call found: the check would pass on anything"
    bad = sorted({(method, count) for method, count in calls
                  if not PORTABLE_METHODS.get(method, (1, 0))[0] <= count <= PORTABLE_METHODS.get(method, (1, 0))[1]})
    assert not bad, f"{name}: methods with arguments a C++ Jinja engine refuses: {bad}"
