"""Configuration of the ``evaluate`` stage: which candidates, which suites, how to generate.

Metric names on the leaderboard are ``<suite name>/<metric>``; a suite's name defaults to its
type, so ``accuracy/accuracy``, ``language/normalized_accuracy`` or ``heldout/perplexity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tempa.alignment.backends import BackendConfig, backend_reads
from tempa.alignment.judge import JudgeSettings
from tempa.chat_templates.thinking import THINK_TAGS
from tempa.sft import language
from tempa.sft.language import ReasoningLanguage  # the `language` field below shadows the module
from tempa.sft.stage_api import Artifact, OnOff, Read, StageConfigBase, resolve_path
from tempa.sft.suggest import closest


class _Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str  # each suite narrows it to its Literal tag
    name: str | None = Field(
        default=None, description="Metric prefix on the leaderboard (default: the suite type)."
    )

    # The metrics the suite reports, each by its whole name; None: known only once it ran. Checked against what the
    # scorers return (tests/test_evaluate.py), so rank_by and select.metric are checked here.
    reports: ClassVar[frozenset[str] | None] = None
    # Its breakdowns, ``<name>:<qualifier>``: the name -> what the qualifier is (its rows' data: a language, an
    # instruction type, a category). A qualifier was not checked at all: `accuracy:ja` on a suite that reports no
    # per-language value, or `language_share:jp` for the suite's `:ja`, failed the merge after all training.
    breakdowns: ClassVar[dict[str, str]] = {}

    @property
    def key(self) -> str:
        return self.name or self.type

    def qualifier_problem(self, name: str, qualifier: str) -> str | None:
        """Why the breakdown ``name`` never has ``qualifier``, or None (it may, once the rows are read)."""
        return None if qualifier else f"'{name}:' names no {self.breakdowns[name]}"

    def metric_problem(self, metric: str) -> str | None:
        """Why this suite never reports ``metric`` (its name after ``<suite>/``), or None."""
        if self.reports is None or metric in self.reports:
            return None
        name, colon, qualifier = metric.partition(":")
        if colon and name in self.breakdowns:
            problem = self.qualifier_problem(name, qualifier)
            return None if problem is None else f"suite '{self.key}' ({self.type}): {self.key}/{metric}: {problem}"
        offered = sorted(self.reports | {f"{name}:<{what}>" for name, what in self.breakdowns.items()})
        hint = closest(metric, sorted(self.reports))
        per = f", as {name!r} has no breakdown" if colon and name in self.reports else ""
        return (f"suite '{self.key}' ({self.type}) reports no {metric!r}{per}"
                + (f" (did you mean {self.key}/{hint}?)" if hint else "")
                + f"; it reports {', '.join(f'{self.key}/{name}' for name in offered)}")


def metric_problem(metric: str, suites: Sequence[_Suite]) -> str | None:
    """Why no suite of ``suites`` reports ``metric`` (``<suite>/<name>``), or None."""
    keys = [suite.key for suite in suites]
    prefix, _, name = metric.partition("/")
    if not name or prefix not in keys:
        return f"{metric!r} must be '<suite>/<metric>' with a suite in {keys}"
    return next(suite for suite in suites if suite.key == prefix).metric_problem(name)


class _DataSuite(_Suite):
    data: str = Field(description="Evaluation rows: a .jsonl/.json file (recipe-relative) or a dataset id.")
    split: str = Field(default="train", description="Split, when `data` is a dataset.")
    max_rows: int | None = Field(default=None, ge=1, description="Use only the first N rows.")

    @field_validator("data")
    @classmethod
    def _resolve_data(cls, value: str, info: ValidationInfo) -> str:
        return resolve_path(value, info)


class _GenerationSuite(_DataSuite):
    thinking_mode: OnOff | None = Field(
        default=None,
        description="thinking_mode for every prompt (default: the row's `thinking_mode`, else the template's).",
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Override of the stage's generation.max_new_tokens."
    )


class LossSuite(_DataSuite):
    """Held-out loss and perplexity. On chats (rows with `messages`, rendered with their `tools`): the assistant
    tokens of the samples SFT trains the row as (`tempa.chat_templates.expand`), each turn in the rendering inference
    gives it, with its reasoning where it has a trace, else with thinking off (no empty think block is scored); a row
    whose `thinking_mode` (or the suite's) is off scores every turn with thinking off. On raw text (rows with a `text`
    string, as continued pre-training reads documents): every token. One suite per language of a continued
    pre-training mix gives each language its own held-out loss."""

    type: Literal["loss"]
    reports: ClassVar[frozenset[str] | None] = frozenset({"loss", "perplexity", "tokens"})
    thinking_mode: OnOff | None = Field(
        default=None,
        description="Score every chat as an SFT source of this `thinking_mode` trains it (off: no reasoning); default: "
        "the row's `thinking_mode`, else on (a turn without a trace with thinking off), as a source's default.",
    )
    max_length: int = Field(default=2048, ge=8, description="Truncate each sample (a chat's, a text's) to this many "
                            "tokens.")
    batch_size: int = Field(default=4, ge=1, description="Samples per forward pass.")


class AccuracySuite(_GenerationSuite):
    """Verifiable answers: rows with a prompt and an `answer`. A numeric answer must equal the number the reply
    commits to: the last `\\boxed{}` (an expression in it, `2^{10}`, by its value), else the sentence after the last
    "answer is"-style lead-in (答えは, 答案是, đáp án là, 정답은, ...; what its last `=` gives, else its first
    number; `XではなくY`, `not X but Y` give Y), else the last number; a number denied, asked about or offered as one
    of a choice (`12個ではありません`, `Is it 12?`, `12 or 13`) is none. Full-width forms, other scripts' digits (Thai ๑,๒๕๐), LaTeX's `\\frac{3}{4}` and
    `1{,}234`, and in Japanese and Chinese rows Han numerals (四十二, 1万2千) read as numbers; a numeric answer with
    a unit or currency (`12,000円`, `12 cm`) is compared as its number; a percentage is its number and, against one written without %, its
    hundredth (45% gives 45 and 0.45). Math (an expression, equation, interval or tuple with no prose word in it:
    `x=2, y=3`, `(2, 3)`) is compared with what the reply commits to by math-verify. Any other answer, prose with
    numbers in it (`2時間30分`, `4月1日`) too, is text and must equal, after case and punctuation folding, the one answer the
    reply commits to: the last box's text, else the sentence after the last lead-in (a trailing です/だ dropped), else
    the last line (a line ending in `?` commits to nothing; a later line does not change a box's or a lead-in's answer), also without an
    option word before it (`option C`, `ข้อ ข` give `C`, `ข`); the box or that sentence may go on after it, and a last
    line may name it before its punctuation (also 。、」), after a colon (also `：`), after a closing `is`/`adalah` or
    before a final です/だ/입니다 (`C) Paris`, `Sentiment: Positive`, `The capital of France is Paris.`, `ポジティブです。`,
    `この文はネガティブです。`, after a retraction its correction: `イ。いや、ウです。` gives ウ; a list of options,
    `ア、イ、ウ、エ`, gives none); appearing in the reply is not enough. An `answer` that is a list is the accepted
    answers, any one of them right. Only the text after
    the think block is graded: a reply still thinking at `max_new_tokens` is wrong, and counted in `unanswered` (the
    accuracy, ifeval and language suites report that share; the leaderboard shows it where it is not 0). A reply cut
    off at `max_new_tokens` (finish reason `length`) is wrong too, whatever it says, thinking on or off (a cut answer
    would pass "at most N words"): every generating suite reports the share of such replies as `truncated`, and the
    accuracy, ifeval and language suites grade them wrong (accuracy, every instruction, normalized accuracy). The
    preference/rl `answer` reward commits to the same answer, compares numbers and text by the same rules
    (`tempa.alignment.answer_text`) and scores a cut-off reply 0 too."""

    type: Literal["accuracy"]
    reports: ClassVar[frozenset[str] | None] = frozenset({"accuracy", "rows", "unanswered", "truncated"})
    rel_tol: float | None = Field(default=None, ge=0, description="Relative tolerance of the numeric match. Unset: the answer reward's rule, integers, finite decimals and fractions compare exactly (1,000,001 is not 1000000) and values that cannot be equal as written (0.3333333 for 1/3, `\\sqrt{2}`, a float reference such as 0.1 from a float32 column) within 1e-6. Set (0.01 to grade approximate answers): every numeric comparison is within it, 3.1416 giving 3.14.")


class LanguageSuite(_GenerationSuite, language.LanguageRules):
    """Share of answers in the target language, and SEA-IFEval's language-normalised accuracy. By that definition
    an answer too short to tell its language, or a few Han characters that are Japanese as much as Chinese
    (`undetermined`), keeps its score, so where `rank_by` (or a merge's
    `select.metric`) is a normalised accuracy and the best candidate's answers in the suite are at least half
    undetermined, the log, the stage's `metrics.json` (`warning`) and the leaderboard's note say so: a checkpoint that
    collapsed into very short replies can rank first.

    Correctness comes from the row's `answer` (numeric/text match) and/or `instructions`
    (all IFEval checks pass); rows with neither count toward the language share only. The
    reasoning (think block) of each answer is checked too, by the same policy the `language`
    reward's `reasoning` uses: `reasoning_language_share`.
    """

    type: Literal["language"]
    reports: ClassVar[frozenset[str] | None] = frozenset(
        {"language_share", "accuracy", "normalized_accuracy", "reasoning_language_share", "unanswered", "truncated",
         "rows", "undetermined", "language:undetermined", "reasoning:undetermined"})
    breakdowns: ClassVar[dict[str, str]] = {"language_share": "language", "normalized_accuracy": "language"}
    language: str | None = Field(
        default=None, description="Target language (ISO 639-1) for rows without a `language` field."
    )
    languages: list[str] | None = Field(
        default=None,
        description="Restrict detection to these codes (e.g. [en, id, vi, th, ta]); default: all py3langid knows.",
    )
    reasoning: ReasoningLanguage = Field(
        default_factory=ReasoningLanguage,
        description="Languages the reasoning may be in (`reasoning_language_share`): default [target], the "
        "prompt's; [target, en] allows English reasoning too.",
    )

    @field_validator("languages")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else language.check_codes(value)

    @model_validator(mode="after")
    def _target_known(self):
        if self.language is not None:
            if (problem := self.target_problem(self.language)) is not None:
                raise ValueError(problem)
            self.language = language.canonical(self.language)
        return self

    def qualifier_problem(self, name: str, qualifier: str) -> str | None:
        # the scores spell each row's target as the detector does (canonical): `:jpn` is never reported, `:ja` is
        if (problem := self.target_problem(qualifier)) is not None:
            return problem
        if (spelled := language.canonical(qualifier)) != qualifier:
            return f"the leaderboard spells language {qualifier!r} as {spelled!r} ({self.key}/{name}:{spelled})"
        return None

    def target_problem(self, code: Any) -> str | None:
        """Why answers cannot be scored as in ``code`` (one line), or None. An unknown code ('vn', 'Indonesian')
        or one outside `languages` is never what the detector returns: every answer would count as in the wrong
        language, silently."""
        try:
            (spelled,) = language.check_codes([str(code)])
        except ValueError as error:
            return str(error).split("; known:")[0]
        if self.languages is not None and not language.accepted([spelled], self.equivalent) & set(self.languages):
            return f"language {code!r} is not among the suite's `languages` {self.languages}, so no answer could be in it"
        return None


class ThinkingFormatSuite(_DataSuite):
    """Thinking-format compliance per mode. On: a closed think block, then an answer. Off: no think text."""

    type: Literal["thinking"]
    reports: ClassVar[frozenset[str] | None] = frozenset({"on_compliance", "off_compliance", "compliance", "rows",
                                                                     "truncated"})
    modes: list[OnOff] = Field(default=["on", "off"], min_length=1, description="Modes to test.")
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Override of the stage's generation.max_new_tokens."
    )


class IFEvalSuite(_GenerationSuite):
    """IFEval-style checks: rows with a prompt and `instructions` ([{type: word_count, max: 50}, ...])."""

    type: Literal["ifeval"]
    reports: ClassVar[frozenset[str] | None] = frozenset({"prompt_accuracy", "instruction_accuracy", "unanswered",
                                                                     "truncated", "rows"})
    breakdowns: ClassVar[dict[str, str]] = {"instruction_accuracy": "instruction type"}

    def qualifier_problem(self, name: str, qualifier: str) -> str | None:
        from tempa.merge import ifeval

        # the instruction types ifeval's rows may hold: its `Instruction` union's `type` tags
        known = sorted(get_args(kind.model_fields["type"].annotation)[0] for kind in get_args(get_args(ifeval.Instruction)[0]))
        if qualifier in known:
            return None
        hint = closest(qualifier, known)
        return (f"{qualifier!r} is no instruction type" + (f" (did you mean {hint!r}?)" if hint else "")
                + f"; they are {', '.join(known)}")


class WinRateSuite(_GenerationSuite):
    """Pairwise LLM-judge win rate against a baseline model, per category and category-averaged (SEA-MTBench).

    Rows hold the user turns (``turns``, or the user messages of ``messages``, or a ``prompt``) and a
    ``category``. Both orders are judged; a tie counts 0.5. See :mod:`tempa.merge.win_rate`.
    """

    type: Literal["win_rate"]
    reports: ClassVar[frozenset[str] | None] = frozenset({"win_rate", "micro_win_rate", "rows", "consistency", "unparsable",
                                                                     "unparsable:judge", "truncated"})
    breakdowns: ClassVar[dict[str, str]] = {"win_rate": "category"}
    baseline: BackendConfig = Field(
        description="The model compared against: `{type: transformers|vllm|http, ...}` (transformers without "
        "`model`: the model this evaluate stage starts from). Its answers are generated once and cached."
    )
    judge: JudgeSettings = Field(description="The judge: any backend, a pairwise rubric, its sampling.")
    turns_field: str = Field(default="turns", description="Column with the list of user messages.")
    category_field: str = Field(default="category", description="Column with the row's category.")
    language: str | None = Field(
        default=None, description="Tell the judge the answers must be in this language (ISO 639-1)."
    )
    max_unparsable: float = Field(
        default=0.1, ge=0, le=1, description="Largest share of the judge's replies that may lack a verdict; above "
        "it the stage fails, quoting one reply (a row is scored only when both orders' verdicts parse, so a judge "
        "that cannot follow the rubric would leave a win rate over the few rows it could).",
    )


class LmEvalSuite(_Suite):
    """Tasks of lm-evaluation-harness (optional dependency: `pip install lm-eval`)."""

    type: Literal["lm_eval"]
    tasks: list[str] = Field(min_length=1, description="lm-eval task names.")
    num_fewshot: int | None = Field(
        default=None, ge=0, description="Few-shot examples (task default if unset)."
    )
    limit: float | None = Field(
        default=None, gt=0, description="Examples per task (a count, or a fraction < 1)."
    )
    batch_size: int | str = Field(default=1, description="lm-eval batch size (or 'auto').")
    apply_chat_template: bool = Field(
        default=False,
        description="Render prompts with the chat template (its default thinking_mode applies); off: "
        "plain few-shot prompts, as the harness does by default.",
    )
    args: dict[str, Any] = Field(
        default_factory=dict, description="Further keyword arguments for lm_eval.simple_evaluate."
    )


Suite = Annotated[
    LossSuite | AccuracySuite | LanguageSuite | ThinkingFormatSuite | IFEvalSuite | WinRateSuite | LmEvalSuite,
    Field(discriminator="type"),
]


class EvalGeneration(BaseModel):
    """Generation settings shared by the generation suites (greedy by default)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=512, ge=1, description="Most tokens per answer.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus mass when sampling.")
    batch_size: int = Field(default=8, ge=1, description="Prompts per generate call.")


