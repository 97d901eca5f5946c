"""SFT data preparation: tempa's pipeline against trl's own preprocessing, on the same rows.

    python bench/data_prep.py              # the recorded configuration
    python bench/data_prep.py --quick      # a smoke run
    python bench/data_prep.py --rows 30000 --scaling-only   # 1 -> 2 processes on ten times the rows, no trl
    python bench/data_prep.py --tokenizer llama3 --script thai --scaling-only   # text that is not ASCII

tempa: ``tempa.sft.data.prepare_sft_data`` on a JSONL file: load, normalise, curate (tempa's default
row filters: malformed reasoning, role order), render with the chat template, tokenise, assistant
masks, per-source stats, save to its cache. Run twice: cold, then the cached second run.

trl: what ``SFTTrainer`` does with the same rows when ``assistant_only_loss=True``: ``load_dataset("json")``
then ``SFTTrainer._prepare_dataset`` (chat template with assistant masks, labels, truncation). Run
twice as well; the second run can reuse ``datasets``' own map cache when its fingerprints match.

Both use one process (``num_proc: 1`` / ``dataset_num_proc`` unset) and the same tokenizer and template;
then tempa's first run again with ``num_proc: 2`` (a fresh cache). Every measurement runs in a fresh
process set up alike (trl's trainer built, template compiled, tempa imported; untimed); the three first
runs are repeated ``--repeats`` times, interleaved, each with fresh caches, and medians are compared: one
first run of the same code varies by +-15% on a quiet shared VM. Wall and CPU seconds are both reported: CPU seconds
(this process and its finished workers) are what other load inflates least.
The same repeats also time the parallel part alone: rendering and encoding every row with tempa's encoder,
in one process and in two forked processes (nothing else: no reading, no datasets, no pool), which is what
this machine gives that work in two processes in the same minutes: how much its two cores slow each other.
Goals: tempa >= 2x trl on the first run in one process, >= 1.7x from 1 to 2 processes, and >= 20x
trl's first run on tempa's cached run.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common as common


def tempa_run(rows_path: Path, tokenizer, cache: Path, out: Path, max_length: int, num_proc: int = 1) -> dict[str, Any]:
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    config = DataConfig.model_validate(
        {"sources": [{"name": "rows", "path": str(rows_path), "thinking_mode": "on"}], "num_proc": num_proc})
    with common.timed() as t:
        prepared = prepare_sft_data(config, tokenizer, out_dir=out, cache_dir=cache, seed=0, max_length=max_length)
    return {**t, "rows_in": prepared.mix.total.rows_in, "samples": len(prepared.train),
            "tokens": prepared.mix.total.tokens_kept, "cache_hit": prepared.cache_hit}


def trl_trainer(tokenizer, work: Path, max_length: int):
    """An SFTTrainer configured for conversational rows with assistant-only loss (built untimed)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = common.llama(common.Shape(64, 168, 1, 4, 2, 1024), tokenizer)
    args = SFTConfig(output_dir=str(work / "trl-out"), assistant_only_loss=True, max_length=max_length,
                     use_cpu=True, bf16=False, report_to="none")
    probe = Dataset.from_list(common.read_jsonl(work / "rows.jsonl")[:4])
    return SFTTrainer(model=model, args=args, train_dataset=probe, processing_class=tokenizer)


def trl_run(trainer, rows_path: Path, hf_cache: Path) -> dict[str, Any]:
    from datasets import load_dataset

    with common.timed() as t:
        raw = load_dataset("json", data_files=str(rows_path), split="train", cache_dir=str(hf_cache))
        prepared = trainer._prepare_dataset(raw, trainer.processing_class, trainer.args, False, None, "train")
    tokens = sum(len(ids) for ids in prepared["input_ids"])
    return {**t, "rows_in": len(raw), "samples": len(prepared), "tokens": tokens}


_SHARES: list[list[dict[str, Any]]] = []  # set before the encode-only processes fork; they inherit it
_ENCODER: list[Any] = []


def _encode_share(k: int) -> int:
    encoder, rows = _ENCODER[0], _SHARES[k]
    tokens = 0
    for start in range(0, len(rows), 64):  # in the pipeline's batches (sft/data.py: batch_size=64)
        texts = [encoder.text(row["messages"], True) for row in rows[start:start + 64]]
        tokens += sum(len(chat.input_ids) for chat in encoder.encode(texts))
    return tokens


