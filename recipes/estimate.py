"""Plan estimates: tokens, steps, per-GPU memory under ZeRO-3 and hours for each training stage.

``tempa plan RECIPE --hardware 8xH100`` prints :func:`render_estimate`; :func:`estimate_recipe`
returns the numbers. Nothing is downloaded: the base model's shape comes from a local
``config.json``, or from a built-in table matched from the hub id (Llama 3.x, Qwen2.5, Mistral 7B,
SEA-LION v3 / Swallow on Llama 3.1); tokens come from the stage's data stats when it already ran
(``run_dir/<stage>/data/mix.json``), else from the sources' ``tokens`` / ``rows`` settings (or the
row count of a local file) with a stated average length per row. A ``stage:NAME`` source written
by a synthesize stage counts at most its prompts times the answers kept per prompt (its output's
rows once that stage has finished), each row as long as the stage's ``max_new_tokens`` suggest.
Preference stages count one pair per prompt (``prompts.limit``) per round; their sampling and
scoring time is not estimated.

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
  buffers, allocator fragmentation, DeepSpeed's prefetch buckets).

Hours are ``6 * N * trained tokens / (GPUs * peak bf16 dense FLOP/s * MFU)``, the same MFU that
bench/gpu_mfu.py measures (preference stages: 8N, the reference model's forward pass included).
A preference stage without ``precompute_ref_log_probs`` also holds a bf16 reference model, sharded.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tempa.alignment.synthesize_config import OUTPUT_FILE
from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import LoadedRecipe
from tempa.recipes.rundir import DONE
from tempa.recipes.schema import TINY_DEFAULT
from tempa.sft.throughput import peak_flops

GIB = 2**30
TRAINING_KINDS = ("sft", "preference")

# Bytes per parameter under ZeRO-3 with bf16 mixed precision and AdamW (DeepSpeed's 18).
PARAM_BYTES = 6  # bf16 working copy (2) + fp32 master weights (4)
GRAD_BYTES = 4  # fp32 gradients
OPTIMIZER_BYTES = 8  # Adam's first and second moments, fp32
GATHER_BYTES = 4  # per parameter of the largest layer, gathered whole for compute

USABLE_MEMORY = 0.90  # share of GPU memory a stage may plan to use
PACKING_FILL = 0.95  # share of each packed row that BFD packing fills with tokens

# Average rendered tokens per conversation when the recipe gives rows but no data stats exist yet.
AVG_TOKENS_THINKING_OFF = 800  # instruction / chat data
AVG_TOKENS_THINKING_ON = 4000  # distilled reasoning traces (R1-style) with their answers
# Preference stages: one pair per prompt, each side a prompt plus a sampled answer.
AVG_PROMPT_TOKENS = 200
COMPLETION_FILL = 0.5  # share of sampling.max_new_tokens an average sampled answer uses


class EstimateError(RecipeError):
    """The estimate cannot be made for a reason the user can act on; the message is one line."""


# --------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class GPUSpec:
    name: str
    peak_tflops: float  # dense bf16 tensor-core TFLOP/s (no sparsity)
    memory_gib: float  # what the device reports as total memory


def _gpu(name: str, memory_gib: float) -> GPUSpec:
    """A GPU with the peak the training worker's MFU uses (tempa.sft.throughput.PEAK_FLOPS)."""
    return GPUSpec(name, peak_flops(name) / 1e12, memory_gib)


GPUS: dict[str, GPUSpec] = {
    spec.name.lower(): spec
    for spec in (
        _gpu("H100", 79.6),  # SXM5 80 GB
        _gpu("H200", 139.8),  # SXM 141 GB
        _gpu("A100", 79.2),  # SXM4 80 GB
        _gpu("A100-40GB", 39.4),
        _gpu("L40S", 44.4),
    )
}


@dataclass(frozen=True)
class Hardware:
    gpus: int
    gpu: GPUSpec
    gpus_per_node: int = 8

    @property
    def nodes(self) -> int:
        return max(1, math.ceil(self.gpus / self.gpus_per_node))

    @property
    def label(self) -> str:
        return f"{self.gpus}x{self.gpu.name}"

    def with_gpus(self, gpus: int) -> Hardware:
        return Hardware(gpus, self.gpu, self.gpus_per_node)


