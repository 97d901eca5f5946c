"""The seam between a training stage and its launched worker: what to train, and what came of it.

A stage (sft, or one round of preference) writes a :class:`TrainPlan` to ``train_plan.json`` and
launches ``python -m tempa.sft.train_worker --plan train_plan.json`` in its own process group; the
worker trains, then writes :class:`TrainOutcome` beside the final model, which the stage reads.
Both ends use these models, so a field is never read by a string key.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tempa.sft.files import write_atomic
from tempa.sft.run_layout import CHECKPOINTS_DIR, FINAL_DIR
from tempa.sft.stage_api import StageContext, StageError, TrainingEnv
from tempa.sft.throughput_summary import throughput_headline

OUTCOME_FILE = "tempa_train_metrics.json"  # in the final model folder, written by the worker
WORKER = "tempa.sft.train_worker"

# Set by tempa from the stage folder and the launch settings, never by a recipe's `train:` block.
RESERVED_TRAIN_KEYS = ("output_dir", "logging_dir", "resume_from_checkpoint", "deepspeed", "save_safetensors")


class LoraSettings(BaseModel):
    """LoRA/QLoRA through peft; adapters are merged into the saved final model."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=16, ge=1)
    lora_alpha: int = 32
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    modules_to_save: list[str] | None = Field(
        default=None, description="Modules trained whole beside the adapters (peft's `modules_to_save`), merged into "
        "the final model too: `[embed_tokens, lm_head]` lets a new language's tokens learn their embeddings.")
    use_rslora: bool = Field(default=False, description="Rank-stabilised LoRA: scale by lora_alpha / sqrt(r), not / r.")
    use_dora: bool = Field(default=False, description="DoRA: weight-decomposed adapters (slower per step).")
    load_in_4bit: bool = Field(default=False, description="QLoRA: load the base in 4 bit (needs bitsandbytes + GPU).")


def check_lora_environment(config: Any) -> None:
    """A training stage's ``lora.load_in_4bit`` needs bitsandbytes installed: without it the launch failed with an
    ImportError only once the stage started, after the stages before it had trained."""
    lora: LoraSettings | None = config.lora
    if lora is not None and lora.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        raise StageError("lora.load_in_4bit (QLoRA) needs bitsandbytes, which this environment lacks: "
                         "`pip install bitsandbytes` on a CUDA machine, or set load_in_4bit: false")


Trainer = Literal["sft", "dpo", "grpo", "rloo"]


class RewardHook(BaseModel):
    """Where an RL worker (grpo, rloo) gets its reward functions.

    The rewards live in the stage's package (alignment), which this floor must not import; the stage
    names a factory, ``module:function(spec: Path, tokenizer) -> list of trl reward functions``, and
    the typed spec it reads, and the worker calls it.
    """

    model_config = ConfigDict(extra="forbid")

    factory: str = Field(pattern=r"^tempa\.[a-z_.]+:[a-z_]+$", description="`module:function` inside tempa.")
    spec: Path = Field(description="The JSON file the factory reads (written by the stage).")


class TrainPlan(BaseModel):
    """Everything a training worker needs; the data is already tokenised (sft), paired (dpo) or rendered as
    prompts (grpo, rloo) on disk."""

    model_config = ConfigDict(extra="forbid")

    trainer: Trainer
    start_model: Path = Field(description="The model training starts from.")
    tokenizer_dir: Path
    train_data: Path = Field(description="A `save_to_disk` dataset the worker loads as it is.")
    eval_data: Path | None = None
    out_dir: Path = Field(description="The folder this training writes in (the stage's, or a round's).")
    checkpoints_dir: Path
    final_dir: Path
    train_args: dict[str, Any] = Field(
        description="trl config fields (SFTConfig or DPOConfig), checked against trl's dataclass at recipe load."
    )
    lora: LoraSettings | None = None
    reference_model: Path | None = Field(
        default=None, description="DPO: the frozen reference, when it is not the model training starts from.")
    rewards: RewardHook | None = Field(default=None, description="grpo / rloo: the reward functions.")
    seed: int
    env: TrainingEnv
    runner_pid: int | None = Field(default=None, description="The worker stops when this process dies.")
    recipe: dict[str, Any] | None = Field(default=None, description="The resolved recipe: the run config the "
                                          "trackers (wandb, trackio) are given.")

    def write(self, path: Path) -> Path:
        write_atomic(path, self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> TrainPlan:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))

    @classmethod
    def standalone(cls, start_model: Path, out_dir: Path, train_args: dict[str, Any], *,
                   trainer: Trainer = "sft", seed: int = 0, env: TrainingEnv | None = None,
                   train_data: Path | None = None, tokenizer_dir: Path | None = None,
                   rewards: RewardHook | None = None) -> TrainPlan:
        """A plan outside any stage, to build the worker's trainer settings (benchmarks, tests)."""
        out_dir = Path(out_dir)
        return cls(trainer=trainer, start_model=start_model, tokenizer_dir=tokenizer_dir or start_model,
                   train_data=train_data or out_dir / "data", out_dir=out_dir, checkpoints_dir=out_dir,
                   final_dir=out_dir / FINAL_DIR, train_args=train_args, seed=seed, rewards=rewards,
                   env=env or TrainingEnv(use_cpu=True))


