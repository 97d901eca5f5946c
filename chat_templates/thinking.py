"""Thinking mode, in one place: the think tags, how assistant text splits into reasoning and answer, what
the generation prompt prefills in each mode, the template kwargs of a mode, which turns keep their
reasoning, and the end-of-turn tokens.

Every other tempa module imports these; ``tests/test_thinking_home.py`` fails when another Python module
spells a think tag. The Jinja templates hold the same rules in their own language (they have to: they run
inside transformers, vLLM and llama.cpp), and ``tests/test_chat_template_golden.py`` checks both agree.

The split rule (the one every reader of assistant text uses, and the templates too):

1. Text that starts (after ASCII whitespace, :data:`TRIMMED`) with ``<think>`` opens a block; the first
   ``</think>`` after it closes it. Inside is the reasoning, after it the answer. No ``</think>``: the block is unterminated.
2. Otherwise a ``</think>`` closes a block whose opening tag is missing (DeepSeek-R1's template prefills
   ``<think>\\n``, so raw R1 text starts inside the reasoning) only when it is the first ``</think>`` of
   the text and stands on a line of its own: nothing but spaces or tabs between it and the line breaks
   (or the start / end of the text) on either side. Everything before it is the reasoning.
3. Anywhere else a think tag is plain text: ``"Write the closing tag </think> after the reasoning."`` is
   an answer, whole.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_TAGS = (THINK_OPEN, THINK_CLOSE)

ThinkingMode = Literal["on", "off"]
# The validation-context key under which the recipe loader hands its stages the recipe's `thinking_default`, the
# mode stages sample in when they do not say.
THINKING_DEFAULT_CONTEXT = "thinking_default"
MODES: tuple[ThinkingMode, ...] = ("on", "off")

# What tempa's templates write after the assistant header, before the model's first token: an open block
# ("on": the model always starts by reasoning) or an empty, closed one ("off": it answers directly).
PREFILL: dict[str, str] = {"on": f"{THINK_OPEN}\n", "off": f"{THINK_OPEN}\n{THINK_CLOSE}\n"}
# With thinking on, what closes the reasoning before the answer (the model writes it).
ON_CLOSE = f"{THINK_CLOSE}\n\n"

# End-of-turn markers of the chat formats tempa knows, most specific first. The first one a template
# contains is the token its assistant turns end with, and so the token generation must stop on.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")
# Llama 3.1 ends a built-in tool call with <|eom_id|> ("end of message"); generation stops there too.
STOP_TOKENS = (*END_OF_TURN_TOKENS, "<|eom_id|>")
# End-of-document markers of pre-training (Llama 3, Qwen/GPT-2, Llama 2/Mistral, Gemma): what raw text ends with,
# where the bake has made the tokenizer's eos the end-of-turn token.
END_OF_TEXT_TOKENS = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>")


# The whitespace the split rule and the templates trim from text: ASCII's only. Python's str.strip() also strips
# Unicode's (U+3000, the ideographic space a Japanese paragraph starts with; U+00A0), but llama.cpp's C++ Jinja engine
# strips only C isspace and minja only these four, so trimming more in the templates would make the GGUF render other
# text than transformers. The templates spell the same four characters.
TRIMMED = " \t\n\r"


def generation_prefill(mode: ThinkingMode) -> str:
    """What tempa's templates prefill after the assistant header in ``mode``."""
    return PREFILL[mode]


def mode_kwargs(thinking_mode: str | None) -> dict[str, Any]:
    """Chat-template kwargs for a thinking mode, in both spellings tempa's templates accept.

    ``thinking_mode`` is tempa's; ``enable_thinking`` is the Qwen3 / vLLM convention, so a template (or a
    server) that only knows that one still switches. ``None`` passes nothing: the template's default applies.
    """
    if thinking_mode is None:
        return {}
    if thinking_mode not in MODES:
        raise ValueError(f"thinking_mode must be 'on' or 'off', got {thinking_mode!r}")
    return {"thinking_mode": thinking_mode, "enable_thinking": thinking_mode == "on"}


def end_of_turn_token(template: str) -> str:
    """The token that ends an assistant turn in ``template`` (``<|eot_id|>`` for Llama 3, ``<|im_end|>`` for ChatML)."""
    for token in END_OF_TURN_TOKENS:
        if token in template:
            return token
    raise ValueError(
        f"cannot tell the end-of-turn token of this chat template: it contains none of {', '.join(END_OF_TURN_TOKENS)}"
    )


