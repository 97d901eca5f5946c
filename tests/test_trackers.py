"""`report_to` is checked when the recipe loads; training runs are named recipe/stage and carry the recipe."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

import tempa.sft.trackers as trackers
from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe


def test_integration_names_match_transformers():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(trackers.INTEGRATIONS) == set(INTEGRATION_TO_CALLBACK)


def _recipe(tmp_path, report_to: str):
    (tmp_path / "rows.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                         '{"role": "assistant", "content": "yo"}]}\n')
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(f"""
        name: t
        base_model: "tempa:tiny"
        stages:
          - name: sft
            kind: sft
            data: {{sources: [{{name: rows, path: rows.jsonl}}]}}
            train: {{learning_rate: 1.0e-4, report_to: {report_to}}}
        """))
    return path


@pytest.fixture()
def wandb_missing(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name.split(".")[0] == "wandb" else real(name, *args)

    monkeypatch.setattr(trackers.importlib.util, "find_spec", find_spec)


def test_a_tracker_that_is_not_installed_fails_at_load(tmp_path, wandb_missing):
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, "[tensorboard, wandb]"))
    message = str(err.value)
    assert "\n" not in message
    assert "r.yaml:" in message and "stages[0].train" in message
    assert "'wandb' is not installed (pip install wandb)" in message


def test_an_unknown_tracker_gets_a_suggestion(tmp_path):
    with pytest.raises(RecipeError, match="'tensorbord' is not a transformers integration; did you mean 'tensorboard'"):
        load_recipe(_recipe(tmp_path, "tensorbord"))


def test_installed_trackers_and_none_load(tmp_path):
    for value in ("tensorboard", "none", "[]"):
        assert load_recipe(_recipe(tmp_path, value)).stages[0].train["report_to"] in ("tensorboard", "none", [])


def test_training_runs_are_named_and_carry_the_recipe(tmp_path):
    from tempa.sft.stage_api import RecipeInfo, StageContext
    from tempa.sft.train_plan import train_plan

    resolved = {"name": "my-model", "stages": [{"name": "sft", "kind": "sft"}]}
    ctx = StageContext(stage_name="align", stage_dir=tmp_path / "align", seed=1, start_model=tmp_path,
                       base_model=tmp_path, tokenizer_dir=tmp_path, chat_template="", upstream={},
                       launch=lambda *a: None, recipe=RecipeInfo("my-model", "tempa:tiny", "llama3_thinking",
                                                                 resolved=resolved))
    plan = train_plan(ctx, trainer="dpo", start_model=tmp_path, train_data=tmp_path,
                      out_dir=tmp_path / "align" / "round-2", train_args={"report_to": "wandb"}, seed=1)
    assert plan.train_args["run_name"] == "my-model/align/round-2" and plan.recipe == resolved
    plan = train_plan(ctx, trainer="sft", start_model=tmp_path, train_data=tmp_path, out_dir=tmp_path / "align",
                      train_args={"run_name": "mine"}, seed=1)
    assert plan.train_args["run_name"] == "mine"  # the recipe's own name wins
