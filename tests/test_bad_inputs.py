"""Every fast case of the bad-input table: exit code 1, one line naming what is wrong, no traceback.

The table lives in ``tests/bad_inputs.py``; ``bench/reliability.py`` runs all of it (the slow
cases too) as real subprocesses and also checks that nothing outside the run directory and the
cache was written.
"""

from __future__ import annotations

import pytest
from bad_inputs import CASES, Case

from tempa.recipes.cli import main


@pytest.mark.parametrize("case", [c for c in CASES if c.fast], ids=lambda c: c.id)
def test_bad_input_is_one_line_error(case: Case, tmp_path, capsys, monkeypatch) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    argv = case.build(ws)
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("tempa: error: "), err
    assert "Traceback" not in err and case.expect in lines[0], lines[0]


def test_the_table_covers_every_kind_of_input() -> None:
    kinds = {case.kind for case in CASES}
    assert kinds == {"recipe", "rows", "model", "cli"} and len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)
