"""An interrupted training stage resumed under another launch (after an OOM kill or a lost node the user moves it to
what is left): the launch is not in the fingerprint, so the plan said "resume", and

- ZeRO-3 on 2 processes -> one process without DeepSpeed trained on from a fresh AdamW at half the global batch,
  without a word (the checkpoint holds DeepSpeed's per-rank optimizer shards, no optimizer.pt);
- one process -> ZeRO-3 on 2 failed with transformers' "Can't find a valid checkpoint", on every re-run.

Each checkpoint now records the launch that saved it; `tempa plan` and `tempa run` refuse a resume that would not be
the same training, in one line with the way out, and allow one that is (the launcher alone, DDP over another process
count at the same global batch).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sft_helpers import prepared_rows, sft_recipe
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import plan_run, planned_launch, run_recipe
from tempa.recipes.schema import LaunchConfig
from tempa.sft.checkpoints import CheckpointLaunch, complete_checkpoints, launch_change
from tempa.sft.files import json_or_none
from tempa.sft.run_layout import DONE
from tempa.sft.stage_api import StageError

ZERO3 = "launch: {launcher: torchrun, num_processes: 2, deepspeed_config: zero3-cpu, use_cpu: true}"
SINGLE = "launch: {use_cpu: true}"

ZERO3_2 = CheckpointLaunch("deepspeed", 2, 8, zero_stage=3, precision="fp32")
PLAIN_1 = CheckpointLaunch("plain", 1, 4, precision="fp32")


@pytest.mark.parametrize(("saved", "now", "breaks"), [
    (ZERO3_2, PLAIN_1, "optimizer state would not load"),  # the silent one: a fresh AdamW
    (PLAIN_1, CheckpointLaunch("deepspeed", 2, 4, zero_stage=3), "optimizer state would not load"),
    (ZERO3_2, CheckpointLaunch("deepspeed", 1, 8, zero_stage=3), "split over the processes"),
    (ZERO3_2, CheckpointLaunch("deepspeed", 2, 8, zero_stage=2), "optimizer state would not load"),
    (ZERO3_2, CheckpointLaunch("deepspeed", 2, 8, zero_stage=3, precision="bf16"), "trains in bf16"),
    (CheckpointLaunch("plain", 2, 8), CheckpointLaunch("plain", 1, 4), "rows each step takes"),
    # compatible: the same shape from another launcher, DDP's one optimizer.pt at the same global batch, and what the
    # plan cannot tell (an accelerate config that names no process count)
    (ZERO3_2, CheckpointLaunch("deepspeed", 2, 8, zero_stage=3, precision="fp32"), None),
    (CheckpointLaunch("plain", 2, 8), CheckpointLaunch("plain", 1, 8), None),
    (ZERO3_2, CheckpointLaunch("deepspeed", None, None, zero_stage=3), None),
    # FSDP's optimizer state does not depend on the precision it trains in: it was refused, naming DeepSpeed
    (CheckpointLaunch("fsdp", 2, 8, precision="bf16"), CheckpointLaunch("fsdp", 2, 8, precision="fp32"), None),
])
def test_what_a_resume_under_another_launch_would_break(saved, now, breaks):
    change = launch_change(saved, now)
    assert change is None if breaks is None else breaks in change


def test_the_plan_reads_the_launch_as_the_training_processes_will_run_it(tmp_path):
    zero3 = LaunchConfig(launcher="torchrun", num_processes=2, deepspeed_config="zero3-cpu", use_cpu=True)
    assert planned_launch(zero3, {"per_device_train_batch_size": 4}) == CheckpointLaunch("deepspeed", 2, 8,
                                                                                          zero_stage=3)
    kept = LaunchConfig(use_cpu=True, global_batch_size=8)
    assert planned_launch(kept, {"per_device_train_batch_size": 4}) == CheckpointLaunch("plain", 1, 8)


def interrupted(run_dir: Path, stage: str) -> Path:
    """The stage as a kill after its last checkpoint leaves it: no DONE, no final model, the manifest running."""
    folder = run_dir / stage
    (folder / DONE).unlink()
    manifest = json_or_none(folder / "manifest.json")
    (folder / "manifest.json").write_text(json.dumps({**manifest, "status": "running", "result": None}))
    shutil.rmtree(folder / "final")
    return folder


def tempa_plan(recipe: Path, run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tempa.recipes.cli", "plan", str(recipe), "--run-dir", str(run_dir)],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_a_zero3_stage_is_not_resumed_by_one_process_without_deepspeed(tmp_path, tiny_model_dir):
    recipe = sft_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=1, launch=ZERO3)
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    sft = interrupted(run_dir, "sft")
    checkpoint = complete_checkpoints(sft / "checkpoints")[-1].path
    assert CheckpointLaunch.read(checkpoint) == CheckpointLaunch("deepspeed", 2, 8, zero_stage=3, precision="fp32")
    assert plan_run(load_recipe(recipe), run_dir)[0].action == "resume"  # as it was launched: resumes

    single = sft_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=1, launch=SINGLE)
    plan = tempa_plan(single, run_dir)
    assert plan.returncode != 0
    refusal = ("stage 'sft': checkpoint-2 was saved by DeepSpeed ZeRO-3 on 2 processes, 8 rows per step and the "
               "launch now is no sharding on 1 process, 4 rows per step")
    assert refusal in plan.stderr and "put the launch back as it was to resume" in plan.stderr
    assert "`tempa run --only sft`" in plan.stderr and "Traceback" not in plan.stderr
    with pytest.raises(StageError) as info:
        run_recipe(load_recipe(single), run_dir)
    assert refusal in str(info.value) and "\n" not in str(info.value)
    assert complete_checkpoints(sft / "checkpoints")[-1].path == checkpoint  # nothing of it lost
    assert not (sft / "final").exists()
    # the way out the refusal names: --only starts the stage over under the new launch
    assert plan_run(load_recipe(single), run_dir, only="sft")[0].action == "rerun"


def test_a_one_process_stage_is_not_resumed_by_zero3_on_two(tmp_path, tiny_model_dir):
    recipe = sft_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=1, launch=SINGLE)
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    interrupted(run_dir, "sft")
    zero3 = sft_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=1, launch=ZERO3)
    with pytest.raises(StageError) as info:
        plan_run(load_recipe(zero3), run_dir)
    assert str(info.value).startswith("stage 'sft': checkpoint-2 was saved by no sharding on 1 process, 4 rows per "
                                      "step and the launch now is DeepSpeed ZeRO-3 on 2 processes, 8 rows per step")
    # the launcher alone is no change: the same one process from torchrun resumes
    torchrun = sft_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=1,
                          launch="launch: {launcher: torchrun, num_processes: 1, use_cpu: true}")
    assert plan_run(load_recipe(torchrun), run_dir)[0].action == "resume"


def test_the_training_processes_refuse_a_checkpoint_of_another_global_batch(tmp_path, tiny_model_dir):
    """What the plan cannot tell (an accelerate config's own process count, the precision) the worker checks: a
    checkpoint of 2 rows a step is not resumed at 4."""
    from transformers import AutoTokenizer, TrainerCallback

    from tempa.sft.config import DEFAULT_TRAIN_ARGS
    from tempa.sft.kernels import KernelChoice
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import sft_trainer, train_and_save

    class Killed(Exception):
        pass

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Killed()
            return control

    dataset, _ = prepared_rows(tmp_path, tiny_model_dir, n=8, seed=3)
    dataset.save_to_disk(str(tmp_path / "train"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tmp_path / "sft"

    def train(batch: int, kill: bool) -> None:
        args = {**DEFAULT_TRAIN_ARGS, "max_steps": 4, "save_steps": 2, "per_device_train_batch_size": batch,
                "packing": False, "max_length": 512, "dataloader_num_workers": 0}
        plan = TrainPlan.standalone(tiny_model_dir, out, args, train_data=tmp_path / "train")
        trainer = sft_trainer(plan, tokenizer, KernelChoice(None, False))
        if kill:
            trainer.add_callback(KillAt())
        train_and_save(trainer, tokenizer, plan, KernelChoice(None, False))

    with pytest.raises(Killed):
        train(2, kill=True)
    checkpoint = complete_checkpoints(out)[-1].path
    assert checkpoint.name == "checkpoint-2"
    assert CheckpointLaunch.read(checkpoint) == CheckpointLaunch("plain", 1, 2, precision="fp32")
    with pytest.raises(ValueError, match=r"^stage 'sft': checkpoint-2 was saved by no sharding on 1 process, 2 rows "
                                         r"per step and the launch now is no sharding on 1 process, 4 rows per step"):
        train(4, kill=False)
    assert not (out / "final").exists() and complete_checkpoints(out)[-1].path == checkpoint
