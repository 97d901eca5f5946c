"""The global batch: the data-parallel ranks of a launch, the rows an optimizer step takes, and the gradient
accumulation that keeps a global batch on any hardware (``launch.global_batch_size``)."""

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


def data_parallel(processes: int, sequence_parallel: int = 1) -> int:
    """The data-parallel ranks of ``processes``: sequence parallelism makes each ``sequence_parallel`` of them one."""
    return max(1, processes // sequence_parallel)


def rows_per_step(per_device: int, accumulation: int, processes: int, sequence_parallel: int = 1) -> int:
    """The rows one optimizer step takes over the whole launch."""
    return per_device * accumulation * data_parallel(processes, sequence_parallel)
