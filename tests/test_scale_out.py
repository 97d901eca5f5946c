"""Scaling out without surprises: the run lock on shared storage, hardware specs, engines, global batch, long context."""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stage_helpers import another_run_holds
from tempa.recipes.errors import RecipeError
from tempa.recipes.estimate import GIB, estimate_recipe, parse_hardware, render_estimate, resolve_shape
from tempa.recipes.loader import load_recipe
from tempa.recipes.rundir import LOCK_OWNER, RunLock, RunLockedError, lock_owner, run_in_progress

HUB_70B = "aisingapore/Llama-SEA-LION-v3-70B"


# --------------------------------------------------------------------------- the run lock


def owner_record(run_dir: Path, host: str, pid: int, age_s: float = 0.0) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_OWNER
    path.write_text(json.dumps({"host": host, "pid": pid, "token": f"{host}-{pid}", "started_at": time.time()}))
    if age_s:
        os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_an_orchestrator_on_another_host_is_refused_even_where_flock_is_node_local(tmp_path):
    """Lustre's localflock or NFS mounted nolock: flock never sees the other node; the owner record does."""
    run_dir = tmp_path / "run"
    owner_record(run_dir, "node-b", 4242)  # a live holder on another host (fresh heartbeat)
    with pytest.raises(RunLockedError, match="in use by pid 4242 on node-b"):
        RunLock(run_dir).__enter__()
    assert run_in_progress(run_dir) and lock_owner(run_dir).host == "node-b"


def test_a_silent_holder_on_another_host_is_taken_over_after_its_lease(tmp_path):
    run_dir = tmp_path / "run"
    owner_record(run_dir, "node-b", 4242, age_s=3600)  # heartbeat an hour old
    assert not run_in_progress(run_dir)
    with RunLock(run_dir):
        assert lock_owner(run_dir).host == socket.gethostname() and lock_owner(run_dir).pid == os.getpid()
    assert not (run_dir / LOCK_OWNER).exists()  # released: the record goes with the holder


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    run_dir = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner_record(run_dir, socket.gethostname(), int(dead.stdout))
    with RunLock(run_dir):
        assert lock_owner(run_dir).pid == os.getpid()


def test_a_second_orchestrator_process_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    with another_run_holds(run_dir) as holder:
        holder_is_named = f"in use by pid {holder.pid} on {re.escape(socket.gethostname())}"
        with pytest.raises(RunLockedError, match=holder_is_named):
            RunLock(run_dir).__enter__()
    with RunLock(run_dir):  # its flock died with it, and its record is stale: the next run goes through
        pass


