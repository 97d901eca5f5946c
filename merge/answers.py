"""Pure functions over completion text: thinking-format compliance and final answers.

Every scorer reads the *assistant text*: whatever the chat template pre-filled after the
generation prompt (an open think block, say) followed by what the model generated. The answer a
user sees is the text after the think block, as :func:`tempa.chat_templates.thinking.split_reasoning`
splits it; an unclosed think block has no answer. The tags default to tempa's; an evaluation may
name others (``think_tags``).
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Sequence

from tempa.alignment.numbers import (
    FULL_WIDTH,
    cjk_reading,
    han_numbers,
    number_body,
    plain_cjk_number,
    plain_number,
    plain_unit_numerals,
    unit_number,
)
from tempa.chat_templates.thinking import THINK_CLOSE, THINK_OPEN, has_think_tags, split_reasoning


def final_answer_text(text: str, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE) -> str:
    """The user-visible answer: the text after any think block."""
    return split_reasoning(text, open_tag, close_tag).answer


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


# --- final answers -----------------------------------------------------------------------------


@functools.cache
def _number_re(language: str | None) -> re.Pattern[str]:
    """A number as written in ``language`` (see :func:`tempa.alignment.numbers.number_body`: the answer reward reads
    numbers by the same rule), signed, with a currency sign, as a fraction or a percentage: -3/4, $12, 45%."""
    return re.compile(rf"[-+−]?\$?(?:{_FRAC}|(?:{number_body(language)})(?:\s?/\s?\d+(?:\.\d+)?)?%?)")


_FRAC = r"\\[dt]?frac\{\d+\}\{\d+\}"  # LaTeX's \frac{3}{4}, \dfrac and \tfrac: one number, not two
# LaTeX's digit-group marks: 1{,}234 (its comma; 2{,}5 a decimal comma where the language writes one) and a thin
# space before three digits (1\,000).
_LATEX_COMMA = re.compile(r"(?<=\d)\{,\}(?=\d)")
_LATEX_THIN_SPACE = re.compile(r"(?<=\d)\\[,:;!](?=\d{3}(?!\d))")


def _plain_marks(text: str, reading: str | None) -> str:
    """``text`` with full-width forms as ASCII (a CJK input method's －５ is -5, ３／４ is 3/4, １．５ is 1.5),
    LaTeX's digit-group marks as the plain ones number_body reads, and numerals of digits and Han units (1万2千)
    as digits."""
    return plain_unit_numerals(_LATEX_THIN_SPACE.sub("", _LATEX_COMMA.sub(",", text.translate(FULL_WIDTH))), reading)


_BOXED_RE = re.compile(r"\\boxed\s*\{")
# "The answer is 42", "Answer: 42", "#### 42", and the same lead-ins in SEA languages, Japanese (答えは, 答え：)
# and Chinese (答案是).
_LEAD_IN_RE = re.compile(
    r"(?:answer\s*(?:is|:)|####|jawaban(?:nya)?\s*(?:adalah|:)|jawapan(?:nya)?\s*(?:ialah|adalah|:)"
    r"|đáp án\s*(?:là|:)|câu trả lời\s*(?:là|:)|sagot\s*(?:ay|:)|คำตอบ\s*(?:คือ|:)?"
    r"|(?:答え|正解|解答)\s*(?:は|[:：])|答案\s*(?:是|为|為|[:：]))",
    re.IGNORECASE,
)


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}``, with nested braces balanced."""
    found = []
    for match in _BOXED_RE.finditer(text):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:index])
                    break
    return found


def parse_number(text: str, language: str | None = None) -> float | None:
    """Parse ``'1,234.5'``, ``'$12'``, ``'-3/4'``, ``'45%'``, ``'−2'``, ``'2,5'`` into a float; None otherwise.

    Numbers read as ``language`` writes them (:func:`tempa.alignment.numbers.plain_number`): ``1,500`` is 1500 and
    ``1.500.000`` a million everywhere, ``2,5`` and ``0,125`` have a decimal comma; ``1.500`` is 1500 in a language
    with a decimal comma (Indonesian, Vietnamese, ...) and 1.5 in others (and without a language).
    """
    cleaned = unicodedata.normalize("NFKC", text).strip()
    cleaned = plain_cjk_number(cleaned, cjk_reading(cleaned, language)) or cleaned  # 四十二, 1万2千, 三分之一
    cleaned = cleaned.replace("−", "-").replace("$", "").rstrip(".")
    cleaned = re.sub(r"^\\(?=\d)", "", cleaned.removesuffix("%").removesuffix("\\"))  # \$12, 45\%
    sign, cleaned = (-1.0 if cleaned[:1] == "-" else 1.0), cleaned.lstrip("+-").strip()
    frac_tex = re.fullmatch(r"\\[dt]?frac\{(\d+)\}\{(\d+)\}", cleaned)
    parts = frac_tex.groups() if frac_tex else cleaned.split("/") if cleaned.count("/") == 1 else (cleaned,)
    plain = [plain_number(part, language) for part in parts]
    if None in plain:
        return None
    values = [float(p) for p in plain if p is not None]
    if len(values) == 2:
        return sign * values[0] / values[1] if values[1] else None
    return sign * values[0] if math.isfinite(values[0]) else None


