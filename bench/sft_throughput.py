"""SFT throughput: tempa's SFT path against plain trl SFTTrainer defaults, same model, data and steps.

    python bench/sft_throughput.py                 # the recorded configuration (~15 min on 2 shared CPUs)
    python bench/sft_throughput.py --quick         # a smoke run (seconds)

tempa path: the rows go through ``tempa.sft.data.prepare_sft_data`` (normalise -> curate -> render ->
tokenise -> mask) and train with the SFTConfig that ``tempa.sft.train_worker`` builds from tempa's defaults
(BFD packing, padding-free with position_ids, assistant-only loss from the pre-tokenised masks), the
model loaded from a folder with the attention implementation the worker picks for this machine
(``tempa.sft.train_worker.plan_kernels``: on CPU, one causal sdpa call per packed document).
Baseline: ``SFTTrainer`` on the same conversational rows with trl's defaults (padding to the
longest sample of each batch, no packing, batch 8); only ``max_length`` is raised to the longest
sample (8192) on both paths so that neither truncates and both see the same tokens.

A third run, ``tempa+dense-sdpa``, is tempa's path with the recipe setting
``model_init_kwargs: {attn_implementation: sdpa}`` (what tempa did before per-document attention):
transformers turns the packed position_ids into one block-diagonal mask and sdpa computes the full
(packed length)^2 scores. It separates the cost of that dense mask from the cost of the tokens.

Printed per path: real (non-padding) tokens/s, the same per CPU-second of this process (on a shared
machine, other processes' load inflates wall time but not this), loss tokens/s, padding fraction of the positions the
model computed, the share of operator time in attention (torch profiler over the timed steps), the
final loss, and the tempa/baseline ratio. Goal: >= 6x tokens/s and < 2% padding.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as common
from transformers import TrainerCallback

DEFAULT_SHAPE = common.Shape(
    hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=1024,
)


@dataclass
class StepMeter(TrainerCallback):
    """Counts what the model actually computed per optimizer step, and times the steps after warm-up."""

    warmup_steps: int = 1
    positions: int = 0  # token positions fed to the model (padding included)
    real: int = 0  # non-padding positions
    loss_tokens: int = 0  # positions with a label
    sequences: int = 0  # samples (documents) in the measured batches
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time over the same steps (what other load does not inflate)
    steps: int = 0
    profile: bool = True  # profile the timed steps: the share of operator time spent in attention
    attention_share: float | None = None
    _measuring: bool = False
    _t0: float = 0.0
    _cpu0: float = 0.0
    _profiler: Any = None
    _handles: list[Any] = field(default_factory=list)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._handles.append(model.register_forward_pre_hook(self._count, with_kwargs=True))

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._measuring:
            self.seconds = now - self._t0
            self.cpu_seconds = time.process_time() - self._cpu0
            self.steps += 1
        elif state.global_step >= self.warmup_steps:
            if self.profile:
                from torch.profiler import ProfilerActivity, profile

                self._profiler = profile(activities=[ProfilerActivity.CPU])
                self._profiler.__enter__()
            self._measuring, self._t0, self._cpu0 = True, time.perf_counter(), time.process_time()

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self._handles:
            handle.remove()
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self.attention_share = attention_share(self._profiler)
            self._profiler = None

    def _count(self, module, args, kwargs) -> None:
        if not self._measuring or not module.training:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        position_ids = kwargs.get("position_ids")
        labels = kwargs.get("labels")
        self.positions += int(input_ids.numel())
        self.real += int(mask.sum()) if mask is not None else int(input_ids.numel())
        if labels is not None:
            self.loss_tokens += int((labels != -100).sum())
        if position_ids is not None and mask is None:
            self.sequences += int((position_ids == 0).sum())
        else:
            self.sequences += int(input_ids.shape[0])

    def result(self) -> dict[str, float]:
        seconds = max(self.seconds, 1e-9)
        return {
            "steps": self.steps,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "tokens_per_s": self.real / seconds,
            "tokens_per_cpu_s": self.real / max(self.cpu_seconds, 1e-9),
            "loss_tokens_per_s": self.loss_tokens / seconds,
            "padding": 1 - self.real / max(1, self.positions),
            "tokens_per_step": self.real / max(1, self.steps),
            "sequences_per_step": self.sequences / max(1, self.steps),
            "attention_share": self.attention_share,
        }


def attention_share(profiler: Any) -> float:
    """Share of the step's operator self time spent in scaled-dot-product attention (forward + backward)."""
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
    return attention / max(total, 1e-9)


