"""A merge of one model is refused at load: `method: linear, models: [sft-b/final]` was accepted and the card called a
byte-identical copy a "linear merge"; `select: {top_k: 1}` did the same. A method that takes one model (passthrough),
and a task-vector method merging one model onto its base (its task vector scaled or pruned), still load."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tempa.merge.merge_config import MergeStageConfig

ONE = "a merge needs two or more models"


def _config(**fields) -> MergeStageConfig:
    return MergeStageConfig.model_validate({"name": "m", "kind": "merge", **fields})


@pytest.mark.parametrize(("fields", "field"), [
    ({"method": "linear", "models": ["sft-b"]}, "models"),
    ({"method": "linear", "models": ["sft-b"], "weights": [0.5]}, "models"),
    ({"method": "karcher", "models": ["sft-b"]}, "models"),
    ({"method": "multislerp", "models": ["sft-b"]}, "models"),
    ({"method": "linear", "evaluate_stage": "e", "select": {"metric": "s/loss", "top_k": 1}}, "select.top_k"),
])
def test_a_merge_of_one_model_is_refused(fields, field):
    with pytest.raises(ValidationError) as error:
        _config(**fields)
    assert f"{field}: {ONE}" in str(error.value) and f"{fields['method']} of one model is a copy of it" in str(error.value)


@pytest.mark.parametrize("fields", [
    {"method": "linear", "models": ["sft-b", "sft-c"]},
    {"method": "ties", "models": ["sft-b"], "base_model": "sft-a"},
    {"method": "task_arithmetic", "evaluate_stage": "e", "select": {"metric": "s/loss", "top_k": 1}},
    {"method": "passthrough", "models": ["sft-b"]},
])
def test_a_merge_of_two_or_more_inputs_or_a_one_model_method_loads(fields):
    assert _config(**fields).method == fields["method"]
