"""The `preference` stage: N rounds of on-policy sampling -> rewards -> pairs -> DPO.

Round K lives in ``<stage>/round-K/``::

    samples.jsonl       k samples per prompt from the round's policy (appended per batch; resumable)
    scores.jsonl        every sample's reward scores and total (appended per batch; resumable)
    revisions.jsonl     (strategy revise) the rewrite of each prompt's worst sample, scored
    pairs.jsonl         chosen/rejected pairs with their scores (the pairs dataset, readable)
    data/pairs/         the same pairs as trl's conversational DPO dataset (save_to_disk)
    stats.json          reward statistics: mean chosen/rejected reward, share of prompts with a pair,
                        drop reasons, per-reward means, sampling throughput, training headline
    train_plan.json     what the training worker (`python -m tempa.sft.train_worker`) trains (re-run from logs/)
    checkpoints/        DPO checkpoints (COMPLETE markers), resumed after a kill
    final/              the round's model: the next round's policy

Sampling and scoring run in the runner's process (the policy is loaded, used, released);
training runs in a launched process group like the sft stage. A finished round is never
redone; an interrupted one resumes where it stopped. After the last round ``final`` and
``checkpoints`` in the stage folder point at that round's.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tempa.alignment.backends import LazyBackend, SamplingBackend, build_backend
from tempa.alignment.completions import Completion, assistant_message, split_think
from tempa.alignment.judge import fill
from tempa.alignment.pairs import UNRENDERABLE, Pair, PairStats, Scored, best_worst, revision_pair, worst
from tempa.alignment.preference_config import PreferenceStageConfig
from tempa.alignment.prompts import PromptRow, load_prompts
from tempa.alignment.rewards import RewardSet, ScoreItem, ScoringEnv, reward_summary
from tempa.alignment.sampling import (
    JsonlStore,
    completions_of,
    run_incremental,
    sample_prompts,
    score_pass,
)
from tempa.chat_templates.thinking import mode_kwargs
from tempa.sft.checkpoints import complete_checkpoints, remove_incomplete_checkpoints
from tempa.sft.files import json_or_none, point_link, staging_dir, write_json, write_jsonl
from tempa.sft.kernels import KERNEL_KEYS
from tempa.sft.run_layout import CHECKPOINTS_DIR, FINAL_DIR, LOGS_DIR, TRAIN_PLAN
from tempa.sft.stage_api import RunPath, Scalar, StageContext, StageError, StageResult, format_metric
from tempa.sft.throughput_summary import SUMMARY_KEYS
from tempa.sft.train_plan import OUTCOME_FILE, WORKER, TrainOutcome, train_plan

__all__ = ["PreferenceResult", "PreferenceStageConfig", "RoundSummary", "run_preference"]


class RoundSummary(BaseModel):
    """One preference round, as later stages and the report see it."""

    model_config = ConfigDict(extra="forbid")

    round: int
    model: RunPath = Field(description="The round's trained policy (the next round starts from it).")
    prompts: int
    pairs: int
    pair_fraction: float
    chosen_reward_mean: float | None
    rejected_reward_mean: float | None
    margin_mean: float | None
    sample_reward_mean: float | None
    dropped: dict[str, int]
    reward_means: dict[str, float | None]
    train: dict[str, Scalar] = Field(description="The DPO training headline (losses, DPO rewards).")


class PreferenceResult(StageResult):
    """A preference stage's result: the last round's policy, and every round's summary."""

    rounds: list[RoundSummary]


def run_preference(config: PreferenceStageConfig, ctx: StageContext) -> PreferenceResult:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctx.tokenizer_dir)
    prompts = load_prompts(config.prompts.resolved(ctx, who=f"stage '{ctx.stage_name}'"), seed=ctx.seed, thinking=config.sampling.thinking)
    ctx.log.info("preference: %d prompts, %d samples each, %d round(s)", len(prompts), config.sampling.n,
                 config.rounds)
    policy = Path(ctx.start_model)
    rounds: list[RoundSummary] = []
    for round_index in range(1, config.rounds + 1):
        round_dir = ctx.stage_dir / f"round-{round_index}"
        stats = _finished_round(round_dir)
        if stats is None:
            stats = run_round(config, ctx, round_index, policy, prompts, tokenizer)
        else:
            ctx.log.info("round %d: already trained; reusing %s", round_index, round_dir / FINAL_DIR)
        policy = round_dir / FINAL_DIR
        rounds.append(_summary(stats, policy))
    # The stage's own final/ and checkpoints/ are the last round's, as for an sft stage.
    point_link(ctx.stage_dir / FINAL_DIR, policy)
    last_checkpoints = policy.parent / CHECKPOINTS_DIR
    if last_checkpoints.is_dir():
        point_link(ctx.stage_dir / CHECKPOINTS_DIR, last_checkpoints)
    last = rounds[-1]
    metrics: dict[str, Scalar] = {
        "chosen_reward_mean": last.chosen_reward_mean,
        "rejected_reward_mean": last.rejected_reward_mean,
        "pair_fraction": last.pair_fraction,
        "pairs": last.pairs,
        "train_loss": last.train.get("train_loss"),
        "rounds": config.rounds,
        **{key: last.train[key] for key in KERNEL_KEYS if key in last.train},
    }
    for summary in rounds:  # flat keys, so trackers and `tempa status` show them as numbers
        metrics.update({f"round{summary.round}_{key}": value for key, value in _round_headline(summary).items()})
    files = {f"pairs_round_{r.round}": ctx.stage_dir / f"round-{r.round}" / "pairs.jsonl" for r in rounds}
    return PreferenceResult(model=policy, checkpoints=complete_checkpoints(policy.parent / CHECKPOINTS_DIR),
                            metrics=metrics, files=files, rounds=rounds)


