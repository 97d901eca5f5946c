"""The `sft` stage: prepare (curate, mix, tokenise, cache) the data here, train in a launched group.

Data work happens once, in the runner's process; the launched processes only load the saved,
tokenised datasets. That keeps N training processes from repeating the preparation and lets a
user re-run the training part by hand from `logs/launch.sh`.
"""

from __future__ import annotations

import re
from pathlib import Path

from tempa.sft.checkpoints import (
    complete_checkpoints,
    last_complete_checkpoint,
    remove_incomplete_checkpoints,
)
from tempa.sft.config import SFTStageConfig
from tempa.sft.data_config import DataConfig
from tempa.sft.data_report import DataMix
from tempa.sft.run_layout import DATA_DIR, LOGS_DIR, TRAIN_PLAN
from tempa.sft.stage_api import EvalPrompts, RunPath, StageContext, StageError, StageResult
from tempa.sft.train_plan import OUTCOME_FILE, WORKER, TrainOutcome, TrainPlan, train_plan

__all__ = ["SFTResult", "SFTStageConfig", "run_sft"]


class SFTResult(StageResult):
    """An sft stage's result: its model and checkpoints, plus the data mix it trained on."""

    data: DataMix
    # What this stage and the sft stages its start model came from trained on (data/instructions.npz,
    # :class:`~tempa.sft.data.StageInstructions`): a later stage that builds on its model checks its held-out rows
    # against it. None in a result of a tempa that did not record it.
    instructions: RunPath | None = None


def trained_before(ctx: StageContext) -> frozenset[int]:
    """The instructions the sft stages behind this stage's start model trained on (their ``instructions``), read
    from the upstream stage whose model this one starts from; empty for the base model or a stage that did not record
    them."""
    from tempa.sft.data import StageInstructions

    for stage in ctx.upstream.values():
        result = stage.result
        if isinstance(result, SFTResult) and result.model == ctx.start_model and result.instructions is not None:
            read = StageInstructions.read(result.instructions)
            return read.trained if read is not None else frozenset()
    return frozenset()


def check_inputs(config: SFTStageConfig) -> None:
    """Before the run's first stage: every local source has rows to read (:func:`~tempa.sft.sources.check_source`)
    in a file the run can parse and a format it can tell (:func:`~tempa.sft.sources.check_source_rows`), so an
    empty file, a truncated JSON document or a CSV of unknown columns in a later stage is not found after the stages
    before it have trained."""
    from tempa.sft.sources import check_source, check_source_rows

    for source in config.data.sources:
        check_source(source)
        check_source_rows(source)


def input_warnings(config: SFTStageConfig) -> list[str]:
    """Each local source whose first rows fit no row of its format (:func:`~tempa.sft.data_size.format_problem`) or
    pass none of the stage's filters (:func:`~tempa.sft.data_size.rejects_problem`), or that is set to think and of
    whose rows drawn across it none has a trace (:func:`~tempa.sft.data_size.trace_problem`)."""
    from tempa.sft.data_size import accepted_languages, format_problem, rejects_problem, trace_problem

    accepted = accepted_languages(config)
    problems = []
    for source in config.data.sources:
        # a format none of the first rows fits is the likelier mistake: the filters' reasons would only repeat it
        first = format_problem(source) or rejects_problem(source, config.data.curation, accepted.get(source.name))
        problems += [problem for problem in (first, trace_problem(source)) if problem is not None]
    if config.data.curation.language is None:
        # `languages` names the targets of the language filter alone: without the filter it keeps every row
        unfiltered = [source.name for source in config.data.sources if source.languages]
        if unfiltered:
            problems.append(f"data source{'s' if len(unfiltered) > 1 else ''} {', '.join(map(repr, unfiltered))} "
                            "set `languages`, but the stage's language filter is off, so no row is checked against "
                            "them: set `curation: {language: true}` (or its settings) to filter")
    return problems


