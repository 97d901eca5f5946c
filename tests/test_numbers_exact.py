"""A numeric reference and the number a reply commits to compare exactly when both are exact as written: the
preference/rl `answer` reward and the evaluate stage's accuracy suite (one rule, answer_text.numbers_agree)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tempa.alignment.completions import Completion
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import AnswerReward, RewardSet, ScoreItem, ScoringEnv
from tempa.chat_templates.thinking import PREFILL
from tempa.merge.answers import answer_matches


def reward(language: str | None, reference: object, reply: str) -> float | None:
    row = PromptRow(id="p", messages=[{"role": "user", "content": "?"}], language=language, answer=reference,
                    thinking_mode="off")
    item = ScoreItem(row, Completion(text=reply, prefill=PREFILL["off"], finish_reason="stop"))
    scores = RewardSet([AnswerReward()], ScoringEnv(policy_dir=Path("."), tokenizer_dir=Path("."))).score([item])
    return scores[0]["scores"]["answer"]


def assert_both(language: str | None, reply: str, expected: object, verdict: bool) -> None:
    assert (reward(language, expected, reply) == 1.0) is verdict, f"reward: {reply!r} vs {expected!r}"
    assert answer_matches(reply, expected, language=language) is verdict, f"accuracy: {reply!r} vs {expected!r}"


@pytest.mark.parametrize(("language", "reference", "reply"), [
    ("en", 1000000, "The answer is 1,000,001."),
    ("en", 1000000, "The answer is 1000001."),
    ("en", 20000000, "The answer is 20,000,020."),
    ("en", 999999, "The answer is 1,000,000."),
    ("en", 1234567, "The answer is 1234568."),
    ("en", "1234567", "The answer is 1234568."),
    ("id", "Rp 2.500.000", "Jawabannya adalah Rp 2.500.001."),
    ("vi", 15000000, "Đáp án là 15.000.001 đồng."),
    ("en", 12, r"\boxed{12.000001}"),
    ("en", 1000000, r"\boxed{1000000.5}"),
    ("en", "0.1", "The answer is 0.1000001."),  # a float 0.1 in the data is no decimal as written: see below
    ("en", "45%", "The answer is 0.4500001."),
    ("en", 1024, r"\boxed{2^{10} + 1}"),
    ("en", 10000000, r"\boxed{10^{7} + 1}"),
])
def test_an_exact_number_off_by_a_little_is_wrong_in_both_readers(language, reference, reply):
    assert_both(language, reply, reference, False)


@pytest.mark.parametrize(("language", "reference", "reply"), [
    ("en", 1000000, "The answer is 1,000,000."),
    ("id", "Rp 2.500.000", "Jawabannya adalah Rp 2.500.000."),
    ("en", 0.5, "The answer is 1/2."),
    ("en", "1/3", "The answer is 2/6."),
    ("en", 0.1, "The answer is 0.10."),
    ("en", "45%", "The answer is 0.45."),
    ("en", 1024, r"\boxed{2^{10}}"),
    ("en", 35000, r"\boxed{3.5\times10^4}"),
    ("en", 0.3, r"\boxed{0.1 + 0.2}"),
])
def test_an_exact_number_equal_as_written_is_right_in_both_readers(language, reference, reply):
    assert_both(language, reply, reference, True)


@pytest.mark.parametrize(("reference", "reply", "verdict"), [
    ("1/3", "The answer is 0.3333333.", True),  # a decimal can only round a fraction whose decimal never ends
    ("0.3333333", "The answer is 1/3.", True),
    ("1/3", "The answer is 0.33.", False),
    ("2/3", "The answer is 0.6666667.", True),
    (1.4142136, r"\boxed{\sqrt{2}}", True),  # an irrational value is no exact one: within the tolerance
    (1.41, r"\boxed{\sqrt{2}}", False),
])
def test_a_tolerance_only_where_the_two_cannot_be_equal_as_written(reference, reply, verdict):
    assert_both("en", reply, reference, verdict)


@pytest.mark.parametrize(("reference", "reply", "verdict"), [
    # a float reference was not written: a float32 column's 0.1 and 3.3 load as the binary values nearest them, and
    # a computed 0.1 + 0.2 is 0.30000000000000004; they compare within the tolerance (each gave 0)
    (0.10000000149011612, "The answer is 0.1", True),
    (3.299999952316284, "The answer is 3.3", True),
    (0.1 + 0.2, "The answer is 0.3", True),
    (0.10000000149011612, "The answer is 0.11", False),
    # ... while an integral float is the integer, exact
    (12.0, "The answer is 12", True),
    (1000000.0, "The answer is 1,000,001", False),
])
def test_a_float_reference_is_exact_only_when_it_is_an_integer(reference, reply, verdict):
    assert_both("en", reply, reference, verdict)


def test_a_float32_answer_column_scores_the_decimal_it_stands_for(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tempa.alignment.prompts import PromptSource, load_prompts

    messages = [[{"role": "user", "content": q}] for q in ("0.5 - 0.4?", "1.1 + 2.2?", "3 * 4?")]
    pq.write_table(pa.table({"messages": messages, "answer": pa.array([0.1, 3.3, 12.0], type=pa.float32())}),
                   tmp_path / "p.parquet")
    prompts = load_prompts(PromptSource(path=str(tmp_path / "p.parquet")), seed=0)
    replies = {0.1: "The answer is 0.1", 3.3: "The answer is 3.3", 12.0: "The answer is 12"}
    items = [ScoreItem(p, Completion(text=replies[round(p.answer, 1)], prefill=PREFILL["off"], finish_reason="stop"))
             for p in prompts]
    scores = RewardSet([AnswerReward()], ScoringEnv(policy_dir=tmp_path, tokenizer_dir=tmp_path)).score(items)
    assert [score["scores"]["answer"] for score in scores] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(("reference", "reply", "verdict"), [
    # sympy evaluates a decimal expression to a rounded Float, no decimal the reply wrote: within the tolerance
    # (both gave False)
    (1.05**20, r"\boxed{1.05^{20}}", True),
    ("2.6533", r"\boxed{1.05^{20}}", True),
    ("0.343", r"\boxed{0.7^{3}}", True),
    ("2.66", r"\boxed{1.05^{20}}", False),
])
def test_a_decimal_expression_is_compared_within_the_tolerance(reference, reply, verdict):
    assert_both("en", reply, reference, verdict)


@pytest.mark.parametrize(("reference", "reply", "verdict"), [
    # an accuracy suite's rel_tol, set, is the tolerance of every comparison (it was ignored for exact numbers)
    ("3.14", "The answer is 3.1416", True),
    ("9.8", "The answer is 9.81", True),
    ("1000", "The answer is 1001", True),
    (1000, "The answer is 1001", True),
    ("3.14", "The answer is 3.2", False),
])
def test_an_accuracy_suites_rel_tol_applies_to_every_number(reference, reply, verdict):
    assert answer_matches(reply, reference, rel_tol=0.01, language="en") is verdict


def test_an_accuracy_suite_without_rel_tol_compares_exact_numbers_exactly():
    from tempa.merge.evaluate_config import AccuracySuite

    assert AccuracySuite.model_fields["rel_tol"].default is None  # unset: the exact rule, not a tolerance
    assert answer_matches("The answer is 1001", "1000", rel_tol=None, language="en") is False
    assert answer_matches("The answer is 0.3333333", "1/3", rel_tol=None, language="en") is True
