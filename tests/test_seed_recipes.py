"""The shipped seed recipes: they plan at full scale (no download) and run end to end at tiny scale."""

from __future__ import annotations

import pytest

from tempa.recipes.cli import main
from tempa.recipes.estimate import estimate_recipe
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import plan_run, run_recipe

SEEDS = ["sea-lion-v3-70b-it", "sea-lion-v3.5-8b-r", "swallow-8b-instruct-v0.3"]


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


@pytest.mark.slow
@pytest.mark.parametrize("name", SEEDS)
def test_seed_recipe_runs_end_to_end_at_tiny_scale(name, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tempa.chat_templates import check_tokenizer

    full, tiny = load_recipe(name), load_recipe(name, profile="tiny")
    # the tiny profile runs the same pipeline: same stages, same kinds, same order
    assert [(s.name, s.kind) for s in tiny.stages] == [(s.name, s.kind) for s in full.stages]
    summary = run_recipe(tiny, tmp_path / "run")
    assert summary.ran == tiny.names
    final = tmp_path / "run" / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    AutoModelForCausalLM.from_pretrained(final)
    results = check_tokenizer(tokenizer, generation_config=GenerationConfig.from_pretrained(final))
    assert all(result.passed for result in results), [r for r in results if not r.passed]
