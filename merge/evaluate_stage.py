"""The ``evaluate`` stage: score candidate checkpoints with the recipe's suites, write a leaderboard.

Outputs in the stage folder: ``leaderboard.json`` / ``leaderboard.md``,
``scores/<candidate>.json`` (per-candidate results) and ``answers/<candidate>/<suite>.jsonl`` (one line per scored
row: the prompt, the answer, its reasoning, how generation ended and the row's verdicts, so every score can be
audited; a candidate named ``sft/checkpoint-2`` is the folder ``sft__checkpoint-2``). The stage's result carries the leaderboard
(a merge stage selects from it, and re-scores its merge with this stage's suites, which it reads
from this stage's config). Scores are also cached under the shared cache folder, one entry per candidate and suite
(with that suite's answers), keyed by the suite, its rows, the weights files, tokenizer, template, seed, the scoring
code and a win rate's judge and baseline, so a re-run (or another run) skips what it has already scored, and a
changed suite file re-scores that suite alone. The merge stage's re-scoring of its merge uses the same cache, keyed
by the merged weights' content.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tempa.alignment.generation import GenerationBackend
from tempa.merge.candidates import Candidate, check_tokenizer_fits, collect_candidates, trained_step
from tempa.merge.eval_data import load_named_rows
from tempa.merge.evaluate_config import EvaluateStageConfig, LmEvalSuite, WinRateSuite
from tempa.merge.leaderboard import (
    EvaluateResult,
    Leaderboard,
    LeaderboardRow,
    format_value,
    is_headline,
    metrics_from_json,
    undetermined_warning,
    write_leaderboard,
)
from tempa.merge.suites import (
    CandidateScorer,
    import_lm_eval,
    misspelt_column,
    rows_problem,
    suite_row_problem,
)
from tempa.merge.win_rate import PairwiseJudging
from tempa.sft.files import digest, file_digest, finite_json, write_json, write_jsonl
from tempa.sft.formats import thinking_mode_of
from tempa.sft.stage_api import Scalar, StageContext, StageError, fingerprinted
from tempa.sft.trackers import named_trackers, tracker_log

BackendFactory = Callable[[Path, EvaluateStageConfig, StageContext], GenerationBackend]


def transformers_backend(
    model_dir: Path, config: EvaluateStageConfig, ctx: StageContext
) -> GenerationBackend:
    """Default backend: the candidate's weights with the recipe's tokenizer, via transformers (the sampler, which
    says whether max_new_tokens cut a reply)."""
    from tempa.alignment.backends import TransformersSampler

    device = "cpu" if config.device == "auto" and ctx.training.use_cpu else config.device
    return TransformersSampler(
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


def check_inputs(config: EvaluateStageConfig) -> None:
    """Before the run's first stage: the packages the suites need, and every row of the suites' local data files
    (hub datasets and an earlier stage's output are read when the stage runs)."""
    check_requirements(config)
    local = [suite for suite in config.suites if getattr(suite, "data", None) and Path(suite.data).exists()]
    load_suite_rows(config.model_copy(update={"suites": local}))


def load_suite_rows(config: EvaluateStageConfig) -> dict[str, list[dict[str, Any]]]:
    """Each data suite's rows, every one checked for what its suite reads (before any model loads)."""
    rows = {}
    for suite in config.suites:
        data = getattr(suite, "data", None)
        if data is not None:
            rows[suite.key], names = load_named_rows(data, split=suite.split, max_rows=suite.max_rows)
            if not rows[suite.key]:
                raise StageError(f"suite '{suite.key}': {data} has no rows")
            for row, name in zip(rows[suite.key], names, strict=True):
                if (problem := suite_row_problem(suite, row)) is not None:
                    raise StageError(f"suite '{suite.key}': {name}: {problem}")
                if "thinking_mode" in row:  # as the suites read it: 'on', 'off' or None (true is 'on')
                    row["thinking_mode"] = thinking_mode_of(row["thinking_mode"], "thinking_mode")
            if (problem := rows_problem(suite, rows[suite.key])) is not None:
                raise StageError(f"suite '{suite.key}': {data}: {problem}")
            for row, name in zip(rows[suite.key], names, strict=True):  # after a column no row has, named once
                if (problem := misspelt_column(suite, row)) is not None:
                    raise StageError(f"suite '{suite.key}': {name}: {problem}")
    return rows


def _weights_signature(path: Path) -> list[tuple[str, int, int]]:
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


# The code a candidate's scores come from: every module of the packages the evaluate stage may import (tempa's
# floors from merge down; recipes is above them), so no module that comes to read answers can be missed (a hand-kept
# list missed the one that did). Cached scores from before an upgrade that changed how answers are read, or which
# metrics a suite reports, were reused as current: the fix did not apply to them, and the metrics new to the code were
# missing from them but present on a candidate scored since (a merge's re-scoring). Any change to that code scores
# the candidates again: a cost a re-run after an upgrade pays once.
SCORING_PACKAGES = ("tempa.merge", "tempa.alignment", "tempa.sft", "tempa.chat_templates")


def scoring_files() -> list[Path]:
    """The source files of :data:`SCORING_PACKAGES`, as they are now."""
    files = []
    for package in SCORING_PACKAGES:
        spec = importlib.util.find_spec(package)
        for folder in spec.submodule_search_locations or [] if spec is not None else []:
            files += sorted(Path(folder).glob("*.py"))
    return files


def scoring_code() -> str:
    """A digest of :func:`scoring_files`, by package and file name."""
    return digest({f"{path.parent.name}/{path.name}": path.read_text(encoding="utf-8") for path in scoring_files()})


def weights_identity(path: Path) -> dict[str, Any]:
    """What a candidate folder's weights are taken to be: its path and its files' names, sizes and times (cheap; a
    checkpoint retrained in place gets new times)."""
    return {"path": str(path), "weights": _weights_signature(path)}


def weights_digest(path: Path) -> dict[str, Any]:
    """A model folder's weights by content: a merge re-run rewrites identical files with new times, and its
    re-scoring would otherwise ask the judge again."""
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    # whole files: a merge that changes some tensors only (per-layer weights) kept 19 of 24 sampled digests
    return {"weights": {p.name: file_digest(p) for p in files}}


def suite_cache_key(
    config: EvaluateStageConfig,
    suite: Any,
    suite_rows: list[dict[str, Any]],
    model: Any,
    ctx: StageContext,
    pairwise: PairwiseJudging | None = None,
    code: str | None = None,
) -> str:
    """What one suite's scores of one model depend on: that suite and its rows, the generation settings, the model
    (``model``: :func:`weights_identity` or :func:`weights_digest`), tokenizer, template, seed, scoring code, and for
    a win rate its judge and baseline as they answer (a local model retrained in place is another model). Keyed per
    suite so that changing one suite's file re-scores (and re-judges) that suite alone."""
    material: dict[str, Any] = {
        "suite": suite.model_dump(mode="json"),
        "settings": config.model_dump(mode="json", include={"generation", "dtype", "think_tags"}),
        "rows": digest(suite_rows),
        "model": model,
        "tokenizer": _weights_signature(Path(ctx.tokenizer_dir)),
        "template": digest(ctx.chat_template),
        "seed": ctx.seed,
        "code": code if code is not None else scoring_code(),
    }
    if isinstance(suite, WinRateSuite) and pairwise is not None:
        # as they answer, not as they are reached: a new API key or concurrency asks the same models the same things
        material["suite"] = suite.model_dump(mode="json", exclude={"baseline": True, "judge": {"backend"}})
        material["judge"] = pairwise.identity(suite.judge.backend)
        material["baseline"] = pairwise.identity(suite.baseline)
    return digest(material)


def _cache_dir(ctx: StageContext) -> Path:
    """Score cache: the shared cache (survives the runner clearing a re-run stage), else the stage."""
    return ctx.cache_dir / "eval_scores" if ctx.cache_dir else ctx.stage_dir / "scores" / ".cache"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "__", name)


