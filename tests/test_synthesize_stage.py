"""The synthesize stage: a teacher behind an OpenAI-compatible server, verifiers and a judge, rejection sampling."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import pytest
from preference_helpers import flipped_thinking
from test_alignment_fakes import FakeOpenAI, chat_response, last_user

from stage_helpers import make_context
from tempa.alignment import SynthesizeStageConfig, run_synthesize
from tempa.sft.stage_api import StageContext, StageError

SECRET = "sk-teacher-secret-9876"

# question -> (language, reference answer, the teacher's three responses)
MATH = {
    "Berapa 2 + 3?": ("id", "5", [
        "Jawabannya adalah 5, karena dua ditambah tiga sama dengan lima.",  # right, Indonesian: passes
        "The answer is 5 because two plus three is five.",  # right, but English
        "Jawabannya adalah 6, saya kira begitu ya.",  # wrong
    ]),
    "What is 10 - 4?": ("en", "6", [
        "The answer is 7, I am quite sure about it.",
        "I believe the answer is 8 in this case.",
        "Jawabannya adalah 6 menurut saya ya.",  # right, but Indonesian
    ]),
    "Hitung 7 × 3.": ("id", "21", [
        "The result of seven times three is 21.",  # right answers in the wrong language only
        "Seven times three gives 21 as the answer.",
        "Hasilnya adalah 20, saya rasa begitu.",
    ]),
    "What is 9 + 9?": ("en", "18", [
        "<think>nine plus nine</think>Nine plus nine equals 18, so the answer is 18.",
        "The answer is 18 for sure, nine plus nine.",
        "It is 19 I think, nine and nine.",
    ]),
}


def context(tmp_path: Path, model_dir: Path, tokenizer_dir: Path) -> StageContext:
    def no_launch(*args):
        raise AssertionError("synthesize launches nothing")

    return make_context(tmp_path / "run", "distill", start_model=model_dir, tokenizer_dir=tokenizer_dir,
                        chat_template="", launch=no_launch, seed=1)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tiny_model_dir) -> Path:
    from tempa.chat_templates import bake_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tok"
    bake_tokenizer(tiny_model_dir, "llama3_thinking", out)
    return out


def math_reply(body):
    question = last_user(body)
    texts = MATH[question][2]
    reasoning = [f"checking {question}"] * len(texts) if MATH[question][0] == "id" else None
    return chat_response(texts, reasoning=reasoning)


def write_prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}], "language": lang,
                                        "answer": answer}, ensure_ascii=False) + "\n"
                            for q, (lang, answer, _) in MATH.items()))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def synth_config(server: FakeOpenAI, prompts: Path, **extra) -> SynthesizeStageConfig:
    return SynthesizeStageConfig.model_validate({
        "name": "distill", "kind": "synthesize",
        "prompts": {"path": str(prompts)},
        "teacher": {"type": "http", "base_url": server.base_url, "model": "teacher", "api_key_env": "TEACHER_KEY",
                    "backoff_s": 0.01, "timeout_s": 10},
        "sampling": {"n": 3, "temperature": 0.7, "max_new_tokens": 64, "batch_size": 2, "thinking": {"mode": "on"}},
        "rewards": [{"type": "answer"}, {"type": "language"}],
        **extra,
    })


def all_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_keeps_exactly_the_best_responses_above_the_threshold(tmp_path, tiny_model_dir, tokenizer_dir, monkeypatch,
                                                              caplog):
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(math_reply) as server, caplog.at_level(logging.DEBUG):
        config = synth_config(server, prompts, select={"strategy": "best", "min_score": 2.0})
        result = run_synthesize(config, ctx)
    # right answer AND right language (answer 1 + language 1) only for the first and last question
    rows = read_jsonl(ctx.stage_dir / "data" / "synthesized.jsonl")
    assert [r["messages"][0]["content"] for r in rows] == ["Berapa 2 + 3?", "What is 9 + 9?"]
    assert [r["provenance"]["sample_index"] for r in rows] == [0, 0]
    first, last = rows
    assert first["messages"][1] == {"role": "assistant", "content": MATH["Berapa 2 + 3?"][2][0],
                                    "reasoning_content": "checking Berapa 2 + 3?"}
    assert last["messages"][1]["reasoning_content"] == "nine plus nine"  # inline think block, split out
    assert last["messages"][1]["content"] == "Nine plus nine equals 18, so the answer is 18."
    assert first["scores"]["turn1"] == {"answer": 1.0, "language": 1.0, "total": 2.0}
    assert first["provenance"]["teacher"] == f"http:teacher@{server.base_url}"
    assert (first["language"], first["thinking_mode"]) == ("id", "on")
    rejects = read_jsonl(ctx.stage_dir / "data" / "rejects.jsonl")
    assert sorted(r["messages"][0]["content"] for r in rejects) == ["Hitung 7 × 3.", "What is 10 - 4?"]
    assert {r["reason"] for r in rejects} == {"below_threshold"}
    assert result.dataset == ctx.stage_dir / "data" / "synthesized.jsonl" and result.rows == len(rows)
    assert result.metrics["rows"] == 2 and result.metrics["kept_fraction"] == 0.5
    # every request carried the key and the thinking mode; the key was written nowhere
    assert {h["Authorization"] for h in server.headers} == {f"Bearer {SECRET}"}
    assert all(b["n"] == 3 and b["chat_template_kwargs"]["thinking_mode"] == "on" for b in server.requests)
    assert SECRET not in all_text(ctx.stage_dir.parent) and SECRET not in caplog.text


def test_strategy_all_keeps_every_passing_response_and_resumes_without_requests(tmp_path, tiny_model_dir,
                                                                               tokenizer_dir, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(math_reply) as server:
        config = synth_config(server, prompts, select={"strategy": "all", "by": "total", "min_score": 2.0})
        run_synthesize(config, ctx)
        rows = read_jsonl(ctx.stage_dir / "data" / "synthesized.jsonl")
        assert [(r["messages"][0]["content"], r["provenance"]["sample_index"]) for r in rows] == [
            ("Berapa 2 + 3?", 0), ("What is 9 + 9?", 0), ("What is 9 + 9?", 1)]
        sent = len(server.requests)
        run_synthesize(config, ctx)  # samples.jsonl is complete: nothing is generated again
        assert len(server.requests) == sent
    assert read_jsonl(ctx.stage_dir / "data" / "synthesized.jsonl") == rows


@pytest.mark.parametrize("keep_incomplete", [False, True])
def test_cut_off_responses_are_not_kept_unless_allowed(tmp_path, tiny_model_dir, tokenizer_dir, monkeypatch,
                                                       keep_incomplete):
    monkeypatch.setenv("TEACHER_KEY", SECRET)

    def reply(body):  # the 9 + 9 responses all hit the token limit
        response = math_reply(body)
        if last_user(body) == "What is 9 + 9?":
            for choice in response["choices"]:
                choice["finish_reason"] = "length"
        return response

    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(reply) as server:
        run_synthesize(synth_config(server, write_prompts(tmp_path / "p.jsonl"), keep_incomplete=keep_incomplete,
                                    select={"min_score": 2.0}), ctx)
    kept = [r["messages"][0]["content"] for r in read_jsonl(ctx.stage_dir / "data" / "synthesized.jsonl")]
    reasons = {r["messages"][0]["content"]: r["reason"] for r in read_jsonl(ctx.stage_dir / "data" / "rejects.jsonl")}
    if keep_incomplete:  # selected by its score, where a cut-off answer earns no answer reward (it commits to none)
        assert kept == ["Berapa 2 + 3?"] and reasons["What is 9 + 9?"] == "below_threshold"
    else:
        assert kept == ["Berapa 2 + 3?"] and reasons["What is 9 + 9?"] == "incomplete"


def test_output_is_a_dataset_the_sft_pipeline_reads(tmp_path, tiny_model_dir, tokenizer_dir, monkeypatch):
    from transformers import AutoTokenizer

    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    monkeypatch.setenv("TEACHER_KEY", SECRET)
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(math_reply) as server:
        result = run_synthesize(synth_config(server, write_prompts(tmp_path / "p.jsonl"),
                                             select={"strategy": "all", "min_score": 1.0}), ctx)
    data = DataConfig.model_validate({"sources": [{"name": "synth", "path": str(result.dataset)}]})
    prepared = prepare_sft_data(data, AutoTokenizer.from_pretrained(tokenizer_dir), out_dir=tmp_path / "sft",
                                cache_dir=tmp_path / "cache", seed=0)
    kept = len(read_jsonl(result.dataset))
    assert kept > 0 and len(prepared.train) + (len(prepared.eval) if prepared.eval is not None else 0) == kept
    assert all(sum(row["assistant_masks"]) > 0 for row in prepared.train)


# --------------------------------------------------------------------------- multi-turn (Swallow v0.3)

CONVERSATIONS = {
    "Explain photosynthesis briefly.": ["GOOD: plants turn light into sugar.", "MEH: something with leaves."],
    "Describe the water cycle.": ["MEH: water goes up and down.", "BROKEN water"],
    "FOLLOWUP-1: What does chlorophyll do?": ["GOOD: it absorbs light."],
    "FOLLOWUP-2: How long does evaporation take?": ["MEH: a while."],
}


def conversation_reply(body):
    prompt = last_user(body)
    if "strict, impartial judge" in prompt:
        answer = re.search(r"\[(?:Last response|Response)\]\n(.*?)\n\[End of response\]", prompt, re.S).group(1)
        verdict = {"GOOD": "Clear and correct. Rating: [[9]]", "MEH": "Vague. Rating: [[6]]"}
        return chat_response([next((v for k, v in verdict.items() if answer.startswith(k)), "I cannot rate this.")])
    if "Write the user's next message" in prompt:
        return chat_response(["FOLLOWUP-1: What does chlorophyll do?" if "photosynthesis" in prompt
                              else "FOLLOWUP-2: How long does evaporation take?"])
    return chat_response(CONVERSATIONS[prompt][: body["n"]])


@pytest.mark.parametrize("on_reject", ["drop_turn", "drop_conversation"])
def test_second_turns_are_judged_and_kept_at_nine_or_above(tmp_path, tiny_model_dir, tokenizer_dir, on_reject,
                                                           caplog):
    prompts = tmp_path / "conv.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q, "language": "en"}) + "\n"
                               for q in ("Explain photosynthesis briefly.", "Describe the water cycle.")))
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(conversation_reply) as server:
        backend = {"type": "http", "base_url": server.base_url, "model": "gemma", "backoff_s": 0.01}
        config = SynthesizeStageConfig.model_validate({
            "name": "distill", "prompts": {"path": str(prompts)}, "teacher": backend,
            "sampling": {"n": 2, "temperature": 0.7, "thinking": {"mode": "off"}},
            # one of the four first-turn replies has no rating: allowed here, above the 10% default
            "rewards": [{"type": "judge", "backend": backend, "max_unparsable": 0.5}],
            "select": {"strategy": "best", "by": "judge"},
            "second_turn": {"select": {"by": "judge", "min_score": 9}, "on_reject": on_reject},
        })
        with caplog.at_level(logging.INFO):
            result = run_synthesize(config, ctx)
    # the closing line counts each turn's rejects apart (they were added up: 1 + 10 read as 11 of the prompts)
    assert "rejected first turns none, second turns {'below_threshold': 1}" in caplog.text
    rows = read_jsonl(ctx.stage_dir / "data" / "synthesized.jsonl")
    photo = rows[0]
    assert [m["content"] for m in photo["messages"]] == [
        "Explain photosynthesis briefly.", "GOOD: plants turn light into sugar.",
        "FOLLOWUP-1: What does chlorophyll do?", "GOOD: it absorbs light."]
    assert photo["scores"]["turn1"]["judge"] == 9.0 and photo["scores"]["turn2"]["judge"] == 9.0
    if on_reject == "drop_turn":
        # the water-cycle follow-up scored 6 < 9: the turn goes, the first turn (MEH beat BROKEN) stays
        assert len(rows) == 2
        assert [m["content"] for m in rows[1]["messages"]] == ["Describe the water cycle.", "MEH: water goes up and down."]
        assert "turn2" not in rows[1]["scores"]
    else:
        assert len(rows) == 1
    rejects = read_jsonl(ctx.stage_dir / "data" / "rejects.jsonl")
    assert [(r["turn"], r["reason"]) for r in rejects] == [(2, "below_threshold")]
    stats = json.loads((ctx.stage_dir / "data" / "stats.json").read_text())
    assert stats["scoring"]["judge_unparsable"] == 1  # "BROKEN" got no rating: counted, not a crash
    assert stats["judges"] == {"judge_replies": 4, "judge_unparsable": 1, "judge_unparsable_fraction": 0.25}
    assert result.judges == stats["judges"] and result.rejected == {"below_threshold": 1}
    assert stats["second_turn"]["kept"] == 1
    assert result.metrics["judge_unparsable"] == 1
    # the second answer was generated with the whole conversation as context
    second = next(b for b in server.requests if last_user(b).startswith("FOLLOWUP-1"))
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"] == "GOOD: plants turn light into sugar."


def test_a_prompt_inserted_at_the_top_is_the_only_one_sampled_again(tmp_path, tiny_model_dir, tokenizer_dir):
    """Killed at prompt 150,000 of 300,000, the prompts file gets a row added at its top: the journals' signature held
    every prompt's id, which held its place, so every journal (samples, scores, follow-ups, second turns) was started
    over and the teacher and judge paid again for all of it. Only the new prompt is asked; every other prompt keeps
    its own answers (none moved to its neighbour)."""
    new = "Name a primary colour."
    answers = {**CONVERSATIONS, new: ["GOOD: red.", "MEH: a colour."]}

    def reply(body):
        prompt = last_user(body)
        return chat_response(answers[prompt][: body["n"]]) if prompt in answers else conversation_reply(body)

    questions = ["Explain photosynthesis briefly.", "Describe the water cycle."]
    prompts = tmp_path / "conv.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q, "language": "en"}) + "\n" for q in questions))
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(reply) as server:
        backend = {"type": "http", "base_url": server.base_url, "model": "gemma", "backoff_s": 0.01}
        config = SynthesizeStageConfig.model_validate({
            "name": "distill", "prompts": {"path": str(prompts)}, "teacher": backend,
            "sampling": {"n": 2, "temperature": 0.7, "thinking": {"mode": "off"}},
            "rewards": [{"type": "judge", "backend": backend, "max_unparsable": 0.5}],
            "select": {"strategy": "best", "by": "judge"}, "second_turn": {"select": {"by": "judge", "min_score": 9}}})
        run_synthesize(config, ctx)
        before = read_jsonl(ctx.stage_dir / "data" / "synthesized.jsonl")
        sent = len(server.requests)
        prompts.write_text("".join(json.dumps({"prompt": q, "language": "en"}) + "\n" for q in [new, *questions]))
        run_synthesize(config, ctx)
        asked = server.requests[sent:]
    assert asked and all(new in json.dumps(body, ensure_ascii=False) for body in asked)
    rows = read_jsonl(ctx.stage_dir / "data" / "synthesized.jsonl")
    assert [r["messages"][1]["content"] for r in rows] == ["GOOD: red.", *(r["messages"][1]["content"] for r in before)]
    assert [r["messages"] for r in rows[1:]] == [r["messages"] for r in before]


def test_a_content_filtered_answer_is_never_kept(tmp_path, tiny_model_dir, tokenizer_dir, monkeypatch):
    """A provider's filter stops an answer where it strikes (finish_reason content_filter): the text before the
    cut scored like a finished answer and was kept."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)

    def reply(body):
        response = math_reply(body)
        if last_user(body) == "What is 9 + 9?":
            for choice in response["choices"]:
                choice["finish_reason"] = "content_filter"
        return response

    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(reply) as server:
        result = run_synthesize(synth_config(server, write_prompts(tmp_path / "p.jsonl"), select={"min_score": 2.0}),
                                ctx)
    kept = [r["messages"][0]["content"] for r in read_jsonl(ctx.stage_dir / "data" / "synthesized.jsonl")]
    reasons = {r["messages"][0]["content"]: r["reason"] for r in read_jsonl(ctx.stage_dir / "data" / "rejects.jsonl")}
    assert kept == ["Berapa 2 + 3?"] and reasons["What is 9 + 9?"] == "incomplete"
    stats = json.loads((ctx.stage_dir / "data" / "stats.json").read_text())
    assert stats["finish_reasons"]["content_filter"] == 3 and result.prompts == result.kept_prompts + len(reasons)


