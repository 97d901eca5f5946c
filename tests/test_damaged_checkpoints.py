"""A checkpoint damaged after it was saved (its COMPLETE marker written, a weight file cut short since): every training
stage kind's launch names the checkpoint it resumed from and the way out, as the sft stage's did (the rl stage failed
with a bare SafetensorError)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stage_helpers import make_context
from tempa.sft.run_layout import COMPLETE
from tempa.sft.stage_api import StageError

PROMPTS = str(Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl")
TORN = ("training process exited with code 1: safetensors._safetensors_rust.SafetensorError: Error while "
        "deserializing header: incomplete metadata, file not fully covered (full log: train.log)")


def saved_checkpoint(folder: Path) -> Path:
    checkpoint = folder / "checkpoints" / "checkpoint-6"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"\0" * 100)
    (checkpoint / COMPLETE).write_text("")
    return checkpoint


def torn(*_args) -> None:
    raise StageError(TORN)


def assert_names_the_checkpoint(message: str, checkpoint: Path) -> None:
    assert message.startswith(TORN)
    assert f"it was resuming from {checkpoint}, whose files may have been damaged since they were saved" in message
    assert "move that folder aside and run again to resume from the checkpoint before it" in message


def test_an_rl_stage_names_the_damaged_checkpoint_it_resumed_from(tmp_path, tiny_model_dir):
    from tempa.alignment.rl_config import RLStageConfig
    from tempa.alignment.rl_stage import run_rl
    from tempa.chat_templates import bake_tokenizer

    checkpoint = saved_checkpoint(tmp_path / "run" / "rlvr")
    config = RLStageConfig.model_validate({
        "name": "rlvr", "kind": "rl", "prompts": {"path": PROMPTS, "limit": 4},
        "rewards": [{"type": "answer"}, {"type": "format"}], "train": {"num_generations": 2}})
    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    ctx = make_context(tmp_path / "run", "rlvr", start_model=tiny_model_dir, tokenizer_dir=tmp_path / "tok",
                       launch=torn)
    with pytest.raises(StageError) as info:
        run_rl(config, ctx)
    assert_names_the_checkpoint(str(info.value), checkpoint)


def test_a_preference_round_names_the_damaged_checkpoint_it_resumed_from(tmp_path, tiny_model_dir):
    from tempa.alignment.preference_config import PreferenceStageConfig
    from tempa.alignment.preference_stage import train_round

    config = PreferenceStageConfig.model_validate({
        "name": "align", "prompts": {"path": PROMPTS}, "sampling": {"n": 2, "max_new_tokens": 4},
        "rewards": [{"type": "format"}]})
    ctx = make_context(tmp_path / "run", "align", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       launch=torn)
    round_dir = ctx.stage_dir / "round-1"
    checkpoint = saved_checkpoint(round_dir)
    pairs = round_dir / "pairs.jsonl"
    pairs.write_text("")
    with pytest.raises(StageError) as info:
        train_round(config, ctx, round_dir, tiny_model_dir, pairs, 0, None, 4)
    assert_names_the_checkpoint(str(info.value), checkpoint)


def test_a_torn_file_without_a_checkpoint_names_the_stages_own_data_not_a_cache_folder(tmp_path):
    from tempa.sft.stage import damaged_file_hint

    prompts = tmp_path / "rlvr" / "data" / "prompts"
    hint = damaged_file_hint(TORN, None, prompts, tmp_path / "rlvr")
    assert hint == f"; a file it read may be damaged: its data ({prompts}, which the stage writes) or the model it starts from"