def answers_dir(stage_dir: Path, candidate: str) -> Path:
    """Where a candidate's answers files go: ``<stage>/answers/<candidate as a file name>``."""
    return Path(stage_dir) / "answers" / _slug(candidate)


def write_answers(stage_dir: Path, candidate: str, answers: dict[str, list[dict[str, Any]]]) -> None:
    """One JSON Lines file per suite of the candidate's answers (suites without answers, a loss, have none)."""
    folder = answers_dir(stage_dir, candidate)
    for suite, records in answers.items():
        if records:
            write_jsonl(folder / f"{_slug(suite)}.jsonl", finite_json(records))


def score_suites(
    model_dir: Path,
    config: EvaluateStageConfig,
    ctx: StageContext,
    rows: dict[str, list[dict[str, Any]]],
    backend_factory: BackendFactory = transformers_backend,
    pairwise: PairwiseJudging | None = None,
) -> dict[str, tuple[dict[str, float], list[dict[str, Any]]]]:
    """Per suite key: its ``{"<suite>/<metric>": value}`` and its rows' records (prompt, answer, finish reason,
    verdicts). Win-rate suites use ``pairwise`` (shared by the candidates of one stage), else judges and baseline
    answers of their own (a merge stage re-scoring its merge; the baseline's answers come from the cache)."""
    from transformers import AutoTokenizer

    own_pairwise = pairwise is None
    pairwise = pairwise or pairwise_judging(config, ctx)
    backend = backend_factory(model_dir, config, ctx)
    try:
        tokenizer = getattr(backend, "tokenizer", None) or AutoTokenizer.from_pretrained(ctx.tokenizer_dir)
        scorer = CandidateScorer(
            backend, tokenizer, config.generation, seed=ctx.seed, think_tags=tuple(config.think_tags),
            pairwise=pairwise,
        )
        scored = {}
        for suite in config.suites:
            scores = scorer.run(suite, rows.get(suite.key, []))
            scored[suite.key] = ({f"{suite.key}/{name}": float(value) for name, value in scores.items()},
                                 scorer.records.get(suite.key) or [])
        return scored
    finally:
        backend.close()
        if own_pairwise and pairwise is not None:
            pairwise.close()


