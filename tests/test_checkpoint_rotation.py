"""A kill while a checkpoint is being saved must leave a complete checkpoint to resume from.

transformers deletes the checkpoints beyond ``save_total_limit`` inside its own save, before the
``on_save`` callbacks run, i.e. before tempa's COMPLETE marker is on the new checkpoint. With
``save_total_limit: 1`` (what a user short of disk sets for a 70B model) a kill in that window
left no complete checkpoint at all, and the resume started over from step 0. A real trl SFTTrainer
on the tiny model; the "kill" is a callback that stops training at the second save, after the
trainer's own save code and before tempa's callback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import TrainerCallback

from sft_helpers import prepared_rows
from tempa.sft.checkpoints import checkpoint_dirs, complete_checkpoints


class Killed(Exception):
    pass


class KillAtSave(TrainerCallback):
    """Stops the run in the middle of the ``at``-th save (the files are written, the marker is not)."""

    def __init__(self, at: int) -> None:
        self.at, self.saves = at, 0

    def on_save(self, args, state, control, **kwargs):
        self.saves += 1
        if self.saves == self.at:
            raise Killed(f"killed while saving checkpoint-{state.global_step}")
        return control


@pytest.fixture(scope="module")
def rows(tmp_path_factory, tiny_model_dir):
    return prepared_rows(tmp_path_factory.mktemp("rotation"), tiny_model_dir, n=8, seed=3)


def trainer_for(model_dir: Path, rows, out: Path, *callbacks: TrainerCallback, **train):
    from trl import SFTConfig, SFTTrainer

    from tempa.sft.config import DEFAULT_TRAIN_ARGS
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import CheckpointCompleteCallback, trl_config_kwargs

    dataset, tokenizer = rows
    args = {**DEFAULT_TRAIN_ARGS, "max_length": 512, "per_device_train_batch_size": 2, "logging_steps": 1,
            "dataloader_num_workers": 0, **train}
    config = SFTConfig(**{**trl_config_kwargs(TrainPlan.standalone(model_dir, out, args)), "assistant_only_loss": False})
    # The worker's order: the trainer's own callbacks, anything before tempa's marker, then the marker.
    return SFTTrainer(model=str(model_dir), args=config, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=[*callbacks, CheckpointCompleteCallback()])


def test_a_kill_mid_save_keeps_the_last_complete_checkpoint_with_save_total_limit_1(tmp_path, tiny_model_dir, rows):
    out = tmp_path / "checkpoints"
    trainer = trainer_for(tiny_model_dir, rows, out, KillAtSave(at=2), max_steps=4, save_steps=1, save_total_limit=1)
    with pytest.raises(Killed):
        trainer.train()
    # checkpoint-2 holds its files but no marker; checkpoint-1 is what a resume must find
    assert [p.name for p in checkpoint_dirs(out)][-1] == "checkpoint-2"
    assert [c.step for c in complete_checkpoints(out)] == [1]


def test_rotation_keeps_save_total_limit_complete_checkpoints(tmp_path, tiny_model_dir, rows):
    out = tmp_path / "checkpoints"
    trainer = trainer_for(tiny_model_dir, rows, out, max_steps=5, save_steps=1, save_total_limit=2)
    trainer.train()
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-4", "checkpoint-5"]
    assert [c.step for c in complete_checkpoints(out)] == [4, 5]


def test_a_checkpoints_files_are_on_the_disk_before_its_marker(tmp_path, tiny_model_dir, rows, monkeypatch):
    """A node's hard reset (power loss, a hung GPU node reset from its BMC) loses what the page cache had not yet
    written back: the COMPLETE marker could come back beside empty weight files, and every resume then failed to
    load that checkpoint. Each file must be flushed (fsync) before the marker naming it complete is written. The
    real fsync runs; the test only records which files it flushed, and whether the marker existed then."""
    import os

    from tempa.sft.run_layout import COMPLETE

    out = tmp_path / "checkpoints"
    flushed: list[tuple[str, bool]] = []  # (path, whether its checkpoint's marker existed when it was flushed)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        checkpoint = next((p for p in [path, *path.parents] if p.name.startswith("checkpoint-")), None)
        flushed.append((str(path), checkpoint is not None and (checkpoint / COMPLETE).exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    trainer = trainer_for(tiny_model_dir, rows, out, max_steps=2, save_steps=1, save_total_limit=2)
    trainer.train()
    checkpoints = complete_checkpoints(out)
    assert [c.step for c in checkpoints] == [1, 2]
    before = {path for path, marked in flushed if not marked}
    for checkpoint in checkpoints:
        files = [p for p in checkpoint.path.rglob("*") if p.is_file() and p.name != COMPLETE]
        assert {p.name for p in files} >= {"model.safetensors", "optimizer.pt", "trainer_state.json"}
        unflushed = [p.name for p in files if str(p) not in before]
        assert unflushed == [], f"{checkpoint.path.name}: not flushed before its marker: {unflushed}"
        assert str(checkpoint.path / f"{COMPLETE}.tmp") in before  # the marker's content, then its name:
        assert (str(checkpoint.path), True) in flushed  # the folder flushed once the marker is in it

