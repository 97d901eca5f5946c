"""The embedded tiny default: a Llama-shaped model and a byte-level BPE tokenizer built locally.

Neither the demo recipe nor the tests may reach a model hub, so both are built here from the
shipped sample data. The tokenizer carries the Llama 3 special tokens, with a pad token that
differs from every end token, so templates and masks are exercised exactly as on a real Llama.

``tokenizer="llama3"`` swaps in Meta's real Llama 3 tokenizer instead (128,256 tokens, the same
for Llama 3, 3.1 and 3.2 text models), converted offline from the ``tokenizer.model`` that the
``llama-models`` package ships, with the special tokens named and numbered as in Llama 3.1.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

from tempa.chat_templates.thinking import THINK_CLOSE, THINK_OPEN

# Llama 3.1's special tokens, in Llama's order for the ones that matter to chat templates.
BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
EOM = "<|eom_id|>"
PYTHON_TAG = "<|python_tag|>"
PAD = "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = [BEGIN_OF_TEXT, END_OF_TEXT, START_HEADER, END_HEADER, EOT, EOM, PYTHON_TAG, PAD]
# ChatML markers are registered too, so the same tiny tokenizer can exercise the ChatML template.
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]

TINY_VOCAB_SIZE = 1024
TOKENIZERS = ("tiny", "llama3")
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_CONTEXT = 131072
TINY_MODEL_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}
# Bump when anything above or in the build changes, so cached builds are not reused.
TINY_BUILD_VERSION = "1"


def sample_data_dir() -> Path:
    """Folder of the shipped multilingual sample data (package data, works from a wheel)."""
    return Path(str(resources.files("tempa.recipes") / "data"))


def _sample_texts() -> Iterator[str]:
    for path in sorted(sample_data_dir().glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                for message in row.get("messages", []):
                    yield str(message.get("content", ""))
                    if message.get("reasoning_content"):
                        yield str(message["reasoning_content"])
    # Template scaffolding, so headers and think tags tokenise compactly.
    yield f"system user assistant tool ipython {THINK_OPEN}\n{THINK_CLOSE}\n\n" * 50


def byte_level_bpe(texts: Iterable[str], special_tokens: list[str], vocab_size: int):
    """A byte-level BPE (`tokenizers.Tokenizer`, the GPT-2/Llama 3 kind) trained on ``texts``, its special tokens
    first in id order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE):
    """Train a byte-level BPE tokenizer on the sample data; returns a PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(_sample_texts(), SPECIAL_TOKENS + CHATML_TOKENS, vocab_size),
        bos_token=BEGIN_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=PAD,
        additional_special_tokens=[START_HEADER, END_HEADER, EOT, EOM, PYTHON_TAG, *CHATML_TOKENS],
        model_max_length=TINY_MODEL_SHAPE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def llama3_special_tokens() -> list[str]:
    """Llama 3.1's 256 special tokens in id order (ids 128000-128255), named as its tokenizer names them."""
    named = {0: BEGIN_OF_TEXT, 1: END_OF_TEXT, 4: PAD, 6: START_HEADER, 7: END_HEADER, 8: EOM, 9: EOT, 10: PYTHON_TAG}
    reserved = iter(range(256))
    return [named.get(i) or f"<|reserved_special_token_{next(reserved)}|>" for i in range(256)]


