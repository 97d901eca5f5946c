"""Han characters alone are judged by evidence, not length (tempa.sft.language). A Japanese RL team's trial: kanji-only
answers longer than 12 characters (an address, a faculty's name, a legal term) were called Chinese, and the language
gate zeroed correct answers."""

from __future__ import annotations

import pytest

from tempa.alignment.rewards import language_match
from tempa.sft import language

JA = language.accepted(["ja"])
ZH = language.accepted(["zh"])

# Names, addresses and terms: nothing Chinese writes and Japanese does not, however long; 了, 是 and 我 only inside
# Japanese words; 剝 in its 2010 jōyō form, which Big5 holds.
KANJI_TERMS = ["東京都千代田区永田町一丁目七番一号", "東京大学大学院情報理工学系研究科", "日本国憲法第九条戦争放棄条項",
               "北海道札幌市中央区北一条西二丁目一番地", "業務終了時刻", "手続完了通知書", "是正勧告書", "我慢大会",
               "怪我人多数", "剝製標本"]
# Chinese written only in characters Japanese's character set (CP932) holds too: its grammar is the evidence (了, 我,
# 是, 很, 們, the comma).
CHINESE_IN_SHARED_CHARACTERS = ["我在東京大學學習日本文學已經三年", "中國政府在今年三月宣布了新的經濟政策以促進國民消費",
                                "我昨天買了一本書", "我們在台北見面", "他是一個好人", "今天天氣很好",
                                "日本料理以新鮮的魚類為主，很好吃"]


@pytest.mark.parametrize("text", KANJI_TERMS)
def test_a_kanji_term_of_any_length_is_undetermined(text: str) -> None:
    found = language.detect(text)
    assert found.language is None
    assert found.is_in(JA) is None and found.is_in(ZH) is None
    assert language_match(text, "ja") == (None, None)  # a correct Japanese answer keeps its score


@pytest.mark.parametrize("text", CHINESE_IN_SHARED_CHARACTERS)
def test_chinese_in_characters_japanese_shares_is_still_chinese(text: str) -> None:
    assert all(ch.encode("cp932") for ch in text)  # no character Japanese lacks (，: 0x8143)
    found = language.detect(text)
    assert found.language in language.CHINESE
    assert found.is_in(JA) is False and found.is_in(ZH) is True
