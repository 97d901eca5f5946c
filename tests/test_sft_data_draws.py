"""SFT data for a team that keeps adding rows: draws that keep the old rows' split, a ``mixed`` share counted on the
rows the length limits keep, and a row's own ``thinking_mode`` (tiny tokenizer, the real llama3_thinking template)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tempa.sft.data import PreparedData, prepare_sft_data
from tempa.sft.data_config import DataConfig

OFF_PREFILL = "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n</think>\n"


def chat(i: int, reasoning: str | None = "pikir", **extra: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {"role": "assistant", "content": f"jawab {i}"}
    if reasoning is not None:
        answer["reasoning_content"] = f"{reasoning} {i}"
    return {"messages": [{"role": "user", "content": f"soal {i}"}, answer], **extra}


def write(path: Path, rows: list[Any]) -> None:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )


def prepare(
    folder: Path, sources: list[dict], tokenizer: Any, *, max_length: int | None = None, **extra: Any
) -> PreparedData:
    config = DataConfig.model_validate({"sources": sources, **extra}, context={"base_dir": str(folder)})
    return prepare_sft_data(
        config, tokenizer, out_dir=folder / "out", cache_dir=folder / "cache", seed=0, max_length=max_length
    )


def rows_of(tokenizer: Any, ds: Any) -> dict[int, str]:
    """Row number (``soal N``) -> the text of its sample (one sample per row here)."""
    out = {}
    for ids in ds["input_ids"] if ds is not None else []:
        text = tokenizer.decode(ids)
        out[int(re.search(r"soal (\d+)", text).group(1))] = text
    return out


def thinking_rows(tokenizer: Any, prepared: PreparedData) -> set[int]:
    texts = {**rows_of(tokenizer, prepared.train), **rows_of(tokenizer, prepared.eval)}
    return {i for i, text in texts.items() if f"pikir {i}" in text}


def test_rows_added_to_a_source_leave_the_old_rows_held_out_and_thinking_as_they_were(
    tmp_path: Path, tokenizer: Any
) -> None:
    source = {"name": "r", "path": "r.jsonl", "thinking_mode": "mixed", "thinking_ratio": 0.5}
    runs = {}
    for n in (200, 203):
        folder = tmp_path / str(n)
        folder.mkdir()
        write(folder / "r.jsonl", [chat(i) for i in range(n)])
        runs[n] = prepare(folder, [source], tokenizer, heldout=0.1)
    held = {n: set(rows_of(tokenizer, p.eval)) for n, p in runs.items()}
    assert len(held[200]) == round(0.1 * 200) and len(held[203]) == round(0.1 * 203)  # the counts stay exact
    old = set(range(200))
    # Every old row held out now was held out before; an old row leaves the held-out set only to make room for a
    # new row (the count stays 20): before, a permutation of positions held out 9 other old rows of 20.
    added_held = held[203] - old
    assert held[203] & old <= held[200]
    assert len(held[200] - held[203]) == len(added_held)
    # The thinking draw likewise: 100 of 200 on, then 102 of 203; the old rows on before and after are nested.
    on = {n: thinking_rows(tokenizer, p) for n, p in runs.items()}
    assert len(on[200]) == 100 and len(on[203]) == 102
    before, after = on[200], on[203] & old
    assert before <= after or after <= before
    assert len(before ^ after) <= 3


def test_a_mixed_share_is_the_ratio_of_the_rows_the_length_limits_keep(
    tmp_path: Path, tokenizer: Any
) -> None:
    long = "pikir " * 80
    rows = [chat(i, long.strip() if i % 3 == 0 else "pikir") for i in range(120)]  # 40 long traces
    write(tmp_path / "r.jsonl", rows)
    max_length = 100

    def tokens(row: dict, thinking: str) -> int:
        return len(
            tokenizer.apply_chat_template(
                row["messages"], tokenize=True, thinking_mode=thinking, return_dict=True
            )["input_ids"]
        )

    # The premise: a long trace does not fit with thinking on, every row fits with it off.
    assert tokens(rows[0], "on") > max_length >= max(tokens(row, "off") for row in rows)
    assert max(tokens(row, "on") for i, row in enumerate(rows) if i % 3) <= max_length

    def run(ratio: float, name: str) -> tuple[Any, set[int]]:
        folder = tmp_path / name
        folder.mkdir()
        write(folder / "r.jsonl", rows)
        prepared = prepare(
            folder,
            [{"name": "r", "path": "r.jsonl", "thinking_mode": "mixed", "thinking_ratio": ratio}],
            tokenizer,
            max_length=max_length,
        )
        return prepared.mix.sources[0], thinking_rows(tokenizer, prepared)

    mix, on = run(0.5, "half")
    # A row drawn on whose trace is too long trains with thinking off instead of being dropped, and the next row in
    # the draw thinks in its place: half of the 120 rows kept think (before, a long row drawn on was dropped as
    # too long and 42 of the 102 rows kept thought).
    assert mix.rows_kept == 120 and mix.rejects == {}
    assert mix.thinking_on_rows_kept == len(on) == 60
    assert not any(i % 3 == 0 for i in on)
    # Asked for more than fit with thinking on: every row that fits thinks, and no row is lost.
    mix, on = run(0.9, "most")
    assert mix.rows_kept == 120 and mix.thinking_on_rows_kept == len(on) == 80


def test_a_rows_own_thinking_mode_wins_over_its_sources(tmp_path: Path, tokenizer: Any) -> None:
    write(tmp_path / "on.jsonl", [chat(i, **({"thinking_mode": "off"} if i % 2 else {})) for i in range(10)])
    write(
        tmp_path / "off.jsonl", [chat(i, **({"thinking_mode": "on"} if i % 2 else {})) for i in range(10, 20)]
    )
    prepared = prepare(
        tmp_path,
        [
            {"name": "on", "path": "on.jsonl", "thinking_mode": "on"},
            {"name": "off", "path": "off.jsonl", "thinking_mode": "off"},
        ],
        tokenizer,
    )
    texts = rows_of(tokenizer, prepared.train)
    on = thinking_rows(tokenizer, prepared)
    assert on == {i for i in range(10) if i % 2 == 0} | {i for i in range(10, 20) if i % 2}
    assert all(OFF_PREFILL in texts[i] for i in set(range(20)) - on)
    assert [s.thinking_on_rows_kept for s in prepared.mix.sources] == [5, 5]


def test_a_mixed_source_draws_its_ratio_among_the_rows_without_a_mode_of_their_own(
    tmp_path: Path, tokenizer: Any
) -> None:
    # 4 rows on and 6 off of their own; the ratio draws among the other 10 (5 on); null and "" are no mode.
    rows = [
        chat(i, thinking_mode="on" if i < 4 else "off" if i < 10 else None if i % 2 else "")
        for i in range(20)
    ]
    write(tmp_path / "mixed.jsonl", [*rows, chat(20, thinking_mode="yes")])
    prepared = prepare(
        tmp_path,
        [{"name": "mixed", "path": "mixed.jsonl", "thinking_mode": "mixed", "thinking_ratio": 0.5}],
        tokenizer,
    )
    on = thinking_rows(tokenizer, prepared)
    assert {0, 1, 2, 3} <= on and not on & set(range(4, 10)) and len(on & set(range(10, 20))) == 5
    assert prepared.mix.sources[0].thinking_on_rows_kept == 9
    # Any other value is a reject naming the column, the line and what was expected.
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"], r["detail"]) for r in rejects] == [
        (21, "malformed_row", "line 21: 'thinking_mode' must be 'on' or 'off', got 'yes'")
    ]


def test_the_thinking_mode_column_can_be_named(tmp_path: Path) -> None:
    from tempa.sft.data_config import SourceConfig
    from tempa.sft.formats import RowError, normalize_row, spec_for

    (tmp_path / "r.jsonl").write_text("{}\n")
    source = SourceConfig.model_validate(
        {"name": "r", "path": "r.jsonl", "columns": {"thinking_mode": "mode"}},
        context={"base_dir": str(tmp_path)},
    )
    row = chat(0)
    assert (
        normalize_row({**row, "mode": "off", "thinking_mode": "on"}, spec_for(source)).thinking_mode == "off"
    )
    assert normalize_row({**row, "thinking_mode": "on"}, spec_for(source)).thinking_mode is None
    with pytest.raises(RowError, match=r"^'mode' must be 'on' or 'off', got 1$"):
        normalize_row({**row, "mode": 1}, spec_for(source))


def test_a_row_whose_tools_hold_a_value_json_has_no_form_for_still_gets_its_draw_key():
    # a tool definition read from Parquet can hold a timestamp: the draw key was a TypeError (diff review)
    import datetime

    from tempa.sft.data import _conversation_key
    from tempa.sft.formats import Conversation

    when = datetime.datetime(2026, 12, 2, tzinfo=datetime.timezone.utc)
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    first = _conversation_key(Conversation(turns, [{"name": "clock", "since": when}]))
    assert first == _conversation_key(Conversation(turns, [{"name": "clock", "since": when}]))  # stable
    assert first != _conversation_key(Conversation(turns, [{"name": "clock", "since": when.replace(year=2025)}]))
