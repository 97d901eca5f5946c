"""Language identification: which language a text is in, and whether that is the one wanted.

One home for the rules every language check in tempa shares (SFT curation's language filter, the
preference stage's ``language`` reward, the evaluate stage's ``language`` suite):

- **codes**: users write ISO 639-1 (``id``), ISO 639-2/3 (``ind``, ``fil``), BCP 47 tags
  (``zh-Hant``, ``ms_MY``) or FLORES-200 codes (``tha_Thai``, ``jpn_Jpan``); :func:`canonical` maps them to
  the detector's spelling (:data:`ALIASES`), :func:`check_codes` rejects what it cannot detect;
- **equivalence**: languages the detector cannot reliably tell apart count as one by default
  (:data:`EQUIVALENT`); callers may pass their own groups, or none;
- **minimum length**: text with fewer than :data:`MIN_LETTERS` letters of prose is
  *undetermined* (``Detection.language is None``), never "the wrong language": a bare number or
  ``OK`` says nothing about the language an answer is in;
- **Japanese or Chinese**: the detector files kanji-heavy Japanese (北海道の札幌市) under Chinese and Chinese
  quoting a katakana label (我觉得是ネガティブ) under Japanese, so the script decides: what Chinese writes and
  Japanese does not (a character such as 这 or 们, the copula 是, the particle 了, the pronoun 我, the comma
  ``，``) is counted against the words of kana (Japanese's particles and endings; a label quoted in Chinese is
  one word): text with kana is Japanese unless the Chinese evidence, a comma not alone, is at least as much as
  its kana words; Han characters alone are Chinese with any such evidence and undetermined for every target
  without it, however many (富士山, 東京大学大学院情報理工学系研究科);
- **Korean or Chinese/Japanese**: the detector files Korean written with hanja (大韓民國은 民主共和國이다) under Chinese
  and Chinese quoting a Korean word (他说사랑해요) under Korean; Korean grammar is written in Hangul, a particle or an
  ending after nearly every hanja word, so text mixing Hangul with Han or kana is Korean when its words of Hangul
  outnumber the other languages' evidence (words of kana, Chinese evidence against Korean's character set), and
  is otherwise judged as Japanese or Chinese;
- **width**: half-width katakana (ｶﾀｶﾅ) and full-width Latin letters and digits are read as their usual forms;
- **prose only**: fenced and inline code, LaTeX math and URLs are removed before detection
  (:func:`prose`); an Indonesian explanation around a Python snippet is Indonesian.

The detector is py3langid (offline, 140+ languages including Burmese, Khmer and Lao), with
normalised probabilities; it can be restricted to a set of languages (e.g. a benchmark's), which
removes most confusions with languages that cannot occur.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tempa.sft.suggest import closest

# Spellings users write -> the detector's code. Only true synonyms (the same language under
# another name or code standard) belong here; languages that are merely hard to tell apart go in
# EQUIVALENT, which a caller can switch off.
ALIASES: Mapping[str, str] = {
    # Malay / Indonesian (ISO 639-1 ms / id)
    "in": "id",  # Indonesian's ISO 639-1 code before 1989, still emitted by Java's Locale
    "ind": "id",  # ISO 639-2/3 Indonesian (FLORES: ind_Latn)
    "msa": "ms",  # ISO 639-2/T Malay (macrolanguage)
    "may": "ms",  # ISO 639-2/B Malay
    "zsm": "ms",  # ISO 639-3 Standard Malay (FLORES: zsm_Latn), Malaysia's and Brunei's
    "zlm": "ms",  # ISO 639-3 Malay (individual language), used for Malaysian Malay corpora
    # Filipino is the standardised register of Tagalog; the detector knows it as tl.
    "fil": "tl",
    "tgl": "tl",  # ISO 639-2/3 Tagalog (FLORES: tgl_Latn)
    # Mainland SEA and Tamil, ISO 639-2/3 (FLORES) codes
    "tha": "th",
    "vie": "vi",
    "tam": "ta",
    "mya": "my",  # Burmese, ISO 639-2/T and 639-3
    "bur": "my",  # Burmese, ISO 639-2/B
    "khm": "km",
    "lao": "lo",
    "jav": "jv",
    "jw": "jv",  # Google's code for Javanese
    "eng": "en",
    # Chinese: the detector's zh is written Mandarin in either script (see EQUIVALENT for yue).
    "zho": "zh",
    "chi": "zh",
    "cmn": "zh",  # ISO 639-3 Mandarin
    # Norwegian: the detector's no is Bokmål (Wikipedia "no"); Nynorsk (nn) is its own class.
    "nb": "no",
    "nob": "no",
    "nor": "no",
    "nno": "nn",
    "iw": "he",  # Hebrew's ISO 639-1 code before 1989
    # FLORES-200 names individual languages where ISO 639-1 has the macrolanguage.
    "arb": "ar", "ekk": "et", "pes": "fa", "prs": "fa", "lvs": "lv", "khk": "mn", "npi": "ne", "ory": "or",
    "pbt": "ps", "als": "sq", "swh": "sw", "uzn": "uz", "azj": "az", "gaz": "om", "plt": "mg", "kmr": "ku",
    "quy": "qu",
    **{iso3: iso1 for iso1, codes in (
        # The ISO 639-2/T (= 639-3) code, then any 639-2/B code, of every other ISO 639-1 language the detector knows.
        ("af", "afr"), ("am", "amh"), ("an", "arg"), ("ar", "ara"), ("as", "asm"), ("az", "aze"), ("ba", "bak"),
        ("be", "bel"), ("bg", "bul"), ("bn", "ben"), ("br", "bre"), ("bs", "bos"), ("ca", "cat"), ("cs", "ces cze"),
        ("cy", "cym wel"), ("da", "dan"), ("de", "deu ger"), ("dz", "dzo"), ("el", "ell gre"), ("eo", "epo"),
        ("es", "spa"), ("et", "est"), ("eu", "eus baq"), ("fa", "fas per"), ("fi", "fin"), ("fo", "fao"),
        ("fr", "fra fre"), ("fy", "fry"), ("ga", "gle"), ("gd", "gla"), ("gl", "glg"), ("gu", "guj"), ("ha", "hau"),
        ("he", "heb"), ("hi", "hin"), ("hr", "hrv"), ("ht", "hat"), ("hu", "hun"), ("hy", "hye arm"), ("ig", "ibo"),
        ("is", "isl ice"), ("it", "ita"), ("ja", "jpn"), ("ka", "kat geo"), ("kk", "kaz"), ("kn", "kan"),
        ("ko", "kor"), ("ku", "kur"), ("ky", "kir"), ("la", "lat"), ("lb", "ltz"), ("lg", "lug"), ("ln", "lin"),
        ("lt", "lit"), ("lv", "lav"), ("mg", "mlg"), ("mk", "mkd mac"), ("ml", "mal"), ("mn", "mon"), ("mr", "mar"),
        ("mt", "mlt"), ("ne", "nep"), ("nl", "nld dut"), ("oc", "oci"), ("om", "orm"), ("or", "ori"), ("pa", "pan"),
        ("pl", "pol"), ("ps", "pus"), ("pt", "por"), ("qu", "que"), ("ro", "ron rum"), ("ru", "rus"), ("rw", "kin"),
        ("sa", "san"), ("se", "sme"), ("si", "sin"), ("sk", "slk slo"), ("sl", "slv"), ("sn", "sna"), ("so", "som"),
        ("sq", "sqi alb"), ("sr", "srp"), ("st", "sot"), ("sv", "swe"), ("sw", "swa"), ("te", "tel"), ("tg", "tgk"),
        ("tk", "tuk"), ("tr", "tur"), ("tt", "tat"), ("ug", "uig"), ("uk", "ukr"), ("ur", "urd"), ("uz", "uzb"),
        ("vo", "vol"), ("wa", "wln"), ("xh", "xho"), ("yo", "yor"), ("zu", "zul"),
    ) for iso3 in codes.split()},
}

# What people write where a code goes: suggested ("did you mean 'id'?"), never taken silently, as a name
# is no code a dataset or another tool would read.
NAMES: Mapping[str, str] = {
    "indonesian": "id", "bahasa": "id", "malay": "ms", "thai": "th", "vietnamese": "vi", "vn": "vi",
    "tagalog": "tl", "filipino": "tl", "tamil": "ta", "burmese": "my", "myanmar": "my", "khmer": "km",
    "javanese": "jv", "english": "en", "chinese": "zh", "mandarin": "zh",
    "cantonese": "yue", "japanese": "ja", "jp": "ja", "korean": "ko", "kr": "ko",
    # and languages' own names for themselves
    "bahasa indonesia": "id", "bahasa melayu": "ms", "ภาษาไทย": "th", "ไทย": "th", "tiếng việt": "vi",
    "தமிழ்": "ta", "日本語": "ja", "中文": "zh", "한국어": "ko", "မြန်မာ": "my", "ខ្មែរ": "km", "ລາວ": "lo",
}

# Groups of detector codes that count as one language unless a caller passes other groups.
# Each is a confusion measured on py3langid, not a claim that the languages are the same:
# - id ~ ms: Indonesian and Malay share most of their vocabulary; Indonesian sentences such as
#   "Saya pergi ke pasar untuk membeli buah dan sayur segar." are detected as ms (p 0.62).
# - zh ~ yue ~ wuu: written Cantonese and Wu share the Han script with Mandarin, and short
#   Mandarin is detected as either: "我們這個週末要去海邊。" and "我喜欢吃苹果" as yue, "北京是首都" as wuu.
EQUIVALENT: tuple[tuple[str, ...], ...] = (("id", "ms"), ("zh", "yue", "wuu"))

# Fewer letters of prose than this: undetermined. On single sentences in id, ms, tl, vi, en, jv,
# th, ta, my and zh cut at every word, py3langid's guesses went wrong only below 9 letters
# ("Cuaca" -> ga, "Paano ka" -> so, "Anak-anak" -> jv); 12 leaves a margin.
MIN_LETTERS = 12
# A Han, kana or Hangul character (East Asian wide) counts as this many letters: it carries about
# a word, a whole sentence fits in 10 of them, and zh/ja/ko sentences cut after their 3rd
# character were already identified right (zh ~ yue ~ wuu).
WIDE_LETTER = 4

# Japanese is told from Chinese by its kana, Chinese from Japanese by what Japanese does not write: a character of a
# Chinese character set outside Japanese's, a Chinese word, the copula 是, the particle 了, the pronoun 我, the comma
# ，. Han characters with none of it (富士山, 東京都千代田区永田町一丁目七番一号, 日本国憲法第九条戦争放棄条項) read as
# both, however many: a name, an address, a term. The detector files them under Chinese; they are undetermined for
# any target (the answers file's `detected` is empty too). Length is no evidence: real Chinese sentences nearly
# always carry some, Japanese terms and addresses run to 20 kanji and more.
CHINESE = frozenset({"zh", "yue", "wuu"})  # the detector's Han-script Chinese classes
# Chinese words in characters Japanese's character set holds but modern Japanese does not write (these, plural
# -們, very, not, what, the measure word 个); any other Chinese-only character is found by its character set
# (_chinese_only).
_CHINESE_WORDS = frozenset("這們很沒麼个")
# Chinese's copula 是 (北京是首都, 答案是ウ); Japanese writes 是 only in a few words (是非, 是正, 是認, 是々非々, 是が非でも,
# 国是, 社是, 党是, 如是).
_CHINESE_COPULA = re.compile(r"(?<![国國社党黨如是])是(?![非正認是々が])")
# Chinese's aspect particle 了 (我買了一本書); Japanese writes 了 only in words (完了, 終了, 修了, 満了, 魅了, 読了, 投了,
# 未了, 校了, 了解, 了承, 了見, 了簡).
_CHINESE_PARTICLE = re.compile(r"(?<![完終修満滿魅読讀投未校])了(?![解承見簡])")
# Chinese's pronoun 我 (我想去日本旅行); Japanese writes 我 only in words (我慢, 我流, 我田引水, 我々, 我が国, 自我, 怪我,
# 無我, 彼我, 我儘, 唯我独尊, ...) and the city 我孫子 (我孫子市で住宅火災), which Chinese's 我孫子 (my grandson) loses.
_CHINESE_PRONOUN = re.compile(r"(?<![自彼怪無忘没大小真物唯])我(?![慢流田執欲利国國等輩見意儘々\u3041-\u30ff]|孫子)")
# Chinese writes its comma full width; Japanese mostly writes 、, though some of its technical prose writes ，.
_CHINESE_COMMA = "，"
# A word of kana: a particle or an ending in Japanese, a quoted option label or term (ウ, ネガティブ) in Chinese.
_KANA_WORD = re.compile(r"[\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff]+")
# Jōyō kanji that the 2010 revision gave in forms outside CP932 (剝がす, 頰), and kanji of Japanese names outside it
# (森鷗外, 𠮷野家): Japanese, though Big5 holds some.
_JAPANESE_FORMS = frozenset("剝頰塡\U00020B9F鷗\U00020BB7")
# Old forms (kyūjitai) that Traditional Chinese writes and modern Japanese replaced with a jōyō form (國 -> 国, 學 -> 学,
# 會 -> 会, 體 -> 体), old -> new: the jōyō table's bracketed old forms and a few more (灣 賴 晉), kept where Big5
# and CP932 both hold the old form (outside CP932 _chinese_only already finds it) and left out where Japanese surnames
# still write it (櫻 澤 邊 齋 廣 濱 龍). A curated list: no table of them ships with Python or our dependencies.
# Japanese writes them only in proper names (國學院大學), so they count only where there is no kana (see
# _japanese_or_chinese), as does 於, which Chinese writes as a preposition and modern Japanese in kana (において).
_OLD_FORMS = dict(re.findall(r"(\S)(\S)",
    "亞亜 惡悪 壓圧 圍囲 醫医 壹壱 隱隠 營営 榮栄 驛駅 圓円 鹽塩 應応 歐欧 毆殴 奧奥 橫横 假仮 "
    "價価 畫画 會会 壞壊 懷懐 繪絵 擴拡 殼殻 覺覚 學学 樂楽 勸勧 卷巻 歡歓 觀観 關関 陷陥 顏顔 "
    "氣気 歸帰 戲戯 犧犠 舊旧 據拠 峽峡 狹狭 曉暁 區区 驅駆 勳勲 徑径 莖茎 經経 繼継 輕軽 螢蛍 "
    "藝芸 儉倹 劍剣 圈圏 檢検 權権 獻献 縣県 險険 顯顕 驗験 嚴厳 效効 恆恒 號号 國国 黑黒 濟済 "
    "碎砕 劑剤 雜雑 參参 慘惨 棧桟 蠶蚕 贊賛 殘残 絲糸 齒歯 兒児 辭辞 濕湿 實実 寫写 釋釈 壽寿 "
    "收収 從従 獸獣 縱縦 肅粛 處処 將将 稱称 燒焼 證証 條条 乘乗 淨浄 剩剰 疊畳 讓譲 釀醸 觸触 "
    "寢寝 盡尽 圖図 粹粋 醉酔 隨随 髓髄 數数 樞枢 聲声 靜静 齊斉 攝摂 竊窃 專専 戰戦 淺浅 潛潜 "
    "纖繊 踐践 錢銭 禪禅 雙双 壯壮 搜捜 插挿 爭争 總総 聰聡 莊荘 裝装 騷騒 增増 藏蔵 臟臓 屬属 "
    "續続 墮堕 體体 對対 帶帯 滯滞 臺台 擇択 單単 擔担 膽胆 團団 彈弾 斷断 癡痴 遲遅 晝昼 蟲虫 "
    "鑄鋳 廳庁 聽聴 遞逓 鐵鉄 轉転 點点 傳伝 黨党 盜盗 燈灯 當当 獨独 讀読 貳弐 惱悩 腦脳 廢廃 "
    "拜拝 賣売 麥麦 發発 髮髪 拔抜 蠻蛮 拂払 佛仏 變変 辨弁 瓣弁 辯弁 舖舗 穗穂 寶宝 豐豊 萬万 "
    "滿満 默黙 譯訳 藥薬 與与 豫予 餘余 譽誉 搖揺 樣様 謠謡 來来 亂乱 覽覧 兩両 獵猟 綠緑 壘塁 "
    "勵励 禮礼 隸隷 靈霊 齡齢 戀恋 爐炉 勞労 樓楼 灣湾 賴頼 瀨瀬 晉晋"
))
_KANJI_ONLY_CHINESE = frozenset(_OLD_FORMS) | {"於"}
# Chinese words Japanese has no word for, in characters it shares (準確: Japanese 正確; 提高: 高める), counted like the
# old forms: a sentence in shared characters with none of them stays undetermined.
_KANJI_ONLY_CHINESE_WORDS = re.compile("準確|提高|因為|可以|如果|認為|但是")

# The detector's classes of text written in Han characters (with kana or Hangul or without), which it confuses.
_HAN_SCRIPT = CHINESE | {"ja", "ko"}
# A word of Hangul (syllables and jamo): a particle or an ending in Korean written with hanja (民主共和國이다), a quoted
# word in Chinese or Japanese (他说사랑해요).
_HANGUL_WORD = re.compile(r"[\u1100-\u11ff\u3131-\u318e\ua960-\ua97f\uac00-\ud7a3\ud7b0-\ud7ff]+")

# py3langid's class for text without linguistic content (numbers, symbols, markup).
_NO_LANGUAGE = "zxx"

_FENCED_CODE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*\1[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"(`+)[^`\n].*?\1", re.DOTALL)
_DISPLAY_MATH = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.DOTALL)
# Pandoc's rule for inline math: "$" + non-space ... non-space + "$" not followed by a digit,
# so "$5 and $10" stays text.
_INLINE_MATH = re.compile(r"(?<![\\$\w])\$(?=\S)[^$\n]*?(?<=\S)\$(?!\d)")
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.IGNORECASE)
# Full-width digits and Latin letters, half-width katakana and Hangul: legacy-encoding forms the detector saw
# little of (ｶﾀｶﾅﾀﾞｹﾉﾃｷｽﾄﾃﾞｽ came out as wuu). Full-width punctuation stays, as CJK text writes it.
_WIDTH_FORMS = re.compile(r"[\uFF10-\uFF19\uFF21-\uFF3A\uFF41-\uFF5A\uFF61-\uFFDC]+")


def prose(text: str) -> str:
    """``text`` without fenced or inline code, LaTeX math and URLs: the part worth identifying."""
    for pattern in (_FENCED_CODE, _INLINE_CODE, _DISPLAY_MATH, _INLINE_MATH, _URL):
        text = pattern.sub(" ", text)
    return text


def fold_width(text: str) -> str:
    """``text`` with half-width katakana and Hangul made full width, full-width digits and Latin letters ASCII (NFKC)."""
    # NFKC over whole runs: a half-width voiced mark (ﾀﾞ) composes with the kana before it (ダ).
    return _WIDTH_FORMS.sub(lambda run: unicodedata.normalize("NFKC", run.group()), text)


def letter_count(text: str) -> int:
    """Unicode letters (categories L*) in ``text``, a wide (CJK) one as :data:`WIDE_LETTER`.

    Digits, punctuation and combining marks (Thai, Burmese and Tamil vowel signs) do not count.
    """
    return sum(
        WIDE_LETTER if unicodedata.east_asian_width(ch) == "W" else 1
        for ch in text
        if unicodedata.category(ch).startswith("L")
    )


@functools.cache
def _identifier(languages: tuple[str, ...] | None):
    # Loading the model takes about half a second: once per process and language set.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    if languages:
        identifier.set_languages(list(languages))
    return identifier


@functools.cache
def supported() -> frozenset[str]:
    """Every code the detector can return."""
    return frozenset(_identifier(None).labels) - {_NO_LANGUAGE}


def canonical(code: str) -> str:
    """The detector's spelling of a language code: ``fil`` -> ``tl``, ``zh-Hant`` -> ``zh``, ``tha_Thai`` -> ``th``."""
    code = str(code).strip().lower().replace("_", "-")
    code = ALIASES.get(code, code)
    if code not in supported() and "-" in code:  # a region/script subtag: zh-hant, ms-my, ind-latn
        primary = code.split("-", 1)[0]
        code = ALIASES.get(primary, primary)
    return code


