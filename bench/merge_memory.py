"""Merge memory: tempa's merge stage (mergekit, out of core) against loading all checkpoints and averaging.

    python bench/merge_memory.py              # 3 checkpoints of a ~100M-parameter Llama (bf16, ~200 MB each)
    python bench/merge_memory.py --size 500m  # the same at ~500M parameters (~1 GB each)
    python bench/merge_memory.py --quick      # a ~10M-parameter smoke run

Each path runs in its own subprocess, so each peak RSS is that process's own high-water mark
(``getrusage(RUSAGE_SELF).ru_maxrss`` at its end, sampled with psutil as well):

- floor-tempa / floor-naive: processes that only import what each path imports (its fixed cost);
- tempa: ``tempa.merge.run_merge`` with a linear merge of the three folders (mergekit underneath);
- naive: ``AutoModelForCausalLM.from_pretrained`` x3, average the parameters, ``save_pretrained``.

Printed: peak RSS, peak RSS above the floor, wall time, and the tempa/naive ratios; the two merged
models are compared tensor by tensor. Goal: tempa's peak RSS at most 0.5x the naive path's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common as common

SHAPES = {
    # ~99.5M parameters: a GPT-2-small-sized Llama with a 32k vocabulary, untied head (the size).
    "100m": common.Shape(768, 2048, 8, 12, 4, 32000),
    # ~500M parameters, to see how the ratio moves with size: the import floor stays, the inputs grow.
    "500m": common.Shape(1536, 4096, 16, 12, 4, 32000),
    "quick": common.Shape(256, 688, 4, 4, 2, 8000),
}


class RssSampler:
    """Samples this process's RSS split into anonymous and file-backed pages (/proc/self/status).

    ``ru_maxrss`` is the authoritative peak; the split shows how much of it is memory-mapped
    safetensors pages, which the kernel can drop under pressure, against anonymous memory it cannot.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak_anon = 0
        self.peak_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> dict[str, int]:
        out = {}
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(("RssAnon:", "RssFile:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self.read()
            self.peak_anon = max(self.peak_anon, now.get("RssAnon", 0))
            self.peak_file = max(self.peak_file, now.get("RssFile", 0))
            time.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- workers (one per process)


def worker_make(work: Path, shape: common.Shape) -> dict[str, Any]:
    import torch

    tokenizer = common.bench_tokenizer()
    tokenizer.save_pretrained(work / "tokenizer")
    params = 0
    for i in range(3):
        model = common.llama(shape, tokenizer, seed=i, dtype=torch.bfloat16)
        params = common.parameter_count(model)
        model.save_pretrained(work / f"ckpt-{i}", safe_serialization=True)
        tokenizer.save_pretrained(work / f"ckpt-{i}")
        del model
    return {"parameters": params}


def worker_floor_tempa(work: Path) -> dict[str, Any]:
    import mergekit.merge  # noqa: F401
    import transformers  # noqa: F401

    import tempa.merge  # noqa: F401

    return {}


def worker_floor_naive(work: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM  # noqa: F401

    return {}


def worker_tempa(work: Path, out_shard_size: str | None = None) -> dict[str, Any]:
    import logging

    from tempa.chat_templates import load_template
    from tempa.merge import MergeStageConfig, run_merge
    from tempa.sft.stage_api import StageContext

    def no_launch(*_: Any) -> None:
        raise RuntimeError("the merge stage launches nothing")

    models = [str(work / f"ckpt-{i}") for i in range(3)]
    options = {"out_shard_size": out_shard_size} if out_shard_size else {}
    config = MergeStageConfig.model_validate(
        {"name": "merge", "kind": "merge", "method": "linear", "models": models, "reevaluate": False,
         "options": options}
    )
    stage_dir = work / "tempa-merge"
    ctx = StageContext(
        stage_name="merge", stage_dir=stage_dir, seed=0, start_model=Path(models[0]), base_model=Path(models[0]),
        tokenizer_dir=work / "tokenizer", chat_template=load_template(common.TEMPLATE), upstream={},
        launch=no_launch, log=logging.getLogger("bench"),
    )
    result = run_merge(config, ctx)
    return {"out": str(result.model)}


def worker_naive(work: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    models = [AutoModelForCausalLM.from_pretrained(work / f"ckpt-{i}") for i in range(3)]
    merged = models[0]
    with torch.no_grad():
        for name, param in merged.named_parameters():
            total = sum(m.get_parameter(name).float() for m in models)
            param.copy_(total / len(models))
    out = work / "naive-merge"
    merged.save_pretrained(out, safe_serialization=True)
    return {"out": str(out), "dtype": str(merged.dtype)}


WORKERS = {"floor-tempa": worker_floor_tempa, "floor-naive": worker_floor_naive, "tempa": worker_tempa,
           "naive": worker_naive}


def run_worker(name: str, work: Path, shape_name: str, out_shard_size: str | None = None) -> dict[str, Any]:
    """Run ``name`` in a fresh interpreter; returns its JSON report (peak RSS in MiB, seconds)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--work", str(work),
               "--size", shape_name]
    if out_shard_size:
        command += ["--out-shard-size", out_shard_size]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["process_seconds"] = wall
    return report


def worker_main(name: str, work: Path, shape_name: str, out_shard_size: str | None) -> int:
    import resource

    started = time.perf_counter()
    with RssSampler() as sampler:
        if name == "make":
            out = worker_make(work, SHAPES[shape_name])
        elif name == "tempa":
            out = worker_tempa(work, out_shard_size)
        else:
            out = WORKERS[name](work)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({**out, "seconds": seconds, "peak_rss_mib": peak, "peak_anon_mib": sampler.peak_anon / 2**20,
                      "peak_file_mib": sampler.peak_file / 2**20}))
    return 0


# --------------------------------------------------------------------------- comparison + report


def compare(a: Path, b: Path) -> float:
    """Largest absolute difference between two merged models' tensors (one tensor in memory at a time)."""
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        out = {}
        for file in folder.glob("*.safetensors"):
            with safe_open(file, "pt") as handle:
                out.update({key: file for key in handle.keys()})  # noqa: SIM118 - safe_open is not a dict
        return out

    ia, ib = index(a), index(b)
    if set(ia) != set(ib):
        raise RuntimeError(f"the merged models hold different tensors: {sorted(set(ia) ^ set(ib))[:5]}")
    worst = 0.0
    for key in ia:
        with safe_open(ia[key], "pt") as fa, safe_open(ib[key], "pt") as fb:
            diff = (fa.get_tensor(key).float() - fb.get_tensor(key).float()).abs().max().item()
        worst = max(worst, diff)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=["make", *WORKERS], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", default="100m", choices=list(SHAPES), help="model size (default: 100m)")
    parser.add_argument("--out-shard-size", default=None,
                        help="the merge stage's options.out_shard_size (default: tempa's, 5B parameters)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.work, args.size, args.out_shard_size)

    shape_name = "quick" if args.quick else args.size
    print(common.machine_line())
    with tempfile.TemporaryDirectory(prefix="tempa-bench-merge-") as tmp:
        work = Path(tmp)
        made = run_worker("make", work, shape_name)
        size = sum(f.stat().st_size for f in (work / "ckpt-0").glob("*.safetensors")) / 2**20
        print(f"checkpoints: 3 x Llama {SHAPES[shape_name]}, {made['parameters'] / 1e6:.1f}M parameters, "
              f"bf16, {size:.0f} MiB of safetensors each")
        results = {name: run_worker(name, work, shape_name, args.out_shard_size) for name in WORKERS}
        results["max_abs_diff"] = compare(Path(results["tempa"]["out"]), Path(results["naive"]["out"]))
    report(results)
    if args.json:
        args.json.write_text(json.dumps({"machine": common.machine_line(), **results}, indent=2))
    return 0


def report(results: dict[str, Any]) -> None:
    rows = [("path", "peak RSS MiB", "above its import floor", "peak anon MiB", "peak file-backed MiB",
             "seconds (work)", "seconds (process)")]
    for name in WORKERS:
        r = results[name]
        floor = results[f"floor-{name}"]["peak_rss_mib"] if not name.startswith("floor") else r["peak_rss_mib"]
        rows.append((name, f"{r['peak_rss_mib']:.0f}", f"{r['peak_rss_mib'] - floor:.0f}", f"{r['peak_anon_mib']:.0f}",
                     f"{r['peak_file_mib']:.0f}", f"{r['seconds']:.2f}", f"{r['process_seconds']:.2f}"))
    common.print_table(rows)
    tempa, naive = results["tempa"], results["naive"]
    above = (tempa["peak_rss_mib"] - results["floor-tempa"]["peak_rss_mib"]) / (
        naive["peak_rss_mib"] - results["floor-naive"]["peak_rss_mib"])
    print(f"ratio tempa/naive peak RSS: {tempa['peak_rss_mib'] / naive['peak_rss_mib']:.2f}x (goal <= 0.5x); "
          f"above each path's import floor: {above:.2f}x; peak anonymous RSS: "
          f"{tempa['peak_anon_mib'] / naive['peak_anon_mib']:.2f}x")
    print(f"ratio tempa/naive wall time (work): {tempa['seconds'] / naive['seconds']:.2f}x")
    print(f"merged models agree: max |tempa - naive| = {results['max_abs_diff']:.3g}")
    print(f"machine after the run: {common.machine_line()}")


if __name__ == "__main__":
    raise SystemExit(main())
