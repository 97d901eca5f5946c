"""DPO training worker: `python -m tempa.alignment.dpo_train --plan PLAN.json`, run by accelerate/torchrun.

The `preference` stage writes the plan (policy, pairs dataset on disk, DPOConfig arguments)
for one round. Checkpoints get COMPLETE markers and a restart resumes from the last complete
one; the final model is written to a temporary folder and renamed into place, so a round's
``final/`` is either whole or absent. Shared machinery (config kwargs, runner watch,
checkpoint markers) is the sft worker's; throughput and progress lines are ``tempa.sft.throughput``'s.
"""

from __future__ import annotations

from tempa.sft.checkpoints import CheckpointCompleteCallback
from tempa.sft.throughput import ThroughputMeter, add_throughput_callbacks
from tempa.sft.train import announced_kernels, read_plan, train_and_save, trl_config_kwargs


def main(argv: list[str] | None = None) -> int:
    plan = read_plan("python -m tempa.alignment.dpo_train", argv)

    from datasets import load_from_disk
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(plan["tokenizer_dir"])
    kernels = announced_kernels(plan)
    config = DPOConfig(**trl_config_kwargs(plan, kernels))
    trainer = DPOTrainer(
        model=plan["model_dir"],
        args=config,
        train_dataset=load_from_disk(plan["train_data"]),
        processing_class=tokenizer,
        callbacks=[CheckpointCompleteCallback()],
    )
    # Without precomputed log-probs, a frozen reference model runs forward on every trained token.
    add_throughput_callbacks(trainer, ThroughputMeter(reference_forward=not config.precompute_ref_log_probs))
    train_and_save(trainer, tokenizer, plan, kernels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
