"""The ``merge`` stage: merge the best checkpoints with mergekit, then re-score the result.

Outputs in the stage folder: ``mergekit.yaml`` (the exact config mergekit ran, absolute paths),
``final/`` (merged weights + the recipe's tokenizer with its baked template),
``merge_summary.json`` (method, inputs, weights, selection; also in the stage's result), and, when
re-scored, ``leaderboard.json`` / ``leaderboard.md``: the evaluate stage's board plus the merged model.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

from tempa.alignment.model_files import damaged_safetensors
from tempa.merge.candidates import (
    check_tokenizer_fits,
    folder_label,
    is_model_dir,
    model_identity,
    rewrite_advice,
)
from tempa.merge.evaluate_config import EvaluateStageConfig
from tempa.merge.evaluate_stage import (
    BackendFactory,
    EvaluateResult,
    cached_scores,
    load_suite_rows,
    transformers_backend,
    weights_digest,
    write_answers,
)
from tempa.merge.leaderboard import (
    LEADERBOARD_MD,
    Leaderboard,
    LeaderboardRow,
    format_compared,
    is_headline,
    undetermined_warning,
    write_leaderboard,
)
from tempa.merge.merge_config import MergeStageConfig, check_input_count, check_weight_sum, method_spec
from tempa.merge.merge_result import (
    RECIPE_BASE,
    MergedModel,
    MergeResult,
    MergeSummary,
    Reevaluation,
    Selection,
)
from tempa.merge.mergekit_run import (
    MergeInput,
    build_mergekit_config,
    check_compatible,
    mergekit_options,
    run_mergekit,
)
from tempa.merge.selection import select_top_k_with_ties
from tempa.sft.files import staging_dir, write_atomic
from tempa.sft.run_layout import FINAL_DIR
from tempa.sft.stage_api import Artifact, Scalar, StageContext, StageError

MERGEKIT_CONFIG = "mergekit.yaml"
SUMMARY_FILE = "merge_summary.json"


def _who(ctx: StageContext) -> str:
    return f"merge stage '{ctx.stage_name}'"


def _evaluation(config: MergeStageConfig, ctx: StageContext) -> tuple[Leaderboard, EvaluateStageConfig] | None:
    """The evaluate stage's leaderboard and its config (whose suites re-score the merge)."""
    if config.evaluate_stage is None:
        return None
    upstream = ctx.upstream.get(config.evaluate_stage)
    result = ctx.upstream_result(config.evaluate_stage, Artifact.LEADERBOARD, who=_who(ctx))
    assert upstream is not None and isinstance(result, EvaluateResult)
    assert isinstance(upstream.config, EvaluateStageConfig)
    board = result.leaderboard
    if config.select is not None and config.select.higher_is_better is not None:
        # The recipe's direction for the metric it selects by: selection, the merge's judgement and the board after
        # the merge all read it from the board (it is set exactly where the name's direction is wrong).
        board = board.model_copy(update={"lower": {**board.lower,
                                                   config.select.metric: not config.select.higher_is_better}})
    return board, upstream.config


def resolve_reference(reference: str, ctx: StageContext, board: Leaderboard | None) -> MergeInput:
    """A stage name, a leaderboard candidate name, or a model folder -> an absolute model folder."""
    if reference in ctx.upstream and ctx.upstream[reference].result.model is not None:
        return MergeInput(reference, ctx.model_of(reference, who=_who(ctx)).resolve())
    if board is not None:
        for row in board.rows:
            if row.candidate == reference:
                return MergeInput(reference, Path(row.path).resolve())
        # A preference round's checkpoint as it was named before candidates named their round (dpo/checkpoint-4 for
        # dpo/round-2/checkpoint-4): one round's checkpoints are scored, so the old name is no guess.
        stage, _, checkpoint = reference.partition("/")
        rounds = [row for row in board.rows if row.candidate.startswith(f"{stage}/round-")
                  and row.candidate.endswith(f"/{checkpoint}") and row.candidate.count("/") == 2] if checkpoint else []
        if len(rounds) == 1:
            return MergeInput(rounds[0].candidate, Path(rounds[0].path).resolve())
    path = Path(reference).expanduser()
    if path.is_absolute() and is_model_dir(path):
        return MergeInput(folder_label(path), path.resolve())
    if board is None:
        hint = ("; a checkpoint is named so on an evaluate stage's leaderboard: set evaluate_stage, or give its "
                "folder's path") if "/" in reference and not path.is_absolute() else ""
    else:
        names = [row.candidate for row in board.rows]
        hint = f"; the leaderboard's candidates: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
    raise StageError(
        f"{_who(ctx)}: '{reference}' is neither an earlier stage's model, a leaderboard candidate, "
        f"nor a model folder (config.json + safetensors){hint}"
    )


