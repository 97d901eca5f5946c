"""DPO training worker: `python -m tempa.alignment.dpo_train --plan PLAN.json`, run by accelerate/torchrun.

The `preference` stage writes the plan (policy, pairs dataset on disk, DPOConfig arguments)
for one round. Checkpoints get COMPLETE markers and a restart resumes from the last complete
one; the final model is written to a temporary folder and renamed into place, so a round's
``final/`` is either whole or absent. Shared machinery (config kwargs, runner watch,
progress lines, checkpoint markers) is the sft worker's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tempa.sft.checkpoints import CheckpointCompleteCallback, last_complete_checkpoint
from tempa.sft.train import ProgressLine, trl_config_kwargs, watch_runner

# Keys trl_config_kwargs sets for SFTConfig that DPOConfig does not have.
_SFT_ONLY_KEYS = ("assistant_only_loss",)


def dpo_config_kwargs(plan: dict[str, Any]) -> dict[str, Any]:
    """DPOConfig kwargs: the round's train args plus what the stage folder and launch decide."""
    kwargs = trl_config_kwargs(plan)
    for key in _SFT_ONLY_KEYS:
        kwargs.pop(key, None)
    return kwargs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tempa.alignment.dpo_train")
    parser.add_argument("--plan", required=True, help="train_plan.json written by the preference stage")
    args = parser.parse_args(argv)
    plan = json.loads(Path(args.plan).read_text())
    watch_runner(plan.get("runner_pid"))

    from datasets import load_from_disk
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(plan["tokenizer_dir"])
    if plan.get("deepspeed") and plan.get("use_cpu"):
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    config = DPOConfig(**dpo_config_kwargs(plan))
    train_dataset = load_from_disk(plan["train_data"])
    trainer = DPOTrainer(
        model=plan["model_dir"],
        args=config,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=[CheckpointCompleteCallback(), ProgressLine()],
    )
    resume = last_complete_checkpoint(Path(plan["output_dir"]))
    if resume is not None and trainer.is_world_process_zero():
        print(f"[tempa] resuming from {resume}", flush=True)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    final = Path(plan["final_dir"])
    tmp = final.with_name(final.name + ".tmp")
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # under ZeRO-3 this gathers the 16-bit weights on rank 0
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(tmp)
        metrics = {
            "train": result.metrics,
            "global_step": trainer.state.global_step,
            "log_history": trainer.state.log_history,
            "resumed_from": str(resume) if resume else None,
        }
        (tmp / "tempa_train_metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    trainer.accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
