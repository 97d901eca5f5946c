"""Numbers as people write them, in any language: one rule for the answer reward and the accuracy suite.

"1.250" is 1250 in Indonesian or Vietnamese but 1.25 in English or Thai; "1,25,000" is Indian lakh grouping;
"答えは42です" and "คือ1250บาท" glue digits to text that math-verify reads as one word. The answer reward
(:mod:`tempa.alignment.rewards`) and the evaluate stage's accuracy suite (:mod:`tempa.merge.answers`) read numbers
by the functions here, so a reply scores the same in training and in evaluation.
"""

from __future__ import annotations

import functools
import re
import unicodedata

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
    text = re.sub(rf"[\s{_GROUP_SPACES}]", "", unicodedata.normalize("NFKC", token))
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


# Units a reference answer may carry: currencies (before or after the number), SI units, and the units and counters
# Japanese, Chinese, Thai and Vietnamese write after a number. Percent is not one: both readers read "45%" already
# (the accuracy suite as 45, math-verify as 45 or 0.45).
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
    number = rf"[-+−]?(?:{number_body(language)})"
    return re.compile(rf"(?:{_alternatives(_CURRENCY_BEFORE)})\s*(?P<after>{number})"
                      rf"|(?P<before>{number})[\s{_GROUP_SPACES}]*(?:{_alternatives(_UNITS_AFTER)})")


def unit_number(text: str, language: str | None = None) -> str | None:
    """The number of a reference answer that is a number with a unit or currency ("12,000円", "12 cm", "₫100.000",
    "1,250 บาท"), as written; None when ``text`` is not one. Both answer readers compare such a reference as its
    number, so "答えは12000円" and "\\boxed{12}" give "12,000円" and "12 cm" in training and in evaluation alike."""
    found = _unit_number_re(language).fullmatch(unicodedata.normalize("NFC", text.translate(FULL_WIDTH)).strip())
    return (found.group("after") or found.group("before")) if found else None


# Full-width ASCII forms (U+FF01..U+FF5E: ４２, ＝, ，) and the ideographic space, as CJK input methods type them;
# a full-width colon carries its own spacing, and math-verify reads no number right after a bare ':'.
FULL_WIDTH = {code: unicodedata.normalize("NFKC", chr(code)) for code in range(0xFF01, 0xFF5F)} | {
    0xFF1A: ": ", 0x3000: " "}
# The minus sign (U+2212) that typeset and LaTeX-rendered text writes: math-verify reads no number in "−5".
_MINUS = {0x2212: "-"}
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
    a number (with its sign) and the CJK or Thai text or word around it. math-verify finds a number only at a word boundary, and
    Han, kana, Hangul and Thai are word characters, so it found none in "答えは42です" or "คือ1250บาท" (and none in
    "４２" or "Rp1250" at all)."""
    text = plain_numbers(answer.translate(FULL_WIDTH | _MINUS), language)
    return _DIGITS_AFTER_WORD.sub(" ", _DIGITS_BY_WIDE.sub(" ", text))
