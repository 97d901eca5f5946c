"""How one side of a preference pair is trained: its token ids, rendered as trl's DPOTrainer renders them.

trl tokenizes a conversational pair through the chat template (``prompt`` with the generation
prompt, and ``prompt + side`` without it, both offered the row's ``tools``) and trains the tokens after their common prefix. Pairs
are compared and de-duplicated on exactly those ids, so two texts the template renders alike
(it trims whitespace) are recognised as the same training sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def completion_ids(
    tokenizer: Any, prompt: Sequence[Mapping[str, Any]], side: Sequence[Mapping[str, Any]],
    template_kwargs: Mapping[str, Any], *, tools: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[int, ...] | None:
    """The trained token ids of ``side`` after ``prompt`` offering ``tools`` (None when the template refuses to
    render it)."""
    # `or None` as trl's DPOTrainer does: an empty list would render the tool preamble for no tools.
    kwargs = {**template_kwargs, "tools": list(tools) if tools else None}
    try:
        prompt_ids = _ids(tokenizer.apply_chat_template(
            list(prompt), tokenize=True, add_generation_prompt=True, return_dict=True, **kwargs))
        full_ids = _ids(tokenizer.apply_chat_template(
            [*prompt, *side], tokenize=True, return_dict=True, **kwargs))
    except Exception:  # e.g. a stray think tag the template raises on: such a side cannot be trained
        return None
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    return tuple(full_ids[start:])


def _ids(encoded: Any) -> list[int]:
    return list(encoded["input_ids"])


def rendered_check(chosen: Sequence[int], rejected: Sequence[int]) -> dict[str, Any]:
    """What ``pairs.jsonl`` records about the two rendered sides: their lengths and where they first differ."""
    first = next((i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b),
                 min(len(chosen), len(rejected)))
    return {"differ": tuple(chosen) != tuple(rejected), "chosen_tokens": len(chosen),
            "rejected_tokens": len(rejected), "first_difference": first}
