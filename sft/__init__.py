"""tempa.sft: SFT data (load, normalise, curate, mix, tokenise, cache), the ``sft`` and ``pretrain``
(continued pre-training on raw text) stages and the training worker that every training stage launches.

The stage contract every stage package builds on (:mod:`tempa.sft.stage_api`) lives here, the lowest
floor that runs stages. Heavy imports (torch, transformers, trl, datasets) happen inside functions,
so importing the package is cheap.
"""

from tempa.sft.checkpoints import resume_point
from tempa.sft.data_size import estimate_sft
from tempa.sft.pretrain_config import PretrainStageConfig
from tempa.sft.pretrain_stage import PretrainResult, estimate_pretrain, run_pretrain
from tempa.sft.pretrain_stage import check_inputs as check_pretrain_inputs
from tempa.sft.pretrain_stage import input_warnings as pretrain_warnings
from tempa.sft.stage import SFTResult, SFTStageConfig, check_inputs, input_warnings, run_sft
from tempa.sft.stage_api import Artifact, StageKind
from tempa.sft.train_plan import check_lora_environment

SFT = StageKind(
    kind="sft",
    config=SFTStageConfig,
    run=run_sft,
    summary="supervised fine-tuning with trl SFTTrainer",
    produces=frozenset({Artifact.MODEL}),
    result=SFTResult,
    trains=True,
    resumable=True,
    resume_point=resume_point,
    estimate=estimate_sft,
    check_inputs=check_inputs,
    input_warnings=input_warnings,
    check_environment=check_lora_environment,
)

PRETRAIN = StageKind(
    kind="pretrain",
    config=PretrainStageConfig,
    run=run_pretrain,
    summary="continued pre-training on raw text: token budgets, document-bounded packing, loss on every token",
    produces=frozenset({Artifact.MODEL}),
    result=PretrainResult,
    trains=True,
    resumable=True,
    resume_point=resume_point,
    estimate=estimate_pretrain,
    check_inputs=check_pretrain_inputs,
    input_warnings=pretrain_warnings,
)

STAGE_KINDS = (SFT, PRETRAIN)

__all__ = ["PRETRAIN", "SFT", "STAGE_KINDS", "PretrainResult", "PretrainStageConfig", "SFTResult", "SFTStageConfig", "run_pretrain",
           "run_sft"]
