"""A ranking by SEA-IFEval's normalised accuracy, which keeps the score of an answer too short to tell its language
(the definition, kept), says so when the best candidate's answers are mostly such: a checkpoint that collapsed into
bare numbers ranked first on it, silently."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from stage_helpers import done, make_context, sft_with_one_checkpoint, trained
from tempa.merge import EvaluateStageConfig, run_evaluate
from tempa.merge.leaderboard import Leaderboard, LeaderboardRow, read_leaderboard


class Replies:
    """checkpoint-2 answers in bare numbers (right, but too short to tell the language); final answers in sentences
    of Indonesian, one of them wrong."""

    SENTENCE = "Jawabannya adalah {} karena itu hasil hitungan yang benar menurut saya."

    def __init__(self, model_dir: Path):
        self.short = Path(model_dir).name == "checkpoint-2"

    def generate(self, prompts, params, *, thinking_modes=None, tools=None):
        answers = {"2+2?": 4, "3*3?": 9, "5-1?": 4, "6/2?": 3}
        wrong = {"6/2?": 7}
        return [[str(answers[p[-1]["content"]]) if self.short
                 else self.SENTENCE.format(wrong.get(p[-1]["content"], answers[p[-1]["content"]]))] for p in prompts]

    def close(self):
        pass


def ranked_by_language(tmp_path: Path) -> EvaluateStageConfig:
    """An evaluate stage over sft's checkpoints ranked by an Indonesian language suite of four sums."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": a, "language": "id"}) + "\n"
                            for q, a in (("2+2?", 4), ("3*3?", 9), ("5-1?", 4), ("6/2?", 3))), encoding="utf-8")
    return EvaluateStageConfig.model_validate({
        "name": "eval", "kind": "evaluate", "checkpoints_of": ["sft"], "rank_by": "lang/normalized_accuracy",
        "suites": [{"type": "language", "name": "lang", "data": str(data), "thinking_mode": "off",
                    "languages": ["id", "en"]}]})


def test_ranking_by_normalized_accuracy_on_mostly_undetermined_answers_is_warned(tmp_path, tiny_model_dir,
                                                                                  tokenizer_dir, caplog):
    run_dir = tmp_path / "run"
    sft = sft_with_one_checkpoint(run_dir, tiny_model_dir)
    config = ranked_by_language(tmp_path)
    ctx = make_context(run_dir, "eval", start_model=sft / "final", tokenizer_dir=tokenizer_dir,
                       upstream=[done("sft", trained(sft))])
    with caplog.at_level(logging.WARNING):
        result = run_evaluate(config, ctx, backend_factory=lambda path, _c, _x: Replies(path))
    board = read_leaderboard(run_dir / "eval")
    by_name = {row.candidate: row.metrics for row in board.rows}
    # 4 of 4 right and undetermined (kept) against 3 of 4 right in Indonesian
    assert by_name["sft/checkpoint-2"]["lang/normalized_accuracy"] == 1.0
    assert by_name["sft"]["lang/normalized_accuracy"] == 0.75
    assert by_name["sft/checkpoint-2"]["lang/undetermined"] == 1.0 and result.metrics["best"] == "sft/checkpoint-2"
    expected = ("sft/checkpoint-2 ranks first on lang/normalized_accuracy, but 100% of its answers in suite 'lang' "
                "are too short (or too few Han characters) to tell their language (undetermined)")
    assert expected in caplog.text
    assert str(result.metrics["warning"]).startswith(expected)
    assert board.notes and board.notes[0].startswith(expected)
    assert expected in (run_dir / "eval" / "leaderboard.md").read_text(encoding="utf-8")


def test_no_warning_below_half_undetermined_or_for_another_metric():
    from tempa.merge.leaderboard import undetermined_warning

    row = LeaderboardRow(candidate="a", path="/a", metrics={"lang/normalized_accuracy": 1.0, "lang/accuracy": 1.0,
                                                           "lang/undetermined": 0.25})
    board = Leaderboard(rows=[row], rank_by="lang/normalized_accuracy")
    assert undetermined_warning(board, "lang/normalized_accuracy", row) is None
    half = row.model_copy(update={"metrics": {**row.metrics, "lang/undetermined": 0.5}})
    assert "50% of its answers in suite 'lang'" in undetermined_warning(board, "lang/normalized_accuracy:id", half)
    assert undetermined_warning(board, "lang/accuracy", half) is None  # not language-normalised


def test_a_merge_after_it_carries_the_note_to_its_board_and_keeps_its_answers(tmp_path, tiny_model_dir,
                                                                             tokenizer_dir):
    """The report shows the last leaderboard, the merge's: its re-scored board was built without the evaluate
    board's notes (the warning never reached report.html), and the merged model's answers were not kept."""
    from tempa.merge import MergeStageConfig, run_merge

    run_dir = tmp_path / "run"
    sft = sft_with_one_checkpoint(run_dir, tiny_model_dir)
    evaluate = ranked_by_language(tmp_path)
    factory = lambda path, _c, _x: Replies(path)  # noqa: E731
    scored = run_evaluate(evaluate, make_context(run_dir, "eval", start_model=sft / "final", tokenizer_dir=tokenizer_dir,
                                                 upstream=[done("sft", trained(sft))]), backend_factory=factory)
    merge = MergeStageConfig.model_validate({"name": "merge", "kind": "merge", "method": "linear",
                                             "evaluate_stage": "eval",
                                             "select": {"metric": "lang/normalized_accuracy", "top_k": 2}})
    ctx = make_context(run_dir, "merge", start_model=sft / "final", tokenizer_dir=tokenizer_dir,
                       upstream=[done("sft", trained(sft)), done("eval", scored, kind="evaluate", config=evaluate)])
    result = run_merge(merge, ctx, backend_factory=factory)
    board = read_leaderboard(run_dir / "merge")
    assert any(note.startswith("sft/checkpoint-2 ranks first on lang/normalized_accuracy") for note in board.notes)
    assert result.leaderboard is not None and result.leaderboard.notes == board.notes
    answers = [json.loads(line) for line in
               (run_dir / "merge" / "answers" / "merge" / "lang.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["answer"] for row in answers] == [Replies.SENTENCE.format(a) for a in (4, 9, 4, 7)]
