"""Rendering a conversation with a chat template, as text or as tokens with the trained-token mask.

Everything goes through transformers' own renderer (its sandboxed Jinja environment with the
``{% generation %}`` extension and ``raise_exception``), so what tempa checks is what training and inference run.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Messages = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class TokenizedChat:
    """Token ids of a rendered conversation and, per token, 1 where the template marks it as trained."""

    input_ids: list[int]
    assistant_mask: list[int]


def mask_spans(mask: Sequence[int]) -> list[tuple[int, int]]:
    """The ``[start, end)`` runs of ones in a 0/1 assistant mask, in order: one per trained assistant turn."""
    import numpy as np

    flags = np.asarray(mask, dtype=np.int8).reshape(-1) != 0
    edges = np.flatnonzero(np.diff(flags, prepend=False, append=False))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """Per token, 1 where its character offsets overlap a generation span: ``apply_chat_template``'s own rule.

    transformers walks the tokens and the spans together: a token starting at or after the current span's
    end moves on to the next span, and a token ending after that span's start is masked. When token starts
    and span ends both never decrease (every tokenizer tempa has met), the span a token meets is the first
    one ending after the token's start, which one ``searchsorted`` finds for all tokens at once; otherwise
    the walk runs as transformers writes it.
    """
    import numpy as np

    if not len(offsets) or not len(spans):
        return [0] * len(offsets)
    # fromiter over the flattened pairs: about 2.5x faster than asarray on a list of tuples
    bounds = np.fromiter(itertools.chain.from_iterable(offsets), dtype=np.int64, count=2 * len(offsets)).reshape(-1, 2)
    starts, ends = bounds[:, 0], bounds[:, 1]
    span_bounds = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    span_starts, span_ends = span_bounds[:, 0], span_bounds[:, 1]
    if bool(np.all(starts[1:] >= starts[:-1])) and bool(np.all(span_ends[1:] >= span_ends[:-1])):
        met = np.searchsorted(span_ends, starts, side="right")
        inside = met < len(span_bounds)
        masked = inside & (ends > span_starts[np.minimum(met, len(span_bounds) - 1)])
        return masked.astype(np.int8).tolist()
    mask, index = [0] * len(offsets), 0
    for token, (start, end) in enumerate(offsets):
        while index < len(spans) and start >= spans[index][1]:
            index += 1
        if index == len(spans):
            break
        if end > spans[index][0]:
            mask[token] = 1
    return mask


def compile_template(template: str) -> Any:
    """Compile ``template`` in transformers' chat-template environment (raises ``jinja2.TemplateSyntaxError``)."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(template)


def render_text(
    template: str,
    messages: Messages,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    **template_kwargs: Any,
) -> str:
    """Render ``messages`` to text without a tokenizer (special-token variables such as ``bos_token`` are unset)."""
    text, _ = render_with_generation_spans(
        template, messages, tools=tools, add_generation_prompt=add_generation_prompt, **template_kwargs
    )
    return text


def render_with_generation_spans(
    template: str,
    messages: Messages,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    **template_kwargs: Any,
) -> tuple[str, list[tuple[int, int]]]:
    """Render to text, with the character spans the template wraps in ``{% generation %}``."""
    from transformers.utils.chat_template_utils import render_jinja_template

    # apply_chat_template drops None-valued keys before rendering (OpenAI-style content=None); do the same so a
    # tokenizer-free render is byte-identical to the tokenizer's.
    cleaned = [{key: value for key, value in message.items() if value is not None} for message in messages]
    rendered, spans = render_jinja_template(
        conversations=[cleaned],
        tools=list(tools) if tools is not None else None,
        chat_template=template,
        return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt,
        **template_kwargs,
    )
    return rendered[0], [tuple(span) for span in spans[0]]


def tokenize_chat(
    tokenizer: Any,
    messages: Messages,
    *,
    template: str | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    **template_kwargs: Any,
) -> TokenizedChat:
    """Tokenise exactly as trl's SFT does: ``apply_chat_template(..., return_assistant_tokens_mask=True)``."""
    out = tokenizer.apply_chat_template(
        list(messages),
        chat_template=template,
        tools=list(tools) if tools is not None else None,
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        **template_kwargs,
    )
    return TokenizedChat(input_ids=list(out["input_ids"]), assistant_mask=list(out["assistant_masks"]))


def token_ids(
    tokenizer: Any,
    messages: Messages,
    *,
    template: str | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    **template_kwargs: Any,
) -> list[int]:
    """Token ids of the rendered conversation (the path inference takes)."""
    out = tokenizer.apply_chat_template(
        list(messages),
        chat_template=template,
        tools=list(tools) if tools is not None else None,
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=True,
        **template_kwargs,
    )
    return list(out["input_ids"])


def render_with_tokenizer(
    tokenizer: Any,
    messages: Messages,
    *,
    template: str | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    **template_kwargs: Any,
) -> str:
    """Rendered text through ``tokenizer.apply_chat_template(..., tokenize=False)``."""
    return tokenizer.apply_chat_template(
        list(messages),
        chat_template=template,
        tools=list(tools) if tools is not None else None,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
        **template_kwargs,
    )
