"""Candidate models: complete checkpoints and final models of earlier stages, or given folders."""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tempa.alignment.model_files import damaged_safetensors, tokenizer_vocab, vocab_conflicts
from tempa.sft.checkpoints import checkpoint_saves
from tempa.sft.run_layout import CHECKPOINTS_DIR, FINAL_DIR
from tempa.sft.stage_api import Artifact, StageContext, StageError
from tempa.sft.train_plan import TrainOutcome


@dataclass(frozen=True)
class Candidate:
    """A model folder to score, with the name it has on the leaderboard."""

    name: str
    path: Path
    stage: str | None = None
    step: int | None = None


@dataclass(frozen=True)
class CandidateCount:
    """How many candidates an evaluate stage will score, as far as its recipe says: ``low`` to ``high``
    (None: no bound), and how that was counted."""

    low: int
    high: int | None
    how: str


def checkpoints_kept(train: Mapping[str, Any]) -> tuple[int, int | None]:
    """The fewest and most complete checkpoints a training stage with trainer arguments ``train`` leaves.

    Rotation keeps ``save_total_limit`` (and the trainer's best beside the newest, see ``rotate_checkpoints``);
    transformers saves at the last step with ``save_strategy: steps``, so ``max_steps`` and ``save_steps`` fix
    the count; otherwise it depends on the data (None: no bound)."""
    strategy = str(train.get("save_strategy", "steps"))
    if strategy == "no":
        return 0, 0
    limit = train.get("save_total_limit")
    most = None
    if type(limit) is int and limit > 0:
        most = max(limit, 2) if train.get("load_best_model_at_end") else limit
    steps = train.get("max_steps")
    saves = checkpoint_saves(train, steps) if type(steps) is int and steps > 0 else None
    if strategy == "steps" and saves is not None:
        return (saves, saves) if most is None else (min(saves, limit), min(saves, most))
    return (1 if strategy == "steps" else 0), most


def count_candidates(
    checkpoints_of: Mapping[str, Mapping[str, Any]], *, include_final: bool, stages: int, models: int
) -> CandidateCount:
    """What :func:`collect_candidates` will find, from the recipe: ``checkpoints_of`` maps each stage to its
    trainer arguments. A stage's final model counts unless it is its last checkpoint (``save_strategy: steps``
    saves the last step, so it always is there)."""
    if not checkpoints_of and not stages and not models:
        return CandidateCount(1, 1, "the model it starts from")
    low, high, parts = stages + models, stages + models, []
    for stage, train in checkpoints_of.items():
        fewest, most = checkpoints_kept(train)
        strategy = str(train.get("save_strategy", "steps"))
        if include_final and strategy == "no":
            fewest, most = 1, 1
        elif include_final and strategy != "steps":  # the final may be apart from the last save
            most = None if most is None else most + 1
        low += fewest
        high = None if high is None or most is None else high + most
        count = (
            f"{fewest} or more" if most is None else f"{fewest}" if most == fewest else f"{fewest} to {most}"
        )
        parts.append(
            f"{stage} {count} (save_strategy {strategy}, save_total_limit "
            f"{train.get('save_total_limit')}, max_steps {train.get('max_steps', -1)})"
        )
    parts += [f"{stages} of `stages`"] * bool(stages) + [f"{models} of `models`"] * bool(models)
    return CandidateCount(low, high, ", ".join(parts))


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    )


def checkpoint_name(stage: str, checkpoint: Path, stage_dir: Path) -> str:
    """A checkpoint's leaderboard name: ``<stage>/checkpoint-N``, with the folder it trained in when that is not the
    stage's own (a preference round: ``dpo/round-2/checkpoint-4``; each round counts its steps from 0)."""
    try:
        place = [part for part in checkpoint.relative_to(stage_dir).parts if part != CHECKPOINTS_DIR]
    except ValueError:  # not in the run's layout (a folder given by path): its step says enough
        place = [checkpoint.name]
    return "/".join([stage, *place])


_CHECKPOINT = re.compile(r"checkpoint-\d+")
_ROUND = re.compile(r"round-\d+")  # a preference stage's round folder, which holds its own checkpoints/


def folder_label(path: Path, more: int = 0) -> str:
    """A model folder given by path, as the leaderboard, the log, the summary and the card name it: as a run's
    candidates are named where it lies in a run (``merge-slerp/final``, ``sft/checkpoint-4``,
    ``dpo/round-2/checkpoint-4``), else by its own name; ``more``: that many more of the folders above it, to tell two
    apart. The last name alone (``final``, ``final``) told two inputs apart by nothing."""
    parts = Path(os.path.abspath(path)).parts[1:]  # as written (a run's `final` link names its run), not resolved
    keep = 1
    if parts and parts[-1] == FINAL_DIR:
        keep = 2
    elif len(parts) > 2 and _CHECKPOINT.fullmatch(parts[-1]) and parts[-2] == CHECKPOINTS_DIR:
        keep = 4 if len(parts) > 3 and _ROUND.fullmatch(parts[-3]) else 3
    tail = parts[-min(len(parts), keep + more):] if parts else (str(path),)
    return "/".join(part for part in tail if part != CHECKPOINTS_DIR)


