"""Korean written with hanja is Korean (tempa.sft.language). A Korean/Japanese/Chinese evaluation team's trial: Korean
answers with hanja (大韓民國은 民主共和國이다) were detected as Cantonese or Chinese, so the `language` reward and the
answer reward it gates gave 0 to right Korean answers; the kana rule that keeps Japanese Japanese had no Hangul
counterpart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tempa.alignment.completions import Completion
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import (
    AnswerReward,
    LanguageReward,
    RewardSet,
    ScoreItem,
    ScoringEnv,
    language_match,
)
from tempa.sft import language

KO = language.accepted(["ko"])
JA = language.accepted(["ja"])
ZH = language.accepted(["zh"])
BENCHMARK = ["ko", "ja", "zh"]  # the team's detector restriction

# Hanja words, each followed by a Hangul particle or ending: the trial's four, then a court's and a historian's prose.
# One word of Hangul is enough where nothing else speaks for Chinese or Japanese (서울 before an address in hanja).
KOREAN_WITH_HANJA = ["大韓民國 憲法 第一條에 따르면 大韓民國은 民主共和國이다.", "經濟成長率은 前年 對比 三 퍼센트 增加했다.",
                     "大韓民國은 民主共和國이다.", "서울特別市 鍾路區 世宗大路 209", "本 判決은 大法院 全員合議體의 多數意見이다.",
                     "朝鮮王朝 實錄에 記錄된 內容"]
# Korean in hanja that Chinese's character sets hold and Japanese's (CP932) lacks (說, twice against one word of
# Hangul): Korean's set (KS X 1001) holds them, so they are no evidence against Korean.
KOREAN_WITH_HANJA_JAPANESE_LACKS = ["說話集과 傳說", "傳說과 說話", "金正恩은 平壤에서 演說했다"]
# Chinese quoting a Korean word or two: its own evidence (the copula 是, characters Korean's set lacks such as 说 韩 语
# 谢, the comma ，) at least matches the words of Hangul, a tie staying Chinese (韓語的「謝謝」是감사합니다: 是 against
# 감사합니다). py3langid reads some of these as Korean.
CHINESE_QUOTING_KOREAN = ["韩语的“谢谢”是감사합니다。", "韓語的「謝謝」是감사합니다。", "他说사랑해요", "사랑해요는 韩语的我爱你。",
                          "“안녕하세요 반갑습니다”是韩语的问候。", "首尔的韩文写法是서울，意思是首都。"]
# Japanese quoting Korean: its words of kana outnumber the Hangul.
JAPANESE_QUOTING_KOREAN = ["韓国語で「こんにちは」は안녕하세요と言います。", "사랑해요は韓国語です。", "ソウルは서울と書く。"]


@pytest.mark.parametrize("text", KOREAN_WITH_HANJA + KOREAN_WITH_HANJA_JAPANESE_LACKS)
@pytest.mark.parametrize("languages", [None, BENCHMARK], ids=["any", "ko-ja-zh"])
def test_korean_with_hanja_is_korean(text: str, languages: list[str] | None) -> None:
    found = language.detect(text, languages)
    assert found.language == "ko"
    assert found.is_in(KO) is True and found.is_in(ZH) is False and found.is_in(JA) is False
    # the shares the detector gave Chinese and Japanese are Korean's: a confidence threshold for ko sees all of it
    assert found.probability == pytest.approx(1.0, abs=0.01)
    assert language_match(text, "ko", languages=tuple(languages) if languages else None) == (1.0, "ko")


@pytest.mark.parametrize("text", CHINESE_QUOTING_KOREAN)
@pytest.mark.parametrize("languages", [None, BENCHMARK, ["ko", "zh"]], ids=["any", "ko-ja-zh", "ko-zh"])
def test_chinese_quoting_a_korean_word_stays_chinese(text: str, languages: list[str] | None) -> None:
    found = language.detect(text, languages)
    assert found.language in language.CHINESE
    assert found.is_in(ZH) is True and found.is_in(KO) is False
    assert language_match(text, "ko", languages=tuple(languages) if languages else None)[0] == 0.0


@pytest.mark.parametrize("text", JAPANESE_QUOTING_KOREAN)
def test_japanese_quoting_a_korean_word_stays_japanese(text: str) -> None:
    for languages in (None, BENCHMARK):
        found = language.detect(text, languages)
        assert found.language == "ja"
        assert found.is_in(JA) is True and found.is_in(KO) is False


def test_a_caller_that_rules_korean_out_gets_the_japanese_or_chinese_rules() -> None:
    # restricted to languages without Korean (a Japanese-Chinese benchmark's), Hangul decides nothing
    assert language.detect("大韓民國은 民主共和國이다.", ["ja", "zh"]).language == "zh"
    assert language.detect("사랑해요は韓国語です。", ["ja", "zh"]).language == "ja"


def test_a_right_korean_answer_with_hanja_passes_the_language_gate() -> None:
    row = PromptRow(id="p", messages=[{"role": "user", "content": "大韓民國의 政體는?"}], language="ko",
                    answer="民主共和國", thinking_mode="off")
    rewards = RewardSet([AnswerReward(match="contains"), LanguageReward(languages=BENCHMARK)],
                        ScoringEnv(policy_dir=Path("."), tokenizer_dir=Path(".")))
    right = Completion(text="大韓民國 憲法 第一條에 따르면 大韓民國은 民主共和國이다.", prefill="<think>\n</think>\n")
    chinese = Completion(text="根据宪法第一条，大韩民国是民主共和國。", prefill="<think>\n</think>\n")
    korean, wrong_language = rewards.score([ScoreItem(row, right), ScoreItem(row, chinese)])
    assert korean["scores"] == {**korean["scores"], "language": 1.0, "answer": 1.0}
    assert wrong_language["scores"]["language"] == 0.0
    assert wrong_language["details"]["answer"]["gated_by_language"] is True
