"""A held-out setting that leaves a source nothing to train on names the cause and a setting that works.

A source that dedup reduced from 12 rows to 1 failed with "heldout 0.1 takes 1 of its 1 usable rows (12 read, 11
rejected) ...; set `data.heldout` ... to fewer than 1 rows or a fraction such as 0.1": the value already set, and no
word of the near-duplicates that left one row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_sft_data_pipeline import chat, config, prepare, write_jsonl

from tempa.sft.data_config import DataError


def test_a_source_curation_left_one_row_is_told_its_rejects_and_a_heldout_that_works(tmp_path: Path,
                                                                                    tokenizer: Any) -> None:
    write_jsonl(tmp_path / "pr.jsonl", [chat("Apa ibu kota Indonesia?", "Jakarta.")] * 12)
    with pytest.raises(DataError) as info:
        prepare(tmp_path, config(tmp_path, [{"name": "pr", "path": "pr.jsonl"}], heldout=0.1, curation={"dedup": True}),
                tokenizer)
    message = str(info.value)
    assert "\n" not in message
    assert "heldout 0.1 takes 1 of its 1 usable rows (12 read, 11 rejected: 11 " in message
    assert "set `heldout: 0` on this source to train on it" in message and "rejects.jsonl" in message
    assert "fraction such as 0.1" not in message and "fewer than 1 rows" not in message
