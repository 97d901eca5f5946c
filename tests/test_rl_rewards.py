"""The language-fidelity reward reads the answer and the reasoning; the format reward is not fooled by an
empty think block; tempa's rewards as trl reward functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tempa.alignment.completions import Completion
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import (
    AnswerReward,
    FormatReward,
    LanguageReward,
    RewardSet,
    ScoreItem,
    ScoringEnv,
)
from tempa.chat_templates.thinking import PREFILL
from tempa.sft.language import ReasoningLanguage, reasoning_verdict

ON = PREFILL["on"]

# Answers in the prompt's language, and reasoning in English or in that language (math kept in,
# so the prose-only rule is exercised: digits and LaTeX never decide the language).
CASES = {
    "th": {
        "answer": "ดังนั้นวีระมีแอปเปิลทั้งหมด 61 ผล",
        "native": "วีระมีแอปเปิล 23 ผล แล้วซื้อเพิ่มอีก 38 ผล เราต้องนำจำนวนทั้งสองมาบวกกัน $23 + 38 = 61$ "
                  "จึงได้คำตอบว่ามีแอปเปิลหกสิบเอ็ดผล",
        "english": "Weera has 23 apples and buys 38 more, so we add the two amounts together: $23 + 38 = 61$. "
                   "The total number of apples is sixty-one.",
    },
    "vi": {
        "answer": "Vậy kết quả của phép tính là 63.",
        "native": "Đầu tiên ta nhân chín với bốn được ba mươi sáu, sau đó cộng thêm hai mươi bảy. "
                  "Ta có $9 \\times 4 = 36$ và $36 + 27 = 63$, nên kết quả cuối cùng là sáu mươi ba.",
        "english": "First multiply nine by four to get thirty-six, then add twenty-seven to it. "
                   "We have $9 \\times 4 = 36$ and $36 + 27 = 63$, so the final result is sixty-three.",
    },
    "id": {
        "answer": "Jadi jumlah buku seluruhnya adalah 210 buku.",
        "native": "Ada lima kotak dan setiap kotak berisi empat puluh dua buku. Kita kalikan jumlah kotak dengan "
                  "jumlah buku di setiap kotak: $5 \\times 42 = 210$, sehingga totalnya dua ratus sepuluh buku.",
        "english": "There are five boxes and every box holds forty-two books. We multiply the number of boxes by "
                   "the books in each box: $5 \\times 42 = 210$, so the total is two hundred and ten books.",
    },
}


def item(language: str, reasoning: str, answer: str, *, mode: str = "on") -> ScoreItem:
    row = PromptRow(id="p", messages=[{"role": "user", "content": "?"}], language=language, thinking_mode=mode)
    return ScoreItem(row, Completion(f"{reasoning}\n</think>\n\n{answer}", prefill=ON, finish_reason="stop"))


def score(config: LanguageReward, items: list[ScoreItem]) -> list[dict]:
    return RewardSet([config], ScoringEnv(policy_dir=Path("."), tokenizer_dir=Path("."))).score(items)


@pytest.mark.parametrize("lang", sorted(CASES))
def test_reasoning_must_be_in_the_prompts_language_under_the_target_policy(lang):
    case = CASES[lang]
    config = LanguageReward(reasoning=ReasoningLanguage(languages=["target"]))
    native, english = score(config, [item(lang, case["native"], case["answer"]),
                                     item(lang, case["english"], case["answer"])])
    assert native["scores"]["language"] == 1.0
    assert native["details"]["language"]["reasoning"] == 1.0
    # The answer is in the right language; the English reasoning costs exactly its weight.
    assert english["details"]["language"]["answer"] == 1.0
    assert english["details"]["language"]["reasoning"] == 0.0
    assert english["details"]["language"]["reasoning_detected"] == "en"
    assert english["scores"]["language"] == pytest.approx(0.5)


@pytest.mark.parametrize("lang", sorted(CASES))
def test_english_reasoning_passes_when_the_policy_allows_it(lang):
    case = CASES[lang]
    config = LanguageReward(reasoning={"languages": ["target", "en"]}, reasoning_weight=0.3)
    native, english = score(config, [item(lang, case["native"], case["answer"]),
                                     item(lang, case["english"], case["answer"])])
    assert native["scores"]["language"] == english["scores"]["language"] == 1.0
    # ... but an English *answer* still fails, whatever the reasoning.
    (wrong,) = score(config, [item(lang, case["native"], "So the answer to the question is the number above.")])
    assert wrong["details"]["language"]["answer"] == 0.0 and wrong["details"]["language"]["reasoning"] == 1.0
    assert wrong["scores"]["language"] == pytest.approx(0.3)


def test_english_only_reasoning_policy_and_reasoning_that_cannot_be_judged():
    case = CASES["th"]
    english_only = ReasoningLanguage(languages=["en"])
    assert reasoning_verdict(case["english"], "th", english_only) == (True, "en")
    assert reasoning_verdict(case["native"], "th", english_only) == (False, "th")
    # Nothing to judge: no reasoning, only math, or a target policy on a prompt without a language.
    target = ReasoningLanguage()
    assert reasoning_verdict(None, "th", target) == (None, None)
    assert reasoning_verdict("$23 + 38 = 61$ ```x = 23 + 38```", "th", target) == (None, None)
    assert reasoning_verdict(case["native"], None, target) == (None, None)
    # Reasoning too short to judge (only math) passes, as a short answer does: in no other language.
    config = LanguageReward(reasoning=target)
    (record,) = score(config, [item("th", "$23 + 38 = 61$", case["answer"])])
    assert record["scores"]["language"] == 1.0 and record["details"]["language"]["reasoning"] == 1.0


def test_reasoning_in_the_wrong_language_does_not_gate_a_correct_answer():
    case = CASES["vi"]
    rewards = [AnswerReward(), LanguageReward(reasoning=ReasoningLanguage())]
    env = ScoringEnv(policy_dir=Path("."), tokenizer_dir=Path("."))
    row = PromptRow(id="p", messages=[{"role": "user", "content": "?"}], language="vi", answer="63",
                    thinking_mode="on")
    drifted = Completion(f"{case['english']}\n</think>\n\n{case['answer']}", prefill=ON, finish_reason="stop")
    english = Completion(f"{case['native']}\n</think>\n\nThe final result of the calculation is 63.", prefill=ON,
                         finish_reason="stop")
    drifted_record, english_record = RewardSet(rewards, env).score([ScoreItem(row, drifted), ScoreItem(row, english)])
    assert drifted_record["scores"]["answer"] == 1.0  # reasoning drift lowers the language score only
    assert drifted_record["scores"]["language"] == pytest.approx(0.5)
    assert english_record["scores"]["answer"] == 0.0  # an answer in the wrong language is gated (SEA-IFEval)
    assert english_record["scores"]["language"] == pytest.approx(0.5)


def test_reasoning_policy_names_unknown_codes():
    with pytest.raises(ValueError, match="xx"):
        ReasoningLanguage(languages=["target", "xx"])


def test_an_empty_think_block_does_not_score_as_well_as_real_reasoning():
    """Reward hacking: with thinking on, closing the pre-filled block at once must not earn full marks."""
    row = PromptRow(id="p", messages=[{"role": "user", "content": "9 x 4 + 27?"}], thinking_mode="on")
    real = Completion("9 x 4 = 36, and 36 + 27 = 63.\n</think>\n\nThe answer is 63.", prefill=ON,
                      finish_reason="stop")
    hacks = [Completion("</think>\n\nThe answer is 63.", prefill=ON, finish_reason="stop"),
             Completion("  \n \n</think>\n\nThe answer is 63.", prefill=ON, finish_reason="stop"),
             Completion("<think></think>The answer is 63.", finish_reason="stop")]
    records = RewardSet([FormatReward()], ScoringEnv(policy_dir=Path("."), tokenizer_dir=Path("."))).score(
        [ScoreItem(row, real), *(ScoreItem(row, hack) for hack in hacks)])
    assert records[0]["scores"]["format"] == 1.0
    for record in records[1:]:
        assert record["scores"]["format"] < records[0]["scores"]["format"]
        assert "think" in record["details"]["format"]["failed"]


class ScriptedGeneration:
    """A generation backend that answers each prompt with the text scripted for its content."""

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies

    def generate(self, prompts, params, *, thinking_modes=None):
        return [[self.replies[p[-1]["content"]]] * params.n for p in prompts]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("languages", [["target"], ["target", "en"]])
def test_the_language_suite_reports_the_rewards_reasoning_figure(tmp_path, tiny_model_dir, languages):
    from transformers import AutoTokenizer

    from tempa.chat_templates import bake_tokenizer
    from tempa.merge.evaluate_config import EvalGeneration, LanguageSuite
    from tempa.merge.suites import CandidateScorer

    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    rows, replies, items = [], {}, []
    for lang, case in sorted(CASES.items()):
        for kind in ("native", "english"):
            question = f"{lang}-{kind}"
            rows.append({"prompt": question, "language": lang, "thinking_mode": "on"})
            replies[question] = f"{case[kind]}\n</think>\n\n{case['answer']}"  # after the pre-filled open tag
            items.append(item(lang, case[kind], case["answer"]))
    rows.append({"prompt": "short", "language": "th", "thinking_mode": "on"})  # reasoning too short to judge
    replies["short"] = f"61\n</think>\n\n{CASES['th']['answer']}"
    suite = LanguageSuite(type="language", data=str(tmp_path), reasoning={"languages": languages})
    scorer = CandidateScorer(ScriptedGeneration(replies), tokenizer, EvalGeneration())
    scores = scorer.run(suite, rows)

    records = score(LanguageReward(reasoning={"languages": languages}), items)
    reward_share = sum(r["details"]["language"]["reasoning"] for r in records) / len(records)
    assert scores["reasoning_language_share"] == pytest.approx(reward_share)
    assert reward_share == pytest.approx(0.5 if languages == ["target"] else 1.0)
    assert scores["reasoning:undetermined"] == pytest.approx(1 / 7)
    assert scores["language_share"] == 1.0  # every answer is in its prompt's language


def test_a_sample_whose_scoring_failed_is_unscored_by_every_trl_reward_function(tmp_path, tiny_tokenizer_dir):
    """A judge reply without a rating fails the sample's scoring, as in the preference and synthesize stages.
    trl leaves a completion out of its group's baseline (advantage 0) only when every reward function returns
    None; a number from the others went into trl's nansum, which scored the failed judge as 0 and gave the
    sample a negative advantage for the judge's failure."""
    from test_alignment_fakes import FakeOpenAI, chat_response
    from transformers import AutoTokenizer

    from tempa.alignment.rl_rewards import ROW_COLUMN, RewardSpec, RLPrompt, trl_reward_functions
    from tempa.chat_templates import bake_tokenizer

    bake_tokenizer(tiny_tokenizer_dir, "llama3_thinking", tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")

    def reply(body):  # the judge rates one answer and rambles about the other
        text = body["messages"][-1]["content"]
        return chat_response(["Correct and clear. [[9]]" if "enam puluh tiga" in text else "Hard to say."])

    with FakeOpenAI(reply) as server:
        backend = {"type": "http", "base_url": server.base_url, "model": "judge"}
        judge = {"type": "judge", "backend": backend, "max_unparsable": 1.0}
        spec = RewardSpec(rewards=[{"type": "answer"}, judge], policy_dir=tiny_tokenizer_dir,
                          tokenizer_dir=tmp_path / "tok")
        (tmp_path / "spec.json").write_text(spec.model_dump_json())
        functions = trl_reward_functions(tmp_path / "spec.json", tokenizer)
        row = RLPrompt(row=PromptRow(id="p", messages=[{"role": "user", "content": "Berapa 9 x 4 + 27?"}],
                                     answer="63", thinking_mode="on"), prefill=ON).model_dump_json()
        eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
        texts = ["36 + 27 = 63\n</think>\n\nJawabannya 63 (enam puluh tiga).",
                 "36 + 27 = 63\n</think>\n\nJawabannya 63."]
        ids = [[*tokenizer(text, add_special_tokens=False)["input_ids"], eot] for text in texts]
        columns = {ROW_COLUMN: [row, row]}
        scores = [f(prompts=["", ""], completions=texts, completion_ids=ids, **columns) for f in functions]
    assert [s[0] for s in scores] == [1.0, 9.0]  # the rated sample: right answer, the judge's rating
    assert [s[1] for s in scores] == [None, None]  # the failed one: unscored by every function


def test_a_judge_that_gives_no_ratings_stops_training_at_its_max_unparsable(tmp_path, tiny_tokenizer_dir):
    """`max_unparsable` fails the stage in preference and synthesize; the rl stage trained on without the
    judge (every judge score None), logging nothing about it. The share is logged; above the limit it
    stops."""
    from test_alignment_fakes import FakeOpenAI, chat_response
    from transformers import AutoTokenizer

    from tempa.alignment.rl_rewards import ROW_COLUMN, RewardSpec, RLPrompt, trl_reward_functions
    from tempa.chat_templates import bake_tokenizer
    from tempa.sft.stage_api import StageError

    bake_tokenizer(tiny_tokenizer_dir, "llama3_thinking", tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    rated = iter([True, False, False, False])  # one rating in four replies

    def reply(body):
        return chat_response(["Fine. [[7]]" if next(rated) else "I would rather not rate this."])

    with FakeOpenAI(reply) as server:
        judge = {"type": "judge", "backend": {"type": "http", "base_url": server.base_url, "model": "judge"},
                 "max_unparsable": 0.5}
        spec = RewardSpec(rewards=[{"type": "format"}, judge], policy_dir=tiny_tokenizer_dir,
                          tokenizer_dir=tmp_path / "tok")
        (tmp_path / "spec.json").write_text(spec.model_dump_json())
        functions = trl_reward_functions(tmp_path / "spec.json", tokenizer)
        row = RLPrompt(row=PromptRow(id="p", messages=[{"role": "user", "content": "Berapa 2 + 2?"}],
                                     thinking_mode="on"), prefill=ON).model_dump_json()
        logged: list[tuple[str, float]] = []

        def batch(*texts: str) -> dict:  # two different answers: a judge request repeated is asked once
            ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
            return {"prompts": ["", ""], "completions": list(texts), "completion_ids": ids,
                    ROW_COLUMN: [row, row], "log_metric": lambda name, value: logged.append((name, value))}

        # 1 of 2 rated: at the limit
        scores = functions[1](**batch("2 + 2 = 4\n</think>\n\nEmpat.", "2 + 2 = 4\n</think>\n\nEmpat!"))
        assert sorted(scores, key=lambda score: score is None) == [7.0, None]
        assert logged == [("judge/unparsable_fraction", 0.5)]
        with pytest.raises(StageError, match=r"judge 'judge' gave no \[\[rating\]\] in 3 of 4 replies"):
            functions[1](**batch("2 + 2 = 4\n</think>\n\nJawabannya empat.", "2 + 2 = 4\n</think>\n\nEmpat, ya."))
