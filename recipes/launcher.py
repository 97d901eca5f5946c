"""Run a training entry point in its own process group via `accelerate launch` or `torchrun`.

The exact command is written to the stage folder (`launch.sh`) so a user can re-run one stage
by hand; the subprocess output goes to a log file whose tail is surfaced when it fails.

Several nodes (``launch.num_machines > 1``): node rank 0 runs ``tempa run`` (every stage, and
machine rank 0 of each training launch); before a training launch it publishes a
:class:`LaunchRequest` (``run_dir/.launch.json``: what to run, rank 0's address and port). The
other nodes run ``tempa run ... --machine-rank N`` (:func:`join_run`): they read the recipe and
that request, start the same launch as machine rank N, and write nothing in the run directory
but what their training processes write (checkpoint shards); their own logs stay on the node.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tempa.recipes.held_signals import held_signals
from tempa.recipes.schema import SHIPPED_ACCELERATE, SHIPPED_DEEPSPEED, LaunchConfig
from tempa.sft.files import cache_root, digest, file_digest, json_or_none, write_atomic, write_json
from tempa.sft.stage_api import StageError

LAUNCH_REQUEST = ".launch.json"  # in the run directory: the training launch the other nodes join


def _config_path(field: str, ref: str, folder: str, shipped: tuple[str, ...], suffix: str) -> Path:
    """A shipped config by name (package data, works from a wheel) or the user's own file."""
    if ref in shipped:
        path = Path(str(resources.files("tempa.recipes") / folder / f"{ref}{suffix}"))
    else:
        path = Path(ref).expanduser()
    if not path.is_file():
        raise StageError(
            f"launch.{field}: {ref!r} is neither a shipped config ({', '.join(shipped)}) nor an existing file"
        )
    return path.resolve()


def accelerate_config_path(ref: str) -> Path:
    return _config_path("accelerate_config", ref, "accelerate", SHIPPED_ACCELERATE, ".yaml")


def deepspeed_config_path(ref: str | None) -> Path | None:
    return None if ref is None else _config_path("deepspeed_config", ref, "deepspeed", SHIPPED_DEEPSPEED, ".json")


def launch_command(launch: LaunchConfig, module: str, args: list[str], *, port: int | None = None,
                   machine_rank: int = 0, main_process_ip: str | None = None) -> list[str]:
    """The command line that runs ``python -m module args`` under the recipe's launcher.

    ``machine_rank`` / ``main_process_ip`` / ``port``: this node's part of a multi-node launch.
    """
    multinode = launch.num_machines > 1
    if launch.launcher == "torchrun":
        # num_processes counts every machine's processes, as accelerate's does.
        per_node = max(1, (launch.processes() or launch.num_machines) // launch.num_machines)
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={per_node}",
               f"--nnodes={launch.num_machines}"]
        if multinode:
            cmd += [f"--node_rank={machine_rank}", "--master_addr", main_process_ip or "127.0.0.1"]
        if port is not None:
            cmd += ["--master_port", str(port)]
        cmd += [*launch.extra_args, "-m", module, *args]
        return cmd
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config_file(launch))]
    if launch.num_processes is not None:
        cmd += ["--num_processes", str(launch.num_processes)]
    if multinode:
        cmd += ["--num_machines", str(launch.num_machines), "--machine_rank", str(machine_rank),
                "--main_process_ip", main_process_ip or "127.0.0.1"]
    if launch.mixed_precision is not None:
        cmd += ["--mixed_precision", launch.mixed_precision]
    if launch.use_cpu and launch.engine().name == "fsdp2":
        # accelerate's --cpu would start ONE plain process for an FSDP config: each worker runs its
        # FSDP2 rank on CPU itself (tempa.sft.cpu_fsdp), in fp32 unless asked (the config's bf16 is for GPUs).
        if launch.mixed_precision is None:
            cmd += ["--mixed_precision", "no"]
    elif launch.use_cpu:
        cmd += ["--cpu"]
    if port is not None:
        cmd += ["--main_process_port", str(port)]
    cmd += [*launch.extra_args, "-m", module, *args]
    return cmd


