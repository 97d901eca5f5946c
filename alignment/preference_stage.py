"""The `preference` stage: an optional offline round, then N rounds of on-policy sampling -> rewards -> pairs -> DPO.

With ``offline:``, round 1 trains on an existing chosen/rejected dataset (``round-1/pairs.jsonl``,
``rejects.jsonl``, ``stats.json``, see :mod:`tempa.alignment.offline_pairs`); the on-policy rounds
follow it. On-policy round K lives in ``<stage>/round-K/``::

    samples.jsonl       k samples per prompt from the round's policy (appended per batch; resumable; keyed by
                        each prompt's content and mode, so an edited prompts file samples only what is new)
    scores.jsonl        every sample's reward scores and total (appended per batch; resumable, keyed alike)
    revisions.jsonl     (strategy revise) the rewrite of each prompt's worst sample, scored
    pairs.jsonl         chosen/rejected pairs with their scores, finish reasons and rendered check (readable)
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

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tempa.alignment.backends import HTTPBackendConfig, LazyBackend, SamplingBackend, build_backend, sample_at
from tempa.alignment.backends_http import HTTPBackend, check_endpoint
from tempa.alignment.completions import Completion, assistant_message, split_think
from tempa.alignment.input_checks import check_reward_inputs, check_tool_prompts
from tempa.alignment.judge import JUDGE_REPLIES, fill
from tempa.alignment.offline_pairs import IDENTICAL_PAIR, load_offline_pairs
from tempa.alignment.pair_rendering import completion_ids, rendered_check
from tempa.alignment.pairs import (
    ALL_EQUAL,
    INCOMPLETE,
    Pair,
    PairStats,
    Scored,
    best_worst,
    revision_pair,
    worst,
)
from tempa.alignment.preference_config import PreferenceStageConfig
from tempa.alignment.prompts import PromptRow, keyed_by_content, load_prompts
from tempa.alignment.rewards import (
    JudgeReward,
    RewardSet,
    ScoreItem,
    ScoringEnv,
    check_judges,
    judge_failures,
    judge_stats,
    reward_summary,
)
from tempa.alignment.sampling import (
    JsonlStore,
    Signed,
    batch_seed,
    completions_of,
    run_incremental,
    sample_prompts,
    score_pass,
)
from tempa.chat_templates.thinking import mode_kwargs
from tempa.sft.checkpoints import complete_checkpoints, resume_point
from tempa.sft.data_config import DataError
from tempa.sft.files import json_or_none, point_link, staging_dir, write_json, write_jsonl
from tempa.sft.global_batch import per_device_batch, rows_per_step
from tempa.sft.kernels import KERNEL_KEYS
from tempa.sft.run_layout import CHECKPOINTS_DIR, FINAL_DIR
from tempa.sft.stage import launch_training
from tempa.sft.stage_api import (
    RunPath,
    Scalar,
    StageContext,
    StageError,
    StageResult,
    fingerprinted,
    format_metric,
)
from tempa.sft.throughput_summary import SUMMARY_KEYS, combined_headline
from tempa.sft.train_plan import OUTCOME_FILE, TrainOutcome, TrainPlan, train_plan

__all__ = ["PreferenceResult", "PreferenceStageConfig", "RoundSummary", "run_preference"]


class RoundSummary(BaseModel):
    """One preference round, as later stages and the report see it."""

    model_config = ConfigDict(extra="forbid")

    round: int
    source: Literal["on_policy", "offline"] = "on_policy"
    model: RunPath = Field(description="The round's trained policy (the next round starts from it).")
    reference: RunPath | None = Field(default=None, description="The DPO reference when it is not the round's "
                                      "starting policy (`reference: stage_start`).")
    prompts: int = Field(description="Prompts sampled (offline: dataset rows read).")
    pairs: int
    pair_fraction: float
    chosen_reward_mean: float | None = None
    rejected_reward_mean: float | None = None
    margin_mean: float | None = None
    sample_reward_mean: float | None = None
    dropped: dict[str, int] = Field(description="Prompts (offline: rows) without a pair, by reason.")
    reward_means: dict[str, float | None] = Field(default_factory=dict)
    samples: int = 0
    truncated: int = Field(default=0, description="Samples cut off at max_new_tokens (never in a pair).")
    incomplete: int | None = Field(default=None, description="Samples out of the running (never in a pair): the "
                                   "truncated ones, and those whose think block the template would close or refuse; "
                                   "None for offline rounds (and rounds of runs older than the count).")
    truncated_fraction: float = 0.0
    identical_renderings: int = Field(default=0, description="Prompts where a sample rendered to the same tokens "
                                      "as the chosen one (never its rejected side); offline: identical_pair rows.")
    judges: dict[str, float | int] = Field(default_factory=dict, description="Per judge: replies, unparsable, "
                                           "unparsable_fraction.")
    train: dict[str, Scalar] = Field(description="The DPO training headline (losses, DPO rewards, accuracies).")
    pairs_trained: int | None = Field(default=None, description="Pairs DPO took: all of them, or fewer where "
                                      "max_steps ended training first; None where the launch did not say (rounds "
                                      "of runs older than the count).")

    def cut_short(self) -> str | None:
        """What max_steps left untrained, for the stage log and the run's closing notes; None when DPO took every
        pair (`pairs` said 12 where max_steps 3 x batch 2 had trained 6, and nothing said so)."""
        if self.pairs_trained is None or self.pairs_trained >= self.pairs:
            return None
        steps = self.train.get("global_step")
        return (f"round {self.round}: DPO trained on {self.pairs_trained} of its {self.pairs} pairs: max_steps "
                f"{steps} ended training before one pass over them; raise train.max_steps (or leave it out) to "
                "train on every pair")


class PreferenceResult(StageResult):
    """A preference stage's result: the last round's policy, and every round's summary."""

    rounds: list[RoundSummary]


