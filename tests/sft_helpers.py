"""Small SFT recipes on the tiny model, shared by the SFT, resume and distributed tests."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

WORDS = ["satu", "dua", "tiga", "một", "hai", "ba", "one", "two", "three", "หนึ่ง", "สอง", "ஒன்று"]


def write_rows(path: Path, n: int = 48, seed: int = 0) -> Path:
    """Conversations with a learnable pattern (the answer repeats the question's words)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
            row = {
                "messages": [
                    {"role": "user", "content": f"Ulangi: {words} #{i}"},
                    {"role": "assistant", "content": f"{words}"},
                ]
            }
            if i % 2 == 0:
                row["messages"][1]["reasoning_content"] = f"The user asks me to repeat {len(words.split())} words."
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def sft_recipe(
    folder: Path,
    base_model: Path,
    *,
    max_steps: int = 12,
    save_steps: int = 4,
    launch: str = "launch: {use_cpu: true}",
    stages: str | None = None,
) -> Path:
    """A one-stage (or custom) SFT recipe over freshly written rows in ``folder``."""
    write_rows(folder / "rows.jsonl")
    stage = stages or f"""
          - name: sft
            kind: sft
            data:
              heldout: 4
              sources:
                - {{name: rows, path: rows.jsonl, thinking_mode: mixed, thinking_ratio: 0.5}}
            train:
              max_steps: {max_steps}
              learning_rate: 3.0e-3
              per_device_train_batch_size: 4
              max_length: 256
              logging_steps: 2
              save_steps: {save_steps}
              save_total_limit: 3
        """
    path = folder / "sft.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: sft-test
        base_model: {base_model}
        seed: 3
        {launch}
        stages:
        """)
        + textwrap.indent(textwrap.dedent(stage), "  ")
    )
    return path


def prepared_rows(folder: Path, model_dir: Path, *, n: int, seed: int = 0, max_length: int = 512):
    """(tokenised dataset, tokenizer): ``write_rows`` through tempa's data pipeline, as the trainer receives them."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from tempa.chat_templates import load_template
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    write_rows(folder / "rows.jsonl", n=n, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = load_template("llama3_thinking")
    data = DataConfig.model_validate({"sources": [{"name": "rows", "path": "rows.jsonl", "thinking_mode": "mixed",
                                                   "thinking_ratio": 0.5}]}, context={"base_dir": str(folder)})
    prepared = prepare_sft_data(data, tokenizer, out_dir=folder / "out", cache_dir=folder / "cache", seed=0,
                                max_length=max_length)
    return load_from_disk(str(prepared.train_path)), tokenizer
