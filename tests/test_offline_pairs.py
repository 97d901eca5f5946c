"""Offline preference rows from typed sources (Parquet, save_to_disk): the same pairs and rejects as JSON Lines."""

from __future__ import annotations

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
