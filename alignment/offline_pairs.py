"""Offline preference data: an existing chosen/rejected dataset, curated into DPO pairs.

A row is UltraFeedback-style: ``prompt`` / ``chosen`` / ``rejected``, each either plain text or a
list of ``{role, content}`` turns (``reasoning_content`` on assistant turns is kept; a tool loop's
``tool_calls`` and ``tool`` results too), and optionally the ``tools`` it offers, which every rendering
of the pair (its check here, trl's training) is given. ``chosen`` and
``rejected`` may also be whole conversations that repeat the prompt (trl's implicit-prompt form):
their shared leading turns are then the prompt. Files are read by the sft readers (JSON Lines
through tempa's one JSONL reader, Parquet, ``save_to_disk`` folders, hub ids), turns by the sft
row reader, and the sft curation rules apply to each side (malformed reasoning, role order).
A row that breaks a rule goes to ``rejects.jsonl`` with its reason; so does a pair whose two sides
render to the same token ids (``identical_pair``) and a repeat of an earlier pair (``duplicate_pair``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tempa.alignment.pair_rendering import completion_ids, rendered_check
from tempa.chat_templates.json_files import text_error
from tempa.chat_templates.thinking import mode_kwargs
from tempa.sft import curation
from tempa.sft.data_config import SourceConfig
from tempa.sft.formats import RowError, normalize_row, spec_for, tools_of
from tempa.sft.stage_api import OnOff, resolve_path

IDENTICAL_PAIR = "identical_pair"
DUPLICATE_PAIR = "duplicate_pair"
UNRENDERABLE = "unrenderable"


class OfflinePairs(BaseModel):
    """An existing preference dataset, trained as the stage's first round (before any on-policy round)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="A .jsonl/.json/.parquet/.csv file, a `save_to_disk` folder or a hub dataset id "
                      "(relative paths: against the recipe's folder).")
    split: str = Field(default="train", description="Split of a hub dataset or DatasetDict folder.")
    subset: str | None = Field(default=None, description="Hub dataset configuration name.")
    revision: str | None = Field(default=None, description="Hub dataset revision; pin it for reproducible runs.")
    prompt: str = Field(default="prompt", description="Prompt column (text or turns; optional when chosen and "
                        "rejected repeat the prompt).")
    chosen: str = Field(default="chosen", description="Chosen column (text or turns).")
    rejected: str = Field(default="rejected", description="Rejected column (text or turns).")
    tools: str = Field(default="tools", description="Column with the tool definitions the conversation offers "
                       "(a list of OpenAI-style definitions or that list as JSON text; optional).")
    thinking_mode: OnOff = Field(
        default="on", description="`on`: a pair with a reasoning trace (`reasoning_content`) renders with thinking "
        "on, one without renders off (as sft renders a turn without a trace); `off`: every pair renders off, "
        "traces dropped.")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N rows.")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str, info: ValidationInfo) -> str:
        return resolve_path(value, info, must_exist=True)

    def source(self) -> SourceConfig:
        return SourceConfig.model_construct(name="offline", path=self.path, split=self.split, subset=self.subset,
                                            revision=self.revision, format="messages")


@dataclass
class OfflineResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    read: int = 0

    def dropped(self) -> dict[str, int]:
        return dict(sorted(Counter(r["reason"] for r in self.rejects).items()))


def load_offline_pairs(config: OfflinePairs, tokenizer: Any, *, cache_dir: Path | None = None) -> OfflineResult:
    """The curated pairs (the same row shape as on-policy pairs) and the rejects with their reasons."""
    from tempa.sft.sources import RAW, READ_ERROR, load_source, row_names  # imports datasets: only when used

    source = config.source()
    dataset = load_source(source, cache_dir=cache_dir)
    names = row_names(source)
    spec = spec_for(source)
    out = OfflineResult()
    seen: set[tuple[Any, ...]] = set()
    for index, raw in enumerate(dataset):
        if config.limit is not None and out.read >= config.limit:
            break
        label = names.label(index)
        if RAW in raw and not (raw[RAW] or "").strip() and not raw.get(READ_ERROR):
            continue  # a blank line of a JSON Lines file
        out.read += 1
        try:
            prompt, chosen, rejected, tools = curated_pair(raw, config, spec)
        except PairRejected as exc:
            out.rejects.append({"row": label, "reason": exc.reason, "detail": exc.detail})
            continue
        chosen, rejected, kwargs = pair_mode(config, chosen, rejected)
        chosen_ids = completion_ids(tokenizer, prompt, chosen, kwargs, tools=tools)
        rejected_ids = completion_ids(tokenizer, prompt, rejected, kwargs, tools=tools)
        if chosen_ids is None or rejected_ids is None:
            out.rejects.append({"row": label, "reason": UNRENDERABLE, "detail": "the chat template refused a side"})
            continue
        if chosen_ids == rejected_ids:
            out.rejects.append({"row": label, "reason": IDENTICAL_PAIR,
                                "detail": "chosen and rejected render to the same tokens"})
            continue
        key = (json.dumps([prompt, tools], sort_keys=True, ensure_ascii=False), chosen_ids, rejected_ids)
        if key in seen:
            out.rejects.append({"row": label, "reason": DUPLICATE_PAIR, "detail": "repeats an earlier pair"})
            continue
        seen.add(key)
        out.rows.append({"prompt_id": label, "prompt": prompt, "chosen": chosen, "rejected": rejected,
                         "tools": tools, "chat_template_kwargs": kwargs, "source": "offline",
                         "rendered": rendered_check(chosen_ids, rejected_ids)})
    return out