def parallelism_config(launch: LaunchConfig) -> dict[str, int | str | bool]:
    """The ``parallelism_config`` block of an accelerate config for ``launch.sequence_parallel`` (Ulysses/ALST on
    ZeRO-3, torch context parallelism on FSDP2); empty for none."""
    size = launch.sequence_parallel
    if size <= 1:
        return {}
    engine = launch.engine()
    if engine.name == "deepspeed":
        # ALST shards each (packed) row along the sequence; variable lengths, flash-attention 2 underneath
        # (it reads the packed documents' boundaries from position_ids).
        return {"parallelism_config_sp_size": size, "parallelism_config_sp_backend": "deepspeed",
                "parallelism_config_sp_seq_length_is_variable": True}
    block: dict[str, int | str | bool] = {"parallelism_config_cp_size": size}
    processes = launch.num_processes or engine.num_processes
    if processes:  # FSDP shards over the rest of the world
        block["parallelism_config_dp_shard_size"] = processes // size
    return block


def accelerate_config_file(launch: LaunchConfig) -> Path:
    """The accelerate config the launch runs with: the recipe's, or with sequence parallelism a copy of it that
    carries the ``parallelism_config`` block (in tempa's cache, named by its content).

    accelerate 1.15 takes sequence/context parallelism from the config file only: its launcher refuses
    ``--use_parallelism_config`` on the command line without ``--use_fsdp --fsdp_version 2`` flags, and then
    resets it from the file anyway.
    """
    import yaml

    path = accelerate_config_path(launch.accelerate_config)
    block = parallelism_config(launch)
    if not block:
        return path
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    config["parallelism_config"] = {**(config.get("parallelism_config") or {}), **block}
    text = f"# {path} with launch.sequence_parallel {launch.sequence_parallel} (written by tempa)\n" + \
        yaml.safe_dump(config, sort_keys=False)
    derived = cache_root() / "accelerate" / f"{path.stem}-sp{launch.sequence_parallel}-{digest(text)[:12]}.yaml"
    if not derived.is_file():
        write_atomic(derived, text)
    return derived


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_on_cpu(launch: LaunchConfig) -> bool:
    """Whether the launched group runs DeepSpeed on CPU (and so needs its JIT-built shm op)."""
    if launch.engine().name != "deepspeed":
        return False
    if launch.use_cpu or os.environ.get("DS_ACCELERATOR") == "cpu":
        return True
    import torch

    return not torch.cuda.is_available()


class LaunchRequest(BaseModel):
    """A training launch that node rank 0 starts and the other nodes join (``run_dir/.launch.json``)."""

    model_config = ConfigDict(extra="forbid")

    seq: int  # increases with every launch of a run
    module: str
    args: list[str]
    main_process_ip: str
    main_process_port: int
    host: str  # node rank 0's hostname, for messages
    created_at: float
    # node rank 0's launch settings (launch_shape): a node whose own differ would join with another process count,
    # and torchrun trains the sum (None: a request of a tempa that did not say)
    launch: dict[str, Any] | None = None


# Where a node's rank 0 listens, which the other nodes read from the request: no part of the launch's shape.
_NODE_LOCAL = frozenset({"main_process_ip", "main_process_port"})


def launch_shape(launch: LaunchConfig) -> dict[str, Any]:
    """The launch settings every node of a run must share (processes, machines, launcher, precision), the accelerate
    and DeepSpeed configs by what they say: a node may keep its own copy of the recipe at another path, and a file of
    the same path may say another process count."""
    shape = launch.model_dump(mode="json", exclude=set(_NODE_LOCAL))
    for field, path in (("accelerate_config", launch.accelerate_path()), ("deepspeed_config", launch.deepspeed_path())):
        if path is not None and Path(path).is_file():
            shape[field] = f"a file with content sha256:{file_digest(Path(path))[:12]}"
    return shape


def shape_mismatch(request: LaunchRequest, launch: LaunchConfig) -> str | None:
    """How this node's launch differs from node rank 0's, field by field, or None."""
    if request.launch is None:
        return None
    mine = launch_shape(launch)
    differ = [f"{key} {request.launch.get(key)!r} there, {mine.get(key)!r} here"
              for key in sorted(set(mine) | set(request.launch)) if mine.get(key) != request.launch.get(key)]
    return "; ".join(differ) or None


