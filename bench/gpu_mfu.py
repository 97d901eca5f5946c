"""GPU MFU: full-parameter SFT of a random model shaped like Llama-3.2-1B, the way tempa trains it.

    python bench/gpu_mfu.py                       # on a GPU machine (H100 / H200 / A100)
    python bench/gpu_mfu.py --no-checkpointing    # trade memory for speed (1B fits on one 80 GB GPU)
    python bench/gpu_mfu.py --dry-run             # CPU: a tiny shape, checks the logic, MFU meaningless

The trainer is trl's SFTTrainer with the SFTConfig that ``tempa.sft.train`` builds from tempa's
defaults (BFD packing, padding-free, assistant-only loss on pre-tokenised masks) in bf16, with
flash-attention 2 when the ``flash_attn`` package is installed (else sdpa, which under padding-free
packing computes dense attention over the whole packed row; ``--attn doc-sdpa`` calls sdpa once per
packed document instead) and Liger kernels when
``liger_kernel`` is installed. The model is Llama-3.2-1B's shape with random weights, saved to a
folder and loaded from it, as the training worker does; data are random token ids with the
heavy-tailed lengths of bench/_common.py.

Printed: tokens/s/GPU and MFU = 6 * N * tokens/s / peak bf16 dense FLOP/s (N: all parameters, tied
embeddings once), plus the MFU with causal attention FLOPs added. Goal on H100: >= 45% MFU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as common
from transformers import TrainerCallback

LLAMA_32_1B = common.Shape(2048, 8192, 16, 32, 8, 128256, tie_word_embeddings=True)
DRY_RUN_SHAPE = common.Shape(64, 176, 2, 4, 2, 1024, tie_word_embeddings=True)

# Peak dense bf16 tensor FLOP/s (no sparsity), by device-name fragment; first match wins.
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)


def peak_flops(device_name: str) -> float | None:
    for fragment, peak in PEAK_BF16:
        if fragment in device_name:
            return peak
    return None


@dataclass
class Meter(TrainerCallback):
    """Times the steps after warm-up (synchronising the GPU) and counts the tokens they trained on."""

    warmup_steps: int = 3
    tokens: int = 0
    doc_tokens_sq: int = 0  # sum of squared document lengths, for the attention FLOPs
    seconds: float = 0.0
    steps: int = 0
    peak_memory_gib: float = 0.0
    _measuring: bool = False
    _t0: float = 0.0
    _handles: list[Any] = field(default_factory=list)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
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
        if torch.cuda.is_available():
            self.peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30

    def _count(self, module, args, kwargs) -> None:
        if not self._measuring or not module.training:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += int(input_ids.numel()) if kwargs.get("attention_mask") is None else int(
            kwargs["attention_mask"].sum())
        position_ids = kwargs.get("position_ids")
        if position_ids is not None:
            starts = [*(position_ids[0] == 0).nonzero().flatten().tolist(), position_ids.shape[1]]
            self.doc_tokens_sq += sum((b - a) ** 2 for a, b in itertools.pairwise(starts))


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


def attention_choice(requested: str) -> str:
    """``auto``: flash-attention 2 when installed, else sdpa (tempa's default when a recipe sets none)."""
    if requested == "doc-sdpa":
        common.register_document_attention()
        return common.DOC_ATTENTION
    if requested != "auto":
        return requested
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "sdpa"
    return "flash_attention_2"


def liger_available() -> bool:
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def train_args(args: argparse.Namespace, attention: str, liger: bool) -> dict[str, Any]:
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
        "model_init_kwargs": {"attn_implementation": attention, "dtype": "bfloat16" if not args.dry_run else "float32"},
        "dataloader_num_workers": 2 if not args.dry_run else 0,
    }
    if liger:
        out["use_liger_kernel"] = True
    return out