def resolve_inputs(
    config: MergeStageConfig, ctx: StageContext, board: Leaderboard | None
) -> tuple[list[MergeInput], MergeInput | None, list[LeaderboardRow], list[LeaderboardRow]]:
    """The models to merge (best first), the base model, the leaderboard rows chosen, and those left out that tie
    with the last chosen."""
    chosen: list[LeaderboardRow] = []
    tied: list[LeaderboardRow] = []
    if config.select is not None:
        assert board is not None  # the config validator requires evaluate_stage with select
        # A task-vector merge's base is no pick: "merge the best three" onto it means three models besides it.
        leave_out = None
        if config.base_role(config.select.top_k) == "separate":
            leave_out = (resolve_reference(config.base_model, ctx, board).path if config.base_model is not None
                         else ctx.base_model.resolve())
        chosen, tied = select_top_k_with_ties(board, config.select.metric, config.select.top_k, leave_out=leave_out)
        if (warning := undetermined_warning(board, config.select.metric, chosen[0])) is not None:
            ctx.log.warning("%s: %s", ctx.stage_name, warning)
        for row in chosen:
            # The board outlives its folders: checkpoints deleted to free disk, or rotated, after it was scored.
            if not is_model_dir(Path(row.path)):
                redo = f", or re-run from {row.stage} (tempa run --from {row.stage})" if row.stage else ""
                raise StageError(
                    f"{_who(ctx)}: {row.candidate}, chosen from {config.evaluate_stage}'s leaderboard, is no longer "
                    f"a model folder at {row.path} (removed since {config.evaluate_stage} scored it?); "
                    f"restore it{redo}"
                )
        models = [MergeInput(row.candidate, Path(row.path).resolve(), rank) for rank, row in enumerate(chosen)]
    else:
        models = [replace(resolve_reference(reference, ctx, board), slot=slot)
                  for slot, reference in enumerate(config.models or [])]
    if len({model_identity(m.path) for m in models}) != len(models):
        raise StageError(f"{_who(ctx)}: the same model is listed twice: {[m.name for m in models]}")

    role = config.base_role(len(models))
    base: MergeInput | None = None
    if role == "first_input":
        if config.base_model is not None:
            wanted = resolve_reference(config.base_model, ctx, board)
            matching = [m for m in models if m.path == wanted.path]
            if not matching:
                raise StageError(f"{_who(ctx)}: {config.method}'s base_model must be one of the models it merges")
            models = matching + [m for m in models if m.path != wanted.path]
        base = models[0]
    elif role == "separate":
        if config.base_model is not None:
            base = resolve_reference(config.base_model, ctx, board)
        elif is_model_dir(ctx.base_model):
            base = MergeInput(RECIPE_BASE, ctx.base_model.resolve())
        else:
            raise StageError(f"{_who(ctx)}: method {config.method} needs a base model; set base_model")
        base_identity = model_identity(base.path)
        if any(model_identity(m.path) == base_identity for m in models):
            ctx.log.info("%s: %s is the base model, so it is merged as the base, not as one of the models",
                         ctx.stage_name, base.name)
        models = [m for m in models if model_identity(m.path) != base_identity]
    try:
        check_input_count(method_spec(config.method), len(models), role)
        if config.weights is not None:  # the entries of the models merged: a base among them took its own along
            weights = [config.weights[i if m.slot is None else m.slot] for i, m in enumerate(models)]
            check_weight_sum(method_spec(config.method), weights, config.parameters)
    except ValueError as error:
        where = f"; base {base.path}" if role == "separate" and base is not None else ""
        raise StageError(f"{_who(ctx)}: {error}{where}") from None
    return models, base, chosen, tied


