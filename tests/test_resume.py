"""A real SIGKILL of `tempa run` during training, then a second run that finishes the job.

The second run must skip the stage that was already complete, resume the killed stage from its
last complete checkpoint (not from scratch, not from a half-written one), and finish.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sft_helpers import sft_recipe
from tempa.sft.checkpoints import complete_checkpoints
from tempa.sft.files import json_or_none
from tempa.sft.run_layout import DONE

STAGES = """
  - name: warmup
    kind: sft
    data:
      sources: [{name: rows, path: rows.jsonl, thinking_mode: "off"}]
    train: {max_steps: 2, learning_rate: 1.0e-3, per_device_train_batch_size: 4, max_length: 256, save_steps: 100}
  - name: main
    kind: sft
    data:
      sources: [{name: rows, path: rows.jsonl, thinking_mode: "on"}]
    train:
      max_steps: 24  # the kill lands a few steps after checkpoint-3 (the watchdog polls every 0.25 s)
      learning_rate: 1.0e-3
      per_device_train_batch_size: 2
      max_length: 256
      logging_steps: 5
      save_steps: 3
      save_total_limit: 2
"""


def tempa(*args: str) -> list[str]:
    return [sys.executable, "-m", "tempa.recipes.cli", *args]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def training_group_alive(stage_dir: Path) -> bool:
    pid_file = stage_dir / "logs" / "launch.pid"
    if not pid_file.exists():
        return False
    try:
        os.killpg(int(pid_file.read_text()), 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
def test_sigkill_during_training_then_resume(tmp_path, tiny_model_dir):
    recipe = sft_recipe(tmp_path, tiny_model_dir, stages=STAGES)
    run_dir = tmp_path / "run"
    main = run_dir / "main"
    proc = subprocess.Popen(tempa("run", str(recipe), "--run-dir", str(run_dir)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(complete_checkpoints(main / "checkpoints")) >= 1, 240, "a complete checkpoint")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the orphaned training group notices its runner died and stops itself
    wait_for(lambda: not training_group_alive(main), 30, "the training processes to stop")
    assert (run_dir / "warmup" / DONE).is_file()
    assert not (main / DONE).exists() and not (main / "final").exists()
    warmup_done = (run_dir / "warmup" / DONE).read_text()
    killed_at = max(c.step for c in complete_checkpoints(main / "checkpoints"))
    assert killed_at < 24

    status = subprocess.run(tempa("status", str(run_dir), "--json"), capture_output=True, text=True, check=True)
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    assert rows["warmup"]["state"] == "done" and rows["main"]["state"] == "interrupted"
    assert rows["main"]["note"] == ("the runner stopped without saying why: SIGKILL, the out-of-memory killer or a "
                                    f"machine that went down; the same recipe run again continues from "
                                    f"checkpoint-{killed_at}")

    plan = subprocess.run(tempa("plan", str(recipe), "--run-dir", str(run_dir)), capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert "resume" in plan.stdout and "main" in plan.stdout

    again = subprocess.run(tempa("run", str(recipe), "--run-dir", str(run_dir)), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run_dir / "warmup" / DONE).read_text() == warmup_done  # not redone
    metrics = json_or_none(main / "metrics.json")
    assert metrics["global_step"] == 24
    assert metrics["resumed_from"] is not None
    resumed_step = int(Path(metrics["resumed_from"]).name.split("-")[1])
    assert resumed_step >= killed_at
    assert (main / DONE).is_file() and (run_dir / "final" / "config.json").is_file()


def test_a_checkpoint_damaged_after_it_was_saved_is_named_with_the_way_out(tmp_path, tiny_model_dir):
    """A checkpoint cut short after its COMPLETE was written (a disk, a copy) failed every resume with safetensors'
    "incomplete metadata, file not fully covered", naming no file: the error now names the checkpoint and what to
    move aside."""
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import run_recipe
    from tempa.sft.stage_api import StageError

    stages = """
  - name: main
    kind: sft
    data:
      sources: [{name: rows, path: rows.jsonl, thinking_mode: "off"}]
    train: {max_steps: 2, learning_rate: 1.0e-3, per_device_train_batch_size: 4, max_length: 256, save_steps: 1}
