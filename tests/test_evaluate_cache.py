"""Cached scores are reused only while the code that scored them is the code that would score them now."""

from __future__ import annotations

import json

from stage_helpers import make_context
from tempa.merge import evaluate_stage
from tempa.merge.evaluate_config import EvaluateStageConfig


def test_a_cached_score_is_not_reused_once_the_scoring_code_changed(tmp_path, monkeypatch, tiny_model_dir,
                                                                     tokenizer_dir):
    # A re-run after an upgrade reused every candidate's old scores: a fixed answer reading did not apply, and a metric
    # the new code reports was absent from the cached candidates but present on the newly scored merge.
    # every module that reads answers, however deep the suites import it (a hand-kept list missed answer_text)
    files = {(path.parent.name, path.name) for path in evaluate_stage.scoring_files()}
    assert {("merge", "answers.py"), ("merge", "suites.py"), ("alignment", "answer_text.py"),
            ("alignment", "numbers.py"), ("chat_templates", "thinking.py")} <= files
    probe = tmp_path / "eval_scoring_probe"
    probe.mkdir()
    (probe / "__init__.py").write_text("")
    module = probe / "grading.py"
    module.write_text("def grade(answer): return answer == 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(evaluate_stage, "SCORING_PACKAGES", (*evaluate_stage.SCORING_PACKAGES, "eval_scoring_probe"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "2+2?", "answer": 4}) + "\n")
    config = EvaluateStageConfig.model_validate(
        {"name": "eval", "kind": "evaluate", "suites": [{"type": "accuracy", "data": str(rows)}]})
    ctx = make_context(tmp_path / "run", "eval", start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir,
                       chat_template="{{ messages }}")
    loaded = [{"prompt": "2+2?", "answer": 4}]
    (suite,) = config.suites
    model = evaluate_stage.weights_identity(tiny_model_dir)

    before = evaluate_stage.suite_cache_key(config, suite, loaded, model, ctx)
    assert evaluate_stage.suite_cache_key(config, suite, loaded, model, ctx) == before
    module.write_text("def grade(answer): return float(answer) == 42.0\n")  # an upgrade that reads answers anew
    assert evaluate_stage.suite_cache_key(config, suite, loaded, model, ctx) != before


class Answers:
    """A candidate (or merged) model: answers '<who> answer to <question>'; records every prompt it is asked."""

    def __init__(self, who: str, asked: list[str]) -> None:
        self.who, self.asked = who, asked

    def generate(self, prompts, params, *, thinking_modes=None):
        self.asked.extend(p[-1]["content"] for p in prompts)
        return [[f"{self.who} answer to {p[-1]['content']}"] for p in prompts]

    def close(self) -> None:
        pass


def judge_and_baseline(body):
    """The fake server: as the baseline (model 'base') it answers 'BASE answer to ...'; as the judge it prefers the
    candidate's conversation in either position."""
    from test_alignment_fakes import chat_response, last_user

    text = last_user(body)
    if body["model"] == "base":
        return chat_response([f"BASE answer to {text}"] * body.get("n", 1))
    candidate_is = "A" if "CAND answer" in text.split("[Conversation with assistant B]")[0] else "B"
    return chat_response([f"[[{candidate_is}]]"] * body.get("n", 1))


def win_rate_suite(name: str, data, url: str) -> dict:
    return {"type": "win_rate", "name": name, "data": str(data), "thinking_mode": "off",
            "baseline": {"type": "http", "base_url": url, "model": "base"},
            "judge": {"backend": {"type": "http", "base_url": url, "model": "judge"}}}


def write_rows(path, tag: str, count: int) -> None:
    path.write_text("".join(json.dumps({"turns": [f"[{tag} q{i}]"], "category": "c"}) + "\n" for i in range(count)))


def judge_prompts(server) -> list[str]:
    from test_alignment_fakes import last_user

    return [last_user(body) for body in server.requests if body["model"] == "judge"]


def test_changing_one_suites_file_rescores_that_suite_alone(tmp_path, tiny_model_dir, tokenizer_dir):
    # One eval file edited re-scored every suite of every candidate: the judge was paid again for all of them.
    from test_alignment_fakes import FakeOpenAI

    from tempa.merge.candidates import Candidate
    from tempa.merge.evaluate_stage import answers_dir, evaluate_candidates

    write_rows(tmp_path / "a.jsonl", "a", 2)
    write_rows(tmp_path / "b.jsonl", "b", 3)
    models = [Candidate(name="one", path=tiny_model_dir, stage=None, step=None)]
    asked: list[str] = []
    with FakeOpenAI(judge_and_baseline) as server:
        config = EvaluateStageConfig.model_validate({"name": "eval", "kind": "evaluate", "suites": [
            win_rate_suite("mt_a", tmp_path / "a.jsonl", server.base_url),
            win_rate_suite("mt_b", tmp_path / "b.jsonl", server.base_url)]})

        def run(stage: str):
            ctx = make_context(tmp_path / "run", stage, start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir,
                               cache_dir=tmp_path / "cache")
            return evaluate_candidates(config, ctx, models, backend_factory=lambda *_: Answers("CAND", asked)), ctx

        board, _ = run("eval")
        # both orders of each row: 2 * (2 + 3) verdicts; the candidate answered the 5 questions
        assert len(judge_prompts(server)) == 10 and len(asked) == 5
        assert board.rows[0].metrics["mt_a/win_rate"] == 1.0 and board.rows[0].metrics["mt_b/rows"] == 3.0

        write_rows(tmp_path / "b.jsonl", "b", 4)  # one more row in mt_b's file
        before = len(server.requests)
        board, ctx = run("eval-again")
        again = judge_prompts(server)[10:]
        # mt_b alone is judged again: its 4 rows in both orders, nothing of mt_a's
        assert len(again) == 8 and all("[b q" in prompt for prompt in again)
        assert all("[b q" in question for question in asked[5:]) and len(asked) == 5 + 4
        # the baseline answers mt_b's rows anew (its answers are cached by the rows too), mt_a's not
        assert len(server.requests) - before == 8 + 4
        metrics = board.rows[0].metrics
        assert metrics["mt_a/rows"] == 2.0 and metrics["mt_b/rows"] == 4.0
        assert list(metrics).index("mt_a/win_rate") < list(metrics).index("mt_b/win_rate")  # the suites' order
        # the reused suite's answers come with its cached scores
        reused = (answers_dir(ctx.stage_dir, "one") / "mt_a.jsonl").read_text().splitlines()
        assert len(reused) == 2 and "[a q0]" in reused[0]
        assert len((answers_dir(ctx.stage_dir, "one") / "mt_b.jsonl").read_text().splitlines()) == 4


def test_a_rerun_of_a_merge_asks_the_judge_nothing_again(tmp_path, tiny_model_dir, tokenizer_dir):
    # The merge stage re-scored its merged model with no cache: a re-run that merged the identical model asked the
    # (paid) judge every question again.
    import shutil

    from test_alignment_fakes import FakeOpenAI

    from stage_helpers import done
    from tempa.merge import MergeStageConfig, run_merge
    from tempa.merge.evaluate_stage import run_evaluate

    write_rows(tmp_path / "a.jsonl", "a", 3)
    for name in ("m1", "m2"):
        shutil.copytree(tiny_model_dir, tmp_path / name)
    asked: list[str] = []
    with FakeOpenAI(judge_and_baseline) as server:
        evaluate = EvaluateStageConfig.model_validate({
            "name": "eval", "kind": "evaluate", "models": [str(tmp_path / "m1"), str(tmp_path / "m2")],
            "suites": [win_rate_suite("mt", tmp_path / "a.jsonl", server.base_url)], "rank_by": "mt/win_rate"})

        def context(name: str, upstream=None):
            return make_context(tmp_path / "run", name, start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir,
                                cache_dir=tmp_path / "cache", upstream=upstream)

        scored = run_evaluate(evaluate, context("eval"), backend_factory=lambda *_: Answers("CAND", asked))
        merge = MergeStageConfig.model_validate({"name": "merge", "kind": "merge", "method": "linear",
                                                 "evaluate_stage": "eval", "select": {"metric": "mt/win_rate",
                                                                                      "top_k": 2}})
        upstream = [done("eval", scored, kind="evaluate", config=evaluate)]

        def run():
            shutil.rmtree(tmp_path / "run" / "merge", ignore_errors=True)  # the runner clears a re-run stage
            return run_merge(merge, context("merge", upstream), backend_factory=lambda *_: Answers("CAND", asked))

        first = run()
        judged = len(judge_prompts(server))
        assert judged == 2 * 3 * 3  # two candidates and the merge, three rows, both orders
        assert first.metrics["merged/mt/win_rate"] == 1.0
        again = run()
        assert len(judge_prompts(server)) == judged  # nothing asked again
        assert again.metrics["merged/mt/win_rate"] == 1.0
        (merged,) = [row for row in again.leaderboard.rows if row.merged]
        assert merged.metrics["mt/rows"] == 3.0


def test_a_judges_or_baselines_transport_settings_reuse_their_answers(tmp_path, tiny_model_dir, tokenizer_dir):
    """Raising a judge's timeout_s, max_retries or backoff_s (what a flaky API asks for) re-judged every row: only
    its key variable and concurrency were left out of what the cache is keyed by."""
    from test_alignment_fakes import FakeOpenAI

    from tempa.merge.candidates import Candidate
    from tempa.merge.evaluate_stage import evaluate_candidates

    write_rows(tmp_path / "a.jsonl", "a", 2)
    models = [Candidate(name="one", path=tiny_model_dir, stage=None, step=None)]
    with FakeOpenAI(judge_and_baseline) as server:
        def run(stage: str, **transport) -> None:
            suite = win_rate_suite("mt", tmp_path / "a.jsonl", server.base_url)
            suite["baseline"].update(transport)
            suite["judge"]["backend"].update(transport)
            config = EvaluateStageConfig.model_validate({"name": "eval", "kind": "evaluate", "suites": [suite]})
            ctx = make_context(tmp_path / "run", stage, start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir,
                               cache_dir=tmp_path / "cache")
            evaluate_candidates(config, ctx, models, backend_factory=lambda *_: Answers("CAND", []))

        run("eval")
        sent = len(server.requests)
        run("eval-again", timeout_s=900.0, max_retries=9, backoff_s=5.0, concurrency=2)
        assert len(server.requests) == sent
