"""The SEA-MTBench-style win-rate suite: both orders judged, ties 0.5, categories averaged, baseline cached."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tempa.alignment.backends import SamplingBackend
from tempa.alignment.completions import Completion
from tempa.merge import win_rate
from tempa.merge.candidates import Candidate
from tempa.merge.evaluate_config import EvaluateStageConfig
from tempa.merge.evaluate_stage import evaluate_candidates
from tests.stage_helpers import make_context

# category -> what the scripted judge thinks of the candidate
RULES = {"math": "candidate", "writing": "baseline", "roleplay": "tie", "reasoning": "always A"}
ROWS = ([("math", 1)] + [("writing", i) for i in range(3)] + [("roleplay", i) for i in range(2)]
        + [("reasoning", i) for i in range(2)])


class ScriptedAnswers:
    """A candidate or baseline model: answers '<WHO> answer to <question>' (a GenerationBackend)."""

    def __init__(self, who: str, prompts_seen: list) -> None:
        self.who = who
        self.prompts_seen = prompts_seen

    def generate(self, prompts, params, *, thinking_modes=None):
        self.prompts_seen.extend(prompts)
        return [[f"{self.who} answer to {p[-1]['content']}"] for p in prompts]

    def close(self) -> None:
        pass


class ScriptedJudge(SamplingBackend):
    """Reads which assistant (A or B) holds the candidate's conversation and rules by the row's category."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def sample(self, prompts, params, *, thinking_modes=None):
        out = []
        for messages in prompts:
            text = messages[-1]["content"]
            self.prompts.append(text)
            category = re.search(r"\[(\w+) q", text).group(1)
            a_part = text.split("[Conversation with assistant B]")[0]
            candidate_is = "A" if "CAND answer" in a_part else "B"
            rule = RULES[category]
            verdict = {"candidate": candidate_is, "baseline": "B" if candidate_is == "A" else "A",
                       "tie": "C", "always A": "A"}[rule]
            out.append([Completion(text=f"Both are fine. Verdict: [[{verdict}]]")])
        return out

    def close(self) -> None:
        pass



def test_verdicts_rows_and_weighting_pure():
    assert win_rate.parse_verdict("<think>[[B]]</think>A is better [[A]]") == "A"
    assert win_rate.parse_verdict("no verdict") is None
    assert win_rate.row_score("A", "B") == 1.0  # candidate won as A and as B
    assert win_rate.row_score("A", "A") == 0.5  # position bias: one win, one loss
    assert win_rate.row_score("C", "C") == 0.5 and win_rate.row_score(None, None) is None
    # One order alone is the position bias the swap cancels: an always-[[A]] judge whose second reply failed
    # gave the candidate 1 (and 0 when its first failed). Such a row is not scored.
    assert win_rate.row_score("A", None) is None and win_rate.row_score(None, "A") is None
    rates = win_rate.win_rates(["math", "writing", "writing", "writing"], [1.0, 0.0, 0.0, None])
    assert rates["win_rate"] == 0.5 and rates["micro_win_rate"] == pytest.approx(1 / 3)
    assert rates["win_rate:math"] == 1.0 and rates["rows"] == 3.0
    unjudged = win_rate.win_rates(["math"], [None])  # a judge that never gives a verdict ranks last, no crash
    assert unjudged["rows"] == 0.0 and unjudged["win_rate"] != unjudged["win_rate"]


