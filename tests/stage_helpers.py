"""Building a StageContext in tests, the way the runner does, without the runner."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tempa.sft.stage_api import StageContext


def no_launch(*_args: Any) -> None:
    raise AssertionError("this stage must launch no training process")


def make_context(
    run_dir: Path, name: str, *, model_dir: Path, tokenizer_dir: Path, chat_template: str | None = None,
    stage_dirs: dict | None = None, stage_models: dict | None = None, launch=no_launch, **fields: Any,
) -> StageContext:
    """A context for stage ``name`` under ``run_dir``; ``chat_template`` defaults to the tokenizer's own."""
    if chat_template is None:
        from transformers import AutoTokenizer

        chat_template = AutoTokenizer.from_pretrained(tokenizer_dir).chat_template
    return StageContext(
        run_dir=run_dir, stage_dir=run_dir / name, stage_name=name, seed=fields.pop("seed", 0),
        model_dir=model_dir, tokenizer_dir=tokenizer_dir, chat_template=chat_template,
        stage_dirs=dict(stage_dirs or {}), stage_models=dict(stage_models or {}), launch=launch,
        log=fields.pop("log", logging.getLogger("tempa")), **fields,
    )


def baked_final(model_dir: Path, folder: Path) -> Path:
    """``model_dir``'s weights with the llama3_thinking template baked in: a final/ folder as the bake writes."""
    import shutil

    from tempa.chat_templates import bake_tokenizer

    bake_tokenizer(model_dir, "llama3_thinking", folder, model_dir=model_dir)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(model_dir / name, folder / name)
    return folder
