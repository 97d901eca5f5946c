"""Multi-turn expansion: every trained assistant turn is rendered the way inference sees it.

At inference the template shows reasoning only for the turn being generated; earlier turns
appear without theirs. So a turn can only be trained inside a longer rendering when that
rendering shows it token for token as it would be generated. For each assistant turn ``j`` we
render the conversation up to ``j`` (history reasoning dropped, turn ``j`` in the thinking mode
that fits it) and train only its final span. Turns whose standalone rendering is a prefix of
an already-built sample are trained inside that sample instead of duplicating the prefix;
that happens for thinking-off conversations under templates that render history and final
turns alike, and never when a turn carries reasoning that history would hide.

The check is on token ids, so it holds for any template; no template knowledge is assumed.
History assistant turns that the template wraps in ``{% generation %}`` are therefore masked
out unless the prefix check proves them identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# render(messages, thinking) -> (input_ids, assistant_mask)
Render = Callable[[list[dict[str, Any]], bool], tuple[list[int], list[int]]]


@dataclass
class Sample:
    """One training sequence: token ids, the 0/1 mask of trained tokens, and where it came from."""

    input_ids: list[int]
    assistant_masks: list[int]
    turns: list[int] = field(default_factory=list)  # trained assistant turns (message indices)
    thinking: bool = False  # the thinking mode of its final turn


def last_span(mask: Sequence[int]) -> tuple[int, int] | None:
    """[start, end) of the last run of ones in ``mask``, or None when it has none."""
    end = None
    for i in range(len(mask) - 1, -1, -1):
        if mask[i]:
            if end is None:
                end = i + 1
        elif end is not None:
            return i + 1, end
    return (0, end) if end is not None else None


def turn_messages(messages: Sequence[Mapping[str, Any]], j: int, thinking: bool) -> list[dict[str, Any]]:
    """The conversation up to assistant turn ``j``, as inference would see it when generating ``j``.

    History reasoning is dropped here too (not left to the template), and turn ``j`` keeps its
    trace only when rendered with thinking on; ``None`` keys are left out, since templates test
    for a key's presence.
    """
    out = []
    for i, turn in enumerate(messages[: j + 1]):
        item = {"role": turn["role"], "content": turn["content"]}
        if i == j and thinking and turn.get("reasoning_content"):
            item["reasoning_content"] = turn["reasoning_content"]
        out.append(item)
    return out


def expand(messages: Sequence[Mapping[str, Any]], thinking: bool, render: Render) -> list[Sample]:
    """Samples that train every assistant turn of ``messages`` exactly once.

    ``thinking`` is the conversation's mode; a turn without a reasoning trace is rendered with
    thinking off even in an ``on`` conversation (the mode its text fits). A turn whose rendering
    has no trained tokens yields no sample. Samples are returned last turn first.
    """
    samples: list[Sample] = []
    assistant_turns = [i for i, t in enumerate(messages) if t["role"] == "assistant"]
    for j in reversed(assistant_turns):
        turn_thinking = thinking and bool(messages[j].get("reasoning_content"))
        ids, mask = render(turn_messages(messages, j, turn_thinking), turn_thinking)
        span = last_span(mask)
        if span is None:
            continue
        start, end = span
        host = next(
            (s for s in samples if s.input_ids[:end] == ids[:end] and not any(s.assistant_masks[start:end])),
            None,
        )
        if host is not None:
            host.assistant_masks[start:end] = [1] * (end - start)
            host.turns.insert(0, j)
            continue
        own = [0] * len(ids)
        own[start:end] = [1] * (end - start)
        samples.append(Sample(list(ids), own, [j], turn_thinking))
    return samples
