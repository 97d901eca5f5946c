"""What a sampling stage (preference, synthesize, rl) checks of its own inputs before the run's first stage.

The runner calls :func:`check_inputs` for every stage that will run, before any of them starts, and
`tempa plan` calls it too; :func:`check_api_keys` (every stage with a teacher, judge or reviser) is the
run's refusal and the plan's warning. A typo in a prompts file, or an API key not exported in this shell,
would otherwise be found only when the stage starts, after the stages before it trained (and, for a judge's
key, after the stage sampled every prompt). Nothing here loads a model or reaches a hub: a prompts file
is read only when it is local (an earlier stage's dataset does not exist yet, a hub dataset would be
downloaded); the stage checks those itself when it loads them (:func:`check_reward_inputs`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tempa.alignment.backends import HTTPBackendConfig, read_api_key
from tempa.alignment.offline_pairs import OfflinePairs, PairRejected, curated_pair
from tempa.alignment.prompts import PromptRow, PromptSource, load_prompts
from tempa.alignment.rewards import AnswerReward, JudgeReward, LanguageReward
from tempa.sft.formats import spec_for
from tempa.sft.stage_api import StageError, stage_ref
from tempa.sft.train_plan import check_lora_environment


def http_backends(node: Any, field: str = "") -> Iterator[tuple[str, HTTPBackendConfig]]:
    """Every HTTP backend block in a stage config, with the recipe field it sits at (``rewards[0].backend``)."""
    if isinstance(node, HTTPBackendConfig):
        yield field, node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from http_backends(getattr(node, name), f"{field}.{name}" if field else name)
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from http_backends(value, f"{field}[{index}]")


def check_api_keys(config: BaseModel) -> None:
    """Each HTTP backend's ``api_key_env`` names a variable set in this environment to a key an HTTP header can carry
    (its value is never shown)."""
    for field, backend in http_backends(config):
        if not backend.api_key_env:
            continue
        try:
            read_api_key(backend.api_key_env)
        except StageError as exc:
            # Only a variable that is not set is fixed by exporting it; one that holds a bad key, by fixing the value.
            unset = not os.environ.get(backend.api_key_env, "").strip()
            raise StageError(f"{field}.api_key_env: {exc} (the API key for {backend.base_url})"
                             f"{'; export it before the run' if unset else ''}") from None


def check_training_environment(config: BaseModel) -> None:
    """A training sampling stage's (preference, rl) API keys, and its QLoRA's bitsandbytes."""
    check_api_keys(config)
    check_lora_environment(config)


def check_reward_inputs(rewards: Sequence[Any], prompts: Sequence[PromptRow], source: PromptSource) -> None:
    """A reward that reads a prompt column no prompt has would never apply: every sample would go unscored by it
    (a misspelt `answer_field` silently trained on the other rewards alone)."""
    for reward in rewards:
        if isinstance(reward, AnswerReward):
            column, field = source.answer_field, "answer_field"
            present = any(p.answer is not None and str(p.answer).strip() for p in prompts)
        elif isinstance(reward, LanguageReward):
            column, field = source.language_field, "language_field"
            present = any(p.language for p in prompts)
        else:
            continue
        if not present:
            raise StageError(f"{source.path}: column '{column}' (prompts.{field}) is empty in all {len(prompts)} "
                             f"prompts, so reward '{reward.key}' ({reward.type}) would never apply")


# How many rows a warning names before "...": enough to find the pattern in a file, not a page of line numbers.
_NAMED_ROWS = 5


def empty_answer_warning(rewards: Sequence[Any], prompts: Sequence[PromptRow], source: PromptSource) -> str | None:
    """The prompts whose answer is an empty string, when an answer reward reads them (None when there are none, or
    when no prompt has an answer: :func:`check_reward_inputs` refuses that). Such a row is unscored by the reward and
    trains on the other rewards alone, or on nothing where the answer rewards are all there are, as a row without the
    field does; but a null or a missing field says so on
    purpose, while "" is as often a missing value a parquet or spreadsheet export wrote, so it is named: the file,
    the count and the first rows."""
    answers = [reward for reward in rewards if isinstance(reward, AnswerReward)]
    if not answers:
        return None
    empty = [p for p in prompts if isinstance(p.answer, str) and not p.answer.strip()]
    if not empty or not any(p.answer is not None and str(p.answer).strip() for p in prompts):
        return None
    rows = [str(p.meta.get("row", p.id)) for p in empty[:_NAMED_ROWS]]
    named = ", ".join(rows) + (", ..." if len(empty) > _NAMED_ROWS else "")
    # with no other reward their samples have no total (rewards.combine): never paired, and in rl every reward
    # function returns None, which trl gives no advantage
    effect = ("they train on the other rewards alone" if len(answers) < len(rewards)
              else "with no other reward their samples score nothing and teach nothing")
    return (f"{source.path}: column '{source.answer_field}' (prompts.answer_field) is an empty string in "
            f"{len(empty)} of {len(prompts)} prompts ({named}): reward '{answers[0].key}' leaves them unscored, so "
            f"{effect}; give them their answer, or write null (or leave the field out) in a row that has none on "
            "purpose")


def check_tool_prompts(config: Any, prompts: Sequence[PromptRow], source: PromptSource) -> None:
    """A preference stage samples, pairs and trains a prompt with its tools and tool loop; the parts that would see
    only its question refuse it here, naming the row, rather than score or rewrite answers blind to the tools and
    tool results. A judge sees them through ``{conversation}`` (the built-in rubric shows it for such prompts)."""
    for prompt in prompts:
        if not prompt.uses_tools:
            continue
        where = f"{source.path}: {prompt.meta.get('row', prompt.id)}"
        pairs = getattr(config, "pairs", None)
        if pairs is not None and pairs.strategy == "revise":
            raise StageError(f"{where}: offers tools or holds a tool loop, but pairs.strategy 'revise' rewrites an "
                             "answer from the question alone (the reviser sees no tools or tool results); use "
                             "strategy best_worst for such prompts")
        for index, reward in enumerate(config.rewards):
            if isinstance(reward, JudgeReward) and reward.rubric and "{conversation}" not in reward.rubric:
                raise StageError(f"{where}: holds tools or a tool loop, but judge '{reward.key}' (rewards[{index}]) "
                                 "would see only its question, not the tools or tool results; give the judge a rubric "
                                 "with {conversation}, or leave rubric unset for the built-in one")


def check_offline_pairs(offline: OfflinePairs) -> None:
    """A local offline pairs file of which no drawn row is a pair (a column named `reject`, say) is refused: the stage
    would find it only once the stages before it have trained. Up to 256 rows drawn across the file are read by the
    stage's own row rules (columns, turns, role order, reasoning); the stage still judges every row."""
    from tempa.sft.data_size import SAMPLED_ROWS, scan_local_rows

    found = scan_local_rows(offline.path, SAMPLED_ROWS, offline.split)
    if found is None:
        return  # a hub dataset: the stage reads it
    if found.error is not None:
        raise StageError(f"offline.path {offline.path}: {found.error}")
    rows = found.sampled_rows()
    if not rows:
        raise StageError(f"offline.path {offline.path}: holds no row (expected rows of {offline.prompt!r}, "
                         f"{offline.chosen!r} and {offline.rejected!r})")
    spec = spec_for(offline.source())
    reasons: Counter[str] = Counter()
    first = ""
    for place, raw in zip(found.places, rows, strict=True):
        try:
            curated_pair(raw, offline, spec)
            return  # one pair: the stage judges the rest
        except PairRejected as exc:
            reasons[exc.reason] += 1
            first = first or f"{place}: {exc.detail}"
    drawn = f"of {len(rows)} rows drawn across its {found.rows:,}" if len(rows) < found.rows else \
        f"of its {len(rows)} rows"
    said = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common())
    raise StageError(f"offline.path {offline.path}: none {drawn} is a usable pair ({said}); first: {first}")


