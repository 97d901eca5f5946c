"""The model card's training arguments: each training stage's trainer arguments as it trains with them, tempa's
defaults marked `*` as `tempa plan` marks them (the card's recipe holds only what the recipe set: a publication record
lacked warmup, packing, the loss on assistant tokens only...)."""

from __future__ import annotations

import dataclasses
import json

from stage_helpers import done
from tempa.merge.model_card import ModelCardConfig, render_model_card
from tempa.recipes.loader import load_recipe
from tempa.sft.stage_api import RecipeInfo, StageResult


def test_the_card_lists_each_training_stages_arguments_with_tempas_defaults_marked():
    loaded = load_recipe("demo")
    sft, align = loaded.stage("sft-general"), loaded.stage("align")
    stages = {"sft-general": done("sft-general", StageResult(), kind="sft", config=sft),
              "align": done("align", StageResult(), kind="preference", config=align),
              "evaluate": done("evaluate", StageResult(), kind="evaluate", config=loaded.stage("evaluate"))}
    card = render_model_card(ModelCardConfig(), recipe=RecipeInfo("demo", "tempa:tiny", "llama3_thinking"),
                             stages=stages)
    section = card.split("## Training arguments", 1)[1].split("</details>", 1)[0]
    lines = {line.split("`")[1]: line for line in section.splitlines() if line.startswith("- `")}
    assert set(lines) == {"sft-general", "align"}  # the stages that train
    for name, config in (("sft-general", sft), ("align", align)):
        for key, value in config.train.items():  # the recipe's own: unmarked
            assert f"{key}={json.dumps(value)}," in lines[name] + ",", (name, key)
        assert "save_strategy=" in lines[name] and "save_strategy" not in config.train
        assert 'save_strategy="steps"*' in lines[name]  # a default the recipe left alone: marked
    assert "assistant_only_loss=true*" in lines["sft-general"]


def test_the_card_lists_what_a_stage_trained_with_as_its_manifest_records_it():
    """The card listed the config's arguments: the gradient accumulation a launch's global batch set (2, for 8 rows
    of 4 a device on one process) was missing, and a default changed since read as the stage's."""
    loaded = load_recipe("demo")
    sft = loaded.stage("sft-general")
    recorded = {**sft.train_args(), "gradient_accumulation_steps": 2}
    card = render_model_card(ModelCardConfig(), recipe=RecipeInfo("demo", "tempa:tiny", "llama3_thinking"),
                             stages={"sft-general": dataclasses.replace(
                                 done("sft-general", StageResult(), kind="sft", config=sft), train_args=recorded)})
    line = next(line for line in card.split("## Training arguments", 1)[1].splitlines() if line.startswith("- `"))
    assert "gradient_accumulation_steps=2," in line + ","  # set by the launch: no tempa default, so unmarked
    assert 'save_strategy="steps"*' in line


def test_a_launch_of_known_processes_trains_with_the_accumulation_its_global_batch_sets():
    from tempa.sft.stage_api import TrainingEnv

    train = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}
    assert TrainingEnv(global_batch_size=32, processes=2).as_launched(train)["gradient_accumulation_steps"] == 32 // 8
    assert TrainingEnv(global_batch_size=32, processes=4, sequence_parallel=2).as_launched(train)[
        "gradient_accumulation_steps"] == 32 // (4 * 2)
    # processes accelerate decides, or no global batch: as given (the training processes set it as they start)
    assert TrainingEnv(global_batch_size=32).as_launched(train) == train
    assert TrainingEnv(processes=2).as_launched(train) == train