def run_sft(config: SFTStageConfig, ctx: StageContext) -> SFTResult:
    from transformers import AutoTokenizer

    from tempa.sft.data import INSTRUCTIONS_FILE, StageInstructions, prepare_sft_data
    from tempa.sft.sources import forget_parsed_documents

    data_dir = ctx.stage_dir / DATA_DIR
    train_args = config.train_args()
    tokenizer = AutoTokenizer.from_pretrained(ctx.tokenizer_dir)
    ctx.log.info("%s: %s", ctx.stage_name, decontamination_summary(config.data, ctx.eval_prompts))
    earlier = trained_before(ctx)
    prepared = prepare_sft_data(
        resolve_stage_sources(config.data, ctx),
        tokenizer,
        out_dir=data_dir,
        cache_dir=(ctx.cache_dir or ctx.stage_dir / "cache") / "sft-data",
        seed=ctx.seed,
        max_length=train_args.get("max_length"),
        eval_prompts=ctx.eval_prompts,
        trained_before=earlier,
    )
    forget_parsed_documents()
    instructions = None
    if prepared.instructions is not None:
        # the start model's whole lineage, so a third stage checks against the first one's rows too
        instructions = data_dir / INSTRUCTIONS_FILE
        StageInstructions(prepared.instructions.trained | earlier).write(instructions)
    if len(prepared.train) == 0:
        raise StageError(f"no training rows left after curation (see {data_dir / 'mix.json'})")
    # The launched processes memory-map the tokenised splits straight from the cache.
    eval_path = prepared.eval_path if prepared.eval is not None and len(prepared.eval) else None

    plan = train_plan(ctx, trainer="sft", start_model=ctx.start_model, train_data=prepared.train_path,
                      eval_data=eval_path, out_dir=ctx.stage_dir, train_args=train_args, seed=ctx.seed,
                      lora=config.lora)
    # `on` is the default, which renders each row in the mode its text fits: only a source the recipe set to think
    # (or to mix) says it expects traces
    asked = {source.name for source in config.data.sources if "thinking_mode" in source.model_fields_set}
    data_notes = [*prepared.mix.rejecting_sources(), *prepared.mix.traceless_sources(asked)]
    for line in data_notes:
        ctx.log.warning("%s: %s", ctx.stage_name, line)
    outcome = launch_training(plan, ctx)
    mix = prepared.mix
    # `train_tokens` is what the trainer saw (the headline's, over every epoch and step); `data_tokens` is one pass
    # over the prepared rows. Samples, not rows: a `mixed` row can give one rendering in each mode (mix.json has both).
    metrics = {**outcome.headline(), "train_samples": mix.total.train_samples, "eval_samples": mix.total.eval_samples,
               "data_tokens": mix.total.tokens_kept, "thinking_on_rows": mix.total.thinking_on_rows_kept}
    return SFTResult(model=plan.final_dir, checkpoints=complete_checkpoints(plan.checkpoints_dir),
                     metrics=metrics, data=mix, instructions=instructions,
                     # named by stage: two stages reading one source gave the run's closing notes one line twice
                     notes=[f"{ctx.stage_name}: {line}" for line in
                            [*decontamination_notes(config.data, ctx.eval_prompts), *data_notes]])


def decontamination_notes(data: DataConfig, prompts: EvalPrompts) -> list[str]:
    """What the run should know about the evaluation prompts this stage's rows were not checked against."""
    if not data.curation.decontaminate:
        return []
    return [f"training data not checked against {suite}" for suite in prompts.unchecked]


def decontamination_summary(data: DataConfig, prompts: EvalPrompts) -> str:
    """One line for `tempa plan`: how many evaluation prompts the stage's training rows are checked against."""
    if not data.curation.decontaminate:
        return "training rows not checked against evaluation prompts (curation.decontaminate: false)"
    from tempa.sft.data import contamination_index

    unchecked = f"; not checked: {', '.join(prompts.unchecked)}" if prompts.unchecked else ""
    # distinct as the check compares them: suites that share a file, or repeat a prompt, count it once
    distinct = len(contamination_index(data, prompts))
    if not distinct:
        return f"no evaluation prompts to check the training rows against{unchecked}"
    return f"training rows checked against {distinct} distinct evaluation prompts{unchecked}"


