"""The global batch: the data-parallel ranks of a launch, the rows an optimizer step takes, and the gradient
accumulation that keeps a global batch on any hardware (``launch.global_batch_size``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TRL_PER_DEVICE_BATCH = 8  # trl's per_device_train_batch_size where neither the recipe nor tempa's defaults set one


def per_device_batch(train: Mapping[str, Any]) -> int:
    """The rows each process takes per micro-step under the trainer arguments ``train``."""
    return int(train.get("per_device_train_batch_size", TRL_PER_DEVICE_BATCH))


def accumulation_for(global_batch: int, per_device: int, data_parallel: int) -> int:
    """gradient_accumulation_steps so that per_device x steps x data-parallel ranks == global_batch.

    ValueError (one line, naming the numbers and the nearest batches that divide) when that product cannot be met.
    """
    per_step = per_device * data_parallel
    if global_batch % per_step:
        below = global_batch // per_step * per_step
        near = " or ".join(str(n) for n in (below, below + per_step) if n)
        raise ValueError(
            f"launch.global_batch_size {global_batch} is not a multiple of per_device_train_batch_size "
            f"{per_device} x {data_parallel} data-parallel process{'es' if data_parallel != 1 else ''} = {per_step} "
            f"(the nearest that are: {near})")
    return global_batch // per_step


def launch_train_args(train: Mapping[str, Any], global_batch: int | None, processes: int,
                      sequence_parallel: int = 1) -> dict[str, Any]:
    """The trainer arguments ``train`` as a launch of ``processes`` trains with them: a global batch sets
    gradient_accumulation_steps (ValueError from :func:`accumulation_for` when it cannot)."""
    out = dict(train)
    if global_batch is not None:
        out["gradient_accumulation_steps"] = accumulation_for(
            global_batch, per_device_batch(train), data_parallel(processes, sequence_parallel))
    return out


def data_parallel(processes: int, sequence_parallel: int = 1) -> int:
    """The data-parallel ranks of ``processes``: sequence parallelism makes each ``sequence_parallel`` of them one."""
    return max(1, processes // sequence_parallel)


def rows_per_step(per_device: int, accumulation: int, processes: int, sequence_parallel: int = 1) -> int:
    """The rows one optimizer step takes over the whole launch."""
    return per_device * accumulation * data_parallel(processes, sequence_parallel)