def test_win_rate_suite_judges_both_orders_and_caches_the_baseline(tmp_path, tiny_model_dir, tokenizer_dir,
                                                                    monkeypatch):
    import tempa.alignment.backends as backends

    data = tmp_path / "mtbench.jsonl"
    data.write_text("".join(json.dumps({"turns": [f"[{c} q{i}] first", f"[{c} q{i}] second"], "category": c}) + "\n"
                            for c, i in ROWS), encoding="utf-8")
    judge, baseline_prompts, baseline_builds = ScriptedJudge(), [], []

    def build_backend(config, **kwargs):
        if config.model == "judge":
            return judge
        baseline_builds.append(config.model)
        return ScriptedAnswers("BASE", baseline_prompts)

    monkeypatch.setattr(backends, "build_backend", build_backend)
    config = EvaluateStageConfig.model_validate({
        "kind": "evaluate", "name": "evaluate", "rank_by": "mtbench/win_rate",
        "suites": [{"type": "win_rate", "name": "mtbench", "data": str(data), "thinking_mode": "off",
                    "baseline": {"type": "http", "base_url": "http://baseline.invalid/v1", "model": "gpt-3.5"},
                    "judge": {"backend": {"type": "http", "base_url": "http://judge.invalid/v1", "model": "judge"}}}],
    })
    candidate_prompts: list = []
    models = []
    for name in ("one", "two"):
        shutil.copytree(tiny_model_dir, tmp_path / name)
        models.append(Candidate(name=name, path=tmp_path / name, stage="m", step=None))
    cache = tmp_path / "cache"

    def run(stage: str):
        ctx = make_context(tmp_path / "run", stage, start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir,
                           cache_dir=cache)
        return evaluate_candidates(config, ctx, models,
                                   backend_factory=lambda path, _c, _x: ScriptedAnswers("CAND", candidate_prompts))

    board = run("evaluate")
    metrics = board.rows[0].metrics
    (suite,) = config.suites  # every metric it reported is one it declares (what rank_by is checked against)
    assert [m for m in metrics if suite.metric_problem(m.partition("/")[2]) is not None] == []
    # weighted: mean over categories (math 1, writing 0, roleplay 0.5 tie, reasoning 0.5 position bias) ...
    assert metrics["mtbench/win_rate"] == pytest.approx(0.5)
    assert {k: metrics[f"mtbench/win_rate:{k}"] for k in RULES} == {
        "math": 1.0, "writing": 0.0, "roleplay": 0.5, "reasoning": 0.5}
    # ... not over rows (3 losing writing rows would pull that to 3/8)
    assert metrics["mtbench/micro_win_rate"] == pytest.approx(3 / 8)
    assert metrics["mtbench/consistency"] == pytest.approx(6 / 8)  # only the always-A judge disagrees with itself
    # every row judged twice, once with the candidate as A and once as B
    assert len(judge.prompts) == 2 * 2 * len(ROWS)
    firsts = [p for p in judge.prompts[: len(ROWS)]]
    assert all(p.index("CAND answer") < p.index("BASE answer") for p in firsts)
    assert all(p.index("BASE answer") < p.index("CAND answer") for p in judge.prompts[len(ROWS): 2 * len(ROWS)])
    # multi-turn: the second turn is asked after the model's own first answer
    second_turns = [p for p in candidate_prompts if len(p) == 3]
    assert second_turns and all(p[1]["content"].startswith("CAND answer to") for p in second_turns)
    # the baseline answered once for both candidates ...
    assert baseline_builds == ["gpt-3.5"] and len(baseline_prompts) == 2 * len(ROWS)
    # ... and a later run reuses its cached answers (the candidates' scores are cached too)
    shutil.rmtree(cache / "eval_scores")
    board = run("evaluate-again")
    assert baseline_builds == ["gpt-3.5"] and board.rows[0].metrics["mtbench/win_rate"] == pytest.approx(0.5)


def test_a_win_rate_row_without_a_user_turn_says_what_was_expected():
    with pytest.raises(ValueError, match=r"^expected 'turns' \(a list of user messages\), 'messages' with user turns"):
        win_rate.pairwise_row({"turns": []}, "turns", "category")
    assert win_rate.pairwise_row({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                                  "category": "math"}, "turns", "category") == win_rate.PairwiseRow(["q"], "math", "s")


