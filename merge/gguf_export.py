"""Export a final Llama model to GGUF (f16, q8_0, or llama.cpp's K-quants) with its chat template, plus an
Ollama Modelfile.

The conversion follows llama.cpp's `convert_hf_to_gguf.py` for the Llama architecture: tensor
names from gguf-py's map, q/k projections permuted from Hugging Face's rotary layout to GGML's,
norms kept in f32, the byte-level BPE vocabulary with merges, and the special tokens. The file
is written to a temporary name and renamed, after its Modelfile is written, so a partial export never looks complete:
a GGUF there has its Modelfile (:func:`modelfile_first`).

Quantised types other than q8_0 (q2_k ... q6_k, the K-quants the seed models publish) are made by
llama.cpp's own quantiser, ``llama_model_quantize`` as llama-cpp-python exposes it (the ``serving``
extra), from the f16 file this module writes: the same code as llama.cpp's ``llama-quantize``,
including its per-tensor choices (q4_k_m keeps some tensors in q6_k) and its fallback to a
compatible type for a weight matrix whose rows are not a multiple of 256 values. A model none of
whose matrices fits is refused rather than written under a K-quant name it does not have.

llama.cpp's own HF-to-GGUF converter (``convert_hf_to_gguf.py``, which covers Qwen2/3, Gemma 2 and
most other architectures) ships in llama.cpp's source tree only: neither the ``gguf`` package nor
llama-cpp-python installs it. So this writer stays for Llama (what tempa's recipes train); for other
architectures run the converter from a llama.cpp checkout and quantise its output with
``tempa export gguf FILE.gguf --type q4_k_m`` (the same llama.cpp quantiser, which also makes q8_0 from a
.gguf input; a .gguf input has no default type). The converter embeds the baked template as it is: a tempa template
in it is replaced by its :func:`serving_template` in the quantised file, which gets its Modelfile too.

Each GGUF gets its own Modelfile beside it, named after it (``demo-q8_0.gguf``: ``demo-q8_0.Modelfile``), so
exports of several types into one folder keep theirs; a file of that name that is not the Modelfile tempa wrote for
that GGUF is refused before anything is written.

The embedded chat template is the baked one without its ``{% generation %}`` markers (a
transformers extension for training masks that other Jinja engines reject), and with a request's
``thinking_mode`` winning over llama-server's ever-present ``enable_thinking`` (:func:`serving_template`); its eos is the
end-of-turn token, so llama.cpp stops at the end of a turn. The Modelfile's TEMPLATE is the
template's Go twin (:mod:`tempa.merge.ollama_template`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tempa.alignment.model_files import license_files
from tempa.chat_templates.templates import (
    available_templates,
    load_template,
    template_defaults,
    with_defaults,
)
from tempa.chat_templates.thinking import end_of_turn_token
from tempa.merge.model_card import card_front_matter
from tempa.merge.ollama_template import ollama_default_note, ollama_template, twin_name
from tempa.merge.publish import FILE_MODE, whole_model_problems
from tempa.sft.files import write_atomic
from tempa.sft.run_layout import RESOLVED_RECIPE, SAFE_NAME
from tempa.sft.stage_api import StageError

log = logging.getLogger(__name__)

GGUFType = str  # "f16", "q8_0" (written here) or a key of LLAMA_CPP_QUANTS (llama.cpp's quantiser)
WRITTEN_TYPES = ("f16", "q8_0")
# tempa's name -> llama.cpp's LLAMA_FTYPE_MOSTLY_* name (llama-quantize's common types)
LLAMA_CPP_QUANTS = {"q2_k": "Q2_K", "q3_k_s": "Q3_K_S", "q3_k_m": "Q3_K_M", "q3_k_l": "Q3_K_L", "q4_0": "Q4_0",
                    "q4_k_s": "Q4_K_S", "q4_k_m": "Q4_K_M", "q5_0": "Q5_0", "q5_k_s": "Q5_K_S", "q5_k_m": "Q5_K_M",
                    "q6_k": "Q6_K"}
GGUF_TYPES = (*WRITTEN_TYPES, *LLAMA_CPP_QUANTS)
# what llama.cpp's quantiser makes of a .gguf input: q8_0 too (tempa writes its own q8_0 from a model folder only)
GGUF_INPUT_QUANTS = {"q8_0": "Q8_0", **LLAMA_CPP_QUANTS}
K_QUANT_ROW = 256  # a K-quant block: a weight row must be a multiple of it
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)

# llama.cpp's names for the pre-tokenizer regexes it knows (it hashes a probe string; we read the
# tokenizer.json that produced it).
_LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


@dataclass(frozen=True)
class GGUFExport:
    gguf_path: Path
    modelfile_path: Path | None
    tensor_count: int
    file_type: GGUFType
    # llama.cpp quantisation: tensors by their GGML type (e.g. {"Q4_K": 10, "Q6_K": 2, "F32": 5})
    tensor_types: dict[str, int] | None = None
    # the embedded template is tempa's: a request's thinking_mode switches it in llama-server (LLAMA_SERVER_NOTE)
    tempa_template: bool = True


MODELFILE_HEADER = "# tempa: "  # the first line of every Modelfile tempa writes


def modelfile_for(gguf_path: Path) -> Path:
    """The Ollama Modelfile of ``gguf_path``: beside it, named after it (``x-q8_0.gguf``: ``x-q8_0.Modelfile``).

    One shared ``Modelfile`` per folder was overwritten by every export into that folder (a run's q8_0 and f16 left
    one Modelfile for two GGUFs, and ``--out /tmp/x.gguf`` replaced a user's own ``/tmp/Modelfile``)."""
    stem = gguf_path.stem if gguf_path.suffix == ".gguf" else gguf_path.name
    return gguf_path.with_name(f"{stem}.Modelfile")


def _check_modelfile_free(gguf_path: Path) -> None:
    """Refuse, before any work, a Modelfile path that holds something other than tempa's Modelfile for this GGUF
    (a user's own, or another tool's): the export would replace it."""
    modelfile = modelfile_for(gguf_path)
    if not modelfile.exists() and not modelfile.is_symlink():
        return
    if modelfile.is_file() and not modelfile.is_symlink():
        lines = modelfile.read_text(encoding="utf-8", errors="replace").splitlines()
        if len(lines) > 1 and lines[0].startswith(MODELFILE_HEADER) and lines[1] == f"FROM ./{gguf_path.name}":
            return  # an earlier export of this GGUF: replaced with the GGUF
    raise StageError(f"{modelfile} exists and is not the Modelfile tempa wrote for {gguf_path.name}, and the export "
                     "would replace it; move it away or give another --out")


@contextmanager
def modelfile_first(gguf_path: Path, text: str | None) -> Iterator[Path | None]:
    """Write the Modelfile of ``gguf_path`` (``text``; None: none) before the block that renames the GGUF into place:
    the GGUF's appearance marks the export complete, so an export killed in between leaves a Modelfile naming a GGUF
    that is not there (Ollama reads the file only at ``ollama create``), never a GGUF without its Modelfile. A block
    that fails puts back what was there before."""
    if text is None:
        yield None
        return
    path = modelfile_for(gguf_path)
    before = path.read_text(encoding="utf-8") if path.is_file() else None
    # An earlier export's GGUF is set aside first: killed before the new one is in place, the folder holds a Modelfile
    # without its GGUF (an export `tempa push --gguf` refuses), never the old GGUF under the new Modelfile.
    aside = Path(gguf_path).with_name(f".{Path(gguf_path).name}.replaced")
    aside.unlink(missing_ok=True)  # one a killed export left
    if before != text and Path(gguf_path).is_file():
        os.replace(gguf_path, aside)
    write_atomic(path, text)
    try:
        yield path
    except BaseException:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, before)
        if aside.is_file():
            os.replace(aside, gguf_path)  # the earlier export whole again
        raise
    aside.unlink(missing_ok=True)


