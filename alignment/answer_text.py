"""Which answer a reply commits to, and whether its number is the reference's: one rule for the answer reward and
the accuracy suite.

A reply commits to its last ``\\boxed{}``, else to the sentence after its last "answer is"-style lead-in that states
rather than asks or supposes (what that sentence's last ``=`` gives, when it has one; "check whether the answer is 4"
commits to nothing; "not 12 but 13" and "12ではなく13" to 13), else to its last number; a number the reply denies, asks
about or offers as one of a choice ("not 12", "12個ですか？", "12 or 13", "12 apples or 13 apples", "12. Or 13.",
"12, though it could be 13", "12, but 15 is also possible") is none, while the same answer restated is one ("12 km,
or 12000 m", "45%, or 0.45"), and
so is a reply that states one answer after another ("The answer is A. The answer is B."). A circled option label
is its number (③ is 3). The preference/rl ``answer`` reward
(:mod:`tempa.alignment.rewards`) and the evaluate stage's accuracy suite (:mod:`tempa.merge.answers`) both read a
reply by :func:`committed_answer`, so "The answer is 3. Check: 3 + 4 = 7" is 3 in training and in evaluation (the
reward gave math-verify the whole reply, which took its last number, 7).

A numeric reference is compared with the committed number by value (:func:`numbers_agree`), in both: exactly where
both are exact as written (1,000,001 is not 1000000), within a tolerance only where they cannot be (0.3333333 for
1/3, \\sqrt{2}, a float reference such as a float32 column's 0.1), unless an accuracy suite sets its own. Percentages
follow one rule: a percentage is its number as written (45% is 45, as a percent question's reference writes it)
and, against a number written without %, also its hundredth (45% is 0.45 or 9/20, as a probability's reference
writes it); 45% is not 0.45%. A text reference (a label, a name, a choice letter) must equal what the reply commits
to (:func:`text_answer_matches`), in both: the reward's ``auto`` fell back to "appears anywhere", so gold B passed
``\boxed{A}``.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

from tempa.alignment.numbers import (
    CIRCLED_DIGITS,
    FULL_WIDTH,
    cjk_reading,
    han_numbers,
    math_text,
    number_body,
    plain_cjk_number,
    plain_number,
    plain_number_words,
    plain_unit_numerals,
    unit_number,
)

# LaTeX's \frac{3}{4}, \dfrac and \tfrac (\frac{-3}{4}, \frac{1.5}{2} too): one number, not two
_FRAC = r"\\[dt]?frac\{[-−]?\d+(?:\.\d+)?\}\{\d+(?:\.\d+)?\}"
_FRAC_PARTS = r"\\[dt]?frac\{(\d+(?:\.\d+)?)\}\{(\d+(?:\.\d+)?)\}"
# 45%, 45 % (as French, Vietnamese and Indonesian space it), 45\% (LaTeX), and the percent word after the digits in the
# languages tempa knows: 45 percent, phần trăm (vi), persen (id), peratus (ms), porsiyento (tl), เปอร์เซ็นต์ (th),
# パーセント (ja), 퍼센트 (ko), சதவீதம் (ta)
_PERCENT = (r"\s?(?:\\?%|(?i:per\s?cent|phần trăm|persen|peratus|porsiyento)(?![^\W\d_])|เปอร์เซ็นต์|パーセント|퍼센트"
            r"|சதவீதம்)")


@functools.cache
def number_re(language: str | None) -> re.Pattern[str]:
    """A number as written in ``language`` (see :func:`tempa.alignment.numbers.number_body`), signed, with a currency
    sign, as a fraction or a percentage: -3/4, $12, 45%, \\frac{3}{4}; or a circled digit, an option's label that is
    its number (③: :data:`tempa.alignment.numbers.CIRCLED_DIGITS`)."""
    return re.compile(rf"[-+−]?\$?(?:{_FRAC}|(?:{number_body(language)})(?:\s?/\s?\d+(?:\.\d+)?)?(?:{_PERCENT})?)"
                      rf"|[{CIRCLED_DIGITS}]")


# LaTeX's digit-group marks: 1{,}234 (its comma; 2{,}5 a decimal comma where the language writes one) and a thin
# space before three digits (1\,000).
_LATEX_COMMA = re.compile(r"(?<=\d)\{,\}(?=\d)")
_LATEX_THIN_SPACE = re.compile(r"(?<=\d)\\[,:;!](?=\d{3}(?!\d))")


def plain_marks(text: str, reading: str | None) -> str:
    """``text`` with full-width forms as ASCII (a CJK input method's －５ is -5, ３／４ is 3/4, １．５ is 1.5),
    LaTeX's digit-group marks as the plain ones number_body reads, and numerals of digits and Han units (1万2千)
    as digits."""
    return plain_unit_numerals(_LATEX_THIN_SPACE.sub("", _LATEX_COMMA.sub(",", text.translate(FULL_WIDTH))), reading)


_BOXED_RE = re.compile(r"\\boxed\s*\{")
# The end of a word: no letter after it, nor a Thai vowel or tone mark (Unicode's non-spacing marks, which \w leaves
# out: the label ค is not the word ค่ะ).
_WORD_END = r"(?![^\W\d_]|[\u0e31\u0e34-\u0e3a\u0e47-\u0e4e])"
# An option's label or a number ahead, after an option word ("B", "(C)", "ข้อ ค", "phương án D", "12"): a lead-in
# without a copula or colon ("Jawabannya B", "Đáp án B", "ตอบ ค") commits only to one;
# before a word it is prose ("Đáp án đúng phải thỏa mãn ...", "Jawabannya bisa dicari ...").
_LABEL_AHEAD = (r"(?=[ \t]*(?:(?:option|choice|pilihan|opsi|phương án|phuong an|lựa chọn|lua chon)[ \t]+"
                rf"|(?:ข้อ|ตัวเลือก)[ \t]*)?[(\[「\"']?(?:[^\W\d_]|[-+−]?\d+(?:[.,]\d+)*){_WORD_END})")
# A choosing verb without a copula ("Chọn B", "I choose B", "故选B") is also how working picks a count or a variable
# ("Chọn 2 học sinh từ 5", "I choose a = 2", "从5人中选2人", "I pick a simple case"): it commits only to an option's
# label that ends its clause, followed by nothing but the sentence's end, a bracketed option text or a reason ("I
# choose B.", "Chọn C (Paris)", "故选B，因为 ..."); a Han character is no label but 甲乙丙丁 (选法 is "ways to choose").
_LABEL_ENDS_CLAUSE = (r"(?=[ \t]*(?:(?:option|choice|pilihan|opsi|phương án|phuong an|lựa chọn|lua chon)[ \t]+)?"
                      rf"[(\[「\"']?(?:[^\W\d_\u3400-\u9fff]|[甲乙丙丁戊己]){_WORD_END}[)\]」\"']?[ \t]*(?:$|\n|[.。!！]|[(（]"
                      r"|[,，:：]?[ \t]*(?:(?:because|since|vì|karena|kerana|sebab|dahil)(?![^\W\d_])|因为|因為)))")
# "The answer is 42", "Answer: 42", "#### 42", "I choose B", and the same lead-ins in the languages tempa knows:
# Indonesian and Malay (jawabannya B, jawaban yang benar adalah), Vietnamese, with or without its diacritics (đáp án,
# đáp số: the answer of a sum; câu trả lời đúng là; chọn B; dap an la), Filipino, Thai (คำตอบที่ถูกต้องคือ, ตอบ ค),
# Tamil (விடை, பதில்), Burmese (အဖြေမှာ), Korean (답은, 정답은), Japanese (答え: 答えは, 答え：, 答：) and Chinese (答案是,
# 答案应该是, 答：, 选B).
LEAD_IN_RE = re.compile(
    r"(?:answer\s*(?:is|:)|####"
    r"|jawa[bp]an(?:nya)?(?:\s+yang\s+(?:benar|tepat|betul))?\s*(?:adalah|ialah|:)"
    rf"|jawa[bp]annya{_LABEL_AHEAD}"
    r"|(?:đáp|dap)\s+(?:án|an|số|so)(?:\s+(?:đúng|dung))?\s*(?:(?:là|la)(?![^\W\d_])|:)"
    r"|(?:câu|cau)\s+(?:trả|tra)\s+(?:lời|loi)(?:\s+(?:đúng|dung))?\s*(?:(?:là|la)(?![^\W\d_])|:)"
    rf"|(?:đáp|dap)\s+(?:án|an){_LABEL_AHEAD}|(?<![^\W\d_])(?:chọn|chon){_LABEL_ENDS_CLAUSE}"
    rf"|(?<![^\W\d_])i(?:['’]d|['’]ll|\s+would|\s+will)?\s+(?:go\s+with|choose|pick|select){_LABEL_ENDS_CLAUSE}"
    r"|sagot\s*(?:ay|:)|คำตอบ(?:ที่ถูกต้อง(?:ที่สุด)?|ที่ถูก|ที่ดีที่สุด)?\s*(?:คือ|:)?|(?<!คำ)ตอบ\s*:"
    rf"|(?<!คำ)ตอบ{_LABEL_AHEAD}"
    r"|(?:விடை|பதில்)(?![\u0b80-\u0bff])\s*:?|(?:정답|답)\s*(?:은|는|:)|အဖြေ(?:မှာ|က|သည်|\s*[:：])"
    r"|(?:答え|正解|解答)\s*(?:は|[:：])|答案\s*(?:(?:应该|應該|应当|應當)?(?:是|为|為)|[:：])|答\s*[:：]"
    rf"|(?:答案|故|所以|因此)?\s*(?:选|選)(?:择|擇)?{_LABEL_ENDS_CLAUSE})",
    re.IGNORECASE,
)


def boxed_spans(text: str) -> list[tuple[int, int, int]]:
    """(start, content start, end) of every ``\\boxed{...}``, with nested braces balanced; one pass over the text (a
    reply of unclosed boxes made a scan per box: seconds for 20k characters, on every RL sample)."""
    closing: dict[int, int] = {}  # each brace that is closed -> where
    opened: list[int] = []
    for index, char in enumerate(text):
        if char == "{":
            opened.append(index)
        elif char == "}" and opened:
            closing[opened.pop()] = index
    return [(match.start(), match.end(), closing[match.end() - 1]) for match in _BOXED_RE.finditer(text)
            if match.end() - 1 in closing]


def boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}``, with nested braces balanced."""
    return [text[start:end] for _, start, end in boxed_spans(text)]


# LaTeX's text and font commands, which a math-trained model wraps a boxed option or word in: \boxed{\text{B}},
# \boxed{\textbf{(C)}}, \boxed{\mathrm{Paris}}.
_LATEX_TEXT = re.compile(r"\\(?:text(?:bf|it|rm|sf|tt|up|normal)?|math(?:rm|bf|it|sf|tt|normal)|mbox|operatorname)\s*"
                         r"\{([^{}]*)\}")


def _latex_text(text: str) -> str:
    """``text`` without the text and font commands around its words (:data:`_LATEX_TEXT`), nested ones too."""
    while True:
        text, count = _LATEX_TEXT.subn(r"\1", text)
        if not count:
            return text


# A sentence ends at 。！？ and Burmese ။ (no space follows them) or at . ! ? before a space or the line's end (a decimal point has
# a digit after it).
_SENTENCE_END = re.compile(r"[。！？။]|[.!?](?=\s|$)")
# A check or a reason after the answer, in the languages of LEAD_IN_RE: it ends what the reply commits to even where
# no sentence end comes first (Thai writes none: "คำตอบคือ 12 ตรวจสอบ: 12+3=15"; "The answer is 3, since 3 + 4 = 7").
# Its '=' is the check's result, not the answer.
_LATIN_WORDS = (r"check(?:ing|ed)?|verif(?:y|ying|ied|ication)|because|since|cek|periksa|semak(?:an)?|karena|kerana"
                r"|sebab|kiểm tra|thử lại|vì|suriin|dahil")
CHECK_RE = re.compile(
    rf"(?<![^\W\d_])(?:{_LATIN_WORDS})(?![^\W\d_])|ตรวจสอบ|ตรวจ|เช็[คก]|เพราะ(?!ฉะนั้น)|சரிபார்|ஏனெனில்|ஏனென்றால்"
    r"|검산|검증|확인|왜냐하면|検算|検証|確認|なぜなら|验算|驗算|检验|檢驗|验证|驗證|检查|檢查|因为|因為",
    re.IGNORECASE,
)


def committed_sentence(tail: str) -> str:
    """The sentence right after an answer lead-in: what the reply commits to. "The answer is 3. Check: 3 + 4 = 7",
    "答えは3です。検算：3+4=7" and "คำตอบคือ 3 เพราะ 3 + 4 = 7" commit to 3 (the line ran on into the check, whose '='
    gave 7): the sentence ends at a sentence end, the line's end, or a check or reason (:data:`CHECK_RE`) after
    it."""
    line = tail.strip().split("\n", 1)[0]
    end = _SENTENCE_END.search(line)
    line = line[: end.start()] if end else line
    check = next((found for found in CHECK_RE.finditer(line) if line[: found.start()].strip(" :：,，、")), None)
    return line[: check.start()] if check else line


# A lead-in that asks or supposes instead of stating ("Let's check whether the answer is 4: 4 * 2 = 8, not 10"): a word
# right before it that opens a condition, a supposition or a check (English, Indonesian, Malay, Vietnamese, Filipino,
# Thai, Chinese, Japanese; a few words such as "the" or "bahwa" may stand between) ...
_HEDGE_BEFORE = re.compile(
    r"(?:(?<![^\W\d_])(?:whether|if|suppose|supposing|assume|assuming|maybe|perhaps|check|verify|apakah|benarkah|betulkah|bukankah|adakah|jika"
    r"|kalau|bila|andaikan|misalkan|seandainya|sama ada|katakan|liệu|nếu|giả sử|thử xem|xem thử|kiểm tra xem|hãy xem"
    r"|để xem|let me try|let's try|kung|ipagpalagay na)"
    r"(?:\s+(?:that|the|our|my|this|final|correct|right|bahwa|rằng|ang))*"
    r"|ถ้า|หาก|สมมติ(?:ว่า)?|สมมุติ(?:ว่า)?|(?:ตรวจสอบ|ตรวจ|เช็[คก]|ดู|ทดสอบ)ว่า|如果|假如|假设|假設|若|要是|倘若|もし|仮に)\s*$",
    re.IGNORECASE,
)
# ... or, in the clause after it, a question or a condition where the language puts it after the answer: 答案是否为4
# and 答案是不是4 (zh; not 答案是否定的, "the answer is no", nor 答案：不是, "the answer: no"), 答えは4かどうか / 4なら /
# 4だとすると (ja), 정답은 4인지 / 6일까 (ko), விடை 4 என்றால் (ta), คำตอบคือ 4 หรือไม่ (th).
_ASKED_AFTER_SHI = re.compile(r"^(?:否(?!定)|不是)")  # only after 答案是: 是否 / 是不是 ask
_HEDGE_AFTER = re.compile(
    r"吗|嗎|かどうか|か(?:確|検|調)|なら|だとすると|とすると|と仮定|でしょうか|だろうか|ですか"
    r"|인지|라면|일까|일지|라고\s*가정|என்றால்|எனில்|இருந்தால்|ஆ\s+என|หรือไม่|หรือเปล่า|ไหม|มั้ย"
)

_CLAUSE_END = re.compile(r"[,，、:：;；]")


_SAID = re.compile(r"[^\s]")
_SAID_BEFORE_CHECK = re.compile(r"[^\s:：,，、]")


class _SentenceEnds:
    """Where the sentences of ``text`` end, as :func:`committed_sentence` ends them (a sentence end, a line's end, a
    check word after some text), found once for the whole reply: a reply of many lead-ins on one line was read to the
    line's end once per lead-in (20k characters of 答案是否为1 took 10 s, on every RL sample)."""

    def __init__(self, text: str) -> None:
        self.text = text
        stops = [(m.start(), False) for m in _SENTENCE_END.finditer(text)]
        stops += [(m.start(), False) for m in re.finditer("\n", text)]
        stops += [(m.start(), True) for m in CHECK_RE.finditer(text)]
        stops.sort()
        self.positions = [position for position, _ in stops]
        self.is_check = [check for _, check in stops]

    def asks(self, start: int) -> bool:
        """Whether the sentence that starts at ``start`` ends in a question mark."""
        said = _SAID.search(self.text, start)  # its first word: a stop before it ends nothing yet
        if said is None:
            return False
        for i in range(bisect.bisect_left(self.positions, start), len(self.positions)):
            position = self.positions[i]
            if position < said.start() or (not self.is_check[i] and position == said.start()
                                           and self.text[position] == "\n"):
                continue
            if self.is_check[i] and not _SAID_BEFORE_CHECK.search(self.text, start, position):
                continue  # a check word right after the lead-in ("The answer is: check ...") ends nothing yet
            return not self.is_check[i] and self.text[position] in "?？"
        return False


def _hedged(text: str, lead_in: re.Match[str], stop: int, ends: _SentenceEnds) -> bool:
    """Whether ``lead_in`` asks or supposes (:data:`_HEDGE_BEFORE`, :data:`_HEDGE_AFTER`, a sentence that ends in a
    question mark) rather than commits; its clause is read up to ``stop`` (the next lead-in) at most."""
    if _HEDGE_BEFORE.search(text[max(0, lead_in.start() - 60) : lead_in.start()]):
        return True
    line = text[lead_in.end() : stop].strip().split("\n", 1)[0]
    clause = _CLAUSE_END.split(committed_sentence(line), maxsplit=1)[0].strip()
    if lead_in.group(0).rstrip().endswith("是") and _ASKED_AFTER_SHI.match(clause):
        return True
    return (bool(_HEDGE_AFTER.search(clause)) or ends.asks(lead_in.end())
            or _asks_unmarked(_SENTENCE_END.split(line, maxsplit=1)[0]))


# A wrong answer named where the answer would be: "The wrong answer is B", 不正解 ("wrong answer", whose 正解は is a
# lead-in), 間違った答え, 오답 (whose 답은 is one), 틀린 답, 错误答案. What it names is what the reply rejects.
_WRONG_ANSWER = (r"(?:(?<![^\W\d_])(?:wrong|incorrect|false)\s+(?:final\s+)?answer|不正解|誤答"
                 r"|(?:間違|誤|違)った答え|오답|틀린\s*답|잘못된\s*답|错误的?答案|錯誤的?答案)")
# The incorrect option named ("The incorrect option is C", 誤りはイ, 間違いはイ): the pick of a "which option is
# incorrect?" question, so it is the answer when it is all the reply states; after a right answer in the same line
# ("ネガティブです。誤りはポジティブです。") it is the option the reply rejects, and gives nothing.
_WRONG_OPTION = r"(?:(?<![^\W\d_])(?:wrong|incorrect|false)\s+(?:option|choice)|誤り|間違い)"
_WRONG_LEAD_IN = re.compile(rf"{_WRONG_ANSWER}\s*(?:is|:|：|は|은|는|是|为|為)?\s*$", re.IGNORECASE)


def committing_lead_in(text: str) -> re.Match[str] | None:
    """The last answer lead-in (:data:`LEAD_IN_RE`) in ``text`` that commits to an answer; None when there is none. A
    lead-in partway through the reasoning that tries a candidate ("whether the answer is 4", "if the answer is 6", "so
    the answer is 4?"), or that names a wrong answer ("The wrong answer is 4", 不正解は, 오답은), is passed over, so
    the reply commits to what it states after it (or, with no committing lead-in, to its last number), not to the
    rejected candidate or its check."""
    lead_ins = list(LEAD_IN_RE.finditer(text))
    if not lead_ins:
        return None
    ends = _SentenceEnds(text)
    stops = [following.start() for following in lead_ins[1:]] + [len(text)]
    for lead_in, stop in zip(reversed(lead_ins), reversed(stops), strict=True):
        if _WRONG_LEAD_IN.search(text, max(0, lead_in.start() - 20), lead_in.end()):
            continue
        if not _hedged(text, lead_in, stop, ends):
            return lead_in
    return None


# Words that may open a sentence before its lead-in without changing what it says ("The answer is", "So the answer
# is"); any other ("Wait, the answer is", "No, the answer is") turns from the sentence before.
_RESTATING = frozenset({"the", "so", "thus", "hence", "therefore", "and", "my", "final", "correct"})


def answer_before(text: str, lead_in: re.Match[str]) -> str | None:
    """The sentence of another committing lead-in right before ``lead_in`` (the committing one), when nothing but
    "the" or "so the" comes between: "The answer is A. The answer is B." gives "A". A reply that states another answer
    so ("정답은 ①입니다. 정답은 ②입니다.", every option one after another) commits to neither: its last is no more its
    answer than its first. None when a retraction, a check or other words come between ("The answer is A. No wait, the
    answer is B." corrects to B) or the lead-in before asks or names a wrong answer. Whether it states another answer
    is :func:`_states_another`'s (by value) and :func:`_states_an_answer`'s to say."""
    before = [found for found in LEAD_IN_RE.finditer(text) if found.end() <= lead_in.start()]
    if not before or _WRONG_LEAD_IN.search(text, max(0, before[-1].start() - 20), before[-1].end()):
        return None
    previous = before[-1]
    gap = text[previous.end() : lead_in.start()].strip()
    sentence = committed_sentence(gap).strip()
    ended = gap[len(sentence) :]
    opening = _SENTENCE_END.split(ended.strip(" \t.。!！"))
    if (not sentence or not ended[:1] or ended[0] not in ".。!！\n" or len(opening) > 1 or not set(opening[0].casefold().split()) <= _RESTATING
            or _hedged(text, previous, lead_in.start(), _SentenceEnds(text))):
        return None
    return sentence


# An option's label a sentence states: alone ("A", "③입니다", "option C") or set apart by a bracket, a colon or a full
# stop ("(C) Paris", "C: 42"); "I think" opens with no label.
_STATED_LABEL = re.compile(r"^[(\[「]?(?:(?:option|choice|pilihan|opsi|phương án|ข้อ)\s*)?[^\W\d_][)\]」:.]?$"
                           r"|^[(\[「]?[^\W\d_][)\]」:]", re.IGNORECASE)


def _states_an_answer(sentence: str) -> bool:
    """Whether ``sentence`` (after an earlier lead-in) commits to an answer: it holds a number or states an option's
    label. "Answer: Let me think. The answer is B." states none before B, so nothing is restated."""
    plain = unicodedata.normalize("NFKC", _COPULA.sub("", sentence.strip())).strip().rstrip("。.!")
    return bool(re.search(r"\d", plain) or _STATED_LABEL.match(plain))


def _states_another(before: str | None, line: str, number: str, language: str | None) -> bool:
    """Whether ``before`` (the sentence of an earlier lead-in: :func:`answer_before`) commits to another answer than
    ``number``, the one ``line`` (the last lead-in's sentence) commits to: read as the last is read (after "not X but
    Y" and the last '='), and compared by value, as a reply is with its reference, so "$18" restates 18, "1/2" 0.5,
    "45%" 45, "\\frac{2}{3}" 2/3, "③" 3 and "5 + 7 = 12" 12; an option's label is another answer than a number.
    False when it commits to nothing ("Let me think.")."""
    if before is None or not _states_an_answer(before):
        return False
    found = number_re(language)
    reading = cjk_reading(before, language)
    before = plain_number_words(plain_marks(before, reading), language)
    instead = _taken_back(before)
    part = before[instead.end():] if instead and found.search(before, instead.end()) else before
    part = part.rsplit("=", 1)[1] if "=" in part else part
    numbers = found.findall(part) or han_numbers(part, reading)
    if not numbers:
        return True  # a label: "The answer is B. The answer is 12."
    earlier = committed_number(part, language, Commitment(part, numbers[0]))
    later = committed_number(line, language, Commitment(line, number))
    return not (earlier is not None and later is not None
                and (numbers_agree(earlier, later) or numbers_agree(later, earlier)))


# "not X but Y" commits to Y: XではなくY, X じゃなくて Y, not X but Y, bukan X tetapi Y, không phải X mà là Y, 不是X而是Y,
# 不是X，是Y, X가 아니라 Y, hindi X kundi Y, X அல்ல, Y.
_INSTEAD = re.compile(r"では(?:なく|なくて)|じゃ(?:なく|なくて)|(?<![^\W\d_])(?:but|tetapi|tapi|melainkan|kundi)(?![^\W\d_])"
                      r"|mà là|而是|(?<=[,，])\s*是|(?:이|가)\s*아니라|แต่(?:เป็น|คือ)?|அல்ல(?![\u0b80-\u0bff])",
                      re.IGNORECASE)
# A number denied ("not 12", "12個ではありません", "不是12") or offered as one of a choice ("12 or 13", "9個か10個").
_DENIED_BEFORE = re.compile(r"(?:(?<![^\W\d_])(?:not|isn't|bukan(?:lah)?|không phải|khong phai|không|hindi)"
                            r"(?:\s+(?:là|la|adalah|ang))?|ไม่ใช่|不是|并非|並非)\s*$", re.IGNORECASE)
# A question without a question mark, as Thai always writes one and Vietnamese, Indonesian and Malay often do: a
# particle at the sentence's end (ไหม, มั้ย, หรือเปล่า, ใช่ไหม; phải không, đúng không, chưa, à, hả, nhỉ, and không
# after the answer, not "là không": the answer "no"; Burmese လား) or -kah/apakah or Filipino ba in it ("12 kah
# jawabannya", "benarkah 12", "12 ba ang sagot").
# Not không after thì, đều, cũng, vẫn (with or without diacritics), where it denies ("còn Minh thì không": "Minh
# doesn't"; "A, C, D đều không"); not à after a word that addresses the reader ("B đó bạn à"); not ไหม ending a noun
# (ผ้าไหม, เส้นไหม: silk).
_NEGATING = r"".join(rf"(?<!\b{word}\s)" for word in ("thì", "thi", "đều", "deu", "cũng", "cung", "vẫn", "van"))
_ADDRESSED = r"".join(rf"(?<!\b{word}\s)" for word in ("bạn", "ban", "anh", "chị", "chi", "em", "cậu", "cau"))
_ASKED_AT_END = re.compile(
    rf"(?:(?<![^\W\d_])(?:(?:phải|phai|đúng|dung)\s+(?:không|khong)|chưa|hả|{_ADDRESSED}à|nhỉ)"
    rf"|(?<!\blà\s)(?<!\bla\s)(?<!bằng\s)(?<!bang\s)(?<![:：]\s){_NEGATING}(?<=\S\s)(?:không|khong)"
    r"|(?<!ผ้า)(?<!เส้น)(?<!ใย)(?<!หนอน)ไหม|มั้ย|หรือเปล่า|หรือไม่|เหรอ|หรอ|လား)\s*[.。!။]?\s*$",
    re.IGNORECASE,
)
# Filipino ba asks right after the number or after sagot ("12 ba ang sagot", "Ang sagot ay 12 ba", "Ang sagot ba ay
# 12"); elsewhere ba is another word (Vietnamese ba: three; ba lô).
_ASKED_IN = re.compile(r"(?<![^\W\d_])(?:apa|benar|betul|bukan|ada)?kah(?![^\W\d_])|(?<=\d)-?kah(?![^\W\d_])"
                       r"|(?<=\d)\s+ba(?=\s*(?:$|[.,!]|\s+ang(?![^\W\d_])))|(?<![^\W\d_])sagot\s+ba(?![^\W\d_])",
                       re.IGNORECASE)


def _asks_unmarked(sentence: str) -> bool:
    """Whether ``sentence`` asks without a question mark (:data:`_ASKED_AT_END`, :data:`_ASKED_IN`)."""
    return bool(_ASKED_AT_END.search(sentence) or _ASKED_IN.search(sentence))


# What denies an answer right after it, one rule for a label and a number: "「ネガティブ」ではありません",
# "「ネガティブ」は間違い", "「긍정」이 아닙니다", "(C) is not correct", "「B」不是", "12個ではありません", "12개가 아닙니다",
# "12는 아닙니다", "விடை 12 அல்ல", "အဖြေမှာ ၁၂ မဟုတ်ပါ" (a number past its counter, quote or particle: _DENIED_AFTER; a label past its bracket, colon or
# space: _DENIAL_AFTER). A bare "not" is left out: "C) Not enough information" is an option's text.
# Chinese, Vietnamese and Thai put "not" before what they deny: "12，不是13", "12, không phải 13", "12 ไม่ใช่ 13" deny
# 13, as "12, not 13" and "12, bukan 13" do, not the answer before. Vietnamese sai is "wrong" alone, not the first
# syllable of a compound: "12, sai số không đáng kể" (error margin), sai lệch (deviation).
_ANOTHER_CANDIDATE = (r"(?:[-+−]?\$?\d|[A-Za-z\u0e01-\u0e2e甲乙丙丁\u2460-\u2473]"
                      r"(?![^\W\d_]|[\u0e31\u0e34-\u0e3a\u0e47-\u0e4e]))")
_DENIAL_WORDS_AFTER = (
    r"では(?:なく|ない|ありません|なかった)|じゃ(?:なく|ない|ありません)|でない|でもない|でなく|とは(?:言え|いえ|思|限ら)"
    r"|は(?:間違|誤|不正解|違)|(?:이|가)?\s*아(?:니|닙|닌|님|냐)|[은는]\s*(?:오답|틀|잘못)"
    r"|(?:is|are|was|were)\s+(?:not|wrong|incorrect)(?![^\W\d_])|(?:is|are|was|were)n['’]t"
    rf"|(?:不是|并非|並非|không phải|khong phai|ไม่ใช่)(?!\s*(?:là\s+|la\s+)?{_ANOTHER_CANDIDATE})|ผิด|ไม่ถูก"
    r"|(?:sai(?!\s+(?:số|lệch|lech|sót|khác|khac|biệt|biet|phân)(?![^\W\d_]))|không đúng|khong dung"
    r"|salah(?!\s+satu)|tidak (?:benar|tepat))(?![^\W\d_])"
    r"|(?:அல்ல|இல்லை)(?![\u0b80-\u0bff])|မဟုတ်"
)
_DENIED_AFTER = re.compile(rf"^[^\s\d]{{0,3}}?\s*(?:{_DENIAL_WORDS_AFTER})", re.IGNORECASE)
# "42 or so" approximates one number; it offers no second.
# Vietnamese hay is "or" too, but "good" before an intensifier ("B, hay quá": great).
_OR_WORDS = (r"or|atau|hoặc|hay(?!\s+(?:quá|lắm|đấy|thật|ghê|nhất|đó|nhỉ))|หรือ|または|もしくは|あるいは|或者?|还是|還是"
             r"|또는|혹은|내지는|내지|அல்லது")
# "And" before another option's label or a number names a second answer ("A dan B", "ก และ ข", "12 và 13"); before a
# word it goes on about the answer ("Jawabannya B dan alasannya ...").
_AND_WORDS = r"and|dan|và|va|และ|กับ|和|与|與|및|மற்றும்"
# English "I" before a contraction or a verb is the pronoun that starts a clause ("12 and I am sure", "C and I'm
# confident"), not a label; read casefolded too, as the text rule reads it.
_I_CLAUSE = (r"i(?:['’]|\s+(?:am|think|believe|guess|was|have|had|would|will|can|could|checked|found|got|get|chose"
             r"|choose|picked|pick|double-checked|verified|feel|hope|know|see)(?![^\W\d_]))")
_AND_ANOTHER = (rf"(?:{_AND_WORDS})(?![^\W\d_])(?=\s*(?:option\s+|ข้อ\s*)?[(\[]?"
                rf"(?:(?!{_I_CLAUSE})[^\W\d_]|[-+−]?\$?\d+)"
                rf"{_WORD_END})")
_CHOICES = rf"(?!or\s+so(?![^\W\d_]))(?:{_OR_WORDS})(?![^\W\d_])"
# か before a counter (12か月, 3か所, 5か国: "12 months", not "12 or") counts; the ヶ, ケ, カ and 箇 spellings never
# read as "or".
_COUNTER_KA = r"か(?=[月所国國条條年村町寺校店処])"
# A range offers every number in it ("12-13 apel", "12～13個", "12–13"); a dash before an equation is arithmetic
# ("12-3=9"). Words are left out: "from 10 to 12" (10から12に, dari 10 sampai 12, từ 10 đến 12) is as often a change
# as a range, and its second number the answer.
_RANGE = r"\s?[-–—~〜～]\s?(?=[-+−]?\d+(?:[.,]\d+)*(?![\d.,]*\s*[=+*/^×÷]))"
# "12 (atau 13)", "B（または C）": the choice in brackets is a choice all the same.
# Numbers listed ("12, 13, 14 중 하나", "12、13、14のどれか", "2, 3번") and circled labels side by side ("①②③④",
# "③, ④") offer candidates; none of them is the pick. A counter may come between (one character: "12개, 13개"), not
# a clause that goes on ("13個で、12個ではない", "13개이고, 12개는 아니다"); the same number again is no second one
# ("= 4, 4").
_LISTED = rf"[-+−]?\$?\d+(?:[.,]\d+)*|[{CIRCLED_DIGITS}]"
_LISTED_NEXT = re.compile(rf"^(?:[^\s\d\u3040-\u309f]?\s*[,、，]\s*|\s*(?=[{CIRCLED_DIGITS}]))(?P<listed>{_LISTED})")
_LISTED_BEFORE = re.compile(rf"(?P<listed>{_LISTED})(?:[^\s\d\u3040-\u309f]?\s*[,、，]\s*|(?<=[{CIRCLED_DIGITS}])\s*)$")
# Korean 나/이나 between two numbers is "or" ("12나 13", "12개나 13개"); before a word it is "as many as" (12개나 먹었다)
_KO_OR_AFTER = r"[^\s\d]{0,3}?나\s*(?=[-+−]?\$?\d)"
# Filipino o ("or") between two numbers ("12 o 13"; Spanish and Italian write it so too) is a choice in any reply.
# Filipino at ("and") is a word other languages' prose holds ("12 at 5% interest", "B at 12", "-1 at 2", "12 at 13"
# in Vietnamese): it names a second answer only in Tagalog (:func:`_tagalog`), and only before a label or number that
# ends the sentence ("B at C", "12 at 13").
_TL_OR_AFTER = r"\s+o(?=\s+[-+−]?\$?\d)"
_TL_AND = r"at(?=\s+(?:[^\W\d_]|[-+−]?\$?\d+(?:[.,]\d+)*)\s*[.。!]?\s*$)"
_TL_CHOICE_AFTER = re.compile(rf"^\s+{_TL_AND}", re.IGNORECASE)
_TL_CHOICE_BEFORE = re.compile(r"\d\s+at\s*$", re.IGNORECASE)
_TL_ALTERNATIVE = re.compile(rf"^{_TL_AND}", re.IGNORECASE)
_TAGALOG_LANGUAGES = frozenset({"tl", "fil"})
# A Tagalog lead-in: what says a reply is Tagalog when its row names no language ("Ang sagot ay", "Sagot:", "Kaya").
_TAGALOG_LEAD = re.compile(r"(?<![^\W\d_])(?:sagot|kaya)(?![^\W\d_])", re.IGNORECASE)


def _tagalog(text: str, language: str | None) -> bool:
    """Whether ``text`` is read as Tagalog (Filipino), whose o, at are "or", "and": the prompt's ``language`` is tl or
    fil; without one, the reply has a Tagalog lead-in (:data:`_TAGALOG_LEAD`)."""
    if language:
        return re.split(r"[-_]", language.casefold())[0] in _TAGALOG_LANGUAGES
    return _TAGALOG_LEAD.search(text) is not None


# A unit word or two does not part the alternatives: "7 apples or 8 apples", "7 apel, atau 8 kalau ...", "7 quả hay
# 8 quả"; the or-word must then offer another number ("12 hours or more" states 12, as "42 or so" does 42), which
# :func:`_another_choice` weighs.
_UNIT_THEN_CHOICE = re.compile(rf"^(?P<unit>(?:\s?[^\W\d_]+){{1,2}})(?:\s*[,，]\s*|\s+){_CHOICES}(?:\s+[^\W\d_]+){{0,2}}?"
                               r"\s*[(（\[]?\s*(?P<other>[-+−]?\$?\d+(?:[.,]\d+)*%?)", re.IGNORECASE)
_CHOICE_AFTER = re.compile(
    rf"^(?:[^\s\d]{{0,3}}?\s*[(（\[]?\s*(?:(?!{_COUNTER_KA})か(?!ら)|{_CHOICES}|{_AND_ANOTHER})|{_RANGE}"
    rf"|{_KO_OR_AFTER}|{_TL_OR_AFTER})", re.IGNORECASE)
# Nor does a sentence end: "The answer is 7. Or 8.", "答えは7個。または8個。" offer 8 as the other choice.
_CHOICE_NEXT = re.compile(rf"^[\s.。!！]*{_CHOICES}[\s,，]*(?:[^\W\d_]+\s+){{0,2}}?[(（\[]?"
                          r"(?P<other>[-+−]?\$?\d+(?:[.,]\d+)*%?)", re.IGNORECASE)
# The unit words right after a number ("7 apples", "12 km"), and the one after an alternative's number.
_UNIT_WORDS = re.compile(r"^\s?(?:[^\W\d_]+\s?){0,2}")
_WORD_AFTER = re.compile(r"^\s?([^\W\d_]+)")
# Words that open a condition after an alternative's number ("or 8 if you count the rotten one", "atau 8 kalau
# dihitung"): the number is offered bare, not restated in a unit.
_CONDITION_WORDS = frozenset({"if", "when", "unless", "counting", "including", "kalau", "jika", "bila", "apabila",
                              "kalo", "nếu", "neu", "khi"})


def _another_choice(number: str, unit: str, other: str, after: str) -> bool:
    """Whether ``other``, a number offered after an or-word past the answer ``number`` and its ``unit`` words, is
    another answer rather than the same one restated: never when it is the same value ("12 apples. Or 12 in total.",
    "45%, or 0.45"), and only with the first's unit word or none ("7 apples or 8 apples", "7. Or 8.", "7 apples, or 8
    if you count ..."); in another unit it restates the answer ("12 km, or 12000 m", "2 hours or 120 minutes",
    "7 days or 1 week"). A restatement read as a choice would score a right answer 0, which RL trains away from."""
    first, second = read_number(number), read_number(other)
    if first is not None and second is not None and (numbers_agree(first, second) or numbers_agree(second, first)):
        return False
    word = _WORD_AFTER.match(after)
    if word is None:
        return True
    said = word.group(1).casefold()
    return said in unit.casefold().split() or said in _CONDITION_WORDS


# The number an or-word offers right after it ("or 0.45", "or (13)").
_OFFERED_NUMBER = re.compile(r"^[\s(（\[]*(?P<other>[-+−]?\$?\d+(?:[.,]\d+)*(?:/\d+)?%?)")


def _choice_after(number: str, after: str) -> bool:
    """Whether ``after`` (what follows the answer ``number``) opens a choice (:data:`_CHOICE_AFTER`) of another value:
    "12 or 13", but not "45%, or 0.45" nor "1/2 or 0.5", the same answer written again."""
    choice = _CHOICE_AFTER.match(after)
    if choice is None:
        return False
    other = _OFFERED_NUMBER.match(after[choice.end():])
    first, second = read_number(number), read_number(other.group("other")) if other else None
    return not (first is not None and second is not None
                and (numbers_agree(first, second) or numbers_agree(second, first)))


def _unit_choice(number: str, after: str) -> bool:
    """Whether ``after`` (what follows the answer ``number``) offers another answer past its unit words
    (:data:`_UNIT_THEN_CHOICE`, :func:`_another_choice`)."""
    found = _UNIT_THEN_CHOICE.match(after)
    return found is not None and _another_choice(number, found.group("unit"), found.group("other"),
                                                 after[found.end():])


_CHOICE_BEFORE = re.compile(
    rf"(?:か|(?<![^\W\d_]){_CHOICES}|\d\s*(?:{_AND_WORDS})|\d\s?[-–—~〜～]\s?|\d[^\s\d]{{0,3}}?나|\d\s+o)\s*$",
    re.IGNORECASE)
_ASKS = re.compile(r"(?:ですか|でしょうか|吗|嗎)\s*$")


@functools.cache
def _at_point(number: re.Pattern[str]) -> re.Pattern[str]:
    """A value stated before where it is taken, up to the number that ends the sentence: "is -1 at ", "is 45 at x = "
    (English at: a point, not Tagalog's "and")."""
    return re.compile(rf"(?:is|are|was|were|=)\s+(?P<value>{number.pattern})\s+at\s+(?:[a-z]\s*=\s*)?$", re.IGNORECASE)


def _offered(part: str, start: int, end: int, tagalog: bool = False) -> bool:
    """Whether the number at ``part[start:end]`` is denied or offered as one of a choice, not stated; Tagalog's at
    only in a Tagalog reply (``tagalog``)."""
    before, after = part[:start], part[end:]
    return bool(_DENIED_BEFORE.search(before) or _DENIED_AFTER.match(after) or _choice_after(part[start:end], after)
                or _unit_choice(part[start:end], after) or _CHOICE_BEFORE.search(before)
                or (tagalog and (_TL_CHOICE_AFTER.match(after) or _TL_CHOICE_BEFORE.search(before))))


# What follows a second number that starts a clause of its own ("12, 13 would exceed the limit"): two words, the
# first no "and" or "or". That number is the subject of a new clause, not a second item of a list.
_CLAUSE_AFTER = re.compile(rf"\s+(?!(?:{_AND_WORDS}|{_OR_WORDS})(?![^\W\d_]))[^\W\d_]+\s+[^\W\d_]", re.IGNORECASE)


def _listed(part: str, start: int, end: int) -> bool:
    """Whether the number at ``part[start:end]`` is one of numbers listed (:data:`_LISTED_NEXT`,
    :data:`_LISTED_BEFORE`): no one number is committed to, while the list as a whole may be the answer (a tuple, an
    interval, "2, 3, 5"), which a math reference compares whole."""
    before, after = part[:start], part[end:]
    following = _LISTED_NEXT.match(after)
    if following and _CLAUSE_AFTER.match(after, following.end()):
        following = None  # "The answer is 12, 13 would exceed the limit."
    listed = [found.group("listed") for found in (following, _LISTED_BEFORE.search(before)) if found]
    return any(number != part[start:end] for number in listed)


# Another answer offered as right too ("B is correct. C is also correct.", "Jawabannya B, tapi C juga mungkin.", "The
# answer is 12, but 15 is also possible.", "C rin siguro", "ウも正しい"): a label or a number, then "also"/"too" (juga,
# cũng, rin, 也, も) with a word that calls it right or possible, no negation between. The reply commits to neither.
_ALSO_WORDS = r"also|too|juga|pun|cũng|cung|rin|din"
_HANGUL_LABELS = "가나다라마바"
_RIGHT_TOO = (r"correct|right|possible|valid|works?|true|plausible|acceptable|benar|betul|tepat|mungkin|masuk\s+akal"
              r"|bisa|boleh|đúng|dung|được|duoc|hợp\s+lý|hop\s+ly|tama|siguro|pwede|puwede")
_NEGATION_WORD = r"not|never|tidak|bukan|không|khong|chẳng|hindi"
_ALSO_RIGHT = re.compile(
    rf"(?<![^\W\d_])(?!I\s)(?:(?:option|choice|pilihan|opsi|phương án)\s+)?([^\W\d_]|[-+−]?\d+(?:[.,]\d+)*)(?![^\W_])"
    rf"[)\]]?\s+(?:(?:is|are|was|could\s+be|may\s+be|might\s+be|would\s+be)\s+)?"
    rf"(?:(?:{_ALSO_WORDS})(?:\s+(?!(?:{_NEGATION_WORD})(?![^\W\d_]))\S+){{0,2}}?\s+(?:{_RIGHT_TOO})"
    rf"|(?:{_RIGHT_TOO})\s+(?:{_ALSO_WORDS}))(?![^\W\d_])"
    rf"|([A-Za-zア-オ{_HANGUL_LABELS}{CIRCLED_DIGITS}]|\d+)[)」]?(?:も|也|도)\s*(?:是)?\s*"
    r"(?:正しい|正解|正确|正確|对|對|可以|可能|정답|맞)",
    re.IGNORECASE,
)


# Another number offered as what the answer may be: "The answer is 7, though it could be 8.", "Jawabannya 7, tapi
# bisa juga 8.", "Đáp án là 7, cũng có thể là 8.", "It might also be 8." opening the next sentence. The answer itself
# must be what could be (it, that, this, the answer; no subject in Indonesian and Vietnamese), and the number all it
# could be, a unit word at most before its clause ends: "Each box could be 3 by 4", "the count may be 2n", "kita bisa
# 3 kali membagi" (can do it 3 times) offer no other answer.
_MAY_BE = re.compile(
    r"(?:(?<![^\W\d_])(?:it|that|this|(?:the\s+)?answer)\s+(?:could|might|may)(?:\s+(?:also|well|even))?\s+be"
    r"|(?<![^\W\d_])(?:bisa|boleh|mungkin)(?:\s+juga)?(?:\s+(?:jadi|saja))?"
    r"|(?<![^\W\d_])(?:cũng\s+|cung\s+)?(?:có\s+thể|co\s+the)\s+(?:là|la))"
    r"\s+([-+−]?\$?\d+(?:[.,]\d+)*)(?![\w.,]*\d)(?=\s?(?:[^\W\d_]+)?\s*(?:$|[.,;:!?。，！？)]|\s+(?:too|instead)\b))",
    re.IGNORECASE,
)


def _may_be_another(line: str, following: str, committed: str) -> bool:
    """Whether the answer's sentence ``line``, or the sentence ``following`` it when it opens so, offers another
    number than ``committed`` (normalised) as what the answer may be (:data:`_MAY_BE`). A later sentence's "may be"
    is about something else ("Note that for general n the count may be 2n")."""
    found = [match.group(1) for match in _MAY_BE.finditer(line)]
    opening = _MAY_BE.match(following.lstrip(" \t.。!！"))
    found += [opening.group(1)] if opening else []
    return any(normalise_text(other) != committed for other in found)


def _also_right(text: str, committed: str) -> bool:
    """Whether ``text`` (from the answer on) offers an answer other than ``committed`` (normalised) as right or
    possible too (:data:`_ALSO_RIGHT`)."""
    return any(normalise_text(found.group(1) or found.group(2)) != committed for found in _ALSO_RIGHT.finditer(text))


# The labels a question lists its options by, in order ("A. Hà Nội\nB. Huế", "ก. 10\nข. 12", "ア．東京\nイ．大阪").
_LABEL_ORDERS = ("abcdefghij", "กขคงจฉ", "アイウエオカ", "가나다라마바", "甲乙丙丁戊己", "①②③④⑤⑥⑦⑧⑨⑩")
_LISTED_OPTION = re.compile(r"^\s*[(\[]?([^\W\d_])[.)\]:：．、]")
# A circled label needs no mark after it ("① 서울\n② 부산"); read before NFKC, which makes it a digit.
_LISTED_CIRCLED = re.compile(rf"^\s*([{CIRCLED_DIGITS}])")
# A lettered line with working is a step, not an option's text ("a) First find the cost: 3 × 4 = 12."): arithmetic
# worked to an '=', or more words than an option's text runs to. A list of steps gives its last number.
_WORKING = re.compile(r"\d\s*[-+×*/÷·]\s*\d[^=\n]*=")
_OPTION_TEXT_WORDS = 8


def listed_options_start(text: str) -> int | None:
    """Where the list of labelled options that ends ``text`` starts (two lines or more that open with consecutive
    option labels: "A. 10\nB. 12\nC. 14", "① 서울\n② 부산"); None when its last lines list none. A reply that only lists the
    question's options commits to none of them; lettered lines of working (:data:`_WORKING`, or more than
    :data:`_OPTION_TEXT_WORDS` words) are steps, no option list."""
    start, label = None, None
    lines = text.splitlines(keepends=True)
    offset = len(text)
    count = 0
    for line in reversed(lines):
        offset -= len(line)
        if not line.strip():
            continue
        listed = _LISTED_OPTION.match(unicodedata.normalize("NFKC", line).casefold()) or _LISTED_CIRCLED.match(line)
        if listed is not None and (_WORKING.search(line, listed.end())
                                   or len(line[listed.end():].split()) > _OPTION_TEXT_WORDS):
            break  # a step
        if listed is None or not (label is None or any(order.find(listed.group(1)) + 1 == order.find(label) > 0
                                                       for order in _LABEL_ORDERS)):
            break
        start, label, count = offset, listed.group(1), count + 1
    return start if count >= 2 else None


@dataclass(frozen=True)
class Commitment:
    """What a reply commits to: ``text``, the part that holds its answer (the last ``\\boxed{...}`` with a number in
    it, else the last such box, as written; the sentence after the last committing lead-in; else the whole reply), and
    ``number``, the number token it commits to in that part (the box's last, the lead-in sentence's first after its
    last '=', the reply's last), None when there is none. Both are read after :func:`plain_marks`."""

    text: str
    number: str | None


def committed_answer(answer: str, language: str | None = None) -> Commitment:
    """The answer ``answer`` (the text after the think block) commits to, numbers read as ``language`` writes them.

    In Japanese and Chinese (or a row without a language whose reply is), Han numerals are numbers too: 1万2千
    wherever it stands, and 四十二 or 两千 where that part of the reply (the box, the committed sentence, the rest
    after the lead-in, the whole reply) writes no digits, so a name (一郎, 九州) never outweighs a digit answer."""
    found = number_re(language)
    reading = cjk_reading(answer, language)
    answer = plain_number_words(plain_marks(answer, reading), language)  # 15 ribu, minus 5, 1 1/2, ½

    def numbers_in(part: str) -> list[str]:
        return found.findall(part) or han_numbers(part, reading)

    tagalog = _tagalog(answer, language)
    boxes = boxed_spans(answer)
    for start, content, end in reversed(boxes):
        numbers = numbers_in(answer[content:end])
        if numbers:
            return Commitment(answer[start : end + 1], numbers[-1])
    if boxes:
        start, _, end = boxes[-1]
        return Commitment(answer[start : end + 1], None)
    lead_in = committing_lead_in(answer)
    if lead_in:
        tail = corrected(answer[lead_in.end() :])
        # "The answer is 12 - 5 = 7": a worked line commits to what its last '=' gives
        line = committed_sentence(tail)
        instead = _taken_back(line)
        part = line[instead.end() :] if instead else line  # "答えは12個ではなく10個です" commits to 10
        if instead and not numbers_in(part):  # "விடை 12 அல்ல.": nothing after the turn, so it denies
            part = line
        part = part.rsplit("=", 1)[1] if "=" in part else part
        numbers = numbers_in(part)
        listed = False
        if numbers:
            start = part.find(numbers[0])
            if _offered(part, start, start + len(numbers[0]), tagalog):  # "not 12", "12 or 13": no commitment
                return Commitment("", None)
            # "12, 13, 14 중 하나", "(3, 4)", "2, 3, 5": no one number, the sentence whole for a math reference
            listed = _listed(part, start, start + len(numbers[0]))
            following = tail.strip()[len(line):]
            other = _CHOICE_NEXT.match(following)
            unit = _UNIT_WORDS.match(part[start + len(numbers[0]):])
            if other and _another_choice(numbers[0], unit.group(0) if unit else "", other.group("other"),
                                         following[other.end():]):
                return Commitment("", None)  # "The answer is 7. Or 8."
        numbers = numbers or numbers_in(line) or numbers_in(tail)  # "The answer is:\n42"
        if numbers and (_also_right(tail, normalise_text(numbers[0]))  # "12, but 15 is also possible"
                        or _may_be_another(line, tail.strip()[len(line):], normalise_text(numbers[0]))):
            return Commitment("", None)
        if numbers and _states_another(answer_before(answer, lead_in), line, numbers[0], language):
            return Commitment("", None)  # "答えは1。答えは2。"
        return Commitment(line if line.strip(" :：") else tail.strip(), numbers[0] if numbers and not listed else None)
    numbers = numbers_in(answer)
    listed = listed_options_start(answer)
    if numbers and listed is not None and answer.rfind(numbers[-1]) >= listed:
        return Commitment(answer, None)  # "A. 10\nB. 12\nC. 14": a list of the options, no answer
    if numbers:
        # the sentence that holds the last number: a question, a denial or a choice commits to nothing
        end = answer.rfind(numbers[-1]) + len(numbers[-1])
        start = end - len(numbers[-1])
        opened = max(0, *(m.end() for m in _SENTENCE_END.finditer(answer, 0, start)), answer.rfind("\n", 0, start) + 1)
        closing = _SENTENCE_END.search(answer, end)
        sentence_end = closing.start() if closing else len(answer)
        sentence = answer[opened:sentence_end]
        asks = ((closing is not None and answer[closing.start()] in "?？") or _ASKS.search(sentence)
                or _asks_unmarked(sentence))
        instead = _taken_back(answer, opened, start)
        part_start = instead.end() if instead else opened
        if _WRONG_LEAD_IN.search(answer, part_start, start):  # "오답은 3입니다.", "The wrong answer is 12."
            return Commitment(answer, None)
        said = answer[part_start:sentence_end]
        point = None if tagalog else _at_point(found).search(answer, part_start, start)
        if point and not answer[end:sentence_end].strip():
            # "The minimum value is -1 at 2.": the value, not where it is taken ("at x = 2")
            return Commitment(answer, point.group("value"))
        if (asks or _offered(said, start - part_start, end - part_start, tagalog)
                or _listed(said, start - part_start, end - part_start)):
            return Commitment(answer, None)
        if _ALSO_RIGHT.search(sentence):  # "12 apples. 15 is also possible.": offered as one more, not stated
            return Commitment(answer, None)
    return Commitment(answer, numbers[-1] if numbers else None)


class Number(NamedTuple):
    """A number as written: its value (a percent sign dropped: 45% is 45), whether it carried one, and its value
    exactly as written (an integer, a finite decimal, a fraction: 1000001, 0.1, 1/3), None where it is not exact (an
    expression's value such as \\sqrt{2} or \\pi)."""

    value: float
    percent: bool
    exact: Fraction | None = None


_PERCENT_END = re.compile(rf"(?:{_PERCENT})$")


def read_number(text: str, language: str | None = None) -> Number | None:
    """Read ``'1,234.5'``, ``'$12'``, ``'-3/4'``, ``'\\frac{3}{4}'``, ``'45%'``, ``'−2'``, ``'2,5'``, ``'四十二'``,
    ``'15 ribu'``, ``'minus 5'``, ``'1 1/2'``, ``'½'`` (:func:`tempa.alignment.numbers.plain_number_words`); None when
    ``text`` is no number.

    Numbers read as ``language`` writes them (:func:`tempa.alignment.numbers.plain_number`): ``1,500`` is 1500 and
    ``1.500.000`` a million everywhere, ``2,5`` and ``0,125`` have a decimal comma; ``1.500`` is 1500 in a language
    with a decimal comma (Indonesian, Vietnamese, ...) and 1.5 in others (and without a language).
    """
    cleaned = unicodedata.normalize("NFKC", plain_number_words(text, language)).strip()  # before NFKC makes ½ 1⁄2
    cleaned = plain_cjk_number(cleaned, cjk_reading(cleaned, language)) or cleaned  # 四十二, 1万2千, 三分之一
    cleaned = cleaned.replace("−", "-").replace("$", "").rstrip(".")
    percent = bool(_PERCENT_END.search(cleaned))
    cleaned = re.sub(r"^\\(?=\d)", "", _PERCENT_END.sub("", cleaned).removesuffix("\\"))  # \$12
    sign, cleaned = (-1.0 if cleaned[:1] == "-" else 1.0), cleaned.lstrip("+-").strip()
    if re.match(r"\\[dt]?frac\{-", cleaned):  # \frac{-3}{4}
        sign, cleaned = -sign, cleaned.replace("{-", "{", 1)
    frac_tex = re.fullmatch(_FRAC_PARTS, cleaned)
    parts = frac_tex.groups() if frac_tex else cleaned.split("/") if cleaned.count("/") == 1 else (cleaned,)
    plain = [plain_number(part, language) for part in parts]
    if None in plain:
        return None
    exact = [Fraction(p) for p in plain if p is not None]
    if len(exact) == 2:
        if not exact[1]:
            return None
        quotient = int(sign) * exact[0] / exact[1]
        return Number(float(quotient), percent, quotient)
    value = sign * float(exact[0])
    return Number(value, percent, int(sign) * exact[0]) if math.isfinite(value) else None


def reference_number(expected: object, language: str | None = None) -> Number | None:
    """A reference answer as a number: a number in the data is its value; text is read as ``language`` writes it,
    a unit or currency dropped ("12,000円", "12 cm": :func:`tempa.alignment.numbers.unit_number`). None when the
    reference is no number (text, or math such as x^2+1)."""
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        # A float in the data was not written: a float32 column's 0.1 loads as 0.10000000149011612 and a computed
        # 0.1 + 0.2 is 0.30000000000000004, so only an integral one (12.0) is exact; any other is compared within
        # the tolerance, as an expression's value is.
        integral = isinstance(expected, int) or (math.isfinite(expected) and expected.is_integer())
        return Number(float(expected), False, Fraction(int(expected)) if integral else None)
    text = str(expected)
    return read_number(unit_number(text, language) or text, language)


def math_verify_timeout() -> int | None:
    """math-verify's timeout in seconds: its timeouts use SIGALRM, which only the main thread may set."""
    import threading

    return 5 if threading.current_thread() is threading.main_thread() else None


_BOX = re.compile(r"\\boxed\s*\{(.*)\}", re.DOTALL)


_MAX_EXPONENT = 1000  # 9^{9^{9^9}} is a number sympy would work on for hours: refused, as any exponent this size


def _closed_arithmetic(expr: object) -> bool:
    """Whether ``expr`` (sympy) is numbers, pi and e under + - * / and powers with a number for exponent of at most
    :data:`_MAX_EXPONENT`: what evaluates at once. Anything else (a symbol, a function, a factorial, a power tower)
    is not read as a value."""
    import sympy

    if isinstance(expr, sympy.Number | sympy.NumberSymbol):
        return True
    if isinstance(expr, sympy.Pow):
        base, exponent = expr.args
        return (isinstance(exponent, sympy.Number) and abs(exponent) <= _MAX_EXPONENT
                and _closed_arithmetic(base))
    if isinstance(expr, sympy.Add | sympy.Mul):
        return all(_closed_arithmetic(arg) for arg in expr.args)
    return False


def expression_value(latex: str) -> Number | None:
    """The value of a LaTeX expression that is one number (``2^{10}``, ``3.5\\times10^4``, ``\\sqrt{16}``), as
    math-verify parses it, exact where sympy keeps it an integer or a fraction (``2^{10}``, ``\\frac{7}{2}``), not
    where it is irrational (``\\sqrt{2}``, ``\\pi``) or sympy's rounded decimal (``1.05^{20}``); None when it is no
    closed arithmetic (``x+1``, text, ``9^{9^{9^9}}``)."""
    import sympy
    from math_verify import parse

    try:
        parsed = parse(f"${latex}$", parsing_timeout=math_verify_timeout())
    except Exception:  # math-verify's parser raises what sympy raises; an unreadable box is no number
        return None
    for item in parsed:
        if not _closed_arithmetic(item):
            continue
        try:
            value = float(item)
        except (TypeError, ValueError, OverflowError):
            continue
        if not math.isfinite(value):
            continue
        evaluated = item.doit()  # math-verify leaves 10^{7} + 1 unevaluated
        if isinstance(evaluated, sympy.Rational):
            return Number(value, False, Fraction(int(evaluated.p), int(evaluated.q)))
        # a Float's digits are sympy's rounding (1.05^{20} is 2.65329770514442), not a decimal the reply wrote
        return Number(value, False, None)
    return None


# One math span: $...$, \(...\) (what a reply's committed sentence may give its answer as: The answer is $2^{10}$.)
_MATH_SPAN = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)")


