"""Training over several processes and nodes on CPU (gloo): DeepSpeed ZeRO-3 under torchrun, one node or two,
and FSDP2 through accelerate's plugin.

Two "nodes" are two launches on localhost: node rank 0 is `tempa run` (every stage, and machine
rank 0 of the training launch), node rank 1 is `tempa run --machine-rank 1`, which only joins the
training launch. The result must equal a 2-process single-node run of the same recipe, and so must
FSDP2's: the same steps on the same data and seed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sft_helpers import sft_recipe, tied_copy
from stage_helpers import another_run_holds
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import run_recipe
from tempa.sft.run_layout import DONE
from tempa.sft.train_plan import TrainOutcome

ZERO3 = "launcher: torchrun, num_processes: 2, deepspeed_config: zero3-cpu, use_cpu: true"
TWO_NODES = ZERO3 + ", num_machines: 2, main_process_ip: 127.0.0.1"
FSDP2 = "launcher: accelerate, accelerate_config: fsdp2, num_processes: 2, use_cpu: true"


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def files(run_dir: Path) -> set[str]:
    """The run's files, but the log of DeepSpeed's CPU op build: only the first launch on a machine writes one."""
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != "deepspeed_op_build.log"}


def two_steps(folder: Path, base_model: Path, launch: str, save_steps: int) -> Path:
    """A 2-step SFT run of ``base_model`` under ``launch``; its run directory."""
    recipe = sft_recipe(folder, base_model, max_steps=2, save_steps=save_steps, launch=f"launch: {{{launch}}}")
    run_recipe(load_recipe(recipe), folder / "run")
    return folder / "run"


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, tiny_model_dir) -> Path:
    """2 CPU processes on one node, DeepSpeed ZeRO-3, 2 optimizer steps."""
    return two_steps(tmp_path_factory.mktemp("zero3"), tiny_model_dir, ZERO3, save_steps=2)


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory, tiny_model_dir) -> Path:
    """2 CPU processes, the shipped fsdp2 config, the same 2 optimizer steps as ``zero3_run``; a checkpoint after each."""
    return two_steps(tmp_path_factory.mktemp("fsdp2"), tiny_model_dir, FSDP2, save_steps=1)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in b:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=0, atol=atol)


@pytest.mark.slow
def test_zero3_two_cpu_processes_save_a_full_trained_model(zero3_run, tiny_model_dir):
    """The gathered 16-bit save of ZeRO-3 shards is the whole model, trained."""
    from transformers import AutoModelForCausalLM

    final = zero3_run / "sft" / "final"
    zero3, start = weights(final), weights(tiny_model_dir)
    assert {k: v.shape for k, v in zero3.items()} == {k: v.shape for k, v in start.items()}
    assert any(not torch.equal(zero3[k].float(), start[k].float()) for k in start)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in start.values())
    log = (zero3_run / "sft" / "logs" / "train.log").read_text()
    assert "torch.distributed.run" in log and "--nproc_per_node=2" in log


@pytest.mark.slow
def test_two_nodes_on_localhost_equal_one_node_with_two_processes(zero3_run, tiny_model_dir, tmp_path):
    recipe = sft_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=2, launch=f"launch: {{{TWO_NODES}}}")
    run_dir = tmp_path / "run"
    env = {**os.environ, "TEMPA_CACHE": str(tmp_path / "node1-cache")}  # node 1's own disk
    # Node 1 starts first and waits for node 0's run to publish its training launch.
    node1 = subprocess.Popen([sys.executable, "-m", "tempa.recipes.cli", "run", str(recipe), "--run-dir",
                              str(run_dir), "--machine-rank", "1"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        run_recipe(load_recipe(recipe), run_dir)
        out, _ = node1.communicate(timeout=120)
    finally:
        node1.kill()
    assert node1.returncode == 0, out[-2000:]
    assert "joined 1 training launch(es)" in out
    assert_same_weights(weights(run_dir / "sft" / "final"), weights(zero3_run / "sft" / "final"), atol=1e-5)
    # rank 0 ran the launch as machine 0 of 2; node 1 wrote nothing in the run directory of its own
    # (only its training process's checkpoint shards, which a 2-process single-node run writes too)
    log = (run_dir / "sft" / "logs" / "train.log").read_text()
    assert "--nnodes=2" in log and "--node_rank=0" in log and "--nproc_per_node=1" in log
    assert files(run_dir) - {".launch.json"} == files(zero3_run)
    assert list((tmp_path / "node1-cache" / "join-logs").glob("*/launch-1.log"))


def test_a_node_other_than_rank_0_needs_a_multi_node_launch(tmp_path, tiny_model_dir):
    import logging

    from tempa.recipes.launcher import join_run
    from tempa.sft.stage_api import StageError

    one_node = load_recipe(sft_recipe(tmp_path, tiny_model_dir, launch=f"launch: {{{ZERO3}}}")).recipe.launch
    two = load_recipe(sft_recipe(tmp_path, tiny_model_dir, launch=f"launch: {{{TWO_NODES}}}")).recipe.launch
    log = logging.getLogger("tempa")
    with pytest.raises(StageError, match="only a multi-node launch has other nodes to join"):
        join_run(one_node, tmp_path / "run", 1, tmp_path / "logs", log=log)
    with pytest.raises(StageError, match=r"--machine-rank 2: expected 1\.\.1"):
        join_run(two, tmp_path / "run", 2, tmp_path / "logs", log=log)
    with pytest.raises(StageError, match="no `tempa run` held this run directory"):
        join_run(two, tmp_path / "run", 1, tmp_path / "logs", log=log, start_timeout_s=0.2, poll_s=0.05)


def test_a_node_whose_rank_0_run_ends_without_a_training_launch_exits_cleanly(tmp_path, tiny_model_dir, monkeypatch):
    """Node 0 resumed a run whose training stages were done (only evaluate/merge/bake left): node 1 saw that run
    hold the directory and end, and waited out its start timeout to fail the job (srun --kill-on-bad-exit)."""
    import logging
    import time

    from tempa.recipes import jit_ops
    from tempa.recipes.launcher import join_run

    # what is tested is how the node watches the run's lock: the op's up-front load (seconds, before the watch
    # starts) would outlast the short-lived run below
    monkeypatch.setattr(jit_ops, "ensure_shm_op", lambda log, log_file, **kwargs: None)
    two = load_recipe(sft_recipe(tmp_path, tiny_model_dir, launch=f"launch: {{{TWO_NODES}}}")).recipe.launch
    run_dir = tmp_path / "run"
    # held long enough that a loaded CI machine's join sees it before it ends (at 1 s it once did not)
    with another_run_holds(run_dir, for_s=4.0):
        started = time.monotonic()
        joined = join_run(two, run_dir, 1, tmp_path / "logs", log=logging.getLogger("tempa"), start_timeout_s=30,
                          poll_s=0.05)
        waited = time.monotonic() - started
    assert joined == 0 and waited < 15


def test_a_node_that_cannot_see_node_0s_cache_says_so_before_it_joins(tmp_path, tiny_model_dir, monkeypatch):
    """Node 1 with its own TEMPA_CACHE (what tempa-2nodes.sbatch allowed): its training process failed, after the
    rendezvous, with a FileNotFoundError of node 0's cache path, and node 0 with 'Connection closed by peer'."""
    import logging

    from tempa.recipes import launcher
    from tempa.sft.stage_api import StageError
    from tempa.sft.train_plan import TrainPlan

    two = load_recipe(sft_recipe(tmp_path, tiny_model_dir, launch=f"launch: {{{TWO_NODES}}}")).recipe.launch
    run_dir = tmp_path / "run"
    hidden = tmp_path / "node0-cache" / "sft-data" / "abc" / "train"  # on node 0's disk only
    plan = TrainPlan.standalone(tiny_model_dir, run_dir / "sft", {}, train_data=hidden).write(
        run_dir / "sft" / "train_plan.json")
    launched = []
    monkeypatch.setattr(launcher, "_stream", lambda cmd, *a: launched.append(cmd) or (1, []))
    with another_run_holds(run_dir):
        launcher.publish_request(two, "tempa.sft.train_worker", ["--plan", str(plan)], run_dir)
        with pytest.raises(StageError) as err:
            launcher.join_run(two, run_dir, 1, tmp_path / "logs", log=logging.getLogger("tempa"), start_timeout_s=30,
                              poll_s=0.05)
    message = str(err.value)
    assert "\n" not in message and f"{hidden} (the plan's train_data)" in message
    assert "TEMPA_CACHE" in message and launched == []


