"""A user's own base model, shaped like the Qwen2.5 checkpoints the README's "Bring your own" example names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tempa.chat_templates import bake_tokenizer, check_tokenizer
from tempa.merge.bake import check_generation_config
from tempa.recipes import tiny

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def qwen_tokenizer(folder: Path, *, eos: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE with Qwen2.5's three special tokens and pad ``<|endoftext|>``, as Qwen ships it."""
    texts = ["user assistant system <think>\n</think>\n\n Xin chào Việt Nam"] * 20
    backend = tiny.byte_level_bpe(texts, SPECIALS, 300)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos,
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture()
def qwen_instruct_like(tmp_path: Path) -> Path:
    """Qwen2.5-Instruct's token setup: eos <|im_end|>, pad <|endoftext|>, and a generation config that stops on
    both and pads with <|endoftext|>; vocab_size padded beyond the tokenizer, as Qwen's is."""
    folder = tmp_path / "qwen-instruct-like"
    tokenizer = qwen_tokenizer(folder, eos="<|im_end|>")
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    (folder / "generation_config.json").write_text(
        json.dumps(
            {"bos_token_id": endoftext, "eos_token_id": [im_end, endoftext], "pad_token_id": endoftext}
        )
    )
    (folder / "config.json").write_text(
        json.dumps({"model_type": "qwen2", "vocab_size": len(tokenizer) + 64})
    )
    return folder


def test_a_qwen_instruct_base_bakes_into_a_final_folder_the_bake_stage_accepts(
    qwen_instruct_like: Path, tmp_path: Path
) -> None:
    out = bake_tokenizer(
        qwen_instruct_like, "chatml_thinking", tmp_path / "final", model_dir=qwen_instruct_like
    )
    generation = json.loads((out / "generation_config.json").read_text())
    baked = AutoTokenizer.from_pretrained(out)
    # Every stop id of the base config survives, and the pad is none of them.
    source_stops = json.loads((qwen_instruct_like / "generation_config.json").read_text())["eos_token_id"]
    assert set(source_stops) <= set(generation["eos_token_id"])
    assert generation["pad_token_id"] == baked.pad_token_id not in generation["eos_token_id"]
    assert all(result.passed for result in check_tokenizer(baked, generation_config=generation))
    check_generation_config(out)  # the final bake stage's own check: raises on a pad that is a stop id


def test_a_tokenizer_with_qwens_text_tokens_bakes_and_trains_them(tmp_path: Path) -> None:
    """Qwen2.5 ships <tool_call> and </tool_call>, Qwen3 also <think> and </think>, as added tokens marked not
    special: the model writes them. The mask check counted every added token as a header, so no real Qwen tokenizer
    could be baked ("a trained span holds a header or other special token"), and `tempa run` stopped at once."""
    from tokenizers import AddedToken

    folder = tmp_path / "qwen3-like"
    tokenizer = qwen_tokenizer(folder, eos="<|im_end|>")
    tokenizer.add_tokens([AddedToken(text, special=False, normalized=False)
                          for text in ("<tool_call>", "</tool_call>", "<think>", "</think>")])
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": len(tokenizer) + 64}))
    out = bake_tokenizer(folder, "chatml_thinking", tmp_path / "final", model_dir=folder)
    baked = AutoTokenizer.from_pretrained(out)
    generation = json.loads((out / "generation_config.json").read_text())
    assert all(result.passed for result in check_tokenizer(baked, generation_config=generation))
    # and they are one token each in what trains: the template's text encodes to them
    think, call = baked.convert_tokens_to_ids(["<think>", "<tool_call>"])
    assert baked.encode("<think>\n", add_special_tokens=False)[0] == think
    assert baked.encode("<tool_call>\n", add_special_tokens=False)[0] == call


def test_a_chatml_base_under_the_default_llama3_template_is_told_which_template_fits(tmp_path: Path) -> None:
    """A recipe without `chat_template` (llama3_thinking) on a ChatML base failed with "<|eot_id|> is not a single
    token of this tokenizer", naming no way out."""
    folder = tmp_path / "qwen"
    qwen_tokenizer(folder, eos="<|im_end|>")
    with pytest.raises(ValueError) as err:
        bake_tokenizer(folder, "llama3_thinking", tmp_path / "final")
    assert str(err.value).endswith("the template's end-of-turn token <|eot_id|> is not a single token of this "
                                   "tokenizer; chatml_thinking fits it (<|im_end|> is one token): set "
                                   "`chat_template: chatml_thinking`"), str(err.value)


def _alpaca_spec():
    from tempa.sft.formats import FormatSpec

    return FormatSpec(format="auto")


def test_alpaca_history_becomes_the_earlier_turns() -> None:
    from tempa.sft.formats import normalize_row

    # LLaMA-Factory's Alpaca layout: earlier rounds in `history` as [instruction, response] pairs.
    row = {
        "system": "Bạn là hướng dẫn viên du lịch.",
        "instruction": "Còn Đà Nẵng thì sao?",
        "input": "",
        "output": "Đà Nẵng có biển Mỹ Khê.",
        "history": [["Hà Nội có gì đẹp?", "Hồ Gươm và phố cổ."], ["Còn Huế?", "Đại Nội."]],
    }
    messages = normalize_row(row, _alpaca_spec()).messages
    assert [(m["role"], m["content"]) for m in messages] == [
        ("system", row["system"]),
        ("user", "Hà Nội có gì đẹp?"),
        ("assistant", "Hồ Gươm và phố cổ."),
        ("user", "Còn Huế?"),
        ("assistant", "Đại Nội."),
        ("user", row["instruction"]),
        ("assistant", row["output"]),
    ]


@pytest.mark.parametrize("history", [[["only a question"]], "Hà Nội có gì đẹp?", [["q", None]]])
def test_alpaca_history_that_is_not_pairs_of_texts_is_a_row_error(history: object) -> None:
    from tempa.sft.formats import RowError, normalize_row

    row = {"instruction": "Còn Huế?", "output": "Đại Nội.", "history": history}
    with pytest.raises(RowError, match=r"'history'.*\[instruction, response\]"):
        normalize_row(row, _alpaca_spec())


@pytest.mark.parametrize("empty", [None, [], "", "  "])
def test_alpaca_rows_without_history_read_as_one_round(empty: object) -> None:
    # A CSV or Parquet export leaves a row without earlier rounds an empty cell, as it does a row's tools.
    from tempa.sft.formats import normalize_row

    row = {"instruction": "Còn Huế?", "output": "Đại Nội."}
    alone = normalize_row(row, _alpaca_spec()).messages
    assert [m["role"] for m in alone] == ["user", "assistant"]
    assert normalize_row({**row, "history": empty}, _alpaca_spec()).messages == alone
