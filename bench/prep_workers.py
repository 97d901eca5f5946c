"""From how much data does a second worker process pay, for each step of a prepare that can use one?

    python bench/prep_workers.py              # reading 16-256 MB, normalising 1k-24k rows, preparing 250-2k rows
    python bench/prep_workers.py --quick      # a smoke run (--read-mb "" --rows "": only whole prepares)

Three thresholds decide how many processes a prepare (``tempa.sft.data``) uses:

- reading a JSON Lines file into Arrow (``tempa.sft.sources``), in byte ranges that start at line starts, one
  forked process per range: ``READ_BYTES_PER_PROCESS`` bytes per process;
- normalising (parse each line, normalise it to ``messages``, the row-local filters), about 1/10 of
  tokenising per row, in tempa's pool of forked workers (``tempa.sft.forked_workers.forked_map``: a fork per
  worker, chunks of equal bytes written to Arrow files and joined): ``NORMALISE_ROWS_PER_PROCESS`` rows per
  process;
- tokenising, the costly step, in the same pool: ``ROWS_PER_PROCESS`` rows per process (timed as a
  whole prepare with ``num_proc`` 1 and 2).

Each pool pays for itself only from some size. This times each on the bench's rows, in one process and in
two, at several sizes, interleaved and repeated, and prints the medians and the crossover. It calls the
pipeline's own (private) functions with the thresholds lifted, so that both runs do exactly what a prepare
does.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--read-mb", default="16,64,128,256", help="file sizes to read, MB, comma-separated")
    parser.add_argument("--rows", default="1000,3000,6000,12000,24000", help="rows to normalise, comma-separated")
    parser.add_argument("--prepare-rows", default="250,500,1000,2000", help="rows to prepare whole, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.read_mb, args.rows, args.prepare_rows, args.repeats = "4", "500,2000", "200", 1
    return args


def read_seconds(rows_path: Path, work: Path, processes: int, tag: str) -> float:
    from tempa.sft import sources

    sources.read_processes = lambda size: processes  # type: ignore[assignment]
    started = time.perf_counter()
    sources._jsonl_rows(rows_path, str(work / f"read-{tag}"))  # a fresh cache folder: a real read
    return time.perf_counter() - started


def normalise_seconds(rows_path: Path, work: Path, processes: int, tag: str) -> float:
    import tempa.sft.data as data
    from tempa.sft.data_config import DataConfig
    from tempa.sft.forked_workers import forked_map, frozen_heap
    from tempa.sft.sources import load_source

    config = DataConfig.model_validate({"sources": [{"name": "rows", "path": str(rows_path)}], "num_proc": 2})
    source = config.sources[0]
    raw = load_source(source, cache_dir=work / "cache")  # read once, then from the cache: not timed below
    settings = data._normalize_settings(source, config.curation, None, ["<|begin_of_text|>"])
    with frozen_heap():  # as prepare_sft_data runs it
        started = time.perf_counter()
        forked_map(raw, data._normalize_batch, workers=processes, fn_kwargs=settings, features=data._CURATED,
                   cache_file=work / f"curated-{tag}.arrow", desc="Normalising")
        return time.perf_counter() - started


def prepare_seconds(rows_path: Path, work: Path, processes: int, tag: str) -> float:
    """A whole prepare (fresh caches), in ``processes`` tokenising workers whatever ``ROWS_PER_PROCESS`` says."""
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    config = DataConfig.model_validate(
        {"sources": [{"name": "rows", "path": str(rows_path), "thinking_mode": "on"}], "num_proc": processes})
    started = time.perf_counter()
    prepare_sft_data(config, _TOKENIZER[0], out_dir=work / f"out-{tag}", cache_dir=work / f"cache-{tag}", seed=0)
    return time.perf_counter() - started


_TOKENIZER: list[Any] = []


def compare(label: str, size: str, measure, rows_path: Path, work: Path, repeats: int) -> dict[str, Any]:
    """``measure`` in 1 and 2 processes, interleaved, after one untimed warm-up; medians."""
    measure(rows_path, work, 1, f"{label}-{size}-warm")
    runs: dict[int, list[float]] = {1: [], 2: []}
    for k in range(repeats):
        for processes in (1, 2):
            runs[processes].append(measure(rows_path, work, processes, f"{label}-{size}-{processes}-{k}"))
    one, two = statistics.median(runs[1]), statistics.median(runs[2])
    print(f"{label} {size:>9}: 1 process {one:.3f} s, 2 processes {two:.3f} s: {one / two:.2f}x "
          f"(ranges {min(runs[1]):.3f}-{max(runs[1]):.3f}, {min(runs[2]):.3f}-{max(runs[2]):.3f})", flush=True)
    return {"step": label, "size": size, "one_process_s": one, "two_processes_s": two, "runs": runs}


def crossover(results: list[dict[str, Any]], label: str) -> str:
    winning = [r["size"] for r in results if r["step"] == label and r["two_processes_s"] < r["one_process_s"]]
    return winning[0] if winning else "none of these sizes"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("tempa").setLevel(logging.WARNING)
    from datasets.utils.logging import disable_progress_bar

    import tempa.sft.data_config as data_config

    disable_progress_bar()
    tokenizer = common.bench_tokenizer()
    _TOKENIZER[:] = [tokenizer]
    print(common.machine_line())
    results = []
    with tempfile.TemporaryDirectory(prefix="tempa-bench-prep-workers-") as tmp:
        work = Path(tmp)
        base = common.write_conversations(work / "base.jsonl", common.reasoning_lengths(3000, seed=1), tokenizer, seed=1)
        block = base.read_bytes()
        for mb in (int(m) for m in args.read_mb.split(",") if m):
            path = work / f"read-{mb}.jsonl"
            with open(path, "wb") as handle:  # the bench's rows, repeated to the size
                for _ in range(max(1, round(mb * 2**20 / len(block)))):
                    handle.write(block)
            results.append(compare("reading", f"{path.stat().st_size / 2**20:.0f} MB", read_seconds, path, work,
                                   args.repeats))
            path.unlink()
        for n in (int(r) for r in args.rows.split(",") if r):
            path = common.write_conversations(work / f"rows-{n}.jsonl", common.reasoning_lengths(n, seed=1),
                                              tokenizer, seed=1)
            results.append(compare("normalising", f"{n:,} rows", normalise_seconds, path, work, args.repeats))
        for n in (int(r) for r in args.prepare_rows.split(",") if r):
            path = common.write_conversations(work / f"prepare-{n}.jsonl", common.reasoning_lengths(n, seed=1),
                                              tokenizer, seed=1)
            results.append(compare("preparing", f"{n:,} rows", prepare_seconds, path, work, args.repeats))
    print(f"reading: two processes faster from {crossover(results, 'reading')}; tempa reads in 2 from "
          f"{2 * data_config.READ_BYTES_PER_PROCESS / 2**20:.0f} MB (READ_BYTES_PER_PROCESS)")
    print(f"normalising: two processes faster from {crossover(results, 'normalising')}; tempa normalises in 2 "
          f"from {2 * data_config.NORMALISE_ROWS_PER_PROCESS:,} rows (NORMALISE_ROWS_PER_PROCESS)")
    print(f"preparing: two tokenising processes faster from {crossover(results, 'preparing')}; tempa tokenises in 2 "
          f"from {2 * data_config.ROWS_PER_PROCESS:,} rows (ROWS_PER_PROCESS)")
    if args.json:
        args.json.write_text(json.dumps({"machine": common.machine_line(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
