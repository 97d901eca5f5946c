"""A row's own `thinking_mode` written as a JSON boolean (other tools write true/false) reads as on/off."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tempa.sft.formats import RowError, normalize_row, spec_for


def _chat(i: int, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"soal {i}"},
                         {"role": "assistant", "content": f"jawab {i}", "reasoning_content": f"pikir {i}"}], **extra}


def _source(tmp_path: Path):
    from tempa.sft.data_config import SourceConfig

    (tmp_path / "r.jsonl").write_text("{}\n")
    return SourceConfig.model_validate({"name": "r", "path": "r.jsonl"}, context={"base_dir": str(tmp_path)})


def test_true_and_false_read_as_on_and_off(tmp_path: Path) -> None:
    spec = spec_for(_source(tmp_path))
    assert normalize_row(_chat(0, thinking_mode=True), spec).thinking_mode == "on"
    assert normalize_row(_chat(0, thinking_mode=False), spec).thinking_mode == "off"
    assert normalize_row(_chat(0, thinking_mode=None), spec).thinking_mode is None


@pytest.mark.parametrize("value", [1, 0, "yes", "true", [True]])
def test_other_values_stay_a_reject_in_the_same_words(tmp_path: Path, value: Any) -> None:
    # 1/0 and the strings "true"/"yes" are not booleans: ambiguous (a count? a CSV cell?), so still refused
    with pytest.raises(RowError, match=r"^'thinking_mode' must be 'on' or 'off', got "):
        normalize_row(_chat(0, thinking_mode=value), spec_for(_source(tmp_path)))


def test_boolean_rows_of_a_jsonl_file_train_in_their_mode(tmp_path: Path, tokenizer: Any) -> None:
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    rows = [_chat(0, thinking_mode=True), _chat(1, thinking_mode=False), _chat(2)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = DataConfig.model_validate({"sources": [{"name": "r", "path": "r.jsonl", "thinking_mode": "off"}]},
                                       context={"base_dir": str(tmp_path)})
    prepared = prepare_sft_data(config, tokenizer, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", seed=0)
    text = "".join(tokenizer.decode(ids) for ids in prepared.train["input_ids"])
    assert not (tmp_path / "out" / "rejects.jsonl").read_text().strip()
    assert all(f"soal {i}" in text for i in range(3))
    # the `true` row renders its trace in an "off" source; `false` and the row without a mode stay off
    assert "pikir 0" in text and "pikir 1" not in text and "pikir 2" not in text