def run_preference(config: PreferenceStageConfig, ctx: StageContext) -> PreferenceResult:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctx.tokenizer_dir)
    prompts: list[PromptRow] = []
    if config.rounds:
        assert config.prompts is not None  # the config requires prompts for on-policy rounds
        source = config.prompts.resolved(ctx, who=f"stage '{ctx.stage_name}'")
        prompts = keyed_by_content(load_prompts(source, seed=ctx.seed, thinking=config.sampling.thinking,
                                                with_tools=True))
        check_reward_inputs(config.rewards, prompts, source)
        check_tool_prompts(config, prompts, source)
        ctx.log.info("preference: %d prompts, %d samples each, %d on-policy round(s)", len(prompts),
                     config.sampling.n, config.rounds)
    start = Path(ctx.start_model)
    policy = start
    rounds: list[RoundSummary] = []
    first_on_policy = 1 + (config.offline is not None)
    for round_index in range(1, first_on_policy + config.rounds):
        round_dir = ctx.stage_dir / f"round-{round_index}"
        # Round 1 starts from the stage's model, so its reference is that model either way.
        reference = start if config.reference == "stage_start" and round_index > 1 else None
        stats = _finished_round(round_dir)
        if stats is not None:
            ctx.log.info("round %d: already trained; reusing %s", round_index, round_dir / FINAL_DIR)
        elif round_index < first_on_policy:
            stats = run_offline_round(config, ctx, round_index, policy, tokenizer)
        else:
            stats = run_round(config, ctx, round_index, policy, prompts, tokenizer, reference)
        policy = round_dir / FINAL_DIR
        rounds.append(_summary(stats, policy))
        if (note := rounds[-1].cut_short()) is not None:
            ctx.log.warning("%s", note)
    # The stage's own final/ and checkpoints/ are the last round's, as for an sft stage.
    point_link(ctx.stage_dir / FINAL_DIR, policy)
    last_checkpoints = policy.parent / CHECKPOINTS_DIR
    if last_checkpoints.is_dir():
        point_link(ctx.stage_dir / CHECKPOINTS_DIR, last_checkpoints)
    last = rounds[-1]
    metrics: dict[str, Scalar] = {
        **preference_headline(rounds),
        **{key: last.train[key] for key in KERNEL_KEYS if key in last.train},
        **combined_headline([summary.train for summary in rounds]),  # the stage's throughput, over every round
    }
    for summary in rounds:  # flat keys, so trackers and `tempa status` show them as numbers
        metrics.update({f"round{summary.round}_{key}": value for key, value in _round_headline(summary).items()})
    files = {f"pairs_round_{r.round}": ctx.stage_dir / f"round-{r.round}" / "pairs.jsonl" for r in rounds}
    notes = [note for summary in rounds if (note := summary.cut_short()) is not None]
    return PreferenceResult(model=policy, checkpoints=complete_checkpoints(policy.parent / CHECKPOINTS_DIR),
                            metrics=metrics, files=files, rounds=rounds, notes=notes)


