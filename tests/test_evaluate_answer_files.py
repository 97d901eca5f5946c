"""Every score of the evaluate stage can be audited: each candidate's answers, row by row, are kept beside the
leaderboard (``<stage>/answers/<candidate>/<suite>.jsonl``), from a fresh scoring and from the score cache alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stage_helpers import done, make_context, sft_with_one_checkpoint, trained
from tempa.alignment.completions import Completion
from tempa.merge import EvaluateStageConfig, run_evaluate


class Sampler:
    """A sampling backend with fixed replies (prompt text -> reply, finish reason): what is under test is what the
    stage keeps of them."""

    def __init__(self, replies: dict[str, tuple[str, str]]):
        self.replies = replies
        self.calls = 0

    def sample(self, prompts, params, *, thinking_modes=None, tools=None):
        self.calls += 1
        return [[Completion(text=self.replies[p[-1]["content"]][0], finish_reason=self.replies[p[-1]["content"]][1])]
                for p in prompts]

    def generate(self, prompts, params, *, thinking_modes=None, tools=None):
        return [[c.text for c in group] for group in self.sample(prompts, params)]

    def close(self):
        pass


def _rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_each_candidates_answers_are_kept_per_suite_also_when_its_scores_come_from_the_cache(
        tmp_path, tiny_model_dir, tokenizer_dir):
    run_dir = tmp_path / "run"
    sft = sft_with_one_checkpoint(run_dir, tiny_model_dir)
    # a row without an answer is no accuracy row: the indexes name the rows of the file, not of the scored subset
    math = _rows(tmp_path / "math.jsonl", [{"id": "q1", "prompt": "2+2?", "answer": 4}, {"prompt": "say hi"},
                                           {"prompt": "3*3?", "answer": 9}])
    rules = _rows(tmp_path / "if.jsonl", [{"prompt": "No commas", "instructions": [{"type": "no_commas"}]}])
    replies = {"2+2?": ("The answer is 4", "stop"), "3*3?": ("The answer is 8", "stop"), "say hi": ("hi", "stop"),
               "No commas": ("a, b", "length")}
    backends: list[Sampler] = []

    def factory(path, _config, _ctx):
        backends.append(Sampler(replies))
        return backends[-1]

    config = EvaluateStageConfig.model_validate({
        "name": "eval", "kind": "evaluate", "checkpoints_of": ["sft"], "rank_by": "math/accuracy",
        "generation": {"max_new_tokens": 16},
        "suites": [{"type": "accuracy", "name": "math", "data": math, "thinking_mode": "off"},
                   {"type": "ifeval", "data": rules, "thinking_mode": "off"}]})
    ctx = make_context(run_dir, "eval", start_model=sft / "final", tokenizer_dir=tokenizer_dir,
                       upstream=[done("sft", trained(sft))], cache_dir=tmp_path / "cache")
    run_evaluate(config, ctx, backend_factory=factory)
    folder = run_dir / "eval" / "answers" / "sft__checkpoint-2"  # the label's '/' makes no sub-folder

    def check() -> None:
        first, second = _read(folder / "math.jsonl")
        assert (first["index"], first["id"], first["answer"], first["finish_reason"]) == (0, "q1", "The answer is 4",
                                                                                          "stop")
        assert first["prompt"] == [{"role": "user", "content": "2+2?"}] and first["correct"] is True
        assert (second["index"], second["answer"], second["correct"]) == (2, "The answer is 8", False)
        assert "id" not in second
        (rule,) = _read(folder / "ifeval.jsonl")
        assert rule["finish_reason"] == "length" and rule["followed_all"] is False
        assert rule["instructions"] == [{"instruction": {"type": "no_commas"}, "followed": False}]
        assert (run_dir / "eval" / "answers" / "sft" / "math.jsonl").exists()

    check()
    assert len(backends) == 2
    # A re-run (the runner clears the stage folder) takes both candidates' scores from the cache: their answers too.
    shutil.rmtree(run_dir / "eval")
    run_evaluate(config, ctx, backend_factory=factory)
    assert len(backends) == 2
    check()


def test_the_warning_of_empty_answers_with_thinking_off_names_the_answers_file(tmp_path):
    from tempa.merge.evaluate_stage import unanswered_warnings
    from tempa.merge.leaderboard import Leaderboard, LeaderboardRow

    config = EvaluateStageConfig.model_validate({
        "name": "evaluate", "kind": "evaluate",
        "suites": [{"type": "accuracy", "name": "math", "data": _rows(tmp_path / "m.jsonl", [{"prompt": "1?",
                                                                                              "answer": 1}]),
                    "thinking_mode": "off"}]})
    rows = [LeaderboardRow(candidate="sft/checkpoint-2", path="/a", metrics={"math/unanswered": 0.5}),
            LeaderboardRow(candidate="sft", path="/b", metrics={"math/unanswered": 0.25})]
    (line,) = unanswered_warnings(Leaderboard(rows=rows), config, tmp_path / "evaluate")
    assert line.endswith(f"see its answers in {tmp_path / 'evaluate' / 'answers' / 'sft__checkpoint-2' / 'math.jsonl'}")
    assert "report" not in line