def build_trainer(args: argparse.Namespace, work: Path, meter: Meter):
    import torch
    from trl import SFTConfig, SFTTrainer

    from tempa.sft.config import DEFAULT_TRAIN_ARGS
    from tempa.sft.train import trl_config_kwargs

    shape = DRY_RUN_SHAPE if args.dry_run else LLAMA_32_1B
    tokenizer = common.bench_tokenizer()
    model = common.llama(shape, tokenizer, max_positions=max(8192, args.max_length),
                         dtype=None if args.dry_run else torch.bfloat16)
    n_params = common.parameter_count(model)
    model.save_pretrained(work / "model", safe_serialization=True)
    tokenizer.save_pretrained(work / "model")
    del model
    attention = attention_choice(args.attn)
    liger = liger_available() and not args.dry_run
    plan = {
        "train_args": {**DEFAULT_TRAIN_ARGS, **train_args(args, attention, liger)},
        "output_dir": str(work / "out"),
        "seed": 0,
        "use_cpu": args.dry_run,
        "mixed_precision": "no" if args.dry_run else "bf16",
    }
    # As tempa.sft.train.main builds it: the data carry their own assistant masks.
    config = SFTConfig(**{**trl_config_kwargs(plan), "assistant_only_loss": False})
    dataset = random_dataset(lengths_for(1.2 * args.steps * args.batch * args.max_length, args.max_length),
                             shape.vocab_size)
    trainer = SFTTrainer(model=str(work / "model"), args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[meter])
    info = {"shape": shape, "parameters": n_params, "attention": attention, "liger": liger,
            "activation_checkpointing": config.activation_checkpointing, "packing": config.packing,
            "padding_free": trainer.padding_free, "bf16": config.bf16,
            "tokens_per_step": args.batch * args.max_length}
    return trainer, info


def mfu_report(meter: Meter, info: dict[str, Any], device: str, peak: float | None) -> dict[str, Any]:
    shape: common.Shape = info["shape"]
    tokens_per_s = meter.tokens / max(meter.seconds, 1e-9)
    model_flops = 6 * info["parameters"] * tokens_per_s
    # Causal attention per token, fwd + bwd: 3 x (QK^T + AV = 4 x context x d_attn) per layer, where a token's
    # mean context in its own document is sum(len^2) / (2 sum(len)) (varlen kernels attend within documents).
    mean_context = meter.doc_tokens_sq / max(1, meter.tokens) / 2
    attention_flops = 12 * shape.num_hidden_layers * shape.hidden_size * mean_context * tokens_per_s
    out = {"device": device, "tokens_per_s_per_gpu": tokens_per_s, "timed_steps": meter.steps,
           "seconds": meter.seconds, "peak_memory_gib": meter.peak_memory_gib,
           **{k: v for k, v in info.items() if k != "shape"}, "shape": shape.__dict__}
    if peak:
        out["peak_flops"] = peak
        out["mfu"] = model_flops / peak
        out["mfu_with_attention"] = (model_flops + attention_flops) / peak
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (the first --warmup are not timed)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=8192, help="packed row length")
    parser.add_argument("--batch", type=int, default=2, help="packed rows per step (flattened, padding-free)")
    parser.add_argument("--no-checkpointing", action="store_true", help="turn trl's default checkpointing off")
    parser.add_argument("--attn", default="auto", choices=["auto", "flash_attention_2", "sdpa", "doc-sdpa"],
                        help="auto: flash_attention_2 if installed, else sdpa; doc-sdpa: one sdpa call per packed "
                        "document (no dense block mask), for machines without flash-attn")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shape, few steps: checks the logic only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    if args.dry_run:
        args.steps, args.warmup, args.max_length, args.batch = 4, 1, 1024, 1
        args.attn = "sdpa" if args.attn in ("auto", "flash_attention_2") else args.attn
        torch.set_num_threads(1)  # steadier on a shared CPU
    elif not torch.cuda.is_available():
        parser.error("no CUDA device; use --dry-run to check the script on CPU")
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
        print(f"MFU (6N): {100 * result['mfu']:.1f}%{label}; with attention FLOPs: "
              f"{100 * result['mfu_with_attention']:.1f}%")
    else:
        print(f"MFU: unknown peak for {device!r}; add it to PEAK_BF16")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
