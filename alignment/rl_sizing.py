"""Plan-time size of an `rl` stage (for `tempa plan --hardware`): what it trains on and what it samples.

Per epoch every prompt is sampled ``num_generations`` times; each completion is trained on as a prompt
plus the completion (:data:`~tempa.alignment.sizing.COMPLETION_FILL` of ``max_completion_length`` on
average), ``num_iterations`` times (GRPO's mu: trl trains each sampled batch that many times, sampling it
once). trl samples whole generation batches of prompts and drops the prompts left over each epoch, so the plan
counts only the prompts of whole batches on the hardware it plans for. Sampling is part of the stage: the plan
times it from the tokens decoded and prefilled.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from tempa.alignment.rl_config import RLStageConfig, generation_batch
from tempa.alignment.sizing import COMPLETION_FILL, prompt_tokens
from tempa.sft.data_size import count_local_rows
from tempa.sft.global_batch import accumulation_for, per_device_batch
from tempa.sft.stage_api import EstimateInputs, GenerationWork, TokenCount, TrainingWorkload


def estimate_rl(config: RLStageConfig, inputs: EstimateInputs) -> TrainingWorkload:
    """Tokens trained (prompt + completion per sample) and sampled per epoch, and what runs beside the policy."""
    train = config.train_args()
    written = config.prompts.limit or count_local_rows(config.prompts.path)
    prompts, dropped = trained_prompts(train, written, inputs)
    generations = int(train.get("num_generations") or 8)
    completion = int(train.get("max_completion_length") or 1024)
    sampled = int(COMPLETION_FILL * completion)
    prompt, measured = prompt_tokens(config.prompts, inputs.tokenizer)
    beta = float(train.get("beta", 0.0) or 0.0)
    iterations = int(train.get("num_iterations", 1) or 1)
    # trl recomputes the sampling policy's log-probs with a forward pass when sampling is off-policy:
    # several updates per batch, or vLLM's sampler (its importance-sampling correction, on by default).
    old_policy = iterations > 1 or train.get("use_vllm") is not False
    # On the GPUs it plans for, the worker samples with vLLM unless the recipe says use_vllm: false.
    colocated = train.get("use_vllm") is not False and train.get("vllm_mode", "colocate") == "colocate"
    memory = float(train.get("vllm_gpu_memory_utilization", 0.3)) if colocated else 0.0
    where = "prompts x num_generations x (measured or assumed) prompt + assumed completion length"
    shown = ("unknown (set prompts.limit)" if written is None else f"{written}" if prompts == written
             else f"{prompts or 0} trained of {written}")
    note = (f"prompts: {shown}; {generations} samples "
            f"per prompt, each a prompt of {measured} tokens + ~{sampled:,} completion tokens "
            f"({100 * COMPLETION_FILL:.0f}% of max_completion_length {completion:,})"
            + (f", each trained on {iterations} times (num_iterations)" if iterations > 1 else ""))
    notes = [note] + ([dropped] if dropped else [])
    rows = None if prompts is None else prompts * generations
    # trl steps through every sampled batch num_iterations times: that many more steps and trained tokens.
    trained = None if rows is None else rows * iterations
    tokens = TokenCount(None if trained is None else trained * (prompt + sampled), trained, where,
                        notes)
    engine = "transformers" if train.get("use_vllm") is False else f"vLLM {train.get('vllm_mode', 'colocate')}"
    generation = GenerationWork(
        sampled_tokens=None if rows is None else rows * sampled,
        prompt_tokens=None if rows is None else rows * prompt,
        gpu_memory_fraction=memory,
        how=f"{engine}, {'?' if rows is None else f'{rows * sampled:,}'} sampled tokens per epoch")
    # trl computes the KL reference of a peft model with its adapters disabled: no copy of the model then
    return TrainingWorkload(tokens=tokens, train_args=train, reference_model=beta > 0 and config.lora is None,
                            lora=config.lora,
                            sequence_tokens=prompt + completion,
                            # reference and old-policy passes: once per sampled batch, not per iteration
                            extra_forwards=math.ceil((int(beta > 0) + int(old_policy)) / iterations),
                            generation=generation)


def trained_prompts(train: dict[str, Any], prompts: int | None, inputs: EstimateInputs) -> tuple[int | None, str]:
    """The prompts trl trains on per epoch: whole generation batches of them (its RepeatSampler drops the rest),
    and a note when some are dropped. None when unknown, or when no batch fills (trl trains no step)."""
    train = dict(train)
    if inputs.global_batch_size is not None:
        with contextlib.suppress(ValueError):  # the plan warns of a global batch the hardware cannot make
            train["gradient_accumulation_steps"] = accumulation_for(
                inputs.global_batch_size, per_device_batch(train), inputs.data_parallel)
    try:
        batch = generation_batch(train, inputs.data_parallel)
    except ValueError as exc:
        return prompts, f"trl refuses this batch shape on {inputs.data_parallel} data-parallel processes: train.{exc}"
    if prompts is None:
        return None, ""
    whole = prompts // batch.prompts * batch.prompts
    if whole == 0:
        return None, (f"{prompts} prompts are fewer than one generation batch of {batch.prompts} prompts "
                      f"({batch.completions} completions): trl trains no step")
    left = prompts - whole
    return whole, (f"{left} of {prompts} prompts dropped each epoch: trl samples whole generation batches of "
                   f"{batch.prompts} prompts ({batch.completions} completions)" if left else "")
