"""A cache or run directory tempa cannot write gets one line naming TEMPA_CACHE / the run directory and what to do,
not an OSError (/proc takes no new files, for root too)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).parent.parent / "recipes" / "demo.yaml"


def _tempa(*args: str, cache: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tempa.recipes.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TEMPA_CACHE": cache})


def test_an_unwritable_tempa_cache_is_named(tmp_path: Path) -> None:
    done = _tempa("run", str(RECIPE), "--run-dir", str(tmp_path / "run"), cache="/proc/tempa-cache")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert lines[-1].startswith("tempa: error: TEMPA_CACHE /proc/tempa-cache: cannot be written (") and \
        lines[-1].endswith("point TEMPA_CACHE at a writable folder"), done.stderr


def test_an_unwritable_run_dir_is_named(tmp_path: Path) -> None:
    done = _tempa("run", str(RECIPE), "--run-dir", "/proc/tempa-run", cache=str(tmp_path / "c"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert lines[-1].startswith("tempa: error: /proc/tempa-run: the run directory cannot be written in /proc (") and \
        lines[-1].endswith("pick a writable --run-dir"), done.stderr
