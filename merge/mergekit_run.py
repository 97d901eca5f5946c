"""mergekit, driven through its Python API: compatibility checks, the config, the run.

mergekit treats a path that does not exist as a hub id, so every model here is an absolute
folder, checked to exist and to hold safetensors weights: mergekit would unpickle a folder with
only ``pytorch_model.bin`` (even while merely indexing it), so such a folder is refused before
mergekit sees it. Merges run tensor by tensor (safetensors read with pread, see
``tensor_reader``), writing shards as they go, so a merge needs little more RAM than the largest
tensor in float32 (the arithmetic's default dtype) times the number of inputs, plus one output shard.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tempa.alignment.model_files import tokenizer_vocab, vocab_conflicts, weights_problem
from tempa.merge.merge_config import OPTION_DEFAULTS, MergeStageConfig, method_spec
from tempa.sft.stage_api import StageError

# config.json fields that must agree for two checkpoints to be mergeable.
ARCHITECTURE_FIELDS = (
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
)
VOCAB_FIELDS = ("vocab_size",)
# The dtypes a merge may save in (mergekit's names); anything else (f64, fp8) is left to mergekit.
MERGE_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


@dataclass(frozen=True)
class MergeInput:
    """A model to merge: its display name, absolute folder and place among the stage's models."""

    name: str
    path: Path
    # Its index in the stage's `models` (or its rank in `select`), which its `weights` / `density` entry has:
    # the base model leaving the list, or moving to the front, must not hand its entry to another model.
    slot: int | None = None


def _read_config(model: MergeInput) -> dict[str, Any]:
    path = model.path / "config.json"
    if not path.is_file():
        raise StageError(f"{model.name} ({model.path}) has no config.json: not a model folder")
    return json.loads(path.read_text(encoding="utf-8"))


def _describe_vocab_difference(a: dict[str, int], b: dict[str, int]) -> str:
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    moved = sorted(t for t in set(a) & set(b) if a[t] != b[t])
    parts = [f"{len(a)} vs {len(b)} tokens"]
    if only_a:
        parts.append(f"{len(only_a)} only in the first (e.g. {only_a[0]!r})")
    if only_b:
        parts.append(f"{len(only_b)} only in the second (e.g. {only_b[0]!r})")
    if moved:
        parts.append(f"{len(moved)} with different ids (e.g. {moved[0]!r})")
    return ", ".join(parts)


def check_compatible(models: list[MergeInput]) -> None:
    """Refuse, in one line naming both models, to merge checkpoints that differ in architecture or vocabulary."""
    first, first_config = models[0], _read_config(models[0])
    first_vocab = tokenizer_vocab(first.path)
    for other in models[1:]:
        config = _read_config(other)
        for field in ARCHITECTURE_FIELDS + VOCAB_FIELDS:
            if field in first_config or field in config:
                mine, theirs = first_config.get(field), config.get(field)
                if mine != theirs:
                    what = "vocabularies differ" if field in VOCAB_FIELDS else "architectures differ"
                    raise StageError(
                        f"cannot merge {first.name} ({first.path}) with {other.name} ({other.path}): "
                        f"{what}: {field} {mine!r} vs {theirs!r}"
                    )
        vocab = tokenizer_vocab(other.path)
        if first_vocab is not None and vocab is not None and vocab_conflicts(first_vocab, vocab):
            raise StageError(
                f"cannot merge {first.name} ({first.path}) with {other.name} ({other.path}): "
                f"vocabularies differ: {_describe_vocab_difference(first_vocab, vocab)}"
            )


def saved_dtype(folder: Path) -> str | None:
    """The dtype (mergekit's name) most of ``folder``'s floating-point tensors are saved in, from its first
    safetensors file's header (no tensor is read); None when it is none of :data:`MERGE_DTYPES`."""
    from tempa.merge.tensor_reader import DTYPES, read_header

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        path = folder / shards[0] if shards else None  # an index naming no shard: nothing to tell the dtype by
    else:
        path = next(
            iter(sorted(folder.glob("*.safetensors"), key=lambda p: p.name != "model.safetensors")), None
        )
    if path is None:
        return None
    names = {torch_dtype: name for name, torch_dtype in DTYPES.items()}
    counts: dict[str, int] = {}
    for entry in read_header(str(path)).values():
        if entry.dtype.is_floating_point:
            counts[names[entry.dtype]] = counts.get(names[entry.dtype], 0) + 1
    return MERGE_DTYPES.get(max(counts, key=counts.__getitem__)) if counts else None


def output_dtype(config: MergeStageConfig, models: list[MergeInput]) -> str | None:
    """The dtype the merged weights are saved in: ``out_dtype``, else ``dtype`` (mergekit's own rule), else the
    one the merged models were saved in (float32 when they differ: it holds each exactly). Left to mergekit, a
    task-vector merge saves in the base model's dtype: bf16 checkpoints over an f32 base came out f32, twice the
    size of what was trained."""
    if config.out_dtype or config.dtype:
        return config.out_dtype  # None with `dtype`: mergekit then saves in it
    found = {saved_dtype(model.path) for model in models}
    if None in found:
        return None
    return found.pop() if len(found) == 1 else "float32"


