"""Plan estimates: tokens, steps, global batch, memory per GPU and per node, and hours for each training stage.

``tempa plan RECIPE --hardware 8xH100`` (or ``2x8xH100``, ``8xH100@1TiB``) prints :func:`render_estimate`; :func:`estimate_recipe`
returns the numbers. Nothing is downloaded: the base model is built from its ``config.json`` on
the meta device and its parameters counted; the config comes from a local folder, the Hugging
Face cache, or tempa's copies for the seed recipes' base models (``recipes/model_configs/``), and
without one the plan says, per stage, that the size is unknown. What each training stage trains
on comes from its kind's ``estimate`` hook (:mod:`tempa.sft.data_size`,
:mod:`tempa.alignment.sizing`): exact once the stage has run in the run directory, else from the
recipe's sizes with a stated average length per row; a ``stage:NAME`` source takes the size its
producer's ``dataset_size`` hook declares.

The memory model (per GPU, DeepSpeed ZeRO-3 without offload, bf16 mixed precision, AdamW):

- model states, as DeepSpeed's ``estimate_zero3_model_states_mem_needs`` counts them: 18 bytes
  per parameter sharded over all GPUs (parameters 6: the bf16 copy and the fp32 master; gradients
  4: fp32; optimizer 8: Adam's two fp32 moments) plus 4 bytes per parameter of the largest layer,
  which ZeRO-3 gathers whole to compute with (the embedding or LM head for Llama shapes);
- activations of one micro-batch with full activation checkpointing (trl's default): each
  layer's bf16 input kept, one layer's intermediates rebuilt during its backward (Liger's SwiGLU,
  on by default on GPU when ``liger-kernel`` is installed, keeps 3 instead of 4 MLP-wide tensors),
  and the LM head: trl's SFT and DPO trainers score tokens with a chunked kernel that never builds
  the (tokens x vocab) logits, holding one bf16 tile plus fp32 gradients of the hidden states and
  of the head's weight (:func:`logits_bytes`; unfused logits would take 10 bytes x vocab per token);
- a stage fits when that total stays under 90% of the GPU's memory (the rest: CUDA context, NCCL
  buffers, allocator fragmentation, DeepSpeed's prefetch buckets) and the host RAM it needs stays
  under 90% of a node's RAM.

Other engines (:func:`model_states_bytes`, read from the launch config by
:mod:`tempa.recipes.engine`): ZeRO-3 with the optimizer or parameters offloaded (DeepSpeed's
estimators, their 1.5x host buffer), ZeRO-0/1/2 (DeepSpeed's ``estimate_zero2_model_states_mem_needs``: the
bf16 model whole on every GPU), FSDP2 (fp32 shards as master weights: 16 bytes per parameter, plus the
bf16 units in flight) and its CPU offload, DDP and one process (nothing sharded: trl's fp32 model, its
gradients and Adam's moments on every GPU). ``launch.sequence_parallel``
divides a micro-batch's tokens, and the data-parallel ranks, by its size; the long-context table
shows one sequence of 32k/64k/128k tokens with and without it.

Hours are ``6 * N * trained tokens / (GPUs * peak bf16 dense FLOP/s * MFU)``, the same MFU that
bench/gpu_mfu.py measures (preference stages: 8N, the reference model's forward pass included).
A preference stage without ``precompute_ref_log_probs`` also holds a bf16 reference model, sharded.
An RL stage also samples while it trains: its generation hours are ``2 * N`` FLOPs per prompt token
prefilled at the training MFU plus ``2 * N`` per sampled token at :data:`GENERATION_MFU` (decoding is
memory-bound), and a colocated vLLM engine's share of each GPU is not available to training.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tempa.recipes.engine import Engine
from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import LoadedRecipe
from tempa.recipes.registry import stage_kind
from tempa.recipes.rundir import done_fingerprint, read_manifest
from tempa.recipes.schema import TINY_DEFAULT
from tempa.sft.checkpoints import checkpoint_saves, save_interval
from tempa.sft.global_batch import accumulation_for, rows_per_step
from tempa.sft.global_batch import data_parallel as ranks_of
from tempa.sft.stage_api import (
    EstimateInputs,
    GenerationWork,
    SourceSize,
    StageResult,
    TokenCount,
    TrainingWorkload,
)
from tempa.sft.throughput_summary import peak_flops
from tempa.sft.train_args import schedule_problem

GIB = 2**30

# Bytes per parameter under ZeRO-3 with bf16 mixed precision and AdamW (DeepSpeed's 18).
PARAM_BYTES = 6  # bf16 working copy (2) + fp32 master weights (4)
GRAD_BYTES = 4  # fp32 gradients
OPTIMIZER_BYTES = 8  # Adam's first and second moments, fp32
GATHER_BYTES = 4  # per parameter of the largest layer, gathered whole for compute

USABLE_MEMORY = 0.90  # share of GPU memory a stage may plan to use
DS_BUFFER = 1.5  # DeepSpeed's additional_buffer_factor: its estimators' margin on host RAM
ZERO3 = Engine("deepspeed", zero_stage=3)
ZERO3_OFFLOAD = Engine("deepspeed", zero_stage=3, offload_optimizer=True)
LONG_CONTEXTS = (32_768, 65_536, 131_072)
PACKING_FILL = 0.95  # share of each packed row that BFD packing fills with tokens
# Decoding reads every weight once per step for the whole batch, so it runs far below the training
# MFU; an assumption (not measured here) for vLLM's continuous batching on H100-class GPUs.
GENERATION_MFU = 0.10

# Average rendered tokens per conversation when the recipe gives rows but no data stats exist yet.
AVG_TOKENS_THINKING_OFF = 800  # instruction / chat data
AVG_TOKENS_THINKING_ON = 4000  # distilled reasoning traces (R1-style) with their answers


class EstimateError(RecipeError):
    """The estimate cannot be made for a reason the user can act on; the message is one line."""


# --------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class GPUSpec:
    name: str
    peak_tflops: float  # dense bf16 tensor-core TFLOP/s (no sparsity)
    memory_gib: float  # what the device reports as total memory
    node_ram_gib: float = 2048.0  # host RAM of a typical 8-GPU server with this GPU (DGX-class)


def _gpu(name: str, memory_gib: float, node_ram_gib: float) -> GPUSpec:
    """A GPU with the peak the training worker's MFU uses (tempa.sft.throughput_summary.PEAK_FLOPS)."""
    return GPUSpec(name, peak_flops(name) / 1e12, memory_gib, node_ram_gib)


GPUS: dict[str, GPUSpec] = {
    spec.name.lower(): spec
    for spec in (
        _gpu("H100", 79.6, 2048),  # SXM5 80 GB; DGX H100: 2 TiB
        _gpu("H200", 139.8, 2048),  # SXM 141 GB; DGX H200: 2 TiB
        _gpu("A100", 79.2, 2048),  # SXM4 80 GB; DGX A100 640GB: 2 TiB
        _gpu("A100-40GB", 39.4, 1024),  # DGX A100 320GB: 1 TiB
        _gpu("L40S", 44.4, 1024),
    )
}

USABLE_HOST_MEMORY = 0.90  # share of a node's RAM the offloaded states may take (the OS, page cache, loaders)


