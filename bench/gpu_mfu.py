"""GPU MFU: full-parameter SFT of a random model shaped like Llama-3.2-1B, the way tempa trains it.

    python bench/gpu_mfu.py                       # on a GPU machine (H100 / H200 / A100)
    python bench/gpu_mfu.py --no-checkpointing    # trade memory for speed (1B fits on one 80 GB GPU)
    python bench/gpu_mfu.py --dry-run             # CPU: a tiny shape, checks the logic, MFU meaningless

The trainer is trl's SFTTrainer with the SFTConfig that ``tempa.sft.train_worker`` builds from tempa's
defaults (BFD packing, padding-free, assistant-only loss on pre-tokenised masks) in bf16, with the
kernels its worker picks (``tempa.sft.train_worker.plan_kernels``): flash-attention 2 when ``flash_attn``
is installed, else ``tempa_doc_sdpa`` (on a CUDA GPU in bf16 one call of torch's varlen flash-attention
kernel for all packed documents, on CPU one sdpa call per document), and Liger's layer kernels when
``liger_kernel`` is installed. ``--attn`` overrides the attention as a recipe would. The model
is Llama-3.2-1B's shape with random weights, saved to a folder and loaded from it, as the training
worker does; data are random token ids with the heavy-tailed lengths of bench/_common.py.

Printed: the worker's own progress lines (tokens/s/GPU, MFU, padding, ETA from
``tempa.sft.throughput``), then tokens/s/GPU and MFU over the steps after warm-up. MFU counts the
model FLOPs of ``tempa.sft.throughput``: 6 x matmul parameters per token, with and without causal
attention within each packed document, over the peak dense bf16 FLOP/s of
``tempa.sft.throughput_summary.PEAK_FLOPS``. Goal on H100: >= 45% MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as common
from transformers import TrainerCallback

LLAMA_32_1B = common.Shape(2048, 8192, 16, 32, 8, 128256, tie_word_embeddings=True)
DRY_RUN_SHAPE = common.Shape(64, 176, 2, 4, 2, 1024, tie_word_embeddings=True)

@dataclass
class Meter(TrainerCallback):
    """Times the steps after warm-up (synchronising the GPU) and counts the tokens they trained on."""

    warmup_steps: int = 3
    tokens: Any = 0
    doc_tokens_sq: Any = 0  # sum of squared document lengths, for the attention FLOPs
    flops_terms: tuple[float, float] = (0.0, 0.0)  # tempa.sft.throughput.flops_per_token_terms of the model
    seconds: float = 0.0
    steps: int = 0
    peak_memory_gib: float = 0.0
    _measuring: bool = False
    _t0: float = 0.0
    _handles: list[Any] = field(default_factory=list)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from tempa.sft.throughput import flops_per_token_terms

        self.flops_terms = flops_per_token_terms(model)
        self._handles.append(model.register_forward_pre_hook(self._count, with_kwargs=True))

    def on_step_end(self, args, state, control, **kwargs):
        _synchronize()
        now = time.perf_counter()
        if self._measuring:
            self.seconds, self.steps = now - self._t0, self.steps + 1
        elif state.global_step >= self.warmup_steps:
            self._measuring, self._t0 = True, now

    def on_train_end(self, args, state, control, **kwargs):
        import torch

        for handle in self._handles:
            handle.remove()
        self.tokens, self.doc_tokens_sq = int(self.tokens), int(self.doc_tokens_sq)
        if torch.cuda.is_available():
            self.peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30

    def _count(self, module, args, kwargs) -> None:
        if not self._measuring or not module.training:
            return
        from tempa.sft.throughput import batch_counts

        real, _, squares = batch_counts(kwargs, kwargs.get("input_ids", args[0] if args else None))
        self.tokens, self.doc_tokens_sq = self.tokens + real, self.doc_tokens_sq + squares


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def random_dataset(lengths: list[int], vocab: int, seed: int = 0):
    """Pre-tokenised rows (what tempa's data pipeline hands the trainer): ids + assistant masks."""
    import numpy as np
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    ids, masks = [], []
    for length in lengths:
        ids.append(rng.integers(10, vocab, size=length, dtype=np.int64).tolist())
        prompt = max(1, length // 10)
        masks.append([0] * prompt + [1] * (length - prompt))
    return Dataset.from_dict({"input_ids": ids, "assistant_masks": masks})


def lengths_for(tokens: float, max_length: int) -> list[int]:
    """Heavy-tailed sample lengths adding up to at least ``tokens``."""
    lengths: list[int] = []
    pool = common.reasoning_lengths(int(tokens // 400) + 16, seed=0, max_tokens=max_length)
    while sum(lengths) < tokens:
        lengths.append(pool[len(lengths) % len(pool)])
    return lengths


def requested_attention(requested: str) -> str | None:
    """The recipe setting ``--attn`` stands for; None (``auto``): what tempa's worker picks."""
    from tempa.sft.packed_attention import DOC_SDPA

    return {"auto": None, "doc-sdpa": DOC_SDPA}.get(requested, requested)


def train_args(args: argparse.Namespace, attention: str | None) -> dict[str, Any]:
    """The recipe's `train:` block this benchmark stands for (tempa fills in the rest)."""
    out: dict[str, Any] = {
        "max_length": args.max_length,
        "per_device_train_batch_size": args.batch,
        "max_steps": args.steps,
        "logging_steps": max(1, args.steps // 4),
        "save_strategy": "no",
        "learning_rate": 1e-5,
        "warmup_steps": 0,
        "activation_checkpointing": not args.no_checkpointing,
        "model_init_kwargs": {"dtype": "bfloat16" if not args.dry_run else "float32",
                              **({"attn_implementation": attention} if attention else {})},
        "dataloader_num_workers": 2 if not args.dry_run else 0,
    }
    return out


def build_trainer(args: argparse.Namespace, work: Path, meter: Meter):
    import torch
    from trl import SFTConfig, SFTTrainer

    from tempa.sft.config import DEFAULT_TRAIN_ARGS
    from tempa.sft.stage_api import TrainingEnv
    from tempa.sft.throughput import ThroughputMeter, add_throughput_callbacks
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import plan_kernels, trl_config_kwargs

    shape = DRY_RUN_SHAPE if args.dry_run else LLAMA_32_1B
    tokenizer = common.bench_tokenizer()
    model = common.llama(shape, tokenizer, max_positions=max(8192, args.max_length),
                         dtype=None if args.dry_run else torch.bfloat16)
    n_params = common.parameter_count(model)
    model.save_pretrained(work / "model", safe_serialization=True)
    tokenizer.save_pretrained(work / "model")
    del model
    plan = TrainPlan.standalone(
        work / "model", work / "out", {**DEFAULT_TRAIN_ARGS, **train_args(args, requested_attention(args.attn))},
        env=TrainingEnv(use_cpu=args.dry_run, mixed_precision="no" if args.dry_run else "bf16"))
    # As the training worker builds it: the data carry their own assistant masks.
    kernels = plan_kernels(plan)
    config = SFTConfig(**{**trl_config_kwargs(plan, kernels), "assistant_only_loss": False})
    dataset = random_dataset(lengths_for(1.2 * args.steps * args.batch * args.max_length, args.max_length),
                             shape.vocab_size)
    trainer = SFTTrainer(model=str(work / "model"), args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[meter])
    add_throughput_callbacks(trainer, ThroughputMeter(peak=1e12 if args.dry_run else None))
    info = {"shape": shape, "parameters": n_params, "attention": trainer.model.config._attn_implementation,
            "liger": bool(config.use_liger_kernel),
            "activation_checkpointing": config.activation_checkpointing, "packing": config.packing,
            "padding_free": trainer.padding_free, "bf16": config.bf16,
            "tokens_per_step": args.batch * args.max_length}
    return trainer, info


def mfu_report(meter: Meter, info: dict[str, Any], device: str, peak: float | None) -> dict[str, Any]:
    tokens_per_s = meter.tokens / max(meter.seconds, 1e-9)
    per_token, per_square = meter.flops_terms
    # causal attention within each document: sum over documents of l(l + 1) = sum(l^2) + tokens
    attention_per_s = per_square * (meter.doc_tokens_sq + meter.tokens) / max(meter.seconds, 1e-9)
    out = {"device": device, "tokens_per_s_per_gpu": tokens_per_s, "timed_steps": meter.steps,
           "seconds": meter.seconds, "peak_memory_gib": meter.peak_memory_gib,
           **{k: v for k, v in info.items() if k != "shape"}, "shape": info["shape"].__dict__}
    if peak:
        out["peak_flops"] = peak
        out["mfu_without_attention"] = per_token * tokens_per_s / peak
        out["mfu"] = (per_token * tokens_per_s + attention_per_s) / peak
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (the first --warmup are not timed)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=8192, help="packed row length")
    parser.add_argument("--batch", type=int, default=2, help="packed rows per step (flattened, padding-free)")
    parser.add_argument("--no-checkpointing", action="store_true", help="turn trl's default checkpointing off")
    parser.add_argument("--attn", default="auto", choices=["auto", "flash_attention_2", "sdpa", "doc-sdpa"],
                        help="auto: what tempa's worker picks (flash_attention_2 if installed, else doc-sdpa); sdpa: "
                        "dense block-diagonal mask; doc-sdpa: tempa_doc_sdpa, attention within each packed document "
                        "(one varlen flash-attention call for all documents on a CUDA GPU in bf16, one sdpa call "
                        "per document on CPU)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shape, few steps: checks the logic only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    # One process: on a node of several GPUs, transformers' Trainer would wrap the model in nn.DataParallel,
    # which trl's SFTTrainer refuses. Set before CUDA starts (torch reads it then).
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
    import torch

    if args.dry_run:
        args.steps, args.warmup, args.max_length, args.batch = 4, 1, 1024, 1
        args.attn = "auto" if args.attn == "flash_attention_2" else args.attn
        torch.set_num_threads(1)  # steadier on a shared CPU
    elif not torch.cuda.is_available():
        parser.error("no CUDA device; use --dry-run to check the script on CPU")
    from tempa.sft.throughput_summary import peak_flops

    device = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    peak = 1e12 if args.dry_run else peak_flops(device)
    print(common.machine_line() + f" | device: {device}")
    meter = Meter(warmup_steps=args.warmup)
    with tempfile.TemporaryDirectory(prefix="tempa-bench-mfu-") as tmp:
        trainer, info = build_trainer(args, Path(tmp), meter)
        print("config: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
        trainer.train()
    result = mfu_report(meter, info, device, peak)
    print(f"tokens/s/GPU: {result['tokens_per_s_per_gpu']:.0f} over {meter.steps} timed steps; "
          f"peak memory {meter.peak_memory_gib:.1f} GiB")
    if "mfu" in result:
        label = " (nominal 1 TFLOP/s peak: meaningless on CPU)" if args.dry_run else " (goal on H100: >= 45%)"
        print(f"MFU: {100 * result['mfu']:.1f}%{label}; without attention FLOPs: "
              f"{100 * result['mfu_without_attention']:.1f}%")
    else:
        print(f"MFU: unknown peak for {device!r}; add it to tempa.sft.throughput_summary.PEAK_FLOPS")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
