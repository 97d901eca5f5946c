"""The backend tokenizer's ids, from a cache of each pre-token's ids where the text is ASCII.

A tokenizers ``encode`` splits the text at added tokens, splits each stretch between them into
pre-tokens with the pre-tokenizer's regex, and runs the model on each pre-token on its own: a
pre-token's ids never depend on its neighbours, nor a stretch's on the other stretches. Most of the
encode's time goes to the character-level bookkeeping around the regex (alignments for offsets), not to
the model. :class:`PretokenEncoder` does the two splits with Python's ``re`` and asks the backend
tokenizer itself for each distinct pre-token's ids once, so the ids are the tokenizer's own.

It does so only where that is provably the same split:

- the tokenizer: no normalizer; a pre-tokenizer whose regex has a transcription below (byte-level BPE
  with GPT-2's pattern, and Llama 3's); a BPE model without dropout, unknown or byte-fallback tokens;
  added tokens that match as plain text (no ``lstrip``/``rstrip``/``single_word``, all split in one pass)
  and are not encoded as text; a post-processor that leaves offsets as they are (so the template's mask
  rule sees the tokens' true character spans). Any other tokenizer gets no :class:`PretokenEncoder`;
- the stretch between two added tokens (or, in a stretch that is not all ASCII, the lines that
  ``_LINE_START`` splits it into): only printable ASCII, tab, newline and carriage return. On these
  characters ``\\p{L}`` is ``[A-Za-z]``, ``\\p{N}`` is ``[0-9]`` and ``\\s`` is ``[\\t\\n\\r ]`` in every
  Unicode version, so the transcriptions match exactly what the tokenizer's regex matches (both engines
  backtrack and try alternatives in order). Any other part is encoded by the backend, alone;
- every pre-token: the tokenizer, given it alone, keeps it as one pre-token (its ids are then the ids it
  gets inside the text); else :meth:`PretokenEncoder.encode` returns ``None`` and the caller encodes the
  whole text the usual way.

The trained runs follow apply_chat_template's mask rule on the tokens' character spans: pre-tokens lie
end to end, and inside one its tokens do too, each as wide as its token string (byte-level BPE writes
one character per byte; checked per pre-token where a ``{% generation %}`` edge cuts one); inside a
stretch the backend encoded, its own offsets place them.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Sequence
from itertools import accumulate, chain
from typing import Any, cast

from tempa.chat_templates.rendering import runs_for_spans

# The tokenizers regexes (as serialised in tokenizer.json) and their transcriptions for the characters
# allowed below. ByteLevel(use_regex=True) uses GPT-2's pattern; Llama 3 splits with its own first.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_ASCII_FORMS = {
    GPT2_PATTERN: r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\t\n\r A-Za-z0-9]+|[\t\n\r ]+(?![^\t\n\r ])|[\t\n\r ]+",
    LLAMA3_PATTERN: (
        r"'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}"
        r"| ?[^\t\n\r A-Za-z0-9]+[\r\n]*|[\t\n\r ]*[\r\n]+|[\t\n\r ]+(?![^\t\n\r ])|[\t\n\r ]+"
    ),
}
_OUTSIDE = re.compile(r"[^\t\n\r\x20-\x7e]")  # a character the transcriptions are not proven for
# A line that starts with an ASCII letter after a line ending in a visible ASCII character. Both regexes put a
# pre-token edge before that letter whatever the other characters are (no alternative matches a newline and
# then a letter), and each side, given alone, splits as it does in the text: the only alternatives that read
# past the newline are the whitespace runs and Llama 3's punctuation run with its trailing newlines, and with
# a visible character before the newline, a letter after it and the end of a string match them alike.
_LINE_START = re.compile(r"(?<=[!-~]\n)(?=[A-Za-z])")
_MAX_CACHED = 200_000  # distinct pre-tokens kept (about 40 MB); the cache starts over past this


def _state(component: Any) -> dict[str, Any] | None:
    """A tokenizer component's serialised settings; ``None`` for none, or for one that cannot say (custom code)."""
    if component is None:
        return None
    try:
        return json.loads(component.__getstate__())
    except Exception:
        return None


