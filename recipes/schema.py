"""The recipe: one YAML file that names the base model, the template, the launch and the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tempa.alignment.rl_config import DEFAULT_RL_ARGS, generation_batch
from tempa.chat_templates.baking import GenerationDefaults
from tempa.recipes.engine import SHIPPED_ACCELERATE, SHIPPED_DEEPSPEED, Engine, read_engine, shipped_path
from tempa.sft.global_batch import accumulation_for, data_parallel
from tempa.sft.run_layout import safe_name
from tempa.sft.stage_api import OnOff, looks_local, resolve_path
from tempa.sft.suggest import did_you_mean

TINY_DEFAULT = "tempa:tiny"
TEMPA_MODELS = (TINY_DEFAULT,)  # the `tempa:` names a base_model may take
__all__ = ["SHIPPED_ACCELERATE", "SHIPPED_DEEPSPEED", "LaunchConfig", "Recipe"]


class LaunchConfig(BaseModel):
    """How training stages are launched (each in its own process group)."""

    model_config = ConfigDict(extra="forbid")

    launcher: Literal["accelerate", "torchrun"] = Field(
        default="accelerate",
        description="`accelerate launch` with `accelerate_config`, or plain `torchrun` (DeepSpeed then "
        "comes from `deepspeed_config`).",
    )
    accelerate_config: str = Field(
        default="single",
        description="A shipped accelerate config (single, ddp, zero3, zero3-offload, zero3-multinode, fsdp2, "
        "fsdp2-offload) or a path to your own accelerate YAML.",
    )
    deepspeed_config: str | None = Field(
        default=None,
        description="DeepSpeed JSON for the torchrun launcher (a shipped name such as 'zero3-cpu', or a path).",
    )
    num_processes: int | None = Field(default=None, ge=1, description="Processes per run (all machines).")
    num_machines: int = Field(
        default=1, ge=1,
        description="Nodes a training launch spans. Node rank 0 (`tempa run`) runs every stage; the others run "
        "`tempa run ... --machine-rank N` and only join the training launches (README: Several nodes).",
    )
    main_process_ip: str | None = Field(
        default=None,
        description="Multi-node: the address of node rank 0 that the other nodes can reach (default: its hostname).",
    )
    main_process_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Multi-node: the rendezvous port on node rank 0 (default: a free port, told to the other nodes).",
    )
    global_batch_size: int | None = Field(
        default=None, ge=1,
        description="Sequences (pairs, for preference stages) per optimizer step on any hardware: each training "
        "launch sets gradient_accumulation_steps = global_batch_size / (per_device_train_batch_size x processes), "
        "which must divide evenly. Unset: the train block's gradient_accumulation_steps, so the global batch "
        "grows with the GPU count.",
    )
    sequence_parallel: int = Field(
        default=1, ge=1,
        description="Long context: split each sequence over this many GPUs. DeepSpeed ZeRO-3 configs use "
        "DeepSpeed-Ulysses/ALST (packing kept: flash-attention 2 reads document boundaries from position_ids); "
        "FSDP2 configs use torch context parallelism (trl refuses packing with it). GPU only.",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] | None = Field(
        default=None, description="Overrides the accelerate config's mixed precision."
    )
    use_cpu: bool = Field(default=False, description="Force CPU training even when a GPU is present.")
    extra_args: list[str] = Field(default_factory=list, description="Appended to the launcher command.")

    @field_validator("accelerate_config")
    @classmethod
    def _accelerate(cls, value: str, info) -> str:
        return value if value in SHIPPED_ACCELERATE else _config_file(value, info, SHIPPED_ACCELERATE)

    @field_validator("deepspeed_config")
    @classmethod
    def _deepspeed(cls, value: str | None, info) -> str | None:
        if value is None or value in SHIPPED_DEEPSPEED:
            return value
        return _config_file(value, info, SHIPPED_DEEPSPEED)

    def accelerate_path(self) -> Path:
        ref = self.accelerate_config
        return shipped_path("accelerate", ref, ".yaml") if ref in SHIPPED_ACCELERATE else Path(ref)

    def deepspeed_path(self) -> Path | None:
        ref = self.deepspeed_config
        if ref is None:
            return None
        return shipped_path("deepspeed", ref, ".json") if ref in SHIPPED_DEEPSPEED else Path(ref)

    def engine(self) -> Engine:
        """What training launches shard with and offload (read from the accelerate / DeepSpeed config)."""
        return read_engine(self.launcher, self.accelerate_path() if self.launcher == "accelerate" else None,
                           self.deepspeed_path())

    def processes(self, engine: Engine | None = None) -> int | None:
        """The training processes over all machines, as far as the recipe tells: ``num_processes``, else the accelerate
        config's, else torchrun's one a machine; None where accelerate decides (a config that names none: one per
        GPU). ``engine``: :meth:`engine`'s, when the caller has it."""
        engine = engine or self.engine()
        return self.num_processes or engine.num_processes or (self.num_machines if self.launcher == "torchrun" else None)

    @model_validator(mode="after")
    def _engine_fits_the_launch(self) -> LaunchConfig:
        try:
            engine = self.engine()
        except (OSError, ValueError, yaml.YAMLError) as exc:  # an unreadable YAML/JSON: say so, with the field
            field = "accelerate_config" if self.launcher == "accelerate" else "deepspeed_config"
            raise ValueError(f"launch.{field}: cannot read it ({exc})") from None
        if self.launcher == "accelerate" and engine.num_machines > 1 and self.num_machines == 1:
            # tempa passes the machine count and each node's rank only for a multi-node launch
            raise ValueError(f"launch.num_machines: {self.num_machines}, but {Path(engine.source).name} says "
                             f"num_machines: {engine.num_machines}; set launch.num_machines: {engine.num_machines}")
        written_for_them = self.launcher == "accelerate" and engine.num_machines == self.num_machines \
            and engine.num_processes is not None
        if self.num_machines > 1 and self.num_processes is None and not written_for_them:
            # torchrun would start one process per node, accelerate spread a per-node config's processes over all
            raise ValueError(f"launch.num_processes: required when num_machines is {self.num_machines} (every "
                             f"machine's processes together, e.g. 16 for two nodes of 8 GPUs)")
        if self.num_processes is not None and self.num_processes % self.num_machines:
            raise ValueError(f"launch.num_processes: {self.num_processes} (all machines) is not a multiple of "
                             f"launch.num_machines: {self.num_machines}")
        if self.use_cpu and engine.name == "fsdp1":
            # accelerate's FSDP1 plugin asks for a CUDA/XPU/... device when it is built
            raise ValueError("launch.use_cpu: FSDP1 needs GPUs (accelerate's FSDP1 plugin wants a CUDA-class "
                             "device); on CPU use an FSDP2 config (accelerate_config: fsdp2)")
        if self.use_cpu and engine.name == "fsdp2" and engine.offload_params:
            # torch's CPUOffloadPolicy pins the host copies for transfers to a GPU, which needs CUDA
            raise ValueError(f"launch.use_cpu: {Path(engine.source).name} offloads parameters to the CPU for a "
                             "GPU, which needs CUDA; on CPU they are in host RAM already: use accelerate_config: fsdp2")
        processes = self.processes(engine) or 1
        if self.use_cpu and self.launcher == "accelerate" and engine.name != "fsdp2" and processes > 1:
            # accelerate's --cpu starts its simple launcher, ONE process, for any config but FSDP2's (tempa runs
            # those ranks on CPU itself); its own multi-process CPU launch needs MPI. It trained silently alone.
            raise ValueError(f"launch.use_cpu: accelerate starts one CPU process for {Path(engine.source).name}, not "
                             f"{processes} (several need MPI); for {processes} CPU processes use launcher: torchrun "
                             "(with deepspeed_config: zero3-cpu for ZeRO-3) or accelerate_config: fsdp2, or set "
                             "num_processes: 1")
        if self.sequence_parallel > 1:
            if not (engine.name == "fsdp2" or (engine.name == "deepspeed" and engine.zero_stage == 3)) \
                    or self.launcher != "accelerate":
                raise ValueError(f"launch.sequence_parallel: {self.sequence_parallel} needs accelerate with a "
                                 f"DeepSpeed ZeRO-3 config (Ulysses/ALST) or an FSDP2 config (context parallelism); "
                                 f"this launch trains with {engine.label}")
            if self.use_cpu:
                raise ValueError("launch.sequence_parallel: sequence/context parallelism needs GPUs "
                                 "(flash-attention 2 or CUDA sdpa); set it to 1 with use_cpu: true")
            processes = self.processes(engine)
            if processes is not None and processes % self.sequence_parallel:
                raise ValueError(f"launch.sequence_parallel: {self.sequence_parallel} must divide the "
                                 f"{processes} processes of a launch")
        return self


