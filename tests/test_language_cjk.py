"""Japanese told from Chinese (tempa.sft.language): what a Japanese (or Chinese) language suite, reward and filter
count as the wrong language. A Japanese evaluation team's trial: Chinese replies to Japanese prompts escaped the
penalty as "kanji terms", Japanese with a little kana counted as Chinese, half-width katakana as Wu."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tempa.merge.language import language_scores
from tempa.sft import language

JA = language.accepted(["ja"])
ZH = language.accepted(["zh"])

# Chinese that drifted in where Japanese was asked for: short sentences of Han characters only.
CHINESE_REPLIES = ["这个问题的答案是四十二。", "我喜欢吃苹果和香蕉。", "东京是日本的首都，人口很多。",
                   "我們這個週末要去海邊。", "北京是首都", "北京是中国的首都。"]
# Han characters only, with nothing that tells Japanese from Chinese: names, terms, a number in words.
HAN_TERMS = ["百八十度", "富士山", "東京大学医学部附属病院", "北海道札幌市中央区", "是正勧告", "是非"]


@pytest.mark.parametrize("text", CHINESE_REPLIES)
def test_a_short_chinese_sentence_is_the_wrong_language_for_japanese(text: str) -> None:
    # simplified-only characters (这 欢 东), Chinese words Japanese does not write (們 這), the copula 是, a Chinese
    # comma
    found = language.detect(text)
    assert found.language in language.CHINESE
    assert found.is_in(JA) is False
    assert found.is_in(ZH) is True


@pytest.mark.parametrize("text", HAN_TERMS)
def test_a_han_term_is_undetermined_for_every_target(text: str) -> None:
    # Japanese as much as Chinese: neither counted nor penalised, and no language is reported for it
    found = language.detect(text)
    assert found.language is None
    assert found.is_in(JA) is None and found.is_in(ZH) is None


def test_correct_chinese_replies_get_no_credit_in_a_japanese_suite() -> None:
    detected = [language.detect(text) for text in CHINESE_REPLIES[:4]]
    scores = language_scores(detected, ["ja"] * 4, [True] * 4)
    assert scores["language_share"] == 0.0
    assert scores["undetermined"] == 0.0
    assert scores["normalized_accuracy"] == 0.0
    assert scores["accuracy"] == 1.0


def test_a_language_suites_answers_file_reports_what_it_counts(tmp_path: Path) -> None:
    """The answers file recorded `百八十度` as detected "zh" while the suite counted it undetermined."""
    from tempa.alignment.generation import GenerationBackend
    from tempa.merge.evaluate_config import EvalGeneration, LanguageSuite
    from tempa.merge.suites import CandidateScorer

    replies = {"角度は？": "百八十度", "首都は？": "东京是日本的首都，人口很多。", "山は？": "富士山です。"}

    class Replies(GenerationBackend):  # a model's replies, fixed: what is under test is how they are counted
        def generate(self, prompts, params, *, thinking_modes=None):
            return [[replies[p[-1]["content"]]] for p in prompts]

    rows = [{"prompt": prompt} for prompt in replies]
    path = tmp_path / "ja.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    suite = LanguageSuite.model_validate({"type": "language", "data": str(path), "language": "ja"})
    scorer = CandidateScorer(Replies(), None, EvalGeneration())
    scorer.prefill = lambda messages, mode, tools=None: ""  # no chat template: the replies are the whole answers
    scores = scorer.language(suite, rows)
    detected = [record["detected"] for record in scorer.records[suite.key]]
    assert detected == [None, "zh", "ja"]
    # undetermined exactly where nothing was detected, and the share over the rest as the detected codes say
    assert scores["undetermined"] == pytest.approx(1 / 3)
    assert scores["language_share"] == 0.5


@pytest.mark.parametrize("text", ["北海道の札幌市", "東京都千代田区丸の内", "大阪府大阪市北区梅田の駅前"])
def test_kanji_heavy_japanese_with_kana_is_japanese(text: str) -> None:
    # py3langid filed these under Wu; kana never occur in Chinese
    found = language.detect(text)
    assert found.language == "ja" and found.probability > 0.5
    assert found.probability_of(JA) == pytest.approx(found.probability)
    assert found.is_in(JA) is True
    assert found.is_in(ZH) is False  # and Japanese is the wrong language for a Chinese target
    # the SFT language filter keeps it for a Japanese dataset, at its confidence threshold too
    from tempa.sft.curation import check_language
    from tempa.sft.data_config import LanguageFilterConfig

    rows = [{"role": "assistant", "content": text}]
    assert check_language(rows, JA, LanguageFilterConfig(check="assistant", min_confidence=0.5)) is None
    assert check_language(rows, ZH, LanguageFilterConfig(check="assistant")) is not None


@pytest.mark.parametrize("text", ["这个词用日语说是ありがとう，意思是谢谢。", "日语里的ラーメン就是中国的拉面"])
def test_chinese_quoting_japanese_stays_chinese(text: str) -> None:
    # kana, but in Chinese with simplified-only characters around them: still a drift into Chinese
    found = language.detect(text)
    assert found.language in language.CHINESE
    assert found.is_in(JA) is False


def test_half_width_katakana_is_read_as_katakana() -> None:
    found = language.detect("ｶﾀｶﾅﾀﾞｹﾉﾃｷｽﾄﾃﾞｽ")  # py3langid read it as it is: wuu
    assert found.language == "ja" and found.is_in(JA) is True and found.is_in(ZH) is False
    assert language.detect("ﾗｰﾒﾝ屋ﾃﾞｽ").is_in(JA) is True
    # full-width Latin letters are letters, not CJK ones four times over: ＡＢＣ is as short as ABC
    assert language.detect("ＡＢＣ") == language.UNDETERMINED
    assert language.fold_width("ｶﾀｶﾅﾀﾞｹﾉﾃｷｽﾄﾃﾞｽ") == "カタカナダケノテキストデス"  # voiced marks composed
    # full-width punctuation is how Chinese is written, and stays evidence of it
    assert language.fold_width("东京，人口很多！") == "东京，人口很多！"
