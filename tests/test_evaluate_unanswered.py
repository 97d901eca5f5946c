"""Replies cut off while thinking: graded wrong, and counted, so a leaderboard of thinking-mode accuracies says when it
ranks how briefly the candidates think rather than how well they answer."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tempa.alignment.generation import GenerationBackend
from tempa.merge.evaluate_config import AccuracySuite, EvalGeneration, IFEvalSuite, LanguageSuite
from tempa.merge.leaderboard import Leaderboard, LeaderboardRow
from tempa.merge.suites import CandidateScorer

ROWS = [{"prompt": "2+2は？", "answer": 4, "language": "ja", "instructions": [{"type": "word_count", "max": 50}]},
        {"prompt": "3×3は？", "answer": 9, "language": "ja", "instructions": [{"type": "word_count", "max": 50}]}]


class Replies(GenerationBackend):
    """A model's replies, fixed: what is under test is how they are scored. The first prompt's reply closes its
    think block and answers; the second is still thinking when max_new_tokens cuts it."""

    def generate(self, prompts, params, *, thinking_modes=None):
        return [["2と2を足す。\n</think>\n\n答えは4です。" if "2+2" in p[-1]["content"] else "3を3回足すと、まず"]
                for p in prompts]


@pytest.fixture(scope="module")
def scorer(tokenizer_dir):
    # the shipped template's pre-fill opens the think block when thinking is on: the replies continue it
    return CandidateScorer(Replies(), AutoTokenizer.from_pretrained(tokenizer_dir), EvalGeneration())


@pytest.mark.parametrize("suite_type", [AccuracySuite, IFEvalSuite, LanguageSuite])
def test_a_reply_still_thinking_at_the_budget_is_wrong_and_counted(tmp_path, scorer, suite_type):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS), encoding="utf-8")
    suite = suite_type.model_validate({"type": suite_type.model_fields["type"].annotation.__args__[0],
                                       "data": str(data), "thinking_mode": "on"})
    scores = scorer.run(suite, ROWS)
    assert scores["unanswered"] == 0.5
    assert scores["rows"] == len(ROWS)  # every generation suite says how many rows its shares are of
    if suite_type is LanguageSuite:  # the share of answers whose language could not be told, beside language_share
        assert scores["undetermined"] == scores["language:undetermined"] > 0
        assert suite.metric_problem("undetermined") is None
    assert suite.metric_problem("unanswered") is None  # a metric rank_by and select may name
    accuracy = scores.get("accuracy", scores.get("prompt_accuracy"))
    assert accuracy == 0.5  # the cut-off reply is wrong, the other right


def test_the_leaderboard_shows_unanswered_replies_only_when_there_are_some():
    rows = [LeaderboardRow(candidate="short-thinker", path="/a", metrics={"math/accuracy": 0.6, "math/unanswered": 0.0}),
            LeaderboardRow(candidate="long-thinker", path="/b", metrics={"math/accuracy": 0.2, "math/unanswered": 0.7})]
    board = Leaderboard(rows=rows, rank_by="math/accuracy")
    assert board.lower_is_better("math/unanswered")
    assert "math/unanswered ↓" in board.to_markdown()
    quiet = Leaderboard(rows=[r.model_copy(update={"metrics": {**r.metrics, "math/unanswered": 0.0}}) for r in rows])
    assert "unanswered" not in quiet.to_markdown()


def test_the_stage_warns_once_per_suite_whose_replies_were_cut_off(tmp_path):
    from tempa.merge.evaluate_config import EvaluateStageConfig
    from tempa.merge.evaluate_stage import unanswered_warnings

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS), encoding="utf-8")
    config = EvaluateStageConfig.model_validate({
        "name": "evaluate", "kind": "evaluate", "generation": {"max_new_tokens": 24},
        "suites": [{"type": "accuracy", "name": "math", "data": str(data), "max_new_tokens": 64},
                   {"type": "ifeval", "data": str(data)}]})
    rows = [LeaderboardRow(candidate="a", path="/a", metrics={"math/unanswered": 0.25, "ifeval/unanswered": 0.0}),
            LeaderboardRow(candidate="b", path="/b", metrics={"math/unanswered": 1.0, "ifeval/unanswered": 0.0})]
    lines = unanswered_warnings(Leaderboard(rows=rows), config)
    assert len(lines) == 1 and lines[0].startswith("suite 'math': up to 100% of a candidate's replies (2 of 2")
    assert "max_new_tokens=64" in lines[0]  # the suite's own budget, not the stage's
    assert "still thinking at max_new_tokens=64" in lines[0] and "thinking_mode to 'off'" in lines[0]
    quiet = [r.model_copy(update={"metrics": {"math/unanswered": 0.0}}) for r in rows]
    assert unanswered_warnings(Leaderboard(rows=quiet), config) == []
    # With thinking off (the demo's answer suites) nothing was cut off while thinking: an empty answer is a turn ended
    # at once. The warning said "still thinking ... set its thinking_mode to 'off'" to a suite already off.
    off = config.model_copy(update={"suites": [config.suites[0].model_copy(update={"thinking_mode": "off"})]})
    (line,) = unanswered_warnings(Leaderboard(rows=rows), off)
    assert "gave no answer with thinking off" in line and "still thinking" not in line and "'off'" not in line
    # Replies that ended their turn (finish reason stop) with nothing after the think block are no cut-off: the
    # warning said "most likely still thinking at max_new_tokens" of them (Swallow trial: 2 of 3 such replies).
    stopped = [r.model_copy(update={"metrics": {**r.metrics, "math/truncated": 0.25}}) for r in rows]
    (line,) = unanswered_warnings(Leaderboard(rows=stopped), config, tmp_path / "evaluate")
    assert "still thinking" not in line and "b ended its turn without one after (or inside) its think block" in line
    assert "at least 75% of its replies, the rest were cut off at max_new_tokens=64" in line
    assert str(tmp_path / "evaluate" / "answers" / "b" / "math.jsonl") in line
    cut_off = [r.model_copy(update={"metrics": {**r.metrics, "math/truncated": r.metrics["math/unanswered"]}})
               for r in rows]
    (line,) = unanswered_warnings(Leaderboard(rows=cut_off), config)
    assert "most likely still thinking at max_new_tokens=64" in line


def test_the_thinking_suite_counts_its_rows(tmp_path, scorer):
    from tempa.merge.evaluate_config import ThinkingFormatSuite

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS),
                                         encoding="utf-8")
    suite = ThinkingFormatSuite.model_validate({"type": "thinking", "data": str(tmp_path / "rows.jsonl"),
                                                "modes": ["on", "off"]})
    scores = scorer.run(suite, ROWS)
    assert scores["rows"] == len(ROWS) and suite.metric_problem("rows") is None


def test_language_share_is_shown_with_the_share_of_answers_it_could_not_judge():
    """A new user read language_share 1.0 as perfect language fidelity where 15 of 16 answers could not be judged
    (language:undetermined 0.94 stayed in the JSON)."""
    rows = [LeaderboardRow(candidate="sft", path="/a", metrics={"language/language_share": 1.0,
                                                                "language/undetermined": 0.9375})]
    board = Leaderboard(rows=rows)
    assert board.lower_is_better("language/undetermined")
    # ... and the breakdown spellings of the same shares, whose qualifier is the direction (they ranked as "max")
    assert board.lower_is_better("language/language:undetermined")
    assert board.lower_is_better("language/reasoning:undetermined")
    assert not board.lower_is_better("mt/win_rate:error_analysis")
    header = next(line for line in board.to_markdown().splitlines() if line.startswith("| model"))
    assert "language/language_share ↑" in header and "language/undetermined ↓" in header


class CutReplies(GenerationBackend):
    """Both replies answer right with thinking off, but the second was cut at max_new_tokens (finish reason
    `length`): a sampling backend says so."""

    def sample(self, prompts, params, *, thinking_modes=None, tools=None):
        from tempa.alignment.completions import Completion

        return [[Completion(text="答えは4です。", finish_reason="stop") if "2+2" in p[-1]["content"]
                 else Completion(text="答えは9です。", finish_reason="length")] for p in prompts]

    def generate(self, prompts, params, *, thinking_modes=None):
        return [[c.text for c in group] for group in self.sample(prompts, params)]


@pytest.mark.parametrize("suite_type", [AccuracySuite, IFEvalSuite, LanguageSuite])
def test_a_reply_cut_at_the_budget_with_thinking_off_is_wrong_and_counted(tmp_path, tokenizer_dir, suite_type):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS), encoding="utf-8")
    suite = suite_type.model_validate({"type": suite_type.model_fields["type"].annotation.__args__[0],
                                       "data": str(data), "thinking_mode": "off"})
    scorer = CandidateScorer(CutReplies(), AutoTokenizer.from_pretrained(tokenizer_dir), EvalGeneration())
    scores = scorer.run(suite, ROWS)
    # 1 of 2 replies cut; it has an answer (not unanswered) and would pass "at most 50 words" and the answer check
    assert scores["truncated"] == 0.5 and scores["unanswered"] == 0.0
    assert suite.metric_problem("truncated") is None
    if suite_type is IFEvalSuite:
        assert (scores["prompt_accuracy"], scores["instruction_accuracy"]) == (0.5, 0.5)
    elif suite_type is LanguageSuite:
        assert (scores["accuracy"], scores["normalized_accuracy"]) == (0.5, 0.5)
    else:
        assert scores["accuracy"] == 0.5
    assert [record["finish_reason"] for record in scorer.records[suite.key]] == ["stop", "length"]


def test_the_leaderboard_shows_truncated_replies_only_when_there_are_some():
    rows = [LeaderboardRow(candidate="a", path="/a", metrics={"math/accuracy": 0.6, "math/truncated": 0.0}),
            LeaderboardRow(candidate="b", path="/b", metrics={"math/accuracy": 0.2, "math/truncated": 0.5})]
    board = Leaderboard(rows=rows, rank_by="math/accuracy")
    assert "math/truncated ↓" in board.to_markdown()
    quiet = Leaderboard(rows=[r.model_copy(update={"metrics": {**r.metrics, "math/truncated": 0.0}}) for r in rows])
    assert "truncated" not in quiet.to_markdown()
