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


def test_the_gpu_recipe_uses_vllm_and_the_dry_run_recipe_what_a_cpu_has(tmp_path):
    """Both recipes load (a typo in the GPU one would only surface on a GPU machine otherwise)."""
    from tempa.recipes.loader import load_recipe

    gpu_check = gpu_check_module()
    for dry, backend in ((False, "vllm"), (True, "transformers")):
        path = tmp_path / f"{backend}.yaml"
        path.write_text(gpu_check.recipe_text(str(tmp_path), dry))
        if not dry:
            (tmp_path / "config.json").write_text("{}")  # base_model must exist as a folder with safetensors
            for name in ("model.safetensors", "tokenizer.json"):
                (tmp_path / name).write_bytes(b"")
        stages = {stage.name: stage for stage in load_recipe(path).stages}
        assert stages["align"].backend.type == backend
        # on the GPU a vLLM-sampled round; the dry run's tiny model never ends a turn: offline pairs only
        assert (stages["align"].rounds, stages["align"].offline is not None) == ((0, True) if dry else (1, False))
        assert stages["sft"].kind == "sft"
        assert stages["rl"].kind == "rl" and "use_vllm" not in stages["rl"].train  # vLLM on the GPU, chosen by the worker


def test_the_rl_check_fails_on_a_non_finite_kl_a_missing_reward_or_the_wrong_generation():
    gpu_check = gpu_check_module()
    rewards = {f"rewards/{name}/mean": 0.5 for name in gpu_check.RL_REWARDS}
    good = [{"loss": 0.1, "kl": 0.01, **rewards}, {"loss": -0.2, "kl": 0.02, **rewards}]
    vllm = "generating with vLLM, colocate mode (on the training GPUs)"
    report = gpu_check.Report()
    gpu_check.check_rl(report, good, vllm, dry_run=False)
    assert not report.failures
    gpu_check.check_rl(report, [good[0], {**good[1], "kl": float("nan")}], vllm, dry_run=False)
    gpu_check.check_rl(report, [{"loss": 0.1, "kl": 0.0}], vllm, dry_run=False)
    gpu_check.check_rl(report, good, "generating with transformers: vLLM is not installed", dry_run=False)
    assert [f.split(": ", 1)[1] for f in report.failures] == [
        "loss and KL finite at every step", "every reward logged per step (missing: ['answer', 'format', "
        "'language', 'length'])", "generating with vLLM, colocate mode"]


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
