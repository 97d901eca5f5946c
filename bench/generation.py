"""On-policy sampling: TransformersBackend batched against one prompt at a time.

    python bench/generation.py             # the recorded configuration
    python bench/generation.py --quick     # a smoke run

Both runs use ``tempa.alignment.generation.TransformersBackend`` on the same model, prompts and
sampling settings (temperature 1.0, ``n`` samples per prompt, as on-policy preference rounds sample);
only ``GenerationParams.batch_size`` differs. Prompts are the shipped multilingual sample prompts
(recipes/data/sample_prompts.jsonl). Printed: samples/s, generated tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common

SHAPE = common.Shape(256, 688, 4, 4, 2, 1024)


def prompts(count: int) -> list[list[dict[str, Any]]]:
    from tempa.recipes.tiny import sample_data_dir

    rows = common.read_jsonl(sample_data_dir() / "sample_prompts.jsonl")
    return [rows[i % len(rows)]["messages"] for i in range(count)]


def measure(backend, batch: list[list[dict[str, Any]]], params) -> dict[str, float]:
    started = time.perf_counter()
    outputs = backend.generate(batch, params)
    seconds = time.perf_counter() - started
    samples = [text for per_prompt in outputs for text in per_prompt]
    tokens = sum(len(backend.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in samples)
    return {"seconds": seconds, "samples": len(samples), "samples_per_s": len(samples) / seconds,
            "tokens_per_s": tokens / seconds, "mean_tokens": tokens / max(1, len(samples))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=2, help="samples per prompt")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per batch in the batched run")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadier on a shared machine)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.max_new_tokens, args.batch_size = 8, 16, 8

    import torch

    from tempa.alignment.generation import GenerationParams, TransformersBackend

    torch.set_num_threads(args.threads)
    print(common.machine_line())
    with tempfile.TemporaryDirectory(prefix="tempa-bench-gen-") as tmp:
        tokenizer = common.bench_tokenizer()
        model = common.llama(SHAPE, tokenizer)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        backend = TransformersBackend(tmp, device="cpu", dtype="float32", show_progress=False)
        print(f"model: Llama {SHAPE}, {common.parameter_count(backend.model) / 1e6:.2f}M parameters; "
              f"{args.prompts} prompts x n={args.n}, max_new_tokens={args.max_new_tokens}, temperature 1.0")
        batch = prompts(args.prompts)

        def params(batch_size: int) -> GenerationParams:
            return GenerationParams(max_new_tokens=args.max_new_tokens, temperature=1.0, n=args.n, seed=0,
                                    batch_size=batch_size, thinking_mode="off")

        backend.generate(batch[:2], params(2))  # warm-up: template compile, first allocations
        results = {
            "batched": measure(backend, batch, params(args.batch_size)),
            "one by one": measure(backend, batch, params(1)),
        }
    rows = [("run", "batch size", "seconds", "samples/s", "tokens/s", "mean tokens/sample")]
    for (name, r), size in zip(results.items(), (args.batch_size, 1), strict=True):
        rows.append((name, str(size), f"{r['seconds']:.2f}", f"{r['samples_per_s']:.2f}", f"{r['tokens_per_s']:.0f}",
                     f"{r['mean_tokens']:.1f}"))
    common.print_table(rows)
    ratio = results["batched"]["samples_per_s"] / results["one by one"]["samples_per_s"]
    print(f"ratio batched/one-by-one samples/s: {ratio:.2f}x")
    print(f"machine after the run: {common.machine_line()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": common.machine_line(), **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
