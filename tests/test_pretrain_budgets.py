"""The `pretrain` stage's token budgets: what `max_steps` does to them."""

from __future__ import annotations

from tempa.sft.pretrain_config import PretrainStageConfig


def _config(sources: list[dict], **train) -> PretrainStageConfig:
    return PretrainStageConfig.model_validate({
        "name": "cpt", "sources": sources, "train": {"lr_scheduler_kwargs": {"num_decay_steps": 1}, **train}})


def test_the_plan_says_max_steps_not_the_budgets_sets_the_tokens_trained():
    """A SEA-LION-style recipe budgets 2B tokens and also sets trl's max_steps: the run trained max_steps' tokens,
    more or fewer than the budgets, and neither `tempa plan` nor the run said so. Now the plan's notes say that
    max_steps sets the tokens trained (its `trained` column, not tokens/epoch), with the same line the run logs
    before training and, with the tokens it trained, in its closing notes."""
    from tempa.sft.pretrain_stage import estimate_pretrain

    web = {"name": "web", "path": "org/web", "tokens": 2_000_000_000}
    config = _config([web, {"name": "code", "path": "org/code"}], max_steps=5000)
    (note,) = [n for n in estimate_pretrain(config, None).tokens.notes if "max_steps" in n]
    assert note.startswith("train.max_steps 5000, not the token budgets of web, sets how many tokens this stage "
                           "trains") and note.endswith(": `trained` below, not tokens/epoch")
    # nothing to say without max_steps, or without a budget (every document once is no promise of tokens)
    for quiet in (_config([web]), _config([{"name": "web", "path": "org/web"}], max_steps=5000)):
        assert not any("max_steps" in n for n in estimate_pretrain(quiet, None).tokens.notes)


def test_plain_tempa_plan_and_the_run_start_warn_of_max_steps_with_budgets():
    """The stage kind's input warnings, which `tempa plan` (without --hardware) and the run's start print."""
    from tempa.sft import PRETRAIN

    web = {"name": "web", "path": "org/web", "tokens": 2_000_000_000}
    (line,) = PRETRAIN.input_warnings(_config([web], max_steps=5000))
    assert line.startswith("train.max_steps 5000, not the token budgets of web")
    assert PRETRAIN.input_warnings(_config([web])) == []