def check_codes(codes: Iterable[str]) -> list[str]:
    """``codes`` in the detector's spelling; ValueError naming the first one it cannot detect."""
    out = []
    for code in codes:
        spelled = canonical(code)
        if spelled not in supported():
            # A two- or three-letter code that is not known is another language's code (ceb: Cebuano), not a typo.
            typed = str(code).strip().lower()
            hint = NAMES.get(typed) or (closest(typed, [*supported(), *ALIASES, *NAMES]) if len(typed) > 3 else None)
            hint = NAMES.get(hint, hint) if hint else None
            if hint:  # 'thai': 'th', not the alias 'tha'; a good guess says more than 139 codes
                raise ValueError(f"language code {code!r} is not one the language detector (py3langid) knows "
                                 f"(did you mean {canonical(hint)!r}?)")
            raise ValueError(
                f"language code {code!r} is not one the language detector (py3langid) knows; "
                f"known: {', '.join(sorted(supported()))}"
            )
        out.append(spelled)
    return list(dict.fromkeys(out))


def accepted(targets: Iterable[str], equivalent: Iterable[Iterable[str]] = EQUIVALENT) -> frozenset[str]:
    """The target codes (detector spelling) plus every code in an ``equivalent`` group with one of them."""
    codes = {canonical(t) for t in targets}
    for group in equivalent:
        members = {canonical(c) for c in group}
        if members & codes:
            codes |= members
    return frozenset(codes)


