"""Rewards, verifiers and judges, composable with weights.

Each reward gives a sample a score (or ``None``: "does not apply", e.g. no reference answer); the
sample's ``total`` is the weighted sum of the scores that apply. An unparsable judge reply is not
"does not apply" but a *failed* score: the sample's ``total`` is ``None``, so it is never kept or
paired, and a stage whose judge fails on more than ``max_unparsable`` of its replies stops
(:func:`check_judges`). A NaN or infinite score from any reward fails the sample the same way.

========================  ==========================================================  ============
type                      score                                                       range
========================  ==========================================================  ============
``answer``                the answer matches the reference (math-verify, exact,       0 or 1
                          contains or regex); 0 when cut off at the token limit
``language``              the answer is in the prompt's target language (py3langid);  0..1
                          with ``reasoning``, the think block too (in the prompt's
                          language, or any the policy allows, e.g. English)
``format``                share of format checks passed: a closed think block with    0..1
                          reasoning in it exactly when thinking is on, non-empty
                          answer, ended with end-of-turn (not cut off)
``length``                ``-per_token * max(0, tokens - free_tokens)``, capped       -max..0
``reward_model``          a sequence-classification model's score                     logit/0..1
``judge``                 an LLM judge's 1-10 rating (or (r-1)/9 with scale: unit)    1..10 / 0..1
========================  ==========================================================  ============

SEA-IFEval's rule is built in: with a ``language`` reward whose ``gate`` is on (the default), a
response in the wrong language fails every ``answer`` check, however correct it is.

The scoring functions are pure (text in, number out); model-backed rewards (reward model,
judge) batch their work and load their model only when first used.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tempa.alignment.answer_text import (
    committed_answer,
    committed_number,
    gives_reference,
    math_equal,
    numbers_agree,
    reference_number,
)
from tempa.alignment.backends import (
    HTTPBackendConfig,
    SamplingBackend,
    backend_reads,
    build_backend,
    local_model_check,
)
from tempa.alignment.completions import Completion, split_think, without_tool_calls
from tempa.alignment.judge import (
    JUDGE_REPLIES,
    MULTI_TURN_RUBRIC,
    NO_RATING,
    PLACEHOLDERS,
    SINGLE_TURN_RUBRIC,
    TOOL_RUBRIC,
    Judge,
    JudgeSettings,
    ReplyJournal,
    check_placeholders,
    fill,
    rating_problem,
    render_conversation,
)
from tempa.alignment.prompts import PromptRow
from tempa.chat_templates.thinking import ThinkSplit, has_think_tags, outside_think
from tempa.sft import language
from tempa.sft.stage_api import NOT_FINGERPRINTED, Read, StageError, fingerprinted, resolve_path

log = logging.getLogger("tempa")

# --------------------------------------------------------------------------- pure scoring functions

_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)
_WORD = re.compile(r"[^\W_]", re.UNICODE)  # a letter or digit, in any script


def normalize_text(text: str) -> str:
    """Case-folded, NFKC, punctuation and whitespace removed: what exact matching compares."""
    return _PUNCT.sub("", unicodedata.normalize("NFKC", str(text)).casefold())


def answer_match(
    answer: str,
    gold: Any,
    match: Literal["auto", "math", "exact", "contains", "regex"] = "auto",
    pattern: str | None = None,
    language: str | None = None,
) -> float | None:
    """1.0 when ``answer`` gives the reference answer ``gold``, 0.0 when not, None without a reference. (The reply's
    text only: :class:`RewardSet` scores a reply cut off at the token limit 0.)

    ``gold`` may be a list of accepted answers. ``auto`` is the accuracy suite's rule
    (:func:`tempa.alignment.answer_text.gives_reference`): a number by value, math (an expression, an equation, a tuple
    with no prose word in it) by math-verify, anything else, prose with numbers in it (2時間30分) too, by the rule for
    text
    (:func:`tempa.alignment.answer_text.text_answer_matches`: the one answer the reply commits to, the last box, else
    the committed sentence, else the last line, equals the reference; "option C" and "ข้อ ข" give C and ข). ``contains`` (only when asked for)
    passes any answer the reference appears in. ``regex``: ``pattern`` is searched in the answer; its
    first group (or the whole match) must equal the reference after normalisation.

    ``math`` (and ``auto``) read the answer the reply commits to, as the accuracy suite does
    (:func:`tempa.alignment.answer_text.committed_answer`: the last box, else the sentence after the last lead-in,
    else the last number), so a check after the answer ("The answer is 3. Check: 3 + 4 = 7") is not the answer. A
    numeric reference (:func:`tempa.alignment.answer_text.reference_number`: "12,000円" and "12 cm" are their number)
    is compared with the committed number by value, numbers read as the prompt's ``language`` writes them
    (:func:`tempa.alignment.answer_text.numbers_agree`: 45% gives 45 and 0.45); any other math is math-verify's
    equivalence with the committed part.
    """
    if gold is None or (isinstance(gold, str) and not gold.strip()):
        return None
    committed = committed_answer(answer, language) if match in ("auto", "math") and answer.strip() else None
    for item in gold if isinstance(gold, list | tuple) else [gold]:
        g = str(item)
        if match == "regex":
            if pattern is None:
                raise ValueError("answer match 'regex' needs a pattern")
            found = re.search(pattern, answer)
            if found and normalize_text(found.group(1) if found.groups() else found.group(0)) == normalize_text(g):
                return 1.0
            continue
        if match == "auto":
            # One decision with the accuracy suite: a number by value, math by math-verify, anything else (prose
            # with numbers in it too: 2時間30分, where math-verify read one number) as text, never `contains`,
            # under which gold B passed \boxed{A} and gold Jakarta passed "Bukan Jakarta, tetapi Bandung".
            if committed is not None and gives_reference(answer, item, language, commitment=committed):
                return 1.0
            continue
        if match == "math":
            # A number in the data is a value, not text in the row's language: 1.125 is no 1125 in Indonesian.
            expected = reference_number(item, language)
            if expected is not None:
                got = committed_number(answer, language, committed) if committed else None
                if got is not None and numbers_agree(expected, got):
                    return 1.0
                continue
            if committed and math_equal(g, committed.text, language):
                return 1.0
            continue
        if match == "exact" and normalize_text(answer) == normalize_text(g):
            return 1.0
        if match == "contains" and normalize_text(g) and normalize_text(g) in normalize_text(answer):
            return 1.0
    return 0.0


def language_match(
    text: str,
    target: str | None,
    *,
    min_letters: int = language.MIN_LETTERS,
    languages: tuple[str, ...] | None = None,
    equivalent: tuple[tuple[str, ...], ...] = language.EQUIVALENT,
) -> tuple[float | None, str | None]:
    """(1.0 / 0.0 / None, detected code): is ``text`` in the ``target`` language?

    None (does not apply) when there is no target or too little prose to judge by (e.g. a bare
    number); see :mod:`tempa.sft.language` for the rules. Codes in one ``equivalent`` group count
    as the same language.
    """
    if not target:
        return None, None
    found = language.detect(text, languages, min_letters=min_letters)
    verdict = found.is_in(language.accepted([target], equivalent))
    if verdict is None:
        return None, None
    return (1.0 if verdict else 0.0), found.language


@dataclass(frozen=True)
class LanguageVerdict:
    """The language reward's verdicts on one response (None: could not be judged)."""

    score: float | None
    answer: float | None
    answer_language: str | None = None
    reasoning: float | None = None
    reasoning_language: str | None = None

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"detected": self.answer_language} if self.answer_language else {}
        if self.answer is not None:
            out["answer"] = self.answer  # what the SEA-IFEval gate reads
        if self.reasoning is not None:
            out.update(reasoning=self.reasoning, reasoning_detected=self.reasoning_language)
        return out


