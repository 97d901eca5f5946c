"""Training paths of the sft stage: packing isolation, LoRA merge-on-save, trackers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sft_helpers import sft_recipe, tied_copy, write_rows
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import run_recipe


@pytest.fixture(scope="module")
def tokenized_rows(tmp_path_factory, tiny_model_dir):
    """A few rows through tempa's own data pipeline (template, masks) on the baked tokenizer."""
    from transformers import AutoTokenizer

    from tempa.chat_templates import bake_tokenizer
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    folder = tmp_path_factory.mktemp("packing")
    tokenizer_dir = bake_tokenizer(tiny_model_dir, "llama3_thinking", folder / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = write_rows(folder / "rows.jsonl", n=6)
    config = DataConfig.model_validate({"sources": [{"name": "rows", "path": str(rows), "thinking_mode": "mixed",
                                                     "thinking_ratio": 0.5}]})
    prepared = prepare_sft_data(config, tokenizer, out_dir=folder / "out", cache_dir=folder / "cache", seed=0)
    return [prepared.train[i] for i in range(4)]


def per_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss of each position that predicts a trained token (labels shifted as the model does)."""
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="none",
        ignore_index=-100,
    )
    return loss[shift_labels.reshape(-1) != -100]


def test_packed_and_unpacked_give_the_same_per_token_loss(tokenized_rows, tiny_model_dir):
    """trl's padding-free packing (BFD + position_ids) lets no sample attend to another."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    examples = []
    for row in tokenized_rows:
        labels = [t if m else -100 for t, m in zip(row["input_ids"], row["assistant_masks"], strict=True)]
        examples.append({"input_ids": row["input_ids"], "labels": labels})

    with torch.no_grad():
        alone = []
        for ex in examples:
            ids, labels = torch.tensor([ex["input_ids"]]), torch.tensor([ex["labels"]])
            alone.append(per_token_loss(model(input_ids=ids).logits, labels))
        expected = torch.cat(alone)

        pad = 7  # any id: padding-free batches have no padding
        batch = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)(examples)
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
        # use_cache=False as trl's SFTTrainer passes in training: with a KV cache transformers
        # skips the packed-sequence detection that turns position_ids into per-sample masks
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        # the collator masks each sample's first label; our rows never train their first token anyway
        got = per_token_loss(packed, batch["labels"])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

        # control: the same packed tokens with running positions (plain concatenation) leak
        # attention across samples, and this comparison notices it
        leaked = model(input_ids=batch["input_ids"], use_cache=False).logits
        assert not torch.allclose(per_token_loss(leaked, batch["labels"]), expected, atol=1e-3)


