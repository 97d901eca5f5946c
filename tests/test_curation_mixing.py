"""Mixing arithmetic as the recipe reference states it: the thinking share of a ``mixed`` source."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from tempa.sft.data_config import SourceConfig
from tempa.sft.mixing import assign_thinking, thinking_on_count


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
    on = assign_thinking(has_trace, source, seed=7)
    assert sum(on) == _half_up("0.29", 50)
    assert not any(o and not h for o, h in zip(on, has_trace, strict=True))
