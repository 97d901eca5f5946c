"""A stage killed mid-training and re-run ends as the same run never killed: the same steps on the same batches at the
same learning rates, the same final weights, and the same headline loss. The worker's own trainer (``sft_trainer``)
and ``train_and_save`` on the tiny model; a "kill" is a callback that raises at a chosen step, after tempa's
checkpoint marker (the re-run resumes from the last complete checkpoint, as the stage does)."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import TrainerCallback

from sft_helpers import prepared_rows
from tempa.sft.checkpoints import complete_checkpoints
from tempa.sft.train_plan import TrainOutcome

# 8 rows, 2 a step: an epoch is 4 steps, so 6 steps end inside the second epoch (a resume skips batches of it)
TRAIN = {"max_steps": 6, "save_steps": 3, "per_device_train_batch_size": 2, "logging_steps": 1, "packing": False,
         "max_length": 512, "learning_rate": 3.0e-3, "warmup_steps": 1, "dataloader_num_workers": 0}


class Killed(Exception):
    pass


class KillAt(TrainerCallback):
    """Raises at the end of optimizer step ``step`` (before its log and save), or once its checkpoint is marked."""

    def __init__(self, step: int, *, after_save: bool = False) -> None:
        self.step, self.after_save = step, after_save

    def on_step_end(self, args, state, control, **kwargs):
        if not self.after_save and state.global_step == self.step:
            raise Killed(f"killed at step {state.global_step}")
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.after_save and state.global_step == self.step:
            raise Killed(f"killed after saving checkpoint-{state.global_step}")
        return control


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("resume-equivalence")
    dataset, _ = prepared_rows(folder, tiny_model_dir, n=8, seed=3)
    dataset.save_to_disk(str(folder / "train"))
    return folder / "train"


def train(model_dir: Path, data: Path, out: Path, kill: KillAt | None = None) -> TrainOutcome:
    from transformers import AutoTokenizer

    from tempa.sft.config import DEFAULT_TRAIN_ARGS
    from tempa.sft.kernels import KernelChoice
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import sft_trainer, train_and_save

    plan = TrainPlan.standalone(model_dir, out, {**DEFAULT_TRAIN_ARGS, **TRAIN}, train_data=data)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    kernels = KernelChoice(None, False)
    trainer = sft_trainer(plan, tokenizer, kernels)
    if kill is not None:
        trainer.add_callback(kill)  # after tempa's marker: what it saved is complete
    train_and_save(trainer, tokenizer, plan, kernels)
    return TrainOutcome.read(plan.final_dir)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, data) -> tuple[TrainOutcome, Path]:
    out = tmp_path_factory.mktemp("uninterrupted")
    return train(tiny_model_dir, data, out), out / "final"


def steps(outcome: TrainOutcome) -> list[tuple[int, float, float]]:
    """(step, loss, learning rate) of each logged step."""
    return [(entry["step"], entry["loss"], entry["learning_rate"]) for entry in outcome.log_history if "loss" in entry]


@pytest.mark.parametrize(("kill", "resumes_from"), [
    (KillAt(5), 3),  # between two checkpoints: step 4 is trained again, on the same batch
    (KillAt(6, after_save=True), 6),  # after the last step's checkpoint, before final/
], ids=["between-checkpoints", "after-the-last-checkpoint"])
def test_a_killed_and_resumed_run_ends_as_the_uninterrupted_one(kill, resumes_from, tmp_path, tiny_model_dir, data,
                                                                 uninterrupted):
    reference, reference_final = uninterrupted
    assert reference.global_step == 6
    with pytest.raises(Killed):
        train(tiny_model_dir, data, tmp_path, kill)
    assert complete_checkpoints(tmp_path)[-1].step == resumes_from and not (tmp_path / "final").exists()

    resumed = train(tiny_model_dir, data, tmp_path)
    assert Path(resumed.resumed_from).name == f"checkpoint-{resumes_from}"
    assert resumed.global_step == 6
    # every step once, on the same batch, at the same place in the schedule
    assert [step for step, *_ in steps(resumed)] == [1, 2, 3, 4, 5, 6]
    assert steps(resumed) == [pytest.approx(logged, rel=1e-5) for logged in steps(reference)]
    assert resumed.headline()["train_loss"] == pytest.approx(reference.headline()["train_loss"], rel=1e-5)
    weights, expected = load_file(tmp_path / "final" / "model.safetensors"), load_file(reference_final /
                                                                                        "model.safetensors")
    assert all(weights[name].allclose(value, atol=1e-6) for name, value in expected.items())
