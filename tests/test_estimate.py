"""`tempa plan --hardware`: model shapes, tokens, steps, ZeRO-3 memory and the will-not-fit warning."""

from __future__ import annotations

import contextlib
import io
import json
import re
import textwrap
from pathlib import Path

import pytest

from tempa.recipes.estimate import (
    GIB,
    PACKING_FILL,
    EstimateError,
    count_parameters,
    estimate_recipe,
    parse_hardware,
    render_estimate,
    resolve_shape,
    zero3_model_states_bytes,
)
from tempa.recipes.loader import load_recipe
from tempa.sft.data_size import TOKENS_PER_ANSWER, TOKENS_PER_RENDERING, TOKENS_PER_TURN

# Seed recipes' base models: tempa ships their config.json (recipes/model_configs/), so they plan offline.
HUB_70B = "aisingapore/Llama-SEA-LION-v3-70B"
HUB_8B = "aisingapore/Llama-SEA-LION-v3-8B-IT"


def write_recipe(folder: Path, base_model: str, stages: str) -> Path:
    (folder / "rows.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}) + "\n" for i in range(40)))
    path = folder / "recipe.yaml"
    path.write_text(f"name: est\nbase_model: {base_model}\nlaunch: {{accelerate_config: zero3}}\nstages:\n"
                    + textwrap.indent(textwrap.dedent(stages), "  "))
    return path


SEA70_STAGES = """
- name: sft-general
  kind: sft
  data:
    sources:
      - {name: general, path: org/sea-instruct, rows: 500000, thinking_mode: "off"}
  train: {num_train_epochs: 2, max_length: 4096, per_device_train_batch_size: 1}
- name: sft-reasoning
  kind: sft
  data:
    sources:
      - {name: r1, path: org/r1-traces, tokens: 1000000000, thinking_mode: "on"}
  train: {max_length: 8192, per_device_train_batch_size: 1}
"""


def transformers_count(config) -> tuple[int, int]:
    """(parameters, largest module's own parameters) of a real (CPU) model: transformers' own count."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return model.num_parameters(), largest


TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 1000}


@pytest.mark.parametrize(
    ("model_type", "extra"),
    [
        ("llama", {"tie_word_embeddings": False}),
        ("llama", {"tie_word_embeddings": True, "mlp_bias": True}),
        ("qwen2", {"tie_word_embeddings": False}),  # q/k/v biases
        ("gemma2", {"head_dim": 32}),  # head_dim != hidden / heads, four norms per layer, tied head
        ("mistral", {}),
    ],
)
def test_meta_device_count_equals_transformers_count(model_type: str, extra: dict):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **TINY_SHAPE, **extra)
    assert count_parameters(config) == transformers_count(config)


@pytest.mark.parametrize(("model_id", "published"), [(HUB_70B, 70_553_706_496), (HUB_8B, 8_030_261_248),
                                                      ("tokyotech-llm/Llama-3.1-Swallow-8B-v0.2", 8_030_261_248)])
def test_shipped_configs_give_the_published_sizes(model_id: str, published: int):
    """Llama 3.1 70B / 8B as published; these seed models keep Llama 3.1's shape and vocabulary."""
    shape, source = resolve_shape(model_id)
    assert shape is not None and shape.parameters == published
    assert source.endswith(f"model_configs/{model_id.replace('/', '__')}.json)")
    assert resolve_shape(model_id.upper())[0].parameters == published  # hub ids are case-insensitive


def test_70b_model_states_agree_with_deepspeed():
    """Our per-GPU model states for Llama-3.1-70B on 8 GPUs vs DeepSpeed's own estimator, within 2%."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold

    shape, _ = resolve_shape(HUB_70B)
    total, largest = shape.parameters, shape.largest_layer_parameters
    assert largest == 128256 * 8192  # the embedding (and the untied LM head)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        estimate_zero3_model_states_mem_needs_all_cold(total_params=total, largest_layer_params=largest,
                                                       num_gpus_per_node=8, num_nodes=1)
    line = next(x for x in printed.getvalue().splitlines()
                if "offload_param=none" in x and "offload_optimizer=none" in x and "zero_init=1" in x)
    deepspeed_gib = float(re.findall(r"([\d.]+)GB", line)[1])  # columns: per CPU | per GPU (GiB)
    ours_gib = sum(zero3_model_states_bytes(total, largest, 8).values()) / GIB
    assert ours_gib == pytest.approx(deepspeed_gib, rel=0.02)
    assert 140 < ours_gib < 160  # 18 B/param / 8 GPUs + the gathered embedding: ~152 GiB


def test_hub_config_in_the_hf_cache_is_used_offline(tmp_path: Path, monkeypatch):
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--acme--tiny-llm"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama", **TINY_SHAPE}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert resolve_shape("acme/tiny-llm")[0] is None  # not cached yet (nor shipped)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    shape, source = resolve_shape("acme/tiny-llm")
    from transformers import AutoConfig

    assert shape is not None and "Hugging Face cache" in source
    assert shape.parameters == transformers_count(AutoConfig.for_model("llama", **TINY_SHAPE))[0]


def test_hardware_strings():
    eight, sixteen, one = parse_hardware("8xH100"), parse_hardware("16xH100"), parse_hardware("1xH200")
    assert (eight.gpus, eight.nodes, eight.gpu.name) == (8, 1, "H100")
    assert (sixteen.gpus, sixteen.nodes) == (16, 2)
    assert (one.gpus, one.gpu.name) == (1, "H200") and one.gpu.memory_gib > eight.gpu.memory_gib
    for bad in ("8xV100", "eight H100"):
        with pytest.raises(EstimateError, match="expected COUNTxGPU such as 8xH100, or NODESxGPUSxGPU"):
            parse_hardware(bad)
    with pytest.raises(EstimateError, match="the GPU count must be at least 1"):
        parse_hardware("0xH100")
    with pytest.raises(EstimateError, match=r"a node's RAM must be more than 0 \(e.g. @2TiB\)"):
        parse_hardware("8xH100@0G")
    assert parse_hardware("8XH100").gpus == 8


def test_70b_hub_recipe_plans_without_download_and_warns(tmp_path: Path):
    loaded = load_recipe(write_recipe(tmp_path, HUB_70B, SEA70_STAGES))
    assert loaded.recipe.base_model == HUB_70B  # the loader keeps a hub id as is: nothing to fetch
    general, reasoning = estimate_recipe(loaded, "8xH100", mfu=0.4)
    assert general.tokens_per_epoch == 500_000 * 800 and "assumed" in " ".join(general.notes)
    assert general.trained_tokens == 2 * general.tokens_per_epoch
    assert general.tokens_per_step == int(8 * 4096 * PACKING_FILL)
    assert general.steps == -(-general.trained_tokens // general.tokens_per_step)
    assert reasoning.trained_tokens == 1_000_000_000
    # 70B full fine-tuning needs ~152 GiB of model states per GPU on 8 GPUs: it cannot fit in 80 GiB.
    assert not general.fits and not reasoning.fits
    assert general.gpus_needed is not None and general.gpus_needed % 8 == 0
    bigger = estimate_recipe(loaded, f"{general.gpus_needed}xH100", mfu=0.4)[0]
    # it fits; what more GPUs change is the global batch (8 rows per step on the launch's 8 GPUs)
    assert bigger.fits and [w.split(":")[1] for w in bigger.warnings] == [
        f" {general.gpus_needed // 8}x8xH100 changes the global batch from 8 (the launch's 8 processes) to "
        f"{general.gpus_needed} rows per step, and with it the learning-rate schedule's meaning; 8 cannot be kept on "
        f"{general.gpus_needed} data-parallel ranks, whose global batch is a multiple of {general.gpus_needed}"]
    assert bigger.hours == pytest.approx(general.hours * 8 / general.gpus_needed)
    text = render_estimate(loaded, "8xH100", 0.4)
    assert "70.6B parameters (counted on the meta device)" in text
    assert "model_configs/aisingapore__Llama-SEA-LION-v3-70B.json" in text
    assert "WARNING: stage sft-general will not fit on 8xH100" in text
    assert "launch.accelerate_config: zero3-offload" in text
    # the stages whose time the hours leave out are named (a synthesize stage's teacher was not even mentioned)
    untimed = [f"{s.name} ({s.kind})" for s in loaded.stages if s.name not in {e.name for e in
                                                                               estimate_recipe(loaded, "8xH100")}]
    assert untimed and f"not in the hours: {', '.join(untimed)}" in " ".join(text.split())


def test_8b_fits_on_a_node_but_not_on_one_gpu(tmp_path: Path):
    loaded = load_recipe(write_recipe(tmp_path, HUB_8B, SEA70_STAGES))
    node = estimate_recipe(loaded, "8xH100")[0]
    single = estimate_recipe(loaded, "1xH100")[0]
    assert node.fits and not node.warnings
    assert not single.fits and single.memory.model_states > 100  # 18 B x 8B parameters on one GPU
    assert node.hours == pytest.approx(single.hours / 8)


def finish(run_dir: Path, name: str, kind: str, result, *, done: bool = True) -> None:
    """A stage as the runner leaves it: a manifest with its typed result, and (when done) DONE last."""
    from tempa.recipes.rundir import Manifest, mark_done

    stage_dir = run_dir / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    Manifest(name=name, kind=kind, fingerprint="f", status="done" if done else "running", started_at=0.0,
             result=result.model_dump(mode="json", context={"run_dir": run_dir})).write(stage_dir, run_dir)
    if done:
        mark_done(stage_dir, "f")


def test_data_stats_replace_the_assumptions(tmp_path: Path):
    from tempa.sft.data_report import DataMix, MixTotals
    from tempa.sft.stage import SFTResult

    loaded = load_recipe(write_recipe(tmp_path, HUB_70B, SEA70_STAGES))
    totals = MixTotals(rows_in=1000, rows_kept=900, train_samples=1000, eval_samples=0, tokens_kept=1_234_567,
                       trained_tokens_kept=1_000_000, heldout_tokens=0, thinking_on_rows_kept=0, rejects=100)
    mix = DataMix(seed=0, cache_key="k", sources=[], total=totals)
    finish(tmp_path / "run", "sft-general", "sft", SFTResult(data=mix))
    general, reasoning = estimate_recipe(loaded, "8xH100", run_dir=tmp_path / "run")
    assert general.tokens_per_epoch == 1_234_567 and "data mix" in general.tokens_source
    assert "assumed" in reasoning.tokens_source or "recipe" in reasoning.tokens_source
    assert "the stage's data mix" in render_estimate(loaded, "8xH100", run_dir=tmp_path / "run")


def test_local_rows_weight_and_max_steps(tmp_path: Path):
    stages = """
    - name: sft
      kind: sft
      data:
        heldout: 4
        sources:
          - {name: rows, path: rows.jsonl, weight: 2.0, thinking_mode: "off"}
    - name: capped
      kind: sft
      data:
        sources:
          - {name: rows, path: rows.jsonl, thinking_mode: "off"}
      train: {max_steps: 7}
    - name: big
      kind: sft
      data:
        sources:
          - {name: rows, path: org/big, rows: 100000, thinking_mode: "off"}
      train: {max_steps: 5}
    """
    loaded = load_recipe(write_recipe(tmp_path, HUB_70B, stages))
    counted, capped, big = estimate_recipe(loaded, "8xH100")
    assert big.trained_tokens == 5 * big.tokens_per_step and big.epochs == big.trained_tokens / (100000 * 800)
    # Measured on the file's rows (no tokenizer here: 4 bytes a token, so "q7" and "a" are a token each),
    # not the 800 assumed for a hub dataset.
    per_row = 1 + 1 + 2 * TOKENS_PER_TURN + TOKENS_PER_ANSWER + TOKENS_PER_RENDERING
    assert counted.tokens_per_epoch == (40 - 4) * 2 * per_row  # 40 rows in the file, 4 held out, weight 2
    # max_steps decides: 7 steps, each at most one epoch's tokens (40 rows fit in one step here), so 7 epochs.
    assert capped.tokens_per_step > capped.tokens_per_epoch == 40 * per_row
    assert capped.steps == 7 and capped.trained_tokens == 7 * 40 * per_row and capped.epochs == 7
    notes = " ".join(render_estimate(loaded, "8xH100").split())
    assert "~18 tokens/row measured on 40 sampled rows with ~4 bytes of text per token (off)" in notes
    assert "~800 tokens/row assumed (off)" in notes  # the hub dataset


@pytest.mark.parametrize("base", ["folder", "tiny"])
def test_a_local_base_model_counts_sampled_rows_with_its_own_tokenizer_and_the_recipes_template(
        tmp_path: Path, tiny_model_dir: Path, base: str):
    """A base model folder, and the embedded tiny default (counted at 4 bytes a token before)."""
    from transformers import AutoTokenizer

    from tempa.recipes.runner import template_text
    from tempa.sft.data import prepare_sft_data

    stages = """
    - name: sft
      kind: sft
      data:
        heldout: 0
        sources:
          - {name: rows, path: rows.jsonl, thinking_mode: "off"}
    """
    loaded = load_recipe(write_recipe(tmp_path, str(tiny_model_dir) if base == "folder" else "tempa:tiny", stages))
    (estimate,) = estimate_recipe(loaded, "8xH100")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # the tiny default's tokenizer
    tokenizer.chat_template = template_text(loaded)
    mix = prepare_sft_data(loaded.stages[0].data, tokenizer, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache",
                           seed=0).mix
    per_row = round(mix.total.tokens_kept / 40)  # 40 rows: the sample is the whole file
    assert estimate.tokens_per_epoch == 40 * per_row
    assert (f"~{per_row} tokens/row measured on 40 sampled rows with the base model's tokenizer and the recipe's "
            "template (off)") in " ".join(render_estimate(loaded, "8xH100").split())


def test_rl_and_preference_prompts_are_measured_with_the_base_models_tokenizer(tmp_path: Path, tiny_model_dir: Path):
    """The rl and preference estimates took every prompt as ~200 tokens: a trial's ~27-token prompts were planned
    at 6.7k trained tokens where the run trained 1,806. Their prompts are rendered as they are sampled from."""
    from transformers import AutoTokenizer

    from tempa.recipes.runner import template_text

    questions = [f"Berapa {k} + {k + 1}? Jawab singkat." for k in range(32)]
    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q}], "answer": str(2 * k + 1)}) + "\n"
        for k, q in enumerate(questions)))
    stages = """
    - name: rlvr
      kind: rl
      prompts: {path: prompts.jsonl}
      rewards: [{type: answer}]
      train: {num_generations: 4, max_completion_length: 64, per_device_train_batch_size: 4, use_vllm: false}
    - name: align
      kind: preference
      prompts: {path: prompts.jsonl}
      sampling: {n: 2, max_new_tokens: 64}
      rewards: [{type: answer}]
    """
    loaded = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), stages))
    rl, preference = estimate_recipe(loaded, "1xH100")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = template_text(loaded)
    prompt = round(sum(len(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                         tokenize=True, return_dict=True)["input_ids"])
                       for q in questions) / len(questions))
    assert prompt < 100  # far from the 200 assumed
    assert rl.tokens_per_epoch == 32 * 4 * (prompt + 32)  # every prompt, 4 samples, half the completion length
    assert preference.tokens_per_epoch == 2 * 32 * (prompt + 32)  # one pair per prompt, two sides
    shown = " ".join(render_estimate(loaded, "1xH100").split())
    assert f"a prompt of ~{prompt} measured on 32 drawn rows tokens" in shown and f"(prompt ~{prompt} measured" in shown


def test_a_pretrain_stage_is_measured_with_the_base_models_tokenizer(tmp_path: Path, tiny_model_dir: Path):
    """The plan loaded the base tokenizer for sft stages only: a Thai `pretrain` source was counted at ~4 bytes a
    token (Thai is 3 bytes a character), far from what the run tokenises."""
    from transformers import AutoTokenizer

    texts = [f"ข้าวมันไก่ {k} อร่อยมาก ริมแม่น้ำเจ้าพระยา" for k in range(120)]
    (tmp_path / "th.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                                       encoding="utf-8")
    stages = """
    - name: cpt
      kind: pretrain
      sources:
        - {name: th, path: th.jsonl, tokens: 10000000}
      train: {lr_scheduler_kwargs: {num_decay_steps: 1}}
    """
    loaded = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), stages))
    (estimate,) = estimate_recipe(loaded, "8xH100")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    held = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    assert abs(estimate.tokens_per_epoch - held) <= 0.05 * held
    assert "drawn rows with the base model's tokenizer" in " ".join(render_estimate(loaded, "8xH100").split())


@pytest.mark.parametrize("problem", ["broken", "missing", "template"])
def test_a_tokenizer_the_run_will_stop_on_is_one_warning_and_the_plan_counts_bytes(
        tmp_path: Path, tiny_model_dir: Path, llama3_model_dir: Path, problem: str):
    """A broken or missing tokenizer, or a template whose end-of-turn token the tokenizer lacks (chatml_thinking
    on Llama 3's): the run stops on each; the plan said nothing of the last, and repeated the others' reasons in
    every source's note."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(llama3_model_dir if problem == "template" else tiny_model_dir, model)
    if problem == "broken":
        (model / "tokenizer.json").write_text("{not json")
    elif problem == "missing":  # tokenizer_config.json alone: nothing to build the tokenizer from
        (model / "tokenizer.json").unlink()
    stages = """
    - name: a
      kind: sft
      data:
        sources:
          - {name: rows, path: rows.jsonl, thinking_mode: "off"}
          - {name: again, path: rows.jsonl, thinking_mode: "on"}
    - name: b
      kind: sft
      data:
        sources:
          - {name: rows, path: rows.jsonl, thinking_mode: "off"}
    """
    path = write_recipe(tmp_path, str(model), stages)
    if problem == "template":
        path.write_text(path.read_text().replace("base_model:", "chat_template: chatml_thinking\nbase_model:", 1))
    loaded = load_recipe(path)
    estimates = estimate_recipe(loaded, "8xH100")
    warnings = [w for e in estimates for w in e.warnings if "the run will stop there" in w]
    expected = {"broken": "its tokenizer cannot be loaded: ", "missing": "its tokenizer cannot be loaded: ",
                "template": "chat_template chatml_thinking does not fit the base tokenizer: "}[problem]
    assert len(warnings) == 1 and expected in warnings[0], warnings
    notes = " ".join(render_estimate(loaded, "8xH100").split())
    assert notes.count("measured on 40 sampled rows with ~4 bytes of text per token (off)") == 2
    assert notes.count("measured on 40 sampled rows with ~4 bytes of text per token (on)") == 1
    if problem == "template":
        from tempa.chat_templates import bake_tokenizer

        with pytest.raises(ValueError, match="is not a single token of this tokenizer"):  # what the run stops on
            bake_tokenizer(model, "chatml_thinking", tmp_path / "baked")


def test_local_config_json_is_read(tmp_path: Path):
    from transformers import AutoConfig

    model = tmp_path / "model"
    model.mkdir()
    qwen = {"model_type": "qwen2", **TINY_SHAPE, "tie_word_embeddings": True}
    (model / "config.json").write_text(json.dumps(qwen))
    shape, source = resolve_shape(str(model))
    assert shape is not None and source.endswith("config.json")
    assert shape.parameters == transformers_count(AutoConfig.for_model(**qwen))[0]


def test_unknown_model_size_is_said_per_stage(tmp_path: Path):
    loaded = load_recipe(write_recipe(tmp_path, "acme/mystery-model", SEA70_STAGES))
    general, _ = estimate_recipe(loaded, "8xH100")
    # Tokens and steps do not depend on the model; memory, fit and hours do.
    assert general.tokens_per_epoch == 500_000 * 800 and general.steps
    assert (general.memory, general.fits, general.hours) == (None, None, None)
    assert any(w.startswith("stage sft-general: unknown size") and "huggingface-cli download acme/mystery-model"
               in w for w in general.warnings)
    text = render_estimate(loaded, "8xH100")
    assert "model acme/mystery-model: unknown size" in text
    assert "WARNING: stage sft-reasoning: unknown size, so no memory, fit or hours" in text
    empty = tmp_path / "empty-model"
    empty.mkdir()
    assert resolve_shape(str(empty)) == (None, f"base_model {empty}: the folder has no config.json")
    with pytest.raises(EstimateError, match="expected COUNTxGPU"):  # a bad --hardware is still an error
        render_estimate(loaded, "8xV100")


def test_unsized_hub_source_is_reported_not_guessed(tmp_path: Path):
    stages = """
    - name: sft
      kind: sft
      data:
        sources:
          - {name: hub, path: org/some-dataset, weight: 1.0}
    """
    (estimate,) = estimate_recipe(load_recipe(write_recipe(tmp_path, HUB_70B, stages)), "8xH100")
    assert estimate.trained_tokens is None and estimate.hours is None
    assert any("token count unknown" in w for w in estimate.warnings)
    assert any("set rows or tokens" in n for n in estimate.notes)


def test_partly_sized_stage_is_a_lower_bound(tmp_path: Path):
    stages = """
    - name: sft
      kind: sft
      data:
        sources:
          - {name: sized, path: org/sized, rows: 1000, thinking_mode: "off"}
          - {name: unsized, path: org/unsized, weight: 1.0}
    """
    loaded = load_recipe(write_recipe(tmp_path, HUB_70B, stages))
    (estimate,) = estimate_recipe(loaded, "8xH100")
    assert estimate.bound == ">=" and estimate.tokens_per_epoch == 1000 * 800
    assert ">=800.0k" in render_estimate(loaded, "8xH100")


PREFERENCE_STAGE = """
- name: align
  kind: preference
  rounds: 2
  prompts: {{path: org/prompts, limit: 1000}}
  sampling: {{n: 4, max_new_tokens: 1000}}
  rewards: [{{type: language, weight: 1.0}}]
  train: {{max_length: 2048, per_device_train_batch_size: 2{extra}}}
"""


def test_an_offline_round_is_measured_on_its_local_pairs(tmp_path: Path, tiny_model_dir: Path):
    """The plan sized offline pairs as 200 prompt tokens plus half of sampling.max_new_tokens (which offline pairs
    never use): 18.4k tokens for a Vietnamese file the run trained 1.3k of. A local file's pairs are now rendered
    with the base tokenizer and the recipe's template; a row that is no pair is not counted."""
    from transformers import AutoTokenizer

    from tempa.chat_templates.thinking import mode_kwargs
    from tempa.recipes.runner import template_text

    pairs = [{"prompt": f"Thủ đô của Việt Nam là gì? ({i})", "chosen": "Hà Nội.", "rejected": "Tôi không biết."}
             for i in range(18)]
    rows = [*pairs, {"prompt": "Câu hỏi?", "chosen": "Có."}]  # no rejected side: no pair
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                          encoding="utf-8")
    stages = """
    - name: dpo
      kind: preference
      offline: {path: prefs.jsonl}
      rounds: 0
      train: {max_length: 512}
    """
    loaded = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), stages))
    (estimate,) = estimate_recipe(loaded, "1xH100")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = template_text(loaded)
    by_hand = sum(len(tokenizer.apply_chat_template(
        [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p[side]}], tokenize=True,
        return_dict=True, **mode_kwargs("off"))["input_ids"]) for p in pairs for side in ("chosen", "rejected"))
    assert estimate.tokens_per_epoch == by_hand
    notes = " ".join(render_estimate(loaded, "1xH100").split())
    assert "offline round: ~18 pairs" in notes and "19 drawn rows, with the base model's tokenizer" in notes