def test_a_run_resumed_with_other_transport_settings_keeps_its_samples(tmp_path, tiny_model_dir, tokenizer_dir,
                                                                       monkeypatch):
    """Stopping a long distillation to raise concurrency (or a timeout, or retries) changed the journal's signature:
    every prompt was sampled, and paid for, again."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(math_reply) as server:
        config = synth_config(server, prompts)
        run_synthesize(config, ctx)
        sent = len(server.requests)
        teacher = {**config.teacher.model_dump(), "concurrency": 32, "timeout_s": 600, "max_retries": 9,
                   "backoff_s": 2.0}
        run_synthesize(synth_config(server, prompts, teacher=teacher), ctx)
        assert len(server.requests) == sent
        run_synthesize(synth_config(server, prompts, teacher={**teacher, "model": "teacher-2"}), ctx)
        assert len(server.requests) == 2 * sent  # another model: sampled again


def test_a_teacher_served_at_another_address_keeps_what_was_paid_for(tmp_path, tiny_model_dir, tokenizer_dir,
                                                                     monkeypatch):
    """A teacher's base_url was signed with its answers: a vLLM teacher served again on a new node (another SLURM
    allocation, another hostname) had every answer asked, and paid for, again (a trial: 40 of 40). The address is
    where the server is, not who answers; a journal an earlier tempa signed with it is kept too."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(math_reply) as first_node, FakeOpenAI(math_reply) as second_node:
        config = synth_config(first_node, prompts)
        first = run_synthesize(config, ctx)
        assert first_node.requests
        moved = synth_config(first_node, prompts, teacher={**config.teacher.model_dump(),
                                                           "base_url": second_node.base_url})
        assert run_synthesize(moved, ctx).rows == first.rows and second_node.requests == []
        for name in ("samples.jsonl", "scores.jsonl"):  # as an earlier tempa signed them: with the address
            meta = ctx.stage_dir / "data" / f"{name}.meta.json"
            signed = json.loads(meta.read_text())
            signed["teacher"]["base_url"] = first_node.base_url
            meta.write_text(json.dumps(signed, sort_keys=True))
        assert run_synthesize(moved, ctx).rows == first.rows and second_node.requests == []
        assert "base_url" not in json.loads((ctx.stage_dir / "data" / "samples.jsonl.meta.json").read_text())["teacher"]
        renamed = synth_config(first_node, prompts, teacher={**moved.teacher.model_dump(), "model": "teacher-2"})
        run_synthesize(renamed, ctx)
        asked = {body["messages"][-1]["content"] for body in second_node.requests}  # another model is asked again
        assert asked == {row["messages"][0]["content"] for row in read_jsonl(prompts)}