@pytest.mark.slow
@pytest.mark.parametrize("launch", [ZERO3, FSDP2], ids=["zero3", "fsdp2"])
def test_a_lora_stage_under_sharded_training_publishes_its_adapter_merged_into_the_start_model(
        launch, tmp_path, tiny_model_dir):
    """Under ZeRO-3 and FSDP2 every process holds a shard of each weight: merging the adapter in place failed after the
    last step ("size of tensor a (0) must match ...", "invalid python storage"), on every re-run too, so a LoRA stage
    never finished on the launch configs the large seed recipes use."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    stage = """
      - name: sft
        kind: sft
        data:
          sources:
            - {name: rows, path: rows.jsonl, thinking_mode: "off"}
        lora: {r: 4, lora_alpha: 8, lora_dropout: 0.0, target_modules: [q_proj, v_proj]}
        train: {max_steps: 2, learning_rate: 5.0e-2, per_device_train_batch_size: 4, max_length: 256, save_steps: 2}
    """
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(sft_recipe(tmp_path, tiny_model_dir, stages=stage, launch=f"launch: {{{launch}}}")), run_dir)
    stage_dir = run_dir / "sft"
    assert (stage_dir / DONE).is_file() and not (stage_dir / "final.adapter").exists()
    # the final model is the start model with the last checkpoint's adapter merged in, by peft on one process
    by_hand = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                        stage_dir / "checkpoints" / "checkpoint-2").merge_and_unload().state_dict()
    final, start = weights(stage_dir / "final"), weights(tiny_model_dir)
    assert final.keys() == start.keys()
    assert_same_weights(final, {key: by_hand[key] for key in final}, atol=0)
    assert sorted(key for key in final if not torch.equal(final[key], start[key])) == sorted(
        f"model.layers.{i}.self_attn.{name}.weight" for i in range(2) for name in ("q_proj", "v_proj"))


@pytest.mark.slow
def test_lora_embeddings_on_a_tied_base_train_under_zero3_and_are_refused_in_one_line_by_fsdp2(tmp_path, tiny_model_dir):
    """The docs' `modules_to_save: [embed_tokens, lm_head]` on a tied base (Gemma-2, Llama 3.2, small Qwen) crashed
    FSDP2's preparation with "KeyError: attribute 'weight' already exists"."""
    tied = tied_copy(tiny_model_dir, tmp_path / "tied")
    stage = """
      - name: sft
        kind: sft
        data:
          sources:
            - {name: rows, path: rows.jsonl, thinking_mode: "off"}
        lora: {r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj], modules_to_save: [embed_tokens, lm_head]}
        train: {max_steps: 2, learning_rate: 5.0e-2, per_device_train_batch_size: 4, max_length: 256, save_steps: 2}
    """
    from tempa.sft.stage_api import StageError

    run_dir = tmp_path / "run"
    with pytest.raises(StageError) as err:  # FSDP: said in one line, before a step
        run_recipe(load_recipe(sft_recipe(tmp_path, tied, stages=stage, launch=f"launch: {{{FSDP2}}}")), run_dir)
    assert "FSDP cannot shard a tied copy that trains; use launch.accelerate_config zero3" in str(err.value)
    # ZeRO-3 trains it, as one matrix named both ways
    run_dir = tmp_path / "run-zero3"
    run_recipe(load_recipe(sft_recipe(tmp_path, tied, stages=stage, launch=f"launch: {{{ZERO3}}}")), run_dir)
    final = run_dir / "sft" / "final"
    merged, start = weights(final), weights(tied)
    assert "lm_head.weight" not in merged and merged.keys() == start.keys()
    assert not torch.equal(merged["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    assert "trains once, as embed_tokens" in (run_dir / "sft" / "logs" / "train.log").read_text()


def test_a_node_runs_only_the_training_worker_on_a_plan_in_the_run_directory(tmp_path, tiny_model_dir, monkeypatch):
    """A node ran whatever module and arguments `.launch.json` named (`-m timeit "__import__('os').system(...)"`):
    anyone who could write the shared run directory had every node run a command of their choosing."""
    import logging
    import time

    from tempa.recipes import launcher
    from tempa.recipes.launcher import LaunchRequest, foreign_launch
    from tempa.sft.stage_api import StageError

    run_dir = tmp_path / "run"

    def request(module: str, args: list[str]) -> LaunchRequest:
        return LaunchRequest(seq=1, module=module, args=args, main_process_ip="127.0.0.1", main_process_port=29500,
                             host="node0", created_at=time.time())

    worker = "tempa.sft.train_worker"
    assert foreign_launch(request(worker, ["--plan", str(run_dir / "sft" / "train_plan.json")]), run_dir) is None
    for module, args in [("timeit", ["-n1", "__import__('os').system('id')"]),
                         (worker, ["--plan", str(tmp_path / "elsewhere" / "train_plan.json")]),
                         (worker, ["--plan", str(run_dir / "sft" / ".." / ".." / "x.json")]),
                         (worker, ["--plan", str(run_dir / "sft" / "train_plan.json"), "--extra"])]:
        assert "which a tempa run never does" in foreign_launch(request(module, args), run_dir), (module, args)

    two = load_recipe(sft_recipe(tmp_path, tiny_model_dir, launch=f"launch: {{{TWO_NODES}}}")).recipe.launch
    launched = []
    monkeypatch.setattr(launcher, "_stream", lambda cmd, *a: launched.append(cmd) or (1, []))
    with another_run_holds(run_dir):
        launcher.publish_request(two, "timeit", ["-n1", "pass"], run_dir)
        with pytest.raises(StageError) as err:
            launcher.join_run(two, run_dir, 1, tmp_path / "logs", log=logging.getLogger("tempa"), start_timeout_s=30,
                              poll_s=0.05)
    assert "asks to launch `timeit -n1 pass`" in str(err.value) and launched == []


def test_a_node_whose_launch_differs_from_node_0s_is_refused(tmp_path, tiny_model_dir, monkeypatch):
    """Node 1 ran with `--set launch.num_processes=4`: torchrun took 1 process on node 0 and 2 on node 1 and trained
    on 3 ranks, a global batch, schedule and ZeRO sharding nobody planned, and both nodes said `run complete`."""
    import logging

    from tempa.recipes import launcher
    from tempa.sft.stage_api import StageError

    recipe = sft_recipe(tmp_path, tiny_model_dir, launch=f"launch: {{{TWO_NODES}}}")
    node0, node1 = load_recipe(recipe).recipe.launch, load_recipe(recipe, ["launch.num_processes=4"]).recipe.launch
    run_dir = tmp_path / "run"
    plan = run_dir / "sft" / "train_plan.json"
    launched = []
    monkeypatch.setattr(launcher, "_stream", lambda cmd, *a: launched.append(cmd) or (1, []))
    with another_run_holds(run_dir):
        launcher.publish_request(node0, "tempa.sft.train_worker", ["--plan", str(plan)], run_dir)
        with pytest.raises(StageError) as err:
            launcher.join_run(node1, run_dir, 1, tmp_path / "logs", log=logging.getLogger("tempa"),
                              start_timeout_s=30, poll_s=0.05)
    message = str(err.value)
    assert "its launch settings differ from node rank 0's" in message and launched == []
    assert "num_processes 2 there, 4 here" in message and "\n" not in message
    # the address node 0 listens on is its own: no difference
    node1_same = load_recipe(recipe, ["launch.main_process_port=29999"]).recipe.launch
    request = launcher.read_request(run_dir)
    assert launcher.shape_mismatch(request, node1_same) is None
    # a config file is compared by what it says: a copy at another path is the same launch, and the same path
    # saying another process count is not
    ds = json.loads((Path(launcher.__file__).parent / "deepspeed" / "zero3-cpu.json").read_text())
    for name, config in (("a", ds), ("b", ds), ("c", {**ds, "train_micro_batch_size_per_gpu": 7})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ds.json").write_text(json.dumps(config))
    shaped = {name: load_recipe(recipe, [f"launch.deepspeed_config={tmp_path / name / 'ds.json'}"]).recipe.launch
              for name in "abc"}
    ours = launcher.LaunchRequest(**{**request.model_dump(), "launch": launcher.launch_shape(shaped["a"])})
    assert launcher.shape_mismatch(ours, shaped["b"]) is None
    assert "deepspeed_config 'a file with content sha256:" in launcher.shape_mismatch(ours, shaped["c"])


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_shards_and_saves_the_zero3_weights(fsdp2_run, zero3_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    final = fsdp2_run / "sft" / "final"
    # the full state dict, gathered to rank 0 and saved as safetensors that transformers loads
    assert sorted(p.name for p in final.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(final.glob("*.bin")) and not list(final.glob("*.pt"))
    fsdp2, start = weights(final), weights(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in start.values())
    assert any(not torch.equal(fsdp2[k], start[k]) for k in start)
    # the same two steps as ZeRO-3 on the same rows and seed (fp32 on CPU; they differ by float rounding only)
    assert_same_weights(fsdp2, weights(zero3_run / "sft" / "final"), atol=1e-5)
    # each process held only its own shard of every parameter while it trained (the worker's own count)
    shards = TrainOutcome.read(final).shards
    assert shards is not None and shards.distributed_type == "FSDP" and len(shards.per_rank) == 2
    assert shards.parameters == sum(v.numel() for v in start.values())
    assert sum(shards.per_rank) == shards.parameters and max(shards.per_rank) < shards.parameters
    zero3 = TrainOutcome.read(zero3_run / "sft" / "final").shards
    assert zero3 is not None and zero3.distributed_type == "DEEPSPEED" and max(zero3.per_rank) < zero3.parameters
    log = (fsdp2_run / "sft" / "logs" / "train.log").read_text()
    assert "accelerate.commands.launch" in log and "--num_processes 2" in log and " --cpu " not in log


@pytest.mark.slow
def test_fsdp2_resumes_from_its_checkpoint_to_the_same_weights(fsdp2_run, tmp_path):
    """A run stopped right after checkpoint-1 (what a kill then leaves) finishes from it, as if never stopped."""
    run_dir = tmp_path / "run"
    shutil.copytree(fsdp2_run, run_dir)
    sft = run_dir / "sft"
    for later in (sft / "final", sft / "checkpoints" / "checkpoint-2", run_dir / "bake", run_dir / "final"):
        shutil.rmtree(later)
    (sft / DONE).unlink()
    assert (sft / "checkpoints" / "checkpoint-1" / "COMPLETE").is_file()
    run_recipe(load_recipe(fsdp2_run.parent / "sft.yaml"), run_dir)
    outcome = TrainOutcome.read(sft / "final")
    assert outcome.resumed_from is not None and Path(outcome.resumed_from).name == "checkpoint-1"
    assert outcome.global_step == 2 and outcome.shards is not None and outcome.shards.distributed_type == "FSDP"
    assert_same_weights(weights(sft / "final"), weights(fsdp2_run / "sft" / "final"), atol=1e-6)


def test_joining_nodes_keep_each_runs_logs_apart(tmp_path, monkeypatch):
    """Two run folders of one recipe appended to one $TEMPA_CACHE/join-logs/<recipe>-rank1/launch-1.log."""
    from tempa.recipes.launcher import join_log_dir

    monkeypatch.setenv("TEMPA_CACHE", str(tmp_path / "cache"))
    one, two = join_log_dir(tmp_path / "runs" / "a", "sft-test", 1), join_log_dir(tmp_path / "runs" / "b", "sft-test", 1)
    assert one != two and one.parent == two.parent == tmp_path / "cache" / "join-logs"
    assert one.name.startswith("sft-test-") and one.name.endswith("-rank1")
    assert join_log_dir(tmp_path / "runs" / "a" / ".." / "a", "sft-test", 1) == one  # the same run, however written
    assert join_log_dir(tmp_path / "runs" / "a", "sft-test", 2) != one
