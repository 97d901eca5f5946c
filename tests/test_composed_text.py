"""Text is trained in its composed form (NFC), whatever form the user's file holds.

Files written on macOS (and some exports) hold Vietnamese decomposed (NFD: 'ạ' as 'a' + U+0323). It renders the
same, but the tokenizer sees other bytes: the row trained on more, other tokens than its NFC twin, and the model
learnt to write that form. Teacher text was already stored NFC; the user's own SFT rows, prompts, offline pairs and
pretraining documents were read as they were.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from tempa.sft.formats import FormatSpec, normalize_row

PHO = "Làm thế nào để nấu phở bò ngon như ngoài hàng ở Hà Nội?"
ANSWER = "Ninh xương bò thật lâu, thêm quế, hồi và gừng nướng."
THOUGHT = "Người dùng hỏi về phở; trả lời bằng tiếng Việt."
SYSTEM = "Bạn là trợ lý hữu ích."


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def _all_text(conversation) -> list[str]:
    return [t for turn in conversation.messages for t in (turn["content"], turn["reasoning_content"]) if t]


@pytest.mark.parametrize("row", [
    {"messages": [{"role": "system", "content": nfd(SYSTEM)}, {"role": "user", "content": nfd(PHO)},
                  {"role": "assistant", "content": nfd(ANSWER), "reasoning_content": nfd(THOUGHT)}]},
    {"conversations": [{"from": "human", "value": nfd(PHO)},
                       {"from": "gpt", "value": f"<think>{nfd(THOUGHT)}</think>{nfd(ANSWER)}"}],
     "system": nfd(SYSTEM)},
    {"prompt": nfd(PHO), "response": nfd(ANSWER), "reasoning": nfd(THOUGHT), "system": nfd(SYSTEM)},
    {"instruction": nfd(PHO), "output": nfd(ANSWER), "reasoning_content": nfd(THOUGHT), "system": nfd(SYSTEM)},
    {"messages": [{"role": "system", "content": [{"type": "text", "text": nfd(SYSTEM)}]},
                  {"role": "user", "content": [{"type": "text", "text": nfd(PHO[:10])},
                                               {"type": "text", "text": nfd(PHO[10:])}]},
                  {"role": "assistant", "content": nfd(ANSWER), "reasoning_content": nfd(THOUGHT)}]},
], ids=["messages", "sharegpt", "prompt-response", "instruction-output", "content-parts"])
def test_every_format_reads_decomposed_text_composed(row):
    texts = _all_text(normalize_row(row, FormatSpec("auto")))
    assert texts and sorted(texts) == sorted([SYSTEM, PHO, THOUGHT, ANSWER])
    assert all(unicodedata.is_normalized("NFC", text) for text in texts)


def _sft_ids(folder: Path, rows: list[dict], tokenizer) -> list[list[int]]:
    from datasets import load_from_disk

    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    folder.mkdir()
    (folder / "rows.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    data = DataConfig.model_validate({"sources": [{"name": "vi", "path": "rows.jsonl", "thinking_mode": "on"}]},
                                     context={"base_dir": str(folder)})
    prepared = prepare_sft_data(data, tokenizer, out_dir=folder / "out", cache_dir=folder / "cache", seed=0,
                                max_length=512)
    return [list(ids) for ids in load_from_disk(str(prepared.train_path))["input_ids"]]


def test_an_sft_source_in_nfd_trains_on_the_tokens_of_its_nfc_twin(tmp_path, tiny_tokenizer):
    from tempa.chat_templates import load_template

    tiny_tokenizer.chat_template = load_template("llama3_thinking")
    def rows(form):
        return [{"messages": [{"role": "user", "content": form(f"{PHO} ({k})")},
                              {"role": "assistant", "content": form(ANSWER), "reasoning_content": form(THOUGHT)}]}
                for k in range(6)]

    composed_ids = _sft_ids(tmp_path / "nfc", rows(str), tiny_tokenizer)
    decomposed_ids = _sft_ids(tmp_path / "nfd", rows(nfd), tiny_tokenizer)
    assert composed_ids and decomposed_ids == composed_ids


def test_a_pretraining_document_in_nfd_trains_on_the_tokens_of_its_nfc_twin(tmp_path, tiny_model_dir):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from tempa.sft.pretrain_config import PretrainStageConfig
    from tempa.sft.pretrain_stage import prepare_pretrain_data

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [f"{PHO} {ANSWER} ({k})" for k in range(8)]

    def ids(form, name):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": form(t)}, ensure_ascii=False) + "\n" for t in texts), "utf-8")
        config = PretrainStageConfig.model_validate({
            "name": "cpt", "sources": [{"name": "web", "path": str(path)}],
            "train": {"max_length": 4096, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
        data = prepare_pretrain_data(config, tokenizer, tmp_path / f"cache-{name}", seed=0)
        return sorted(map(list, load_from_disk(str(data.train_path))["input_ids"]))

    composed_ids = ids(str, "nfc")
    assert composed_ids and ids(nfd, "nfd") == composed_ids


@pytest.mark.parametrize("row", [{"prompt": nfd(PHO)}, {"messages": [{"role": "user", "content": nfd(PHO)}]}],
                         ids=["prompt", "messages"])
def test_a_prompt_in_nfd_is_sampled_and_keyed_as_its_nfc_twin(row, tmp_path):
    from tempa.alignment.prompts import PromptSource, to_prompt

    (tmp_path / "prompts.jsonl").write_text("{}\n", encoding="utf-8")
    source = PromptSource(path=str(tmp_path / "prompts.jsonl"))
    assert to_prompt(row, 0, source) == to_prompt({"prompt": PHO}, 0, source)


def test_an_evaluation_suite_in_nfd_prompts_and_scores_its_nfc_twin(tmp_path):
    from tempa.merge.eval_data import chat_messages, load_rows, prompt_messages
    from tempa.merge.suites import raw_text

    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PHO},
                          {"role": "assistant", "content": ANSWER}], "answer": "phở"},
            {"prompt": PHO, "system": SYSTEM},
            {"text": f"{PHO} {ANSWER}"}]
    path = tmp_path / "suite.jsonl"
    path.write_text("".join(json.dumps(json.loads(nfd(json.dumps(row, ensure_ascii=False))), ensure_ascii=False) + "\n"
                            for row in rows), encoding="utf-8")
    assert nfd(PHO) in path.read_text(encoding="utf-8")
    read = load_rows(str(path))
    assert prompt_messages(read[0]) == prompt_messages(rows[0]) == rows[0]["messages"][:2]
    assert prompt_messages(read[1]) == prompt_messages(rows[1])
    assert chat_messages(read[0]) == chat_messages(rows[0])
    assert raw_text(read[2]) == rows[2]["text"]


def test_cjk_compatibility_ideographs_and_letterlike_signs_stay_as_written():
    """NFC also replaces CJK compatibility ideographs (塚 U+FA10, written in Japanese names in some sources) by the
    unified ideograph, and the Ω, K and Å signs by the letters: a change of character, not of form. Those stay; the
    combining sequences around them are still composed."""
    from tempa.sft.formats import composed

    kept = "\ufa10田 \uf929 \U0002f800 \u212b \u2126 \u212a"
    text = f"{kept} {nfd('Hà Nội')} {nfd('がぎぐ')} {nfd('한국어')}"
    assert unicodedata.normalize("NFC", kept) != kept  # NFC would replace them
    assert composed(text) == f"{kept} Hà Nội がぎぐ 한국어"
    assert composed(kept) == kept
    assert composed("e\u0341 \u1f71") == unicodedata.normalize("NFC", "e\u0341 \u1f71")  # other singletons: NFC
