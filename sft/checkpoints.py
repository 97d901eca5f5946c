"""Checkpoints that a resume can trust: a `COMPLETE` marker is written after every rank saved."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from transformers import TrainerCallback

from tempa.sft.files import remove_tree

COMPLETE_MARKER = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders in step order (complete or not)."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def complete_checkpoints(output_dir: Path) -> list[Path]:
    return [p for p in checkpoint_dirs(output_dir) if (p / COMPLETE_MARKER).is_file()]


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def remove_incomplete_checkpoints(output_dir: Path, inside: Iterable[Path]) -> list[Path]:
    """Delete checkpoints a kill interrupted mid-save, so neither a resume nor rotation uses them.

    ``inside``: the roots the checkpoints must lie in (the run directory)."""
    removed = []
    for path in checkpoint_dirs(output_dir):
        if not (path / COMPLETE_MARKER).is_file():
            remove_tree(path, inside)
            removed.append(path)
    return removed


class CheckpointCompleteCallback(TrainerCallback):
    """Marks ``checkpoint-N`` complete once every process has finished writing it."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # all shards (ZeRO-3 writes one per rank) are on disk before the marker
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir():
                marker = path / COMPLETE_MARKER
                tmp = marker.with_suffix(".tmp")
                tmp.write_text(f"{state.global_step}\n")
                os.replace(tmp, marker)
        return control