def test_preference_stage_pairs_rounds_and_reference_model(tmp_path: Path):
    with_reference = estimate_recipe(load_recipe(write_recipe(
        tmp_path, HUB_8B, PREFERENCE_STAGE.format(extra=""))), "8xH100")[0]
    (tmp_path / "b").mkdir()
    precomputed = estimate_recipe(load_recipe(write_recipe(
        tmp_path / "b", HUB_8B, PREFERENCE_STAGE.format(extra=", precompute_ref_log_probs: true"))),
        "8xH100")[0]
    # 1000 prompts -> at most 1000 pairs per round, 2 rounds, 2 pairs per GPU per step on 8 GPUs: each round
    # trains 63 steps, its last one short.
    assert with_reference.steps == 2 * -(-1000 // (2 * 8))
    # the table's epochs add up the rounds (1 epoch of each round's pairs): the note says so
    assert with_reference.epochs == 2 and with_reference.tokens_per_epoch == 2 * 1000 * (200 + 500)
    assert ("2 rounds, each training on its own pairs: tokens/epoch is one round's, epochs, steps and trained are "
            "added up over the rounds (epochs per round: 1)") in with_reference.notes
    assert with_reference.micro_batch_tokens == 2 * 2 * 2048  # chosen + rejected, padded to max_length
    parameters = 8_030_261_248
    assert with_reference.memory.reference * GIB == pytest.approx(2 * parameters / 8)
    assert precomputed.memory.reference == 0
    assert with_reference.memory.total > precomputed.memory.total
    expected_hours = 8 * parameters * with_reference.trained_tokens / (8 * 989.4e12 * 0.4) / 3600
    assert with_reference.hours == pytest.approx(expected_hours)


def default_and_changed(train: str) -> str:
    """Two identical sft stages, the second with ``train`` set."""
    stage = "kind: sft\n  data: {sources: [{name: a, path: org/a, rows: 10}]}"
    return f"- name: default\n  {stage}\n- name: changed\n  {stage}\n  train: {train}\n"


def test_activation_checkpointing_off_keeps_every_layer(tmp_path: Path):
    stages = default_and_changed("{activation_checkpointing: false}")
    on, off = estimate_recipe(load_recipe(write_recipe(tmp_path, HUB_70B, stages)), "8xH100")
    assert off.memory.activations > 5 * on.memory.activations
    assert any("checkpointing is off" in note for note in off.notes)


def test_optimizer_offload_in_the_accelerate_config_is_honoured(tmp_path):
    """The shipped 70B recipe offloads AdamW to CPU: it fits 8xH100 only because of that."""
    from tempa.recipes.estimate import estimate_recipe

    offloaded = load_recipe("sea-lion-v3-70b-it")
    on_gpu = load_recipe("sea-lion-v3-70b-it", ["launch.accelerate_config=zero3"])
    engine = offloaded.recipe.launch.engine()
    assert engine.offload_optimizer and not engine.offload_params and not on_gpu.recipe.launch.engine().offloads
    with_offload = estimate_recipe(offloaded, "8xH100")[0]
    without = estimate_recipe(on_gpu, "8xH100")[0]
    assert with_offload.fits and not without.fits
    assert with_offload.memory.optimizer == 0 and without.memory.optimizer > 0
    assert with_offload.memory.total < without.memory.total / 2
    # the legend says what the columns hold: 2 B/param on the GPUs, the rest in host RAM (not the 6 B of a plain run)
    text = render_estimate(offloaded, "8xH100")
    assert "params = bf16 copy (2 B/param), divided over the GPUs; the fp32 master, grads and optim" in text
    assert "6 B/param" not in text and "6 B/param" in render_estimate(on_gpu, "8xH100")


SYNTHESIZE_STAGES = """
- name: distill
  kind: synthesize
  prompts: {{path: rows.jsonl}}
  teacher: {{type: http, base_url: "http://127.0.0.1:9/v1", model: teacher}}
  sampling: {{n: 4, max_new_tokens: 1000}}
  rewards: [{{type: format, weight: 1.0}}]
  select: {select}
{second_turn}
- name: sft
  kind: sft
  data:
    heldout: 4
    sources:
      - {{name: distilled, path: "stage:distill", thinking_mode: "off"}}{extra_source}
"""


def test_synthesized_source_is_sized_from_its_stage(tmp_path: Path):
    def estimate(folder: Path, select: str, second_turn: str = "", run_dir: Path | None = None, extra: str = ""):
        folder.mkdir()
        stages = SYNTHESIZE_STAGES.format(select=select, second_turn=second_turn, extra_source=extra)
        return estimate_recipe(load_recipe(write_recipe(folder, HUB_70B, stages)), "8xH100", run_dir=run_dir)[0]

    # 40 prompts in rows.jsonl; each row: a 200-token prompt + half of max_new_tokens (1000).
    best = estimate(tmp_path / "best", "{strategy: best}")
    assert best.tokens_per_epoch == (40 - 4) * (200 + 500) and best.bound == "<="
    assert any("at most 40 prompts x 1 from stage distill" in note for note in best.notes)
    # With an unsized source beside it, the total is neither an upper nor a lower bound.
    mixed = estimate(tmp_path / "mixed", "{strategy: best}", extra="\n      - {name: hub, path: org/unsized}")
    assert mixed.bound == "~" and mixed.tokens_per_epoch == best.tokens_per_epoch
    every = estimate(tmp_path / "all", "{strategy: all, min_score: 0.5}")
    assert every.tokens_per_epoch == (40 * 4 - 4) * (200 + 500)
    # A second turn adds the follow-up (half of 256) and a second answer (half of 1000).
    second = estimate(tmp_path / "second", "{strategy: best}", "  second_turn: {followup_max_new_tokens: 256}")
    assert second.tokens_per_epoch == (40 - 4) * (200 + 500 + 128 + 500)

    # Once the synthesize stage has finished, its output's row count replaces the bound.
    from tempa.alignment.synthesize_stage import SynthesizeResult

    run_dir = tmp_path / "run"
    output = SynthesizeResult(dataset=run_dir / "distill" / "data" / "synthesized.jsonl", rows=10)
    finish(run_dir, "distill", "synthesize", output, done=False)
    unfinished = estimate(tmp_path / "unfinished", "{strategy: best}", run_dir=run_dir)
    assert unfinished.tokens_per_epoch == (40 - 4) * 700  # no DONE marker: a partial output is not counted
    finish(run_dir, "distill", "synthesize", output)
    finished = estimate(tmp_path / "finished", "{strategy: best}", run_dir=run_dir)
    assert finished.tokens_per_epoch == (10 - 4) * 700 and finished.bound == ""
    assert any("distill's output" in note for note in finished.notes)


def test_lm_head_memory_follows_trls_chunked_kernel_and_liger_is_planned_on(tmp_path: Path):
    """trl's SFT/DPO trainers never hold the (tokens x 128k) logits; Liger's SwiGLU is on unless the recipe says no."""
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE

    from tempa.recipes.estimate import logits_bytes, resolve_shape

    shape, _ = resolve_shape("aisingapore/Llama-SEA-LION-v3-8B-IT")  # tempa's copy of its config (Llama 3.1 8B)
    assert shape is not None
    tokens = 16384
    fused, unfused = logits_bytes(shape, tokens), logits_bytes(shape, tokens, fused=False)
    assert unfused == 10 * 128256 * tokens and unfused > 5 * fused
    # the fp32 gradients of the hidden states and of the head's weight are the bulk of it
    assert 4 * (tokens + 128256) * shape.hidden_size < fused < 4 * (tokens + 128256) * shape.hidden_size + 2**29
    assert logits_bytes(shape, TOKEN_CHUNK_SIZE // 2) < logits_bytes(shape, TOKEN_CHUNK_SIZE)  # a smaller tile

    stages = default_and_changed("{use_liger_kernel: false}")
    on, off = estimate_recipe(load_recipe(write_recipe(tmp_path, "aisingapore/Llama-SEA-LION-v3-8B-IT", stages)), "8xH100")
    micro = on.micro_batch_tokens
    assert (off.memory.activations - on.memory.activations) * GIB == pytest.approx(2 * shape.intermediate_size * micro)
    note = next(n for n in on.notes if n.startswith("LM head + loss"))
    for value in (logits_bytes(shape, micro), logits_bytes(shape, micro, fused=False)):
        assert f"{value / GIB:.1f} GiB" in note


def test_plan_says_how_long_data_prep_takes(tmp_path: Path, monkeypatch):
    import tempa.sft.data_config as data_config
    import tempa.sft.data_size as data_size

    for module in (data_config, data_size):
        monkeypatch.setattr(module, "available_cores", lambda: 4)
    stages = """
    - name: sft
      kind: sft
      data:
        sources:
          - {name: rows, path: org/big, rows: 8000, thinking_mode: "off"}
    """
    loaded = load_recipe(write_recipe(tmp_path, HUB_70B, stages))
    [stage] = estimate_recipe(loaded, "8xH100")
    [line] = [note for note in stage.notes if note.startswith("data prep")]
    # 8,000 rows x 800 tokens: read and saved in one process, rendered and tokenised (a cost per token and one per
    # row) over min(4 cores, 8,000 rows / rows per process) = 4 processes here, and over min(128, 8,000 / rows per
    # process) on a big node.
    tokens = 8000 * 800
    serial = tokens / data_config.PREP_SERIAL_TOKENS_PER_SECOND
    parallel = tokens / data_config.PREP_TOKENS_PER_CORE_SECOND + 8000 * data_config.PREP_ROW_SECONDS
    here = serial + parallel / 4
    node = serial + parallel / min(128, 8000 // data_config.ROWS_PER_PROCESS)
    assert f"~0:00:{round(here):02d} (h:mm:ss) in 4 processes on this machine's 4 cores" in line
    assert f"~0:00:{round(node):02d} on a node's 128 cores" in line
    assert "data prep before the first step" in render_estimate(loaded, "8xH100")


def test_long_context_table_on_one_gpu_has_no_sequence_parallel_columns() -> None:
    """One GPU cannot split a sequence: one group of columns (not the same one twice), and the reason."""
    from tempa.recipes.estimate import render_estimate
    from tempa.recipes.loader import load_recipe

    text = render_estimate(load_recipe("sea-lion-v3.5-8b-r"), "1xH100")
    table = text[text.index("long context:"):text.index("tokens:")]
    header = next(line for line in table.splitlines() if line.startswith("context"))
    assert header.split() == ["context", "activ.", "SP=1", "total/GPU", "fits", "smallest", "SP", "that", "fits"]
    assert "sequence parallelism needs 2 or more" in table


def test_steps_count_whole_steps_per_epoch_as_the_trainer_does(tmp_path: Path):
    """A dataset smaller than one optimizer step trains one (short) step per epoch: 40 epochs are 40 steps
    (transformers: max_steps = ceil(epochs x ceil(batches per epoch / accumulation)))."""
    stages = """
    - name: small
      kind: sft
      data:
        sources:
          - {name: rows, path: rows.jsonl, thinking_mode: "off"}
      train: {num_train_epochs: 40, per_device_train_batch_size: 64, max_length: 4096}
    - name: half
      kind: sft
      data:
        sources:
          - {name: rows, path: org/rows, rows: 40, thinking_mode: "off"}  # 800 tokens a row assumed
      train: {num_train_epochs: 2.5, per_device_train_batch_size: 1, max_length: 4096}
    """
    small, half = estimate_recipe(load_recipe(write_recipe(tmp_path, HUB_8B, stages)), "1xH100")
    assert small.tokens_per_step > small.tokens_per_epoch  # one epoch is less than one step's tokens
    assert small.steps == 40
    per_epoch = -(-half.tokens_per_epoch // half.tokens_per_step)
    assert per_epoch > 1 and half.steps == -(-5 * per_epoch // 2)  # ceil(2.5 x whole steps per epoch)


@pytest.mark.parametrize("hardware", ["3xH100", "6xH100"])
def test_long_context_smallest_sp_agrees_with_the_sp_column_on_any_gpu_count(hardware: str) -> None:
    """A count of GPUs that is not a power of two (3xH100): the SP=N column said 32k fits at SP=3 while
    'smallest SP that fits' said 'none <= 3'; and SP=2 or 4 does not divide 3 or 6 processes, which the
    recipe loader refuses, so neither may be offered as the smallest that fits."""
    from tempa.recipes.estimate import render_estimate
    from tempa.recipes.loader import load_recipe

    gpus = int(hardware.split("x")[0])
    text = render_estimate(load_recipe("sea-lion-v3-70b-it"), hardware)
    table = text[text.index("long context:"):text.index("tokens:")].splitlines()
    header = next(line for line in table if line.startswith("context"))
    sp = int(re.findall(r"SP=(\d+)", header)[-1])
    assert gpus % sp == 0, header
    if sp == 1:  # 3 GPUs: Ulysses takes no size that divides both 3 and the 64 heads, and says so
        assert "no size above 1 divides both the 3 GPUs and the heads" in table[0]
        return
    for line in table:
        if not re.match(r"\d+k ", line):
            continue
        cells = line.split()
        fits_with_sp, smallest = cells[8], " ".join(cells[9:])  # "GiB" is a cell of its own here
        if fits_with_sp == "yes":
            assert smallest.isdigit() and int(smallest) <= sp, line
        if smallest.isdigit():
            assert gpus % int(smallest) == 0, line


def test_ulysses_sizes_divide_the_attention_heads() -> None:
    """DeepSpeed's Ulysses splits the heads over the group and refuses a size that does not divide them (12 heads
    on 8 GPUs: 8 is refused, 4 is the largest size it takes); a recipe's own size it refuses is a warning."""
    from tempa.recipes.engine import Engine
    from tempa.recipes.estimate import ZERO3, LaunchPlan, ModelShape, _long_context, ulysses_problem

    shape = ModelShape("m", 1536, 24, 12, 4, 4096, 32000, 1_000_000_000, 50_000_000)
    assert [s for s in (1, 2, 3, 4, 6, 8, 12) if ulysses_problem(shape, s) is None] == [1, 2, 4, 12]
    assert "KV heads" in ulysses_problem(shape, 6)  # 12 heads / 6, but 4 KV heads neither divide nor are divided
    eight = parse_hardware("8xH100")
    table = _long_context(shape, eight, LaunchPlan(engine=ZERO3))
    assert "activ. SP=4 " in next(line for line in table if line.startswith("context"))
    assert "Ulysses: sizes that divide the 12 attention heads" in table[1]
    told = _long_context(shape, eight, LaunchPlan(engine=ZERO3, sequence_parallel=8))
    assert "WARNING: launch.sequence_parallel 8: DeepSpeed Ulysses needs it to divide the model's 12 attention heads" in told
    # torch context parallelism splits the sequence, not the heads: every divisor of the GPUs is offered
    assert "activ. SP=8 " in next(line for line in _long_context(shape, eight, LaunchPlan(engine=Engine("fsdp2")))
                                  if line.startswith("context"))


def test_the_global_batch_advice_is_one_the_hardware_can_follow():
    """It advised launch.global_batch_size for a batch the hardware cannot make, which the plan then refused."""
    from tempa.recipes.estimate import estimate_recipe

    stage = "stages.sft-general.train"
    def advice(hardware: str, *overrides: str) -> str:
        loaded = load_recipe("sea-lion-v3-70b-it", [f"{stage}.{o}" for o in overrides])
        (warning,) = [w for w in estimate_recipe(loaded, hardware)[0].warnings if "global batch" in w]
        return warning.split("meaning; ", 1)[1]

    # 8 launch processes x 2 rows: 16 rows; 16 ranks take at least 1 row each, so 16 fits with 1 row per device
    assert advice("2x8xH100", "per_device_train_batch_size=2", "gradient_accumulation_steps=1") == (
        "to keep 16 here set launch.global_batch_size: 16 and per_device_train_batch_size: 1")
    # 8 x 1 x 1: 8 rows can never be split over 16 ranks
    assert advice("2x8xH100", "per_device_train_batch_size=1", "gradient_accumulation_steps=1") == (
        "8 cannot be kept on 16 data-parallel ranks, whose global batch is a multiple of 16")
    assert advice("2x8xH100", "per_device_train_batch_size=1", "gradient_accumulation_steps=4") == (
        "to keep 32 on any hardware set launch.global_batch_size: 32 (gradient_accumulation_steps 2 here)")
    # and what it advises, the plan takes without a warning
    followed = load_recipe("sea-lion-v3-70b-it", [f"{stage}.per_device_train_batch_size=1",
                                                  f"{stage}.gradient_accumulation_steps=1", "launch.global_batch_size=16"])
    assert not any("global batch" in w and "multiple" in w for w in estimate_recipe(followed, "2x8xH100")[0].warnings)


def test_a_lora_preference_stage_is_planned_as_lora_without_a_reference_copy(tmp_path: Path):
    """trl's DPOTrainer loads no reference model for a peft model (it disables the adapters to score the
    reference), and trains adapters only; the plan sized a LoRA DPO stage as full fine-tuning plus a copy."""
    full = estimate_recipe(load_recipe(write_recipe(tmp_path, HUB_8B, PREFERENCE_STAGE.format(extra=""))),
                           "8xH100")[0]
    (tmp_path / "lora").mkdir()
    stage = PREFERENCE_STAGE.format(extra="") + "  lora: {r: 16, lora_alpha: 32}\n"
    lora = estimate_recipe(load_recipe(write_recipe(tmp_path / "lora", HUB_8B, stage)), "8xH100")[0]
    assert full.memory.reference > 0 and lora.memory.reference == 0
    # adapters only: no optimizer states or gradients for the frozen base weights
    assert lora.memory.total < full.memory.total - full.memory.reference


def test_the_global_batch_note_agrees_with_the_warning_and_table_when_the_batch_cannot_be_met():
    """global_batch_size 8 with 2 rows per device on 8xH100: the warning said 8 is not a multiple of 16 and the table
    showed 16, while the note said "global batch 8 (launch.global_batch_size): gradient_accumulation_steps 1". Here: 8
    rows on the recipe's 8 processes, planned on 16 GPUs with 1 row per device."""
    stage = "stages.sft-general.train"
    loaded = load_recipe("sea-lion-v3-70b-it", [f"{stage}.per_device_train_batch_size=1", "launch.global_batch_size=8"])
    (estimate,) = [e for e in estimate_recipe(loaded, "2x8xH100") if e.name == "sft-general"]
    assert any("not a multiple of per_device_train_batch_size 1 x 16" in w for w in estimate.warnings)
    (note,) = [n for n in estimate.notes if n.startswith("global batch 8")]
    assert note == ("global batch 8 (launch.global_batch_size) cannot be met on 2x8xH100 (a launch there is refused); "
                    "the figures assume 16 (gradient_accumulation_steps 1)")
    # a batch the hardware makes keeps its note
    met = load_recipe("sea-lion-v3-70b-it", [f"{stage}.per_device_train_batch_size=1", "launch.global_batch_size=32"])
    (estimate,) = [e for e in estimate_recipe(met, "2x8xH100") if e.name == "sft-general"]
    assert "global batch 32 (launch.global_batch_size): gradient_accumulation_steps 2 on 2x8xH100" in estimate.notes


def test_plan_counts_the_phases_the_curation_turns_on(tmp_path: Path, monkeypatch):
    """The data-prep line ignored dedup and language ID: a trial's 20,000 rows planned at 0:00:23 with or without
    them and took 32-60 s with them. Each phase the recipe turns on adds its term, named in the note."""
    import tempa.sft.data_config as data_config
    import tempa.sft.data_size as data_size

    for module in (data_config, data_size):
        monkeypatch.setattr(module, "available_cores", lambda: 4)

    def line(curation: str) -> str:
        stages = f"""
    - name: sft
      kind: sft
      data:
        sources:
          - {{name: rows, path: org/big, rows: 8000, thinking_mode: "off", languages: [id]}}
        curation: {curation}
    """
        [stage] = estimate_recipe(load_recipe(write_recipe(tmp_path, HUB_70B, stages)), "8xH100")
        return next(note for note in stage.notes if note.startswith("data prep"))

    with_curation = line("{language: {}, dedup: {}}")
    for phase in ("normalising 8,000 rows first", "language ID", "dedup"):
        assert phase in with_curation and phase not in line("{}"), phase
    tokens, rows = 8000 * 800, 8000
    plain = tokens / data_config.PREP_SERIAL_TOKENS_PER_SECOND + (
        tokens / data_config.PREP_TOKENS_PER_CORE_SECOND + rows * data_config.PREP_ROW_SECONDS) / 4
    # dedup makes every row normalised first, in min(4 cores, 8,000 // 5,000) = 1 process, language ID with it; the
    # duplicate search runs in one process
    curated = plain + rows * (data_config.PREP_NORMALISE_ROW_SECONDS + data_config.PREP_LANGUAGE_ROW_SECONDS
                              + data_config.PREP_DEDUP_ROW_SECONDS)
    assert f"~0:00:{round(plain):02d} (h:mm:ss)" in line("{}")
    assert round(curated) > round(plain)
    assert f"~0:00:{round(curated):02d} (h:mm:ss)" in with_curation


@pytest.mark.parametrize("num_proc", [1, 2, 8])
def test_the_duplicate_search_is_not_spread_over_the_processes(num_proc: int):
    """Dedup runs in one process whatever num_proc is; language ID runs where the rows are normalised: in the
    tokenising workers of a one-pass source, in the normalising pass's workers for rows normalised first."""
    from tempa.sft.data_config import (
        NORMALISE_ROWS_PER_PROCESS,
        PREP_DEDUP_ROW_SECONDS,
        PREP_LANGUAGE_ROW_SECONDS,
        PREP_NORMALISE_ROW_SECONDS,
        prep_seconds,
    )

    tokens, rows = 4_000_000, 40_000
    base = prep_seconds(tokens, rows, num_proc, 16)
    assert prep_seconds(tokens, rows, num_proc, 16, dedup=True) - base == pytest.approx(rows * PREP_DEDUP_ROW_SECONDS)
    assert prep_seconds(tokens, rows, num_proc, 16, language=True) - base == pytest.approx(
        rows * PREP_LANGUAGE_ROW_SECONDS / num_proc)
    normalisers = min(num_proc, rows // NORMALISE_ROWS_PER_PROCESS)
    assert prep_seconds(tokens, rows, num_proc, 16, language=True, normalised_rows=rows) - base == pytest.approx(
        rows * (PREP_NORMALISE_ROW_SECONDS + PREP_LANGUAGE_ROW_SECONDS) / normalisers)