def end_of_text_id(tokenizer: Any) -> int | None:
    """The id that ends a raw-text document for ``tokenizer``'s model: the first of :data:`END_OF_TEXT_TOKENS` it
    holds as one token, else its eos unless that is an end-of-turn token (a baked tokenizer's eos is the chat's
    end of turn, which a pre-training document must not learn to end with), else None."""
    vocab = tokenizer.get_vocab()
    for token in END_OF_TEXT_TOKENS:
        if token in vocab:
            return vocab[token]
    return None if tokenizer.eos_token in END_OF_TURN_TOKENS else tokenizer.eos_token_id


@dataclass(frozen=True)
class ThinkSplit:
    """Assistant text split by the rule in this module's docstring."""

    reasoning: str | None  # the block's text, stripped; None when the text has no block
    answer: str  # what the user sees: the text after the block (all of it without one), stripped
    opened: bool  # the block was opened by a leading open tag
    closed: bool  # the block was closed

    @property
    def has_block(self) -> bool:
        return self.opened or self.closed


def split_reasoning(text: str, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE) -> ThinkSplit:
    """Split ``text`` into reasoning and answer (rule in the module docstring); other tags stay in the text."""
    stripped = text.strip(TRIMMED)
    if stripped.startswith(open_tag):
        rest = stripped[len(open_tag) :]
        end = rest.find(close_tag)
        if end == -1:
            return ThinkSplit(rest.strip(TRIMMED), "", opened=True, closed=False)
        return ThinkSplit(rest[:end].strip(TRIMMED), rest[end + len(close_tag) :].strip(TRIMMED), opened=True, closed=True)
    end = stripped.find(close_tag)
    if end != -1 and _on_own_line(stripped[:end], stripped[end + len(close_tag) :]):
        return ThinkSplit(stripped[:end].strip(TRIMMED), stripped[end + len(close_tag) :].strip(TRIMMED), opened=False, closed=True)
    return ThinkSplit(None, stripped, opened=False, closed=False)


def _on_own_line(before: str, after: str) -> bool:
    # The templates test exactly this: before.rstrip(" \t") is "" or ends in "\n", and after.lstrip(" \t")
    # is "" or starts with "\n".
    before, after = before.rstrip(" \t"), after.lstrip(" \t")
    return (not before or before.endswith("\n")) and (not after or after.startswith("\n"))


@functools.cache
def _think_block_re(open_tag: str, close_tag: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(open_tag)}.*?(?:{re.escape(close_tag)}|\Z)", re.DOTALL)


def outside_think(answer: str, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE) -> str:
    """``answer`` (the text after the template's think block) without any think block the model opened in it: its
    text is reasoning, not an answer, and a block never closed runs to the end (a reply cut off while thinking gives
    no answer). Both readers read the answer through this, so "<think>... the answer is 42" after a thinking-off
    pre-fill is unanswered in the suite and wrong in the reward, as an answer in the template's block is."""
    return _think_block_re(open_tag, close_tag).sub("", answer).strip()


def has_think_tags(text: str, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE) -> bool:
    """Whether ``text`` contains a think tag anywhere (scorers use it to flag stray tags)."""
    return open_tag in text or close_tag in text


def last_user_index(messages: Sequence[Mapping[str, Any]]) -> int:
    """Index of the last user message (-1 without one)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    return -1


def keeps_reasoning(messages: Sequence[Mapping[str, Any]], index: int) -> bool:
    """Whether the assistant turn at ``index`` renders its reasoning (with thinking on).

    Turns after the last user message (an agent's tool loop, and the turn being generated) keep it; turns
    before it are history, sent back by clients without their reasoning, so the templates drop it.
    """
    return index > last_user_index(messages)


def rendered_prefill(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], template_kwargs: Mapping[str, Any], open_tag: str = THINK_OPEN
) -> str:
    """The think part of the generation prompt ``tokenizer``'s own template prefills ("" if none).

    Read off the template rather than assumed, so any template works: the difference between the render
    with and without the generation prompt is the prompt (e.g. ``<|start_header_id|>assistant<|end_header_id|>
    \\n\\n`` plus the prefill); what follows its first ``open_tag`` is what the model continues from.
    """
    with_prompt = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True, **template_kwargs
    )
    without = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=False, **template_kwargs)
    generation = with_prompt[len(without) :] if with_prompt.startswith(without) else with_prompt[-200:]
    start = generation.find(open_tag)
    return generation[start:] if start >= 0 else ""