SAMPLES_FILE = "samples.jsonl"
SCORES_FILE = "scores.jsonl"
REVISIONS_FILE = "revisions.jsonl"


def check_judge_servers(config: PreferenceStageConfig, where: str) -> None:
    """Every judge behind an HTTP server can be reached (:func:`check_endpoint`, as the teacher stages reach theirs),
    before the round samples: a judge server that is down (not started, a wrong port) was found only when scoring
    began, after the policy had sampled every prompt."""
    for index, reward in enumerate(config.rewards):
        if isinstance(reward, JudgeReward) and isinstance(reward.backend, HTTPBackendConfig):
            check_endpoint(HTTPBackend.from_config(reward.backend, show_progress=False), f"judge '{reward.key}'",
                           f"rewards[{index}].backend", where)


def preference_resume_point(stage_dir: Path) -> str | None:
    """Where a re-run of an unfinished preference stage continues (`tempa status`, `tempa plan`): the first round not
    yet trained, with its last complete checkpoint or the samples it has journaled; None when nothing is kept."""
    rounds = sorted((int(path.name.removeprefix("round-")), path) for path in Path(stage_dir).glob("round-*")
                    if path.name.removeprefix("round-").isdigit())
    if not rounds:
        return None
    index, round_dir = next(((i, d) for i, d in rounds if _finished_round(d) is None), rounds[-1])
    if _finished_round(round_dir) is not None:
        return f"round {index}'s model (every round it started is trained)"
    before = " (the rounds before it are trained)" if index > 1 else ""
    checkpoint = resume_point(round_dir)
    if checkpoint is not None:
        return f"round {index}, {checkpoint}{before}"
    samples = round_dir / SAMPLES_FILE  # one line per prompt sampled (a torn last line is not counted)
    sampled = 0
    if samples.is_file():
        with samples.open("rb") as lines:
            sampled = sum(line.endswith(b"\n") for line in lines)
    if sampled:
        return f"round {index}, {sampled:,} prompt{'s' if sampled != 1 else ''} sampled{before}"
    return f"round {index}{before}" if index > 1 else None


def preference_journals(stage_dir: Path) -> list[Path]:
    """The journals a changed preference stage keeps: the first round's samples, scores and revisions, drawn from the
    stage's start model (their signatures name it by the run that made it, and hold every setting they depend on).
    A later round samples a policy the stage trained itself, with the settings that changed: its folder goes whole, as
    do the pairs, the trained models and the checkpoints of every round."""
    first = Path(stage_dir) / "round-1"
    return [file for name in (SAMPLES_FILE, SCORES_FILE, REVISIONS_FILE) for file in JsonlStore.files(first / name)] + \
        [file for file in (first / JUDGE_REPLIES,) if file.is_file()]


def _finished_round(round_dir: Path) -> dict[str, Any] | None:
    stats_file = round_dir / "stats.json"
    if not (round_dir / FINAL_DIR / OUTCOME_FILE).is_file() or not stats_file.is_file():
        return None
    stats = json_or_none(stats_file)
    return stats if isinstance(stats, dict) and "train" in stats else None


def _summary(stats: dict[str, Any], model: Path) -> RoundSummary:
    fields = set(RoundSummary.model_fields) - {"model"}
    return RoundSummary(model=model, **{key: stats[key] for key in fields if key in stats})


