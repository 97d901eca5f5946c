"""tempa.sft: SFT data (load, normalise, curate, mix, tokenise, cache), the ``sft`` stage and the
training worker that every training stage launches.

The stage contract every stage package builds on (:mod:`tempa.sft.stage_api`) lives here, the lowest
floor that runs stages. Heavy imports (torch, transformers, trl, datasets) happen inside functions,
so importing the package is cheap.
"""

from tempa.sft.data_size import estimate_sft
from tempa.sft.stage import SFTResult, SFTStageConfig, run_sft
from tempa.sft.stage_api import Artifact, StageKind

SFT = StageKind(
    kind="sft",
    config=SFTStageConfig,
    run=run_sft,
    summary="supervised fine-tuning with trl SFTTrainer",
    produces=frozenset({Artifact.MODEL}),
    result=SFTResult,
    trains=True,
    resumable=True,
    estimate=estimate_sft,
)

STAGE_KINDS = (SFT,)

__all__ = ["SFT", "STAGE_KINDS", "SFTResult", "SFTStageConfig", "run_sft"]
