"""Offline preference rows from typed sources (Parquet, save_to_disk): the same pairs and rejects as JSON Lines."""

from __future__ import annotations

import json

import pytest

from tempa.alignment.offline_pairs import OfflinePairs, load_offline_pairs

ROWS = [
    {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
     "rejected": [{"role": "assistant", "content": "5"}]},
    {"prompt": [{"role": "user", "content": "Halo"}], "chosen": [{"role": "assistant", "content": "Halo juga!"}],
     "rejected": [{"role": "user", "content": "Halo"}]},  # the rejected side is not the assistant's reply
    {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hi."}],
     "rejected": [{"role": "assistant", "content": "  Hi.  "}]},  # renders like the chosen side
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from tempa.chat_templates import bake_tokenizer

    out = tmp_path_factory.mktemp("offline-tok") / "tok"
    bake_tokenizer(tiny_model_dir, "llama3_thinking", out)
    return AutoTokenizer.from_pretrained(out)


@pytest.mark.parametrize("kind", ["parquet", "save_to_disk"])
def test_typed_sources_give_pairs_and_rejects(tmp_path, tokenizer, kind):
    import datasets

    dataset = datasets.Dataset.from_list(ROWS)
    path = tmp_path / ("prefs.parquet" if kind == "parquet" else "prefs")
    dataset.to_parquet(str(path)) if kind == "parquet" else dataset.save_to_disk(str(path))
    loaded = load_offline_pairs(OfflinePairs(path=str(path)), tokenizer, cache_dir=tmp_path / "cache")
    assert loaded.read == 3
    assert [([(t["role"], t["content"]) for t in r["prompt"]], r["chosen"][0]["content"], r["rejected"][0]["content"])
            for r in loaded.rows] == [([("user", "2+2?")], "4", "5")]
    assert [(r["row"], r["reason"]) for r in loaded.rejects] == [("row 1", "malformed_row"), ("row 2", "identical_pair")]
    assert "assistant's reply only" in loaded.rejects[0]["detail"]


def test_a_jsonl_row_with_an_unpaired_surrogate_escape_is_a_reject_naming_it(tmp_path, tokenizer):
    import json

    lone = '{"prompt": [{"role": "user", "content": "2+2?\\ud800"}], "chosen": "4", "rejected": "5"}'
    (tmp_path / "prefs.jsonl").write_text(json.dumps(ROWS[0]) + "\n" + lone + "\n", encoding="utf-8")
    loaded = load_offline_pairs(OfflinePairs(path=str(tmp_path / "prefs.jsonl")), tokenizer, cache_dir=tmp_path / "c")
    assert loaded.read == 2 and len(loaded.rows) == 1
    [reject] = loaded.rejects
    assert reject["reason"] == "malformed_row"
    assert "not valid text: an unpaired surrogate \\ud800 (half of a UTF-16 pair)" in reject["detail"]


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city (Celsius)",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"name": "get_time", "description": "Local time of a city",  # a bare ShareGPT-style definition
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "format": {"type": "string"}}}}
TOOL_LOOP = [
    {"role": "user", "content": "Cuaca di Jakarta?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Jakarta"}}}]},
    {"role": "tool", "content": {"temperature": 31}},
]
TOOL_ROWS = [
    {"prompt": TOOL_LOOP, "chosen": "Jakarta 31 derajat.", "rejected": "Tidak tahu.", "tools": [WEATHER]},
    # the same conversation offering other tools is another training sequence, not a repeat; tools as JSON text
    {"prompt": TOOL_LOOP, "chosen": "Jakarta 31 derajat.", "rejected": "Tidak tahu.",
     "tools": json.dumps([WEATHER, TIME])},
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},  # no tools
]


def test_offline_tool_rows_are_checked_and_trained_with_their_tools(tmp_path, tokenizer, tiny_model_dir):
    """A tool-loop row's pair check renders with its tools, the pair row keeps them, and trl's real
    DPOTrainer (reading the saved pairs dataset) tokenises exactly what the check compared."""
    from datasets import load_from_disk
    from trl import DPOConfig, DPOTrainer

    from tempa.alignment.pair_rendering import completion_ids
    from tempa.alignment.preference_stage import _save_pairs_dataset

    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TOOL_ROWS), encoding="utf-8")
    loaded = load_offline_pairs(OfflinePairs(path=str(tmp_path / "prefs.jsonl")), tokenizer, cache_dir=tmp_path / "c")
    assert loaded.rejects == []
    assert [[t["function"]["name"] for t in r.get("tools") or []] for r in loaded.rows] == [
        ["get_weather"], ["get_weather", "get_time"], []]
    assert loaded.rows[0]["prompt"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Jakarta"}'

    saved = _save_pairs_dataset(loaded.rows, tmp_path / "pairs", tmp_path)
    trainer = DPOTrainer(model=str(tiny_model_dir), args=DPOConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, bf16=False),
                         train_dataset=load_from_disk(str(saved)), processing_class=tokenizer)
    for row, example in zip(loaded.rows, trainer.train_dataset, strict=True):
        prompt_text = tokenizer.decode(example["prompt_ids"])
        for tool in row.get("tools") or []:
            assert tool["function"]["description"] in prompt_text
        assert ("get_weather" in prompt_text) == bool(row.get("tools"))
        for side in ("chosen", "rejected"):
            checked = completion_ids(tokenizer, row["prompt"], row[side], row["chat_template_kwargs"],
                                     tools=row.get("tools"))
            assert tuple(example[f"{side}_ids"]) == checked
            full = tokenizer.apply_chat_template([*row["prompt"], *row[side]], tools=row.get("tools"), tokenize=True,
                                                 return_dict=True, **row["chat_template_kwargs"])["input_ids"]
            assert list(example["prompt_ids"]) + list(example[f"{side}_ids"]) == list(full)