@dataclass(frozen=True)
class Detection:
    """The detector's verdict on one text. ``language`` None: too little prose to tell, or Han characters that
    are Japanese as much as Chinese."""

    language: str | None
    probability: float = 0.0  # of ``language``, normalised over the candidate languages
    probabilities: Mapping[str, float] = field(default_factory=dict, repr=False)

    def probability_of(self, codes: Iterable[str]) -> float:
        """How likely the text is in any of ``codes`` (e.g. a target and its equivalents)."""
        return sum(self.probabilities.get(code, 0.0) for code in set(codes))

    def is_in(self, codes: frozenset[str]) -> bool | None:
        """Whether the detected language is one of ``codes`` (see :func:`accepted`); None when undetermined."""
        if self.language is None:
            return None
        return self.language in codes


UNDETERMINED = Detection(None)


def detect(text: str, languages: Sequence[str] | None = None, *, min_letters: int = MIN_LETTERS) -> Detection:
    """The language of ``text``'s prose, optionally among ``languages`` only.

    Undetermined when the prose (code, math and URLs removed) has fewer than ``min_letters``
    letters, the detector files it under "no linguistic content", or it is Han characters with nothing that tells
    Japanese from Chinese (see :func:`_japanese_or_chinese`).
    """
    text = fold_width(prose(text))
    if letter_count(text) < min_letters:
        return UNDETERMINED
    key = tuple(sorted(set(check_codes(languages)))) if languages else None
    probabilities = dict(_identifier(key).rank(text))
    best = max(probabilities, key=probabilities.__getitem__)
    if best == _NO_LANGUAGE:
        return UNDETERMINED
    found = Detection(best, float(probabilities[best]), probabilities)
    if best in _HAN_SCRIPT:
        return _by_script(text, found, _HAN_SCRIPT if key is None else _HAN_SCRIPT & set(key))
    return found


