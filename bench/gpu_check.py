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
   it on CPU processes over gloo in fp32) and its offload, DeepSpeed
   Ulysses/ALST and FSDP2 context parallelism, nodes over NCCL). Each recipe's launch block is validated
   (on CPU too), ``tempa plan --hardware`` is rendered for it, and each is listed with the GPUs it needs
   and the command that checks it on a machine that has them.

The dry run swaps in what a CPU can run: no install, ``gpu_mfu.py --dry-run``, the embedded tiny
model, the transformers sampling backend (and transformers generation for GRPO), and tempa's CPU kernels
(per-document sdpa for packed SFT rows). Exit code 0 only when every check passes.

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
    phases: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)

    def check(self, ok: bool, message: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {message}", flush=True)
        if not ok:
            self.failures.append(message)

    def skip(self, message: str) -> None:
        """A check that could not run here (a gpu extra is missing): never counted as passed."""
        print(f"  [NOT CHECKED] {message}", flush=True)
        self.not_checked.append(message)


def run(command: list[str], *, env: dict[str, str] | None = None, dry: bool = False) -> None:
    print("$ " + " ".join(command), flush=True)
    if dry:
        return
    subprocess.run(command, check=True, cwd=REPO, env={**os.environ, **(env or {})})


def install(dry_run: bool, skip: bool) -> None:
    command = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "-e", f"{REPO}[gpu]"]
    if skip:
        print("  skipped (--skip-install): " + " ".join(command))
        return
    run(command, dry=dry_run)


def check_kernels(report: Report, where: str, attention: Any, liger: Any, extras: dict[str, bool]) -> None:
    """On a GPU the worker must pick flash-attention 2 and Liger; where one is not installed, the pick it
    falls back to is checked instead and the missing kernel is reported as not checked."""
    if extras["flash_attn"]:
        report.check(attention == "flash_attention_2", f"{where}: attention {attention} (flash_attention_2)")
    else:
        fallback = "tempa_doc_sdpa" if where in ("gpu_mfu", "sft") else "sdpa"
        report.check(attention == fallback, f"{where}: attention {attention} ({fallback}: flash_attn is not installed)")
        report.skip(f"{where}: flash-attention 2 (flash_attn is not installed)")
    if extras["liger_kernel"]:
        report.check(liger is True, f"{where}: Liger kernels {liger}")
    else:
        report.skip(f"{where}: Liger kernels (liger_kernel is not installed)")


def mfu(report: Report, work: Path, extras: dict[str, bool] | None) -> None:
    out = work / "gpu_mfu.json"
    run([sys.executable, str(BENCH / "gpu_mfu.py"), "--json", str(out), *(["--dry-run"] if extras is None else [])])
    result = json.loads(out.read_text())
    dry_run = extras is None
    if extras is None:
        report.check(result["attention"] == "tempa_doc_sdpa", f"gpu_mfu (dry run) attention: {result['attention']}")
    else:
        check_kernels(report, "gpu_mfu", result["attention"], result["liger"], extras)
    share = f"{100 * result['mfu']:.1f}%" if "mfu" in result else "unknown peak"
    print(f"  gpu_mfu: {result['device']}: {result['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU, MFU {share}"
          f"{' (nominal peak: meaningless on CPU)' if dry_run else ''}; peak memory {result['peak_memory_gib']:.1f} GiB")


def pipeline_model(folder: Path) -> Path:
    """A random model with Llama-3.2-1B's body and the tiny tokenizer, saved as the worker loads models."""
    import torch

    tokenizer = common.bench_tokenizer()
    shape = common.Shape(**{**BODY_1B.__dict__, "vocab_size": len(tokenizer)})
    model = common.llama(shape, tokenizer, max_positions=8192, dtype=torch.bfloat16)
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


@dataclass(frozen=True)
class ScaleOut:
    """A launch the CPU tests cannot run: what it checks, the GPUs it needs, its recipe's launch block."""

    name: str
    gpus: int
    launch: str
    train: str
    checks: str


