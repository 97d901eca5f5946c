"""A merge whose inputs or run folder lie under a path with a space (`~/My Drive/...`): mergekit serialises such a
model reference as itself, and every merge stopped after all training with "ValueError: Circular reference detected
(id repeated)" (release manager's trial)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from stage_helpers import make_context
from tempa.merge import MergeStageConfig, run_merge

pytestmark = pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")


def _shifted(src: Path, dst: Path, by: float) -> Path:
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    weights = load_file(src / "model.safetensors")
    save_file({k: v + by for k, v in weights.items()}, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_a_merge_under_folders_with_spaces_and_quotes_runs_and_records_the_real_paths(
        method, tmp_path, tiny_model_dir, tokenizer_dir):
    root = tmp_path / 'My Drive' / 'run "b"'
    a = _shifted(tiny_model_dir, root / "sft a" / "final", 0.01)
    b = _shifted(tiny_model_dir, root / "sft b" / "final", -0.03)
    base = shutil.copytree(tiny_model_dir, root / "base model")
    fields = {"density": 0.5} if method == "ties" else {}
    config = MergeStageConfig.model_validate({
        "name": "merge", "kind": "merge", "reevaluate": False, "method": method, "models": [str(a), str(b)],
        "weights": [3.0, 1.0], "dtype": "float32", **fields})
    result = run_merge(config, make_context(root, "merge", start_model=base, tokenizer_dir=tokenizer_dir))
    merged = load_file(Path(result.model) / "model.safetensors")
    document = yaml.safe_load((root / "merge" / "mergekit.yaml").read_text(encoding="utf-8"))
    assert [m["model"] for m in document["models"]] == [str(a), str(b)]
    if method == "linear":
        wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        for key, value in merged.items():
            torch.testing.assert_close(value, (3.0 * wa[key] + 1.0 * wb[key]) / 4.0, rtol=1e-5, atol=1e-6)
    else:
        assert document["base_model"] == str(base)
        assert all(torch.isfinite(v).all() for v in merged.values())