def _by_script(text: str, found: Detection, possible: frozenset[str]) -> Detection:
    """``found`` (Korean, Japanese or a Chinese class) decided by the script among the ``possible`` ones; only where
    two can be the answer, as a caller that rules one out has said which it is.

    Korean first: py3langid reads Korean written with hanja (大韓民國 憲法 第一條에 따르면, 서울特別市 鍾路區) as Chinese,
    and Chinese quoting a Korean word (他说사랑해요, “안녕하세요 반갑습니다”是韩语的问候) as Korean. Korean grammar is
    written in Hangul, a particle or an ending after nearly every hanja word (大韓民國은 民主共和國이다: two words of
    Hangul, no Chinese evidence), while Chinese or Japanese quoting Korean has a word or two of it against grammar of
    its own. So text mixing Hangul with Han or kana is Korean when its words of Hangul outnumber its words of kana
    and its Chinese evidence against Korean's character set (:func:`_chinese_evidence`; the old forms 國 學 count
    for nothing, Korean writes them), a tie going to the quoting language. By share of characters it could not be
    told: hanja carry most of Korean's characters, a quoted Korean word can be most of a short Chinese sentence's.
    """
    if ("ko" in possible and len(possible) > 1 and _HANGUL_WORD.search(text)
            and (any(map(_is_han, text)) or _KANA_WORD.search(text))):
        kana_words = len(_KANA_WORD.findall(text))
        words, commas = _chinese_evidence(text, against="cp949")
        if len(_HANGUL_WORD.findall(text)) > kana_words + words + (commas if words else 0):
            return _as(found, "ko")
        possible -= {"ko"}
        if found.language == "ko" and not ("ja" in possible and CHINESE & possible):
            # one language left to tell it from Korean by: it, where its own evidence outweighed the Hangul
            rivals = [*(sorted(CHINESE & possible) if words else ()), *(["ja"] if kana_words and "ja" in possible else ())]
            # in a fixed order, so a tie between Chinese classes always goes the same way
            return _as(found, max(rivals, key=lambda code: found.probabilities.get(code, 0.0))) if rivals else found
    if "ja" in possible and CHINESE & possible:
        return _japanese_or_chinese(text, found)
    return found


