"""The `synthesize` stage: teacher generation + verifier/judge rejection sampling -> an SFT dataset.

Everything goes under ``<stage>/data/``::

    samples.jsonl          n teacher responses per prompt (appended per batch; resumable)
    scores.jsonl           their reward scores (appended per batch; resumable)
    followups.jsonl        (second_turn) the teacher's follow-up user message per kept conversation
    second_samples.jsonl   (second_turn) answers to the follow-ups
    second_scores.jsonl    (second_turn) their scores
    synthesized.jsonl      THE OUTPUT: one SFT row per kept response (see below)
    rejects.jsonl          prompts (or second turns) that were not kept, with the reason
    stats.json             counts, kept share, reward means, throughput, judge unparsable counts

A row of ``synthesized.jsonl``::

    {"messages": [{"role": "user", "content": ...},
                  {"role": "assistant", "content": <answer>, "reasoning_content": <reasoning or null>},
                  ...second turn...],
     "language": "id", "thinking_mode": "on",
     "scores": {"turn1": {<reward>: ..., "total": ...}, "turn2": {...}},
     "provenance": {"stage", "teacher", "prompt_id", "row", "sample_index", "n", "seed", "source", ...}}

It is a `messages`-format source for a later `sft` stage (reasoning in `reasoning_content`, as the
sft data pipeline reads it); the stage returns its path as ``outputs["dataset"]``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from tempa.alignment.backends import LazyBackend, build_backend, describe_backend, sample_at
from tempa.alignment.backends_http import CONTENT_FILTER
from tempa.alignment.completions import Completion, assistant_message, split_think
from tempa.alignment.generation import GenerationParams
from tempa.alignment.input_checks import check_reward_inputs
from tempa.alignment.judge import JUDGE_REPLIES, fill, render_conversation
from tempa.alignment.prompts import PromptRow, keyed_by_content, load_prompts
from tempa.alignment.rewards import (
    JudgeReward,
    RewardSet,
    ScoringEnv,
    check_judges,
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
from tempa.alignment.selection import UNSCORED, select_samples
from tempa.alignment.synthesize_config import OUTPUT_FILE, SynthesizeStageConfig
from tempa.alignment.teacher_text import check_servers, journals_resume_point
from tempa.sft.curation import check_reasoning
from tempa.sft.files import write_json, write_jsonl
from tempa.sft.formats import composed
from tempa.sft.stage_api import StageContext, StageError, StageResult, fingerprinted

__all__ = ["SynthesizeResult", "SynthesizeStageConfig", "run_synthesize", "synthesize_resume_point"]


class SynthesizeResult(StageResult):
    """A synthesize stage's result: the SFT dataset it wrote (``dataset``), how many rows it holds, and what
    was kept and rejected, by reason (the report shows them)."""

    rows: int
    prompts: int = 0
    kept_prompts: int = 0
    rejected: dict[str, int] = Field(default_factory=dict, description="Rejected prompts (or second turns) by "
                                     "reason (rejects.jsonl).")
    truncated: int = Field(default=0, description="Teacher samples cut off at max_new_tokens.")
    samples: int = 0
    judges: dict[str, float | int] = Field(default_factory=dict, description="Per judge: replies, unparsable, "
                                           "unparsable_fraction (first turns).")

SAMPLES, SCORES, FOLLOWUPS = "samples.jsonl", "scores.jsonl", "followups.jsonl"
SECOND_SAMPLES, SECOND_SCORES = "second_samples.jsonl", "second_scores.jsonl"
EMPTY_FOLLOWUP = "empty_followup"
INCOMPLETE = "incomplete"  # every response was cut off or had no answer
JUDGE_UNPARSABLE = "judge_unparsable"  # no response got a judge rating


def run_synthesize(config: SynthesizeStageConfig, ctx: StageContext) -> SynthesizeResult:
    from transformers import AutoTokenizer

    data_dir = ctx.stage_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(ctx.tokenizer_dir)
    source = config.prompts.resolved(ctx, who=f"stage '{ctx.stage_name}'")
    prompts = keyed_by_content(load_prompts(source, seed=ctx.seed, thinking=config.sampling.thinking))
    check_reward_inputs(config.rewards, prompts, source)
    check_servers(ctx, servers(config))
    teacher_name = describe_backend(config.teacher, ctx.start_model)
    ctx.log.info("synthesize: %d prompts, %d samples each, teacher %s", len(prompts), config.sampling.n,
                 teacher_name)

    def make_teacher():
        return build_backend(config.teacher, policy_dir=ctx.start_model, tokenizer_dir=ctx.tokenizer_dir,
                             stage_models=ctx.stage_models, trust_remote_code=ctx.trust_remote_code, who="teacher")

    teacher = LazyBackend(make_teacher, describe=teacher_name)
    env = ScoringEnv(policy_dir=ctx.start_model, tokenizer_dir=ctx.tokenizer_dir, stage_models=ctx.stage_models,
                     trust_remote_code=ctx.trust_remote_code, seed=ctx.seed, tokenizer=tokenizer,
                     replies_dir=data_dir, replies_identity=ctx.model_runs_of())
    # The teacher as far as it shapes the samples: a run resumed with more concurrency keeps what it has paid for. The
    # prompts are not in it: their ids go by content (keyed_by_content), so an edited file re-asks only what changed.
    # The models by the run that made them (a teacher, or judge, that is the policy or `stage:NAME`): their folders
    # stay when their stages train again.
    base = {"models": ctx.model_runs_of(), "teacher": fingerprinted(config.teacher), "seed": ctx.seed}
    signature = Signed({**base, "sampling": config.sampling.journaled()},
                       {**base, "sampling": config.sampling.model_dump(mode="json")})  # as an earlier tempa signed it
    rewards = RewardSet(config.rewards, env)
    stats: dict[str, Any] = {"prompts": len(prompts), "teacher": teacher_name}
    try:
        samples, stats["sampling"] = sample_prompts(
            prompts, teacher, config.sampling.params(ctx.seed), JsonlStore(data_dir / SAMPLES, signature),
            desc="synthesize: sample",
        )
        teacher.close()  # free it while judges run; rebuilt if second turns need it
        score_signature = signature.plus(rewards=[fingerprinted(r) for r in config.rewards])
        scores, stats["scoring"] = score_pass(
            prompts, samples, rewards, JsonlStore(data_dir / SCORES, judged_as(score_signature, config)),
            chunk_size=config.sampling.batch_size, desc="synthesize: score", unused=unused(config),
        )
        stats["scoring"].update(rewards.stats())
        rewards.close()
        stats["judges"] = judge_stats(config.rewards, scores)
        check_judges(config.rewards, scores, f"{ctx.stage_name}: scoring")
        kept, rejects = select_first_turns(config, prompts, samples, scores)
        stats.update(reward_summary(config.rewards, scores))
        provenance = {"stage": ctx.stage_name, "teacher": teacher_name, "n": config.sampling.n, "seed": ctx.seed,
                      "source": config.prompts.path, "select": config.select.model_dump(mode="json")}
        if config.second_turn is not None:
            # the samples' signature, not the scores': a second turn is keyed by its conversation, so another reward
            # weight re-asks no follow-up (an earlier tempa signed them with the scores')
            rows, second_rejects, stats["second_turn"] = add_second_turns(
                config, ctx, kept, teacher, env, Signed(signature.now, score_signature.before), data_dir, provenance)
            rejects.extend(second_rejects)
        else:
            rows = [sft_row(k, provenance) for k in kept]
    finally:
        teacher.close()
        rewards.close()

    write_jsonl(data_dir / "rejects.jsonl", rejects)
    output = ctx.stage_dir / OUTPUT_FILE
    write_jsonl(output, rows)
    kept_prompts = len({row["provenance"]["prompt_id"] for row in rows})
    # A teacher that ignores the request's thinking mode (a hosted model without a reasoning template) answers a
    # thinking-on prompt without reasoning: the row trains with thinking off, and the on/off mix drifts unsaid.
    unreasoned = sum(1 for row in rows if row["thinking_mode"] == "on"
                     and not any(turn.get("reasoning_content") for turn in row["messages"][-1:]))
    notes = []
    if unreasoned:
        notes.append(f"{ctx.stage_name}: {unreasoned} of the {len(rows)} rows sampled with thinking on came back "
                     "without reasoning (does the teacher honour chat_template_kwargs?); the sft stage trains them "
                     "with thinking off")
        ctx.log.warning("%s", notes[-1])
    stats.update({
        "thinking_on_without_reasoning": unreasoned,
        "rows": len(rows),
        "kept_prompts": kept_prompts,
        "kept_fraction": round(kept_prompts / len(prompts), 6),
        "rejected": dict(Counter(r["reason"] for r in rejects)),
        "finish_reasons": dict(Counter(c.get("finish_reason") or "unknown" for s in samples for c in s["completions"])),
    })
    write_json(data_dir / "stats.json", stats)
    by_turn = {turn: dict(Counter(r["reason"] for r in rejects if r.get("turn") == turn)) for turn in (1, 2)}
    said = (f"first turns {by_turn[1] or 'none'}, second turns {by_turn[2] or 'none'}" if config.second_turn
            else stats["rejected"] or "none")  # a two-turn row is rejected at either turn: counts of both read as one
    ctx.log.info("synthesize: kept %d rows from %d prompts (%.0f%%); rejected %s", len(rows), len(prompts),
                 100 * stats["kept_fraction"], said)
    if not rows:
        raise StageError(f"no response passed the selection ({stats['rejected']}); see {data_dir / 'stats.json'}")
    metrics = {
        "rows": len(rows),
        "kept_fraction": stats["kept_fraction"],
        "prompts": len(prompts),
        f"{config.select.by}_mean": stats["reward_means"].get(config.select.by),
        "samples_per_s": stats["sampling"].get("samples_per_s"),
        **{k: v for k, v in stats["scoring"].items() if k.endswith(("_unparsable", "_calls"))},
    }
    if "second_turn" in stats:
        metrics["two_turn_rows"] = stats["second_turn"]["kept"]
    finish = stats["finish_reasons"]
    return SynthesizeResult(dataset=output, rows=len(rows), metrics=metrics, prompts=len(prompts),
                            kept_prompts=kept_prompts, rejected=stats["rejected"], truncated=finish.get("length", 0),
                            samples=sum(finish.values()), judges=stats["judges"], notes=notes,
                            files={"rejects": data_dir / "rejects.jsonl", "stats": data_dir / "stats.json"})


# Each pass's journal under data/, in the order the stage runs them, and what one record of it is.
PASSES = ((SAMPLES, "prompt{s} sampled"), (SCORES, "prompt{s} scored"), (FOLLOWUPS, "follow-up{s} written"),
          (SECOND_SAMPLES, "second turn{s} sampled"), (SECOND_SCORES, "second turn{s} scored"))


def servers(config: SynthesizeStageConfig) -> list[tuple[str, str, Any, list[str]]]:
    """Who the stage asks, as :func:`check_servers` reaches them: each with its recipe field and the journals of its
    passes."""
    second = config.second_turn
    teacher_journals = [SAMPLES]
    if second is not None:  # the teacher answers the follow-ups, and writes them unless another backend does
        teacher_journals += [SECOND_SAMPLES] + ([FOLLOWUPS] if second.followup_backend is None else [])
    out: list[tuple[str, str, Any, list[str]]] = [("teacher", "teacher", config.teacher, teacher_journals)]
    judged = [SCORES, SECOND_SCORES] if second is not None and second.rewards is None else [SCORES]
    out += [(f"judge '{r.key}'", f"rewards[{i}].backend", r.backend, judged)
            for i, r in enumerate(config.rewards) if isinstance(r, JudgeReward)]
    if second is not None:
        out += [("follow-up writer", "second_turn.followup_backend", second.followup_backend, [FOLLOWUPS])]
        out += [(f"judge '{r.key}'", f"second_turn.rewards[{i}].backend", r.backend, [SECOND_SCORES])
                for i, r in enumerate(second.rewards or []) if isinstance(r, JudgeReward)]
    return out


def synthesize_resume_point(stage_dir: Path) -> str | None:
    """Where a re-run of an unfinished synthesize stage continues (`tempa status`, `tempa plan`): what each pass
    has journaled (``1,200 prompts sampled, 800 prompts scored``); None when nothing is."""
    return journals_resume_point(stage_dir, PASSES)


def synthesize_journals(stage_dir: Path) -> list[Path]:
    """The journals a changed synthesize stage keeps: every pass's (their signatures and content keys decide which
    records are still valid); the dataset, rejects and stats are written anew."""
    data = Path(stage_dir) / "data"
    return [file for name, _ in PASSES for file in JsonlStore.files(data / name)] + \
        [file for file in (data / JUDGE_REPLIES,) if file.is_file()]


# --------------------------------------------------------------------------- selection


class Kept:
    """A kept first-turn response: the prompt, which sample, the response and its scores."""

    def __init__(self, prompt: PromptRow, index: int, completion: Completion, scores: dict[str, Any]) -> None:
        self.prompt = prompt
        self.index = index
        self.completion = completion
        self.scores = scores

    @property
    def key(self) -> str:
        return f"{self.prompt.id}-s{self.index}"

    def messages(self) -> list[dict[str, Any]]:
        return [*self.prompt.messages, teacher_message(self.completion)]


def teacher_message(completion: Completion) -> dict[str, Any]:
    """The teacher's turn as the dataset stores it (:func:`~tempa.sft.formats.composed`: answer and reasoning NFC)."""
    message = assistant_message(completion)
    return {**message, "content": composed(message["content"]),
            "reasoning_content": message["reasoning_content"] and composed(message["reasoning_content"])}


