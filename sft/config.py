"""The `sft` stage's recipe block: data, trl SFTConfig pass-through, optional LoRA/QLoRA."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from tempa.sft.data_config import DataConfig
from tempa.sft.stage_api import Artifact, Read, StageConfigBase
from tempa.sft.train_args import check_train_args, train_checks_deferred
from tempa.sft.train_plan import RESERVED_TRAIN_KEYS, LoraSettings

# tempa's defaults on top of trl's: assistant-only loss on the pre-tokenised masks, BFD packing
# with position_ids (no attention across samples), checkpoints that a resume can use.
DEFAULT_TRAIN_ARGS: dict[str, Any] = {
    "assistant_only_loss": True,
    "packing": True,
    "packing_strategy": "bfd",
    "max_length": 2048,
    "num_train_epochs": 1,
    "learning_rate": 2e-5,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,  # a float below 1 is a fraction of the total steps
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": 3,
    "report_to": "none",
}

# Trainer arguments that change how a run logs, reports and waits, never the weights it trains nor which checkpoints
# it leaves: a training stage's fingerprint leaves them out, so adding a tracker or logging more often in a run days in
# resumes it instead of refusing (or clearing) it. The saving settings stay in (`save_steps` and `save_total_limit`
# decide which checkpoints evaluate scores and merge picks from, `save_strategy: no` leaves none), and so do the
# evaluation settings (GRPO's evaluation samples draw on the training's random state; `load_best_model_at_end`
# picks the final model by them).
RUN_ONLY_TRAIN_ARGS = frozenset({
    "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter",
    "include_num_input_tokens_seen", "log_level", "log_level_replica", "log_on_each_node", "disable_tqdm",
    "skip_memory_metrics", "report_to", "run_name", "project", "trackio_space_id", "trackio_bucket_id",
    "trackio_static_space_id", "ddp_timeout",
})
# transformers evaluates every `logging_steps` when `eval_strategy: steps` gives no `eval_steps`: then they are the
# evaluation's cadence.
_EVAL_CADENCE_FALLBACK = frozenset({"logging_strategy", "logging_steps"})


def run_only_train_args(train_args: Mapping[str, Any]) -> frozenset[str]:
    """The keys of a training stage's `train:` block that play no part in what it trains, as its ``unfingerprinted()``
    names them (``train.logging_steps``); ``train_args``: its trainer arguments with the kind's defaults."""
    strategy = train_args.get("eval_strategy", "no")
    evaluates_by_logging = (getattr(strategy, "value", strategy) == "steps"
                            and train_args.get("eval_steps") in (None, 0))
    keys = RUN_ONLY_TRAIN_ARGS - _EVAL_CADENCE_FALLBACK if evaluates_by_logging else RUN_ONLY_TRAIN_ARGS
    return frozenset(f"train.{key}" for key in keys)


class SFTStageConfig(StageConfigBase):
    """Full-parameter (default) or LoRA supervised fine-tuning with trl's SFTTrainer."""

    train_defaults: ClassVar[dict[str, Any]] = DEFAULT_TRAIN_ARGS
    kind: Literal["sft"] = "sft"
    data: DataConfig = Field(description="Sources, mixing, curation and held-out split.")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="Any trl SFTConfig field (learning_rate, num_train_epochs, lr_scheduler_type, "
        "max_length, packing, save_steps, report_to, ...). tempa sets output_dir and deepspeed.",
    )
    lora: LoraSettings | None = Field(default=None, description="Train LoRA adapters instead of all weights.")

    @field_validator("train")
    @classmethod
    def _train(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if train_checks_deferred(info):
            return value
        return check_train_args(value, "trl:SFTConfig", reserved=RESERVED_TRAIN_KEYS, defaults=cls.train_defaults)

    def unfingerprinted(self) -> frozenset[str]:
        """The trainer arguments that change how it runs, not what it trains (:data:`RUN_ONLY_TRAIN_ARGS`)."""
        return run_only_train_args(self.train_args())

    def reads(self, earlier: Sequence[str]) -> list[Read]:
        """The datasets of earlier stages that `path: stage:NAME` sources name."""
        return [Read(ref, Artifact.DATASET, ("data", "sources", i, "path"))
                for i, source in enumerate(self.data.sources) if (ref := source.stage_ref)]