def test_without_flock_the_owner_record_still_refuses_a_second_orchestrator(tmp_path, monkeypatch):
    """A file system without flock (Lustre mounted without -o flock answers ENOSYS)."""
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    run_dir = tmp_path / "run"
    monkeypatch.setattr(fcntl, "flock", no_flock)
    with RunLock(run_dir):
        record = json.loads((run_dir / LOCK_OWNER).read_text())
        assert record["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match="in use by pid"):
            RunLock(run_dir).__enter__()


def test_the_heartbeat_keeps_the_record_fresh(tmp_path, monkeypatch):
    import tempa.recipes.rundir as rundir

    monkeypatch.setattr(rundir, "LEASE_S", 0.4)  # beats every 0.1 s
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        path = run_dir / LOCK_OWNER
        os.utime(path, (0, 0))
        time.sleep(0.5)
        assert path.stat().st_mtime > 1e9


# --------------------------------------------------------------------------- hardware and the plan


def test_nodes_x_gpus_per_node_and_host_ram():
    two = parse_hardware("2x8xH100")
    assert (two.nodes, two.gpus_per_node, two.gpus, two.label) == (2, 8, 16, "2x8xH100")
    assert parse_hardware("16xH100") == two  # whole 8-GPU nodes
    assert parse_hardware("2x4xH200").gpus == 8 and parse_hardware("2x4xH200").nodes == 2
    assert parse_hardware("8xH100@1TiB").node_ram_gib == 1024
    assert parse_hardware("8xH100@1TB").node_ram_gib == pytest.approx(1e12 / GIB)
    assert parse_hardware("8xH100").node_ram_gib == 2048  # a DGX H100
    with pytest.raises(RecipeError, match=r"12 GPUs do not fill 8-GPU nodes; say NODESxGPUSxGPU, e\.g\. 2x6xH100"):
        parse_hardware("12xH100")
    with pytest.raises(RecipeError, match="at least 1"):
        parse_hardware("2x0xH100")


def test_70b_offload_host_ram_matches_deepspeeds_estimator_and_is_part_of_fits():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold

    loaded = load_recipe("sea-lion-v3-70b-it")
    shape, _ = resolve_shape(loaded.recipe.base_model)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        estimate_zero3_model_states_mem_needs_all_cold(total_params=shape.parameters,
                                                       largest_layer_params=shape.largest_layer_parameters,
                                                       num_gpus_per_node=8, num_nodes=1)
    line = next(x for x in printed.getvalue().splitlines()
                if "offload_param=none" in x and "offload_optimizer=none" not in x and "zero_init=1" in x)
    cpu_gib, gpu_gib = (float(v) for v in re.findall(r"([\d.]+)GB", line)[:2])
    one_node = estimate_recipe(loaded, "8xH100")[0]
    assert one_node.memory.host == pytest.approx(cpu_gib, rel=0.01)
    assert one_node.memory.params + one_node.memory.gathered == pytest.approx(gpu_gib, rel=0.01)
    # the recipe comment's figure is DeepSpeed's (not the raw 1.1 TB of states)
    comment = (Path(__file__).parent.parent / "recipes" / "accelerate" / "zero3-offload.yaml").read_text()
    assert f"~{cpu_gib:,.0f} GiB" in comment
    assert one_node.fits  # a DGX H100's 2 TiB holds it
    small = estimate_recipe(loaded, "8xH100@1TiB")[0]
    assert small.memory.gpu_fits and not small.fits
    assert "needs ~1577 GiB of host RAM per node of 1024 GiB" in small.warnings[0]
    two_nodes = estimate_recipe(loaded, "2x8xH100@1TiB")[0]  # each node holds half the offloaded states
    assert two_nodes.memory.host == pytest.approx(one_node.memory.host / 2) and two_nodes.fits


def test_2x8xh100_plan_prints_nodes_host_ram_global_batch_and_hours_for_each_seed_recipe():
    for name in ("sea-lion-v3-70b-it", "sea-lion-v3.5-8b-r", "swallow-8b-instruct-v0.3"):
        loaded = load_recipe(name)
        text = render_estimate(loaded, "2x8xH100")
        assert text.startswith("estimate for 2x8xH100 (2 node(s) x 8 GPUs"), name
        assert "host/node" in text and "batch" in text and "hours" in text, name
        one, two = estimate_recipe(loaded, "8xH100"), estimate_recipe(loaded, "2x8xH100")
        for a, b in zip(one, two, strict=True):
            assert b.global_batch == 2 * a.global_batch  # twice the GPUs, same accumulation
            assert b.hours == pytest.approx(a.hours / 2)
            assert any("changes the global batch" in w for w in b.warnings)


def test_a_plan_for_more_nodes_than_the_recipe_launches_says_what_to_set():
    """`plan --hardware 2x8xH100` of a one-node recipe counted 16 GPUs, and its only advice was the global batch:
    the run, as written, never trains on the second node (`--machine-rank 1` is refused)."""
    loaded = load_recipe("sea-lion-v3-70b-it")
    note = "note: the recipe's launch starts 8 processes on 1 machine; to train on 2x8xH100 set launch.num_processes: " \
           "16 and launch.num_machines: 2"
    assert note in render_estimate(loaded, "2x8xH100")
    assert "note: the recipe's launch" not in render_estimate(loaded, "8xH100")
    two = load_recipe("sea-lion-v3-70b-it", ["launch.num_machines=2", "launch.num_processes=16",
                                             "launch.accelerate_config=zero3-multinode"])
    assert "note: the recipe's launch" not in render_estimate(two, "2x8xH100")
    # the demo's `single` config starts one process however many num_processes says: that is said too
    demo = render_estimate(load_recipe("demo"), "8xH100")
    assert ("to train on 8xH100 set launch.num_processes: 8; launch.accelerate_config single starts one process: set "
            "zero3 (or ddp, fsdp2)") in demo


def test_global_batch_size_keeps_the_batch_on_any_hardware(tmp_path):
    loaded = load_recipe("sea-lion-v3-70b-it", ["launch.global_batch_size=128"])
    for hardware, accumulation in (("8xH100", 16), ("2x8xH100", 8), ("4x8xH100", 4)):
        for e in estimate_recipe(loaded, hardware):
            assert (e.global_batch, e.accumulation) == (128, accumulation)
            assert not any("changes the global batch" in w for w in e.warnings)
    # one its launch's 8 processes make, and 16 GPUs cannot (a batch the launch cannot make is refused at load)
    odd = estimate_recipe(load_recipe("sea-lion-v3-70b-it", ["launch.global_batch_size=24"]), "2x8xH100")[0]
    assert "launch.global_batch_size 24 is not a multiple of per_device_train_batch_size 1 x 16" in odd.warnings[0]


def test_the_worker_sets_gradient_accumulation_from_the_global_batch(tmp_path):
    from tempa.sft.stage_api import TrainingEnv
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import parallel_kwargs

    plan = TrainPlan.standalone(tmp_path, tmp_path, {"per_device_train_batch_size": 2},
                                env=TrainingEnv(use_cpu=True, global_batch_size=32))
    assert parallel_kwargs(plan, world_size=8) == {"gradient_accumulation_steps": 2}
    assert parallel_kwargs(plan, world_size=16) == {"gradient_accumulation_steps": 1}
    with pytest.raises(ValueError, match="not a multiple of per_device_train_batch_size 2 x 32"):
        parallel_kwargs(plan, world_size=32)
    assert parallel_kwargs(TrainPlan.standalone(tmp_path, tmp_path, {}), world_size=8) == {}


@pytest.mark.parametrize(("launched", "multiple"), [({"PARALLELISM_CONFIG_SP_SIZE": "4"}, 4),
                                                   ({"PARALLELISM_CONFIG_CP_SIZE": "2"}, 4), ({}, None)])
def test_sft_batches_are_padded_to_what_sequence_parallelism_splits(tmp_path, monkeypatch, launched, multiple):
    """DeepSpeed's Ulysses refuses a batch whose length the sp ranks do not divide ("isn't divisible by sp-size");
    torch context parallelism cuts it into 2 x cp chunks. A recipe's own pad_to_multiple_of stands."""
    from tempa.sft.stage_api import TrainingEnv
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import parallel_kwargs

    for key, value in launched.items():
        monkeypatch.setenv(key, value)
    sequence = TrainingEnv(sequence_parallel=int(next(iter(launched.values()), 1)))
    sft = TrainPlan.standalone(tmp_path, tmp_path, {}, env=sequence)
    assert parallel_kwargs(sft, world_size=8).get("pad_to_multiple_of") == multiple
    own = TrainPlan.standalone(tmp_path, tmp_path, {"pad_to_multiple_of": 16}, env=sequence)
    assert "pad_to_multiple_of" not in parallel_kwargs(own, world_size=8)


def test_fsdp2_memory_and_its_offload_variant():
    base = load_recipe("sea-lion-v3.5-8b-r")
    zero3 = estimate_recipe(load_recipe("sea-lion-v3.5-8b-r", ["launch.accelerate_config=zero3"]), "8xH100")[0]
    fsdp2 = estimate_recipe(load_recipe("sea-lion-v3.5-8b-r", ["launch.accelerate_config=fsdp2"]), "8xH100")[0]
    offload = estimate_recipe(load_recipe("sea-lion-v3.5-8b-r", ["launch.accelerate_config=fsdp2-offload"]),
                              "8xH100")[0]
    shape, _ = resolve_shape(base.recipe.base_model)
    n = shape.parameters
    assert fsdp2.memory.params * GIB == pytest.approx(4 * n / 8)  # fp32 shards: no separate bf16 copy
    assert zero3.memory.params * GIB == pytest.approx(6 * n / 8)
    assert fsdp2.memory.optimizer == zero3.memory.optimizer and fsdp2.memory.grads == zero3.memory.grads
    assert offload.memory.params == offload.memory.optimizer == offload.memory.grads == 0
    assert offload.memory.host * GIB == pytest.approx(16 * n * 1.5)
    text = render_estimate(load_recipe("sea-lion-v3.5-8b-r", ["launch.accelerate_config=fsdp2-offload"]), "8xH100")
    assert "FSDP2 (offload: optimizer + parameters to CPU)" in text


def test_long_context_activation_table_and_sequence_parallel(tmp_path):
    loaded = load_recipe("sea-lion-v3.5-8b-r")
    text = render_estimate(loaded, "8xH100")
    table = text[text.index("long context:"):text.index("tokens:")]
    rows = {line.split()[0]: line.split() for line in table.splitlines() if re.match(r"\d+k ", line)}
    assert list(rows) == ["32k", "64k", "128k"]
    # activations scale with the tokens one GPU holds: SP=8 holds an eighth of the sequence
    act1 = [float(rows[k][1]) for k in rows]
    act8 = [float(rows[k][5]) for k in rows]
    assert act1[2] > 1.8 * act1[1] > 1.8 * 1.8 * act1[0]  # ~linear in the sequence length
    assert all(b < a for a, b in zip(act1, act8, strict=True)) and act8[2] < act1[2] / 4
    for row in rows.values():  # "fits" says whether the total stays in 90% of the 80 GB
        assert row[4] == ("yes" if float(row[2]) <= 0.9 * 79.6 else "NO") and row[8] == "yes"
    small = render_estimate(loaded, "8xA100-40GB")
    rows = {line.split()[0]: line.split() for line in small[small.index("long context:"):].splitlines()
            if re.match(r"\d+k ", line)}
    assert rows["128k"][4] == "NO" and rows["128k"][8] == "yes"  # 128k needs sequence parallelism on 40 GB
    assert int(rows["128k"][9]) > 1 and rows["32k"][9] == "1"
    sp = estimate_recipe(load_recipe("sea-lion-v3.5-8b-r", ["launch.sequence_parallel=4"]), "8xH100")[0]
    plain = estimate_recipe(loaded, "8xH100")[0]
    assert sp.micro_batch_tokens == plain.micro_batch_tokens // 4
    assert sp.global_batch == plain.global_batch // 4  # 4 GPUs per sequence: a quarter of the data-parallel ranks


@pytest.mark.parametrize(("launch", "message"), [
    ("{accelerate_config: fsdp1.yaml, use_cpu: true}", "launch.use_cpu: FSDP1 needs GPUs"),
    ("{accelerate_config: fsdp2-offload, use_cpu: true}", "launch.use_cpu: fsdp2-offload.yaml offloads parameters"),
    ("{accelerate_config: ddp, sequence_parallel: 2}", "needs accelerate with a DeepSpeed ZeRO-3 config"),
    ("{accelerate_config: zero3, num_processes: 6, sequence_parallel: 4}", "must divide the 6 processes"),
    ("{accelerate_config: fsdp2, sequence_parallel: 2, use_cpu: true}", "sequence/context parallelism needs GPUs"),
    ("{launcher: torchrun, deepspeed_config: zero3, sequence_parallel: 2}", "needs accelerate"),
    # accelerate's --cpu runs one process for these: the run trained alone, silently (Thai trial)
    ("{accelerate_config: ddp, num_processes: 2, use_cpu: true}", "launch.use_cpu: accelerate starts one CPU process "
     "for ddp.yaml, not 2 (several need MPI); for 2 CPU processes use launcher: torchrun"),
    ("{accelerate_config: zero3, use_cpu: true}", "accelerate starts one CPU process for zero3.yaml, not 8"),
])
def test_launch_settings_that_cannot_work_are_refused_up_front(tmp_path, launch, message):
    path = tmp_path / "r.yaml"
    (tmp_path / "fsdp1.yaml").write_text("distributed_type: FSDP\nfsdp_config: {fsdp_version: 1}\n")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                                  {"role": "assistant", "content": "a"}]}) + "\n")
    path.write_text(f"name: r\nbase_model: {HUB_70B}\nlaunch: {launch}\nstages:\n  - name: s\n    kind: sft\n"
                    "    data: {sources: [{name: r, path: rows.jsonl}]}\n")
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(path)