def committed_number(answer: str, language: str | None = None,
                     commitment: Commitment | None = None) -> Number | None:
    """The number ``answer`` commits to (:func:`committed_answer`, or ``commitment`` when the caller has it). A box,
    the last math span of a lead-in's sentence, or one that ends the reply, holding an expression rather than one
    number (``\\boxed{2^{10}}``, ``The answer is $\\sqrt{16}$.``, ``... so $2^{10}$.``) is the expression's value,
    not its last number."""
    commitment = commitment or committed_answer(answer, language)
    box = _BOX.fullmatch(commitment.text)
    spans = list(_MATH_SPAN.finditer(commitment.text))
    if box is not None:
        latex: str | None = box.group(1)
    elif spans and (commitment.text != answer or not commitment.text[spans[-1].end():].strip(" .。!！")):
        latex = spans[-1].group(1) or spans[-1].group(2)  # a lead-in's sentence; else a reply that ends with it
    else:
        latex = None
    if latex is not None and read_number(latex, language) is None:
        value = expression_value(latex)
        if value is not None:
            return value
    return read_number(commitment.number, language) if commitment.number else None


def _decimal_ends(value: Fraction) -> bool:
    """Whether ``value`` is a finite decimal (0.25, 12; not 1/3): its denominator has no prime factor but 2 and 5."""
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


