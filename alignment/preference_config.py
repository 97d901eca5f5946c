"""The `preference` stage's recipe block: on-policy sampling, rewards, pairs, trl DPOConfig pass-through.

Example (YAML)::

    - name: align
      kind: preference
      rounds: 2
      prompts: {path: data/sample_prompts.jsonl, limit: 256}
      sampling: {n: 4, temperature: 1.0, max_new_tokens: 1024, thinking: {mode: mixed, ratio: 0.5}}
      rewards:
        - {type: answer, weight: 1.0}
        - {type: language, weight: 0.5}
        - {type: format, weight: 0.5}
        - {type: length, per_token: 0.0005, free_tokens: 512}
      pairs: {min_margin: 0.25}
      train:                 # any trl DPOConfig field
        loss_type: apo_zero
        beta: 0.1
        learning_rate: 5.0e-7
        precompute_ref_log_probs: true
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tempa.alignment.backends import (
    BackendConfig,
    TransformersBackendConfig,
    VLLMBackendConfig,
    backend_reads,
)
from tempa.alignment.generation import GenerationParams
from tempa.alignment.judge import (
    REVISE_PLACEHOLDERS,
    REVISE_PROMPT,
    check_placeholders,
    text_or_file,
)
from tempa.alignment.offline_pairs import OfflinePairs
from tempa.alignment.prompts import PromptSource, ThinkingSettings
from tempa.alignment.rewards import RewardConfig, check_reward_names, judge_reads
from tempa.sft.config import run_only_train_args
from tempa.sft.stage_api import OnOff, Read, StageConfigBase
from tempa.sft.train_args import check_train_args, train_arg_spec, train_checks_deferred
from tempa.sft.train_plan import RESERVED_TRAIN_KEYS, LoraSettings

DPO_CONFIG = "trl:DPOConfig"

# tempa's defaults on top of trl's DPOConfig.
DEFAULT_DPO_ARGS: dict[str, Any] = {
    "num_train_epochs": 1,
    "learning_rate": 5e-7,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,  # a float below 1 is a fraction of the total steps
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "beta": 0.1,
    "loss_type": ["sigmoid"],
    "max_length": 2048,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": 2,
    "report_to": "none",
}

# Common spellings from papers and other toolkits -> trl's names.
LOSS_ALIASES = {"dpo": "sigmoid", "apo": "apo_zero", "ln_dpo": "sigmoid_norm", "length_normalized": "sigmoid_norm"}


def declared_choices(encoded_type: Any, help_text: str) -> tuple[str, ...]:
    """The names a field declares it accepts: the ``Literal[...]`` of its (spec-encoded) annotation,
    also inside ``list[...]`` or a union, else the `'name'` values its help lists (how trl documents
    a list field)."""

    def literals(node: Any) -> list[str]:
        if isinstance(node, dict):
            if "literal" in node:
                return [str(value) for value in node["literal"]]
            return [name for value in node.values() for name in literals(value)]
        if isinstance(node, list):
            return [name for value in node for name in literals(value)]
        return []

    declared = literals(encoded_type) or re.findall(r"`'([a-z0-9_]+)'`", help_text)
    return tuple(dict.fromkeys(declared))


@functools.cache
def trl_loss_types() -> tuple[str, ...]:
    """The loss names the installed trl's ``DPOConfig.loss_type`` declares.

    trl 1.16 annotates the field ``list[str]`` and lists the names in the field's help metadata,
    which the trainer's loss dispatch matches (tests/test_preference_config.py checks both). Read
    from tempa's cached spec of DPOConfig, so a recipe is checked without importing trl.
    """
    spec = train_arg_spec(DPO_CONFIG)
    return declared_choices(spec.fields.get("loss_type"), spec.helps.get("loss_type", ""))


def normalize_loss_type(value: Any) -> list[str]:
    """`loss_type` as trl's list of names (aliases mapped); ValueError naming a bad one.

    Should a trl release declare no names at all, the names pass unchecked and trl itself
    rejects an unknown one when training starts.
    """
    names = [value] if isinstance(value, str) else list(value)
    if not names:
        raise ValueError("loss_type must name at least one loss")
    valid = trl_loss_types()
    out = []
    for name in names:
        mapped = LOSS_ALIASES.get(str(name).lower(), str(name).lower())
        if valid and mapped not in valid:
            raise ValueError(
                f"loss_type {name!r} is not a loss of the installed trl DPOConfig; expected one of "
                f"{', '.join(valid)} (or alias {', '.join(f'{k}->{v}' for k, v in LOSS_ALIASES.items())})"
            )
        out.append(mapped)
    return out


class SamplingSettings(BaseModel):
    """How samples are drawn: how many per prompt, temperature, length, batching, thinking mode."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=4, ge=1, description="Samples per prompt (k).")
    temperature: float = Field(default=1.0, ge=0, description="Sampling temperature (0: greedy; then n must be 1).")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=1024, ge=1, description="Most tokens per sample; longer samples are cut "
                                "off (finish_reason 'length').")
    batch_size: int = Field(default=8, ge=1, description="Prompts per generation batch; results are written to "
                            "disk after every batch, an HTTP backend's each as its reply arrives (a kill or a request "
                            "that fails for good loses none it received).")
    thinking: ThinkingSettings = Field(default_factory=dict, validate_default=True,  # see ThinkingSettings
                                       description="Thinking mode per prompt: on, off or mixed (a row's own "
                                       "`thinking_mode` wins).")

    @model_validator(mode="after")
    def _greedy_n(self) -> SamplingSettings:
        if self.temperature == 0 and self.n > 1:
            raise ValueError("temperature 0 (greedy) gives n identical samples; set temperature > 0 or n: 1")
        return self

    def params(self, seed: int) -> GenerationParams:
        return GenerationParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                n=self.n, seed=seed, batch_size=self.batch_size)

    def journaled(self) -> dict[str, Any]:
        """What of these settings a sample journal is signed with: what shapes each sample. Not ``batch_size``, which
        only groups requests (raising it with a server's concurrency re-asked every paid answer), nor ``thinking``,
        which only picks each prompt's mode: the mode is in the prompt's key (``keyed_by_content``), so a prompt
        whose mode changes is sampled again and no other."""
        return self.model_dump(mode="json", exclude={"batch_size", "thinking"})


