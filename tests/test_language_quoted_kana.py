"""Chinese that quotes a kana option label or term is Chinese (tempa.sft.language). A Japanese RL team's trial: a
Chinese reply naming option ウ, or a sentiment label ネガティブ, was classed as Japanese and scored full language reward
for a Japanese prompt, since any kana made text Japanese unless a Han character was outside Japanese's character set
(and the detector itself read katakana-heavy Chinese as Japanese)."""

from __future__ import annotations

import pytest

from tempa.alignment.rewards import language_match
from tempa.sft import language

JA = language.accepted(["ja"])
ZH = language.accepted(["zh"])

# Chinese grammar (the copula 是, Chinese-only characters such as 觉 这 选 对, the comma ，) around one or a few kana
# words. 答案是ウ。 has no Chinese-only character at all (答 and 案 are Japanese's too): its copula is the evidence.
CHINESE_QUOTING_KANA = ["答案是ウ。", "答案是イ，苹果是水果。", "北京是中国的首都，答案是ウ。", "我觉得是ネガティブ。",
                        "这句话的情感是ネガティブ。", "选项ア和イ都不对，答案是ウ。", "答案是ア，不是イ。", "正确答案是エ",
                        "情感是ポジティブ"]
# Japanese with few kana, or with something Chinese-looking in it: kanji-heavy names, 是 in Japanese words, the comma
# of technical prose, Chinese quoted in Japanese, a 2010 jōyō form that Big5 holds (剝).
JAPANESE = ["北海道の札幌市", "東京都千代田区丸の内", "日本国憲法第九条の解釈について", "答えはウ", "正解はイです。",
            "是が非でも勝ちたい。", "これは国是である。", "本研究では，深層学習を用いた新しい手法を提案する．",
            "中国語で「谢谢」はありがとうという意味です。", "塗装が剝がれた。", "我が国の経済は回復した。",
            "会議は午後三時に終了した。"]


@pytest.mark.parametrize("text", CHINESE_QUOTING_KANA)
def test_chinese_quoting_a_kana_label_is_chinese(text: str) -> None:
    found = language.detect(text)
    assert found.language in language.CHINESE
    assert found.is_in(JA) is False and found.is_in(ZH) is True
    # the detector's Japanese share is the Chinese class's: a curation threshold for zh sees all of it
    assert found.probability_of(ZH) == pytest.approx(found.probability_of({"ja", *language.CHINESE}))
    # the language reward gives it nothing for a Japanese prompt, full marks for a Chinese one
    assert language_match(text, "ja") == (0.0, found.language)
    assert language_match(text, "zh")[0] == 1.0


@pytest.mark.parametrize("text", JAPANESE)
def test_japanese_with_few_kana_or_chinese_looking_parts_stays_japanese(text: str) -> None:
    found = language.detect(text)
    assert found.language == "ja"
    assert found.is_in(JA) is True and found.is_in(ZH) is False
    assert language_match(text, "ja") == (1.0, "ja")


def test_a_caller_that_rules_chinese_out_gets_the_detectors_japanese() -> None:
    # restricted to languages without Chinese (a benchmark's), the script has nothing to decide between
    assert language.detect("我觉得是ネガティブ。", ["ja", "en"]).language == "ja"
    assert language.detect("我觉得是ネガティブ。", ["ja", "zh"]).language == "zh"