def _config_file(value: str, info, shipped: tuple[str, ...]) -> str:
    try:
        return resolve_path(value if looks_local(value) else f"./{value}", info)
    except ValueError:
        raise ValueError(f"{value!r} is neither a shipped config ({', '.join(shipped)}) nor an existing file") from None


def _rl_fits_the_launch(stage: Any, info: ValidationInfo) -> Any:
    """Refuse, naming the stage's field, an `rl` stage that trl would refuse (or train nothing with) once its worker
    starts, after every stage before it: the generation batch depends on the launch's processes.

    Runs on the stage as written (its own validation comes after the recipe's); values of the wrong type are
    left to it."""
    launch = info.data.get("launch")
    if not isinstance(launch, LaunchConfig) or not isinstance(stage, dict) or stage.get("kind") != "rl":
        return stage
    written = stage.get("train") or {}
    if not isinstance(written, dict):
        return stage
    if written.get("use_vllm") is True and launch.use_cpu:
        raise ValueError("train.use_vllm: true samples with vLLM on CUDA GPUs, but launch.use_cpu is true; remove "
                         "use_vllm (transformers' generate samples on CPU)")
    train = {**DEFAULT_RL_ARGS, **written}
    keys = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations", "generation_batch_size",
            "steps_per_generation")
    processes = launch.processes()
    if processes is None or any(type(train.get(key)) not in (int, type(None)) for key in keys):
        return stage  # accelerate counts the GPUs when the launch does not say
    ranks = data_parallel(processes, launch.sequence_parallel)
    if launch.global_batch_size is not None:
        try:  # what the worker sets, and trl's default steps_per_generation follows
            train["gradient_accumulation_steps"] = accumulation_for(
                launch.global_batch_size, train["per_device_train_batch_size"], ranks)
        except ValueError:
            return stage  # the recipe's load refuses a global batch the launch cannot make (its line named)
    try:
        batch = generation_batch(train, ranks)
    except ValueError as exc:
        raise ValueError(f"train.{exc}") from None
    prompts = stage.get("prompts")
    limit = prompts.get("limit") if isinstance(prompts, dict) else None
    if type(limit) is int and limit < batch.prompts:
        raise ValueError(f"prompts.limit: {limit} prompts are fewer than one generation batch of {batch.prompts} "
                         f"prompts ({batch.completions} completions / num_generations {train['num_generations']}): "
                         "trl drops a batch it cannot fill and would train no step; lower per_device_train_batch_size "
                         "(it counts completions, not prompts) or raise the limit")
    return stage