class ReviseSettings(BaseModel):
    """The `revise` strategy: a teacher or judge rewrites the worst sample; the rewrite is chosen."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendConfig = Field(description="Where the reviser runs (`{type: http|vllm|transformers, ...}`).")
    prompt: str = Field(
        default=REVISE_PROMPT,
        description="Rewrite instruction (text or the path of a text file: .txt, .md, ...) with {question}, {answer} "
        "(the rejected sample's answer, required) and {language} placeholders (an unknown one is refused); the "
        "reviser's answer becomes the chosen response.",
    )
    max_new_tokens: int = Field(default=1024, ge=1, description="Budget of one rewrite.")
    temperature: float = Field(default=0.0, ge=0, description="Reviser sampling temperature.")
    thinking_mode: OnOff | None = Field(default="off", description="The reviser's own thinking mode.")
    batch_size: int = Field(default=8, ge=1, description="Rewrites per backend call.")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        return check_placeholders(text_or_file(value, info), REVISE_PLACEHOLDERS, ("answer",),
                                  "the reviser would write a new answer, not rewrite the rejected one")


class PairSettings(BaseModel):
    """How preference pairs are built from one prompt's scored samples."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["best_worst", "revise"] = Field(
        default="best_worst",
        description="`best_worst`: the best sample is chosen, the worst rejected. `revise`: the worst sample is "
        "rejected and its rewrite (see `revise`) is chosen.",
    )
    min_margin: float = Field(
        default=0.0, ge=0, description="Smallest chosen-minus-rejected total reward for a pair; ties are always "
        "dropped, as are prompts whose samples all score the same."
    )
    revise: ReviseSettings | None = Field(default=None, description="Reviser settings for strategy `revise`.")

    @model_validator(mode="after")
    def _revise(self) -> PairSettings:
        if self.strategy == "revise" and self.revise is None:
            raise ValueError("strategy 'revise' needs a `revise:` block naming the reviser's backend")
        return self


# The settings only on-policy rounds use (an offline round trains `offline`, `train` and `lora`).
ON_POLICY_FIELDS = ("prompts", "sampling", "backend", "rewards", "pairs", "reference")


