"""Shared pieces of the benchmarks: synthetic reasoning-like data, the tokenizer, small models, timing.

Nothing here reaches a hub: the tokenizer is tempa's embedded tiny byte-level BPE (Llama 3 special
tokens) with the recipe template baked in, and models are randomly initialised Llama shapes.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEMPLATE = "llama3_thinking"


# --------------------------------------------------------------------------- lengths


def reasoning_lengths(n: int, seed: int = 0, *, max_tokens: int = 8192) -> list[int]:
    """Heavy-tailed sample lengths in tokens, shaped like distilled reasoning data.

    90% of samples: log-normal around 500 tokens (most of them 250-1000); 10%: a log-uniform tail
    from 1,000 to ``max_tokens``. Mean about 830 tokens; the tail holds about 40% of all tokens.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.9:
            length = int(rng.lognormvariate(6.2, 0.45))  # median e^6.2 ~ 490
        else:
            length = int(1000 * (max_tokens / 1000) ** rng.random())
        out.append(max(64, min(max_tokens, length)))
    return out


def length_summary(lengths: list[int]) -> str:
    ordered = sorted(lengths)

    def q(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    share = sum(x for x in ordered if x > 1000) / max(1, sum(ordered))
    return (
        f"n={len(ordered)} mean={sum(ordered) / len(ordered):.0f} p10={q(0.1)} p50={q(0.5)} p90={q(0.9)} "
        f"p99={q(0.99)} max={ordered[-1]}; {100 * share:.0f}% of tokens in samples over 1k"
    )


# --------------------------------------------------------------------------- tokenizer + data


def bench_tokenizer(kind: str = "tiny"):
    """tempa's tiny tokenizer (or Meta's Llama 3 one: ``kind="llama3"``) with the llama3_thinking template baked in."""
    from tempa.chat_templates import load_template
    from tempa.recipes.tiny import build_tokenizer

    tokenizer = build_tokenizer(kind)
    tokenizer.chat_template = load_template(TEMPLATE)
    return tokenizer


def single_token_words(tokenizer) -> list[str]:
    """ASCII words that the tokenizer encodes as exactly one token when preceded by a space."""
    words = []
    for piece in tokenizer.get_vocab():
        word = piece[1:]
        candidate = piece.startswith("Ġ") and word.isascii() and word.isalpha() and len(word) > 1
        if candidate and len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1:
            words.append(word)
    return sorted(words)


# Letters that stand in for a-z, A-Z: the same rows written in another script, to measure text that is not ASCII.
SCRIPTS = {"latin": None,
           "thai": "กขคงจฉชซญดตถทธนบปผพฟภมยรลวศสหอฮะาเแโใไ",
           "japanese": "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん東京都市"}


def in_script(path: Path, script: str) -> None:
    """Rewrite the conversations of ``path`` letter for letter in ``script`` (roles and keys unchanged). Not real
    Thai or Japanese: the same words in those letters, which the tokenizer splits into more, non-ASCII tokens."""
    letters = SCRIPTS[script]
    if letters is None:
        return
    table = str.maketrans("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", (letters * 3)[:52])
    rows = read_jsonl(path)
    for row in rows:
        for message in row["messages"]:
            for key in ("content", "reasoning_content"):
                if key in message:
                    message[key] = message[key].translate(table)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def conversation(length: int, words: list[str], rng: random.Random) -> dict[str, Any]:
    """One user -> assistant(reasoning, answer) conversation of about ``length`` tokens rendered."""
    body = max(24, length - 24)  # the template adds about 24 tokens of headers and think tags

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(max(1, n)))

    prompt, reasoning = max(8, body // 10), (body * 6) // 10
    answer = max(4, body - prompt - reasoning)
    return {
        "messages": [
            {"role": "user", "content": text(prompt)},
            {"role": "assistant", "content": text(answer), "reasoning_content": text(reasoning)},
        ]
    }


def write_conversations(path: Path, lengths: list[int], tokenizer, seed: int = 0) -> Path:
    words = single_token_words(tokenizer)
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for length in lengths:
            handle.write(json.dumps(conversation(length, words, rng)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False


def llama(shape: Shape, tokenizer=None, *, seed: int = 0, max_positions: int = 8192, dtype=None):
    """A randomly initialised LlamaForCausalLM of ``shape`` (vocab at least the tokenizer's)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = max(shape.vocab_size, len(tokenizer) if tokenizer is not None else 0)
    ids = {}
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=shape.tie_word_embeddings,
        **ids,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model.to(dtype) if dtype is not None else model


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- timing + machine


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (user + system)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    """Wall seconds and CPU seconds (this process and the children it waited for) of the block."""
    out: dict[str, float] = {}
    start, cpu = time.perf_counter(), cpu_seconds()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - start
        out["cpu_seconds"] = cpu_seconds() - cpu


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_line() -> str:
    """One line naming the machine and its load, printed with every result."""
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cpu = platform.processor() or platform.machine()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} | {platform.node()} | {cpu}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads) | load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