@dataclass(frozen=True)
class Hardware:
    gpus: int
    gpu: GPUSpec
    gpus_per_node: int = 8
    host_ram_gib: float | None = None  # per node; None: the GPU's typical server

    @property
    def nodes(self) -> int:
        return max(1, math.ceil(self.gpus / self.gpus_per_node))

    @property
    def node_ram_gib(self) -> float:
        return self.host_ram_gib if self.host_ram_gib is not None else self.gpu.node_ram_gib

    @property
    def label(self) -> str:
        if self.nodes > 1:
            return f"{self.nodes}x{self.gpus_per_node}x{self.gpu.name}"
        return f"{self.gpus}x{self.gpu.name}"

    def with_gpus(self, gpus: int) -> Hardware:
        return Hardware(gpus, self.gpu, self.gpus_per_node, self.host_ram_gib)


_HARDWARE = re.compile(
    r"\s*(?:(\d+)\s*[xX×*]\s*)?(?:(\d+)\s*[xX×*]\s*)?([A-Za-z][A-Za-z0-9-]*)"
    r"(?:\s*@\s*([\d.]+)\s*(TiB|TB|T|GiB|GB|G))?\s*")


def parse_hardware(text: str) -> Hardware:
    """``8xH100`` (one node), ``2x8xH100`` (nodes x GPUs per node), ``16xH100`` (whole 8-GPU nodes),
    ``H100`` (one GPU); ``@1TiB`` / ``@1536G`` after it sets each node's host RAM."""
    match = _HARDWARE.fullmatch(text)
    gpu = GPUS.get(match.group(3).lower()) if match else None
    known = ", ".join(spec.name for spec in GPUS.values())
    if match is None or gpu is None:
        raise EstimateError(f"--hardware {text!r}: expected COUNTxGPU such as 8xH100, or NODESxGPUSxGPU such as "
                            f"2x8xH100, optionally @RAM per node such as @2TiB (GPUs: {known})")
    first, second = (int(g) if g is not None else None for g in match.group(1, 2))
    if 0 in (first, second):
        raise EstimateError(f"--hardware {text!r}: the GPU count must be at least 1")
    ram = None
    if match.group(4) is not None:  # T / G are binary (TiB / GiB), TB / GB decimal
        ram = float(match.group(4)) * {"tib": 1024, "t": 1024, "gib": 1, "g": 1, "tb": 1e12 / GIB,
                                       "gb": 1e9 / GIB}[match.group(5).lower()]
        if ram <= 0:
            raise EstimateError(f"--hardware {text!r}: a node's RAM must be more than 0 (e.g. @2TiB)")
    if second is not None:  # NODESxGPUSxGPU
        return Hardware(first * second, gpu, gpus_per_node=second, host_ram_gib=ram)
    count = first or 1
    if count > 8 and count % 8:
        raise EstimateError(f"--hardware {text!r}: {count} GPUs do not fill 8-GPU nodes; say NODESxGPUSxGPU, "
                            f"e.g. 2x{count // 2}x{gpu.name}" if count % 2 == 0 else
                            f"--hardware {text!r}: {count} GPUs do not fill 8-GPU nodes; say NODESxGPUSxGPU")
    return Hardware(count, gpu, gpus_per_node=min(count, 8), host_ram_gib=ram)


# --------------------------------------------------------------------------- model shapes

MODEL_CONFIGS = "model_configs"  # tempa's copies of the seed base models' config.json (see its README)


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a decoder-only transformer: its counted size and the shape activations follow."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    parameters: int  # counted on the meta device (tied weights once)
    largest_layer_parameters: int  # the largest single module's own parameters, as DeepSpeed counts them
    head_dim: int | None = None

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


_COUNTS: dict[str, tuple[int, int]] = {}  # by config JSON: a plan sizes the same model for every stage


def count_parameters(config: Any) -> tuple[int, int]:
    """(parameters, largest module's own parameters) of the causal LM ``config`` describes.

    The model is built on PyTorch's meta device (shapes without storage: a 70B model costs no
    memory) and its parameters counted, so any architecture transformers knows is sized exactly.
    """
    key = config.to_json_string(use_diff=False)
    if key not in _COUNTS:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        total = sum(p.numel() for p in model.parameters())  # a tied weight is yielded once
        largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
        _COUNTS[key] = (total, largest)
    return _COUNTS[key]


def shape_from_config(config: Any, name: str) -> ModelShape:
    """A shape from a transformers config (multimodal configs: their text model's)."""
    text = config.get_text_config()
    try:
        heads = int(text.num_attention_heads)
        fields = dict(hidden_size=int(text.hidden_size), num_layers=int(text.num_hidden_layers), num_heads=heads,
                      num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
                      intermediate_size=int(text.intermediate_size), vocab_size=int(text.vocab_size),
                      head_dim=getattr(text, "head_dim", None))
    except AttributeError as exc:
        raise EstimateError(f"{name}: config.json has no {exc.name!r}; cannot size the model") from None
    try:
        parameters, largest = count_parameters(config)
    except (ValueError, KeyError, TypeError) as exc:  # a config transformers cannot build a causal LM from
        raise EstimateError(f"{name}: transformers cannot build a causal LM from its config ({exc})") from None
    return ModelShape(name=name, parameters=parameters, largest_layer_parameters=largest, **fields)


def shipped_config(model_id: str) -> Path | None:
    """tempa's copy of hub model ``model_id``'s config.json (``model_configs/<org>__<name>.json``), if it ships one."""
    from importlib import resources

    wanted = model_id.strip().replace("/", "__").lower() + ".json"
    folder = resources.files("tempa.recipes") / MODEL_CONFIGS
    for entry in folder.iterdir():
        if entry.name.lower() == wanted:
            return Path(str(entry))
    return None


def find_config(base_model: str) -> tuple[Any, str]:
    """The base model's transformers config and where it came from, without downloading; EstimateError if none."""
    from transformers import AutoConfig

    if base_model == TINY_DEFAULT:
        from transformers import LlamaConfig

        from tempa.recipes.tiny import TINY_MODEL_SHAPE, TINY_VOCAB_SIZE

        return LlamaConfig(vocab_size=TINY_VOCAB_SIZE, tie_word_embeddings=False, **TINY_MODEL_SHAPE), \
            "the embedded tiny default"
    path = Path(base_model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EstimateError(f"base_model {base_model}: the folder has no config.json")
        try:
            return AutoConfig.from_pretrained(path), str(path / "config.json")
        except (OSError, ValueError) as exc:
            raise EstimateError(f"base_model {base_model}: transformers cannot read its config.json ({exc})") from None
    try:
        return AutoConfig.from_pretrained(base_model, local_files_only=True), "the Hugging Face cache (no download)"
    except (OSError, ValueError):
        pass
    shipped = shipped_config(base_model)
    if shipped is not None:
        return AutoConfig.from_pretrained(shipped), f"tempa's copy of its config.json ({MODEL_CONFIGS}/{shipped.name})"
    raise EstimateError(
        f"base_model {base_model}: its config.json is neither a local folder nor in the Hugging Face cache, and "
        f"tempa ships no copy (recipes/{MODEL_CONFIGS}/); fetch it once with huggingface-cli download {base_model} "
        "config.json, or point base_model at a folder holding it"
    )


def plan_tokenizer(loaded: LoadedRecipe) -> tuple[Any, str]:
    """The base model's tokenizer with the recipe's chat template, as the stages render with it, when it is on
    this machine (a local folder, the Hugging Face cache, the tiny default); else None, with what the run will
    stop on when the tokenizer is here but cannot be loaded. A tokenizer the template does not fit comes without
    the template (``chat_template`` None; a pretrain stage still counts with it), with what an sft stage will stop
    on. Never downloads."""
    base_model = loaded.recipe.base_model
    if base_model != TINY_DEFAULT and not Path(base_model).is_dir() and not _cached_tokenizer(base_model):
        return None, ""
    try:
        from transformers import AutoTokenizer

        from tempa.chat_templates.baking import check_fits
        from tempa.recipes.runner import template_text

        if base_model == TINY_DEFAULT:
            from tempa.recipes.tiny import build_tiny_tokenizer, cached_tiny_default_dir

            built = cached_tiny_default_dir()
            tokenizer = AutoTokenizer.from_pretrained(built) if built is not None else build_tiny_tokenizer()
        else:
            tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True, trust_remote_code=False)
        text = template_text(loaded)
    except Exception as exc:
        said = " ".join(str(exc).split()) or type(exc).__name__  # transformers' reasons span several lines
        return None, f"base_model {base_model}: its tokenizer cannot be loaded: {textwrap.shorten(said, 300)}"
    try:
        check_fits(tokenizer, text, f"base_model {base_model}")
    except ValueError as exc:
        tokenizer.chat_template = None
        return tokenizer, f"chat_template {loaded.recipe.chat_template} does not fit the base tokenizer: {exc}"
    tokenizer.chat_template = text
    return tokenizer, ""


