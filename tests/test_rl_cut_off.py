"""An rl stage whose completions were all cut off trained on nothing, and says so. A trial's tiny stage set
max_completion_length 16 with tempa's default mask_truncated_completions: every sample was cut off (clipped_ratio 1.0
on every step), loss, grad_norm, KL and entropy were all 0, and neither the run log nor the terminal said why."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tempa.alignment.rl_config import RLStageConfig
from tempa.alignment.rl_stage import all_cut_off, rl_metrics, run_rl
from tempa.sft.train_plan import TrainOutcome

PROMPTS = str(Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl")


def tiny_rl_stage(tmp_path: Path, tiny_model_dir: Path, **train):
    """The rl stage run for real on the tiny model (the worker in this process): two steps of 2 prompts x 2 samples,
    each sample cut off at 4 tokens (the tiny model never ends one that soon)."""
    from stage_helpers import make_context
    from tempa.chat_templates import bake_tokenizer
    from tempa.sft.train_worker import main as train_main

    config = RLStageConfig.model_validate({
        "name": "rlvr", "kind": "rl", "prompts": {"path": PROMPTS, "limit": 4}, "rewards": [{"type": "format"}],
        "train": {"num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 4,
                  "max_steps": 2, "warmup_steps": 0, "beta": 0.0, "activation_checkpointing": False,
                  "save_strategy": "no", "logging_steps": 1, **train}})
    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    ctx = make_context(tmp_path / "run", "rlvr", start_model=tiny_model_dir, tokenizer_dir=tmp_path / "tok",
                       launch=lambda _module, args, _log: train_main(args), use_cpu=True)
    return run_rl(config, ctx)


def test_a_stage_whose_completions_were_all_cut_off_says_it_trained_on_nothing(tmp_path, tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="tempa"):
        result = tiny_rl_stage(tmp_path, tiny_model_dir)
    assert result.metrics["completions_clipped_ratio"] == 1.0  # what the trial saw, and the premise here
    steps = [entry for entry in TrainOutcome.read(result.model).log_history if "loss" in entry]
    assert [(entry["loss"], entry["grad_norm"]) for entry in steps] == [(0.0, 0.0), (0.0, 0.0)]  # nothing trained
    assert result.metrics["steps_without_tokens"] == 2
    (note,) = [note for note in result.notes if "cut off" in note]
    assert note == ("rlvr: on every step every completion was cut off at max_completion_length 4 "
                    "(completions/clipped_ratio 1.0) and mask_truncated_completions left them out of the loss, so "
                    "those steps trained on no tokens. Raise max_completion_length, or set "
                    "mask_truncated_completions: false to train on cut-off completions")
    # once, in the stage's log (the runner's log file and terminal), as well as the run's closing notes
    assert [record.getMessage() for record in caplog.records].count(note) == 1


def test_cut_off_completions_trained_on_are_no_warning(tmp_path, tiny_model_dir):
    result = tiny_rl_stage(tmp_path, tiny_model_dir, mask_truncated_completions=False)
    assert result.metrics["completions_clipped_ratio"] == 1.0
    assert result.metrics["steps_without_tokens"] == 0
    assert not [note for note in result.notes if "cut off" in note]


# trl averages each logging window's figures (logging_steps 10 here): only a window at 1.0 was cut off throughout
WINDOWS = [{"loss": 0.0, "step": step, "completions/clipped_ratio": clipped}
           for step, clipped in ((10, 1.0), (20, 0.5), (30, 1.0))] + [{"train_loss": 0.0, "step": 30}]
MASKED = {"mask_truncated_completions": True, "max_completion_length": 16}


def test_the_steps_counted_are_those_of_logging_windows_cut_off_throughout():
    assert rl_metrics(TrainOutcome(global_step=30, log_history=WINDOWS), [], 2)["steps_without_tokens"] == 20
    note = all_cut_off(WINDOWS, MASKED, "rl")
    assert note.startswith("rl: on 20 of the 30 steps logged every completion was cut off at max_completion_length "
                           "16 (completions/clipped_ratio 1.0)")


@pytest.mark.parametrize("history", [
    [{**entry, "completions/clipped_ratio": 0.99} for entry in WINDOWS[:3]],  # some ended on every step
    [{"loss": 0.0, "step": 1}],  # a trainer that logs no clipped ratio
])
def test_no_warning_where_every_step_had_a_completion_that_ended(history):
    assert all_cut_off(history, MASKED, "rl") is None
    assert rl_metrics(TrainOutcome(global_step=1, log_history=history), [], 2)["steps_without_tokens"] == 0