class PreferenceStageConfig(StageConfigBase):
    """Preference alignment with trl's DPOTrainer: optionally first a round on an existing chosen/rejected
    dataset (`offline`), then on-policy rounds: sample k responses per prompt from the current policy,
    score them, pair best against worst, train; each round starts from the previous round's model."""

    train_defaults: ClassVar[dict[str, Any]] = DEFAULT_DPO_ARGS
    kind: Literal["preference"] = "preference"
    offline: OfflinePairs | None = Field(
        default=None, description="An existing preference dataset (prompt/chosen/rejected), trained as round 1; "
        "on-policy rounds (`rounds`) follow it.")
    prompts: PromptSource | None = Field(
        default=None, description="The prompts to sample (with target language / reference answers); needed for "
        "on-policy rounds.")
    rounds: int = Field(default=1, ge=0, description="On-policy sampling + training rounds (after the offline "
                        "round, if any); each starts from the previous round's model.")
    reference: Literal["round_start", "stage_start"] = Field(
        default="round_start", description="The DPO reference of each round: `round_start`, the policy the round "
        "starts from (each round is DPO against its own start), or `stage_start`, the model the stage starts from "
        "(pi_0 of iterative DPO: every round stays anchored to it).")
    lora: LoraSettings | None = Field(
        default=None, description="Train LoRA (QLoRA with load_in_4bit) adapters, as the sft stage's `lora:`; the "
        "reference is the adapter-disabled policy (trl) unless `reference: stage_start` names another, and the "
        "adapters are merged into each round's saved model.")
    sampling: SamplingSettings = Field(default_factory=dict, validate_default=True, description="Sampling settings.")
    backend: TransformersBackendConfig | VLLMBackendConfig = Field(
        default_factory=TransformersBackendConfig, discriminator="type",
        description="How the policy is sampled: `{type: transformers}` or `{type: vllm, ...}` (its model is the "
        "current policy, so `model` must be unset).",
    )
    rewards: list[RewardConfig] = Field(default_factory=list, description="Rewards, verifiers and judges, with "
                                        "weights; needed for on-policy rounds.")
    pairs: PairSettings = Field(default_factory=PairSettings, description="Pair building.")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="Any trl DPOConfig field (loss_type: sigmoid | apo_zero | ipo | sigmoid_norm | ..., beta (> 0), "
        "learning_rate, precompute_ref_log_probs, max_steps, ...). tempa sets output_dir and deepspeed. Defaults: "
        + ", ".join(f"{key} {value}" for key, value in DEFAULT_DPO_ARGS.items())
        + ", activation_checkpointing true (trl's, under transformers 5's name).",
    )

    @field_validator("rewards")
    @classmethod
    def _rewards(cls, value: list[Any]) -> list[Any]:
        return check_reward_names(value)

    @model_validator(mode="after")
    def _rounds(self) -> PreferenceStageConfig:
        if self.rounds == 0 and self.offline is None:
            raise ValueError("rounds: 0 trains nothing; give an `offline:` dataset or at least one on-policy round")
        if self.rounds > 0 and (self.prompts is None or not self.rewards):
            raise ValueError(f"{self.rounds} on-policy round(s) need `prompts:` and `rewards:`")
        if self.rounds > 0 and self.pairs.strategy == "best_worst" and self.sampling.n < 2:
            # One sample per prompt can never be paired with another: every round would sample and score all its
            # prompts, then stop on 'no usable preference pair'.
            raise ValueError(f"sampling.n: {self.sampling.n} sample per prompt gives best_worst nothing to pair; "
                             "set n: 2 or more (with temperature > 0), or pairs.strategy: revise")
        return self

    def unfingerprinted(self) -> frozenset[str]:
        """With no on-policy round the on-policy settings play no part: a change to them (a profile keeping the full
        recipe's sampling) must not re-train the offline round. They stay in the dump (the manifest, the resolved
        recipe), which loads back. Nor do the trainer arguments that change how it runs, not what it trains."""
        return (frozenset(ON_POLICY_FIELDS) if self.rounds == 0 else frozenset()) | run_only_train_args(
            self.train_args())

    @field_validator("backend")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        if value.model is not None:
            raise ValueError("the preference stage samples its current policy; leave backend.model unset")
        return value

    @field_validator("train")
    @classmethod
    def _train(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if train_checks_deferred(info):
            return value
        value = dict(value)
        if "loss_type" in value:
            value["loss_type"] = normalize_loss_type(value["loss_type"])
        value = check_train_args(value, DPO_CONFIG, reserved=RESERVED_TRAIN_KEYS, defaults=cls.train_defaults)
        beta = value.get("beta")
        losses = value.get("loss_type", cls.train_defaults["loss_type"])
        # trl accepts any beta, but every loss except `sft` scales the preference by it (ipo divides by it): below
        # 0 it trains toward the rejected side, at 0 it gives no gradient (ipo: a division by zero).
        if beta is not None and beta <= 0 and any(loss != "sft" for loss in losses):
            used = ", ".join(loss for loss in losses if loss != "sft")
            raise ValueError(f"'beta': must be > 0 for loss_type {used}, got {beta:g} (below 0 it trains toward the "
                             "rejected answers, at 0 it gives no gradient)")
        return value

    def train_args(self) -> dict[str, Any]:
        """tempa defaults overlaid with the recipe's values."""
        args = super().train_args()
        if not {"activation_checkpointing", "gradient_checkpointing"} & set(self.train):
            # trl's default (on), under the name transformers 5 no longer warns about.
            args["activation_checkpointing"] = True
        return args

    def reads(self, earlier: Sequence[str]) -> list[Read]:
        """Earlier stages whose models a judge or the reviser names as `stage:NAME` (none without on-policy rounds:
        nothing reads them)."""
        if self.rounds == 0:
            return []
        reviser = self.pairs.revise.backend if self.pairs.revise else None
        return (judge_reads(self.rewards, ("rewards",)) + backend_reads(reviser, ("pairs", "revise", "backend"))
                + (self.prompts.reads(("prompts",)) if self.prompts is not None else []))
