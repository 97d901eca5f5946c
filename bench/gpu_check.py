"""One-command GPU check: the `gpu` extra, MFU on a Llama-3.2-1B shape, and a three-stage recipe with vLLM.

    python bench/gpu_check.py                  # on a machine with one H100/H200 (about 10 minutes)
    python bench/gpu_check.py --skip-install   # the gpu extra is already installed
    python bench/gpu_check.py --dry-run        # CPU: the same steps at toy scale (what the tests run)

Steps, each timed:

1. install: ``pip install --no-build-isolation -e ".[gpu]"`` (flash-attn, liger-kernel, vLLM) into this
   interpreter. flash-attn's setup downloads a prebuilt wheel when one matches the installed torch
   and CUDA; building it from source takes far longer than this check: install it first, then use
   ``--skip-install``.
2. MFU: ``bench/gpu_mfu.py`` on the Llama-3.2-1B shape (1.24B parameters, 128k vocabulary), bf16,
   BFD packing, with the kernels tempa's worker picks; the check requires flash-attention 2 and Liger.
3. pipeline: a random model with Llama-3.2-1B's body (tempa's tiny tokenizer, so its vocabulary is
   the tokenizer's: sampled ids always decode) through one recipe: an ``sft`` stage, then one
   ``preference`` round that samples with the vLLM backend, scores, pairs and trains DPO, then an ``rl``
   stage: trl's GRPOTrainer sampling with vLLM colocated on the training GPU, scored by tempa's rewards.
   Each training stage runs in its launched worker, as in any tempa run.
4. checks: every logged loss of the sft and preference stages is finite and the last is below the first;
   both used flash-attention 2 and Liger. The rl stage logged every reward, a finite loss and KL at every
   step, and generated with vLLM (colocate). Prints tokens/s/GPU and MFU per stage (tempa's own meter).
5. scale-out: the launches that CPU CI cannot run (:data:`SCALE_OUT`: FSDP2 on GPUs (NCCL, bf16; CI trains
   it on CPU processes over gloo in fp32) and its offload, DeepSpeed Ulysses/ALST and FSDP2 context
   parallelism, two nodes over NCCL). Each recipe's launch block is validated (on CPU too) and
   ``tempa plan --hardware`` is rendered for it. A single-node launch runs when this machine has the GPUs
   it needs: ``tempa run`` of a 4-step sft stage on the pipeline's model, checked for exit code 0, a
   trained model at step 4, finite losses and the distributed type (and sharding) the worker recorded;
   FSDP2 is then run again without its final model and must resume from checkpoint-2. A launch this
   machine cannot run (too few GPUs) is ``NOT CHECKED``; the two-node launch, which needs a second node that no
   run of this script has, is printed as a step by hand (its sbatch command), outside the count.

The dry run swaps in what a CPU can run: no install (the pip command is printed, not run),
``gpu_mfu.py --dry-run``, the embedded tiny model, DPO on the shipped offline pairs (the tiny model never
ends a turn, so a sampled round would have nothing to pair; nothing is sampled), transformers generation
for GRPO, tempa's CPU kernels (per-document sdpa for packed SFT rows) and no scale-out launch. What only
a GPU can check (flash-attention 2, Liger, vLLM, the scale-out launches) is printed as ``NOT CHECKED`` and
listed at the end as left for a GPU. A dry run exits 0 when every check it runs passes: it rehearses the
script, it is never a GPU check, and its last line says so. Without ``--dry-run``, exit code 0 only when every
check passes.

Where a package of the gpu extra is missing (a machine without a registry, a flash-attn build that
failed), the check runs what it can: the worker's fallback kernels (``tempa_doc_sdpa`` for packed rows,
sdpa otherwise) and transformers sampling are checked instead, each missing piece is printed as
``NOT CHECKED`` (never as passed), and the exit code is 2 when everything that ran passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import _common as common  # noqa: E402

# Llama-3.2-1B's body (hidden, MLP, layers, heads, KV heads); the vocabulary is the tokenizer's.
BODY_1B = common.Shape(2048, 8192, 16, 32, 8, 0, tie_word_embeddings=True)
TIME_BUDGET_S = 600


GPU_EXTRA = ("flash_attn", "liger_kernel", "vllm")  # the import names of the `gpu` extra's packages


def installed_extras() -> dict[str, bool]:
    """Which of the gpu extra's packages this interpreter can import (found, not imported: vLLM is slow to load)."""
    from importlib.util import find_spec

    return {name: find_spec(name) is not None for name in GPU_EXTRA}