def _published_with(model_dir: str | os.PathLike, *paths: Path | None) -> None:
    """Files written into the model folder itself (the default: the final folder) get its publishable mode, 0644,
    whatever the umask: under a cluster's umask 077 they were 0600, and `tempa push` refused the whole folder."""
    for path in paths:
        if path is not None and path.parent.resolve() == Path(model_dir).resolve():
            os.chmod(path, FILE_MODE)


# The one Modelfile every export into a folder shared before each GGUF got its own <stem>.Modelfile: still an export
# file (a bake re-run clears it, a push without --gguf leaves it out), but it may describe another GGUF or template.
SHARED_MODELFILE = "Modelfile"
# What `tempa export gguf` writes into a model folder: GGUFs and their Modelfiles.
EXPORT_FILES = ("*.gguf", "*.Modelfile", SHARED_MODELFILE)


def exports_in_folder(folder: Path) -> list[Path]:
    """The GGUF exports (and their Modelfiles) in ``folder``, by name."""
    return sorted(path for path in Path(folder).iterdir()
                  if path.is_file() and any(path.match(pattern) for pattern in EXPORT_FILES))


def _export_input_files(folder: Path) -> dict[str, Path]:
    # Every file but the card (of which only its licence is read), the exports, and hidden records (the bake's list
    # of its files holds the card's size): more than the writer reads is compared, never less.
    exports = set(exports_in_folder(folder))
    return {path.name: path for path in Path(folder).iterdir()
            if path.is_file() and not path.name.startswith(".") and path.name != "README.md" and path not in exports}


def _same_bytes(a: Path, b: Path) -> bool:
    import filecmp

    # the bake hard-links the weights it starts from: a link to the same file needs no reading
    return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)


def _gguf_name(path: Path) -> str | None:
    import gguf

    try:
        field = gguf.GGUFReader(str(path)).get_field(gguf.Keys.General.NAME)
    except (OSError, ValueError):
        return None
    return field.contents() if field is not None else None


