"""`tempa plan` names what changed since a stage ran: the input file, not just "input files"."""

from __future__ import annotations

import json
from pathlib import Path

from stage_helpers import record_done
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import plan_run
from tempa.sft.files import digest, write_json
from tempa.sft.run_layout import MANIFEST

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _recipe(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("ja", "en"):
        (data / f"{name}.jsonl").write_text(json.dumps(ROW) + "\n", encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: t\nbase_model: tempa:tiny\nstages:\n"
        "  - name: sft\n    kind: sft\n    data:\n      sources:\n"
        "        - {name: ja, path: ./data/ja.jsonl, thinking_mode: 'off'}\n"
        "        - {name: en, path: ./data/en.jsonl, thinking_mode: 'off'}\n", encoding="utf-8")
    return recipe


def test_the_plan_names_the_input_file_that_changed(tmp_path):
    recipe, run_dir = _recipe(tmp_path), tmp_path / "run"
    first = plan_run(load_recipe(recipe), run_dir)[0]
    record_done(run_dir, first)
    assert plan_run(load_recipe(recipe), run_dir)[0].action == "skip"

    (tmp_path / "data" / "ja.jsonl").write_text(json.dumps(ROW) * 2 + "\n", encoding="utf-8")
    decision = plan_run(load_recipe(recipe), run_dir)[0]
    assert decision.action == "rerun"
    assert decision.reason == f"changed since it ran: input files: {tmp_path / 'data' / 'ja.jsonl'} (changed)"


def test_a_manifest_of_an_older_tempa_with_one_digest_for_its_files(tmp_path):
    """Manifests written before the per-file digests hold the files as one digest: a complete stage is still
    complete, and a changed file still reruns it (which file, that manifest cannot tell: the plan lists them)."""
    recipe, run_dir = _recipe(tmp_path), tmp_path / "run"
    first = plan_run(load_recipe(recipe), run_dir)[0]
    record_done(run_dir, first)
    manifest = json.loads((run_dir / "sft" / MANIFEST).read_text())
    manifest["components"]["files"] = digest(manifest["components"]["files"])  # as an older tempa wrote it
    write_json(run_dir / "sft" / MANIFEST, manifest)
    assert plan_run(load_recipe(recipe), run_dir)[0].action == "skip"

    (tmp_path / "data" / "en.jsonl").write_text(json.dumps(ROW) * 2 + "\n", encoding="utf-8")
    decision = plan_run(load_recipe(recipe), run_dir)[0]
    files = ", ".join(str(tmp_path / "data" / f"{name}.jsonl") for name in ("ja", "en"))
    assert decision.reason == f"changed since it ran: input files, one or more of: {files}"
