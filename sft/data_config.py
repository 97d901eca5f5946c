"""Configuration of the SFT data pipeline: where rows come from, how they mix, how they are curated.

A recipe's ``data:`` block validates into :class:`DataConfig`. Every model forbids unknown keys, so
a typo in a recipe fails before any work starts. Local paths are resolved against the recipe's
folder (validation context ``base_dir``) and must exist; hub dataset ids pass through untouched.

Example (YAML, inside an ``sft`` stage)::

    data:
      heldout: 0.02
      sources:
        - name: sea_instruct
          path: data/sample_instruct.jsonl
          weight: 1.0
          thinking_mode: "off"
          languages: [en, id, vi, th, ta, tl, ja]
        - name: r1_traces
          path: org/r1-distilled        # a hub dataset id
          split: train
          format: sharegpt
          tokens: 2000000               # token budget
          thinking_mode: mixed
          thinking_ratio: 0.7
      curation:
        dedup: {near_threshold: 0.85}
        pii: {}
        template_instructions: {max_repeats: 50}
        language: {min_confidence: 0.5}
        max_tokens: 8192
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tempa.chat_templates.roles import ROLES, Role
from tempa.sft import language
from tempa.sft.run_layout import safe_name
from tempa.sft.stage_api import NOT_FINGERPRINTED, STAGE_REF, OnOffMixed, StageError, resolve_path, stage_ref

# `path: stage:NAME` reads the dataset an earlier stage (e.g. `synthesize`) wrote.


class DataError(StageError):
    """The data cannot be prepared for a reason the user can act on; the message is one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _enable_with_defaults(value: Any) -> Any:
    # `pii: true` in a recipe means "on, with the defaults"; `pii: false` means off.
    if value is True:
        return {}
    if value is False:
        return None
    return value


