"""bake_tokenizer: template, pad token and generation config, checked before the folder appears."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from test_byo_model import qwen_tokenizer
from transformers import AutoTokenizer

from tempa.chat_templates import bake_tokenizer, check_tokenizer, choose_pad_token, load_template


def _leftovers(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if ".bake-" in path.name or ".old-" in path.name)


def test_bake_writes_template_pad_and_stop_ids(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    out = bake_tokenizer(tiny_tokenizer_dir, "llama3_thinking", tmp_path / "baked")
    assert out == (tmp_path / "baked").resolve()
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == load_template("llama3_thinking")
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = json.loads((out / "generation_config.json").read_text())
    eot_id = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    # Base config stopped on <|end_of_text|> only; the bake keeps it and adds the end-of-turn token, which is
    # the tokenizer's eos now, as in Llama 3.1 Instruct's tokenizer.
    assert config["eos_token_id"] == [tokenizer.convert_tokens_to_ids("<|end_of_text|>"), eot_id]
    assert tokenizer.eos_token == "<|eot_id|>"
    assert config["pad_token_id"] == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert "_from_model_config" not in config
    assert len(tokenizer) == len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))  # nothing added
    assert _leftovers(tmp_path) == []
    assert all(result.passed for result in check_tokenizer(tokenizer, generation_config=config))


def test_bake_starts_from_the_model_generation_config(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [1, 5], "temperature": 0.6, "do_sample": True})
    )
    out = bake_tokenizer(tiny_tokenizer_dir, "chatml_thinking", tmp_path / "baked", model_dir=model)
    config = json.loads((out / "generation_config.json").read_text())
    im_end = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<|im_end|>")
    assert config["eos_token_id"] == [1, 5, im_end]
    assert config["temperature"] == 0.6 and config["do_sample"] is True


def test_bake_picks_an_existing_pad_when_pad_is_eos(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.pad_token = tokenizer.eos_token  # the classic setup that hides the stop token from the loss
    tokenizer.save_pretrained(tmp_path / "pad-is-eos")
    out = bake_tokenizer(tmp_path / "pad-is-eos", "llama3_thinking", tmp_path / "baked")
    baked = AutoTokenizer.from_pretrained(out)
    assert baked.pad_token == "<|finetune_right_pad_id|>"
    assert len(baked) == len(tokenizer)


def _qwen_base_like(folder: Path) -> Path:
    """A byte-level tokenizer shaped like a Qwen2.5 base: eos == pad == <|endoftext|>, no pad-like token."""
    qwen_tokenizer(folder, eos="<|endoftext|>")
    return folder


def test_bake_adds_a_pad_token_only_when_none_is_usable_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _qwen_base_like(tmp_path / "qwen-like")
    before = len(AutoTokenizer.from_pretrained(source))
    with caplog.at_level(logging.WARNING, logger="tempa.chat_templates.baking"):
        out = bake_tokenizer(source, "chatml_thinking", tmp_path / "baked")
    baked = AutoTokenizer.from_pretrained(out)
    assert baked.pad_token == "<|pad|>" and len(baked) == before + 1
    assert "added pad token '<|pad|>'" in caplog.text and "embeddings must cover" in caplog.text


def test_bake_refuses_to_add_a_pad_token_the_model_cannot_embed(tmp_path: Path) -> None:
    source = _qwen_base_like(tmp_path / "qwen-like")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"vocab_size": len(AutoTokenizer.from_pretrained(source))}))
    with pytest.raises(ValueError, match="resize the model's embeddings"):
        bake_tokenizer(source, "chatml_thinking", tmp_path / "baked", model_dir=model)
    assert not (tmp_path / "baked").exists()


def test_bake_rejects_a_template_whose_end_of_turn_is_not_one_token(tmp_path: Path) -> None:
    source = _qwen_base_like(tmp_path / "qwen-like")  # has no <|eot_id|>
    with pytest.raises(ValueError, match=r"<\|eot_id\|> is not a single token"):
        bake_tokenizer(source, "llama3_thinking", tmp_path / "baked")


def test_a_failing_bake_leaves_no_folder_behind(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    # eot moved outside {% generation %}: the model would never learn to stop.
    broken = load_template("llama3_thinking").replace(
        '{{- answer.text ~ "<|eot_id|>" }}\n        {%- endgeneration %}',
        '{{- answer.text }}\n        {%- endgeneration %}\n        {{- "<|eot_id|>" }}',
    )
    path = tmp_path / "broken.jinja"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(ValueError, match=r"fails template checks: b\. mask"):
        bake_tokenizer(tiny_tokenizer_dir, str(path), tmp_path / "baked")
    assert not (tmp_path / "baked").exists()
    assert _leftovers(tmp_path) == []


def test_bake_never_overwrites_silently(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    out = bake_tokenizer(tiny_tokenizer_dir, "llama3_thinking", tmp_path / "baked")
    with pytest.raises(FileExistsError, match="not empty"):
        bake_tokenizer(tiny_tokenizer_dir, "chatml_thinking", out)
    bake_tokenizer(tiny_tokenizer_dir, "chatml_thinking", out, overwrite=True)
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == load_template("chatml_thinking")
    assert _leftovers(tmp_path) == []


def test_choose_pad_token_rules(tiny_tokenizer: Any) -> None:
    assert choose_pad_token(tiny_tokenizer, "<|eot_id|>").token == "<|finetune_right_pad_id|>"
    tiny_tokenizer.pad_token = "<|eot_id|>"
    choice = choose_pad_token(tiny_tokenizer, "<|eot_id|>")
    assert (choice.token, choice.added) == ("<|finetune_right_pad_id|>", False)
    assert choose_pad_token(tiny_tokenizer, "<|eot_id|>", requested="<|eom_id|>").token == "<|eom_id|>"
    with pytest.raises(ValueError, match="must differ"):
        choose_pad_token(tiny_tokenizer, "<|eot_id|>", requested="<|end_of_text|>")


def test_bake_writes_the_recipe_generation_defaults(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import GenerationConfig

    from tempa.chat_templates import GenerationDefaults

    # The Swallow card's serving settings: temperature 0.6, top-p 0.9, stop at <|eot_id|>.
    defaults = GenerationDefaults(temperature=0.6, top_p=0.9)
    out = bake_tokenizer(tiny_tokenizer_dir, "llama3_thinking", tmp_path / "baked", generation=defaults)
    loaded = GenerationConfig.from_pretrained(out)
    eot_id = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<|eot_id|>")
    assert (loaded.temperature, loaded.top_p, loaded.do_sample) == (0.6, 0.9, True)
    assert eot_id in loaded.eos_token_id  # the end-of-turn stop survives the defaults

    greedy = bake_tokenizer(tiny_tokenizer_dir, "llama3_thinking", tmp_path / "greedy",
                            generation=GenerationDefaults(temperature=0.0, top_p=0.9))
    config = json.loads((greedy / "generation_config.json").read_text())
    assert config["do_sample"] is False and "top_p" not in config and "temperature" not in config


def test_recipe_generation_key_reaches_the_bake_stage(tmp_path: Path) -> None:
    import tempa.recipes
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.loader import load_recipe

    recipe = tmp_path / "r.yaml"
    data = Path(tempa.recipes.__file__).parent / "data" / "sample_instruct.jsonl"
    body = ("name: r\nbase_model: 'tempa:tiny'\nstages:\n  - {name: s, kind: sft, data: {sources: "
            f"[{{name: a, path: '{data}'}}]}}}}\n")
    recipe.write_text(body + "generation: {temperature: 0.6, top_p: 0.9}\n")
    bake = load_recipe(recipe).stages[-1]
    assert bake.kind == "bake" and (bake.generation.temperature, bake.generation.top_p) == (0.6, 0.9)
    recipe.write_text(body + "generation: {top_p: 1.5}\n")
    with pytest.raises(RecipeError, match=r"generation\.top_p"):
        load_recipe(recipe)
    # A bake stage the recipe writes itself (for its model card, say) takes the top-level defaults too: it shipped
    # none, silently. Setting them in both places is refused, naming both lines.
    own = body + "  - {name: ship, kind: bake, model_card: {languages: [th]}}\n"
    recipe.write_text(own + "generation: {temperature: 0.6, top_p: 0.9}\n")
    bake = load_recipe(recipe).stages[-1]
    assert bake.name == "ship" and (bake.generation.temperature, bake.generation.top_p) == (0.6, 0.9)
    recipe.write_text(own.replace("model_card:", "generation: {temperature: 0.2}, model_card:")
                      + "generation: {temperature: 0.6}\n")
    with pytest.raises(RecipeError) as both:
        load_recipe(recipe)
    assert str(both.value) == (f"{recipe}:5: stages[1].generation (stage 'ship'): the recipe's top-level generation "
                               f"({recipe}:6) sets the bake's sampling defaults too; keep one")
    recipe.write_text(own.replace("model_card:", "generation: {temperature: 0.2}, model_card:"))
    assert load_recipe(recipe).stages[-1].generation.temperature == 0.2  # the stage's own, when alone


def test_overwrite_never_replaces_a_model_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A model folder holds a tokenizer too, but `--overwrite` replaces an earlier bake (tokenizer files) only:
    baking in place onto a model (the run's final folder, a downloaded model) would delete its weights, config
    and card, so it is refused and the folder is left as it was."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = sorted(p.name for p in model.iterdir())
    assert "model.safetensors" in before
    with pytest.raises(FileExistsError, match=r"holds model files \(config.json, model.safetensors\)"):
        bake_tokenizer(model, "llama3_thinking", model, overwrite=True)
    assert sorted(p.name for p in model.iterdir()) == before
    assert _leftovers(tmp_path) == []


def test_a_pad_token_the_template_writes_is_refused(tmp_path: Path) -> None:
    """`--pad-token "<|im_start|>"` was accepted on a ChatML base ("pad token '<|im_start|>' as requested", every
    check passed), though the template writes it in every turn: masking padding by id hides it from the loss."""
    from transformers import PreTrainedTokenizerFast

    from tempa.recipes import tiny

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tiny.byte_level_bpe(["user assistant system Xin chào"] * 20, specials, 300),
        eos_token="<|im_end|>", additional_special_tokens=specials[1:])
    template = load_template("chatml_thinking")
    with pytest.raises(ValueError, match="a token the chat template writes"):
        choose_pad_token(tokenizer, "<|im_end|>", requested="<|im_start|>", template=template)
    assert choose_pad_token(tokenizer, "<|im_end|>", requested="<|endoftext|>", template=template).token == \
        "<|endoftext|>"
    assert choose_pad_token(tokenizer, "<|im_end|>", template=template).token not in template