def read_request(run_dir: Path) -> LaunchRequest | None:
    data = json_or_none(run_dir / LAUNCH_REQUEST)
    try:
        return LaunchRequest.model_validate(data) if isinstance(data, dict) else None
    except ValueError:
        return None


def publish_request(launch: LaunchConfig, module: str, args: list[str], run_dir: Path) -> LaunchRequest:
    """Node rank 0: say which launch the other nodes join, and where rank 0 listens."""
    import socket

    previous = read_request(run_dir)
    request = LaunchRequest(
        seq=(previous.seq + 1) if previous else 1, module=module, args=list(args),
        main_process_ip=launch.main_process_ip or socket.gethostname(),
        main_process_port=launch.main_process_port or _free_port(), host=socket.gethostname(),
        created_at=time.time(), launch=launch_shape(launch))
    write_json(run_dir / LAUNCH_REQUEST, request.model_dump())
    return request


def _launch_env(launch: LaunchConfig, withhold: Iterable[str] = ()) -> dict[str, str]:
    """The training processes' environment: this one's, without ``withhold`` (the API keys of other stages' servers,
    which a training process never sends: its /proc/PID/environ, its crash dumps and its children need not hold
    them)."""
    env = {name: value for name, value in os.environ.items() if name not in set(withhold)}
    # The local process that watches over the training group: its processes stop when it dies.
    env["TEMPA_RUNNER_PID"] = str(os.getpid())
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # trl's trainers report their use to huggingface.co from every process they start; a recipe that never names
    # the hub contacts it for nothing (a user who sets the variable, to 0 or 1, decides).
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if launch.use_cpu:
        env.setdefault("DS_ACCELERATOR", "cpu")
    elif one_process(launch) and "CUDA_VISIBLE_DEVICES" not in env:
        # One process that sees several GPUs gets nn.DataParallel from transformers' Trainer, which every trl
        # trainer refuses: train on the first GPU (a user who names GPUs keeps them).
        env["CUDA_VISIBLE_DEVICES"] = "0"
    return env


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def one_process(launch: LaunchConfig) -> bool:
    """Whether the launch starts a single training process (the `single` config, or num_processes 1)."""
    return launch.num_machines == 1 and (launch.processes() or 1) == 1


def hardware_problem(launch: LaunchConfig) -> str | None:
    """Why this machine cannot start the recipe's training launches, or None: several processes, one per GPU, on a
    machine with no CUDA GPU (accelerate started them all on the CPU, each printed its set-up, and the run failed
    minutes later on transformers' "Your setup doesn't support bf16/gpu"), unless launch.use_cpu asks for CPU ones."""
    if launch.use_cpu or one_process(launch):
        return None
    import torch

    if torch.cuda.is_available():
        return None
    engine = launch.engine()
    processes = launch.processes(engine) or launch.num_machines
    return (f"launch: {processes} training processes ({engine.label}, one per GPU), and this machine has no CUDA GPU; "
            "run it on the GPU node, or train on this CPU (a --profile for this machine): launch.use_cpu: true with "
            "accelerate_config: single, or with several processes launcher: torchrun or accelerate_config: fsdp2")