def _finished_round(round_dir: Path) -> dict[str, Any] | None:
    stats_file = round_dir / "stats.json"
    if not (round_dir / FINAL_DIR / OUTCOME_FILE).is_file() or not stats_file.is_file():
        return None
    stats = json_or_none(stats_file)
    return stats if isinstance(stats, dict) and "train" in stats else None


def _summary(stats: dict[str, Any], model: Path) -> RoundSummary:
    fields = set(RoundSummary.model_fields) - {"model"}
    return RoundSummary(model=model, **{key: stats[key] for key in fields if key in stats})


def run_round(
    config: PreferenceStageConfig,
    ctx: StageContext,
    round_index: int,
    policy: Path,
    prompts: list[PromptRow],
    tokenizer: Any,
) -> dict[str, Any]:
    """Sample, score, pair and train one round; returns its stats (also in round-K/stats.json)."""
    round_dir = ctx.stage_dir / f"round-{round_index}"
    round_dir.mkdir(parents=True, exist_ok=True)
    seed = ctx.seed + 7919 * (round_index - 1)
    label = f"round {round_index}"
    signature = {"policy": str(policy), "seed": seed, "prompts": [p.id for p in prompts],
                 "sampling": config.sampling.model_dump(mode="json"), "backend": config.backend.model_dump(mode="json")}

    # 1. sample k responses per prompt from the current policy
    policy_backend = LazyBackend(lambda: build_backend(
        config.backend, policy_dir=policy, tokenizer_dir=ctx.tokenizer_dir, stage_models=ctx.stage_models,
        trust_remote_code=ctx.trust_remote_code, who=f"{ctx.stage_name} backend"))
    try:
        samples, sample_stats = sample_prompts(
            prompts, policy_backend, config.sampling.params(seed), JsonlStore(round_dir / "samples.jsonl", signature),
            desc=f"{label}: sample",
        )
    finally:
        policy_backend.close()
    ctx.log.info("%s: sampled %d prompts (%d resumed) %s", label, len(samples), sample_stats["resumed"],
                 _throughput(sample_stats))

    # 2. score every sample
    rewards = RewardSet(config.rewards, ScoringEnv(
        policy_dir=policy, tokenizer_dir=ctx.tokenizer_dir, stage_models=ctx.stage_models,
        trust_remote_code=ctx.trust_remote_code, seed=seed, tokenizer=tokenizer))
    score_signature = {**signature, "rewards": [r.model_dump(mode="json") for r in config.rewards]}
    try:
        scores, score_stats = score_pass(
            prompts, samples, rewards, JsonlStore(round_dir / "scores.jsonl", score_signature),
            chunk_size=config.sampling.batch_size, desc=f"{label}: score",
        )
        revisions = None
        if config.pairs.strategy == "revise":
            revisions = _revise(config, ctx, policy, prompts, samples, scores, rewards, round_dir,
                                score_signature, seed)
        judge_stats = rewards.stats()
    finally:
        rewards.close()
    ctx.log.info("%s: scored %d samples %s", label, sum(len(s["results"]) for s in scores), _throughput(score_stats))

    # 3. build pairs
    rows, pair_stats = build_round_pairs(config, prompts, samples, scores, revisions, tokenizer)
    write_jsonl(round_dir / "pairs.jsonl", rows)
    stats: dict[str, Any] = {
        "round": round_index,
        "policy": str(policy),
        **pair_stats.summary(),
        **reward_summary(config.rewards, scores),
        "finish_reasons": dict(Counter(c.get("finish_reason") or "unknown" for s in samples
                                       for c in s["completions"])),
        "sampling": sample_stats,
        "scoring": {**score_stats, **judge_stats},
    }
    write_json(round_dir / "stats.json", stats)
    ctx.log.info(
        "%s: %d pairs from %d prompts (%.0f%%); mean reward chosen %s, rejected %s; dropped %s", label,
        stats["pairs"], stats["prompts"], 100 * stats["pair_fraction"], format_metric(stats["chosen_reward_mean"]),
        format_metric(stats["rejected_reward_mean"]), stats["dropped"] or "none",
    )
    if not rows:
        raise StageError(
            f"{label}: no usable preference pair from {len(prompts)} prompts (dropped: {stats['dropped']}); "
            f"see {round_dir / 'stats.json'}"
        )

    # 4. train with DPO in a launched process group
    train_path = _save_pairs_dataset(rows, round_dir / "data" / "pairs", ctx.stage_dir)
    trained = train_round(config, ctx, round_dir, policy, train_path, seed)
    stats["train"] = trained
    write_json(round_dir / "stats.json", stats)
    return stats