def select_first_turns(
    config: SynthesizeStageConfig, prompts: list[PromptRow], samples: list[dict[str, Any]],
    scores: list[dict[str, Any]],
) -> tuple[list[Kept], list[dict[str, Any]]]:
    kept: list[Kept] = []
    rejects: list[dict[str, Any]] = []
    for prompt, sample, score in zip(prompts, samples, scores, strict=True):
        completions = completions_of(sample)
        values = selectable(score["results"], config.select.by)
        indices, reason = select_complete(values, completions, config.select.strategy, config.select.min_score,
                                          config.keep_incomplete)
        reason = judge_reason(score["results"], reason)
        for i in indices:
            kept.append(Kept(prompt, i, completions[i], score["results"][i]["scores"]))
        if not indices:
            rejects.append({"prompt_id": prompt.id, "row": prompt.meta.get("row"), "turn": 1, "reason": reason,
                            "scores": values,
                            "messages": prompt.messages})
    return kept, rejects


def selectable(results: list[dict[str, Any]], by: str) -> list[float | None]:
    """The compared score of each sample; None (never kept) where scoring failed (a judge gave no rating)."""
    return [r["scores"].get(by) if r["scores"].get("total") is not None else None for r in results]


def judge_reason(results: list[dict[str, Any]], reason: str | None) -> str | None:
    """Name the judge as the reason when nothing was scored because its replies had no rating."""
    failed = any(d.get("unparsable") for r in results for d in r.get("details", {}).values())
    return JUDGE_UNPARSABLE if reason == UNSCORED and failed else reason


