"""Multi-turn expansion: every trained assistant turn is rendered the way inference sees it.

At inference the template shows reasoning only for the turns after the last user message (the
turn being generated, and the earlier steps of its tool loop); turns before it appear without
theirs, and without the think block. So a turn can only be trained inside a longer rendering
when that rendering shows it token for token as it was generated. For each assistant turn ``j``
we render the conversation up to ``j`` (reasoning dropped where inference drops it, turn ``j``
in the thinking mode that fits it) and train only its final span. A turn whose standalone
rendering is a prefix of an already-built sample is trained inside that sample instead of
duplicating the prefix: the steps of one tool loop (calls, then the answer) become one sample,
because tempa's templates render a turn the same whether or not it is the last message; a turn
before a later user message never does, since it renders as history there.

The check is on token ids, so it holds for any template; no template knowledge is assumed.
The templates wrap every assistant turn in ``{% generation %}``; only the final span of each
rendering is kept, so history turns train only where the prefix check proves them identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tempa.chat_templates.rendering import mask_spans, runs_to_mask
from tempa.chat_templates.thinking import keeps_reasoning

# render(messages, thinking, tools) -> (input_ids, assistant_mask)
Render = Callable[[list[dict[str, Any]], bool, "list[dict[str, Any]] | None"], tuple[list[int], list[int]]]
# Keys a normalised turn may carry besides role/content/reasoning_content (None: absent).
_TOOL_KEYS = ("tool_call_id", "name")


@dataclass
class Sample:
    """One training sequence: token ids, its ``[start, end)`` runs of trained tokens, and where it came from."""

    input_ids: list[int]
    trained: list[tuple[int, int]]
    turns: list[int] = field(default_factory=list)  # trained assistant turns (message indices)
    thinking: bool = False  # the thinking mode of its final turn

    @property
    def assistant_masks(self) -> list[int]:
        """The 0/1 mask of trained tokens."""
        return runs_to_mask(len(self.input_ids), self.trained)

    @property
    def n_trained(self) -> int:
        return sum(end - start for start, end in self.trained)


def turn_messages(messages: Sequence[Mapping[str, Any]], j: int, thinking: bool) -> list[dict[str, Any]]:
    """The conversation up to assistant turn ``j``, as inference would see it when generating ``j``.

    Reasoning is dropped here too (not left to the template) where inference drops it: with thinking
    off, and for turns before the last user message; ``None`` keys are left out, since templates test
    for a key's presence.
    """
    head = messages[: j + 1]
    out = []
    for i, turn in enumerate(head):
        item = {"role": turn["role"], "content": turn["content"]}
        if thinking and turn.get("reasoning_content") and keeps_reasoning(head, i):
            item["reasoning_content"] = turn["reasoning_content"]
        if turn.get("tool_calls"):
            item["tool_calls"] = [
                {key: value for key, value in call.items() if value is not None} for call in turn["tool_calls"]
            ]
        item.update({key: turn[key] for key in _TOOL_KEYS if turn.get(key) is not None})
        out.append(item)
    return out


@dataclass(frozen=True)
class TurnView:
    """One rendering that :func:`expand` needs: the conversation as inference sees it when generating ``turn``."""

    turn: int
    thinking: bool
    messages: list[dict[str, Any]]


def turn_views(messages: Sequence[Mapping[str, Any]], thinking: bool) -> list[TurnView]:
    """The renderings that train every assistant turn of ``messages``, last turn first.

    ``thinking`` is the conversation's mode; a turn without a reasoning trace is rendered with
    thinking off even in an ``on`` conversation (the mode its text fits).
    """
    views = []
    for j in reversed([i for i, t in enumerate(messages) if t["role"] == "assistant"]):
        turn_thinking = thinking and bool(messages[j].get("reasoning_content"))
        views.append(TurnView(j, turn_thinking, turn_messages(messages, j, turn_thinking)))
    return views


def assemble(views: Sequence[TurnView], encoded: Sequence[tuple[list[int], list[tuple[int, int]]]]) -> list[Sample]:
    """Samples from the ids and trained token runs of each view, in the order :func:`turn_views` gives.

    Only the final run of each rendering trains; a turn whose rendering is a prefix of an
    already-built sample trains inside it. A rendering without trained tokens yields no sample.
    """
    samples: list[Sample] = []
    for view, (ids, runs) in zip(views, encoded, strict=True):
        if not runs:
            continue
        start, end = runs[-1]
        host = next(
            (s for s in samples if s.input_ids[:end] == ids[:end] and not _overlaps(s.trained, start, end)),
            None,
        )
        if host is not None:
            host.trained = sorted([*host.trained, (start, end)])
            host.turns.insert(0, view.turn)
            continue
        samples.append(Sample(list(ids), [(start, end)], [view.turn], view.thinking))
    return samples


def _overlaps(runs: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    return any(a < end and start < b for a, b in runs)


def expand(
    messages: Sequence[Mapping[str, Any]],
    thinking: bool,
    render: Render,
    tools: list[dict[str, Any]] | None = None,
) -> list[Sample]:
    """Samples that train every assistant turn of ``messages`` exactly once.

    ``tools`` are the row's tool definitions, rendered with every sample. Samples are returned last
    turn first. (The data pipeline renders many conversations' views at once, then assembles them.)
    """
    views = turn_views(messages, thinking)
    rendered = [render(view.messages, view.thinking, tools) for view in views]
    return assemble(views, [(ids, mask_spans(mask)) for ids, mask in rendered])
