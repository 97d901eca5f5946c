"""Tokenisation through the tokenizer's own chat template, with assistant masks.

The runner bakes the recipe's template into the tokenizer before the stage, so rendering here
is exactly what inference will use. Masks come from the template's ``{% generation %}`` blocks
(what ``return_assistant_tokens_mask`` returns, built in one pass: :func:`make_render`);
:mod:`tempa.chat_templates.expand` decides which of them train.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tempa.chat_templates.rendering import render_with_generation_spans, runs_to_mask, token_runs
from tempa.chat_templates.thinking import mode_kwargs
from tempa.sft.data_config import DataError
from tempa.sft.files import digest
from tempa.sft.pretokens import PretokenEncoder

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


Rendered = tuple[str, list[tuple[int, int]]]  # text, and the character spans of its generation blocks


@dataclass(frozen=True)
class EncodedChat:
    """A rendered conversation's token ids and the ``[start, end)`` token runs its template marks as trained."""

    input_ids: list[int]
    trained: list[tuple[int, int]]

    @property
    def assistant_mask(self) -> list[int]:
        return runs_to_mask(len(self.input_ids), self.trained)


class ChatEncoder:
    """The tokenizer's template, rendered and tokenised with the assistant mask; a :data:`Render`.

    The result is ``apply_chat_template(..., return_assistant_tokens_mask=True)``'s, token for token, by
    the same steps with less around them: transformers' renderer gives the text and the character spans
    of the ``{% generation %}`` blocks, the backend tokenizer encodes the text, and :func:`token_runs`
    applies transformers' span rule by bisecting the token offsets instead of walking all of them. Where
    :class:`~tempa.sft.pretokens.PretokenEncoder` can prove its split (ASCII text, byte-level BPE with a known
    regex) it gives the same ids and runs from cached pre-token ids, about 5x faster than the encode.
    :meth:`encode` tokenises many rendered texts in a row: alternating Jinja and the tokenizer per row
    measured about 1.3x slower, since each evicts the other's working set from the CPU caches.
    """

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(
                f"the tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; assistant masks need the "
                "token offsets only a fast (tokenizers-backed) tokenizer gives"
            )
        self.tokenizer = tokenizer
        self.backend = _plain_backend(tokenizer)
        self.pretokens = PretokenEncoder.for_backend(self.backend)
        self.specials = dict(tokenizer.special_tokens_map)

    def text(self, messages: list[dict[str, Any]], thinking: bool, tools: list[dict[str, Any]] | None = None) -> Rendered:
        """The rendered text and its generation spans (raises what the template raises)."""
        return render_with_generation_spans(
            self.tokenizer.get_chat_template(None, tools),
            messages,
            tools=tools,
            **{**self.specials, **mode_kwargs("on" if thinking else "off")},
        )

    def encode(self, rendered: Sequence[Rendered]) -> list[EncodedChat]:
        """The ids and trained token runs of each rendered text."""
        quick = self.pretokens
        chats = [quick.encode(text, spans) if quick is not None else None for text, spans in rendered]
        # The rest one text at a time: encode_batch would start the tokenizer's thread pool, which the data
        # pipeline's own worker processes already stand in for.
        return [
            EncodedChat(*chat) if chat is not None else self._encode_one(text, spans)
            for chat, (text, spans) in zip(chats, rendered, strict=True)
        ]

    def _encode_one(self, text: str, spans: list[tuple[int, int]]) -> EncodedChat:
        encoding = self.backend.encode(text, add_special_tokens=False)
        return EncodedChat(encoding.ids, token_runs(len(encoding), encoding.token_to_chars, spans))

    def __call__(
        self, messages: list[dict[str, Any]], thinking: bool, tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[int], list[int]]:
        chat = self.encode([self.text(messages, thinking, tools)])[0]
        return chat.input_ids, chat.assistant_mask


def make_render(tokenizer: Any) -> ChatEncoder:
    """render(messages, thinking, tools) -> (input_ids, assistant_masks) with the tokenizer's template."""
    return ChatEncoder(tokenizer)


def _plain_backend(tokenizer: Any) -> Any:
    """The backend tokenizer as ``tokenizer(text, add_special_tokens=False)`` runs it: no truncation, no padding."""
    backend = tokenizer.backend_tokenizer
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    if backend.truncation is None and backend.padding is None and backend.encode_special_tokens == split:
        return backend
    backend = copy.deepcopy(backend)  # leave the caller's tokenizer as it was
    backend.no_truncation()
    backend.no_padding()
    backend.encode_special_tokens = split
    return backend


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of everything about the tokenizer that changes token ids (not the template)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return digest([type(tokenizer).__name__, vocab, tokenizer.special_tokens_map])


def special_token_texts(tokenizer: Any) -> list[str]:
    """Texts of the added special tokens (``<|eot_id|>``...), which must never appear inside data."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return sorted({tok.content for tok in added.values() if getattr(tok, "special", False) and tok.content})
