"""Traditional Chinese told from Japanese by the old character forms (kyūjitai) modern Japanese replaced, and Japanese
headlines and names that read as Chinese (tempa.sft.language). A review: Traditional Chinese sentences with no Chinese
grammar word (中華民國成立於一九一二年元旦) were undetermined, and 我孫子市で住宅火災 / 森鷗外の小説 were Chinese."""

from __future__ import annotations

import pytest

from tempa.sft import language

JA = language.accepted(["ja"])
ZH = language.accepted(["zh"])

# Traditional Chinese in characters CP932 holds, none of them a Chinese word, copula, particle, pronoun or comma;
# each writes an old form (國 學 會 與 體 於 區 發 ...) where Japanese writes the new one.
TRADITIONAL = ["中華民國成立於一九一二年元旦", "本研究提出一種新方法以提高模型準確率", "香港特別行政區政府今日公布施政報告",
               "北京大學與清華大學合作研究人工智慧", "國家主席習近平出席會議並發表重要講話", "立法院今日三讀通過修正草案",
               "根據氣象局預報明日北部地區有雨"]
# Japanese: a proper name in old forms or a Japanese character outside CP932, with kana; or a headline whose 我 is
# part of a name or a Japanese word.
JAPANESE = ["國學院大學の入試", "森鷗外の小説「舞姫」", "我孫子市で住宅火災、２人死亡", "我儘を言ってはいけない",
            "唯我独尊の態度をとる", "千葉県我孫子市で火事があった"]
# Kanji only, in forms modern Japanese writes: still both.
SHARED = ["東京大学大学院情報理工学系研究科", "国会議事堂前駅", "森鷗外", "日本国憲法第九条戦争放棄条項"]


@pytest.mark.parametrize("text", TRADITIONAL)
def test_traditional_chinese_in_old_forms_is_chinese(text: str) -> None:
    found = language.detect(text)
    assert found.language in language.CHINESE
    assert found.is_in(ZH) is True and found.is_in(JA) is False


@pytest.mark.parametrize("text", JAPANESE)
def test_japanese_names_and_headlines_stay_japanese(text: str) -> None:
    found = language.detect(text)
    assert found.language == "ja"
    assert found.is_in(JA) is True and found.is_in(ZH) is False


@pytest.mark.parametrize("text", SHARED)
def test_kanji_in_forms_japanese_writes_stay_undetermined(text: str) -> None:
    assert language.detect(text).language is None


def test_old_forms_are_traditional_chinese_and_their_new_forms_japanese() -> None:
    # each old form is Big5 (Traditional Chinese writes it) and differs from a new form CP932 holds (Japanese writes that)
    assert len(language._OLD_FORMS) > 200
    for old, new in language._OLD_FORMS.items():
        assert old != new
        old.encode("big5")
        new.encode("cp932")
    for ch in "国学会体区発対台湾関説点処拠気為時実現進開際題席準確提":
        assert ch not in language._OLD_FORMS
