"""Sampling backends: transformers (here), vLLM (backends_vllm) and OpenAI-compatible HTTP (backends_http).

All three implement :class:`SamplingBackend`, which extends generation.py's
:class:`~tempa.alignment.generation.GenerationBackend` with :meth:`SamplingBackend.sample`:
``n`` :class:`~tempa.alignment.completions.Completion` objects per prompt, each knowing how it
ended (``finish_reason``), what the template pre-filled and how many tokens it took. The plain
``generate`` (strings) keeps working, so evaluation code can use any of them.

A recipe picks a backend with a ``type``-tagged block::

    teacher: {type: transformers}                       # the stage's own model
    teacher: {type: transformers, model: stage:sft-1}   # an earlier stage's model
    teacher: {type: vllm, model: /models/gemma-2-27b-it, tensor_parallel_size: 4}
    teacher: {type: http, base_url: http://127.0.0.1:8000/v1, model: gemma-2-27b-it, api_key_env: TEACHER_KEY}
"""

from __future__ import annotations

import os
import re
import urllib.parse
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from tempa.alignment.completions import Completion, generation_prefill
from tempa.alignment.generation import (
    GenerationBackend,
    GenerationParams,
    Messages,
    ThinkingMode,
    Tools,
    TransformersBackend,
    resolve_modes,
    resolve_tools,
)
from tempa.alignment.model_files import pickle_files, weights_problem
from tempa.chat_templates.thinking import mode_kwargs
from tempa.sft.stage_api import (
    NOT_FINGERPRINTED,
    SECRET_INPUT_ERROR,
    Artifact,
    Read,
    StageError,
    resolve_path,
    secret_path,
    stage_ref,
)


