"""tempa's pool of forked workers: even splits by bytes, work to whichever worker is free, the one-process
result for any worker count, and errors that say what happened."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import signal
import sys
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
    # a null list still backed by values (as list arrays may be): its values are counted, the rows line up
    backed = pa.ListArray.from_arrays(pa.array([0, 2, 3]), pa.array(["ab", "c", "def"]),
                                      mask=pa.array([True, False]))
    assert row_bytes(pa.table({"l": backed, "s": ["x", "yy"]})).tolist() == [4, 5]


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


def _mark(k: int, folder: Path) -> None:
    if k == 0:
        raise ValueError("chunk 0: not a conversation")
    (folder / f"{k}.started").touch()
    time.sleep(1)
    (folder / f"{k}.finished").touch()


def test_run_forked_stops_at_the_first_error_instead_of_running_the_queue(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk 0: not a conversation"):
        run_forked(lambda k, report: _mark(k, tmp_path), 16, 2, tqdm(total=0, file=io.StringIO()))
    # the tasks already handed out when task 0 failed were ended, and no other task started
    assert not list(tmp_path.glob("*.finished"))
    assert len(list(tmp_path.glob("*.started"))) < 8
    for _ in range(100):  # ended: reaped by the pool's own thread as well, which may take a moment
        if not multiprocessing.active_children():
            break
        time.sleep(0.1)
    assert not multiprocessing.active_children()


_CTRL_C_CHILD = """
import io, sys, time
from pathlib import Path
from tqdm import tqdm
from tempa.sft.forked_workers import run_forked
folder = Path(sys.argv[1])
def task(k, report):
    (folder / f"{k}.started").touch()
    time.sleep(1)
    (folder / f"{k}.finished").touch()
run_forked(task, 16, 2, tqdm(total=0, file=io.StringIO()))
"""


def test_ctrl_c_ends_the_workers_and_runs_no_further_task(tmp_path: Path) -> None:
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", _CTRL_C_CHILD, str(tmp_path)], start_new_session=True,
                             stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # until the workers have started tasks (imports take a few seconds)
        if len(list(tmp_path.glob("*.started"))) >= 2 or child.poll() is not None:
            break
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole process group
    try:
        _, err = child.communicate(timeout=120)
    finally:  # nothing of a failed run left behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    assert "KeyboardInterrupt" in err and child.returncode != 0
    finished = {p.stem for p in tmp_path.glob("*.finished")}
    started = {p.stem for p in tmp_path.glob("*.started")}
    # before: shutting the pool down waited for every queued task, each worker running one after another
    assert len(started) <= 4 and not finished - started and len(finished) < 4
    leftover = subprocess.run(["pgrep", "-g", str(child.pid)], capture_output=True, text=True).stdout.split()
    assert leftover == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_workers_end_when_their_parent_is_killed_alone(tmp_path: Path) -> None:
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", _CTRL_C_CHILD, str(tmp_path)], start_new_session=True)
    for _ in range(600):
        if len(list(tmp_path.glob("*.started"))) >= 2 or child.poll() is not None:
            break
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)  # the parent only, and it cannot clean up
    child.wait(timeout=60)
    try:
        for _ in range(300):  # before: the workers stayed, blocked on their queue, for good
            leftover = subprocess.run(["pgrep", "-g", str(child.pid)], capture_output=True, text=True).stdout.split()
            if not leftover:
                break
            time.sleep(0.1)
        assert leftover == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)


class _TwoArgumentError(Exception):
    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")


def test_run_forked_raises_a_tasks_error_and_a_dead_worker_as_one_line(tmp_path: Path) -> None:
    def failing(k: int, report: Any) -> None:
        if k == 3:
            raise ValueError("row 3: not a conversation")

    with pytest.raises(ValueError, match="row 3: not a conversation"):
        run_forked(failing, 6, 2, tqdm(total=0, file=io.StringIO()))

    def odd(k: int, report: Any) -> None:
        if k == 2:
            raise _TwoArgumentError("row 2", "the template refused it")

    # an error pickle cannot rebuild in the parent still arrives as itself, in words, not as a dead worker
    with pytest.raises(RuntimeError, match=r"^_TwoArgumentError: row 2: the template refused it$"):
        run_forked(odd, 6, 2, tqdm(total=0, file=io.StringIO()))

    def killed(k: int, report: Any) -> None:
        if k == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer ends a worker

    with pytest.raises(DataError, match=r"^Tokenising r: a worker process ended before finishing .*data\.num_proc") \
            as error:
        run_forked(killed, 4, 2, tqdm(total=0, file=io.StringIO(), desc="Tokenising r"),
                   hint="use fewer processes (data.num_proc)")
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


def test_forked_map_of_few_rows_names_the_processes_it_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    features = datasets.Features({"text": datasets.Value("string"), "pid": datasets.Value("int64")})
    kwargs = {"features": features, "fn_kwargs": {"marker": _Unpicklable("q")}, "desc": "Tokenising r"}
    empty = forked_map(datasets.Dataset.from_dict({"text": []}, features=datasets.Features(
        {"text": datasets.Value("string")})), _label, workers=4, cache_file=tmp_path / "e.arrow", **kwargs)
    assert len(empty) == 0 and empty.features == features
    three = forked_map(datasets.Dataset.from_dict({"text": ["a", "b", "c"]}), _label, workers=4,
                       cache_file=tmp_path / "t.arrow", **kwargs)
    assert three["text"] == ["q0:A", "q1:B", "q2:C"] and os.getpid() not in three["pid"]
    assert "Tokenising r (3 processes): 100%" in capsys.readouterr().err  # 3 rows: 3 workers, not the 4 asked
