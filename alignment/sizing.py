"""Plan-time sizes of the alignment stages (for `tempa plan --hardware`), without sampling anything.

A preference round trains on at most one pair per prompt, each side a prompt plus a sampled
answer; a synthesize stage writes at most its prompts times the answers it keeps per prompt
(exactly its rows once it has run). Sampling and scoring time are not estimated.
"""

from __future__ import annotations

from tempa.alignment.preference_config import PreferenceStageConfig
from tempa.alignment.synthesize_config import SynthesizeStageConfig
from tempa.sft.data_size import count_local_rows
from tempa.sft.stage_api import EstimateInputs, SourceSize, StageResult, TokenCount, TrainingWorkload

AVG_PROMPT_TOKENS = 200  # a prompt's tokens, rendered
COMPLETION_FILL = 0.5  # share of sampling.max_new_tokens an average sampled answer uses


def synthesized_size(config: SynthesizeStageConfig, result: StageResult | None) -> SourceSize:
    """What a synthesize stage writes: its rows once it has run, else an upper bound.

    Each prompt keeps its best answer (``select.strategy: best``) or up to ``sampling.n`` (``all``).
    A row is a prompt plus an answer filling ``COMPLETION_FILL`` of ``max_new_tokens``, and, with a
    second turn, a follow-up and a second answer.
    """
    from tempa.alignment.synthesize_stage import SynthesizeResult

    sampling = config.sampling
    per_row = AVG_PROMPT_TOKENS + int(COMPLETION_FILL * sampling.max_new_tokens)
    if config.second_turn is not None:
        per_row += int(COMPLETION_FILL * config.second_turn.followup_max_new_tokens)
        per_row += int(COMPLETION_FILL * sampling.max_new_tokens)
    if isinstance(result, SynthesizeResult):
        return SourceSize(result.rows, per_row, f"{config.name}'s output")
    prompts = config.prompts.limit or count_local_rows(config.prompts.path)
    if prompts is None:
        return SourceSize(None, per_row, f"unknown size: set prompts.limit on stage {config.name}")
    per_prompt = 1 if config.select.strategy == "best" else sampling.n
    how = (f"at most {prompts:,} prompts x {per_prompt} from stage {config.name} (fewer: rows under min_score "
           "are dropped; tokens/row from its max_new_tokens)")
    return SourceSize(prompts * per_prompt, per_row, how, at_most=True)


def estimate_preference(config: PreferenceStageConfig, inputs: EstimateInputs) -> TrainingWorkload:
    """Tokens of one round's pairs: one pair per prompt (or offline row), two sequences of prompt + answer."""
    train = config.train_args()
    source = config.prompts or config.offline
    assert source is not None  # the config requires prompts for on-policy rounds, else an offline dataset
    prompts = source.limit or count_local_rows(source.path)
    sampling = config.sampling
    per_sequence = min(int(train.get("max_length") or 1024),
                       AVG_PROMPT_TOKENS + int(COMPLETION_FILL * sampling.max_new_tokens))
    note = (f"prompts: {prompts if prompts is not None else 'unknown (set prompts.limit)'}; one pair per prompt "
            f"(an upper bound: pairs under min_margin are dropped), 2 x ~{per_sequence:,} tokens per pair "
            f"({AVG_PROMPT_TOKENS} prompt + {100 * COMPLETION_FILL:.0f}% of max_new_tokens "
            f"{sampling.max_new_tokens}); sampling {sampling.n} answers per prompt and scoring them not included")
    where = "prompts x assumed pair length"
    tokens = (TokenCount(None, None, where, [note]) if prompts is None
              else TokenCount(2 * prompts * per_sequence, prompts, where, [note]))
    # trl's DPOTrainer scores the reference with a peft model's adapters disabled: no copy of the model then
    return TrainingWorkload(tokens=tokens, train_args=train, sequences_per_row=2,
                            rounds=config.rounds + (config.offline is not None), lora=config.lora,
                            reference_model=config.lora is None and not train.get("precompute_ref_log_probs", False))