class ColumnMapping(_Strict):
    """Which columns (and which keys inside a turn) hold each part of a conversation.

    Every field is optional: left unset, the usual names are tried in order. Set a field when a
    source uses other names, e.g. ``columns: {prompt: question, response: answer}``.
    """

    messages: str | None = Field(
        default=None,
        description="Column with the list of turns. Default: `messages`, else `conversations` (ShareGPT).",
    )
    role: str | None = Field(
        default=None, description="Key of the speaker inside a turn. Default: `role`, else `from`."
    )
    content: str | None = Field(
        default=None, description="Key of the text inside a turn. Default: `content`, else `value`."
    )
    reasoning: str | None = Field(
        default=None,
        description=(
            "Key of the reasoning trace: inside an assistant turn for turn lists, or a column for "
            "prompt/response and instruction/output rows (then it belongs to the answer). Default: "
            "`reasoning_content`, else `thinking`, else `reasoning`. Traces written as a think block in "
            "the answer (tempa.chat_templates.thinking: leading, or R1-style without the opening tag) "
            "are always recognised."
        ),
    )
    prompt: str | None = Field(default=None, description="Prompt column. Default: `prompt`.")
    response: str | None = Field(
        default=None, description="Response column. Default: `response`, else `completion`."
    )
    instruction: str | None = Field(default=None, description="Instruction column. Default: `instruction`.")
    input: str | None = Field(
        default=None,
        description="Optional input column appended to the instruction after a blank line. Default: `input`.",
    )
    output: str | None = Field(default=None, description="Output column. Default: `output`.")
    system: str | None = Field(
        default=None,
        description=(
            "Optional system-prompt column (LLaMA-Factory's ShareGPT rows have one beside the turns); it becomes the "
            "first turn. A row whose turns start with a different system turn is rejected. Default: `system`."
        ),
    )
    tools: str | None = Field(
        default=None,
        description="Tool definitions column (a list of definitions, or that list as JSON text). Default: `tools`.",
    )
    thinking_mode: str | None = Field(
        default=None,
        description=(
            "Column with the row's own thinking mode, `on` or `off` (or true / false; null or empty: none), which wins "
            "over the source's `thinking_mode`, as in prompt files; any other value rejects the row. Default: "
            "`thinking_mode`."
        ),
    )
    role_names: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Extra speaker names mapped to `system`/`user`/`assistant`/`tool`, on top of the built-in "
            "ShareGPT names (human, gpt, model, bot, ...). Example: `{narrator: system}`."
        ),
    )

    @field_validator("role_names")
    @classmethod
    def _known_targets(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            if target not in ROLES:
                raise ValueError(f"role_names[{name!r}] must be one of {list(ROLES)}, got {target!r}")
        return value


class SourceConfig(_Strict):
    """One data source of the mix.

    Size is given by at most one of ``weight``, ``rows`` or ``tokens``; with none, every kept
    row is used once. Sizes count conversations (source rows); a multi-turn conversation may
    become several training samples (see ``tempa.chat_templates.expand``) that stay together.
    """

    name: str = Field(description="Unique safe name (letters, digits, '.', '_', '-'); used in stats, rejects and messages.")
    path: str = Field(
        description=(
            "A local file (.jsonl, .json, .parquet, .csv), a folder written by `datasets.save_to_disk` "
            "(or a folder of data files), a hub dataset id loaded with `datasets.load_dataset`, or "
            "`stage:NAME` for the dataset an earlier stage of the recipe wrote (e.g. a synthesize stage). "
            "Relative paths are resolved against the recipe's folder."
        )
    )
    format: Literal["auto", "messages", "sharegpt", "prompt_response", "alpaca"] = Field(
        default="auto",
        description=(
            "Row format. `messages`: OpenAI-style list of {role, content} (assistant `tool_calls`, `tool` "
            "results with `tool_call_id`/`name`); `sharegpt`: `conversations` list of {from, value} "
            "(`function_call` and `observation` turns for tools); `prompt_response`: prompt + response (or "
            "completion); `alpaca`: instruction + optional input + output. A `messages` or `conversations` list may be "
            "written as its JSON text (a CSV or Parquet column of strings). A row's `tools` column (a list of "
            "definitions, or its JSON) is rendered with it. `auto` tells them apart by the columns present."
        ),
    )
    columns: ColumnMapping = Field(
        default_factory=ColumnMapping, description="Column names, when they differ from the defaults."
    )
    split: str = Field(default="train", description="Split to read from hub datasets and DatasetDict folders.")
    subset: str | None = Field(default=None, description="Hub dataset configuration name (`load_dataset(name=...)`).")
    revision: str | None = Field(default=None, description="Hub dataset revision; pin it for reproducible runs.")
    weight: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Fraction of the source's kept rows to train on; above 1 up-samples (2.0 = every row twice, "
            "2.5 = twice plus a random half). The count is rounded to the nearest row, a half to the even count "
            "(11 rows x 1.5 = 16.5 -> 16; 13 x 1.5 = 19.5 -> 20), unlike `thinking_ratio`, which rounds a half up: "
            "changing it would change the rows every existing recipe trains on."
        ),
    )
    rows: int | None = Field(
        default=None, gt=0, description="Absolute number of conversations to train on (more than available up-samples)."
    )
    tokens: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Token budget: conversations are drawn in seeded random order (cycling to up-sample) until the "
            "next one would exceed it. Counts every token of the rendered samples, not only trained ones."
        ),
    )
    thinking_mode: OnOffMixed = Field(
        default="on",
        description=(
            "How rows render through the chat template's `thinking_mode`. `on`: with their reasoning trace; "
            "a turn without a trace is rendered with thinking off, the mode its text fits, rather than "
            "teaching an empty trace under thinking on. `off`: traces are removed and every turn renders "
            "with thinking off. `mixed`: a seeded `thinking_ratio` share of the rows that have a trace "
            "render on, the rest off (SEA-LION v3.5 trained reasoning and non-reasoning data together). A row's "
            "own `thinking_mode` column (`on`/`off`, see `columns.thinking_mode`) wins over this, as in prompt files."
        ),
    )
    thinking_ratio: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="With `thinking_mode: mixed`: share of the rows with a reasoning trace and no `thinking_mode` of "
        "their own rendered with thinking on, counted on the rows the length limits keep (less duplicates and "
        "templates), before the held-out split and sizing (ratio * rows rounded half up, at least 1 and at most "
        "rows - 1 when 0 < ratio < 1: tempa.sft.mixing). A row too long with thinking on trains with it off, and the "
        "next row in the draw thinks instead; fewer think only when too few fit with thinking on. Rows are drawn by "
        "a hash of their content and the seed: rows added to the source leave the old rows' draw as it was but at "
        "the margin.",
    )
    heldout: float | int | None = Field(
        default=None,
        ge=0,
        description=(
            "Held-out evaluation rows taken from this source before sizing: a fraction below 1 or a row "
            "count, of its distinct instructions (copies of an instruction are held out together, so none "
            "trains). Drawn by a hash of the instruction and the seed, not by position: rows added to the source "
            "leave the old rows held out, but at the margin (each added row that is held out takes the place of "
            "at most one old row), so held-out losses of runs before and after stay comparable. Default: "
            "`DataConfig.heldout`."
        ),
    )
    languages: list[str] | None = Field(
        default=None,
        description=(
            "Target languages (ISO 639-1, e.g. `id`, `th`, `tl` or `fil`) for the language-ID filter "
            "(`curation.language`); rows detected as another language are rejected. Unset: the filter "
            "skips this source."
        ),
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return safe_name(value, "source name")

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        name = stage_ref(value)
        if name is not None:
            if not name:
                raise ValueError(f"'{STAGE_REF}' needs a stage name, e.g. {STAGE_REF}synthesize")
            return value  # an earlier stage's dataset, resolved when the stage runs
        return resolve_path(value, info, must_exist=True)

    @property
    def stage_ref(self) -> str | None:
        """The stage named by a ``stage:NAME`` path, else None."""
        return stage_ref(self.path)

    @field_validator("languages")
    @classmethod
    def _lower(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [code.strip().lower() for code in value]

    @field_validator("heldout")
    @classmethod
    def _heldout_fraction(cls, value: float | int | None) -> float | int | None:
        if isinstance(value, float) and value >= 1:
            raise ValueError("heldout must be a fraction below 1 or a whole number of rows")
        return value

    @model_validator(mode="after")
    def _check_size_and_mode(self) -> SourceConfig:
        sizes = [key for key in ("weight", "rows", "tokens") if getattr(self, key) is not None]
        if len(sizes) > 1:
            raise ValueError(f"source {self.name!r}: set at most one of weight, rows, tokens (got {sizes})")
        if self.thinking_mode == "mixed" and self.thinking_ratio is None:
            raise ValueError(f"source {self.name!r}: thinking_mode 'mixed' needs thinking_ratio (0..1)")
        if self.thinking_mode != "mixed" and self.thinking_ratio is not None:
            raise ValueError(f"source {self.name!r}: thinking_ratio applies only to thinking_mode 'mixed'")
        return self


class DedupConfig(_Strict):
    """Exact and near-duplicate removal on the normalised user instruction (all user turns joined).

    The first occurrence is kept, in recipe source order and then row order, so an earlier source
    wins a duplicate shared with a later one.
    """

    exact: bool = Field(default=True, description="Drop rows whose normalised instruction was seen before.")
    near: bool = Field(default=True, description="Drop near-duplicates found with MinHash LSH (datasketch).")
    near_threshold: float = Field(
        default=0.85, gt=0, lt=1, description="Estimated Jaccard similarity at which two instructions are near-duplicates."
    )
    num_perm: int = Field(default=128, ge=16, description="MinHash permutations (more: slower, more precise).")
    ngram: int = Field(
        default=5,
        ge=1,
        description="Character n-gram size of the shingles; characters, so Thai and Japanese work without word breaks.",
    )
    scope: Literal["global", "source"] = Field(
        default="global", description="Compare rows across all sources (`global`) or within each source only."
    )


class PIIConfig(_Strict):
    """Reject conversations that contain personal data or credentials (Swallow dropped such conversations)."""

    email: bool = Field(default=True, description="Email addresses.")
    phone: bool = Field(
        default=True,
        description=(
            "Phone numbers: international (+country code) or separated forms, and SEA/Japanese mobile "
            "prefixes. Bare digit runs without a phone prefix are not flagged, so arithmetic survives."
        ),
    )
    card: bool = Field(default=True, description="Payment-card-like numbers: 13-19 digits that pass the Luhn check.")
    national_id: bool = Field(
        default=True,
        description=(
            "National-ID-like numbers with their checksums or date rules: Singapore NRIC/FIN, Malaysian MyKad, "
            "Indonesian NIK, Thai ID, Japanese My Number, US SSN."
        ),
    )
    secrets: bool = Field(
        default=True,
        description=(
            "Credentials a model could learn to repeat: API keys with a vendor's prefix (OpenAI `sk-`, Anthropic "
            "`sk-ant-`, GitHub `ghp_`/`gho_`/`github_pat_`..., Hugging Face `hf_`, AWS `AKIA`..., Google `AIza`, "
            "Slack `xox?-`), AWS secret access keys by their name (`aws_secret_access_key = ...`, "
            "`SecretAccessKey`), `Bearer` tokens, signed JSON Web Tokens and PEM private key blocks. The key must "
            "be as long and as random as a real one, so `sk-` in prose, placeholders (`sk-...`, `Bearer $TOKEN`, "
            "AWS's `...EXAMPLE` keys), unsigned (`alg: none`) tokens and a private key header without its body pass."
        ),
    )
    extra_patterns: dict[str, str] = Field(
        default_factory=dict, description="More regular expressions to reject, by name (the name becomes the reason)."
    )
    allow: list[str] = Field(
        default_factory=list,
        description="Regular expressions for matches to ignore, e.g. `@example\\.com$` for placeholder emails.",
    )
    roles: list[Role] = Field(
        default_factory=lambda: ["system", "user", "assistant"],
        description="Turns to scan (reasoning traces of scanned assistant turns are scanned too).",
    )

    @field_validator("extra_patterns", "allow")
    @classmethod
    def _compiles(cls, value: dict[str, str] | list[str]) -> dict[str, str] | list[str]:
        for pattern in value.values() if isinstance(value, dict) else value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return value


class TemplateFilterConfig(_Strict):
    """Reject template instructions: the same instruction skeleton repeated many times.

    The skeleton is the lower-cased user instruction with digits, quoted spans, URLs and emails
    masked, cut to its first ``prefix_chars`` characters, so "Translate 'X' into Thai" with a
    thousand different X is one skeleton.
    """

    max_repeats: int = Field(default=20, ge=1, description="A skeleton seen more often than this is a template.")
    keep: int = Field(
        default=0,
        ge=0,
        description="Rows of a template skeleton to keep anyway (the first ones); 0 drops them all, as Swallow did.",
    )
    prefix_chars: int = Field(default=64, ge=8, description="Characters of the masked instruction that form the skeleton.")
    scope: Literal["global", "source"] = Field(default="source", description="Count skeletons per source or across all.")


class LanguageFilterConfig(_Strict, language.LanguageRules):
    """Keep rows whose text is in one of the source's ``languages`` (py3langid, offline; see tempa.sft.language).

    py3langid covers the SEA languages including Burmese (`my`), Khmer (`km`) and Lao (`lo`).
    Code blocks, inline code, math and URLs are ignored; rows with too little prose left to tell
    are kept. Reasoning traces are not checked: distilled R1 traces often reason in English for
    SEA prompts.
    """

    min_confidence: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Also reject rows whose probability of being in the accepted languages (targets and their "
        "equivalents together) is below this.",
    )
    check: Literal["all", "user", "assistant"] = Field(
        default="all", description="Which turns' text to identify: user and assistant together, or one side."
    )


def _switch(model: type[BaseModel]) -> Any:
    """A filter block that `true` turns on with its defaults and `false` turns off (schema: the block or a bool)."""
    return Annotated[model | None, BeforeValidator(_enable_with_defaults, json_schema_input_type=model | bool | None)]


PIISwitch = _switch(PIIConfig)
LanguageSwitch = _switch(LanguageFilterConfig)
DedupSwitch = _switch(DedupConfig)
TemplateFilterSwitch = _switch(TemplateFilterConfig)


class CurationConfig(_Strict):
    """Row filters. Each is optional; each counts what it drops and writes the rows to rejects.jsonl.

    Filters run in a fixed order and a row is charged to the first that rejects it: malformed
    reasoning, role order, PII, language, evaluation prompts, then (after tokenisation) token
    length, then, among the rows left, exact/near duplicates and template instructions. A filter
    set to ``true`` runs with its defaults.
    """

    malformed_reasoning: bool = Field(
        default=True,
        description=(
            "Reject an unclosed think block, think tags inside a trace, a second think block in an answer, "
            "traces given both as a field and as a block, and an empty answer after the reasoning (a tool "
            "call may stand alone). A think tag elsewhere in an answer is text and stays."
        ),
    )
    role_order: bool = Field(
        default=True,
        description=(
            "Reject broken role order: system only first, then user and assistant alternating (tool turns "
            "after an assistant), ending with an assistant turn; empty user/assistant turns count as broken."
        ),
    )
    pii: PIISwitch = Field(
        default_factory=lambda: PIIConfig(email=False, phone=False, card=False, national_id=False),
        description=(
            "PII filter. Unset, it checks credentials only (`secrets`: API keys, tokens, private keys), which "
            "have no place in training data; `true` checks every category, `false` none."
        ),
    )
    language: LanguageSwitch = Field(
        default=None, description="Language-ID filter against each source's `languages`; off unless set."
    )
    decontaminate: bool = Field(
        default=True,
        description=(
            "Reject a row (`contaminated`) whose instruction (its user turns, compared as dedup compares them) "
            "is a prompt of one of the recipe's evaluate stages: training on it would make the leaderboard and "
            "merge selection reward memorisation. Suites read from the hub (or lm-eval tasks) are not checked."
        ),
    )
    dedup: DedupSwitch = Field(default=None, description="Exact and near-duplicate removal; off unless set.")
    template_instructions: TemplateFilterSwitch = Field(
        default=None, description="Template-instruction filter; off unless set."
    )
    min_tokens: int | None = Field(default=None, ge=1, description="Reject samples shorter than this many tokens.")
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Reject samples longer than this many tokens (the stage's `max_length` applies too), rather "
            "than letting the trainer truncate away the end of an answer and its end-of-turn token."
        ),
    )


def token_limits(curation: CurationConfig, max_length: int | None) -> tuple[int | None, int | None]:
    """(min, max) tokens of a sample the data pipeline keeps: the curation's, and the stage's max_length if lower."""
    ceilings = [x for x in (curation.max_tokens, max_length) if x is not None]
    return curation.min_tokens, min(ceilings) if ceilings else None


class DataConfig(_Strict):
    """The SFT data of one stage: sources, curation, held-out split."""

    sources: list[SourceConfig] = Field(min_length=1, description="Data sources, mixed in this order.")
    curation: CurationConfig = Field(default_factory=CurationConfig, description="Row filters.")
    heldout: float | int = Field(
        default=0,
        ge=0,
        description="Default held-out share (fraction below 1) or row count per source, for the eval set.",
    )
    num_proc: int | None = Field(
        default=None,
        ge=1,
        json_schema_extra=NOT_FINGERPRINTED,  # the prepared data is the same: a speed setting retrained the stage
        description="Processes for tokenising, which also normalises the rows unless `dedup`, "
        "`template_instructions` or a `mixed` source needs every row normalised first (then in processes of "
        "its own for sources of 10,000+ rows); unset: one per core, at most one per 500 rows of a source. The "
        "prepared data is the same for every setting.",
    )

    @field_validator("heldout")
    @classmethod
    def _heldout_fraction(cls, value: float | int) -> float | int:
        if isinstance(value, float) and value >= 1:
            raise ValueError("heldout must be a fraction below 1 or a whole number of rows")
        return value

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for source in value:
            if source.name in seen:
                raise ValueError(f"duplicate source name {source.name!r}")
            seen.add(source.name)
        return value

    def heldout_for(self, source: SourceConfig) -> float | int:
        """The held-out setting that applies to ``source``."""
        return self.heldout if source.heldout is None else source.heldout


# --- worker processes and throughput -----------------------------------------------------------------

# The fewest rows of a source worth another tokenising process (see worker_count). bench/prep_workers.py
# (2026-11-30, quiet 2-vCPU VM, medians of 5) prepared in 2 processes against 1 at 0.64x for 250 rows, 0.99x
# for 500, 1.32x for 1,000 and 1.39x for 2,000 (datasets' pool costs 0.2-0.3 s whatever the rows); again on
# tempa's own pool (sft/forked_workers.py): 0.92x, 1.22x and 1.39x for 500, 1,000 and 2,000.
ROWS_PER_PROCESS = 500
# Normalising and the row filters cost about 1/10 of tokenising per row, and a pool of workers costs time to
# fork, feed and join, so a second normalising process pays only on more rows: bench/prep_workers.py
# (2026-11-30, quiet 2-vCPU VM, medians of 5) measured 2 processes against 1 at 0.76x, 0.66x and (tempa's own
# pool) 0.81x on 3,000 rows, 0.99x, 0.97x and 0.98x on 6,000, 1.14x, 1.15x and 1.14x on 12,000, 1.52x, 1.39x
# and 1.32x on 24,000.
NORMALISE_ROWS_PER_PROCESS = 5_000
# Tokens the pipeline prepares per CPU-second on one core (render, tokenise, masks, filters, cache), for
# `tempa plan`'s data-prep estimate. Measured with bench/data_prep.py on 2026-11-30: medians of 253k-278k
# tokens per CPU-second (two runs of 5 repeats) on a quiet 2-vCPU x86_64 VM (tiny byte-level BPE tokenizer,
# single-turn reasoning rows of about 820 tokens); Meta's Llama 3 tokenizer encodes about 10% slower per
# token. Rounded down. Measured before the pre-token cache (sft/pretokens.py), which prepares ASCII text at
# about 2.5x that rate; kept, since text that is not ASCII (Thai, Japanese, ...) still takes the backend's
# encode at about this rate, and a plan should not promise the faster case. Checked 2026-12-01 (bench/data_prep.py
# --tokenizer llama3 --script ..., one process, medians of 3): the bench rows in Latin letters 1,044k tokens per
# CPU-second, the same rows in Thai letters 480k, in Japanese 491k.
PREP_TOKENS_PER_CORE_SECOND = 250_000
# Tokens per second of the steps that run in one process whatever `num_proc` is: hashing the source files,
# finding the lines of JSON Lines files, splitting off the rejects, the shuffled selection and save of the
# prepared set. On a node with 100+ cores these, not tokenising, set the floor. Measured 2026-12-01 on the quiet
# 2-vCPU VM: a prepare of 30,000 bench rows (24.96M tokens, 124 MB of JSON Lines) in 2 processes spent 0.60,
# 0.64, 0.65 and 0.90 s (four runs) outside the workers' map: 27.7M-41.6M tokens/s. Rounded down. (2026-11-30,
# when the parent still read the file into Arrow before the workers started: 2.39 and 2.41 s, 10.2M tokens/s.)
PREP_SERIAL_TOKENS_PER_SECOND = 25_000_000
# CPU-seconds per row on one core besides its tokens: rendering the chat template (Jinja) and each row's own
# steps, which dominate short chats. Measured 2026-12-02 on the 2-vCPU VM (one process, tiny tokenizer,
# llama3_thinking, medians of 3 with prepare_sft_data): 0.66 ms a row at 55 and at 105 tokens a row (84k and 159k
# tokens per CPU-second, where tokens alone promised 250k: 3x too fast for 55), 0.74 ms at 305, 1.1 ms at 805;
# rows in Japanese letters 0.99 ms at 194 tokens. The tokens' rate above stays as it is (it was measured on
# 820-token rows and kept low for text that is not ASCII), so this term makes long rows no faster.
PREP_ROW_SECONDS = 0.0007
# CPU-seconds per row of the phases the curation turns on, beside the tokenising above. bench/curation_rates.py,
# 2026-12-03, ONE run (no repeats) on a loaded 2-vCPU VM (load average 3.6), 20,000 two-turn Indonesian rows
# (~60-character turns, ~110 tokens a row), num_proc 1, each phase timed inside a whole prepare: language ID
# 18.6 s (0.93 ms a row), the separate normalising pass 8.4 s (0.42 ms), dedup (exact + MinHash, default
# settings) 6.8 s (0.34 ms). On that load the prepare without curation took 2.0 ms a row where the rates above
# give ~1.1 ms, so these may be up to 2x high on a quiet machine; rounded, not scaled. Language ID and MinHash
# cost more on longer text (they read the turns' characters); these rates are for short chats.
# Language ID runs where the rows are normalised: in the tokenising workers, or in the normalising pass's.
PREP_LANGUAGE_ROW_SECONDS = 0.0009
# The pass that normalises every row before tokenising when a step compares rows (:func:`normalised_first`);
# in its own workers (``NORMALISE_ROWS_PER_PROCESS``).
PREP_NORMALISE_ROW_SECONDS = 0.0004
# Exact and near-duplicate search: one process whatever ``num_proc`` is (rows are offered in recipe order).
PREP_DEDUP_ROW_SECONDS = 0.00035


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and schedulers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def workers_for(rows: int, num_proc: int | None = None, cores: int | None = None) -> int:
    """Processes that prepare a source of ``rows`` rows: ``num_proc``, or one per core and per ``ROWS_PER_PROCESS``.

    A worker costs a fork and a pool around it (nothing is pickled to it, the tokenizer neither:
    :mod:`tempa.sft.forked_workers`), so small sources stay in one process.
    """
    if num_proc is not None:
        return num_proc
    return max(1, min(cores or available_cores(), rows // ROWS_PER_PROCESS))


# Bytes of a JSON Lines file worth another reading process (see read_processes). bench/prep_workers.py
# (2026-11-30, quiet 2-vCPU VM, medians of 5 and of 3) read in 2 processes against 1 at 0.83x for 127 MB,
# 1.17x and 1.25x for 255 MB, 1.22x for 510 MB: on this VM reading is bound by memory, not by one core.
READ_BYTES_PER_PROCESS = 128 << 20


def read_processes(size: int, cores: int | None = None) -> int:
    """Processes that read a JSON Lines file of ``size`` bytes: one per core and per ``READ_BYTES_PER_PROCESS``.

    Reading comes before any row is known, so ``num_proc`` (a tokenising setting) does not apply.
    """
    return max(1, min(cores or available_cores(), size // READ_BYTES_PER_PROCESS))


def worker_count(num_proc: int | None, rows: int, rows_per_process: int | None = None) -> int:
    """Processes for one step over ``rows`` rows (:func:`tempa.sft.forked_workers.forked_map`; 1: no pool).

    ``rows_per_process`` bounds a cheap step's pool even when ``num_proc`` is set (the data is the same).
    """
    workers = workers_for(rows, num_proc)
    if rows_per_process is not None:
        workers = min(workers, max(1, rows // rows_per_process))
    return workers


def normalised_first(curation: CurationConfig, source: SourceConfig) -> bool:
    """Whether ``source``'s rows are all normalised in a pass of their own before tokenising: a step compares rows
    with each other (``dedup``, ``template_instructions``) or a ``mixed`` source draws among them. Else they are
    normalised inside the tokenising workers, in one pass."""
    return (curation.dedup is not None or curation.template_instructions is not None
            or source.thinking_mode == "mixed")


def prep_seconds(tokens: int, rows: int, num_proc: int | None = None, cores: int | None = None, *,
                 language: bool = False, dedup: bool = False, normalised_rows: int = 0) -> float:
    """Estimated seconds to prepare ``rows`` rows of ``tokens`` tokens: the one-process steps, then rendering and
    tokenising (CPU-bound, a cost per row and one per token) spread over the workers; with ``normalised_rows`` of
    them normalised first (:func:`normalised_first`), that pass over its own workers; with ``language``, language
    ID in whichever workers normalise a row; with ``dedup``, the duplicate search in one process."""
    cores = cores or available_cores()
    workers = workers_for(rows, num_proc, cores)
    normalisers = min(workers_for(normalised_rows, num_proc, cores),
                      max(1, normalised_rows // NORMALISE_ROWS_PER_PROCESS))
    parallel = tokens / PREP_TOKENS_PER_CORE_SECOND + rows * PREP_ROW_SECONDS
    seconds = tokens / PREP_SERIAL_TOKENS_PER_SECOND + parallel / workers
    seconds += normalised_rows * PREP_NORMALISE_ROW_SECONDS / normalisers
    if language:
        seconds += PREP_LANGUAGE_ROW_SECONDS * (normalised_rows / normalisers + (rows - normalised_rows) / workers)
    if dedup:
        seconds += rows * PREP_DEDUP_ROW_SECONDS
    return seconds