def parse_hardware(text: str) -> Hardware:
    """``8xH100``, ``16xH100``, ``1xH200``, ``H100`` (one GPU); nodes hold 8 GPUs."""
    match = re.fullmatch(r"\s*(?:(\d+)\s*[xX×*]\s*)?([A-Za-z0-9-]+)\s*", text)
    gpu = GPUS.get(match.group(2).lower()) if match else None
    known = ", ".join(spec.name for spec in GPUS.values())
    if match is None or gpu is None:
        raise EstimateError(f"--hardware {text!r}: expected COUNTxGPU such as 8xH100 (GPUs: {known})")
    if match.group(1) is not None and int(match.group(1)) < 1:
        raise EstimateError(f"--hardware {text!r}: the GPU count must be at least 1")
    count = int(match.group(1) or 1)
    return Hardware(count, gpu, gpus_per_node=min(count, 8))


# --------------------------------------------------------------------------- model shapes


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a decoder-only transformer (Llama / Qwen2 / Mistral layout)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool = False
    head_dim: int | None = None
    qkv_bias: bool = False  # Qwen2

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def layer_parameters(self) -> int:
        h, d = self.hidden_size, self.dim_per_head
        q, kv = self.num_heads * d, self.num_kv_heads * d
        attention = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        return attention + 3 * h * self.intermediate_size + 2 * h  # + SwiGLU MLP + two RMSNorms

    @property
    def parameters(self) -> int:
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)
        return embeddings + self.num_layers * self.layer_parameters() + self.hidden_size

    @property
    def largest_layer_parameters(self) -> int:
        """Largest single module's own parameters, as DeepSpeed's ``model_to_params`` counts them."""
        h, d = self.hidden_size, self.dim_per_head
        return max(self.vocab_size * h, h * self.intermediate_size, h * self.num_heads * d)


def _llama(name: str, h: int, layers: int, heads: int, kv: int, inter: int, tied: bool = False) -> ModelShape:
    return ModelShape(name, h, layers, heads, kv, inter, 128256, tied)


def _qwen(name: str, h: int, layers: int, heads: int, kv: int, inter: int, vocab: int, tied: bool) -> ModelShape:
    return ModelShape(name, h, layers, heads, kv, inter, vocab, tied, qkv_bias=True)


