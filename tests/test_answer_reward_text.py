"""The answer reward's `auto` rule for a text reference (a label, a name, a choice letter) is the accuracy suite's:
the reply must commit to the reference, not merely contain it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tempa.alignment.completions import Completion
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import AnswerReward, RewardSet, ScoreItem, ScoringEnv, answer_match
from tempa.merge.answers import answer_matches, final_answer_text

SAMPLE_PROMPTS = Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl"


def reward_and_accuracy(reply: str, gold: object, language: str | None) -> tuple[float | None, bool]:
    """The `answer` reward (default `auto`, through RewardSet) and the accuracy suite's verdict on one reply."""
    row = PromptRow(id="p", messages=[{"role": "user", "content": "q"}], language=language, answer=gold,
                    thinking_mode="off")
    completion = Completion(text=reply, prefill="<think>\n</think>\n", finish_reason="stop")
    rewards = RewardSet([AnswerReward()], ScoringEnv(policy_dir=Path("."), tokenizer_dir=Path(".")))
    score = rewards.score([ScoreItem(row, completion)])[0]["scores"]["answer"]
    return score, answer_matches(final_answer_text(completion.full_text), gold, language=language)


@pytest.mark.parametrize(
    ("reply", "gold", "language", "right"),
    [
        # the reference is in the reply but not what it commits to
        (r"\boxed{A}", "B", "en", False),  # the b of "boxed"
        ("คำตอบคือข้อ ก", "ข", "th", False),  # ข is in ข้อ
        ("Bukan Jakarta, tetapi Bandung", "Jakarta", "id", False),
        ("Negative / Positive", "Negative", "en", False),
        # multiple choice: the letter committed to, with or without parentheses or an option word
        ("The answer is (C)", "C", "en", True),
        ("The answer is (C)", "B", "en", False),
        (r"\boxed{C}", "C", "en", True),
        (r"\boxed{C}", "A", "en", False),
        ("C.", "C", "en", True),
        ("C.", "D", "en", False),
        ("The answer is option C.", "C", "en", True),
        ("The answer is option C.", "A", "en", False),
        ("ข้อ ข", "ข", "th", True),
        ("ข้อ ข", "ก", "th", False),
        ("ข้อข", "ข", "th", True),
        ("คำตอบคือ ข", "ข", "th", True),
        ("คำตอบคือ ข", "ค", "th", False),
        ("คำตอบคือข้อ ข ครับ", "ข", "th", True),
        ("Optional C", "C", "en", False),  # a word that starts like "option" is no option word
        # labels and names stated as the answer
        ("The answer is: Jakarta.", "Jakarta", "id", True),
        ("ประโยคนี้แสดงความรู้สึก\nเชิงลบ", "เชิงลบ", "th", True),
        # what a reply commits to going on after its answer, or a last line naming it (a review: each scored 0)
        ("The answer is (C) Paris.", "C", "en", True),
        ("The answer is (C) Paris.", "A", "en", False),
        ("C) Paris", "C", "en", True),
        ("The correct option is C.", "C", "en", True),
        ("The answer is C: 42", "C", "en", True),
        ("Sentiment: Positive", "Positive", "en", True),
        ("Sentiment: Positive", "Negative", "en", False),
        ("Ibu kota Indonesia adalah Jakarta.", "Jakarta", "id", True),
        ("The capital of France is Paris.", "Paris", "en", True),
        ("Yes, it is.", "yes", "en", True),
        ("B is wrong, A is right", "B", "en", False),
        ("The capital is not Jakarta, it is Bandung", "Jakarta", "id", False),
        ("It is not Paris", "Paris", "en", False),
    ],
)
def test_the_reward_and_the_accuracy_suite_agree_on_text_answers(reply, gold, language, right):
    assert reward_and_accuracy(reply, gold, language) == (float(right), right)


def test_no_label_row_of_the_sample_prompts_passes_a_reply_that_names_both_labels():
    rows = [json.loads(line) for line in SAMPLE_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    labels = [row for row in rows if isinstance(row.get("answer"), str) and not row["answer"].strip().isdigit()]
    assert len(labels) >= 20  # the sentiment rows: a check that reads none proves nothing
    for row in labels:
        gold, language = row["answer"], row.get("language")
        assert reward_and_accuracy(f"{gold} / X", gold, language) == (0.0, False), gold
        assert reward_and_accuracy(rf"\boxed{{{gold}}}", gold, language) == (1.0, True), gold


def test_contains_is_still_there_when_a_recipe_asks_for_it():
    assert answer_match("Bukan Jakarta, tetapi Bandung", "Jakarta", "contains") == 1.0
    assert answer_match("Bukan Jakarta, tetapi Bandung", "Jakarta", "auto") == 0.0


@pytest.mark.parametrize("finish", ["length", "stop", None])
def test_a_reply_cut_off_at_the_token_limit_earns_no_answer_reward(finish):
    # "The answer is 12" cut off may be the start of 120: the accuracy suite grades it wrong, and so does the reward
    row = PromptRow(id="p", messages=[{"role": "user", "content": "q"}], language="en", answer="12",
                    thinking_mode="on")
    completion = Completion(text="7 + 5\n</think>\n\nThe answer is 12", prefill="<think>\n", finish_reason=finish)
    rewards = RewardSet([AnswerReward(), AnswerReward(name="label", match="contains")],
                        ScoringEnv(policy_dir=Path("."), tokenizer_dir=Path(".")))
    record = rewards.score([ScoreItem(row, completion)])[0]
    expected = 0.0 if finish == "length" else 1.0  # a backend that cannot tell how it ended is taken at its word
    assert record["scores"]["answer"] == record["scores"]["label"] == expected
    assert record["details"].get("answer", {}).get("cut_off", False) is (finish == "length")


@pytest.mark.parametrize(("reward", "said"), [
    ("{type: answer, match: regex}", "`match: regex` needs a `pattern`"),
    ("{type: answer, match: regex, pattern: '([A-D]'}", "pattern '([A-D]' is no regular expression"),
])
def test_a_regex_answer_reward_without_a_working_pattern_is_refused_when_the_recipe_loads(tmp_path, tiny_model_dir,
                                                                                         reward, said):
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.loader import load_recipe

    (tmp_path / "prompts.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"}],
                                                        "answer": "B"}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nbase_model: {tiny_model_dir}\nstages:\n  - name: align\n    kind: preference\n"
                      f"    prompts: {{path: prompts.jsonl}}\n    rewards: [{reward}]\n")
    with pytest.raises(RecipeError) as raised:
        load_recipe(recipe)
    message = str(raised.value)
    assert said in message and "rewards" in message and "\n" not in message.strip(), message
