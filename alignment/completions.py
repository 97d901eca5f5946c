"""One sampled response, as every backend returns it and every reward reads it.

A backend hands back the text the model generated *after* the generation prompt, with the
end-of-turn token stripped. Two facts are lost that way and are kept here instead:

- ``prefill``: what the chat template wrote after the assistant header before the model started
  (tempa's thinking templates pre-fill ``<think>\\n`` with thinking on and an empty
  ``<think>\\n</think>\\n`` block with thinking off). The response the model "wrote" is
  ``prefill + text``; without it a think block would look unopened.
- ``finish_reason``: ``"stop"`` when generation ended with an end-of-turn token, ``"length"`` when
  it was cut at ``max_new_tokens``, ``None`` when the backend cannot tell. The format reward
  needs this: a stripped end-of-turn token and a cut-off look the same in the text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

FinishReason = Literal["stop", "length"]


@dataclass
class Completion:
    """A sampled response and what is known about how it ended."""

    text: str
    prefill: str = ""
    finish_reason: str | None = None
    completion_tokens: int | None = None
    # Reasoning separated by the server (an OpenAI-compatible server with a reasoning parser
    # returns it beside the content); None when it is inside ``text``.
    reasoning: str | None = None

    @property
    def full_text(self) -> str:
        """The assistant text as the model wrote it, pre-filled part included."""
        return self.prefill + self.text

    @property
    def truncated(self) -> bool:
        """Cut off at the token limit (False when unknown)."""
        return self.finish_reason == "length"

    def split(self) -> ThinkSplit:
        return split_think(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Completion:
        return cls(**{key: data.get(key) for key in ("text", "prefill", "finish_reason", "completion_tokens",
                                                      "reasoning") if key in data})


@dataclass(frozen=True)
class ThinkSplit:
    """A response split into its think block and its answer."""

    reasoning: str | None  # text of the think block; None when there is no block at all
    answer: str  # what the user sees: the text after the block, stripped
    has_block: bool  # a think block was opened (by the model or the template's prefill)
    closed: bool  # ... and closed
    stray_tags: bool  # think tags left inside the reasoning or the answer


def split_text(text: str) -> ThinkSplit:
    """Split ``<think>reasoning</think>answer`` text (an opening tag may be missing: R1 style)."""
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        rest = stripped[len(THINK_OPEN):]
        end = rest.find(THINK_CLOSE)
        if end == -1:
            return ThinkSplit(rest.strip(), "", True, False, THINK_OPEN in rest)
        reasoning, answer = rest[:end], rest[end + len(THINK_CLOSE):]
        return ThinkSplit(reasoning.strip(), answer.strip(), True, True, _tags_in(reasoning, answer))
    end = stripped.find(THINK_CLOSE)
    if end != -1:
        reasoning, answer = stripped[:end], stripped[end + len(THINK_CLOSE):]
        return ThinkSplit(reasoning.strip(), answer.strip(), True, True, _tags_in(reasoning, answer))
    return ThinkSplit(None, stripped.strip(), False, False, THINK_OPEN in stripped)


def _tags_in(*parts: str) -> bool:
    return any(THINK_OPEN in part or THINK_CLOSE in part for part in parts)


def split_think(completion: Completion) -> ThinkSplit:
    """Reasoning and answer of a completion, using the server's split when it made one."""
    if completion.reasoning is not None:
        answer = completion.text.strip()
        # A server-side parser puts an unclosed block wholly into the reasoning (no content).
        return ThinkSplit(completion.reasoning.strip(), answer, True, bool(answer) or completion.finish_reason == "stop",
                          _tags_in(completion.reasoning, answer))
    return split_text(completion.full_text)


def assistant_message(completion: Completion) -> dict[str, Any]:
    """The completion as a chat message for training data (reasoning in ``reasoning_content``)."""
    split = split_think(completion)
    reasoning = split.reasoning if split.reasoning else None
    return {"role": "assistant", "content": split.answer, "reasoning_content": reasoning}


def generation_prefill(tokenizer: Any, messages: list[dict[str, Any]], template_kwargs: dict[str, Any]) -> str:
    """The think-tag part of the generation prompt the chat template pre-fills ("" if none).

    Found by rendering the conversation with and without the generation prompt: the difference
    is the generation prompt (e.g. ``<|start_header_id|>assistant<|end_header_id|>\\n\\n<think>\\n``);
    what follows its first ``<think>`` is what the model continues from.
    """
    with_prompt = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **template_kwargs
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, **template_kwargs)
    generation = with_prompt[len(without):] if with_prompt.startswith(without) else with_prompt[-64:]
    start = generation.find(THINK_OPEN)
    return generation[start:] if start >= 0 else ""