def _top_k_problem(stages: list[Any]) -> tuple[tuple[str | int, ...], int, str] | None:
    """(where, top_k, why) for the first merge stage whose `select.top_k` exceeds what its evaluate stage can score."""
    from tempa.merge.candidates import count_candidates
    from tempa.recipes.registry import stage_kinds

    kinds = stage_kinds()
    earlier: dict[str, dict[str, Any]] = {}
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            return None
        select, evaluate = stage.get("select"), earlier.get(str(stage.get("evaluate_stage")))
        top_k = select.get("top_k", 2) if isinstance(select, dict) else None
        if stage.get("kind") == "merge" and type(top_k) is int and evaluate and evaluate.get("kind") == "evaluate":
            listed = {key: evaluate.get(key) or [] for key in ("checkpoints_of", "stages", "models")}
            producers = [earlier.get(name) for name in listed["checkpoints_of"]] if all(
                isinstance(value, list) for value in listed.values()) else [None]
            if all(isinstance(p, dict) and p.get("kind") in kinds and isinstance(p.get("train") or {}, dict)
                   for p in producers):
                count = count_candidates(
                    {p["name"]: {**kinds[p["kind"]].config.train_defaults, **(p.get("train") or {})} for p in producers},
                    include_final=evaluate.get("include_final", True) is not False,
                    stages=len(listed["stages"]), models=len(listed["models"]))
                high, how = count.high, count.how
                if high is not None and _base_is_a_candidate(stage, top_k, listed):  # picked besides it (selection.py)
                    high, how = high - 1, f"{how}, less its base_model '{stage['base_model']}'"
                if high is not None and top_k > high:
                    return ((i, "select", "top_k"), top_k,
                            f"{top_k}, but evaluate stage '{evaluate['name']}' scores at most {high} candidate(s) "
                            f"({how}), so the merge would fail after all training; lower top_k, or give "
                            f"'{evaluate['name']}' more candidates (a higher save_total_limit, `stages`, `models`)")
        if isinstance(stage.get("name"), str):
            earlier[stage["name"]] = stage
    return None


def _base_is_a_candidate(merge: dict[str, Any], top_k: int, listed: dict[str, list[Any]]) -> bool:
    """Whether a task-vector merge's `base_model` is one of the models its evaluate stage scores (`stages` or
    `models`): the top_k are then picked besides it."""
    from tempa.merge.merge_config import base_role, method_spec

    base = merge.get("base_model")
    if not isinstance(base, str) or base not in [*listed["stages"], *listed["models"]]:
        return False
    try:
        return base_role(method_spec(str(merge.get("method", "linear"))), top_k, True) == "separate"
    except (KeyError, ValueError):  # an unknown method: the stage's own validation names it
        return False


