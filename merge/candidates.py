"""Candidate models: complete checkpoints and final models of earlier stages, or given folders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tempa.sft.stage_api import StageContext, StageError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "COMPLETE"


@dataclass(frozen=True)
class Candidate:
    """A model folder to score, with the name it has on the leaderboard."""

    name: str
    path: Path
    stage: str | None = None
    step: int | None = None


def complete_checkpoints(stage_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every checkpoint holding a COMPLETE marker, by step."""
    root = stage_dir / "checkpoints"
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = CHECKPOINT_RE.match(child.name)
            if match and child.is_dir() and (child / COMPLETE_MARKER).exists():
                found.append((int(match.group(1)), child))
    return sorted(found)


def stage_final_model(ctx: StageContext, stage: str, *, who: str) -> Path:
    """The final model of an earlier stage, or a one-line error saying why there is none."""
    if stage in ctx.stage_models:
        return Path(ctx.stage_models[stage])
    if stage in ctx.stage_dirs and (Path(ctx.stage_dirs[stage]) / "final" / "config.json").exists():
        return Path(ctx.stage_dirs[stage]) / "final"
    if stage in ctx.stage_dirs:
        raise StageError(f"{who}: stage '{stage}' produced no model")
    raise StageError(f"{who}: '{stage}' is not a stage that runs before it (known: {sorted(ctx.stage_dirs)})")


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
        if stage not in ctx.stage_dirs:
            raise StageError(
                f"{who}: '{stage}' is not a stage that runs before it (known: {sorted(ctx.stage_dirs)})"
            )
        checkpoints = complete_checkpoints(Path(ctx.stage_dirs[stage]))
        for step, folder in checkpoints:
            candidates.append(Candidate(f"{stage}/checkpoint-{step}", folder, stage, step))
        if include_final:
            candidates.append(Candidate(stage, stage_final_model(ctx, stage, who=who), stage))
        elif not checkpoints:
            raise StageError(f"{who}: stage '{stage}' has no complete checkpoint")
    for stage in stages:
        candidates.append(Candidate(stage, stage_final_model(ctx, stage, who=who), stage))
    for folder in models:
        path = Path(folder)
        name = path.name
        taken = {c.name for c in candidates}
        suffix = 2
        while name in taken:
            name, suffix = f"{path.name}-{suffix}", suffix + 1
        candidates.append(Candidate(name, path))
    if not candidates:
        source = next((s for s, p in ctx.stage_models.items() if Path(p) == Path(ctx.model_dir)), None)
        candidates.append(Candidate(source or Path(ctx.model_dir).name, Path(ctx.model_dir), source))
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