def encode_only(rows_path: Path, tokenizer, processes: int) -> dict[str, Any]:
    """The parallel part alone, with nothing around it: render and encode every row (thinking on) in
    ``processes`` forked processes, each every ``processes``-th row. Its 1 -> 2 ratio is what this machine gives
    this work in two processes in these minutes (how much the two cores slow each other)."""
    import multiprocessing

    from tempa.sft.forked_workers import frozen_heap
    from tempa.sft.tokenization import ChatEncoder

    rows = common.read_jsonl(rows_path)
    _ENCODER[:] = [ChatEncoder(tokenizer)]
    _SHARES[:] = [rows[k::processes] for k in range(processes)]  # every other row: even shares in any row order
    with frozen_heap(), common.timed() as t:  # as the pipeline prepares
        if processes == 1:
            tokens = _encode_share(0)
        else:
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                tokens = sum(pool.map(_encode_share, range(processes)))
    return {**t, "rows_in": len(rows), "samples": len(rows), "tokens": tokens, "cache_hit": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved first runs of each path (fresh caches each time); medians are compared")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tokenizer", choices=("tiny", "llama3"), default="tiny",
                        help="the tokenizer that prepares the rows (the rows' text is the same for both)")
    parser.add_argument("--script", choices=list(common.SCRIPTS), default="latin",
                        help="the letters the rows are written in: thai or japanese writes the same words letter for "
                             "letter in that script (more tokens per word, none of them ASCII)")
    parser.add_argument("--order", choices=("shuffled", "by-length"), default="shuffled",
                        help="the rows' order in the file: by-length puts the long rows last, as a file "
                             "concatenated from short chats and long reasoning traces has them")
    parser.add_argument("--scaling-only", action="store_true",
                        help="only the 1 -> 2 process runs (tempa and the parallel part alone): no trl, no cached "
                             "runs, so that --rows 30000 fits in minutes")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--measure", choices=MEASURES, help=argparse.SUPPRESS)  # one measurement, in a child
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="0", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeats = 150, 1
    return args


FIRST_RUNS = ("tempa first", "tempa first, 2 processes", "trl first", "encode only", "encode only, 2 processes")
MEASURES = (*FIRST_RUNS, "tempa cached", "trl second")


