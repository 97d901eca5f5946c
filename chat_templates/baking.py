"""Baking: a tokenizer folder with the chat template, a usable pad token and a generation config that stops."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tempa.chat_templates.checks import check_tokenizer
from tempa.chat_templates.templates import TemplateDefaults, available_templates, load_template, with_defaults
from tempa.chat_templates.thinking import end_of_turn_token

logger = logging.getLogger(__name__)

# Pad tokens that base models already ship (Llama 3.1, generic, BERT-style, Qwen), tried in this order before
# anything is added, so the embedding matrix never has to grow just for padding.
PREFERRED_PAD_TOKENS = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|endoftext|>")
ADDED_PAD_TOKEN = "<|pad|>"
_RESERVED = re.compile(r"<\|reserved_special_token_\d+\|>")
# What marks a folder as a model's rather than a bake's (which --overwrite may replace).
_MODEL_FILES = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class GenerationDefaults(BaseModel):
    """Sampling defaults written into the final ``generation_config.json`` (what a client gets unasked).

    The stop tokens are not set here: the bake always makes the template's end-of-turn token an eos id.
    """

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0.0, description="0 means greedy decoding.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    max_new_tokens: int | None = Field(default=None, ge=1)

    def apply(self, generation_config: dict[str, Any]) -> dict[str, Any]:
        """``generation_config`` with these defaults set; sampling is on unless the temperature is 0."""
        values = self.model_dump(exclude_none=True)
        out = {**generation_config, **values}
        if values.keys() & {"temperature", "top_p", "top_k", "min_p"}:
            # transformers ignores (and warns about) sampling settings unless do_sample is on
            out["do_sample"] = values.get("temperature") != 0.0
            if not out["do_sample"]:
                for key in ("temperature", "top_p", "top_k", "min_p"):
                    out.pop(key, None)
        return out


@dataclass(frozen=True)
class PadChoice:
    """The pad token a bake will use; ``added`` means it is new to the vocabulary."""

    token: str
    added: bool
    reason: str


def choose_pad_token(
    tokenizer: Any, end_of_turn: str, requested: str | None = None, stop_ids: Collection[int] = (), template: str = ""
) -> PadChoice:
    """Pick a pad token that is neither eos, the end-of-turn token nor any other stop id (``stop_ids``: those the
    baked generation config will list), preferring ones already in the vocabulary.

    A pad equal to eos/end-of-turn is the classic "model never stops" bug: collators that mask padding by id
    also mask the real stop token out of the loss. The other stop ids count too: Qwen2.5-Instruct ships pad
    `<|endoftext|>`, which its generation config also stops on, and the final bake refuses a pad among the eos ids.
    """
    vocab = tokenizer.get_vocab()
    forbidden = {tokenizer.eos_token, end_of_turn, *tokenizer.convert_ids_to_tokens(list(stop_ids))}
    # a token the template writes (ChatML's <|im_start|> in every turn): collators that mask padding by id would
    # mask it too, and the model would never learn to write it
    forbidden |= {token for token in tokenizer.get_added_vocab() if token and token in template}
    if requested is not None:
        if requested in forbidden:
            raise ValueError(
                f"pad token {requested!r} is the eos, the end-of-turn token, a stop id of the generation config or a "
                "token the chat template writes; padding must differ from all of them (an unused token)"
            )
        if requested in vocab:
            return PadChoice(requested, added=False, reason=f"pad token {requested!r} as requested")
        return PadChoice(requested, added=True, reason=f"pad token {requested!r} as requested (new token)")
    current = tokenizer.pad_token
    if current is not None and current not in forbidden:
        return PadChoice(current, added=False, reason=f"kept pad token {current!r}")
    forbidden.add(tokenizer.bos_token)
    added_tokens = sorted(tokenizer.get_added_vocab().items(), key=lambda item: item[1])
    candidates = [
        *PREFERRED_PAD_TOKENS,
        *(token for token, _ in added_tokens if "pad" in token.lower()),
        *(token for token, _ in added_tokens if _RESERVED.fullmatch(token)),
    ]
    for token in candidates:
        if token in vocab and token not in forbidden:
            was = "no pad token" if current is None else f"pad {current!r} was the eos/end-of-turn token"
            return PadChoice(token, added=False, reason=f"{was}; using existing {token!r} as pad")
    return PadChoice(ADDED_PAD_TOKEN, added=True, reason="no usable pad token in the vocabulary")


def stop_token_ids(base: list[int] | int | None, *extra: int | None) -> list[int]:
    """``base`` eos ids (as a list) with ``extra`` ids appended, without duplicates, order kept."""
    ids = [] if base is None else ([base] if isinstance(base, int) else list(base))
    for token_id in extra:
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    return ids


def check_fits(tokenizer: Any, template: str, where: str | os.PathLike) -> str:
    """The template's end-of-turn token; ``ValueError`` when it is not one token of ``tokenizer``: adding it would
    give the model an untrained stop token, so the template does not fit this base (what the bake refuses)."""
    end_of_turn = end_of_turn_token(template)
    if len(tokenizer.encode(end_of_turn, add_special_tokens=False)) != 1:
        raise ValueError(
            f"{where}: the template's end-of-turn token {end_of_turn} is not a single token of this tokenizer"
            + _fitting_template(tokenizer)
        )
    return end_of_turn


def _fitting_template(tokenizer: Any) -> str:
    """'; ... set chat_template: chatml_thinking' when a shipped template's end-of-turn token is one token of
    ``tokenizer`` (a ChatML base under the default llama3_thinking), else ''."""
    for name in available_templates():
        token = end_of_turn_token(load_template(name))
        if len(tokenizer.encode(token, add_special_tokens=False)) == 1:
            return f"; {name} fits it ({token} is one token): set `chat_template: {name}`"
    return ""


def plan_pad(
    tokenizer: Any,
    template: str,
    tokenizer_dir: str | os.PathLike,
    model_dir: str | os.PathLike | None = None,
    pad_token: str | None = None,
) -> tuple[str, dict[str, Any], list[int], PadChoice]:
    """What a bake of ``tokenizer`` with ``template`` (its text) will use: the end-of-turn token, the generation
    config (``model_dir``'s, else ``tokenizer_dir``'s), its stop ids and the pad choice. ``ValueError`` (one line,
    naming the folder and what is needed) when the template does not fit, or when the pad token must be added
    but ``model_dir``'s embeddings have no row for it. Nothing is changed: `tempa plan` asks it before any work."""
    end_of_turn = check_fits(tokenizer, template, tokenizer_dir)
    eot_ids = tokenizer.encode(end_of_turn, add_special_tokens=False)
    generation_config = _base_generation_config(model_dir, tokenizer_dir)
    stops = stop_token_ids(generation_config.get("eos_token_id"), tokenizer.eos_token_id, eot_ids[0])
    choice = choose_pad_token(tokenizer, end_of_turn, requested=pad_token, stop_ids=stops, template=template)
    model_vocab = model_vocab_size(model_dir)
    new_id = len(tokenizer)  # the id add_special_tokens gives a new token
    if choice.added and model_vocab is not None and new_id >= model_vocab:
        raise ValueError(
            f"{model_dir}: a pad token is needed ({choice.reason}): adding {choice.token!r} as id {new_id} needs "
            f"embeddings for {new_id + 1} tokens, but its config has vocab_size {model_vocab}; resize the model's "
            f"embeddings to {new_id + 1} or more (tempa never resizes silently), or set the base tokenizer's "
            f"pad_token (tokenizer_config.json) to an unused token of its vocabulary that is none of the stop "
            f"tokens {tokenizer.convert_ids_to_tokens(stops)}"
        )
    return end_of_turn, generation_config, stops, choice


