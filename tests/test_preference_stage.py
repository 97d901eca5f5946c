"""The preference stage end to end: on-policy sampling, rewards, pairs, real DPOTrainer in a launched process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from preference_helpers import ending_model
from safetensors.torch import load_file

from stage_helpers import make_context
from tempa.alignment import Completion, PreferenceStageConfig, assistant_message, run_preference
from tempa.sft.stage_api import StageContext

PROMPTS = str(Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl")


def context(run_dir: Path, model_dir: Path, tokenizer_dir: Path, launches: list[str]) -> StageContext:
    from tempa.recipes.launcher import run_launch
    from tempa.recipes.schema import LaunchConfig

    log = logging.getLogger("tempa")

    def launch(module: str, args: list[str], log_file: Path) -> None:
        launches.append(module)
        run_launch(LaunchConfig(use_cpu=True), module, args, log_file, log=log)

    return make_context(run_dir, "align", start_model=model_dir, tokenizer_dir=tokenizer_dir, chat_template="",
                        launch=launch, seed=3, log=log, use_cpu=True)


CONFIG = {
    "name": "align",
    "kind": "preference",
    "rounds": 2,
    "prompts": {"path": PROMPTS, "limit": 6},
    "sampling": {"n": 4, "temperature": 1.0, "max_new_tokens": 12, "batch_size": 6,
                 "thinking": {"mode": "mixed", "ratio": 0.5}},
    # The tiny model writes gibberish: length in characters, format and language still tell samples apart.
    "rewards": [{"type": "length", "unit": "chars", "per_token": 0.01}, {"type": "format"}, {"type": "language"}],
    "pairs": {"min_margin": 0.01},
    "train": {"max_steps": 1, "learning_rate": 1.0e-3, "warmup_steps": 0, "per_device_train_batch_size": 4,
              "logging_steps": 1, "save_steps": 1, "activation_checkpointing": False, "loss_type": "sigmoid",
              "precompute_ref_log_probs": True, "max_length": 256},
}


@pytest.fixture(scope="module")
def aligned(tmp_path_factory, tiny_model_dir):
    from tempa.chat_templates import bake_tokenizer

    root = tmp_path_factory.mktemp("pref")
    bake_tokenizer(tiny_model_dir, "llama3_thinking", root / "tok")
    start = ending_model(tiny_model_dir, root / "tok", root / "start")
    launches: list[str] = []
    ctx = context(root / "run", start, root / "tok", launches)
    result = run_preference(PreferenceStageConfig.model_validate(CONFIG), ctx)
    return ctx, result, launches


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_rounds_train_each_from_the_previous_model(aligned):
    ctx, result, launches = aligned
    tiny_model_dir = ctx.start_model
    stage = ctx.stage_dir
    assert launches == ["tempa.sft.train_worker"] * 2
    assert result.model == stage / "round-2" / "final"
    plan1 = json.loads((stage / "round-1" / "train_plan.json").read_text())
    plan2 = json.loads((stage / "round-2" / "train_plan.json").read_text())
    assert plan1["start_model"] == str(tiny_model_dir) and plan1["trainer"] == "dpo"
    assert plan2["start_model"] == str(stage / "round-1" / "final")  # round 2 samples and trains the new policy
    assert json.loads((stage / "round-2" / "samples.jsonl.meta.json").read_text())["policy"] == plan2["start_model"]
    assert [r.model for r in result.rounds] == [stage / "round-1" / "final", stage / "round-2" / "final"]
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    one = load_file(str(stage / "round-1" / "final" / "model.safetensors"))
    two = load_file(str(stage / "round-2" / "final" / "model.safetensors"))
    assert start.keys() == one.keys() == two.keys()
    assert any(not torch.equal(start[k], one[k]) for k in start)
    assert any(not torch.equal(one[k], two[k]) for k in one)
    assert (stage / "final").resolve() == (stage / "round-2" / "final").resolve()
    assert "Computing reference log probs" in (stage / "round-1" / "logs" / "train.log").read_text()


def test_pairs_are_best_against_worst_of_the_scored_samples(aligned):
    ctx, _, _ = aligned
    for round_dir in (ctx.stage_dir / "round-1", ctx.stage_dir / "round-2"):
        samples = {r["id"]: r for r in read_jsonl(round_dir / "samples.jsonl")}
        scores = {r["id"]: r for r in read_jsonl(round_dir / "scores.jsonl")}
        pairs = read_jsonl(round_dir / "pairs.jsonl")
        assert len(samples) == len(scores) == 6 and pairs
        for pair in pairs:
            completions = [Completion.from_dict(c) for c in samples[pair["prompt_id"]]["completions"]]
            totals = [r["scores"]["total"] for r in scores[pair["prompt_id"]]["results"]]
            # only samples that ended on their own (and closed any think block) take part
            complete = [t for t, c in zip(totals, completions, strict=True) if c.renders_as_written]
            assert pair["chosen_score"] == max(complete) and pair["rejected_score"] >= min(complete)
            assert pair["chosen_score"] - pair["rejected_score"] >= 0.01
            assert totals[pair["chosen_index"]] == max(complete)
            for side in ("chosen", "rejected"):
                completion = completions[pair[f"{side}_index"]]
                assert completion.renders_as_written and pair[f"{side}_finish_reason"] == "stop"
                assert pair[side] == [assistant_message(completion)]
            assert pair["rendered"]["differ"] is True
            assert pair["chat_template_kwargs"]["thinking_mode"] in ("on", "off")
            assert set(pair["chosen_scores"]) == {"length", "format", "language", "total"}


def test_each_round_reports_reward_statistics(aligned):
    ctx, result, _ = aligned
    for k in (1, 2):
        stats = json.loads((ctx.stage_dir / f"round-{k}" / "stats.json").read_text())
        pairs = read_jsonl(ctx.stage_dir / f"round-{k}" / "pairs.jsonl")
        assert stats["round"] == k and stats["prompts"] == 6
        assert stats["pairs"] == len(pairs) and stats["pair_fraction"] == pytest.approx(len(pairs) / 6, abs=1e-6)
        assert stats["chosen_reward_mean"] == pytest.approx(sum(p["chosen_score"] for p in pairs) / len(pairs), abs=1e-5)
        assert stats["rejected_reward_mean"] == pytest.approx(sum(p["rejected_score"] for p in pairs) / len(pairs), abs=1e-5)
        assert stats["chosen_reward_mean"] > stats["rejected_reward_mean"]
        assert sum(stats["dropped"].values()) == 6 - len(pairs)
        samples = read_jsonl(ctx.stage_dir / f"round-{k}" / "samples.jsonl")
        cut = sum(c["finish_reason"] == "length" for s in samples for c in s["completions"])
        assert stats["truncated"] == cut and stats["truncated_fraction"] == pytest.approx(cut / 24, abs=1e-6)
        assert stats["sampling"]["samples"] == 24 and stats["sampling"]["samples_per_s"] > 0
        assert stats["train"]["global_step"] == 1
    metrics = result.metrics
    for k in (1, 2):
        stats = json.loads((ctx.stage_dir / f"round-{k}" / "stats.json").read_text())
        for key in ("chosen_reward_mean", "rejected_reward_mean", "pair_fraction", "pairs"):
            assert metrics[f"round{k}_{key}"] == stats[key]
    # the kernels the DPO worker picked (padded pairs on CPU: transformers' sdpa) and each round's throughput
    assert (metrics["attn_implementation"], metrics["liger_kernel"]) == ("sdpa", False)
    for k in (1, 2):
        assert metrics[f"round{k}_train_tokens_per_s"] > 0 and 0 < metrics[f"round{k}_train_padding_fraction"] < 1
    # and the stage's, over both rounds (it had only each round's): tokens add up, the rate is over the total time
    assert metrics["train_tokens"] == metrics["round1_train_tokens"] + metrics["round2_train_tokens"]
    assert metrics["pairs"] == metrics["round1_pairs"] + metrics["round2_pairs"]  # what the stage trained on
    seconds = sum(metrics[f"round{k}_train_tokens"] / metrics[f"round{k}_train_tokens_per_s"] for k in (1, 2))
    assert metrics["train_tokens_per_s"] == pytest.approx(metrics["train_tokens"] / seconds)
    assert min(metrics["round1_train_padding_fraction"], metrics["round2_train_padding_fraction"]) <= metrics[
        "train_padding_fraction"] <= max(metrics["round1_train_padding_fraction"], metrics["round2_train_padding_fraction"])
    assert all(isinstance(v, int | float | type(None)) for k, v in metrics.items() if k != "attn_implementation")


def test_the_stage_headline_totals_every_round_and_names_the_last_rounds_values(aligned):
    """A trial: metrics.json said `pairs=19` (8 + 11) beside round 2's `pair_fraction=0.4583` (11/24), and round 2's
    reward means and loss under the same plain names. The plain names are totals now; the last round's are named so."""
    ctx, result, _ = aligned
    stats = [json.loads((ctx.stage_dir / f"round-{k}" / "stats.json").read_text()) for k in (1, 2)]
    metrics = result.metrics
    pairs, prompts = stats[0]["pairs"] + stats[1]["pairs"], stats[0]["prompts"] + stats[1]["prompts"]
    assert (metrics["pairs"], metrics["prompts"], metrics["rounds"]) == (pairs, prompts, 2)
    assert metrics["pair_fraction"] == pytest.approx(pairs / prompts, abs=1e-6)
    assert metrics["last_round_pair_fraction"] == pytest.approx(stats[1]["pairs"] / stats[1]["prompts"], abs=1e-6)
    for key in ("chosen_reward_mean", "rejected_reward_mean"):
        assert metrics[f"last_round_{key}"] == stats[1][key]
        assert key not in metrics  # a last-round value under a plain name read as the stage's
    assert metrics["last_round_train_loss"] == stats[1]["train"]["train_loss"] and "train_loss" not in metrics


