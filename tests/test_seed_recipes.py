"""The shipped seed recipes: they plan at full scale (no download) and run end to end at tiny scale."""

from __future__ import annotations

import pytest

from stage_helpers import assert_ships
from tempa.recipes.cli import main
from tempa.recipes.estimate import estimate_recipe
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import plan_run, run_recipe

SEEDS = ["sea-lion-v3-70b-it", "sea-lion-v3.5-8b-r", "swallow-70b-instruct-v0.3", "swallow-8b-instruct-v0.3"]
# swallow-8b extends swallow-70b (same stages, same tiny profile), and sea-lion-v3.5-8b-r-rlvr extends
# sea-lion-v3.5-8b-r with one stage before the bake (test_rl_stage runs it, killed and resumed, and checks its final
# model as these are checked): running the parents too would add minutes, not coverage
TINY_RUNS = ["sea-lion-v3-70b-it", "swallow-70b-instruct-v0.3"]


@pytest.mark.parametrize("name", SEEDS)
def test_seed_recipe_plans_at_full_scale(name, tmp_path, capsys):
    loaded = load_recipe(name)
    assert "/" in loaded.recipe.base_model and not loaded.recipe.base_model.startswith("/")  # a hub id
    assert loaded.recipe.launch.accelerate_config.startswith("zero3")
    plans = plan_run(loaded, tmp_path / "run")
    assert all(p.action == "run" for p in plans) and plans[-1].kind == "bake"
    assert main(["plan", name, "--run-dir", str(tmp_path / "run")]) == 0
    assert not (tmp_path / "run").exists()  # planning does no work
    # On the node they are written for, every training stage gets tokens, steps and hours, and fits.
    for estimate in estimate_recipe(loaded, "8xH100"):
        assert estimate.trained_tokens and estimate.steps and estimate.hours, estimate.name
        assert estimate.fits and not estimate.warnings, (estimate.name, estimate.warnings)


def _shipped_plans() -> list[tuple[str, str | None]]:
    from tempa.recipes.loader import recipe_profiles, shipped_recipe_dir

    names = sorted(path.stem for path in shipped_recipe_dir().glob("*.yaml"))
    return [(name, profile) for name in names for profile in (None, *recipe_profiles(name))]


@pytest.mark.parametrize(("name", "profile"), _shipped_plans())
def test_every_shipped_recipe_plans_without_warnings_about_itself(name, profile, tmp_path):
    """What `tempa plan` warns of a recipe's own settings (its inputs, paths, thinking default): none for a shipped one
    (sea-lion-v3.5-8b-r set `languages` on sources of a stage whose language filter was off). Left out: what this
    machine or shell lacks (GPUs, API keys) and what only the run can tell (a merge's candidate count)."""
    from tempa.merge.bake import planned_thinking_default_warning
    from tempa.recipes.runner import input_warnings

    loaded = load_recipe(name, profile=profile)
    decisions = plan_run(loaded, tmp_path / "run")
    warnings = [*input_warnings(loaded, decisions), *loaded.path_warnings,
                *filter(None, [planned_thinking_default_warning(loaded.recipe.thinking_default, loaded.stages)])]
    assert warnings == []


def test_70b_it_plan_at_the_cards_data_size_is_near_the_cards_gpu_hours(tmp_path):
    """The card: "approximately 3200 GPU hours, on a single node of 8x H100-80GB GPUs" for 12.3M + 4.5M pairs."""
    from pathlib import Path

    import tempa.recipes

    shipped = Path(tempa.recipes.__file__).parent / "sea-lion-v3-70b-it.yaml"
    card_scale = tmp_path / "card-scale.yaml"
    card_scale.write_text(f"""extends: {shipped}
stages:
  - name: sft-general
    data:
      sources: [{{name: english, path: HuggingFaceH4/ultrachat_200k, split: train_sft, rows: 12300000,
                 thinking_mode: "off"}}]
  - name: sft-sea
    data:
      sources: [{{name: sea, path: CohereForAI/aya_dataset, rows: 4500000, thinking_mode: "off"}}]
""")
    estimates = {e.name: e for e in estimate_recipe(load_recipe(card_scale), "8xH100")}
    sft_gpu_hours = 8 * (estimates["sft-general"].hours + estimates["sft-sea"].hours)
    # tempa's ~800 tokens a row and 40% MFU are assumptions: the order of magnitude is what can be checked
    assert 3200 / 2 <= sft_gpu_hours <= 3200 * 2, sft_gpu_hours
    shipped_hours = sum(e.hours for e in estimate_recipe(load_recipe("sea-lion-v3-70b-it"), "8xH100"))
    assert 8 * shipped_hours < 3200 / 10  # the shipped stand-in data is a small fraction (see its header)


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY_RUNS)
def test_seed_recipe_runs_end_to_end_at_tiny_scale(name, tmp_path):
    tiny = load_recipe(name, profile="tiny")
    summary = run_recipe(tiny, tmp_path / "run")
    assert summary.ran == tiny.names
    assert_ships(name, tmp_path / "run")


# The licences the seed models ship under, as their cards (recipes/cards/) state them, by the Hub's licence ids:
# Swallow's front matter lists llama3.1 and gemma ("META LLAMA 3.1 COMMUNITY LICENSE and Gemma Terms of Use"),
# SEA-LION v3's and v3.5-8B-R's "License: Llama3.1 Community License" (the rlvr recipe extends v3.5-8B-R: its rl
# stage trains before the bake it inherits).
CARD_LICENSES = {"sea-lion-v3-70b-it": "llama3.1", "sea-lion-v3.5-8b-r": "llama3.1",
                 "sea-lion-v3.5-8b-r-rlvr": "llama3.1", "swallow-70b-instruct-v0.3": ["llama3.1", "gemma"],
                 "swallow-8b-instruct-v0.3": ["llama3.1", "gemma"]}


@pytest.mark.parametrize("name", sorted(CARD_LICENSES))
def test_the_final_model_card_carries_the_licences_the_seed_models_ship_under(name):
    import yaml

    from tempa.merge.model_card import render_model_card
    from tempa.sft.stage_api import RecipeInfo

    loaded = load_recipe(name)
    bake = loaded.stages[-1]
    assert bake.kind == "bake" and loaded.upstream(len(loaded.stages) - 1) == loaded.names[-2]
    if name.endswith("-rlvr"):
        assert loaded.names[-2:] == ["rlvr", "bake"]  # the final model is the RL stage's
    recipe = RecipeInfo(name=name, base_model=loaded.recipe.base_model, chat_template=loaded.recipe.chat_template)
    card = render_model_card(bake.model_card, recipe=recipe, stages={})
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == CARD_LICENSES[name]
    if name.startswith("swallow"):  # the card's languages, Japanese first: the usage example asks in Japanese
        assert front["language"] == ["ja", "en"] and "日本の首都はどこですか" in card
