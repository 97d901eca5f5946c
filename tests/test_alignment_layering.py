"""tempa.alignment stays on its floor: it never imports the recipe runner or the merge package."""

from __future__ import annotations

import subprocess
import sys


def test_alignment_imports_neither_recipes_nor_merge():
    modules = ["backends", "backends_http", "backends_vllm", "completions", "dpo_train", "judge", "pairs",
               "preference_config", "preference_stage", "prompts", "rewards", "sampling", "selection",
               "synthesize_config", "synthesize_stage"]
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}: importlib.import_module('tempa.alignment.' + name)\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('tempa.recipes', 'tempa.merge')))\n"
        "assert not bad, bad\n"
        "assert 'vllm' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
