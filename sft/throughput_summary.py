"""Throughput numbers without the training machinery: device peaks, the ETA format, and the run's
averages a stage's metrics carry (the meter itself, a Trainer callback, is in :mod:`tempa.sft.throughput`).

Kept apart so that `tempa plan` and the stages read them without importing transformers or torch.
"""

from __future__ import annotations

from typing import Any

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


def throughput_headline(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The run's averages (the ``train_*`` keys of the Trainer's last log) for a stage's metrics."""
    for entry in reversed(log_history):
        if "train_tokens" in entry:
            # a count, though the Trainer's logs carry every number as a float
            return {key: round(entry[key]) if key == "train_tokens" else entry[key] for key in SUMMARY_KEYS
                    if key in entry}
    return {}