def _japanese_or_chinese(text: str, found: Detection) -> Detection:
    """``found`` (Japanese, a Chinese class, or Korean that their evidence outweighed) decided by the script: py3langid
    reads kana-bearing text with many kanji (北海道の札幌市) and any kanji-only text as Chinese, and Chinese around a
    quoted katakana label (我觉得是ネガティブ) as Japanese.

    Japanese grammar is written in kana, a particle or an ending every few kanji; Chinese quoting a Japanese label
    or term has a word of kana or two. So each word of kana counts for Japanese, and each piece of Chinese evidence
    (:func:`_chinese_evidence`) for Chinese; a tie is Chinese (答案是ウ). Japanese's technical prose writes ``，``
    too, so commas alone never outweigh kana. Han characters alone are Chinese with any evidence, an old form
    (國, 學), 於 or a word such as 準確 included; with kana those never count, Japanese names write them (國學院大學の入試).
    """
    kana_words = len(_KANA_WORD.findall(text))
    if not kana_words and not any(map(_is_han, text)):
        return found
    words, commas = _chinese_evidence(text)
    if kana_words and not (words and words + commas >= kana_words):
        return _as(found, "ja")
    if words or commas or (not kana_words and (any(ch in _KANJI_ONLY_CHINESE for ch in text)
                                                 or _KANJI_ONLY_CHINESE_WORDS.search(text))):
        # the detector's likeliest Chinese class; in a fixed order, so a tie always goes the same way
        return _as(found, max(("zh", "yue", "wuu"), key=lambda code: found.probabilities.get(code, 0.0)))
    return UNDETERMINED  # Han characters that read as both: a name, an address, a term, however long


