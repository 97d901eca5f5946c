"""A stage killed after its checkpoint and resumed continues its trackers' curves: each step is logged once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from sft_helpers import prepared_rows


@pytest.fixture(scope="module")
def rows(tmp_path_factory, tiny_model_dir):
    return prepared_rows(tmp_path_factory.mktemp("tracker-resume"), tiny_model_dir, n=8, seed=4)


class Killed(Exception):
    pass


class KillAfterLogging(TrainerCallback):
    """Runs after the trackers: the process dies once they have logged ``step`` (after the checkpoint before it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.step:
            raise Killed


def train(model_dir: Path, rows: Any, out: Path, *, resume: Path | None = None, kill_at: int | None = None,
          dies: TrainerCallback | None = None) -> None:
    """A 4-step run with TensorBoard; ``kill_at``: killed after logging that step; ``dies``: a callback added with the
    trainer, before tempa's tracker wrapping, as the worker adds its progress line."""
    from trl import SFTConfig, SFTTrainer

    from tempa.sft.config import DEFAULT_TRAIN_ARGS
    from tempa.sft.trackers import continue_trackers
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import trl_config_kwargs

    dataset, tokenizer = rows
    args = {**DEFAULT_TRAIN_ARGS, "max_length": 512, "per_device_train_batch_size": 1, "max_steps": 4,
            "logging_steps": 1, "save_steps": 2, "dataloader_num_workers": 0, "report_to": ["tensorboard"]}
    config = SFTConfig(**{**trl_config_kwargs(TrainPlan.standalone(model_dir, out, args)), "assistant_only_loss": False})
    trainer = SFTTrainer(model=str(model_dir), args=config, train_dataset=dataset, processing_class=tokenizer)
    if dies is not None:
        trainer.add_callback(dies)
    continue_trackers(trainer, out, resumed=resume is not None)
    if kill_at is not None:
        trainer.add_callback(KillAfterLogging(kill_at))
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)


def logged_steps(folder: Path, tag: str) -> Counter:
    """How often each step of ``tag`` is in the TensorBoard event files under ``folder`` (every run's folder)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps: Counter = Counter()
    for path in folder.rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            steps.update(event.step for value in event.summary.value if value.tag == tag)
    return steps


def test_a_resumed_stage_logs_each_step_once(tmp_path, tiny_model_dir, rows):
    """Killed at step 3 (checkpoint 2), the resumed run logged steps 3 again: the tracker's curve went back."""
    out = tmp_path / "checkpoints"
    with pytest.raises(Killed):
        train(tiny_model_dir, rows, out, kill_at=3)
    train(tiny_model_dir, rows, out, resume=out / "checkpoint-2")
    assert logged_steps(out, "train/loss") == Counter({1: 1, 2: 1, 3: 1, 4: 1})
    # a stage that starts over (no checkpoint to resume) skips nothing: its record begins again
    from tempa.sft.trackers import tracker_record

    assert tracker_record(out, resumed=True)["logged_step"] == 4
    assert tracker_record(out, resumed=False)["logged_step"] == 0


def test_wandb_is_told_to_continue_the_run_it_started(tmp_path, monkeypatch):
    """wandb.init (transformers' WandbCallback) got no run id: each resume opened a new run under the same name."""
    from tempa.sft.trackers import tracker_record, wandb_run_env

    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    first = wandb_run_env(tracker_record(tmp_path, resumed=False))
    assert first["WANDB_RESUME"] == "allow" and len(first["WANDB_RUN_ID"]) >= 8
    assert wandb_run_env(tracker_record(tmp_path, resumed=True)) == first  # the resumed launch continues that run
    fresh = wandb_run_env(tracker_record(tmp_path, resumed=False))
    assert fresh["WANDB_RUN_ID"] != first["WANDB_RUN_ID"]  # a stage that starts over: a new run
    monkeypatch.setenv("WANDB_RUN_ID", "mine")
    assert wandb_run_env(tracker_record(tmp_path, resumed=True)) == {}  # the user's own id wins
