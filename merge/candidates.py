"""Candidate models: complete checkpoints and final models of earlier stages, or given folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tempa.sft.stage_api import Artifact, StageContext, StageError
from tempa.sft.train_plan import TrainOutcome


@dataclass(frozen=True)
class Candidate:
    """A model folder to score, with the name it has on the leaderboard."""

    name: str
    path: Path
    stage: str | None = None
    step: int | None = None


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    )


def collect_candidates(
    ctx: StageContext,
    *,
    checkpoints_of: list[str],
    stages: list[str],
    models: list[str],
    include_final: bool = True,
) -> list[Candidate]:
    """Candidates in order: each checkpoint stage's checkpoints then final, stages, then folders."""
    who = f"evaluate stage '{ctx.stage_name}'"
    candidates: list[Candidate] = []
    for stage in checkpoints_of:
        checkpoints = ctx.upstream_result(stage, Artifact.MODEL, who=who).checkpoints
        for checkpoint in checkpoints:
            candidates.append(Candidate(f"{stage}/checkpoint-{checkpoint.step}", checkpoint.path, stage,
                                        checkpoint.step))
        if include_final:
            final = ctx.model_of(stage, who=who)
            last = checkpoints[-1] if checkpoints else None
            if last is not None and _trained_step(final) == last.step:
                # the last checkpoint's weights again: scored twice, a top-k merge would merge them with themselves
                ctx.log.info("%s: %s's final model is the weights of %s/checkpoint-%d (its last step): scored once, "
                             "as the checkpoint", who, stage, stage, last.step)
            else:
                candidates.append(Candidate(stage, final, stage))
        elif not checkpoints:
            raise StageError(f"{who}: stage '{stage}' has no complete checkpoint")
    for stage in stages:
        candidates.append(Candidate(stage, ctx.model_of(stage, who=who), stage))
    for folder in models:
        path = Path(folder)
        name = path.name
        taken = {c.name for c in candidates}
        suffix = 2
        while name in taken:
            name, suffix = f"{path.name}-{suffix}", suffix + 1
        candidates.append(Candidate(name, path))
    if not candidates:
        source = next((name for name, up in ctx.upstream.items() if up.result.model == ctx.start_model), None)
        candidates.append(Candidate(source or ctx.start_model.name, ctx.start_model, source))
    seen: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.name in seen:
            raise StageError(f"{who}: candidate '{candidate.name}' is listed twice")
        if not is_model_dir(candidate.path):
            raise StageError(
                f"{who}: {candidate.name} at {candidate.path} is not a model folder (config.json + safetensors)"
            )
        seen[candidate.name] = candidate
    return candidates



def _trained_step(model: Path) -> int | None:
    """The optimizer step a trained model stopped at (its training outcome), or None (a merge, a folder)."""
    try:
        return TrainOutcome.read(model).global_step
    except (StageError, OSError, ValueError):
        return None
