"""Checkpoints that a resume can trust: a `COMPLETE` marker is written after every rank saved
(by the training worker's callback); these helpers read and tidy them without importing torch."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tempa.sft.files import remove_tree, write_marker
from tempa.sft.run_layout import CHECKPOINTS_DIR
from tempa.sft.run_layout import COMPLETE as COMPLETE_MARKER
from tempa.sft.stage_api import Checkpoint

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_saves(train: Mapping[str, Any], steps: int | None, epochs: float | None = None) -> int | None:
    """How many checkpoints a stage with trainer arguments ``train`` writes over ``steps`` optimizer steps
    (``epochs`` for ``save_strategy: epoch``); None when that is not known.

    transformers saves every ``save_steps`` (a value below 1 is a share of the steps) and, with
    ``save_strategy: steps``, at the last step too, so the count rounds up."""
    strategy = str(train.get("save_strategy", "steps"))
    if strategy == "no":
        return 0
    if strategy == "epoch":  # the Trainer ends a last, partial epoch as an epoch: 1.5 epochs save twice
        return None if epochs is None else math.ceil(epochs)
    interval = save_interval(train, steps)
    return None if interval is None else math.ceil(steps / interval)


def save_interval(train: Mapping[str, Any], steps: int | None) -> int | None:
    """Optimizer steps between two saves of ``save_strategy: steps`` (``save_steps``; a value below 1 is a share of
    ``steps``); None for another strategy or when it is not known."""
    every = train.get("save_steps", 500)
    if str(train.get("save_strategy", "steps")) != "steps" or not steps or not isinstance(every, int | float) \
            or every <= 0:
        return None
    return max(1, math.ceil(every * steps) if every < 1 else int(every))


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders in step order (complete or not)."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: Path) -> int:
    """The optimizer step ``checkpoint-N`` was saved at."""
    return int(Path(path).name.split("-")[-1])


def complete_checkpoints(output_dir: Path) -> list[Checkpoint]:
    """The checkpoints whose COMPLETE marker is written, in step order."""
    return [Checkpoint(step=checkpoint_step(p), path=p) for p in checkpoint_dirs(output_dir)
            if (p / COMPLETE_MARKER).is_file()]


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    done = complete_checkpoints(output_dir)
    return done[-1].path if done else None


def resume_point(stage_dir: Path) -> str | None:
    """What a re-run of a training stage continues from (its last complete checkpoint's name), or
    None when it has none yet and training starts again from step 0 (a kill before the first save)."""
    last = last_complete_checkpoint(Path(stage_dir) / CHECKPOINTS_DIR)
    return last.name if last is not None else None


def rotate_checkpoints(output_dir: Path, limit: int | None, inside: Iterable[Path], *,
                       keep: str | Path | None = None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``limit`` (the recipe's ``save_total_limit``).

    Called once the newest checkpoint's marker is written, never before: transformers rotates inside its
    own save, before the marker, and with a limit of 1 a kill between the two left no complete checkpoint
    to resume from. The newest complete checkpoint and ``keep`` (the trainer's best) always stay, as in
    transformers; a checkpoint without its marker is not counted (a resume deletes it).
    """
    if not limit or limit <= 0:
        return []
    complete = [checkpoint.path for checkpoint in complete_checkpoints(Path(output_dir))]
    protected = {path.name for path in complete[-1:]}
    if keep is not None:
        protected.add(Path(keep).name)  # the trainer's own spelling of a path in output_dir
    surplus = len(complete) - max(limit, len(protected))
    removed = []
    for path in complete:
        if surplus <= 0:
            break
        if path.name not in protected:
            remove_tree(path, inside)
            removed.append(path)
            surplus -= 1
    return removed


def remove_incomplete_checkpoints(output_dir: Path, inside: Iterable[Path]) -> list[Path]:
    """Delete checkpoints a kill interrupted mid-save, so neither a resume nor rotation uses them.

    ``inside``: the roots the checkpoints must lie in (the stage's folder)."""
    removed = []
    for path in checkpoint_dirs(output_dir):
        if not (path / COMPLETE_MARKER).is_file():
            remove_tree(path, inside)
            removed.append(path)
    return removed


# Beside each checkpoint's COMPLETE marker: how the training that saved it was launched (:class:`CheckpointLaunch`).
LAUNCH_RECORD = "tempa_launch.json"


@dataclass(frozen=True)
class CheckpointLaunch:
    """What of a training launch a resume depends on: the form its optimizer state is saved in and the batch its data
    order and epoch count follow. ``None``: not known (the plan cannot always tell a launch's process count)."""

    engine: str  # "deepspeed", "fsdp", or "plain": DDP or one process, whose one optimizer.pt any process count loads
    processes: int | None
    global_batch: int | None  # rows per optimizer step: per-device batch x accumulation x data-parallel processes
    zero_stage: int = 0
    sequence_parallel: int = 1
    precision: str | None = None  # DeepSpeed names its optimizer files by it (bf16_zero_pp_rank_*)

    @property
    def label(self) -> str:
        engine = {"deepspeed": f"DeepSpeed ZeRO-{self.zero_stage}", "fsdp": "FSDP"}.get(self.engine, "no sharding")
        where = f"{self.processes} process{'es' if self.processes != 1 else ''}" if self.processes else "? processes"
        batch = f", {self.global_batch} rows per step" if self.global_batch else ""
        return f"{engine} on {where}{batch}"

    def write(self, checkpoint: Path) -> None:
        write_marker(Path(checkpoint) / LAUNCH_RECORD, json.dumps(asdict(self)) + "\n")

    @classmethod
    def read(cls, checkpoint: Path) -> CheckpointLaunch | None:
        """The record in ``checkpoint``; None for one an earlier tempa saved (nothing to compare)."""
        try:
            return cls(**json.loads((Path(checkpoint) / LAUNCH_RECORD).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None


def launch_change(saved: CheckpointLaunch, now: CheckpointLaunch) -> str | None:
    """What would break if a launch like ``now`` resumed a checkpoint saved under ``saved``, or None where it resumes
    as it was cut off (the launcher, torchrun or accelerate, plays no part).

    Another sharding (DeepSpeed, FSDP, none) or ZeRO stage saves the optimizer state in another form: transformers
    started a fresh AdamW without a word, or failed to find the checkpoint. DeepSpeed and FSDP split it over the
    processes (DeepSpeed refuses another count). Another global batch changes which rows each step takes and how many
    steps an epoch has."""
    if saved.engine != now.engine or saved.zero_stage != now.zero_stage:
        return "its optimizer state would not load (a fresh optimizer, or no checkpoint found)"
    sharded = saved.engine != "plain"
    if sharded and None not in (saved.processes, now.processes) and \
            (saved.processes, saved.sequence_parallel) != (now.processes, now.sequence_parallel):
        return "its optimizer state is split over the processes that saved it"
    if saved.engine == "deepspeed" and None not in (saved.precision, now.precision) and saved.precision != now.precision:
        return f"DeepSpeed saved its optimizer state for {saved.precision}, and the launch trains in {now.precision}"
    if None not in (saved.global_batch, now.global_batch) and saved.global_batch != now.global_batch:
        return "the rows each step takes, and the steps of an epoch, would change"
    return None


def launch_refusal(stage: str, checkpoint: Path, saved: CheckpointLaunch, now: CheckpointLaunch) -> str | None:
    """One line refusing to resume ``checkpoint`` of ``stage`` under a launch like ``now``, or None when it may."""
    why = launch_change(saved, now)
    if why is None:
        return None
    return (f"stage '{stage}': {Path(checkpoint).name} was saved by {saved.label} and the launch now is {now.label}: "
            f"resuming it there is not the same training ({why}); put the launch back as it was to resume, or start "
            f"the stage over with `tempa run --only {stage}` (deletes its checkpoints)")