def test_another_batch_size_or_an_earlier_tempas_signature_asks_the_teacher_nothing(tmp_path, tiny_model_dir,
                                                                                   tokenizer_dir, monkeypatch):
    """sampling.batch_size (raised with a server's concurrency, as the backend reference advises) was part of the
    journal's signature: every prompt was asked again (a teacher trial: 24 requests for 20 prompts). It only groups
    requests. A journal an earlier tempa signed with it is kept, and signed anew."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(math_reply) as server:
        config = synth_config(server, prompts)
        first = run_synthesize(config, ctx)
        sent = len(server.requests)
        bigger = synth_config(server, prompts, sampling={**config.sampling.model_dump(), "batch_size": 8})
        assert run_synthesize(bigger, ctx).rows == first.rows and len(server.requests) == sent
        for name in ("samples.jsonl", "scores.jsonl"):  # as an earlier tempa signed them: the whole sampling block
            meta = ctx.stage_dir / "data" / f"{name}.meta.json"
            signed = json.loads(meta.read_text())
            meta.write_text(json.dumps({**signed, "sampling": config.sampling.model_dump(mode="json")}, sort_keys=True))
        assert run_synthesize(config, ctx).rows == first.rows and len(server.requests) == sent
        assert "batch_size" not in json.loads((ctx.stage_dir / "data" / "samples.jsonl.meta.json").read_text())[
            "sampling"]


def revoked_once_asked(server: FakeOpenAI, other: str) -> tuple:
    """A 401 sent once ``other``, of the same batch, has been asked too: that request is in flight when this one fails
    for good, so its reply is waited for and journaled (not one a failure stopped before it was sent)."""
    end = time.monotonic() + 20
    while other not in {last_user(b) for b in list(server.requests)} and time.monotonic() < end:
        time.sleep(0.02)
    return 401, {"error": {"message": "key revoked"}}, {}


def thinking_reply(body):
    """The teacher thinks only when the request asks it to (a trace with thinking on, none with it off)."""
    question = last_user(body)
    on = body["chat_template_kwargs"]["thinking_mode"] == "on"
    return chat_response(MATH[question][2], reasoning=[f"checking {question}" if on else None] * 3)


def test_samples_journaled_in_another_thinking_mode_are_sampled_again(tmp_path, tiny_model_dir, tokenizer_dir,
                                                                     monkeypatch):
    """Killed mid-sampling, then resumed after a row's own thinking_mode was edited (off to the recipe's on): its
    samples, taken without thinking, were kept as if taken with it, and its row was written `thinking_mode: on`
    with no trace. Neither that mode nor a mixed draw's (which changed with tempa) is part of a prompt's id."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    path = write_prompts(tmp_path / "prompts.jsonl")
    rows = read_jsonl(path)
    path.write_text("".join(json.dumps({**r, **({"thinking_mode": "off"} if i == 0 else {})}, ensure_ascii=False)
                            + "\n" for i, r in enumerate(rows)))
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    killed = {"at": "Hitung 7 × 3."}  # fails in the second batch: the first batch and its other prompt are journaled

    def reply(body):
        if last_user(body) == killed["at"]:
            return revoked_once_asked(server, "What is 9 + 9?")
        return thinking_reply(body)

    with FakeOpenAI(reply) as server:
        config = synth_config(server, path, select={"strategy": "best", "min_score": 2.0})
        with pytest.raises(Exception, match="401"):
            run_synthesize(config, ctx)
        journaled = [r["thinking_mode"] for r in read_jsonl(ctx.stage_dir / "data" / "samples.jsonl")]
        assert sorted(journaled) == ["off", "on", "on"]
        write_prompts(path)  # the row's own mode is gone: the recipe's `on` applies
        killed["at"] = None
        run_synthesize(config, ctx)
        asked = {(last_user(b), b["chat_template_kwargs"]["thinking_mode"]) for b in server.requests}
    assert ("Berapa 2 + 3?", "on") in asked
    # the samples taken with thinking off stay in the journal but are no row's
    assert {r["thinking_mode"] for r in read_jsonl(ctx.stage_dir / "data" / "synthesized.jsonl")} == {"on"}
    first = read_jsonl(ctx.stage_dir / "data" / "synthesized.jsonl")[0]
    assert first["messages"][0]["content"] == "Berapa 2 + 3?" and first["thinking_mode"] == "on"
    assert first["messages"][1]["reasoning_content"] == "checking Berapa 2 + 3?"