def run_offline_round(config: PreferenceStageConfig, ctx: StageContext, round_index: int, policy: Path,
                      tokenizer: Any) -> dict[str, Any]:
    """Curate the offline dataset into pairs (rejects with reasons) and train one round on them."""
    assert config.offline is not None
    round_dir = ctx.stage_dir / f"round-{round_index}"
    round_dir.mkdir(parents=True, exist_ok=True)
    label = f"round {round_index} (offline)"
    try:
        loaded = load_offline_pairs(config.offline, tokenizer, cache_dir=ctx.cache_dir)
    except DataError as exc:
        raise StageError(f"{ctx.stage_name}.offline: {exc}") from None
    write_jsonl(round_dir / "pairs.jsonl", loaded.rows)
    write_jsonl(round_dir / "rejects.jsonl", loaded.rejects)
    dropped = loaded.dropped()
    stats: dict[str, Any] = {
        "round": round_index, "source": "offline", "policy": str(policy), "data": config.offline.path,
        "prompts": loaded.read, "pairs": len(loaded.rows),
        "pair_fraction": round(len(loaded.rows) / loaded.read, 6) if loaded.read else 0.0,
        "dropped": dropped, "identical_renderings": dropped.get(IDENTICAL_PAIR, 0),
    }
    write_json(round_dir / "stats.json", stats)
    ctx.log.info("%s: %d pairs from %d rows; rejected %s%s", label, len(loaded.rows), loaded.read, dropped or "none",
                 f" (each named in {round_dir / 'rejects.jsonl'})" if dropped else "")
    if not loaded.rows:
        raise StageError(f"{label}: no usable pair in {config.offline.path} (rejected: {dropped}); "
                         f"see {round_dir / 'rejects.jsonl'}")
    train_path = _save_pairs_dataset(loaded.rows, round_dir / "data" / "pairs", ctx.stage_dir)
    stats["train"], stats["pairs_trained"] = train_round(config, ctx, round_dir, policy, train_path, ctx.seed, None,
                                                         len(loaded.rows))
    write_json(round_dir / "stats.json", stats)
    return stats