# --------------------------------------------------------------------------- pairs


def build_round_pairs(
    config: PreferenceStageConfig,
    prompts: list[PromptRow],
    samples: list[dict[str, Any]],
    scores: list[dict[str, Any]],
    revisions: list[dict[str, Any]] | None,
    tokenizer: Any,
) -> tuple[list[dict[str, Any]], PairStats]:
    """The pairs dataset rows (scores included) and the round's reward statistics."""
    stats = PairStats()
    rows: list[dict[str, Any]] = []
    revised = {r["id"]: r for r in revisions or []}
    for prompt, sample, score in zip(prompts, samples, scores, strict=True):
        completions = completions_of(sample)
        results = score["results"]
        scored = [Scored(i, r["scores"]["total"], c.truncated, c.full_text)
                  for i, (c, r) in enumerate(zip(completions, results, strict=True))]
        chosen_completion: Completion | None = None
        chosen_scores: dict[str, Any] = {}
        if config.pairs.strategy == "revise":
            revision = revised.get(prompt.id)
            if revision is None:
                pair, reason = None, "no_revision"
            else:
                chosen_completion = Completion.from_dict(revision["completion"])
                chosen_scores = revision["result"]["scores"]
                pair, reason = revision_pair(scored[revision["index"]], chosen_scores["total"],
                                             min_margin=config.pairs.min_margin,
                                             revision_text=chosen_completion.full_text)
        else:
            pair, reason = best_worst(scored, min_margin=config.pairs.min_margin,
                                      allow_truncated_chosen=config.pairs.allow_truncated_chosen)
            if pair is not None:
                chosen_completion = completions[pair.chosen]
                chosen_scores = results[pair.chosen]["scores"]
        row = None
        if pair is not None and chosen_completion is not None:
            row = pair_row(prompt, pair, chosen_completion, completions[pair.rejected], chosen_scores,
                           results[pair.rejected]["scores"])
            if not renders(tokenizer, row):
                pair, reason, row = None, UNRENDERABLE, None
        stats.add(pair, reason, [s.total for s in scored])
        if row is not None:
            rows.append(row)
    return rows, stats


def pair_row(prompt: PromptRow, pair: Pair, chosen: Completion, rejected: Completion,
             chosen_scores: dict[str, Any], rejected_scores: dict[str, Any]) -> dict[str, Any]:
    """One row of the pairs dataset: trl's conversational format plus scores and provenance."""
    mode = prompt.thinking_mode or "on"
    return {
        "prompt_id": prompt.id,
        "prompt": prompt.messages,
        "chosen": [assistant_message(chosen)],
        "rejected": [assistant_message(rejected)],
        "chat_template_kwargs": mode_kwargs(mode),
        "chosen_score": pair.chosen_score,
        "rejected_score": pair.rejected_score,
        "margin": pair.margin,
        "chosen_index": pair.chosen,
        "rejected_index": pair.rejected,
        "chosen_scores": chosen_scores,
        "rejected_scores": rejected_scores,
        "language": prompt.language,
    }


def renders(tokenizer: Any, row: dict[str, Any]) -> bool:
    """Both sides render through the chat template (e.g. no stray think tags it refuses)."""
    try:
        for side in ("chosen", "rejected"):
            tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=False, **row["chat_template_kwargs"])
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- revise


