"""An LLM judge: a rubric prompt in, a 1-10 rating out (MT-Bench style ``[[8]]``).

The judge is any sampling backend. Its prompt is a rubric template with placeholders
``{question}``, ``{answer}``, ``{reference}``, ``{conversation}`` and ``{language}``; only those
names are replaced, so a rubric may contain other braces (JSON examples). The rating is the
last ``[[N]]`` in the judge's answer (its think block, if any, is ignored), else the last
``[N]``; a reply without a rating in range is *unparsable*: counted, never a crash.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tempa.alignment.backends import BackendConfig, SamplingBackend, TransformersBackendConfig
from tempa.alignment.generation import GenerationParams
from tempa.chat_templates.thinking import split_reasoning
from tempa.sft.stage_api import OnOff, resolve_path

LANGUAGE_NAMES = {
    "en": "English", "id": "Indonesian", "ms": "Malay", "th": "Thai", "vi": "Vietnamese", "tl": "Filipino",
    "fil": "Filipino", "ta": "Tamil", "my": "Burmese", "km": "Khmer", "lo": "Lao", "zh": "Chinese",
    "ja": "Japanese", "ko": "Korean", "jv": "Javanese", "su": "Sundanese",
}

SINGLE_TURN_RUBRIC = """You are a strict, impartial judge of AI assistant responses.

Judge the response below to the user's question for helpfulness, correctness, relevance, depth and \
clarity.{language_clause}{reference_clause} First explain your judgement briefly, then give a rating \
from 1 (useless) to 10 (excellent) in exactly this format: [[rating]], for example: Rating: [[6]]

[Question]
{question}
{reference_block}
[Response]
{answer}
[End of response]"""

MULTI_TURN_RUBRIC = """You are a strict, impartial judge of AI assistant responses.

Below is a conversation between a user and an AI assistant. Judge only the assistant's LAST \
response, as an answer to the user's last message in the context of the conversation, for \
helpfulness, correctness, relevance, depth and clarity.{language_clause} First explain your \
judgement briefly, then give a rating from 1 (useless) to 10 (excellent) in exactly this format: \
[[rating]], for example: Rating: [[6]]

[Conversation]
{conversation}
[Last response]
{answer}
[End of response]"""

REVISE_PROMPT = """Rewrite the AI assistant's response below so that it fully and correctly answers \
the user's question.{language_clause} Output only the improved response, with no preamble and no \
comments about the changes.

[Question]
{question}

[Response to improve]
{answer}"""

FOLLOWUP_PROMPT = """Here is a conversation between a user and an AI assistant.

{conversation}

Write the user's next message: a natural follow-up question or request that builds on the \
assistant's answer{language_clause_short}. Output only the user's message, nothing else."""

_PLACEHOLDER = re.compile(r"\{(question|answer|reference|conversation|language|language_clause|"
                          r"language_clause_short|reference_clause|reference_block)\}")
_DOUBLE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_SINGLE = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")


def parse_judge_score(text: str, low: float = 1, high: float = 10) -> float | None:
    """The rating in a judge's reply, or None when there is none in ``[low, high]``."""
    answer = split_reasoning(text).answer
    for pattern in (_DOUBLE, _SINGLE):
        found = pattern.findall(answer)
        if found:
            value = float(found[-1])
            return value if low <= value <= high else None
    return None


def text_or_file(value: str, info: ValidationInfo | None) -> str:
    """A prompt given inline, or read from a one-line ``.txt`` path (relative to the recipe)."""
    if value.endswith(".txt") and "\n" not in value:
        return Path(resolve_path(value, info)).read_text(encoding="utf-8")
    return value


def language_name(code: str | None) -> str | None:
    if not code:
        return None
    return LANGUAGE_NAMES.get(code.lower(), code)


def fill(template: str, **values: str | None) -> str:
    """Replace the known ``{placeholders}`` of a rubric; other braces stay as they are."""
    language = language_name(values.get("language"))
    derived = {
        "language_clause": f" The response must be written in {language}; a response in another language "
        "fails, however good it is." if language else "",
        "language_clause_short": f", written in {language}" if language else "",
        "reference_clause": " Compare it with the reference answer; a response that contradicts the reference "
        "is wrong." if values.get("reference") else "",
        "reference_block": f"\n[Reference answer]\n{values['reference']}\n" if values.get("reference") else "",
        "language": language or "",
    }
    merged = {**{k: (v or "") for k, v in values.items()}, **derived}
    return _PLACEHOLDER.sub(lambda m: str(merged.get(m.group(1), "")), template)


def render_conversation(messages: Sequence[dict]) -> str:
    """A plain-text transcript for judge and follow-up prompts (reasoning left out)."""
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"[{names.get(m['role'], m['role'])}]\n{m.get('content') or ''}" for m in messages)


class JudgeSettings(BaseModel):
    """An LLM judge: which backend, which rubric, how it samples."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendConfig = Field(
        default_factory=TransformersBackendConfig,
        description="Where the judge runs: `{type: transformers|vllm|http, ...}`. Default: the stage's own model.",
    )
    rubric: str | None = Field(
        default=None,
        description="Rubric text or a path to a .txt file, with {question}, {answer}, {reference}, "
        "{conversation}, {language} placeholders. Default: a built-in single-turn (or, for second turns, "
        "multi-turn) rubric asking for `[[rating]]` on 1-10.",
    )
    max_new_tokens: int = Field(default=512, ge=1, description="Judge reply budget (explanation + rating).")
    temperature: float = Field(default=0.0, ge=0, description="Judge sampling temperature (0: greedy).")
    thinking_mode: OnOff | None = Field(
        default="off", description="Thinking mode of the judge's own chat template (None: its default)."
    )
    batch_size: int = Field(default=8, ge=1, description="Judge prompts per backend call.")

    @field_validator("rubric")
    @classmethod
    def _rubric(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else text_or_file(value, info)


@dataclass
class Verdict:
    score: float | None  # None: unparsable
    raw: str


class Judge:
    """Runs rubric prompts through a backend and parses ratings; counts unparsable replies."""

    def __init__(self, backend: SamplingBackend, settings: JudgeSettings, *, seed: int = 0) -> None:
        self.backend = backend
        self.settings = settings
        self.seed = seed
        self.calls = 0
        self.unparsable = 0
        self.seconds = 0.0

    def ask(self, prompts: list[str]) -> list[str]:
        """Raw judge replies (answer text, think block kept) for user-turn prompts."""
        params = GenerationParams(
            max_new_tokens=self.settings.max_new_tokens, temperature=self.settings.temperature, n=1,
            seed=self.seed, thinking_mode=self.settings.thinking_mode, batch_size=self.settings.batch_size,
        )
        started = time.time()
        out = self.backend.sample([[{"role": "user", "content": p}] for p in prompts], params)
        self.seconds += time.time() - started
        self.calls += len(prompts)
        return [group[0].full_text for group in out]

    def rate(self, prompts: list[str]) -> list[Verdict]:
        verdicts = []
        for raw in self.ask(prompts):
            score = parse_judge_score(raw)
            if score is None:
                self.unparsable += 1
            verdicts.append(Verdict(score, raw))
        return verdicts

    def stats(self) -> dict[str, float | int]:
        return {"judge_calls": self.calls, "judge_unparsable": self.unparsable,
                "judge_seconds": round(self.seconds, 2)}
