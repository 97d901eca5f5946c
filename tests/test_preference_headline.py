"""A preference stage's headline (metrics.json, so `tempa status` and the report's stage table): a trial's 2-round stage
said `pair_fraction=0.4583, pairs=19` side by side, the 19 pairs over both rounds (8 + 11) and 0.4583 round 2's alone
(11/24; over both rounds 19/48 = 0.3958). The plain names are totals over every round; the last round's are named so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tempa.alignment.preference_stage import RoundSummary, preference_headline
from tempa.recipes.cli import main


def rounds(tmp_path: Path) -> list[RoundSummary]:
    def one(k: int, pairs: int, chosen: float, rejected: float, loss: float) -> RoundSummary:
        return RoundSummary(round=k, model=tmp_path / f"round-{k}", prompts=24, pairs=pairs,
                            pair_fraction=round(pairs / 24, 6), chosen_reward_mean=chosen, rejected_reward_mean=rejected,
                            dropped={"all_equal": 24 - pairs}, train={"train_loss": loss})

    return [one(1, 8, 0.5, 0.1, 0.69), one(2, 11, 0.8, 0.2, 0.65)]


def test_the_plain_names_are_totals_and_the_last_rounds_values_say_so(tmp_path):
    headline = preference_headline(rounds(tmp_path))
    assert (headline["pairs"], headline["prompts"], headline["rounds"]) == (19, 48, 2)
    assert headline["pair_fraction"] == pytest.approx(19 / 48, abs=1e-6)
    assert headline["last_round_pair_fraction"] == pytest.approx(11 / 24, abs=1e-6)
    assert (headline["last_round_chosen_reward_mean"], headline["last_round_rejected_reward_mean"],
            headline["last_round_train_loss"]) == (0.8, 0.2, 0.65)
    assert not {"chosen_reward_mean", "rejected_reward_mean", "train_loss"} & set(headline)


def test_an_offline_round_counts_its_rows_read_in_the_total(tmp_path):
    """An offline round's `prompts` are the dataset rows it read: 7 pairs of 10 rows, then 11 of 24 prompts."""
    offline = RoundSummary(round=1, source="offline", model=tmp_path / "round-1", prompts=10, pairs=7,
                           pair_fraction=0.7, dropped={"identical_pair": 3}, train={"train_loss": 0.6})
    headline = preference_headline([offline, rounds(tmp_path)[1]])
    assert (headline["pairs"], headline["prompts"]) == (18, 34)
    assert headline["pair_fraction"] == pytest.approx(18 / 34, abs=1e-6)
    assert headline["last_round_pair_fraction"] == pytest.approx(11 / 24, abs=1e-6)


def status_of(run_dir: Path, metrics: dict, capsys) -> str:
    (run_dir / "align").mkdir(parents=True)
    (run_dir / "recipe.resolved.yaml").write_text(
        "name: x\nbase_model: tempa:tiny\nstages: [{name: align, kind: preference}]\n")
    (run_dir / "align" / "manifest.json").write_text(json.dumps(
        {"name": "align", "kind": "preference", "status": "done", "fingerprint": "f", "started_at": 0,
         "result": {"metrics": metrics}}))
    (run_dir / "align" / "DONE").write_text(json.dumps({"fingerprint": "f"}))
    assert main(["status", str(run_dir)]) == 0
    return " ".join(capsys.readouterr().out.split())


def test_status_shows_the_pairs_beside_the_share_over_the_same_rounds(tmp_path, capsys):
    out = status_of(tmp_path / "run", preference_headline(rounds(tmp_path)), capsys)
    assert "pairs=19, prompts=48, pair_fraction=0.3958, last_round_pair_fraction=0.4583" in out, out


def test_status_still_reads_a_stage_written_before_the_headline_had_last_round_names(tmp_path, capsys):
    old = {"chosen_reward_mean": 0.8, "rejected_reward_mean": 0.2, "pair_fraction": 0.458333, "pairs": 19,
           "train_loss": 0.65, "rounds": 2}
    out = status_of(tmp_path / "run", old, capsys)
    assert "align" in out and "pair_fraction=0.4583, pairs=19" in out, out