class Recipe(BaseModel):
    """A whole post-training pipeline. Stages run in order; each one's output is on disk."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Recipe name (a safe name: letters, digits, '.', '_', '-'); the model card's title and "
        "the default run directory runs/<name> (runs/<name>-<profile> with --profile)."
    )
    description: str = ""
    base_model: str = Field(
        description=f"Local folder, hub id, or '{TINY_DEFAULT}' for the embedded tiny default."
    )
    chat_template: str = Field(
        default="llama3_thinking",
        description="A shipped template name (llama3_thinking, chatml_thinking) or a path to a .jinja file.",
    )
    thinking_default: OnOff = Field(
        default="on",
        description="The thinking mode the baked chat template uses when a caller passes no `thinking_mode` / "
        "`enable_thinking` (transformers, vLLM, llama.cpp). Ollama (0.12.4 on) turns thinking on for a request "
        "without `think`, whatever this says. Set `off` for a model trained without reasoning; the run warns when "
        "no trained row was in this mode. Also the mode preference, synthesize and rl stages sample prompts in when "
        "they do not set it (`sampling.thinking` / `thinking`).",
    )
    stock_preamble: bool = Field(
        default=False,
        description="Llama 3.1 Instruct's own system block (`Cutting Knowledge Date: December 2023`, "
        "`Today Date: {date_string}`) in every prompt, as the stock template writes it: for a base that "
        "was trained on it (Llama-3.1-Instruct, SEA-LION v3 IT). llama3_thinking only.",
    )
    generation: GenerationDefaults = Field(
        default_factory=GenerationDefaults,
        description="Sampling defaults the final model's generation_config.json carries (temperature, top_p, "
        "top_k, min_p, repetition_penalty, max_new_tokens); the end-of-turn token is always a stop id.",
    )
    seed: int = 42
    trust_remote_code: bool = Field(default=False, description="Passed to transformers; off unless you trust it.")
    allow_pickle_weights: bool = Field(
        default=False,
        description="UNSAFE: accept a base model whose weights are pickles (pytorch_model.bin, *.pt), which can "
        "run code when loaded. tempa converts it to safetensors once (in the cache) and reads only that.",
    )
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    stages: list[Annotated[Any, AfterValidator(_rl_fits_the_launch)]] = Field(
        min_length=1, description="Ordered stages; each has name, kind and settings.")

    @field_validator("stages")
    @classmethod
    def _merge_selections_fit(cls, stages: list[Any]) -> list[Any]:
        """Refuse, at the merge's `select.top_k`, a top-k above the most candidates its evaluate stage can score
        (every checkpoint a training stage keeps is counted: save_total_limit, save_strategy, max_steps): the
        merge refused it after all training. Runs on the stages as written (their own validation comes after);
        what is not as expected there is left to it."""
        from pydantic_core import InitErrorDetails, PydanticCustomError

        problem = _top_k_problem(stages)
        if problem is None:
            return stages
        loc, value, message = problem
        raise ValidationError.from_exception_data("Recipe", [InitErrorDetails(
            type=PydanticCustomError("value_error", "{message}", {"message": message}), loc=loc, input=value)])

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return safe_name(value, "recipe name")

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, value: str, info) -> str:
        if value in TEMPA_MODELS:
            return value
        if value.startswith("tempa:"):
            raise ValueError(f"unknown tempa model '{value}' (known: {', '.join(TEMPA_MODELS)})"
                             f"{did_you_mean(value, TEMPA_MODELS)}")
        resolved = resolve_path(value, info)
        if Path(resolved).is_absolute():
            return resolved  # a local folder: `_base_model_folder` checks what it holds
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(resolved)  # what the download checks, an hour later
        except HFValidationError:
            raise ValueError(
                f"'{value}' is no existing local folder, no tempa model ({', '.join(TEMPA_MODELS)}) and no valid "
                f"hub id ('name' or 'org/name': letters, digits, '-', '_', '.'){did_you_mean(value, TEMPA_MODELS)}"
            ) from None
        return resolved

    @model_validator(mode="after")
    def _base_model_folder(self) -> Recipe:
        if self.base_model != TINY_DEFAULT and Path(self.base_model).is_absolute():
            from tempa.alignment.model_files import base_model_problem

            problem = base_model_problem(Path(self.base_model), allow_pickle=self.allow_pickle_weights)
            if problem is not None:
                raise ValueError(f"'base_model': {problem}")  # the key first: errors.py points at its line
        return self

    @field_validator("chat_template")
    @classmethod
    def _template(cls, value: str, info) -> str:
        if value.endswith(".jinja"):
            return resolve_path(value, info)
        from tempa.chat_templates.templates import available_templates

        known = available_templates()
        if value not in known:
            raise ValueError(f"not a shipped template or a .jinja path (shipped: {', '.join(known)}"
                             f"{did_you_mean(value, known)})")
        return value