def _pretokenizer_pattern(state: dict[str, Any]) -> str | None:
    """The regex that ``state`` (a serialised pre-tokenizer) splits with, when it is one of the known shapes."""
    kind = state.get("type")
    if kind == "ByteLevel" and state.get("use_regex") and not state.get("add_prefix_space"):
        return GPT2_PATTERN
    if kind == "Sequence" and len(state.get("pretokenizers", [])) == 2:
        split, byte_level = state["pretokenizers"]
        plain_split = (split.get("type") == "Split" and split.get("behavior") == "Isolated"
                       and not split.get("invert") and "Regex" in split.get("pattern", {}))
        plain_bytes = (byte_level.get("type") == "ByteLevel" and not byte_level.get("use_regex")
                       and not byte_level.get("add_prefix_space"))
        if plain_split and plain_bytes:
            return split["pattern"]["Regex"]
    return None


def _keeps_offsets(state: dict[str, Any] | None) -> bool:
    """Whether a serialised post-processor leaves every token's offsets as the encoding made them."""
    if state is None:
        return True
    kind = state.get("type")
    if kind == "Sequence":
        return all(_keeps_offsets(child) for child in state.get("processors", []))
    return kind == "TemplateProcessing" or (kind == "ByteLevel" and not state.get("trim_offsets"))


class PretokenEncoder:
    """Ids and trained token runs of rendered texts, the backend tokenizer's own, from cached pre-token ids."""

    def __init__(self, backend: Any, added: dict[str, int], words: re.Pattern[str]) -> None:
        self.backend = backend
        self.added = {content: (token_id,) for content, token_id in added.items()}
        self.words = words
        # One alternation, longest first: the leftmost-longest match the tokenizer's added-token split makes.
        self.split = re.compile("(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")")
        self.cache: dict[str, tuple[int, ...] | None] = {}

    @classmethod
    def for_backend(cls, backend: Any) -> PretokenEncoder | None:
        """The encoder for ``backend`` (a ``tokenizers.Tokenizer`` set up as the caller encodes), or ``None``
        when its pipeline is not one whose split is transcribed here."""
        from tokenizers.models import BPE

        if backend.normalizer is not None or backend.pre_tokenizer is None or backend.encode_special_tokens:
            return None
        model = backend.model
        # Every token a string of its bytes' byte-level characters: no dropout, no unknown or byte-fallback tokens.
        if not isinstance(model, BPE) or model.dropout or model.unk_token is not None or model.byte_fallback:
            return None
        pre_tokenizer, processor = _state(backend.pre_tokenizer), _state(backend.post_processor)
        pattern = _pretokenizer_pattern(pre_tokenizer) if pre_tokenizer is not None else None
        words = _ASCII_FORMS.get(pattern) if pattern is not None else None
        if words is None or (backend.post_processor is not None and processor is None) or not _keeps_offsets(processor):
            return None
        tokens = backend.get_added_tokens_decoder()
        # Added tokens of both kinds would be split in two passes (plain ones first), not in one.
        if not tokens or len({token.normalized for token in tokens.values()}) > 1:
            return None
        if any(token.lstrip or token.rstrip or token.single_word or not token.content for token in tokens.values()):
            return None
        added = {token.content: token_id for token_id, token in tokens.items()}
        return cls(backend, added, re.compile(words))

    def encode(self, text: str, spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]] | None:
        """``text``'s ids and the ``[start, end)`` token runs inside ``spans``, or ``None`` where unproven."""
        pieces: list[str] = []
        exact: dict[int, list[tuple[int, int]]] = {}  # a stretch's token offsets, where the backend encoded it
        ids_of: list[Sequence[int] | None] = []
        for k, chunk in enumerate(self.split.split(text)):
            if k % 2:  # an added token
                pieces.append(chunk)
                ids_of.append(self.added[chunk])
                continue
            for part in _LINE_START.split(chunk) if _OUTSIDE.search(chunk) else (chunk,):
                if _OUTSIDE.search(part):
                    # Not ASCII: the backend encodes this part alone, as it does inside the text (added tokens
                    # and line starts split it off; see _LINE_START).
                    encoding = self.backend.encode(part, add_special_tokens=False)
                    exact[len(pieces)] = encoding.offsets
                    pieces.append(part)
                    ids_of.append(encoding.ids)
                elif part:
                    words = self.words.findall(part)
                    if sum(map(len, words)) != len(part):  # matches left a gap: not the split the regex proves
                        return None
                    pieces.extend(words)
                    ids_of.extend(map(self.cache.get, words))
        if None in ids_of:
            for i, piece in enumerate(pieces):
                if ids_of[i] is None:
                    ids_of[i] = self.cache[piece] if piece in self.cache else self._piece_ids(piece)
                    if ids_of[i] is None:
                        return None
        resolved = cast("list[Sequence[int]]", ids_of)  # every None was filled in or returned above
        layout = _Layout(pieces, resolved, exact, self.backend)
        runs = runs_for_spans(
            spans,
            ending_after=lambda char: layout.first_token(char, ending_after=True),
            starting_at=lambda char: layout.first_token(char, ending_after=False),
        )
        return (list(chain.from_iterable(resolved)), runs) if runs is not None else None

    def _piece_ids(self, piece: str) -> tuple[int, ...] | None:
        """One pre-token's ids from the tokenizer; ``None`` when, alone, it would not stay one pre-token."""
        if len(self.cache) >= _MAX_CACHED:
            self.cache.clear()
        encoding = self.backend.encode(piece, add_special_tokens=False)
        ids = tuple(encoding.ids) if encoding.ids and set(encoding.word_ids) == {0} else None
        self.cache[piece] = ids
        return ids