def _whole_model_checkpoints(config: Any) -> str | None:
    """Why a stage's checkpoints cannot be scored: a LoRA stage saves adapters (its final/ is the merged model)."""
    if getattr(config, "lora", None) is not None:
        return (f"stage '{config.name}' trains LoRA adapters, so its checkpoints are adapters, not models; score its "
                f"merged final model with `stages: [{config.name}]`")
    return None


class EvaluateStageConfig(StageConfigBase):
    """Score candidate models with the configured suites and write a leaderboard. Besides `leaderboard.json` /
    `leaderboard.md` and `scores/<candidate>.json`, the stage folder keeps every candidate's answers, to audit a score
    row by row: `answers/<candidate>/<suite>.jsonl` (a `/` in the candidate's name is `__`:
    `answers/sft__checkpoint-2/math.jsonl`), one line per scored row with its `index` in the suite's rows (and its
    `id`, if it has one), the `prompt` (messages), the `answer`, the `reasoning`, the `finish_reason` (`stop`,
    `length`: cut at max_new_tokens, or null where the backend cannot tell) and the row's verdicts as the suite
    computes them. Scores are cached per candidate and suite (by the suite, its rows, the weights, and a win rate's
    judge and baseline), so editing one suite's file re-scores, and re-judges, that suite alone; a suite whose scores
    come from the cache gets its answers from it too.

    Candidates: every complete checkpoint (and the final model) of `checkpoints_of`, the final
    models of `stages`, and the folders in `models`. With none of them, the stage scores the
    model it starts from. The stage passes that model on unchanged.
    """

    kind: Literal["evaluate"]
    checkpoints_of: list[str] = Field(
        default_factory=list,
        description="Training stages whose checkpoints (those with a COMPLETE marker) are candidates, named "
        "`<stage>/checkpoint-N` (a preference stage's, of its last round: `<stage>/round-K/checkpoint-N`).",
    )
    include_final: bool = Field(
        default=True, description="With checkpoints_of: also score each stage's final model (unless it is the "
        "last checkpoint's weights, trained to the same step: that one is scored once, as the checkpoint)."
    )
    stages: list[str] = Field(default_factory=list, description="Stages whose final model is a candidate.")
    models: list[str] = Field(default_factory=list, description="Further model folders (recipe-relative).")
    suites: list[Suite] = Field(min_length=1, description=(
        "What to measure; see the suite types. A suite that generates answers gives the model a row's `prompt` "
        "(after its `system`), or its `messages` without the closing assistant turns (a tool loop keeps its calls "
        "and results, so an agent answers from them), and offers it the row's `tools`."))
    generation: EvalGeneration = Field(default_factory=EvalGeneration, description="Generation settings.")
    rank_by: str | None = Field(
        default=None, description="Leaderboard sort metric, e.g. accuracy/accuracy (direction inferred)."
    )
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights dtype for scoring (auto: bf16 on GPU, fp32 on CPU)."
    )
    think_tags: tuple[str, str] = Field(
        default=THINK_TAGS, description="Opening and closing think tags of the template."
    )

    @field_validator("models")
    @classmethod
    def _resolve_models(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return [resolve_path(item, info) for item in value]

    @model_validator(mode="after")
    def _unique_suites(self):
        keys = [suite.key for suite in self.suites]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ValueError(f"suite names must be unique; give `name:` to the repeated {duplicates}")
        return self

    @model_validator(mode="after")
    def _each_candidate_once(self):
        # Known from the recipe alone: refused here rather than scored as one candidate and counted as two (the
        # top_k check at load counts `stages` apart from `checkpoints_of`, so a merge could still fail after all
        # training on too few candidates).
        for field in ("checkpoints_of", "stages", "models"):
            listed = getattr(self, field)
            if (repeated := next((item for i, item in enumerate(listed) if item in listed[:i]), None)) is not None:
                raise ValueError(f"{field}: {repeated!r} is listed twice; each model is scored once")
        both = next((stage for stage in self.stages if stage in self.checkpoints_of), None)
        if both is not None and self.include_final:
            raise ValueError(f"stages: {both!r} is in checkpoints_of too, which scores its final model already (as its "
                             f"last checkpoint when it holds that step's weights); drop it from `stages`")
        return self

    @field_validator("rank_by")
    @classmethod
    def _reported(cls, value: str | None, info: ValidationInfo) -> str | None:
        suites = info.data.get("suites")  # (absent when they failed: that error is the one to show)
        if value is not None and suites is not None and (problem := metric_problem(value, suites)) is not None:
            raise ValueError(problem)
        return value

    def reads(self, earlier: Sequence[str]) -> list[Read]:
        """The stages whose checkpoints and models are candidates, and those a win-rate suite's models name."""
        reads = [Read(name, Artifact.MODEL, ("checkpoints_of", i), needs=_whole_model_checkpoints,
                      needs_at=("checkpoints_of", i)) for i, name in enumerate(self.checkpoints_of)]
        reads += [Read(name, Artifact.MODEL, ("stages", i)) for i, name in enumerate(self.stages)]
        for i, suite in enumerate(self.suites):
            if isinstance(suite, WinRateSuite):
                reads += backend_reads(suite.baseline, ("suites", i, "baseline"))
                reads += backend_reads(suite.judge.backend, ("suites", i, "judge", "backend"))
        return reads

    def suites_fingerprint(self) -> dict[str, Any]:
        """What determines a candidate's scores (cache key material)."""
        return self.model_dump(mode="json", include={"suites", "generation", "dtype", "think_tags"})