def train_plan(
    ctx: StageContext,
    *,
    trainer: Trainer,
    start_model: Path,
    train_data: Path,
    out_dir: Path,
    train_args: dict[str, Any],
    seed: int,
    eval_data: Path | None = None,
    lora: LoraSettings | None = None,
    reference_model: Path | None = None,
    rewards: RewardHook | None = None,
) -> TrainPlan:
    """The plan for training into ``out_dir`` (``checkpoints/`` and ``final/`` go there)."""
    train_args = ctx.training.as_launched(train_args)
    if ctx.recipe is not None:  # what the trackers call the run: recipe/stage (/round-N for a preference round)
        name = f"{ctx.recipe.name}/{ctx.stage_name}" + (f"/{out_dir.name}" if out_dir != ctx.stage_dir else "")
        train_args.setdefault("run_name", name)
    return TrainPlan(
        trainer=trainer,
        start_model=start_model,
        tokenizer_dir=ctx.tokenizer_dir,
        train_data=train_data,
        eval_data=eval_data,
        out_dir=out_dir,
        checkpoints_dir=out_dir / CHECKPOINTS_DIR,
        final_dir=out_dir / FINAL_DIR,
        train_args=train_args,
        lora=lora,
        reference_model=reference_model,
        rewards=rewards,
        seed=seed,
        env=ctx.training,
        runner_pid=os.getpid(),
        recipe=dict(ctx.recipe.resolved) if ctx.recipe is not None else None,
    )


class ParameterShards(BaseModel):
    """How the trained model's parameters were spread over the training processes, as each one held them."""

    model_config = ConfigDict(extra="forbid")

    distributed_type: str  # accelerate's: FSDP, DEEPSPEED, MULTI_CPU, MULTI_GPU, NO, ...
    parameters: int  # elements of the whole model
    per_rank: list[int]  # elements each process held itself: a shard under FSDP / ZeRO-3, all of them otherwise
    # The processes each sequence was split over: accelerate's parallelism config (Ulysses sp, or torch cp), as the
    # trainer built it from the launch
    sequence_parallel: int = 1


class TrainOutcome(BaseModel):
    """What the worker reports beside the final model."""

    model_config = ConfigDict(extra="allow")

    global_step: int
    train: dict[str, Any] = Field(default_factory=dict, description="trainer.train()'s metrics.")
    eval: dict[str, Any] = Field(default_factory=dict, description="trainer.evaluate()'s metrics, if any.")
    log_history: list[dict[str, Any]] = Field(default_factory=list)
    resumed_from: str | None = None
    kernels: dict[str, Any] = Field(default_factory=dict, description="The attention and Liger kernels used.")
    shards: ParameterShards | None = None

    @classmethod
    def read(cls, final_dir: Path) -> TrainOutcome:
        path = Path(final_dir) / OUTCOME_FILE
        if not path.is_file():
            raise StageError(f"training finished without a final model in {final_dir}")
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def headline(self) -> dict[str, float | int | str | None]:
        """Step count, losses and the last logged DPO rewards, for metrics and `tempa status`."""
        logged = [entry for entry in self.log_history if "loss" in entry]
        last = logged[-1] if logged else {}
        out: dict[str, float | int | str | None] = {
            "global_step": self.global_step,
            "train_loss": self.train.get("train_loss"),
            "first_logged_loss": logged[0]["loss"] if logged else None,
            "last_logged_loss": last.get("loss"),
        }
        if self.eval.get("eval_loss") is not None:
            out["eval_loss"] = self.eval["eval_loss"]
        for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
            if key in last:
                out[key] = last[key]
        if self.resumed_from:
            out["resumed_from"] = self.resumed_from
        return {**out, **self.kernels, **throughput_headline(self.log_history)}