def _cached_tokenizer(base_model: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(base_model, name), str)
                   for name in ("tokenizer.json", "tokenizer_config.json"))
    except ValueError:  # not a repository id
        return False


def resolve_shape(base_model: str) -> tuple[ModelShape | None, str]:
    """(the base model's shape, where its config came from), or (None, why its size is unknown); never downloads."""
    try:
        config, source = find_config(base_model)
        name = Path(base_model).name if Path(base_model).is_dir() else base_model
        return shape_from_config(config, name), source
    except EstimateError as exc:
        return None, str(exc)


# --------------------------------------------------------------------------- memory


@dataclass
class MemoryEstimate:
    """Per-GPU memory in GiB."""

    params: float
    grads: float
    optimizer: float
    gathered: float
    activations: float
    capacity: float
    reference: float = 0.0  # a frozen bf16 reference model (preference stages), sharded
    host: float = 0.0  # GiB of host RAM per node (the fullest node)
    host_capacity: float = math.inf  # GiB of RAM per node

    @property
    def model_states(self) -> float:
        return self.params + self.grads + self.optimizer + self.gathered + self.reference

    @property
    def total(self) -> float:
        return self.model_states + self.activations

    @property
    def gpu_fits(self) -> bool:
        return self.total <= USABLE_MEMORY * self.capacity

    @property
    def host_fits(self) -> bool:
        return self.host <= USABLE_HOST_MEMORY * self.host_capacity

    @property
    def fits(self) -> bool:
        return self.gpu_fits and self.host_fits


def zero3_model_states_bytes(parameters: int, largest_layer: int, gpus: int) -> dict[str, float]:
    """Per-GPU bytes of parameters, gradients, optimizer state and the gathered layer under ZeRO-3."""
    return {
        "params": PARAM_BYTES * parameters / gpus,
        "grads": GRAD_BYTES * parameters / gpus,
        "optimizer": OPTIMIZER_BYTES * parameters / gpus,
        "gathered": GATHER_BYTES * largest_layer,
    }


def zero12_model_states_bytes(parameters: int, hardware: Hardware, engine: Engine) -> tuple[dict[str, float], float]:
    """(per-GPU bytes, host bytes per node) under DeepSpeed ZeRO-0/1/2, as ``estimate_zero2_model_states_mem_needs``
    counts stages 1 and 2: every GPU keeps the whole bf16 model; the fp32 master weights (4 B), fp32 and bf16
    gradient partitions (4 + 2 B) and Adam's moments (8 B) are divided over the GPUs. Stage 1 keeps the bf16
    gradients whole, and stage 0 divides nothing. With the optimizer offloaded only the bf16 model stays on
    the GPU."""
    n, g = parameters, hardware.gpus
    shards = g if engine.zero_stage > 0 else 1
    if engine.offload_optimizer:
        host = n * max(4 * hardware.gpus_per_node, 16 / hardware.nodes) * DS_BUFFER
        return {"params": 2.0 * n, "grads": 0.0, "optimizer": 0.0, "gathered": 0.0}, host
    grads = 6 * n / shards if engine.zero_stage == 2 else 2 * n + 4 * n / shards
    states = {"params": 2 * n + 4 * n / shards, "grads": grads, "optimizer": 8 * n / shards, "gathered": 0.0}
    return states, 4 * n * hardware.gpus_per_node * DS_BUFFER


def logits_bytes(shape: ModelShape, tokens: int, *, fused: bool = True) -> float:
    """Peak bytes of the LM head + loss for one micro-batch of ``tokens`` tokens.

    ``fused``: trl's chunked log-prob kernel (what its SFT and DPO trainers run); one
    (token chunk x vocab chunk) bf16 tile, fp32 gradients for the hidden states and the head's
    weight. Unfused: bf16 logits, their fp32 upcast for the loss and its fp32 gradient.
    """
    if not fused:
        return 10.0 * shape.vocab_size * tokens
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    tile = 2 * min(tokens, TOKEN_CHUNK_SIZE) * min(shape.vocab_size, _CHUNKED_LOGPROB_CHUNK_SIZE)
    return float(tile + 4 * tokens * shape.hidden_size + 4 * shape.vocab_size * shape.hidden_size)


def activation_bytes(shape: ModelShape, tokens: int, *, checkpointing: bool, liger: bool) -> float:
    """Activations of one micro-batch of ``tokens`` tokens (bf16, flash/sdpa attention, no dropout)."""
    h, kv = shape.hidden_size, shape.num_kv_heads * shape.dim_per_head
    # One layer's saved tensors per token: norm outputs, q/k/v, attention output, residuals (5h + 2kv)
    # and the MLP's gate, up, activation and product (4 x intermediate; Liger's fused SwiGLU
    # recomputes the activation in its backward: 3), all bf16.
    mlp = (3 if liger else 4) * shape.intermediate_size
    layer = 2 * (5 * h + 2 * kv + mlp) * tokens
    layers = (shape.num_layers * 2 * h * tokens + layer) if checkpointing else shape.num_layers * layer
    return float(layers + logits_bytes(shape, tokens))


def liger(train: dict[str, Any]) -> bool:
    """Liger's layer kernels: on unless the recipe turns them off (tempa's GPU default with the `gpu` extra)."""
    return bool(train.get("use_liger_kernel", True))


def checkpointing(train: dict[str, Any]) -> bool:
    """Activation checkpointing: on unless the train args turn it off (either of its two names)."""
    return bool(train.get("activation_checkpointing", train.get("gradient_checkpointing", True)))


@dataclass(frozen=True)
class Workload:
    """What memory depends on, besides the model and the hardware."""

    micro_tokens: int  # tokens of one micro-batch per GPU
    train: dict[str, Any]
    lora: Any = None
    reference: bool = False
    reserved: float = 0.0  # share of each GPU held by something else (a colocated vLLM engine)