def language_fidelity(completion: Completion, target: str | None, config: LanguageReward, *,
                      tools: bool = False) -> LanguageVerdict:
    """The ``language`` reward of one response: its answer and, with ``config.reasoning``, its reasoning. With
    ``tools`` (the prompt offers tools or holds a tool loop) the tool calls the answer wrote are left out: a call is
    code, in no language (py3langid read a JSON call as Nigerian Pidgin, failing every call)."""
    split = split_think(completion)
    reply = outside_think(split.answer)  # as the answer reward reads it: a block the model opened is reasoning
    languages = tuple(config.languages) if config.languages else None
    equivalent = tuple(tuple(g) for g in config.equivalent)
    answer, detected = language_match(without_tool_calls(reply) if tools else reply, target,
                                      min_letters=config.min_letters, languages=languages, equivalent=equivalent)
    # Text too short to detect a language in (a bare number, "Kết quả là 8.", a tool call) passes: nothing in it is
    # in another language. Left without a score, it lost the whole weight to any longer sample of the same prompt
    # (a total adds the scores that apply), and preference pairs and GRPO learned length.
    if answer is None and target and reply:
        answer = 1.0
    if config.reasoning is None:
        return LanguageVerdict(answer, answer, detected)
    verdict, reasoning_detected = language.reasoning_verdict(
        split.reasoning, target, config.reasoning, languages=languages, min_letters=config.min_letters,
        equivalent=equivalent)
    if verdict is None and (split.reasoning or "").strip() and (target or language.TARGET not in
                                                                 config.reasoning.languages):
        verdict = True
    reasoning = None if verdict is None else float(verdict)
    weight = config.reasoning_weight
    if answer is not None and reasoning is not None:
        score: float | None = (1 - weight) * answer + weight * reasoning
    else:
        score = answer if reasoning is None else reasoning
    return LanguageVerdict(score, answer, detected, reasoning, reasoning_detected)


