"""Merge parameter values mergekit refuses at merge time, or takes to mean nothing the method is for, are refused when
the recipe loads (so `tempa plan` says so, before any training); the values at the edge of each range still load."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from stage_helpers import make_context
from tempa.merge import MergeStageConfig, run_merge

# mergekit imports numpy.core, which numpy 2 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")

NAN, INF = float("nan"), float("inf")


def validate(method: str, models: int = 2, **fields) -> MergeStageConfig:
    return MergeStageConfig.model_validate({"name": "m", "kind": "merge", "method": method,
                                            "models": [f"m{i}" for i in range(models)], **fields})


def refusal(method: str, models: int = 2, **fields) -> str:
    """The one-line error the stage's fields get at load."""
    with pytest.raises(ValidationError) as info:
        validate(method, models, **fields)
    errors = info.value.errors()
    assert len(errors) == 1
    message = errors[0]["msg"].removeprefix("Value error, ")
    assert "\n" not in message
    return message


SLERP_WHY = "slerp interpolates from the first model (t=0) to the second (t=1)"


@pytest.mark.parametrize(("t", "expected"), [
    (1.5, "parameters.t: 1.5 is outside [0, 1]: "),
    (-0.1, "parameters.t: -0.1 is outside [0, 1]: "),
    (1.0000001, "parameters.t: 1.0000001 is outside [0, 1]: "),
    ("1.5", "parameters.t: 1.5 is outside [0, 1]: "),  # YAML's quoted number, as mergekit reads it
    ([0, 0.5, 1.2], "parameters.t: [0, 0.5, 1.2] has 1.2 outside [0, 1]: "),
    ([{"filter": "self_attn", "value": [0, -0.25]}, {"value": 0.5}],
     "parameters.t: [{'filter': 'self_attn', 'value': [0, -0.25]}, {'value': 0.5}] has -0.25 outside [0, 1]: "),
    ([{"filter": "mlp", "value": 0.3}, {"value": 2}], "has 2.0 outside [0, 1]: "),
])
def test_a_slerp_t_outside_0_to_1_is_refused_in_every_form_of_setting(t, expected):
    message = refusal("slerp", parameters={"t": t})
    assert expected in message and message.startswith("parameters.t: ") and SLERP_WHY in message, message
    assert "extrapolates" in message


@pytest.mark.parametrize("t", [0, 1, 0.0, 1.0, [0, 1], [1, 0.5, 0], [{"filter": "self_attn", "value": 1},
                                                                      {"value": [0, 1]}]])
def test_a_slerp_t_from_0_to_1_loads(t):
    assert validate("slerp", parameters={"t": t}).parameters == {"t": t}


@pytest.mark.parametrize(("method", "fields", "expected"), [
    ("slerp", {"parameters": {"t": NAN}}, "parameters.t: nan is not a finite number"),
    ("ties", {"parameters": {"lambda": INF}}, "parameters.lambda: inf is not a finite number"),
    ("ties", {"parameters": {"lambda": [1.0, -INF]}}, "parameters.lambda: -inf is not a finite number"),
    ("task_arithmetic", {"weights": [NAN, 1.0]}, "weights: nan is not a finite number"),
    ("linear", {"weights": [1.0, INF]}, "weights: inf is not a finite number"),
])
def test_a_value_that_is_not_a_finite_number_is_refused(method, fields, expected):
    message = refusal(method, **fields)
    assert message.startswith(expected), message


def test_other_parameters_keep_every_finite_value_mergekit_takes():
    """Task negation (a negative lambda or weight) and normalisation off are mergekit's own uses, not mistakes."""
    assert validate("ties", parameters={"lambda": -1.0}).parameters == {"lambda": -1.0}
    assert validate("task_arithmetic", weights=[1.0, -0.5]).weights == [1.0, -0.5]
    assert validate("linear", weights=[2.0, 3.0], parameters={"normalize": False}).weights == [2.0, 3.0]


def _copy_with_noise(src: Path, dst: Path, seed: int) -> Path:
    shutil.copytree(src, dst)
    weights = load_file(src / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in weights.items()},
              dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_a_slerp_at_t_1_still_merges_into_the_second_model(tmp_path, tokenizer_dir, tiny_model_dir):
    a = _copy_with_noise(tiny_model_dir, tmp_path / "a", seed=1)
    b = _copy_with_noise(tiny_model_dir, tmp_path / "b", seed=2)
    config = MergeStageConfig.model_validate({"name": "merge", "kind": "merge", "reevaluate": False, "method": "slerp",
                                              "models": [str(a), str(b)], "parameters": {"t": 1.0},
                                              "dtype": "float32"})
    ctx = make_context(tmp_path / "run", "merge", start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir)
    merged = load_file(Path(run_merge(config, ctx).model) / "model.safetensors")
    second = load_file(b / "model.safetensors")
    assert set(merged) == set(second)
    for key in second:
        torch.testing.assert_close(merged[key], second[key], rtol=1e-5, atol=1e-6)
