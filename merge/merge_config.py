"""Configuration of the ``merge`` stage: which models, which mergekit method, with which knobs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tempa.sft.stage_api import StageConfigBase, resolve_path


@dataclass(frozen=True)
class MethodInfo:
    """What a mergekit method needs from tempa."""

    base: Literal["none", "required", "first_input"]  # first_input: one of the two inputs (slerp)
    weights: bool  # takes a per-model `weight`
    density: bool  # takes a per-model `density` (sparsifying task arithmetic)
    min_models: int = 1
    max_models: int | None = None


METHODS: dict[str, MethodInfo] = {
    "linear": MethodInfo(base="none", weights=True, density=False, min_models=2),
    "slerp": MethodInfo(base="first_input", weights=False, density=False, min_models=2, max_models=2),
    "task_arithmetic": MethodInfo(base="required", weights=True, density=False),
    "ties": MethodInfo(base="required", weights=True, density=True),
    "dare_ties": MethodInfo(base="required", weights=True, density=True),
    "dare_linear": MethodInfo(base="required", weights=True, density=True),
    "breadcrumbs": MethodInfo(base="required", weights=True, density=True),
    "breadcrumbs_ties": MethodInfo(base="required", weights=True, density=True),
    "della": MethodInfo(base="required", weights=True, density=True),
    "della_linear": MethodInfo(base="required", weights=True, density=True),
    "model_stock": MethodInfo(base="required", weights=False, density=False, min_models=2),
}


class SelectConfig(BaseModel):
    """Pick the best candidates of an evaluate stage's leaderboard."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="Leaderboard metric, '<suite>/<metric>' (e.g. accuracy/accuracy).")
    top_k: int = Field(default=2, ge=1, description="How many of the best candidates to merge.")
    higher_is_better: bool | None = Field(
        default=None, description="Direction of the metric (default: losses/perplexities lower, else higher)."
    )


class MergekitOptions(BaseModel):
    """Options passed to mergekit's MergeOptions. Defaults merge out-of-core on CPU."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field(default="cpu", description="Device for the tensor arithmetic (cpu | cuda | auto).")
    low_cpu_memory: bool = Field(
        default=False,
        description="Keep results on the accelerator (mergekit's option; only useful with cuda).",
    )
    out_shard_size: str = Field(
        default="5B", description="Parameters per output shard (mergekit syntax: 5B, 500M)."
    )
    num_threads: int | None = Field(default=None, ge=1, description="CPU threads for the arithmetic.")
    allow_crimes: bool = Field(
        default=False, description="Let mergekit mix architectures (tempa still refuses)."
    )


class MergeStageConfig(StageConfigBase):
    """Merge the best checkpoints with mergekit, then re-score the merged model.

    Give either `select` (top-k of `evaluate_stage`'s leaderboard) or `models` (stage names,
    leaderboard candidate names, or folders). Methods with a base model (task arithmetic, TIES,
    DARE, model_stock) use `base_model`, else the recipe's base model; slerp interpolates from
    the first model (t=0) to the second (t=1).
    """

    kind: Literal["merge"]
    method: str = Field(default="linear", description=f"mergekit method: {', '.join(METHODS)}.")
    evaluate_stage: str | None = Field(
        default=None,
        description="Evaluate stage whose leaderboard `select` reads and whose suites re-score the merge.",
    )
    select: SelectConfig | None = Field(default=None, description="Choose the models by leaderboard rank.")
    models: list[str] | None = Field(default=None, description="Or: the models to merge, explicitly.")
    base_model: str | None = Field(
        default=None,
        description="Base for task-vector methods: a stage name or folder (default: recipe base).",
    )
    weights: list[float] | None = Field(
        default=None, description="Per-model weights, in selection order (default: equal)."
    )
    density: float | list[float] | None = Field(
        default=None, description="Fraction of each task vector kept (TIES/DARE/DELLA/breadcrumbs)."
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Method-level mergekit parameters, e.g. {t: 0.5} for slerp, {lambda: 1.0, normalize: true}.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None, description="Dtype of the arithmetic (default: mergekit's choice from the inputs)."
    )
    out_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None, description="Dtype of the saved weights (default: `dtype`)."
    )
    options: MergekitOptions = Field(default_factory=MergekitOptions, description="mergekit run options.")
    reevaluate: bool = Field(
        default=True,
        description="Re-score the merged model with `evaluate_stage`'s suites and add it to the board.",
    )

    @field_validator("models")
    @classmethod
    def _resolve_models(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        return [resolve_path(item, info, must_exist=False) for item in value]

    @field_validator("base_model")
    @classmethod
    def _resolve_base(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_path(value, info, must_exist=False)

    @model_validator(mode="after")
    def _check(self):
        info = METHODS.get(self.method)
        if info is None:
            raise ValueError(f"unknown merge method {self.method!r}; tempa supports {', '.join(METHODS)}")
        if (self.select is None) == (self.models is None):
            raise ValueError("give exactly one of `select` (top-k of a leaderboard) or `models`")
        if self.select is not None and self.evaluate_stage is None:
            raise ValueError(
                "`select` needs `evaluate_stage` (the evaluate stage whose leaderboard it reads)"
            )
        count = self.select.top_k if self.select is not None else len(self.models or [])
        if count < info.min_models or (info.max_models is not None and count > info.max_models):
            want = (
                f"exactly {info.min_models}"
                if info.max_models == info.min_models
                else f"at least {info.min_models}"
                + (f" and at most {info.max_models}" if info.max_models else "")
            )
            raise ValueError(f"method {self.method} merges {want} models; this stage gives {count}")
        if self.weights is not None:
            if not info.weights:
                raise ValueError(f"method {self.method} takes no per-model weights")
            if len(self.weights) != count:
                raise ValueError(f"{len(self.weights)} weights for {count} models")
        if self.density is not None:
            if not info.density:
                raise ValueError(
                    f"method {self.method} takes no density (only TIES/DARE/DELLA/breadcrumbs do)"
                )
            if isinstance(self.density, list) and len(self.density) != count:
                raise ValueError(f"{len(self.density)} densities for {count} models")
            densities = self.density if isinstance(self.density, list) else [self.density]
            if any(not 0.0 < d <= 1.0 for d in densities):
                raise ValueError("density must be in (0, 1]")
        if self.method == "slerp" and "t" not in self.parameters:
            self.parameters["t"] = 0.5
        if self.base_model is not None and info.base == "none":
            raise ValueError(f"method {self.method} uses no base model")
        return self

    def depends_on(self) -> list[str]:
        """Earlier stages this stage reads: the evaluate stage and stage-named models / base.

        A leaderboard candidate name (``sft/checkpoint-20``) depends on its stage (``sft``).
        """
        names = [self.evaluate_stage] if self.evaluate_stage else []
        for reference in [*(self.models or []), *([self.base_model] if self.base_model else [])]:
            if not os.path.isabs(reference):
                names.append(reference.split("/", 1)[0])
        return list(dict.fromkeys(names))
