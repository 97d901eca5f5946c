"""The stage kinds a recipe may use: kind -> (config model, run function, whether it trains).

Stage packages own their configs and run functions; this table is the only place the runner
learns about them. A kind whose package is not installed/importable is simply not listed.
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


# kind, module, config class, run function, resumable, one-line summary
_KINDS = [
    ("sft", "tempa.sft.stage", "SFTStageConfig", "run_sft", True, "supervised fine-tuning with trl SFTTrainer"),
    ("synthesize", "tempa.alignment", "SynthesizeStageConfig", "run_synthesize", True,
     "teacher generation + judge/verifier filtering into an SFT dataset"),
    ("preference", "tempa.alignment", "PreferenceStageConfig", "run_preference", True,
     "on-policy sampling, scoring, pair building and DPO/APO rounds"),
    ("evaluate", "tempa.merge", "EvaluateStageConfig", "run_evaluate", False, "score checkpoints into a leaderboard"),
    ("merge", "tempa.merge", "MergeStageConfig", "run_merge", False, "mergekit merge of selected checkpoints"),
    ("bake", "tempa.merge", "BakeStageConfig", "run_bake", False,
     "final model: baked thinking template, generation config, model card"),
]


def _load() -> dict[str, StageKind]:
    kinds: dict[str, StageKind] = {}
    for kind, module_name, config_name, run_name, resumable, summary in _KINDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that stage package is not part of this install
            raise
        config = getattr(module, config_name, None)
        run = getattr(module, run_name, None)
        if config is None or run is None:
            continue
        kinds[kind] = StageKind(kind, config, run, resumable, summary)
    return kinds


STAGE_KINDS: dict[str, StageKind] = _load()


def known_kinds() -> list[str]:
    return list(STAGE_KINDS)