def format_checks(completion: Completion, thinking_mode: str | None, *, require_stop: bool = True) -> dict[str, bool]:
    """Named format checks of a response (the format reward is the share that pass).

    - ``think``: thinking on: a think block is present, closed, and has reasoning in it (a word, not only
      whitespace or punctuation: closing the pre-filled block at once is the cheapest way to pass a
      format check, and RL finds it); thinking off: no reasoning text.
    - ``no_stray_tags``: no think tags beyond the one block.
    - ``answer``: the answer (after the block) is not empty.
    - ``ended``: generation ended with the end-of-turn token, not at the token limit (left out
      when the backend cannot tell, or ``require_stop`` is off).
    """
    split: ThinkSplit = split_think(completion)
    thinking = thinking_mode != "off"
    checks = {
        "think": (split.has_block and split.closed and bool(_WORD.search(split.reasoning or ""))) if thinking
        else not (split.reasoning or "").strip(),
        "no_stray_tags": not (has_think_tags(split.reasoning or "") or has_think_tags(split.answer)),
        "answer": bool(split.answer.strip()),
    }
    if require_stop and completion.finish_reason is not None:
        checks["ended"] = completion.finish_reason == "stop"
    return checks


def length_penalty(tokens: int, *, free_tokens: int = 0, per_token: float = 0.001, max_penalty: float = 1.0) -> float:
    """``-per_token`` for every token beyond ``free_tokens``, never below ``-max_penalty``."""
    return -min(max_penalty, per_token * max(0, tokens - free_tokens))


def combine(scores: Mapping[str, float | None], weights: Mapping[str, float]) -> float | None:
    """Weighted sum of the scores that apply; None when none does."""
    applied = [(weights[name], value) for name, value in scores.items() if value is not None]
    return sum(w * v for w, v in applied) if applied else None


# --------------------------------------------------------------------------- recipe configs


class _RewardBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str  # each reward narrows it to its Literal tag
    name: str | None = Field(default=None, description="Name in score records and thresholds. Default: the type.")
    weight: float = Field(default=1.0, description="Weight of this score in the sample's total.")

    @property
    def key(self) -> str:
        return self.name or self.type


