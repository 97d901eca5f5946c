"""The stage contract: what a stage kind declares, what the runner hands it, what it returns.

Every stage package (sft, alignment, merge) exports its kinds as ``STAGE_KINDS``, a tuple of
:class:`StageKind` objects; the recipe runner collects them and knows nothing else about a kind.
A kind's config subclasses :class:`StageConfigBase` and says which earlier stages it reads
(:meth:`StageConfigBase.reads`); its ``run(config, ctx)`` gets a :class:`StageContext` holding
the typed results of exactly those stages (``ctx.upstream``) and returns a :class:`StageResult`
(or a subclass the kind declares). Only the runner writes a stage's manifest and metrics; a stage
writes its own files under ``ctx.stage_dir`` and never reads another stage's folder.

The contract lives on the lowest floor that runs stages (sft), so `alignment` and `merge` import
it from here and no stage package imports `tempa.recipes`.
"""

from __future__ import annotations

import contextvars
import enum
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializationInfo,
    ValidationInfo,
    field_validator,
)

from tempa.sft.paths import looks_local, resolve_path  # noqa: F401  (re-exported: stage configs use them)
from tempa.sft.run_layout import reserved_name, safe_name

# launch(entry_module, args, log_file): run `python -m entry_module *args` under the recipe's
# launcher (accelerate/torchrun, 1..N processes). Raises StageError when the process fails.
Launch = Callable[[str, list[str], Path], None]

Scalar = float | int | str | bool | None


def on_off_of_bool(value: Any) -> Any:
    """A boolean as the mode it stands for (true: "on", false: "off"); any other value as it is.

    YAML 1.1 reads a bare `off` / `on` as a boolean, and data files written by other tools carry a row's
    thinking mode as true/false: in an on/off field either means the mode.
    """
    return ("on" if value else "off") if isinstance(value, bool) else value


# Every on/off field of a recipe (thinking modes): `off`, "off" and false all read as "off". The JSON Schema takes a
# boolean too, as the loader does: an editor reading YAML 1.1 (a bare `off`, `yes`, `On` is a boolean) flagged them.
OnOff = Annotated[Literal["on", "off"],
                  BeforeValidator(on_off_of_bool, json_schema_input_type=Literal["on", "off"] | bool)]
OnOffMixed = Annotated[Literal["on", "off", "mixed"],
                       BeforeValidator(on_off_of_bool, json_schema_input_type=Literal["on", "off", "mixed"] | bool)]


# The pydantic error type of a validator whose input may hold a secret (a URL with a password): the
# recipe error names the field and the problem, never the value (tempa.recipes.errors).
SECRET_INPUT_ERROR = "secret_input"

# Keys whose text values are secrets wherever they appear (a recipe, a result, a card).
SECRET_KEY_RE = re.compile(
    r"(api[_-]?key|apikey|token|secret|password|passwd|credential|auth|private[_-]?key|access[_-]?key|cookie|"
    r"^key$|subscription[_-]?key$)",  # Azure's authentication.key, Ocp-Apim-Subscription-Key (not prompt_cache_key)
    re.IGNORECASE,
)
# Keys that contain a secret-looking word but hold harmless numbers/settings.
_HARMLESS_KEYS = re.compile(
    r"(max_new_tokens|max_tokens|num_tokens|tokenizer.*|.*_token_id|.*token_ids|tokens_per_.*|.*_tokens|authors?(_.*)?|"
    r"(pad|eos|bos|unk|sep|cls|mask|stop|eot|im_start|im_end)_token)",  # special tokens: their text, no secret
    re.IGNORECASE,
)


# The json_schema_extra of a field that changes how a stage runs, never what it makes (an HTTP client's concurrency
# or timeouts): stage fingerprints and journal signatures leave it out, so changing it resumes rather than re-runs.
NOT_FINGERPRINTED: dict[str, Any] = {"fingerprinted": False}


def fingerprinted(model: BaseModel) -> dict[str, Any]:
    """``model``'s JSON dump (by alias) without the fields marked :data:`NOT_FINGERPRINTED`, at any depth."""
    return _without_unfingerprinted(model, model.model_dump(mode="json", by_alias=True))


