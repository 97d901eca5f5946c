"""tempa's rewards as trl reward functions, evaluated inside the RL training worker.

The `rl` stage writes a :class:`RewardSpec` (the recipe's rewards plus what model-backed rewards need)
and names :func:`trl_reward_functions` as the worker's factory
(:class:`tempa.sft.train_plan.RewardHook`). The worker gets one trl reward function per reward, so trl
logs each as ``rewards/<name>/mean`` and weighs them with ``reward_weights``. All of them read one
:class:`~tempa.alignment.rewards.RewardSet` scoring of the batch, so rewards that depend on each other
(the language gate on answer rewards) behave exactly as in the preference and synthesize stages.

Each dataset row carries its prompt as tempa knows it (:class:`RLPrompt`: target language, reference
answer, thinking mode, and the think pre-fill the template wrote), so a completion is scored as the
model wrote it: pre-fill + generated text, ended by a stop token (``finish_reason`` "stop") or cut off
(``"length"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tempa.alignment.completions import Completion
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import (
    JudgeReward,
    LanguageReward,
    RewardConfig,
    RewardSet,
    ScoreItem,
    ScoringEnv,
    check_judges,
    judge_failures,
)
from tempa.chat_templates.thinking import STOP_TOKENS

FACTORY = "tempa.alignment.rl_rewards:trl_reward_functions"
ROW_COLUMN = "tempa_prompt"  # the dataset column holding each row's RLPrompt (JSON)


class RLPrompt(BaseModel):
    """One prompt row as the reward functions need it (stored as JSON in the prompts dataset)."""

    model_config = ConfigDict(extra="forbid")

    row: PromptRow = Field(description="The prompt with its target language, reference answer and thinking mode.")
    prefill: str = Field(default="", description="What the template wrote after the assistant header.")


class RewardSpec(BaseModel):
    """What the worker's reward functions are built from."""

    model_config = ConfigDict(extra="forbid")

    rewards: list[RewardConfig]
    policy_dir: Path = Field(description="The starting model (a judge backend without a model uses it).")
    tokenizer_dir: Path
    stage_models: dict[str, Path] = Field(default_factory=dict)
    trust_remote_code: bool = False
    seed: int = 0

    @classmethod
    def read(cls, path: Path) -> RewardSpec:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


class BatchScorer:
    """Scores one generation batch with every reward once; each trl reward function reads its column."""

    def __init__(self, rewards: RewardSet, tokenizer: Any, stop_ids: set[int]) -> None:
        self.rewards = rewards
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self._key: tuple | None = None
        self._records: list[dict[str, Any]] = []
        self._judged: list[dict[str, Any]] = []  # every judge verdict of the run so far

    def completion(self, ids: Sequence[int], prefill: str) -> Completion:
        """The completion as the model wrote it; trl's ids end with the stop token when there was one."""
        ids = [int(i) for i in ids]
        stopped = bool(ids) and ids[-1] in self.stop_ids
        text = self.tokenizer.decode(ids[:-1] if stopped else ids, skip_special_tokens=False)
        return Completion(text=text, prefill=prefill, finish_reason="stop" if stopped else "length",
                          completion_tokens=len(ids))

    def records(self, completion_ids: Sequence[Sequence[int]], rows: Sequence[str],
                log_metric: Callable[[str, float], None] | None) -> list[dict[str, Any]]:
        key = (tuple(tuple(int(i) for i in ids) for ids in completion_ids), tuple(rows))
        if key != self._key:
            prompts = [RLPrompt.model_validate_json(row) for row in rows]
            items = [ScoreItem(p.row, self.completion(ids, p.prefill)) for p, ids in zip(prompts, completion_ids,
                                                                                       strict=True)]
            self._records = self.rewards.score(items)
            self._key = key
            configs = self.rewards.configs
            self._judged += judge_verdicts(configs, self._records)
            if log_metric is not None:
                for name, value in {**fidelity_metrics(configs, self._records),
                                    **judge_metrics(configs, self._records)}.items():
                    log_metric(name, value)
            # As in the preference and synthesize stages, a judge that cannot follow its rubric decides
            # nothing: more replies without a rating than its max_unparsable (over the run so far) stop
            # the training.
            check_judges(configs, [{"results": self._judged}], "rl rewards")
        return self._records


def fidelity_metrics(configs: Sequence[Any], records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per language reward: the share of judged answers, and of judged reasonings, in an allowed language."""
    out: dict[str, float] = {}
    for config in configs:
        if not isinstance(config, LanguageReward):
            continue
        for part in ("answer", "reasoning"):
            verdicts = [r["details"].get(config.key, {}).get(part) for r in records]
            judged = [v for v in verdicts if v is not None]
            if judged:
                out[f"{config.key}/{part}_language_share"] = sum(judged) / len(judged)
    return out


def judge_verdicts(configs: Sequence[Any], records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The judge rewards' part of each score record (what :func:`check_judges` counts)."""
    keys = [config.key for config in configs if isinstance(config, JudgeReward)]
    if not keys:
        return []
    return [{"scores": {key: record["scores"][key] for key in keys},
             "details": {key: record["details"][key] for key in keys if key in record["details"]}}
            for record in records]


def judge_metrics(configs: Sequence[Any], records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per judge reward: the share of this batch's replies without a rating."""
    failures = judge_failures(configs, [{"results": records}])
    return {f"{key}/unparsable_fraction": failed.fraction
            for key, failed in failures.items() if failed.replies}


class TrlReward:
    """One reward as a trl reward function (``__name__`` is the name trl logs it under)."""

    def __init__(self, scorer: BatchScorer, name: str) -> None:
        self.scorer = scorer
        self.__name__ = name

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                 **columns: Any) -> list[float | None]:
        records = self.scorer.records(completion_ids, columns[ROW_COLUMN], columns.get("log_metric"))
        return [sample_score(record, self.__name__) for record in records]


def sample_score(record: dict[str, Any], name: str) -> float | None:
    """One reward's score of a sample, None for every reward when the sample's scoring failed.

    A failed scoring (a judge reply without a rating, a non-finite reward-model score) has no total, and
    the other stages leave such a sample out. trl does so only when every reward function returns None
    (advantage 0, out of its group's baseline); one number left in would enter trl's weighted nansum,
    scoring the failure as 0.
    """
    return None if record["scores"]["total"] is None else record["scores"][name]


def stop_token_ids(tokenizer: Any, policy_dir: Path) -> set[int]:
    """Ids that end a completion: the tokenizer's eos and pad, the end-of-turn tokens, the model's eos."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    vocab = tokenizer.get_vocab()
    ids |= {vocab[token] for token in STOP_TOKENS if token in vocab}
    config = Path(policy_dir) / "generation_config.json"
    if config.is_file():
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(policy_dir).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos])
    return {int(i) for i in ids if i is not None}


def trl_reward_functions(spec_path: Path, tokenizer: Any) -> list[TrlReward]:
    """The worker's factory: one trl reward function per reward of the spec, in its order."""
    spec = RewardSpec.read(spec_path)
    env = ScoringEnv(policy_dir=spec.policy_dir, tokenizer_dir=spec.tokenizer_dir, stage_models=spec.stage_models,
                     trust_remote_code=spec.trust_remote_code, seed=spec.seed, tokenizer=tokenizer,
                     show_progress=False)
    scorer = BatchScorer(RewardSet(spec.rewards, env), tokenizer, stop_token_ids(tokenizer, spec.policy_dir))
    return [TrlReward(scorer, reward.key) for reward in spec.rewards]