@dataclass
class Report:
    # a dry run rehearses on CPU what a GPU run checks: what only a GPU can check is listed, not held against it
    dry_run: bool = False
    phases: dict[str, float] = field(default_factory=dict)
    passed: int = 0
    failures: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)

    def check(self, ok: bool, message: str) -> bool:
        print(f"  [{'ok' if ok else 'FAIL'}] {message}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failures.append(message)
        return ok

    def skip(self, message: str) -> None:
        """A check that could not run here (a gpu extra or GPUs missing, a dry run): never counted as passed."""
        print(f"  [NOT CHECKED] {message}", flush=True)
        self.not_checked.append(message)

    def verdict(self) -> int:
        """Print the outcome and return the exit code: 1 a failure, 2 something not checked, 0 all checked.

        A dry run exits 0 when every check it ran passed: it cannot make the GPU checks, so a 2 would say
        nothing; its last line names what it left for a GPU."""
        if self.not_checked:
            print(f"== not checked ({len(self.not_checked)}){': left for a GPU' if self.dry_run else ''}")
            for message in self.not_checked:
                print(f"  - {message}")
        if self.failures:
            print(f"FAILED: {len(self.failures)} check(s): " + "; ".join(self.failures))
            return 1
        if self.dry_run:
            print(f"dry run passed: all {self.passed} checks a CPU can make passed; {len(self.not_checked)} NOT "
                  "CHECKED (above) need a GPU: run this script without --dry-run on a GPU machine")
            return 0
        if self.not_checked:
            print(f"INCOMPLETE: all {self.passed} checks that ran passed; {len(self.not_checked)} NOT CHECKED (above)")
            return 2
        print(f"all {self.passed} checks passed")
        return 0


def run(command: list[str], *, env: dict[str, str] | None = None) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO, env={**os.environ, **(env or {})})


def tempa_run(recipe: Path, run_dir: Path) -> int:
    """``tempa run`` in a process of its own, its output on this terminal; its exit code."""
    command = [sys.executable, "-m", "tempa.recipes.cli", "run", str(recipe), "--run-dir", str(run_dir)]
    print("$ " + " ".join(command), flush=True)
    return subprocess.run(command, cwd=REPO).returncode


def install(dry_run: bool, skip: bool) -> None:
    command = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "-e", f"{REPO}[gpu]"]
    if skip or dry_run:
        print(f"  not run ({'--skip-install' if skip else '--dry-run'}): " + " ".join(command))
        return
    run(command)


def check_kernels(report: Report, where: str, attention: Any, liger: Any, extras: dict[str, bool] | None) -> None:
    """On a GPU the worker must pick flash-attention 2 and Liger; where one is not installed (or on the dry
    run's CPU), the pick it falls back to is checked instead and the missing kernel is reported as not checked."""
    dry = "dry run: CPU" if extras is None else None
    have = extras or dict.fromkeys(GPU_EXTRA, False)
    if have["flash_attn"]:
        report.check(attention == "flash_attention_2", f"{where}: attention {attention} (flash_attention_2)")
    else:
        fallback = "tempa_doc_sdpa" if where in ("gpu_mfu", "sft") else "sdpa"
        why = dry or "flash_attn is not installed"
        report.check(attention == fallback, f"{where}: attention {attention} ({fallback}: {why})")
        report.skip(f"{where}: flash-attention 2 ({why})")
    if have["liger_kernel"]:
        report.check(liger is True, f"{where}: Liger kernels {liger}")
    else:
        report.skip(f"{where}: Liger kernels ({dry or 'liger_kernel is not installed'})")


def mfu(report: Report, work: Path, extras: dict[str, bool] | None) -> None:
    out = work / "gpu_mfu.json"
    run([sys.executable, str(BENCH / "gpu_mfu.py"), "--json", str(out), *(["--dry-run"] if extras is None else [])])
    result = json.loads(out.read_text())
    dry_run = extras is None
    check_kernels(report, "gpu_mfu", result["attention"], result["liger"], extras)
    share = f"{100 * result['mfu']:.1f}%" if "mfu" in result else "unknown peak"
    print(f"  gpu_mfu: {result['device']}: {result['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU, MFU {share}"
          f"{' (nominal peak: meaningless on CPU)' if dry_run else ''}; peak memory {result['peak_memory_gib']:.1f} GiB")