def cached_scores(
    model_dir: Path,
    model: Any,
    config: EvaluateStageConfig,
    ctx: StageContext,
    rows: dict[str, list[dict[str, Any]]],
    backend_factory: BackendFactory = transformers_backend,
    pairwise: PairwiseJudging | None = None,
    *,
    who: str | None = None,
    code: str | None = None,
) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    """Every suite's metrics (``{"<suite>/<metric>": value}``) and records, per :func:`score_suites`, reusing each
    suite's cached scores and answers for ``model`` (its identity, see :func:`suite_cache_key`) and scoring only the
    suites with none; each freshly scored suite is cached on its own."""
    who = who or str(model_dir)
    own_pairwise = pairwise is None
    pairwise = pairwise or pairwise_judging(config, ctx)
    code = code if code is not None else scoring_code()
    cache = _cache_dir(ctx)
    try:
        paths = {suite.key: cache / f"{suite_cache_key(config, suite, rows.get(suite.key, []), model, ctx, pairwise, code)}.json"
                 for suite in config.suites}
        scored: dict[str, tuple[dict[str, float], list[dict[str, Any]]]] = {}
        for suite in config.suites:
            if paths[suite.key].exists():
                entry = json.loads(paths[suite.key].read_text(encoding="utf-8"))
                scored[suite.key] = (metrics_from_json(entry["metrics"]), entry.get("answers") or [])
        todo = [suite for suite in config.suites if suite.key not in scored]
        if not todo:
            ctx.log.info("%s: reusing scores of %s (%s)", ctx.stage_name, who, cache)
        else:
            reused = f" (reusing {', '.join(scored)})" if scored else ""
            ctx.log.info("%s: scoring %s (%s): %s%s", ctx.stage_name, who, model_dir,
                         ", ".join(suite.key for suite in todo), reused)
            fresh = score_suites(model_dir, config.model_copy(update={"suites": todo}), ctx, rows, backend_factory,
                                 pairwise)
            for key, (metrics, records) in fresh.items():
                # the answers beside the scores, in one atomic write: a reused score is as auditable as a fresh one
                write_json(paths[key], {"path": str(model_dir), "suite": key, "metrics": finite_json(metrics),
                                        "answers": finite_json(records)})
            scored.update(fresh)
    finally:
        if own_pairwise and pairwise is not None:
            pairwise.close()
    # in the suites' order, however many came from the cache
    metrics = {name: value for suite in config.suites for name, value in scored[suite.key][0].items()}
    return metrics, {suite.key: scored[suite.key][1] for suite in config.suites}


