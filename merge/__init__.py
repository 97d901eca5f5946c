"""tempa.merge: checkpoint evaluation and selection, mergekit merges, and the final bake.

Three stage kinds, each a pydantic config and a ``run(config, ctx)`` function:

- ``evaluate``: score candidate checkpoints with the recipe's suites into a leaderboard;
- ``merge``: merge the top-k (or listed) models with mergekit and re-score the merge;
- ``bake``: the final folder (weights, thinking template, generation config, model card).

The names below are imported on first use: importing ``tempa.merge.<module>`` (a config, to
validate a recipe) must not pull in torch and mergekit.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BakeStageConfig": "tempa.merge.bake",
    "run_bake": "tempa.merge.bake",
    "EvaluateStageConfig": "tempa.merge.evaluate_config",
    "run_evaluate": "tempa.merge.evaluate_stage",
    "MergeStageConfig": "tempa.merge.merge_config",
    "run_merge": "tempa.merge.merge_stage",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tempa.merge' has no attribute {name!r}")
