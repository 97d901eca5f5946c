"""tempa.sft.language: detection of SEA languages, codes, equivalents, the minimum length, prose only."""

from __future__ import annotations

import pytest

from tempa.sft import language

SENTENCES = {
    "my": "မင်္ဂလာပါ။ ကျွန်တော် မြန်မာစကား ပြောတတ်ပါတယ်။ ဒီနေ့ ရာသီဥတု အရမ်းပူတယ်။",
    "km": "សួស្តី។ ខ្ញុំនិយាយភាសាខ្មែរបាន។ ថ្ងៃនេះអាកាសធាតុក្តៅណាស់។",
    "lo": "ສະບາຍດີ. ຂ້ອຍເວົ້າພາສາລາວໄດ້. ມື້ນີ້ອາກາດຮ້ອນຫຼາຍ.",
    "th": "วันนี้อากาศร้อนมาก ฉันอยากสั่งกาแฟหนึ่งถ้วย",
    "vi": "Hôm nay thời tiết rất nóng. Tôi muốn gọi một tách cà phê.",
    "ta": "இன்று வானிலை மிகவும் வெப்பமாக உள்ளது. நான் ஒரு கப் காபி ஆர்டர் செய்ய விரும்புகிறேன்.",
    "ja": "今日はとても暑いです。コーヒーを一杯注文したいです。",
    "zh": "今天天气很热，我想点一杯咖啡。",
    "id": "Cuaca hari ini sangat panas. Saya ingin memesan secangkir kopi.",
    "ms": "Kerajaan Malaysia telah mengumumkan belanjawan baharu untuk tahun hadapan.",
    "tl": "Napakainit ng panahon ngayon. Gusto kong umorder ng isang tasa ng kape.",
    "en": "The weather is very hot today. I would like to order a cup of coffee.",
}
# Indonesian that py3langid files under Malay, and Traditional-script Mandarin it files under Cantonese.
INDONESIAN_AS_MALAY = "Saya pergi ke pasar untuk membeli buah dan sayur segar."
MANDARIN_AS_CANTONESE = "我們這個週末要去海邊。"


@pytest.mark.parametrize("code", sorted(SENTENCES))
def test_sea_languages_are_detected_offline(code: str) -> None:
    found = language.detect(SENTENCES[code])
    assert found.language == code and 0 < found.probability <= 1
    assert found.is_in(language.accepted([code], equivalent=[])) is True


def test_codes_users_write_map_to_the_detectors() -> None:
    spelled = {"fil": "tl", "FIL": "tl", "tgl_Latn": "tl", "zsm": "ms", "ind_Latn": "id", "in": "id",
               "zh-Hant": "zh", "zh_CN": "zh", "cmn": "zh", "ms-MY": "ms", "nb": "no", "mya": "my", "th": "th"}
    assert {code: language.canonical(code) for code in spelled} == spelled
    assert language.check_codes(["fil", "tl", "id"]) == ["tl", "id"]
    with pytest.raises(ValueError, match=r"^language code 'tagalog' is not one the language detector \(py3langid\) "
                                         r"knows \(did you mean 'tl'\?\)$"):
        language.check_codes(["id", "tagalog"])
    # ISO 639-2/3 and FLORES-200 codes of every language it knows, and languages' own names as suggestions
    spelled = {"jpn": "ja", "jpn_Jpan": "ja", "kor": "ko", "kor_Hang": "ko", "deu": "de", "ger": "de",
               "arb_Arab": "ar", "npi_Deva": "ne", "hin_Deva": "hi", "zsm_Latn": "ms", "swh_Latn": "sw"}
    assert {code: language.check_codes([code])[0] for code in spelled} == spelled
    for name, code in (("日本語", "ja"), ("ภาษาไทย", "th"), ("Bahasa Indonesia", "id"), ("indonesain", "id")):
        with pytest.raises(ValueError, match=rf"\(did you mean '{code}'\?\)$"):
            language.check_codes([name])
    # a code of a language it does not know is no typo of one it does (kor was "did you mean 'or'?")
    with pytest.raises(ValueError, match=r"'ceb' is not one .* knows; known: ace, af, .*\btl\b"):
        language.check_codes(["ceb"])
    assert all(code in language.supported() and alias not in language.supported()
               for alias, code in language.ALIASES.items())
    # a language's name (or a country's code) is suggested as the code it means, and every such code is one it knows
    for name, code in (("Indonesian", "id"), ("vn", "vi"), ("thai", "th"), ("jp", "ja")):
        with pytest.raises(ValueError, match=rf"'{name}' is not one .* \(did you mean '{code}'\?\)"):
            language.check_codes([name])
    assert set(language.NAMES.values()) <= language.supported() and not set(language.NAMES) & set(language.ALIASES)
    assert "zxx" not in language.supported()  # "no linguistic content" is not a language to target
    # Filipino text is Tagalog to the detector, and a `fil` target accepts it.
    assert language.detect(SENTENCES["tl"]).is_in(language.accepted(["fil"])) is True