def pipeline_model(folder: Path) -> Path:
    """A random model with Llama-3.2-1B's body and the tiny tokenizer, saved as the worker loads models
    (once: the scale-out launches train the same model)."""
    import torch

    if (folder / "config.json").is_file():
        return folder
    tokenizer = common.bench_tokenizer()
    shape = common.Shape(**{**BODY_1B.__dict__, "vocab_size": len(tokenizer)})
    # 32k positions: the scale-out's sequence-parallel launches train 32k-token rows
    model = common.llama(shape, tokenizer, max_positions=SCALE_OUT_MAX_LENGTH, dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    print(f"  model: Llama-3.2-1B body, vocabulary {len(tokenizer)}, {common.parameter_count(model) / 1e9:.2f}B "
          f"parameters, bf16, in {folder}")
    return folder


def recipe_text(base_model: str, extras: dict[str, bool] | None) -> str:
    """The check's recipe; ``extras`` None is the dry run (CPU, toy scale)."""
    data = REPO / "recipes" / "data"
    if extras is None:
        launch, backend = "{use_cpu: true}", "{type: transformers}"
        sft = "{max_steps: 6, learning_rate: 3.0e-3, per_device_train_batch_size: 8, max_length: 512, logging_steps: 2}"
        new_tokens, prompts, dpo_lr = 16, 8, 5.0e-4
        # A tiny random model never ends a turn within 16 tokens, and a cut-off sample is never paired:
        # the dry run trains its DPO round on the shipped offline pairs instead of sampling.
        align = f"offline: {{path: {data / 'preferences' / 'sample_preferences.jsonl'}}}\n            rounds: 0"
        # the tiny model never ends a sample within 8 tokens: train on the cut-off ones
        grpo = ("{num_generations: 2, per_device_train_batch_size: 4, max_completion_length: 8, max_steps: 2, "
                "learning_rate: 1.0e-3, beta: 0.04, mask_truncated_completions: false, logging_steps: 1, "
                "save_strategy: 'no', activation_checkpointing: false}")
    else:
        launch = "{accelerate_config: single, num_processes: 1}"
        backend = ("{type: vllm, dtype: bfloat16, gpu_memory_utilization: 0.35, max_model_len: 4096, enforce_eager: true}"
                   if extras["vllm"] else "{type: transformers}")
        # enough steps for a random model to learn to end its turns: only complete samples are paired
        sft = "{max_steps: 60, learning_rate: 2.0e-4, per_device_train_batch_size: 16, max_length: 2048, logging_steps: 5}"
        new_tokens, prompts, dpo_lr = 384, 16, 1.0e-5
        align = "rounds: 1"
        grpo = ("{num_generations: 4, per_device_train_batch_size: 16, max_completion_length: 128, max_steps: 4, "
                "learning_rate: 1.0e-6, beta: 0.001, logging_steps: 1, save_strategy: 'no', "
                "vllm_gpu_memory_utilization: 0.3, vllm_max_model_length: 2048}")
    return textwrap.dedent(f"""\
        name: gpu-check
        base_model: {base_model}
        chat_template: llama3_thinking
        seed: 0
        launch: {launch}
        stages:
          - name: sft
            kind: sft
            data:
              sources:
                - {{name: instruct, path: {data / "sample_instruct.jsonl"}, thinking_mode: "off"}}
                - {{name: reasoning, path: {data / "sample_reasoning.jsonl"}, thinking_mode: mixed, thinking_ratio: 0.5}}
            train: {sft}
          - name: align
            kind: preference
            {align}
            prompts: {{path: {data / "sample_prompts.jsonl"}, limit: {prompts}}}
            backend: {backend}
            sampling: {{n: 6, temperature: 1.0, max_new_tokens: {new_tokens}, batch_size: {prompts}}}
            rewards:
              - {{type: format}}
              - {{type: language}}
              - {{type: length, unit: chars, per_token: 0.005}}
            pairs: {{min_margin: 0.01}}
            train: {{loss_type: sigmoid, beta: 0.1, learning_rate: {dpo_lr}, max_steps: 8, warmup_steps: 0,
                    per_device_train_batch_size: 4, logging_steps: 1, save_strategy: "no", max_length: 1024}}
          - name: rl
            kind: rl
            prompts: {{path: {data / "sample_prompts.jsonl"}, limit: {prompts}}}
            rewards:
              - {{type: answer}}
              - {{type: language, reasoning: {{languages: [target, en]}}}}
              - {{type: format}}
              - {{type: length, unit: chars, per_token: 0.005}}
            train: {grpo}
        """)


SCALE_OUT_STEPS = 4
SCALE_OUT_MAX_LENGTH = 32768


@dataclass(frozen=True)
class ScaleOut:
    """A launch the CPU tests cannot run: the GPUs and nodes it needs, its recipe's launch and train blocks,
    what running it checks, and what the training worker must have recorded."""

    name: str
    gpus: int
    launch: str
    train: str
    checks: str
    distributed: str  # accelerate's distributed type in the worker's record: FSDP or DEEPSPEED
    nodes: int = 1
    sharded: bool = False  # each process held only a shard of the parameters
    sequence_parallel: int = 1  # the processes each sequence is split over, in the trainer's parallelism config
    resume: bool = False  # run again without the final model: resumes from checkpoint-2
    attention: str | None = None  # the attention the worker must pick; it needs the gpu extra's flash_attn


SCALE_OUT = (
    ScaleOut("fsdp2", 2, "{accelerate_config: fsdp2, num_processes: 2}", "{save_steps: 2}",
             "FSDP2 over 2 GPUs (NCCL, bf16) trains 4 steps, each GPU holding a shard of the parameters, and "
             "saves the final model; run again without it, it resumes from checkpoint-2 and ends at step 4",
             "FSDP", sharded=True, resume=True),
    ScaleOut("fsdp2-offload", 2, "{accelerate_config: fsdp2-offload, num_processes: 2}", "{}",
             "FSDP2 with parameters, gradients and AdamW state in host RAM (CPUOffloadPolicy) trains 4 steps on "
             "2 GPUs", "FSDP", sharded=True),
    ScaleOut("ulysses", 2, "{accelerate_config: zero3, num_processes: 2, sequence_parallel: 2}",
             f"{{packing: true, max_length: {SCALE_OUT_MAX_LENGTH}}}",
             "DeepSpeed Ulysses/ALST (ZeRO-3, sequence_parallel 2) trains 4 steps on packed 32k-token rows over "
             "2 GPUs with flash-attention 2", "DEEPSPEED", sequence_parallel=2,
             attention="flash_attention_2"),
    ScaleOut("context-parallel", 2, "{accelerate_config: fsdp2, num_processes: 2, sequence_parallel: 2}",
             f"{{packing: false, max_length: {SCALE_OUT_MAX_LENGTH}}}",
             "torch context parallelism on FSDP2 (sequence_parallel 2, no packing) trains 4 steps over 2 GPUs",
             "FSDP", sequence_parallel=2),
    ScaleOut("two-nodes", 16, "{accelerate_config: zero3, num_machines: 2, num_processes: 16}", "{}",
             "ZeRO-3 over 2 nodes of 8 GPUs (NCCL): node 0 `tempa run`, node 1 `tempa run --machine-rank 1`",
             "DEEPSPEED", nodes=2),
)


def scale_out_model(work: Path, extras: dict[str, bool] | None) -> str:
    """What the scale-out recipes train: the pipeline's random 1B model on a GPU (nothing to download), the
    embedded tiny model in a dry run (which only validates the recipes)."""
    return "tempa:tiny" if extras is None else str(pipeline_model(work / "model"))


def scale_out_recipe(check: ScaleOut, work: Path, base_model: str) -> Path:
    path = work / f"scale-out-{check.name}.yaml"
    data = REPO / "recipes" / "data"
    train = f"{{max_steps: {SCALE_OUT_STEPS}, logging_steps: 1, " + check.train.strip("{}").strip()
    path.write_text(textwrap.dedent(f"""\
        name: gpu-check-{check.name}
        base_model: {base_model}
        chat_template: llama3_thinking
        launch: {check.launch}
        stages:
          - name: sft
            kind: sft
            data: {{sources: [{{name: instruct, path: {data / "sample_instruct.jsonl"}, thinking_mode: "off"}}]}}
            train: {train.rstrip(", ")}}}
        """))
    return path


def cannot_launch(check: ScaleOut, gpus: int, extras: dict[str, bool] | None) -> str | None:
    """Why this machine cannot run ``check``'s launch; None when it can."""
    if check.nodes > 1:
        return f"needs {check.nodes} nodes; this script runs on one"
    if extras is None:
        return "dry run"
    if gpus < check.gpus:
        return f"needs {check.gpus} GPUs, this machine has {gpus}"
    if check.attention == "flash_attention_2" and not extras["flash_attn"]:
        return "flash_attn is not installed"
    return None


def scale_out(report: Report, work: Path, base_model: str, gpus: int, extras: dict[str, bool] | None, *,
              kept: bool = False) -> None:
    """Validate each :data:`SCALE_OUT` recipe and render its plan; launch those this machine's ``gpus`` and
    ``extras`` can run (``extras`` None: the dry run, which launches none); report the others as not checked."""
    from tempa.recipes.estimate import render_estimate
    from tempa.recipes.loader import load_recipe

    for check in SCALE_OUT:
        path = scale_out_recipe(check, work, base_model)
        loaded = load_recipe(path)  # a RecipeError here is a broken check, reported by the caller
        plan = render_estimate(loaded, "1xH200" if check.gpus < 8 else f"{check.gpus // 8}x8xH100")
        report.check("estimate for" in plan, f"scale-out {check.name}: recipe valid, plan rendered")
        why = cannot_launch(check, gpus, extras)
        if why is None:
            launch(report, check, path, work / "scale-out" / check.name)
            continue
        if check.nodes > 1:
            # No machine this script runs on can check it, so it is a step by hand, outside the count (else no run
            # could ever pass); nothing here checks its result: say what the command does, no more.
            recipe = path if kept else "RECIPE"
            print(f"  by hand: scale-out {check.name}: {check.checks} ({why}); not counted", flush=True)
            print(f"    to run it: sbatch docs/multinode/tempa-2nodes.sbatch {recipe} RUN_DIR on 2 nodes of 8 GPUs "
                  f"(shared storage): it trains {SCALE_OUT_STEPS} steps and checks nothing; read RUN_DIR/sft/final"
                  + ("" if kept else "; RECIPE: this check's recipe, kept only with --work-dir DIR"), flush=True)
            continue
        report.skip(f"scale-out {check.name}: {check.checks} ({why})")
        print(f"    to check it: python bench/gpu_check.py on a machine with {check.gpus} GPUs"
              + (" and flash-attn" if check.attention == "flash_attention_2" else ""), flush=True)


def launch(report: Report, check: ScaleOut, recipe: Path, run_dir: Path) -> None:
    """Run one scale-out recipe with ``tempa run`` and check what the worker recorded, as ``check.checks`` says."""
    from tempa.sft.train_plan import TrainOutcome

    name = f"scale-out {check.name}"
    code = tempa_run(recipe, run_dir)
    report.check(code == 0, f"{name}: tempa run exit code {code}")
    stage = run_dir / "sft"
    final = stage / "final"
    if not (final / "tempa_train_metrics.json").is_file():
        report.check(False, f"{name}: no trained model in {final}")
        return
    outcome = TrainOutcome.read(final)
    report.check(outcome.global_step == SCALE_OUT_STEPS, f"{name}: trained to step {outcome.global_step} "
                 f"({SCALE_OUT_STEPS})")
    losses = [entry["loss"] for entry in outcome.log_history if "loss" in entry]
    report.check(bool(losses) and all(isinstance(x, int | float) and math.isfinite(x) for x in losses),
                 f"{name}: {len(losses)} logged losses, all finite")
    shards = outcome.shards
    processes = check.gpus // check.nodes
    ok = (shards is not None and shards.distributed_type == check.distributed and len(shards.per_rank) == processes
          and (not check.sharded or max(shards.per_rank) < shards.parameters))
    held = "n/a" if shards is None else f"{shards.distributed_type}, per rank {shards.per_rank} of {shards.parameters}"
    report.check(ok, f"{name}: {processes} processes, {check.distributed}{', sharded' if check.sharded else ''} "
                 f"({held})")
    if check.sequence_parallel > 1:
        split = None if shards is None else shards.sequence_parallel
        report.check(split == check.sequence_parallel,
                     f"{name}: the trainer split each sequence over {split} processes ({check.sequence_parallel})")
    if check.attention:
        attention = outcome.kernels.get("attn_implementation")
        report.check(attention == check.attention, f"{name}: attention {attention} ({check.attention})")
    print(f"  {name}: kernels {outcome.kernels}", flush=True)
    if check.resume:
        resume(report, name, recipe, run_dir)


def resume(report: Report, name: str, recipe: Path, run_dir: Path) -> None:
    """Leave what a kill right after checkpoint-2 leaves (no final model, no later checkpoint, the stage not
    done), run the same command again, and check that training resumed from checkpoint-2 to the last step."""
    import shutil

    from tempa.sft.run_layout import DONE
    from tempa.sft.train_plan import TrainOutcome

    stage = run_dir / "sft"
    checkpoints = stage / "checkpoints"
    if not report.check((checkpoints / "checkpoint-2").is_dir(), f"{name}: checkpoint-2 saved"):
        return
    later = [path for path in checkpoints.glob("checkpoint-*") if path.name != "checkpoint-2"]  # save_steps: 2
    for path in (stage / "final", *later, run_dir / "bake", run_dir / "final"):
        shutil.rmtree(path, ignore_errors=True)
    (stage / DONE).unlink(missing_ok=True)
    code = tempa_run(recipe, run_dir)
    final = stage / "final"
    outcome = TrainOutcome.read(final) if (final / "tempa_train_metrics.json").is_file() else None
    resumed = Path(outcome.resumed_from).name if outcome and outcome.resumed_from else None
    step = outcome.global_step if outcome else None
    report.check(code == 0 and resumed == "checkpoint-2" and step == SCALE_OUT_STEPS,
                 f"{name}: run again, resumed from {resumed} to step {step} (exit code {code})")


def trained_records(stage_dir: Path) -> list[dict[str, Any]]:
    """The training workers' records of a stage (one per preference round; ``final`` links to the last)."""
    paths = {path.resolve() for path in stage_dir.rglob("final/tempa_train_metrics.json")}
    return [json.loads(path.read_text()) for path in sorted(paths)]


def check_losses(report: Report, stage: str, history: list[dict[str, Any]]) -> None:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    finite = bool(losses) and all(isinstance(x, int | float) and math.isfinite(x) for x in losses)
    report.check(finite, f"{stage}: {len(losses)} logged losses, all finite")
    if finite:
        report.check(len(losses) > 1 and losses[-1] < losses[0],
                     f"{stage}: loss decreases ({losses[0]:.4f} -> {losses[-1]:.4f})")


RL_REWARDS = ("answer", "language", "format", "length")


def check_rl(report: Report, history: list[dict[str, Any]], train_log: str, extras: dict[str, bool] | None) -> None:
    """The rl stage: every reward logged per step, finite loss and KL, and the generation backend it should use."""
    steps = [entry for entry in history if "loss" in entry]
    report.check(bool(steps), f"rl: {len(steps)} logged steps")
    finite = all(isinstance(e.get(k), int | float) and math.isfinite(e[k]) for e in steps for k in ("loss", "kl"))
    report.check(bool(steps) and finite, "rl: loss and KL finite at every step")
    missing = sorted({name for e in steps for name in RL_REWARDS if f"rewards/{name}/mean" not in e})
    report.check(bool(steps) and not missing, f"rl: every reward logged per step (missing: {missing or 'none'})")
    if extras is None:
        expected = "generating with transformers: no CUDA GPU"
        report.skip("rl: GRPO sampling with vLLM colocated (dry run: transformers generation on CPU)")
    elif extras["vllm"]:
        expected = "generating with vLLM, colocate mode"
    else:
        expected = "generating with transformers: vLLM is not installed"
        report.skip("rl: GRPO sampling with vLLM colocated (vllm is not installed)")
    report.check(expected in train_log, f"rl: {expected}")
    if steps:
        print(f"  rl: reward {steps[0].get('reward', float('nan')):.3f} -> {steps[-1].get('reward', float('nan')):.3f}, "
              f"kl {steps[-1]['kl']:.2e}, frac_reward_zero_std {steps[-1].get('frac_reward_zero_std')}")


def pipeline(report: Report, work: Path, extras: dict[str, bool] | None) -> None:
    """One ``tempa run`` of the three stages; every stage that ran is checked even when a later one failed."""
    from tempa.sft.throughput_summary import throughput_headline

    base = "tempa:tiny" if extras is None else str(pipeline_model(work / "model"))
    recipe = work / "gpu-check.yaml"
    recipe.write_text(recipe_text(base, extras))
    if extras is None:
        report.skip("align: on-policy sampling with the vLLM backend (dry run: DPO on the shipped offline pairs, "
                    "nothing sampled)")
    elif not extras["vllm"]:
        report.skip("align: on-policy sampling with the vLLM backend (vllm is not installed; sampled with transformers)")
    run_dir = work / "run"
    code = tempa_run(recipe, run_dir)
    report.check(code == 0, f"tempa run: exit code {code}")
    for stage in ("sft", "align"):
        records = trained_records(run_dir / stage)
        report.check(len(records) == 1, f"{stage}: one trained model ({len(records)} found)")
        for record in records:
            check_losses(report, stage, record.get("log_history", []))
            kernels = record.get("kernels", {})
            check_kernels(report, stage, kernels.get("attn_implementation"), kernels.get("liger_kernel"), extras)
            summary = throughput_headline(record.get("log_history", []))
            report.check("train_tokens_per_s" in summary, f"{stage}: throughput recorded")
            mfu = f"{100 * summary['train_mfu']:.1f}%" if "train_mfu" in summary else "n/a (peak unknown)"
            print(f"  {stage}: {summary.get('train_tokens_per_s', 0):,.0f} tokens/s/GPU, MFU {mfu}, padding "
                  f"{100 * summary.get('train_padding_fraction', 0):.1f}%, kernels {kernels}")
    records = trained_records(run_dir / "rl")
    report.check(len(records) == 1, f"rl: one trained model ({len(records)} found)")
    for record in records:
        log = run_dir / "rl" / "logs" / "train.log"
        check_rl(report, record.get("log_history", []), log.read_text() if log.is_file() else "", extras)
        print(f"  rl: kernels {record.get('kernels', {})}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU rehearsal at toy scale: no install, DPO on offline pairs, no scale-out launch; what "
                        "only a GPU checks is NOT CHECKED and listed; exit 0 when every check a CPU can make passed")
    parser.add_argument("--skip-install", action="store_true", help="the gpu extra is already installed")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the model, recipes and runs here (else a temporary folder, deleted on exit)")
    args = parser.parse_args(argv)
    gpus = 0
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device; use --dry-run to check the script on CPU")
        gpus = torch.cuda.device_count()
    print(common.machine_line(), flush=True)
    extras = None if args.dry_run else installed_extras()
    report = Report(dry_run=args.dry_run)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tempa-gpu-check-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        phases = [("install", lambda: install(args.dry_run, args.skip_install)),
                  ("mfu", lambda: mfu(report, work, extras)),
                  ("pipeline", lambda: pipeline(report, work, extras)),
                  ("scale-out", lambda: scale_out(report, work, scale_out_model(work, extras), gpus, extras,
                                                  kept=args.work_dir is not None))]
        for name, phase in phases:
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            try:
                phase()
            except (subprocess.CalledProcessError, OSError, ValueError, KeyError, RuntimeError) as exc:
                report.check(False, f"{name}: {type(exc).__name__}: {exc}")
                if name == "install":
                    break  # the later phases would test an environment nobody asked for
            finally:
                report.phases[name] = time.perf_counter() - t0
    total = time.perf_counter() - started
    print("== summary: " + ", ".join(f"{k} {v:.0f}s" for k, v in report.phases.items()) + f"; total {total:.0f}s")
    # the budget is one GPU's: the scale-out launches a machine with more GPUs runs come on top
    if not args.dry_run and total - report.phases.get("scale-out", 0) > TIME_BUDGET_S:
        print(f"  note: over the {TIME_BUDGET_S // 60}-minute budget (scale-out not counted)")
    return report.verdict()


if __name__ == "__main__":
    raise SystemExit(main())