def test_samples_journaled_under_another_mixed_draw_are_sampled_again(tmp_path, tiny_model_dir, tokenizer_dir,
                                                                     monkeypatch):
    """A `mixed` draw gives each prompt its mode and changed with tempa (by position, then by content): a run killed
    under one draw and resumed under the other kept samples in the mode they were not sampled in."""
    import tempa.alignment.synthesize_stage as stage_module

    monkeypatch.setenv("TEACHER_KEY", SECRET)
    path = write_prompts(tmp_path / "prompts.jsonl")
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(thinking_reply) as server:
        config = synth_config(server, path, sampling={"n": 3, "temperature": 0.7, "max_new_tokens": 64,
                                                      "batch_size": 2, "thinking": {"mode": "mixed", "ratio": 0.5}})
        run_synthesize(config, ctx)
        first = {r["messages"][0]["content"]: r["thinking_mode"]
                 for r in read_jsonl(ctx.stage_dir / "data" / "synthesized.jsonl")}
        assert sorted(first.values()) == ["off", "off", "on", "on"]
        monkeypatch.setattr(stage_module, "load_prompts", flipped_thinking(stage_module.load_prompts))
        sent = len(server.requests)
        run_synthesize(config, ctx)
        assert len(server.requests) == 2 * sent
        asked = {last_user(b): b["chat_template_kwargs"]["thinking_mode"] for b in server.requests[sent:]}
    again = {r["messages"][0]["content"]: r["thinking_mode"]
             for r in read_jsonl(ctx.stage_dir / "data" / "synthesized.jsonl")}
    assert again == asked == {question: "off" if mode == "on" else "on" for question, mode in first.items()}


