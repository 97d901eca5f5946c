"""Building a StageContext in tests, the way the runner does, without the runner."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tempa.sft.checkpoints import complete_checkpoints
from tempa.sft.stage_api import StageConfigBase, StageContext, StageResult, TrainingEnv, Upstream


def no_launch(*_args: Any) -> None:
    raise AssertionError("this stage must launch no training process")


def make_context(
    run_dir: Path, name: str, *, start_model: Path, tokenizer_dir: Path, chat_template: str | None = None,
    upstream: list[Upstream] | None = None, launch=no_launch, base_model: Path | None = None,
    use_cpu: bool = False, seed: int = 0, log: logging.Logger | None = None, **fields: Any,
) -> StageContext:
    """A context for stage ``name`` under ``run_dir``; ``chat_template`` defaults to the tokenizer's own."""
    if chat_template is None:
        from transformers import AutoTokenizer

        chat_template = AutoTokenizer.from_pretrained(tokenizer_dir).chat_template
    return StageContext(
        stage_name=name, stage_dir=run_dir / name, seed=seed, start_model=start_model,
        base_model=base_model or start_model, tokenizer_dir=tokenizer_dir, chat_template=chat_template,
        upstream={up.name: up for up in upstream or []}, launch=launch,
        training=TrainingEnv(use_cpu=use_cpu), log=log or logging.getLogger("tempa"), **fields,
    )


def done(name: str, result: StageResult, *, kind: str = "sft", config: StageConfigBase | None = None,
         duration_s: float | None = None) -> Upstream:
    """An earlier stage that finished with ``result``, as the runner hands it to later stages."""
    return Upstream(name, kind, config or StageConfigBase(kind=kind, name=name), result, duration_s)


def trained(stage_dir: Path) -> StageResult:
    """What a training stage in ``stage_dir`` hands on: ``final/`` and its complete checkpoints."""
    return StageResult(model=stage_dir / "final", checkpoints=complete_checkpoints(stage_dir / "checkpoints"))


def sft_with_one_checkpoint(run_dir: Path, model_dir: Path) -> Path:
    """An sft stage in ``run_dir/sft`` whose ``final/`` and one complete ``checkpoint-2`` are ``model_dir``'s."""
    import shutil

    sft = run_dir / "sft"
    ckpt = sft / "checkpoints" / "checkpoint-2"
    shutil.copytree(model_dir, ckpt)
    (ckpt / "COMPLETE").write_text("")
    shutil.copytree(model_dir, sft / "final")
    return sft


def baked_final(model_dir: Path, folder: Path) -> Path:
    """``model_dir``'s weights with the llama3_thinking template baked in: a final/ folder as the bake writes."""
    import shutil

    from tempa.chat_templates import bake_tokenizer

    bake_tokenizer(model_dir, "llama3_thinking", folder, model_dir=model_dir)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(model_dir / name, folder / name)
    return folder


@contextlib.contextmanager
def another_run_holds(run_dir: Path, *, for_s: float = 60) -> Iterator[subprocess.Popen]:
    """A `tempa run` of another process holding ``run_dir`` (its RunLock) for ``for_s`` seconds at most while the
    block runs: what a joining node waits for, and a second orchestrator is refused by."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from pathlib import Path; from tempa.recipes.rundir import RunLock\n"
         f"with RunLock(Path({str(run_dir)!r})):\n    print('held', flush=True); time.sleep({for_s})"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` is still alive."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_ships(name: str, run_dir: Path) -> None:
    """The seed recipe ``name``'s tiny run in ``run_dir`` ran its full-scale pipeline (same stages, kinds, order)
    and ended in a final model a user can ship: it loads, its tokenizer passes every chat-template check, and the
    recipe's serving defaults (Swallow's card: temperature 0.6, top-p 0.9) reach its generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tempa.chat_templates import check_tokenizer
    from tempa.recipes.loader import load_recipe

    full, tiny = load_recipe(name), load_recipe(name, profile="tiny")
    assert [(s.name, s.kind) for s in tiny.stages] == [(s.name, s.kind) for s in full.stages]
    final = run_dir / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    AutoModelForCausalLM.from_pretrained(final)
    generation = GenerationConfig.from_pretrained(final)
    results = check_tokenizer(tokenizer, generation_config=generation)
    assert all(result.passed for result in results), [r for r in results if not r.passed]
    wanted = full.recipe.generation.model_dump(exclude_none=True)
    assert {key: getattr(generation, key) for key in wanted} == wanted


def record_done(run_dir: Path, *decisions: Any) -> None:
    """Each planned stage's record as the runner leaves it after a complete run: its manifest, then DONE."""
    import time

    from tempa.recipes.rundir import Manifest, mark_done

    for decision in decisions:
        stage_dir = run_dir / decision.name
        stage_dir.mkdir(parents=True)
        Manifest(name=decision.name, kind=decision.kind, fingerprint=decision.fingerprint,
                 components=decision.components, status="done", action=decision.action, started_at=time.time(),
                 config=decision.config).write(stage_dir, run_dir)
        mark_done(stage_dir, decision.fingerprint)
