"""The message roles a tempa conversation may hold: one home for the data pipeline, curation and evaluation.

Rows are normalised onto these (sft/formats.py maps other speakers' names, e.g. ShareGPT's ``gpt`` or
``function``); a recipe's ``columns.role_names`` may map a speaker to any of them. ``ipython`` is Llama 3.1's
role for tool results: ``llama3_thinking`` renders it under its own header, ``chatml_thinking`` refuses it
(the default normalisation maps ``ipython`` to ``tool``, which both render). OpenAI's legacy ``function``
result is no role here: the data path normalises it to ``tool``, and both templates render it as ``tool``
for a client that sends it as it is.
"""

from __future__ import annotations

from typing import Literal, get_args

Role = Literal["system", "user", "assistant", "tool", "ipython"]
ROLES: tuple[str, ...] = get_args(Role)
TOOL_ROLES = frozenset({"tool", "ipython"})  # turns that carry a tool's result
