"""A teacher's paid replies are journaled one by one as they arrive, not once per batch: a kill, or a request that
fails for good, loses none of the replies its batch already received (a trial: batch_size 8, one request hanging,
`kill -9` after the other 7 had arrived: 15 replies received, 8 journaled, 7 asked and paid for again)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_alignment_fakes import FakeOpenAI, chat_response, last_user
from test_teacher_text_stages import _rows, japanese

from tempa.alignment.backends import LazyBackend
from tempa.alignment.backends_http import HTTPBackend, HTTPBackendError
from tempa.alignment.generation import GenerationParams
from tempa.alignment.prompts import PromptRow
from tempa.alignment.sampling import JsonlStore, sample_prompts
from tempa.alignment.translate_stage import TranslateStageConfig, run_translate
from tempa.sft.throughput_summary import latest_progress
from tests.stage_helpers import make_context


def journaled(path: Path) -> list[str]:
    """The ids of a journal's whole records, in file order (what a `kill -9` at this moment leaves)."""
    if not path.is_file():
        return []
    return [json.loads(line)["id"] for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]


def once(check: Callable[[], bool], seconds: float = 20.0) -> None:
    """Waits until ``check()`` holds, at most ``seconds``: a request held back until then (its assertions read what
    was there, not how long it took)."""
    end = time.monotonic() + seconds
    while not check() and time.monotonic() < end:
        time.sleep(0.02)


def rows(count: int) -> list[PromptRow]:
    return [PromptRow(id=f"p{i:02d}", messages=[{"role": "user", "content": f"question {i}"}], thinking_mode="off")
            for i in range(count)]


def teacher(url: str, **settings) -> LazyBackend:
    """An HTTP teacher as the stages hold one: built on first use."""
    return LazyBackend(lambda: HTTPBackend(url, "teacher", backoff_s=0.01, **settings))


def test_a_batchs_replies_are_journaled_while_one_of_its_requests_is_still_answered(tmp_path):
    path = tmp_path / "syn" / "data" / "samples.jsonl"
    seen: dict[str, object] = {}

    def reply(body: dict) -> dict:
        if last_user(body) == "question 12":  # batch 2, place 4: held until the batch's other 7 are journaled
            stage = path.parent.parent
            once(lambda: len(journaled(path)) >= 15 and getattr(latest_progress(stage), "done", 0) >= 15)
            seen["journal"], seen["status"] = journaled(path), latest_progress(stage)
        return chat_response([f"{last_user(body)} seed {body['seed']} #{i}" for i in range(body["n"])])

    params = GenerationParams(n=2, temperature=1.0, batch_size=8, seed=7)
    with FakeOpenAI(reply) as server:
        records, _ = sample_prompts(rows(16), teacher(server.base_url), params, JsonlStore(path, "sig"),
                                    show_progress=False)
    # a kill then would have kept every reply received: 15 prompts, not the first batch's 8
    assert sorted(seen["journal"]) == [f"p{i:02d}" for i in range(16) if i != 12]
    assert (seen["status"].done, seen["status"].items) == (15, 16)  # `tempa status` moved reply by reply too
    assert journaled(path)[-1] == "p12" and len(journaled(path)) == 16
    # each prompt kept the seed of its batch and place: seed + 1000 * batch + place * n
    for i, record in enumerate(records):
        seed = 7 + 1000 * (i // 8) + (i % 8) * 2
        assert [c["text"] for c in record["completions"]] == [f"question {i} seed {seed} #{j}" for j in range(2)]
    assert len(server.requests) == 16


def test_a_request_that_fails_for_good_keeps_the_other_replies_of_its_batch(tmp_path):
    """alignment/README.md: after a request fails for good the requests in flight "are waited for and their replies
    kept". A synthesize stage asked 7 answered prompts of that batch again on its resume."""
    path = tmp_path / "samples.jsonl"
    prompts = rows(24)
    batch = [f"question {i}" for i in range(8, 16)]

    def failing(body: dict):
        if last_user(body) == "question 12":  # answered only once the rest of its batch is in flight
            once(lambda: {last_user(b) for b in server.requests} >= set(batch))
            return 500, {"error": {"message": "internal error"}}, {}
        return chat_response([f"seed {body['seed']}"])

    params = GenerationParams(n=1, batch_size=8, seed=3)
    with FakeOpenAI(failing) as server, pytest.raises(HTTPBackendError, match="500"):
        sample_prompts(prompts, teacher(server.base_url, max_retries=1), params, JsonlStore(path, "sig"),
                       show_progress=False)
    assert sorted(journaled(path)) == [f"p{i:02d}" for i in range(16) if i != 12]

    with FakeOpenAI(lambda body: chat_response([f"seed {body['seed']}"])) as server:
        records, stats = sample_prompts(prompts, teacher(server.base_url), params, JsonlStore(path, "sig"),
                                        show_progress=False)
    # only the prompt that failed, with the seed its place gives it, and the batch never asked
    assert {last_user(b): b["seed"] for b in server.requests} == {
        "question 12": 3 + 1000 + 4, **{f"question {i}": 3 + 2000 + i - 16 for i in range(16, 24)}}
    assert (stats["resumed"], stats["processed"]) == (15, 9)
    assert [r["id"] for r in records] == [p.id for p in prompts]


def test_a_translate_stage_journals_its_teachers_and_judges_replies_as_they_arrive(tmp_path, tiny_model_dir):
    """The translate (and generate_prompts) teacher pass and its judge gate, each through its stage's own backend."""
    source = _rows(tmp_path / "prompts.jsonl", [{"prompt": f"Please explain question number {i} in detail."}
                                                for i in range(8)])
    fast = {"type": "http", "max_retries": 1, "backoff_s": 0.01}
    ctx = make_context(tmp_path / "run", "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    data = ctx.stage_dir / "data"
    seen: dict[str, list[str]] = {}

    def reply(body: dict) -> dict:
        text = last_user(body)
        journal = data / ("teacher.jsonl" if body["model"] == "translator" else "judge.jsonl")
        if re.search(r"(number |番号)5\D", text):  # held until the pass's 7 other replies are journaled
            once(lambda: len(journaled(journal)) >= 7)
            seen[body["model"]] = journaled(journal)
        return chat_response([japanese(text)])

    with FakeOpenAI(reply) as server:
        config = TranslateStageConfig.model_validate({
            "name": "t", "target_language": "ja", "source": {"path": source},
            "teacher": {"backend": {**fast, "base_url": server.base_url, "model": "translator"}, "batch_size": 8},
            "judge": {"backend": {**fast, "base_url": server.base_url, "model": "judge"}, "min_score": 8,
                      "batch_size": 8}})
        assert run_translate(config, ctx).rows == 8
    assert len(seen["translator"]) == 7 and len(seen["judge"]) == 7
    assert len(journaled(data / "teacher.jsonl")) == 8 and len(journaled(data / "judge.jsonl")) == 8
