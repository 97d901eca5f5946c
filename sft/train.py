"""Training worker: `python -m tempa.sft.train --plan PLAN.json`, run by accelerate/torchrun.

Everything it needs is in the plan file the `sft` stage wrote (data already tokenised on disk),
so one stage can be re-run by hand with the command the runner logged.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from tempa.sft.checkpoints import CheckpointCompleteCallback, last_complete_checkpoint
from tempa.sft.files import remove_tree
from tempa.sft.kernels import KernelChoice, KernelEnv, choose_kernels, detect_env
from tempa.sft.packed_attention import DOC_SDPA, supports_document_attention
from tempa.sft.packed_attention import register as register_document_attention
from tempa.sft.throughput import ThroughputMeter, add_throughput_callbacks, throughput_headline


def watch_runner(pid: int | None, interval_s: float = 1.0) -> None:
    """Stop this training process group if the runner that launched it dies (e.g. SIGKILL).

    Otherwise an orphaned trainer would keep writing into a stage folder that a new run resumes.
    """
    if not pid:
        return

    def _watch() -> None:
        while True:
            time.sleep(interval_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            except PermissionError:
                pass

    threading.Thread(target=_watch, name="tempa-runner-watch", daemon=True).start()


def trl_config_kwargs(plan: dict[str, Any], kernels: KernelChoice | None = None) -> dict[str, Any]:
    """trl config kwargs: the recipe's train args plus what the stage folder and launch decide.

    ``kernels``: the attention implementation and Liger setting (default: :func:`plan_kernels`).
    """
    kwargs = dict(plan["train_args"])
    kwargs["output_dir"] = plan["output_dir"]
    kwargs.setdefault("seed", plan["seed"])
    kwargs.setdefault("data_seed", plan["seed"])
    if plan.get("deepspeed"):
        kwargs["deepspeed"] = plan["deepspeed"]
    if plan.get("use_cpu"):
        kwargs["use_cpu"] = True
    if "bf16" not in plan["train_args"] and "fp16" not in plan["train_args"]:
        # trl defaults to bf16, which a CPU-only machine refuses; decide by what is there.
        precision = training_precision(plan)
        kwargs["bf16"] = precision == "bf16"
        kwargs["fp16"] = precision == "fp16"
    # safetensors only (the policy, and DPO's reference, which trl builds from the same kwargs):
    # a pickled checkpoint never gets here, and transformers must not fall back to one.
    kwargs["model_init_kwargs"] = {**(kwargs.get("model_init_kwargs") or {}), "use_safetensors": True}
    if plan.get("trust_remote_code"):
        kwargs.setdefault("model_init_kwargs", {})["trust_remote_code"] = True
    kernels = kernels or plan_kernels(plan)
    if kernels.attn_implementation is not None:
        if kernels.attn_implementation == DOC_SDPA:
            register_document_attention()  # the model is loaded in this process, by name
        kwargs["model_init_kwargs"] = {**(kwargs.get("model_init_kwargs") or {}),
                                       "attn_implementation": kernels.attn_implementation}
    if kernels.use_liger_kernel:
        kwargs["use_liger_kernel"] = True
    return kwargs


def training_precision(plan: dict[str, Any]) -> str:
    """"bf16", "fp16" or "no": the recipe's train args, else the launch setting, else what the machine has."""
    train = plan["train_args"]
    if train.get("bf16") or train.get("fp16"):
        return "bf16" if train.get("bf16") else "fp16"
    if "bf16" in train or "fp16" in train:
        return "no"
    precision = plan.get("mixed_precision")
    if precision is None and plan.get("use_cpu"):
        return "no"
    if precision is None:
        import torch

        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return precision


def packs_rows(train_args: dict[str, Any]) -> bool:
    """Whether trl will put several documents in one row (BFD packing turns padding-free on)."""
    strategy = train_args.get("packing_strategy", "bfd")
    return bool(train_args.get("padding_free")) or (
        bool(train_args.get("packing")) and strategy in ("bfd", "bfd_split", "bfd-requeue"))


def plan_kernels(plan: dict[str, Any], env: KernelEnv | None = None) -> KernelChoice:
    """:func:`tempa.sft.kernels.choose_kernels` for this plan on this machine (``env``: what it has).

    Whether the model suits per-document attention is read from ``plan["model_dir"]``'s config
    (a plan without one, as some benchmarks build, is taken to hold a plain causal model).
    """
    train = plan["train_args"]
    env = env or detect_env(training_precision(plan))
    packed = packs_rows(train)
    document = (True, "")
    if packed and plan.get("model_dir"):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(plan["model_dir"], trust_remote_code=bool(plan.get("trust_remote_code")))
        document = supports_document_attention(config)
    return choose_kernels(env, packed=packed, requested_attention=(train.get("model_init_kwargs") or {}).get(
        "attn_implementation"), requested_liger=train.get("use_liger_kernel"), document_attention=document)


def announced_kernels(plan: dict[str, Any]) -> KernelChoice:
    """:func:`plan_kernels` for a training worker, with the reasons printed to its log."""
    kernels = plan_kernels(plan)
    for line in kernels.why:
        print(f"[tempa] {line}", flush=True)
    return kernels