def unused(config: SynthesizeStageConfig) -> Callable[[Completion], bool] | None:
    """The samples the stage never keeps (incomplete ones, unless `keep_incomplete`): no judge is paid to rate them."""
    return None if config.keep_incomplete else (lambda completion: not complete(completion))


def judged_as(signature: Signed, config: SynthesizeStageConfig) -> Signed:
    """A score journal's signature: whether incomplete samples were judged (a journal that judged them all, as an
    earlier tempa did, holds what either asks for)."""
    return signature.newly(judged="all" if config.keep_incomplete else "complete")


def complete(completion: Completion) -> bool:
    """Ended on its own (not cut off, not stopped by a provider's content filter) with a non-empty answer that the
    sft stage trains: a reply with its reasoning both in the server's reasoning field and as a think block in its
    text (or a second block) was kept here and rejected there, its tokens paid for twice over."""
    return (not completion.truncated and completion.finish_reason != CONTENT_FILTER
            and bool(split_think(completion).answer.strip())
            and check_reasoning([teacher_message(completion)]) is None)


def select_complete(values: list[float | None], completions: list[Completion], strategy: str,
                    min_score: float | None, keep_incomplete: bool) -> tuple[list[int], str | None]:
    """:func:`select_samples`, with incomplete responses out of the running unless allowed."""
    if not keep_incomplete:
        if not any(complete(c) for c in completions):
            return [], INCOMPLETE
        values = [v if complete(c) else None for v, c in zip(values, completions, strict=True)]
    return select_samples(values, strategy=strategy, min_score=min_score)  # type: ignore[arg-type]


