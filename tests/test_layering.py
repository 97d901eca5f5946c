"""Imports run one way, as README.md's "Layout" section states it (the rule of DESIGN.md): a package
imports only itself and the packages on floors below it, lazily or not.

The floors are read from that sentence in README.md, so the test follows the documented rule,
and every module of every package is checked (its AST, so imports inside functions count too).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULE = re.compile(r"Imports run one way, top to bottom: `?([a-z_]+(?:`? → `?[a-z_]+)+)`?")


def floors() -> list[str]:
    match = RULE.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert match, "README.md lost its layering rule ('Imports run one way, top to bottom: recipes → ...')"
    return [name.strip("` ") for name in match.group(1).split("→")]


def tempa_imports(path: Path) -> list[tuple[int, str]]:
    """(line, package) of every `tempa.<package>` import in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "tempa" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def test_the_rule_names_every_package():
    assert sorted(floors()) == sorted(["recipes", "merge", "alignment", "sft", "chat_templates"])


def test_every_module_imports_only_its_floor_and_below():
    order = floors()
    violations = []
    for package in order:
        allowed = set(order[order.index(package):])
        for module in sorted((ROOT / package).glob("*.py")):
            for line, imported in tempa_imports(module):
                if imported not in allowed:
                    violations.append(f"{module.relative_to(ROOT)}:{line} imports tempa.{imported}")
    assert not violations, "\n".join(violations)


def test_the_check_sees_a_violation(tmp_path):
    # The checker itself must catch an upward import, lazy or not.
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tempa.recipes.rundir import Manifest\n    import tempa.merge.bake\n")
    assert tempa_imports(module) == [(2, "recipes"), (3, "merge")]


def test_only_the_runner_writes_manifests_and_metrics():
    # Stages return their metrics; the run directory's record-keeping names stay in recipes/.
    for package in ("sft", "alignment", "merge", "chat_templates"):
        for module in (ROOT / package).glob("*.py"):
            if module.name == "run_layout.py":
                continue  # where the names are defined
            text = module.read_text(encoding="utf-8")
            for name in ("MANIFEST", "METRICS", "manifest.json", '"metrics.json"'):
                assert name not in text, f"{module.relative_to(ROOT)} mentions {name}"