def test_a_sequence_parallel_size_ulysses_refuses_stops_the_run_and_the_plan_before_the_first_stage(tmp_path, capsys):
    """DeepSpeed refuses it once the first training launch is up, on every GPU; the base model's config says it now.
    The tiny model has 4 attention heads and 2 KV heads: 8 divides neither, 4 and 2 fit (ulysses_sp.py's rules)."""
    from tempa.recipes.cli import main
    from tempa.recipes.runner import run_recipe
    from tempa.sft.stage_api import StageError

    (tmp_path / "rows.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                                  {"role": "assistant", "content": "a"}]}) + "\n")
    path = tmp_path / "r.yaml"
    for size in (8, 4):
        path.write_text(f"name: r\nbase_model: tempa:tiny\nlaunch: {{accelerate_config: zero3, sequence_parallel: "
                        f"{size}}}\nstages:\n  - {{name: s, kind: sft, data: {{sources: [{{name: r, path: rows.jsonl}}]}}}}\n")
        if size == 8:
            message = ("launch.sequence_parallel: 8: DeepSpeed Ulysses needs it to divide the model's 4 attention heads "
                       "(tempa:tiny); `tempa plan --hardware` lists the sizes that fit")
            with pytest.raises(StageError) as info:
                run_recipe(load_recipe(path), tmp_path / "run")
            assert str(info.value) == message and not (tmp_path / "run" / "s").exists()
            assert main(["plan", str(path), "--run-dir", str(tmp_path / "run")]) == 1
            assert message in capsys.readouterr().err
        else:
            assert main(["plan", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    # trl's GRPOConfig / RLOOConfig refuse any sequence-dim parallelism
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "2+2?"}) + "\n")
    path.write_text(path.read_text() + "  - {name: rl, kind: rl, prompts: {path: p.jsonl}, rewards: [{type: format}]}\n")
    assert main(["plan", str(path), "--run-dir", str(tmp_path / "run")]) == 1
    assert ("launch.sequence_parallel: 4: trl's preference and RL trainers train without sequence parallelism "
            "(stage 'rl', rl)") in capsys.readouterr().err
    path.write_text(path.read_text().replace("{name: rl, kind: rl,", "{name: dpo, kind: preference,"))
    assert main(["plan", str(path), "--run-dir", str(tmp_path / "run")]) == 1
    assert "(stage 'dpo', preference)" in capsys.readouterr().err


