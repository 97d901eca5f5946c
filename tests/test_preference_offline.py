"""Offline preference data, LoRA and the reference choice, end to end through a recipe on the tiny model.

One recipe, one LoRA preference stage, real DPOTrainer runs in launched processes: round 1 trains on an
offline chosen/rejected file (every row shape, and bad rows), round 2 is on-policy with
``reference: stage_start`` (its reference is the stage's starting model, not round 1's); each round's
adapters are merged into its saved model. (Full-weight offline DPO runs in tests/test_report.py.)
"""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch
from preference_helpers import ending_model
from safetensors.torch import load_file

from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import run_recipe

GOOD = [
    {"prompt": "Ibu kota Indonesia?", "chosen": "Jakarta.", "rejected": "Tidak tahu, mungkin Bandung atau Surabaya."},
    {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
     "rejected": [{"role": "assistant", "content": "5, pasti lima."}]},
    # trl's implicit prompt: both sides repeat the conversation (UltraFeedback binarized)
    {"chosen": [{"role": "user", "content": "Thủ đô Việt Nam?"}, {"role": "assistant", "content": "Hà Nội."}],
     "rejected": [{"role": "user", "content": "Thủ đô Việt Nam?"}, {"role": "assistant", "content": "Sài Gòn."}]},
    {"prompt": "3*3?", "chosen": [{"role": "assistant", "content": "9", "reasoning_content": "3 times 3."}],
     "rejected": "6"},
]
BAD = [
    ({"prompt": "Hi", "chosen": "Hello"}, "malformed_row"),  # no rejected
    ({"prompt": "Capital of Vietnam?", "chosen": "Hà Nội.", "rejected": "Hà Nội.\n\n"}, "identical_pair"),
    (GOOD[0], "duplicate_pair"),
    ({"prompt": "Why?", "chosen": "<think>because", "rejected": "No."}, "malformed_reasoning"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    from tempa.chat_templates import bake_tokenizer

    folder = tmp_path_factory.mktemp("offline")
    bake_tokenizer(tiny_model_dir, "llama3_thinking", folder / "tok")
    base = ending_model(tiny_model_dir, folder / "tok", folder / "base")
    lines = [json.dumps(row, ensure_ascii=False) for row in GOOD + [row for row, _ in BAD]]
    lines.insert(5, "{not json")
    (folder / "prefs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "prompts.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"Sebutkan angka {i}"}]}) + "\n" for i in range(6)))
    # A small learning rate: after the offline round the policy must still end its turns for round 2 to pair.
    train = ("{max_steps: 2, learning_rate: 5.0e-3, warmup_steps: 0, per_device_train_batch_size: 2, "
             "logging_steps: 1, save_steps: 2, max_length: 256, activation_checkpointing: false, "
             "precompute_ref_log_probs: true, loss_type: sigmoid}")
    recipe = folder / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: offline-test
        base_model: {base}
        chat_template: llama3_thinking
        seed: 3
        launch: {{use_cpu: true}}
        stages:
          - name: dpo
            kind: preference
            offline: {{path: prefs.jsonl}}
            rounds: 1
            reference: stage_start
            lora: {{r: 4, lora_alpha: 8, target_modules: all-linear}}
            prompts: {{path: prompts.jsonl}}
            sampling: {{n: 4, temperature: 1.0, max_new_tokens: 12, batch_size: 6, thinking: {{mode: "off"}}}}
            rewards: [{{type: length, unit: chars, per_token: 0.01}}, {{type: format}}]
            train: {train}
        """))
    summary = run_recipe(load_recipe(recipe), folder / "run")
    return folder, summary


def stage_dir(folder, name):
    return folder / "run" / name


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def logged(round_dir):
    outcome = json.loads((round_dir / "final" / "tempa_train_metrics.json").read_text())
    return [entry for entry in outcome["log_history"] if "loss" in entry]


def test_offline_rows_are_curated_with_reasons_and_trained_as_round_one(run):
    folder, _ = run
    round_dir = stage_dir(folder, "dpo") / "round-1"
    pairs = read_jsonl(round_dir / "pairs.jsonl")
    rejects = read_jsonl(round_dir / "rejects.jsonl")
    assert [p["chosen"][-1]["content"] for p in pairs] == ["Jakarta.", "4", "Hà Nội.", "9"]
    assert [(t["role"], t["content"]) for t in pairs[2]["prompt"]] == [("user", "Thủ đô Việt Nam?")]
    assert pairs[3]["chat_template_kwargs"]["thinking_mode"] == "on"  # the row with a trace renders on
    assert pairs[0]["chat_template_kwargs"]["thinking_mode"] == "off"
    assert all(p["rendered"]["differ"] for p in pairs)
    assert sorted(r["reason"] for r in rejects) == sorted([reason for _, reason in BAD] + ["malformed_row"])
    assert {r["row"] for r in rejects if r["reason"] == "malformed_row"} == {"line 6", "line 5"}
    stats = json.loads((round_dir / "stats.json").read_text())
    assert (stats["source"], stats["prompts"], stats["pairs"]) == ("offline", 9, 4)
    assert stats["identical_renderings"] == 1 and stats["train"]["global_step"] == 2


def test_on_policy_round_after_offline_is_anchored_to_the_stage_start(run):
    folder, _ = run
    stage = stage_dir(folder, "dpo")
    plan1 = json.loads((stage / "round-1" / "train_plan.json").read_text())
    plan2 = json.loads((stage / "round-2" / "train_plan.json").read_text())
    assert plan2["start_model"] == str(stage / "round-1" / "final")
    assert plan1["reference_model"] is None and plan2["reference_model"] == plan1["start_model"]
    # Round 1's reference is its own start: the first step's loss is exactly ln 2. Round 2 starts from the
    # trained round-1 policy but its reference is the stage's start, so the policy already differs from it.
    assert logged(stage / "round-1")[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert logged(stage / "round-1")[0]["rewards/chosen"] == pytest.approx(0, abs=1e-6)
    assert abs(logged(stage / "round-2")[0]["rewards/chosen"]) > 1e-4
    pairs = read_jsonl(stage / "round-2" / "pairs.jsonl")
    assert pairs, "the ending policy gives on-policy pairs"
    for pair in pairs:  # every kept on-policy pair shows its scores, finish reasons and the rendered check
        assert pair["chosen_finish_reason"] == pair["rejected_finish_reason"] == "stop"
        assert set(pair["chosen_scores"]) == {"length", "format", "total"}
        assert pair["rendered"]["differ"] and pair["rendered"]["chosen_tokens"] > 0
    stats = json.loads((stage / "round-2" / "stats.json").read_text())
    samples = read_jsonl(stage / "round-2" / "samples.jsonl")
    cut = sum(c["finish_reason"] == "length" for s in samples for c in s["completions"])
    assert stats["truncated"] == cut and stats["samples"] == 24


def test_lora_rounds_use_the_adapter_free_policy_as_reference_and_save_merged_weights(run):
    folder, _ = run
    stage = stage_dir(folder, "dpo")
    plan = json.loads((stage / "round-1" / "train_plan.json").read_text())
    assert plan["lora"]["r"] == 4 and plan["reference_model"] is None
    # round 1's reference is the policy with its adapters disabled: they start at zero, so it equals the
    # policy at the first step (the ln 2 and zero reward checked above)
    start = load_file(str(folder / "base" / "model.safetensors"))
    for k in (1, 2):
        final = stage / f"round-{k}" / "final"
        assert not (final / "adapter_config.json").exists()
        merged = load_file(str(final / "model.safetensors"))
        assert merged.keys() == start.keys()  # full weights, no lora_A / lora_B
        assert any(not torch.equal(start[key], merged[key]) for key in start)
    one = load_file(str(stage / "round-1" / "final" / "model.safetensors"))
    two = load_file(str(stage / "round-2" / "final" / "model.safetensors"))
    assert any(not torch.equal(one[key], two[key]) for key in one)
