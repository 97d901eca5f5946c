"""Run a training entry point in its own process group via `accelerate launch` or `torchrun`.

The exact command is written to the stage folder (`launch.sh`) so a user can re-run one stage
by hand; the subprocess output goes to a log file whose tail is surfaced when it fails.
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
from importlib import resources
from pathlib import Path

from tempa.recipes.schema import SHIPPED_ACCELERATE, SHIPPED_DEEPSPEED, LaunchConfig
from tempa.sft.stage_api import StageError


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


def launch_command(launch: LaunchConfig, module: str, args: list[str], *, port: int | None = None) -> list[str]:
    """The command line that runs ``python -m module args`` under the recipe's launcher."""
    if launch.launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={launch.num_processes or 1}"]
        cmd += [f"--nnodes={launch.num_machines}"]
        if port is not None and launch.num_machines == 1:
            cmd += ["--master_port", str(port)]
        cmd += [*launch.extra_args, "-m", module, *args]
        return cmd
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(accelerate_config_path(launch.accelerate_config))]
    if launch.num_processes is not None:
        cmd += ["--num_processes", str(launch.num_processes)]
    if launch.num_machines != 1:
        cmd += ["--num_machines", str(launch.num_machines)]
    if launch.mixed_precision is not None:
        cmd += ["--mixed_precision", launch.mixed_precision]
    if launch.use_cpu:
        cmd += ["--cpu"]
    if port is not None and launch.num_machines == 1:
        cmd += ["--main_process_port", str(port)]
    cmd += [*launch.extra_args, "-m", module, *args]
    return cmd


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_on_cpu(launch: LaunchConfig) -> bool:
    """Whether the launched group runs DeepSpeed on CPU (and so needs its JIT-built shm op)."""
    if launch.launcher == "torchrun":
        uses_deepspeed = launch.deepspeed_config is not None
    else:
        import yaml

        config = yaml.safe_load(accelerate_config_path(launch.accelerate_config).read_text(encoding="utf-8")) or {}
        uses_deepspeed = config.get("distributed_type") == "DEEPSPEED"
    if not uses_deepspeed:
        return False
    if launch.use_cpu or os.environ.get("DS_ACCELERATOR") == "cpu":
        return True
    import torch

    return not torch.cuda.is_available()


def run_launch(launch: LaunchConfig, module: str, args: list[str], log_file: Path, *, log) -> None:
    """Run the command, streaming output to ``log_file``; a failure raises a one-line StageError."""
    if deepspeed_on_cpu(launch):
        from tempa.recipes.jit_ops import ensure_shm_op

        ensure_shm_op(log, log_file.parent / "deepspeed_op_build.log")
    cmd = launch_command(launch, module, args, port=_free_port())
    env = dict(os.environ)
    env["TEMPA_RUNNER_PID"] = str(os.getpid())
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if launch.use_cpu:
        env.setdefault("DS_ACCELERATOR", "cpu")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    script = log_file.parent / "launch.sh"
    script.write_text(
        "#!/usr/bin/env bash\n# Re-run this stage's training by hand (same plan, same checkpoints).\n"
        + " ".join(shlex.quote(c) for c in cmd) + "\n"
    )
    log.info("launch: %s", " ".join(shlex.quote(c) for c in cmd))
    log.info("log: %s", log_file)
    tail: deque[str] = deque(maxlen=200)
    with open(log_file, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        out.flush()
        # A new session: Ctrl-C in the runner stops the whole training group, and the group
        # never outlives a killed runner (the worker watches TEMPA_RUNNER_PID).
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True, text=True,
            errors="replace",
        )
        (log_file.parent / "launch.pid").write_text(str(proc.pid))
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                tail.append(line.rstrip())
                if "[tempa] " in line:  # may follow a tqdm bar on the same line
                    log.info("%s", line.rstrip().split("[tempa] ", 1)[1])
            code = proc.wait()
            # Gone with its group: a stale pid file could later name someone else's process group.
            (log_file.parent / "launch.pid").unlink(missing_ok=True)
        except BaseException:
            _stop(proc)
            raise
    if code != 0:
        reason = _reason(tail)
        raise StageError(f"training process exited with code {code}: {reason} (full log: {log_file})")


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


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


_LAUNCHER_ERRORS = ("CalledProcessError", "ChildFailedError", "torch.distributed.elastic")
_EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?([\w.]*(?:Error|Exception|Interrupt)):\s*(.*)$")


def _reason(tail: deque[str]) -> str:
    """The most telling line of a failed run: the worker's own exception, not the launcher's."""
    for line in reversed(tail):
        match = _EXCEPTION_LINE.match(line.strip())
        if match and not any(name in line for name in _LAUNCHER_ERRORS):
            return f"{match.group(1)}: {match.group(2)}".strip()
    return next((line.strip() for line in reversed(tail) if line.strip()), "no output")