def _revise(config: PreferenceStageConfig, ctx: StageContext, policy: Path, prompts: list[PromptRow],
            samples: list[dict[str, Any]], scores: list[dict[str, Any]], rewards: RewardSet, round_dir: Path,
            signature: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """Rewrite each prompt's worst sample with the reviser and score the rewrite (resumable)."""
    settings = config.pairs.revise
    assert settings is not None
    by_id = {s["id"]: (completions_of(s), sc["results"]) for s, sc in zip(samples, scores, strict=True)}
    targets: list[tuple[PromptRow, int]] = []
    for prompt in prompts:
        _, results = by_id[prompt.id]
        bottom = worst([Scored(i, r["scores"]["total"]) for i, r in enumerate(results)])
        if bottom is not None:
            targets.append((prompt, bottom.index))
    reviser: SamplingBackend = LazyBackend(lambda: build_backend(
        settings.backend, policy_dir=policy, tokenizer_dir=ctx.tokenizer_dir,
        stage_models=ctx.stage_models, trust_remote_code=ctx.trust_remote_code, who="pairs.revise"))
    from tempa.alignment.generation import GenerationParams

    def work(chunk: list[tuple[PromptRow, int]], index: int) -> list[dict[str, Any]]:
        params = GenerationParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, n=1,
                                  seed=seed + 1000 * index, thinking_mode=settings.thinking_mode,
                                  batch_size=settings.batch_size)
        requests = [[{"role": "user", "content": fill(settings.prompt, question=p.question,
                                                      answer=split_think(by_id[p.id][0][i]).answer,
                                                      language=p.language)}] for p, i in chunk]
        outputs = reviser.sample(requests, params)
        revisions = []
        for (prompt, _), group in zip(chunk, outputs, strict=True):
            split = split_think(group[0])
            # The rewrite is the chosen answer; under thinking on it gets an (empty) closed think block.
            reasoning = (split.reasoning or "") if prompt.thinking_mode != "off" else None
            revisions.append(Completion(text=split.answer, reasoning=reasoning, finish_reason=group[0].finish_reason,
                                        completion_tokens=group[0].completion_tokens))
        results = rewards.score([ScoreItem(p, c) for (p, _), c in zip(chunk, revisions, strict=True)])
        return [{"id": p.id, "index": i, "completion": c.to_dict(), "result": r}
                for (p, i), c, r in zip(chunk, revisions, results, strict=True)]

    try:
        records, _ = run_incremental(
            targets, key=lambda t: t[0].id, work=work,
            store=JsonlStore(round_dir / "revisions.jsonl", {**signature, "revise": settings.model_dump(mode="json")}),
            chunk_size=settings.batch_size, desc="revise",
        )
    finally:
        reviser.close()
    return records


# --------------------------------------------------------------------------- training


def train_round(config: PreferenceStageConfig, ctx: StageContext, round_dir: Path, policy: Path, train_path: Path,
                seed: int) -> dict[str, Scalar]:
    """Train one round with DPO in a launched process group; returns the training headline."""
    plan = train_plan(ctx, trainer="dpo", start_model=policy, train_data=train_path, out_dir=round_dir,
                      train_args=config.train_args(), seed=seed)
    for path in remove_incomplete_checkpoints(plan.checkpoints_dir, [ctx.stage_dir]):
        ctx.log.warning("removed incomplete checkpoint %s (interrupted while saving)", path.name)
    plan_path = plan.write(round_dir / TRAIN_PLAN)
    ctx.launch(WORKER, ["--plan", str(plan_path)], round_dir / LOGS_DIR / "train.log")
    return TrainOutcome.read(plan.final_dir).headline()


def _round_headline(summary: RoundSummary) -> dict[str, Scalar]:
    return {
        "prompts": summary.prompts,
        "pairs": summary.pairs,
        "pair_fraction": summary.pair_fraction,
        "chosen_reward_mean": summary.chosen_reward_mean,
        "rejected_reward_mean": summary.rejected_reward_mean,
        "sample_reward_mean": summary.sample_reward_mean,
        "train_loss": summary.train.get("train_loss"),
        **{key: summary.train[key] for key in SUMMARY_KEYS if key in summary.train},
    }


# --------------------------------------------------------------------------- files


def _save_pairs_dataset(rows: list[dict[str, Any]], path: Path, stage_dir: Path) -> Path:
    """trl's conversational preference columns only, saved for the training processes."""
    import datasets

    columns = ("prompt", "chosen", "rejected", "chat_template_kwargs")
    dataset = datasets.Dataset.from_list([{k: row[k] for k in columns} for row in rows])
    with staging_dir(path, inside=[stage_dir]) as tmp:
        dataset.save_to_disk(str(tmp))
    return path


def _throughput(stats: dict[str, Any]) -> str:
    if not stats.get("seconds"):
        return "(nothing left to do)"
    parts = [f"in {stats['seconds']:.1f}s", f"{stats.get('samples_per_s', 0):.1f} samples/s"]
    if stats.get("tokens"):
        parts.append(f"{stats.get('tokens_per_s', 0):.0f} tok/s")
    return "(" + ", ".join(parts) + ")"


