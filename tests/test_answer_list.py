"""A row's ``answer`` may list its accepted answers (QA sets often hold several): the accuracy suite, the language
suite's normalized accuracy and the answer reward all take a reply that gives any one of them, and a list no reply
could give is refused when the suite's data is read, with its file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tempa.alignment.generation import GenerationBackend
from tempa.alignment.rewards import answer_match
from tempa.merge.answers import answer_matches
from tempa.merge.evaluate_config import AccuracySuite, EvalGeneration, EvaluateStageConfig, LanguageSuite
from tempa.merge.evaluate_stage import load_suite_rows
from tempa.merge.suites import CandidateScorer
from tempa.sft.stage_api import StageError

REPLIES = {"果物は？": "りんご", "選んで": "答えはイです。", "数": "答えは12です。", "色": "みどり"}
ROWS = [{"prompt": "果物は？", "answer": ["イ", "りんご"], "language": "ja"},
        {"prompt": "選んで", "answer": ["イ", "りんご"], "language": "ja"},
        {"prompt": "数", "answer": [12, "十二"], "language": "ja"},  # a number in a list is compared by value
        {"prompt": "色", "answer": ["あか", "あお"], "language": "ja"}]


class Replies(GenerationBackend):
    """A model's replies, fixed: what is under test is how they are scored."""

    def generate(self, prompts, params, *, thinking_modes=None):
        return [[REPLIES[p[-1]["content"]]] for p in prompts]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(("reply", "accepted", "verdict"), [
    ("りんご", ["イ", "りんご"], True),  # graded against "['イ', 'りんご']", so never right
    ("答えはイです。", ("イ", "りんご"), True),
    ("答えは12です。", [12, "十二"], True),
    ("答えは13です。", [12, "十二"], False),
    ("みどり", ["あか", "あお"], False),
])
def test_a_list_of_accepted_answers_is_given_by_any_one_of_them(reply, accepted, verdict):
    assert answer_matches(reply, accepted, language="ja") is verdict
    assert answer_match(reply, list(accepted), language="ja") == float(verdict)  # the answer reward's rule


def test_the_accuracy_and_language_suites_grade_a_list_answer_by_any_of_its_items(tmp_path):
    scorer = CandidateScorer(Replies(), None, EvalGeneration())
    scorer.prefill = lambda messages, mode, tools=None: ""  # no chat template: the replies are the whole answers
    data = _write(tmp_path / "rows.jsonl", ROWS)
    accuracy = AccuracySuite.model_validate({"type": "accuracy", "data": data})
    assert scorer.accuracy(accuracy, ROWS)["accuracy"] == 0.75
    assert [record["correct"] for record in scorer.records[accuracy.key]] == [True, True, True, False]
    language = LanguageSuite.model_validate({"type": "language", "data": data})
    assert scorer.language(language, ROWS)["accuracy"] == 0.75


@pytest.mark.parametrize(("answer", "problem"), [
    ([], "answer: expected a string, a number or a non-empty list of them (the accepted answers), got []"),
    (["イ", ["りんご"]], "answer: item 1: expected a non-empty string or a number, got ['りんご']"),
    (["イ", " "], "answer: item 1: expected a non-empty string or a number, got ' '"),
    ({"text": "イ"}, "answer: expected a string, a number or a non-empty list of them, got dict"),
    (True, "answer: expected a string, a number or a non-empty list of them, got bool True"),
])
@pytest.mark.parametrize("suite_type", ["accuracy", "language"])
def test_an_answer_no_reply_could_give_is_refused_with_its_line(tmp_path, answer, problem, suite_type):
    path = tmp_path / "rows.jsonl"
    _write(path, [ROWS[0], {"prompt": "q", "answer": answer, "language": "ja"}])
    config = EvaluateStageConfig.model_validate({"name": "e", "kind": "evaluate", "models": ["m"],
                                                 "suites": [{"type": suite_type, "name": "s", "data": str(path)}]})
    with pytest.raises(StageError) as info:
        load_suite_rows(config)
    assert str(info.value).startswith(f"suite 's': {path}:2: {problem}") and "\n" not in str(info.value)
