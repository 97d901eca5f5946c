"""An LLM judge: a rubric prompt in, a 1-10 rating out (MT-Bench style ``[[8]]``).

The judge is any sampling backend. Its prompt is a rubric template with placeholders
``{question}``, ``{answer}``, ``{reference}``, ``{conversation}`` and ``{language}``; only those
names are replaced, so a rubric may contain other braces (JSON examples). The rating is the judge's
answer's ``[[N]]`` (its think block, if any, is ignored): every ``[[N]]`` in it agreeing, or, where they differ,
the ones a rating word leads to, else the ones alone on their line, when those agree; without any ``[[N]]``, a
single-bracket ``[N]`` read the same way (:func:`_rating`). Any other reply (``Step [2] is wrong. Rating: 8/10``)
gives no rating in range and is *unparsable*: counted, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tempa.alignment.backends import BackendConfig, SamplingBackend, TransformersBackendConfig, sample_at
from tempa.alignment.completions import Completion
from tempa.alignment.generation import GenerationParams
from tempa.chat_templates.thinking import split_reasoning
from tempa.sft.stage_api import OnOff, resolve_path
from tempa.sft.suggest import closest

log = logging.getLogger("tempa.alignment.judge")

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

TOOL_RUBRIC = """You are a strict, impartial judge of AI assistant responses.

Below is a conversation between a user and an AI assistant that can call tools: the tools it was offered, \
its earlier tool calls and their results. Judge only the assistant's LAST response, its next step after the \
conversation. It is either a tool call (in the model's own format, e.g. JSON): judge whether a call is needed \
now, whether it is the right tool, and whether its arguments are correct and complete; or a reply to the user: \
judge it for correctness, faithfulness to the tool results, helpfulness, relevance and clarity.\
{language_clause_reply}{reference_clause} First explain your judgement briefly, then give a rating from 1 \
(useless) to 10 (excellent) in exactly this format: [[rating]], for example: Rating: [[6]]

[Conversation]
{conversation}
{reference_block}
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

# What `fill` replaces: the values, then the clauses built from them (the built-in rubrics use both).
PLACEHOLDERS = ("question", "answer", "reference", "conversation", "language", "language_clause",
                "language_clause_short", "language_clause_reply", "reference_clause", "reference_block")
# A reviser is given the question, the answer it rewrites and the language: a {reference} would always be empty.
REVISE_PLACEHOLDERS = ("question", "answer", "language", "language_clause", "language_clause_short")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_NAMED = re.compile(r"\{([A-Za-z_]\w*)\}")  # `{"score": 5}` in a JSON example is no placeholder
# A one-line value spelled like a file name (no spaces, no braces, a suffix; spaces only in a path with a folder) is
# a path, never a prompt.
_FILE_NAME = re.compile(r"[^\s{}]+\.[A-Za-z0-9]{1,10}|[^{}\n]*/[^{}\n]*\.[A-Za-z0-9]{1,10}")
_DOUBLE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_SINGLE = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")
# A line that is nothing but a rating, after an optional short label: `Rating: [[8]]`, `**Score:** [8]/10`, `[[8]]`. A
# label holds no digit, bracket or sentence punctuation, so prose that mentions a number ("asked for [5]", "a perfect
# answer would be [[10]].)") is never one.
_RATING_LINE = re.compile(r"[\s*_#>-]*(?:[^\[\]\d\n:：,.;!?()]{1,40}[:：][\s*_]*)?"
                          r"(?:\[\[\s*(\d+(?:\.\d+)?)\s*\]\]|\[\s*(\d+(?:\.\d+)?)\s*\])(?:\s*/\s*\d+)?[\s*_.。!]*")
# A bracket a rating word leads to on its line, past a scale, a colon or a few plain words: `Rating: [8] out of 10`,
# `Overall Rating (1-10): [8]`, `I would rate this response [8]`, `deserves a [7]`; never one a step, a count or a
# citation leads to ("Step [2] is wrong", "lists [3] items", "a perfect answer would be [[10]]").
_RATED = re.compile(r"(?<![^\W\d_])(?:rat(?:e|es|ed|ing)|scor(?:e|es|ed|ing)|grade[sd]?|deserves?|verdict|overall|final)"
                    r"(?:\s|[*_:：=]|\(\s*\d+\s*[-–/~]\s*\d+\s*\)|(?<![^\W\d_])(?:this|the|response|reply|it|a|an|of|"
                    r"is|as|would|be|i|give|my)(?![^\W\d_]))*$", re.IGNORECASE)
