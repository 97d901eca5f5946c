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
    loaded = {"accuracy": [{"prompt": "2+2?", "answer": 4}]}

    before = evaluate_stage.cache_key(config, tiny_model_dir, ctx, loaded)
    assert evaluate_stage.cache_key(config, tiny_model_dir, ctx, loaded) == before
    module.write_text("def grade(answer): return float(answer) == 42.0\n")  # an upgrade that reads answers anew
    assert evaluate_stage.cache_key(config, tiny_model_dir, ctx, loaded) != before
