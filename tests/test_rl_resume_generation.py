"""A resumed GRPO run samples and trains the same generation batches at the same steps as the run it continues.

trl's GRPOTrainer samples a generation batch every `steps_per_generation` micro-steps and trains one slice of it per
step, by a micro-step count it starts at 0 in every process; a resume from a checkpoint inside a generation batch
restarted that count. The real trainer, with the mixins tempa's worker gives it, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset
from transformers import TrainerCallback


class Killed(Exception):
    pass


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed after checkpoint-{state.global_step}")
        return control


def grpo(model_dir: Path, out: Path, sampled: dict[int, list[str]], kill: KillAfterSave | None = None,
         *, resume: bool = False) -> None:
    from trl import GRPOConfig, GRPOTrainer

    from tempa.sft.train_worker import ResumedGeneration, with_step_fractions

    def reward(prompts, completions, trainer_state, **kwargs):
        # called once per generation batch, at the step it is sampled for
        sampled.setdefault(trainer_state.global_step + 1, []).extend(prompts)
        return [float(len(c)) for c in completions]

    prompts = Dataset.from_dict({"prompt": [f"Question {i}: what is {i} + {i}?" for i in range(16)]})
    args = GRPOConfig(output_dir=str(out), max_steps=4, save_steps=1, per_device_train_batch_size=2,
                      gradient_accumulation_steps=1, num_generations=2, steps_per_generation=2,
                      max_completion_length=4, learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True,
                      seed=7, dataloader_num_workers=0, save_only_model=False)
    trainer = with_step_fractions(GRPOTrainer, ResumedGeneration)(
        model=str(model_dir), reward_funcs=reward, args=args, train_dataset=prompts)
    if kill is not None:
        trainer.add_callback(kill)
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-1") if resume else None)


@pytest.mark.timeout(600)
def test_a_resume_inside_a_generation_batch_samples_where_the_uninterrupted_run_does(tmp_path, tiny_model_dir):
    whole: dict[int, list[str]] = {}
    grpo(tiny_model_dir, tmp_path / "whole", whole)
    assert sorted(whole) == [1, 3]  # a generation batch every 2 steps, each trained over 2 steps

    resumed: dict[int, list[str]] = {}
    with pytest.raises(Killed):
        grpo(tiny_model_dir, tmp_path / "killed", resumed, KillAfterSave(1))
    after: dict[int, list[str]] = {}
    grpo(tiny_model_dir, tmp_path / "killed", after, resume=True)
    # step 2 needs the rest of the batch sampled at step 1 (gone with the process): it samples it again; step 3
    # samples the next batch, as the uninterrupted run does (the count restarted at 0 sampled at steps 2 and 4)
    assert sorted(after) == [2, 3]
    assert after[3] == whole[3]