def sft_row(kept: Kept, provenance: dict[str, Any], second: dict[str, Any] | None = None) -> dict[str, Any]:
    """One SFT row: the conversation (reasoning in reasoning_content) plus scores and provenance."""
    messages = kept.messages()
    scores = {"turn1": kept.scores}
    prov = {**provenance, "prompt_id": kept.prompt.id, "row": kept.prompt.meta.get("row"), "sample_index": kept.index,
            "finish_reason": kept.completion.finish_reason}
    if second is not None:
        messages = [*messages, {"role": "user", "content": composed(second["followup"])},
                    teacher_message(second["completion"])]
        scores["turn2"] = second["scores"]
        prov["turn2_sample_index"] = second["index"]
    return {"messages": messages, "language": kept.prompt.language, "thinking_mode": kept.prompt.thinking_mode,
            "scores": scores, "provenance": prov}


# --------------------------------------------------------------------------- second turns


def add_second_turns(
    config: SynthesizeStageConfig, ctx: StageContext, kept: list[Kept], teacher: LazyBackend, env: ScoringEnv,
    signature: Signed, data_dir: Path, provenance: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Follow-up user turn by the teacher, judged answers to it, selection; the final rows."""
    settings = config.second_turn
    assert settings is not None
    writer = teacher
    if settings.followup_backend is not None:
        writer = LazyBackend(lambda: build_backend(
            settings.followup_backend, policy_dir=ctx.start_model, tokenizer_dir=ctx.tokenizer_dir,
            stage_models=ctx.stage_models, trust_remote_code=ctx.trust_remote_code, who="second_turn.followup_backend"))
    # Not the kept conversations: their keys go by content, and a prompt added to the file adds one, re-asking none.
    signature = signature.plus(second_turn=fingerprinted(settings))

    def write_followups(chunk: list[Kept], index: int, places: list[int],
                        keep: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
        params = GenerationParams(max_new_tokens=settings.followup_max_new_tokens,
                                  temperature=settings.followup_temperature, n=1, seed=batch_seed(ctx.seed, index),
                                  thinking_mode="off", batch_size=config.sampling.batch_size)
        requests = [[{"role": "user", "content": fill(
            settings.followup_prompt, conversation=render_conversation(k.messages()), language=k.prompt.language,
        )}] for k in chunk]

        def record(k: Kept, group: list[Completion]) -> dict[str, Any]:
            return {"id": k.key, "followup": split_think(group[0]).answer}

        outputs = sample_at(writer, requests, params, places, lambda i, group: keep(record(chunk[i], group)))
        return [record(k, group) for k, group in zip(chunk, outputs, strict=True)]

    try:
        followups, followup_stats = run_incremental(
            kept, key=lambda k: k.key, work=write_followups,
            store=JsonlStore(data_dir / FOLLOWUPS, signature), chunk_size=config.sampling.batch_size,
            desc="synthesize: follow-ups",
        )
    finally:
        if writer is not teacher:
            writer.close()
    rejects: list[dict[str, Any]] = []
    second_prompts: list[PromptRow] = []
    by_key: dict[str, Kept] = {}
    for k, record in zip(kept, followups, strict=True):
        if not record["followup"].strip():
            rejects.append({"prompt_id": k.prompt.id, "row": k.prompt.meta.get("row"), "turn": 2,
                            "reason": EMPTY_FOLLOWUP, "messages": k.messages()})
            continue
        by_key[k.key] = k
        second_prompts.append(PromptRow(
            id=k.key, language=k.prompt.language, thinking_mode=k.prompt.thinking_mode,
            messages=[*k.prompt.messages, {"role": "assistant", "content": split_think(k.completion).answer},
                      {"role": "user", "content": record["followup"]}],
        ))
    followup_of = {r["id"]: r["followup"] for r in followups}

    second_rewards = settings.rewards or config.rewards
    rewards = RewardSet(second_rewards, env)
    params = config.sampling.params(ctx.seed + 1).model_copy(update={"n": settings.n})
    try:
        samples, sample_stats = sample_prompts(
            second_prompts, teacher, params, JsonlStore(data_dir / SECOND_SAMPLES, signature),
            desc="synthesize: second turns",
        ) if second_prompts else ([], {})
        teacher.close()
        score_signature = signature.plus(second_rewards=[fingerprinted(r) for r in second_rewards])
        scores, score_stats = score_pass(
            second_prompts, samples, rewards, JsonlStore(data_dir / SECOND_SCORES, judged_as(score_signature, config)),
            chunk_size=config.sampling.batch_size, desc="synthesize: score second turns", unused=unused(config),
        ) if second_prompts else ([], {})
        score_stats = {**score_stats, **rewards.stats()}
    finally:
        rewards.close()
    check_judges(second_rewards, scores, f"{ctx.stage_name}: second turns")

    seconds: dict[str, dict[str, Any]] = {}
    for prompt, sample, score in zip(second_prompts, samples, scores, strict=True):
        values = selectable(score["results"], settings.select.by)
        indices, reason = select_complete(values, completions_of(sample), "best", settings.select.min_score,
                                          config.keep_incomplete)
        reason = judge_reason(score["results"], reason)
        if indices:
            i = indices[0]
            seconds[prompt.id] = {"followup": followup_of[prompt.id], "completion": completions_of(sample)[i],
                                  "scores": score["results"][i]["scores"], "index": i}
        else:
            first = by_key[prompt.id].prompt
            rejects.append({"prompt_id": first.id, "row": first.meta.get("row"), "turn": 2, "reason": reason,
                            "scores": values, "messages": prompt.messages})

    rows = []
    dropped_turns = dropped_conversations = 0
    for k in kept:
        second = seconds.get(k.key)
        if second is None and settings.on_reject == "drop_conversation":
            dropped_conversations += 1
            continue
        dropped_turns += second is None
        rows.append(sft_row(k, provenance, second))
    stats = {
        "conversations": len(kept),
        "followups_empty": len(kept) - len(second_prompts),
        "kept": len(seconds),
        "dropped_turns": dropped_turns if settings.on_reject == "drop_turn" else 0,
        "dropped_conversations": dropped_conversations,
        "sampling": {**followup_stats, **{f"answer_{k}": v for k, v in sample_stats.items()}},
        "scoring": score_stats,
        "judges": judge_stats(second_rewards, scores),
        **reward_summary(second_rewards, scores),
    }
    return rows, rejects, stats


