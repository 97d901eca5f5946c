"""The stage kinds a recipe may use: kind -> (config model, run function, whether it trains).

Stage packages own their configs and run functions; this table is the only place the runner
learns about them. A kind whose package is not installed/importable is simply not listed.
Only the config modules are imported here (pydantic, no torch): validating a recipe stays fast,
and a stage's run module (trl, transformers, mergekit, ...) is imported when the stage runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tempa.sft.stage_api import StageConfigBase, StageContext, StageResult


@dataclass(frozen=True)
class StageKind:
    kind: str
    config: type[StageConfigBase]
    run: Callable[[Any, StageContext], StageResult]
    # Resumable stages (training, incremental sampling) keep their folder after an interruption
    # and continue from what is complete in it; other stages restart from scratch.
    resumable: bool
    summary: str


# kind, "config module:class", "run module:function", resumable, one-line summary
_KINDS = [
    ("sft", "tempa.sft.config:SFTStageConfig", "tempa.sft.stage:run_sft", True,
     "supervised fine-tuning with trl SFTTrainer"),
    ("synthesize", "tempa.alignment.synthesize_config:SynthesizeStageConfig",
     "tempa.alignment.synthesize_stage:run_synthesize", True,
     "teacher generation + judge/verifier filtering into an SFT dataset"),
    ("preference", "tempa.alignment.preference_config:PreferenceStageConfig",
     "tempa.alignment.preference_stage:run_preference", True,
     "on-policy sampling, scoring, pair building and DPO/APO rounds"),
    ("evaluate", "tempa.merge.evaluate_config:EvaluateStageConfig", "tempa.merge.evaluate_stage:run_evaluate", False,
     "score checkpoints into a leaderboard"),
    ("merge", "tempa.merge.merge_config:MergeStageConfig", "tempa.merge.merge_stage:run_merge", False,
     "mergekit merge of selected checkpoints"),
    ("bake", "tempa.merge.bake:BakeStageConfig", "tempa.merge.bake:run_bake", False,
     "final model: baked thinking template, generation config, model card"),
]


def _lazy_run(ref: str) -> Callable[[Any, StageContext], StageResult]:
    """The run function named ``module:function``, imported on the first call."""
    module_name, _, name = ref.partition(":")

    def run(config: Any, ctx: StageContext) -> StageResult:
        return getattr(importlib.import_module(module_name), name)(config, ctx)

    run.__qualname__ = run.__name__ = name
    return run


def _load() -> dict[str, StageKind]:
    kinds: dict[str, StageKind] = {}
    for kind, config_ref, run_ref, resumable, summary in _KINDS:
        module_name, _, config_name = config_ref.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue  # that stage package is not part of this install
            raise
        config = getattr(module, config_name, None)
        if config is None:
            continue
        kinds[kind] = StageKind(kind, config, _lazy_run(run_ref), resumable, summary)
    return kinds


STAGE_KINDS: dict[str, StageKind] = _load()


def known_kinds() -> list[str]:
    return list(STAGE_KINDS)
