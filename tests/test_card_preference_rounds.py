"""A preference stage of several rounds on the model card: its metrics hold totals (`pairs`) beside the last round's
values (`pair_fraction`, reward means, `train_loss`); the card showed `pairs=15, pair_fraction=0.2917` where 15 pairs
came from 48 prompts over two rounds and 0.2917 was round 2's 7 of 24."""

from __future__ import annotations

from stage_helpers import done
from tempa.alignment.preference_stage import PreferenceResult, RoundSummary
from tempa.merge.model_card import ModelCardConfig, render_model_card
from tempa.sft.stage_api import RecipeInfo


def _round(index: int, pairs: int, chosen: float, loss: float) -> RoundSummary:
    return RoundSummary(round=index, model=f"/r/round-{index}/final", prompts=24, pairs=pairs,
                        pair_fraction=round(pairs / 24, 6), chosen_reward_mean=chosen, rejected_reward_mean=0.1,
                        dropped={}, train={"train_loss": loss})


def _card(rounds: list[RoundSummary]) -> str:
    last = rounds[-1]
    # the stage's metrics as run_preference writes them: pairs added up, the rest the last round's
    metrics = {"chosen_reward_mean": last.chosen_reward_mean, "rejected_reward_mean": last.rejected_reward_mean,
               "pair_fraction": last.pair_fraction, "pairs": sum(r.pairs for r in rounds),
               "train_loss": last.train["train_loss"], "rounds": len(rounds)}
    result = PreferenceResult(model="/r/final", metrics=metrics, rounds=rounds)
    return render_model_card(ModelCardConfig(), recipe=RecipeInfo("t", "tempa:tiny", "llama3_thinking"),
                             stages={"align": done("align", result, kind="preference")})


def test_the_card_gives_pairs_over_all_rounds_and_labels_the_last_rounds_values():
    card = _card([_round(1, 8, 0.9, 0.69), _round(2, 7, 0.8, 0.65)])
    row = next(line for line in card.splitlines() if line.startswith("| align |"))
    assert "over all rounds: pairs=15 of 48 prompts (pair_fraction=0.3125)" in row
    assert "last round (round-2): pair_fraction=0.2917, chosen_reward_mean=0.8" in row and "train_loss=0.65" in row
    assert "pairs=15, pair_fraction=0.2917" not in row
