"""Attention for one packed row: transformers' dense sdpa mask, tempa's per-document attention, flex attention.

    python bench/packed_attention.py                 # CPU: an 8k-token packed row, the sft_throughput model shape
    python bench/packed_attention.py --quick         # CPU: a 2k-token row
    python bench/packed_attention.py --device cuda   # GPU: a 16k-token row, Llama-3.2-1B's shape, bf16

Each implementation runs the same model (random Llama, sft_throughput.py's shape) on the same packed
row (documents with the heavy-tailed lengths of bench/_common.py, position_ids restarting per document,
``cu_seq_lens`` as trl's padding-free collator passes them):

- ``sdpa``: transformers builds one (row x row) block-diagonal mask; sdpa computes every score;
- ``tempa_doc_sdpa``: ``tempa.sft.packed_attention``: on CPU one causal sdpa call per document, on a
  CUDA GPU in bf16 one call of torch's flash-attention varlen kernel;
- ``doc_loop`` (GPU only): the per-document sdpa calls that the CPU takes, timed on the GPU;
- ``flex_attention``: transformers builds a flex BlockMask from the same position_ids (compiled), so
  fully masked blocks are skipped. torch has no flex-attention backward on CPU, so it can only be
  timed forward (inference) there, and it cannot train on CPU at all.

Printed: seconds per forward and per forward+backward (median of --repeats, after one warm-up call;
on a GPU synchronised), wall and CPU time, the largest logit difference from ``tempa_doc_sdpa``, the
loss and gradient norm (the backward's check), and the ratios.
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


def timed_calls(fn, repeats: int, sync=lambda: None) -> dict[str, float]:
    fn()  # warm-up (flex: compiles the kernel and the block mask)
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def register_document_loop() -> str:
    """``doc_loop``: tempa's per-document sdpa calls (its CPU path) under their own name, to time them on a GPU."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from tempa.sft import packed_attention

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        cuts = packed_attention.document_cuts(query.shape[0], query.shape[2], kwargs)
        assert attention_mask is None and cuts is not None, "the bench row is one packed training row"
        gqa = query.shape[1] != key.shape[1]
        return packed_attention._attend_per_document(query, key, value, cuts, dropout, scaling, gqa), None

    AttentionInterface.register("doc_loop", attention)
    AttentionMaskInterface.register("doc_loop", packed_attention.document_mask)
    return "doc_loop"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    if args.quick:
        args.tokens, args.repeats = 2048, 2
    elif gpu and args.tokens == parser.get_default("tokens"):
        args.tokens, args.repeats = 16384, 5
    import torch

    from tempa.sft.packed_attention import DOC_SDPA, register

    torch.set_num_threads(args.threads)
    register()
    shape, dtype = DEFAULT_SHAPE, None
    names = [DOC_SDPA, "sdpa", "flex_attention"]
    if gpu:
        from gpu_mfu import LLAMA_32_1B

        shape, dtype = LLAMA_32_1B, torch.bfloat16
        names.insert(1, register_document_loop())
    lengths = packed_row(args.tokens)
    total = sum(lengths)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, shape.vocab_size, (1, total), generator=generator)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    inputs: dict[str, Any] = {"input_ids": ids, "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
                              "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths),
                              "max_length_k": max(lengths), "use_cache": False}
    inputs = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    ids = inputs["input_ids"]
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    print(common.machine_line() + (f" | {torch.cuda.get_device_name(0)}" if gpu else ""))
    print(f"row: {total} tokens in {len(lengths)} documents (longest {max(lengths)}); model {shape}")
    results: dict[str, dict[str, Any]] = {}
    reference = None
    for name in names:
        with torch.device(args.device):  # a 1B model is built on the GPU in a fraction of the CPU's time
            model = common.llama(shape, max_positions=args.tokens, dtype=dtype)
        model.set_attn_implementation(name)
        model.train()

        def forward(model=model):
            with torch.no_grad():
                return model(**inputs).logits

        def forward_backward(model=model):
            model.zero_grad(set_to_none=True)
            loss = model(**inputs, labels=ids).loss
            loss.backward()
            return loss

        logits = forward()
        reference = logits if reference is None else reference
        result: dict[str, Any] = {"max_logit_difference": float((logits.float() - reference.float()).abs().max()),
                                  "forward": timed_calls(forward, args.repeats, sync)}
        del logits
        try:
            result["loss"] = float(forward_backward().detach())
            result["grad_norm"] = float(torch.linalg.vector_norm(
                torch.stack([p.grad.float().norm() for p in model.parameters() if p.grad is not None])))
            result["forward_backward"] = timed_calls(forward_backward, args.repeats, sync)
        except (NotImplementedError, RuntimeError) as exc:  # flex attention: no backward on CPU
            result["forward_backward"] = None
            result["backward_error"] = str(exc).splitlines()[0]
        results[name] = result
        fb = result["forward_backward"]
        print(f"[{name}] forward {result['forward']['wall']:.3f}s wall / {result['forward']['cpu']:.3f}s CPU; "
              + (f"forward+backward {fb['wall']:.3f}s wall / {fb['cpu']:.3f}s CPU" if fb else
                 f"no backward: {result['backward_error']}")
              + f"; max |logit - {DOC_SDPA}| {result['max_logit_difference']:.2e}; loss {result.get('loss', 0):.6f}, "
              f"grad norm {result.get('grad_norm', 0):.6f}", flush=True)
        del model
        if gpu:
            torch.cuda.empty_cache()

    doc = results[DOC_SDPA]
    for name in names[1:]:
        other = results[name]
        clock = "wall" if gpu else "cpu"
        line = (f"{name} takes {other['forward'][clock] / doc['forward'][clock]:.2f}x the {clock} time of {DOC_SDPA} "
                "forward")
        if other["forward_backward"]:
            line += f", {other['forward_backward'][clock] / doc['forward_backward'][clock]:.2f}x forward+backward"
        print(line)
    print(f"machine after the run: {common.machine_line()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": common.machine_line(), "lengths": lengths, **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
