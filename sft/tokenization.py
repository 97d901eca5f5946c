"""Tokenisation through the tokenizer's own chat template, with assistant masks.

The runner bakes the recipe's template into the tokenizer before the stage, so rendering here
is exactly what inference will use. Masks come from the template's ``{% generation %}`` blocks
(``return_assistant_tokens_mask``); :mod:`tempa.sft.expand` decides which of them train.
"""

from __future__ import annotations

import re
from typing import Any

from tempa.chat_templates.thinking import mode_kwargs
from tempa.sft.data_config import DataError
from tempa.sft.expand import Render
from tempa.sft.files import digest

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def check_template(tokenizer: Any) -> str:
    """The tokenizer's chat template; a clear error when it has none or cannot mask assistant turns."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise DataError("the tokenizer has no chat template; the recipe's template must be baked in before SFT")
    if not _GENERATION.search(template):
        raise DataError(
            "the tokenizer's chat template has no {% generation %} block, so assistant tokens cannot be "
            "masked; use a tempa template (tempa.chat_templates) or add the block"
        )
    return template


def make_render(tokenizer: Any) -> Render:
    """render(messages, thinking, tools) -> (input_ids, assistant_masks) with the tokenizer's template."""

    def render(
        messages: list[dict[str, Any]], thinking: bool, tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[int], list[int]]:
        out = tokenizer.apply_chat_template(
            messages,
            tools=tools,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            **mode_kwargs("on" if thinking else "off"),
        )
        return list(out["input_ids"]), [int(m) for m in out["assistant_masks"]]

    return render


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of everything about the tokenizer that changes token ids (not the template)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return digest([type(tokenizer).__name__, vocab, tokenizer.special_tokens_map])


def special_token_texts(tokenizer: Any) -> list[str]:
    """Texts of the added special tokens (``<|eot_id|>``...), which must never appear inside data."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return sorted({tok.content for tok in added.values() if getattr(tok, "special", False) and tok.content})
