"""The ``evaluate`` stage: score candidate checkpoints with the recipe's suites, write a leaderboard.

Outputs in the stage folder: ``leaderboard.json`` / ``leaderboard.md``, ``evaluate_config.json``
(the resolved config, which a merge stage reuses to re-score its merged model), ``metrics.json``,
and ``scores/<candidate>.json`` (per-candidate results). Scores are also cached under the shared
cache folder, keyed by suites, rows, weights files, tokenizer, template and seed, so a re-run (or
another run) skips candidates it has already scored.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tempa.alignment.generation import GenerationBackend, TransformersBackend
from tempa.merge.candidates import Candidate, collect_candidates
from tempa.merge.eval_data import load_rows
from tempa.merge.evaluate_config import EvaluateStageConfig, LmEvalSuite
from tempa.merge.leaderboard import Leaderboard, LeaderboardRow, is_headline, write_leaderboard
from tempa.merge.suites import CandidateScorer, import_lm_eval
from tempa.sft.files import write_atomic
from tempa.sft.stage_api import StageContext, StageError, StageResult

CONFIG_FILE = "evaluate_config.json"
BackendFactory = Callable[[Path, EvaluateStageConfig, StageContext], GenerationBackend]


def transformers_backend(
    model_dir: Path, config: EvaluateStageConfig, ctx: StageContext
) -> GenerationBackend:
    """Default backend: the candidate's weights with the recipe's tokenizer, via transformers."""
    device = "cpu" if config.device == "auto" and getattr(ctx, "use_cpu", False) else config.device
    return TransformersBackend(
        model_dir,
        ctx.tokenizer_dir,
        device=device,
        dtype=config.dtype,
        trust_remote_code=ctx.trust_remote_code,
    )


def check_requirements(config: EvaluateStageConfig) -> None:
    """Fail before any work when a configured suite needs something missing."""
    for suite in config.suites:
        if isinstance(suite, LmEvalSuite):
            import_lm_eval(suite.key)


def load_suite_rows(config: EvaluateStageConfig) -> dict[str, list[dict[str, Any]]]:
    rows = {}
    for suite in config.suites:
        data = getattr(suite, "data", None)
        if data is not None:
            rows[suite.key] = load_rows(data, split=suite.split, max_rows=suite.max_rows)
            if not rows[suite.key]:
                raise StageError(f"suite '{suite.key}': {data} has no rows")
    return rows


def _weights_signature(path: Path) -> list[tuple[str, int, int]]:
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def cache_key(
    config: EvaluateStageConfig,
    candidate_path: Path,
    ctx: StageContext,
    rows: dict[str, list[dict[str, Any]]],
) -> str:
    """What a candidate's scores depend on: suites, their rows, the weights' files, template, seed."""
    material = {
        "suites": config.suites_fingerprint(),
        "rows": hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest(),
        "path": str(candidate_path),
        "weights": _weights_signature(candidate_path),
        "tokenizer": _weights_signature(Path(ctx.tokenizer_dir)),
        "template": hashlib.sha256(ctx.chat_template.encode()).hexdigest(),
        "seed": ctx.seed,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _cache_dir(ctx: StageContext) -> Path:
    """Score cache: the shared cache (survives the runner clearing a re-run stage), else the stage."""
    shared = getattr(ctx, "cache_dir", None)
    return Path(shared) / "eval_scores" if shared else Path(ctx.stage_dir) / "scores" / ".cache"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "__", name)


def score_model(
    model_dir: Path,
    config: EvaluateStageConfig,
    ctx: StageContext,
    rows: dict[str, list[dict[str, Any]]],
    backend_factory: BackendFactory = transformers_backend,
) -> dict[str, float]:
    """Every suite's metrics for one model, as ``{"<suite>/<metric>": value}``."""
    from transformers import AutoTokenizer

    backend = backend_factory(model_dir, config, ctx)
    try:
        tokenizer = getattr(backend, "tokenizer", None) or AutoTokenizer.from_pretrained(ctx.tokenizer_dir)
        scorer = CandidateScorer(
            backend, tokenizer, config.generation, seed=ctx.seed, think_tags=tuple(config.think_tags)
        )
        metrics: dict[str, float] = {}
        for suite in config.suites:
            scores = scorer.run(suite, rows.get(suite.key, []))
            metrics.update({f"{suite.key}/{name}": float(value) for name, value in scores.items()})
        return metrics
    finally:
        backend.close()