def test_a_finished_stage_is_not_sampled_or_trained_again(aligned):
    ctx, result, _ = aligned
    launches: list[str] = []
    again = run_preference(PreferenceStageConfig.model_validate(CONFIG),
                           context(ctx.stage_dir.parent, ctx.start_model, ctx.tokenizer_dir, launches))
    assert launches == [] and again.metrics == result.metrics


def test_a_round_whose_samples_are_all_cut_off_says_to_raise_max_new_tokens(tmp_path, tiny_model_dir):
    """'no usable preference pair ... (dropped: {fewer_than_two_complete: 12})' did not say that every sample had
    stopped at sampling.max_new_tokens, the one setting that would give pairs (a Japanese user's trial)."""
    from tempa.chat_templates import bake_tokenizer
    from tempa.sft.stage_api import StageError

    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    ctx = context(tmp_path / "run", tiny_model_dir, tmp_path / "tok", [])  # the untrained model never ends a turn
    config = {**CONFIG, "rounds": 1, "prompts": {"path": PROMPTS, "limit": 2},
              "sampling": {"n": 2, "max_new_tokens": 4, "batch_size": 2, "thinking": {"mode": "off"}}}
    with pytest.raises(StageError, match=r"no usable preference pair from 2 prompts .*: 4 of 4 samples stopped at "
                                         r"sampling\.max_new_tokens \(4\); raise it"):
        run_preference(PreferenceStageConfig.model_validate(config), ctx)


def test_the_no_pairs_hint_counts_cut_off_samples_and_open_think_blocks_apart():
    """20 samples cut off and 15 ending inside an open think block: the hint named only the 20, whose fix (a higher
    max_new_tokens) leaves the other 15 out of the running."""
    from tempa.alignment.pairs import INCOMPLETE
    from tempa.alignment.preference_stage import _no_pairs_hint

    stats = {"dropped": {INCOMPLETE: 12}, "finish_reasons": {"length": 20, "stop": 28}, "incomplete": 35}
    assert _no_pairs_hint(stats, 64) == (": 20 of 48 samples stopped at sampling.max_new_tokens (64); raise it; "
                                         "15 of 48 ended inside an open think block, which the template would close, "
                                         "so they cannot be trained as written")
    # every prompt's samples scored alike (a tiny model scoring 2.0 on each with answer, language and format rewards)
    hint = _no_pairs_hint({**stats, "dropped": {"all_scores_equal": 12}}, 64)
    assert hint.startswith(": on 12 prompt(s) every sample scored the same") and "a length penalty" in hint
    assert _no_pairs_hint({**stats, "dropped": {"below_min_margin": 12}}, 64) == ""
