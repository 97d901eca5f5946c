"""A bake that re-runs keeps the GGUF exports in its final folder when what they were made from comes out byte for
byte the same (a side experiment appended to the run re-bakes for its model card alone), and removes them, naming
what changed, when not. The Swallow trial's exports of unchanged weights were deleted 'made from the previous model'."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from stage_helpers import done, make_context
from tempa.merge import BakeStageConfig, run_bake
from tempa.merge.gguf_export import export_gguf
from tempa.sft.stage_api import RecipeInfo, StageResult

RECIPE = RecipeInfo(name="swallow", base_model="tempa:tiny", chat_template="llama3_thinking")


@pytest.fixture(scope="module")
def recipe_tokenizer(tiny_model_dir: Path, tmp_path_factory) -> Path:
    from tempa.chat_templates import bake_tokenizer

    return bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path_factory.mktemp("tok") / "tokenizer",
                          model_dir=tiny_model_dir)


def bake(run_dir: Path, source: Path, tokenizer: Path, *, extra_stage: bool = False, **config) -> Path:
    from tempa.chat_templates import load_template

    stages = [done("sft", StageResult(model=source, metrics={"train_loss": 1.0}))]
    if extra_stage:  # a side experiment the bake does not start from: only the card lists it
        stages.append(done("merge-dare", StageResult(model=run_dir / "merge-dare" / "final"), kind="merge"))
    ctx = make_context(run_dir, "bake", start_model=source, tokenizer_dir=tokenizer,
                       chat_template=load_template("llama3_thinking"), upstream=stages, recipe=RECIPE,
                       base_model=source, log=logging.getLogger("tempa"))
    run_bake(BakeStageConfig.model_validate({"name": "bake", "kind": "bake", "smoke_test": False, **config}), ctx)
    return run_dir / "bake" / "final"


@pytest.fixture()
def exported(tmp_path, tiny_model_dir, recipe_tokenizer):
    """A baked final folder with an f16 GGUF and its Modelfile exported into it."""
    run_dir = tmp_path / "run"
    final = bake(run_dir, tiny_model_dir, recipe_tokenizer)
    export = export_gguf(final)
    assert export.modelfile_path is not None
    return run_dir, final, {export.gguf_path.name: export.gguf_path.read_bytes(),
                            export.modelfile_path.name: export.modelfile_path.read_text()}


def test_a_bake_rerun_for_its_card_alone_keeps_the_exports(exported, tiny_model_dir, recipe_tokenizer, caplog):
    run_dir, final, files = exported
    card = (final / "README.md").read_text()
    with caplog.at_level(logging.INFO, logger="tempa"):
        bake(run_dir, tiny_model_dir, recipe_tokenizer, extra_stage=True)
    assert (final / "README.md").read_text() != card  # it did bake again: the card lists the new stage
    assert "merge-dare" in (final / "README.md").read_text()
    for name, content in files.items():
        assert (final / name).is_file(), name
        assert (final / name).read_bytes() == (content if isinstance(content, bytes) else content.encode())
    assert "removing" not in caplog.text
    assert f"bake: kept {', '.join(sorted(files))}: the weights" in caplog.text


def test_a_bake_whose_generation_config_changes_removes_the_exports_saying_so(exported, tiny_model_dir,
                                                                            recipe_tokenizer, caplog):
    run_dir, final, files = exported
    with caplog.at_level(logging.WARNING, logger="tempa"):
        bake(run_dir, tiny_model_dir, recipe_tokenizer, generation={"temperature": 0.3})
    assert not any((final / name).exists() for name in files)
    line = next(record.getMessage() for record in caplog.records if "removing" in record.getMessage())
    assert line.startswith(f"bake: removing {', '.join(sorted(files))} that `tempa export gguf` wrote")
    assert "what they were made from changed (generation_config.json): export again" in line


def test_a_bake_of_other_weights_removes_the_exports_naming_the_weights(exported, tiny_model_dir, recipe_tokenizer,
                                                                       tmp_path, caplog):
    import shutil

    from safetensors.torch import load_file, save_file

    run_dir, final, files = exported
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    tensors = load_file(other / "model.safetensors")
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING, logger="tempa"):
        bake(run_dir, other, recipe_tokenizer)
    assert not any((final / name).exists() for name in files)
    assert "what they were made from changed (model.safetensors): export again" in caplog.text


def test_a_renamed_recipe_removes_exports_that_carry_the_old_name(exported, tiny_model_dir, recipe_tokenizer, caplog):
    run_dir, final, files = exported
    # export_name reads the run's recipe.resolved.yaml, which the runner writes before the bake runs
    (run_dir / "recipe.resolved.yaml").write_text("name: swallow-ja\n")
    with caplog.at_level(logging.WARNING, logger="tempa"):
        bake(run_dir, tiny_model_dir, recipe_tokenizer)
    assert not any((final / name).exists() for name in files)
    assert "the model's name (swallow-ja, not the one bake-f16.gguf carries)" in caplog.text