class Replies(SamplingBackend):
    """A judge that answers from a script, in order."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = iter(replies)

    def sample(self, prompts, params, *, thinking_modes=None):
        return [[Completion(text=next(self.replies))] for _ in prompts]

    def close(self) -> None:
        pass


def test_a_judge_that_gives_too_few_verdicts_stops_the_suite_quoting_a_reply():
    """A row needs both orders' verdicts: a judge that cannot follow the rubric would leave a win rate over the
    few rows it could judge. Up to max_unparsable of the replies may fail (as for a judge reward)."""
    from tempa.alignment.judge import Judge, JudgeSettings
    from tempa.sft.stage_api import StageError

    chats = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}] for i in range(5)]
    # Answers that differ: with the same ones both orders are one request, which the judge is asked once.
    others = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "b"}] for i in range(5)]
    allowed = Judge(Replies(["[[A]]"] * 8 + ["I cannot decide."] * 2), JudgeSettings())  # 2 of 10 replies: 20%
    first, second = win_rate.judge_pairs(allowed, win_rate.PAIRWISE_RUBRIC, chats, others, max_unparsable=0.2)
    assert first == ["A"] * 5 and second == ["A", "A", "A", None, None] and allowed.unparsable == 2
    too_many = Judge(Replies(["[[A]]"] * 7 + ["I cannot\n decide."] * 3), JudgeSettings())  # 3 of 10: 30%
    with pytest.raises(StageError) as info:
        win_rate.judge_pairs(too_many, win_rate.PAIRWISE_RUBRIC, chats, others, max_unparsable=0.2, where="suite 'mt'")
    assert str(info.value) == ("suite 'mt': the judge gave no [[A]]/[[B]]/[[C]] verdict in 3 of 10 replies (30% > "
                               "max_unparsable 0.2); e.g. 'I cannot decide.'. Use a judge that follows the rubric, "
                               "or raise max_unparsable")


def test_a_win_rate_row_is_answered_in_its_own_thinking_mode_unless_the_suite_sets_one():
    """The other generation suites take a row's `thinking_mode` (the suite's wins); the win-rate suite ignored it."""

    class Modes:
        def __init__(self) -> None:
            self.modes: list = []

        def complete(self, prompts, modes, max_new_tokens):
            self.modes += list(modes)
            return ["ok"] * len(prompts)

        def answer(self, text):
            return text

    rows = [win_rate.pairwise_row({"turns": ["q1", "q2"], "thinking_mode": "off"}, "turns", "category"),
            win_rate.pairwise_row({"turns": ["q3"]}, "turns", "category")]
    scorer = Modes()
    win_rate.answer_conversations(scorer, rows, None, None)
    assert scorer.modes == ["off", None, "off"]  # turn 1 of both rows, then row 0's second turn
    scorer = Modes()
    win_rate.answer_conversations(scorer, rows, "on", None)
    assert scorer.modes == ["on", "on", "on"]
    with pytest.raises(ValueError, match="thinking_mode must be 'on' or 'off', got 'maybe'"):
        win_rate.pairwise_row({"turns": ["q"], "thinking_mode": "maybe"}, "turns", "category")


def test_candidates_whose_win_rates_are_over_different_rows_are_warned_and_their_rows_shown(
        tmp_path, tiny_model_dir, tokenizer_dir, caplog):
    # A row whose verdict could not be read is dropped (up to max_unparsable): two candidates' win rates over 3 and 2
    # rows were ranked side by side, and leaderboard.md kept the counts out.
    from test_alignment_fakes import FakeOpenAI, chat_response, last_user

    from tempa.merge.evaluate_stage import run_evaluate

    def reply(body):
        text = last_user(body)
        if body["model"] == "base":
            return chat_response([f"BASE answer to {text}"])
        if "TWO answer to [q0]" in text:  # the judge rambles without a verdict on one of two's rows, in both orders
            return chat_response(["hard to say"])
        candidate_is = "A" if "BASE answer" in text.split("[Conversation with assistant B]")[0] else "B"
        return chat_response([f"[[{'B' if candidate_is == 'A' else 'A'}]]"])  # the candidate wins every verdict

    class Answers:
        def __init__(self, who):
            self.who = who

        def generate(self, prompts, params, *, thinking_modes=None):
            return [[f"{self.who} answer to {p[-1]['content']}"] for p in prompts]

        def close(self):
            pass

    data = tmp_path / "mt.jsonl"
    data.write_text("".join(json.dumps({"turns": [f"[q{i}]"], "category": "c"}) + "\n" for i in range(3)))
    for name in ("one", "two"):
        shutil.copytree(tiny_model_dir, tmp_path / name)
    with FakeOpenAI(reply) as server:
        config = EvaluateStageConfig.model_validate({
            "name": "eval", "kind": "evaluate", "models": [str(tmp_path / "one"), str(tmp_path / "two")],
            "rank_by": "mt/win_rate",
            "suites": [{"type": "win_rate", "name": "mt", "data": str(data), "thinking_mode": "off",
                        "max_unparsable": 0.5,  # two's 2 unreadable verdicts of 6 are allowed
                        "baseline": {"type": "http", "base_url": server.base_url, "model": "base"},
                        "judge": {"backend": {"type": "http", "base_url": server.base_url, "model": "judge"}}}]})
        ctx = make_context(tmp_path / "run", "eval", start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir)
        with caplog.at_level("WARNING", logger="tempa"):
            result = run_evaluate(config, ctx, backend_factory=lambda path, *_: Answers(path.name.upper()))
    rows = {row.candidate: row.metrics["mt/rows"] for row in result.leaderboard.rows}
    assert rows == {"one": 3.0, "two": 2.0}
    warned = [r.getMessage() for r in caplog.records if "different rows" in r.getMessage()]
    assert len(warned) == 1 and warned[0].endswith("one 3, two 2")
    table = [[cell.strip() for cell in line.strip("|").split("|")]
             for line in (ctx.stage_dir / "leaderboard.md").read_text().splitlines() if line.startswith("| ")]
    header, _, *cells = table
    assert "mt/rows" in header  # a count, with no direction arrow
    assert {row[0]: row[header.index("mt/rows")] for row in cells} == {"one": "3", "two": "2"}