def test_indonesian_and_malay_count_as_one_language_by_default() -> None:
    found = language.detect(INDONESIAN_AS_MALAY)
    assert found.language == "ms"  # the confusion the default table exists for
    assert found.is_in(language.accepted(["id"])) is True
    assert found.is_in(language.accepted(["id"], equivalent=[])) is False
    # The group's probability is what a confidence threshold should see, not the split between them.
    assert found.probability < 0.7 < found.probability_of(language.accepted(["id"]))
    # Malay proper is told apart from Indonesian when asked to be strict, and accepted for id by default.
    malay = language.detect(SENTENCES["ms"])
    assert malay.is_in(language.accepted(["id"], equivalent=[])) is False
    assert malay.is_in(language.accepted(["id"])) is True
    # Restricting the candidates renormalises over them.
    restricted = language.detect(INDONESIAN_AS_MALAY, ["id", "en"])
    assert restricted.language == "id" and sum(restricted.probabilities.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(("text", "detected"), [(MANDARIN_AS_CANTONESE, "yue"), ("北京是首都", "wuu")])
def test_short_mandarin_is_accepted_as_chinese(text: str, detected: str) -> None:
    found = language.detect(text)
    assert found.language == detected
    assert found.is_in(language.accepted(["zh-Hant"])) is True
    assert found.is_in(language.accepted(["zh"], equivalent=[])) is False


@pytest.mark.parametrize(
    "text", ["42", "42 + 7", "OK", "Ya", "Jakarta.", "ใช่ครับ", "東京", "x = 5", "", "https://example.com/a/very/long/path"]
)
def test_short_text_is_undetermined_not_wrong(text: str) -> None:
    found = language.detect(text)
    assert found.language is None and found == language.UNDETERMINED
    assert found.is_in(language.accepted(["th"])) is None


def test_a_short_cjk_sentence_is_enough() -> None:
    # Three Han characters weigh as 12 letters: a CJK sentence of a few characters is determined.
    assert language.letter_count("北京是首都") == 5 * language.WIDE_LETTER
    assert language.detect("北京是中国的首都。").language == "zh"
    assert language.detect("東京は日本の首都です。").language == "ja"
    assert language.detect("서울은 한국의 수도입니다.").language == "ko"


@pytest.mark.parametrize("text", ["富士山", "信濃川", "東京大学医学部附属病院", "北海道札幌市中央区"])
def test_japanese_without_kana_is_not_called_chinese(text: str) -> None:
    # The detector tells Japanese by its kana; a Japanese name or term in kanji alone it files under Chinese.
    # It is Japanese as much as Chinese, so no target can reject it or count it, and no language is reported.
    found = language.detect(text)
    assert found.language is None
    assert found.is_in(language.accepted(["ja"])) is None
    assert found.is_in(language.accepted(["zh"])) is None
    # the language reward neither rewards nor punishes it as the answer to a Japanese prompt
    from tempa.alignment.rewards import language_match

    assert language_match(text, "ja") == (None, None)
    # the SFT language filter keeps it for a Japanese dataset
    from tempa.sft.curation import check_language
    from tempa.sft.data_config import LanguageFilterConfig

    rows = [{"role": "user", "content": "日本一高い山はどれですか？"}, {"role": "assistant", "content": text}]
    assert check_language(rows, language.accepted(["ja"]), LanguageFilterConfig(check="assistant")) is None


def test_chinese_prose_is_still_not_japanese() -> None:
    # Chinese longer than a kanji name stays Chinese to a ja target (a reasoning that drifted into Chinese).
    drift = "今天天气很好，我们下午一起去公园散步吧。"
    assert language.detect(drift).is_in(language.accepted(["ja"])) is False
    # and kana make it Japanese, kanji-heavy or not
    assert language.detect("東京大学医学部附属病院です").is_in(language.accepted(["ja"])) is True


def test_code_math_and_urls_are_not_evidence() -> None:
    with_code = ("Berikut contoh fungsi Python:\n```python\ndef factorial(n):\n    if n == 0:\n        return 1\n"
                 "    return n * factorial(n - 1)\n\nprint(factorial(5))\n```")
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    raw = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True).classify(with_code)[0]
    assert raw not in ("id", "ms")  # the code is what the detector reads without prose()
    assert language.detect(with_code).language in ("id", "ms")
    assert language.prose("Hitung $x^2 + y^2$ lalu `print(x)` di https://a.io/b dan $$\\int_0^1 x\\,dx$$ selesai").split() \
        == ["Hitung", "lalu", "di", "dan", "selesai"]
    assert "$5 and $10" in language.prose("It costs $5 and $10 a day.")  # money is not math
    assert language.prose("Jawab:\n```\nunclosed code at the end of a cut-off answer").split() == ["Jawab:"]
    # Only code: nothing left to judge.
    assert language.detect("```python\nimport numpy as np\nprint(np.arange(10).sum())\n```").language is None


def test_unaccented_vietnamese_is_as_the_readme_says_unreliable() -> None:
    """README: unaccented Vietnamese is often another language to the detector, but a longer sentence can be
    Vietnamese, so a language filter is no guard against it (a trial took the README's one example as a rule)."""
    short = "Vay moi ban co 12 cai keo, dap an la 12."
    longer = "Vay moi ban co 12 cai keo, chia deu cho 3 ban thi moi ban duoc bao nhieu cai?"
    assert language.detect(short).language == "gcf"
    assert language.detect(short, ["vi", "id", "ms", "th", "en"]).language == "id"
    assert language.detect(longer).language == "vi"
    assert language.detect(longer, ["vi", "id", "ms", "th", "en"]).language == "vi"
