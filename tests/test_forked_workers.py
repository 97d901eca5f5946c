"""tempa's pool of forked workers: even splits by bytes, work to whichever worker is free, the one-process
result for any worker count, and errors that say what happened."""

from __future__ import annotations

import io
import os
import pickle
import signal
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pytest
from tqdm import tqdm

import tempa.sft.forked_workers as forked
from tempa.sft.data_config import DataError
from tempa.sft.forked_workers import chunk_bounds, forked_map, row_bytes, run_forked


def test_chunk_bounds_cover_every_row_in_order_with_about_equal_costs() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 300))
        costs = rng.pareto(1.5, n) * 1000 if trial % 2 else np.sort(rng.integers(0, 5000, n)).astype(float)
        chunks = int(rng.integers(1, 20))
        bounds = chunk_bounds(costs, chunks)
        assert [b[0] for b in bounds] == [0, *[b[1] for b in bounds[:-1]]] and bounds[-1][1] == n
        assert all(start < end for start, end in bounds) and len(bounds) <= chunks
        weights = costs + 1  # every row costs at least 1
        share = weights.sum() / chunks
        for start, end in bounds:
            # a chunk stops at the first row that reaches its share: at most one row over it
            assert weights[start:end].sum() <= share + weights[start:end].max() + 1e-6
        if n >= chunks and weights.max() < share / 2:
            assert len(bounds) == chunks  # no row so heavy that a chunk holds nothing but it
    assert chunk_bounds(np.zeros(0), 4) == []
    assert chunk_bounds(np.ones(3), 8) == [(0, 1), (1, 2), (2, 3)]  # never an empty chunk
    # 3 light rows then 1 as heavy as all of them together: 2 chunks split by weight, not by rows
    assert chunk_bounds(np.array([9.0, 9.0, 9.0, 29.0]), 2) == [(0, 3), (3, 4)]


def test_row_bytes_count_text_at_any_depth_by_hand() -> None:
    table = pa.table({
        "id": [1, 2, 3],
        "raw": ["ab", None, "ç"],  # "ç" is 2 bytes in UTF-8
        "messages": [
            [{"role": "user", "content": "hey"}, {"role": "assistant", "content": None}],
            [],
            [{"role": "user", "content": "x" * 10}],
        ],
        "blob": [b"\x00\x01", b"", None],
    })
    # row 0: "ab" 2 + "user" 4 + "hey" 3 + "assistant" 9 + b"\x00\x01" 2 = 20
    # row 1: nothing; row 2: "ç" 2 + "user" 4 + 10 x's = 16
    assert row_bytes(table).tolist() == [20, 0, 16]
    # a slice (as a chunk of a memory-mapped file is) counts its own rows only
    assert row_bytes(table.slice(1, 2)).tolist() == [0, 16]
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1, 2)])
    assert chunked.column("messages").num_chunks == 2 and row_bytes(chunked).tolist() == [20, 0, 16]


class _Unpicklable:
    """What a worker must inherit rather than be sent (a tokenizer pickles to megabytes)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> Any:
        raise pickle.PicklingError("sent to a worker instead of inherited")


def _label(batch: dict[str, list[Any]], indices: list[int], *, marker: _Unpicklable) -> dict[str, list[Any]]:
    return {"text": [f"{marker.tag}{i}:{t.upper()}" for i, t in zip(indices, batch["text"], strict=True)],
            "pid": [os.getpid()] * len(indices)}


@pytest.mark.parametrize("workers", [2, 3])
def test_forked_map_gives_the_one_process_rows_without_pickling_what_it_needs(tmp_path: Path, workers: int) -> None:
    rng = np.random.default_rng(1)
    texts = ["w" * int(n) for n in np.sort(rng.integers(1, 400, 101))]  # sorted: the heavy rows at the end
    ds = datasets.Dataset.from_dict({"text": texts, "other": list(range(101))})
    features = datasets.Features({"text": datasets.Value("string"), "pid": datasets.Value("int64")})
    kwargs = {"features": features, "fn_kwargs": {"marker": _Unpicklable("r")}, "batch_size": 7}
    one = forked_map(ds, _label, workers=1, cache_file=tmp_path / "one.arrow", desc="one",
                     **kwargs)
    many = forked_map(ds, _label, workers=workers, cache_file=tmp_path / "many.arrow",
                      desc="many", **kwargs)
    assert many["text"] == one["text"] == [f"r{i}:{t.upper()}" for i, t in enumerate(texts)]
    assert many.column_names == ["text", "pid"]
    assert set(one["pid"]) == {os.getpid()} and os.getpid() not in set(many["pid"])
    assert 2 <= len(set(many["pid"])) <= workers
    assert len(list(tmp_path.glob("many-*.arrow"))) == workers * forked.CHUNKS_PER_WORKER


def _sleep_or_note(k: int, report: Any, folder: Path) -> None:
    if k == 0:
        time.sleep(3)
    (folder / f"{k}.pid").write_text(str(os.getpid()))
    report(k + 1)


def test_run_forked_gives_tasks_to_whichever_worker_is_free(tmp_path: Path) -> None:
    bar = tqdm(total=sum(range(1, 9)), file=io.StringIO())
    run_forked(lambda k, report: _sleep_or_note(k, report, tmp_path), 8, 2, bar)
    pids = [(tmp_path / f"{k}.pid").read_text() for k in range(8)]
    # task 0 holds its worker 3 s; the other worker, free, runs every other task meanwhile
    assert len(set(pids[1:])) == 1 and pids[0] != pids[1] and str(os.getpid()) not in pids
    assert bar.n == bar.total  # every worker's reports reached the bar


def test_run_forked_raises_a_tasks_error_and_a_dead_worker_as_one_line(tmp_path: Path) -> None:
    def failing(k: int, report: Any) -> None:
        if k == 3:
            raise ValueError("row 3: not a conversation")

    with pytest.raises(ValueError, match="row 3: not a conversation"):
        run_forked(failing, 6, 2, tqdm(total=0, file=io.StringIO()))

    def killed(k: int, report: Any) -> None:
        if k == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer ends a worker

    with pytest.raises(DataError, match=r"a worker process died before finishing .*data\.num_proc") as error:
        run_forked(killed, 4, 2, tqdm(total=0, file=io.StringIO()))
    assert "\n" not in str(error.value)


def test_without_fork_the_work_runs_here_one_task_after_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked, "fork_available", lambda: False)
    seen: list[tuple[int, int]] = []
    bar = tqdm(total=6, file=io.StringIO())
    run_forked(lambda k, report: seen.append((k, os.getpid())) or report(2), 3, 2, bar)
    assert seen == [(0, os.getpid()), (1, os.getpid()), (2, os.getpid())] and bar.n == 6
    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"]})
    features = datasets.Features({"text": datasets.Value("string"), "pid": datasets.Value("int64")})
    out = forked_map(ds, _label, workers=2, features=features, fn_kwargs={"marker": _Unpicklable("z")},
                     cache_file=tmp_path / "x.arrow", desc="x")
    assert out["text"] == ["z0:A", "z1:B", "z2:C"] and set(out["pid"]) == {os.getpid()}
