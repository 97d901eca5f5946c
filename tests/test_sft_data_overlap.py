"""Rows that overlap: duplicates kept only where they can train, evaluation prompts kept out of training, and
held-out rows that never train through a copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_sft_data_pipeline import chat, config, prepare, rejects, write_jsonl

from tempa.sft.data_report import DataMix


@pytest.fixture(scope="session")
def tokenizer(tiny_tokenizer_dir: Path) -> Any:
    """The tiny tokenizer with the real thinking template baked in (treat as read-only)."""
    from transformers import AutoTokenizer

    from tempa.chat_templates import load_template

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.chat_template = load_template("llama3_thinking")
    return tok


# Eight prompts that both a reasoning source (long traces) and an instruction source carry: the Swallow /
# SEA-LION-R mix of distilled traces and plain instruction rows.
SHARED = [
    f"富士山について質問{i}: {w}はどうですか"
    for i, w in enumerate(["登山道", "天気", "歴史", "温泉", "交通手段", "高さ", "植物", "伝説"])
]


def test_a_duplicate_too_long_to_train_leaves_its_copy_in_another_source(
    tmp_path: Path, tokenizer: Any
) -> None:
    write_jsonl(
        tmp_path / "reason.jsonl",
        [chat(q, "答え", "考える " * 400) for q in SHARED] + [chat("short one", "ok", "fine")],
    )
    write_jsonl(tmp_path / "inst.jsonl", [chat(q, "短い答えです") for q in [*SHARED, "別の質問"]])
    cfg = config(
        tmp_path,
        [
            {"name": "reason", "path": "reason.jsonl"},
            {"name": "inst", "path": "inst.jsonl", "thinking_mode": "off"},
        ],
        curation={"dedup": True},
    )
    prepare(tmp_path, cfg, tokenizer, max_length=256)
    reason, inst = DataMix.read(tmp_path / "out" / "mix.json").sources
    # The traces are too long; the instruction rows with the same prompts are what trains on them.
    assert reason.rejects == {"too_long": len(SHARED)}
    assert inst.rejects == {} and inst.rows_kept == len(SHARED) + 1
    assert {r["reason"] for r in rejects(tmp_path)} == {"too_long"}
