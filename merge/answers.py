"""Pure functions over completion text: thinking-format compliance and final answers.

Every scorer reads the *assistant text*: whatever the chat template pre-filled after the
generation prompt (an open think block, say) followed by what the model generated. The answer a
user sees is the text after the think block, as :func:`tempa.chat_templates.thinking.split_reasoning`
splits it; an unclosed think block has no answer. The tags default to tempa's; an evaluation may
name others (``think_tags``).
"""

from __future__ import annotations

from collections.abc import Sequence

from tempa.alignment.answer_text import (
    committed_number,
    gives_reference,
    read_number,
)
from tempa.chat_templates.thinking import (
    THINK_CLOSE,
    THINK_OPEN,
    has_think_tags,
    outside_think,
    split_reasoning,
)


def final_answer_text(text: str, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE) -> str:
    """The user-visible answer: the text after the think block, without any block the model opened after it
    (:func:`tempa.chat_templates.thinking.outside_think`)."""
    return outside_think(split_reasoning(text, open_tag, close_tag).answer, open_tag, close_tag)


def thinking_on_compliant(text: str, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE) -> bool:
    """Thinking on: an opened and closed think block first, then a non-empty answer with no further tags."""
    split = split_reasoning(text, open_tag, close_tag)
    return (
        split.opened
        and split.closed
        and bool(split.answer)
        and not has_think_tags(split.reasoning or "", open_tag, close_tag)
        and not has_think_tags(split.answer, open_tag, close_tag)
    )


def thinking_off_compliant(text: str, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE) -> bool:
    """Thinking off: no think text. An empty pre-filled block is allowed."""
    split = split_reasoning(text, open_tag, close_tag)
    if split.has_block and (not (split.opened and split.closed) or (split.reasoning or "").strip()):
        return False
    return bool(split.answer) and not has_think_tags(split.answer, open_tag, close_tag)


def unanswered(answers: Sequence[str]) -> float:
    """Share of ``answers`` (texts after the think block) that are empty: replies still thinking when
    ``max_new_tokens`` cut them (or closing the block and stopping). They are graded wrong; this says how many were,
    so a low thinking-mode accuracy that measures how briefly a candidate thinks is told apart from wrong answers."""
    return sum(not answer.strip() for answer in answers) / len(answers) if answers else 0.0


def truncated(finish_reasons: Sequence[str | None]) -> float:
    """Share of replies cut off at ``max_new_tokens`` (finish reason ``length``). Such a reply is graded wrong by
    every verifiable check: cut mid-sentence it would still pass "at most N words", or commit to a half-written
    number. A backend that cannot tell how a reply ended (None) is taken at its word."""
    return sum(reason == "length" for reason in finish_reasons) / len(finish_reasons) if finish_reasons else 0.0


# --- final answers -----------------------------------------------------------------------------


def parse_number(text: str, language: str | None = None) -> float | None:
    """Parse ``'1,234.5'``, ``'$12'``, ``'-3/4'``, ``'45%'`` (45), ``'−2'``, ``'2,5'`` into a float; None otherwise
    (:func:`tempa.alignment.answer_text.read_number`, which the answer reward reads by too)."""
    number = read_number(text, language)
    return number.value if number else None


def extract_final_number(answer: str, language: str | None = None) -> float | None:
    """The number an answer commits to (:func:`tempa.alignment.answer_text.committed_answer`, the answer reward's
    rule too): the last ``\\boxed{}``, else the number after the last "answer is"-style lead-in (what that
    sentence's last '=' gives), else the last number in the text; numbers read as ``language`` writes them, and in
    Japanese and Chinese Han numerals too (四十二, 1万2千)."""
    number = committed_number(answer, language)
    return number.value if number else None


def answer_matches(
    answer: str, expected: object, rel_tol: float | None = None, abs_tol: float = 1e-9, language: str | None = None
) -> bool:
    """Whether ``answer`` (the text after the think block) gives the ``expected`` answer.

    A numeric expectation (:func:`tempa.alignment.answer_text.reference_number`: a number with a unit or currency,
    "12,000円" or "12 cm", is its number) is compared with the number the answer commits to as the answer reward
    compares it (:func:`tempa.alignment.answer_text.numbers_agree`: exactly where both are exact as written, 45%
    giving 45 and 0.45); a ``rel_tol`` given is the tolerance of every numeric comparison instead.
    Math (:func:`tempa.alignment.answer_text.is_math_reference`: an expression, an equation, a tuple, no prose word
    in it) is compared with what the answer commits to by math-verify; any other expectation, prose with numbers in
    it (``2時間30分``) too, is text: what the answer commits to must equal it
    (:func:`tempa.alignment.answer_text.text_answer_matches`). The decision and the rules are the answer reward's
    ``auto`` too (:func:`tempa.alignment.answer_text.gives_reference`). A list (or tuple) of references is the accepted answers: the answer gives one of them, as the answer
    reward reads a list.
    """
    if isinstance(expected, list | tuple):
        # each by its own kind: ["イ", "りんご"] was one text, "['イ', 'りんご']", that no reply equals
        return any(answer_matches(answer, item, rel_tol, abs_tol, language) for item in expected)
    return gives_reference(answer, expected, language, rel_tol=rel_tol, abs_tol=abs_tol)