def _without_unfingerprinted(value: Any, dump: Any) -> Any:
    if isinstance(value, BaseModel) and isinstance(dump, dict):
        out, seen = {}, set()
        # A config may leave out fields that play no part in what it makes as it is set (a preference stage with
        # no on-policy round samples nothing): ``unfingerprinted()``, beside the fields marked for every value.
        # ``field.key`` names one key of a mapping field (a trainer argument: ``train.save_steps`` changes when a run
        # saves, not what it trains).
        idle = value.unfingerprinted() if callable(getattr(value, "unfingerprinted", None)) else frozenset()
        for name, info in type(value).model_fields.items():
            key = info.serialization_alias or info.alias or name
            seen.add(key)
            if key in dump and name not in idle and not (isinstance(info.json_schema_extra, dict)
                                                         and info.json_schema_extra.get("fingerprinted") is False):
                out[key] = _without_unfingerprinted(getattr(value, name), dump[key])
                if isinstance(out[key], dict) and (keys := {k for n, _, k in map(_split_key, idle) if n == name}):
                    out[key] = {k: item for k, item in out[key].items() if k not in keys}
        return {**out, **{key: item for key, item in dump.items() if key not in seen}}  # computed fields stay
    if isinstance(value, list | tuple) and isinstance(dump, list) and len(value) == len(dump):
        return [_without_unfingerprinted(v, d) for v, d in zip(value, dump, strict=True)]
    if isinstance(value, Mapping) and isinstance(dump, dict) and len(value) == len(dump):
        return {key: _without_unfingerprinted(v, d) for v, (key, d) in zip(value.values(), dump.items(), strict=True)}
    return dump


def _split_key(name: str) -> tuple[str, str, str]:
    return name.partition(".")


def is_secret_key(key: str) -> bool:
    """Whether a text under ``key`` is a secret (``token``, ``api_key``), not a count (``max_tokens``)."""
    return bool(SECRET_KEY_RE.search(key)) and not _HARMLESS_KEYS.fullmatch(key)


def secret_env_names(resolved: Any) -> set[str]:
    """The environment variables a recipe names as holding secrets (every ``api_key_env``), at any depth."""
    if isinstance(resolved, Mapping):
        names = {item for key, item in resolved.items() if key == "api_key_env" and isinstance(item, str)}
        for item in resolved.values():
            names |= secret_env_names(item)
        return names
    if isinstance(resolved, (list, tuple)):
        return set().union(*(secret_env_names(item) for item in resolved))
    return set()


def secret_path(value: Any, path: str) -> str | None:
    """The dotted path to the first secret in a free-form mapping or list (``model_init_kwargs: {token: hf_...}``,
    ``extra_body: {headers: {Authorization: ...}}``), never its value; None when it holds none."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if is_secret_key(str(key)) and isinstance(item, str) and item:
                return f"{path}.{key}"
            found = secret_path(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, list | tuple):
        return next((found for i, item in enumerate(value) if (found := secret_path(item, f"{path}[{i}]"))), None)
    return None


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on; the message is one line."""


class Artifact(str, enum.Enum):
    """What a stage can hand to later stages: each is the field of that name on the producer's result."""

    MODEL = "model"  # a model folder (config.json + safetensors) a later stage starts from or loads
    DATASET = "dataset"  # an SFT dataset (messages JSONL) that a `path: stage:NAME` source reads
    LEADERBOARD = "leaderboard"  # scored candidates, and how they were scored (a merge selects from it)


@dataclass(frozen=True)
class Read:
    """An earlier stage a config reads (besides the model it starts from), and what it reads of it.

    ``field`` is where the recipe names that stage, so a wrong reference is a file:line error.
    """

    stage: str
    artifact: Artifact
    field: tuple[str | int, ...]
    # What the reader needs of that stage's config (a metric its suites report, say): why it falls short, or None;
    # a recipe error at ``needs_at``, when the recipe loads.
    needs: Callable[[Any], str | None] | None = None
    needs_at: tuple[str | int, ...] = ()


# --------------------------------------------------------------------------- config