def build_llama3_tokenizer():
    """Meta's Llama 3 tokenizer as a ``PreTrainedTokenizerFast``, built offline.

    The BPE ranks come from ``llama_models/llama3/tokenizer.model`` (the ``llama-models`` package);
    transformers' ``TikTokenConverter`` turns them into a fast tokenizer with Llama 3's split pattern.
    Like the Llama 3.1 base tokenizer: bos ``<|begin_of_text|>`` (added on plain encodes), eos
    ``<|end_of_text|>``, no pad token (a bake picks ``<|finetune_right_pad_id|>``).
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    try:
        import llama_models
    except ImportError as error:
        raise RuntimeError(
            "the real Llama 3 tokenizer needs the llama-models package (pip install llama-models, or the "
            "'dev' extra): it ships Meta's tokenizer.model"
        ) from error
    model_file = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    specials = llama3_special_tokens()
    backend = TikTokenConverter(vocab_file=str(model_file), pattern=LLAMA3_SPLIT, extra_special_tokens=specials).converted()
    bos_id = backend.token_to_id(BEGIN_OF_TEXT)
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{BEGIN_OF_TEXT} $A", pair=f"{BEGIN_OF_TEXT} $A {BEGIN_OF_TEXT} $B",
            special_tokens=[(BEGIN_OF_TEXT, bos_id)],
        ),
    ])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BEGIN_OF_TEXT,
        eos_token=END_OF_TEXT,
        model_max_length=LLAMA3_CONTEXT,
        clean_up_tokenization_spaces=False,
    )
    if len(tokenizer) != 128256 or tokenizer.convert_tokens_to_ids(EOT) != 128009:
        raise RuntimeError(f"{model_file}: expected Llama 3's 128,256 tokens with <|eot_id|> at 128009")
    return tokenizer


def build_tokenizer(kind: str = "tiny"):
    """The tiny trained tokenizer (``tiny``) or Meta's Llama 3 one (``llama3``)."""
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {kind!r}; expected one of {', '.join(TOKENIZERS)}")
    return build_tiny_tokenizer() if kind == "tiny" else build_llama3_tokenizer()


def build_tiny_model(tokenizer, seed: int = 0):
    """A randomly initialised Llama with the tiny shape, sized to the tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **TINY_MODEL_SHAPE,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def write_tiny_default(out_dir: str | os.PathLike, seed: int = 0, tokenizer: str = "tiny") -> Path:
    """Build the tiny model + tokenizer (``tiny`` or ``llama3``, see :func:`build_tokenizer`) into
    ``out_dir`` (safetensors); returns the path.

    Written into a temporary sibling and renamed, so a half-written build is never mistaken
    for a complete one.
    """
    out = Path(out_dir).resolve()
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        raise FileExistsError(f"{out} already holds a model; choose an empty folder")
    if out.is_dir() and any(out.iterdir()):  # checked before the build, which the final rename would then waste
        raise FileExistsError(f"{out} is not empty; choose an empty or new folder for the model")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    try:
        built = build_tokenizer(tokenizer)
        model = build_tiny_model(built, seed=seed)
        model.save_pretrained(tmp, safe_serialization=True)
        built.save_pretrained(tmp)
        from tempa.merge.publish import normalize_modes

        normalize_modes(tmp)  # save_pretrained writes the weights 0600: a shared or published folder would lack them
        if out.exists():
            out.rmdir()  # only an empty folder reaches here
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def tiny_default_key() -> str:
    """Identifies one build of the tiny default: the build code version and the sample data."""
    import hashlib

    digest = hashlib.sha256(TINY_BUILD_VERSION.encode())
    for path in sorted(sample_data_dir().glob("*.jsonl")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def _tiny_default_dir(cache_root: str | os.PathLike) -> Path:
    return Path(cache_root) / f"tiny-default-{tiny_default_key()}"


def _built(target: Path) -> bool:
    return (target / "tokenizer.json").exists() and (target / "config.json").exists()


def cached_tiny_default_dir(cache_root: str | os.PathLike | None = None) -> Path | None:
    """The tiny default's folder if this machine has built it, else None (builds nothing)."""
    from tempa.sft.files import cache_root as default_cache_root

    target = _tiny_default_dir(cache_root or default_cache_root())
    return target if _built(target) else None


def cached_tiny_default(cache_root: str | os.PathLike | None = None) -> Path:
    """The tiny default, built once per machine into a cache folder and reused afterwards."""
    from tempa.sft.files import cache_root as default_cache_root

    target = _tiny_default_dir(cache_root or default_cache_root())
    if _built(target):
        return target
    try:
        return write_tiny_default(target)
    except (FileExistsError, OSError):
        # Another process finished the same build first.
        if (target / "tokenizer.json").exists():
            return target
        raise