def run_launch(launch: LaunchConfig, module: str, args: list[str], log_file: Path, *, log,
               run_dir: Path | None = None, withhold: Iterable[str] = ()) -> None:
    """Run the command, streaming output to ``log_file``; a failure raises a one-line StageError.

    With ``launch.num_machines > 1``, ``run_dir`` is where the other nodes find the launch to join.
    """
    if launch.engine().name in ("fsdp1", "fsdp2"):
        import torch

        if not launch.use_cpu and not torch.cuda.is_available():
            # accelerate would start plain, unsharded processes that each train and save alone
            raise StageError(f"launch.accelerate_config {launch.accelerate_config!r}: FSDP needs CUDA GPUs and this "
                             "machine has none; set launch.use_cpu: true to run FSDP2 over CPU processes (gloo)")
    if deepspeed_on_cpu(launch):
        from tempa.recipes.jit_ops import ensure_shm_op

        ensure_shm_op(log, log_file.parent / "deepspeed_op_build.log")
    if launch.num_machines > 1:
        if run_dir is None:
            raise StageError("launch.num_machines > 1 needs the run directory to tell the other nodes the launch")
        request = publish_request(launch, module, args, run_dir)
        log.info("launch %d: waiting for %d more node(s) to join at %s:%d", request.seq, launch.num_machines - 1,
                 request.main_process_ip, request.main_process_port)
        cmd = launch_command(launch, module, args, port=request.main_process_port, machine_rank=0,
                             main_process_ip=request.main_process_ip)
    else:
        cmd = launch_command(launch, module, args, port=_free_port())
    env = _launch_env(launch, withhold)
    if env.get("CUDA_VISIBLE_DEVICES") != os.environ.get("CUDA_VISIBLE_DEVICES") and _gpus() > 1:
        log.info("one training process: it trains on GPU 0 of %d (CUDA_VISIBLE_DEVICES=0); launch.accelerate_config "
                 "zero3 or fsdp2 trains on all of them", _gpus())
    log_file.parent.mkdir(parents=True, exist_ok=True)
    script = log_file.parent / "launch.sh"
    script.write_text(
        "#!/usr/bin/env bash\n# Re-run this stage's training by hand (same plan, same checkpoints).\n"
        + " ".join(shlex.quote(c) for c in cmd) + "\n"
    )
    script.chmod(0o755)  # the docs say to re-run it by hand: `./launch.sh`
    log.info("launch: %s", " ".join(shlex.quote(c) for c in cmd))
    log.info("log: %s", log_file)
    code, tail = _stream(cmd, env, log_file, log)
    if code != 0:
        raise StageError(f"{_failure(code, tail)} (full log: {log_file})")


def _stream(cmd: list[str], env: dict[str, str], log_file: Path, log) -> tuple[int, deque[str]]:
    """Run ``cmd`` in its own process group, its output to ``log_file``; (exit code, last lines)."""
    tail: deque[str] = deque(maxlen=200)
    with open(log_file, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        out.flush()
        # A new session: Ctrl-C in the runner stops the whole training group, and the group
        # never outlives a killed runner (the watchdog below; the worker also watches the runner's pid,
        # but only once it has imported torch, which can take a minute on a busy machine).
        with held_signals() as held:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True, text=True,
                errors="replace",
            )
            watchdog = None
            try:
                (log_file.parent / "launch.pid").write_text(str(proc.pid))
                watchdog = _start_watchdog(proc.pid)
                held.release()  # a Ctrl-C or SIGTERM that came while starting is raised here, and stops the group
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.write(line)
                    out.flush()  # `tail -f train.log` follows the worker, not the runner's 8 KB buffer
                    tail.append(line.rstrip())
                    if "[tempa] " in line:  # may follow a tqdm bar on the same line
                        log.info("%s", line.rstrip().split("[tempa] ", 1)[1])
                code = proc.wait()
                # Gone with its group: a stale pid file could later name someone else's process group.
                (log_file.parent / "launch.pid").unlink(missing_ok=True)
            except BaseException:
                _stop(proc)
                raise
            finally:
                if watchdog is not None:
                    watchdog.kill()
                    watchdog.wait()
    return code, tail


# Stops the training group as soon as the runner that started it is gone (SIGKILL, OOM killer): it is
# the runner's child in a session of its own, so a signal to the runner's group spares it, and the
# runner's death shows as a new parent. Plain Python without site-packages: it starts in milliseconds.
_WATCHDOG = """
import os, signal, sys, time
runner, group = int(sys.argv[1]), int(sys.argv[2])
while True:
    time.sleep(0.25)
    try:
        os.killpg(group, 0)
    except OSError:
        break
    if os.getppid() != runner:
        os.killpg(group, signal.SIGKILL)
        break
"""