def finish_model_dir(out_dir: Path, ctx: StageContext, donor: Path) -> None:
    """Put the recipe's tokenizer (baked template) and a generation config beside merged weights."""
    from transformers import AutoTokenizer

    for stale in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    ):
        (out_dir / stale).unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(ctx.tokenizer_dir, trust_remote_code=ctx.trust_remote_code)
    if ctx.chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = ctx.chat_template
    tokenizer.save_pretrained(out_dir)
    for source in (Path(ctx.tokenizer_dir), donor):
        if (source / "generation_config.json").is_file():
            shutil.copy2(source / "generation_config.json", out_dir / "generation_config.json")
            break


def base_row(board: Leaderboard | None, models: list[MergeInput], base: MergeInput | None) -> LeaderboardRow | None:
    """The board's row of a base merged onto the inputs (not one of them), or None: the card and the note name it, as
    the selection left it out and the merge is worth comparing with it."""
    if board is None or base is None or base in models:
        return None
    identity = model_identity(base.path)
    return next((row for row in board.rows if not row.merged and model_identity(Path(row.path)) == identity), None)


def _number(value: float | None) -> float | None:
    """A board's value as the summary keeps it: None for none (NaN on the board)."""
    return None if value is None or math.isnan(value) else value


def best_input(board: Leaderboard, metric: str, inputs: set[Path]) -> LeaderboardRow | None:
    """The best row of ``board`` by ``metric`` among the models merged (``inputs``: their
    :func:`~tempa.merge.candidates.model_identity`), or None where none has a value of it. Of inputs tied at the best
    value, the first in the board's order, the one the selection ranks first (scoring order named another)."""
    scored = [row for row in board.ranked() if not row.merged and model_identity(Path(row.path)) in inputs
              and not math.isnan(row.metrics.get(metric, math.nan))]
    sign = 1.0 if board.lower_is_better(metric) else -1.0
    return min(scored, key=lambda row: sign * row.metrics[metric], default=None)


def _direction_adjusted(lower: bool, merged: float, best: float) -> float:
    """How much better the merge is than the best input (positive = better), in metric units."""
    return best - merged if lower else merged - best


