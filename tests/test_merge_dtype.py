"""The merged model is saved in the dtype its checkpoints were trained and saved in, not the base model's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stage_helpers import make_context
from tempa.merge import MergeStageConfig, run_merge

pytestmark = pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")


def checkpoint_in(src: Path, dst: Path, dtype: torch.dtype, seed: int) -> Path:
    """A "checkpoint" of ``src`` saved in ``dtype`` (its config saying so, as transformers writes it)."""
    shutil.copytree(src, dst)
    generator = torch.Generator().manual_seed(seed)
    weights = {
        k: (v + 0.05 * torch.randn(v.shape, generator=generator)).to(dtype)
        for k, v in load_file(src / "model.safetensors").items()
    }
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def saved_dtypes(folder: Path) -> set[str]:
    """The safetensors dtype names (F32, BF16, F16) of the tensors in ``folder``'s weights."""
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {handle.get_slice(key).get_dtype() for key in handle.keys()}  # noqa: SIM118


@pytest.fixture(scope="module")
def bf16_checkpoints(tiny_model_dir: Path, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("bf16")
    return [
        checkpoint_in(tiny_model_dir, root / name, torch.bfloat16, seed) for seed, name in enumerate("ab")
    ]


def merged(tmp_path: Path, base: Path, **fields) -> Path:
    config = MergeStageConfig.model_validate(
        {"name": "merge", "kind": "merge", "reevaluate": False, **fields}
    )
    ctx = make_context(tmp_path, "merge", start_model=base, tokenizer_dir=base)
    return Path(run_merge(config, ctx).model)


@pytest.mark.parametrize("method", ["task_arithmetic", "linear"])
def test_bf16_checkpoints_merged_over_an_f32_base_are_saved_in_bf16(
    method, tmp_path, tiny_model_dir, bf16_checkpoints
):
    base_dtypes = {t.dtype for t in load_file(tiny_model_dir / "model.safetensors").values()}
    # The recipe's base (task_arithmetic's) is f32, the checkpoints bf16.
    assert base_dtypes == {torch.float32}
    out = merged(tmp_path, tiny_model_dir, method=method, models=[str(p) for p in bf16_checkpoints])
    assert saved_dtypes(out) == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_an_explicit_out_dtype_wins_over_the_checkpoints(tmp_path, tiny_model_dir, bf16_checkpoints):
    out = merged(
        tmp_path,
        tiny_model_dir,
        method="task_arithmetic",
        models=[str(p) for p in bf16_checkpoints],
        out_dtype="float16",
    )
    assert saved_dtypes(out) == {"F16"}


def test_checkpoints_of_different_dtypes_are_saved_in_float32(tmp_path, tiny_model_dir, bf16_checkpoints):
    f16 = checkpoint_in(tiny_model_dir, tmp_path / "f16", torch.float16, seed=7)
    out = merged(tmp_path, tiny_model_dir, method="linear", models=[str(bf16_checkpoints[0]), str(f16)])
    assert saved_dtypes(out) == {"F32"}  # holds either input exactly


def test_an_index_naming_no_shard_tells_no_dtype(tmp_path):
    # an empty weight_map was an IndexError (diff review), not "no dtype known"
    from tempa.merge.mergekit_run import saved_dtype

    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {}}))
    assert saved_dtype(tmp_path) is None


def test_bf16_checkpoints_are_merged_in_float32_and_rounded_once(tmp_path, tiny_model_dir, bf16_checkpoints):
    # Left to mergekit, task-vector methods compute in the inputs' dtype: bf16 differences, the weights rounded to bf16
    # (0.3 -> 0.30078), bf16 sums. The merge is the formula in float32, rounded once to the bf16 it is saved in.
    base = checkpoint_in(tiny_model_dir, tmp_path / "base", torch.bfloat16, seed=9)
    out = merged(tmp_path, base, method="task_arithmetic", models=[str(p) for p in bf16_checkpoints],
                 weights=[0.3, 0.7])
    b, x, y = (load_file(folder / "model.safetensors") for folder in (base, *bf16_checkpoints))
    result = load_file(out / "model.safetensors")
    wrong = total = 0
    for key, value in result.items():
        expected = b[key].float() + 0.3 * (x[key].float() - b[key].float()) + 0.7 * (y[key].float() - b[key].float())
        assert value.dtype == torch.bfloat16
        wrong += int((value != expected.to(torch.bfloat16)).sum())
        total += value.numel()
    # (float32 arithmetic may still round a last bit differently where the order of the sums differs: a few in 10^3)
    assert wrong / total < 0.005, f"{wrong} of {total} merged values are not the float32 merge rounded to bf16"