# The tolerance for two numbers that cannot be equal as written, where no caller sets one.
DEFAULT_REL_TOL = 1e-6


def numbers_agree(expected: Number, got: Number, rel_tol: float | None = None, abs_tol: float = 1e-9) -> bool:
    """Whether ``got`` gives ``expected``. ``rel_tol`` None (the answer reward, an accuracy suite that sets none): two
    numbers exact as written (integers, finite decimals, fractions: :attr:`Number.exact`) must be equal: 1,000,001
    does not give 1000000, nor 1234568 1234567 (a tolerance relative to the value let large amounts, as rupiah and
    dong write them, pass one off); 0.5 gives 1/2 and 2/6 gives 1/3. :data:`DEFAULT_REL_TOL` and ``abs_tol`` apply
    only where the two cannot be equal as written: one side is no exact value (an expression's, \\sqrt{2} or \\pi, or
    a float reference that is no integer), or a finite decimal stands for a fraction whose decimal never ends
    (0.3333333 for 1/3 agrees; 0.33 does not). A ``rel_tol`` set (an accuracy suite's, for approximate answers) is
    the tolerance of every comparison: 3.1416 gives 3.14 within 0.01. A percentage is its number as written and,
    against a number without %, also its hundredth: 45% gives 45 and 0.45 (and a reference of 45% is given by 45 and
    0.45); 45% does not give 0.45%."""
    tolerance = DEFAULT_REL_TOL if rel_tol is None else rel_tol

    def same(a: Number, b: Number, a_scale: int = 1, b_scale: int = 1) -> bool:
        if rel_tol is None and a.exact is not None and b.exact is not None:
            a_exact, b_exact = a.exact / a_scale, b.exact / b_scale
            if _decimal_ends(a_exact) == _decimal_ends(b_exact):
                return a_exact == b_exact
        return math.isclose(a.value / a_scale, b.value / b_scale, rel_tol=tolerance, abs_tol=abs_tol)

    if same(got, expected):
        return True
    if got.percent != expected.percent:
        return same(got, expected, a_scale=100) if got.percent else same(got, expected, b_scale=100)
    return False


