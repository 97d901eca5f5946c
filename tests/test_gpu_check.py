"""bench/gpu_check.py: its dry run passes on CPU, and its loss check catches what it is there to catch."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def gpu_check_module():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_loss_check_fails_on_a_non_finite_or_rising_loss():
    gpu_check = gpu_check_module()
    report = gpu_check.Report()
    gpu_check.check_losses(report, "nan", [{"loss": 2.0}, {"loss": float("nan")}, {"loss": 1.0}])
    gpu_check.check_losses(report, "rising", [{"loss": 2.0}, {"loss": 1.0}, {"loss": 2.5}])
    gpu_check.check_losses(report, "empty", [{"eval_loss": 1.0}])
    gpu_check.check_losses(report, "good", [{"loss": 2.0}, {"learning_rate": 1.0}, {"loss": 1.5}])
    assert [f.split(":")[0] for f in report.failures] == ["nan", "rising", "empty"]


FULL = {"flash_attn": True, "liger_kernel": True, "vllm": True}
NO_EXTRAS = {"flash_attn": False, "liger_kernel": False, "vllm": False}


@pytest.mark.parametrize(("extras", "backend"), [(FULL, "vllm"), (NO_EXTRAS, "transformers"), (None, "transformers")])
def test_the_gpu_recipe_samples_with_vllm_when_installed_and_the_dry_run_recipe_what_a_cpu_has(tmp_path, extras,
                                                                                               backend):
    """The recipes load (a typo in the GPU one would only surface on a GPU machine otherwise)."""
    from tempa.recipes.loader import load_recipe

    gpu_check = gpu_check_module()
    dry = extras is None
    path = tmp_path / "check.yaml"
    path.write_text(gpu_check.recipe_text(str(tmp_path), extras))
    (tmp_path / "config.json").write_text("{}")  # base_model must exist as a folder with safetensors
    for name in ("model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_bytes(b"")
    stages = {stage.name: stage for stage in load_recipe(path).stages}
    assert stages["align"].backend.type == backend
    # on the GPU a sampled round; the dry run's tiny model never ends a turn: offline pairs only
    assert (stages["align"].rounds, stages["align"].offline is not None) == ((0, True) if dry else (1, False))
    assert stages["sft"].kind == "sft"
    assert stages["rl"].kind == "rl" and "use_vllm" not in stages["rl"].train  # vLLM on the GPU, chosen by the worker


def test_the_rl_check_fails_on_a_non_finite_kl_a_missing_reward_or_the_wrong_generation():
    gpu_check = gpu_check_module()
    rewards = {f"rewards/{name}/mean": 0.5 for name in gpu_check.RL_REWARDS}
    good = [{"loss": 0.1, "kl": 0.01, **rewards}, {"loss": -0.2, "kl": 0.02, **rewards}]
    vllm = "generating with vLLM, colocate mode (on the training GPUs)"
    report = gpu_check.Report()
    gpu_check.check_rl(report, good, vllm, FULL)
    assert not report.failures and not report.not_checked
    gpu_check.check_rl(report, [good[0], {**good[1], "kl": float("nan")}], vllm, FULL)
    gpu_check.check_rl(report, [{"loss": 0.1, "kl": 0.0}], vllm, FULL)
    gpu_check.check_rl(report, good, "generating with transformers: vLLM is not installed", FULL)
    assert [f.split(": ", 1)[1] for f in report.failures] == [
        "loss and KL finite at every step", "every reward logged per step (missing: ['answer', 'format', "
        "'language', 'length'])", "generating with vLLM, colocate mode"]


def test_a_missing_gpu_extra_is_never_counted_as_checked():
    """Without vLLM the transformers fallback must be what ran, and vLLM is reported as not checked."""
    gpu_check = gpu_check_module()
    rewards = {f"rewards/{name}/mean": 0.5 for name in gpu_check.RL_REWARDS}
    steps = [{"loss": 0.1, "kl": 0.01, **rewards}]
    report = gpu_check.Report()
    gpu_check.check_rl(report, steps, "generating with transformers: vLLM is not installed (the gpu extra)", NO_EXTRAS)
    assert not report.failures and report.not_checked == [
        "rl: GRPO sampling with vLLM colocated (vllm is not installed)"]
    gpu_check.check_rl(report, steps, "generating with vLLM, colocate mode", NO_EXTRAS)
    assert report.failures == ["rl: generating with transformers: vLLM is not installed"]


def test_the_kernel_check_wants_flash_attention_and_liger_or_the_fallback_the_worker_picks_without_them():
    gpu_check = gpu_check_module()
    report = gpu_check.Report()
    gpu_check.check_kernels(report, "sft", "flash_attention_2", True, FULL)
    assert not report.failures and not report.not_checked
    gpu_check.check_kernels(report, "sft", "tempa_doc_sdpa", False, FULL)
    assert report.failures == ["sft: attention tempa_doc_sdpa (flash_attention_2)", "sft: Liger kernels False"]
    report = gpu_check.Report()
    gpu_check.check_kernels(report, "sft", "tempa_doc_sdpa", False, NO_EXTRAS)
    gpu_check.check_kernels(report, "align", "sdpa", False, NO_EXTRAS)
    assert not report.failures
    assert report.not_checked == [f"{stage}: {kernel} ({package} is not installed)" for stage in ("sft", "align")
                                  for kernel, package in (("flash-attention 2", "flash_attn"),
                                                          ("Liger kernels", "liger_kernel"))]
    gpu_check.check_kernels(report, "sft", "sdpa", False, NO_EXTRAS)  # a dense mask where per-document was due
    assert report.failures == ["sft: attention sdpa (tempa_doc_sdpa: flash_attn is not installed)"]


@pytest.mark.slow
@pytest.mark.timeout(900)  # three training stages in launched workers, as its subprocess timeout allows
def test_dry_run_passes_on_cpu(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--work-dir",
                             str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
    assert "all checks passed" in out and "FAIL" not in out
    assert "pip install --no-build-isolation -e" in out  # the install it would run, not run
    for stage in ("sft", "align"):
        assert re.search(rf"\[ok\] {stage}: loss decreases \(\d", out)
        assert re.search(rf"{stage}: [\d,]+ tokens/s/GPU, MFU n/a", out)
    assert re.search(r"gpu_mfu: cpu \(dry run\): [\d,]+ tokens/s/GPU, MFU \d", out)
    for check in ("one trained model", "loss and KL finite at every step", "every reward logged per step",
                  "generating with transformers: no CUDA GPU"):
        assert f"[ok] rl: {check}" in out


def test_the_scale_out_checks_cpu_ci_cannot_run_are_valid_recipes_and_listed(tmp_path, capsys):
    gpu_check = gpu_check_module()
    report = gpu_check.Report()
    gpu_check.scale_out(report, tmp_path, "aisingapore/Llama-SEA-LION-v3-8B-IT")
    out = capsys.readouterr().out
    assert not report.failures
    names = [check.name for check in gpu_check.SCALE_OUT]
    assert {"fsdp2", "fsdp2-offload", "ulysses", "context-parallel", "two-nodes"} <= set(names)
    for check in gpu_check.SCALE_OUT:
        assert f"[ok] scale-out {check.name}: recipe valid, plan rendered" in out
        assert f"needs {check.gpus} GPUs: {check.checks}" in out