def _start_watchdog(group: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG, str(os.getpid()), str(group)],
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def reap_stale_launch(stage_dir: Path, *, log) -> None:
    """Kill a training group left behind by a runner that died (its pid file is still there)."""
    pid_file = stage_dir / "logs" / "launch.pid"
    try:
        pgid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    # Only a group we started (its leader runs a tempa module); pids get reused.
    if b"tempa." not in cmdline:
        pid_file.unlink(missing_ok=True)
        return
    for _ in range(50):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            break
        except PermissionError:
            break
        log.warning("stopped a training process group (%d) left by an earlier run", pgid)
        time.sleep(0.2)
    pid_file.unlink(missing_ok=True)


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop the training group: SIGTERM, then SIGKILL after ``grace_s``; returns once every member is gone.

    Waiting for the leader alone is not enough: the launcher can exit while its worker is still
    shutting down, and the runner must not report "interrupted" with a training process alive.
    A second Ctrl-C (or SIGTERM) during the grace period cuts it short, as users expect of a second
    Ctrl-C, rather than the wait: it used to end the runner with the group still running.
    """
    try:
        if _signal_group(proc, signal.SIGTERM, grace_s):
            return
    except KeyboardInterrupt:
        pass
    with held_signals():  # SIGKILL takes effect at once: this wait is short, and nothing may cut it
        _signal_group(proc, signal.SIGKILL, grace_s)


def _signal_group(proc: subprocess.Popen, sig: int, wait_s: float) -> bool:
    """Send ``sig`` to the group; whether every member is gone within ``wait_s``."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader: until then the group id stays taken
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


_LAUNCHER_ERRORS = ("CalledProcessError", "ChildFailedError", "torch.distributed.elastic")
_EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?([\w.]*(?:Error|Exception|Interrupt)):\s*(.*)$")


def _reason(tail: deque[str]) -> str:
    """The most telling line of a failed run: the worker's own exception, not the launcher's."""
    return _exception(tail) or next((line.strip() for line in reversed(tail) if line.strip()), "no output")


# A process that lost a peer: the consequence of another process's failure, which the log may show first.
_KNOCK_ON = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing", "DistBackendError",
             "NCCL communicator was aborted", "Broken pipe", "ProcessGroupNCCL", "ProcessGroupGloo")


def _exception(tail: deque[str]) -> str | None:
    """The last exception line of a worker; of several processes' failures, one that is not a lost peer."""
    found = [f"{match.group(1)}: {match.group(2)}".strip() for line in reversed(tail)
             if (match := _EXCEPTION_LINE.match(line.strip())) and not any(name in line for name in _LAUNCHER_ERRORS)]
    return next((line for line in found if not any(sign in line for sign in _KNOCK_ON)), found[0] if found else None)


# How the launchers report a process that a signal ended: accelerate's single-process launcher
# (subprocess.CalledProcessError), torch elastic (torchrun, accelerate's multi-process launcher).
_KILLED = (re.compile(r"died with <Signals\.SIG\w+: (\d+)>"), re.compile(r"Signal (\d+) \(SIG\w+\) received by PID"),
           re.compile(r"exitcode\s*:\s*-(\d+)\b"))
_KILL_HINTS = {
    signal.SIGKILL: " (the kernel's out-of-memory killer sends it when the node runs out of host memory: `dmesg` "
                    "names it; else a scheduler or a user killed it)",
    signal.SIGTERM: " (a scheduler or a user stopped it)",
}


# Signals that stop a process from outside (the OOM killer, a scheduler, a user), after which a resume carries on.
_STOPPED_BY = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def killed_by(code: int, tail: deque[str]) -> int | None:
    """The signal that ended a training process (a worker, or the launcher itself: ``code`` < 0), else None."""
    if code < 0:
        return -code
    for line in reversed(tail):
        for pattern in _KILLED:
            if match := pattern.search(line):
                return int(match.group(1))
    return None


_ELASTIC_LOG = re.compile(r"[EWI]\d{4} \d\d:\d\d:\d\d")  # torch elastic's own log lines (glog's prefix)


