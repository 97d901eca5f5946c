"""The `rl` stage's recipe block: reinforcement learning with verifiable rewards (trl GRPO or RLOO).

Example (YAML)::

    - name: rlvr
      kind: rl
      trainer: grpo                  # or rloo
      prompts: {path: data/sample_prompts.jsonl}      # messages/prompt, language, answer (thinking_mode)
      thinking: {mode: "on"}
      rewards:
        - {type: answer, match: math, weight: 1.0}
        - {type: language, weight: 0.5, reasoning: {languages: [target, en]}}
        - {type: format, weight: 0.25}
      train:                         # any trl GRPOConfig (RLOOConfig) field
        num_generations: 8
        max_completion_length: 2048
        learning_rate: 1.0e-6
        beta: 0.001

Guards against the known failures, each a trl setting tempa sets by default (and documents):

- a prompt whose samples all get the same total reward has zero advantage under GRPO's group
  normalisation (and RLOO's leave-one-out baseline), so it adds nothing to the policy gradient; trl
  logs the share of such prompts as ``frac_reward_zero_std``, which the stage reports;
- ``mask_truncated_completions: true``: a sample cut off at ``max_completion_length`` still gets its
  rewards (and counts in its group's statistics) but is left out of the loss, as DAPO recommends: an
  unfinished answer is neither right nor wrong, and the ``format`` reward's ``ended`` check already
  scores the cut-off itself;
- per-token loss normalisation (GRPO): ``loss_type: dapo`` (trl's default) averages the clipped
  token losses over every completion token of the whole accumulated batch, so a long completion weighs
  by its tokens and no length bias comes from per-sequence averaging (``grpo`` averages per sequence
  first; ``dr_grpo`` divides by a constant, ``max_completion_length``). RLOO optimises sequence
  log-probabilities (token log-probs summed per completion, then averaged over completions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from tempa.alignment.prompts import PromptSource, ThinkingSettings
from tempa.alignment.rewards import RewardConfig, check_reward_names, judge_reads
from tempa.sft.config import run_only_train_args
from tempa.sft.stage_api import Read, StageConfigBase
from tempa.sft.suggest import did_you_mean
from tempa.sft.train_args import (
    STAGE_FOLDER_AND_LAUNCH,
    check_train_args,
    train_arg_spec,
    train_checks_deferred,
)
from tempa.sft.train_plan import RESERVED_TRAIN_KEYS, LoraSettings

RL_CONFIGS = {"grpo": "trl:GRPOConfig", "rloo": "trl:RLOOConfig"}

# Set by the stage, each with what decides it, as the refusal of one in `train:` says.
RL_RESERVED_KEYS = {
    **dict.fromkeys(RESERVED_TRAIN_KEYS, STAGE_FOLDER_AND_LAUNCH),
    "reward_weights": "each reward's `weight` in rewards decides it",
    "chat_template_kwargs": "each prompt's thinking mode decides it: thinking, or a row's thinking_mode",
}

# tempa's defaults on top of trl's config (keys the chosen trainer lacks are dropped).
DEFAULT_RL_ARGS: dict[str, Any] = {
    "num_train_epochs": 1,
    "learning_rate": 1e-6,
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 0.03,  # a float below 1 is a fraction of the total steps
    "per_device_train_batch_size": 8,  # completions, not prompts: num_generations must divide the global batch
    "gradient_accumulation_steps": 1,
    "num_generations": 8,
    "max_completion_length": 1024,
    "temperature": 1.0,
    # A small KL to the starting (SFT) model, as DeepSeek-R1 trained; logged as `kl`. 0 drops the
    # reference model (trl GRPO's default).
    "beta": 0.001,
    "mask_truncated_completions": True,
    "loss_type": "dapo",
    "scale_rewards": "group",
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 100,
    "save_total_limit": 2,
    "report_to": "none",
}


# Fields trl types as a bare `str` and reads only once training runs: the loss at the first step, scale_rewards and
# multi_objective_aggregation when the first batch is scored, vllm_mode when vLLM starts. A misspelt one passed the
# type check and failed after every stage before. The names trl 1.16's trainers dispatch on; a name the installed
# trl's help for the field quotes passes too (a newer trl's).
TRL_CHOICES: dict[str, tuple[str, ...]] = {
    "loss_type": ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo"),
    "scale_rewards": ("group", "batch", "none"),
    "multi_objective_aggregation": ("sum_then_normalize", "normalize_then_sum"),
    "importance_sampling_level": ("token", "sequence"),
    "vllm_mode": ("colocate", "server"),
    "vllm_importance_sampling_mode": ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
}
# trl's GRPOConfig reads scale_rewards true / false as "group" / "none", but types the field `str`.
SCALE_REWARDS_BOOLS = {True: "group", False: "none"}


def check_choices(train: Mapping[str, Any], config_ref: str) -> None:
    """Refuse a value of a :data:`TRL_CHOICES` field that the trainer does not know, naming the field."""
    helps = train_arg_spec(config_ref).helps
    for key, names in TRL_CHOICES.items():
        value = train.get(key)
        if not isinstance(value, str) or key not in helps:
            continue
        if value not in names and f"'{value}'" not in helps[key]:
            raise ValueError(f"'{key}': {value!r} is not one of trl's: {', '.join(names)}{did_you_mean(value, names)}")


@dataclass(frozen=True)
class GenerationBatch:
    """What trl samples at once: ``completions`` (its generation_batch_size), ``prompts`` of them x
    num_generations, trained as ``steps`` micro-batch steps (its steps_per_generation)."""

    completions: int
    steps: int
    prompts: int


def generation_batch(train: Mapping[str, Any], processes: int) -> GenerationBatch:
    """The generation batch of an RL stage's (tempa-defaulted) ``train`` args over ``processes`` data-parallel
    processes, derived as trl 1.16's GRPOConfig / RLOOConfig.__post_init__ derive it. A shape trl refuses is a
    ``ValueError`` starting with the recipe field to change (``num_generations: ...``): trl names its own derived
    ``generation_batch_size``, which the recipe usually never set."""
    per_device = int(train.get("per_device_train_batch_size", DEFAULT_RL_ARGS["per_device_train_batch_size"]))
    generations = int(train.get("num_generations", DEFAULT_RL_ARGS["num_generations"]))
    size, steps = train.get("generation_batch_size"), train.get("steps_per_generation")
    per_step = per_device * processes
    shape = f"per_device_train_batch_size {per_device} x {processes} process{'es' if processes != 1 else ''}"
    if size is not None and steps is not None:
        raise ValueError(f"generation_batch_size: set it or steps_per_generation, not both ({size} and {steps})")
    if size is None:
        steps = int(steps if steps is not None else train.get("gradient_accumulation_steps", 1))
        size = per_step * steps
        by = "steps_per_generation" if train.get("steps_per_generation") is not None else "gradient_accumulation_steps"
        how = f"{shape} x {by} {steps}"
    elif size % per_step:
        raise ValueError(f"generation_batch_size: {size} is not a multiple of {shape} = {per_step} completions")
    else:
        steps, how = size // per_step, f"generation_batch_size {size}"
    if size % generations:
        # trl normalises rewards within each prompt's samples: a group may not straddle two batches
        raise ValueError(f"num_generations: {generations} does not divide the {size} completions trl samples at once "
                         f"({how}); each prompt's samples must fall in one generation batch")
    return GenerationBatch(completions=size, steps=steps, prompts=size // generations)


class RLStageConfig(StageConfigBase):
    """On-policy RL from the model of the stage before (usually SFT): sample `num_generations` answers per
    prompt with the recipe's template and each row's thinking mode, score them with tempa's rewards
    (verifiers, language fidelity, format, judges) and train with trl's GRPOTrainer or RLOOTrainer."""

    kind: Literal["rl"] = "rl"
    # Read where the config is not built yet (the load-time merge checks) and by the reference.
    train_defaults: ClassVar[dict[str, Any]] = DEFAULT_RL_ARGS
    trainer: Literal["grpo", "rloo"] = Field(default="grpo", description="trl's GRPOTrainer or RLOOTrainer.")
    prompts: PromptSource = Field(description="The prompts, with their target `language` and verifiable `answer`.")
    thinking: ThinkingSettings = Field(default_factory=dict, validate_default=True,  # see ThinkingSettings
                                       description="Thinking mode per prompt: on, off or mixed (a row's own "
                                       "`thinking_mode` wins).")
    rewards: list[RewardConfig] = Field(min_length=1, description="Rewards, verifiers and judges, with weights; "
                                        "each is one trl reward function, logged as rewards/<name>/mean.")
    lora: LoraSettings | None = Field(default=None, description="Train LoRA adapters (merged into final/).")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="Any trl GRPOConfig (RLOOConfig) field: num_generations, max_completion_length, beta, "
        "loss_type, use_vllm, vllm_mode (colocate | server), ... tempa sets output_dir, reward_weights and the "
        "template kwargs.",
    )

    @field_validator("rewards")
    @classmethod
    def _rewards(cls, value: list[Any]) -> list[Any]:
        return check_reward_names(value)

    @field_validator("train")
    @classmethod
    def _train(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if train_checks_deferred(info):
            return value
        config_ref = RL_CONFIGS[info.data.get("trainer", "grpo")]
        if isinstance(value.get("scale_rewards"), bool):
            value = {**value, "scale_rewards": SCALE_REWARDS_BOOLS[value["scale_rewards"]]}
        checked = check_train_args(value, config_ref, reserved=RL_RESERVED_KEYS, defaults=DEFAULT_RL_ARGS)
        check_choices(checked, config_ref)
        generations = checked.get("num_generations")
        if isinstance(generations, int) and generations < 2:
            raise ValueError("'num_generations': needs at least 2 samples per prompt (advantages compare them)")
        temperature = checked.get("temperature")
        if isinstance(temperature, int | float) and temperature <= 0:
            # trl divides the policy's logits by it, and greedy samples of a prompt all tie (zero advantage)
            raise ValueError(f"'temperature': must be above 0 to sample different answers to compare, got "
                             f"{temperature!r}")
        return checked

    def train_args(self) -> dict[str, Any]:
        """tempa defaults overlaid with the recipe's values, plus the rewards' weights."""
        fields = train_arg_spec(RL_CONFIGS[self.trainer]).fields
        args = {key: value for key, value in self.train_defaults.items() if key in fields}
        args.update(self.train)
        if not {"activation_checkpointing", "gradient_checkpointing"} & set(self.train):
            args["activation_checkpointing"] = True
        args["reward_weights"] = [reward.weight for reward in self.rewards]
        return args

    def unfingerprinted(self) -> frozenset[str]:
        """The trainer arguments that change how it runs, not what it trains."""
        return run_only_train_args(self.train_args())

    def reads(self, earlier: Sequence[str]) -> list[Read]:
        """Earlier stages whose models a judge names as `stage:NAME`, and the stage whose dataset
        `prompts.path: stage:NAME` reads."""
        return judge_reads(self.rewards, ("rewards",)) + self.prompts.reads(("prompts",))