def pairwise_judging(config: EvaluateStageConfig, ctx: StageContext) -> PairwiseJudging | None:
    """Judges and cached baseline answers for the win-rate suites (None when there are none)."""
    if not any(isinstance(suite, WinRateSuite) for suite in config.suites):
        return None
    from transformers import AutoTokenizer

    from tempa.alignment.backends import build_backend, resolve_model

    device = "cpu" if config.device == "auto" and ctx.training.use_cpu else None

    def make_backend(block, who: str):
        if device is not None and getattr(block, "type", None) == "transformers" and block.device == "auto":
            block = block.model_copy(update={"device": device})
        return build_backend(block, policy_dir=ctx.start_model, tokenizer_dir=ctx.tokenizer_dir,
                             stage_models=ctx.stage_models, trust_remote_code=ctx.trust_remote_code, who=who,
                             show_progress=False)

    def make_scorer(backend):
        tokenizer = getattr(backend, "tokenizer", None) or AutoTokenizer.from_pretrained(ctx.tokenizer_dir)
        return CandidateScorer(backend, tokenizer, config.generation, seed=ctx.seed,
                               think_tags=tuple(config.think_tags))

    def identity(block) -> Any:
        """What the baseline's answers depend on: its block, and the weights of a local model it loads."""
        # without its transport settings (key, timeouts, retries, concurrency): they change no answer
        described = fingerprinted(block)
        if getattr(block, "type", None) == "http":
            return described
        model = resolve_model(block.model, ctx.start_model, ctx.stage_models, "baseline")
        # a baseline model retrained in place must not reuse the old answers
        return {**described, "weights": _weights_signature(Path(model)) if Path(model).is_dir() else str(model)}

    cache = ctx.cache_dir / "baseline_answers" if ctx.cache_dir else ctx.stage_dir / "scores" / ".baseline"
    material = {"generation": config.generation.model_dump(mode="json"), "template": digest(ctx.chat_template),
                "seed": ctx.seed}
    return PairwiseJudging(make_backend, make_scorer, cache, material, seed=ctx.seed, identity=identity)


def evaluate_candidates(
    config: EvaluateStageConfig,
    ctx: StageContext,
    candidates: list[Candidate],
    backend_factory: BackendFactory = transformers_backend,
) -> Leaderboard:
    """Score each candidate (reusing cached scores) and return the leaderboard."""
    rows = load_suite_rows(config)
    pairwise = pairwise_judging(config, ctx)
    try:
        board_rows = _score_candidates(config, ctx, candidates, backend_factory, rows, pairwise)
    finally:
        if pairwise is not None:
            pairwise.close()
    return Leaderboard(rows=board_rows, rank_by=config.rank_by)


