"""Training over several processes and nodes on CPU (gloo): DeepSpeed ZeRO-3 under torchrun, one node or two.

Two "nodes" are two launches on localhost: node rank 0 is `tempa run` (every stage, and machine
rank 0 of the training launch), node rank 1 is `tempa run --machine-rank 1`, which only joins the
training launch. The result must equal a 2-process single-node run of the same recipe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sft_helpers import sft_recipe
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import run_recipe

ZERO3 = "launcher: torchrun, num_processes: 2, deepspeed_config: zero3-cpu, use_cpu: true"
TWO_NODES = ZERO3 + ", num_machines: 2, main_process_ip: 127.0.0.1"


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, tiny_model_dir) -> Path:
    """2 CPU processes on one node, DeepSpeed ZeRO-3, 2 optimizer steps."""
    folder = tmp_path_factory.mktemp("zero3")
    recipe = sft_recipe(folder, tiny_model_dir, max_steps=2, save_steps=2, launch=f"launch: {{{ZERO3}}}")
    run_recipe(load_recipe(recipe), folder / "run")
    return folder / "run"


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
    two_nodes, one_node = weights(run_dir / "sft" / "final"), weights(zero3_run / "sft" / "final")
    assert two_nodes.keys() == one_node.keys()
    for key in one_node:
        torch.testing.assert_close(two_nodes[key].float(), one_node[key].float(), rtol=0, atol=1e-5)
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