# Letter runs a formula may hold besides one-letter variables: function names and LaTeX's words once its backslash
# is gone (\frac is "frac"). Any other run of two letters or more, or any letter of a script other than Latin or
# Greek (時間, と, 組), is prose.
_MATH_WORDS = frozenset({
    "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "log", "ln", "lg",
    "exp", "lim", "max", "min", "mod", "gcd", "lcm", "det", "sqrt", "frac", "dfrac", "tfrac", "pi", "infty", "cdot",
    "times", "div", "pm", "mp", "le", "ge", "leq", "geq", "neq", "ne", "approx", "circ", "deg", "left", "right",
})
_MATH_SIGN = re.compile(r"[\d\\=+*/^<>≤≥≠√π]")
_LETTER_RUN = re.compile(r"[^\W\d_]+")
_LATIN_OR_GREEK = re.compile(r"[A-Za-zα-ωΑ-Ω]+")


def is_math_reference(expected: object) -> bool:
    """Whether a reference that is no number (:func:`reference_number`) is math: an expression, an equation, an
    interval or a tuple (``x^2+1``, ``\\sqrt{3}``, ``x=2, y=3``, ``(2, 3)``) with a digit, a backslash or an
    operator in it and no prose word. Prose with numbers in it (``2時間30分``, ``4月1日``, ``2と3``, ``縦4cm横5cm``) is
    text: math-verify read one of its numbers (the last), so ``30`` gave ``2時間30分``. The answer reward's ``auto``
    and the accuracy suite both decide by this (:func:`gives_reference`)."""
    text = unicodedata.normalize("NFKC", str(expected))
    if not _MATH_SIGN.search(text):
        return False  # "A", "Yes", "(A)": a label
    for word in _LETTER_RUN.findall(re.sub(r"\\[A-Za-z]+", " ", text)):
        if not _LATIN_OR_GREEK.fullmatch(word) or (len(word) > 1 and word.casefold() not in _MATH_WORDS):
            return False
    return True