"""
    recipe = sft_recipe(tmp_path, tiny_model_dir, stages=stages)
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(recipe), run_dir)
    main = run_dir / "main"
    # safetensors creates its files 0600: a teammate on a shared node could read neither the model nor a checkpoint
    umask = os.umask(0)
    os.umask(umask)
    for saved in (main / "final" / "model.safetensors", main / "checkpoints" / "checkpoint-2" / "model.safetensors"):
        assert saved.stat().st_mode & 0o777 == 0o666 & ~umask, saved
    # as a kill after checkpoint-2 leaves it: no DONE, no final model, the manifest still running
    (main / DONE).unlink()
    manifest = json_or_none(main / "manifest.json")
    (main / "manifest.json").write_text(json.dumps({**manifest, "status": "running", "result": None}))
    shutil.rmtree(main / "final")
    weights = main / "checkpoints" / "checkpoint-2" / "model.safetensors"
    assert (weights.parent / "COMPLETE").exists()
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(StageError) as info:
        run_recipe(load_recipe(recipe), run_dir)
    message = str(info.value)
    assert f"it was resuming from {main / 'checkpoints' / 'checkpoint-2'}, whose files may have been damaged" in message
    assert "move that folder aside and run again to resume from the checkpoint before it" in message
    assert "\n" not in message


def test_a_save_that_failed_on_a_full_disk_is_not_called_a_damaged_file():
    """A checkpoint save on a full disk failed with safetensors' "Error while serializing: ... No space left on
    device", and the error told the user to delete the (good) prepared data's cache entry."""
    from tempa.sft.stage import damaged_file_hint

    full = ("training process exited with code 1: safetensors._safetensors_rust.SafetensorError: Error while "
            "serializing: I/O error: No space left on device (os error 28)")
    assert damaged_file_hint(full, None, Path("/cache/sft-data/abc/train")) is None
    torn = "training process exited with code 1: SafetensorError: Error while deserializing header: incomplete metadata"
    assert "delete that cache folder" in damaged_file_hint(torn, None, Path("/cache/sft-data/abc/train"))


def test_the_files_a_stage_writes_follow_the_umask_it_reads_without_setting_it(tmp_path):
    """The umask was read by setting it to 0 and back, while a trainer's threads create files: one created in that
    window was 0666. It is read from /proc on Linux, and the modes follow it (0640 under 027)."""
    from tempa.sft.files import umask_modes

    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "model.safetensors").chmod(0o600)  # as safetensors writes it
    old = os.umask(0o027)
    try:
        umask_modes(tmp_path)
        assert os.umask(0o027) == 0o027  # never changed under the threads, however briefly
    finally:
        os.umask(old)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o640


def test_a_launch_that_fails_after_publishing_its_final_model_keeps_it(tmp_path, tiny_model_dir, caplog):
    """A 2-process ZeRO-3 run finished its steps and its save, then one process died exiting ("terminate called
    without an active exception", SIGABRT): the stage failed at its very end, and a re-run read the model back."""
    import logging

    from stage_helpers import make_context
    from tempa.sft.stage import launch_training
    from tempa.sft.stage_api import StageError
    from tempa.sft.train_plan import OUTCOME_FILE, TrainOutcome, TrainPlan

    crash = StageError("a training process crashed with SIGABRT: terminate called without an active exception")

    def run(publish: bool):
        def launch(module, args, log_file):
            if publish:
                final = tmp_path / "sft" / "final"
                final.mkdir(parents=True, exist_ok=True)
                (final / OUTCOME_FILE).write_text(TrainOutcome(global_step=36).model_dump_json())
            raise crash

        ctx = make_context(tmp_path, "sft", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                           chat_template="", launch=launch)
        return launch_training(TrainPlan.standalone(tiny_model_dir, tmp_path / "sft", {}), ctx)

    with pytest.raises(StageError, match="SIGABRT"):  # nothing published: the failure stands
        run(publish=False)
    with caplog.at_level(logging.WARNING):
        assert run(publish=True).global_step == 36
    assert "ended with an error after the final model was published" in caplog.text
    with pytest.raises(StageError, match="SIGABRT"):  # a final model an earlier launch left is no proof
        run(publish=False)