def measure_here(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this (fresh) process. Untimed first, alike for every path: the tokenizer, trl's
    trainer with its template compiled (so torch, transformers, trl and datasets are imported and the
    process holds what a training run's process holds), tempa's modules."""
    import tempa.sft.data  # noqa: F401

    work, tag = args.work, args.tag
    tokenizer = prepared_tokenizer(args.tokenizer, work)
    trainer = trl_trainer(tokenizer, work, args.max_length)
    rows_path = work / "rows.jsonl"
    if args.measure == "trl first":
        return trl_run(trainer, rows_path, work / f"hf-cache-{tag}")
    if args.measure == "trl second":
        return trl_run(trainer, rows_path, work / "hf-cache-0")
    if args.measure.startswith("encode only"):
        return encode_only(rows_path, tokenizer, 2 if args.measure.endswith("processes") else 1)
    procs = 2 if args.measure == "tempa first, 2 processes" else 1
    cache = work / ("tempa-cache-1-0" if args.measure == "tempa cached" else f"tempa-cache-{procs}-{tag}")
    return tempa_run(rows_path, tokenizer, cache, work / f"out-{procs}-{tag}-{args.measure[-6:]}", args.max_length,
                     num_proc=procs)


def prepared_tokenizer(kind: str, work: Path):
    """The tokenizer that prepares the rows: built once per run into ``work`` (Llama 3's conversion takes
    seconds), loaded from there in every measurement's process."""
    from transformers import AutoTokenizer

    folder = work / f"tokenizer-{kind}"
    if not folder.exists():
        common.bench_tokenizer(kind).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def measure(name: str, work: Path, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    """``name`` measured in a fresh process: earlier runs' memory and caches never tilt the next one."""
    out = subprocess.run(
        [sys.executable, __file__, "--measure", name, "--work", str(work), "--tag", tag,
         "--max-length", str(args.max_length), "--tokenizer", args.tokenizer],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("tempa").setLevel(logging.WARNING)
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    if args.measure:
        print(json.dumps(measure_here(args)))
        return 0
    tokenizer = common.bench_tokenizer()
    lengths = common.reasoning_lengths(args.rows, seed=1, max_tokens=args.max_length)
    if args.order == "by-length":
        lengths = sorted(lengths)
    print(common.machine_line())
    print(f"data: {common.length_summary(lengths)} (in the tiny tokenizer's words, {args.script} letters), "
          f"{args.order}; prepared with the {args.tokenizer} tokenizer")
    first_runs = [name for name in FIRST_RUNS if not (args.scaling_only and name.startswith("trl"))]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in MEASURES if name in first_runs
                                             or not args.scaling_only}
    with tempfile.TemporaryDirectory(prefix="tempa-bench-data-") as tmp:
        work = Path(tmp)
        common.write_conversations(work / "rows.jsonl", lengths, tokenizer, seed=1)
        common.in_script(work / "rows.jsonl", args.script)
        prepared_tokenizer(args.tokenizer, work)
        # Interleaved, so that a slow minute of a shared VM falls on every path alike; each first run gets
        # fresh caches and its own process.
        for k in range(args.repeats):
            for name in first_runs:
                runs[name].append(measure(name, work, str(k), args))
            print(f"repeat {k + 1}/{args.repeats}: " + ", ".join(
                f"{name} {runs[name][-1]['seconds']:.2f} s" for name in first_runs), flush=True)
        for name in ("tempa cached", "trl second"):
            if name in runs:
                runs[name].append(measure(name, work, "0", args))
        if "tempa cached" in runs and not runs["tempa cached"][0]["cache_hit"]:
            raise SystemExit("tempa cached: the second run missed the first run's cache")
    # Each path's runs prepare the same; tempa and trl differ only on rows past --max-length (tempa drops a
    # sample, trl truncates it), and encode-only counts every row.
    for path in ("tempa", "trl", "encode only"):
        counts = {name: {(v["samples"], v["tokens"]) for v in values} for name, values in runs.items()
                  if name.startswith(path)}
        if not counts:
            continue
        if len(set().union(*counts.values())) != 1:
            raise SystemExit(f"{path}: the runs did not prepare the same samples and tokens: {counts}")
    results = {name: summarise(values) for name, values in runs.items()}
    report(results)
    if args.json:
        args.json.write_text(json.dumps({"machine": common.machine_line(), "repeats": args.repeats,
                                         "results": results, "runs": runs}, indent=2))
    return 0


def summarise(values: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of wall and CPU seconds over the repeats, with the range of wall seconds."""
    walls = [v["seconds"] for v in values]
    return {**values[0], "seconds": statistics.median(walls), "cpu_seconds": statistics.median(
        v["cpu_seconds"] for v in values), "min_seconds": min(walls), "max_seconds": max(walls), "n": len(values)}


def report(results: dict[str, dict[str, Any]]) -> None:
    rows = [("run (median of n)", "n", "wall s", "wall range", "CPU s", "tokens/CPU-s", "samples", "tokens")]
    for name, r in results.items():
        cpu = max(r["cpu_seconds"], 1e-9)
        rows.append((name, str(r["n"]), f"{r['seconds']:.2f}", f"{r['min_seconds']:.2f}-{r['max_seconds']:.2f}",
                     f"{r['cpu_seconds']:.2f}", f"{r['tokens'] / cpu:.0f}", str(r["samples"]), str(r["tokens"])))
    common.print_table(rows)
    tempa = results["tempa first"]
    if "trl first" in results:
        trl = results["trl first"]
        print(f"tempa/trl first run, one process: {trl['seconds'] / tempa['seconds']:.2f}x wall, "
              f"{trl['cpu_seconds'] / tempa['cpu_seconds']:.2f}x CPU time (medians; goal >= 2x)")
    two = results["tempa first, 2 processes"]
    print(f"tempa 1 -> 2 processes: {tempa['seconds'] / two['seconds']:.2f}x wall (medians; goal >= 1.7x); CPU time "
          f"{two['cpu_seconds'] / tempa['cpu_seconds']:.2f}x of one process's (the cost of the second process)")
    alone, pair = results["encode only"], results["encode only, 2 processes"]
    print(f"the parallel part alone (render + encode, nothing around it) 1 -> 2 processes: "
          f"{alone['seconds'] / pair['seconds']:.2f}x wall, CPU time {pair['cpu_seconds'] / alone['cpu_seconds']:.2f}x "
          f"of one process's: what this machine gives this work in two processes in these minutes")
    if "tempa cached" in results:
        cached = results["tempa cached"]
        print(f"tempa cached / trl first run: {trl['seconds'] / cached['seconds']:.1f}x wall (goal >= 20x); "
              f"against trl's own second run: {results['trl second']['seconds'] / cached['seconds']:.1f}x")
    print(f"machine after the run: {common.machine_line()}")


if __name__ == "__main__":
    raise SystemExit(main())
