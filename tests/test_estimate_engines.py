"""`tempa plan --hardware` sizes the model states of the engine the recipe launches with, not always ZeRO-3.

References are computed apart from tempa's code: DeepSpeed's own ZeRO-2 estimator, and the standard
mixed-precision AdamW accounting for an unsharded model (trl loads it in fp32: 4 B weights + 4 B
gradients + 8 B Adam moments per parameter, on every GPU).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from tempa.recipes.estimate import GIB, estimate_recipe, render_estimate, resolve_shape
from tempa.recipes.loader import load_recipe

RECIPE = "swallow-8b-instruct-v0.3"


def launched_with(config: str) -> list[str]:
    return [f"launch.accelerate_config={config}"]


def deepspeed_zero2_gib(total_params: int, offload: bool) -> tuple[float, float]:
    """(per CPU, per GPU) GiB that DeepSpeed's ZeRO-2 estimator prints for one node of 8 GPUs."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        estimate_zero2_model_states_mem_needs_all_cold(total_params=total_params, num_gpus_per_node=8, num_nodes=1)
    line = next(x for x in printed.getvalue().splitlines() if "offload_optimizer=" in x
                and ("offload_optimizer=none" in x) is not offload)
    cpu, gpu = (float(v) for v in re.findall(r"([\d.]+)GB", line)[:2])
    return cpu, gpu


def test_ddp_holds_the_whole_model_states_on_every_gpu():
    """An 8B model under DDP needs >= 16 B/param on each GPU (~120 GiB): it does not fit 80 GB, and the plan says
    so and points at ZeRO-3, which fits."""
    loaded = load_recipe(RECIPE, launched_with("ddp"))
    shape, _ = resolve_shape(loaded.recipe.base_model)
    stage = estimate_recipe(loaded, "8xH100")[0]
    standard = 16 * shape.parameters / GIB  # fp32 weights + fp32 grads + Adam's two fp32 moments, unsharded
    assert stage.memory.model_states >= standard
    assert not stage.fits
    zero3 = estimate_recipe(load_recipe(RECIPE, launched_with("zero3")), "8xH100")[0]
    assert zero3.fits
    assert "launch.accelerate_config: zero3 (" in stage.warnings[-1]
    text = render_estimate(loaded, "8xH100")
    assert "estimated as DeepSpeed ZeRO-3" not in text and "assumes ZeRO-3" not in text


@pytest.mark.parametrize("offload", [False, True])
def test_zero2_model_states_agree_with_deepspeeds_estimator(tmp_path: Path, offload: bool):
    config = tmp_path / "zero2.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\ndeepspeed_config:\n"
        f"  offload_optimizer_device: {'cpu' if offload else 'none'}\n  offload_param_device: none\n"
        "  zero_stage: 2\nmixed_precision: bf16\nnum_machines: 1\nnum_processes: 8\n")
    loaded = load_recipe(RECIPE, launched_with(str(config)))
    shape, _ = resolve_shape(loaded.recipe.base_model)
    cpu_gib, gpu_gib = deepspeed_zero2_gib(shape.parameters, offload)
    memory = estimate_recipe(loaded, "8xH100")[0].memory
    assert memory.model_states == pytest.approx(gpu_gib, rel=0.01)
    assert memory.host == pytest.approx(cpu_gib, rel=0.01)


def test_the_hours_say_their_mfu_is_an_assumption_and_how_to_change_it():
    """The hours hinge on the MFU; the plan says it assumed one, and which flag sets it."""
    text = render_estimate(load_recipe(RECIPE), "8xH100", mfu=0.33)
    header = text.splitlines()[0]
    assert "MFU 33% (assumed" in header and "--mfu" in header


def test_the_plan_says_how_much_disk_the_checkpoints_take():
    """Swallow 70B under ZeRO-3: each checkpoint holds DeepSpeed's fp32 master weights and Adam's two moments
    (12 B/param) and the 16-bit model (2 B/param); ~1.8k steps saved every 100 and at the last step (18 saves),
    three kept: the fourth is written before the oldest goes, so four are on disk at once."""
    loaded = load_recipe("swallow-70b-instruct-v0.3")
    shape, _ = resolve_shape(loaded.recipe.base_model)
    stage = estimate_recipe(loaded, "8xH100")[0]
    train = next(s for s in loaded.stages if s.kind == "sft").train_args()
    assert train["save_steps"] == 100 and train["save_total_limit"] == 3 and 1500 < stage.steps < 2000
    total_tb = 4 * (12 + 2) * shape.parameters / 1e12
    assert any(n.startswith("disk: 4 checkpoint(s)") and f"~{total_tb:.1f} TB" in n for n in stage.notes), stage.notes


def test_the_plan_warns_when_checkpoints_are_hours_apart(tmp_path):
    """Swallow 70B saved every 500 of ~1.8k steps: one checkpoint every ~18.5 h of a ~65 h stage, which the docs'
    own sbatch (--time=48:00:00) cuts once, losing up to that much. The interval is the estimate's hours per step
    times save_steps; a stage shorter than save_steps saves once, at its end."""
    from tempa.recipes.estimate import SAVE_EVERY_H_MAX

    def estimate(**train):
        loaded = load_recipe("swallow-70b-instruct-v0.3",
                             [f"stages.sft.train.{key}={value}" for key, value in train.items()])
        stage = estimate_recipe(loaded, "8xH100")[0]
        return stage, [w for w in stage.warnings if "checkpoint every" in w]

    stage, warned = estimate(save_steps=500)
    per_step = stage.hours / stage.steps
    assert 500 * per_step > SAVE_EVERY_H_MAX and len(warned) == 1
    advice = int(SAVE_EVERY_H_MAX / 2 / per_step)
    assert f"a checkpoint every ~{500 * per_step:.1f} h" in warned[0] and f"save_steps: {advice} saves" in warned[0]
    assert estimate(save_steps=advice)[1] == []
    # saved only at its end: the whole stage apart
    stage, warned = estimate(save_steps=100_000)
    assert f"a checkpoint every ~{stage.hours:.1f} h" in warned[0]
    assert estimate(save_strategy='"no"')[1] == []
