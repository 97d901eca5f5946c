"""A stage killed twice and resumed twice (a resume of a resume) reports the whole run: its steps, and its
``train_loss`` over every step a log kept, each logged loss weighted by the steps its mean covers.

transformers logs the mean loss of the steps since its process's last log, and a resumed process starts counting at
its checkpoint: the first log after a resume covers fewer than ``logging_steps`` steps when the checkpoint fell
between two logs. The reference is the same run never killed, logging every step's loss (training is
deterministic: a resumed run trains the same steps on the same batches, tests/test_sft_resume_equivalence.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import TrainerCallback

from sft_helpers import prepared_rows
from tempa.sft.checkpoints import complete_checkpoints
from tempa.sft.train_plan import TrainOutcome

# 8 rows, 2 a step; saves every 3 steps, logs every 2: checkpoint 3 falls between two logs
TRAIN = {"max_steps": 8, "save_steps": 3, "per_device_train_batch_size": 2, "logging_steps": 2, "packing": False,
         "max_length": 512, "learning_rate": 3.0e-3, "warmup_steps": 1, "dataloader_num_workers": 0}


class Killed(Exception):
    pass


class KillAt(TrainerCallback):
    """Raises at the end of optimizer step ``step``, before its log and save (what a SIGKILL there leaves)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed at step {state.global_step}")
        return control


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("resumed-twice")
    dataset, _ = prepared_rows(folder, tiny_model_dir, n=8, seed=3)
    dataset.save_to_disk(str(folder / "train"))
    return folder / "train"


def train(model_dir: Path, data: Path, out: Path, kill: KillAt | None = None, **overrides) -> TrainOutcome:
    from transformers import AutoTokenizer

    from tempa.sft.config import DEFAULT_TRAIN_ARGS
    from tempa.sft.kernels import KernelChoice
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import sft_trainer, train_and_save

    plan = TrainPlan.standalone(model_dir, out, {**DEFAULT_TRAIN_ARGS, **TRAIN, **overrides}, train_data=data)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    kernels = KernelChoice(None, False)
    trainer = sft_trainer(plan, tokenizer, kernels)
    if kill is not None:
        trainer.add_callback(kill)
    train_and_save(trainer, tokenizer, plan, kernels)
    return TrainOutcome.read(plan.final_dir)


def test_a_run_resumed_twice_reports_the_loss_and_steps_of_the_whole_run(tmp_path, tiny_model_dir, data):
    reference = train(tiny_model_dir, data, tmp_path / "reference", logging_steps=1, save_steps=100)
    step_loss = {entry["step"]: entry["loss"] for entry in reference.log_history if "loss" in entry}
    assert sorted(step_loss) == list(range(1, 9))

    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(tiny_model_dir, data, out, KillAt(5))  # logged 2 and 4; checkpoint 3 keeps the log of step 2
    assert complete_checkpoints(out)[-1].step == 3
    with pytest.raises(Killed):
        train(tiny_model_dir, data, out, KillAt(7))  # from 3: logs 4 (the mean of step 4 alone) and 6; checkpoint 6
    assert complete_checkpoints(out)[-1].step == 6
    resumed = train(tiny_model_dir, data, out)  # from 6: logs 8

    assert Path(resumed.resumed_from).name == "checkpoint-6"
    assert resumed.global_step == 8 and resumed.headline()["global_step"] == 8
    logged = [entry["step"] for entry in resumed.log_history if "loss" in entry]
    assert logged == [2, 4, 6, 8]
    kept = [step for step in range(1, 9) if step != 3]  # step 3 ran only in the first process, and no log kept it
    expected = sum(step_loss[step] for step in kept) / len(kept)
    assert resumed.headline()["train_loss"] == pytest.approx(expected, abs=2e-4)


def test_a_logging_cadence_changed_between_attempts_takes_effect_on_resume(tmp_path, tiny_model_dir, data):
    """`logging_steps` is no part of a stage's fingerprint, so raising or lowering it between attempts resumes the
    stage; transformers restored the checkpoint's cadence, and the new value was ignored (a warning in train.log)."""
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(tiny_model_dir, data, out, KillAt(5))  # logs every 2 steps; checkpoint 3
    resumed = train(tiny_model_dir, data, out, logging_steps=1)
    logged = [entry["step"] for entry in resumed.log_history if "loss" in entry]
    assert logged == [2, 4, 5, 6, 7, 8]  # step 2 from the first attempt, then every step