@pytest.mark.parametrize(("config", "expected"), [
    ("zero3", {"SP_SIZE": "4", "SP_BACKEND": "deepspeed", "SP_SEQ_LENGTH_IS_VARIABLE": "True", "CP_SIZE": "1"}),
    ("fsdp2", {"CP_SIZE": "4", "DP_SHARD_SIZE": "2", "SP_SIZE": "1"}),  # 8 processes in fsdp2.yaml
])
def test_sequence_parallel_reaches_the_training_processes_through_accelerates_own_launcher(
        config, expected, tmp_path, monkeypatch):
    """accelerate 1.15 refuses --use_parallelism_config on the command line (without --use_fsdp flags) and resets
    it from the config file: the launch's config file carries the parallelism, and accelerate's launcher turns it
    into the environment each training process builds its ParallelismConfig from."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    from tempa.recipes.launcher import launch_command
    from tempa.recipes.schema import LaunchConfig

    monkeypatch.setenv("TEMPA_CACHE", str(tmp_path))
    launch = LaunchConfig(accelerate_config=config, sequence_parallel=4)
    cmd = launch_command(launch, "tempa.sft.train_worker", ["--plan", "p.json"], port=29555)
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[3:]))
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as its launch_command sets
    env = prepare_deepspeed_cmd_env(args)[1] if config == "zero3" else prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_PARALLELISM_CONFIG"] == "true"
    assert {key: env["PARALLELISM_CONFIG_" + key] for key in expected} == expected
    again = launch_command(launch, "tempa.sft.train_worker", ["--plan", "p.json"], port=29555)
    assert again == cmd and len(list((tmp_path / "accelerate").iterdir())) == 1  # one copy per config and size
    assert "--config_file" in cmd and str(tmp_path) not in " ".join(launch_command(
        LaunchConfig(accelerate_config=config), "m", []))  # no parallelism: the recipe's config as it is


def test_sequence_parallel_and_multi_node_launch_commands(tmp_path):
    from tempa.recipes.launcher import launch_command
    from tempa.recipes.schema import LaunchConfig

    node1 = launch_command(LaunchConfig(accelerate_config="zero3", num_processes=16, num_machines=2), "m", [],
                           port=29500, machine_rank=1, main_process_ip="10.0.0.1")
    flags = dict(itertools.pairwise(node1))
    assert (flags["--num_processes"], flags["--num_machines"], flags["--machine_rank"], flags["--main_process_ip"],
            flags["--main_process_port"]) == ("16", "2", "1", "10.0.0.1", "29500")
    torchrun = launch_command(LaunchConfig(launcher="torchrun", num_processes=16, num_machines=2), "m", [],
                              port=29500, machine_rank=1, main_process_ip="10.0.0.1")
    assert "--nproc_per_node=8" in torchrun and "--node_rank=1" in torchrun and "--nnodes=2" in torchrun


def test_fsdp_on_a_machine_without_cuda_is_refused_before_launching(tmp_path):
    """Without use_cpu, accelerate (1.15) on a machine without GPUs would start plain processes, each training alone."""
    import logging

    import torch

    from tempa.recipes.launcher import run_launch
    from tempa.recipes.schema import LaunchConfig
    from tempa.sft.stage_api import StageError

    assert not torch.cuda.is_available()
    with pytest.raises(StageError, match="FSDP needs CUDA GPUs and this machine has none"):
        run_launch(LaunchConfig(accelerate_config="fsdp2", num_processes=2), "tempa.sft.train_worker", [],
                   tmp_path / "logs" / "train.log", log=logging.getLogger("tempa"))
    assert not (tmp_path / "logs" / "launch.sh").exists()


def test_a_config_file_for_two_machines_needs_num_machines_2(tmp_path):
    from pydantic import ValidationError

    from tempa.recipes.schema import LaunchConfig

    with pytest.raises(ValidationError, match=r"launch\.num_machines: 1, but zero3-multinode\.yaml says num_machines: 2"):
        LaunchConfig(accelerate_config="zero3-multinode")
    assert LaunchConfig(accelerate_config="zero3-multinode", num_machines=2).engine().zero_stage == 3
    with pytest.raises(ValidationError, match=r"num_processes: 3 .* not a multiple of launch\.num_machines: 2"):
        LaunchConfig(launcher="torchrun", num_processes=3, num_machines=2)
    # Without num_processes a multi-node launch ran fewer processes than the nodes have GPUs: torchrun one per node,
    # accelerate the per-node config's 8 spread over both nodes (4 each), while `tempa plan` counted 16.
    for launch in ({"launcher": "torchrun"}, {"accelerate_config": "zero3"}):
        with pytest.raises(ValidationError, match=r"launch\.num_processes: required when num_machines is 2 "
                                                  r"\(every machine's processes together, e\.g\. 16 for two nodes of 8 GPUs\)"):
            LaunchConfig(num_machines=2, **launch)
    # a config written for the two machines says how many processes they run
    assert LaunchConfig(accelerate_config="zero3-multinode", num_machines=2).num_processes is None


@pytest.mark.parametrize(("config", "offload"), [("fsdp2", False), ("fsdp2-offload", True)])
def test_the_shipped_fsdp2_configs_become_accelerates_fsdp2_plugin(config, offload, monkeypatch):
    """accelerate's own launcher reads tempa's command and config into its FSDP2 plugin (full state dict on
    save, CPU offload for the offload variant). On CPU (use_cpu) the command starts the same FSDP processes,
    in fp32, rather than accelerate's --cpu single process (training: tests/test_distributed.py)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import CPUOffloadPolicy

    from tempa.recipes.launcher import launch_command
    from tempa.recipes.schema import LaunchConfig

    cmd = launch_command(LaunchConfig(accelerate_config=config, num_processes=2), "tempa.sft.train_worker",
                         ["--plan", "p.json"], port=29555)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[3:]))
    assert args.use_fsdp and args.num_processes == 2 and not args.cpu
    for key, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert isinstance(plugin.cpu_offload, CPUOffloadPolicy) is offload


