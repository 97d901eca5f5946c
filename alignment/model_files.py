"""What a model folder tempa reads must hold: a config and safetensors weights, never pickles.

Pickled weights (``pytorch_model.bin``, ``*.pt``, ...) run code when they are loaded, so tempa
refuses them everywhere it reads a model: the recipe's base model, merge inputs, the final
folder. A recipe that sets ``allow_pickle_weights: true`` has its pickled base model converted
to safetensors once, in the cache (:func:`convert_to_safetensors`); everything after that reads
safetensors only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

_REFUSAL = "tempa reads safetensors only, since pickles can run code when loaded"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# The base model's licence and use policy travel with every model made from it (the Llama 3 licence asks for a
# copy with each redistribution); the weights' own folder rarely has them, the base model's folder does.
LICENSE_FILE_PATTERNS = ("LICENSE*", "LICENCE*", "USE_POLICY*", "NOTICE*")


def tokenizer_vocab(path: Path) -> dict[str, int] | None:
    """Token -> id of a folder's tokenizer.json (added tokens included); None without one."""
    file = Path(path) / "tokenizer.json"
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


def vocab_conflicts(a: dict[str, int], b: dict[str, int]) -> list[tuple[str, str, str]]:
    """Where two vocabularies disagree, as (what, in ``a``, in ``b``): an id both have that names different tokens, or
    a token both have at different ids. A token only one has, at an id the other leaves free (a pad token added past
    the base's vocabulary), is no conflict: text encodes to the rows the weights learnt either way."""
    tokens_a = {index: token for token, index in a.items()}
    tokens_b = {index: token for token, index in b.items()}
    ids = [(f"id {i}", repr(tokens_a[i]), repr(tokens_b[i]))
           for i in sorted(tokens_a.keys() & tokens_b.keys()) if tokens_a[i] != tokens_b[i]]
    moved = [(repr(token), f"id {a[token]}", f"id {b[token]}") for token in sorted(a.keys() & b.keys())
             if a[token] != b[token]]
    return ids + moved


def license_files(folder: Path) -> list[Path]:
    """The licence, use-policy and notice files directly in ``folder``."""
    return sorted({p for pattern in LICENSE_FILE_PATTERNS for p in Path(folder).glob(pattern) if p.is_file()})


def pickle_files(folder: Path) -> list[str]:
    """Names of the pickled weight files directly in ``folder``."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)


def convert_hint(folder: Path | str, model_class: str = "AutoModelForCausalLM") -> str:
    """One line a user can run to turn a pickled model folder into a safetensors one."""
    return (
        f"convert it once with: python -c \"import sys; from transformers import {model_class} as M, "
        f"AutoTokenizer as T; p = sys.argv[1]; M.from_pretrained(p, use_safetensors=False).save_pretrained(p + "
        f"'-safetensors'); T.from_pretrained(p).save_pretrained(p + '-safetensors')\" {folder}"
    )


def weights_problem(folder: Path, *, allow_pickle: bool = False, model_class: str = "AutoModelForCausalLM") -> str | None:
    """Why ``folder`` is not a model tempa may load (config + safetensors weights), or None.

    ``model_class`` is the transformers class the conversion hint loads the pickles with.

    It follows what transformers and mergekit read: ``model.safetensors.index.json`` (every shard
    it lists must be safetensors), else ``model.safetensors``, else the pickles. Another
    ``*.safetensors`` file (an adapter, say) beside ``pytorch_model.bin`` does not make the model
    safetensors.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is not a folder"
    names = {p.name for p in folder.iterdir()}
    if not names:
        return f"{folder} is an empty folder (expected a model: config.json, tokenizer files, *.safetensors weights)"
    if "config.json" not in names:
        return f"{folder} has no config.json: not a model folder"
    if "model.safetensors.index.json" in names:
        try:
            shards = set(json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return f"{folder}/model.safetensors.index.json is not a safetensors index (no weight_map)"
        pickled = sorted(shard for shard in shards if not str(shard).endswith(".safetensors"))
        if pickled and not allow_pickle:
            return f"{folder}/model.safetensors.index.json lists pickled shards ({', '.join(pickled[:3])}); {_REFUSAL}"
        return None
    if "model.safetensors" in names:
        return None
    pickled = pickle_files(folder)
    if pickled and allow_pickle:
        return None
    if pickled:
        return f"{folder} holds its weights only as pickles ({', '.join(pickled[:3])}); {_REFUSAL}: " + convert_hint(
            folder, model_class)
    if any(name.endswith(".safetensors") for name in names):
        return None  # sharded without an index: the loaders report what they miss
    return f"{folder} has no *.safetensors weights"


def base_model_problem(folder: Path, *, allow_pickle: bool = False) -> str | None:
    """:func:`weights_problem`, plus the tokenizer a base model must bring."""
    problem = weights_problem(folder, allow_pickle=allow_pickle)
    if problem is None and not any((Path(folder) / name).is_file() for name in TOKENIZER_FILES):
        return f"{folder} has no tokenizer ({', '.join(TOKENIZER_FILES)})"
    if problem is not None and _REFUSAL in problem:
        # Only the base model is converted on request: every later model the run reads is one it wrote.
        problem += " (or set allow_pickle_weights: true in the recipe if you trust the file)"
    return problem


def convert_to_safetensors(source: Path, out: Path, *, trust_remote_code: bool = False) -> Path:
    """Load a pickled model folder once (opted in) and write it to ``out`` as safetensors.

    ``out`` must be a fresh folder the caller publishes (e.g. a ``staging_dir``); tokenizer and
    generation files are copied beside the weights.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        source, use_safetensors=False, dtype="auto", trust_remote_code=trust_remote_code
    )
    model.save_pretrained(out, safe_serialization=True)
    for path in Path(source).iterdir():
        weights = path.suffix.lower() in PICKLE_SUFFIXES or path.name.endswith((".safetensors", ".index.json"))
        if path.is_file() and not weights and not (out / path.name).exists():
            shutil.copy2(path, out / path.name)
    return out


def damaged_safetensors(folder: Path) -> str | None:
    """Why ``folder``'s safetensors weights cannot be read, naming the file (one cut short or overwritten: a disk
    that filled while it was saved, a copy that stopped), or None. Only the headers are read: safetensors' own
    error ('Error while deserializing header: invalid header length') named neither the model nor the file. Not part
    of :func:`weights_problem`, which every recipe load runs: this reads each file, for models about to be read."""
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = {folder / name for name in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index} is not a safetensors index (a JSON object with a weight_map)"
        if missing := sorted(shards - set(files)):
            return f"{missing[0]} is missing ({index.name} lists it)"
    for path in files:
        if (problem := _file_problem(path)) is not None:
            return f"{path} {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little")
        if len(head) < 8 or length > size - 8:
            return f"is not a whole safetensors file: its header length {length} does not fit its {size} bytes"
        try:
            header = json.loads(handle.read(length))
            end = max((info["data_offsets"][1] for name, info in header.items() if name != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            end = None
    if type(end) is not int:
        return "is not a safetensors file: its header is no safetensors JSON header"
    if 8 + length + end > size:
        return f"is cut short: its tensors end at byte {8 + length + end}, the file at {size}"
    return None