SCALE_OUT = (
    ScaleOut("fsdp2", 2, "{accelerate_config: fsdp2, num_processes: 2}", "{max_steps: 4, save_steps: 2}",
             "FSDP2 trains, saves full-state-dict safetensors, resumes from checkpoint-2; weights match a zero3 run's"),
    ScaleOut("fsdp2-offload", 2, "{accelerate_config: fsdp2-offload, num_processes: 2}", "{max_steps: 4}",
             "parameters, gradients and AdamW state in host RAM (CPUOffloadPolicy)"),
    ScaleOut("ulysses", 2, "{accelerate_config: zero3, num_processes: 2, sequence_parallel: 2}",
             "{max_steps: 4, packing: true, max_length: 32768}",
             "DeepSpeed Ulysses/ALST over 2 GPUs with packed 32k rows (flash-attention 2, position_ids)"),
    ScaleOut("context-parallel", 2, "{accelerate_config: fsdp2, num_processes: 2, sequence_parallel: 2}",
             "{max_steps: 4, packing: false, max_length: 32768}", "torch context parallelism on FSDP2, no packing"),
    ScaleOut("two-nodes", 16, "{accelerate_config: zero3, num_machines: 2, num_processes: 16}", "{max_steps: 4}",
             "node 0 `tempa run`, node 1 `tempa run --machine-rank 1` over NCCL (docs/multinode/tempa-2nodes.sbatch)"),
)


def scale_out(report: Report, work: Path, base_model: str) -> None:
    """Validate each :data:`SCALE_OUT` recipe, render its plan, and list what it needs."""
    from tempa.recipes.estimate import render_estimate
    from tempa.recipes.loader import load_recipe

    data = REPO / "recipes" / "data"
    for check in SCALE_OUT:
        path = work / f"scale-out-{check.name}.yaml"
        path.write_text(textwrap.dedent(f"""\
            name: gpu-check-{check.name}
            base_model: {base_model}
            launch: {check.launch}
            stages:
              - name: sft
                kind: sft
                data: {{sources: [{{name: instruct, path: {data / "sample_instruct.jsonl"}, thinking_mode: "off"}}]}}
                train: {check.train}
            """))
        loaded = load_recipe(path)  # a RecipeError here is a broken check, reported by the caller
        plan = render_estimate(loaded, "1xH200" if check.gpus < 8 else f"{check.gpus // 8}x8xH100")
        report.check("estimate for" in plan, f"scale-out {check.name}: recipe valid, plan rendered")
        print(f"  needs {check.gpus} GPUs: {check.checks}; run: tempa run {path}")


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
    if extras is not None and not extras["vllm"]:
        report.skip("align: on-policy sampling with the vLLM backend (vllm is not installed; sampled with transformers)")
    run_dir = work / "run"
    command = [sys.executable, "-m", "tempa.recipes.cli", "run", str(recipe), "--run-dir", str(run_dir)]
    print("$ " + " ".join(command), flush=True)
    code = subprocess.run(command, cwd=REPO).returncode
    report.check(code == 0, f"tempa run: exit code {code}")
    for stage in ("sft", "align"):
        records = trained_records(run_dir / stage)
        report.check(len(records) == 1, f"{stage}: one trained model ({len(records)} found)")
        for record in records:
            check_losses(report, stage, record.get("log_history", []))
            kernels = record.get("kernels", {})
            if extras is not None:
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
    parser.add_argument("--dry-run", action="store_true", help="CPU: toy scale, no install, transformers sampling")
    parser.add_argument("--skip-install", action="store_true", help="the gpu extra is already installed")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the model, recipe and run here")
    args = parser.parse_args(argv)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device; use --dry-run to check the script on CPU")
    print(common.machine_line(), flush=True)
    extras = None if args.dry_run else installed_extras()
    report = Report()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tempa-gpu-check-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        phases = [("install", lambda: install(args.dry_run, args.skip_install)),
                  ("mfu", lambda: mfu(report, work, extras)),
                  ("pipeline", lambda: pipeline(report, work, extras)),
                  ("scale-out", lambda: scale_out(report, work, "aisingapore/Llama-SEA-LION-v3-8B-IT"))]
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
    if not args.dry_run and total > TIME_BUDGET_S:
        print(f"  note: over the {TIME_BUDGET_S // 60}-minute budget")
    if report.failures:
        print(f"FAILED: {len(report.failures)} check(s): " + "; ".join(report.failures))
        return 1
    if report.not_checked:
        print(f"INCOMPLETE: every check that ran passed, but {len(report.not_checked)} did not run: "
              + "; ".join(report.not_checked))
        return 2
    print("all checks passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
