"""A model's raw reply as the assistant message that renders back to it: what a client sends for a tool loop.

A server without a tool or reasoning parser (``vllm serve MODEL`` with neither ``--tool-call-parser`` nor
``--reasoning-parser``) returns what the model wrote after the generation prompt: with thinking on
``{reasoning}\\n</think>\\n\\n{answer}`` (the opening tag is in the prompt), with it off the answer; a tool call is
part of the answer, in the template's layout. Sent back as it came, a call stays text, so the tool result after it
is refused (a tool message must follow tool calls); sent back with the call given again as ``tool_calls``, the call
renders twice. :func:`reply_message` splits the text into ``content``, ``reasoning`` and ``tool_calls``, and the
template renders that message back to the text, as it trained the step (``tests/test_reply_message.py`` checks the
next generation prompt of a tool loop token by token against the training sample).

The calls are recognised in the layout the templates write them (``tojson`` of the name, the arguments as given):

* ``llama3_thinking``: the answer, or its last line, is ``{"name": NAME, "parameters": ARGUMENTS}`` (one call per
  message, as Llama 3.1 allows);
* ``chatml_thinking``: the answer ends in ``<tool_call>\\n{"name": NAME, "arguments": ARGUMENTS}\\n</tool_call>``
  blocks, one per call, each on lines of their own.

Anything else is answer text, which renders back as written. :data:`TOOL_CALL_BLOCK` and :func:`is_json_call` are
the same recognition for readers that only leave the calls out of an answer (the language reward).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from tempa.chat_templates.thinking import THINK_OPEN, TRIMMED, split_reasoning

# ChatML (Qwen2.5) writes each call in a <tool_call> block; a block the model did not close runs to the end.
TOOL_CALL_BLOCK = re.compile(r"<tool_call>.*?(?:</tool_call>|\Z)", re.DOTALL)
# A block exactly as chatml_thinking writes one (closed, its JSON on a line of its own).
_WRITTEN_BLOCK = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)
# The key each layout writes the arguments under; a call may carry the other one (models mix them up).
_LLAMA_KEY, _CHATML_KEY = "parameters", "arguments"


def is_json_call(text: str) -> bool:
    """Whether ``text`` is one tool call written as JSON: an object with a function ``name`` and its ``parameters``
    (Llama 3.1's key) or ``arguments`` (ChatML's)."""
    return _json_call(text) is not None


def _json_call(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("name"), str) and (
            _LLAMA_KEY in value or _CHATML_KEY in value):
        return value
    return None


def _tool_call(text: str, key: str) -> dict[str, Any] | None:
    """The OpenAI tool call ``text`` writes (``key``: the arguments key of its layout), or None if it is none.

    Its arguments are the model's own JSON text when the call is spelled as the template writes one, so the template
    (which writes text arguments as given) renders it back byte for byte; a call spelled otherwise gets the
    arguments as training writes them (``json.dumps(..., ensure_ascii=False)``, what the template's ``tojson`` of an
    object writes)."""
    value = _json_call(text)
    if value is None:
        return None
    name = value["name"]
    arguments = value[key] if key in value else value.get(_CHATML_KEY if key == _LLAMA_KEY else _LLAMA_KEY)
    frame = f'{{"name": {json.dumps(name, ensure_ascii=False)}, "{key}": '
    written = text[len(frame):-1] if text.startswith(frame) and text.endswith("}") else None
    try:
        as_written = written is not None and json.loads(written) == arguments
    except ValueError:
        as_written = False
    return {
        # a client pairs each result with its call by this id; servers make them the same way (random)
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name,
                     "arguments": written if as_written else json.dumps(arguments or {}, ensure_ascii=False)},
    }


def _chatml_calls(answer: str) -> tuple[str, list[dict[str, Any]]] | None:
    start = answer.find("<tool_call>")
    calls, at = [], start
    # the blocks, one line break apart, to the end: the template writes calls last, so text after them (or a block
    # left open) makes the reply no call
    while at < len(answer):
        match = _WRITTEN_BLOCK.match(answer, at)
        call = _tool_call(match.group(1), _CHATML_KEY) if match else None
        if call is None or answer[match.end():match.end() + 1] not in ("", "\n"):
            return None
        calls.append(call)
        at = match.end() + 1
    return answer[:start], calls


def _llama_call(answer: str) -> tuple[str, list[dict[str, Any]]] | None:
    head, _, last = answer.rpartition("\n")
    if (call := _tool_call(answer, _LLAMA_KEY)) is not None:
        return "", [call]
    if head and (call := _tool_call(last, _LLAMA_KEY)) is not None:
        return head, [call]
    return None


def reply_message(text: str, *, thinking: bool | None = None) -> dict[str, Any]:
    """The assistant message that ``text``, what a model wrote after tempa's generation prompt, renders back from.

    ``text`` is a server's reply ``content`` when it runs no tool or reasoning parser (a leading ``<think>``, as in
    the prefill plus the reply, is read too). ``thinking`` is the mode the prompt was rendered in: with ``True`` the
    text follows the ``<think>`` prefill, so a reply that never closed its reasoning is all reasoning, and a tool call
    it wrote while reasoning is not a call; ``False`` or ``None`` leave it to the text (a reply with no closing tag is then read
    as the answer, calls and all). The message holds ``content`` (None when the reply is only calls, as
    OpenAI writes such a turn), ``reasoning`` (the key vLLM reads from a request; transformers and the templates read
    it too) when the reply reasoned, and ``tool_calls`` (OpenAI's shape, ``arguments`` as JSON text, each with an
    ``id`` for its result's ``tool_call_id``) when it called tools. Append it, then the results, and the next
    generation prompt is the one the loop trained on.

    A reply cut off before it closed its reasoning has no message the template renders back to it (the template
    closes every block); it comes back as reasoning (``thinking=True``) or as the answer (``None``), never with calls
    when it is known to be reasoning."""
    if thinking and not text.lstrip(TRIMMED).startswith(THINK_OPEN):
        text = f"{THINK_OPEN}\n{text}"
    split = split_reasoning(text)
    answer = split.answer
    # a reply with a <tool_call> tag is in ChatML's layout, or is text: its last line is no Llama call then
    layout = _chatml_calls if "<tool_call>" in answer else _llama_call
    content, calls = layout(answer) or (answer, [])
    message: dict[str, Any] = {"role": "assistant", "content": content.strip(TRIMMED) or (None if calls else "")}
    if split.reasoning:
        message["reasoning"] = split.reasoning
    if calls:
        message["tool_calls"] = calls
    return message
