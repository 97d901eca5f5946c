"""An interrupted preference stage resumes: finished sampling and scoring are reused, training is retried."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from preference_helpers import ending_model

import tempa.alignment.preference_stage as stage_module
from stage_helpers import make_context
from tempa.alignment import PreferenceStageConfig, run_preference
from tempa.sft.stage_api import StageError

PROMPTS = str(Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl")


def test_a_failed_training_launch_resumes_without_resampling(tmp_path, tiny_model_dir, monkeypatch):
    from tempa.chat_templates import bake_tokenizer

    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    start = ending_model(tiny_model_dir, tmp_path / "tok", tmp_path / "start")
    launches: list[str] = []

    def launch(module: str, args: list[str], log_file: Path) -> None:
        launches.append(module)
        if len(launches) == 1:
            raise StageError("training process exited with code -9")
        final = Path(json.loads(Path(args[1]).read_text())["final_dir"])
        final.mkdir(parents=True)
        (final / "tempa_train_metrics.json").write_text(json.dumps({"global_step": 1}))

    ctx = make_context(tmp_path / "run", "align", start_model=start, tokenizer_dir=tmp_path / "tok",
                       chat_template="", launch=launch)
    config = PreferenceStageConfig.model_validate({
        "name": "align", "prompts": {"path": PROMPTS, "limit": 4},
        "sampling": {"n": 4, "max_new_tokens": 12, "batch_size": 2, "thinking": {"mode": "off"}},
        "rewards": [{"type": "length", "unit": "chars", "per_token": 0.01}],
    })
    with pytest.raises(StageError, match="code -9"):
        run_preference(config, ctx)
    samples = (ctx.stage_dir / "round-1" / "samples.jsonl").read_text()
    pairs = (ctx.stage_dir / "round-1" / "pairs.jsonl").read_text()

    def no_sampling(*args, **kwargs):
        raise AssertionError("finished samples must be reused, not generated again")

    monkeypatch.setattr(stage_module, "build_backend", no_sampling)
    result = run_preference(config, ctx)
    assert launches == ["tempa.sft.train_worker"] * 2
    assert (ctx.stage_dir / "round-1" / "samples.jsonl").read_text() == samples
    assert (ctx.stage_dir / "round-1" / "pairs.jsonl").read_text() == pairs
    assert result.metrics["round1_pairs"] == len(pairs.splitlines()) > 0