def _chinese_evidence(text: str, against: str = "cp932") -> tuple[int, int]:
    """(characters and words of ``text`` that Chinese writes and Japanese does not, its Chinese commas); with
    ``against="cp949"``, what Chinese writes and Korean does not: characters outside Korean's hanja set (KS X 1001),
    e.g. 说 这 们 but not 說 鍾, which Japanese's lacks and Korean's holds."""
    words = sum(_is_han(ch) and (ch in _CHINESE_WORDS or _chinese_only(ch, against)) for ch in text)
    words += sum(len(pattern.findall(text)) for pattern in (_CHINESE_COPULA, _CHINESE_PARTICLE, _CHINESE_PRONOUN))
    return words, text.count(_CHINESE_COMMA)


def _as(found: Detection, code: str) -> Detection:
    """``found`` as ``code`` (ko, ja or a Chinese class), with the share the detector gave the other Han-script classes,
    or a curation threshold would see that share missing. Chinese's other classes keep theirs (zh~yue~wuu can be
    told apart by a caller's ``equivalent``)."""
    moved = _HAN_SCRIPT - (CHINESE if code in CHINESE else {code})
    share = min(1.0, found.probabilities.get(code, 0.0) + found.probability_of(moved))  # sums' rounding: 1.00000000004
    rest = {other: p for other, p in found.probabilities.items() if other not in moved}
    return Detection(code, share, {**rest, code: share})


