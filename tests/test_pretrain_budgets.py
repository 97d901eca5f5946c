"""The `pretrain` stage's token budgets: what `max_steps` does to them."""

from __future__ import annotations

import json
import re

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


def test_the_plan_sizes_a_local_source_that_holds_less_than_its_budget(tmp_path, tiny_model_dir):
    """The plan counted a source's token budget as its tokens: 20M tokens and 1.3k steps where the run found 67k
    (Thai trial). A local source is measured: its .txt bytes at the tokens per byte of their starts, or its rows at
    the tokens per row of drawn rows; it trains what it holds unless `repeat` fills the budget."""
    from transformers import AutoTokenizer

    from tempa.sft.pretrain_config import PretrainStageConfig
    from tempa.sft.pretrain_stage import estimate_pretrain
    from tempa.sft.stage_api import EstimateInputs

    texts = [f"ข้าวมันไก่ {k} อร่อยมาก river rice mango temple harbour" for k in range(300)]
    (tmp_path / "th.txt").write_text("\n\n".join(texts), encoding="utf-8")
    (tmp_path / "web.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    per_text = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def plan(**source):
        config = PretrainStageConfig.model_validate({"name": "cpt", "sources": [{"name": "s", **source}],
                                                     "train": {"lr_scheduler_kwargs": {"num_decay_steps": 1}}})
        return estimate_pretrain(config, EstimateInputs(0, 0, tokenizer=tokenizer)).tokens

    rows = plan(path=str(tmp_path / "web.jsonl"), tokens=10_000_000)
    # 256 of the 300 rows drawn: their mean tokens a row, times 300
    assert abs(rows.tokens - sum(per_text)) <= 0.05 * sum(per_text)
    assert rows.notes[0].startswith(f"source s: holds ~{rows.tokens:,} tokens (256 drawn rows with the base model's "
                                    "tokenizer), ")
    txt = plan(path=str(tmp_path / "th.txt"), tokens=10_000_000, txt_document="paragraph")
    assert abs(txt.tokens - sum(per_text)) <= 0.1 * sum(per_text)  # the blank lines between documents counted too
    assert "of its token budget 10,000,000: it trains those; `repeat: true`" in txt.notes[0]
    assert plan(path=str(tmp_path / "th.txt"), tokens=10_000_000, repeat=True, txt_document="paragraph").tokens == \
        10_000_000  # repeat fills the budget
    assert plan(path=str(tmp_path / "th.txt"), tokens=100, txt_document="paragraph").tokens == 100  # budget < held
    unbudgeted = plan(path=str(tmp_path / "web.jsonl"))
    assert unbudgeted.notes[0].startswith("source s: no token budget: every document, ~")


def test_the_plan_says_how_often_a_repeated_source_is_gone_over_and_warns_when_it_is_absurd(tmp_path):
    """A 37 KB source with `repeat: true` and a budget of 10B tokens (a million passes) got no word in the plan,
    while `repeat: false` said what it holds. Now the note says how many times it is gone over, and above 100
    times the plan (and the run's start) warns."""
    from tempa.sft.pretrain_config import PretrainStageConfig
    from tempa.sft.pretrain_stage import estimate_pretrain, input_warnings

    text = "river rice mango temple harbour monsoon lantern market\n\n" * 400  # 22,400 bytes: ~5,600 tokens at 4 a token
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")

    def config(tokens: int) -> PretrainStageConfig:
        return PretrainStageConfig.model_validate({
            "name": "cpt", "sources": [{"name": "a", "path": str(tmp_path / "a.txt"), "tokens": tokens, "repeat": True,
                                        "txt_document": "paragraph"}],
            "train": {"lr_scheduler_kwargs": {"num_decay_steps": 1}}})

    absurd = config(10_000_000_000)
    tokens = estimate_pretrain(absurd, None).tokens
    assert tokens.tokens == 10_000_000_000  # repeat reaches the budget
    (note,) = [n for n in tokens.notes if n.startswith("source a:")]
    times = int(re.search(r"~([\d,]+) times in all", note).group(1).replace(",", ""))
    assert 1_000_000 < times < 3_000_000, note  # 10e9 over ~5,600 tokens: ~1.8 million passes
    (warning,) = [w for w in input_warnings(absurd) if "repeat" in w]
    assert warning.startswith("data source 'a': `repeat: true` goes over it ~") and "10,000,000,000" in warning
    # a few passes: said in the note, not warned of
    modest = config(20_000)
    (note,) = [n for n in estimate_pretrain(modest, None).tokens.notes if n.startswith("source a:")]
    assert re.search(r"~[34](\.\d)? times in all", note), note
    assert not [w for w in input_warnings(modest) if "repeat" in w]
