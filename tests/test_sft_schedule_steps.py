"""Learning-rate schedules as the real trainer builds them: WSD's decay as a fraction, and where a warmup starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sft_helpers import prepared_rows


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("schedule")
    dataset, _ = prepared_rows(folder, tiny_model_dir, n=4, seed=5)
    dataset.save_to_disk(str(folder / "train"))
    return folder / "train"


def learning_rates(tiny_model_dir: Path, data: Path, out: Path, steps: int, **train: Any) -> list[float]:
    """The rate of each optimizer step 1..steps, from the scheduler tempa's worker builds for a run of ``steps``."""
    from transformers import AutoTokenizer

    from tempa.sft.config import DEFAULT_TRAIN_ARGS
    from tempa.sft.kernels import KernelChoice
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import sft_trainer

    args = {**DEFAULT_TRAIN_ARGS, "max_length": 512, "learning_rate": 1.0, "report_to": "none", **train}
    plan = TrainPlan.standalone(tiny_model_dir, out, args, train_data=data)
    trainer = sft_trainer(plan, AutoTokenizer.from_pretrained(tiny_model_dir), KernelChoice(None, False))
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    rates = []
    for _ in range(steps):  # as the Trainer does: the optimizer steps at the current rate, then the scheduler
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return rates


def test_a_decay_below_one_is_a_fraction_of_the_steps(tiny_model_dir, data, tmp_path):
    """num_decay_steps 0.2 reached transformers as 0.2 steps: a 100-step WSD run held its peak to the last step."""
    wsd = {"lr_scheduler_type": "warmup_stable_decay", "warmup_steps": 0}
    rates = learning_rates(tiny_model_dir, data, tmp_path / "f", 100, lr_scheduler_kwargs={"num_decay_steps": 0.2}, **wsd)
    steps = learning_rates(tiny_model_dir, data, tmp_path / "s", 100, lr_scheduler_kwargs={"num_decay_steps": 20}, **wsd)
    assert rates == steps  # 0.2 of 100 steps is 20 decay steps
    assert rates[80] == 1.0 and rates[81] < 1.0 and rates[-1] < 0.01


def test_a_warmup_starts_at_zero_so_its_first_step_trains_nothing(tiny_model_dir, data, tmp_path):
    """What README says of warmup_steps: transformers' warmup gives the first step a rate of 0 and reaches the peak at
    step warmup_steps + 1, so a warmup costs a step; tempa keeps transformers' schedule as it is."""
    rates = learning_rates(tiny_model_dir, data, tmp_path / "w", 10, lr_scheduler_type="linear", warmup_steps=2)
    assert rates[:3] == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("value", [1.5, -1, -0.2, "0.2", True])
def test_a_decay_that_is_neither_steps_nor_a_fraction_fails_at_load(value):
    from tempa.sft.train_args import check_train_args

    with pytest.raises(ValueError, match=r"^'lr_scheduler_kwargs': num_decay_steps must be a number of steps, or a "
                                         r"fraction below 1 of the steps the stage trains, got "):
        check_train_args({"lr_scheduler_type": "warmup_stable_decay",
                          "lr_scheduler_kwargs": {"num_decay_steps": value}}, "trl:SFTConfig")


@pytest.mark.parametrize("key", ["num_decay_steps", "num_stable_steps"])
def test_zero_steps_of_a_wsd_phase_load_as_transformers_takes_them(key):
    """num_stable_steps: 0 (warm up, then decay) and num_decay_steps: 0 (hold the peak) are schedules transformers
    runs; recipes that loaded with them were refused when fractions came in."""
    from tempa.sft.train_args import check_train_args

    check_train_args({"lr_scheduler_type": "warmup_stable_decay",
                      "lr_scheduler_kwargs": {"num_decay_steps": 2, key: 0}}, "trl:SFTConfig")


def test_the_plan_reads_a_decay_fraction_of_its_steps():
    from tempa.sft.train_args import check_train_args, schedule_problem

    wsd = check_train_args({"lr_scheduler_type": "warmup_stable_decay", "warmup_steps": 0.1,
                            "lr_scheduler_kwargs": {"num_decay_steps": 0.2}}, "trl:SFTConfig")
    assert schedule_problem(wsd, 9) is None and schedule_problem(wsd, 100_000) is None  # fits any length
    assert "decays over 10 steps" in schedule_problem({**wsd, "lr_scheduler_kwargs": {"num_decay_steps": 0.95}}, 10)
