"""The evaluate stage logs each candidate's suite scores to the trackers its training stage reported to.

A real SFT stage config (`train.report_to: tensorboard`), the real tiny model's checkpoints scored by the real
transformers backend on a loss suite, and TensorBoard's own event reader: offline, no network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stage_helpers import done, make_context, trained
from tempa.merge import EvaluateStageConfig, run_evaluate
from tempa.merge.leaderboard import read_leaderboard
from tempa.sft.config import SFTStageConfig
from tempa.sft.train_plan import OUTCOME_FILE

pytest.importorskip("tensorboard")


def _sft_run(tmp_path: Path, tiny_model_dir: Path, report_to: str) -> tuple[Path, SFTStageConfig, Path]:
    run_dir = tmp_path / "run"
    sft_dir = run_dir / "sft"
    for step in (10, 20):
        shutil.copytree(tiny_model_dir, sft_dir / "checkpoints" / f"checkpoint-{step}")
        (sft_dir / "checkpoints" / f"checkpoint-{step}" / "COMPLETE").write_text("")
    shutil.copytree(tiny_model_dir, sft_dir / "final")
    (sft_dir / "final" / OUTCOME_FILE).write_text(
        json.dumps({"global_step": 25})
    )  # trained past checkpoint-20
    rows = tmp_path / "chat.jsonl"
    rows.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "Hai"}, {"role": "assistant", "content": "Halo!"}]}
        )
        + "\n",
        encoding="utf-8",
    )
    sft = SFTStageConfig.model_validate(
        {
            "kind": "sft",
            "name": "sft",
            "data": {"sources": [{"name": "s", "path": str(rows)}]},
            "train": {"report_to": report_to},
        }
    )
    return run_dir, sft, rows


def _evaluate(run_dir: Path, sft: SFTStageConfig, rows: Path, tokenizer_dir: Path):
    config = EvaluateStageConfig.model_validate(
        {
            "name": "eval",
            "kind": "evaluate",
            "checkpoints_of": ["sft"],
            "suites": [{"type": "loss", "name": "chat", "data": str(rows)}],
            "rank_by": "chat/loss",
        }
    )
    ctx = make_context(
        run_dir,
        "eval",
        start_model=run_dir / "sft" / "final",
        tokenizer_dir=tokenizer_dir,
        upstream=[done("sft", trained(run_dir / "sft"), config=sft)],
        use_cpu=True,
    )
    return run_evaluate(config, ctx)


def _scalars(log_root: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for events in log_root.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return out


def test_each_checkpoints_scores_reach_tensorboard_at_its_step(
    tmp_path, tiny_model_dir, tokenizer_dir, monkeypatch
):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    run_dir, sft, rows = _sft_run(tmp_path, tiny_model_dir, "tensorboard")
    _evaluate(run_dir, sft, rows, tokenizer_dir)
    board = {row.candidate: row.metrics for row in read_leaderboard(run_dir / "eval").rows}
    assert set(board) == {"sft/checkpoint-10", "sft/checkpoint-20", "sft"}
    scalars = _scalars(run_dir / "eval" / "runs")
    for metric in ("loss", "perplexity", "tokens"):
        logged = scalars[f"eval/eval/sft/chat/{metric}"]  # eval/ as a Trainer's evaluation, then the stage
        expected = {
            10: board["sft/checkpoint-10"][f"chat/{metric}"],
            20: board["sft/checkpoint-20"][f"chat/{metric}"],
            25: board["sft"][f"chat/{metric}"],
        }  # the final model at the step it stopped at
        assert logged == pytest.approx(expected, rel=1e-6), metric


def test_no_tracker_is_written_when_the_training_stage_reports_to_none(
    tmp_path, tiny_model_dir, tokenizer_dir
):
    run_dir, sft, rows = _sft_run(tmp_path, tiny_model_dir, "none")
    _evaluate(run_dir, sft, rows, tokenizer_dir)
    assert read_leaderboard(run_dir / "eval").rows
    assert not list((run_dir / "eval").rglob("events.out.tfevents.*"))
