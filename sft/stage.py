"""The `sft` stage: prepare (curate, mix, tokenise, cache) the data here, train in a launched group.

Data work happens once, in the runner's process; the launched processes only load the saved,
tokenised datasets. That keeps N training processes from repeating the preparation and lets a
user re-run the training part by hand from `logs/launch.sh`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tempa.sft.checkpoints import last_complete_checkpoint, remove_incomplete_checkpoints
from tempa.sft.config import SFTStageConfig
from tempa.sft.data_config import DataConfig
from tempa.sft.stage_api import StageContext, StageError, StageResult
from tempa.sft.train import trained_headline

__all__ = ["SFTStageConfig", "run_sft"]


def run_sft(config: SFTStageConfig, ctx: StageContext) -> StageResult:
    from transformers import AutoTokenizer

    from tempa.sft.data import prepare_sft_data

    stage_dir = ctx.stage_dir
    data_dir = stage_dir / "data"
    train_args = config.train_args()
    tokenizer = AutoTokenizer.from_pretrained(ctx.tokenizer_dir)
    prepared = prepare_sft_data(
        resolve_stage_sources(config.data, ctx),
        tokenizer,
        out_dir=data_dir,
        cache_dir=(ctx.cache_dir or stage_dir / "cache") / "sft-data",
        seed=ctx.seed,
        max_length=train_args.get("max_length"),
    )
    if len(prepared.train) == 0:
        raise StageError(f"no training rows left after curation (see {data_dir / 'stats.json'})")
    # The launched processes memory-map the tokenised splits straight from the cache.
    train_path = prepared.train_path
    eval_path = prepared.eval_path if prepared.eval is not None and len(prepared.eval) else None

    checkpoints = stage_dir / "checkpoints"
    removed = remove_incomplete_checkpoints(checkpoints, [ctx.run_dir])
    for path in removed:
        ctx.log.warning("removed incomplete checkpoint %s (interrupted while saving)", path.name)
    resume = last_complete_checkpoint(checkpoints)
    if resume is not None:
        ctx.log.info("will resume from %s", resume)

    plan: dict[str, Any] = {
        "model_dir": str(ctx.model_dir),
        "tokenizer_dir": str(ctx.tokenizer_dir),
        "train_data": str(train_path),
        "eval_data": str(eval_path) if eval_path else None,
        "output_dir": str(checkpoints),
        "final_dir": str(stage_dir / "final"),
        "run_dir": str(ctx.run_dir),  # the worker deletes and replaces only inside it
        "train_args": train_args,
        "lora": config.lora.model_dump() if config.lora else None,
        "seed": ctx.seed,
        "use_cpu": ctx.use_cpu,
        "mixed_precision": ctx.mixed_precision,
        "deepspeed": str(ctx.deepspeed_config) if ctx.deepspeed_config else None,
        "trust_remote_code": ctx.trust_remote_code,
        "runner_pid": os.getpid(),
    }
    plan_path = stage_dir / "train_plan.json"
    plan_path.write_text(json.dumps(plan, indent=2))
    ctx.launch("tempa.sft.train", ["--plan", str(plan_path)], stage_dir / "logs" / "train.log")

    final = stage_dir / "final"
    metrics_file = final / "tempa_train_metrics.json"
    if not metrics_file.is_file():
        raise StageError(f"training finished without a final model in {final}")
    trained = json.loads(metrics_file.read_text())
    return StageResult(model_dir=final, metrics=_headline(trained, prepared.stats), outputs={"final": str(final)})


def resolve_stage_sources(data: DataConfig, ctx: StageContext) -> DataConfig:
    """Point `stage:NAME` sources at the dataset that stage wrote (its manifest's `dataset` output)."""
    sources = []
    for source in data.sources:
        ref = source.stage_ref
        if ref is None:
            sources.append(source)
            continue
        manifest_path = ctx.stage_dirs.get(ref, ctx.run_dir / ref) / "manifest.json"
        try:
            dataset = json.loads(manifest_path.read_text())["outputs"]["dataset"]
        except (OSError, ValueError, KeyError, TypeError):
            raise StageError(
                f"data source '{source.name}': stage '{ref}' has not written a dataset ({manifest_path} has no "
                "outputs.dataset); is it a synthesize stage that ran before this one?"
            ) from None
        sources.append(source.model_copy(update={"path": dataset}))
    return data.model_copy(update={"sources": sources})


def _headline(trained: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    losses = [entry["loss"] for entry in trained.get("log_history", []) if "loss" in entry]
    metrics: dict[str, Any] = {
        "global_step": trained.get("global_step"),
        "train_loss": trained.get("train", {}).get("train_loss"),
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "resumed_from": trained.get("resumed_from"),
        **trained_headline(trained),
    }
    eval_loss = trained.get("eval", {}).get("eval_loss")
    if eval_loss is not None:
        metrics["eval_loss"] = eval_loss
    for key in ("train_rows", "eval_rows", "train_tokens"):
        if key in stats:
            metrics[key] = stats[key]
    return metrics