def test_fsdp2_on_cpu_launches_fsdp_processes_in_fp32():
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from tempa.recipes.launcher import launch_command
    from tempa.recipes.schema import LaunchConfig

    cmd = launch_command(LaunchConfig(accelerate_config="fsdp2", num_processes=2, use_cpu=True), "m", [], port=29555)
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[3:]))
    assert args.use_fsdp and args.num_processes == 2 and not args.cpu and args.mixed_precision == "no"
    bf16 = launch_command(LaunchConfig(accelerate_config="fsdp2", use_cpu=True, mixed_precision="bf16"), "m", [])
    assert bf16.count("--mixed_precision") == 1 and bf16[bf16.index("--mixed_precision") + 1] == "bf16"
    assert "--cpu" in launch_command(LaunchConfig(accelerate_config="zero3", num_processes=1, use_cpu=True), "m", [])


def test_one_training_process_sees_one_gpu_unless_the_user_names_them(monkeypatch):
    """transformers' Trainer wraps the model in nn.DataParallel when one process sees several GPUs, and every trl
    trainer refuses that: a one-process launch on a multi-GPU node trains on the first GPU."""
    from tempa.recipes.launcher import _launch_env
    from tempa.recipes.schema import LaunchConfig

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _launch_env(LaunchConfig())["CUDA_VISIBLE_DEVICES"] == "0"  # the `single` config
    assert _launch_env(LaunchConfig(accelerate_config="zero3", num_processes=1))["CUDA_VISIBLE_DEVICES"] == "0"
    for several in (LaunchConfig(accelerate_config="zero3"), LaunchConfig(accelerate_config="fsdp2"),
                    LaunchConfig(accelerate_config="zero3", num_processes=2), LaunchConfig(use_cpu=True)):
        assert "CUDA_VISIBLE_DEVICES" not in _launch_env(several), several
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # the user's choice stands (a device_map over two GPUs, say)
    assert _launch_env(LaunchConfig())["CUDA_VISIBLE_DEVICES"] == "3,5"