def extract_final_number(answer: str, language: str | None = None) -> float | None:
    """The number an answer commits to: the last ``\\boxed{}``, else the number after the last
    "answer is"-style lead-in, else the last number in the text; numbers read as ``language`` writes them.

    In Japanese and Chinese (or a row without a language whose reply is), Han numerals are numbers too: 1万2千
    wherever it stands, and 四十二 or 两千 where that part of the reply (the box, the committed sentence, the rest
    after the lead-in, the whole reply) writes no digits, so a name (一郎, 九州) never outweighs a digit answer."""
    number_re = _number_re(language)
    reading = cjk_reading(answer, language)
    answer = _plain_marks(answer, reading)

    def numbers_in(part: str) -> list[str]:
        return number_re.findall(part) or han_numbers(part, reading)

    for boxed in reversed(_boxed_contents(answer)):
        value = parse_number(boxed, language)
        if value is not None:
            return value
        numbers = numbers_in(boxed)
        if numbers:
            return parse_number(numbers[-1], language)
    lead_ins = list(_LEAD_IN_RE.finditer(answer))
    if lead_ins:
        tail = answer[lead_ins[-1].end() :]
        # "The answer is 12 - 5 = 7": a worked line commits to what its last '=' gives
        line = committed_sentence(tail)
        numbers = numbers_in(line.rsplit("=", 1)[1]) if "=" in line else []
        numbers = numbers or numbers_in(line) or numbers_in(tail)
        if numbers:
            return parse_number(numbers[0], language)
    numbers = numbers_in(answer)
    return parse_number(numbers[-1], language) if numbers else None


# A sentence ends at 。！？ (no space follows them) or at . ! ? before a space or the line's end (a decimal point has
# a digit after it).
_SENTENCE_END = re.compile(r"[。！？]|[.!?](?=\s|$)")
# What Japanese and Thai put after a stated answer: "答えはBです。", "คำตอบคือ B ครับ".
_COPULA = re.compile(r"\s*(?:です|でした|である|だ|となります|になります|ครับ|ค่ะ)$")


def committed_sentence(tail: str) -> str:
    """The sentence right after an answer lead-in: what the reply commits to. "The answer is 3. Check: 3 + 4 = 7"
    and "答えは3です。検算：3+4=7" commit to 3 (the line ran on into the check, whose '=' gave 7)."""
    line = tail.strip().split("\n", 1)[0]
    end = _SENTENCE_END.search(line)
    return line[: end.start()] if end else line


def _normalise_text(text: str) -> str:
    """Casefolded, punctuation and symbols turned to spaces (combining marks kept, for Thai/Tamil)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return " ".join(text.split())


def answer_matches(
    answer: str, expected: object, rel_tol: float = 1e-6, abs_tol: float = 1e-9, language: str | None = None
) -> bool:
    """Whether ``answer`` (the text after the think block) gives the ``expected`` answer.

    Numeric expectations compare the final number within tolerance, numbers read as ``language`` (the row's)
    writes them, as the answer reward reads them; an expectation that is a number with a unit or currency
    ("12,000円", "12 cm", :func:`tempa.alignment.numbers.unit_number`) is its number, as the reward compares it.
    Other expectations compare the normalised boxed content, the line after an "answer is" lead-in, the last line,
    or the whole answer.
    """
    expected_number = (
        float(expected)
        if isinstance(expected, (int, float)) and not isinstance(expected, bool)
        else parse_number(unit_number(str(expected), language) or str(expected), language)
    )
    if expected_number is not None:
        got = extract_final_number(answer, language)
        return got is not None and math.isclose(got, expected_number, rel_tol=rel_tol, abs_tol=abs_tol)
    target = _normalise_text(str(expected))
    if not target:
        return False
    candidates = list(_boxed_contents(answer))
    lead_ins = list(_LEAD_IN_RE.finditer(answer))
    if lead_ins:
        tail = answer[lead_ins[-1].end() :].strip()
        if tail:
            sentence = committed_sentence(tail)
            candidates += [tail.splitlines()[0], sentence, _COPULA.sub("", sentence)]
    lines = [line for line in answer.splitlines() if line.strip()]
    if lines:
        candidates.append(lines[-1])
    candidates.append(answer)
    return any(_normalise_text(candidate) == target for candidate in candidates)