def candidate_trackers(ctx: StageContext, candidates: list[Candidate]) -> list[str]:
    """The trackers the candidates' training stages report to (their `train.report_to`): a checkpoint's scores
    go where its loss curve went. An evaluate stage trains nothing and has no `report_to` of its own."""
    names: list[str] = []
    for candidate in candidates:
        upstream = ctx.upstream.get(candidate.stage) if candidate.stage else None
        if upstream is not None:
            names += named_trackers(upstream.config.train_args().get("report_to"))
    return list(dict.fromkeys(names))


def tracked_scores(
    ctx: StageContext, candidate: Candidate, metrics: dict[str, float]
) -> tuple[int, dict[str, Any]]:
    """A candidate's scores as a tracker logs them: at the training step of its weights (a final model's last
    step; 0 for a folder), with its name, keyed ``eval_<evaluate stage>/<its training stage>/<suite>/<metric>``
    (the `eval_` prefix of a Trainer's evaluation metrics, which the trackers file under ``eval/``)."""
    step = candidate.step if candidate.step is not None else trained_step(candidate.path)
    prefix = f"eval_{ctx.stage_name}/{candidate.stage or candidate.name}"
    return step or 0, {
        f"{prefix}/candidate": candidate.name,
        **{f"{prefix}/{k}": v for k, v in metrics.items()},
    }


def _score_candidates(config, ctx, candidates, backend_factory, rows, pairwise) -> list[LeaderboardRow]:
    # The runner's process runs this stage alone, so it is the process that writes to the trackers. The run is
    # named as train_plan names a training stage's: recipe/stage.
    run_name = f"{ctx.recipe.name}/{ctx.stage_name}" if ctx.recipe is not None else ctx.stage_name
    trackers = candidate_trackers(ctx, candidates)
    with tracker_log(trackers, output_dir=ctx.stage_dir, run_name=run_name) as track:
        return _score_each(config, ctx, candidates, backend_factory, rows, pairwise, track)


def _score_each(config, ctx, candidates, backend_factory, rows, pairwise, track) -> list[LeaderboardRow]:
    from tqdm.auto import tqdm

    scores_dir = Path(ctx.stage_dir) / "scores"
    code = scoring_code()
    board_rows = []
    for candidate in tqdm(candidates, desc=f"{ctx.stage_name}: candidates", disable=len(candidates) < 2):
        metrics, answers = cached_scores(candidate.path, weights_identity(candidate.path), config, ctx, rows,
                                         backend_factory, pairwise, who=candidate.name, code=code)
        write_answers(ctx.stage_dir, candidate.name, answers)
        record = {"candidate": candidate.name, "path": str(candidate.path), "metrics": finite_json(metrics)}
        write_json(scores_dir / f"{_slug(candidate.name)}.json", record)
        track(*tracked_scores(ctx, candidate, metrics))
        board_rows.append(
            LeaderboardRow(
                candidate=candidate.name,
                path=str(candidate.path),
                stage=candidate.stage,
                step=candidate.step,
                metrics=metrics,
            )
        )
    return board_rows


