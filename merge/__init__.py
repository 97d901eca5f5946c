"""tempa.merge: checkpoint evaluation and selection, mergekit merges, and the final bake.

Three stage kinds, each a pydantic config and a ``run(config, ctx)`` function:

- ``evaluate``: score candidate checkpoints with the recipe's suites into a leaderboard;
- ``merge``: merge the top-k (or listed) models with mergekit and re-score the merge;
- ``bake``: the final folder (weights, thinking template, generation config, model card).
"""

from tempa.merge.bake import BakeStageConfig, run_bake
from tempa.merge.evaluate_config import EvaluateStageConfig
from tempa.merge.evaluate_stage import run_evaluate
from tempa.merge.merge_config import MergeStageConfig
from tempa.merge.merge_stage import run_merge

__all__ = [
    "BakeStageConfig",
    "EvaluateStageConfig",
    "MergeStageConfig",
    "run_bake",
    "run_evaluate",
    "run_merge",
]