class StageConfigBase(BaseModel):
    """Fields every stage has. Subclasses narrow ``kind`` to a ``Literal`` and add their settings."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # A training kind's defaults for its `train:` block (on top of trl's): the reference and `tempa plan` show them.
    train_defaults: ClassVar[Mapping[str, Any]] = {}

    kind: str = Field(description="The stage kind (sft, synthesize, preference, evaluate, merge, bake).")
    name: str = Field(
        description="Unique stage name; also its folder in the run directory (letters, digits, '.', '_', "
        "'-'; starting with a letter or digit; not a name the run directory uses itself)."
    )
    from_: str | None = Field(
        default=None,
        alias="from",
        description="Earlier stage whose model this stage starts from (default: the previous stage; a merge starts from none).",
    )

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        problem = reserved_name(safe_name(value, "stage name"))
        if problem is not None:
            raise ValueError(problem)
        return value

    def reads(self, earlier: Sequence[str]) -> list[Read]:
        """Earlier stages this stage reads besides its ``from``; ``earlier`` are their names, in order."""
        return []

    def train_args(self) -> dict[str, Any]:
        """The trainer arguments a training kind trains with (its defaults overlaid with the recipe's)."""
        return {**self.train_defaults, **getattr(self, "train", {})}


def marked_train_args(args: Mapping[str, Any], own: Iterable[str]) -> str:
    """``key=value`` for each trainer argument, ``*`` after the ones the recipe does not set (tempa's defaults): as
    `tempa plan` and the model card show them."""
    own = set(own)
    return ", ".join(f"{key}={json.dumps(value, ensure_ascii=False, default=str)}" + ("" if key in own else "*")
                     for key, value in args.items())


ConfigT = TypeVar("ConfigT", bound=StageConfigBase)


# --------------------------------------------------------------------------- results


def _relative(path: Path, info: SerializationInfo) -> str:
    """Paths inside the run directory are stored relative to it (a run directory may move)."""
    run_dir = (info.context or {}).get("run_dir")
    path = Path(path)
    if run_dir is not None and path.is_absolute() and path.is_relative_to(run_dir):
        return str(path.relative_to(run_dir))
    return str(path)


def _anchored(value: Any, info: ValidationInfo) -> Any:
    run_dir = (info.context or {}).get("run_dir")
    if run_dir is not None and isinstance(value, str) and not Path(value).is_absolute():
        return Path(run_dir) / value
    return value


# A path a stage result records: relative to the run directory in the manifest, absolute in memory.
RunPath = Annotated[Path, BeforeValidator(_anchored), PlainSerializer(_relative, return_type=str)]


class Checkpoint(BaseModel):
    """A complete trainer checkpoint (it holds a COMPLETE marker)."""

    model_config = ConfigDict(extra="forbid")

    step: int
    path: RunPath


class StageResult(BaseModel):
    """What a stage hands back. The runner stores it in the manifest and gives it to later stages.

    A kind whose later readers need more (a leaderboard, data statistics) declares a subclass.
    """

    model_config = ConfigDict(extra="forbid")

    model: RunPath | None = Field(default=None, description="The model folder this stage produced.")
    dataset: RunPath | None = Field(default=None, description="The SFT dataset this stage wrote.")
    checkpoints: list[Checkpoint] = Field(default_factory=list, description="Complete checkpoints, by step.")
    metrics: dict[str, Scalar] = Field(default_factory=dict, description="Headline numbers (metrics.json).")
    files: dict[str, RunPath] = Field(default_factory=dict, description="Named outputs worth opening.")
    notes: list[str] = Field(default_factory=list,
                             description="What the user should know at the end of the run (its closing summary).")

    def model_origin(self) -> str | None:
        """What ``model`` is made of, in a few words, when a kind can say more than its stage's name (a merge)."""
        return None


ResultT = TypeVar("ResultT", bound=StageResult)


@dataclass(frozen=True)
class Upstream:
    """An earlier stage as a later one sees it: its config, its typed result, and how long it took."""

    name: str
    kind: str
    config: StageConfigBase
    result: StageResult
    duration_s: float | None = None
    # a training stage's trainer arguments as it trained with them (its manifest's); None: trains nothing, or an older
    # tempa's manifest, which did not record them
    train_args: Mapping[str, Any] | None = None


# --------------------------------------------------------------------------- context


@dataclass(frozen=True)
class TrainingEnv:
    """How the recipe's `launch:` block asks training processes to run (the launcher applies the rest)."""

    use_cpu: bool = False
    mixed_precision: str | None = None  # "no" | "fp16" | "bf16"; None: bf16 on GPU, fp32 on CPU
    deepspeed_config: Path | None = None  # passed to trl's config when torchrun launches
    trust_remote_code: bool = False
    global_batch_size: int | None = None  # rows per optimizer step on any hardware (sets gradient accumulation)
    sequence_parallel: int = 1  # GPUs one sequence is split over (they form one data-parallel rank)
    processes: int | None = None  # the training processes the launch starts; None: accelerate's config decides

    def as_launched(self, train: Mapping[str, Any]) -> dict[str, Any]:
        """The trainer arguments ``train`` as this launch trains with them: a global batch sets the gradient
        accumulation, where the processes are known before the launch (else the training processes set it as they
        start), so the train plan, the manifest and the model card say what trained."""
        from tempa.sft.global_batch import launch_train_args

        if self.global_batch_size is None or self.processes is None:
            return dict(train)
        return launch_train_args(train, self.global_batch_size, self.processes, self.sequence_parallel)


@dataclass(frozen=True)
class RecipeInfo:
    """The recipe a stage runs in, for what a stage tells people about it (the model card)."""

    name: str
    base_model: str  # as the recipe names it: a hub id, a folder or the tiny default
    chat_template: str  # a shipped template name or a .jinja path
    description: str = ""
    resolved: Mapping[str, Any] = field(default_factory=dict)  # the resolved recipe, shown, never read


@dataclass(frozen=True)
class EvalPrompt:
    """A prompt an evaluate stage of the recipe asks: training on it would score memorisation, not skill."""

    instruction: str  # its user turns joined, as a training row's instruction (:func:`tempa.sft.formats.user_instruction`)
    where: str  # its stage, suite, file and line, as a reject names it


@dataclass(frozen=True)
class EvalPrompts:
    """The recipe's evaluation prompts (the rows of its evaluate stages' suites), for decontaminating training data."""

    prompts: tuple[EvalPrompt, ...] = ()
    # The suites whose prompts could not be read without a download (hub data, lm-eval tasks): one line each.
    unchecked: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageContext:
    """Everything a stage may read; everything it writes goes under ``stage_dir``."""

    stage_name: str
    stage_dir: Path
    seed: int
    # The model this stage starts from: the base model or the model of its `from` stage.
    start_model: Path
    # The recipe's base model folder (merges with a task-vector base, the bake's reference).
    base_model: Path
    # Tokenizer folder with the recipe's chat template baked in, and that template's text.
    tokenizer_dir: Path
    chat_template: str
    # The stages this one reads (its `from` and what `reads()` names), by name, in recipe order.
    upstream: Mapping[str, Upstream]
    launch: Launch
    training: TrainingEnv = field(default_factory=TrainingEnv)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("tempa"))
    # Shared cache (tokenised data, scores, ...) reused across runs; stages use a subfolder of it.
    cache_dir: Path | None = None
    # The recipe's `thinking_default`: the mode the baked template uses when a caller passes none.
    thinking_default: str = "on"
    recipe: RecipeInfo | None = None
    # What the recipe's evaluate stages ask, for stages that write training data to keep it out of.
    eval_prompts: EvalPrompts = field(default_factory=EvalPrompts)
    # The run that made each model this stage may load (its start model, the models of the stages it reads), by
    # folder: a folder stays when its stage trains again, so a journal names a model by this (:meth:`model_runs_of`).
    model_runs: Mapping[Path, str] = field(default_factory=dict)

    @property
    def trust_remote_code(self) -> bool:
        return self.training.trust_remote_code

    def upstream_result(self, name: str, artifact: Artifact, *, who: str) -> StageResult:
        """The result of earlier stage ``name``, which must have produced ``artifact``."""
        stage = self.upstream.get(name)
        if stage is None:
            known = ", ".join(self.upstream) or "none"
            raise StageError(f"{who}: '{name}' is not a stage this stage reads (it reads: {known})")
        if getattr(stage.result, artifact.value, None) is None:
            raise StageError(f"{who}: stage '{name}' ({stage.kind}) produced no {artifact.value}")
        return stage.result

    def model_of(self, name: str, *, who: str) -> Path:
        """The model folder earlier stage ``name`` produced."""
        model = self.upstream_result(name, Artifact.MODEL, who=who).model
        assert model is not None
        return model

    def dataset_of(self, name: str, *, who: str) -> Path:
        """The dataset earlier stage ``name`` wrote."""
        dataset = self.upstream_result(name, Artifact.DATASET, who=who).dataset
        assert dataset is not None
        return dataset

    @property
    def stage_models(self) -> dict[str, Path]:
        """Models of the stages this one reads, by name (for `stage:NAME` model references)."""
        return {name: up.result.model for name, up in self.upstream.items() if up.result.model is not None}

    def model_run(self, model: Path) -> str:
        """What a journal's signature names ``model`` by: the run that made it, or its folder where the runner handed
        none (a model of the stage's own, a round's policy)."""
        return self.model_runs.get(Path(model), str(model))

    def model_runs_of(self) -> dict[str, str]:
        """The models this stage may sample from or be judged by, each by the run that made it (:meth:`model_run`):
        the start model and those of the stages it reads. In a journal's signature, a model trained again since (in
        the same folder) starts the journal over, rather than handing on answers the model no longer gives."""
        return {"start": self.model_run(self.start_model),
                **{name: self.model_run(path) for name, path in self.stage_models.items()}}