def _local_prompts(config: Any) -> tuple[list[PromptRow], PromptSource] | None:
    """The stage's prompts when its prompts file is local (None for an earlier stage's dataset, a hub dataset or a
    preference stage with only an offline round), read as the stage reads them."""
    source: PromptSource | None = getattr(config, "prompts", None)
    if source is None or stage_ref(source.path) is not None or not Path(source.path).exists():
        return None
    if getattr(config, "rounds", 1) == 0:
        return None  # a preference stage with only an offline round samples no prompts
    # With shuffle, which rows `limit` keeps depends on the recipe's seed, which this check is not given: read all.
    preference = getattr(config, "kind", None) == "preference"  # the one stage kind that renders tools everywhere
    prompts = load_prompts(source.model_copy(update={"limit": None}) if source.shuffle else source, seed=0,
                           with_tools=preference)
    return prompts, source


def check_inputs(config: Any) -> None:
    """The stage's local prompts file: every row the stage would read, and the columns its rewards need; a preference
    stage's local offline pairs (:func:`check_offline_pairs`)."""
    offline: OfflinePairs | None = getattr(config, "offline", None)
    if offline is not None:
        check_offline_pairs(offline)
    local = _local_prompts(config)
    if local is None:
        return
    prompts, source = local
    check_reward_inputs(config.rewards, prompts, source)
    if getattr(config, "kind", None) == "preference":
        check_tool_prompts(config, prompts, source)


def input_warnings(config: Any) -> list[str]:
    """What the stage's local prompts file holds that is likely a mistake, one line each, for `tempa plan` and the
    run's start: the rows with an empty answer (:func:`empty_answer_warning`). A refused file (:func:`check_inputs`)
    warns of nothing."""
    try:
        local = _local_prompts(config)
    except StageError:
        return []
    if local is None:
        return []
    prompts, source = local
    warning = empty_answer_warning(getattr(config, "rewards", None) or (), prompts, source)
    return [warning] if warning else []
