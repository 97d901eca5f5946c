"""tempa.alignment: sampling backends, rewards and judges, on-policy preference pairs, teacher synthesis.

Stage kinds (``STAGE_KINDS``, collected by the recipe runner):

- ``synthesize``: teacher generation + verifier/judge rejection sampling -> an SFT dataset.
- ``preference``: N rounds of on-policy sampling -> rewards -> best/worst pairs -> trl DPOTrainer.
- ``translate``: a teacher translates prompts or conversations (filters, optional judge) -> a dataset.
- ``generate_prompts``: a teacher writes prompts per topic (filters, judge threshold) -> a prompts dataset.
- ``rl``: reinforcement learning with verifiable rewards: trl GRPOTrainer / RLOOTrainer scored by tempa's rewards.

Heavy imports (torch, transformers, trl) happen inside functions, so importing the package is cheap.
"""

from tempa.alignment.api_requests import (
    generate_prompts_requests,
    preference_requests,
    synthesize_requests,
    translate_requests,
)
from tempa.alignment.backends import (
    BackendConfig,
    HTTPBackendConfig,
    SamplingBackend,
    TransformersBackendConfig,
    TransformersSampler,
    VLLMBackendConfig,
    build_backend,
)
from tempa.alignment.completions import Completion, assistant_message, split_think
from tempa.alignment.generate_prompts_stage import (
    GeneratePromptsResult,
    GeneratePromptsStageConfig,
    generated_size,
    run_generate_prompts,
)
from tempa.alignment.input_checks import (
    check_api_keys,
    check_inputs,
    check_training_environment,
    input_warnings,
)
from tempa.alignment.judge import Judge, JudgeSettings, parse_judge_score
from tempa.alignment.pairs import Pair, PairStats, Scored, best_worst, revision_pair
from tempa.alignment.preference_config import PreferenceStageConfig
from tempa.alignment.preference_stage import (
    PreferenceResult,
    preference_journals,
    preference_resume_point,
    run_preference,
)
from tempa.alignment.prompts import PromptRow, PromptSource, load_prompts
from tempa.alignment.rewards import RewardConfig, RewardSet, ScoreItem, ScoringEnv
from tempa.alignment.rl_config import RLStageConfig
from tempa.alignment.rl_sizing import estimate_rl
from tempa.alignment.rl_stage import RLResult, run_rl
from tempa.alignment.selection import select_samples
from tempa.alignment.sizing import estimate_preference, synthesized_size
from tempa.alignment.synthesize_config import SynthesizeStageConfig
from tempa.alignment.synthesize_stage import (
    SynthesizeResult,
    run_synthesize,
    synthesize_journals,
    synthesize_resume_point,
)
from tempa.alignment.teacher_text import teacher_text_journals, teacher_text_resume_point
from tempa.alignment.translate_stage import (
    TranslateResult,
    TranslateStageConfig,
    run_translate,
    translated_size,
)
from tempa.chat_templates.thinking import ThinkSplit
from tempa.sft.checkpoints import resume_point
from tempa.sft.stage_api import Artifact, StageKind

SYNTHESIZE = StageKind(
    kind="synthesize",
    config=SynthesizeStageConfig,
    run=run_synthesize,
    summary="teacher generation + judge/verifier filtering into an SFT dataset",
    produces=frozenset({Artifact.DATASET}),
    result=SynthesizeResult,
    resumable=True,
    resume_point=synthesize_resume_point,
    journals=synthesize_journals,
    dataset_size=synthesized_size,
    check_inputs=check_inputs,
    input_warnings=input_warnings,
    check_environment=check_api_keys,
    api_requests=synthesize_requests,
)
PREFERENCE = StageKind(
    kind="preference",
    config=PreferenceStageConfig,
    run=run_preference,
    summary="on-policy sampling, scoring, pair building and DPO/APO rounds",
    produces=frozenset({Artifact.MODEL}),
    result=PreferenceResult,
    trains=True,
    resumable=True,
    resume_point=preference_resume_point,
    journals=preference_journals,
    estimate=estimate_preference,
    check_inputs=check_inputs,
    input_warnings=input_warnings,
    check_environment=check_training_environment,
    api_requests=preference_requests,
)
TRANSLATE = StageKind(
    kind="translate",
    config=TranslateStageConfig,
    run=run_translate,
    summary="teacher machine translation of prompts or conversations, filtered and judged, into a dataset",
    produces=frozenset({Artifact.DATASET}),
    result=TranslateResult,
    resumable=True,
    resume_point=teacher_text_resume_point,
    journals=teacher_text_journals,
    dataset_size=translated_size,
    check_environment=check_api_keys,
    api_requests=translate_requests,
)
GENERATE_PROMPTS = StageKind(
    kind="generate_prompts",
    config=GeneratePromptsStageConfig,
    run=run_generate_prompts,
    summary="teacher-written prompts per topic (Magpie-style), filtered and judged, into a prompts dataset",
    produces=frozenset({Artifact.DATASET}),
    result=GeneratePromptsResult,
    resumable=True,
    resume_point=teacher_text_resume_point,
    journals=teacher_text_journals,
    dataset_size=generated_size,
    check_environment=check_api_keys,
    api_requests=generate_prompts_requests,
)
RL = StageKind(
    kind="rl",
    config=RLStageConfig,
    run=run_rl,
    summary="reinforcement learning with verifiable rewards (trl GRPO / RLOO), sampling while it trains",
    produces=frozenset({Artifact.MODEL}),
    result=RLResult,
    trains=True,
    resumable=True,
    resume_point=resume_point,
    estimate=estimate_rl,
    check_inputs=check_inputs,
    input_warnings=input_warnings,
    check_environment=check_training_environment,
)
STAGE_KINDS = (SYNTHESIZE, PREFERENCE, RL, TRANSLATE, GENERATE_PROMPTS)

__all__ = [
    "GENERATE_PROMPTS",
    "PREFERENCE",
    "RL",
    "STAGE_KINDS",
    "SYNTHESIZE",
    "TRANSLATE",
    "BackendConfig",
    "Completion",
    "HTTPBackendConfig",
    "Judge",
    "JudgeSettings",
    "Pair",
    "PairStats",
    "PreferenceStageConfig",
    "PromptRow",
    "PromptSource",
    "RLResult",
    "RLStageConfig",
    "RewardConfig",
    "RewardSet",
    "SamplingBackend",
    "ScoreItem",
    "Scored",
    "ScoringEnv",
    "SynthesizeStageConfig",
    "ThinkSplit",
    "TransformersBackendConfig",
    "TransformersSampler",
    "VLLMBackendConfig",
    "assistant_message",
    "best_worst",
    "build_backend",
    "load_prompts",
    "parse_judge_score",
    "revision_pair",
    "run_preference",
    "run_rl",
    "run_synthesize",
    "select_samples",
    "split_think",
]