class AnswerReward(_RewardBase):
    """Verifiable answer: the response gives the prompt's reference answer (column `answer`)."""

    type: Literal["answer"] = "answer"
    match: Literal["auto", "math", "exact", "contains", "regex"] = Field(
        default="auto",
        description="`math`: the answer the reply commits to, as the evaluate stage's accuracy suite reads it (the "
        "last `\\boxed{}`, else the sentence after the last lead-in such as `The answer is` or `答えは`, from its "
        "last `=`, else the last number; a check after it does not count; `XではなくY` and `not X but Y` give Y, a "
        "number denied, asked about or offered as one of a choice, `Is it 12?`, `12 or 13` or `12 apples, or 13 if ...`, none; `12 km, or 12000 m` restates 12), gives the reference: a numeric reference "
        "(a unit or currency dropped: `12 cm`, `12,000円`) by value, exactly where both are exact as written "
        "(integers, finite decimals, fractions: 1,000,001 is not 1000000) and within 1e-6 relative otherwise (`\\sqrt{2}`, "
        "a float reference that is no integer, as a float32 column's 0.1 loads; the accuracy suite's `rel_tol`, where "
        "set, is the tolerance of every comparison instead), `45%` giving 45 and 0.45; other math by "
        "math-verify equivalence (fractions, LaTeX, expressions); `exact`: equal after case, "
        "punctuation and space folding; `contains`: the reference appears in the answer; `regex`: `pattern` "
        "extracts the answer; `auto`: the accuracy suite's rule, one decision for both: a number as `math` reads it, math "
        "(an expression, equation, interval or tuple with no prose word in it: `x=2, y=3`, `(2, 3)`) by math-verify, "
        "anything else, prose with numbers in it (`2時間30分`, `4月1日`) too, by the rule for text: "
        "the reply commits to one answer, the last box, else the sentence after the last lead-in, else the last line (a "
        "later line does not change it; a line ending in `?` is none), and it equals the reference after "
        "folding (`option C`, `ข้อ ข` give `C`, `ข`; the box or that sentence may go on after it, and a last line "
        "may name it before its punctuation, after a colon (`：` too), after a closing `is`/`adalah` or before a "
        "final です/だ/입니다: `C) Paris`, `Sentiment: Positive`, `ポジティブです。`, and after a retraction the "
        "correction: `イ。いや、ウです。` gives ウ; a list of options, `ア、イ、ウ、エ` or `Yes, no.`, gives none); a "
        "list reference is the accepted "
        "answers, any one of them right; `contains` is never chosen by `auto` (gold `B` is in "
        "`\\boxed{A}`). A reply cut off at max tokens (finish reason `length`) scores 0 under every match, as "
        "the accuracy suite grades it.",
    )
    pattern: str | None = Field(default=None, description="With `match: regex` (required there): the pattern, a "
                                "Python regular expression checked when the recipe loads; group 1 is the answer.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:  # not a ValueError: raised as is, it left pydantic as a traceback
                raise ValueError(f"pattern {value!r} is no regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _regex_has_pattern(self) -> AnswerReward:
        # Checked here, not when scoring: a missing pattern passed `tempa plan` and failed inside training.
        if self.match == "regex" and self.pattern is None:
            raise ValueError("`match: regex` needs a `pattern` (a regular expression whose group 1 is the answer)")
        return self


class LanguageReward(_RewardBase, language.LanguageRules):
    """Language fidelity: the answer is in the prompt's target language (column `language`, py3langid),
    and, with `reasoning` set, the reasoning in a language its policy allows.

    An answer too short to detect a language in (see `min_letters`; a bare number, a tool call) passes, so it
    never gates and never loses to a longer sample for its length; the same holds for the reasoning. An empty
    answer (or no reasoning) has no score. Score: the answer's verdict (0 or 1); with `reasoning`,
    ``(1 - reasoning_weight) x answer + reasoning_weight x reasoning`` when both apply, else whichever does.
    """

    type: Literal["language"] = "language"
    gate: bool = Field(
        default=True,
        description="SEA-IFEval's rule: a response in the wrong language fails every `answer` check (its "
        "answer score becomes 0), however correct it is.",
    )
    languages: list[str] | None = Field(
        default=None, description="Restrict py3langid to these codes (e.g. the recipe's languages); default: all."
    )

    reasoning: language.ReasoningLanguage | None = Field(
        default=None,
        description="Also check the reasoning (the think block): `{languages: [target]}` (the prompt's language), "
        "`{languages: [target, en]}` (English reasoning allowed too), ... Unset: the answer only.",
    )
    reasoning_weight: float = Field(default=0.5, ge=0, le=1, description="With `reasoning`: its share of the score.")

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else language.check_codes(value)


class FormatReward(_RewardBase):
    """Format: think block closed exactly when thinking is on, non-empty answer, ended with end-of-turn."""

    type: Literal["format"] = "format"
    require_stop: bool = Field(
        default=True, description="Count a response cut off at max_new_tokens as failing the `ended` check."
    )


class LengthPenalty(_RewardBase):
    """Length penalty: -per_token for every completion token beyond free_tokens, capped at -max_penalty."""

    type: Literal["length"] = "length"
    unit: Literal["tokens", "chars"] = Field(
        default="tokens", description="Count completion tokens, or characters of the response (reasoning included)."
    )
    free_tokens: int = Field(default=0, ge=0, description="Tokens (or characters) allowed without penalty.")
    per_token: float = Field(default=0.001, ge=0, description="Penalty per token (or character) beyond free_tokens.")
    max_penalty: float = Field(default=1.0, ge=0, description="Largest penalty (the score never goes below minus this).")


class RewardModelReward(_RewardBase):
    """A reward model: a sequence-classification checkpoint scoring prompt + answer."""

    type: Literal["reward_model"] = "reward_model"
    model: str = Field(description="Folder or hub id of an AutoModelForSequenceClassification checkpoint.")
    normalize: Literal["none", "sigmoid"] = Field(
        default="none", description="`none`: the raw logit (label 0); `sigmoid`: squashed to 0..1."
    )
    batch_size: int = Field(default=8, ge=1, description="Conversations per forward pass.")
    max_length: int = Field(default=4096, ge=8, description="Longer conversations keep their last tokens.")
    device: str = Field(default="auto", description="`auto`, `cpu`, `cuda:0`, ...")
    dtype: str = Field(default="auto", description="`auto` (bf16 on GPU, fp32 on CPU) or a torch dtype name.")
    include_reasoning: bool = Field(default=False, description="Show the reasoning to the reward model too.")

    @field_validator("model")
    @classmethod
    def _model(cls, value: str, info: ValidationInfo) -> str:
        resolved = resolve_path(value, info)
        local_model_check(resolved, "AutoModelForSequenceClassification")
        return resolved


class JudgeReward(_RewardBase, JudgeSettings):
    """An LLM judge's 1-10 rating (MT-Bench `[[N]]`); an unparsable reply fails the sample's scoring.

    The rating is the reply's `[[N]]` (a think block ignored): all of them when they agree; where they differ, the
    ones a rating word leads to (`Rating: [[8]] (a perfect answer would be [[10]])` is 8, `Overall: [[7]]` beside
    `Helpfulness: [[8]]`), else the ones alone on their line, when those agree. Without any `[[N]]`, a single-bracket
    `[N]` read the same way (`Rating: [8] out of 10`, `I would rate this response [8].`, a line `[8]`). Anything else
    is unparsable: `Step [2] is wrong. Rating: 8/10` (a step, a count or a citation leads to its bracket; the 8 has
    none), `Rating: [[3]] for style, rating [[9]] for content.`"""

    type: Literal["judge"] = "judge"
    # Decides only whether the stage stops, never a score (a sample without a rating is unscored either way): raised
    # after a failure, `tempa run` resumes the stage and its score journal instead of asking the judge again.
    max_unparsable: float = Field(
        default=0.1, ge=0, le=1, json_schema_extra=NOT_FINGERPRINTED, description="Largest share of this judge's "
        "replies that may lack a rating; above it the stage fails, quoting one reply (a judge that cannot follow the "
        "rubric decides nothing). Raising it re-reads the journaled scores without asking again.",
    )
    scale: Literal["raw", "unit"] = Field(
        default="raw", description="`raw`: the 1-10 rating; `unit`: (rating - 1) / 9, in 0..1."
    )
    use_reference: bool = Field(
        default=True, description="Show the judge the prompt's reference (answer column or reference reply)."
    )

    @field_validator("rubric")
    @classmethod
    def _rates_the_answer(cls, value: str | None) -> str | None:
        # A reward rates a sample: a rubric that never shows it gives every sample of a prompt one rating.
        if value is not None:
            check_placeholders(value, PLACEHOLDERS, ("answer",), "the judge would never see the sample it rates, "
                               "and every sample of a prompt would get the same rating")
        return value


RewardConfig = Annotated[
    AnswerReward | LanguageReward | FormatReward | LengthPenalty | RewardModelReward | JudgeReward,
    Field(discriminator="type"),
]


def judge_reads(rewards: Sequence[Any], field: tuple[str | int, ...]) -> list[Read]:
    """Earlier stages whose models the judges in ``rewards`` (at recipe ``field``) name as `stage:NAME`."""
    return [read for i, reward in enumerate(rewards) if isinstance(reward, JudgeReward)
            for read in backend_reads(reward.backend, (*field, i, "backend"))]


def check_reward_names(rewards: list[Any]) -> list[Any]:
    """Names must be unique (and not 'total')."""
    seen: set[str] = set()
    for reward in rewards:
        if reward.key == "total":
            raise ValueError("'total' is reserved for the weighted sum; rename that reward")
        if reward.key in seen:
            raise ValueError(f"two rewards are named {reward.key!r}; give one a `name`")
        seen.add(reward.key)
    return rewards


# --------------------------------------------------------------------------- scoring


@dataclass
class ScoreItem:
    prompt: PromptRow
    completion: Completion


@dataclass
class ScoringEnv:
    """What model-backed rewards need from the stage (defaults for backends, token counting)."""

    policy_dir: Path
    tokenizer_dir: Path
    stage_models: Mapping[str, Path] = field(default_factory=dict)
    trust_remote_code: bool = False
    seed: int = 0
    tokenizer: Any = None  # counts tokens when a backend did not report them
    show_progress: bool = True
    # Where the judges' replies are journaled by request (:class:`~tempa.alignment.judge.ReplyJournal`), and what
    # besides the request decides one (the runs of the models a stage samples and judges with); None: not journaled.
    replies_dir: Path | None = None
    replies_identity: Any = None


def count_tokens(completion: Completion, tokenizer: Any = None) -> int:
    if completion.completion_tokens is not None:
        return completion.completion_tokens
    text = completion.full_text if completion.reasoning is None else completion.reasoning + completion.text
    if tokenizer is not None:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return max(1, len(text) // 4)


def count_chars(completion: Completion) -> int:
    """Characters of the response as written (reasoning and answer, tags and pre-fill excluded)."""
    split = split_think(completion)
    return len((split.reasoning or "").strip()) + len(split.answer)


class RewardSet:
    """The recipe's rewards, applied together: ``score(items)`` -> one record per item."""

    def __init__(self, configs: list[Any], env: ScoringEnv) -> None:
        check_reward_names(configs)
        self.configs = configs
        self.env = env
        self.weights = {c.key: c.weight for c in configs}
        self._judges: dict[str, Judge] = {}
        self._backends: list[SamplingBackend] = []
        self._reward_models: dict[str, _RewardModel] = {}

    @property
    def names(self) -> list[str]:
        return [c.key for c in self.configs]

    def score(self, items: list[ScoreItem], *, unjudged: Sequence[bool] | None = None,
              progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """``{"scores": {name: value, "total": value}, "details": {...}}`` per item. ``unjudged``: the items no judge
        is asked about (samples the stage can never take: a judge's call is paid for); they have no judge score and
        no total, and ``not_judged`` in their judges' details. ``progress(items)``: how many items' worth of the
        judges' requests have their reply, told as replies arrive (the judges are what takes time)."""
        scores: list[dict[str, float | None]] = [{} for _ in items]
        details: list[dict[str, Any]] = [{} for _ in items]
        judged = [config for config in self.configs if isinstance(config, JudgeReward)]
        asks = {config.key: [i for i in range(len(items)) if unjudged is None or not unjudged[i]] for config in judged}
        requests = sum(len(asked) for asked in asks.values())
        before = 0  # requests of the judges already done

        def told(answered: int) -> None:
            if progress is not None and requests:
                progress(len(items) * (before + answered) // requests)

        for config in self.configs:
            asked = asks.get(config.key, list(range(len(items))))
            for i in set(range(len(items))) - set(asked):
                details[i][config.key] = {"not_judged": True}
            values, infos = self._apply(config, [items[i] for i in asked], told) if asked else ([], [])
            before += len(asked) if config.key in asks else 0
            broken = 0
            for i, value, info in zip(asked, values, infos, strict=True):
                if value is not None and not math.isfinite(value):
                    # A NaN or infinite score (a reward model's overflowing or diverged head) is a failed score,
                    # as an unparsable judge reply is: NaN compares false both ways, so left in the total it was
                    # chosen or rejected at random, kept by any min_score, and written as invalid JSON.
                    info = {**info, "non_finite": str(value)}
                    value = None
                    broken += 1
                scores[i][config.key] = value
                if info:
                    details[i][config.key] = info
            if broken:
                log.warning("reward %r gave %d of %d samples a NaN or infinite score; they count as unscored "
                            "(never paired, kept or trained on)", config.key, broken, len(items))
        gates = [c.key for c in self.configs if isinstance(c, LanguageReward) and c.gate]
        answers = [c.key for c in self.configs if isinstance(c, AnswerReward)]
        judges = [c.key for c in self.configs if isinstance(c, JudgeReward)]
        records = []
        for item_scores, item_details in zip(scores, details, strict=True):
            # The gate follows the answer's language only, never the reasoning's.
            if gates and answers and any(item_details.get(g, {}).get("answer") == 0.0 for g in gates):
                for name in answers:
                    if item_scores[name]:
                        item_details.setdefault(name, {})["gated_by_language"] = True
                        item_scores[name] = 0.0
            failed = any(item_details.get(key, {}).get("unparsable") or item_details.get(key, {}).get("not_judged")
                         for key in judges) or any("non_finite" in info for info in item_details.values())
            total = None if failed else combine(item_scores, self.weights)
            records.append({"scores": {**item_scores, "total": total}, "details": item_details})
        return records

    def _apply(self, config: Any, items: list[ScoreItem], progress: Callable[[int], None] | None = None
               ) -> tuple[list[float | None], list[dict[str, Any]]]:
        if isinstance(config, AnswerReward):
            values = [answer_match(outside_think(split_think(it.completion).answer), it.prompt.answer, config.match,
                                   config.pattern, it.prompt.language) for it in items]
            # A reply cut off at the token limit is wrong, as the accuracy suite grades it: "The answer is 12" may be
            # the start of 120, and rewarding it teaches the policy that running out of tokens costs nothing.
            cut = [bool(value) and it.completion.truncated for value, it in zip(values, items, strict=True)]
            return ([0.0 if c else v for c, v in zip(cut, values, strict=True)],
                    [{"cut_off": True} if c else {} for c in cut])
        if isinstance(config, LanguageReward):
            verdicts = [language_fidelity(it.completion, it.prompt.language, config, tools=it.prompt.uses_tools)
                        for it in items]
            return [v.score for v in verdicts], [v.details() for v in verdicts]
        if isinstance(config, FormatReward):
            values, infos = [], []
            for it in items:
                checks = format_checks(it.completion, it.prompt.thinking_mode, require_stop=config.require_stop)
                values.append(sum(checks.values()) / len(checks))
                infos.append({"failed": [k for k, ok in checks.items() if not ok]})
            return values, infos
        if isinstance(config, LengthPenalty):
            values, infos = [], []
            for it in items:
                length = (count_tokens(it.completion, self.env.tokenizer) if config.unit == "tokens"
                          else count_chars(it.completion))
                values.append(length_penalty(length, free_tokens=config.free_tokens, per_token=config.per_token,
                                             max_penalty=config.max_penalty))
                infos.append({config.unit: length})
            return values, infos
        if isinstance(config, RewardModelReward):
            model = self._reward_models.get(config.key)
            if model is None:
                model = self._reward_models[config.key] = _RewardModel(config, self.env)
            return model.score(items), [{} for _ in items]
        if isinstance(config, JudgeReward):
            return self._judge(config, items, progress)
        raise TypeError(f"unknown reward config {type(config).__name__}")

    def judge_for(self, config: JudgeSettings, key: str) -> Judge:
        judge = self._judges.get(key)
        if judge is None:
            backend = build_backend(
                config.backend, policy_dir=self.env.policy_dir, tokenizer_dir=self.env.tokenizer_dir,
                stage_models=self.env.stage_models, trust_remote_code=self.env.trust_remote_code,
                who=f"reward {key}", show_progress=self.env.show_progress,
            )
            self._backends.append(backend)
            replies = None
            if self.env.replies_dir is not None:
                identity = {"backend": fingerprinted(config.backend), "models": self.env.replies_identity}
                # An earlier tempa named an HTTP judge with its address too (no longer: it is where, not who).
                earlier = [{**identity, "backend": {**identity["backend"], "base_url": config.backend.base_url}}] \
                    if isinstance(config.backend, HTTPBackendConfig) else []
                replies = ReplyJournal(self.env.replies_dir / JUDGE_REPLIES, identity, earlier)
            judge = self._judges[key] = Judge(backend, config, seed=self.env.seed, replies=replies)
        return judge

    def _judge(self, config: JudgeReward, items: list[ScoreItem], progress: Callable[[int], None] | None = None
               ) -> tuple[list[float | None], list[dict[str, Any]]]:
        judge = self.judge_for(config, config.key)
        prompts = [judge_prompt(config.rubric, it, use_reference=config.use_reference) for it in items]
        verdicts = judge.rate(prompts, progress)
        values: list[float | None] = []
        infos = []
        for verdict in verdicts:
            score = verdict.score
            if score is not None and config.scale == "unit":
                score = (score - 1) / 9
            values.append(score)
            infos.append({"rating": None, "unparsable": True, "problem": verdict.problem, "raw": verdict.raw[-2000:],
                          **({"cut_off": True} if verdict.cut_off else {})} if verdict.score is None
                         else {"rating": verdict.score})
        return values, infos

    def stats(self) -> dict[str, Any]:
        """Judge call and unparsable counts, per judge reward."""
        out: dict[str, Any] = {}
        for key, judge in self._judges.items():
            for name, value in judge.stats().items():
                out[f"{key}_{name.removeprefix('judge_')}"] = value
        return out

    def close(self) -> None:
        """Release judge backends and reward models (before training needs the memory)."""
        for backend in self._backends:
            backend.close()
        self._backends.clear()
        self._judges.clear()
        self._reward_models.clear()


@dataclass
class JudgeFailures:
    """How often one judge's replies had no rating, over every sample scored (resumed ones included)."""

    replies: int = 0
    unparsable: int = 0
    cut_off: int = 0  # of the unparsable: replies that ended at the judge's max_new_tokens
    out_of_range: int = 0  # of the unparsable: replies whose rating is off the rubric's 1-10 (a judge on another scale)
    example: str | None = None  # one raw reply without a rating
    problems: Counter[str] = field(default_factory=Counter)  # of the unparsable: why, by rating_problem

    def count(self, raw: str, cut_off: bool = False, problem: str | None = None) -> None:
        """One reply without a rating, and why (``problem``; else read from its text: a journal an earlier tempa
        wrote says why too)."""
        problem = problem or rating_problem(raw) or NO_RATING
        self.unparsable += 1
        self.cut_off += cut_off
        self.out_of_range += problem.startswith("out of range")
        self.problems[problem] += 1
        self.example = self.example or raw

    @property
    def fraction(self) -> float:
        return round(self.unparsable / self.replies, 6) if self.replies else 0.0

    def refusal(self, limit: float, judge: str, setting: str = "max_unparsable") -> str | None:
        """Why the replies cannot be scored (more of them without a rating than ``limit``), quoting one; else None."""
        if not self.replies or self.fraction <= limit:
            return None
        reply = " ".join((self.example or "").split())[:160]
        advice = ""
        if self.cut_off:  # a reasoning judge out of room before its rating: no rubric problem, a length one
            advice += f"; {self.cut_off} of them ran out of the judge's max_new_tokens before a rating: raise it"
        if self.out_of_range:  # [[11]], [[0]]: a judge rating on another scale than the rubric's
            advice += (f"; {self.out_of_range} of them gave a rating out of range (1-10): a rubric of your own must ask "
                       "for [[1]] to [[10]]")
        advice = (f"{advice}. Else use" if advice else ". Use") + f" a judge that follows the rubric, or raise {setting}"
        # The problems seen, each with its count: "gave no [[rating]]" said of every one sent a user whose judge wrote
        # several different ratings looking for a missing one.
        said = {problem: f"gave {'a rating ' if problem.startswith('out of range') else ''}{problem}"
                for problem in self.problems}
        if len(said) == 1:
            what, counts = next(iter(said.values())), ""
        else:
            what = "gave no usable rating"
            counts = ": " + ", ".join(f"{count} {said[problem]}" for problem, count in self.problems.most_common())
        return (f"{judge} {what} in {self.unparsable} of {self.replies} replies ({self.fraction:.0%} > "
                f"max_unparsable {limit:g}{counts}); e.g. {reply!r}{advice}")


def judge_failures(rewards: Sequence[Any], scores: Sequence[dict[str, Any]]) -> dict[str, JudgeFailures]:
    """Per judge reward: replies, unparsable replies and one example, read from the score records."""
    out = {r.key: JudgeFailures() for r in rewards if isinstance(r, JudgeReward)}
    for record in (r for s in scores for r in s["results"]):
        for key, failures in out.items():
            if key not in record["scores"]:
                continue
            failures.replies += 1
            detail = record.get("details", {}).get(key, {})
            if detail.get("unparsable"):
                failures.count(detail.get("raw", ""), bool(detail.get("cut_off")), detail.get("problem"))
    return out


def judge_stats(rewards: Sequence[Any], scores: Sequence[dict[str, Any]]) -> dict[str, float | int]:
    """Flat per-judge numbers for stats and metrics: ``<judge>_replies``, ``_unparsable``, ``_unparsable_fraction``."""
    out: dict[str, float | int] = {}
    for key, failures in judge_failures(rewards, scores).items():
        out.update({f"{key}_replies": failures.replies, f"{key}_unparsable": failures.unparsable,
                    f"{key}_unparsable_fraction": failures.fraction})
        if failures.out_of_range:
            out[f"{key}_out_of_range"] = failures.out_of_range
    return out


def check_judges(rewards: Sequence[Any], scores: Sequence[dict[str, Any]], where: str) -> None:
    """Raise StageError (one line, quoting a reply) when a judge's unparsable share exceeds its ``max_unparsable``."""
    limits = {r.key: r.max_unparsable for r in rewards if isinstance(r, JudgeReward)}
    for key, failures in judge_failures(rewards, scores).items():
        if (refusal := failures.refusal(limits[key], f"judge {key!r}")) is not None:
            raise StageError(f"{where}: {refusal}")


def reward_summary(rewards: list[Any], scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each reward over the samples it applied to, and the share it applied to."""
    means: dict[str, float | None] = {}
    coverage: dict[str, float] = {}
    results = [r for s in scores for r in s["results"]]
    for name in [r.key for r in rewards] + ["total"]:
        values = [r["scores"].get(name) for r in results]
        applied = [v for v in values if v is not None]
        means[name] = round(sum(applied) / len(applied), 6) if applied else None
        coverage[name] = round(len(applied) / len(values), 6) if values else 0.0
    return {"reward_means": means, "reward_coverage": coverage}


def judge_prompt(rubric: str | None, item: ScoreItem, *, use_reference: bool = True) -> str:
    """The rubric filled for one sample: multi-turn rubric when the prompt has earlier turns, tool-loop rubric when it
    offers tools or holds a tool loop (the question alone would hide the tools and their results)."""
    prompt = item.prompt
    history = [m for m in prompt.messages if m["role"] != "system"]
    multi = sum(1 for m in history if m["role"] == "user") > 1
    template = rubric or (TOOL_RUBRIC if prompt.uses_tools else MULTI_TURN_RUBRIC if multi else SINGLE_TURN_RUBRIC)
    reference = None
    if use_reference:
        reference = prompt.reference or (str(prompt.answer) if prompt.answer not in (None, "") else None)
    return fill(
        template,
        question=prompt.question,
        answer=split_think(item.completion).answer,
        reference=reference,
        conversation=render_conversation(history, prompt.tools),
        language=prompt.language,
    )


class _RewardModel:
    """A sequence-classification reward model, loaded once, scoring in padded batches."""

    def __init__(self, config: RewardModelReward, env: ScoringEnv) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.config = config
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float32 if config.dtype == "auto" and device == "cpu" else (
            torch.bfloat16 if config.dtype == "auto" else getattr(torch, config.dtype))
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(config.model, trust_remote_code=env.trust_remote_code)
        if not self.tokenizer.chat_template:
            # A reward model without its own template reads conversations in the recipe's format.
            self.tokenizer.chat_template = AutoTokenizer.from_pretrained(env.tokenizer_dir).chat_template
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"
        self.model = AutoModelForSequenceClassification.from_pretrained(
            config.model, dtype=dtype, trust_remote_code=env.trust_remote_code, use_safetensors=True
        ).to(device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def texts(self, items: list[ScoreItem]) -> list[str]:
        """Each conversation as the reward model's template renders it, with the prompt's tools (a template that
        does not use tools leaves them out)."""
        from jinja2 import TemplateError

        out = []
        for it in items:
            split = split_think(it.completion)
            message: dict[str, Any] = {"role": "assistant", "content": split.answer}
            if self.config.include_reasoning and split.reasoning:
                message["reasoning_content"] = split.reasoning
            try:
                out.append(self.tokenizer.apply_chat_template([*it.prompt.messages, message], tools=it.prompt.tools,
                                                              tokenize=False))
            except TemplateError as exc:
                what = " (it offers tools or holds a tool loop)" if it.prompt.uses_tools else ""
                raise StageError(f"reward {self.config.key!r}: the chat template of {self.config.model} cannot render "
                                 f"prompt {it.prompt.meta.get('row', it.prompt.id)}{what}: {exc}") from None
        return out

    def score(self, items: list[ScoreItem]) -> list[float | None]:
        import torch

        texts = self.texts(items)
        values: list[float | None] = []
        for start in range(0, len(texts), self.config.batch_size):
            batch = self.tokenizer(
                texts[start:start + self.config.batch_size], padding=True, truncation=True,
                max_length=self.config.max_length, add_special_tokens=False, return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                logits = self.model(**batch).logits.float()
            column = logits[:, 0]
            if self.config.normalize == "sigmoid":
                column = torch.sigmoid(column)
            values.extend(float(v) for v in column.tolist())
        return values