def launch_training(plan: TrainPlan, ctx: StageContext) -> TrainOutcome:
    """Clear half-saved checkpoints, write the plan, run the worker (it resumes from the last complete
    checkpoint) and read what it reports: every training stage kind's launch (sft, pretrain, rl, each preference
    round, in ``plan.out_dir``), so a damaged checkpoint or file is named the same way by each
    (:func:`damaged_file_hint`)."""
    for path in remove_incomplete_checkpoints(plan.checkpoints_dir, [ctx.stage_dir]):
        ctx.log.warning("removed incomplete checkpoint %s (interrupted while saving)", path.name)
    resume = last_complete_checkpoint(plan.checkpoints_dir)
    if resume is not None:
        ctx.log.info("will resume from %s", resume)
    plan_path = plan.write(plan.out_dir / TRAIN_PLAN)
    before = _published(plan.final_dir)
    try:
        ctx.launch(WORKER, ["--plan", str(plan_path)], plan.out_dir / LOGS_DIR / "train.log")
    except StageError as exc:
        if (after := _published(plan.final_dir)) is not None and after != before:
            # The final model is whole: rank 0 publishes it after every process took part in its save, and only a
            # barrier is left. A process that crashed while exiting (torch's "terminate called without an active
            # exception") failed the stage at its very end, and a re-run only read the model back.
            ctx.log.warning("%s: the training processes ended with an error after the final model was published "
                            "(%s): keeping it", ctx.stage_name, exc)
            return TrainOutcome.read(plan.final_dir)
        hint = damaged_file_hint(str(exc), resume, plan.train_data, plan.out_dir)
        if hint is None:
            raise
        raise StageError(f"{exc}{hint}") from None
    return TrainOutcome.read(plan.final_dir)


def _published(final_dir: Path) -> int | None:
    """When the worker published ``final_dir`` (its outcome record's mtime, ns), or None when it has not."""
    try:
        return (final_dir / OUTCOME_FILE).stat().st_mtime_ns
    except OSError:
        return None


# What safetensors, torch and Arrow say of a file cut short or damaged after it was written (a disk, a copy): the
# worker's last line names no file, and every run meets it again.
_DAMAGED_FILE = re.compile(r"SafetensorError|incomplete metadata|deserializ|PytorchStreamReader|unexpected EOF|"
                           r"Expected to be able to read \d+ bytes|not a valid Arrow|ArrowInvalid", re.IGNORECASE)
# ...but a save that failed (a full disk) damaged nothing it read: the disk-full advice is the runner's.
_FAILED_WRITE = re.compile(r"while serializing|No space left|os error 28|Errno 28|quota exceeded", re.IGNORECASE)


def damaged_file_hint(error: str, resume: Path | None, train_data: Path, out_dir: Path | None = None) -> str | None:
    """What to move aside when a launch failed reading a damaged file: the checkpoint it resumed from (its files
    were whole when COMPLETE was written, so something damaged them since), else the prepared data's cache entry
    (data in ``out_dir``, the launch's folder, is no cache entry: an rl stage's prompts, a round's pairs). None for
    any other failure."""
    if not _DAMAGED_FILE.search(error) or _FAILED_WRITE.search(error):
        return None
    if resume is not None:
        return (f"; it was resuming from {resume}, whose files may have been damaged since they were saved: move that "
                "folder aside and run again to resume from the checkpoint before it (or from the start)")
    if out_dir is not None and train_data.is_relative_to(out_dir):  # an rl stage's prompts, a round's pairs
        return (f"; a file it read may be damaged: its data ({train_data}, which the stage writes) or the model it "
                "starts from")
    return (f"; a file it read may be damaged: the prepared data ({train_data.parent}, in the cache) or the model it "
            "starts from; delete that cache folder and run again to prepare the data anew")


def resolve_stage_sources(data: DataConfig, ctx: StageContext) -> DataConfig:
    """Point `stage:NAME` sources at the dataset that earlier stage wrote."""
    sources = []
    for source in data.sources:
        ref = source.stage_ref
        if ref is not None:
            source = source.model_copy(
                update={"path": str(ctx.dataset_of(ref, who=f"data source '{source.name}'"))})
        sources.append(source)
    return data.model_copy(update={"sources": sources})
