"""Numbers as people write them, in any language: one rule for the answer reward and the accuracy suite.

"1.250" is 1250 in Indonesian or Vietnamese but 1.25 in English or Thai; "1,25,000" is Indian lakh grouping;
"答えは42です" and "คือ1250บาท" glue digits to text that math-verify reads as one word. The answer reward
(:mod:`tempa.alignment.rewards`) and the evaluate stage's accuracy suite (:mod:`tempa.merge.answers`) read numbers
by the functions here, so a reply scores the same in training and in evaluation.

Japanese and Chinese also write numbers with Han numerals (四十二, 三百五, 1万2千, 二〇二六, 两千, and in Chinese
三点五 = 3.5), and a reference answer may carry its unit (12,000円, 12 cm, 1,250 บาท, 100.000 đồng): both readers
take them from here too. So do the other languages' scale words after a number (15 ribu, 1,5 triệu = 1500000 with
the decimal comma of Vietnamese and Indonesian, 1 หมื่น, 2 ล้าน 5 แสน, 1만 5천, 3 million), sign words before one
(minus 5, negatif 5, âm 7, ลบ 5, マイナス5, 负5), mixed numbers (1 1/2, 2\\frac{1}{3}) and Unicode's vulgar fractions (½, 1½): read
as its first number, "15 ribu rupiah" was 15, which a reference of 15 scored right.

What is not read as a number, and why (a number read where the reply wrote none is a wrong reward, and a policy
learns it):

- Number words (forty-two, bốn mươi hai, empat puluh dua, สี่สิบสอง): the same words are articles and pronouns in
  prose (Vietnamese một is "a", English "one of them", Indonesian se-/satu in "satu-satunya", "the only"), so a reader
  of them finds numbers in every sentence, and a reply that gives its answer in words for a numeric reference is rare
  enough to be left wrong. A digit followed by its percent word (45 percent, 45 phần trăm) is read as 45%, and by
  its scale word (15 ribu, 2 triệu) as their product; a scale word with no digit before it (ratus, seribu), a
  capitalised one (a name: Trăm) and one that begins another word (3 triệu chứng, 3 symptoms; 5 พันธุ์) multiply
  nothing.
- Japanese 割 and Chinese 成 (3割 = 30%, 二成 = 20%): 割 is also the verb divide (6割る2は3), 八成 also means "most
  likely" and 一成不变 "unchanging", and a 割 question's reference writes 3 where a percent one writes 30: a 割 is
  read as the number written before it (3割 is 3), as before.
- Japanese 三・五 for 3.5: ・ also lists (一・二年生, first- and second-year students).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from decimal import Decimal

# Languages whose decimal mark is a comma (CLDR's symbol for each): they group thousands with a dot (id, vi, de,
# es, pt, ...) or a space (fr, ru, pl, ...), so "1.250" is 1250 there but 1.25 in English, Thai, Tamil, Japanese,
# Chinese, Malay or Filipino, which write a decimal point.
DECIMAL_COMMA_LANGUAGES = frozenset({
    "af", "az", "be", "bg", "br", "bs", "ca", "cs", "da", "de", "el", "es", "et", "eu", "fi", "fo", "fr", "gl",
    "hr", "hu", "hy", "id", "is", "it", "ka", "kk", "km", "ky", "lb", "lo", "lt", "lv", "mk", "nb", "nl", "nn", "no",
    "oc", "pl", "pt", "ro", "ru", "sk", "sl", "sq", "sr", "sv", "tr", "uk", "uz", "vi", "wa",
})
# No-break, narrow no-break and thin spaces are typed only between digit groups ("1 000"), in any language.
_GROUP_SPACES = "\u00a0\u202f\u2009"


def decimal_comma(language: str | None) -> bool:
    """Whether ``language`` (ISO 639-1, a region tag allowed) writes a decimal comma."""
    return bool(language) and str(language).split("-")[0].split("_")[0].lower() in DECIMAL_COMMA_LANGUAGES


def number_body(language: str | None) -> str:
    """Regex of one unsigned number as written in ``language`` (None: with a decimal point, as in English).

    Unambiguous forms read the same in every language: 1,234.5 and 1,234 (a comma before three digits groups
    thousands, as English-written references do), 1,25,000 (Indian lakh grouping), 1.234.567 and 1.234,5 (dot
    groups), 2,5 and 0,125 (a decimal comma) and 1 000 with a no-break space. Only a lone dot before three digits
    ("1.250") and plain-space groups ("1 000") depend on ``language``; :func:`plain_number` reads them. A run like
    1,2,3 (a list) or 12.05.2023 (a date) is no number."""
    spaces = _GROUP_SPACES + (" " if decimal_comma(language) else "")
    return (
        r"(?<!\d)(?<!\d[.,，])(?:"
        r"\d{1,2}(?:[,，]\d{2})+[,，]\d{3}(?:\.\d+)?"  # 1,25,000
        r"|\d{1,3}(?:\.\d{3})+,\d+|\d{1,3}(?:\.\d{3}){2,}"  # 1.234,5 | 1.234.567
        rf"|\d{{1,3}}(?:[{spaces}]\d{{3}})+(?:[.,]\d+)?"  # 1 000 | 1 000,5
        r"|\d{1,3}(?:[,，]\d{3})+(?:\.\d+)?"  # 1,234 | 1,234.5
        r"|\d+[,，]\d+|\d+(?:\.\d+)?"  # 2,5 | 0,125 | 42 | 1.250
        r")(?!\d)(?![.,，]\d)"
    )


def plain_number(token: str, language: str | None = None) -> str | None:
    """One number as :func:`number_body` finds it, as plain ASCII digits with a decimal point ("1.250" in
    Indonesian: "1250"; "2,5": "2.5"); None when ``token`` is not a number."""
    text = re.sub(rf"[\s{_GROUP_SPACES}]", "", unicodedata.normalize("NFKC", token).translate(DIGITS))
    if re.fullmatch(r"\d{1,2}(?:,\d{2})+,\d{3}(?:\.\d+)?", text):
        text = text.replace(",", "")
    elif re.fullmatch(r"\d{1,3}(?:\.\d{3})+,\d+|\d{1,3}(?:\.\d{3}){2,}", text) or (
            decimal_comma(language) and re.fullmatch(r"[1-9]\d{0,2}\.\d{3}", text)):
        text = text.replace(".", "").replace(",", ".")
    elif re.fullmatch(r"[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")
    elif re.fullmatch(r"\d+,\d+", text):  # a decimal comma: before other than three digits, or after a lone 0
        text = text.replace(",", ".")
    return text if re.fullmatch(r"\d+(?:\.\d+)?", text) else None


@functools.cache
def _number_re(language: str | None) -> re.Pattern[str]:
    return re.compile(number_body(language))


def plain_numbers(text: str, language: str | None) -> str:
    """``text`` with every number in it written plainly (:func:`plain_number`)."""
    return _number_re(language).sub(lambda m: plain_number(m.group(0), language) or m.group(0), text)


# --- Han numerals, as Japanese and Chinese write them: 四十二, 三百五, 1万2千, 二〇二六, 两千 -----------------------------

_HAN_DIGITS = {"〇": 0, "零": 0, "一": 1, "壱": 1, "二": 2, "弐": 2, "两": 2, "兩": 2, "三": 3, "四": 4, "五": 5,
               "六": 6, "七": 7, "八": 8, "九": 9}
_HAN_TENS = {"十": 10, "百": 100, "千": 1000}
_HAN_MYRIADS = {"万": 10**4, "萬": 10**4, "億": 10**8, "亿": 10**8, "兆": 10**12}
_HAN = "".join([*_HAN_DIGITS, *_HAN_TENS, *_HAN_MYRIADS])
_ARABIC = r"\d+(?:[.,]\d+)*"
# One numeral: at least one Han numeral character, Arabic digits allowed around the units (1万2千, 3.5万).
_NUMERAL = rf"(?:{_ARABIC})?[{_HAN}](?:[{_HAN}]|{_ARABIC})*"
_PIECE = re.compile(rf"{_ARABIC}|[{''.join(_HAN_DIGITS)}]+|[{''.join(_HAN_TENS)}{''.join(_HAN_MYRIADS)}]")
_MINUS_WORD = r"[-−]|负|負|マイナス|零下"
# Chinese decimals: 三点五 (3.5), 零点二五; a digit after 点 read one by one. Not before a unit numeral or a unit of
# time: 三点五分 and 三点十五 are 3:05 and 3:15, 三点半 half past three. Japanese writes no decimal 点 (三点: three
# points), and 三・五 is no decimal either: ・ also lists (一・二年生, first and second years).
# (The lookahead names the digits too: without them 三点零五分 backtracked to 三点零, skipped it, and read 五分 as 5.)
_HAN_DECIMALS = (rf"(?:[点點](?P<decimals>[〇零一二三四五六七八九]+)"
                 rf"(?![〇零一二三四五六七八九{''.join(_HAN_TENS)}{''.join(_HAN_MYRIADS)}分钟鐘刻半秒]))?")


@functools.cache
def _han_number(reading: str) -> re.Pattern[str]:
    """A numeral, signed, with decimals in Chinese, or a fraction: 三分之一 (zh), 3分の1 (ja), 百分之五十 (zh: 50%)."""
    decimals = _HAN_DECIMALS if reading == "zh" else ""
    return re.compile(
        rf"(?<![\d.,])(?P<sign>{_MINUS_WORD})?(?P<numeral>{_NUMERAL}|{_ARABIC}){decimals}"
        rf"(?:分[之の](?P<numerator>{_NUMERAL}|{_ARABIC}))?(?![\d])")
# What a numeral made of Han characters only may stand before when it is a quantity: a counter or unit (個, 人, 円,
# 年, 度, ...), an operator (加, 等, ...) or anything not Han (kana, punctuation, the end). Elsewhere it is part of a
# word or a name: 一郎, 九州, 三菱, 千葉, 一緒, 一般, 一定, 五十嵐.
_COUNTERS = (
    "個个箇人名位円元圓块塊本枚匹頭头羽台冊册件回次倍歳岁才年月日号天時时秒週周度割杯皿軒階层層张張只隻条條辆輛"
    "斤克米里升吨噸箱袋瓶碗盒包双對对组組种種道题題问問棵朵颗顆粒根支把架座家所户戸口页頁章节節课課"
    "分加减減乘除等是和与與或到至以多余餘")
_QUANTITY_AFTER = re.compile(rf"$|[^\u3005\u3007\u3400-\u9fff\uf900-\ufaff]|[{_COUNTERS}]")
# ...and what it may not follow: an ordinal (第一に: firstly), 唯一 (only), 統一/同一 (unified, same), 之一 (one of).
_NOT_AFTER = "第唯統统同之"
_KANA = re.compile(r"[\u3040-\u30ff]")
_WIDE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]")


def cjk_reading(text: str, language: str | None) -> str | None:
    """How ``text`` writes Han numerals: "zh" (三百五 is 350, as spoken), "ja" (三百五 is 305), or None (no Han
    numerals read: the row is in another language, or has no language and no Han or kana in it)."""
    code = str(language).split("-")[0].split("_")[0].lower() if language else None
    if code in ("ja", "zh"):
        return code
    if code is None and _WIDE.search(text):
        return "ja" if _KANA.search(text) else "zh"
    return None


def _numeral_value(numeral: str, reading: str) -> Decimal | None:
    """The value of one numeral (四十二, 1万2千, 二〇二六, 三百五); None when it is no well-formed numeral (万一,
    三四: 'three or four', 十百)."""
    pieces = _PIECE.findall(numeral)
    if "".join(pieces) != numeral:
        return None
    units = any(piece in _HAN_TENS or piece in _HAN_MYRIADS for piece in pieces)
    total = section = Decimal(0)
    pending: Decimal | None = None
    tens_limit, myriad_limit, last_unit = 10**5, 10**13, 0
    lone_digit = after_unit = was_after_unit = False
    for piece in pieces:
        if piece in _HAN_TENS:
            unit = _HAN_TENS[piece]
            if unit >= tens_limit:
                return None
            section += (pending if pending is not None else 1) * unit
            pending, tens_limit, last_unit, after_unit = None, unit, unit, True
        elif piece in _HAN_MYRIADS:
            unit = _HAN_MYRIADS[piece]
            if unit >= myriad_limit or (pending is None and not section):
                return None
            total += (section + (pending or 0)) * unit
            section, pending, tens_limit, myriad_limit, last_unit, after_unit = Decimal(0), None, 10**5, unit, unit, True
        else:
            if pending is not None:
                return None
            if piece[0].isdigit():  # Arabic digits, as number_body reads them in a language with a decimal point
                plain = plain_number(piece)
                if plain is None:
                    return None
                pending, lone_digit = Decimal(plain), len(piece) == 1
            else:
                # a run of Han digits is positional (二〇二六) only alone and with a 〇 in it, or 零 filling a gap
                # (一百零五); 三四 and 五六 are "three or four", 〇〇 a placeholder (〇〇さん: so-and-so)
                positional = not units and "〇" in piece and piece[0] not in "〇零"
                filler = units and len(piece) == 2 and piece[0] in "〇零" and piece[1] not in "〇零"
                if len(piece) > 1 and not (positional or filler):
                    return None
                pending = Decimal("".join(str(_HAN_DIGITS[char]) for char in piece))
                lone_digit = len(piece) == 1 and piece not in "〇零"
            after_unit, was_after_unit = False, after_unit
    if pending is not None:
        if reading == "zh" and lone_digit and was_after_unit and last_unit >= 100:
            pending *= Decimal(last_unit) / 10  # spoken Chinese: 三百五 is 350, 一万二 12000
        section += pending
    return total + section


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text.split(".")[0] if "." in text and not text.split(".")[1].strip("0") else text


def _han_value(match: re.Match[str], reading: str) -> str | None:
    """One numeral match as plain ASCII ("-42", "12000", "1/3", "50%"); None when it is no number."""
    value = _numeral_value(match.group("numeral"), reading)
    sign = "-" if match.group("sign") else ""
    if value is None:
        return None
    if match.groupdict().get("decimals"):
        if re.search(r"\d", match.group("numeral")):
            return None  # 3点5, 1万点五: no decimal as Chinese writes one
        value += Decimal("0." + "".join(str(_HAN_DIGITS[char]) for char in match.group("decimals")))
    if match.group("numerator") is None:
        return sign + _plain(value)
    numerator = _numeral_value(match.group("numerator"), reading)
    if numerator is None or not value:
        return None
    if match.group("numeral") == "百" and "之" in match.group(0):
        return f"{sign}{_plain(numerator)}%"  # 百分之五十
    return f"{sign}{_plain(numerator)}/{_plain(value)}"


def _han_only(match: re.Match[str]) -> bool:
    return not re.search(r"\d", match.group(0))


def _is_quantity(text: str, match: re.Match[str]) -> bool:
    """Whether a numeral of Han characters only stands as a quantity where it is (not in a word or a name)."""
    before = text[match.start() - 1] if match.start() else ""
    if before and before in _NOT_AFTER and not (before == "之" and text[max(0, match.start() - 2)] == "分"):
        return False
    if match.group(0) == "十" and text.startswith("分", match.end()):
        return False  # 十分: enough (ja), very (zh); 十五分 and 三分 are minutes
    return match.group("numerator") is not None or bool(_QUANTITY_AFTER.match(text, match.end()))


def plain_unit_numerals(text: str, reading: str | None) -> str:
    """``text`` with every numeral that mixes Arabic digits and Han units (1万2千, 12万3456, 3.5万, 3分の1) written
    plainly: they are numbers wherever they stand. Han-only numerals are left (:func:`han_numbers`)."""
    if reading is None:
        return text

    def plain(match: re.Match[str]) -> str:
        if _han_only(match) or not re.search(rf"[{_HAN}分]", match.group(0)):
            return match.group(0)
        return _han_value(match, reading) or match.group(0)

    return _han_number(reading).sub(plain, text)


def han_numbers(text: str, reading: str | None) -> list[str]:
    """The numerals of Han characters only in ``text`` that stand as quantities (四十二個, 答案是两千, 〇), as
    plain ASCII, in order. A reply commits to its Arabic digits first (a reader falls back to these only where a
    part of the reply has none), so 一郎, 九州 or 第一に never outweigh a digit answer."""
    if reading is None:
        return []
    found = []
    for match in _han_number(reading).finditer(text):
        if _han_only(match) and _is_quantity(text, match):
            value = _han_value(match, reading)
            if value is not None:
                found.append(value)
    return found


def plain_han_numerals(text: str, reading: str | None) -> str:
    """``text`` with the numerals :func:`han_numbers` reads written plainly."""
    if reading is None:
        return text

    def plain(match: re.Match[str]) -> str:
        if not (_han_only(match) and _is_quantity(text, match)):
            return match.group(0)
        return _han_value(match, reading) or match.group(0)

    return _han_number(reading).sub(plain, text)


def plain_cjk_number(token: str, reading: str | None) -> str | None:
    """One whole numeral (四十二, 1万2千, 三分之一, 负五) as plain ASCII; None when ``token`` is not one."""
    found = _han_number(reading).fullmatch(token.strip()) if reading else None
    return _han_value(found, reading) if found and reading and re.search(rf"[{_HAN}]", token) else None


# --- Number-scale and sign words, mixed and vulgar fractions: 15 ribu, 1,5 triệu, 2 ล้าน 5 แสน, âm 7, 1 1/2, ½ -----

# A scale word multiplies the number written right before it, in the languages tempa knows (Japanese and Chinese
# write Han units: _HAN_MYRIADS). Read as the number alone, "15 ribu" gave 15: 1 against a reference of 15, and a
# policy learns it. Alone a scale word is no number (Indonesian "ratus" alone, "ribuan", "thousands of").
_SCALE_WORDS = {
    # English, Indonesian and Malay (rb and jt as prices are written), Filipino (with its linker: 15 libong piso)
    "hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12,
    "ratus": 100, "ribu": 10**3, "rb": 10**3, "juta": 10**6, "jt": 10**6, "miliar": 10**9, "milyar": 10**9,
    "bilion": 10**9, "triliun": 10**12, "trilion": 10**12,
    "libo": 10**3, "libong": 10**3, "milyon": 10**6, "milyong": 10**6, "bilyon": 10**9, "bilyong": 10**9,
    # Vietnamese
    "trăm": 100, "nghìn": 10**3, "ngàn": 10**3, "triệu": 10**6, "tỷ": 10**9, "tỉ": 10**9,
    # Thai and Korean, which run on into the unit (1 หมื่นบาท, 1만5천원)
    "ร้อย": 100, "พัน": 10**3, "หมื่น": 10**4, "แสน": 10**5, "ล้าน": 10**6,
    "백": 100, "천": 10**3, "만": 10**4, "억": 10**8,
}
# Where a scale word after a number begins another word: Vietnamese triệu chứng (symptom), triệu phú (millionaire),
# tỉ lệ and tỷ số (ratio); Thai พันธุ์ (breed), พันเอก and ร้อยโท (ranks), ร้อยละ (percent); Korean 만큼 (as much as).
_NOT_SCALE_BEFORE = {
    "triệu": r"\s+(?:chứng|tập|hồi|phú|gọi)", "tỷ": r"\s+(?:lệ|số|trọng)", "tỉ": r"\s+(?:lệ|số|trọng|mỉ)",
    "พัน": "ธ|เอก|โท|ตรี", "ร้อย": "ละ|เอก|โท|ตรี|เอ็ด", "만": "큼|치",
}


_ENGLISH_SCALE_WORDS = frozenset({"hundred", "thousand", "million", "billion", "trillion"})


def _scale_alternatives() -> str:
    """The scale words as one alternation, in lower case only (a capitalised Trăm or Juta is a name), composed or
    decomposed (Vietnamese is typed both ways); a word of Latin letters ends at a word boundary."""
    words = []
    for word in sorted(_SCALE_WORDS, key=len, reverse=True):
        spellings = "|".join(re.escape(form) for form in dict.fromkeys((word, unicodedata.normalize("NFD", word))))
        # a Latin word ends at a word boundary; an English one joined by a hyphen to a noun is an adjective, no
        # multiplier ("2 hundred-dollar bills" are 2 bills; Indonesian "3 juta-an" is about 3 million)
        after = r"(?![^\W\d_])" if all("LATIN" in unicodedata.name(char) for char in word) else ""
        after += r"(?!-[^\W\d_])" if word in _ENGLISH_SCALE_WORDS else ""
        not_after = ""
        if word in _NOT_SCALE_BEFORE:
            pattern = _NOT_SCALE_BEFORE[word]
            not_after = rf"(?!{pattern}|{unicodedata.normalize('NFD', pattern)})"
        words.append(f"(?:{spellings}){after}{not_after}")
    return "|".join(words)


_SCALE = _scale_alternatives()
_SCALE_WORD_RE = re.compile(_SCALE)
_SCALE_GAP = rf"[ \t{_GROUP_SPACES}]*"
# LaTeX's text command that a math-trained model writes a number's words in: \boxed{15 \text{ ribu rupiah}}.
_TEXT_OPENING = re.compile(r"\\(?:text(?:rm)?|mathrm|mbox)\s*\{")


@functools.cache
def _scaled_group_re(language: str | None) -> re.Pattern[str]:
    """One number with its scale words (1,5 triệu, 2 พันล้าน, 15 \\text{ ribu); not the denominator of a fraction or
    an exponent."""
    return re.compile(rf"(?<![/^])(?:{number_body(language)})(?:{_SCALE_GAP}{_TEXT_OPENING.pattern})?"
                      rf"(?:{_SCALE_GAP}(?:{_SCALE}))+")


@functools.cache
def _scaled_run_re(language: str | None) -> re.Pattern[str]:
    """Numbers with scale words one after another (2 triệu 500 nghìn, 1억 2천만, 2 ล้าน 5 แสน)."""
    group = _scaled_group_re(language).pattern
    return re.compile(rf"{group}(?:{_SCALE_GAP}{group})*")


def _scaled_value(group: str, language: str | None) -> tuple[Decimal, int] | None:
    """The value of one number with its scale words and the scale they make; None when the words do not rise
    (15 ribu ribu)."""
    number = _number_re(language).match(group)
    plain = plain_number(number.group(0), language) if number else None
    if number is None or plain is None:
        return None
    value, scale = Decimal(plain), 1
    for word in _SCALE_WORD_RE.findall(group, number.end()):
        word_scale = _SCALE_WORDS[unicodedata.normalize("NFC", word)]
        if word_scale <= scale:
            return None
        value, scale = value * word_scale, word_scale * scale
    return value, scale


def _decimal_text(value: Decimal) -> str:
    """``value`` in ASCII digits and a decimal point, never with three decimals: "1.125" is 1125 where a language
    groups thousands with a dot, so 1.125 is written 1.1250."""
    text = _plain(value)
    return text + "0" if re.fullmatch(r"-?\d{1,3}\.\d{3}", text) else text


def _plain_scaled(run: str, language: str | None) -> str:
    """A run of numbers with scale words as digits: one number while each part is less than the scale before it
    (2 triệu 500 nghìn is 2500000), else one number for each (500 nghìn 2 triệu)."""
    numbers: list[str] = []
    total, scale = Decimal(0), None
    openings = "".join(f" {opening}" for opening in _TEXT_OPENING.findall(run))  # 15000 \text{ rupiah}: balanced
    for group in _scaled_group_re(language).finditer(run):
        read = _scaled_value(group.group(0), language)
        if read is None:
            return run
        if scale is not None and read[0] >= scale:
            numbers.append(_decimal_text(total))
            total = Decimal(0)
        total, scale = total + read[0], read[1]
    return " ".join([*numbers, _decimal_text(total)]) + openings


# Unicode's vulgar fractions (½, ¾, ⅔, ...) as (numerator, denominator), and the fraction slash of 1⁄2: NFKC writes
# ½ as 1⁄2, which no reader took for a number, and 1½ as 11⁄2.
_VULGAR = {
    char: (int(numerator), int(denominator))
    for char in map(chr, range(0x80, 0x2190)) if unicodedata.decomposition(char).startswith("<fraction>")
    for numerator, _, denominator in [unicodedata.normalize("NFKC", char).partition("\u2044")]
    if numerator.isdigit() and denominator.isdigit() and int(numerator)
}
_VULGAR_RE = re.compile(rf"(?:(?<![\d.,])(?P<whole>\d+)[ {_GROUP_SPACES}]?)?(?P<fraction>[{''.join(_VULGAR)}])")
# A mixed number: 1 1/2, 2\frac{1}{3} (a proper fraction after a whole number, as school arithmetic writes one).
# Read as its first number, "1 1/2 jam" was 1 hour; as one group of digits, 11/2.
_MIXED_RE = re.compile(
    rf"(?<![\d.,/^_A-Za-z])(?P<whole>\d+)(?:[ {_GROUP_SPACES}](?P<numerator>\d{{1,2}})\s?/\s?(?P<denominator>\d{{1,3}})"
    r"|\s*\\[dt]?frac\{(?P<tex_numerator>\d{1,2})\}\{(?P<tex_denominator>\d{1,3})\})(?![\d/]|[.,]\d)")


def _fraction_text(whole: int, numerator: int, denominator: int, latex: bool = False) -> str | None:
    """``whole`` and a proper fraction as one number: a decimal when it ends (1.5, so "1½ juta" is read with its
    scale word), else an improper fraction (4/3, or \\frac{4}{3} in LaTeX, where 4/3x would divide by x); None when
    the fraction is not proper."""
    if not 0 < numerator < denominator:
        return None
    rest = denominator
    for prime in (2, 5):
        while rest % prime == 0:
            rest //= prime
    if rest == 1:
        return _decimal_text(Decimal(whole * denominator + numerator) / denominator)
    improper = whole * denominator + numerator
    return rf"\frac{{{improper}}}{{{denominator}}}" if latex else f"{improper}/{denominator}"


def _plain_vulgar(match: re.Match[str]) -> str:
    numerator, denominator = _VULGAR[match.group("fraction")]
    text = _fraction_text(int(match.group("whole") or 0), numerator, denominator) or match.group(0)
    glued = not match.group("whole") and match.start() and match.string[match.start() - 1].isalnum()
    return f" {text}" if glued else text  # 1.5½ is no number to read as 1.51/2


def _plain_mixed(match: re.Match[str]) -> str:
    numerator = match.group("numerator") or match.group("tex_numerator")
    denominator = match.group("denominator") or match.group("tex_denominator")
    latex = match.group("tex_numerator") is not None
    return _fraction_text(int(match.group("whole")), int(numerator), int(denominator), latex) or match.group(0)


# A sign word before a number: minus (en, id, ms, tl), negative, negatif (id, ms), negatibo and negatibong (tl), âm
# (vi), ติดลบ and ลบ (th), 마이너스 and 영하 ("below zero", ko), マイナス (ja), 负/負 and 零下 ("below zero", zh), மைனஸ்
# (ta). ลบ only as a word of its own or after a copula (คือลบ 5), not the end of another (หลบ, dodge).
_SIGN_WORD = re.compile(
    r"(?:(?<![^\W\d_])(?i:minus|negative|negatif|negatibo(?:ng)?|âm|a\u0302m)|ติดลบ"
    r"|(?:(?<![\u0e00-\u0e7f])|(?<=คือ)|(?<=เป็น)|(?<=ได้)|(?<=เท่ากับ))ลบ|마이너스|영하|マイナス|负|負|零下|மைனஸ்)"
    r"[ \t]*(?=\d)")
# What a sign word after it subtracts from: a number, a bracket, a one-letter variable (10 minus 5, x minus 5), or a
# number written as a word in the Latin-script languages tempa knows ("ten minus 5", "sepuluh minus 5", "sampu
# minus 5"): zero to twenty, the tens and the scale words in English, Indonesian and Malay, Vietnamese and Filipino.
_NUMBER_WORDS = (
    r"zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen"
    r"|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|million"
    r"|nol|satu|dua|tiga|empat|lima|enam|tujuh|delapan|lapan|sembilan|sepuluh|sebelas|belas|puluh|ratus|ribu"
    r"|một|bốn|sáu|bảy|tám|chín|mười|mươi|trăm|nghìn"
    r"|isa|dalawa|tatlo|apat|anim|pito|walo|siyam|sampu"
)
_OPERAND_END = re.compile(rf"(?:[\d)\]}}]|(?<![^\W\d_])[A-Za-z]|(?<![^\W\d_])(?i:{_NUMBER_WORDS}))$")


def _plain_sign(match: re.Match[str]) -> str:
    before = match.string[max(0, match.start() - 20) : match.start()].rstrip()
    return match.group(0) if _OPERAND_END.search(before) else "-"


def plain_number_words(text: str, language: str | None) -> str:
    """``text`` with the words and marks that write a number as digits, in any language (numbers read as
    ``language`` writes them): a number with its scale words (15 ribu, 1,5 triệu in Vietnamese and Indonesian, with
    their decimal comma, 2 juta, 1 หมื่น, 2 ล้าน 5 แสน, 1만 5천, 3 million), a sign word before a number (minus 5,
    âm 7, negatif 5, ลบ 5, マイナス5, 负5, 零下5, not "10 minus 5", "10マイナス5" nor "ten minus 5"; not "2 hundred-dollar bills": 2), a mixed number (1 1/2, 2\\frac{1}{3}) and Unicode's vulgar fractions
    (½, 1½, ⅔). Japanese and Chinese units are :func:`plain_unit_numerals`'."""
    text = text.replace("\u2044", "/")
    text = _MIXED_RE.sub(_plain_mixed, _VULGAR_RE.sub(_plain_vulgar, text))
    if _SCALE_WORD_RE.search(text):
        text = _scaled_run_re(language).sub(lambda run: _plain_scaled(run.group(0), language), text)
    return _SIGN_WORD.sub(_plain_sign, text)


# Units a reference answer may carry: currencies (before or after the number), SI units, and the units and counters
# Japanese, Chinese, Thai and Vietnamese write after a number. Percent is not one: "45%" is a number with its own
# rule (tempa.alignment.answer_text.numbers_agree: 45% gives 45 and 0.45).
_CURRENCY_BEFORE = ("US$", "S$", "HK$", "NT$", "A$", "$", "¥", "￥", "€", "£", "₫", "₹", "₱", "₩", "฿", "Rp", "RM")
_UNITS_AFTER = (
    # currencies
    "円", "元", "块", "块钱", "圓", "圆", "日元", "美元", "人民币", "人民幣", "ドル", "ユーロ", "บาท", "ดอลลาร์",
    "đ", "₫", "đồng", "dong", "VND", "VNĐ", "USD", "JPY", "CNY", "RMB", "THB", "IDR", "MYR", "SGD", "PHP", "EUR",
    "INR", "$", "€", "¥", "yen", "yuan", "baht", "rupiah", "ringgit", "dollars", "dollar", "euros", "euro",
    # SI and common units
    "mm", "cm", "dm", "m", "km", "mm²", "cm²", "m²", "km²", "mm2", "cm2", "m2", "km2", "mm^2", "cm^2", "m^2",
    "km^2", "cm³", "m³", "cm3", "m3", "cm^3", "m^3", "ml", "mL", "l", "L", "mg", "g", "kg", "t", "s", "ms", "min",
    "h", "km/h", "m/s", "°C", "℃", "°F", "°", "W", "kW", "V", "A", "Hz", "kHz", "J", "kJ", "N", "Pa", "kPa", "cal",
    "kcal",
    # Japanese and Chinese units and counters
    "キロ", "キログラム", "キロメートル", "メートル", "センチ", "センチメートル", "ミリ", "グラム", "リットル",
    "米", "厘米", "毫米", "公里", "公斤", "克", "斤", "吨", "升", "毫升", "度", "秒", "分", "分钟", "分鐘",
    "小时", "小時", "時間", "天", "日", "年", "个月", "か月", "ヶ月", "個", "个", "人", "名", "本", "枚", "匹", "頭",
    "头", "羽", "台", "冊", "册", "件", "回", "次", "倍", "歳", "岁", "只", "条", "條", "张", "張", "辆", "輛", "颗",
    "顆", "棵", "杯", "箱", "袋",
    # Thai and Vietnamese units and counters
    "กิโลกรัม", "กิโลเมตร", "เมตร", "เซนติเมตร", "กรัม", "ลิตร", "ชั่วโมง", "นาที", "วินาที", "คน", "ชิ้น", "ผล",
    "อัน", "ตัว", "mét", "lít", "giờ", "phút", "giây", "người", "cái", "quả", "con",
)


def _alternatives(words: tuple[str, ...]) -> str:
    return "|".join(re.escape(word) for word in sorted(set(words), key=len, reverse=True))


@functools.cache
def _unit_number_re(language: str | None) -> re.Pattern[str]:
    number = rf"[-+−]?(?:{number_body(language)}|{_NUMERAL})"
    return re.compile(rf"(?:{_alternatives(_CURRENCY_BEFORE)})\s*(?P<after>{number})"
                      rf"|(?P<before>{number})[\s{_GROUP_SPACES}]*(?:{_alternatives(_UNITS_AFTER)})")


def unit_number(text: str, language: str | None = None) -> str | None:
    """The number of a reference answer that is a number with a unit or currency ("12,000円", "12 cm", "₫100.000",
    "1,250 บาท"), as written (with its scale words as digits: "15 ribu rupiah" is "15000", :func:`plain_number_words`);
    None when ``text`` is not one. Both answer readers compare such a reference as its
    number, so "答えは12000円" and "\\boxed{12}" give "12,000円" and "12 cm" in training and in evaluation alike."""
    written = plain_number_words(text.translate(FULL_WIDTH | DIGITS), language)  # 15 ribu rupiah
    found = _unit_number_re(language).fullmatch(unicodedata.normalize("NFC", written).strip())
    number = (found.group("after") or found.group("before")) if found else None
    if number and re.search(f"[{_HAN}]", number):
        # 四十二個 is a number with a counter only where Han numerals are read (ja, zh), and 十分 (enough) none
        reading = cjk_reading(text, language)
        han = _han_number(reading).match(found.group(0)) if reading else None
        if not (reading and han and plain_cjk_number(number, reading) is not None
                and (not _han_only(han) or _is_quantity(found.group(0), han))):
            return None
    return number


# Digits in a circle (①, ②, ⑳, ㉑, ⓪): how a Korean or Japanese multiple-choice question labels its options, CSAT-style,
# and a reply names its pick. A circled digit is the number it circles (NFKC writes ③ as 3), so "정답은 ③입니다", "3번"
# and "3" give the reference ③ alike, and ③ gives the reference 3.
CIRCLED_DIGITS = "".join(
    char for char in map(chr, range(0x80, 0x10000))
    if unicodedata.decomposition(char).startswith("<circle>") and unicodedata.normalize("NFKC", char).isdigit())

# Full-width ASCII forms (U+FF01..U+FF5E: ４２, ＝, ，) and the ideographic space, as CJK input methods type them;
# a full-width colon carries its own spacing, and math-verify reads no number right after a bare ':'.
FULL_WIDTH = {code: unicodedata.normalize("NFKC", chr(code)) for code in range(0xFF01, 0xFF5F)} | {
    0xFF1A: ": ", 0x3000: " "}
# The minus sign (U+2212) that typeset and LaTeX-rendered text writes: math-verify reads no number in "−5".
_MINUS = {0x2212: "-"}
# The decimal digits of other scripts as ASCII (Thai ๑,๒๕๐ is 1,250; Devanagari, Arabic-Indic, Lao, Khmer, Myanmar, ...):
# `\d` matches them, but the patterns that place a thousands comma start with [1-9], and math-verify reads none.
DIGITS = {code: str(unicodedata.decimal(chr(code))) for code in range(0x80, 0x10000)
          if unicodedata.category(chr(code)) == "Nd"}
# A digit run touching a wide (Han, kana, Hangul) character, or one of a script written without spaces between words
# (Thai, Lao, Myanmar, Khmer): "答えは42です", "คำตอบคือ1250บาท".
_UNSPACED = r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u1100-\u11ff\u2e80-\ua4cf\uac00-\ud7af\uf900-\ufaff]"
# A sign goes with its digits: "答えは-5" spaced as "答えは -5" (math-verify reads no number in "は -" + "5").
_DIGITS_BY_WIDE = re.compile(rf"(?<={_UNSPACED})(?=[-+−]?\d)|(?<=\d)(?={_UNSPACED})")
# A number glued to a word before it ("Rp1250", "₹1250" is fine already); one letter ("x2") may be a variable.
_DIGITS_AFTER_WORD = re.compile(r"(?<=[^\W\d_]{2})(?=\d)")


