"""Gradient accumulation that keeps a global batch on any hardware (``launch.global_batch_size``)."""

from __future__ import annotations


def accumulation_for(global_batch: int, per_device: int, data_parallel: int) -> int:
    """gradient_accumulation_steps so that per_device x steps x data-parallel ranks == global_batch.

    ValueError (one line, naming the numbers) when that product cannot be met exactly.
    """
    per_step = per_device * data_parallel
    if global_batch % per_step:
        raise ValueError(
            f"launch.global_batch_size {global_batch} is not a multiple of per_device_train_batch_size "
            f"{per_device} x {data_parallel} data-parallel processes = {per_step}")
    return global_batch // per_step