def test_training_processes_send_no_telemetry_unless_the_user_says(monkeypatch):
    """trl's trainers looked up huggingface.co from every training process (its telemetry), for a recipe that never
    names the hub: a regulated site saw traffic it had not asked for."""
    from tempa.recipes.launcher import _launch_env
    from tempa.recipes.schema import LaunchConfig

    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)
    assert _launch_env(LaunchConfig())["HF_HUB_DISABLE_TELEMETRY"] == "1"
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "0")
    assert _launch_env(LaunchConfig())["HF_HUB_DISABLE_TELEMETRY"] == "0"


@pytest.mark.parametrize(("config", "offload"), [("zero3", "none"), ("zero3-offload", "cpu")])
def test_the_shipped_zero3_configs_become_the_deepspeed_config_the_trainer_runs(config, offload, monkeypatch):
    """accelerate's launcher reads tempa's command and config into its DeepSpeed plugin, and transformers fills the
    'auto' values from the training arguments: ZeRO-3, the 16-bit model gathered on save (a loadable final
    model), bf16, trl's max_grad_norm as DeepSpeed's clipping, the micro-batch per GPU (training:
    tests/test_distributed.py runs the shipped JSON under torchrun)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from tempa.recipes.launcher import launch_command
    from tempa.recipes.schema import LaunchConfig

    cmd = launch_command(LaunchConfig(accelerate_config=config, mixed_precision="bf16"), "tempa.sft.train_worker",
                         ["--plan", "p.json"], port=29555)
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[3:]))
    assert args.use_deepspeed and args.num_processes == 8 and args.mixed_precision == "bf16"
    args.deepspeed_fields_from_accelerate_config = []  # what accelerate's launch_command sets before this call
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(args.mixed_precision)
    filled = HfTrainerDeepSpeedConfig(plugin.deepspeed_config)
    filled.trainer_config_process(TrainingArguments(output_dir="unused", max_grad_norm=0.7, bf16=True,
                                                    per_device_train_batch_size=2, use_cpu=True))
    ds = filled.config
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_optimizer"]["device"] == offload and zero["offload_param"]["device"] == "none"
    assert ds["bf16"] == {"enabled": True} and ds["gradient_clipping"] == 0.7
    assert ds["train_micro_batch_size_per_gpu"] == 2


@pytest.mark.parametrize("launch", ["{accelerate_config: zero3}", "{launcher: torchrun, num_processes: 4, "
                                    "deepspeed_config: zero3-cpu}"])
def test_a_launch_for_gpus_on_a_machine_without_one_is_refused_before_the_first_stage(tmp_path, tiny_model_dir, launch,
                                                                                    capsys, monkeypatch):
    """A recipe written for the 8-GPU node, run on a CPU box, started 8 training processes on its CPU, each printing its
    set-up, and failed after its data preparation on transformers' "Your setup doesn't support bf16/gpu"; the plan
    said nothing. Now the run refuses before any stage, and `tempa plan` warns, naming launch.use_cpu."""
    import torch

    from sft_helpers import sft_recipe
    from tempa.recipes.cli import main
    from tempa.recipes.runner import run_recipe
    from tempa.sft.stage_api import StageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU box, wherever the tests run
    recipe = sft_recipe(tmp_path, tiny_model_dir, launch=f"launch: {launch}")
    processes = "8" if "zero3}" in launch else "4"
    refusal = (rf"stage 'sft' would fail: launch: {processes} training processes \(DeepSpeed ZeRO-3[^)]*, one per GPU\), "
               r"and this machine has no CUDA GPU; run it on the GPU node, or train on this CPU \(a --profile for "
               r"this machine\): launch.use_cpu: true with accelerate_config: single, or with several processes "
               r"launcher: torchrun or accelerate_config: fsdp2")
    with pytest.raises(StageError, match=refusal):
        run_recipe(load_recipe(recipe), tmp_path / "run")
    assert not (tmp_path / "run" / "sft").exists() and not (tmp_path / "run" / "tokenizer").exists()
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    assert re.search(refusal, " ".join(capsys.readouterr().out.split()))
    # a plan for the GPU node it is written for (--hardware) is no run here: no such warning
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run"), "--hardware", "8xH100"]) == 0
    assert "this machine has no CUDA GPU" not in capsys.readouterr().out


def test_a_training_launch_gets_no_api_key_of_another_stages_server(tmp_path, tiny_model_dir, monkeypatch):
    """Every training process got the whole environment: the teacher's and judges' API keys (and so its
    /proc/PID/environ and anything it starts) though an sft stage never sends them."""
    import json

    from tempa.recipes import launcher
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import run_recipe
    from tempa.sft.stage_api import StageError

    (tmp_path / "rows.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "yo"}]}) + "\n")
    (tmp_path / "mt.jsonl").write_text(json.dumps({"turns": ["Halo?"], "category": "chat"}) + "\n")
    (tmp_path / "r.yaml").write_text(f"""name: t
