"""tempa.merge: checkpoint evaluation and selection, mergekit merges, and the final bake.

Three stage kinds (``STAGE_KINDS``), each a pydantic config and a ``run(config, ctx)`` function:

- ``evaluate``: score candidate checkpoints with the recipe's suites into a leaderboard;
- ``merge``: merge the top-k (or listed) models with mergekit and re-score the merge;
- ``bake``: the final folder (weights, thinking template, generation config, model card); the
  loader appends one when a recipe has none.

Importing the package is cheap: torch, transformers and mergekit are imported inside the
functions that use them, so validating a recipe never loads them.
"""

from tempa.alignment.input_checks import check_api_keys
from tempa.merge.bake import BakeStageConfig, run_bake
from tempa.merge.evaluate_config import EvaluateStageConfig
from tempa.merge.evaluate_stage import EvaluateResult, run_evaluate
from tempa.merge.evaluate_stage import check_inputs as check_evaluate_inputs
from tempa.merge.merge_config import MergeStageConfig
from tempa.merge.merge_stage import MergeResult, run_merge
from tempa.merge.model_card import card_recipe
from tempa.sft.run_layout import FINAL_DIR
from tempa.sft.stage_api import Artifact, StageKind

EVALUATE = StageKind(
    kind="evaluate",
    config=EvaluateStageConfig,
    run=run_evaluate,
    summary="score checkpoints into a leaderboard",
    produces=frozenset({Artifact.LEADERBOARD}),
    result=EvaluateResult,
    check_inputs=check_evaluate_inputs,
    check_environment=check_api_keys,  # a win-rate suite's hosted baseline and judge
)
MERGE = StageKind(
    kind="merge",
    config=MergeStageConfig,
    run=run_merge,
    summary="mergekit merge of selected checkpoints",
    produces=frozenset({Artifact.MODEL}),
    result=MergeResult,
    reads_start_model=False,  # it merges its `models` or the selection from `evaluate_stage`
)
BAKE = StageKind(
    kind="bake",
    config=BakeStageConfig,
    run=run_bake,
    summary="final model: baked thinking template, generation config, model card",
    produces=frozenset({Artifact.MODEL}),
    sees_all_earlier=True,  # its model card describes every stage
    shows_recipe=card_recipe,
    kept_until_replaced=(FINAL_DIR,),  # the last good final model stays until the new one replaces it
)
STAGE_KINDS = (EVALUATE, MERGE, BAKE)

__all__ = [
    "BAKE",
    "EVALUATE",
    "MERGE",
    "STAGE_KINDS",
    "BakeStageConfig",
    "EvaluateStageConfig",
    "MergeStageConfig",
    "run_bake",
    "run_evaluate",
    "run_merge",
]