class SamplingBackend(GenerationBackend):
    """A generation backend that also reports how each sample ended."""

    #: One-line description for provenance records (never carries a secret).
    describe: str = "backend"

    @abstractmethod
    def sample(
        self,
        prompts: list[Messages],
        params: GenerationParams,
        *,
        thinking_modes: Sequence[ThinkingMode | None] | None = None,
        tools: Sequence[Tools | None] | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions per prompt, in prompt order; ``tools``: per prompt, the tool definitions
        it offers (None: none), rendered by the chat template (sent as the request's ``tools`` over HTTP)."""

    def generate(
        self,
        prompts: list[Messages],
        params: GenerationParams,
        *,
        thinking_modes: Sequence[ThinkingMode | None] | None = None,
        tools: Sequence[Tools | None] | None = None,
    ) -> list[list[str]]:
        return [[c.text for c in group]
                for group in self.sample(prompts, params, thinking_modes=thinking_modes, tools=tools)]


class _Decoded(str):
    """A decoded completion that remembers whether a stop token ended it (see TransformersSampler)."""

    finish_reason: str
    completion_tokens: int


class TransformersSampler(TransformersBackend, SamplingBackend):
    """generation.py's :class:`TransformersBackend`, plus finish reasons, token counts and prefills.

    ``TransformersBackend.decode`` cuts a completion at its first stop token; here it also records
    whether there was one (``"stop"``) or the token budget ran out (``"length"``), on the returned
    string itself, so the batching and seeding of ``generate`` are reused unchanged.
    """

    def __init__(self, model_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None, **kwargs: Any):
        super().__init__(model_dir, tokenizer_dir, **kwargs)
        self.describe = f"transformers:{model_dir}"
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else None

    def decode(self, token_ids: Sequence[int]) -> str:
        ids = [int(t) for t in token_ids]
        stop_at = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        if stop_at is None:
            used = len(ids)
            while used and ids[used - 1] == self._pad_id:  # right padding of a shorter sequence
                used -= 1
        text = _Decoded(super().decode(ids))
        text.finish_reason = "stop" if stop_at is not None else "length"
        text.completion_tokens = stop_at + 1 if stop_at is not None else used
        return text

    def sample(
        self,
        prompts: list[Messages],
        params: GenerationParams,
        *,
        thinking_modes: Sequence[ThinkingMode | None] | None = None,
        tools: Sequence[Tools | None] | None = None,
    ) -> list[list[Completion]]:
        modes = resolve_modes(len(prompts), params, thinking_modes)
        offered = resolve_tools(len(prompts), tools)
        texts = TransformersBackend.generate(self, prompts, params, thinking_modes=modes, tools=offered)
        out: list[list[Completion]] = []
        for messages, mode, t, group in zip(prompts, modes, offered, texts, strict=True):
            prefill = generation_prefill(self.tokenizer, messages, {**mode_kwargs(mode), "tools": t})
            out.append([
                Completion(
                    text=str(text),
                    prefill=prefill,
                    finish_reason=getattr(text, "finish_reason", None),
                    completion_tokens=getattr(text, "completion_tokens", None),
                )
                for text in group
            ])
        return out

    def generate(self, prompts, params, *, thinking_modes=None, tools=None):  # the native, string-only path
        return [[str(t) for t in group] for group in TransformersBackend.generate(
            self, prompts, params, thinking_modes=thinking_modes, tools=tools)]


# --------------------------------------------------------------------------- recipe configs


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# vLLM load formats that read pickled checkpoints ("auto" falls back to them when a folder has no safetensors).
PICKLE_LOAD_FORMATS = ("pt", "npcache", "auto")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _no_secret(value: dict[str, Any], field: str) -> dict[str, Any]:
    """A free-form mapping without a key or token in it: a recipe's values are copied into recipe.resolved.yaml, the
    manifests, the journals' signatures, `tempa plan` and the trackers' config."""
    found = secret_path(value, field)
    if found is not None:
        raise PydanticCustomError(
            SECRET_INPUT_ERROR,
            "{path} cannot be set in a recipe: a secret written there is copied into recipe.resolved.yaml, the "
            "manifests and `tempa plan` (the value is not shown); name the environment variable that holds an API "
            "key in api_key_env",
            {"path": found},
        )
    return value


def _model_ref(value: str | None, info: ValidationInfo) -> str | None:
    if value is None or stage_ref(value) is not None:
        return value
    resolved = resolve_path(value, info)
    if info.field_name == "model":
        local_model_check(resolved)
    return resolved


def local_model_check(ref: str, model_class: str = "AutoModelForCausalLM") -> None:
    """Refuse a local model folder a backend could not load (pickled weights, no config) while the recipe loads,
    not when its stage starts, after the stages before it have trained."""
    folder = Path(ref)
    if not folder.is_dir():
        return
    if (folder / "params.json").is_file() and not (folder / "config.json").exists():
        # vLLM's Mistral format (params.json, consolidated.safetensors; `config_format: mistral`): no config.json, and
        # still no pickles
        if pickle_files(folder) and not any(folder.glob("*.safetensors")):
            raise ValueError(f"{folder} holds its weights only as pickles ({', '.join(pickle_files(folder)[:3])}): "
                             "tempa reads safetensors only, since pickles can run code when loaded")
        return
    if (problem := weights_problem(folder, model_class=model_class)) is not None:
        raise ValueError(problem)


class TransformersBackendConfig(_Strict):
    """Generate with transformers `model.generate` in the runner's process (one device)."""

    type: Literal["transformers"] = "transformers"
    model: str | None = Field(
        default=None,
        description="Model folder or hub id; `stage:NAME` for an earlier stage's model. Default: the model "
        "this stage starts from (the current policy).",
    )
    tokenizer: str | None = Field(
        default=None,
        description="Tokenizer folder or hub id. Default: the recipe's tokenizer (baked chat template) when "
        "`model` is unset or a stage, else the model's own tokenizer and template.",
    )
    device: str = Field(default="auto", description="`auto` (cuda when present), `cpu`, `cuda:0`, ...")
    dtype: str = Field(default="auto", description="`auto` (bf16 on GPU, fp32 on CPU) or a torch dtype name.")

    @field_validator("model", "tokenizer")
    @classmethod
    def _resolve(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _model_ref(value, info)


class VLLMBackendConfig(_Strict):
    """Generate with vLLM's offline `LLM.generate` (GPU; `pip install vllm` or the `gpu` extra)."""

    type: Literal["vllm"] = "vllm"
    model: str | None = Field(
        default=None, description="As for transformers: a folder, a hub id, `stage:NAME`, or unset (the policy)."
    )
    tokenizer: str | None = Field(default=None, description="As for transformers.")
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one model is split over.")
    gpu_memory_utilization: float = Field(
        default=0.85, gt=0, le=1, description="Share of each GPU's memory vLLM may take (weights + KV cache)."
    )
    dtype: str = Field(default="auto", description="vLLM `dtype` (auto, bfloat16, float16).")
    max_model_len: int | None = Field(default=None, ge=1, description="Context length cap (vLLM `max_model_len`).")
    enforce_eager: bool = Field(default=False, description="Disable CUDA graphs (slower; less memory, faster start).")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Any further `vllm.LLM(...)` keyword arguments, passed through."
    )

    @field_validator("model", "tokenizer")
    @classmethod
    def _resolve(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _model_ref(value, info)

    @field_validator("engine_args")
    @classmethod
    def _no_remote_code(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "trust_remote_code" in value:
            raise ValueError("engine_args: trust_remote_code cannot be set here: set `trust_remote_code: true` at the "
                             "top level of the recipe (off by default), which every loader of the run reads")
        if str(value.get("load_format", "")).lower() in PICKLE_LOAD_FORMATS:
            raise ValueError(f"engine_args.load_format {value['load_format']!r} would unpickle a checkpoint (tempa "
                             "loads safetensors only): convert the model to safetensors, or leave load_format unset")
        return _no_secret(value, "engine_args")


class HTTPBackendConfig(_Strict):
    """An OpenAI-compatible `/v1/chat/completions` endpoint: a vLLM or llama.cpp server, or a hosted API.

    Its transport settings (`base_url`, `api_key_env`, `timeout_s`, `max_retries`, `backoff_s`, `concurrency`) are
    no part of a stage's fingerprint: changing them resumes a stage (or keeps a finished one), never re-runs it.
    """

    type: Literal["http"] = "http"
    base_url: str = Field(
        json_schema_extra=NOT_FINGERPRINTED,
        description="API root including the version, e.g. `http://127.0.0.1:8000/v1`. Where the server is, not who "
        "answers: a teacher served again on another node (a new SLURM allocation) keeps the answers already paid "
        "for. The model is known by `model`: serve another model under another name.",
    )
    model: str = Field(description="The served model name sent as `model` in each request.")
    api_key_env: str | None = Field(
        default=None,
        json_schema_extra=NOT_FINGERPRINTED,
        description="Name of the environment variable holding the API key (sent as a Bearer token). The key "
        "itself never appears in a recipe, a log, a manifest or an output file.",
    )
    timeout_s: float = Field(default=300.0, gt=0, json_schema_extra=NOT_FINGERPRINTED,
                             description="Seconds one request may take as a whole: connecting, sending and reading the "
                             "entire reply (a server trickling bytes cannot hold it longer). A request that runs "
                             "out is retried like a connection error.")
    max_retries: int = Field(default=5, ge=0, json_schema_extra=NOT_FINGERPRINTED,
                             description="Retries on HTTP 429/5xx and connection errors.")
    backoff_s: float = Field(
        default=1.0, ge=0, json_schema_extra=NOT_FINGERPRINTED, description="First retry delay; doubles per retry (capped at 60s; `Retry-After` wins)."
    )
    concurrency: int = Field(
        default=8, ge=1, json_schema_extra=NOT_FINGERPRINTED, description="Requests in flight at once (within one batch of the stage's `batch_size` "
        "prompts, so raise both for a high-latency API).",
    )
    supports_n: bool = Field(
        default=True,
        description="The server honours `n` (vLLM does). Set false (e.g. llama.cpp) to send n requests of one "
        "sample each, with seeds seed, seed+1, ...",
    )
    send_chat_template_kwargs: bool = Field(
        default=True,
        description="Send `chat_template_kwargs: {thinking_mode, enable_thinking}` (vLLM / llama.cpp servers "
        "apply them to the chat template). Turn off for hosted APIs that reject unknown fields.",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="Further JSON fields merged into every request body (e.g. `top_k`); "
        "never a key or token (api_key_env names the variable that holds the key)."
    )

    @field_validator("api_key_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.fullmatch(value):
            # Not echoed: a key pasted here instead of its variable's name is the likely mistake.
            raise PydanticCustomError(
                SECRET_INPUT_ERROR,
                "api_key_env must be the name of an environment variable (letters, digits and _, such as "
                "TEACHER_API_KEY), not the key itself (the value is not shown); export the key in that variable",
            )
        return value

    @field_validator("extra_body")
    @classmethod
    def _no_secret_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _no_secret(value, "extra_body")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        parts = urllib.parse.urlsplit(value)
        # The URL is copied into provenance, manifests, the model card and error messages, so it must hold
        # no secret; neither would work anyway (urllib sends no user:password, and the request's path is
        # appended to base_url, after any query). The value is not echoed: it may be a secret.
        if "@" in parts.netloc or parts.query or parts.fragment or "?" in value or "#" in value:
            raise PydanticCustomError(
                SECRET_INPUT_ERROR,
                "base_url must be a plain API root such as https://host/v1, without user:password@, a ?query or "
                "a #fragment (got one for host {host}); put an API key in an environment variable and name it "
                "in api_key_env",
                {"host": repr(parts.hostname)},
            )
        return value.rstrip("/")


def read_api_key(variable: str) -> str:
    """The API key held in environment variable ``variable``, without the whitespace around it: a key exported from a
    secret file (a Kubernetes secret, ``export KEY="$(<file)"`` of a file saved by an editor) ends with a line break,
    which an HTTP header cannot carry (http.client refused it with a ValueError quoting the whole header, key and
    all). StageError, naming the variable and never its value, when it is unset or empty, or when the key holds a
    space, control or non-ASCII character, which no API key has and no header may carry."""
    value = os.environ.get(variable, "").strip()
    if not value:
        raise StageError(f"environment variable {variable} is not set")
    bad = next((i for i, char in enumerate(value) if not " " < char <= "~"), None)
    if bad is not None:
        raise StageError(f"environment variable {variable} holds a space, line break, control or non-ASCII character "
                         f"inside the key (character {bad + 1} of {len(value)}; the value is not shown), which an HTTP "
                         "header cannot carry: set it to the key alone")
    return value


BackendConfig = Annotated[
    TransformersBackendConfig | VLLMBackendConfig | HTTPBackendConfig, Field(discriminator="type")
]


def backend_reads(config: BaseModel | None, field: tuple[str | int, ...]) -> list[Read]:
    """The earlier stages whose models a backend block at ``field`` names as `stage:NAME`."""
    if config is None or isinstance(config, HTTPBackendConfig):
        return []  # an HTTP backend's `model` is the server's model name, not a folder
    return [Read(name, Artifact.MODEL, (*field, key)) for key in ("model", "tokenizer")
            if (name := stage_ref(getattr(config, key, None)))]


def resolve_model(ref: str | None, default: Path, stage_models: Mapping[str, Path], who: str) -> Path | str:
    """A backend's model reference as a folder (or hub id); `stage:NAME` looks up an earlier stage."""
    if ref is None:
        return default
    name = stage_ref(ref)
    if name is not None:
        if name not in stage_models:
            raise StageError(f"{who}: '{ref}' is not an earlier stage with a model (known: {sorted(stage_models)})")
        return Path(stage_models[name])
    return ref


def build_backend(
    config: TransformersBackendConfig | VLLMBackendConfig | HTTPBackendConfig,
    *,
    policy_dir: Path,
    tokenizer_dir: Path,
    stage_models: Mapping[str, Path] | None = None,
    trust_remote_code: bool = False,
    who: str = "backend",
    show_progress: bool = True,
) -> SamplingBackend:
    """Instantiate the backend a recipe block describes.

    ``policy_dir`` is the default model (the stage's starting model or the current round's
    policy); ``tokenizer_dir`` the recipe's tokenizer with the baked chat template.
    """
    if isinstance(config, HTTPBackendConfig):
        from tempa.alignment.backends_http import HTTPBackend

        # The recipe's tokenizer: a reply's structured tool calls are written as its chat template writes them.
        return HTTPBackend.from_config(config, show_progress=show_progress, tokenizer_dir=tokenizer_dir,
                                       trust_remote_code=trust_remote_code)
    models = dict(stage_models or {})
    model = resolve_model(config.model, policy_dir, models, who)
    own_model = config.model is not None and stage_ref(config.model) is None
    tokenizer: Path | str = (
        resolve_model(config.tokenizer, tokenizer_dir, models, who) if config.tokenizer
        else (model if own_model else tokenizer_dir)
    )
    if isinstance(config, VLLMBackendConfig):
        from tempa.alignment.backends_vllm import VLLMBackend

        return VLLMBackend(
            model,
            tokenizer,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            enforce_eager=config.enforce_eager,
            trust_remote_code=trust_remote_code,
            engine_args=config.engine_args,
            show_progress=show_progress,
        )
    return TransformersSampler(
        model, tokenizer, device=config.device, dtype=config.dtype, trust_remote_code=trust_remote_code,
        show_progress=show_progress,
    )


def sample_at(backend: Any, prompts: list[Any], params: GenerationParams, places: Sequence[int] | None,
              on_result: Callable[[int, list[Completion]], None] | None = None,
              **kwargs: Any) -> list[list[Completion]]:
    """``backend.sample``, each prompt seeded by its place in its batch (``places``) where the backend seeds per
    prompt (HTTP, vLLM: a prompt asked alone then gets the samples it gets in its whole batch); a backend that seeds
    per batch (transformers, a test's) is asked as it always was.

    ``on_result(i, completions)``: told as prompt ``i``'s completions arrive, where the backend hands over each reply
    as it arrives (HTTP, whose requests are paid for whether or not the call completes: a caller that journals each
    loses none to a kill or a failed request). A backend whose call returns every reply at once (transformers, vLLM)
    is not given it: its caller keeps what the call returns, in one write."""
    lazy = isinstance(backend, LazyBackend)
    if places is not None and (lazy or getattr(backend, "seeds_by_place", False)):
        kwargs["places"] = places
    if on_result is not None and (lazy or getattr(backend, "reports_each_reply", False)):
        kwargs["on_result"] = on_result
    return backend.sample(prompts, params, **kwargs)


class LazyBackend(SamplingBackend):
    """Builds its backend on first use, so a resumed pass with nothing left to do loads no model."""

    def __init__(self, factory: Any, describe: str = "backend") -> None:
        self._factory = factory
        self._backend: SamplingBackend | None = None
        self.describe = describe

    @property
    def backend(self) -> SamplingBackend:
        if self._backend is None:
            self._backend = self._factory()
            self.describe = self._backend.describe
        return self._backend

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    def sample(self, prompts, params, *, thinking_modes=None, tools=None, places=None, on_result=None):
        # Passed on only when given: the backend may be a judge's or reviser's, which never get tools.
        extra = {} if tools is None else {"tools": tools}
        return sample_at(self.backend, prompts, params, places, on_result, thinking_modes=thinking_modes, **extra)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None


def describe_backend(
    config: TransformersBackendConfig | VLLMBackendConfig | HTTPBackendConfig, default_model: Path | str
) -> str:
    """``type:model`` for provenance records, without loading anything (and never a secret)."""
    if isinstance(config, HTTPBackendConfig):
        return f"http:{config.model}@{config.base_url}"
    return f"{config.type}:{config.model or default_model}"
