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


def _mergekit_refuses_della(density: float, epsilon: float) -> bool:
    """Whether mergekit's DELLA sparsification stops at merge time on this density and epsilon."""
    from mergekit.sparsify import della_magprune

    try:
        della_magprune(torch.linspace(-1.0, 1.0, 64).reshape(4, 16), density=density, epsilon=epsilon)
    except (ValueError, RuntimeError):
        return True
    return False


@pytest.mark.parametrize(("density", "epsilon"), [
    # mergekit refuses these (0.7 + 0.3 is 1.0 in floating point; 0.85 + 0.15 too)
    (0.9, 0.15), (0.1, 0.15), (0.8, 0.2), (0.7, 0.3), (0.85, 0.15), (0.5, 0.5), (0.05, 0.05), (0.5, -0.6), (0.3, -0.75),
    # and takes these
    (0.7, 0.29), (0.5, 0.4999), (0.5, 0.0), (0.5, -0.5), (0.2, -0.1), (1.0, 0.9), (1.0, -3.0), (0.85, 0.1499),
])
def test_a_della_epsilon_is_refused_at_load_exactly_where_mergekit_refuses_it_when_it_merges(density, epsilon):
    for method in ("della", "della_linear"):
        try:
            validate(method, density=density, parameters={"epsilon": epsilon})
            refused = False
        except ValidationError as error:
            message = error.errors()[0]["msg"]
            assert f"parameters.epsilon: {epsilon!r} with density {density!r} keeps each element with a probability " \
                   f"from " in message and f"mergekit's {method} needs density - epsilon and density + epsilon " \
                   f"inside (0, 1)" in message, message
            refused = True
        assert refused == _mergekit_refuses_della(density, epsilon), (method, density, epsilon)


def test_della_checks_every_model_s_density_against_every_epsilon_it_may_get():
    message = refusal("della", density=[0.5, 0.8], parameters={"epsilon": [0.1, 0.3]})
    assert message.startswith("parameters.epsilon: [0.1, 0.3] has 0.3, which with density 0.8 keeps each element "
                              "with a probability from 0.5 to 1.1; "), message
    assert message.endswith("give parameters.epsilon under 0.2 for density 0.8"), message
    message = refusal("della_linear", density=0.5,
                      parameters={"epsilon": [{"filter": "mlp", "value": 0.6}, {"value": 0.1}]})
    assert "has 0.6, which with density 0.5 keeps each element with a probability from -0.1 to 1.1" in message
    # Unset, epsilon is mergekit's default, 0.15: a density within 0.15 of 0 or 1 fails the merge just the same.
    message = refusal("della", density=[0.5, 0.9])
    assert message.startswith("density: 0.9 with della's default epsilon 0.15 keeps each element with a probability "
                              "from 0.75 to 1.05; "), message
    assert validate("della", density=[0.5, 0.84]).density == [0.5, 0.84]
    assert validate("della", density=[0.2, 0.7], parameters={"epsilon": [0.05, 0.15]}).density == [0.2, 0.7]


def test_della_leaves_the_base_models_unused_density_out():
    """A base model listed among `models` is merged as the base: mergekit gives it no density, so no epsilon check."""
    config = validate("della", 3, base_model="m2", density=[0.5, 0.5, 0.05])
    assert config.density == [0.5, 0.5, 0.05]
    assert refusal("della", 3, base_model="m2", density=[0.05, 0.5, 0.5]).startswith("density: 0.05 with della's")


def test_an_epsilon_of_another_method_is_no_della_spread():
    """ram's `epsilon` is a threshold on the task vectors' elements, not a spread around a density."""
    assert validate("ram", parameters={"epsilon": 0.5}).parameters == {"epsilon": 0.5}


@pytest.mark.parametrize(("method", "name", "value", "expected"), [
    ("nearswap", "t", -0.01, "parameters.t: -0.01 is outside [0, inf): "),
    ("nearswap", "t", [0.001, -1], "parameters.t: [0.001, -1] has -1.0 outside [0, inf): "),
    ("sce", "select_topk", 0, "parameters.select_topk: 0.0 is outside (0, 1]: "),
    ("sce", "select_topk", -0.2, "parameters.select_topk: -0.2 is outside (0, 1]: "),
    ("sce", "select_topk", 1.5, "parameters.select_topk: 1.5 is outside (0, 1]: "),
    ("breadcrumbs", "gamma", -0.01, "parameters.gamma: -0.01 is outside [0, 1]: "),
    ("breadcrumbs_ties", "gamma", 1.01, "parameters.gamma: 1.01 is outside [0, 1]: "),
    ("breadcrumbs_ties", "gamma", [{"filter": "mlp", "value": -0.1}, {"value": 0.01}], "has -0.1 outside [0, 1]: "),
])
def test_a_fraction_or_threshold_mergekit_merges_nothing_with_is_refused(method, name, value, expected):
    models = 2 if method == "nearswap" else 1
    message = refusal(method, models, parameters={name: value})
    assert message.startswith(f"parameters.{name}: ") and expected in message, message
    why = {"nearswap": "the merge is the first model unchanged", "sce": "the merge is the base model unchanged",
           "breadcrumbs": "drops part of that density", "breadcrumbs_ties": "drops part of that density"}[method]
    assert why in message, message


@pytest.mark.parametrize(("method", "name", "value"), [
    ("nearswap", "t", 0), ("nearswap", "t", 1e-4), ("nearswap", "t", 5.0),
    ("sce", "select_topk", 1), ("sce", "select_topk", 1e-6), ("sce", "select_topk", [0.1, 1.0]),
    ("breadcrumbs", "gamma", 0), ("breadcrumbs", "gamma", 1), ("breadcrumbs_ties", "gamma", [0.01, 0.2]),
])
def test_the_edges_of_those_ranges_still_load(method, name, value):
    models = 2 if method == "nearswap" else 1
    assert validate(method, models, parameters={name: value}).parameters == {name: value}
