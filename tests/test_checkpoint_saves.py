"""How many checkpoints a stage writes: one rule (tempa.sft.checkpoints.checkpoint_saves) for the plan's disk
note and the merge's candidate count, checked against transformers' own save flow."""

from __future__ import annotations

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import DefaultFlowCallback

from tempa.recipes.estimate import checkpoints_on_disk
from tempa.sft.checkpoints import checkpoint_saves


def saves_transformers_makes(max_steps: int, save_steps: float, tmp_path) -> int:
    """Step through transformers' DefaultFlowCallback as the Trainer does and count the saves it asks for."""
    args = TrainingArguments(output_dir=str(tmp_path), save_strategy="steps", save_steps=save_steps,
                             max_steps=max_steps, report_to=[], use_cpu=True)
    state = TrainerState()
    state.max_steps = max_steps
    state.compute_steps(args, max_steps)  # save_steps below 1 becomes a share of max_steps here
    flow, saves = DefaultFlowCallback(), 0
    for step in range(1, max_steps + 1):
        state.global_step = step
        control = flow.on_step_end(args, state, TrainerControl())
        saves += control.should_save
    return saves


@pytest.mark.parametrize(("max_steps", "save_steps"), [(10, 4), (12, 4), (3, 500), (7, 1), (20, 0.25), (9, 0.3)])
def test_saves_follow_transformers_flow_including_the_last_step(max_steps, save_steps, tmp_path):
    expected = saves_transformers_makes(max_steps, save_steps, tmp_path)
    assert checkpoint_saves({"save_strategy": "steps", "save_steps": save_steps}, max_steps) == expected


def test_the_plan_counts_the_last_steps_save_on_disk():
    # 10 steps every 4: saves at 4, 8 and 10; with save_total_limit 2 the third is written before the first goes.
    train = {"save_strategy": "steps", "save_steps": 4, "save_total_limit": 2}
    assert checkpoints_on_disk(train, 10, 1.0) == 3
    assert checkpoints_on_disk({"save_strategy": "no"}, 10, 1.0) == 0
    assert checkpoints_on_disk({"save_strategy": "epoch", "save_total_limit": 5}, None, 3.0) == 3
    # the Trainer ends a last, partial epoch as an epoch (DefaultFlowCallback.on_epoch_end): 1.5 epochs save twice
    assert checkpoint_saves({"save_strategy": "epoch"}, None, 1.5) == 2
