"""Work split over forked worker processes: tempa's one pool, for reading files and for ``Dataset.map``.

A forked worker inherits the parent's memory, so nothing is pickled on the way in: not the rows, not the
function, not the tokenizer (Meta's Llama 3 tokenizer pickles to 7.3 MB and takes a worker 1.0 s to load).
Tasks are handed to whichever worker is free, so a slower core or a heavier stretch of rows does not leave
the others idle at the end.

:func:`forked_map` is ``datasets.Dataset.map`` over such workers. ``datasets``' own ``num_proc`` cuts a
dataset into one shard of equal row count per worker: a file whose long rows sit together (reasoning traces
after short chats, rows sorted by length) gives one worker most of the work. Measured on a 2-vCPU VM,
3,000 rows sorted by length: one worker was busy 1.0-1.2 s and the other 2.3 s of a 2.7 s tokenising map;
on shuffled rows the two workers' busy times still differed 1.5 s to 2.0 s, from the cores alone. Here a
dataset is cut into contiguous chunks of equal bytes (:func:`chunk_bounds`), ``CHUNKS_PER_WORKER`` a
worker, each mapped whole by one worker into its own Arrow file and concatenated in order, so the result
is the one-process map's, row for row.

Without ``fork`` (Windows) the work runs in this process, one task after another.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.arrow_writer import ArrowWriter
from datasets.table import MemoryMappedTable, concat_tables
from datasets.utils.tqdm import tqdm as hf_tqdm
from tqdm.auto import tqdm

from tempa.sft.data_config import DataError

# Chunks of a forked map per worker. More even out cores that run at different speeds (the last chunk to
# finish leaves the other workers idle for at most about its own length); each costs an Arrow file written
# and opened (a few ms). On the 2-vCPU VM, tokenising 3,000 rows: the two workers' busy times differed by
# about one chunk (0.3-0.4 s) with 4, 0.05-0.1 s with 8, and 16 added 0.15 s of set-up.
CHUNKS_PER_WORKER = 8

Task = Callable[[int, Callable[[int], None]], None]  # task(k, report): report(n) advances the progress bar by n


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


_frozen_depth = 0


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """The objects alive now (torch, transformers, the tokenizer: 300,000+ with Llama 3's) kept out of the
    garbage collector's full collections until the block ends.

    Each full collection walks every tracked object; the rows a prepare allocates trigger them, and each
    one walks that inherited heap again (measured: 0.2-0.4 s of normalising 3,000 rows with Llama 3's
    tokenizer loaded). In a forked worker the walk also writes to every inherited object's header, so the
    worker copies those pages (measured 0.3-1 CPU-s per prepare with 2 workers). ``gc.freeze`` is what the
    gc docs advise for long-lived objects and before a fork; blocks nest (an inner ``gc.unfreeze`` would give
    back the outer block's objects too, so only the outermost unfreezes).
    """
    global _frozen_depth
    gc.freeze()
    _frozen_depth += 1
    try:
        yield
    finally:
        _frozen_depth -= 1
        if _frozen_depth == 0:
            gc.unfreeze()


_TASK: list[tuple[Task, Callable[[int], None]]] = []  # set before the workers fork; they inherit it


def _run_task(k: int) -> None:
    task, report = _TASK[0]
    try:
        task(k, report)
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            # One the parent could not rebuild (a constructor with other arguments) would reach it as a broken
            # pool, read as a dead worker: its text instead.
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
        raise


def run_forked(task: Task, count: int, workers: int, bar: tqdm, hint: str = "") -> None:
    """``task(k, report)`` for every ``k`` in ``range(count)``, in ``workers`` forked processes, each ``k`` to
    whichever worker is free; ``report(n)`` from any worker advances ``bar`` by ``n``.

    The first task's exception is raised here, and Ctrl-C too, at once: the tasks not started are dropped
    and the workers ended. A worker that dies (the kernel's out-of-memory killer, say) raises a one-line
    :class:`~tempa.sft.data_config.DataError` naming ``bar``'s description, with ``hint`` (what to change).
    """
    if workers <= 1 or count <= 1 or not fork_available():
        for k in range(count):
            task(k, bar.update)
        return
    context = multiprocessing.get_context("fork")
    done = context.Value("q", 0)

    def report(n: int) -> None:
        with done.get_lock():
            done.value += n

    _TASK[:] = [(task, report)]
    try:
        with frozen_heap(), _tokenizers_single_threaded():
            pool = ProcessPoolExecutor(min(workers, count), mp_context=context, initializer=_end_with_parent,
                                       initargs=(os.getpid(),))
            try:
                pending = {pool.submit(_run_task, k) for k in range(count)}
                while pending:
                    finished, pending = wait(pending, timeout=0.5)
                    for future in finished:
                        future.result()  # a task's error, raised here
                    bar.update(done.value - bar.n)
            except BaseException:
                _stop(pool)
                raise
            pool.shutdown()
    except BrokenProcessPool as exc:
        raise DataError(
            f"{bar.desc}: a worker process ended before finishing ({exc}); if the machine ran out of memory, "
            f"{hint or 'free some memory'}") from None
    finally:
        _TASK.clear()


def _end_with_parent(parent: int) -> None:
    """In a worker: ended by the kernel when the parent ends, however it ends (a plain ``kill`` of the parent
    alone would otherwise leave the workers blocked on their queue for good). Linux only (``prctl``).

    SIGKILL, not SIGTERM: a worker inherits the runner's handlers, which turn the first SIGTERM into an exception
    (passed back as its task's error to a parent that is gone) and ignore the next, so after a ``kill -9`` of the
    runner the workers waited on their queue for good."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the line above
        os._exit(1)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop(pool: ProcessPoolExecutor) -> None:
    """Drop the tasks not started and end the workers now, instead of ``shutdown``'s wait for every queued
    task (a worker hit by Ctrl-C passes it back as its task's error and takes the next one). SIGKILL: a worker
    holds nothing to clean up, and the runner's SIGTERM handler it inherited would make SIGTERM an exception it
    passes back, then ignore the next."""
    workers = list((getattr(pool, "_processes", None) or {}).values())  # (Python 3.14 adds terminate_workers())
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.join(timeout=5)


@contextlib.contextmanager
def _tokenizers_single_threaded() -> Iterator[None]:
    """The ``tokenizers`` library's own thread pool off in the workers (the cores are the workers'), and
    without its warning that a fork followed its use in the parent (what ``datasets`` does for its pool)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def row_bytes(table: pa.Table) -> np.ndarray:
    """Bytes of text (string and binary values, at any depth of lists and structs) in each row of ``table``:
    what a map over text rows costs per row, near enough to split the work evenly."""
    total = np.zeros(len(table), dtype=np.float64)
    for column in table.columns:
        start = 0
        for chunk in column.chunks:  # chunk by chunk: joined, a column over 2 GiB of text overflows its offsets
            _add_bytes(chunk, np.arange(start, start + len(chunk)), total)
            start += len(chunk)
    return total


def _add_bytes(array: pa.Array, owners: np.ndarray, total: np.ndarray) -> None:
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind):
        lengths = pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False)
        total += np.bincount(owners, weights=lengths, minlength=len(total))
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        # From the offsets, which also count the values behind a null list (``flatten`` skips them and
        # ``list_parent_indices`` does not, so the two disagree there).
        offsets = array.offsets.to_numpy()
        values = array.values.slice(offsets[0], offsets[-1] - offsets[0])
        _add_bytes(values, np.repeat(owners, np.diff(offsets)), total)
    elif pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            _add_bytes(array.field(i), owners, total)


def chunk_bounds(costs: np.ndarray, chunks: int) -> list[tuple[int, int]]:
    """``[start, end)`` row ranges, in order and covering every row, of about equal total ``costs`` each (each
    row costs at least 1): at most ``chunks`` of them, none empty."""
    n = len(costs)
    if n == 0:
        return []
    cumulative = np.cumsum(np.maximum(costs, 0) + 1.0)
    targets = cumulative[-1] * np.arange(1, chunks) / chunks
    cuts = np.searchsorted(cumulative, targets, side="left") + 1  # a chunk ends after the row reaching its share
    edges = [0, *sorted({int(c) for c in cuts if 0 < c < n}), n]
    return list(itertools.pairwise(edges))


class Rows(Protocol):
    """Rows that :func:`forked_map` reads: how many, what each costs to map, and a range of them in batches."""

    def __len__(self) -> int: ...

    def costs(self) -> np.ndarray:
        """Per row, about what mapping it costs (its bytes of text): where the chunks are cut."""
        ...

    def batches(self, start: int, end: int, size: int) -> Iterator[dict[str, list[Any]]]:
        """Rows ``[start, end)`` as column batches of ``size`` rows (the last may be shorter)."""
        ...


@dataclass(frozen=True)
class ArrowRows:
    """A dataset's rows."""

    ds: datasets.Dataset

    def __len__(self) -> int:
        return len(self.ds)

    def costs(self) -> np.ndarray:
        return row_bytes(self.ds.with_format("arrow")[:])

    def batches(self, start: int, end: int, size: int) -> Iterator[dict[str, list[Any]]]:
        return self.ds.select(range(start, end)).iter(size)


def forked_map(
    ds: datasets.Dataset | Rows,
    function: Callable[..., dict[str, list[Any]]],
    *,
    workers: int,
    fn_kwargs: Mapping[str, Any],
    features: datasets.Features,
    cache_file: Path,
    desc: str,
    batch_size: int = 1000,
) -> datasets.Dataset:
    """``function(batch, indices, **fn_kwargs)`` over ``ds`` in batches (``indices``: the rows' positions in
    ``ds``), into ``features``: ``ds.map(function, batched=True, with_indices=True, remove_columns=...)``, in
    ``workers`` forked processes when more than one; the same rows in the same order for any count. ``ds``: a
    dataset, or other :class:`Rows` (a JSON Lines file read by the workers themselves).

    Arrow files go next to ``cache_file``, one per chunk; the result is memory-mapped from them. Each chunk
    is a plain loop over batches into ``datasets``' Arrow writer: ``Dataset.map``'s own set-up cost about
    10 ms a chunk.
    """
    rows_in: Rows = ArrowRows(ds) if isinstance(ds, datasets.Dataset) else ds
    procs = workers if workers > 1 and len(rows_in) > 1 and fork_available() else 1
    bounds = [(0, len(rows_in))] if procs == 1 else chunk_bounds(rows_in.costs(), procs * CHUNKS_PER_WORKER)
    procs = min(procs, len(bounds))
    parts = [cache_file.with_name(f"{cache_file.stem}-{k:05d}{cache_file.suffix}") for k in range(len(bounds))]

    def map_chunk(k: int, report: Callable[[int], None]) -> None:
        start, end = bounds[k]
        with ArrowWriter(features=features, path=str(parts[k])) as writer:
            for batch in rows_in.batches(start, end, batch_size):
                rows = len(next(iter(batch.values())))
                writer.write_batch(function(batch, list(range(start, start + rows)), **fn_kwargs))
                start += rows
                report(rows)
            writer.finalize()

    with hf_tqdm(total=len(rows_in), desc=desc if procs == 1 else f"{desc} ({procs} processes)", unit=" rows") as bar:
        run_forked(map_chunk, len(bounds), procs, bar, hint="use fewer processes (data.num_proc)")
    return dataset_of_files(parts)


def dataset_of_files(paths: Sequence[Path]) -> datasets.Dataset:
    """One dataset of the Arrow files ``paths`` (in order), memory-mapped: what workers wrote, joined.

    One ``Dataset`` over the concatenated tables, not one per file: ``Dataset.from_file`` fingerprints each
    file by pickling its table's description, 1.7 ms a file, 2 s for the 1,024 chunks of 128 workers.
    """
    return datasets.Dataset(concat_tables([MemoryMappedTable.from_file(str(path)) for path in paths]))