def export_changes(final: Path, replacement: Path) -> list[str]:
    """What the GGUF exports in ``final`` were made from that ``replacement`` (the folder about to replace it) holds
    otherwise, one phrase each; empty when every export is still right for ``replacement``.

    The export reads the folder's files (weights, config, tokenizer, chat template, generation config, licence
    files), the model card's licence ids, and names the model after the run's recipe (``general.name``,
    :func:`export_name`, already the new run's when the bake runs): all three are compared. A file edited by hand in
    ``final`` after the export is compared as edited, so a change is seen where there is none, never the other way.
    """
    old, new = _export_input_files(final), _export_input_files(replacement)
    changes = [name for name in sorted(old.keys() | new.keys())
               if name not in old or name not in new or not _same_bytes(old[name], new[name])]
    if card_license(final) != card_license(replacement):
        changes.append("the model card's licence")
    name = export_name(final)
    renamed = sorted(path.name for path in exports_in_folder(final)
                     if path.suffix == ".gguf" and _gguf_name(path) != name)
    if renamed:
        changes.append(f"the model's name ({name}, not the one {', '.join(renamed)} carries)")
    return changes


def writes_gguf(model_dir: Path) -> bool:
    """Whether this module's writer takes ``model_dir``'s model (config.json's ``architectures``)."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return bool(set(config.get("architectures") or ()) & set(SUPPORTED_ARCHITECTURES))


def _llama_cpp(file_type: str, *, gguf_input: bool = False):
    """llama-cpp-python, or a one-line error saying how to install it (tempa is installed from its checkout);
    ``gguf_input``: the source is a .gguf file, which only llama.cpp quantises (no q8_0 or f16 to fall back to)."""
    try:
        import llama_cpp
    except ImportError:
        fallback = "" if gguf_input else "; or use --type q8_0 or f16"
        raise StageError(f"--type {file_type} uses llama.cpp's quantiser, which needs llama-cpp-python (the serving "
                         "extra): from tempa's checkout, pip install \"scikit-build-core>=0.9.2\" ninja && "
                         "CMAKE_ARGS=\"-DLLAVA_BUILD=OFF\" pip install --no-build-isolation -e \".[serving]\" "
                         f"(it builds llama.cpp from source){fallback}") from None
    return llama_cpp


def quantize_gguf(source: Path, out: Path, file_type: str) -> dict[str, int]:
    """Quantise an f16/f32 GGUF with llama.cpp's own quantiser; returns the output's tensors by GGML type.

    The output is written to a temporary name and renamed; a model whose weight matrices all fall back
    (no row a multiple of 256 values) is refused for a K-quant.
    """
    import ctypes

    if file_type not in GGUF_INPUT_QUANTS:
        raise StageError(f"--type {file_type}: not a llama.cpp quantisation type ({', '.join(GGUF_INPUT_QUANTS)})")
    llama_cpp = _llama_cpp(file_type, gguf_input=True)
    tmp = out.with_name(f".{out.name}.partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{GGUF_INPUT_QUANTS[file_type]}")
    params.nthread = os.cpu_count() or 1
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
    if code != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise StageError(f"llama.cpp could not quantise {source} to {file_type} (llama_model_quantize returned {code})")
    types = gguf_tensor_types(tmp)
    wanted = GGUF_INPUT_QUANTS[file_type]
    if "_K" in wanted and not any(name.endswith("_K") for name in types):
        tmp.unlink()
        raise StageError(
            f"{file_type}: no weight matrix of this model has rows that are a multiple of {K_QUANT_ROW} values "
            f"(a K-quant block), so llama.cpp would store none of them as {wanted}; use q8_0, q4_0 or f16")
    os.replace(tmp, out)
    return types


def _quantised_with_template(source: Path, out: Path, file_type: str, template: str | None) -> dict[str, int]:
    """Quantise ``source`` into ``out`` (:func:`quantize_gguf`), with ``template`` embedded in place of its own where
    given; returns the tensors by type."""
    if template is None:  # no template, or none with training markers or the refusing alias
        return quantize_gguf(source, out, file_type)
    # llama.cpp's converter embeds the baked template verbatim: its {% generation %} markers fail in llama.cpp's
    # Jinja, and its alias raises when llama-server passes enable_thinking. The quantised copy is rewritten (smaller
    # than the source), and only the rewritten file ever carries the target's name.
    with tempfile.TemporaryDirectory(prefix=".tempa-gguf-", dir=out.parent) as scratch:
        quantised = Path(scratch) / out.name
        types = quantize_gguf(source, quantised, file_type)
        with_chat_template(quantised, out, template)
    return types


def gguf_tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of a GGUF file have each GGML type."""
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        name = tensor.tensor_type.name
        counts[name] = counts.get(name, 0) + 1
    return counts