def _is_han(ch: str) -> bool:
    return ("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or "\uf900" <= ch <= "\ufaff"
            or "\U00020000" <= ch <= "\U0003ffff")


@functools.cache
def _chinese_only(ch: str, against: str = "cp932") -> bool:
    # A character of a Chinese character set (GB 2312 simplified, Big5 traditional) outside Japanese's (CP932: JIS
    # X 0208, the set every jōyō kanji but four 2010 variants is in, and Windows' extensions): 这, 们, 说, 你, 吗; or
    # outside Korean's (CP949: KS X 1001's 4,888 hanja, all traditional forms).
    def holds(codec: str) -> bool:
        try:
            ch.encode(codec)
        except UnicodeEncodeError:
            return False
        return True

    return (holds("gb2312") or holds("big5")) and not holds(against) and ch not in _JAPANESE_FORMS


class LanguageRules(BaseModel):
    """The recipe knobs every language check shares (mixed into the curation filter's and the reward's configs)."""

    model_config = ConfigDict(extra="forbid")

    min_letters: int = Field(
        default=MIN_LETTERS,
        ge=1,
        description="Text with fewer letters of prose (code, math, URLs, digits and symbols removed; e.g. a bare "
        "number) is not judged.",
    )
    equivalent: list[list[str]] = Field(
        default_factory=lambda: [list(group) for group in EQUIVALENT],
        description="Groups of codes that count as one language (default: id~ms, zh~yue~wuu, which the detector "
        "confuses); [] for none.",
    )

    @field_validator("equivalent")
    @classmethod
    def _known_codes(cls, value: list[list[str]]) -> list[list[str]]:
        return [check_codes(group) for group in value]


