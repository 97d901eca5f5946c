"""Issue 14's defects: what a preference pair or a judged sample may never be, on real tokenizers and data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tempa.alignment import Completion, PreferenceStageConfig
from tempa.alignment.preference_stage import build_round_pairs
from tempa.alignment.prompts import PromptRow

PROMPTS = str(Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from tempa.chat_templates import bake_tokenizer

    out = tmp_path_factory.mktemp("trust") / "tok"
    bake_tokenizer(tiny_model_dir, "llama3_thinking", out)
    return AutoTokenizer.from_pretrained(out)


def pairs_for(tokenizer, mode: str, completions: list[Completion], totals: list[float]):
    config = PreferenceStageConfig.model_validate({
        "name": "align", "prompts": {"path": PROMPTS}, "rewards": [{"type": "format"}]})
    prompt = PromptRow(id="p0", messages=[{"role": "user", "content": "Ibu kota Vietnam?"}], thinking_mode=mode)
    samples = [{"id": "p0", "completions": [c.to_dict() for c in completions]}]
    scores = [{"id": "p0", "results": [{"scores": {"format": t, "total": t}, "details": {}} for t in totals]}]
    return build_round_pairs(config, [prompt], samples, scores, None, tokenizer)


def rendered(tokenizer, row, side):
    full = tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=False, **row["chat_template_kwargs"])
    head = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True,
                                         **row["chat_template_kwargs"])
    return full[len(head):]


@pytest.mark.parametrize("mode", ["on", "off"])
def test_a_cut_off_sample_is_never_trained_with_an_ending_it_did_not_write(tokenizer, mode):
    prefill = {"on": "<think>\n", "off": "<think>\n</think>\n"}[mode]
    ended = "Hmm.\n</think>\n\nHà Nội." if mode == "on" else "Hà Nội."
    completions = [
        Completion(text=ended, prefill=prefill, finish_reason="stop"),
        Completion(text="pens manggaDே 20", prefill=prefill, finish_reason="length"),  # cut off: best score
        Completion(text="Hanoi" if mode == "off" else "Hmm\n</think>\n\nHanoi", prefill=prefill,
                   finish_reason="stop"),
        Completion(text="salah jawab 1 2 3", prefill=prefill, finish_reason="length"),  # cut off: worst
    ]
    rows, stats = pairs_for(tokenizer, mode, completions, [0.8, 0.95, 0.3, 0.0])
    assert len(rows) == 1
    row = rows[0]
    assert (row["chosen_index"], row["rejected_index"]) == (0, 2)
    assert row["chosen_finish_reason"] == row["rejected_finish_reason"] == "stop"
    for side in ("chosen", "rejected"):
        assert "manggaD" not in rendered(tokenizer, row, side) and "salah" not in rendered(tokenizer, row, side)
    assert stats.summary()["truncated"] == 2


def test_an_open_think_block_is_not_closed_for_the_model(tokenizer):
    """Ended (stop) inside its reasoning: the template would add a </think> the model never wrote."""
    completions = [Completion(text="Hmm.\n</think>\n\nHà Nội.", prefill="<think>\n", finish_reason="stop"),
                   Completion(text="still thinking about it", prefill="<think>\n", finish_reason="stop"),
                   Completion(text="Hmm\n</think>\n\nSaigon", prefill="<think>\n", finish_reason="stop")]
    rows, _ = pairs_for(tokenizer, "on", completions, [0.9, 0.0, 0.5])
    assert [(r["chosen_index"], r["rejected_index"]) for r in rows] == [(0, 2)]


def test_sides_that_render_to_the_same_tokens_are_never_a_pair(tokenizer):
    completions = [Completion(text="Hà Nội.", prefill="<think>\n</think>\n", finish_reason="stop"),
                   Completion(text="Hà Nội.\n\n", prefill="<think>\n</think>\n", finish_reason="stop")]
    rows, stats = pairs_for(tokenizer, "off", completions, [0.9, 0.88])
    assert rows == []
    assert stats.summary()["dropped"] == {"identical_rendering": 1}
    # with a third, different sample the pair skips the look-alike and takes the worst that differs
    completions.append(Completion(text="Saigon", prefill="<think>\n</think>\n", finish_reason="stop"))
    rows, _ = pairs_for(tokenizer, "off", completions, [0.9, 0.88, 0.5])
    assert [(r["chosen_index"], r["rejected_index"]) for r in rows] == [(0, 2)]
    assert rendered(tokenizer, rows[0], "chosen") != rendered(tokenizer, rows[0], "rejected")
    assert rows[0]["rendered"]["differ"] is True


def mumbled_scores(monkeypatch, tmp_path):
    """Three samples scored by a judge that never writes a [[rating]], next to a format reward."""
    from tempa.alignment import rewards as rewards_module
    from tempa.alignment.rewards import RewardSet, ScoreItem, ScoringEnv

    class Mumbler:
        def sample(self, requests, params):
            return [[Completion(text="I think it is fine.", finish_reason="stop")] for _ in requests]

        def close(self):
            pass

    monkeypatch.setattr(rewards_module, "build_backend", lambda *a, **k: Mumbler())
    configs = PreferenceStageConfig.model_validate({
        "name": "a", "prompts": {"path": PROMPTS},
        "rewards": [{"type": "judge", "weight": 0.1}, {"type": "format"}]}).rewards
    reward_set = RewardSet(configs, ScoringEnv(policy_dir=tmp_path, tokenizer_dir=tmp_path))
    prompt = PromptRow(id="p", messages=[{"role": "user", "content": "Hi"}], thinking_mode="off")
    records = reward_set.score([ScoreItem(prompt, Completion(text="Hello!", prefill="<think>\n</think>\n",
                                                             finish_reason="stop"))] * 3)
    return configs, records


def test_an_unparsable_judge_verdict_fails_the_sample_not_passes_it(monkeypatch, tmp_path):
    _, records = mumbled_scores(monkeypatch, tmp_path)
    assert [r["scores"]["total"] for r in records] == [None, None, None]
    assert [r["scores"]["format"] for r in records] == [1.0, 1.0, 1.0]  # the other rewards still scored


def test_a_judge_failing_above_its_threshold_stops_the_stage_quoting_a_reply(monkeypatch, tmp_path):
    from tempa.alignment.rewards import check_judges, judge_stats
    from tempa.sft.stage_api import StageError

    configs, records = mumbled_scores(monkeypatch, tmp_path)
    scores = [{"id": "p", "results": records}]
    assert judge_stats(configs, scores) == {"judge_replies": 3, "judge_unparsable": 3,
                                            "judge_unparsable_fraction": 1.0}
    with pytest.raises(StageError, match=r"judge 'judge' gave no \[\[rating\]\] in 3 of 3 replies .*"
                                         r"'I think it is fine.'") as failure:
        check_judges(configs, scores, "distill")
    assert "\n" not in str(failure.value)
    lenient = [c.model_copy(update={"max_unparsable": 1.0}) for c in configs]
    check_judges(lenient, scores, "distill")


@pytest.mark.parametrize(("ratio", "rows", "on"), [(0.05, 10, 1), (0.95, 10, 9), (0.5, 5, 3), (0.25, 10, 3),
                                                   (0.0, 10, 0), (1.0, 10, 10), (0.5, 1, 1), (0.3, 1, 0)])
def test_mixed_thinking_gives_exactly_the_documented_count(ratio, rows, on):
    from tempa.sft.data_config import SourceConfig
    from tempa.sft.mixing import assign_thinking

    source = SourceConfig.model_construct(name="s", thinking_mode="mixed", thinking_ratio=ratio)
    flags = assign_thinking([True] * rows + [False] * 3, source, seed=1, keys=list(range(rows + 3)))
    assert sum(flags) == on and not any(flags[rows:])


def test_the_report_shows_pair_and_judge_statistics_from_the_typed_results(tmp_path):
    from tempa.alignment.preference_stage import PreferenceResult, RoundSummary
    from tempa.alignment.synthesize_stage import SynthesizeResult
    from tempa.recipes.report import _preference_data_section
    from tempa.recipes.rundir import Manifest

    def manifest(name, kind):
        return Manifest(name=name, kind=kind, fingerprint="f", status="done", started_at=0.0)

    rounds = [
        RoundSummary(round=1, source="offline", model=tmp_path / "r1", prompts=9, pairs=4, pair_fraction=0.44,
                     dropped={"identical_pair": 1, "malformed_row": 2}, identical_renderings=1,
                     train={"rewards/margins": 0.125, "rewards/accuracies": 0.75}),
        RoundSummary(round=2, model=tmp_path / "r2", prompts=6, pairs=3, pair_fraction=0.5,
                     dropped={"fewer_than_two_complete": 3}, samples=24, truncated=13, truncated_fraction=0.541667,
                     judges={"judge_replies": 24, "judge_unparsable": 2, "judge_unparsable_fraction": 0.083333},
                     train={"rewards/margins": 0.5, "rewards/accuracies": 1.0}),
    ]
    synth = SynthesizeResult(rows=5, prompts=8, kept_prompts=5, rejected={"below_threshold": 2, "incomplete": 1},
                             truncated=7, samples=32, judges={"judge_replies": 32, "judge_unparsable": 0})
    page = "".join(_preference_data_section([(manifest("align", "preference"), PreferenceResult(rounds=rounds)),
                                             (manifest("distill", "synthesize"), synth)]))
    for cell in ("<td>1</td><td>offline</td><td>4 / 9</td>", "<td>13 / 24 (0.5417)</td>", "judge: 2/24",
                 "<td>0.125</td><td>0.75</td>", "identical_pair: 1, malformed_row: 2", "fewer_than_two_complete: 3",
                 "<td>5</td><td>5 / 8</td><td>7 / 32</td><td>judge: 0/32</td>", "below_threshold: 2, incomplete: 1"):
        assert cell in page, cell


@pytest.mark.parametrize(("ratio", "on"), [(0.5, 3), (0.05, 1), (0.95, 5)])
def test_mixed_thinking_prompts_get_exactly_the_share_too(ratio, on):
    from tempa.alignment.prompts import PromptSource, ThinkingSettings, load_prompts

    for seed in (3, 4, 5):
        prompts = load_prompts(PromptSource(path=PROMPTS, limit=6), seed=seed,
                               thinking=ThinkingSettings(mode="mixed", ratio=ratio))
        assert sum(p.thinking_mode == "on" for p in prompts) == on