def run_round(
    config: PreferenceStageConfig,
    ctx: StageContext,
    round_index: int,
    policy: Path,
    prompts: list[PromptRow],
    tokenizer: Any,
    reference: Path | None = None,
) -> dict[str, Any]:
    """Sample, score, pair and train one round; returns its stats (also in round-K/stats.json)."""
    round_dir = ctx.stage_dir / f"round-{round_index}"
    round_dir.mkdir(parents=True, exist_ok=True)
    seed = ctx.seed + 7919 * (round_index - 1)
    label = f"round {round_index}"
    # Not the prompts: their ids go by content and mode (keyed_by_content), so a prompt added to or removed from the
    # file is sampled, or left unused in the journals, and no other prompt's samples or scores are asked again.
    # The policy by the run that made it (the stage's start model keeps its folder when its stage trains again).
    base = {"policy": ctx.model_run(policy), "models": ctx.model_runs_of(), "seed": seed,
            "backend": fingerprinted(config.backend)}
    signature = Signed({**base, "sampling": config.sampling.journaled()},
                       {**base, "sampling": config.sampling.model_dump(mode="json")})  # as an earlier tempa signed it
    score_signature = signature.plus(rewards=[fingerprinted(r) for r in config.rewards])
    if any(isinstance(reward, JudgeReward) for reward in config.rewards):
        # Ratings read by the unambiguous-[[N]] rule: a journal of ratings an earlier tempa read off any "[2]" in a
        # reply is scored again from the judge's replies, none of them bought again (its ReplyJournal is its own).
        score_signature = score_signature.plus(judge_rating="unambiguous")
    # Samples that cannot take part in a pair (cut off, or a think block the template would close) are not judged:
    # each judge call is paid for. A journal that judged them all, as an earlier tempa did, is kept.
    judged = score_signature.newly(judged="renders_as_written")

    # A scores journal marked complete may still lack prompts added to the file since: their judging is still ahead.
    if not JsonlStore.holds(round_dir / SCORES_FILE, judged, [p.id for p in prompts]):
        check_judge_servers(config, f"{ctx.stage_name} {label}")

    # 1. sample k responses per prompt from the current policy
    policy_backend = LazyBackend(lambda: build_backend(
        config.backend, policy_dir=policy, tokenizer_dir=ctx.tokenizer_dir, stage_models=ctx.stage_models,
        trust_remote_code=ctx.trust_remote_code, who=f"{ctx.stage_name} backend"))
    try:
        samples, sample_stats = sample_prompts(
            prompts, policy_backend, config.sampling.params(seed), JsonlStore(round_dir / SAMPLES_FILE, signature),
            desc=f"{label}: sample",
        )
    finally:
        policy_backend.close()
    ctx.log.info("%s: sampled %d prompts (%d resumed) %s", label, len(samples), sample_stats["resumed"],
                 _throughput(sample_stats))

    # 2. score every sample
    rewards = RewardSet(config.rewards, ScoringEnv(
        policy_dir=policy, tokenizer_dir=ctx.tokenizer_dir, stage_models=ctx.stage_models,
        trust_remote_code=ctx.trust_remote_code, seed=seed, tokenizer=tokenizer, replies_dir=round_dir,
        replies_identity={"policy": ctx.model_run(policy), "models": ctx.model_runs_of()}))
    try:
        scores, score_stats = score_pass(
            prompts, samples, rewards, JsonlStore(round_dir / SCORES_FILE, judged),
            chunk_size=config.sampling.batch_size, desc=f"{label}: score",
            unused=lambda completion: not completion.renders_as_written,
        )
        revisions = None
        if config.pairs.strategy == "revise":
            revisions = _revise(config, ctx, policy, prompts, samples, scores, rewards, round_dir,
                                score_signature, seed)
        backend_stats = rewards.stats()
    finally:
        rewards.close()
    check_judges(config.rewards, scores, f"{ctx.stage_name} {label}")
    ctx.log.info("%s: scored %d samples %s%s", label, sum(len(s["results"]) for s in scores), _throughput(score_stats),
                 _unrated(config.rewards, scores))

    # 3. build pairs
    rows, pair_stats = build_round_pairs(config, prompts, samples, scores, revisions, tokenizer)
    write_jsonl(round_dir / "pairs.jsonl", rows)
    stats: dict[str, Any] = {
        "round": round_index,
        "source": "on_policy",
        "policy": str(policy),
        "reference": str(reference) if reference is not None else None,
        **pair_stats.summary(),
        **reward_summary(config.rewards, scores),
        "finish_reasons": dict(Counter(c.get("finish_reason") or "unknown" for s in samples
                                       for c in s["completions"])),
        "sampling": sample_stats,
        "scoring": {**score_stats, **backend_stats},
        "judges": judge_stats(config.rewards, scores),
    }
    write_json(round_dir / "stats.json", stats)
    ctx.log.info(
        "%s: %d pairs from %d prompts (%.0f%%); mean reward chosen %s, rejected %s; dropped %s", label,
        stats["pairs"], stats["prompts"], 100 * stats["pair_fraction"], format_metric(stats["chosen_reward_mean"]),
        format_metric(stats["rejected_reward_mean"]), stats["dropped"] or "none",
    )
    if not rows:
        raise StageError(
            f"{label}: no usable preference pair from {len(prompts)} prompts (dropped: {stats['dropped']})"
            f"{_no_pairs_hint(stats, config.sampling.max_new_tokens)}; see {round_dir / 'stats.json'}"
        )

    # 4. train with DPO in a launched process group
    train_path = _save_pairs_dataset(rows, round_dir / "data" / "pairs", ctx.stage_dir)
    stats["train"], stats["pairs_trained"] = train_round(config, ctx, round_dir, policy, train_path, seed, reference,
                                                         len(rows))
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
    """The pairs dataset rows (scores, finish reasons, rendered check included) and the round's statistics.

    Every sample is rendered as trl will train it; samples that would get an ending they never
    wrote (cut off, or an open think block) or that the template refuses are out of the running.
    """
    stats = PairStats()
    rows: list[dict[str, Any]] = []
    revised = {r["id"]: r for r in revisions or []}
    for prompt, sample, score in zip(prompts, samples, scores, strict=True):
        kwargs = mode_kwargs(prompt.thinking_mode or "on")
        completions = completions_of(sample)
        results = score["results"]
        scored = [_scored(i, r["scores"]["total"], c, prompt, kwargs, tokenizer)
                  for i, (c, r) in enumerate(zip(completions, results, strict=True))]
        chosen_completion: Completion | None = None
        chosen_scores: dict[str, Any] = {}
        chosen_rendered: Scored | None = None
        if config.pairs.strategy == "revise":
            revision = revised.get(prompt.id)
            if revision is None:
                pair, reason = None, "no_revision"
            else:
                chosen_completion = Completion.from_dict(revision["completion"])
                chosen_scores = revision["result"]["scores"]
                chosen_rendered = _scored(-1, chosen_scores["total"], chosen_completion, prompt, kwargs, tokenizer)
                pair, reason = revision_pair(scored[revision["index"]], chosen_rendered,
                                             min_margin=config.pairs.min_margin)
        else:
            pair, reason = best_worst(scored, min_margin=config.pairs.min_margin)
            if pair is not None:
                chosen_completion = completions[pair.chosen]
                chosen_scores = results[pair.chosen]["scores"]
                chosen_rendered = scored[pair.chosen]
        stats.add(pair, reason, scored, truncated=sum(c.truncated for c in completions))
        if pair is not None and chosen_completion is not None and chosen_rendered is not None:
            rejected = scored[pair.rejected]
            assert chosen_rendered.rendered is not None and rejected.rendered is not None
            rows.append(pair_row(prompt, pair, chosen_completion, completions[pair.rejected], chosen_scores,
                                 results[pair.rejected]["scores"],
                                 rendered_check(chosen_rendered.rendered, rejected.rendered)))
    return rows, stats


