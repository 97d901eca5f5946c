"""Mixing arithmetic as the recipe reference states it: the thinking share of a ``mixed`` source, and draws by
content that keep a growing source's old rows where they were."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from tempa.sft.data_config import SourceConfig
from tempa.sft.mixing import (
    assign_thinking,
    content_key,
    heldout_count,
    split_heldout,
    thinking_on_count,
    thinking_picks,
)


def _half_up(ratio: str, n: int) -> int:
    # The documented rule on the ratio as the recipe writes it: ratio * rows, rounded half up.
    return int(Fraction(ratio) * n + Fraction(1, 2))


@pytest.mark.parametrize(
    ("ratio", "n"), [("0.29", 50), ("0.35", 90), ("0.57", 50), ("0.41", 150), ("0.7", 5)]
)
def test_a_ratio_that_lands_on_a_half_rounds_up(ratio: str, n: int) -> None:
    # 0.29 * 50 is 14.5 as written, 14.499999999999998 in binary floating point.
    assert (Fraction(ratio) * n).denominator == 2
    assert thinking_on_count(float(ratio), n) == _half_up(ratio, n)


def test_the_mixed_share_of_a_source_is_the_documented_count(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_text("{}\n")
    source = SourceConfig.model_validate(
        {"name": "r", "path": "r.jsonl", "thinking_mode": "mixed", "thinking_ratio": 0.29},
        context={"base_dir": str(tmp_path)},
    )
    has_trace = [i % 5 != 0 for i in range(63)]  # 50 rows with a trace
    on = assign_thinking(has_trace, source, 7, keys=list(range(63)))
    assert sum(on) == _half_up("0.29", 50)
    assert not any(o and not h for o, h in zip(on, has_trace, strict=True))


@pytest.mark.parametrize(("setting", "grow"), [(0.1, 3), (0.1, 40), (25, 5), (0.02, 1)])
def test_a_grown_source_keeps_its_old_held_out_rows_but_at_the_margin(
    setting: float | int, grow: int
) -> None:
    keys = [content_key(f"soal {i}") for i in range(500 + grow)]
    for seed in range(5):
        before = set(split_heldout(keys[:500], setting, seed)[1])
        after = set(split_heldout(keys, setting, seed)[1])
        old_after, added = {p for p in after if p < 500}, len(after) - len({p for p in after if p < 500})
        assert len(before) == heldout_count(setting, 500) and len(after) == heldout_count(setting, 500 + grow)
        # Nested, and the old rows that cross the cut are exactly those the count change and the added rows make.
        assert old_after <= before or before <= old_after
        assert len(before ^ old_after) == abs(len(after) - len(before) - added)


def test_a_row_that_does_not_fit_with_thinking_on_gives_its_place_to_the_next_in_the_draw() -> None:
    eligible = list(range(100, 120))
    keys = [content_key(f"row {i}") for i in eligible]
    on, untried = thinking_picks(eligible, keys, 3, 5, {})
    assert on == [] and len(untried) == 5  # nothing known yet: the first five in the draw are to try
    first = untried[0]
    on, untried = thinking_picks(eligible, keys, 3, 5, {row: row != first for row in untried})
    assert len(on) == 4 and first not in on and len(untried) == 1  # the next in the draw, to try
    on, untried = thinking_picks(eligible, keys, 3, 5, {row: row != first for row in eligible})
    assert untried == [] and len(on) == 5 and first not in on
