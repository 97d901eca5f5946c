"""A release manager's trial of `tempa export gguf` and `tempa push` on a run of the tiny model (sft-a, sft-b,
merge, bake): what push takes, where a re-quantised GGUF goes, what the GGUF and its Modelfile carry, what marks an
export complete, and what the files are called."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from stage_helpers import baked_final
from tempa.merge.publish import make_publishable
from tempa.recipes.cli import main

CARD = """---
license: apache-2.0
language: [id, en]
---

# rel
"""


@pytest.fixture(scope="module")
def baked(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model baked, with the recipe's sampling defaults and licence (once: each test copies it)."""
    final = baked_final(tiny_model_dir, tmp_path_factory.mktemp("rel") / "final")
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    generation.update(temperature=0.6, top_p=0.9, do_sample=True)
    (final / "generation_config.json").write_text(json.dumps(generation))
    (final / "README.md").write_text(CARD)
    return final


def release_run(run: Path, baked: Path, *, name: str = "rel") -> Path:
    """A finished run of recipe ``name`` (stages sft-a, sft-b, bake) as the runner leaves it, in ``run``."""
    final = run / "bake" / "final"
    shutil.copytree(baked, final)
    make_publishable(final)
    stages = [{"name": "sft-a", "kind": "sft"}, {"name": "sft-b", "kind": "sft"}, {"name": "bake", "kind": "bake"}]
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump({"name": name, "stages": stages}))
    for stage in stages:
        folder = run / stage["name"]
        folder.mkdir(exist_ok=True)
        (folder / "manifest.json").write_text(json.dumps(
            {"name": stage["name"], "kind": stage["kind"], "fingerprint": "f", "status": "done", "started_at": 0}))
        (folder / "DONE").write_text(json.dumps({"fingerprint": "f"}))
    (run / "final").symlink_to(final)
    return run


def test_push_refuses_a_run_whose_stage_folders_were_deleted_as_export_warns_of_it(baked, tmp_path, capsys):
    run = release_run(tmp_path / "runs" / "rel", baked)
    assert main(["push", str(run), "--repo", "org/x", "--dry-run"]) == 0  # whole, it goes
    capsys.readouterr()
    shutil.rmtree(run / "sft-a")
    shutil.rmtree(run / "sft-b")

    assert main(["push", str(run), "--repo", "org/x", "--dry-run"]) == 1
    pushed = capsys.readouterr()
    assert "dry run" not in pushed.out
    assert pushed.err.strip() == pushed.err.strip().splitlines()[0]
    assert "not every stage is complete and current: sft-a (pending), sft-b (pending)" in pushed.err

    assert main(["export", "gguf", str(run), "--out", str(tmp_path / "x.gguf")]) == 0
    assert "not every stage is complete and current: sft-a (pending), sft-b (pending)" in capsys.readouterr().err


def test_a_gguf_is_requantised_into_a_folder_that_does_not_exist_yet(baked, tmp_path, capsys):
    from tempa.merge.gguf_export import gguf_tensor_types

    f16 = tmp_path / "final" / "rel-f16.gguf"
    assert main(["export", "gguf", str(baked), "--out", str(f16)]) == 0
    out = tmp_path / "rel" / "requant" / "rel-q8.gguf"
    assert main(["export", "gguf", str(f16), "--type", "q8_0", "--out", str(out)]) == 0, capsys.readouterr().err
    assert "Q8_0" in gguf_tensor_types(out)
    assert "\nFROM ./rel-q8.gguf\n" in (out.parent / "rel-q8.Modelfile").read_text()
    assert sorted(path.name for path in out.parent.iterdir()) == ["rel-q8.Modelfile", "rel-q8.gguf"]
