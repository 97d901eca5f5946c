"""What a launch config trains with: the engine (DeepSpeed ZeRO, FSDP2, DDP, one process) and what it offloads.

One reader for the accelerate YAML / DeepSpeed JSON a recipe's ``launch:`` names, shared by the
recipe's validation (:mod:`tempa.recipes.schema`), the launcher and ``tempa plan --hardware``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

SHIPPED_ACCELERATE = ("single", "ddp", "zero3", "zero3-offload", "zero3-multinode", "fsdp2", "fsdp2-offload")
SHIPPED_DEEPSPEED = ("zero3", "zero3-cpu")

EngineName = Literal["deepspeed", "fsdp2", "fsdp1", "ddp", "single"]


@dataclass(frozen=True)
class Engine:
    """How a launch shards and where it keeps the model states."""

    name: EngineName
    zero_stage: int = 0  # DeepSpeed's ZeRO stage (0 unless DeepSpeed)
    offload_optimizer: bool = False  # optimizer state (and fp32 master weights) in host RAM
    offload_params: bool = False  # parameters (and, for FSDP2, gradients) in host RAM too
    num_processes: int | None = None  # as the config file says (all machines), if it says
    source: str = ""
    num_machines: int = 1  # as the config file says

    @property
    def label(self) -> str:
        base = {"deepspeed": f"DeepSpeed ZeRO-{self.zero_stage}", "fsdp2": "FSDP2", "fsdp1": "FSDP1",
                "ddp": "DDP", "single": "one process"}[self.name]
        offloaded = [what for what, on in (("optimizer", self.offload_optimizer), ("parameters", self.offload_params))
                     if on]
        return base + (f" (offload: {' + '.join(offloaded)} to CPU)" if offloaded else "")

    @property
    def shards_model(self) -> bool:
        """Parameters, gradients and optimizer state are split over the GPUs (ZeRO-3 / FSDP)."""
        return self.name in ("fsdp2", "fsdp1") or (self.name == "deepspeed" and self.zero_stage == 3)

    @property
    def offloads(self) -> bool:
        return self.offload_optimizer or self.offload_params


def shipped_path(folder: str, name: str, suffix: str) -> Path:
    """A shipped config file (package data, works from a wheel)."""
    return Path(str(resources.files("tempa.recipes") / folder / f"{name}{suffix}"))


def _offloaded(device: object) -> bool:
    return device in ("cpu", "nvme")


def deepspeed_engine(config: dict, source: str) -> Engine:
    """An engine from a DeepSpeed JSON's ``zero_optimization`` block."""
    zero = config.get("zero_optimization") or {}
    return Engine("deepspeed", zero_stage=int(zero.get("stage", 0) or 0),
                  offload_optimizer=_offloaded((zero.get("offload_optimizer") or {}).get("device")),
                  offload_params=_offloaded((zero.get("offload_param") or {}).get("device")), source=source)


def accelerate_engine(config: dict, source: str) -> Engine:
    """An engine from an accelerate YAML (``distributed_type`` and its DeepSpeed / FSDP block)."""
    kind = str(config.get("distributed_type", "NO")).upper()
    processes = config.get("num_processes")
    processes = int(processes) if isinstance(processes, int) else None
    machines = int(config.get("num_machines") or 1) if isinstance(config.get("num_machines", 1), int) else 1
    if kind == "DEEPSPEED":
        block = config.get("deepspeed_config") or {}
        if block.get("deepspeed_config_file"):
            path = Path(block["deepspeed_config_file"]).expanduser()
            engine = deepspeed_engine(json.loads(path.read_text(encoding="utf-8")), str(path))
        else:
            engine = Engine("deepspeed", zero_stage=int(block.get("zero_stage", 0) or 0),
                            offload_optimizer=_offloaded(block.get("offload_optimizer_device")),
                            offload_params=_offloaded(block.get("offload_param_device")))
        return Engine(engine.name, engine.zero_stage, engine.offload_optimizer, engine.offload_params, processes,
                      source, machines)
    if kind == "FSDP":
        block = config.get("fsdp_config") or {}
        version = int(block.get("fsdp_version", 1) or 1)
        offload = bool(block.get("fsdp_offload_params", False))
        # FSDP's CPU offload moves parameters, gradients and the optimizer state together.
        return Engine("fsdp2" if version == 2 else "fsdp1", offload_optimizer=offload, offload_params=offload,
                      num_processes=processes, source=source, num_machines=machines)
    if kind in ("MULTI_GPU", "MULTI_CPU"):
        return Engine("ddp", num_processes=processes, source=source, num_machines=machines)
    return Engine("single", num_processes=processes, source=source, num_machines=machines)


def read_engine(launcher: str, accelerate_config: Path | None, deepspeed_config: Path | None) -> Engine:
    """The engine of a resolved launch (config paths already checked to exist)."""
    import yaml

    if launcher == "torchrun":
        if deepspeed_config is None:
            return Engine("ddp", source="torchrun")
        return deepspeed_engine(json.loads(deepspeed_config.read_text(encoding="utf-8")), str(deepspeed_config))
    assert accelerate_config is not None
    config = yaml.safe_load(accelerate_config.read_text(encoding="utf-8")) or {}
    return accelerate_engine(config if isinstance(config, dict) else {}, str(accelerate_config))