def _bare_math(text: str) -> str:
    """``text`` without a trailing copula or full stop and without ``$`` delimiters: what a math answer is written
    as, compared by :func:`math_equal` as written before math-verify reads it."""
    text = _COPULA.sub("", unicodedata.normalize("NFKC", text).strip().rstrip("。.")).strip()
    box = _BOX.fullmatch(text)  # \boxed{(2,3)} is (2,3): spaces aside it equals (2, 3), as outside a box
    text = box.group(1).strip() if box else text
    return text.strip("$").strip() if text.startswith("$") and text.endswith("$") else text


def _stated_math(text: str) -> str:
    """What ``text`` (bare, :func:`_bare_math`) commits to as math: itself, or what its last line states after a
    copula when that is all math (not "(2, 3) or (3, 2)")."""
    if is_math_reference(text):
        return text
    lines = [line for line in text.splitlines() if line.strip()]
    stated = _STATED_AFTER_COPULA.search(lines[-1].strip().rstrip("。.")) if lines else None
    return stated.group(1).strip() if stated and is_math_reference(stated.group(1)) else text


def math_equal(gold: str, answer: str, language: str | None) -> bool | None:
    """math-verify equality of ``answer`` (what a reply commits to) and the reference ``gold``, numbers read as
    ``language`` writes them; None when math-verify cannot parse the gold. A gold that is math
    (:func:`is_math_reference`), and an answer that is (a trailing copula dropped), are read in ``$...$``: bare,
    math-verify read only the last number of ``x=2, y=3`` and of ``(2, 3)``, so ``x=3`` gave ``x=2, y=3`` and the
    tuple never matched. Both written alike, spaces aside (``(2,3)`` and ``(2, 3)``), is equal without it."""
    from math_verify import parse, verify

    bare_gold, bare_answer = _bare_math(gold), _stated_math(_bare_math(answer))
    if is_math_reference(bare_gold) and "".join(bare_gold.split()) == "".join(bare_answer.split()):
        return True
    gold, answer = math_text(gold, language), math_text(answer, language)
    if is_math_reference(bare_gold):
        gold = f"${math_text(bare_gold, language)}$" if not re.search(r"\$|\\[(\[]", bare_gold) else gold
        if is_math_reference(bare_answer) and not re.search(r"\$|\\[(\[]", bare_answer):
            answer = f"${math_text(bare_answer, language)}$"
    else:
        # Bare LaTeX (2\sqrt{3}, as data files hold a reference; "The answer is 2\sqrt{3}." as a reply commits to it)
        # was read as its first number: 2\sqrt{5} gave 2\sqrt{3}. Delimited, it is read whole.
        gold, answer = _delimited(gold), _delimited(answer)
    timeout = math_verify_timeout()
    parsed_gold = parse(gold, parsing_timeout=timeout)
    if not parsed_gold:
        return None
    return bool(verify(parsed_gold, parse(answer, parsing_timeout=timeout), timeout_seconds=timeout))