def tempa_trainer(rows_path: Path, tokenizer, model_dir: Path, work: Path, args: argparse.Namespace, meter: StepMeter,
                  attention: str | None = None):
    """tempa's path: its data pipeline, then the SFTConfig its training worker builds (``attention``: a recipe's)."""
    from datasets import load_from_disk
    from trl import SFTConfig, SFTTrainer

    from tempa.sft.config import SFTStageConfig
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import plan_kernels, trl_config_kwargs

    stage = SFTStageConfig.model_validate(
        {
            "name": "bench",
            "kind": "sft",
            "data": {"sources": [{"name": "rows", "path": str(rows_path), "thinking_mode": "on"}]},
            "train": {
                "max_length": args.max_length,
                "per_device_train_batch_size": args.tempa_batch,
                "max_steps": args.steps,
                "logging_steps": args.steps,
                "save_strategy": "no",
                "dataloader_num_workers": 0,
                **({"model_init_kwargs": {"attn_implementation": attention}} if attention else {}),
            },
        }
    )
    train_args = stage.train_args()
    started = time.perf_counter()
    prepared = prepare_sft_data(stage.data, tokenizer, out_dir=work / "tempa-data", cache_dir=work / "cache",
                                seed=0, max_length=train_args["max_length"])
    prep_seconds = time.perf_counter() - started
    plan = TrainPlan.standalone(model_dir, work / "tempa-out", train_args)
    # As the training worker builds it: the data carry their own assistant masks.
    kernels = plan_kernels(plan)
    config = SFTConfig(**{**trl_config_kwargs(plan, kernels), "assistant_only_loss": False})
    dataset = load_from_disk(str(prepared.train_path))
    trainer = SFTTrainer(model=str(model_dir), args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[meter])
    return trainer, {"attention": trainer.model.config._attn_implementation, "prep_seconds": prep_seconds,
                     "rows": len(dataset), "packing": config.packing,
                     "padding_free": trainer.padding_free, "batch": config.per_device_train_batch_size,
                     "activation_checkpointing": config.activation_checkpointing}