def test_status_says_how_far_an_interrupted_synthesize_stage_got(tmp_path, tiny_model_dir, tokenizer_dir,
                                                                 monkeypatch):
    """`tempa status` said only `interrupted` for a distillation killed at prompt 150,000: the kind had no resume hook.
    It names what each pass has journaled, and nothing (so a re-run may start over) only when nothing is."""
    from tempa.recipes.runner import stage_kind

    monkeypatch.setenv("TEACHER_KEY", SECRET)
    hook = stage_kind("synthesize").resume_point
    assert hook is not None
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    assert hook(ctx.stage_dir) is None

    def reply(body):  # fails in the second batch: the first batch and its other prompt are journaled
        return revoked_once_asked(server, "What is 9 + 9?") if last_user(body) == "Hitung 7 × 3." else \
            math_reply(body)

    with FakeOpenAI(reply) as server, pytest.raises(Exception, match="401"):
        run_synthesize(synth_config(server, write_prompts(tmp_path / "p.jsonl")), ctx)
    assert hook(ctx.stage_dir) == "3 prompts sampled"
    scores = ctx.stage_dir / "data" / "scores.jsonl"
    scores.write_text('{"id": "a", "results": []}\n')  # killed while scoring (the teacher pass complete)
    assert hook(ctx.stage_dir) == "3 prompts sampled, 1 prompt scored"