def _delimited(text: str) -> str:
    """``text`` in ``$...$`` when it is one bare LaTeX expression (a backslash, no delimiter, no space)."""
    bare = text.strip().rstrip(".。")
    if "\\" in bare and not re.search(r"\s|\$|\\[(\[]", bare):
        return f"${bare}$"
    return text


def gives_reference(answer: str, expected: object, language: str | None = None, *, rel_tol: float | None = None,
                    abs_tol: float = 1e-9, commitment: Commitment | None = None) -> bool:
    """Whether ``answer`` (the text after the think block) gives the one reference ``expected``: the rule of the
    answer reward's ``auto`` and of the accuracy suite alike. A number (:func:`reference_number`) is compared with
    the committed number by value (:func:`numbers_agree`); math (:func:`is_math_reference`) with the committed part by
    math-verify (:func:`math_equal`); anything else, prose with numbers in it too, is text
    (:func:`text_answer_matches`)."""
    expected_number = reference_number(expected, language)
    if expected_number is not None:
        got = committed_number(answer, language, commitment)
        return got is not None and numbers_agree(expected_number, got, rel_tol=rel_tol, abs_tol=abs_tol)
    if is_math_reference(expected):
        commitment = commitment or committed_answer(answer, language)
        equal = math_equal(str(expected), commitment.text, language)
        if equal is not None:
            return equal
    return text_answer_matches(answer, expected, language)


# The word that states what something is, before an answer at the end of a line: "The capital of France is Paris.",
# "Ibu kota Indonesia adalah Jakarta.", "Thủ đô là Hà Nội.", "เมืองหลวงคือ กรุงเทพ".
_COPULAS = "is|are|was|were|adalah|ialah|merupakan|là|คือ|ay"
# A line that states something after a copula ("The point is (2, 3).", "The solution is x = 2, y = 3.").
_STATED_AFTER_COPULA = re.compile(rf"(?:^|\s)(?:{_COPULAS})\s+(\S.*)$", re.IGNORECASE)
# A topic, a label or a subject that names a wrong answer ("不正解は", "오답은", "Wrong answer:", "The wrong answer
# is"): what follows it is what the reply rejects.
_WRONG_TOPIC = re.compile(rf"{_WRONG_ANSWER}\s*(?:は|은|는|{_COPULAS})?$", re.IGNORECASE)
_WRONG_OPTION_TOPIC = re.compile(rf"{_WRONG_OPTION}\s*(?:は|{_COPULAS})?$", re.IGNORECASE)
_ONLY_WRONG_OPTION = re.compile(rf"(?:the\s+)?{_WRONG_OPTION}\s*(?:は|{_COPULAS})?", re.IGNORECASE)


def _names_wrong(prefix: str, *, alone: bool = True) -> bool:
    """Whether ``prefix`` (what comes before an answer, normalised) names a wrong answer (:data:`_WRONG_TOPIC`), or
    the incorrect option after something else or where the reply states more (``alone`` False): what follows it is
    not the reply's answer."""
    prefix = prefix.strip()
    if _WRONG_TOPIC.search(prefix):
        return True
    return _WRONG_OPTION_TOPIC.search(prefix) is not None and not (alone and _ONLY_WRONG_OPTION.fullmatch(prefix))


# What Japanese, Korean, Thai and Burmese put after a stated answer: "答えはBです。", "정답은 B입니다", "정답은 나다",
# "คำตอบคือ B ครับ", "အဖြေမှာ B ဖြစ်သည်".
# Korean writes its plain copula 다 right after a label ("정답은 나다."), only after one of 가-마 alone: 바다 is "sea".
_COPULA = re.compile(r"\s*(?:です|でした|である|だ|となります|になります|입니다|ครับ|ค่ะ|ဖြစ်(?:ပါ)?သည်|(?<=^[가나다라마])다)$")
# A last sentence that ends in a Japanese or Korean copula states its answer before it ("ネガティブです。", "긍정입니다."),
# as "Positive." does, and so does one that ends in its conjecture or in "I think it is" ("ネガティブでしょう。",
# "ネガティブだと思います。": a model's usual way of stating); a question ("ネガティブですか？", "ネガティブでしょうか？"),
# a denial ("ネガティブではありません。") or a thought denied ("ネガティブだとは思いません。") ends otherwise.
_FINAL_COPULA = re.compile(r"(?:(?:です|である|だ|でしょう|だろう)?と(?:思(?:います|う|われます|われる)"
                           r"|考え(?:ます|る|られます|られる))|です|である|だ|でしょう|だろう|입니다)$")
# What names the thing the answer is about, right before it: the Japanese topic ("この文は"; not the "or" of または,
# もしくは, あるいは, ないしは: "ポジティブまたはネガティブです" names two), the Korean topic word ("이 문장은"; not 또는,
# 혹은 or 내지는, "or"), or a connective that concludes or that states with a guess ("つまり、", "したがって、",
# "たぶん、").
_NOT_AN_OR = r"(?<!また)(?<!もしく)(?<!あるい)(?<!或い)(?<!又)(?<!若しく)(?<!ないし)(?<!乃至)"
_TOPIC_WORD = (rf"[^\W\d_]{_NOT_AN_OR}は$"
               r"|(?:^|\s)(?!또는$|혹은$|내지는$)[^\W\d_]+[은는]$")
_CONNECTIVES = (r"つまり|したがって|従って|よって|ゆえに|故に|なので|だから|結論として|やはり|やっぱり|たぶん|多分|おそらく"
                r"|恐らく|きっと")
# Words that take back the answer just given: Japanese, Korean, English, Vietnamese (with and without diacritics),
# Indonesian and Malay, Thai, Filipino, Chinese. Filipino mali ("wrong") alone only before a comma ("Mali, C pala."):
# "Mali C." and "Mali ang C." say C is wrong, not that C is the answer.
_RETRACTIONS = (r"いや|いいえ|いえ|正しくは|訂正します|실은|아니요|아니|no,?\s*wait|wait,?\s*no|oops|scratch that"
                r"|(?:à|ồ|a|o)\s+(?:không|khong)|nhầm rồi|sửa lại|sua lai|ralat|koreksi|ไม่สิ|ไม่ใช่สิ|เดี๋ยวนะ"
                r"|teka|mali pala|ay,?\s+mali|mali(?=\s*[,，])|不对|不對|更正|说错了|說錯了|错了|錯了|哦不|噢不")
# What may come between a retraction and its correction: an admission ("salah", "I was wrong", 間違えました) and a
# lead ("yang benar", "seharusnya", "phải là", "it's", "the answer is", 应该是); "actually" and its kin retract only
# before a lead ("Actually, it's C", not "Actually, this is because ...").
_ADMISSIONS = (r"salah|keliru|nhầm(?:\s+rồi)?|nham|sai\s+rồi|that['’]?s\s+wrong|i\s+was\s+wrong|my\s+mistake"
               r"|間違えました|ผิด(?:ครับ|ค่ะ)?")
_CORRECTION_LEADS = (r"(?:it|that)(?:['’]s|\s+is|\s+should\s+be)|(?:the\s+)?(?:correct\s+|right\s+)?(?:answer|option"
                     r"|choice)\s+is|i\s+mean|phải là|phai la|đúng ra là|mà là|yang (?:benar|betul|tepat)"
                     r"(?:\s+(?:adalah|ialah))?|seharusnya(?:\s+adalah)?|sepatutnya|harusnya|ต้องเป็น|ที่ถูก(?:ต้อง)?คือ"
                     r"|maksud(?:nya|ku|\s+saya)|应该是|應該是|是|ang tama ay")
_NEWLINE = re.compile("\n")
_LEAD_END = r"(?:(?<=[\u0e00-\u0e7f\u3400-\u9fff])|(?![^\W\d_]))"  # Thai and Chinese run on into the answer
_SEP = r"[\s,，、:：.!。]*"
# "Eh" is a filler (Indonesian, Malay, Filipino, English: "Eh, C juga masuk akal", "Eh, C rin siguro"): it retracts
# only before an admission or a lead ("Eh, salah, ...", "Eh, yang betul C", "Eh, maksud saya C").
_EH = rf"eh(?={_SEP}(?:{_ADMISSIONS}|{_CORRECTION_LEADS}){_LEAD_END})"
_RETRACTION = re.compile(
    rf"(?<![^\W\d_])(?:(?:{_RETRACTIONS}|{_EH}|(?:không|khong)(?=\s*[,.!]))(?![^\W\d_])"
    rf"(?:{_SEP}(?:{_ADMISSIONS})(?![^\W\d_]))*(?:{_SEP}(?P<lead>{_CORRECTION_LEADS}){_LEAD_END})?"
    rf"|(?P<actually>actually|in fact|sebenarnya|thực ra|thuc ra|จริงๆ\s*แล้ว){_SEP}(?:{_CORRECTION_LEADS}){_LEAD_END})"
    rf"{_SEP}",
    re.IGNORECASE,
)


# An answer standing alone as its sentence ("C", "(C)", "option C", "15", "15個", "15 apples", "ウです", "Huế"): one
# word (no hiragana: "違うかも" is a remark) or a label or number with one unit word, a copula or a particle after it
# (polite ạ, です; Filipino pala, "after all": "Teka, C pala."), brackets around it.
_ALONE = re.compile(r"(?:option|choice|pilihan|opsi|phương án|ข้อ|ตัวเลือก)?\s*[(\[「『\"'*]*"
                    r"(?:[-+−]?\$?\d[\d.,]*(?:/\d+)?%?(?:\s?[^\W\d_]+)?|[^\s\d=+×*/\u3040-\u309f]{1,15})"
                    r"[)\]」』\"'*]*\s*(?:です|でした|だ|입니다|ครับ|ค่ะ|ạ|nhé|nha|pala|nga)?\s*", re.IGNORECASE)


# A connective that opens a conclusion ("So C.", "よってイです。", "Vậy C.", "所以C。").
_CONCLUSION = re.compile(rf"(?:(?<![^\W\d_])(?:so|thus|therefore|hence|vậy|vay|jadi|maka|kaya|kung\s+gayon)(?![^\W\d_])"
                         rf"|よって|したがって|つまり|所以|因此){_SEP}", re.IGNORECASE)


def _answer_alone(text: str, start: int) -> bool:
    """Whether the sentence of ``text`` from ``start`` (after a retraction) is an answer standing alone
    (:data:`_ALONE`): a correction, not a remark about another option ("C is too large") or a check."""
    ends = [m.start() for m in (_SENTENCE_END.search(text, start), _NEWLINE.search(text, start)) if m]
    return _ALONE.fullmatch(text, start, min(ends or [len(text)])) is not None