def baseline_trainer(rows: list[dict[str, Any]], tokenizer, model, work: Path, args: argparse.Namespace,
                     meter: StepMeter):
    """Plain trl: conversational rows, SFTConfig defaults (max_length raised so nothing is cut)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        output_dir=str(work / "trl-out"),
        max_length=args.max_length,
        max_steps=args.steps,
        per_device_train_batch_size=args.baseline_batch,
        use_cpu=True,
        bf16=False,  # trl's default bf16=True is refused on a CPU-only machine
        save_strategy="no",
        logging_steps=args.steps,
        report_to="none",
        seed=0,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[meter])
    return trainer, {"attention": trainer.model.config._attn_implementation, "packing": config.packing,
                     "padding_free": trainer.padding_free, "batch": config.per_device_train_batch_size,
                     "activation_checkpointing": config.activation_checkpointing}


def run_path(name: str, build, args: argparse.Namespace) -> dict[str, Any]:
    meter = StepMeter(warmup_steps=args.warmup)
    trainer, info = build(meter)
    trained = trainer.train()
    result = {**info, **meter.result(), "train_loss": trained.training_loss}
    print(f"[{name}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in result.items()), flush=True)
    return result


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=800, help="conversations generated")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per path (the first --warmup are not timed)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=8192, help="longest sample, and the packed length")
    parser.add_argument("--tempa-batch", type=int, default=1, help="packed rows of --max-length per step")
    parser.add_argument("--baseline-batch", type=int, default=8, help="trl's default per_device_train_batch_size")
    parser.add_argument("--hidden", type=int, default=DEFAULT_SHAPE.hidden_size)
    parser.add_argument("--layers", type=int, default=DEFAULT_SHAPE.num_hidden_layers)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a shared machine, OpenMP barriers stall when a core is taken)")
    parser.add_argument("--no-dense", action="store_true", help="skip the tempa+dense-sdpa run")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.steps, args.warmup, args.max_length, args.hidden, args.layers = 80, 3, 1, 2048, 64, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("tempa").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    tokenizer = common.bench_tokenizer()
    lengths = common.reasoning_lengths(args.rows, seed=0, max_tokens=args.max_length)
    shape = common.Shape(**{**DEFAULT_SHAPE.__dict__, "hidden_size": args.hidden, "num_hidden_layers": args.layers,
                            "intermediate_size": int(args.hidden * 2.6875) // 8 * 8})
    print(common.machine_line())
    print(f"data: {common.length_summary(lengths)}")
    with tempfile.TemporaryDirectory(prefix="tempa-bench-sft-") as tmp:
        work = Path(tmp)
        rows_path = common.write_conversations(work / "rows.jsonl", lengths, tokenizer)
        rows = common.read_jsonl(rows_path)
        model = common.llama(shape, tokenizer, max_positions=args.max_length)
        print(f"model: Llama {shape}, {common.parameter_count(model) / 1e6:.2f}M parameters, "
              f"{torch.get_num_threads()} torch threads")
        # tempa's worker loads the model from a folder (the attention implementation is chosen at load);
        # trl's baseline gets the same weights in memory, with transformers' default attention.
        model_dir = work / "model"
        model.save_pretrained(model_dir, safe_serialization=True)
        state = {k: v.clone() for k, v in model.state_dict().items()}

        def fresh_model():
            fresh = common.llama(shape, tokenizer, max_positions=args.max_length)
            fresh.load_state_dict(state)
            return fresh

        results = {
            "tempa": run_path("tempa", lambda m: tempa_trainer(rows_path, tokenizer, model_dir, work, args, m), args),
            "trl": run_path("trl", lambda m: baseline_trainer(rows, tokenizer, fresh_model(), work, args, m), args),
        }
        if not args.no_dense:
            results["tempa+dense-sdpa"] = run_path(
                "tempa+dense-sdpa",
                lambda m: tempa_trainer(rows_path, tokenizer, model_dir, work, args, m, attention="sdpa"), args)
    report(results)
    if args.json:
        args.json.write_text(json.dumps({"machine": common.machine_line(), **results}, indent=2))
    return 0


def report(results: dict[str, dict[str, Any]]) -> None:
    tempa, trl = results["tempa"], results["trl"]
    rows = [("path", "attention", "tokens/s", "tokens/CPU-s", "loss tokens/s", "padding", "tokens/step", "seqs/step",
             "timed steps", "attention share", "train loss")]
    for name, r in results.items():
        share = "-" if r["attention_share"] is None else f"{100 * r['attention_share']:.0f}%"
        rows.append((name, r["attention"], f"{r['tokens_per_s']:.0f}", f"{r['tokens_per_cpu_s']:.0f}",
                     f"{r['loss_tokens_per_s']:.0f}",
                     f"{100 * r['padding']:.1f}%", f"{r['tokens_per_step']:.0f}", f"{r['sequences_per_step']:.1f}",
                     str(r["steps"]), share, f"{r['train_loss']:.4f}"))
    common.print_table(rows)
    ratio = tempa["tokens_per_s"] / trl["tokens_per_s"]
    cpu_ratio = tempa["tokens_per_cpu_s"] / trl["tokens_per_cpu_s"]
    print(f"ratio tempa/trl tokens/s: {ratio:.2f}x wall, {cpu_ratio:.2f}x per CPU-second (goal >= 6x); "
          f"tempa padding {100 * tempa['padding']:.2f}% (goal < 2%)")
    if "tempa+dense-sdpa" in results:
        dense = results["tempa+dense-sdpa"]
        print(f"ratio tempa/tempa+dense-sdpa tokens/s: {tempa['tokens_per_s'] / dense['tokens_per_s']:.2f}x; "
              f"train loss {tempa['train_loss']:.6f} vs {dense['train_loss']:.6f} (same data, same steps)")
    print(f"machine after the run: {common.machine_line()}")


if __name__ == "__main__":
    raise SystemExit(main())