def bake_tokenizer(
    tokenizer_dir: str | os.PathLike,
    template: str,
    out_dir: str | os.PathLike,
    *,
    model_dir: str | os.PathLike | None = None,
    pad_token: str | None = None,
    defaults: TemplateDefaults | None = None,
    generation: GenerationDefaults | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``tokenizer_dir``'s tokenizer to ``out_dir`` with ``template`` baked in; returns ``out_dir``.

    ``template`` is a shipped name or a ``.jinja`` path; ``defaults`` (thinking mode, stock preamble) rewrite
    its ``default_*`` lines (``None`` keeps the file's). The bake writes ``chat_template.jinja``; makes the
    tokenizer's eos the end-of-turn token (as Llama 3.1 Instruct's tokenizer does, so a client that stops on
    ``tokenizer.eos_token`` stops at the end of a turn); makes pad differ from both the old eos and the
    end-of-turn token (keeping, then picking an existing token, and only then adding one, which it logs as a
    warning because the model's embeddings must then be resized); and writes ``generation_config.json`` whose
    ``eos_token_id`` holds the old eos and the end-of-turn token, starting from ``model_dir``'s (else
    ``tokenizer_dir``'s) generation config, with ``generation``'s sampling defaults set. It then reloads the result, runs :func:`check_tokenizer` and raises
    ``ValueError`` listing the failed checks. Everything is written in a temporary sibling folder that is renamed
    to ``out_dir`` only after the checks pass, so a half-written bake never looks complete.
    """
    from transformers import AutoTokenizer

    out = Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; choose an empty folder or overwrite (--overwrite)")
        if not any((out / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            # --overwrite replaces an earlier bake, never an arbitrary folder someone mistyped.
            raise FileExistsError(
                f"{out} holds no tokenizer (no tokenizer.json or tokenizer_config.json); --overwrite only "
                "replaces an earlier bake: choose an empty folder"
            )
        model_files = sorted(
            path.name
            for path in out.iterdir()
            if path.name in _MODEL_FILES or path.suffix in _WEIGHT_SUFFIXES
        )
        if model_files:
            # A model folder holds a tokenizer too; replacing it with the bake would delete its weights and card.
            raise FileExistsError(
                f"{out} holds model files ({', '.join(model_files)}); --overwrite only replaces an earlier bake "
                "(tokenizer files): bake into a new folder and copy its files over the model's"
            )
    text = load_template(template)
    if defaults is not None:
        text = with_defaults(text, defaults, origin=f"chat template {template}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    end_of_turn, generation_config, stops, choice = plan_pad(
        tokenizer, text, tokenizer_dir, model_dir, pad_token
    )
    if choice.added:
        tokenizer.add_special_tokens({"pad_token": choice.token})
        logger.warning(
            "added pad token %r as id %s (%s); the model's embeddings must cover %s tokens",
            choice.token,
            tokenizer.pad_token_id,
            choice.reason,
            len(tokenizer),
        )
    else:
        tokenizer.pad_token = choice.token
        logger.info(choice.reason)
    tokenizer.eos_token = end_of_turn
    tokenizer.chat_template = text

    generation_config["eos_token_id"] = stops
    generation_config["pad_token_id"] = tokenizer.pad_token_id
    # The file is edited now, so it no longer mirrors config.json; older transformers would otherwise rebuild it
    # from the model config and drop the end-of-turn stop id.
    generation_config.pop("_from_model_config", None)
    if tokenizer.bos_token_id is not None:
        generation_config.setdefault("bos_token_id", tokenizer.bos_token_id)
    if generation is not None:
        generation_config = generation.apply(generation_config)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.bake-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's private 0700 would carry over to the published folder
    try:
        tokenizer.save_pretrained(staging)
        (staging / "generation_config.json").write_text(
            json.dumps(generation_config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        if not (staging / "chat_template.jinja").is_file():
            raise ValueError(f"{tokenizer_dir}: saving the tokenizer did not write chat_template.jinja")
        results = check_tokenizer(AutoTokenizer.from_pretrained(staging), generation_config=generation_config)
        failed = [result for result in results if not result.passed]
        if failed:
            raise ValueError(
                f"baked tokenizer from {tokenizer_dir} fails template checks: "
                + "; ".join(f"{result.name}: {result.detail}" for result in failed)
            )
        _replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _base_generation_config(
    model_dir: str | os.PathLike | None, tokenizer_dir: str | os.PathLike
) -> dict[str, Any]:
    for folder in (model_dir, tokenizer_dir):
        if folder is not None and (Path(folder) / "generation_config.json").is_file():
            path = Path(folder) / "generation_config.json"
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from None
    return {}


def model_vocab_size(model_dir: str | os.PathLike | None) -> int | None:
    """The embedding rows ``model_dir``'s config.json declares (``vocab_size``, or its ``text_config``'s for a
    multimodal config); None without a folder, a config.json or a vocab_size."""
    if model_dir is None or not (Path(model_dir) / "config.json").is_file():
        return None
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    vocab = config.get("vocab_size", config.get("text_config", {}).get("vocab_size"))
    return int(vocab) if vocab is not None else None


def _replace_folder(staging: Path, out: Path) -> None:
    # os.replace renames atomically onto an absent or empty folder; an old bake is moved aside first and
    # deleted only after the new one is in place.
    old = None
    if out.exists() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    elif out.exists():
        out.rmdir()
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