base_model: {tiny_model_dir}
stages:
  - name: sft
    kind: sft
    data: {{sources: [{{name: rows, path: rows.jsonl}}]}}
  - name: eval
    kind: evaluate
    suites:
      - type: win_rate
        name: mt
        data: mt.jsonl
        baseline: {{type: http, base_url: "http://127.0.0.1:9/v1", model: b, api_key_env: TEMPA_TEST_BASELINE_KEY}}
        judge: {{backend: {{type: http, base_url: "http://127.0.0.1:9/v1", model: j, api_key_env: TEMPA_TEST_JUDGE_KEY}}}}
      - type: win_rate
        name: router
        data: mt.jsonl
        baseline: {{type: http, base_url: "https://router.huggingface.co/v1", model: b, api_key_env: HF_TOKEN}}
        judge: {{backend: {{type: http, base_url: "https://router.huggingface.co/v1", model: j, api_key_env: HF_TOKEN}}}}
""")
    monkeypatch.setenv("TEMPA_TEST_BASELINE_KEY", "sk-baseline-1234567890")
    monkeypatch.setenv("TEMPA_TEST_JUDGE_KEY", "sk-judge-1234567890")
    monkeypatch.setenv("TEMPA_TEST_UNRELATED", "kept")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)  # the hub's token, which training reads (downloads, trackers)
    seen = []
    monkeypatch.setattr(launcher, "_stream", lambda cmd, env, *a: seen.append(env) or (1, []))
    with pytest.raises(StageError):
        run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "run")
    (env,) = seen
    assert "TEMPA_TEST_BASELINE_KEY" not in env and "TEMPA_TEST_JUDGE_KEY" not in env
    assert env["TEMPA_TEST_UNRELATED"] == "kept" and env["HF_TOKEN"] == "hf_" + "x" * 30