def _last_words(tail: deque[str]) -> str:
    """The worker's last line before its launcher's own report of the failure (torch elastic's box of '=', accelerate's
    traceback of a CalledProcessError), which says only that it failed."""
    lines = list(tail)
    end = next((i for i, line in enumerate(lines) if re.fullmatch(r"={11,}", line.strip())
                or line.startswith("Traceback (most recent call last)")), len(lines))
    return next((line.strip() for line in reversed(lines[:end])
                 if line.strip() and not _ELASTIC_LOG.match(line)), "no output")


_ROOT_CAUSE = "Root Cause (first observed failure):"
_EXITCODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)\b")


def root_cause_exit_code(tail: deque[str]) -> int | None:
    """The exit code of the process torch elastic's summary names as the root cause (its first observed failure;
    negative: the signal that ended it), or None when the log has no such summary (accelerate, one process)."""
    lines = list(tail)
    start = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].strip() == _ROOT_CAUSE), None)
    if start is None:
        return None
    # The block's first exitcode line is the root cause's own: its traceback, which may quote anything, comes after.
    return next((int(match.group(1)) for line in lines[start + 1:] if (match := _EXITCODE.match(line))), None)


def _failure(code: int, tail: deque[str]) -> str:
    """One line for a launch that failed: the worker's exception, else the signal that killed it, else its last line.

    Where torch elastic names the root cause, it decides: a worker killed by a signal makes the survivors fail on the
    lost peer (gloo's "Connection reset by peer", an exception the log shows), which must not hide the signal and the
    resume that follows it; a root cause that exited with a code is an exception, shown as such."""
    root = root_cause_exit_code(tail)
    if root is not None:
        sig = -root if root < 0 else None
    else:
        sig = None if _exception(tail) else killed_by(code, tail)
    if sig is None:
        return f"training process exited with code {code}: {_reason(tail)}"
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    if sig not in _STOPPED_BY:  # SIGSEGV, SIGABRT (a C++ or NCCL abort): a crash, which a resume would meet again
        return f"a training process crashed with {name}: {_last_words(tail)}"
    return (f"a training process was killed by {name}{_KILL_HINTS.get(sig, '')}; the same command again resumes "
            "from its last complete checkpoint (`tempa plan` names it)")


def join_log_dir(run_dir: Path, recipe_name: str, machine_rank: int) -> Path:
    """Where a joining node keeps its launch logs: in its TEMPA_CACHE (it writes nothing in the run directory), one
    folder per run and rank: keyed by the recipe alone, two runs of one recipe wrote launch-1.log into one file."""
    return cache_root() / "join-logs" / f"{recipe_name}-{digest(str(Path(run_dir).resolve()))[:8]}-rank{machine_rank}"


def foreign_launch(request: LaunchRequest, run_dir: Path) -> str | None:
    """Why a launch request is not one a tempa run writes, or None: a node runs what the request names, which would
    otherwise be any command. Defence in depth only: the plan it names is trusted as the run directory is (whoever
    can write the directory can write a plan, and a plan names the reward functions and models the worker loads)."""
    from tempa.sft.train_plan import WORKER

    args = request.args
    if request.module == WORKER and len(args) == 2 and args[0] == "--plan":
        plan = Path(args[1]).resolve()
        if plan.is_relative_to(Path(run_dir).resolve()) and plan.suffix == ".json":
            return None
    return (f"asks to launch `{request.module} {' '.join(args)[:200]}`, which a tempa run never does (it launches "
            f"{WORKER} --plan <a plan in the run directory>): refused")


def unseen_input(args: list[str]) -> str | None:
    """The first file a launch's plan (``--plan PATH``) reads that this node does not see, or None.

    The plan names node 0's paths: the tokenised data in its TEMPA_CACHE, a hub base model in its HF_HOME.
    """
    if "--plan" not in args[:-1]:
        return None
    from tempa.sft.train_plan import TrainPlan

    path = Path(args[args.index("--plan") + 1])
    if not path.is_file():
        return f"{path} (the launch's plan, in the run directory)"
    plan = TrainPlan.read(path)
    for field in ("start_model", "tokenizer_dir", "train_data", "eval_data", "reference_model"):
        value = getattr(plan, field)
        if value is not None and not Path(value).exists():
            return f"{value} (the plan's {field})"
    return None