# --------------------------------------------------------------------------- paid requests


@dataclass
class ApiUsage:
    """What the HTTP backends of one stage run sent, and what their servers counted in `usage` (what an API bills
    by). The runner sets one for each stage it runs (:data:`API_USAGE`), every HTTP backend adds to it when it
    closes, and the stage's metrics.json carries it: the log line of each backend was the only record."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    uncounted: int = 0  # requests to servers that sent no `usage`: the token counts leave them out
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, requests: int, retries: int, tokens: tuple[int, int] | None) -> None:
        with self._lock:
            self.requests += requests
            self.retries += retries
            if tokens is None:
                self.uncounted += requests
            else:
                self.prompt_tokens += tokens[0]
                self.completion_tokens += tokens[1]

    def metrics(self) -> dict[str, int]:
        """``api_requests`` (and retries), and the tokens where some server counted them; nothing without a request."""
        if not self.requests:
            return {}
        out = {"api_requests": self.requests, "api_retries": self.retries}
        if self.uncounted < self.requests:
            out.update(api_prompt_tokens=self.prompt_tokens, api_completion_tokens=self.completion_tokens)
        if self.uncounted:
            out["api_requests_without_usage"] = self.uncounted
        return out


API_USAGE: contextvars.ContextVar[ApiUsage | None] = contextvars.ContextVar("tempa_api_usage", default=None)


# --------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class StageKind(Generic[ConfigT, ResultT]):
    """One stage kind: its config, its run function, what it reads and hands on, and its plan hook.

    ``produces`` lists what a later stage may read from it; the loader checks every
    :class:`Read` against it before any work starts. ``trains`` marks kinds that launch a
    training process group (the plan estimates them; ``estimate`` describes their workload).
    """

    kind: str
    config: type[ConfigT]
    run: Callable[[ConfigT, StageContext], ResultT]
    summary: str
    produces: frozenset[Artifact] = frozenset()
    result: type[StageResult] = StageResult
    trains: bool = False
    # Resumable stages (training, incremental sampling) keep their folder after an interruption
    # and continue from what is complete in it; other stages restart from scratch.
    resumable: bool = False
    # For a resumable stage: what in its folder a re-run continues from (e.g. ``checkpoint-40``), or
    # None when nothing is complete yet, so the plan says "starts over" instead of "resume".
    resume_point: Callable[[Path], str | None] | None = None
    # For `tempa plan --hardware`: what one training stage of this kind asks of the hardware.
    estimate: Callable[[ConfigT, EstimateInputs], TrainingWorkload] | None = None
    # For stages that write a dataset: how many rows a later `stage:` source may expect.
    dataset_size: Callable[[ConfigT, StageResult | None], SourceSize] | None = None
    # Whether the stage sees every earlier stage (the bake, for its model card) instead of only
    # those it reads.
    sees_all_earlier: bool = False
    # Whether the stage opens the model it starts from (its `from`, by default the previous stage's). A kind that does
    # not (a merge reads the models it names or selects) starts from the base model instead: a new model of the stage
    # before it in the recipe, which it never opens, neither changes its fingerprint nor makes it stale.
    reads_start_model: bool = True
    # What the stage can check of its own inputs before the run's first stage starts (evaluation rows, say), so a
    # typo in a file is not found after hours of training; raises a one-line StageError. `tempa plan` runs it too.
    check_inputs: Callable[[ConfigT], None] | None = None
    # What the stage needs of the shell the run starts in (an API key's environment variable): `tempa run` refuses
    # before its first stage, `tempa plan` only warns (a recipe is often planned where it will not run).
    check_environment: Callable[[ConfigT], None] | None = None
    # For a kind whose paid work is journaled (teacher answers, judge replies, policy samples): the journal files in
    # its folder (given the folder) that a change to its config or inputs keeps, each journal's own signature deciding
    # which of its records are still valid. The runner clears the rest (datasets, pairs, models, DONE) and the stage
    # writes it anew.
    journals: Callable[[Path], list[Path]] | None = None
    # Entries of its folder (names) that a re-run keeps in place until the stage writes their replacements: the bake's
    # final/, the last good model, which a re-run that fails (a full disk) must not have removed first. DONE still
    # goes first, so the folder reads as unfinished meanwhile.
    kept_until_replaced: tuple[str, ...] = ()
    # What the stage can tell of its own inputs that is likely, not certainly, wrong (a data file whose first rows
    # fit no row of its format): one line each, which `tempa plan` and the run's start print as warnings.
    input_warnings: Callable[[ConfigT], list[str]] | None = None
    # What the stage will ask of HTTP servers (paid APIs): one line per server, the most requests a full run sends,
    # which `tempa plan` prints.
    api_requests: Callable[[ConfigT], list[str]] | None = None
    # For a kind whose outputs show the recipe (the bake's model card prints its description and the whole resolved
    # recipe): what they show of it, given the resolved recipe. It is part of the stage's fingerprint, so a changed
    # description, or a setting no other stage's fingerprint holds (`logging_steps`), makes them again.
    shows_recipe: Callable[[Mapping[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        missing = [a.value for a in self.produces if a.value not in self.result.model_fields]
        if missing:
            raise TypeError(f"stage kind {self.kind!r} produces {missing} but {self.result.__name__} has no such field")


# --------------------------------------------------------------------------- plan estimates


@dataclass(frozen=True)
class SourceSize:
    """Rows one data source contributes per epoch, and the tokens each row is assumed to hold."""

    rows: int | None
    tokens_per_row: int
    how: str
    at_most: bool = False  # an upper bound (data an earlier stage has not written yet)


@dataclass(frozen=True)
class TokenCount:
    """Tokens one epoch (or one preference round) trains on, and how that was worked out."""

    tokens: int | None
    rows: int | None
    source: str
    notes: list[str] = field(default_factory=list)
    bound: str = ""  # ">=": some sources unsized; "<=": synthesized data; "~": both


@dataclass(frozen=True)
class EstimateInputs:
    """What an ``estimate`` hook may use besides its config."""

    avg_tokens_thinking_on: int
    avg_tokens_thinking_off: int
    # Sizes of the datasets earlier stages write (or will write), by stage name.
    dataset_sizes: Mapping[str, SourceSize] = field(default_factory=dict)
    # The stage's own result when it has already run (its data statistics are then exact).
    result: StageResult | None = None
    # The base model's tokenizer with the recipe's chat template, when it is on this machine: renders and
    # tokenises sampled local rows as training will.
    tokenizer: Any = None
    # The data-parallel processes of the hardware planned for, and the launch's global batch (which sets the
    # gradient accumulation there): an RL stage's generation batch, and the prompts trl drops, follow from them.
    data_parallel: int = 1
    global_batch_size: int | None = None


@dataclass(frozen=True)
class GenerationWork:
    """What an on-policy stage samples while it trains (RL), per epoch: the plan times it apart from training."""

    sampled_tokens: int | None  # completion tokens decoded
    prompt_tokens: int | None  # prompt tokens prefilled
    gpu_memory_fraction: float = 0.0  # share of each training GPU a colocated engine (vLLM) holds
    how: str = ""


@dataclass(frozen=True)
class TrainingWorkload:
    """What a training stage asks of the hardware, for `tempa plan --hardware`."""

    tokens: TokenCount  # per epoch (per round for preference stages)
    train_args: dict[str, Any]  # the trl arguments the stage trains with (tempa's defaults included)
    sequences_per_row: int = 1  # 2 for a preference pair (chosen and rejected)
    rounds: int = 1
    reference_model: bool = False  # a frozen reference model (DPO without precomputed log-probs)
    lora: Any = None  # the stage's LoRA settings, if it trains adapters
    # Longest sequence of one row, when the train args have no `max_length` (RL: prompt + completion).
    sequence_tokens: int | None = None
    # Forward-only passes over every trained token besides the policy's (RL: reference model, old policy).
    extra_forwards: int = 0
    generation: GenerationWork | None = None  # sampling during training (RL)


# --------------------------------------------------------------------------- `stage:NAME` references

STAGE_REF = "stage:"  # a recipe value `stage:NAME` names an earlier stage's output (dataset or model)


def stage_ref(value: object) -> str | None:
    """The stage name in a `stage:NAME` reference, or None when ``value`` is not one."""
    if isinstance(value, str) and value.startswith(STAGE_REF):
        return value[len(STAGE_REF):].strip()
    return None


def format_metric(value: Scalar | None) -> str:
    """A metric as people read it in logs, tables and cards: floats to 4 significant digits; none (a mean over no
    pair) as '–', not Python's None."""
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
