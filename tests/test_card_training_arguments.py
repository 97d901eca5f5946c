"""The model card's training arguments: each training stage's trainer arguments as it trains with them, tempa's
defaults marked `*` as `tempa plan` marks them (the card's recipe holds only what the recipe set: a publication record
lacked warmup, packing, the loss on assistant tokens only...)."""

from __future__ import annotations

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