SECRET = "hf_abcdefghijklmnopqrstuvwxyz123456"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One real run serves the tests below (each `tempa run` launches a training process): LoRA, reporting to
    tensorboard, with a token in the environment."""
    folder = tmp_path_factory.mktemp("sft-paths")
    recipe = sft_recipe(folder, tiny_model_dir, max_steps=4, save_steps=4)
    loaded = load_recipe(recipe, ["stages.sft.lora={r: 4, lora_alpha: 8, lora_dropout: 0.0}",
                                  "stages.sft.train.learning_rate=5e-2", "stages.sft.train.report_to=[tensorboard]"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", SECRET)
        run_recipe(loaded, folder / "run")
    return folder / "run"


def test_lora_adapters_are_merged_into_the_saved_model(lora_run, tiny_model_dir):
    final = lora_run / "sft" / "final"
    assert not list(final.glob("adapter_*")), "adapters must be merged, not saved beside the model"
    start, merged = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert merged.keys() == start.keys()  # plain Llama names, no lora_A/lora_B/base_layer
    changed = [k for k in start if not torch.equal(start[k], merged[k])]
    assert changed and all("proj" in k for k in changed)  # LoRA touches the linear layers only
    assert torch.equal(start["model.embed_tokens.weight"], merged["model.embed_tokens.weight"])


def test_report_to_tensorboard_writes_event_files(lora_run):
    events = list((lora_run / "sft").rglob("events.out.tfevents.*"))
    assert events and all(path.stat().st_size > 0 for path in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert any("loss" in tag for tag in acc.Tags()["scalars"])
    plan = json.loads((lora_run / "sft" / "train_plan.json").read_text())
    assert plan["train_args"]["report_to"] == ["tensorboard"]


def test_resolved_recipe_records_no_secret_from_the_environment(lora_run):
    for path in Path(lora_run).rglob("*"):
        if path.is_file() and path.suffix in {".json", ".yaml", ".md", ".log", ".txt", ".sh", ".jsonl"}:
            assert SECRET not in path.read_text(errors="replace"), path


def test_lora_trains_the_modules_to_save_whole_and_merges_them(tmp_path, tiny_model_dir):
    """A new language's tokens need their embeddings trained: `modules_to_save` (and rsLoRA's scaling) were refused
    as unknown fields of `lora:`."""
    recipe = sft_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=2)
    loaded = load_recipe(recipe, ["stages.sft.lora={r: 4, lora_alpha: 8, lora_dropout: 0.0, use_rslora: true, "
                                  "target_modules: [q_proj, v_proj], modules_to_save: [embed_tokens]}",
                                  "stages.sft.train.learning_rate=5e-2"])
    run_recipe(loaded, tmp_path / "run")
    stage = tmp_path / "run" / "sft"
    adapter = json.loads((stage / "checkpoints" / "checkpoint-2" / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["embed_tokens"] and adapter["use_rslora"] is True
    start, merged = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(stage / "final" / "model.safetensors"))
    assert merged.keys() == start.keys()
    changed = sorted(k for k in start if not torch.equal(start[k], merged[k]))
    assert "model.embed_tokens.weight" in changed
    assert all(k == "model.embed_tokens.weight" or k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    # the log says how much trains: the adapters, r x (in + out) per module, and the whole embedding (hand math)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    hidden, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    kv = config["num_key_value_heads"] * config.get("head_dim", hidden // config["num_attention_heads"])
    adapters = layers * 4 * ((hidden + hidden) + (hidden + kv))
    whole_model = sum(t.numel() for t in start.values()) + adapters + vocab * hidden  # + peft's trained copy
    line = f"LoRA trains {adapters + vocab * hidden:,} of the model's {whole_model:,} parameters"
    assert line in (stage / "logs" / "train.log").read_text()


def test_lora_modules_to_save_keep_a_tied_base_tied(tmp_path, tiny_model_dir):
    """On a base with tied embeddings (small Qwen models, Llama 3.2), `modules_to_save: [embed_tokens]` untied it on
    merging: the final model grew an lm_head that was the old embedding, so a new language's tokens were learnt as
    inputs and never as outputs."""
    from transformers import AutoModelForCausalLM

    tied = tied_copy(tiny_model_dir, tmp_path / "tied")
    recipe = sft_recipe(tmp_path, tied, max_steps=2, save_steps=2)
    loaded = load_recipe(recipe, ["stages.sft.lora={r: 4, lora_alpha: 8, lora_dropout: 0.0, "
                                  "target_modules: [q_proj], modules_to_save: [embed_tokens]}",
                                  "stages.sft.train.learning_rate=5e-2"])
    run_recipe(loaded, tmp_path / "run")
    final = tmp_path / "run" / "sft" / "final"
    assert json.loads((final / "config.json").read_text())["tie_word_embeddings"] is True
    merged, start = load_file(str(final / "model.safetensors")), load_file(str(tied / "model.safetensors"))
    assert "lm_head.weight" not in merged  # one matrix, read back as both ends
    assert not torch.equal(merged["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    reloaded = AutoModelForCausalLM.from_pretrained(final)
    assert torch.equal(reloaded.lm_head.weight, reloaded.model.embed_tokens.weight)


def test_the_embeddings_of_a_tied_base_are_found_by_any_name_peft_takes(tmp_path, tiny_model_dir, monkeypatch):
    """peft matches modules_to_save by suffix: `model.embed_tokens` trains the tied embeddings too, and slipped past
    the FSDP refusal and the lm_head de-duplication that looked for the bare names."""
    import shutil

    from transformers import AutoConfig

    from tempa.sft.train_plan import LoraSettings, TrainPlan
    from tempa.sft.train_worker import _modules_to_save

    tied = tmp_path / "tied"
    shutil.copytree(tiny_model_dir, tied)
    config = AutoConfig.from_pretrained(tied)
    config.tie_word_embeddings = True
    config.save_pretrained(tied)

    def plan(names: list[str]) -> TrainPlan:
        return TrainPlan.standalone(tied, tmp_path / "out", {}).model_copy(
            update={"lora": LoraSettings(modules_to_save=names)})

    assert _modules_to_save(plan(["model.embed_tokens", "lm_head"])) == ["model.embed_tokens"]
    assert _modules_to_save(plan(["q_norm"])) == ["q_norm"]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RuntimeError, match="FSDP cannot shard a tied copy"):
        _modules_to_save(plan(["model.embed_tokens"]))
    assert _modules_to_save(plan(["q_norm"])) == ["q_norm"]