class _Layout:
    """Where a text's tokens lie: pre-tokens (and stretches the backend encoded) end to end, each one's tokens
    inside it."""

    def __init__(
        self, pieces: list[str], ids_of: list[Sequence[int]], exact: dict[int, list[tuple[int, int]]], backend: Any
    ) -> None:
        self.pieces, self.ids_of, self.exact, self.backend = pieces, ids_of, exact, backend
        self.char_ends = list(accumulate(map(len, pieces)))
        self.token_ends = list(accumulate(map(len, ids_of)))

    def first_token(self, char: int, *, ending_after: bool) -> int | None:
        """The first token ending after ``char`` (``ending_after``), else the first starting at or after it;
        ``None`` when a pre-token's tokens do not spell it out character for character."""
        ends = self.char_ends
        i = bisect.bisect_right(ends, char) if ending_after else bisect.bisect_left(ends, char)
        if i == len(ends):
            return self.token_ends[-1] if ends else 0
        before = self.token_ends[i - 1] if i else 0
        position = ends[i - 1] if i else 0
        if position >= char or (not ending_after and ends[i] == char):
            return before if position >= char else self.token_ends[i]
        offsets = self.exact[i] if i in self.exact else self._end_to_end(i)
        if offsets is None:
            return None
        for k, (start, end) in enumerate(offsets):
            if (position + end > char) if ending_after else (position + start >= char):
                return before + k
        return self.token_ends[i]

    def _end_to_end(self, i: int) -> list[tuple[int, int]] | None:
        """Pre-token i's token offsets inside it: each as wide as its token string (byte-level BPE writes one
        character per byte, and the pre-token is ASCII), checked against the pre-token's own length."""
        widths = [len(self.backend.id_to_token(token) or "") for token in self.ids_of[i]]
        if sum(widths) != len(self.pieces[i]):
            return None
        ends = list(accumulate(widths))
        return list(zip([0, *ends[:-1]], ends, strict=True))
