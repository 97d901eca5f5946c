"""bench/gpu_check.py: its dry run passes what a CPU runs and counts the rest NOT CHECKED, and its checks catch what
they are there to catch."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tempa.sft.train_plan import TrainOutcome

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


def test_the_dry_run_checks_the_cpu_kernels_and_never_counts_the_gpu_ones():
    gpu_check = gpu_check_module()
    report = gpu_check.Report()
    gpu_check.check_kernels(report, "sft", "tempa_doc_sdpa", False, None)
    gpu_check.check_kernels(report, "align", "sdpa", False, None)
    assert not report.failures and report.passed == 2
    assert report.not_checked == [f"{stage}: {kernel} (dry run: CPU)" for stage in ("sft", "align")
                                  for kernel in ("flash-attention 2", "Liger kernels")]
    gpu_check.check_kernels(report, "sft", "sdpa", False, None)
    assert report.failures == ["sft: attention sdpa (tempa_doc_sdpa: dry run: CPU)"]


def test_the_exit_code_is_1_on_a_failure_2_when_something_was_not_checked_0_only_when_all_was(capsys):
    gpu_check = gpu_check_module()
    report = gpu_check.Report()
    report.check(True, "a")
    assert report.verdict() == 0 and capsys.readouterr().out.splitlines()[-1] == "all 1 checks passed"
    report.skip("b (needs 2 GPUs, this machine has 1)")
    assert report.verdict() == 2
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == ["== not checked (1)", "  - b (needs 2 GPUs, this machine has 1)",
                        "INCOMPLETE: all 1 checks that ran passed; 1 NOT CHECKED (above)"]
    report.check(False, "c")
    assert report.verdict() == 1 and capsys.readouterr().out.splitlines()[-1] == "FAILED: 1 check(s): c"


def test_a_dry_run_passes_when_every_check_a_cpu_makes_passed_and_lists_what_it_left_for_a_gpu(capsys):
    gpu_check = gpu_check_module()
    report = gpu_check.Report(dry_run=True)
    report.check(True, "a")
    report.skip("b (dry run: CPU)")
    assert report.verdict() == 0
    assert capsys.readouterr().out.splitlines()[-3:] == [
        "== not checked (1): left for a GPU", "  - b (dry run: CPU)",
        "dry run passed: all 1 checks a CPU can make passed; 1 NOT CHECKED (above) need a GPU: run this script "
        "without --dry-run on a GPU machine"]
    report.check(False, "c")  # a failure fails a dry run as it fails a GPU run
    assert report.verdict() == 1 and capsys.readouterr().out.splitlines()[-1] == "FAILED: 1 check(s): c"


# what the dry run cannot check: the GPU kernels and vLLM of every stage, and every scale-out launch
DRY_RUN_NOT_CHECKED = [
    *(f"{where}: {kernel} (dry run: CPU)" for where in ("gpu_mfu",) for kernel in ("flash-attention 2", "Liger kernels")),
    "align: on-policy sampling with the vLLM backend (dry run: DPO on the shipped offline pairs, nothing sampled)",
    *(f"{where}: {kernel} (dry run: CPU)" for where in ("sft", "align") for kernel in ("flash-attention 2",
                                                                                        "Liger kernels")),
    "rl: GRPO sampling with vLLM colocated (dry run: transformers generation on CPU)",
]


@pytest.mark.slow
@pytest.mark.timeout(900)  # three training stages in launched workers, as its subprocess timeout allows
def test_dry_run_passes_what_a_cpu_runs_and_reports_the_gpu_checks_not_checked(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--work-dir",
                             str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
    assert "FAIL" not in out and "INCOMPLETE" not in out and "all checks passed" not in out
    gpu_check = gpu_check_module()
    expected = [*DRY_RUN_NOT_CHECKED, *(f"scale-out {check.name}: {check.checks} (dry run)"
                                        for check in gpu_check.SCALE_OUT if check.nodes == 1)]
    listed = out[out.index(f"== not checked ({len(expected)}): left for a GPU"):].splitlines()
    assert listed[1:-1] == [f"  - {message}" for message in expected]
    assert re.fullmatch(rf"dry run passed: all \d+ checks a CPU can make passed; {len(expected)} NOT CHECKED "
                        r"\(above\) need a GPU: run this script without --dry-run on a GPU machine", out.splitlines()[-1])
    assert re.search(r"== install\n  not run \(--dry-run\): .* -m pip install --no-build-isolation -e", out)
    for stage in ("sft", "align"):
        assert re.search(rf"\[ok\] {stage}: loss decreases \(\d", out)
        assert re.search(rf"{stage}: [\d,]+ tokens/s/GPU, MFU n/a", out)
    assert re.search(r"gpu_mfu: cpu \(dry run\): [\d,]+ tokens/s/GPU, MFU \d", out)
    for check in ("one trained model", "loss and KL finite at every step", "every reward logged per step",
                  "generating with transformers: no CUDA GPU"):
        assert f"[ok] rl: {check}" in out
    assert "tempa.recipes.cli run" not in out.split("== scale-out")[1]  # the dry run launches none


def test_a_scale_out_launch_this_machine_cannot_run_is_not_checked_never_passed(tmp_path, capsys, monkeypatch):
    gpu_check = gpu_check_module()
    launched = []
    monkeypatch.setattr(gpu_check, "launch", lambda report, check, recipe, run_dir: launched.append(check.name))
    report = gpu_check.Report()
    gpu_check.scale_out(report, tmp_path, "tempa:tiny", 1, FULL)
    out = capsys.readouterr().out
    assert not report.failures and not launched
    names = [check.name for check in gpu_check.SCALE_OUT]
    assert {"fsdp2", "fsdp2-offload", "ulysses", "context-parallel", "two-nodes"} <= set(names)
    single = [check for check in gpu_check.SCALE_OUT if check.nodes == 1]
    assert [message.split(":")[0] for message in report.not_checked] == [f"scale-out {c.name}" for c in single]
    for check in gpu_check.SCALE_OUT:
        assert f"[ok] scale-out {check.name}: recipe valid, plan rendered" in out
        if check.nodes == 1:
            assert (f"[NOT CHECKED] scale-out {check.name}: {check.checks} (needs {check.gpus} GPUs, this machine "
                    "has 1)") in out
        else:  # no one machine can check it: a step by hand, outside the count, so that a run can pass
            assert (f"by hand: scale-out {check.name}: {check.checks} (needs 2 nodes; this script runs on one); not "
                    "counted") in out
    # no path printed into the temporary folder that is deleted on exit
    assert str(tmp_path) not in out and "kept only with --work-dir" in out
    assert gpu_check.Report.verdict(report) == 2

    # with the GPUs, every single-node launch runs; two nodes never do from one machine, nor anything in a dry run
    report = gpu_check.Report()
    gpu_check.scale_out(report, tmp_path, "tempa:tiny", 8, FULL, kept=True)
    assert launched == [check.name for check in single]
    assert report.not_checked == [] and gpu_check.Report.verdict(report) == 0
    assert str(tmp_path / "scale-out-two-nodes.yaml") in capsys.readouterr().out  # kept: its path is usable
    launched.clear()
    report = gpu_check.Report()
    gpu_check.scale_out(report, tmp_path, "tempa:tiny", 8, None)
    assert not launched and len(report.not_checked) == len(single)
    # Ulysses needs flash-attention 2 for its packed rows: without flash_attn it is not checked, not failed
    report = gpu_check.Report()
    gpu_check.scale_out(report, tmp_path, "tempa:tiny", 8, NO_EXTRAS)
    assert launched == [check.name for check in gpu_check.SCALE_OUT if check.nodes == 1 and not check.attention]
    assert [m.split(":")[0] for m in report.not_checked] == ["scale-out ulysses"]
    assert report.not_checked[0].endswith("(flash_attn is not installed)")


def test_a_failed_scale_out_launch_is_a_failure(tmp_path):
    gpu_check = gpu_check_module()
    check = gpu_check.SCALE_OUT[0]
    recipe = gpu_check.scale_out_recipe(check, tmp_path, str(tmp_path / "no-such-model"))
    report = gpu_check.Report()
    gpu_check.launch(report, check, recipe, tmp_path / "run")
    assert [f.split(": ", 1)[1].split(" ")[0] for f in report.failures] == ["tempa", "no"]
    assert report.failures[0].startswith("scale-out fsdp2: tempa run exit code ") and not report.passed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_scale_out_launch_is_checked_and_resumed_from_checkpoint_2(tmp_path, tiny_model_dir):
    """The launch and resume check, run on CPU: SCALE_OUT's fsdp2 launch over 2 gloo processes (CI's FSDP2)."""
    gpu_check = gpu_check_module()
    fsdp2 = gpu_check.SCALE_OUT[0]
    assert fsdp2.name == "fsdp2" and fsdp2.resume
    check = gpu_check.ScaleOut(**{**fsdp2.__dict__, "launch": fsdp2.launch.replace("}", ", use_cpu: true}"),
                                  "train": "{save_steps: 2, per_device_train_batch_size: 2, max_length: 256}"})
    recipe = gpu_check.scale_out_recipe(check, tmp_path, str(tiny_model_dir))
    report = gpu_check.Report()
    gpu_check.launch(report, check, recipe, tmp_path / "run")
    assert not report.failures and not report.not_checked
    assert report.passed == 6  # exit code, step, losses, FSDP shards, checkpoint-2, the resumed run
    outcome = TrainOutcome.read(tmp_path / "run" / "sft" / "final")
    assert Path(outcome.resumed_from).name == "checkpoint-2" and outcome.global_step == gpu_check.SCALE_OUT_STEPS