def evaluate_candidates(
    config: EvaluateStageConfig,
    ctx: StageContext,
    candidates: list[Candidate],
    backend_factory: BackendFactory = transformers_backend,
) -> Leaderboard:
    """Score each candidate (reusing cached scores) and return the leaderboard."""
    from tqdm.auto import tqdm

    rows = load_suite_rows(config)
    scores_dir = Path(ctx.stage_dir) / "scores"
    cache_dir = _cache_dir(ctx)
    board_rows = []
    for candidate in tqdm(candidates, desc=f"{ctx.stage_name}: candidates", disable=len(candidates) < 2):
        key = cache_key(config, candidate.path, ctx, rows)
        cached_path = cache_dir / f"{key}.json"
        if cached_path.exists():
            metrics = json.loads(cached_path.read_text(encoding="utf-8"))["metrics"]
            ctx.log.info("%s: reusing scores of %s (%s)", ctx.stage_name, candidate.name, cached_path)
        else:
            ctx.log.info("%s: scoring %s (%s)", ctx.stage_name, candidate.name, candidate.path)
            metrics = score_model(candidate.path, config, ctx, rows, backend_factory)
            write_atomic(
                cached_path, json.dumps({"path": str(candidate.path), "metrics": metrics}, indent=2) + "\n"
            )
        record = {"candidate": candidate.name, "path": str(candidate.path), "metrics": metrics}
        write_atomic(scores_dir / f"{_slug(candidate.name)}.json", json.dumps(record, indent=2) + "\n")
        board_rows.append(
            LeaderboardRow(
                candidate=candidate.name,
                path=str(candidate.path),
                stage=candidate.stage,
                step=candidate.step,
                metrics=metrics,
            )
        )
    return Leaderboard(rows=board_rows, rank_by=config.rank_by)


def run_evaluate(
    config: EvaluateStageConfig, ctx: StageContext, *, backend_factory: BackendFactory = transformers_backend
) -> StageResult:
    """Score the candidates, write the leaderboard; pass the input model on unchanged."""
    check_requirements(config)
    stage_dir = Path(ctx.stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    candidates = collect_candidates(
        ctx,
        checkpoints_of=config.checkpoints_of,
        stages=config.stages,
        models=config.models,
        include_final=config.include_final,
    )
    ctx.log.info(
        "%s: %d candidate(s): %s", ctx.stage_name, len(candidates), ", ".join(c.name for c in candidates)
    )
    write_atomic(stage_dir / CONFIG_FILE, config.model_dump_json(by_alias=True, indent=2) + "\n")
    board = evaluate_candidates(config, ctx, candidates, backend_factory)
    json_path, md_path = write_leaderboard(board, stage_dir, title=f"Leaderboard: {ctx.stage_name}")
    metrics: dict[str, Any] = {"candidates": len(candidates)}
    if config.rank_by:
        best = board.ranked()[0]
        metrics["best"] = best.candidate
        metrics.update({f"best/{name}": value for name, value in best.metrics.items() if is_headline(name)})
    write_atomic(stage_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return StageResult(
        model_dir=Path(ctx.model_dir),
        metrics=metrics,
        outputs={"leaderboard": str(json_path), "leaderboard_md": str(md_path)},
    )


def load_evaluate_config(stage_dir: Path) -> EvaluateStageConfig:
    """The resolved config an evaluate stage ran with (written next to its leaderboard)."""
    path = Path(stage_dir) / CONFIG_FILE
    if not path.exists():
        raise StageError(f"{stage_dir} holds no {CONFIG_FILE}: is it an evaluate stage that has run?")
    return EvaluateStageConfig.model_validate_json(path.read_text(encoding="utf-8"))
