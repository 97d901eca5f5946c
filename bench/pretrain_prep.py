"""Continued-pretraining data preparation: tempa's streaming prepare against the one-process, all-in-lists one.

    python bench/pretrain_prep.py              # the recorded configuration (~20M tokens, Meta's Llama 3 tokenizer)
    python bench/pretrain_prep.py --quick      # a smoke run (~1M tokens)

The new path also prepares half the mix (one process per core): its anonymous memory should be the full mix's,
since nothing it holds grows with the tokens (a few numbers per document and per chunk aside).

new: ``tempa.sft.pretrain_stage.prepare_pretrain_data`` as the stage runs it: each source tokenised in forked
worker processes into memory-mapped Arrow files (one per core unless ``--num-proc``), budgeted and chunked from
per-document lengths, the chunks written by the workers in the seeded order. Run with 1 process and with the
default (one per core).

baseline: a copy, below, of the function as it was at commit 2daaff0 (2026-12-01) with the helpers it called:
every document's tokens in a Python list, the chunks in one list, then ``Dataset.from_dict`` and
``save_to_disk``, all in one process.

The mix: an English-like JSON Lines source cut at a token budget, a small Thai source repeated (``repeat: true``)
2.5x to its budget, and an Indonesian-like folder of .txt files read by paragraph, 1% held out, max_length 4096.
Each run is a fresh subprocess (tokenizer loaded and tempa imported untimed) so that its peak RSS is its own:
``ru_maxrss`` of the process and of its largest worker, and the anonymous memory (``Pss_Anon``: not the pages of
memory-mapped files, which the kernel can drop) of the process and its workers together, sampled
every 20 ms.
The rows each run prepared are digested: the new runs must agree row for row, and every run must take the same
tokens (the baseline holds out by chunk, the rule before documents were held out whole). Not part of CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EN = ["rice", "river", "harbour", "monsoon", "lantern", "market", "island", "forest", "temple", "mango", "the", "of",
      "fishermen", "brought", "their", "boats", "before", "storm", "season", "across", "northern", "coast"]
ID = ["selamat", "pagi", "pasar", "sungai", "nelayan", "perahu", "hujan", "musim", "pulau", "hutan", "dan", "yang",
      "membawa", "mereka", "sebelum", "badai", "pantai", "utara", "kota", "desa"]
TH = ["สวัสดี", "ตลาด", "แม่น้ำ", "ชาวประมง", "เรือ", "ฝน", "ฤดู", "เกาะ", "ป่า", "วัด", "มะม่วง", "และ", "ของ", "ที่",
      "ก่อน", "พายุ", "ชายฝั่ง", "ทางเหนือ"]


# --------------------------------------------------------------------------- the mix


def _text(rng: random.Random, words: list[str], low: int, high: int, joiner: str = " ") -> str:
    return joiner.join(rng.choice(words) for _ in range(rng.randint(low, high)))


def write_mix(folder: Path, scale: float) -> dict[str, Any]:
    """The three sources (sizes times ``scale``) and the stage config that reads them."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "en.jsonl", "w", encoding="utf-8") as out:
        for _ in range(int(14000 * scale)):  # ~1,000 tokens a document; the budget takes 12M of ~14M
            out.write(json.dumps({"text": _text(rng, EN, 200, 1800)}) + "\n")
    with open(folder / "th.jsonl", "w", encoding="utf-8") as out:
        for _ in range(int(1500 * scale)):
            out.write(json.dumps({"text": _text(rng, TH, 100, 900, "")}, ensure_ascii=False) + "\n")
    (folder / "id").mkdir(exist_ok=True)
    for k in range(max(2, int(40 * scale))):
        paragraphs = [_text(rng, ID, 30, 700) for _ in range(120)]
        (folder / "id" / f"part-{k:03d}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return {"name": "cpt", "heldout": 0.01,
            "sources": [{"name": "en", "path": str(folder / "en.jsonl"), "tokens": int(12_000_000 * scale)},
                        {"name": "th", "path": str(folder / "th.jsonl"), "tokens": int(5_000_000 * scale),
                         "repeat": True},
                        {"name": "id", "path": str(folder / "id"), "txt_document": "paragraph"}],
            "train": {"max_length": 4096, "lr_scheduler_kwargs": {"num_decay_steps": 1}}}