NO_RATING = "no [[rating]]"
SEVERAL_RATINGS = "several different [[ratings]]"


def _rated(answer: str, bracket: re.Pattern[str]) -> set[float]:
    """The values of the ``bracket`` ratings in ``answer`` that read as its rating: those a rating word leads to, else
    those on a line of their own (`Helpfulness: [[8]]\nAccuracy: [[6]]\nOverall: [[7]]` is rated 7)."""
    led, alone = set(), set()
    for found in bracket.finditer(answer):
        start = answer.rfind("\n", 0, found.start()) + 1
        end = answer.find("\n", found.end())
        if _RATED.search(answer[max(start, found.start() - 60):found.start()]):
            led.add(float(found.group(1)))
        elif _RATING_LINE.fullmatch(answer[start:end if end >= 0 else len(answer)]):
            alone.add(float(found.group(1)))
    return led or alone


def _rating(text: str) -> tuple[float | None, str | None]:
    """(the reply's rating, why it has none). Only an unambiguous rating counts, since a wrong one taken is a silent
    wrong preference while an unparsable reply is counted and bounded by ``max_unparsable``: every ``[[N]]`` of the
    answer (its think block ignored) when they agree; where they differ, the ones a rating word leads to
    (``Rating: [[8]] (a perfect answer would be [[10]])``) or on a line of their own (``Weighing it: [[3]] for style,
    [[9]] for content.\nRating: [[7]]``), when those agree; without any ``[[N]]``, the single-bracket ``[N]`` read the
    same way (``Rating: [8] out of 10``, ``I would rate this response [8].``, a last line ``[8]``). A ``[N]`` a
    step, a count or a citation leads to is never the rating ("Step [2] is wrong. Rating: 8/10")."""
    answer = split_reasoning(text).answer
    ratings = {float(value) for value in _DOUBLE.findall(answer)}
    if len(ratings) == 1:
        return ratings.pop(), None
    rated = _rated(answer, _DOUBLE if ratings else _SINGLE)
    if len(rated) == 1:
        return rated.pop(), None
    return None, SEVERAL_RATINGS if ratings or rated else NO_RATING


def parse_judge_score(text: str, low: float = 1, high: float = 10) -> float | None:
    """The rating in a judge's reply (see :func:`_rating`), or None when there is none in ``[low, high]``."""
    value, _ = _rating(text)
    return value if value is not None and low <= value <= high else None


def rating_problem(text: str, low: float = 1, high: float = 10) -> str | None:
    """Why a judge's reply gives no rating: ``out of range (1-10)`` (``[[11]]``: a judge on another scale), ``no
    [[rating]]`` or ``several different [[ratings]]``; None when it gives one."""
    value, problem = _rating(text)
    if value is None:
        return problem
    return None if low <= value <= high else f"out of range ({low:g}-{high:g})"


def text_or_file(value: str, info: ValidationInfo | None) -> str:
    """A prompt given inline, or read from the file a one-line value names (relative to the recipe): a ``.txt``, or
    any other text file (``rubric.md``). A one-line value spelled like a file name that names no file is refused: sent
    as the prompt, it would ask for nothing."""
    if "\n" in value or not (value.endswith(".txt") or _FILE_NAME.fullmatch(value)):
        return value
    path = Path(resolve_path(value, info))  # a missing .txt is refused here, naming the path it looked for
    if not path.is_file():
        raise ValueError(f"'{value}' names no file (a relative path is read from the recipe's folder); give the text "
                         "itself or the path of a text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; give the text itself or the path of a text file") from None


