"""What a seed recipe's profile runs, as the model card and the plan tell it.

The card's first paragraph is the recipe's `description`. A profile that runs other stages than the recipe (tiny: no
judge, offline pairs, a length reward) must say so in its own description: the Swallow tiny card described LLM-judge
rejection sampling with n=6, and the SEA-LION 70B one on-policy alignment, neither of which the run did.
"""

from __future__ import annotations

import pytest

from tempa.recipes.loader import load_recipe, recipe_profiles, shipped_recipe_dir, stage_reads
from tempa.recipes.registry import stage_kind
from tempa.sft.stage_api import Artifact

SHIPPED = sorted(path.stem for path in shipped_recipe_dir().glob("*.yaml"))
PROFILED = [(name, profile) for name in SHIPPED for profile in recipe_profiles(name)]


@pytest.mark.parametrize(("name", "profile"), PROFILED)
def test_a_profile_gives_its_own_description_naming_it(name, profile):
    described = load_recipe(name, profile=profile).recipe.description
    assert described != load_recipe(name).recipe.description
    assert f"(profile {profile})" in described


@pytest.mark.parametrize(("name", "profile"), PROFILED)
def test_a_profile_of_a_recipe_that_adds_stages_does_not_inherit_its_parents_description(name, profile):
    """sea-lion-v3.5-8b-r-rlvr extends sea-lion-v3.5-8b-r with an RL stage: the parent's tiny description names none."""
    loaded = load_recipe(name, profile=profile)
    if len(loaded.files) < 2 or profile not in recipe_profiles(loaded.files[-2]):
        return  # extends nothing, or a parent without this profile
    inherited = load_recipe(loaded.files[-2], profile=profile)  # the files run from the first parent to the recipe
    if loaded.names != inherited.names:
        assert loaded.recipe.description != inherited.recipe.description


@pytest.mark.parametrize(("name", "profile"), [(name, None) for name in SHIPPED] + PROFILED)
def test_every_dataset_a_shipped_recipe_makes_is_read_by_a_later_stage(name, profile):
    """The rlvr tiny profile ran r1-sea, whose rows no stage read (its sft-reasoning sources left stage:r1-sea out)."""
    loaded = load_recipe(name, profile=profile)
    read = {dep for index in range(len(loaded.stages)) for dep in stage_reads(loaded, index)}
    unread = [stage.name for stage in loaded.stages
              if stage_kind(stage.kind).produces == {Artifact.DATASET} and stage.name not in read]
    assert unread == []