def _scored(index: int, total: float | None, completion: Completion, prompt: PromptRow, kwargs: dict[str, Any],
            tokenizer: Any) -> Scored:
    rendered = completion_ids(tokenizer, prompt.messages, [assistant_message(completion)], kwargs, tools=prompt.tools)
    return Scored(index, total, incomplete=not completion.renders_as_written or rendered is None, rendered=rendered)


def pair_row(prompt: PromptRow, pair: Pair, chosen: Completion, rejected: Completion,
             chosen_scores: dict[str, Any], rejected_scores: dict[str, Any],
             rendered: dict[str, Any]) -> dict[str, Any]:
    """One row of the pairs dataset: trl's conversational format plus scores and provenance."""
    mode = prompt.thinking_mode or "on"
    return {
        "prompt_id": prompt.id,
        "row": prompt.meta.get("row"),  # the id goes by content; where the prompt is in the file
        "prompt": prompt.messages,
        "tools": prompt.tools,
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
        "chosen_finish_reason": chosen.finish_reason,
        "rejected_finish_reason": rejected.finish_reason,
        "rendered": rendered,
        "language": prompt.language,
    }


# --------------------------------------------------------------------------- revise


def _revise(config: PreferenceStageConfig, ctx: StageContext, policy: Path, prompts: list[PromptRow],
            samples: list[dict[str, Any]], scores: list[dict[str, Any]], rewards: RewardSet, round_dir: Path,
            signature: Signed, seed: int) -> list[dict[str, Any]]:
    """Rewrite each prompt's worst sample with the reviser and score the rewrite (resumable)."""
    settings = config.pairs.revise
    assert settings is not None
    by_id = {s["id"]: (completions_of(s), sc["results"]) for s, sc in zip(samples, scores, strict=True)}
    targets: list[tuple[PromptRow, int]] = []
    for prompt in prompts:
        completions, results = by_id[prompt.id]
        bottom = worst([Scored(i, r["scores"]["total"], incomplete=not c.renders_as_written)
                        for i, (c, r) in enumerate(zip(completions, results, strict=True))])
        if bottom is not None:
            targets.append((prompt, bottom.index))
    reviser: SamplingBackend = LazyBackend(lambda: build_backend(
        settings.backend, policy_dir=policy, tokenizer_dir=ctx.tokenizer_dir,
        stage_models=ctx.stage_models, trust_remote_code=ctx.trust_remote_code, who="pairs.revise"))
    from tempa.alignment.generation import GenerationParams

    def work(chunk: list[tuple[PromptRow, int]], index: int, places: list[int], **_: Any) -> list[dict[str, Any]]:
        # A record holds the rewrite's score too, so it is journaled once its batch is rated.
        params = GenerationParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, n=1,
                                  seed=batch_seed(seed, index), thinking_mode=settings.thinking_mode,
                                  batch_size=settings.batch_size)
        requests = [[{"role": "user", "content": fill(settings.prompt, question=p.question,
                                                      answer=split_think(by_id[p.id][0][i]).answer,
                                                      language=p.language)}] for p, i in chunk]
        outputs = sample_at(reviser, requests, params, places)
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
            store=JsonlStore(round_dir / REVISIONS_FILE, signature.plus(revise=fingerprinted(settings))),
            chunk_size=settings.batch_size, desc="revise",
        )
    finally:
        reviser.close()
    return records