def gguf_chat_template(path: Path) -> str | None:
    """The chat template a GGUF file embeds (``tokenizer.chat_template``), or None."""
    import gguf

    field = gguf.GGUFReader(str(path)).get_field(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    return field.contents() if field is not None else None


def with_chat_template(source: Path, out: Path, template: str) -> None:
    """Copy the GGUF ``source`` to ``out`` with ``template`` as its chat template: every other key, in its order,
    and every tensor's bytes as they are (what llama.cpp's gguf_new_metadata.py does). Written to a temporary name
    and renamed."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch is None:
        raise StageError(f"{source}: not a model GGUF (no {gguf.Keys.General.ARCHITECTURE})")
    tmp = out.with_name(f".{out.name}.partial")
    with removed_on_failure(tmp):
        writer = gguf.GGUFWriter(str(tmp), arch.contents(), endianess=reader.endianess)
        written = False
        for field in reader.fields.values():
            # the writer adds general.architecture itself; GGUF.* are the reader's view of the header
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            if field.name == gguf.Keys.Tokenizer.CHAT_TEMPLATE:
                writer.add_chat_template(template)
                written = True
                continue
            if field.name == gguf.Keys.General.ALIGNMENT:  # the writer must pad its tensors to it, not only say it
                writer.add_custom_alignment(int(field.contents()))
                continue
            kind = field.types[0]
            sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)
        if not written:
            writer.add_chat_template(template)
        for tensor in reader.tensors:
            writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                   tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:
            writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
        writer.close()
        os.replace(tmp, out)


def permute_rotary(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores q/k rows as [all first halves, all second halves] per head; GGML interleaves them."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise StageError(f"{model_dir}: no .safetensors weights to export (tempa reads safetensors only)")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                yield name, f.get_tensor(name).float().numpy()


def _pre_tokenizer_name(tokenizer_json: dict) -> str:
    text = json.dumps(tokenizer_json.get("pre_tokenizer"))
    if _LLAMA3_SPLIT in text or "\\\\p{N}{1,3}" in text:
        return "llama-bpe"
    return "gpt-2"


def _kinds(component: Any) -> list[str]:
    """The ``type`` of a tokenizer.json component and of every part of a ``Sequence`` of them."""
    if not isinstance(component, dict):
        return []
    parts = component.get("pretokenizers") or component.get("decoders") or []
    return [str(component.get("type")), *(kind for part in parts for kind in _kinds(part))]


def byte_level_problem(tokenizer_json: dict) -> str | None:
    """Why ``tokenizer_json`` is not a byte-level BPE tokenizer (GPT-2's, Llama 3's, Qwen's), or None when it is.

    A SentencePiece vocabulary (Llama 2, Mistral, Gemma) converted by transformers is BPE too, but its pieces spell
    a space as ``▁`` (Metaspace) and unknown characters as byte tokens: written as GGUF's ``gpt2`` vocabulary,
    llama.cpp maps text to bytes its own way and tokenizes it differently from the model (its word-start pieces
    are lost), silently."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        return f"a {model.get('type') or 'unknown'} model, not byte-level BPE"
    pre = _kinds(tokenizer_json.get("pre_tokenizer"))
    if "ByteLevel" not in pre:
        return f"a BPE whose pre-tokenizer is {'+'.join(pre) or 'none'}, not byte-level (ByteLevel)"
    if model.get("byte_fallback"):
        return "a BPE with byte fallback (SentencePiece's), not byte-level"
    return None


def _vocab(model_dir: Path, data: dict, tokenizer, rows: int) -> tuple[list[str], list[int], list[str]]:
    """The token list, types and merges; ``rows``: the embedding's (config.json's ``vocab_size``). llama.cpp sizes
    token_embd and output by the token count, so ids past the tokenizer's are listed as unused ``[PAD{id}]``
    tokens, as llama.cpp's convert_hf_to_gguf.py lists them."""
    import gguf

    problem = byte_level_problem(data)
    if problem:
        raise StageError(f"{model_dir}/tokenizer.json: {problem}; tempa writes GGUF's byte-level BPE (gpt2) "
                         "vocabulary only: convert this model with convert_hf_to_gguf.py from a llama.cpp checkout, "
                         "then quantise that file with `tempa export gguf MODEL-f16.gguf --type TYPE`")
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"].get("merges", [])]
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    if size > rows:
        raise StageError(f"{model_dir}: the tokenizer has ids up to {size - 1}, but the model's embeddings hold "
                         f"{rows} rows (config.json vocab_size); export the final model the bake wrote")
    size = rows
    by_id = {i: t for t, i in vocab.items()}
    special = {t.content if hasattr(t, "content") else str(t) for t in tokenizer.added_tokens_decoder.values()
               if getattr(t, "special", False)}
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            if token in special:
                types.append(gguf.TokenType.CONTROL)
            elif token in added:
                types.append(gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types], merges


# tempa's templates refuse a thinking_mode that contradicts enable_thinking. llama-server passes enable_thinking to
# every render (true unless started with --reasoning off) and merges a request's chat_template_kwargs over it, so in
# the GGUF's template a request's thinking_mode wins instead: the alias applies only where thinking_mode is unset.
_ALIAS_REFUSED = """\
    {%- set alias_mode = "on" if enable_thinking else "off" %}
    {%- if thinking_mode is defined and thinking_mode is not none and thinking_mode != alias_mode %}
        {{- raise_exception("thinking_mode=" ~ (thinking_mode | tojson) ~ " contradicts enable_thinking=" ~ (enable_thinking | tojson)) }}
    {%- endif %}
    {%- set mode.value = alias_mode %}
"""
_ALIAS_YIELDS = """\
    {%- if thinking_mode is not defined or thinking_mode is none %}
        {%- set mode.value = "on" if enable_thinking else "off" %}
    {%- endif %}
"""


# What llama-server does with the thinking modes, for the export's output and the model card (read from llama.cpp's
# server-common.cpp and common/chat.cpp; no llama-server runs here).
LLAMA_SERVER_NOTE = (
    "llama-server (`--jinja`) passes enable_thinking=true to the template, whatever its default, unless started with "
    "`--reasoning off` (`--reasoning-budget 0` in builds before that flag); a request switches with "
    '`chat_template_kwargs: {"thinking_mode": "off"}` (or "on").'
)


def is_tempa_template(template: str | None) -> bool:
    """Whether ``template`` (baked, or already served) is one of tempa's thinking templates, whose served form lets
    a request's ``thinking_mode`` win over llama-server's ``enable_thinking`` (what :data:`LLAMA_SERVER_NOTE` says)."""
    return bool(template) and _ALIAS_YIELDS in serving_template(template)


def baked_template(embedded: str) -> str | None:
    """The shipped tempa template, with its baked defaults, that ``embedded`` (a GGUF's: as baked, from llama.cpp's
    converter, or served, from tempa's writer) is; None for any other or an edited one."""
    if twin_name(embedded) is not None:
        return embedded
    defaults = template_defaults(embedded)
    for name in available_templates():
        try:
            candidate = with_defaults(load_template(name), defaults)
        except ValueError:  # a default this template cannot take
            continue
        if serving_template(candidate) == embedded:
            return candidate
    return None


def serving_template(template: str) -> str:
    """The chat template for inference engines: the ``{% generation %}`` / ``{% endgeneration %}`` markers
    (training-only, transformers' extension) removed, and a ``thinking_mode`` that differs from ``enable_thinking``
    wins over it instead of raising (llama-server always passes ``enable_thinking``). The markers' whitespace control
    goes too, which changes nothing: tempa's templates write every character through ``{{- ... }}`` expressions."""
    return _GENERATION_TAG.sub("", template).replace(_ALIAS_REFUSED, _ALIAS_YIELDS)


def export_name(model_dir: Path) -> str:
    """The model's name in file names and ``general.name``: the recipe's ``name`` (its run's recipe.resolved.yaml) for
    a run's final model, else the folder's.

    Not the run folder's: ``--run-dir /scratch/runs/2024-06-12`` named the GGUF ``2024-06-12``, and ``--run-dir
    "my models/run b"`` put a space in every file name. Taken from the path as given: ``runs/demo/final`` is a link to
    ``runs/demo/bake/final``, and the user means that run. A stage's own ``final/`` is named ``<recipe>-<stage>``.
    """
    folder = Path(os.path.abspath(model_dir))
    if folder.name != "final":
        return folder.name
    parent = folder.parent
    if (parent / RESOLVED_RECIPE).is_file():
        return _recipe_name(parent) or parent.name
    if (parent.parent / RESOLVED_RECIPE).is_file():
        run = _recipe_name(parent.parent) or parent.parent.name
        return run if parent.name == "bake" else f"{run}-{parent.name}"
    return parent.name


def _recipe_name(run_dir: Path) -> str | None:
    """The ``name`` recipe.resolved.yaml records (a safe file name, as the recipe's is), or None."""
    import yaml

    try:
        recorded = yaml.safe_load((run_dir / RESOLVED_RECIPE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    name = recorded.get("name") if isinstance(recorded, dict) else None
    return name if isinstance(name, str) and SAFE_NAME.fullmatch(name) else None


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                file_type: GGUFType | None = None) -> GGUFExport:
    """Write ``model_dir`` as GGUF (``out`` default: ``<model_dir>/<name>-<type>.gguf``) + its Modelfile
    (:func:`modelfile_for`).

    ``file_type`` None: f16 for a model folder. ``model_dir`` may also be a ``.gguf`` file (e.g. from llama.cpp's
    converter): it is quantised to ``file_type`` (one of :data:`GGUF_INPUT_QUANTS`, required) with llama.cpp's
    quantiser, and an embedded tempa template is replaced by its :func:`serving_template`; the Modelfile is written
    when the template has a Go twin (:func:`baked_template`), from what the GGUF records (:func:`gguf_modelfile`).
    """
    if file_type is not None and file_type not in GGUF_TYPES:
        raise StageError(f"--type {file_type}: expected one of {', '.join(GGUF_TYPES)}")
    if out is not None and Path(out).is_dir():  # else the whole GGUF is written before the rename onto it fails
        raise StageError(f"--out {out} is a folder; give a .gguf file path")
    if not Path(model_dir).exists():
        raise StageError(f"{model_dir}: no such file or folder")
    if Path(model_dir).suffix == ".gguf":
        source = Path(model_dir).resolve()
        if not source.is_file():
            raise StageError(f"{source}: not a file (a .gguf input is a GGUF file to quantise)")
        quants = ", ".join(GGUF_INPUT_QUANTS)
        if file_type is None:
            raise StageError(f"{source}: a .gguf input is quantised with llama.cpp's quantiser and needs --type, one "
                             f"of {quants}")
        if file_type not in GGUF_INPUT_QUANTS:
            raise StageError(f"--type {file_type}: a .gguf input is quantised with llama.cpp's quantiser, which takes "
                             f"{quants}; tempa writes {file_type} from a model folder only")
        target = Path(out) if out else source.with_name(f"{source.stem}-{file_type}.gguf")
        if target.resolve() == source:  # the quantiser reads it while the new file is written
            raise StageError(f"--out {out}: that is the input file; give the quantised GGUF a path of its own")
        embedded = gguf_chat_template(source)
        baked = baked_template(embedded) if embedded else None
        if baked is not None:
            _check_modelfile_free(target)
        served = serving_template(embedded) if embedded else embedded
        # llama.cpp's quantiser does not make the folder: it failed with "basic_ios::clear: iostream error"
        target.parent.mkdir(parents=True, exist_ok=True)
        # the keys it reads are the source's, which quantising keeps
        text = gguf_modelfile(source, baked, gguf_name=target.name) if baked is not None else None
        with modelfile_first(target, text) as modelfile_path:
            types = _quantised_with_template(source, target, file_type, served if served != embedded else None)
        tempa = is_tempa_template(embedded)
        return GGUFExport(target, modelfile_path, sum(types.values()), file_type, types, tempa_template=tempa)
    file_type = file_type or "f16"
    if file_type in LLAMA_CPP_QUANTS:  # llama.cpp quantises the f16 file this module writes
        _llama_cpp(file_type)  # missing: say so before writing the f16 intermediate
        target = Path(out) if out else Path(model_dir).resolve() / f"{export_name(Path(model_dir))}-{file_type}.gguf"
        _check_modelfile_free(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".tempa-gguf-", dir=target.parent) as scratch:
            f16 = export_gguf(model_dir, Path(scratch) / "model-f16.gguf", file_type="f16")
            text = None if f16.modelfile_path is None else f16.modelfile_path.read_text(encoding="utf-8").replace(
                f"./{f16.gguf_path.name}", f"./{target.name}")  # None: a template without a Go twin (logged)
            with modelfile_first(target, text) as modelfile_path:
                types = quantize_gguf(f16.gguf_path, target, file_type)
        _published_with(model_dir, target, modelfile_path)
        return GGUFExport(target, modelfile_path, f16.tensor_count, file_type, types, tempa_template=f16.tempa_template)
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    name = export_name(Path(model_dir))
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        raise StageError(f"{model_dir}: not a model folder (no config.json)")
    config = AutoConfig.from_pretrained(model_dir)
    archs = tuple(getattr(config, "architectures", None) or ())
    if not writes_gguf(model_dir):
        raise StageError(f"{model_dir}: tempa's GGUF writer supports {', '.join(SUPPORTED_ARCHITECTURES)}, got "
                         f"{', '.join(archs) or '?'}; convert it with convert_hf_to_gguf.py from a llama.cpp checkout, "
                         "then quantise that file with `tempa export gguf MODEL-f16.gguf --type TYPE`")
    problems = whole_model_problems(model_dir)
    if problems:  # else the GGUF holds the tensors of the shards there are, and llama.cpp fails at load
        raise StageError(f"{model_dir}: not a whole model folder: {'; '.join(problems[:4])}"
                         + (f"; and {len(problems) - 4} more" if len(problems) > 4 else ""))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = tokenizer.chat_template
    if not template:
        raise StageError(f"{model_dir}: the tokenizer has no chat template; export the baked final model")
    gguf_path = Path(out) if out else model_dir / f"{name}-{file_type}.gguf"
    _check_modelfile_free(gguf_path)
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = gguf_path.with_name(f".{gguf_path.name}.partial")

    with removed_on_failure(tmp):
        n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_name(name)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or
                                        (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if file_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)

        tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
        tokens, types, merges = _vocab(model_dir, tokenizer_json, tokenizer, config.vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer_json))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        if tokenizer.bos_token_id is not None:
            writer.add_bos_token_id(tokenizer.bos_token_id)
        generation = generation_defaults(model_dir)
        # what llama.cpp's converter records: a GGUF quantised again, or served, keeps the recipe's choices
        for key, value in ollama_parameters(generation).items():
            if key in _GGUF_SAMPLING_WRITERS:
                getattr(writer, _GGUF_SAMPLING_WRITERS[key])(int(value) if key == "top_k" else float(value))
        license_ids = card_license(model_dir)
        if license_ids:
            writer.add_license(", ".join(license_ids))
        try:
            modelfile_text: str | None = ollama_modelfile(gguf_path.name, tokenizer, generation,
                                                          licenses=model_licenses(model_dir))
        except StageError as error:  # llama.cpp reads the embedded Jinja template: the GGUF is still of use
            log.warning("%s; the GGUF is written without an Ollama Modelfile", error)
            modelfile_text = None
        eot_id = tokenizer.convert_tokens_to_ids(end_of_turn_token(template))
        # llama.cpp ends generation on eos and eot (and on the other eos ids by their text); the baked eos
        # is the end-of-turn token already.
        writer.add_eos_token_id(tokenizer.eos_token_id)
        writer.add_eot_token_id(eot_id)
        if _stop_ids(generation):  # the Modelfile's stops, for a Modelfile made from this GGUF alone (gguf_modelfile)
            writer.add_array(EOS_TOKEN_IDS, [int(i) for i in _stop_ids(generation)])
        if tokenizer.pad_token_id is not None:
            writer.add_pad_token_id(tokenizer.pad_token_id)
        writer.add_add_bos_token(False)  # the chat template writes <|begin_of_text|> itself
        writer.add_chat_template(serving_template(template))
        if _ALIAS_REFUSED not in template and "enable_thinking" in template:
            log.warning("%s: its chat template is not tempa's as shipped (an edited copy, or another): a thinking_mode "
                        "that differs from enable_thinking may still be refused in it, and llama-server passes "
                        "enable_thinking to every render; switch modes there with enable_thinking", model_dir)

        name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
        count = 0
        for hf_name, data in _tensors(model_dir):
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            if hf_name.endswith("q_proj.weight"):
                data = permute_rotary(data, n_head)
            elif hf_name.endswith("k_proj.weight"):
                data = permute_rotary(data, n_kv)
            new_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                raise StageError(f"{model_dir}: no GGUF name for tensor {hf_name}")
            _add_tensor(writer, new_name, data, file_type)
            count += 1  # tied embeddings: llama.cpp reuses token_embd when output.weight is absent
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with modelfile_first(gguf_path, modelfile_text) as modelfile:
            os.replace(tmp, gguf_path)
    tensor_types = gguf_tensor_types(gguf_path)
    _published_with(model_dir, gguf_path, modelfile)
    return GGUFExport(gguf_path, modelfile, count, file_type, tensor_types, tempa_template=is_tempa_template(template))


def _add_tensor(writer, name: str, data: np.ndarray, file_type: GGUFType) -> None:
    import gguf

    if data.ndim <= 1:  # norms stay f32, as llama.cpp keeps them
        writer.add_tensor(name, data.astype(np.float32))
    elif file_type == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        quantized = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, data.astype(np.float16))


@contextmanager
def removed_on_failure(path: Path) -> Iterator[None]:
    """Remove ``path`` (a partial file) when the block writing it fails: it is hidden, so nothing would ever use
    or remove it, and an f16 70B is ~140 GB."""
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def generation_defaults(model_dir: Path) -> dict[str, Any]:
    """The keys ``generation_config.json`` sets (``{}`` without one): read as written, because
    ``GenerationConfig`` fills in transformers' own defaults (top_k 50, ...), which the recipe did not choose."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise StageError(f"{path}: not valid JSON ({error})") from None


# generation_config.json's sampling keys -> Ollama's PARAMETER names (ollama docs/modelfile.mdx)
_OLLAMA_PARAMETERS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                      "repetition_penalty": "repeat_penalty", "max_new_tokens": "num_predict"}
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p")


def ollama_parameters(generation: dict[str, Any]) -> dict[str, int | float]:
    """The sampling defaults of ``generation`` (generation_config.json's keys) as Ollama PARAMETERs.

    Ollama samples with its own defaults (temperature 0.8, top_k 40, top_p 0.9) where the Modelfile sets none,
    so the recipe's ``generation`` defaults must be written here too. ``do_sample: false`` is greedy decoding
    in transformers whatever the temperature says: temperature 0 in Ollama, its other sampling knobs moot.
    """
    greedy = generation.get("do_sample") is False
    out = {ollama: generation[key] for key, ollama in _OLLAMA_PARAMETERS.items()
           if generation.get(key) is not None and not (greedy and key in _SAMPLING_KEYS)}
    if greedy:
        out["temperature"] = 0.0
    return out


def _stop_ids(generation: dict[str, Any]) -> list[int]:
    eos = generation.get("eos_token_id")
    return [eos] if isinstance(eos, int) else list(eos or [])


def card_license(model_dir: Path) -> list[str]:
    """The ``license`` ids of the folder's model card (README.md front matter: the recipe's model_card.license, one
    id or a list of them, as the Hub takes it)."""
    path = Path(model_dir) / "README.md"
    try:
        front = card_front_matter(path.read_text(encoding="utf-8") if path.is_file() else "")
    except ValueError:
        return []  # a hand-edited card: the Modelfile goes without a LICENSE rather than fail the export
    value = front.get("license")
    values = value if isinstance(value, list) else [value]
    return [str(item) for item in values if item]


def model_licenses(model_dir: Path) -> list[str]:
    """What the Modelfile's LICENSE lines hold: the texts of the folder's licence and use-policy files (the base
    model's, which the bake ships), else the model card's licence ids."""
    texts = [path.read_text(encoding="utf-8", errors="replace").strip() for path in license_files(model_dir)
             if not path.name.upper().startswith("NOTICE")]
    texts = [text for text in texts if text]
    if texts:
        return texts
    return card_license(model_dir)


def ollama_modelfile(gguf_name: str, tokenizer, generation: dict[str, Any], licenses: Sequence[str] = ()) -> str:
    """An Ollama Modelfile: the GGUF, the chat template's Go twin, the stop tokens (the eos ids of
    ``generation``, generation_config.json's keys), the sampling defaults, the default mode, and the
    ``licenses`` (:func:`model_licenses`) that ``ollama show --license`` prints.

    The TEMPLATE follows Ollama's ``think`` request switch, and the template's baked default (the recipe's
    ``thinking_default``) when a request leaves it unset, which only Ollama before 0.12.4 does: the header says
    so (:func:`~tempa.merge.ollama_template.ollama_default_note`).
    """
    stops = [tokenizer.convert_ids_to_tokens(i) for i in _stop_ids(generation)] or [tokenizer.eos_token]
    return _modelfile(gguf_name, tokenizer.chat_template or "", stops, ollama_parameters(generation), licenses)


def _modelfile(gguf_name: str, template: str, stops: Sequence[str], parameters: dict[str, int | float],
               licenses: Sequence[str]) -> str:
    default = template_defaults(template).thinking_mode
    try:
        body = ollama_template(template)
    except ValueError as error:
        raise StageError(f"Modelfile for {gguf_name}: {error}") from None
    if '"""' in body:
        raise StageError(f"Modelfile for {gguf_name}: the template contains a triple quote")
    lines = [
        f"{MODELFILE_HEADER}default thinking mode '{default}' (thinking_default). {ollama_default_note(default)}",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{body}"""',
    ]
    lines += [f'PARAMETER stop "{stop}"' for stop in dict.fromkeys(stops)]
    lines += [f"PARAMETER {name} {value}" for name, value in parameters.items()]
    lines += [f'LICENSE """{text}"""' for text in licenses if '"""' not in text]
    return "\n".join(lines) + "\n"


# a GGUF's general.sampling.* keys (the converter's copy of generation_config.json) -> Ollama's PARAMETER names
_GGUF_SAMPLING = {"general.sampling.temp": "temperature", "general.sampling.top_k": "top_k",
                  "general.sampling.top_p": "top_p", "general.sampling.min_p": "min_p",
                  "general.sampling.penalty_repeat": "repeat_penalty"}
# Ollama's PARAMETER name -> the gguf writer's method for its general.sampling.* key (num_predict has none)
_GGUF_SAMPLING_WRITERS = {"temperature": "add_sampling_temp", "top_k": "add_sampling_top_k",
                          "top_p": "add_sampling_top_p", "min_p": "add_sampling_min_p",
                          "repeat_penalty": "add_sampling_penalty_repeat"}
# generation_config.json's eos ids, as Ollama's own converter records them and its engines read them (with
# tokenizer.ggml.eos_token_id): GGUF's single eos/eot ids would lose Llama 3's <|end_of_text|> beside <|eot_id|>
EOS_TOKEN_IDS = "tokenizer.ggml.eos_token_ids"


def gguf_modelfile(gguf_path: Path, template: str, *, gguf_name: str | None = None) -> str:
    """The Ollama Modelfile of a GGUF that has no model folder beside it (a converted one, or tempa's, quantised): the
    Go twin of ``template`` (its baked tempa template, :func:`baked_template`); as stops, its eos ids
    (generation_config.json's, :data:`EOS_TOKEN_IDS`) and its eos, end-of-turn and end-of-message tokens; the sampling
    defaults and licence ids it records (``general.sampling.*``, ``general.license``: tempa's writer writes them as
    llama.cpp's converter does). ``gguf_name``: the file FROM names, when ``gguf_path`` is the source it was made from."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))

    def value(key: str) -> Any:
        field = reader.get_field(key)
        return field.contents() if field is not None else None

    tokens = value(gguf.Keys.Tokenizer.LIST) or []
    stop_ids = [*(value(EOS_TOKEN_IDS) or []), value(gguf.Keys.Tokenizer.EOS_ID), value(gguf.Keys.Tokenizer.EOT_ID),
                value(gguf.Keys.Tokenizer.EOM_ID)]
    stops = [tokens[i] for i in stop_ids if i is not None and 0 <= i < len(tokens)]
    stops.append(end_of_turn_token(template))  # the end of a turn whatever the converter took for eos
    # float32 in the file: 0.7 reads back 0.699999988079071, which the recipe never wrote (7 significant digits)
    parameters = {name: float(f"{found:.7g}") if isinstance(found, float) else found
                  for key, name in _GGUF_SAMPLING.items() if (found := value(key)) is not None}
    license_ids = value(gguf.Keys.General.LICENSE)
    return _modelfile(gguf_name or gguf_path.name, template, stops, parameters, [license_ids] if license_ids else [])
