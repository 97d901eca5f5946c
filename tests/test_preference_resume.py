"""An interrupted preference stage resumes: finished sampling and scoring are reused, training is retried."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from preference_helpers import ending_model, flipped_thinking

import tempa.alignment.preference_stage as stage_module
from stage_helpers import make_context
from tempa.alignment import PreferenceStageConfig, run_preference
from tempa.alignment.preference_stage import preference_resume_point
from tempa.sft.run_layout import CHECKPOINTS_DIR, COMPLETE
from tempa.sft.stage_api import StageError

PROMPTS = str(Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl")


def test_a_failed_training_launch_resumes_without_resampling(tmp_path, tiny_model_dir, monkeypatch):
    from tempa.chat_templates import bake_tokenizer

    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    start = ending_model(tiny_model_dir, tmp_path / "tok", tmp_path / "start")
    launches: list[str] = []

    def launch(module: str, args: list[str], log_file: Path) -> None:
        launches.append(module)
        if len(launches) == 1:
            raise StageError("training process exited with code -9")
        final = Path(json.loads(Path(args[1]).read_text())["final_dir"])
        final.mkdir(parents=True)
        (final / "tempa_train_metrics.json").write_text(json.dumps({"global_step": 1}))

    ctx = make_context(tmp_path / "run", "align", start_model=start, tokenizer_dir=tmp_path / "tok",
                       chat_template="", launch=launch)
    config = PreferenceStageConfig.model_validate({
        "name": "align", "prompts": {"path": PROMPTS, "limit": 4},
        "sampling": {"n": 4, "max_new_tokens": 12, "batch_size": 2, "thinking": {"mode": "off"}},
        "rewards": [{"type": "length", "unit": "chars", "per_token": 0.01}],
    })
    assert preference_resume_point(ctx.stage_dir) is None  # nothing kept: `tempa status` says it starts over
    with pytest.raises(StageError, match="code -9"):
        run_preference(config, ctx)
    # What `tempa status` and `tempa plan` say a re-run continues from (they said "starts over from step 0").
    assert preference_resume_point(ctx.stage_dir) == "round 1, 4 prompts sampled"
    samples = (ctx.stage_dir / "round-1" / "samples.jsonl").read_text()
    pairs = (ctx.stage_dir / "round-1" / "pairs.jsonl").read_text()

    def no_sampling(*args, **kwargs):
        raise AssertionError("finished samples must be reused, not generated again")

    monkeypatch.setattr(stage_module, "build_backend", no_sampling)
    result = run_preference(config, ctx)
    assert launches == ["tempa.sft.train_worker"] * 2
    assert (ctx.stage_dir / "round-1" / "samples.jsonl").read_text() == samples
    assert (ctx.stage_dir / "round-1" / "pairs.jsonl").read_text() == pairs
    assert result.metrics["round1_pairs"] == len(pairs.splitlines()) > 0
    assert preference_resume_point(ctx.stage_dir) == "round 1's model (every round it started is trained)"
    checkpoint = ctx.stage_dir / "round-2" / CHECKPOINTS_DIR / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    assert preference_resume_point(ctx.stage_dir) == "round 2 (the rounds before it are trained)"
    (checkpoint / COMPLETE).write_text("")
    assert preference_resume_point(ctx.stage_dir) == "round 2, checkpoint-3 (the rounds before it are trained)"


def test_samples_journaled_under_another_thinking_draw_are_sampled_again(tmp_path, tiny_model_dir, monkeypatch):
    # A kill after sampling, then a resume whose mixed draw gives the prompts other modes (the draw changed with
    # tempa: it went by position, now by content): samples with a think block would be trained with thinking off.
    from tempa.chat_templates import bake_tokenizer

    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")

    def launch(module: str, args: list[str], log_file: Path) -> None:
        raise StageError("training process exited with code -9")

    ctx = make_context(tmp_path / "run", "align", start_model=tiny_model_dir, tokenizer_dir=tmp_path / "tok",
                       chat_template="", launch=launch)
    config = PreferenceStageConfig.model_validate({
        "name": "align", "prompts": {"path": PROMPTS, "limit": 4},
        "sampling": {"n": 2, "max_new_tokens": 4, "batch_size": 4, "thinking": {"mode": "mixed", "ratio": 0.5}},
        "rewards": [{"type": "length", "unit": "chars", "per_token": 0.01}],
    })
    with pytest.raises(StageError):  # no pair (the tiny model never ends a turn) or the killed launch
        run_preference(config, ctx)
    samples = ctx.stage_dir / "round-1" / "samples.jsonl"
    first = [json.loads(line) for line in samples.read_text().splitlines()]
    assert sorted(r["thinking_mode"] for r in first) == ["off", "off", "on", "on"]
    monkeypatch.setattr(stage_module, "load_prompts", flipped_thinking(stage_module.load_prompts))
    with pytest.raises(StageError):
        run_preference(config, ctx)
    # Every prompt sampled again, in its new mode (one batch, in the file's order, as the first run's); the samples
    # in the old mode stay in the journal, under their own keys, and are used by no pair.
    again = [json.loads(line) for line in samples.read_text().splitlines()][len(first):]
    assert [r["thinking_mode"] for r in again] == ["off" if r["thinking_mode"] == "on" else "on" for r in first]
    assert not {r["id"] for r in again} & {r["id"] for r in first}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:  # bound, then closed: nothing listens there, so a connection is refused
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_judge_server_that_is_down_stops_the_round_before_it_samples(tmp_path, tiny_model_dir, tokenizer_dir,
                                                                        monkeypatch, caplog):
    """The judge's server not started (or a wrong port) was found when scoring began, after the policy had sampled
    every prompt of the round; it is refused at once, naming the judge and what came back. A server that answers at
    all (here with 501: it has no GET route) passes. (A round whose scoring is finished asks no server:
    test_preference_journal_keys.py.)"""
    from test_alignment_fakes import FakeOpenAI, chat_response

    def no_sampling(*args, **kwargs):
        raise AssertionError("the round sampled before finding its judge unreachable")

    monkeypatch.setattr(stage_module, "build_backend", no_sampling)
    ctx = make_context(tmp_path / "run", "align", start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir)

    def config(base_url: str) -> PreferenceStageConfig:
        return PreferenceStageConfig.model_validate({
            "name": "align", "prompts": {"path": PROMPTS, "limit": 2}, "sampling": {"n": 2, "max_new_tokens": 8},
            "rewards": [{"type": "format"}, {"type": "judge", "backend": {
                "type": "http", "base_url": base_url, "model": "judge-model", "max_retries": 1, "backoff_s": 0.01}}]})

    down = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(StageError) as err, caplog.at_level(logging.WARNING):
        run_preference(config(down), ctx)
    # the retry said it was a POST to chat/completions, where the check is a GET of /models (teacher trial)
    assert f"GET {down}/models (model judge-model): " in caplog.text and "POST" not in caplog.text
    message = str(err.value)
    assert message.startswith("align round 1: judge 'judge' (rewards[1].backend), checked before its first request: GET "
                              f"{down}/models (model judge-model): the server cannot be reached after 1 retries: ")
    assert "refused" in message and "\n" not in message
    assert not (ctx.stage_dir / "round-1" / "samples.jsonl").exists()

    with FakeOpenAI(lambda body: chat_response(["[[5]]"])) as server, pytest.raises(AssertionError, match="sampled"):
        run_preference(config(server.base_url), ctx)


def test_a_rounds_log_counts_the_judge_replies_without_a_rating(tmp_path, tiny_model_dir, tokenizer_dir, monkeypatch,
                                                                caplog):
    """A judge that gave no rating in a share of replies under max_unparsable left those samples out of every pair,
    and the stage log said nothing of it (stats.json and the report did)."""
    import logging

    from test_alignment_fakes import ScriptedBackend

    import tempa.alignment.rewards as rewards_module

    monkeypatch.setattr(stage_module, "build_backend", lambda *a, **k: ScriptedBackend(
        lambda prompt, j: f"answer {j} " * (j + 1)))
    replies = iter(["no rating here"] + ["Good. [[7]]"] * 50)
    monkeypatch.setattr(rewards_module, "build_backend", lambda *a, **k: ScriptedBackend(lambda p, j: next(replies)))

    def launch(module: str, args: list[str], log_file: Path) -> None:
        final = Path(json.loads(Path(args[1]).read_text())["final_dir"])
        final.mkdir(parents=True)
        (final / "tempa_train_metrics.json").write_text(json.dumps({"global_step": 1}))

    ctx = make_context(tmp_path / "run", "align", start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir,
                       launch=launch)
    config = PreferenceStageConfig.model_validate({
        "name": "align", "prompts": {"path": PROMPTS, "limit": 3},
        "sampling": {"n": 4, "max_new_tokens": 8, "thinking": {"mode": "off"}},
        "rewards": [{"type": "judge", "max_unparsable": 0.5}, {"type": "length", "unit": "chars", "per_token": 0.01}],
    })
    with caplog.at_level(logging.INFO, logger="tempa"):
        result = run_preference(config, ctx)
    assert result.rounds[0].judges["judge_unparsable"] == 1
    scored = next(r.getMessage() for r in caplog.records if ": scored " in r.getMessage())
    assert scored.endswith("; judge 'judge' gave no rating in 1 of 12 replies (never paired)"), scored