# --------------------------------------------------------------------------- training


def train_round(config: PreferenceStageConfig, ctx: StageContext, round_dir: Path, policy: Path, train_path: Path,
                seed: int, reference: Path | None, pairs: int) -> tuple[dict[str, Scalar], int | None]:
    """Train one round with DPO in a launched process group on its ``pairs`` pairs; returns the training headline and
    the pairs it trained on (:func:`pairs_trained`).

    ``reference``: the frozen DPO reference when it is not ``policy`` (None: trl's default, the
    starting policy, or with LoRA the policy with its adapters disabled)."""
    plan = train_plan(ctx, trainer="dpo", start_model=policy, train_data=train_path, out_dir=round_dir,
                      train_args=config.train_args(), seed=seed, lora=config.lora, reference_model=reference)
    outcome = launch_training(plan, ctx)
    return outcome.headline(), pairs_trained(plan, outcome, pairs)


def pairs_trained(plan: TrainPlan, outcome: TrainOutcome, pairs: int) -> int | None:
    """The pairs a round's DPO took: every one, unless ``max_steps`` ended training first, then max_steps x the pairs
    of an optimizer step (per-device batch x gradient accumulation x data-parallel processes, as the launch ran:
    the launch's global batch where the recipe set one). None where the launch did not say how many processes ran
    (a final model an earlier tempa wrote)."""
    args = plan.train_args
    max_steps = args.get("max_steps") or -1  # trl's default, -1: the epochs decide
    if max_steps <= 0:
        return pairs
    if plan.env.global_batch_size is not None:
        per_step = plan.env.global_batch_size
    elif outcome.shards is not None:
        per_step = rows_per_step(per_device_batch(args), int(args.get("gradient_accumulation_steps") or 1),
                                 len(outcome.shards.per_rank), outcome.shards.sequence_parallel)
    else:
        return None
    return min(pairs, max_steps * per_step)


LAST_ROUND = "last_round_"  # the prefix of a preference headline's last-round values


def preference_headline(rounds: Sequence[RoundSummary]) -> dict[str, Scalar]:
    """A preference stage's headline, the one home of it for metrics.json (so `tempa status` and the report) and the
    model card: the plain names are totals over every round (`pair_fraction` is all the pairs over all the prompts,
    offline rows included), the last round's values (the policy the stage ends with) are named `last_round_*`.
    Mixing the two put `pairs=19` (8 + 11) beside round 2's `pair_fraction=0.4583` (11/24; over both rounds
    19/48 = 0.3958). The first keys are the ones `tempa status` and the report's stage table have room for."""
    last = rounds[-1]
    prompts, pairs = sum(r.prompts for r in rounds), sum(r.pairs for r in rounds)
    return {
        "pairs": pairs,
        "prompts": prompts,
        "pair_fraction": round(pairs / prompts, 6) if prompts else 0.0,
        f"{LAST_ROUND}pair_fraction": last.pair_fraction,
        f"{LAST_ROUND}chosen_reward_mean": last.chosen_reward_mean,
        f"{LAST_ROUND}rejected_reward_mean": last.rejected_reward_mean,
        f"{LAST_ROUND}train_loss": last.train.get("train_loss"),
        "rounds": len(rounds),
    }