# --------------------------------------------------------------------------- baseline: the code as it was
# A copy of sft/pretrain_stage.py's prepare_pretrain_data at commit 2daaff0, with the helpers it called (the
# fingerprinting and cache key left out: they are the same in both and not what is measured).


def _baseline_document_tokens(tokenizer: Any, text: str, eos: list[int]) -> list[int]:
    ids = tokenizer(text)["input_ids"]
    return ids if eos and ids[-len(eos):] == eos else ids + eos


class _BaselineTaken(NamedTuple):
    documents: list[list[int]]
    tokens: int
    whole: int | None
    distinct: int


def _baseline_take(documents: Iterable[list[int]], budget: int | None) -> tuple[list[list[int]], int, bool]:
    taken, total = [], 0
    for ids in documents:
        if budget is not None and total + len(ids) > budget:
            if budget - total > 0:
                taken.append(ids[: budget - total])
                total = budget
            return taken, total, False
        taken.append(ids)
        total += len(ids)
    return taken, total, True


def _baseline_budgeted(documents: Iterable[list[int]], budget: int | None, *, repeat: bool = False) -> _BaselineTaken:
    taken, total, ended = _baseline_take(documents, budget)
    if not ended:
        return _BaselineTaken(taken, total, None, len(taken))
    whole, distinct = total, len(taken)
    if repeat and budget is not None and 0 < whole < budget:
        one_pass = list(taken)
        while total < budget:
            more, count, _ = _baseline_take(one_pass, budget - total)
            taken.extend(more)
            total += count
    return _BaselineTaken(taken, total, whole, distinct)


def _baseline_texts(source: Any, loaded: Any) -> Iterator[str]:
    from tempa.chat_templates.json_files import Line, parse_line
    from tempa.sft.sources import RAW, READ_ERROR

    for index, row in enumerate(loaded):
        line = parse_line(Line(index + 1, row[RAW], row.get(READ_ERROR)))
        if not line.blank:
            yield line.value[source.text_field]


def _baseline_txt_documents(source: Any, files: list[Path]) -> Iterator[str]:
    import re

    for file in files:
        text = file.read_bytes().decode("utf-8").removeprefix("\ufeff").replace("\r\n", "\n")
        yield from (block.strip("\n") for block in re.split(r"\n[ \t]*\n", text))


def baseline_prepare(config: Any, tokenizer: Any, out: Path, seed: int) -> dict[str, Any]:
    import datasets
    import numpy as np

    from tempa.sft.pretrain_stage import _as_sft_source, txt_files
    from tempa.sft.sources import load_source

    max_length = int(config.train_args()["max_length"])
    texts = {s.name: txt_files(s) for s in config.sources}
    loaded = {s.name: load_source(_as_sft_source(s), cache_dir=out / "hf") for s in config.sources
              if texts[s.name] is None}
    chunks: list[list[int]] = []
    tokens = {}
    eos = [tokenizer.eos_token_id] if config.add_eos and tokenizer.eos_token_id is not None else []
    for source in config.sources:
        def encoded(source=source):
            files = texts[source.name]
            read = _baseline_texts(source, loaded[source.name]) if files is None else \
                _baseline_txt_documents(source, files)
            for text in read:
                if text.strip():
                    yield _baseline_document_tokens(tokenizer, text, eos)

        taken = _baseline_budgeted(encoded(), source.tokens, repeat=source.repeat)
        tokens[source.name] = taken.tokens
        chunks.extend(piece for ids in taken.documents
                      for piece in [ids[i: i + max_length] for i in range(0, len(ids), max_length)])
    order = np.random.default_rng(seed).permutation(len(chunks))
    n_eval = round(config.heldout * len(chunks))
    if config.heldout and n_eval == 0 and len(chunks) > 1:
        n_eval = 1
    train_order = order[n_eval:]
    if n_eval:
        held = {tuple(chunks[i]) for i in order[:n_eval]}
        train_order = [i for i in train_order if tuple(chunks[i]) not in held]

    def dataset(indices) -> datasets.Dataset:
        rows = [chunks[i] for i in indices]
        return datasets.Dataset.from_dict({"input_ids": rows, "assistant_masks": [[1] * len(r) for r in rows]})

    dataset(train_order).save_to_disk(str(out / "train"))
    dataset(order[:n_eval]).save_to_disk(str(out / "eval"))
    return {"tokens": tokens, "train": out / "train", "eval": out / "eval"}