def corrected(text: str) -> str:
    """``text`` (from an answer on: a lead-in's tail, a line) as corrected: the correction after a retraction
    (:data:`_RETRACTION`) that takes back the answer before it, in its sentence or opening the next ("Đáp án là A.
    À không, phải là C.", "B. No wait, C.", "คำตอบคือ ข ไม่สิ ค", "Jawabannya adalah 12. Eh salah, seharusnya 15."
    give C, C, ค, 15); ``text`` itself without one. A retraction corrects only with a lead (its ``lead`` or
    ``actually`` group) or an answer standing alone as its sentence (:func:`_answer_alone`): "The answer is B. Oops, C
    is too large." and "答えは12個です。いや、念のため確認すると15-3=12…" keep B and 12. A later sentence without a
    retraction is a remark. After a retraction that corrects nothing, a later conclusion whose answer stands alone
    ("No wait, let me check C: 2 + 3 = 5. So C.", "…よってイです。") is what the text ends on."""
    while True:
        said = _SAID.search(text)
        if said is None:
            return text
        ends = (_SENTENCE_END.search(text, said.start()), _NEWLINE.search(text, said.start()))
        first_end = min([m.start() for m in ends if m] or [len(text)])
        next_start = _SAID.search(text, first_end + 1)
        limit = next_start.start() if next_start else len(text)
        found = next((m for m in _RETRACTION.finditer(text, said.start() + 1) if m.start() <= limit), None)
        if found is None or not text[found.end():].strip():
            return text
        if not (found.group("lead") or found.group("actually") or _answer_alone(text, found.end())):
            # "No wait, C is too large", "いや、念のため確認すると…": a remark or a check, no correction; the reply
            # ends on a conclusion after it ("No wait, let me check C: ... So C."), else on the answer it had
            concluded = [m for m in _CONCLUSION.finditer(text, found.end()) if _answer_alone(text, m.end())]
            return text[concluded[-1].end():] if concluded else text
        text = text[found.end():]
_TOPIC_BEFORE = re.compile(rf"{_TOPIC_WORD}|^(?:(?:{_CONNECTIVES}|{_RETRACTIONS})\s?)+$")
# A sentence that takes back the one before it ("イ。いや、ウ。"): its correction is the answer, copula or not.
_RETRACTED = re.compile(rf"^(?:(?:{_RETRACTIONS})\s?)+$")
# A topic a sentence without a copula states its answer after ("この文はネガティブ。"); not the は of では, とは, には,
# which deny or set a frame ("ネガティブではない。", "ネガティブだとは思いません。").
_PLAIN_TOPIC = re.compile(rf"(?:{_TOPIC_WORD})(?<![でとに]は)")
# The same connectives run on into the answer without a comma ("したがってネガティブです。", "たぶんネガティブです。").
_LEADING_CONNECTIVES = re.compile(rf"^(?:{_CONNECTIVES})+")
# "But" that ends a conceded clause before the sentence's own topic ("ネガティブな面もあるが、全体としてはポジティブ
# です。"): what follows is what the sentence states. After a verb or an adjective (hiragana), not a subject's が
# ("ネガティブが").
_CONCEDED = re.compile(r"[\u3040-\u309f](?:が|けど|けれど|けれども)$|ものの$")
# A noun the answer describes ("ネガティブな感情です。": a negative feeling): the answer is the word before it.
_DESCRIBED_NOUN = re.compile(r"(?<=[^\W\d_])な(?:感情|気持ち|感じ|印象|評価|意見|内容|文|文章|表現|トーン|レビュー|もの|ほう|方)$")
# A は that goes on in hiragana is inside a word (当てはまる, やはり), not the topic's: the topic's comes before the answer.
_TOPIC_IN = re.compile(rf"^\S*?[^\W\d_]{_NOT_AN_OR}は(?![\u3040-\u309f])")
# Where a sentence ends, after NFKC: 。(which NFKC keeps), ! and ?, and . before a space or the end.
_LINE_SENTENCE = re.compile(r"(?<=[。!?။])|(?<=\.)(?=\s|$)")
# The word a multiple-choice reply names its pick with ("option C", "ข้อ ข", "ตัวเลือก ค", "pilihan B", "選択肢B"),
# after normalisation. A Latin word must stand apart (no "optional"); a Thai or CJK one joins its label unspaced.
_OPTION_WORD = re.compile(r"^(?:(?:option|choice|pilihan|opsi|lựa chọn|lua chon|phương án|phuong an|pagpipilian)\s+|(?:ข้อ|ตัวเลือก|選択肢|选项|選項)\s*)")


