"""From how many rows does normalising pay for a second worker process?

    python bench/normalise_workers.py              # 1k-24k rows, 5 interleaved repeats each
    python bench/normalise_workers.py --quick      # a smoke run

Step 2 of a prepare (``tempa.sft.data``: parse each line, normalise it to ``messages``, the row-local
filters) costs about 1/10 of tokenising per row, so ``datasets``' worker pool (a fork per worker, its
manager process and queue, the shards written and joined) pays for itself only from some number of
rows: ``NORMALISE_ROWS_PER_PROCESS`` rows per worker. This times the step alone on the bench's rows, in
one process and in two, at several sizes, interleaved and repeated, and prints the medians and the
crossover. It calls the pipeline's own step (a private function) with the threshold lifted, so that
both runs do exactly what a prepare does.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import _common as common


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,3000,6000,12000,24000", help="rows per run, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = "500,2000", 1
    return args


def normalise_seconds(rows_path: Path, work: Path, processes: int, tag: str) -> float:
    import tempa.sft.data as data
    from tempa.sft.data_config import DataConfig
    from tempa.sft.forked_workers import frozen_heap
    from tempa.sft.sources import load_source

    config = DataConfig.model_validate({"sources": [{"name": "rows", "path": str(rows_path)}], "num_proc": 2})
    source = config.sources[0]
    raw = load_source(source, cache_dir=work / "cache")  # read once, then from the cache: not timed below
    data.NORMALISE_ROWS_PER_PROCESS = 1 if processes == 2 else 1 << 40
    with frozen_heap():  # as prepare_sft_data runs it
        started = time.perf_counter()
        data._normalize_and_filter(raw, source, config.curation, None, ["<|begin_of_text|>"], num_proc=2,
                                   cache_file=work / f"curated-{tag}.arrow", fingerprint=f"bench-{tag}")
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("tempa").setLevel(logging.WARNING)
    from datasets.utils.logging import disable_progress_bar

    import tempa.sft.data_config as data_config

    disable_progress_bar()
    tokenizer = common.bench_tokenizer()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(common.machine_line())
    results = []
    with tempfile.TemporaryDirectory(prefix="tempa-bench-normalise-") as tmp:
        work = Path(tmp)
        for size in sizes:
            rows = common.write_conversations(work / f"rows-{size}.jsonl", common.reasoning_lengths(size, seed=1),
                                              tokenizer, seed=1)
            normalise_seconds(rows, work, 1, f"{size}-warm")  # the first call pays the reading and imports
            runs: dict[int, list[float]] = {1: [], 2: []}
            for k in range(args.repeats):
                for processes in (1, 2):
                    runs[processes].append(normalise_seconds(rows, work, processes, f"{size}-{processes}-{k}"))
            one, two = statistics.median(runs[1]), statistics.median(runs[2])
            results.append({"rows": size, "one_process_s": one, "two_processes_s": two, "runs": runs})
            print(f"{size:>7,} rows: 1 process {one:.3f} s, 2 processes {two:.3f} s: {one / two:.2f}x "
                  f"(ranges {min(runs[1]):.3f}-{max(runs[1]):.3f}, {min(runs[2]):.3f}-{max(runs[2]):.3f})", flush=True)
    winning = [r["rows"] for r in results if r["two_processes_s"] < r["one_process_s"]]
    print(f"two processes faster from: {f'{min(winning):,} rows' if winning else 'none of these sizes'}; "
          f"tempa starts a second normalising process at {2 * data_config.NORMALISE_ROWS_PER_PROCESS:,} rows "
          f"(NORMALISE_ROWS_PER_PROCESS = {data_config.NORMALISE_ROWS_PER_PROCESS:,})")
    if args.json:
        args.json.write_text(json.dumps({"machine": common.machine_line(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