def _round_headline(summary: RoundSummary) -> dict[str, Scalar]:
    return {
        "prompts": summary.prompts,
        "pairs": summary.pairs,
        "pair_fraction": summary.pair_fraction,
        "chosen_reward_mean": summary.chosen_reward_mean,
        "rejected_reward_mean": summary.rejected_reward_mean,
        "sample_reward_mean": summary.sample_reward_mean,
        "truncated_fraction": summary.truncated_fraction,
        "identical_renderings": summary.identical_renderings,
        **{key: value for key, value in summary.judges.items() if key.endswith("_unparsable_fraction")},
        "pairs_trained": summary.pairs_trained,
        "train_loss": summary.train.get("train_loss"),
        **{key: summary.train[key] for key in SUMMARY_KEYS if key in summary.train},
    }


# --------------------------------------------------------------------------- files


def _no_pairs_hint(stats: Mapping[str, Any], max_new_tokens: int) -> str:
    """What to change when a round made no pair: its samples were cut off, or every prompt's samples scored alike
    ('' otherwise)."""
    parts = []
    if INCOMPLETE in stats["dropped"]:
        stopped = stats["finish_reasons"].get("length", 0)
        total = sum(stats["finish_reasons"].values())
        open_think = max(0, stats["incomplete"] - stopped)  # out of the running: a think block the template would close
        if stopped:
            parts.append(f"{stopped} of {total} samples stopped at sampling.max_new_tokens ({max_new_tokens}); raise it")
        if open_think:
            parts.append(f"{open_think} of {total} ended inside an open think block, which the template would close, "
                         "so they cannot be trained as written")
    if ALL_EQUAL in stats["dropped"]:
        parts.append(f"on {stats['dropped'][ALL_EQUAL]} prompt(s) every sample scored the same, so the rewards cannot "
                     "rank them: add a reward that varies between answers (a judge, a length penalty) or sample more "
                     "differently (sampling.n, sampling.temperature)")
    return ": " + "; ".join(parts) if parts else ""


def _save_pairs_dataset(rows: list[dict[str, Any]], path: Path, stage_dir: Path) -> Path:
    """trl's conversational preference columns only, saved for the training processes.

    ``tools`` is JSON text (None without any), as trl's DPOTrainer accepts it: as a column of objects Arrow
    would widen every definition to the union of all rows' keys and trl would render the nulls."""
    import datasets

    columns = ("prompt", "chosen", "rejected", "chat_template_kwargs")
    dataset = datasets.Dataset.from_list([
        {**{k: row[k] for k in columns},
         "tools": json.dumps(row["tools"], ensure_ascii=False) if row.get("tools") else None}
        for row in rows])
    with staging_dir(path, inside=[stage_dir]) as tmp:
        dataset.save_to_disk(str(tmp))
    return path


def _unrated(rewards: list[Any], scores: list[dict[str, Any]]) -> str:
    """Per judge, its replies without a rating (those samples are never paired), for the round's log line; a share
    under max_unparsable was in stats.json and the report only."""
    counts = [f"judge '{key}' gave no rating in {f.unparsable} of {f.replies} replies (never paired"
              + (f"; {f.out_of_range} out of range 1-10)" if f.out_of_range else ")")
              for key, f in judge_failures(rewards, scores).items() if f.unparsable]
    return "; " + "; ".join(counts) if counts else ""


def _throughput(stats: dict[str, Any]) -> str:
    if not stats.get("seconds"):
        return "(nothing left to do)"
    parts = [f"in {stats['seconds']:.1f}s", f"{stats.get('samples_per_s', 0):.1f} samples/s"]
    if stats.get("tokens"):
        parts.append(f"{stats.get('tokens_per_s', 0):.0f} tok/s")
    return "(" + ", ".join(parts) + ")"