KNOWN_SHAPES: dict[str, ModelShape] = {
    shape.name.lower(): shape
    for shape in (
        _llama("Llama-3.2-1B", 2048, 16, 32, 8, 8192, tied=True),
        _llama("Llama-3.2-3B", 3072, 28, 24, 8, 8192, tied=True),
        _llama("Llama-3.1-8B", 4096, 32, 32, 8, 14336),
        _llama("Llama-3.1-70B", 8192, 80, 64, 8, 28672),
        _llama("Llama-3.1-405B", 16384, 126, 128, 8, 53248),
        _qwen("Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936, True),
        _qwen("Qwen2.5-1.5B", 1536, 28, 12, 2, 8960, 151936, True),
        _qwen("Qwen2.5-3B", 2048, 36, 16, 2, 11008, 151936, True),
        _qwen("Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, False),
        _qwen("Qwen2.5-14B", 5120, 48, 40, 8, 13824, 152064, False),
        _qwen("Qwen2.5-32B", 5120, 64, 40, 8, 27648, 152064, False),
        _qwen("Qwen2.5-72B", 8192, 80, 64, 8, 29568, 152064, False),
        ModelShape("Mistral-7B", 4096, 32, 32, 8, 14336, 32768),
    )
}

# (family pattern in the lower-cased model name, size -> table key); first family that matches wins.
_FAMILIES: tuple[tuple[str, dict[str, str]], ...] = (
    (r"llama-?3\.2", {"1b": "llama-3.2-1b", "3b": "llama-3.2-3b"}),
    # Llama 3 / 3.1 / 3.3 share these shapes; SEA-LION v3/v3.5 and Swallow are Llama 3.1 fine-tunes.
    (r"llama-?3(?:\.[13])?(?![.\d])|sea-?lion-v3", {"8b": "llama-3.1-8b", "70b": "llama-3.1-70b",
                                                    "405b": "llama-3.1-405b"}),
    (r"qwen2\.5", {s: f"qwen2.5-{s}" for s in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b")}),
    (r"mistral-7b", {"7b": "mistral-7b"}),
)
_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?b)(?![a-z0-9])")


def match_known_shape(model_id: str) -> ModelShape | None:
    """The built-in shape for a hub id such as ``meta-llama/Llama-3.1-70B-Instruct``, or None."""
    name = model_id.lower().rsplit("/", 1)[-1].replace("_", "-")
    for pattern, sizes in _FAMILIES:
        if re.search(pattern, name):
            for size in _SIZE.findall(name):
                if size in sizes:
                    return KNOWN_SHAPES[sizes[size]]
    return None


def shape_from_config(config: dict[str, Any], name: str) -> ModelShape:
    """A shape from a transformers ``config.json`` (multimodal configs: their ``text_config``)."""
    config = config.get("text_config", config) if "hidden_size" not in config else config
    try:
        heads = int(config["num_attention_heads"])
        return ModelShape(
            name=name,
            hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            head_dim=config.get("head_dim"),
            qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
        )
    except KeyError as exc:
        raise EstimateError(f"{name}: config.json has no {exc.args[0]!r}; cannot size the model") from None


def resolve_shape(base_model: str) -> tuple[ModelShape, str]:
    """The base model's shape and where it came from; never downloads."""
    if base_model == TINY_DEFAULT:
        from tempa.recipes.tiny import TINY_MODEL_SHAPE, TINY_VOCAB_SIZE

        s = TINY_MODEL_SHAPE
        shape = ModelShape("tempa:tiny", s["hidden_size"], s["num_hidden_layers"], s["num_attention_heads"],
                           s["num_key_value_heads"], s["intermediate_size"], TINY_VOCAB_SIZE)
        return shape, "the embedded tiny default"
    path = Path(base_model)
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise EstimateError(f"base_model {base_model}: folder has no config.json; cannot size the model")
        return shape_from_config(json.loads(config.read_text(encoding="utf-8")), path.name), f"{config}"
    shape = match_known_shape(base_model)
    if shape is None:
        known = ", ".join(s.name for s in KNOWN_SHAPES.values())
        raise EstimateError(
            f"base_model {base_model!r}: not a local folder and not in the built-in shape table ({known}); "
            f"download its config.json (huggingface-cli download {base_model} config.json --local-dir DIR) "
            "and point base_model at DIR"
        )
    return shape, f"built-in table ({shape.name}, matched from the id; no download)"


# --------------------------------------------------------------------------- tokens


@dataclass
class TokenCount:
    tokens: int | None  # per epoch (per round), over the sources that could be sized; None: none could
    rows: int | None  # training samples (preference: pairs) per epoch
    source: str  # where the numbers come from
    notes: list[str] = field(default_factory=list)
    bound: str = ""  # ">=": some sources could not be sized; "<=": some are upper bounds; "~": both


def avg_tokens_per_row(source: Any, avg_on: int, avg_off: int) -> int:
    if source.thinking_mode == "off":
        return avg_off
    if source.thinking_mode == "mixed":
        ratio = source.thinking_ratio or 0.0
        return round(ratio * avg_on + (1 - ratio) * avg_off)
    return avg_on


def count_local_rows(path: str) -> int | None:
    """Rows of a local JSONL/CSV/Parquet file without loading it; None for anything else."""
    file = Path(path)
    if not file.is_file():
        return None
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(file).metadata.num_rows)
    if suffix in (".jsonl", ".csv"):
        with open(file, "rb") as handle:
            lines = sum(1 for line in handle if line.strip())
        return lines - 1 if suffix == ".csv" else lines
    return None


@dataclass(frozen=True)
class SourceSize:
    """One source's rows per epoch (None: unknown), tokens per row, and how they were found."""

    rows: int | None
    tokens_per_row: int
    how: str
    at_most: bool = False  # an upper bound (a synthesize stage keeps at most this many)


def synthesized_size(producer: Any, run_dir: Path | None) -> SourceSize:
    """What a synthesize stage writes: counted from its output once it has run, else an upper bound.

    Each prompt keeps its best answer (``select.strategy: best``) or up to ``sampling.n`` (``all``).
    A row is a prompt plus an answer filling ``COMPLETION_FILL`` of ``max_new_tokens``, and, with a
    second turn, a follow-up and a second answer.
    """
    sampling = producer.sampling
    per_row = AVG_PROMPT_TOKENS + int(COMPLETION_FILL * sampling.max_new_tokens)
    if producer.second_turn is not None:
        per_row += int(COMPLETION_FILL * producer.second_turn.followup_max_new_tokens)
        per_row += int(COMPLETION_FILL * sampling.max_new_tokens)
    stage_dir = Path(run_dir) / producer.name if run_dir is not None else None
    if stage_dir is not None and (stage_dir / DONE).is_file() and (stage_dir / OUTPUT_FILE).is_file():
        return SourceSize(count_local_rows(str(stage_dir / OUTPUT_FILE)), per_row, f"{producer.name}'s output")
    prompts = producer.prompts.limit or count_local_rows(producer.prompts.path)
    if prompts is None:
        return SourceSize(None, per_row, f"unknown size: set prompts.limit on stage {producer.name}")
    per_prompt = 1 if producer.select.strategy == "best" else sampling.n
    how = (f"at most {prompts:,} prompts x {per_prompt} from stage {producer.name} (fewer: rows under min_score "
           "are dropped; tokens/row from its max_new_tokens)")
    return SourceSize(prompts * per_prompt, per_row, how, at_most=True)


def source_size(
    source: Any, heldout: float | int, avg: int, producers: dict[str, Any], run_dir: Path | None
) -> SourceSize:
    """Rows per epoch of one source (held-out rows removed, weight applied) at ``avg`` tokens per row."""
    if source.tokens is not None:
        return SourceSize(max(1, source.tokens // avg), avg, f"token budget {source.tokens:,}")
    if source.rows is not None:
        return SourceSize(source.rows, avg, f"rows {source.rows:,}")
    producer = producers.get(source.stage_ref or "")
    if producer is not None and producer.kind == "synthesize":
        size = synthesized_size(producer, run_dir)
    else:
        counted = count_local_rows(source.path)
        size = SourceSize(counted, avg, f"{counted:,} rows in the file" if counted is not None else
                          "unknown size (a hub dataset or folder with no rows/tokens setting)")
    if size.rows is None:
        return size
    kept = size.rows * (1 - heldout) if isinstance(heldout, float) else max(0, size.rows - heldout)
    weight = source.weight if source.weight is not None else 1.0
    held = f" less {heldout:g} held out" if heldout else ""
    return replace(size, rows=round(kept * weight), how=f"{size.how}{held} x weight {weight:g}")


def tokens_from_recipe(
    stage: Any, avg_on: int, avg_off: int, producers: dict[str, Any] | None = None, run_dir: Path | None = None
) -> TokenCount:
    total_tokens, total_rows, notes, unknown, upper = 0, 0, [], [], []
    data = stage.data
    for source in data.sources:
        size = source_size(source, data.heldout_for(source), avg_tokens_per_row(source, avg_on, avg_off),
                           producers or {}, run_dir)
        if size.rows is None:
            unknown.append(source.name)
            notes.append(f"source {source.name}: {size.how}; set rows or tokens to estimate it")
            continue
        tokens = source.tokens if source.tokens is not None else size.rows * size.tokens_per_row
        total_tokens, total_rows = total_tokens + tokens, total_rows + size.rows
        if size.at_most:
            upper.append(source.name)
        notes.append(f"source {source.name}: {size.how}, ~{size.tokens_per_row:,} tokens/row assumed "
                     f"({source.thinking_mode})")
    where = "recipe sizes x assumed tokens/row"
    if len(unknown) == len(data.sources):
        return TokenCount(None, None, where, notes)
    if unknown:
        where += f"; at least: {', '.join(unknown)} not counted"
    bound = {(True, False): ">=", (False, True): "<=", (True, True): "~"}.get((bool(unknown), bool(upper)), "")
    return TokenCount(total_tokens, total_rows, where, notes, bound=bound)


def tokens_from_stats(mix_file: Path) -> TokenCount:
    mix = json.loads(mix_file.read_text(encoding="utf-8"))
    total = mix["total"]
    samples = sum(int(s.get("samples_kept", s.get("rows_kept", 0))) for s in mix["sources"])
    return TokenCount(int(total["tokens_kept"]), samples or int(total["rows_kept"]), f"data stats ({mix_file})")


def preference_tokens(stage: Any, train: dict[str, Any]) -> TokenCount:
    """Tokens of one round's pairs: one pair per prompt, two sequences of prompt + sampled answer."""
    prompts = stage.prompts.limit or count_local_rows(stage.prompts.path)
    sampling = stage.sampling
    per_sequence = min(int(train.get("max_length") or 1024),
                       AVG_PROMPT_TOKENS + int(COMPLETION_FILL * sampling.max_new_tokens))
    note = (f"prompts: {prompts if prompts is not None else 'unknown (set prompts.limit)'}; one pair per prompt "
            f"(an upper bound: pairs under min_margin are dropped), 2 x ~{per_sequence:,} tokens per pair "
            f"({AVG_PROMPT_TOKENS} prompt + {100 * COMPLETION_FILL:.0f}% of max_new_tokens "
            f"{sampling.max_new_tokens}); sampling {sampling.n} answers per prompt and scoring them not included")
    if prompts is None:
        return TokenCount(None, None, "prompts x assumed pair length", [note])
    return TokenCount(2 * prompts * per_sequence, prompts, "prompts x assumed pair length", [note])


def stage_tokens(stage: Any, train: dict[str, Any], run_dir: Path | None, avg_on: int, avg_off: int,
                 producers: dict[str, Any] | None = None) -> TokenCount:
    """One epoch's tokens of a training stage; ``producers``: the recipe's stages by name, for ``stage:`` sources."""
    if stage.kind == "preference":
        return preference_tokens(stage, train)
    if run_dir is not None:
        mix_file = Path(run_dir) / stage.name / "data" / "mix.json"
        if mix_file.is_file():
            return tokens_from_stats(mix_file)
    if getattr(stage, "data", None) is None:
        return TokenCount(None, None, "no data block", [])
    return tokens_from_recipe(stage, avg_on, avg_off, producers, run_dir)


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

    @property
    def model_states(self) -> float:
        return self.params + self.grads + self.optimizer + self.gathered + self.reference

    @property
    def total(self) -> float:
        return self.model_states + self.activations

    @property
    def fits(self) -> bool:
        return self.total <= USABLE_MEMORY * self.capacity


def zero3_model_states_bytes(parameters: int, largest_layer: int, gpus: int) -> dict[str, float]:
    """Per-GPU bytes of parameters, gradients, optimizer state and the gathered layer under ZeRO-3."""
    return {
        "params": PARAM_BYTES * parameters / gpus,
        "grads": GRAD_BYTES * parameters / gpus,
        "optimizer": OPTIMIZER_BYTES * parameters / gpus,
        "gathered": GATHER_BYTES * largest_layer,
    }


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


def needs_reference(kind: str, train: dict[str, Any]) -> bool:
    """A preference stage keeps a reference model unless its log-probs are precomputed."""
    return kind == "preference" and not train.get("precompute_ref_log_probs", False)


@dataclass(frozen=True)
class Workload:
    """What memory depends on, besides the model and the hardware."""

    micro_tokens: int  # tokens of one micro-batch per GPU
    train: dict[str, Any]
    lora: Any = None
    reference: bool = False


def memory_estimate(shape: ModelShape, hardware: Hardware, work: Workload) -> MemoryEstimate:
    states = zero3_model_states_bytes(shape.parameters, shape.largest_layer_parameters, hardware.gpus)
    if work.lora is not None:  # frozen bf16 (or 4-bit) base; adapter states are negligible
        states = {"params": (0.55 if work.lora.load_in_4bit else 2) * shape.parameters / hardware.gpus,
                  "grads": 0.0, "optimizer": 0.0, "gathered": 2 * shape.largest_layer_parameters}
    activations = activation_bytes(shape, work.micro_tokens, checkpointing=checkpointing(work.train),
                                   liger=liger(work.train))
    reference = 2 * shape.parameters / hardware.gpus if work.reference else 0.0
    return MemoryEstimate(**{k: v / GIB for k, v in states.items()}, activations=activations / GIB,
                          capacity=hardware.gpu.memory_gib, reference=reference / GIB)


def gpus_needed(shape: ModelShape, hardware: Hardware, work: Workload) -> int | None:
    """The fewest GPUs (whole nodes past one) on which the stage fits under ZeRO-3; None past 1024."""
    candidates = [n for n in (1, 2, 4) if n < hardware.gpus_per_node] + list(range(8, 1025, 8))
    for gpus in candidates:
        if memory_estimate(shape, hardware.with_gpus(gpus), work).fits:
            return gpus
    return None


def optimizer_offload_gib(shape: ModelShape, hardware: Hardware) -> tuple[float, float]:
    """(GPU GiB for model states, host GiB per node) with the optimizer offloaded to CPU, per DeepSpeed."""
    gpu = GATHER_BYTES * shape.largest_layer_parameters + 2 * shape.parameters / hardware.gpus
    host = 16 * shape.parameters / hardware.nodes * 1.5  # DeepSpeed's zero_init estimate, 1.5x buffer
    return gpu / GIB, host / GIB


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
    memory: MemoryEstimate
    hours: float | None
    fits: bool
    bound: str = ""  # tokens, steps and hours are at least (">="), at most ("<=") or about ("~") these
    gpus_needed: int | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _batch(train: dict[str, Any], hardware: Hardware, per_sequence: float, sequences: int) -> tuple[int, int]:
    """(micro-batch tokens per GPU, tokens per optimizer step); ``sequences`` per row (2 for a pair)."""
    max_length = int(train.get("max_length") or 1024)
    per_device = int(train.get("per_device_train_batch_size", 8)) * sequences
    accumulation = int(train.get("gradient_accumulation_steps", 1))
    micro = per_device * max_length  # packed rows, or the worst case of padding to max_length
    per_sequence = max_length * PACKING_FILL if train.get("packing") else min(per_sequence, max_length)
    return micro, int(per_device * accumulation * hardware.gpus * per_sequence)


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
    trained = int(count.tokens * epochs)
    return epochs, max(1, math.ceil(trained / max(1, tokens_per_step))), trained


def offloads_optimizer(loaded: LoadedRecipe) -> bool:
    """Whether the recipe's accelerate config puts the optimizer state in CPU RAM (DeepSpeed offload)."""
    import yaml

    from tempa.recipes.launcher import accelerate_config_path

    launch = loaded.recipe.launch
    if launch.launcher != "accelerate":
        return False
    try:
        config = yaml.safe_load(accelerate_config_path(launch.accelerate_config).read_text()) or {}
    except (OSError, yaml.YAMLError, ValueError):
        return False
    return (config.get("deepspeed_config") or {}).get("offload_optimizer_device") in ("cpu", "nvme")


def estimate_stage(stage: Any, shape: ModelShape, hardware: Hardware, mfu: float, run_dir: Path | None,
                   avg_on: int, avg_off: int, *, offload: bool = False,
                   producers: dict[str, Any] | None = None) -> StageEstimate:
    train = stage.train_args() if hasattr(stage, "train_args") else dict(getattr(stage, "train", {}))
    preference = stage.kind == "preference"
    count = stage_tokens(stage, train, run_dir, avg_on, avg_off, producers)
    sequences = 2 if preference else 1
    per_sequence = count.tokens / (count.rows * sequences) if count.tokens and count.rows else avg_off
    micro, per_step = _batch(train, hardware, per_sequence, sequences)
    epochs, steps, trained = _schedule(count, train, per_step, int(getattr(stage, "rounds", 1)))
    work = Workload(micro, train, getattr(stage, "lora", None), needs_reference(stage.kind, train))
    memory = memory_estimate(shape, hardware, work)
    if offload and work.lora is None:
        # fp32 master weights + Adam moments live in host RAM; the GPU keeps bf16 shards + gathers
        gpu_states, host = optimizer_offload_gib(shape, hardware)
        memory = replace(memory, params=gpu_states - memory.gathered, grads=0.0, optimizer=0.0)
    flops_per_token = 6 * shape.parameters + (2 * shape.parameters if preference else 0)  # + reference forward
    peak = hardware.gpus * hardware.gpu.peak_tflops * 1e12 * mfu
    hours = flops_per_token * trained / peak / 3600 if trained else None
    estimate = StageEstimate(stage.name, stage.kind, count.tokens, count.source, epochs, trained, steps, per_step,
                             micro, memory, hours, memory.fits, bound=count.bound, notes=list(count.notes))
    if offload and work.lora is None:
        estimate.notes.append(f"optimizer offloaded to CPU: ~{host:.0f} GiB host RAM per node (DeepSpeed's estimate)")
    _annotate(estimate, shape, hardware, work, preference)
    return estimate


def _annotate(estimate: StageEstimate, shape: ModelShape, hardware: Hardware, work: Workload,
              preference: bool) -> None:
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
    if not estimate.fits:
        estimate.gpus_needed = gpus_needed(shape, hardware, work)
        estimate.warnings.append(_will_not_fit(estimate, shape, hardware, work))


def _will_not_fit(estimate: StageEstimate, shape: ModelShape, hardware: Hardware, work: Workload) -> str:
    mem = estimate.memory
    message = (f"stage {estimate.name} will not fit on {hardware.label}: ~{mem.total:.0f} GiB per GPU needed "
               f"(model states {mem.model_states:.0f} + activations {mem.activations:.0f}) of "
               f"{mem.capacity:.0f} GiB ({100 * USABLE_MEMORY:.0f}% usable)")
    options = []
    if estimate.gpus_needed is not None:
        options.append(f"ZeRO-3 over >= {estimate.gpus_needed}x{hardware.gpu.name}")
    if work.lora is None:
        gpu, host = optimizer_offload_gib(shape, hardware)
        options.append(f"launch.accelerate_config: zero3-offload (~{gpu + mem.reference + mem.activations:.0f} GiB per GPU, "
                       f"~{host:.0f} GiB host RAM per node, DeepSpeed's estimate)")
    if mem.activations > 0.25 * mem.capacity:
        kernels = "" if liger(work.train) else " or use_liger_kernel: true"
        options.append(f"a smaller per_device_train_batch_size x max_length (micro-batch {work.micro_tokens:,} "
                       f"tokens){kernels}")
    return message + ("; options: " + "; ".join(options) if options else "")


def estimate_recipe(
    loaded: LoadedRecipe,
    hardware: str = "8xH100",
    mfu: float = 0.4,
    *,
    run_dir: Path | None = None,
    avg_tokens_thinking_on: int = AVG_TOKENS_THINKING_ON,
    avg_tokens_thinking_off: int = AVG_TOKENS_THINKING_OFF,
) -> list[StageEstimate]:
    """One :class:`StageEstimate` per training stage of ``loaded``, in run order."""
    if not 0 < mfu <= 1:
        raise EstimateError(f"mfu {mfu}: expected a fraction in (0, 1], e.g. 0.4")
    machine = parse_hardware(hardware)
    shape, _ = resolve_shape(loaded.recipe.base_model)
    offload = offloads_optimizer(loaded)
    producers = {stage.name: stage for stage in loaded.stages}
    return [
        estimate_stage(stage, shape, machine, mfu, run_dir, avg_tokens_thinking_on, avg_tokens_thinking_off,
                       offload=offload, producers=producers)
        for stage in loaded.stages
        if stage.kind in TRAINING_KINDS  # type: ignore[attr-defined]
    ]


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
    """A readable estimate of every training stage: tokens, steps, memory per GPU, hours, warnings."""
    machine = parse_hardware(hardware)
    shape, shape_source = resolve_shape(loaded.recipe.base_model)
    estimates = estimate_recipe(loaded, hardware, mfu, run_dir=run_dir)
    lines = [
        f"estimate for {machine.label} ({machine.gpu.peak_tflops:.0f} TFLOP/s bf16 dense, "
        f"{machine.gpu.memory_gib:.0f} GiB per GPU), DeepSpeed ZeRO-3, bf16 + AdamW, MFU {100 * mfu:.0f}%",
        f"model {loaded.recipe.base_model}: {_count(shape.parameters)} parameters, shape from {shape_source}",
    ]
    if not estimates:
        return "\n".join([*lines, "no training stages to estimate"])
    rows = [("stage", "tokens/epoch", "epochs", "trained", "steps", "tokens/step", "params", "grads", "optim",
             "gathered", "activ.", "total/GPU", "fits", "hours")]
    for e in estimates:
        m = e.memory
        b = e.bound
        hours = _hours(e.hours)
        hours = hours if b == "<=" and hours.startswith("<") else b + hours  # "<0.1" already bounds it
        rows.append((e.name, b + _count(e.tokens_per_epoch), f"{e.epochs:.3g}", b + _count(e.trained_tokens),
                     b + _count(e.steps), _count(e.tokens_per_step), f"{m.params:.1f}", f"{m.grads:.1f}",
                     f"{m.optimizer:.1f}", f"{m.gathered:.1f}", f"{m.activations:.1f}", f"{m.total:.1f} GiB",
                     "yes" if e.fits else "NO", hours))
    lines += _table(rows)
    lines += _footnotes(estimates, loaded)
    return "\n".join(lines)


def _wrap(text: str, indent: str = "", width: int = 110) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_on_hyphens=False)


def _footnotes(estimates: list[StageEstimate], loaded: LoadedRecipe) -> list[str]:
    out = ["", "tokens:"]
    for e in estimates:
        out += _wrap(f"{e.name}: {e.tokens_source}; micro-batch {e.micro_batch_tokens:,} tokens per GPU", "  ")
        for note in e.notes:
            out += _wrap(note, "    ")
    out += _wrap(
        "memory, GiB per GPU: params = bf16 copy + fp32 master (6 B/param), grads fp32 (4 B), optim = Adam moments "
        "(8 B), each divided over the GPUs; gathered = the largest layer x 4 B; activ. = one micro-batch with "
        "activation checkpointing, plus the LM head's chunked loss; kernels as tempa picks them on GPU with the "
        "gpu extra installed (flash-attention 2, Liger; set use_liger_kernel: false to plan without Liger); "
        f"fits = total <= {100 * USABLE_MEMORY:.0f}% of GPU memory"
    )
    out += _wrap(
        f"steps assume BFD packing fills {100 * PACKING_FILL:.0f}% of each row; hours = 6 x params x trained "
        "tokens / (GPUs x peak x MFU); '>=': some data could not be sized; '<=': an upper bound (a synthesize "
        "stage's output); '~': both"
    )
    launch = loaded.recipe.launch.accelerate_config
    if offloads_optimizer(loaded):
        out += _wrap(f"'{launch}' offloads the optimizer to CPU: params = the bf16 shard only; the fp32 master "
                     "weights, gradients and Adam moments live in host RAM")
    elif launch not in ("zero3", "zero3-multinode"):
        out.append(f"note: the recipe launches with accelerate_config '{launch}'; this estimate assumes ZeRO-3")
    warnings = [w for e in estimates for w in e.warnings]
    if warnings:
        out.append("")
        for warning in warnings:
            out += _wrap(f"WARNING: {warning}")
    return out