def math_text(answer: str, language: str | None = None) -> str:
    """``answer`` as math-verify can read it: full-width forms as ASCII, numbers written plainly as ``language``
    reads them (math-verify reads "1.250" as 1.25 and "1 000" as 1000, whatever the language), and a space between
    a number (with its sign) and the CJK or Thai text or word around it; in Japanese and Chinese, Han numerals
    (1万2千, and 四十二 where the reply writes no digits) as digits, and in any language number words, mixed numbers
    and vulgar fractions (15 ribu, minus 5, 1 1/2, ½: :func:`plain_number_words`) as digits. math-verify finds a number only at a word boundary, and
    Han, kana, Hangul and Thai are word characters, so it found none in "答えは42です" or "คือ1250บาท" (and none in
    "４２" or "Rp1250" at all)."""
    text = answer.translate(FULL_WIDTH | _MINUS | DIGITS)
    reading = cjk_reading(text, language)
    text = plain_number_words(plain_unit_numerals(text, reading), language)
    if not _number_re(language).search(text):  # a reply that writes digits commits to them (see han_numbers)
        text = plain_han_numerals(text, reading)
    text = plain_numbers(text, language)
    return _DIGITS_AFTER_WORD.sub(" ", _DIGITS_BY_WIDE.sub(" ", text))