# --------------------------------------------------------------------------- one run, in its own process


class _AnonSampler:
    """The largest sum of ``Pss_Anon`` over this process and its descendants, sampled every 20 ms (a forked worker's
    pages shared with its parent counted once, split between them)."""

    def __init__(self) -> None:
        import psutil

        self._me, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _anon(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as status:
                for line in status:
                    if line.startswith("Pss_Anon:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                pids = [self._me.pid, *(child.pid for child in self._me.children(recursive=True))]
            except Exception:
                continue
            self.peak = max(self.peak, sum(map(self._anon, pids)))

    def __enter__(self) -> _AnonSampler:
        self.peak = self._anon(os.getpid())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rows_digest(path: Path) -> str:
    """A digest of a saved dataset's rows, in order (both columns)."""
    import datasets

    ds = datasets.load_from_disk(str(path)).with_format("arrow")
    digest = hashlib.sha256()
    for batch in ds.iter(1000):
        for name in ("input_ids", "assistant_masks"):
            column = batch.column(name).combine_chunks()
            digest.update(column.offsets.to_numpy().tobytes())
            digest.update(column.values.to_numpy().astype("int64").tobytes())
    return digest.hexdigest()


def child(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from tempa.sft.pretrain_config import PretrainStageConfig
    from tempa.sft.pretrain_stage import prepare_pretrain_data

    config = PretrainStageConfig.model_validate(json.loads(Path(args.config).read_text(encoding="utf-8")))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    out = Path(args.out)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with _AnonSampler() as anon:
        if args.child == "baseline":
            result = baseline_prepare(config, tokenizer, out, seed=0)
            train, held, tokens = result["train"], result["eval"], sum(result["tokens"].values())
        else:
            data = prepare_pretrain_data(config, tokenizer, out, seed=0,
                                         num_proc=args.num_proc)
            train, held, tokens = data.train_path, data.eval_path, sum(data.tokens.values())
    seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds, "tokens": tokens, "setup_rss": before,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "worker_peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "peak_anon": anon.peak, "train": rows_digest(train), "eval": rows_digest(held)}))


def _encode_some(texts: list[str]) -> float:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.environ["_BENCH_TOKENIZER"])
    start = time.perf_counter()
    for first in range(0, len(texts), 200):
        tokenizer(texts[first: first + 200])
    return time.perf_counter() - start


def bare_scaling(data: Path, tokenizer: Path) -> float:
    """The machine's own 1 -> 2 process ratio now: the same documents encoded in one process, then half each in two
    forked processes (nothing else: no reading, no Arrow, no tempa)."""
    import multiprocessing

    os.environ["_BENCH_TOKENIZER"] = str(tokenizer)
    texts = [json.loads(line)["text"] for line in (data / "en.jsonl").read_text(encoding="utf-8").splitlines()[:2000]]
    one = _encode_some(texts)
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_encode_some, [texts[: len(texts) // 2], texts[len(texts) // 2:]])
    return one / (time.perf_counter() - start)


def run(kind: str, config: Path, tokenizer: Path, out: Path, num_proc: int | None = None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, "--config", str(config), "--tokenizer-dir", str(tokenizer),
               "--out", str(out)]
    if num_proc is not None:
        command += ["--num-proc", str(num_proc)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1M tokens instead of ~20M")
    parser.add_argument("--tokenizer", choices=["llama3", "tiny"], default="llama3")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=["baseline", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer-dir", help=argparse.SUPPRESS)
    parser.add_argument("--num-proc", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from tempa.recipes.tiny import build_tokenizer

    with tempfile.TemporaryDirectory(prefix="pretrain-prep-") as tmp:
        work = Path(tmp)
        build_tokenizer(args.tokenizer).save_pretrained(work / "tokenizer")
        config, half = work / "config.json", work / "half.json"
        scale = 0.05 if args.quick else 1.0
        config.write_text(json.dumps(write_mix(work / "data", scale)), encoding="utf-8")
        half.write_text(json.dumps(write_mix(work / "half", scale / 2)), encoding="utf-8")
        halved = run("new", half, work / "tokenizer", work / "new-half")
        bare = bare_scaling(work / "data", work / "tokenizer")
        results = {
            "baseline": run("baseline", config, work / "tokenizer", work / "baseline"),
            "new, 1 process": run("new", config, work / "tokenizer", work / "new1", num_proc=1),
            "new, one per core": run("new", config, work / "tokenizer", work / "new"),
        }
    # The baseline holds out by chunk (the rule before documents were held out whole), so its rows differ by design:
    # the new runs must prepare the same rows, and all three take the same tokens.
    same = len({(r["train"], r["eval"]) for name, r in results.items() if name != "baseline"}) == 1
    same_tokens = len({r["tokens"] for r in results.values()}) == 1
    results["new, half the mix"] = halved
    mib = 1 << 20
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}; tokenizer {args.tokenizer}")
    print(f"{'':20} {'tokens':>11} {'s':>7} {'tokens/s':>10} {'peak RSS':>10} {'worker RSS':>11} {'anon RSS':>9} "
          f"{'B/token':>8}")
    for name, r in results.items():
        growth = max(r["peak_rss"], r["worker_peak_rss"]) - r["setup_rss"]
        print(f"{name:20} {r['tokens']:>11,} {r['seconds']:>7.1f} {r['tokens'] / r['seconds']:>10,.0f} "
              f"{r['peak_rss'] / mib:>8.0f}Mi {r['worker_peak_rss'] / mib:>9.0f}Mi {r['peak_anon'] / mib:>7.0f}Mi "
              f"{growth / r['tokens']:>8.1f}")
    base = results["baseline"]
    for name in ("new, 1 process", "new, one per core"):
        r = results[name]
        print(f"{name} vs baseline: {base['seconds'] / r['seconds']:.2f}x tokens/s, peak RSS "
              f"{max(r['peak_rss'], r['worker_peak_rss']) / base['peak_rss']:.2f}x, anonymous RSS "
              f"{r['peak_anon'] / base['peak_anon']:.2f}x")
    full = results["new, one per core"]
    print(f"new, one per core, the mix over half of it: {full['tokens'] / halved['tokens']:.2f}x tokens, anonymous RSS "
          f"{full['peak_anon'] / halved['peak_anon']:.2f}x, peak RSS {full['peak_rss'] / halved['peak_rss']:.2f}x")
    print(f"bare tokenising, 2 forked processes over 1 (what this machine gave two processes just now): {bare:.2f}x")
    print("prepared rows identical in the two new runs of the mix:", "yes" if same else "NO")
    print("tokens taken equal in the three runs of the mix:", "yes" if same_tokens else "NO")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "identical": same, "same_tokens": same_tokens, "bare_scaling": bare}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