def run_merge(
    config: MergeStageConfig, ctx: StageContext, *, backend_factory: BackendFactory = transformers_backend
) -> MergeResult:
    """Select, check, merge, attach the tokenizer, re-score; returns the merged model."""
    stage_dir = ctx.stage_dir
    stage_dir.mkdir(parents=True, exist_ok=True)
    evaluation = _evaluation(config, ctx)
    board = evaluation[0] if evaluation else None

    models, base, chosen, tied = resolve_inputs(config, ctx, board)
    scored_base = base_row(board, models, base)
    everything = models + ([base] if base is not None and base not in models else [])
    for model in everything:
        # before mergekit, whose safetensors error names neither the model nor the file
        if (problem := damaged_safetensors(model.path)) is not None:
            stage = model.name.split("/", 1)[0]
            raise StageError(f"{_who(ctx)}: {model.name}: {problem}; "
                             f"{rewrite_advice(stage if stage in ctx.upstream else None)}")
    check_compatible(everything)
    check_tokenizer_fits([(m.name, m.path) for m in everything], Path(ctx.tokenizer_dir), who=_who(ctx))
    merge_config = build_mergekit_config(config, models, base)
    options = mergekit_options(config, seed=ctx.seed, trust_remote_code=ctx.trust_remote_code)
    ctx.log.info(
        "%s: %s of %s%s",
        ctx.stage_name,
        config.method,
        ", ".join(m.name for m in models),
        f" (base {base.name})" if base is not None and base not in models else "",
    )

    final = stage_dir / FINAL_DIR
    with staging_dir(final, inside=[stage_dir]) as tmp:
        run_mergekit(merge_config, tmp, options, config_path=stage_dir / MERGEKIT_CONFIG)
        finish_model_dir(tmp, ctx, donor=models[0].path)

    knobs = {str(entry.model): entry.parameters or {} for entry in merge_config.models}
    summary = MergeSummary(
        method=config.method,
        models=[MergedModel(name=m.name, path=m.path, parameters=knobs.get(str(m.path), {})) for m in models],
        base_model=None if base is None else MergedModel(name=base.name, path=base.path),
        parameters=merge_config.parameters or {},
        selection=None if config.select is None or config.evaluate_stage is None else Selection(
            evaluate_stage=config.evaluate_stage, metric=config.select.metric, top_k=config.select.top_k,
            values={row.candidate: row.metrics[config.select.metric] for row in chosen},
            tied={row.candidate: row.metrics[config.select.metric] for row in tied},
            base=None if scored_base is None else scored_base.candidate,
            base_value=None if scored_base is None else _number(scored_base.metrics.get(config.select.metric))),
    )
    metrics: dict[str, Scalar] = {"models_merged": len(models)}
    updated: Leaderboard | None = None
    files = {"mergekit_config": stage_dir / MERGEKIT_CONFIG, "summary": stage_dir / SUMMARY_FILE}
    notes: list[str] = []

    if config.reevaluate and evaluation is not None:
        board, evaluate_config = evaluation
        ctx.log.info(
            "%s: re-scoring the merged model with %s's suites", ctx.stage_name, config.evaluate_stage
        )
        rows = load_suite_rows(evaluate_config)
        # cached as the evaluate stage caches a candidate's, by the merged weights' content: a re-run that merges
        # the same model again asks no judge again
        merged_metrics, answers = cached_scores(final, weights_digest(final), evaluate_config, ctx, rows,
                                                backend_factory, who=ctx.stage_name)
        write_answers(stage_dir, ctx.stage_name, answers)  # as auditable as an evaluate stage's candidates
        rank_by = board.rank_by or (config.select.metric if config.select else None)
        # the evaluate board's notes, and this merge's own: the report shows the last board, which is this one
        picked = undetermined_warning(board, config.select.metric, chosen[0]) if config.select and chosen else None
        updated = Leaderboard(
            rows=[row for row in board.rows if row.candidate != ctx.stage_name]
            + [LeaderboardRow(candidate=ctx.stage_name, path=final, stage=ctx.stage_name, merged=True,
                              metrics=merged_metrics)],
            rank_by=rank_by,
            lower=board.lower,
            notes=list(dict.fromkeys([*board.notes, *([picked] if picked else [])])),
        )
        json_path, _ = write_leaderboard(updated, stage_dir, title=f"Leaderboard after merge: {ctx.stage_name}")
        files["leaderboard"] = json_path
        metrics.update(
            {f"merged/{name}": value for name, value in merged_metrics.items() if is_headline(name)}
        )
        focus = config.select.metric if config.select else rank_by
        if focus and focus in merged_metrics:
            # by the model, not the name: an input named by its stage (`sft-b`) is scored as `sft-b/checkpoint-4`
            best_row = best_input(board, focus, {model_identity(m.path) for m in models})
            if best_row is not None:
                lower = board.lower_is_better(focus)
                best, best_name = best_row.metrics[focus], best_row.candidate
                merged = merged_metrics[focus]
                gain = _direction_adjusted(lower, merged, best)
                metrics.update({"metric": focus, "best_input": best, "gain_over_best_input": gain,
                                "merge_helped": gain > 0})
                # A base ranked above the inputs (the top_k leaves it out as the base) can beat a merge that beats
                # every input: then the merge made the model worse, which its inputs alone do not show.
                base_value = None if scored_base is None else _number(scored_base.metrics.get(focus))
                beat_base = None if base_value is None else _direction_adjusted(lower, merged, base_value) > 0
                summary.reevaluation = Reevaluation(
                    metric=focus, merged=merged, best_input=best, helped=gain > 0, best_input_name=best_name,
                    base=None if base_value is None else scored_base.candidate, base_value=base_value,
                    beat_base=beat_base)
                if gain <= 0 or beat_base is False:
                    verdict = "improved on" if gain > 0 else "did not improve on"
                    shown_merged, shown_best, shown_base = format_compared(merged, best, base_value)
                    against_base = "" if beat_base is None else (
                        f", {'but improved on' if beat_base else 'but not on' if gain > 0 else 'nor on'} its base "
                        f"({shown_base} for {scored_base.candidate})")
                    notes.append(f"{ctx.stage_name}: the merged model {verdict} its best input "
                                 f"({focus} {shown_merged} merged, {shown_best} for {best_name})"
                                 f"{against_base}; see {ctx.stage_name}/{LEADERBOARD_MD}")
                    ctx.log.warning("%s", notes[-1])
    elif config.reevaluate:
        ctx.log.info("%s: no evaluate_stage, so the merged model is not re-scored", ctx.stage_name)

    write_atomic(stage_dir / SUMMARY_FILE, summary.model_dump_json(indent=2) + "\n")
    return MergeResult(model=final, metrics=metrics, files=files, summary=summary, leaderboard=updated, notes=notes)