def join_run(launch: LaunchConfig, run_dir: Path, machine_rank: int, log_dir: Path, *, log,
             start_timeout_s: float = 600.0, poll_s: float = 1.0) -> int:
    """Node ``machine_rank`` > 0: join every training launch node rank 0 publishes, until its run ends.

    Waits up to ``start_timeout_s`` for a ``tempa run`` to hold ``run_dir``; returns how many
    launches this node joined (none, when that run ends without a training launch: its training stages
    were done already). Writes only under ``log_dir`` (this node's launch logs); a launch
    that fails here fails on node rank 0 too, which reports it.
    """
    from tempa.recipes.rundir import lock_owner

    if launch.num_machines < 2:
        raise StageError(f"--machine-rank {machine_rank}: the recipe's launch.num_machines is "
                         f"{launch.num_machines}; only a multi-node launch has other nodes to join")
    if not 0 < machine_rank < launch.num_machines:
        raise StageError(f"--machine-rank {machine_rank}: expected 1..{launch.num_machines - 1} "
                         f"(launch.num_machines is {launch.num_machines}; rank 0 is `tempa run` without it)")
    if deepspeed_on_cpu(launch):
        from tempa.recipes.jit_ops import ensure_shm_op

        ensure_shm_op(log, log_dir / "deepspeed_op_build.log")
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + start_timeout_s
    joined, last_seq, failed, seen = 0, 0, False, False
    log.info("node %d: waiting for node rank 0's run in %s", machine_rank, run_dir)
    while True:
        owner = lock_owner(run_dir)
        if owner is None:
            if seen or time.monotonic() > deadline:
                break
            time.sleep(poll_s)
            continue
        seen = True
        request = read_request(run_dir)
        # Only launches of the run that holds the directory now (not a request left by an earlier run).
        if request is None or request.seq <= last_seq or request.created_at < owner.started_at:
            time.sleep(poll_s)
            continue
        last_seq = request.seq
        refused = foreign_launch(request, run_dir)
        if refused is not None:
            raise StageError(f"node {machine_rank}: {run_dir / LAUNCH_REQUEST} {refused}")
        differ = shape_mismatch(request, launch)
        if differ is not None:
            # torchrun would take both counts and train the sum: another global batch, schedule and ZeRO sharding
            raise StageError(f"node {machine_rank}: its launch settings differ from node rank 0's ({owner.host}): "
                             f"{differ}; give every node the same recipe and command line (README: Several nodes)")
        missing = unseen_input(request.args)
        if missing is not None:
            # Checked before joining: the training process would fail only after the rendezvous, and node 0
            # would then report a lost connection rather than the cause.
            raise StageError(f"node {machine_rank}: launch {request.seq} of {owner.host} reads {missing}, which this "
                             "node does not see; the run directory, TEMPA_CACHE and HF_HOME must be on storage every "
                             "node sees at the same path (README: Several nodes)")
        cmd = launch_command(launch, request.module, request.args, port=request.main_process_port,
                             machine_rank=machine_rank, main_process_ip=request.main_process_ip)
        log_file = log_dir / f"launch-{request.seq}.log"
        log.info("node %d: joining launch %d of %s (%s:%d); log: %s", machine_rank, request.seq, owner.host,
                 request.main_process_ip, request.main_process_port, log_file)
        code, tail = _stream(cmd, _launch_env(launch), log_file, log)
        joined += 1
        failed = code != 0
        if failed:
            log.warning("node %d: launch %d: %s", machine_rank, request.seq, _failure(code, tail))
    if not seen:
        raise StageError(f"{run_dir}: no `tempa run` held this run directory within {start_timeout_s:.0f}s; start "
                         "node rank 0 (tempa run without --machine-rank) with the same --run-dir on shared storage")
    if failed:
        raise StageError(f"node {machine_rank}: the last training launch failed (logs: {log_dir})")
    if not joined:
        log.info("node %d: node rank 0's run in %s ended without a training launch to join", machine_rank, run_dir)
    return joined
