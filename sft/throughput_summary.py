"""Throughput numbers without the training machinery: device peaks, the ETA format, and the run's
averages a stage's metrics carry (the meter itself, a Trainer callback, is in :mod:`tempa.sft.throughput`).

Kept apart so that `tempa plan` and the stages read them without importing transformers or torch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from tempa.sft.run_layout import CHECKPOINTS_DIR, PASS_PROGRESS, TRAIN_PROGRESS

# Peak dense (no sparsity) bf16/fp16 tensor FLOP/s by device-name fragment; the first match wins.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989.4e12),
    ("H100", 989.4e12),
    ("H200", 989.4e12),
    ("H800", 989.4e12),
    ("A100", 312e12),
    ("L40S", 362.1e12),
    ("A10G", 70e12),
)

# Keys of the Trainer's last log (the run's averages) that a stage's metrics carry.
SUMMARY_KEYS = ("train_tokens", "train_tokens_per_s", "train_mfu", "train_padding_fraction")


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a device named like ``torch.cuda.get_device_name()``; None if unknown."""
    for fragment, peak in PEAK_FLOPS:
        if fragment.lower() in device_name.lower():
            return peak
    return None


def format_eta(seconds: float) -> str:
    """``h:mm:ss`` (hours keep growing past 24)."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TrainProgress(BaseModel):
    """A training launch's last progress line, kept where `tempa status` (another process) reads it for a running
    stage: how far it is and when it will end, without reading its logs."""

    model_config = ConfigDict(extra="forbid")

    step: int
    max_steps: int
    eta_s: float | None = None  # at ``at``; None once the last step is done
    tokens_per_s: float | None = None  # per device
    at: float  # time.time() of the line

    def note(self, now: float | None = None) -> str:
        """``step 52/600, eta 1:02:03, 1,234 tok/s/device (12 s ago)``, the ETA counted down to ``now``."""
        now = time.time() if now is None else now
        ago = max(0.0, now - self.at)
        parts = [f"step {self.step}/{self.max_steps}"]
        if self.eta_s is not None:
            parts.append(f"eta {format_eta(max(0.0, self.eta_s - ago))}")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:,.0f} tok/s/device")
        return ", ".join(parts) + f" ({f'{ago:.0f} s' if ago < 120 else format_eta(ago)} ago)"


class PassProgress(BaseModel):
    """A journaled pass's last progress (sampling, scoring, judging, a teacher's answers), beside its journal: how
    far a long synthesis or a preference round's sampling is, for `tempa status`, as a training launch's
    :class:`TrainProgress` is."""

    model_config = ConfigDict(extra="forbid")

    desc: str  # the pass's progress-bar label ("synthesize: sample")
    done: int
    items: int
    eta_s: float | None = None  # at ``at``; None before a chunk of this session has finished
    samples_per_s: float | None = None
    at: float

    def note(self, now: float | None = None) -> str:
        """``synthesize: sample 120/400, eta 0:12:03, 2.1 samples/s (5 s ago)``."""
        now = time.time() if now is None else now
        ago = max(0.0, now - self.at)
        parts = [f"{self.desc} {self.done:,}/{self.items:,}"]
        if self.eta_s is not None and self.done < self.items:
            parts.append(f"eta {format_eta(max(0.0, self.eta_s - ago))}")
        if self.samples_per_s is not None:
            parts.append(f"{self.samples_per_s:,.1f} samples/s")
        return ", ".join(parts) + f" ({f'{ago:.0f} s' if ago < 120 else format_eta(ago)} ago)"


def latest_progress(stage_dir: Path, since: float = 0.0) -> TrainProgress | PassProgress | None:
    """The newest progress record of a stage's training launches (a kind with rounds launches one per round) and its
    journaled passes (in ``data/`` or a round's folder), written at ``since`` or later (a killed attempt's record is
    not where the running one stands)."""
    found: list[TrainProgress | PassProgress] = []
    records = [(TrainProgress, folder / TRAIN_PROGRESS)
               for folder in (stage_dir / CHECKPOINTS_DIR, *stage_dir.glob(f"*/{CHECKPOINTS_DIR}"))]
    records += [(PassProgress, path) for path in stage_dir.glob(f"*/*{PASS_PROGRESS}")]
    for model, path in records:
        try:
            found.append(model.model_validate_json(path.read_text(encoding="utf-8")))
        except (OSError, ValidationError):
            continue  # none yet, or one a newer tempa wrote: status still shows the rest
    return max((progress for progress in found if progress.at >= since), key=lambda progress: progress.at,
               default=None)


def throughput_headline(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The run's averages (the ``train_*`` keys of the Trainer's last log) for a stage's metrics."""
    for entry in reversed(log_history):
        if "train_tokens" in entry:
            # a count, though the Trainer's logs carry every number as a float
            return {key: round(entry[key]) if key == "train_tokens" else entry[key] for key in SUMMARY_KEYS
                    if key in entry}
    return {}


def combined_headline(parts: list[dict[str, Any]]) -> dict[str, float]:
    """One headline for training runs done one after another (a preference stage's rounds): tokens added up, and
    tokens/s, MFU and padding over the whole time, each run weighted by its seconds or positions; a rate only when
    every run has it."""
    runs = [part for part in parts if part.get("train_tokens") and part.get("train_tokens_per_s")]
    if not runs:
        return {}
    tokens = sum(run["train_tokens"] for run in runs)
    seconds = [run["train_tokens"] / run["train_tokens_per_s"] for run in runs]
    out: dict[str, float] = {"train_tokens": tokens, "train_tokens_per_s": tokens / sum(seconds)}
    if all("train_mfu" in run for run in runs):  # MFU is FLOPs over seconds x peak: its seconds-weighted mean
        out["train_mfu"] = sum(run["train_mfu"] * s for run, s in zip(runs, seconds, strict=True)) / sum(seconds)
    if all("train_padding_fraction" in run and run["train_padding_fraction"] < 1 for run in runs):
        positions = sum(run["train_tokens"] / (1 - run["train_padding_fraction"]) for run in runs)
        out["train_padding_fraction"] = 1 - tokens / positions
    return out
