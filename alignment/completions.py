"""One sampled response, as every backend returns it and every reward reads it.

A backend hands back the text the model generated *after* the generation prompt, with the
end-of-turn token stripped. Two facts are lost that way and are kept here instead:

- ``prefill``: what the chat template wrote after the assistant header before the model started
  (tempa's thinking templates pre-fill an open think block with thinking on and an empty one with
  thinking off: ``tempa.chat_templates.thinking.PREFILL``). The response the model "wrote" is
  ``prefill + text``; without it a think block would look unopened.
- ``finish_reason``: ``"stop"`` when generation ended with an end-of-turn token, ``"length"`` when
  it was cut at ``max_new_tokens``, ``None`` when the backend cannot tell. The format reward
  needs this: a stripped end-of-turn token and a cut-off look the same in the text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from tempa.chat_templates.replies import TOOL_CALL_BLOCK, is_json_call
from tempa.chat_templates.thinking import (
    THINK_CLOSE,
    THINK_OPEN,
    ThinkSplit,
    end_of_turn_token,
    rendered_prefill,
    split_reasoning,
)

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
    def written_text(self) -> str:
        """The whole reply as the model wrote it: :attr:`full_text`, with reasoning a server split off put back in its
        think block (closed when the model closed it), so that a reader of raw replies (a judge's) sees it too."""
        if self.reasoning is None:
            return self.full_text
        close = f"{THINK_CLOSE}\n\n" if split_think(self).closed else ""
        return f"{THINK_OPEN}\n{self.reasoning}\n{close}{self.text}"

    @property
    def truncated(self) -> bool:
        """Cut off at the token limit (False when unknown)."""
        return self.finish_reason == "length"

    @property
    def renders_as_written(self) -> bool:
        """Ended on its own and closed any think block it opened, so the chat template adds nothing the
        model did not write (an end-of-turn after a cut-off, a ``</think>`` after open reasoning).
        A backend that cannot tell how generation ended (``finish_reason`` None) is taken at its word."""
        split = split_think(self)
        return not self.truncated and not (split.opened and not split.closed)

    def split(self) -> ThinkSplit:
        return split_think(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Completion:
        return cls(**{key: data.get(key) for key in ("text", "prefill", "finish_reason", "completion_tokens",
                                                      "reasoning") if key in data})


def split_think(completion: Completion) -> ThinkSplit:
    """Reasoning and answer of a completion, using the server's split when it made one."""
    if completion.reasoning is not None:
        answer = completion.text.strip()
        # A server-side parser puts an unclosed block wholly into the reasoning (no content).
        return ThinkSplit(completion.reasoning.strip(), answer, opened=True,
                          closed=bool(answer) or completion.finish_reason == "stop")
    return split_reasoning(completion.full_text)


def assistant_message(completion: Completion) -> dict[str, Any]:
    """The completion as a chat message for training data (reasoning in ``reasoning_content``)."""
    split = split_think(completion)
    reasoning = split.reasoning if split.reasoning else None
    return {"role": "assistant", "content": split.answer, "reasoning_content": reasoning}


def without_tool_calls(answer: str) -> str:
    """A sampled answer's text with the tool calls it wrote left out, in either tempa template's format: ChatML's
    ``<tool_call>`` blocks (kept in the text: tempa's tokenizers and Qwen's hold them as text, not special tokens)
    and Llama 3.1's JSON call (the whole answer, or a line of its own after the text)."""
    text = TOOL_CALL_BLOCK.sub("", answer)
    if is_json_call(text.strip()):
        return ""
    return "\n".join(line for line in text.split("\n") if not is_json_call(line.strip())).strip()


def generation_prefill(tokenizer: Any, messages: list[dict[str, Any]], template_kwargs: dict[str, Any]) -> str:
    """The think part of the generation prompt the chat template pre-fills ("" if none)."""
    return rendered_prefill(tokenizer, messages, template_kwargs)


def written_turn(
    tokenizer: Any, messages: list[dict[str, Any]], turn: dict[str, Any], template_kwargs: dict[str, Any]
) -> tuple[str, str]:
    """``(prefill, text)`` of an assistant ``turn`` as the chat template writes it after ``messages``: what a local
    backend samples for that turn (the text after the generation prompt, without the end-of-turn token).

    A server that parses tool calls hands them back as structured ``tool_calls``; written this way they reach the
    rewards, the judge and the pairs as the text the model wrote for them, as transformers and vLLM samples do.
    Raises ValueError when the template refuses the turn or does not write it after its generation prompt."""
    template = tokenizer.chat_template
    if not isinstance(template, str):
        raise ValueError("the tokenizer has no single chat template to write the turn with")
    try:
        prompt = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True,
                                               **template_kwargs)
        full = tokenizer.apply_chat_template([*messages, turn], tokenize=False, **template_kwargs)
    except Exception as exc:  # the template's raise_exception (jinja2's TemplateError) says what it refuses
        raise ValueError(f"the chat template cannot write it: {' '.join(str(exc).split())}") from None
    if not full.startswith(prompt):
        raise ValueError("the chat template does not write an assistant turn after its own generation prompt")
    text = full[len(prompt):]
    end = text.rfind(end_of_turn_token(template))
    return rendered_prefill(tokenizer, messages, template_kwargs), text[:end] if end >= 0 else text