def trained_headline(trained: dict[str, Any]) -> dict[str, Any]:
    """What a stage's metrics carry from its worker's record: the kernels used and the run's throughput."""
    return {**trained.get("kernels", {}), **throughput_headline(trained.get("log_history", []))}


def read_plan(prog: str, argv: list[str] | None) -> dict[str, Any]:
    """Parse ``--plan PLAN.json``, start the runner watch and set up distributed CPU DeepSpeed."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--plan", required=True, help="train_plan.json written by the stage")
    args = parser.parse_args(argv)
    plan = json.loads(Path(args.plan).read_text())
    watch_runner(plan.get("runner_pid"))
    if plan.get("deepspeed") and plan.get("use_cpu"):
        # transformers sets up a plain CPU process group when use_cpu is on and never initialises
        # DeepSpeed's communication layer, so ZeRO-3 would see a world of one. Do it first.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    return plan


def train_and_save(trainer, tokenizer, plan: dict[str, Any], kernels: KernelChoice, *, evaluate: bool = False,
                   merge_adapters: bool = False) -> None:
    """Train (resuming from the last complete checkpoint), then publish ``final/`` atomically.

    The model goes to ``final.tmp`` with the tokenizer and `tempa_train_metrics.json`, and is
    renamed to ``final`` last, so a kill never leaves a final model that looks complete.
    """
    resume = last_complete_checkpoint(Path(plan["output_dir"]))
    if resume is not None and trainer.is_world_process_zero():
        print(f"[tempa] resuming from {resume}", flush=True)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if trainer.state.global_step <= 0:
        # Trainer "succeeds" without a single step (e.g. fewer rows than one batch per process):
        # publishing final/ would ship the starting weights as if they were trained.
        args = trainer.args
        rows = len(trainer.train_dataset) if hasattr(trainer.train_dataset, "__len__") else "?"
        raise RuntimeError(
            f"training took no optimizer step ({rows} training rows, "
            f"num_train_epochs={args.num_train_epochs}, max_steps={args.max_steps}, "
            f"per_device_train_batch_size={args.per_device_train_batch_size}, "
            f"gradient_accumulation_steps={args.gradient_accumulation_steps}, processes={args.world_size})"
        )
    eval_metrics = trainer.evaluate() if evaluate else {}

    final = Path(plan["final_dir"])
    tmp = final.with_name(final.name + ".tmp")
    inside = [Path(plan["run_dir"])]
    if trainer.is_world_process_zero():
        remove_tree(tmp, inside)
    trainer.accelerator.wait_for_everyone()
    if merge_adapters:
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(tmp, safe_serialization=True)
    else:
        trainer.save_model(str(tmp))  # under ZeRO-3 this gathers the 16-bit weights on rank 0
    if trainer.is_world_process_zero():
        # The Trainer pickles its arguments beside the weights; the stage's model folder stays
        # pickle-free (the same arguments are in train_plan.json).
        (tmp / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(tmp)
        metrics = {
            "train": result.metrics,
            "eval": eval_metrics,
            "global_step": trainer.state.global_step,
            "log_history": trainer.state.log_history,
            "resumed_from": str(resume) if resume else None,
            "kernels": kernels.record(),
        }
        (tmp / "tempa_train_metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        remove_tree(final, inside)
        os.replace(tmp, final)
    trainer.accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    plan = read_plan("python -m tempa.sft.train", argv)

    from datasets import load_from_disk
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(plan["tokenizer_dir"])
    kernels = announced_kernels(plan)
    # tempa tokenises and masks the data itself (assistant_masks column, which trl turns into
    # labels); trl's own flag only applies to conversational rows it tokenises.
    config = SFTConfig(**{**trl_config_kwargs(plan, kernels), "assistant_only_loss": False})
    train_dataset = load_from_disk(plan["train_data"])
    eval_dataset = load_from_disk(plan["eval_data"]) if plan.get("eval_data") else None
    if not plan["train_args"].get("assistant_only_loss", True):
        train_dataset = train_dataset.remove_columns("assistant_masks")
        if eval_dataset is not None:
            eval_dataset = eval_dataset.remove_columns("assistant_masks")
    if eval_dataset is not None and config.eval_strategy == "no":
        config.eval_strategy = "steps" if config.save_strategy == "steps" else "epoch"
        config.eval_steps = config.eval_steps or config.save_steps

    peft_config = None
    if plan.get("lora"):
        from peft import LoraConfig

        lora = plan["lora"]
        peft_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["lora_alpha"],
            lora_dropout=lora["lora_dropout"],
            target_modules=lora["target_modules"],
            task_type="CAUSAL_LM",
        )
        if lora.get("load_in_4bit"):
            from transformers import BitsAndBytesConfig

            config.model_init_kwargs = {
                **(config.model_init_kwargs or {}),
                "quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
            }

    trainer = SFTTrainer(
        model=plan["model_dir"],
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[CheckpointCompleteCallback()],
    )
    add_throughput_callbacks(trainer, ThroughputMeter())
    train_and_save(trainer, tokenizer, plan, kernels, evaluate=eval_dataset is not None,
                   merge_adapters=peft_config is not None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