def check_placeholders(text: str, known: Sequence[str], required: Sequence[str] = (), why: str = "") -> str:
    """``text`` when its ``{placeholders}`` are all ``known`` and it holds the ``required`` ones; else ValueError
    (``why``: what a missing one costs). An unknown one would be sent as written, a typo unnoticed."""
    listed = ", ".join(f"{{{name}}}" for name in known)
    for name in dict.fromkeys(_NAMED.findall(text)):
        if name not in known:
            hint = closest(name, known)
            raise ValueError(f"unknown placeholder {{{name}}}{f' (did you mean {{{hint}}}?)' if hint else ''}; known: "
                             f"{listed} (a literal name in braces: write it with spaces, `{{ {name} }}`)")
    for name in required:
        if f"{{{name}}}" not in text:
            raise ValueError(f"has no {{{name}}} placeholder{f': {why}' if why else ''}")
    return text


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
        # A tool call is code, in no language: only a reply to the user is held to the prompt's language.
        "language_clause_reply": f" A reply to the user must be written in {language}; a reply in another "
        "language fails, however good it is (a tool call's name and arguments are exempt)." if language else "",
        "reference_clause": " Compare it with the reference answer; a response that contradicts the reference "
        "is wrong." if values.get("reference") else "",
        "reference_block": f"\n[Reference answer]\n{values['reference']}\n" if values.get("reference") else "",
        "language": language or "",
    }
    merged = {**{k: (v or "") for k, v in values.items()}, **derived}
    return _PLACEHOLDER.sub(lambda m: str(merged.get(m.group(1), "")), template)