def normalise_text(text: str) -> str:
    """Casefolded, NFKC, punctuation and symbols turned to spaces (combining marks kept, for Thai and Tamil)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return " ".join(text.split())


def text_answer_matches(answer: str, expected: object, language: str | None = None) -> bool:
    """Whether ``answer`` (the text after the think block) commits to the text reference ``expected``.

    A reply commits to one thing, found in this order: the last ``\\boxed{}``; else the sentence after its last
    committing lead-in (:func:`committing_lead_in`; a copula after it dropped; the next line when the lead-in ends
    its own); else its last line (or the whole answer), unless the reply ends by listing the labelled options
    (:func:`listed_options_start`: "A. 10\\nB. 12\\nC. 14" gives none). A later line or sentence does not change a
    box's or a lead-in's answer, so "答え：ポジティブ\\nネガティブ" and "\\boxed{ア}\\boxed{イ}" each give one option,
    never both, unless it retracts it: the correction is the answer (:func:`corrected`: "Đáp án là A. À không, phải
    là C." gives C).
    The box or the lead-in's sentence, normalised (:func:`normalise_text`), equals the reference, also without an
    option word before it ("option C", "ข้อ ข"), or opens with it (:func:`_opens_with`: "(C) Paris", "C: 42").

    The last line gives it when the line asks nothing (a line ending in ? gives no answer: "ネガティブ？", nor one
    ending in a question particle: "หมายถึง ข ใช่ไหม", "Đáp án là B à") and: equals it; or opens with it and only
    calls it right (:func:`_called_right`: "B is correct.", "アが正解です。"); or its last sentence states it before a final Japanese or Korean copula, conjecture or "I think"
    (:func:`_stated_before_copula`: "この文はネガティブです。", "ネガティブだと思います。", "たぶんネガティブでしょう。",
    "したがってネガティブです。", "ネガティブな感情です。", a line of one sentence with a topic "この文はネガティブ。",
    never "ネガティブだとは思いません。" nor "超ネガティブだと思います。"; after a retraction "イ。いや、ウです。"
    and "イ。いや、ウ。" give ウ, not イ; after a conceded clause "ネガティブな面もあるが、全体としてはポジティブです。"
    ポジティブ); else names it after a
    colon ("Sentiment: Positive"), opens with it (:func:`_opens_with`: "C) Paris", "Yes, it is.", "B. Because ...",
    not a list "ア、イ、ウ、エ", "Yes, no." nor "A, B, C, or D"), or after a copula at its end ("... is Paris.").
    "Not X but Y" commits to Y, in the box, the lead-in's sentence and the last line alike (:func:`_instead`:
    "「ネガティブ」ではなく「ポジティブ」です。" gives ポジティブ); an answer denied after it, past its quote too, gives
    nothing ("「ネガティブ」ではありません。"), and nor does a lead-in, topic, label or subject that names a wrong answer
    ("不正解はポジティブです。", "오답은 긍정입니다.", "The wrong answer is B.": :data:`_WRONG_TOPIC`).
    Naming the incorrect option ("The incorrect option is C.", "Incorrect option: C", "誤りはイです。",
    "答え：イ（誤り）") is the pick, as a "which option is incorrect?" question asks for it, when it is all the line
    states; after a right answer in the same line ("ネガティブです。誤りはポジティブです。") it gives nothing, and a
    lead-in's right answer ("正解はネガティブで、誤りはポジティブです。", "The wrong choice is B. The answer is C.")
    is the only one that scores (:func:`_names_wrong`). A line that opens with its answer alone ("ポジティブ。",
    "B.") keeps it through a reason or remark after it (:func:`_answer_then_remarks`: "B. 東京です。"), not through
    a retraction ("イ。いや、ウです。" gives ウ).
    The reference appearing somewhere is not enough: gold ``B`` is not in ``\\boxed{A}``'s "boxed", gold ``ข`` not
    in "ข้อ ก", gold ``Jakarta`` not in "Bukan Jakarta, tetapi Bandung" (which gives Bandung), gold ``Negative`` not
    in "Negative / Positive" nor in "ポジティブまたはネガティブです" or "긍정 내지는 부정입니다", nor in a reply that offers
    another answer as right too (:func:`_also_right`: "Jawabannya B, tapi C juga mungkin.", "B is correct. C is also
    correct.")."""
    target = normalise_text(str(expected))
    if not target:
        return False
    reference = unicodedata.normalize("NFKC", str(expected)).casefold().strip()
    tagalog = _tagalog(answer, language)  # "Ang sagot ay B at C." names two; "The answer is B at 12." B
    boxes = boxed_contents(answer)
    if boxes:
        return _commits_to(_latex_text(boxes[-1]), target, reference, tagalog)
    lead_in = committing_lead_in(answer)
    if lead_in:
        tail = corrected(answer[lead_in.end() :].strip())
        sentence = committed_sentence(tail)
        if not sentence.strip(" :："):  # "The answer is:\nJakarta": the lead-in ends its line
            sentence = committed_sentence(tail.lstrip(" :：").strip())
        if _also_right(tail, target):  # "Jawabannya B, tapi C juga mungkin."
            return False
        before = answer_before(answer, lead_in)
        if (before is not None and _states_an_answer(before)
                and not any(_commits_to(candidate, target, reference, tagalog)
                            for candidate in (before, _COPULA.sub("", before)))):
            return False  # "The answer is A. The answer is B."
        return any(_commits_to(candidate, target, reference, tagalog)
                   for candidate in (sentence, _COPULA.sub("", sentence)))
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines or listed_options_start(answer) is not None:  # a list of the options names none of them
        return False
    plain = unicodedata.normalize("NFKC", lines[-1]).strip()
    if _also_right(plain, target):  # "B is correct. C is also correct."
        return False
    if plain.endswith("?") or _asks_unmarked(plain):  # NFKC makes ？ a ?
        return False
    plain = _instead(corrected(plain))
    normalised = normalise_text(plain)
    if target in (normalised, _OPTION_WORD.sub("", normalised)) or _called_right(plain, reference):
        return True
    stated = _stated_before_copula(plain)
    if stated is not None and _answer_then_remarks(plain):
        # "ポジティブ。理由は褒めているからです。", "B. 東京です。": the line opens with its answer alone and goes on
        # to a reason or a remark, which does not take it back; the opening is the one answer it commits to (never the
        # last sentence as well, so "イ。ウです。" gives イ only)
        return _opens_with(plain, reference, tagalog=tagalog)
    if stated is not None:  # the line's last sentence states its answer: that is the one it commits to
        return any(target in (reading, _OPTION_WORD.sub("", reading)) for reading in stated)
    if ":" in plain:
        label, named = plain.rsplit(":", 1)
        label, named = normalise_text(label), normalise_text(named)
        if named == target:
            return not _names_wrong(label)
        # an option's label before its text ("C: Paris", "ウ：東京"); two labels ("ア：イ") name the second
        return _OPTION_LABEL.fullmatch(label) is not None and label == target and not _OPTION_LABEL.fullmatch(named)
    if _opens_with(plain, reference, tagalog=tagalog):
        return True
    stated = re.search(rf"(?:^| )(?:{_COPULAS}) {re.escape(target)}$", normalised)
    # "Đáp án không phải là B.": the copula after a denial states what the answer is not
    return (stated is not None and not _names_wrong(normalised[: stated.start()])
            and not _DENIED_BEFORE.search(normalised[: stated.end() - len(target)]))


# An option's label, normalised ("c", "ウ", "12"): one before a colon and an option's text is the pick.
_OPTION_LABEL = re.compile(r"[^\W\d_]|\d{1,2}")
# What sets an answer apart from what follows it: a closing bracket ("C) Paris"), a sentence end ("B. Because ..."),
# a colon ("C: 42"), a comma ("Yes, it is."); read after NFKC (：is :, ）is ), ．is .), with the ideographic marks it
# keeps. "…" is "..." after NFKC: "ネガティブ…かな" trails off, it does not state.
_CLOSING = tuple(")]」』】〕》〉")
_ENDS = tuple(".。!")
_COMMAS = tuple(",、;")
# A conjunction that makes what follows an answer another option: "A or B", "ア または イ", "A, B, C, or D", "긍정 내지는
# 부정".
_ALTERNATIVE = re.compile(rf"^(?:(?:{_OR_WORDS}|nor|o|か|や|と)(?![^\W\d_])|{_AND_ANOTHER})", re.IGNORECASE)
_DENIAL_AFTER = re.compile(rf"^(?:{_DENIAL_WORDS_AFTER})", re.IGNORECASE)
# A note after the answer that it is the incorrect option ("イ（誤り）", "C (incorrect)"), ending the text.
_INCORRECT_NOTE = re.compile(r"\s*\((?:誤り|間違い|incorrect|wrong|false)\)\s*[.。!]?", re.IGNORECASE)
# The Japanese and Korean copula that joins a second clause ("正解はネガティブで、不正解は…", "정답은 부정이고 오답은 …"):
# the answer is stated, when the clause it joins is about something else (has its own topic), not "アで、イでもある".
_JOINING_COPULA = re.compile(r"^(?:で[、,]|이고\s|이며\s)")
_OWN_TOPIC = re.compile(r"[^\W\d_](?:は|[은는](?![^\W\d_]))")
# "not" that a following "but" takes back: "Not Jakarta, but Bandung", "bukan X tetapi Y", "不是X而是Y"
_NOT = re.compile(r"(?<![^\W\d_])(?:not|bukan|không phải|hindi)(?![^\W\d_])|不是|并非|並非|ไม่ใช่", re.IGNORECASE)
# Thai แต่ ("but"), Filipino kundi and Chinese ，是 take back only after ไม่ใช่, hindi and 不是 ("ไม่ใช่ ก แต่เป็น ค"), as "but" after "not"
_PLAIN_BUT = frozenset({"but", "tetapi", "tapi", "kundi", "แต่", "แต่เป็น", "แต่คือ", "是"})


def _taken_back(text: str, start: int = 0, end: int | None = None) -> re.Match[str] | None:
    """The last "not X but Y" turn in ``text[start:end]`` (:data:`_INSTEAD`): a plain "but" (tetapi, tapi, แต่) only
    after a "not" there, so "The answer is 12, but I first got 15." still commits to 12."""
    last = None
    for found in _INSTEAD.finditer(text, start, len(text) if end is None else end):
        if found.group(0).casefold().strip() not in _PLAIN_BUT or _NOT.search(text, start, found.start()):
            last = found
    return last


def _instead(text: str) -> str:
    """What ``text`` commits to when it says "not X but Y" (:func:`_taken_back`): Y, as the numeric rule reads it.
    "「ネガティブ」ではなく「ポジティブ」です" is ポジティブ, never ネガティブ."""
    last = _taken_back(text)
    if last is None or not text[last.end():].strip(" ,，、:：.。!！"):
        return text
    return text[last.end():]


def _option_text(text: str) -> bool:
    """Whether ``text`` (what follows an option's label and its comma) reads as the option's text ("Paris"), not as
    another label ("C", "or D", "ウ") nor Japanese, whose run-on the list rule reads."""
    words = _LABEL_COPULA.sub("", text).split()
    return (bool(words) and not _ALTERNATIVE.match(text.strip()) and not _OPTION_LABEL.fullmatch(words[0].strip(".)"))
            and _KANA_OR_HAN.search(text) is None)


# A Korean copula or 번 ("number") after a second label: "B, C입니다", "나, 다입니다" name two labels.
_LABEL_COPULA = re.compile(r"(?<=[^\W\d_])(?:번)?(?:입니다|이다|예요|이에요)?[.。!]?$")


_KANA_OR_HAN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")
_HIRAGANA = re.compile(r"[\u3040-\u309f]")


def _is_clause(text: str) -> bool:
    """Whether ``text`` (what follows an answer and its comma) goes on about it ("it is", "理由は…からです") rather
    than names another option ("no", "イ", "ポジティブ", "or D"): two words or more, or Japanese with a
    hiragana ending of more than a short word."""
    words = text.split()
    if not words or _ALTERNATIVE.match(text.strip()):
        return False
    if _KANA_OR_HAN.search(text):
        return len(text) > 4 and _HIRAGANA.search(text) is not None
    return len(words) > 1


# Particles that close a sentence politely or softly, after its answer (normalised): Vietnamese ạ, nhé, nha, nhe,
# Thai ครับ, ค่ะ, คะ, นะ, จ้ะ, Japanese です.
_FINAL_PARTICLES = frozenset({"ạ", "nhé", "nha", "nhe", "ครับ", "ค่ะ", "คะ", "นะ", "จ้ะ", "です"})


def _opens_with(text: str, reference: str, *, spaced: bool = False, tagalog: bool = False) -> bool:
    """Whether ``text`` (one line, the box or the lead-in's sentence) opens with ``reference`` (NFKC, casefolded),
    set apart from what follows: by a closing bracket, a colon or nothing; by a sentence end ("B. Because ..."); by a
    comma before a clause, or (``spaced``: a box, a lead-in's sentence, which commit to what they open with) a space
    or a copula joining a clause about something else ("ネガティブで、不正解は…"), not before another option
    (:func:`_is_clause`: "Yes, it is." but not "Yes, no.", "ア、イ、ウ、エ", "A or B", "긍정 내지는 부정"). A longer
    word ("BC", "超ネガティブ") or a denial after it, past its bracket too (:data:`_DENIAL_AFTER`:
    "ポジティブではない", "「ネガティブ」ではありません", "(C) is not correct") is another answer."""
    plain = unicodedata.normalize("NFKC", text).casefold().strip()
    opening = _OPTION_WORD.sub("", plain.lstrip(" \t([*「『【〔《〈"))
    if not reference or not opening.startswith(reference):
        return False
    rest = opening[len(reference):]
    if not rest.strip(" .。!*"):
        return True
    if _DENIAL_AFTER.match(rest.lstrip(" *" + "".join(_CLOSING) + ":")):
        return False
    if spaced and _JOINING_COPULA.match(rest):
        return _OWN_TOPIC.search(_JOINING_COPULA.sub("", rest)) is not None
    if rest.startswith("..."):
        return False
    if _INCORRECT_NOTE.fullmatch(rest):  # "答え：イ（誤り）": イ is the incorrect option the question asks for
        return True
    if rest[0] in _CLOSING or rest[0] == ":":
        return not _ALTERNATIVE.match(rest[1:].strip()) and not (tagalog and _TL_ALTERNATIVE.match(rest[1:].strip()))
    if rest[0] in _ENDS:
        return True
    if rest[0] in _COMMAS:
        # only the next item: "ネガティブ、ポジティブ、どちらとも言えない" lists, whatever its last item says
        following = re.split("[,、;]", _SENTENCE_END.split(rest[1:].strip(), maxsplit=1)[0])[0].strip()
        if _NOT.match(following):
            return True  # "B，不是C", "B, not C": the answer, then the one it is not
        if _OPTION_LABEL.fullmatch(reference) and _option_text(following):
            return True  # "B, Paris": an option's letter, then its text
        return _is_clause(following)
    if rest[0].isspace() and spaced:
        # "ข ค": a second label after a space names two answers
        # a sentence-final particle is no label: "Đáp án là B ạ", "คำตอบคือ ข ครับ"
        words = [word for word in normalise_text(rest).split() if word not in _FINAL_PARTICLES]
        labels = bool(words) and all(_OPTION_LABEL.fullmatch(word) for word in words)
        # "B (or C)": a choice in brackets is a choice all the same
        alternative = rest.strip().lstrip("([（")
        return (not _ALTERNATIVE.match(alternative) and not (tagalog and _TL_ALTERNATIVE.match(alternative))
                and not rest.strip().startswith("/") and not labels)
    return False


# What calls the answer before it right, in the languages of LEAD_IN_RE: "B is correct.", "B is the correct answer.",
# "B là đáp án đúng.", "B adalah jawaban yang benar.", "B ang tamang sagot.", "ค คือคำตอบที่ถูกต้อง", "アが正解です。",
# "B가 정답입니다.", "B是正确答案。"; read on the sentence after the answer (NFKC, casefolded), to its end.
_CALLED_RIGHT = re.compile(
    r"\s*(?:(?:is|was)\s+(?:the\s+)?(?:correct|right)(?:\s+(?:answer|option|choice|one))?"
    r"|(?:là|la)\s+(?:(?:đáp|dap)\s+(?:án|an)|(?:câu|cau)\s+(?:trả|tra)\s+(?:lời|loi)|(?:phương|phuong)\s+(?:án|an)"
    r"|(?:lựa|lua)\s+(?:chọn|chon))\s+(?:đúng|dung|chính xác|chinh xac)|(?:là\s+)?(?:đúng|dung)"
    r"|(?:adalah|ialah|merupakan)\s+(?:jawa[bp]an|pilihan)\s+(?:yang\s+)?(?:benar|tepat|betul)|(?:yang\s+)?(?:benar|betul)"
    r"|ang\s+(?:tamang\s+sagot|tama)|\s*(?:คือ)?\s*(?:คำตอบ)?(?:ที่)?ถูก(?:ต้อง)?"
    r"|が(?:正解|正しい)|(?:이|가)\s*(?:정답|맞)|(?:是)?(?:正确|正確)(?:的?答案|的)?|是(?:对|對)的)"
    r"(?:\s*(?:です|だ|である|입니다|이다|습니다|다|ครับ|ค่ะ))?\s*",
    re.IGNORECASE,
)


def _called_right(line: str, reference: str) -> bool:
    """Whether ``line`` (NFKC) opens with ``reference`` (NFKC, casefolded) and its sentence goes on only to call it
    right (:data:`_CALLED_RIGHT`; a reason after it kept: "B is correct because ..."). Not "B is not correct.", "B is
    correct or C is." nor "Neither A nor B is correct.", which do not open with the answer alone."""
    plain = unicodedata.normalize("NFKC", line).casefold().strip()
    opening = _OPTION_WORD.sub("", plain.lstrip(" \t([*「『【〔《〈"))
    if not reference or not opening.startswith(reference):
        return False
    rest = opening[len(reference):].lstrip(" *" + "".join(_CLOSING))
    return _CALLED_RIGHT.fullmatch(committed_sentence(rest)) is not None


def _commits_to(candidate: str, target: str, reference: str, tagalog: bool = False) -> bool:
    """Whether a box's content or a lead-in's sentence is the reference: equal after normalisation (an option word
    dropped), or opening with it (:func:`_opens_with`); after "not X but Y", Y is the candidate (:func:`_instead`)."""
    candidate = _instead(candidate)
    normalised = normalise_text(candidate)
    if target in (normalised, _OPTION_WORD.sub("", normalised)):
        return True
    return _opens_with(candidate, reference, spaced=True, tagalog=tagalog)


def _answer_then_remarks(line: str) -> bool:
    """Whether ``line`` (NFKC) opens with a sentence that is only a word ("ポジティブ。", "B.": no space, no hiragana
    in it) and no later sentence retracts ("イ。いや、ウです。" takes イ back: its correction is the answer)."""
    sentences = [normalise_text(part) for part in _LINE_SENTENCE.split(line) if part.strip()]
    if len(sentences) < 2 or not sentences[0] or " " in sentences[0] or _HIRAGANA.search(sentences[0]):
        return False
    return not any(_RETRACTION_OPENS.match(sentence) for sentence in sentences[1:])


_RETRACTION_OPENS = re.compile(rf"(?:{_RETRACTIONS})")


def _stated_before_copula(line: str) -> tuple[str, ...] | None:
    """What the last sentence of ``line`` (NFKC) states before a final Japanese or Korean copula (normalised; its
    readings: as written and without a leading connective or a described noun), as "It is positive." states it before
    its full stop: the whole sentence ("ポジティブです。", "Ｂです。", "긍정입니다.", "ネガティブでしょう。",
    "ネガティブだと思います。", "ネガティブな感情です。"), or what follows its topic or a concluding, guessing or
    retracting connective ("この文はネガティブです。", "이 문장은 긍정입니다.", "つまり、ネガティブです。",
    "したがってネガティブです。", "たぶんネガティブです。", "いや、ウです。", "いいえ、実はポジティブです。"), or
    a conceded clause before a topic ("ネガティブな面もあるが、全体としてはポジティブです。"); a line of one sentence
    with a topic, or a sentence that takes back the one before it, states its answer without a copula too
    ("この文はネガティブ。", "イ。いや、ウ。"). None when the sentence ends otherwise
    (a denial "ポジティブではありません。", a question) or names more than its answer before it ("ポジティブ、
    ネガティブです。", "긍정 또는 부정입니다."); () when its topic names a wrong answer. What it states may still be no
    option: "ポジティブかネガティブ", "ポジティブではない", "超ネガティブ"."""
    sentences = [part for part in _LINE_SENTENCE.split(line) if part.strip()]
    if not sentences or sentences[-1].rstrip()[-1:] in "?":
        return None
    sentence = sentences[-1].strip().rstrip("。.!")
    stated, copulas = _FINAL_COPULA.subn("", sentence)
    head, _, said = normalise_text(stated).rpartition(" ")
    # Japanese runs the answer on after its topic's は: この文はネガティブ, 実はポジティブ
    topic = _TOPIC_IN.match(said)
    if head and not (_TOPIC_BEFORE.search(head) or (topic and _CONCEDED.search(head))):
        return None
    if not copulas:
        # without a copula only a topic says that this is the answer, and only where nothing comes before it: in
        # "ネガティブ。理由は否定語が多いから。" the answer is the first sentence, not the reason; a retraction after a
        # guess does, or "イ。いや、ウ。" scored the guess it takes back (a single "いいえ、そうではありません。" is
        # the answer いいえ)
        plain_topic = _PLAIN_TOPIC.search(head) or (topic and _PLAIN_TOPIC.search(said[: topic.end()]))
        if not (len(sentences) == 1 and plain_topic) and not (len(sentences) > 1 and _RETRACTED.search(head)):
            return None
    alone = len(sentences) == 1
    if _names_wrong(head, alone=alone) or (topic and _names_wrong(head + said[: topic.end()], alone=alone)):
        return ()  # "不正解はポジティブです。", "오답은 긍정입니다.": it states the wrong answer, not its own
    said = said[topic.end():] if topic and topic.end() < len(said) else said
    plain = _LEADING_CONNECTIVES.sub("", said) or said
    return tuple({reading for text in (said, plain) for reading in (text, _DESCRIBED_NOUN.sub("", text) or text)})
