"""Attention for one packed row on CPU: transformers' dense sdpa mask, tempa's per-document sdpa, flex attention.

    python bench/packed_attention.py            # an 8k-token packed row, the sft_throughput model shape
    python bench/packed_attention.py --quick    # a 2k-token row

Each implementation runs the same model (random Llama, sft_throughput.py's shape) on the same packed
row (documents with the heavy-tailed lengths of bench/_common.py, position_ids restarting per document,
``cu_seq_lens`` as trl's padding-free collator passes them):

- ``sdpa``: transformers builds one (row x row) block-diagonal mask; sdpa computes every score;
- ``tempa_doc_sdpa``: ``tempa.sft.packed_attention``, one causal sdpa call per document;
- ``flex_attention``: transformers builds a flex BlockMask from the same position_ids (compiled), so
  fully masked blocks are skipped. torch has no flex-attention backward on CPU, so it can only be
  timed forward (inference) here, and it cannot train on CPU at all.

Printed: seconds per forward and per forward+backward (median of --repeats, after one warm-up call),
wall and CPU time, the largest logit difference from per-document attention, and the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import _common as common
from sft_throughput import DEFAULT_SHAPE


def packed_row(max_tokens: int, seed: int = 1) -> list[int]:
    """Document lengths filling one row greedily, as BFD fills its first bin."""
    row: list[int] = []
    for length in common.reasoning_lengths(400, seed=seed, max_tokens=max_tokens):
        if sum(row) + length <= max_tokens:
            row.append(length)
    return row


def timed_calls(fn, repeats: int) -> dict[str, float]:
    fn()  # warm-up (flex: compiles the kernel and the block mask)
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.repeats = 2048, 2
    import torch

    from tempa.sft.packed_attention import DOC_SDPA, register

    torch.set_num_threads(args.threads)
    register()
    lengths = packed_row(args.tokens)
    total = sum(lengths)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, DEFAULT_SHAPE.vocab_size, (1, total), generator=generator)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    inputs: dict[str, Any] = {"input_ids": ids, "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
                              "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths),
                              "max_length_k": max(lengths), "use_cache": False}
    print(common.machine_line())
    print(f"row: {total} tokens in {len(lengths)} documents (longest {max(lengths)}); model {DEFAULT_SHAPE}")
    results: dict[str, dict[str, Any]] = {}
    reference = None
    for name in (DOC_SDPA, "sdpa", "flex_attention"):
        model = common.llama(DEFAULT_SHAPE, max_positions=args.tokens)
        model.set_attn_implementation(name)
        model.train()

        def forward(model=model):
            with torch.no_grad():
                return model(**inputs).logits

        def forward_backward(model=model):
            model.zero_grad(set_to_none=True)
            model(**inputs, labels=ids).loss.backward()

        logits = forward()
        reference = logits if reference is None else reference
        result: dict[str, Any] = {"max_logit_difference": float((logits - reference).abs().max()),
                                  "forward": timed_calls(forward, args.repeats)}
        try:
            result["forward_backward"] = timed_calls(forward_backward, args.repeats)
        except (NotImplementedError, RuntimeError) as exc:  # flex attention: no backward on CPU
            result["forward_backward"] = None
            result["backward_error"] = str(exc).splitlines()[0]
        results[name] = result
        fb = result["forward_backward"]
        print(f"[{name}] forward {result['forward']['wall']:.3f}s wall / {result['forward']['cpu']:.3f}s CPU; "
              + (f"forward+backward {fb['wall']:.3f}s wall / {fb['cpu']:.3f}s CPU" if fb else
                 f"no backward: {result['backward_error']}")
              + f"; max |logit - per-document| {result['max_logit_difference']:.2e}", flush=True)

    doc = results[DOC_SDPA]
    for name in ("sdpa", "flex_attention"):
        other = results[name]
        line = (f"{name} takes {other['forward']['cpu'] / doc['forward']['cpu']:.2f}x the CPU time of {DOC_SDPA} "
                "forward")
        if other["forward_backward"]:
            line += f", {other['forward_backward']['cpu'] / doc['forward_backward']['cpu']:.2f}x forward+backward"
        print(line)
    print(f"machine after the run: {common.machine_line()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": common.machine_line(), "lengths": lengths, **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