class PairRejected(ValueError):
    """A row that is no pair: the curation reason (``malformed_row``, a role-order or reasoning rule) and its detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def curated_pair(raw: Mapping[str, Any], config: OfflinePairs, spec: Any) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]] | None]:
    """A row's (prompt, chosen, rejected, tools) by the sft row rules (columns, turns, role order, reasoning);
    :class:`PairRejected` names the rule it breaks. Rendering is the stage's (it needs the tokenizer)."""
    try:
        row = offline_row(raw)
        prompt, chosen, rejected = pair_turns(row, config, spec)
        tools = tools_of(row.get(config.tools), repr(config.tools))
    except RowError as exc:
        raise PairRejected(curation.MALFORMED_ROW, str(exc)) from None
    broken = next((r for side in (chosen, rejected) for r in (
        curation.check_role_order([*prompt, *side]), curation.check_reasoning([*prompt, *side])) if r), None)
    if broken is not None:
        raise PairRejected(*broken)
    return prompt, chosen, rejected, tools


def offline_row(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """One row as read (a JSON Lines line's text, or a typed row) as a mapping; RowError says why it is none."""
    from tempa.sft.sources import RAW, READ_ERROR

    if RAW not in raw:
        return raw
    if raw.get(READ_ERROR):
        raise RowError(raw[READ_ERROR])
    try:
        row = json.loads(raw[RAW])
    except json.JSONDecodeError as exc:
        raise RowError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    not_text = text_error(raw[RAW], row)
    if not_text is not None:
        raise RowError(not_text)
    if not isinstance(row, Mapping):
        raise RowError(f"expected a JSON object, got {type(row).__name__}")
    return row


def _turns(value: Any, role: str, what: str, spec: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{what!r} is empty")
        value = [{"role": role, "content": value}]
    if not isinstance(value, (list, tuple)) or not value:
        raise RowError(f"expected {what!r} to be text or a list of {{role, content}} turns, got "
                       f"{type(value).__name__}")
    return normalize_row({"messages": list(value)}, spec).messages


def pair_turns(row: Mapping[str, Any], config: OfflinePairs, spec: Any
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt turns, chosen turns, rejected turns) of one row; RowError names what is wrong."""
    for column in (config.chosen, config.rejected):
        if column not in row or row[column] is None:
            raise RowError(f"missing column {column!r}; found keys {sorted(row)}")
    chosen = _turns(row[config.chosen], "assistant", config.chosen, spec)
    rejected = _turns(row[config.rejected], "assistant", config.rejected, spec)
    shared = 0  # leading turns both sides repeat: the prompt (each side keeps at least its last turn)
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared:
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    else:
        if row.get(config.prompt) is None:
            raise RowError(f"missing column {config.prompt!r} (and chosen/rejected share no prompt turns)")
        prompt = _turns(row[config.prompt], "user", config.prompt, spec)
    if prompt[-1]["role"] == "assistant":
        raise RowError("the prompt ends with an assistant turn; expected it to end with the user's turn")
    for name, side in ((config.chosen, chosen), (config.rejected, rejected)):
        if not side or any(turn["role"] != "assistant" for turn in side):
            raise RowError(f"expected {name!r} to hold the assistant's reply only")
    return prompt, chosen, rejected


def pair_mode(config: OfflinePairs, chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """The two sides as the pair renders, and its template kwargs: thinking on for a pair with a trace (under
    ``thinking_mode: on``), else off, with the traces dropped."""
    has_trace = any(turn.get("reasoning_content") for turn in [*chosen, *rejected])
    if config.thinking_mode == "off" or not has_trace:
        chosen, rejected = _without_traces(chosen), _without_traces(rejected)
    return chosen, rejected, mode_kwargs("on" if config.thinking_mode == "on" and has_trace else "off")


def _without_traces(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**turn, "reasoning_content": None} if turn.get("reasoning_content") else turn for turn in turns]