TARGET = "target"  # in a reasoning policy's `languages`: the prompt's own language


class ReasoningLanguage(BaseModel):
    """Which languages the reasoning (the think block) may be in: one policy for the reward and the suite.

    Reasoning models trained on English or Chinese traces drift into those languages while the answer
    stays in the user's; this says what counts as drift.
    """

    model_config = ConfigDict(extra="forbid")

    languages: list[str] = Field(
        default_factory=lambda: [TARGET],
        min_length=1,
        description="Languages the reasoning may be in: `target` (the prompt's language) and/or codes, e.g. "
        "[target, en] to allow English reasoning too; [en] for English reasoning only.",
    )

    @field_validator("languages")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        codes = check_codes([code for code in value if code != TARGET])
        return ([TARGET] if TARGET in value else []) + codes

    def accepted(self, target: str | None, equivalent: Iterable[Iterable[str]] = EQUIVALENT) -> frozenset[str]:
        """The codes a reasoning for a prompt in ``target`` may be detected as (equivalents included)."""
        codes = [code for code in self.languages if code != TARGET]
        if TARGET in self.languages and target:
            codes.append(target)
        return accepted(codes, equivalent)


def reasoning_verdict(reasoning: str | None, target: str | None, policy: ReasoningLanguage, *,
                      languages: Sequence[str] | None = None, min_letters: int = MIN_LETTERS,
                      equivalent: Iterable[Iterable[str]] = EQUIVALENT) -> tuple[bool | None, str | None]:
    """(whether ``reasoning`` is in a language ``policy`` allows for a prompt in ``target``, detected code).

    None when there is nothing to judge: no reasoning, too little prose in it, or a policy that needs
    the prompt's language and the prompt has none.
    """
    if not reasoning or (TARGET in policy.languages and not target):
        return None, None
    allowed = policy.accepted(target, equivalent)
    found = detect(reasoning, languages, min_letters=min_letters)
    return found.is_in(allowed), found.language
