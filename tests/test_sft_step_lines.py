"""What a short stage shows while it trains: its step lines, even when logging_steps is above its steps."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sft_helpers import prepared_rows


@pytest.fixture(scope="module")
def rows(tmp_path_factory, tiny_model_dir):
    return prepared_rows(tmp_path_factory.mktemp("step-lines"), tiny_model_dir, n=8, seed=3)


def train(model_dir: Path, rows: Any, out: Path, resume: Path | None = None, **train: Any):
    from trl import SFTConfig, SFTTrainer

    from tempa.sft.config import DEFAULT_TRAIN_ARGS
    from tempa.sft.throughput import ThroughputMeter, add_throughput_callbacks
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import trl_config_kwargs

    dataset, tokenizer = rows
    args = {**DEFAULT_TRAIN_ARGS, "max_length": 512, "per_device_train_batch_size": 1, "dataloader_num_workers": 0,
            **train}
    config = SFTConfig(**{**trl_config_kwargs(TrainPlan.standalone(model_dir, out, args)), "assistant_only_loss": False})
    trainer = SFTTrainer(model=str(model_dir), args=config, train_dataset=dataset, processing_class=tokenizer)
    add_throughput_callbacks(trainer, ThroughputMeter(peak=1e12))
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer


def step_lines(out: str) -> list[int]:
    return [int(step) for step in re.findall(r"^\[tempa\] step (\d+)/\d+ \| loss ", out, flags=re.M)]


def test_a_stage_shorter_than_logging_steps_shows_its_first_and_last_step(tmp_path, tiny_model_dir, rows, capsys):
    """tempa's default logging_steps (10) on a 3-step stage: no step line at all, and no loss in its log history."""
    trainer = train(tiny_model_dir, rows, tmp_path / "short", max_steps=3, save_strategy="no")
    assert step_lines(capsys.readouterr().out) == [1, 3]
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 3]


def test_the_last_step_is_logged_and_a_resume_shows_its_first_step(tmp_path, tiny_model_dir, rows, capsys):
    # 5 steps logged every 4: step 5 was in no log; resumed from checkpoint 4, the run showed nothing until it ended
    train(tiny_model_dir, rows, tmp_path / "run", max_steps=5, logging_steps=4, save_steps=4)
    assert step_lines(capsys.readouterr().out) == [4, 5]
    train(tiny_model_dir, rows, tmp_path / "run", resume=tmp_path / "run" / "checkpoint-4", max_steps=7,
          logging_steps=4, save_steps=4)
    assert step_lines(capsys.readouterr().out) == [5, 7]
    # logging_steps that a run reaches keeps its own rhythm: no extra first-step line
    train(tiny_model_dir, rows, tmp_path / "long", max_steps=4, logging_steps=2, save_strategy="no")
    assert step_lines(capsys.readouterr().out) == [2, 4]