def unanswered_warnings(board: Leaderboard, config: EvaluateStageConfig, stage_dir: Path | None = None) -> list[str]:
    """One line per suite whose replies were cut off while still thinking (graded wrong): the leaderboard's column
    alone is easy to miss, and the suite then ranks how briefly candidates think."""
    lines = []
    for suite in config.suites:
        name = f"{suite.key}/unanswered"
        cut = {row.candidate: row.metrics[name] for row in board.rows if row.metrics.get(name)}
        if cut:
            limit = getattr(suite, "max_new_tokens", None) or config.generation.max_new_tokens
            share = f"up to {max(cut.values()):.0%} of a candidate's replies ({len(cut)} of {len(board.rows)} candidates)"
            worst = max(cut, key=lambda name: cut[name])
            where = answers_dir(stage_dir or Path("<stage>"), worst) / f"{_slug(suite.key)}.jsonl"
            # A reply cut off counts in `truncated`: what is unanswered beyond it ended its turn without an answer
            ended = cut[worst] - next(row.metrics.get(f"{suite.key}/truncated", cut[worst]) for row in board.rows
                                      if row.candidate == worst)
            if getattr(suite, "thinking_mode", None) == "off":
                # nothing was cut off while thinking: the model ended its turn at once (or opened a block of its own)
                lines.append(f"suite '{suite.key}': {share} gave no answer with thinking off and are graded wrong: "
                             "the candidate ended its turn at once or wrote only a think block of its own; see its "
                             f"answers in {where}")
            elif ended > 0:
                lines.append(f"suite '{suite.key}': {share} gave no answer and are graded wrong; {worst} ended its turn "
                             f"without one after (or inside) its think block in at least {ended:.0%} of its replies, "
                             f"the rest were cut off at max_new_tokens={limit}; see its answers in {where}")
            else:
                lines.append(f"suite '{suite.key}': {share} gave no answer, most likely still thinking at "
                             f"max_new_tokens={limit}, and are graded wrong; raise the suite's max_new_tokens or set "
                             "its thinking_mode to 'off'")
    return lines


def uneven_rows_warnings(board: Leaderboard, config: EvaluateStageConfig) -> list[str]:
    """One line per win-rate suite whose candidates were scored over different rows (a row whose verdict was
    unparsable is dropped): their win rates are not over the same questions."""
    win_rates = {f"{suite.key}/rows": suite for suite in config.suites if isinstance(suite, WinRateSuite)}
    return [f"suite '{win_rates[name].key}': the candidates' win rates are over different rows (a row whose judge "
            f"verdict could not be read is dropped, up to max_unparsable {win_rates[name].max_unparsable:g}): "
            + ", ".join(f"{candidate} {count:g}" for candidate, count in counts.items())
            for name, counts in board.uneven_rows().items() if name in win_rates]


def run_evaluate(
    config: EvaluateStageConfig, ctx: StageContext, *, backend_factory: BackendFactory = transformers_backend
) -> EvaluateResult:
    """Score the candidates and write the leaderboard (the next stage starts from this one's input model)."""
    check_requirements(config)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
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
    check_tokenizer_fits([(c.name, c.path) for c in candidates], Path(ctx.tokenizer_dir),
                         who=f"evaluate stage '{ctx.stage_name}'")
    board = evaluate_candidates(config, ctx, candidates, backend_factory)
    for line in [*unanswered_warnings(board, config, ctx.stage_dir), *uneven_rows_warnings(board, config)]:
        ctx.log.warning("%s: %s", ctx.stage_name, line)
    metrics: dict[str, Scalar] = {"candidates": len(candidates)}
    if (warning := undetermined_warning(board, config.rank_by, board.best())) is not None:
        ctx.log.warning("%s: %s", ctx.stage_name, warning)
        board = board.model_copy(update={"notes": [*board.notes, warning]})
        metrics["warning"] = warning
    json_path, md_path = write_leaderboard(board, ctx.stage_dir, title=f"Leaderboard: {ctx.stage_name}")
    best = board.best()
    if best is not None:
        metrics["best"] = best.candidate
        metrics.update({f"best/{name}": value for name, value in best.metrics.items() if is_headline(name)})
        if tied := board.tied_with_best():
            metrics["tied_with_best"] = ", ".join(row.candidate for row in tied)
            ctx.log.warning("%s: %s ties at the top (%s): %s named best over %s by scoring order, not by the metric",
                            ctx.stage_name, config.rank_by, format_value(best.metrics[config.rank_by]),
                            best.candidate, ", ".join(row.candidate for row in tied))
    elif config.rank_by:
        ctx.log.warning("%s: no candidate has a value of %s: no best model", ctx.stage_name, config.rank_by)
    return EvaluateResult(
        metrics=metrics,
        leaderboard=board,
        files={"leaderboard": json_path, "leaderboard_md": md_path},
    )