def folder_labels(paths: Sequence[Path], taken: Collection[str] = ()) -> list[str]:
    """Distinct names for ``paths`` (:func:`folder_label`), none of them in ``taken``: where names clash, each folder
    of the clash is named by one more folder above it, until they differ; paths that differ in no folder (the same
    one given twice) get ``-2``, ``-3``. A folder's name depends only on the paths beside it, never on their order."""
    more = [0] * len(paths)
    where = [os.path.abspath(path) for path in paths]
    while True:
        labels = [folder_label(path, extra) for path, extra in zip(paths, more, strict=True)]
        clashing = [i for i, label in enumerate(labels) if label in taken
                    or any(other == label and where[j] != where[i] for j, other in enumerate(labels))]
        longer = [i for i in clashing if folder_label(paths[i], more[i] + 1) != labels[i]]
        if not longer:
            break
        for i in longer:
            more[i] += 1
    named: list[str] = []
    for label in labels:
        name, suffix = label, 2
        while name in taken or name in named:
            name, suffix = f"{label}-{suffix}", suffix + 1
        named.append(name)
    return named


def check_tokenizer_fits(models: Sequence[tuple[str, Path]], tokenizer_dir: Path, *, who: str) -> None:
    """The run's tokenizer must hold no id beyond any model's embedding rows (a pad token the bake added past the
    base's vocabulary, a folder trained with a smaller one): such an id stops torch mid-run ('index out of range in
    self', a device-side assert on a GPU) naming no model. Nor may it give an id another token than the model's own
    tokenizer.json does. ``models``: (name, folder) pairs."""
    from transformers import AutoTokenizer

    from tempa.chat_templates.baking import model_vocab_size  # the bake's reading (a nested text_config too)

    size = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    vocab = tokenizer_vocab(tokenizer_dir)
    for name, path in models:
        vocab_size = model_vocab_size(path)
        if vocab_size is not None and size > vocab_size:
            raise StageError(f"{who}: cannot use tokenizer {tokenizer_dir} with {name} ({path}): it has {size} tokens, "
                             f"but the model's embeddings hold {vocab_size} (vocab_size)")
        # A model trained with another tokenizer of the same size: its rows would be read as other tokens.
        own = tokenizer_vocab(path)
        if vocab is not None and own is not None and (conflicts := vocab_conflicts(vocab, own)):
            what, mine, theirs = conflicts[0]
            raise StageError(f"{who}: cannot use tokenizer {tokenizer_dir} with {name} ({path}): their vocabularies "
                             f"disagree ({what}: {mine} in the tokenizer, {theirs} in the model's; {len(conflicts)} in "
                             "all); use the tokenizer the model was trained with")


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
    scored_as: dict[Path, str] = {}  # model_identity -> the candidate that scores those weights

    def add(candidate: Candidate, what: str) -> None:
        # One set of weights is one candidate, however the recipe reaches it (`checkpoints_of` and `stages` both
        # naming a stage, a folder given by path): listed twice, the two rows always tie, and a top-k selection
        # picked both, so the merge failed after all training on "the same model is listed twice".
        identity = model_identity(candidate.path)
        if identity in scored_as:
            ctx.log.info("%s: %s is the weights of %s: scored once, as that candidate", who, what, scored_as[identity])
            return
        scored_as[identity] = candidate.name
        candidates.append(candidate)

    for stage in checkpoints_of:
        checkpoints = ctx.upstream_result(stage, Artifact.MODEL, who=who).checkpoints
        for checkpoint in checkpoints:
            add(Candidate(checkpoint_name(stage, checkpoint.path, ctx.stage_dir.parent / stage), checkpoint.path,
                          stage, checkpoint.step), f"checkpoint {checkpoint.path}")
        if include_final:
            final = ctx.model_of(stage, who=who)
            last = checkpoints[-1] if checkpoints else None
            if last is not None and trained_step(final) == last.step:
                # the last checkpoint's weights again: scored twice, a top-k merge would merge them with themselves
                ctx.log.info("%s: %s's final model is the weights of %s (its last step): scored once, as the "
                             "checkpoint", who, stage, candidates[-1].name)
            else:
                add(Candidate(stage, final, stage), f"{stage}'s final model")
        elif not checkpoints:
            raise StageError(f"{who}: stage '{stage}' has no complete checkpoint")
    for stage in stages:
        add(Candidate(stage, ctx.model_of(stage, who=who), stage), f"{stage}'s final model")
    paths = [Path(folder) for folder in models]
    for path, name in zip(paths, folder_labels(paths, {c.name for c in candidates}), strict=True):
        add(Candidate(name, path), f"folder {path}")
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
        if (problem := damaged_safetensors(candidate.path)) is not None:
            raise StageError(f"{who}: candidate {candidate.name}: {problem}; {rewrite_advice(candidate.stage)}")
        seen[candidate.name] = candidate
    return candidates



def rewrite_advice(stage: str | None) -> str:
    """What to do about an unreadable model folder that ``stage`` wrote (None: a folder given by path)."""
    if stage is None:
        return "replace the folder with a whole copy, or drop it from the recipe"
    return f"re-run stage '{stage}' to write it again (tempa run --from {stage})"


def model_identity(model: Path) -> Path:
    """What decides whether two references name one model: the folder, or for a stage's final model that holds its
    last checkpoint's weights (an evaluate stage scores it as that checkpoint), that checkpoint's folder. A merge's
    base named by its stage (``sft-a``: its final/) is then the board's ``sft-a/checkpoint-4`` too."""
    model = Path(model).resolve()
    step = trained_step(model)
    if step is not None and model.name == FINAL_DIR:
        checkpoint = model.parent / CHECKPOINTS_DIR / f"checkpoint-{step}"
        if checkpoint.is_dir():
            return checkpoint.resolve()
    return model


def trained_step(model: Path) -> int | None:
    """The optimizer step a trained model stopped at (its training outcome), or None (a merge, a folder)."""
    try:
        return TrainOutcome.read(model).global_step
    except (StageError, OSError, ValueError):
        return None