def _json_text(value: object) -> str:
    """Arguments, results and schemas as one line of JSON (JSON text given as a string is kept as written)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _call_parts(call: dict) -> tuple[str, str, str | None]:
    """(name, arguments, id) of a tool call, OpenAI-style (``{"function": {...}}``) or bare."""
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    arguments = function.get("arguments", function.get("parameters"))
    return str(function.get("name", "?")), _json_text({} if arguments is None else arguments), call.get("id")


def render_tools(tools: Sequence[dict]) -> str:
    """The tools a conversation offers, one entry each: name, description and parameter schema."""
    lines = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        name = function.get("name")
        if not isinstance(name, str):  # not a function definition tempa knows: shown as given
            lines.append(f"- {_json_text(tool)}")
            continue
        description = function.get("description")
        lines.append(f"- {name}: {description}" if description else f"- {name}")
        if function.get("parameters") is not None:
            lines.append(f"  parameters: {_json_text(function['parameters'])}")
    return "\n".join(lines)


def render_conversation(messages: Sequence[dict], tools: Sequence[dict] | None = None) -> str:
    """A plain-text transcript for judge and follow-up prompts (reasoning left out).

    An agent's tool loop shows in full: the ``tools`` offered first, each assistant tool call as ``Tool call:
    name(arguments)`` after the turn's text, and each tool result under the name of the call it answers. A
    conversation without tools renders exactly as it always has (judge replies to it stay comparable)."""
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    called: dict[str, str] = {}  # tool call id -> function name, to name the results
    last_calls: list[str] = []  # the names of the latest assistant turn's calls, for results without an id
    blocks = [f"[Tools]\n{render_tools(tools)}"] if tools else []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role in ("tool", "ipython"):
            name = m.get("name") or called.get(m.get("tool_call_id"))
            if not name and len(last_calls) == 1:
                name = last_calls[0]
            blocks.append(f"[Tool result: {name}]\n{_json_text(content)}" if name else
                          f"[Tool result]\n{_json_text(content)}")
            continue
        lines = [str(content)] if content else []
        if m.get("tool_calls"):
            last_calls = []
            for call in m["tool_calls"]:
                name, arguments, call_id = _call_parts(call)
                if call_id:
                    called[call_id] = name
                last_calls.append(name)
                lines.append(f"Tool call: {name}({arguments})")
            content = "\n".join(lines)
        blocks.append(f"[{names.get(role, role)}]\n{content}")
    return "\n\n".join(blocks)


class JudgeSettings(BaseModel):
    """An LLM judge: which backend, which rubric, how it samples."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendConfig = Field(
        default_factory=TransformersBackendConfig,
        description="Where the judge runs: `{type: transformers|vllm|http, ...}`. Default: the stage's own model.",
    )
    rubric: str | None = Field(
        default=None,
        description="Rubric text or the path of a text file (.txt, .md, ...), with {question}, {answer}, {reference}, "
        "{conversation}, {language} placeholders ({conversation}: the prompt's turns, with a tool prompt's tools, "
        "tool calls and tool results); an unknown placeholder is refused, and so is a preference stage's judge "
        "rubric without {answer}. Default: a built-in single-turn (or, for second turns, multi-turn; for "
        "prompts with tools, tool-loop) rubric asking for `[[rating]]` on 1-10.",
    )
    max_new_tokens: int = Field(default=512, ge=1, description="Judge reply budget (explanation + rating).")
    temperature: float = Field(default=0.0, ge=0, description="Judge sampling temperature (0: greedy).")
    thinking_mode: OnOff | None = Field(
        default="off", description="Thinking mode of the judge's own chat template (None: its default)."
    )
    batch_size: int = Field(default=8, ge=1, description="Judge prompts per backend call. Where replies are journaled "
                            "(judge rewards and gates), each call's are kept as it returns, an HTTP judge's each as it arrives: "
                            "a kill loses at most one local call's, and an HTTP judge's failed request or Ctrl-C none "
                            "(no request is sent after one fails for good). An HTTP judge's calls are at least its "
                            "backend's `concurrency` (a call sends its prompts at once and waits for the slowest).")

    @field_validator("rubric")
    @classmethod
    def _rubric(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_placeholders(text_or_file(value, info), PLACEHOLDERS)


@dataclass
class Verdict:
    score: float | None  # None: unparsable
    raw: str
    cut_off: bool = False  # the reply ended at the judge's max_new_tokens (a reasoning judge that ran out of room)
    problem: str | None = None  # why there is no score (rating_problem): a rating out of range is no missing one


JUDGE_REPLIES = "judge_replies.jsonl"  # a stage's (or round's) judge replies by request: :class:`ReplyJournal`


class ReplyJournal:
    """A judge's replies by request (JSON Lines, appended as each reply of an HTTP judge arrives, or as each batch
    of a local one returns), so that no request is paid for twice: the score journal starts over whenever any
    reward's settings change (a verifier added, a weight), and its rescoring then reads the judges' replies from
    here. ``identity``: what besides the request decides a reply (the judge's backend, the runs of the models a
    local judge loads); it is part of every key, with the rubric prompt and the reply's sampling settings.
    ``earlier``: the same judge as an earlier tempa named it (an HTTP backend with its ``base_url``), whose replies
    are read too."""

    def __init__(self, path: Path, identity: Any, earlier: Sequence[Any] = ()) -> None:
        self.path = Path(path)
        self.identity = json.dumps(identity, sort_keys=True, default=str)
        self.earlier = [json.dumps(form, sort_keys=True, default=str) for form in earlier]
        self.replies: dict[str, Completion] = {}
        # Imported here: sampling imports rewards, which imports this module.
        from tempa.alignment.sampling import read_journal

        read = read_journal(self.path, lambda entry: (entry["key"], Completion.from_dict(entry["reply"])))
        self.replies.update(read.entries)
        read.warn()
        # A last line without its newline was cut off mid-write (a kill, a full disk): a reply not kept, asked again;
        # the next add cuts it off the file.
        if read.whole != read.size:
            log.warning("%s: its last line was cut off mid-write (a kill or a full disk); that reply is asked "
                        "again", self.path)

    def key(self, prompt: str, params: GenerationParams, identity: str | None = None) -> str:
        asked = params.model_dump(mode="json", exclude={"batch_size"})  # transport: not what is asked
        return hashlib.sha256(json.dumps([identity or self.identity, prompt, asked], sort_keys=True).encode()).hexdigest()

    def known(self, keys: Sequence[str], prompts: Sequence[str], params: GenerationParams) -> dict[str, Completion]:
        """The replies journaled for these requests (by ``keys``), under this tempa's key or an earlier one's."""
        found = {}
        for key, prompt in zip(keys, prompts, strict=True):
            reply = self.replies.get(key) or next(
                (r for form in self.earlier if (r := self.replies.get(self.key(prompt, params, form))) is not None), None)
            if reply is not None:
                found[key] = reply
        return found

    def add(self, replies: Sequence[tuple[str, Completion]]) -> None:
        # Imported here: sampling imports rewards, which imports this module.
        from tempa.alignment.sampling import append_lines

        append_lines(self.path, [json.dumps({"key": key, "reply": reply.to_dict()}, ensure_ascii=False)
                                 for key, reply in replies])
        self.replies.update(replies)


class Judge:
    """Runs rubric prompts through a backend and parses ratings; counts unparsable replies. With ``replies``, a
    request answered before is read from that journal, not asked again (``calls`` counts the requests sent)."""

    def __init__(self, backend: SamplingBackend, settings: JudgeSettings, *, seed: int = 0,
                 replies: ReplyJournal | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.seed = seed
        self.replies = replies
        self.calls = 0
        self.reused = 0
        self.unparsable = 0
        self.seconds = 0.0

    def ask(self, prompts: list[str], on_reply: Callable[[int, str], None] | None = None) -> list[str]:
        """Raw judge replies (answer text, think block kept: also one a server's reasoning parser split off) for
        user-turn prompts; ``on_reply(i, reply)``: see :meth:`_replies`."""
        told = None if on_reply is None else (lambda i, reply: on_reply(i, reply.written_text))
        return [reply.written_text for reply in self._replies(prompts, on_reply=told)]

    def _replies(self, prompts: list[str], progress: Callable[[int], None] | None = None,
                 on_reply: Callable[[int, Completion], None] | None = None) -> list[Completion]:
        """The replies to ``prompts``; ``progress(answered)``: how many of them have their reply so far, told as
        replies arrive (a slow judge's scoring pass moves in `tempa status` before its batch is done);
        ``on_reply(i, reply)``: prompt ``i``'s reply, told as it arrives where the backend hands each over (HTTP),
        so that a caller with a journal of its own keeps each paid reply at once (a journaled one is not told)."""
        params = GenerationParams(
            max_new_tokens=self.settings.max_new_tokens, temperature=self.settings.temperature, n=1,
            seed=self.seed, thinking_mode=self.settings.thinking_mode, batch_size=self.settings.batch_size,
        )
        # Every prompt shares these params, so without a journal the text alone tells requests apart.
        keys = [self.replies.key(p, params) for p in prompts] if self.replies is not None else list(prompts)
        known = self.replies.known(keys, prompts, params) if self.replies is not None else {}
        # A repeated request (several identical samples of one prompt) is asked once, at any temperature: the backend
        # seeds a request by its place in the call, but the journal keys a reply by the request alone, so a rerun
        # gave every repeat one reply anyway; and identical answers should get the same rating.
        asked = list({key: prompt for key, prompt in zip(keys, prompts, strict=True) if key not in known}.items())
        fresh: dict[str, Completion] = {}
        repeats = Counter(keys)
        answered = sum(repeats[key] for key in known)
        if progress is not None:
            progress(answered)
        # Calls of batch_size, each journaled as it returns, or reply by reply where the backend hands each over as it
        # arrives (HTTP, whose requests are paid for whether or not the call completes): a failed request or a kill
        # then loses no reply. A call is never smaller than the backend's concurrency, which it would otherwise cap
        # (64 in flight became 8).
        size = max(self.settings.batch_size, getattr(self.backend, "concurrency", 1))
        places: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            places.setdefault(key, []).append(i)

        def arrived(replies: list[tuple[str, Completion]]) -> None:
            nonlocal answered
            if self.replies is not None:
                self.replies.add(replies)
            fresh.update(replies)
            answered += sum(repeats[key] for key, _ in replies)
            if progress is not None:
                progress(answered)
            if on_reply is not None:
                for key, reply in replies:
                    for i in places[key]:
                        on_reply(i, reply)

        for start in range(0, len(asked), size):
            part = asked[start:start + size]
            started = time.time()
            try:
                out = sample_at(self.backend, [[{"role": "user", "content": prompt}] for _, prompt in part], params,
                                None, lambda place, group, part=part: arrived([(part[place][0], group[0])]))
            finally:
                self.seconds += time.time() - started
            self.calls += len(part)
            # One journal write per call for what was not handed over as it arrived (a local judge's call returns
            # every reply at once).
            if rest := [(key, group[0]) for (key, _), group in zip(part, out, strict=True) if key not in fresh]:
                arrived(rest)
        self.reused += len(prompts) - len(asked)
        return [fresh[key] if key in fresh else known[key] for key in keys]

    def rate(self, prompts: list[str], progress: Callable[[int], None] | None = None) -> list[Verdict]:
        """A verdict per prompt; ``progress``: see :meth:`_replies`."""
        verdicts = []
        for reply in self._replies(prompts, progress):
            raw = reply.written_text
            score = parse_judge_score(raw)
            if score is None:
                self.unparsable += 1
            verdicts.append(Verdict(score, raw, cut_off=reply.finish_reason == "length",
                                    problem=None if score is not None else rating_problem(raw)))
        return verdicts

    def stats(self) -> dict[str, float | int]:
        return {"judge_calls": self.calls, "judge_replies_reused": self.reused, "judge_unparsable": self.unparsable,
                "judge_seconds": round(self.seconds, 2)}
