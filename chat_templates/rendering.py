"""Rendering a conversation with a chat template, as text or as tokens with the trained-token mask.

Everything goes through transformers' own renderer (its sandboxed Jinja environment with the
``{% generation %}`` extension and ``raise_exception``), so what tempa checks is what training and inference run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


def token_runs(
    n_tokens: int, token_chars: Callable[[int], tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The ``[start, end)`` token runs that ``apply_chat_template``'s assistant mask marks, found by bisection.

    ``token_chars(i)`` is token ``i``'s character offsets (``Encoding.token_to_chars``); ``spans`` are the
    character spans of the ``{% generation %}`` blocks. A tokenizers encoding's token offsets never go
    backwards (pre-tokens are split in order and each token lies inside its own), so the two searches
    :func:`runs_for_spans` needs are binary searches: two per span instead of every token's offsets
    (materialising them cost as much as all the rest of the mask work).
    """

    def first(reached: Callable[[int], bool]) -> int:
        lo, hi = 0, n_tokens
        while lo < hi:
            mid = (lo + hi) // 2
            if reached(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    runs = runs_for_spans(
        spans,
        ending_after=lambda char: first(lambda t: token_chars(t)[1] > char),
        starting_at=lambda char: first(lambda t: token_chars(t)[0] >= char),
    )
    assert runs is not None
    return runs


def runs_for_spans(
    spans: Sequence[tuple[int, int]],
    *,
    ending_after: Callable[[int], int | None],
    starting_at: Callable[[int], int | None],
) -> list[tuple[int, int]] | None:
    """transformers' span rule as token runs, from two searches over tokens whose offsets never go backwards.

    ``ending_after(c)`` is the first token ending after character ``c``, ``starting_at(c)`` the first starting
    at or after it (either may answer ``None``: then so does this). transformers walks the tokens and the spans
    together: a token starting at or after the current span's end moves on to the next span, and a token
    ending after that span's start is masked. Span ends never go backwards either (a span is recorded when
    its block closes), so the tokens that meet span ``j`` are those starting in ``[end_{j-1}, end_j)`` and the
    masked ones are the tail of them ending after ``start_j``. Runs that touch are merged, so the result is
    the runs of ones of transformers' mask.
    """
    runs: list[tuple[int, int]] = []
    lo = 0
    for span_start, span_end in spans:
        hi, masked = starting_at(span_end), ending_after(span_start)
        if hi is None or masked is None:
            return None
        hi = max(lo, hi)
        masked = min(max(lo, masked), hi)
        if masked < hi:
            if runs and runs[-1][1] == masked:
                runs[-1] = (runs[-1][0], hi)
            else:
                runs.append((masked, hi))
        lo = hi
    return runs


def runs_to_mask(n_tokens: int, runs: Sequence[tuple[int, int]]) -> list[int]:
    """The 0/1 mask of ``n_tokens`` tokens with ones in ``runs``; the inverse of :func:`mask_spans`."""
    mask = [0] * n_tokens
    for start, end in runs:
        mask[start:end] = [1] * (end - start)
    return mask


def compile_template(template: str) -> Any:
    """Compile ``template`` in transformers' chat-template environment (raises ``jinja2.TemplateSyntaxError``).

    transformers keeps one compiled template per text; its sandbox gets memoised attribute checks here.
    """
    from transformers.utils.chat_template_utils import _compile_jinja_template

    compiled = _compile_jinja_template(template)
    _memoize_attribute_checks(compiled.environment)
    return compiled


def _memoize_attribute_checks(environment: Any) -> None:
    """Answer the sandbox's ``is_safe_attribute`` once per (type, attribute name).

    Every ``x.y`` in a template asks the sandbox whether ``y`` is safe on ``x``; jinja2's answer depends
    only on the object's type (``isinstance`` against function/frame/mutable-container types) and the
    name, never on the value, and it was about a quarter of the render time of tempa's templates. The
    sandbox still decides every case; its verdicts are reused.
    """
    if "is_safe_attribute" in vars(environment):
        return
    decide = environment.is_safe_attribute
    verdicts: dict[tuple[type, str], bool] = {}

    def is_safe_attribute(obj: Any, attr: str, value: Any) -> bool:
        key = (type(obj), attr)
        verdict = verdicts.get(key)
        if verdict is None:
            verdict = verdicts[key] = bool(decide(obj, attr, value))
        return verdict

    environment.is_safe_attribute = is_safe_attribute


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

    compile_template(template)  # transformers' cached compile, with the memoised sandbox checks
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