def decoder_layer_parameters(shape: ModelShape) -> int:
    """Parameters of one decoder layer (what FSDP wraps as a unit), from the count less embedding and head."""
    return max(0, (shape.parameters - 2 * shape.vocab_size * shape.hidden_size) // shape.num_layers)


def model_states_bytes(shape: ModelShape, hardware: Hardware, engine: Engine) -> tuple[dict[str, float], float]:
    """(per-GPU bytes of params, grads, optimizer, gathered; host bytes on the fullest node) for full training.

    DeepSpeed ZeRO-3 as its estimators count (``estimate_zero3_model_states_mem_needs``, zero_init,
    1.5x host buffer). FSDP2: fp32 parameter shards are the master weights (4 B), fp32 gradients
    (4 B) and Adam (8 B) sharded, plus bf16 copies of the unit computing and the one prefetched;
    its offload keeps those 16 B per parameter in host RAM (with DeepSpeed's 1.5x margin for
    pinned buffers), and without offload rank 0 gathers the full fp32 state dict to save it.
    """
    n, g, nodes = shape.parameters, hardware.gpus, hardware.nodes
    # Without ZeRO init every process builds the whole fp32 model in host RAM before it reaches its GPU.
    loading = 4 * n * hardware.gpus_per_node * DS_BUFFER
    if engine.name in ("ddp", "single"):
        # Nothing sharded: trl loads the model in fp32 (its default dtype) and autocasts, so each GPU holds
        # fp32 weights, gradients and both Adam moments; DDP also keeps its fp32 gradient buckets (accelerate
        # leaves gradient_as_bucket_view off).
        buckets = 4 * n if engine.name == "ddp" else 0.0
        return {"params": 4.0 * n, "grads": 4 * n + buckets, "optimizer": 8.0 * n, "gathered": 0.0}, loading
    if engine.name == "deepspeed" and engine.zero_stage < 3:
        return zero12_model_states_bytes(n, hardware, engine)
    if engine.name in ("fsdp2", "fsdp1"):
        gathered = 2 * 2 * max(shape.largest_layer_parameters, decoder_layer_parameters(shape))
        if engine.offload_params:
            return {"params": 0.0, "grads": 0.0, "optimizer": 0.0, "gathered": gathered}, 16 * n / nodes * DS_BUFFER
        return {"params": 4 * n / g, "grads": 4 * n / g, "optimizer": 8 * n / g, "gathered": gathered}, 4.0 * n
    largest = GATHER_BYTES * shape.largest_layer_parameters
    if engine.offload_params:
        return {"params": 0.0, "grads": 0.0, "optimizer": 0.0, "gathered": largest}, 18 * n / nodes * DS_BUFFER
    if engine.offload_optimizer:
        return {"params": 2 * n / g, "grads": 0.0, "optimizer": 0.0, "gathered": largest}, 16 * n / nodes * DS_BUFFER
    host = shape.largest_layer_parameters * 4 * hardware.gpus_per_node * DS_BUFFER
    return zero3_model_states_bytes(n, shape.largest_layer_parameters, g), host


def memory_estimate(shape: ModelShape, hardware: Hardware, work: Workload, engine: Engine = ZERO3) -> MemoryEstimate:
    if work.lora is not None:  # frozen bf16 (or 4-bit) base; adapter states are negligible
        # DeepSpeed and FSDP cast the frozen base to bf16; DDP keeps trl's fp32 load; only ZeRO-3 / FSDP shard it.
        per_param = 0.55 if work.lora.load_in_4bit else 4 if engine.name in ("ddp", "single") else 2
        states = {"params": per_param * shape.parameters / (hardware.gpus if engine.shards_model else 1),
                  "grads": 0.0, "optimizer": 0.0,
                  "gathered": 2 * shape.largest_layer_parameters if engine.shards_model else 0.0}
        host = 0.0
    else:
        states, host = model_states_bytes(shape, hardware, engine)
    activations = activation_bytes(shape, work.micro_tokens, checkpointing=checkpointing(work.train),
                                   liger=liger(work.train))
    reference = 2 * shape.parameters / hardware.gpus if work.reference else 0.0
    return MemoryEstimate(**{k: v / GIB for k, v in states.items()}, activations=activations / GIB,
                          capacity=hardware.gpu.memory_gib * (1 - work.reserved), reference=reference / GIB, host=host / GIB,
                          host_capacity=hardware.node_ram_gib)


def gpus_needed(shape: ModelShape, hardware: Hardware, work: Workload, engine: Engine = ZERO3) -> int | None:
    """The fewest GPUs (whole nodes past one) on which the stage fits with ``engine``; None past 1024."""
    candidates = [n for n in (1, 2, 4) if n < hardware.gpus_per_node] + list(range(8, 1025, 8))
    for gpus in candidates:
        if memory_estimate(shape, hardware.with_gpus(gpus), work, engine).fits:
            return gpus
    return None


# --------------------------------------------------------------------------- stages


@dataclass
class StageEstimate:
    """The plan for one training stage on the given hardware."""

    name: str
    kind: str
    tokens_per_epoch: int | None  # preference stages: per round
    tokens_source: str
    epochs: float  # preference stages: epochs x rounds
    trained_tokens: int | None
    steps: int | None
    tokens_per_step: int
    micro_batch_tokens: int
    memory: MemoryEstimate | None  # None: the model's size is unknown
    hours: float | None
    fits: bool | None  # None: the model's size is unknown
    bound: str = ""  # tokens, steps and hours are at least (">="), at most ("<=") or about ("~") these
    gpus_needed: int | None = None
    global_batch: int = 0  # rows (pairs) per optimizer step on this hardware
    accumulation: int = 1
    generation_hours: float | None = None  # sampling during training (RL stages), included in hours
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LaunchPlan:
    """What of the recipe's ``launch:`` the estimate needs."""

    engine: Engine = ZERO3
    processes: int = 8  # the GPUs the recipe's launch asks for (its global batch is set for these)
    global_batch_size: int | None = None
    sequence_parallel: int = 1


def launch_plan(loaded: LoadedRecipe) -> LaunchPlan:
    launch = loaded.recipe.launch
    engine = launch.engine()
    processes = launch.processes(engine) or 1
    return LaunchPlan(engine, processes, launch.global_batch_size, launch.sequence_parallel)


def _batch(train: dict[str, Any], hardware: Hardware, per_sequence: float, sequences: int,
           launch: LaunchPlan, max_length: int | None = None) -> tuple[int, int, int, int, str | None]:
    """(micro-batch tokens per GPU, tokens per optimizer step, rows per step, accumulation, problem).

    ``sequences`` per row (2 for a pair); sequence parallelism splits each micro-batch over
    ``launch.sequence_parallel`` GPUs, which then form one data-parallel rank. ``max_length``: a
    sequence length other than ``train.max_length`` (an RL stage's prompt + completion).
    """
    max_length = int(max_length or train.get("max_length") or 1024)
    rows = int(train.get("per_device_train_batch_size", 8))
    data_parallel = ranks_of(hardware.gpus, launch.sequence_parallel)
    accumulation, problem = int(train.get("gradient_accumulation_steps", 1)), None
    if launch.global_batch_size is not None:
        try:
            accumulation = accumulation_for(launch.global_batch_size, rows, data_parallel)
        except ValueError as exc:
            problem = f"{exc} on {hardware.label}"
            accumulation = max(1, round(launch.global_batch_size / (rows * data_parallel)))
    per_device = rows * sequences
    micro = math.ceil(per_device * max_length / launch.sequence_parallel)  # packed rows, or padding's worst case
    per_sequence = max_length * PACKING_FILL if train.get("packing") else min(per_sequence, max_length)
    global_rows = rows * accumulation * data_parallel
    return micro, int(global_rows * sequences * per_sequence), global_rows, accumulation, problem


def _schedule(count: TokenCount, train: dict[str, Any], tokens_per_step: int,
              rounds: int) -> tuple[float, int | None, int | None]:
    """(epochs x rounds, steps, trained tokens)."""
    epochs = float(train.get("num_train_epochs", 1)) * rounds
    max_steps = int(train.get("max_steps", -1) or -1)
    if max_steps > 0:
        # max_steps overrides the epochs: the trainer cycles the data, and a step never holds more
        # than one epoch's tokens (a dataset smaller than one batch is one short batch per step).
        per_step = min(tokens_per_step, count.tokens) if count.tokens else tokens_per_step
        trained = max_steps * rounds * per_step
        return (trained / count.tokens if count.tokens else epochs), max_steps * rounds, trained
    if count.tokens is None:
        return epochs, None, None
    # As transformers counts: every epoch ends with its own (possibly short) step, and the epochs
    # multiply whole steps per epoch (a tiny dataset trains one step per epoch, not a fraction of one).
    per_epoch = max(1, math.ceil(count.tokens / max(1, tokens_per_step)))
    return epochs, max(1, math.ceil(epochs * per_epoch)), int(count.tokens * epochs)


def estimate_stage(name: str, kind: str, workload: TrainingWorkload, shape: ModelShape | None, hardware: Hardware,
                   mfu: float, *, launch: LaunchPlan = LaunchPlan(), unknown_size: str = "") -> StageEstimate:
    """One stage's plan; with ``shape`` None (``unknown_size`` says why), tokens and steps only."""
    train = workload.train_args
    count = workload.tokens
    sequences = workload.sequences_per_row
    per_sequence = count.tokens / (count.rows * sequences) if count.tokens and count.rows else AVG_TOKENS_THINKING_OFF
    micro, per_step, global_rows, accumulation, problem = _batch(train, hardware, per_sequence, sequences, launch,
                                                                 workload.sequence_tokens)
    epochs, steps, trained = _schedule(count, train, per_step, workload.rounds)
    notes = list(count.notes)
    if workload.rounds > 1:  # else the table's epochs (added up over the rounds) read as passes over the data
        notes.append(f"{workload.rounds} rounds, each training on its own pairs: tokens/epoch is one round's, "
                     "epochs, steps and trained are added up over the rounds (epochs per round: "
                     f"{epochs / workload.rounds:.3g})")
    common = dict(bound=count.bound, notes=notes, global_batch=global_rows, accumulation=accumulation)
    if shape is None:
        estimate = StageEstimate(name, kind, count.tokens, count.source, epochs, trained, steps, per_step,
                                 micro, None, None, None, **common)
        estimate.warnings.append(f"stage {name}: unknown size, so no memory, fit or hours: {unknown_size}")
    else:
        generation = workload.generation
        work = Workload(micro, train, workload.lora, workload.reference_model,
                        generation.gpu_memory_fraction if generation else 0.0)
        memory = memory_estimate(shape, hardware, work, launch.engine)
        # A preference pair's reference model adds a forward pass (2N) to the policy's 6N FLOPs per token.
        paired = sequences > 1
        forwards = workload.extra_forwards + (1 if paired else 0)
        flops_per_token = 6 * shape.parameters + 2 * shape.parameters * forwards
        peak = hardware.gpus * hardware.gpu.peak_tflops * 1e12 * mfu
        hours = flops_per_token * trained / peak / 3600 if trained else None
        generation_hours = _generation_hours(generation, shape, hardware, mfu, trained, count.tokens)
        if hours is not None and generation_hours is not None:
            hours += generation_hours
        estimate = StageEstimate(name, kind, count.tokens, count.source, epochs, trained, steps, per_step,
                                 micro, memory, hours, memory.fits, generation_hours=generation_hours, **common)
        if generation is not None:
            estimate.notes.append(_generation_note(generation, generation_hours, forwards))
        if launch.engine.offloads and work.lora is None:
            estimate.notes.append(f"{launch.engine.label}: ~{memory.host:.0f} GiB host RAM per node of "
                                  f"{hardware.node_ram_gib:.0f}")
        _annotate(estimate, shape, hardware, work, paired, launch.engine)
    if problem:
        estimate.warnings.append(f"stage {name}: {problem}")
    # steps are an upper bound or an estimate here, never a lower bound: a schedule too long for them is too long
    if steps and count.bound != ">=" and (schedule := schedule_problem(train, steps)) is not None:
        estimate.warnings.append(f"stage {name}: {schedule}")
    _global_batch_note(estimate, train, hardware, launch)
    return estimate


def _global_batch_note(estimate: StageEstimate, train: dict[str, Any], hardware: Hardware,
                       launch: LaunchPlan) -> None:
    """Warn when this hardware trains with another global batch than the recipe's launch, and say how to keep it."""
    rows = int(train.get("per_device_train_batch_size", 8))
    if launch.global_batch_size is not None:
        if estimate.global_batch != launch.global_batch_size:  # unreachable here: the warning says why, the table
            # shows the nearest batch the figures were made with, and the note must not claim the recipe's is met
            estimate.notes.append(f"global batch {launch.global_batch_size} (launch.global_batch_size) cannot be met on "
                                  f"{hardware.label} (a launch there is refused); the figures assume "
                                  f"{estimate.global_batch} (gradient_accumulation_steps {estimate.accumulation})")
            return
        estimate.notes.append(f"global batch {launch.global_batch_size} (launch.global_batch_size): "
                              f"gradient_accumulation_steps {estimate.accumulation} on {hardware.label}")
        return
    intended = rows_per_step(rows, int(train.get("gradient_accumulation_steps", 1)), launch.processes,
                             launch.sequence_parallel)
    if estimate.global_batch == intended:
        return
    ranks = ranks_of(hardware.gpus, launch.sequence_parallel)
    try:
        here = accumulation_for(intended, rows, ranks)
        keep = (f"to keep {intended} on any hardware set launch.global_batch_size: {intended} "
                f"(gradient_accumulation_steps {here} here)")
    except ValueError:
        if intended % ranks:  # every rank takes whole rows: the batch is a multiple of the ranks
            keep = (f"{intended} cannot be kept on {ranks} data-parallel ranks, whose global batch is a multiple of "
                    f"{ranks}")
        else:  # the largest micro-batch that divides each rank's share
            per = max(d for d in range(1, min(rows, intended // ranks) + 1) if (intended // ranks) % d == 0)
            keep = (f"to keep {intended} here set launch.global_batch_size: {intended} and "
                    f"per_device_train_batch_size: {per}")
    estimate.warnings.append(
        f"stage {estimate.name}: {hardware.label} changes the global batch from {intended} (the launch's "
        f"{launch.processes} process{'es' if launch.processes != 1 else ''}) to {estimate.global_batch} rows per "
        f"step, and with it the learning-rate schedule's meaning; {keep}")


def _generation_hours(generation: GenerationWork | None, shape: ModelShape, hardware: Hardware, mfu: float,
                      trained: int | None, tokens_per_epoch: int | None) -> float | None:
    """Hours of sampling over the whole stage (as many epochs of it as of training)."""
    if generation is None or generation.sampled_tokens is None or not trained or not tokens_per_epoch:
        return None
    epochs = trained / tokens_per_epoch
    peak = hardware.gpus * hardware.gpu.peak_tflops * 1e12
    prefill = 2 * shape.parameters * (generation.prompt_tokens or 0) / (peak * mfu)
    decode = 2 * shape.parameters * generation.sampled_tokens / (peak * GENERATION_MFU)
    return epochs * (prefill + decode) / 3600


def _generation_note(generation: GenerationWork, hours: float | None, forwards: int) -> str:
    share = (f"; the engine holds {100 * generation.gpu_memory_fraction:.0f}% of each GPU, left out of the memory "
             "available to training" if generation.gpu_memory_fraction else "")
    timed = f"~{hours:.2g} h of the hours" if hours is not None else "not timed (token count unknown)"
    return (f"generation while training: {generation.how}; {timed} (2N FLOPs per prompt token at the training "
            f"MFU, per sampled token at {100 * GENERATION_MFU:.0f}% MFU: decoding is memory-bound){share}; "
            f"{forwards} forward-only pass(es) per trained token besides the policy's (2N FLOPs each)")


def checkpoint_bytes(parameters: int, engine: Engine) -> float:
    """Bytes of one full checkpoint (weights and optimizer state, to resume from) as the engine writes it.

    DeepSpeed: its fp32 master weights and Adam's two moments (12 B/param; ZeRO-1/2 add the whole bf16 module,
    2 B) plus the 16-bit model the Trainer saves beside them (2 B); FSDP2's full state dict and DDP: trl's fp32
    weights (4 B) and the two moments (8 B).
    """
    if engine.name == "deepspeed":
        return (14 if engine.zero_stage == 3 else 16) * parameters
    return 12.0 * parameters


def checkpoints_on_disk(train: dict[str, Any], steps: int | None, epochs: float) -> int | None:
    """How many checkpoints a stage has on disk at its fullest (None: it cannot say), as the worker rotates them:
    the new one is complete before the oldest beyond ``save_total_limit`` goes."""
    saves = checkpoint_saves(train, steps, epochs)
    limit = int(train.get("save_total_limit") or 0)
    if limit and saves != 0:
        return limit + 1 if saves is None else min(saves, limit + 1)
    return saves


def _annotate(estimate: StageEstimate, shape: ModelShape, hardware: Hardware, work: Workload,
              preference: bool, engine: Engine) -> None:
    if estimate.trained_tokens is None:
        estimate.warnings.append(f"stage {estimate.name}: token count unknown, so no steps or hours")
    if not checkpointing(work.train):
        estimate.notes.append("activation checkpointing is off: activations of every layer are kept")
    fused, unfused = (logits_bytes(shape, work.micro_tokens, fused=f) / GIB for f in (True, False))
    estimate.notes.append(f"LM head + loss: {fused:.1f} GiB per GPU in trl's chunked kernel, counted in activ. "
                          f"(unfused logits over the {shape.vocab_size:,}-token vocabulary: {unfused:.1f} GiB)")
    if preference:
        reference = f"reference model {estimate.memory.reference:.1f} GiB per GPU in the total" if work.reference \
            else "reference log-probs precomputed: no reference model during training"
        estimate.notes.append(f"{reference}; hours count 8N FLOPs/token (policy 6N + reference forward 2N)")
    if work.lora is not None:
        estimate.notes.append("LoRA: frozen base weights only; 6N FLOPs/token overstates the time a little")
    # A 70B stage's checkpoints take terabytes; a disk that fills ends the run at a save, hours in.
    elif kept := checkpoints_on_disk(work.train, estimate.steps, estimate.epochs):
        each = checkpoint_bytes(shape.parameters, engine)
        estimate.notes.append(f"disk: {kept} checkpoint(s) at once (save_steps, save_total_limit), ~{each / 1e9:,.0f} "
                              f"GB each with the optimizer state: ~{kept * each / 1e12:.1f} TB in the stage's "
                              "checkpoints/")
    _save_interval(estimate, work.train)
    if not estimate.fits:
        estimate.gpus_needed = gpus_needed(shape, hardware, work, engine)
        estimate.warnings.append(_will_not_fit(estimate, shape, hardware, work, engine))


# Hours of training between two checkpoints above which the plan warns: what a crash, a preemption or a job's time
# limit (a Slurm --time of 48 h on a 65 h stage) throws away, on a node that costs by the hour. Its advice aims at
# half of it, so that a save's own write (~1 TB for a 70B model) stays a small share of the time.
SAVE_EVERY_H_MAX = 4.0


def _save_interval(estimate: StageEstimate, train: dict[str, Any]) -> None:
    """Warn when the stage's checkpoints are hours apart (:data:`SAVE_EVERY_H_MAX`), naming the save_steps that would
    bring them to half of that at the estimate's own hours per step."""
    if not estimate.hours or not estimate.steps or not checkpoint_saves(train, estimate.steps, estimate.epochs):
        return
    per_step = estimate.hours / estimate.steps
    if str(train.get("save_strategy", "steps")) == "epoch":
        every_h, how = estimate.hours / max(estimate.epochs, 1), "save_strategy: epoch"
    else:
        # the last step saves too: a stage shorter than save_steps saves once, at its end
        interval = min(estimate.steps, save_interval(train, estimate.steps) or estimate.steps)
        every_h = interval * per_step
        how = f"save_steps {train.get('save_steps', 500):g} of {estimate.bound}{estimate.steps:,} steps"
    if every_h > SAVE_EVERY_H_MAX:
        advice = max(1, math.floor(SAVE_EVERY_H_MAX / 2 / per_step))
        estimate.warnings.append(
            f"stage {estimate.name}: a checkpoint every ~{every_h:.1f} h ({how}, at the assumed MFU): a crash, a "
            f"preemption or a job's time limit loses up to that much training; save_steps: {advice} saves every "
            f"~{advice * per_step:.1f} h")


def _will_not_fit(estimate: StageEstimate, shape: ModelShape, hardware: Hardware, work: Workload,
                  engine: Engine) -> str:
    mem = estimate.memory
    if not mem.gpu_fits:
        message = (f"stage {estimate.name} will not fit on {hardware.label}: ~{mem.total:.0f} GiB per GPU needed "
                   f"(model states {mem.model_states:.0f} + activations {mem.activations:.0f}) of "
                   f"{mem.capacity:.0f} GiB ({100 * USABLE_MEMORY:.0f}% usable)")
    else:
        message = (f"stage {estimate.name} will not fit on {hardware.label}: {engine.label} needs ~{mem.host:.0f} GiB "
                   f"of host RAM per node of {mem.host_capacity:.0f} GiB ({100 * USABLE_HOST_MEMORY:.0f}% usable; "
                   f"give a node's RAM as --hardware {hardware.label}@2TiB)")
    options = []
    if estimate.gpus_needed is not None:
        options.append(f"{engine.label} over >= {estimate.gpus_needed}x{hardware.gpu.name}")
    if not engine.shards_model and (sharded := memory_estimate(shape, hardware, work, ZERO3)).fits:
        options.append(f"launch.accelerate_config: zero3 (~{sharded.total:.0f} GiB per GPU)")
    if work.lora is None and not engine.offloads:
        off = memory_estimate(shape, hardware, work, ZERO3_OFFLOAD)
        options.append(f"launch.accelerate_config: zero3-offload (~{off.total:.0f} GiB per GPU, "
                       f"~{off.host:.0f} GiB host RAM per node, DeepSpeed's estimate)")
    if mem.activations > 0.25 * mem.capacity:
        kernels = "" if liger(work.train) else " or use_liger_kernel: true"
        options.append(f"a smaller per_device_train_batch_size x max_length (micro-batch {work.micro_tokens:,} "
                       f"tokens){kernels}")
    return message + ("; options: " + "; ".join(options) if options else "")


def check_mfu(mfu: float) -> None:
    """The model FLOPs utilisation an estimate assumes: a fraction in (0, 1]."""
    if not 0 < mfu <= 1:
        raise EstimateError(f"--mfu {mfu:g}: expected a fraction in (0, 1], e.g. 0.4")


def estimate_recipe(
    loaded: LoadedRecipe,
    hardware: str = "8xH100",
    mfu: float = 0.4,
    *,
    run_dir: Path | None = None,
    avg_tokens_thinking_on: int = AVG_TOKENS_THINKING_ON,
    avg_tokens_thinking_off: int = AVG_TOKENS_THINKING_OFF,
    resolved: tuple[ModelShape | None, str] | None = None,
) -> list[StageEstimate]:
    """One :class:`StageEstimate` per training stage of ``loaded``, in run order.

    Each training kind describes its own workload (its ``estimate`` hook); a stage that has
    already run (DONE in ``run_dir``) is sized from its result, and so are the datasets of
    stages it reads. ``resolved``: :func:`resolve_shape`'s answer when the caller has it (building the
    model on the meta device takes seconds for a 70B).
    """
    check_mfu(mfu)
    machine = parse_hardware(hardware)
    shape, source = resolved or resolve_shape(loaded.recipe.base_model)
    launch = launch_plan(loaded)
    tokenizer, problem, looked = None, "", False  # loaded for the first stage that measures its local data
    warned = False
    sizes: dict[str, SourceSize] = {}
    estimates = []
    for stage in loaded.stages:
        kind = stage_kind(stage.kind)
        result = _finished_result(stage.name, kind.result, run_dir)
        if kind.dataset_size is not None:
            sizes[stage.name] = kind.dataset_size(stage, result)
        if kind.trains and kind.estimate is not None:
            reads = stage.kind in ("sft", "pretrain", "preference", "rl") and result is None
            if reads and not looked:
                (tokenizer, problem), looked = plan_tokenizer(loaded), True
            # pretrain tokenises without the template, so one that does not fit stops only the sft stages
            usable = tokenizer if stage.kind == "pretrain" or not problem else None
            inputs = EstimateInputs(avg_tokens_thinking_on, avg_tokens_thinking_off, dict(sizes), result, usable,
                                    data_parallel=ranks_of(machine.gpus, launch.sequence_parallel),
                                    global_batch_size=launch.global_batch_size)
            estimates.append(estimate_stage(stage.name, stage.kind, kind.estimate(stage, inputs), shape, machine,
                                            mfu, launch=launch, unknown_size=source))
            if reads and problem and usable is None and not warned:  # once, on the first stage it stops
                warned = True
                estimates[-1].warnings.append(f"{problem}; the run will stop there (this plan counts its sampled "
                                              "rows at ~4 bytes of text a token)")
    return estimates


def _finished_result(name: str, result_type: type[StageResult], run_dir: Path | None) -> StageResult | None:
    """The typed result of a stage that has completed in ``run_dir``, else None."""
    if run_dir is None:
        return None
    stage_dir = Path(run_dir) / name
    manifest = read_manifest(stage_dir)
    if manifest is None or manifest.status != "done" or done_fingerprint(stage_dir) != manifest.fingerprint:
        return None
    try:
        return result_type.model_validate(manifest.result or {}, context={"run_dir": Path(run_dir)})
    except ValueError:
        return None


# --------------------------------------------------------------------------- rendering


def _count(value: float | None) -> str:
    if value is None:
        return "?"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def _hours(hours: float | None) -> str:
    if hours is None:
        return "?"
    return f"{hours:.1f}" if hours >= 0.1 else "<0.1"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def render_estimate(loaded: LoadedRecipe, hardware: str = "8xH100", mfu: float = 0.4, *,
                    run_dir: Path | None = None) -> str:
    """A readable estimate of every training stage: tokens, steps, memory per GPU and node, hours, warnings."""
    machine = parse_hardware(hardware)
    shape, shape_source = resolved = resolve_shape(loaded.recipe.base_model)
    estimates = estimate_recipe(loaded, hardware, mfu, run_dir=run_dir, resolved=resolved)
    launch = launch_plan(loaded)
    size = (f"{_count(shape.parameters)} parameters (counted on the meta device), config from {shape_source}"
            if shape is not None else "unknown size")
    nodes = f"{machine.nodes} node(s) x {min(machine.gpus, machine.gpus_per_node)} GPUs"
    lines = [
        f"estimate for {machine.label} ({nodes}, {machine.gpu.peak_tflops:.0f} TFLOP/s bf16 dense, "
        f"{machine.gpu.memory_gib:.0f} GiB per GPU, {machine.node_ram_gib:.0f} GiB host RAM per node), "
        # The hours scale with 1/MFU, and nothing here measured it: say so, and how to plan with a measured one.
        f"{_engine_label(launch)}, bf16 + AdamW, MFU {100 * mfu:.0f}% (assumed for the hours: --mfu sets it; each "
        "training log reports the measured one)",
        f"model {loaded.recipe.base_model}: {size}",
    ]
    if not estimates:
        return "\n".join([*lines, "no training stages to estimate"])
    recipe_launch = loaded.recipe.launch
    if machine.nodes != recipe_launch.num_machines or machine.gpus != launch.processes:
        # The estimate counts this hardware; the run starts what the recipe's launch says, whatever was planned.
        lines.append(
            f"note: the recipe's launch starts {launch.processes} process{'es' if launch.processes != 1 else ''} on "
            f"{recipe_launch.num_machines} machine{'s' if recipe_launch.num_machines != 1 else ''}; to train on "
            f"{machine.label} set launch.num_processes: {machine.gpus}"
            + (f" and launch.num_machines: {machine.nodes} (README: Several nodes)"
               if machine.nodes != recipe_launch.num_machines else "")
            # the `single` config starts one process whatever num_processes says
            + ("; launch.accelerate_config single starts one process: set zero3 (or ddp, fsdp2)"
               if launch.engine.name == "single" and machine.gpus > 1 else ""))
    rows = [("stage", "tokens/epoch", "epochs", "trained", "steps", "batch", "tokens/step", "params", "grads",
             "optim", "gathered", "activ.", "total/GPU", "host/node", "fits", "hours")]
    for e in estimates:
        m = e.memory
        b = e.bound
        hours = _hours(e.hours)
        hours = hours if b == "<=" and hours.startswith("<") else b + hours  # "<0.1" already bounds it
        memory = ("?",) * 7 if m is None else (f"{m.params:.1f}", f"{m.grads:.1f}", f"{m.optimizer:.1f}",
                                               f"{m.gathered:.1f}", f"{m.activations:.1f}", f"{m.total:.1f} GiB",
                                               f"{m.host:.0f} GiB")
        fits = "?" if m is None else "yes" if m.fits else "NO (host)" if m.gpu_fits else "NO"
        rows.append((e.name, b + _count(e.tokens_per_epoch), f"{e.epochs:.3g}", b + _count(e.trained_tokens),
                     b + _count(e.steps), f"{e.global_batch}", _count(e.tokens_per_step), *memory, fits, hours))
    lines += _table(rows)
    if shape is not None:
        lines += _long_context(shape, machine, launch)
    lines += _footnotes(estimates, loaded, launch)
    return "\n".join(lines)


def _engine_label(launch: LaunchPlan) -> str:
    engine = launch.engine
    return engine.label + (f", sequence_parallel {launch.sequence_parallel}" if launch.sequence_parallel > 1 else "")


def long_context_memory(shape: ModelShape, hardware: Hardware, train: dict[str, Any], engine: Engine,
                        length: int, sequence_parallel: int) -> MemoryEstimate:
    """Per-GPU memory of one sequence of ``length`` tokens split over ``sequence_parallel`` GPUs."""
    work = Workload(math.ceil(length / sequence_parallel), train)
    return memory_estimate(shape, hardware, work, engine)


def _long_context(shape: ModelShape, hardware: Hardware, launch: LaunchPlan) -> list[str]:
    """Activations per GPU at 32k/64k/128k tokens with and without sequence parallelism, and what fits."""
    train: dict[str, Any] = {}  # the defaults: activation checkpointing, Liger
    engine = launch.engine if launch.engine.shards_model else ZERO3
    # launch.sequence_parallel must divide the processes (the loader refuses it otherwise): only divisors
    # of the GPU count are offered, so the SP=N columns and "smallest SP that fits" agree on any count.
    sizes = [s for s in range(1, min(hardware.gpus, 32) + 1) if hardware.gpus % s == 0]
    ulysses = engine.name == "deepspeed"
    if ulysses:  # DeepSpeed's Ulysses splits the heads: it refuses a size that does not divide them (ulysses_sp.py)
        sizes = [s for s in sizes if ulysses_problem(shape, s) is None]
    with_sp = launch.sequence_parallel if launch.sequence_parallel > 1 else max(s for s in sizes if s <= 8)
    # On one GPU there is nothing to split a sequence over: one group of columns, and say why.
    groups = [1, with_sp] if with_sp > 1 else [1]
    rows = [("context", *(cell for sp in groups for cell in (f"activ. SP={sp}", "total/GPU", "fits")),
             "smallest SP that fits")]
    for length in LONG_CONTEXTS:
        cells: list[str] = []
        for sp in groups:
            memory = long_context_memory(shape, hardware, train, engine, length, sp)
            cells += [f"{memory.activations:.1f}", f"{memory.total:.1f} GiB", "yes" if memory.fits else "NO"]
        smallest = next((s for s in sizes if long_context_memory(shape, hardware, train, engine, length, s).fits),
                        None)
        rows.append((f"{length // 1024}k", *cells, str(smallest) if smallest else f"none <= {hardware.gpus}"))
    out = ["", f"long context: one sequence per GPU group, {engine.label}, activation checkpointing, Liger; "
                "SP = launch.sequence_parallel (Ulysses/ALST on ZeRO-3, context parallelism on FSDP2)"
                + (f"; Ulysses: sizes that divide the {shape.num_heads} attention heads" if ulysses else "")
                + (("; one GPU: sequence parallelism needs 2 or more" if hardware.gpus == 1 else
                    f"; no size above 1 divides both the {hardware.gpus} GPUs and the heads") if len(groups) == 1
                   else "")]
    if ulysses and launch.sequence_parallel > 1 and (problem := ulysses_problem(shape, launch.sequence_parallel)):
        out.append(f"WARNING: launch.sequence_parallel {launch.sequence_parallel}: {problem}")
    return out + _table(rows)


def ulysses_problem(shape: ModelShape, size: int) -> str | None:
    """Why DeepSpeed's Ulysses refuses sequence-parallel ``size`` for this model (its head checks), or None."""
    if shape.num_heads % size:
        return f"DeepSpeed Ulysses needs it to divide the model's {shape.num_heads} attention heads"
    if shape.num_kv_heads % size and size % shape.num_kv_heads:
        return f"DeepSpeed Ulysses needs it to divide the model's {shape.num_kv_heads} KV heads, or be a multiple of them"
    return None


def _wrap(text: str, indent: str = "", width: int = 110) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_on_hyphens=False)


def _footnotes(estimates: list[StageEstimate], loaded: LoadedRecipe, launch: LaunchPlan) -> list[str]:
    out = ["", "tokens:"]
    for e in estimates:
        out += _wrap(f"{e.name}: {e.tokens_source}; micro-batch {e.micro_batch_tokens:,} tokens per GPU", "  ")
        for note in e.notes:
            out += _wrap(note, "    ")
    engine = launch.engine
    if engine.name in ("ddp", "single"):
        states = ("nothing sharded: params = fp32 weights (4 B/param, trl's default dtype), grads fp32 (4 B"
                  + (", and 4 B more for DDP's gradient buckets" if engine.name == "ddp" else "")
                  + "), optim = Adam moments (8 B), whole on every GPU")
    elif engine.name == "deepspeed" and engine.zero_stage < 3 and engine.offload_optimizer:
        states = (f"ZeRO-{engine.zero_stage}: params = the whole bf16 model (2 B/param) on every GPU; the fp32 master, "
                  "grads and optim (Adam moments) in host RAM (host/node)")
    elif engine.name == "deepspeed" and engine.zero_stage < 3:
        states = (f"ZeRO-{engine.zero_stage} as DeepSpeed's estimate_zero2_model_states_mem_needs counts it: params = "
                  "the whole bf16 model (2 B/param) + the fp32 master (4 B), grads bf16 + fp32 (6 B), optim = Adam "
                  "moments (8 B); all but the bf16 model divided over the GPUs (ZeRO-1: not the bf16 grads; ZeRO-0: "
                  "nothing)")
    elif engine.name in ("fsdp2", "fsdp1"):
        states = ("params = fp32 shards (4 B/param, the master weights), grads fp32 (4 B), optim = Adam moments "
                  "(8 B), each divided over the GPUs; gathered = bf16 copies of the FSDP unit computing and the one "
                  "prefetched")
    elif engine.offload_params:
        states = ("params, grads and optim in host RAM (host/node), not on the GPUs; gathered = the largest layer "
                  "x 4 B")
    elif engine.offloads:
        states = ("params = bf16 copy (2 B/param), divided over the GPUs; the fp32 master, grads and optim (Adam "
                  "moments) in host RAM (host/node); gathered = the largest layer x 4 B")
    else:
        states = ("params = bf16 copy + fp32 master (6 B/param), grads fp32 (4 B), optim = Adam moments (8 B), each "
                  "divided over the GPUs; gathered = the largest layer x 4 B")
    out += _wrap(
        f"memory, GiB per GPU: {states}; activ. = one micro-batch with activation checkpointing, plus the LM "
        "head's chunked loss; kernels as tempa picks them on GPU with the gpu extra installed (flash-attention 2, "
        "Liger; set use_liger_kernel: false to plan without Liger); host/node = RAM on the fullest node "
        f"(DeepSpeed's estimators, 1.5x buffer); fits = total <= {100 * USABLE_MEMORY:.0f}% of GPU memory and "
        f"host <= {100 * USABLE_HOST_MEMORY:.0f}% of a node's RAM; batch = rows (pairs) per optimizer step"
    )
    out += _wrap(
        f"steps assume BFD packing fills {100 * PACKING_FILL:.0f}% of each row; hours = 6 x params x trained "
        "tokens / (GPUs x peak x MFU), plus sampling for RL stages (their notes), not data prep (its own line per "
        "stage) nor a preference stage's sampling; '>=': some data could not be sized; '<=': an upper bound (a "
        "synthesize stage's output); '~': both"
    )
    trained = {e.name for e in estimates}
    untimed = [f"{stage.name} ({stage.kind})" for stage in loaded.stages if stage.name not in trained]
    if untimed:  # teachers and judges answer at their endpoint's pace; evaluation, merges and baking are not sized
        out += _wrap(f"not in the hours: {', '.join(untimed)}")
    config = loaded.recipe.launch.accelerate_config
    if engine.offloads:
        where = "parameters, gradients and optimizer state" if engine.offload_params else \
            "the fp32 master weights, gradients and Adam moments"
        out += _wrap(f"'{config}' offloads to CPU: {where} live in host RAM (host/node)")
    warnings = [w for e in estimates for w in e.warnings]
    if warnings:
        out.append("")
        for warning in warnings:
            out += _wrap(f"WARNING: {warning}")
    return out
