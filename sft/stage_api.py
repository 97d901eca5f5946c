"""What every stage package shares with the runner: the context a stage runs in and its result.

It lives on the lowest floor that runs stages (sft), so `alignment` and `merge` import it from
here and no stage package ever imports `tempa.recipes`. The runner builds the context; the
stage never learns how it was launched.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# A name that becomes a file or folder name (stage folders, ...): one path component, never
# "..", never hidden, portable across filesystems. README.md documents the same pattern.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def safe_name(value: str, what: str) -> str:
    """``value`` if it may be used as a single path component; else ValueError saying what is allowed."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a safe name: use letters, digits, '.', '_' and '-', starting with a "
            "letter or digit (at most 128 characters)"
        )
    return value


# launch(entry_module, args, log_file): run `python -m entry_module *args` under the recipe's
# launcher (accelerate/torchrun, 1..N processes). Raises StageError when the process fails.
Launch = Callable[[str, list[str], Path], None]


class StageConfigBase(BaseModel):
    """Fields every stage has. Subclasses add ``kind: Literal["..."]`` and their own settings."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    # Whether the stage writes a dataset (``outputs.dataset``) that a later `path: stage:NAME` reads.
    writes_dataset: ClassVar[bool] = False

    name: str = Field(
        description="Unique stage name; also its folder in the run directory, so a safe name (see safe_name)."
    )
    from_: str | None = Field(
        default=None,
        alias="from",
        description="Earlier stage whose model this stage starts from (default: the previous stage).",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return safe_name(value, "stage name")


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on; the message is one line."""


@dataclass(frozen=True)
class StageContext:
    """Everything a stage may read; everything it writes goes under ``stage_dir``."""

    run_dir: Path
    stage_dir: Path
    stage_name: str
    seed: int
    # The model this stage starts from: the base model or an earlier stage's output.
    model_dir: Path
    # Tokenizer folder with the recipe's chat template already baked in.
    tokenizer_dir: Path
    # The recipe's chat template (Jinja text), the one baked into tokenizer_dir.
    chat_template: str
    # Output folders of the stages that ran before this one, by stage name, in recipe order.
    stage_dirs: Mapping[str, Path]
    # Model outputs (final/) of earlier stages, by stage name, for stages that produced one.
    stage_models: Mapping[str, Path]
    launch: Launch
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("tempa"))
    # The recipe's base model folder, for stages (merge, bake) that need the original.
    base_model_dir: Path | None = None
    trust_remote_code: bool = False
    # Training environment chosen by the recipe's `launch:` block (the launcher applies the rest).
    use_cpu: bool = False
    mixed_precision: str | None = None  # "no" | "fp16" | "bf16"; None: bf16 on GPU, fp32 on CPU
    deepspeed_config: Path | None = None  # passed to trl's config when torchrun launches
    # Shared cache (tokenised data, ...) reused across runs; stages put their own subfolder in it.
    cache_dir: Path | None = None


@dataclass
class StageResult:
    """What a stage hands back: the model a later stage starts from and headline metrics."""

    model_dir: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


_LOCAL_PREFIXES = ("/", "./", "../", "~")
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".yaml", ".yml", ".jinja", ".txt", ".arrow")


def looks_local(value: str) -> bool:
    """A model/data reference is a local path when it is spelled like one; otherwise a hub id."""
    return value.startswith(_LOCAL_PREFIXES) or value.lower().endswith(_LOCAL_SUFFIXES)


def resolve_path(value: str, info: ValidationInfo | None, *, must_exist: bool = True) -> str:
    """Resolve a recipe path against the recipe's folder (``context["base_dir"]``).

    Use from a pydantic ``field_validator``. Hub ids (``org/name``) pass through untouched.
    A local path becomes absolute, because mergekit and hub helpers treat a relative path as
    a hub id; ``must_exist`` makes a missing local path a validation error.
    """
    base_dir = None
    if info is not None and info.context:
        base_dir = info.context.get("base_dir")
    expanded = os.path.expanduser(value)
    candidate = Path(expanded)
    if not candidate.is_absolute() and base_dir is not None:
        anchored = Path(base_dir) / candidate
        if anchored.exists() or looks_local(value):
            candidate = anchored
    if candidate.is_absolute() or looks_local(value) or candidate.exists():
        resolved = candidate.resolve()
        if must_exist and not resolved.exists():
            raise ValueError(f"local path does not exist: {resolved}")
        return str(resolved)
    return value
