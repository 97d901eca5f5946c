"""Plan-time sizes of the alignment stages (for `tempa plan --hardware`), without sampling anything.

A preference round trains on at most one pair per prompt, each side a prompt plus a sampled
answer; a synthesize stage writes at most its prompts times the answers it keeps per prompt
(exactly its rows once it has run). Sampling and scoring time are not estimated.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from tempa.alignment.offline_pairs import OfflinePairs, PairRejected, curated_pair, pair_mode
from tempa.alignment.preference_config import PreferenceStageConfig
from tempa.alignment.synthesize_config import SynthesizeStageConfig
from tempa.sft.data_size import count_local_rows
from tempa.sft.formats import spec_for
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


def prompt_tokens(source: Any, tokenizer: Any) -> tuple[int, str]:
    """The mean tokens of a prompt as it is sampled from (rendered with the generation prompt) over up to 256 rows
    drawn across a local prompts file, with ``tokenizer`` (the base model's with the recipe's template), and how it
    was found; :data:`AVG_PROMPT_TOKENS` (assumed) for a hub dataset, a stage's output, no tokenizer, or a file of
    which no drawn row is a prompt."""
    from tempa.alignment.prompts import to_prompt
    from tempa.sft.data_size import SAMPLED_ROWS, scan_local_rows
    from tempa.sft.stage_api import StageError

    assumed = AVG_PROMPT_TOKENS, f"~{AVG_PROMPT_TOKENS} assumed"
    found = scan_local_rows(source.path, SAMPLED_ROWS) if tokenizer is not None else None
    if found is None or found.error is not None:
        return assumed
    sizes = []
    for index, row in enumerate(found.row_objects()):
        with contextlib.suppress(StageError, ValueError, TypeError):  # a bad row: the stage names it
            prompt = to_prompt(row, index, source, with_tools=True)
            kwargs = {} if prompt.thinking_mode is None else {"thinking_mode": prompt.thinking_mode}
            sizes.append(len(tokenizer.apply_chat_template(prompt.messages, tools=prompt.tools or None, tokenize=True,
                                                           add_generation_prompt=True, return_dict=True,
                                                           **kwargs)["input_ids"]))
    if not sizes:
        return assumed
    return round(sum(sizes) / len(sizes)), f"~{round(sum(sizes) / len(sizes)):,} measured on {len(sizes)} drawn rows"


def offline_pairs_size(offline: OfflinePairs, tokenizer: Any, max_length: int) -> tuple[int, int, str] | None:
    """(pairs, tokens of one pass over them: both sides, prompt included, each cut at ``max_length``, and how that was
    measured) of a local offline file, from up to 256 rows drawn across it read by the stage's row rules and rendered
    with ``tokenizer`` (the base model's with the recipe's template), else at ~4 bytes a token; None for a hub dataset
    or a file of which no drawn row is a pair."""
    from tempa.sft.data_size import BYTES_PER_TOKEN, SAMPLED_ROWS, scan_local_rows

    found = scan_local_rows(offline.path, SAMPLED_ROWS, offline.split)
    if found is None or found.error is not None:
        return None
    drawn, spec, sizes = found.sampled_rows(), spec_for(offline.source()), []
    for raw in drawn:
        try:
            prompt, chosen, rejected, tools = curated_pair(raw, offline, spec)
        except PairRejected:
            continue
        chosen, rejected, kwargs = pair_mode(offline, chosen, rejected)
        sizes.append(sum(min(max_length, _rendered_tokens(tokenizer, [*prompt, *side], tools, kwargs))
                         for side in (chosen, rejected)))
    if not sizes:
        return None
    rows = min(found.rows, offline.limit) if offline.limit else found.rows
    pairs = round(rows * len(sizes) / len(drawn))
    how = ("with the base model's tokenizer and the recipe's template" if tokenizer is not None
           else f"at ~{BYTES_PER_TOKEN:g} bytes a token")
    return pairs, round(pairs * sum(sizes) / len(sizes)), f"{len(drawn)} drawn rows, {how}"


def _rendered_tokens(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, kwargs: dict[str, Any]) -> int:
    from tempa.sft.data_size import BYTES_PER_TOKEN

    if tokenizer is not None:
        with contextlib.suppress(Exception):  # a side the template refuses: the stage sets it aside; count its bytes
            return len(tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=True, return_dict=True,
                                                     **kwargs)["input_ids"])
    return round(len(json.dumps([messages, tools], ensure_ascii=False).encode("utf-8")) / BYTES_PER_TOKEN)


def estimate_preference(config: PreferenceStageConfig, inputs: EstimateInputs) -> TrainingWorkload:
    """Tokens of one round's pairs, two sequences of prompt + answer each: an offline round's measured on its local
    file (:func:`offline_pairs_size`), an on-policy round's as one pair per prompt of an assumed length. With both,
    tokens/epoch is their mean over the rounds (the trained total is theirs added up)."""
    train = config.train_args()
    max_length = int(train.get("max_length") or 1024)
    sampling = config.sampling
    prompt, how = prompt_tokens(config.prompts, inputs.tokenizer) if config.prompts is not None else \
        (AVG_PROMPT_TOKENS, f"~{AVG_PROMPT_TOKENS} assumed")
    per_sequence = min(max_length, prompt + int(COMPLETION_FILL * sampling.max_new_tokens))
    assumed = (f"2 x ~{per_sequence:,} tokens per pair (prompt {how} + {100 * COMPLETION_FILL:.0f}% of "
               f"max_new_tokens {sampling.max_new_tokens})")
    rounds: list[tuple[int | None, int | None]] = []  # (tokens, pairs) of each round
    notes = []
    if config.offline is not None:
        measured = offline_pairs_size(config.offline, inputs.tokenizer, max_length)
        if measured is not None:
            pairs, tokens, how = measured
            rounds.append((tokens, pairs))
            notes.append(f"offline round: ~{pairs:,} pairs, ~{tokens:,} tokens (both sides, prompt included, each cut "
                         f"at max_length {max_length:,}), measured on {how}")
        else:
            rows = config.offline.limit or count_local_rows(config.offline.path)
            rounds.append((None if rows is None else 2 * rows * per_sequence, rows))
            notes.append(f"offline round: {rows if rows is not None else 'unknown (set offline.limit)'} rows, one pair "
                         f"each, {assumed}")
    if config.rounds:
        assert config.prompts is not None  # the config requires prompts for on-policy rounds
        prompts = config.prompts.limit or count_local_rows(config.prompts.path)
        rounds += [(None if prompts is None else 2 * prompts * per_sequence, prompts)] * config.rounds
        notes.append(f"on-policy rounds: prompts {prompts if prompts is not None else 'unknown (set prompts.limit)'}; "
                     f"one pair per prompt (an upper bound: pairs under min_margin are dropped), {assumed}; sampling "
                     f"{sampling.n} answers per prompt and scoring them not included")
    where = "offline pairs measured" if config.offline is not None and config.rounds == 0 else \
        "prompts x assumed pair length"
    if any(tokens is None for tokens, _ in rounds):
        count = TokenCount(None, None, where, notes)
    else:
        if len({tokens for tokens, _ in rounds}) > 1:
            notes.append("the rounds differ in size: tokens/epoch is their mean")
        count = TokenCount(round(sum(t for t, _ in rounds) / len(rounds)),
                           round(sum(p for _, p in rounds) / len(rounds)), where, notes)
    # trl's DPOTrainer scores the reference with a peft model's adapters disabled: no copy of the model then
    return TrainingWorkload(tokens=count, train_args=train, sequences_per_row=2, rounds=len(rounds), lora=config.lora,
                            reference_model=config.lora is None and not train.get("precompute_ref_log_probs", False))
