"""mergekit, driven through its Python API: compatibility checks, the config, the run.

mergekit treats a path that does not exist as a hub id, so every model here is an absolute
folder, checked to exist and to hold safetensors weights: mergekit would unpickle a folder with
only ``pytorch_model.bin`` (even while merely indexing it), so such a folder is refused before
mergekit sees it. Merges run tensor by tensor (safetensors read with pread, see
``tensor_reader``), writing shards as they go, so a merge needs little more RAM than the largest
tensor times the number of inputs, plus one output shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tempa.merge.merge_config import METHODS, MergeStageConfig
from tempa.merge.model_files import weights_problem
from tempa.merge.tensor_reader import unmapped_inputs
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


@dataclass(frozen=True)
class MergeInput:
    """A model to merge: its display name and absolute folder."""

    name: str
    path: Path


def _read_config(model: MergeInput) -> dict[str, Any]:
    path = model.path / "config.json"
    if not path.is_file():
        raise StageError(f"{model.name} ({model.path}) has no config.json: not a model folder")
    return json.loads(path.read_text(encoding="utf-8"))


def _tokenizer_vocab(path: Path) -> dict[str, int] | None:
    """Token -> id of a folder's tokenizer.json (added tokens included); None without one."""
    file = path / "tokenizer.json"
    if not file.is_file():
        return None
    data = json.loads(file.read_text(encoding="utf-8"))
    vocab = data.get("model", {}).get("vocab")
    if isinstance(vocab, list):  # unigram: [[piece, score], ...]
        vocab = {piece[0]: index for index, piece in enumerate(vocab)}
    vocab = dict(vocab or {})
    for token in data.get("added_tokens", []):
        vocab[token["content"]] = token["id"]
    return vocab


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
    first_vocab = _tokenizer_vocab(first.path)
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
        vocab = _tokenizer_vocab(other.path)
        if first_vocab is not None and vocab is not None and vocab != first_vocab:
            raise StageError(
                f"cannot merge {first.name} ({first.path}) with {other.name} ({other.path}): "
                f"vocabularies differ: {_describe_vocab_difference(first_vocab, vocab)}"
            )


def _per_model(value: float | list[float] | None, index: int) -> float | None:
    if isinstance(value, list):
        return value[index]
    return value


def build_mergekit_config(
    config: MergeStageConfig, models: list[MergeInput], base: MergeInput | None
) -> dict[str, Any]:
    """The mergekit YAML (as a dict) for ``models``, best first; paths absolute."""
    info = METHODS[config.method]
    entries = []
    for index, model in enumerate(models):
        parameters: dict[str, Any] = {}
        if info.weights:
            parameters["weight"] = config.weights[index] if config.weights else 1.0 / len(models)
        if info.density and (density := _per_model(config.density, index)) is not None:
            parameters["density"] = density
        entry: dict[str, Any] = {"model": str(model.path)}
        if parameters:
            entry["parameters"] = parameters
        entries.append(entry)
    document: dict[str, Any] = {"merge_method": config.method, "models": entries}
    if info.base != "none" and base is not None:
        document["base_model"] = str(base.path)
    if config.parameters:
        document["parameters"] = dict(config.parameters)
    if config.dtype:
        document["dtype"] = config.dtype
    if config.out_dtype:
        document["out_dtype"] = config.out_dtype
    return document


def run_mergekit(
    document: dict[str, Any], out_dir: Path, config: MergeStageConfig, *, seed: int, config_path: Path
) -> None:
    """Write ``document`` to ``config_path`` and merge into ``out_dir`` (an empty, temporary folder)."""
    from mergekit.common import parse_kmb
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    for reference in [m["model"] for m in document["models"]] + [document.get("base_model")]:
        if reference is not None and not (os.path.isabs(reference) and os.path.isdir(reference)):
            raise StageError(
                f"merge input {reference} is not an existing absolute folder (mergekit would read a hub id)"
            )
        if reference is not None and (problem := weights_problem(Path(reference))) is not None:
            raise StageError(f"merge input: {problem}")
    text = yaml.safe_dump(document, sort_keys=False)
    config_path.write_text(text, encoding="utf-8")
    try:
        merge_config = MergeConfiguration.model_validate(document)
    except Exception as error:  # pydantic / RuntimeError from mergekit's validators
        raise StageError(f"mergekit rejected {config_path}: {str(error).splitlines()[0]}") from None
    options = MergeOptions(
        device=config.options.device,
        cuda=config.options.device.startswith("cuda"),
        lazy_unpickle=False,
        low_cpu_memory=config.options.low_cpu_memory,
        out_shard_size=parse_kmb(config.options.out_shard_size),
        num_threads=config.options.num_threads,
        allow_crimes=config.options.allow_crimes,
        copy_tokenizer=False,
        write_model_card=False,
        safe_serialization=True,
        random_seed=seed,
        quiet=False,
    )
    with unmapped_inputs(merge_config):
        run_merge(merge_config, str(out_dir), options=options, config_source=text)