def test_a_judge_server_that_is_down_is_refused_before_the_teacher_samples(tmp_path, tiny_model_dir, tokenizer_dir,
                                                                            monkeypatch):
    """The judge's server not started (or a wrong port) was found when scoring began, after the teacher had sampled,
    and been paid for, every prompt. It is refused at once, naming the recipe field and the URL."""
    import socket

    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with socket.socket() as sock:  # bound, then closed: nothing listens there, so a connection is refused
        sock.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(math_reply) as server, pytest.raises(Exception) as err:
        run_synthesize(synth_config(server, write_prompts(tmp_path / "p.jsonl"), rewards=[
            {"type": "answer"}, {"type": "judge", "backend": {"type": "http", "base_url": down, "model": "judge",
                                                            "max_retries": 1, "backoff_s": 0.01}}]), ctx)
    assert str(err.value).startswith("judge 'judge' (rewards[1].backend), checked before its first "
                                     f"request: GET {down}/models (model judge): the server cannot be reached")
    assert server.requests == []


def test_a_changed_reward_rescoring_asks_the_judge_nothing_it_answered_before(tmp_path, tiny_model_dir,
                                                                              tokenizer_dir, monkeypatch):
    """Any change to the rewards (a weight, a verifier added before the judge) started the score journal over, and
    every judge request was paid for again (a teacher trial counted 52 new judge requests for a weight change of
    another reward), while the plan said "answers whose request is unchanged are reused". The judges' replies are
    journaled by request: the rescoring reads them."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(math_reply) as teacher, FakeOpenAI(lambda body: chat_response(["Good. [[8]]"])) as judge:
        def config(weight: float, *extra: dict) -> SynthesizeStageConfig:
            rewards = [*extra, {"type": "answer", "weight": weight},
                       {"type": "judge", "backend": {"type": "http", "base_url": judge.base_url, "model": "judge",
                                                     "backoff_s": 0.01}}]
            return synth_config(teacher, prompts, rewards=rewards)

        first = run_synthesize(config(1.0), ctx)
        asked = len(judge.requests)
        assert asked == 3 * len(MATH)  # n=3 samples of every prompt
        run_synthesize(config(0.5), ctx)  # another weight of another reward
        run_synthesize(config(0.5, {"type": "language"}), ctx)  # a verifier added before the judge
        assert len(judge.requests) == asked
        assert (ctx.stage_dir / "data" / "judge_replies.jsonl").is_file()
        assert first.rows == run_synthesize(config(1.0), ctx).rows
        run_synthesize(synth_config(teacher, prompts, rewards=[  # another judge model: asked anew
            {"type": "answer"}, {"type": "judge", "backend": {"type": "http", "base_url": judge.base_url,
                                                              "model": "judge-2", "backoff_s": 0.01}}]), ctx)
        assert len(judge.requests) == 2 * asked


def test_no_judge_is_paid_to_rate_a_sample_the_stage_never_keeps(tmp_path, tiny_model_dir, tokenizer_dir,
                                                                 monkeypatch):
    """Every sample was judged, the cut-off and empty ones too, which `keep_incomplete: false` then rejected (a trial:
    4 of 16 judge requests bought nothing). They are not judged unless kept; a journal that judged them all (an
    earlier tempa's) is kept as it is."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    cut = "What is 10 - 4?"

    def reply(body):
        response = math_reply(body)
        if last_user(body) == cut:
            response = chat_response(MATH[cut][2], finish="length")
        return response

    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(reply) as teacher, FakeOpenAI(lambda body: chat_response(["Good. [[8]]"])) as judge:
        def config(**extra) -> SynthesizeStageConfig:
            return synth_config(teacher, prompts, rewards=[{"type": "answer"}, {
                "type": "judge", "backend": {"type": "http", "base_url": judge.base_url, "model": "judge",
                                             "backoff_s": 0.01}}], **extra)

        run_synthesize(config(), ctx)
        judged = {body["messages"][-1]["content"] for body in judge.requests}
        assert len(judge.requests) == 3 * (len(MATH) - 1) and not any(cut in text for text in judged)
        reasons = {r["messages"][0]["content"]: r["reason"] for r in read_jsonl(ctx.stage_dir / "data" / "rejects.jsonl")}
        assert reasons[cut] == "incomplete"

        run_synthesize(config(keep_incomplete=True), ctx)  # now they may be kept: judged, and only they
        assert len(judge.requests) == 3 * len(MATH)
        assert sum(cut in body["messages"][-1]["content"] for body in judge.requests) == 3

        meta = ctx.stage_dir / "data" / "scores.jsonl.meta.json"
        signed = json.loads(meta.read_text())
        assert signed.pop("judged") == "all"
        meta.write_text(json.dumps(signed, sort_keys=True))  # as an earlier tempa signed it: every sample judged
        run_synthesize(config(), ctx)
        assert len(judge.requests) == 3 * len(MATH) and json.loads(meta.read_text())["judged"] == "complete"


def test_a_judges_refused_key_is_found_before_the_teacher_is_paid(tmp_path, tiny_model_dir, tokenizer_dir, monkeypatch):
    """The servers were checked for being up, without a key: a judge's wrong key was found after the teacher's whole
    pass (a trial: 40 teacher requests, then 8 x 401). The check sends the key each request would send."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    monkeypatch.setenv("JUDGE_KEY", "sk-revoked")
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)

    def models(headers):
        if headers.get("Authorization") != "Bearer sk-right":
            return 401, {"error": {"message": "Incorrect API key provided"}}, {}
        return {"data": [{"id": "judge"}]}

    with FakeOpenAI(math_reply) as teacher, FakeOpenAI(lambda body: chat_response(["[[8]]"]), models) as judge:
        config = synth_config(teacher, prompts, rewards=[{"type": "judge", "backend": {
            "type": "http", "base_url": judge.base_url, "model": "judge", "api_key_env": "JUDGE_KEY", "backoff_s": 0.01}}])
        with pytest.raises(StageError) as info:
            run_synthesize(config, ctx)
        assert teacher.requests == [] and judge.requests == []
        message = str(info.value)
        assert "HTTP 401: " in message and "does not accept the key in $JUDGE_KEY (api_key_env)" in message, message
        assert "sk-revoked" not in message
        monkeypatch.setenv("JUDGE_KEY", "sk-right")
        run_synthesize(config, ctx)
        assert teacher.requests and judge.requests
        assert judge.gets[-1]["Authorization"] == "Bearer sk-right"

    # OpenAI's restricted project keys may list no models and still generate: a 401 over a missing scope is no refusal
    scoped = (401, {"error": {"message": "You have insufficient permissions for this operation. Missing scopes: "
                                         "api.model.read."}}, {})
    with FakeOpenAI(math_reply) as teacher, FakeOpenAI(lambda body: chat_response(["[[8]]"]),
                                                       lambda headers: scoped) as judge:
        monkeypatch.setenv("JUDGE_KEY", "sk-restricted")
        run_synthesize(synth_config(teacher, prompts, rewards=[{"type": "judge", "backend": {
            "type": "http", "base_url": judge.base_url, "model": "judge", "api_key_env": "JUDGE_KEY",
            "backoff_s": 0.01}}]), make_context(tmp_path / "scoped", "distill", start_model=tiny_model_dir,
                                                tokenizer_dir=tokenizer_dir, chat_template="", seed=1))
        assert judge.gets and judge.requests


def test_a_reply_with_its_reasoning_twice_is_not_kept(tmp_path, tiny_model_dir, tokenizer_dir, monkeypatch):
    """A teacher that sends its reasoning both as reasoning_content and as a think block in the text: selection by
    judge or total kept such replies, and the sft stage then rejected them (malformed_reasoning), paid for twice."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "What is 9 + 9?"}], "language": "en",
                                   "answer": "18"}) + "\n")

    def twice(body):
        return chat_response(["<think>nine plus nine</think>The answer is 18.", "The answer is 18, nine and nine."],
                             reasoning=["nine plus nine", "nine plus nine"])

    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    with FakeOpenAI(twice) as server:
        config = synth_config(server, prompts, sampling={"n": 2, "temperature": 0.7, "max_new_tokens": 64},
                              rewards=[{"type": "answer"}])
        result = run_synthesize(config, ctx)
    (row,) = read_jsonl(Path(result.dataset))
    assert row["messages"][-1]["content"] == "The answer is 18, nine and nine."
    from tempa.sft.curation import check_reasoning

    assert check_reasoning(row["messages"]) is None  # what the sft stage checks


def test_thinking_on_rows_that_came_back_without_reasoning_are_counted_and_said(tmp_path, tiny_model_dir,
                                                                              tokenizer_dir, monkeypatch):
    """A hosted teacher that ignores chat_template_kwargs never reasons: rows sampled with thinking on were kept with
    no trace, labelled on, and trained as thinking off, with no count and no warning."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    ctx = context(tmp_path, tiny_model_dir, tokenizer_dir)
    import re

    def plain(body):  # no reasoning anywhere: no field, no think block
        return chat_response([re.sub(r"<think>.*?</think>", "", text) for text in MATH[last_user(body)][2]])

    with FakeOpenAI(plain) as server:
        result = run_synthesize(synth_config(server, prompts), ctx)
    stats = json.loads((ctx.stage_dir / "data" / "stats.json").read_text())
    assert stats["thinking_on_without_reasoning"] == result.rows > 0
    assert result.notes == [f"distill: {result.rows} of the {result.rows} rows sampled with thinking on came back "
                            "without reasoning (does the teacher honour chat_template_kwargs?); the sft stage trains "
                            "them with thinking off"]