def arithmetic_dtype(config: MergeStageConfig, inputs: list[MergeInput]) -> str | None:
    """The dtype the merge computes in: ``dtype``, else float32 when every input is saved in float32, bfloat16 or
    float16. Left to mergekit, the task-vector methods (ties, dare, della, task_arithmetic, ...) compute in the
    base's dtype: bf16 checkpoints got bf16 task vectors, their weights rounded to bf16 (0.3 became 0.30078) and bf16
    sums, so about half the merged values were off by a bit or more. In float32 each value is rounded once, when it is
    saved (:func:`output_dtype`); the cost is twice the memory per tensor while it is merged."""
    if config.dtype:
        return config.dtype
    return "float32" if all(saved_dtype(model.path) is not None for model in inputs) else None


def _per_model(value: float | list[float] | None, index: int) -> float | None:
    if isinstance(value, list):
        return value[index]
    return value


def _reference(path: Path) -> Any:
    from mergekit.common import ModelPath, ModelReference

    # Built field by field: parsing a string would read "+" as a LoRA and "@" as a revision.
    return ModelReference(model=ModelPath(path=str(path)))


def build_mergekit_config(config: MergeStageConfig, models: list[MergeInput], base: MergeInput | None) -> Any:
    """mergekit's ``MergeConfiguration`` for ``models``, best first; paths absolute.

    Per-model ``weight`` (default: equal) and ``density`` go on each model the method gives them
    to (a parameter mergekit scopes to non-base inputs skips the base), each model its own entry
    (its ``slot``, else its position); ``parameters`` apply to all.
    """
    from mergekit.config import InputModelDefinition, MergeConfiguration
    from mergekit.merge_methods import ParameterScope

    scopes = {p.name: p.scope for p in method_spec(config.method).parameters}
    entries = []
    for position, model in enumerate(models):
        is_base = base is not None and model.path == base.path
        index = position if model.slot is None else model.slot
        knobs = {"weight": config.weights[index] if config.weights else 1.0 / len(models),
                 "density": _per_model(config.density, index)}
        parameters = {
            name: value
            for name, value in knobs.items()
            if name in scopes and value is not None and not (is_base and scopes[name] == ParameterScope.NON_BASE)
        }
        entries.append(InputModelDefinition(model=_reference(model.path), parameters=parameters or None))
    return MergeConfiguration(
        merge_method=config.method,
        models=entries,
        base_model=None if base is None else _reference(base.path),
        parameters=dict(config.parameters) or None,
        dtype=arithmetic_dtype(config, models + ([base] if base is not None else [])),
        out_dtype=output_dtype(config, models),
    )


def mergekit_options(config: MergeStageConfig, *, seed: int, trust_remote_code: bool) -> Any:
    """mergekit's ``MergeOptions``: tempa's defaults, the stage's ``options``, then what tempa owns."""
    from mergekit.common import parse_kmb
    from mergekit.options import MergeOptions

    options = dict(config.options)
    if isinstance(options.get("out_shard_size"), str):
        options["out_shard_size"] = parse_kmb(options["out_shard_size"])
    defaults = dict(OPTION_DEFAULTS)
    if {"device", "cuda", "gpu_rich"} & set(options):
        defaults.pop("device")  # mergekit derives the device from cuda / gpu_rich
    return MergeOptions(
        **defaults,
        **options,
        copy_tokenizer=False,
        write_model_card=False,
        safe_serialization=True,
        random_seed=seed,
        trust_remote_code=trust_remote_code,
    )


def mergekit_yaml(merge_config: Any) -> str:
    """``merge_config`` as mergekit's YAML, model paths with spaces or quotes included.

    mergekit serialises such a reference as itself (it meant a mapping), and pydantic then stops with "Circular
    reference detected": every merge of a run under `~/My Drive/` failed after all training. Each reference is
    dumped as a placeholder and written back as a quoted YAML string.
    """
    paths: dict[str, str] = {}

    def placeholder(reference: Any) -> Any:
        name = f"tempa-merge-input-{len(paths)}"
        paths[name] = str(reference.model.path)
        return _reference(name)

    stand_in = merge_config.model_copy(update={
        "models": None if merge_config.models is None else [
            entry.model_copy(update={"model": placeholder(entry.model)}) for entry in merge_config.models],
        "base_model": None if merge_config.base_model is None else placeholder(merge_config.base_model),
    })
    text = stand_in.to_yaml()
    for name, path in paths.items():
        text = re.sub(rf"(?<=: ){re.escape(name)}$", lambda _m, path=path: json.dumps(path, ensure_ascii=False), text, flags=re.MULTILINE)
    return text


def run_mergekit(merge_config: Any, out_dir: Path, options: Any, *, config_path: Path) -> None:
    """Write ``merge_config`` to ``config_path`` (mergekit YAML) and merge into ``out_dir`` (an empty, temporary folder)."""
    from mergekit.merge import run_merge

    from tempa.merge.tensor_reader import unmapped_inputs

    for reference in merge_config.referenced_models():
        path = str(reference.model.path)
        if not (os.path.isabs(path) and os.path.isdir(path)):
            raise StageError(f"merge input {path} is not an existing absolute folder (mergekit would read a hub id)")
        if (problem := weights_problem(Path(path))) is not None:
            raise StageError(f"merge input: {problem}")
    text = mergekit_yaml(merge_config) + "\n"
    config_path.write_text(text, encoding="utf-8")
    with unmapped_inputs(merge_config):
        # mergekit rewrites the configuration it is given (models -> modules); keep the caller's intact.
        run_merge(merge_config.model_copy(deep=True), str(out_dir), options=options, config_source=text)
