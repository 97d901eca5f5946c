"""A base tokenizer the run's bake cannot give a pad token (no usable token, no spare embedding row) is refused by
`tempa plan`, naming the folder and what is needed, not only once `tempa run` starts."""

from __future__ import annotations

import json
from pathlib import Path

from tempa.recipes import tiny
from tempa.recipes.cli import main


def self_trained_base(folder: Path, *, spare_rows: int) -> Path:
    """A tiny model with its own byte-level BPE tokenizer: Llama 3's chat tokens but no pad-like token, and
    ``spare_rows`` embedding rows beyond the tokenizer's vocabulary."""
    from transformers import PreTrainedTokenizerFast

    specials = [token for token in tiny.SPECIAL_TOKENS if token != tiny.PAD]
    backend = tiny.byte_level_bpe(["hello world, a tiny corpus of words"] * 20, specials, 400)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tiny.BEGIN_OF_TEXT,
        eos_token=tiny.END_OF_TEXT,
        additional_special_tokens=specials[2:],
    )
    model = tiny.build_tiny_model(tokenizer)
    model.resize_token_embeddings(len(tokenizer) + spare_rows)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def recipe_on(base: Path, folder: Path) -> Path:
    (folder / "rows.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
        + "\n"
    )
    recipe = folder / "r.yaml"
    recipe.write_text(
        f"name: r\nbase_model: {base}\nthinking_default: 'off'\nstages:\n  - name: sft\n    kind: sft\n"
        "    data: {sources: [{name: r, path: rows.jsonl, thinking_mode: 'off'}]}\n"
    )
    return recipe


def test_plan_refuses_a_base_tokenizer_whose_pad_token_the_model_cannot_embed(tmp_path, capsys):
    base = self_trained_base(tmp_path / "mybase", spare_rows=0)
    assert main(["plan", str(recipe_on(base, tmp_path)), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "vocab_size" in line)
    assert f"{base}: a pad token is needed (no usable pad token in the vocabulary)" in line
    assert "resize the model's embeddings" in line and "set the base tokenizer's pad_token" in line
    assert not (tmp_path / "run").exists()  # the plan did no work


def test_plan_accepts_a_base_with_a_spare_row_for_the_pad_token(tmp_path, capsys):
    base = self_trained_base(tmp_path / "mybase", spare_rows=8)
    assert main(["plan", str(recipe_on(base, tmp_path)), "--run-dir", str(tmp_path / "run")]) == 0
    assert "vocab_size" not in capsys.readouterr().err
