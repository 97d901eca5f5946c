"""LLM judge: score parsing (malformed output included), rubric filling, judge rewards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_alignment_fakes import ScriptedBackend

from tempa.alignment.completions import Completion
from tempa.alignment.generation import GenerationParams
from tempa.alignment.judge import Judge, JudgeSettings, fill, parse_judge_score
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import JudgeReward, RewardSet, ScoreItem, ScoringEnv, judge_prompt


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("The answer is correct and clear. Rating: [[8]]", 8.0),
        ("Rating: [[ 7.5 ]]", 7.5),
        ("First I thought [[3]], but on reflection: [[9]]", None),  # two ratings in one sentence: ambiguous
        ("Weighing it: [[3]] for style, [[9]] for content.\n\nRating: [[7]]", 7.0),  # the verdict ends the reply
        ("Rating: [[8]]\n\nFinal rating: [[8]].", 8.0),  # the same rating twice
        ("Rating: [6]", 6.0),  # MT-Bench's single-bracket fallback, a rating alone on the last line
        ("Some explanation.\n**Rating:** [7]/10", 7.0),
        ("Some explanation.\n[4]", 4.0),
        ("<think>maybe [[2]]?</think>\nFinal: [[10]]", 10.0),  # the think block is ignored
        ("<think>I would say [[4]] but I never finish", None),
        # what a rating word leads to, or a rating alone on its line, when several differ (a review's cases: the
        # first fix of the "Step [2]" parse lost these clearly rated replies as unparsable)
        ("Rating: [8]\nSee reference [2] for details.", 8.0),
        ("Rating: [[8]] (a perfect answer would be [[10]])", 8.0),
        ("Rating: [[8]]\n\n(For reference, a perfect answer would be [[10]].)", 8.0),
        ("Rating: [[8]]\n\nFor reference, a perfect answer would be: [[10]]", 8.0),
        ("Rating: [8] out of 10", 8.0),
        ("Rating: [8]\n\nThe answer is good overall.", 8.0),
        ("[8]\n\nGood, but it misses one edge case.", 8.0),
        ("Overall Rating (1-10): [8]", 8.0),
        ("I would rate this response [8].", 8.0),
        ("This response deserves a [7].", 7.0),
        ("Helpfulness: [[8]]\nAccuracy: [[6]]\nOverall: [[7]]", 7.0),
        ("Overall: [[7]]\n(Helpfulness [[8]], accuracy [[6]])", 7.0),
        ("1. Accuracy [9]\n2. Clarity [7]\nRating: [8]", 8.0),
        ("Rating: [[11]]", None),  # out of range
        ("Rating: [[0]]", None),
        ("I rate it eight out of ten.", None),
        ("", None),
        ("[[]] [[x]] [[-3]]", None),
    ],
)
def test_parse_judge_score(reply, expected):
    assert parse_judge_score(reply) == expected


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        # a trial's judge: every reply scored 2 from the step it cited, none counted unparsable
        ("Step [2] is wrong. Rating: 8/10", "no [[rating]]"),
        ("Step [2] is wrong, the total is off. Rating: 8/10", "no [[rating]]"),
        ("The answer lists [3] items but the question asked for [5]. Overall: 9 out of 10.", "no [[rating]]"),
        ("Rating: [[3]] for style, rating [[9]] for content.", "several different [[ratings]]"),
        ("Rating: [8]. Score: [6].", "several different [[ratings]]"),
    ],
)
def test_a_rating_is_taken_only_when_the_reply_is_unambiguous(reply, problem):
    """A `[N]` in prose (a step, a count) or one of several differing `[[N]]` was taken as the rating: wrong ratings,
    never counted unparsable, so max_unparsable never fired."""
    from tempa.alignment.judge import rating_problem

    assert parse_judge_score(reply) is None
    assert rating_problem(reply) == problem


def test_fill_replaces_known_placeholders_only():
    rubric = 'Q: {question}\nA: {answer}\nReturn JSON like {"score": 5}.{language_clause} {unknown}'
    text = fill(rubric, question="Berapa 2+2?", answer="4", language="id")
    assert text.startswith("Q: Berapa 2+2?\nA: 4\n")
    assert '{"score": 5}' in text and "{unknown}" in text
    assert "Indonesian" in text
    assert "Indonesian" not in fill(rubric, question="q", answer="a", language=None)


def test_judge_counts_unparsable_replies_and_never_crashes():
    replies = iter(["Solid. [[9]]", "no idea what to say", "[[12]]", "ok [[3]]"])
    backend = ScriptedBackend(lambda prompt, j: next(replies))
    judge = Judge(backend, JudgeSettings(), seed=0)
    verdicts = judge.rate(["p1", "p2", "p3", "p4"])
    assert [v.score for v in verdicts] == [9.0, None, None, 3.0]
    assert verdicts[1].raw == "no idea what to say"
    assert judge.stats()["judge_unparsable"] == 2 and judge.stats()["judge_calls"] == 4


def test_judge_reward_scales_and_an_unparsable_reply_fails_the_sample(monkeypatch, tmp_path):
    import tempa.alignment.rewards as rewards_module

    def fake_build(config, **kwargs):
        def reply(prompt: str, j: int) -> str:
            return "Great answer [[10]]" if "GOLDEN" in prompt else "hmm"
        return ScriptedBackend(reply)

    monkeypatch.setattr(rewards_module, "build_backend", fake_build)
    row = PromptRow(id="p", messages=[{"role": "user", "content": "Tell me"}], language="en", thinking_mode="off")
    items = [ScoreItem(row, Completion("a GOLDEN reply")), ScoreItem(row, Completion("a poor reply"))]
    configs = [JudgeReward(scale="unit", weight=2.0), {"type": "length", "per_token": 0.0}]
    from tempa.alignment.preference_config import PreferenceStageConfig

    parsed = PreferenceStageConfig.model_validate(
        {"name": "x", "prompts": {"path": str(Path(__file__))}, "rewards": configs}).rewards
    reward_set = RewardSet(parsed, ScoringEnv(policy_dir=tmp_path, tokenizer_dir=tmp_path))
    records = reward_set.score(items)
    assert records[0]["scores"]["judge"] == 1.0  # (10 - 1) / 9
    assert records[0]["scores"]["total"] == 2.0
    assert records[1]["scores"]["judge"] is None  # unparsable: no rating ...
    assert records[1]["scores"]["total"] is None  # ... and a failed score, not "the other rewards decide"
    assert records[1]["scores"]["length"] == 0.0
    assert records[1]["details"]["judge"] == {"rating": None, "unparsable": True, "problem": "no [[rating]]", "raw": "hmm"}
    assert reward_set.stats() == {"judge_calls": 2, "judge_replies_reused": 0, "judge_unparsable": 1, "judge_seconds": pytest.approx(0, abs=5)}


def test_judge_prompt_uses_the_multi_turn_rubric_for_second_turns():
    first = PromptRow(id="a", messages=[{"role": "user", "content": "Q1"}], answer="42")
    second = PromptRow(id="b", messages=[{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                                         {"role": "user", "content": "Q2"}])
    single = judge_prompt(None, ScoreItem(first, Completion("my answer")))
    assert "[Question]\nQ1" in single and "[Reference answer]\n42" in single and "my answer" in single
    multi = judge_prompt(None, ScoreItem(second, Completion("answer two")))
    assert "LAST" in multi and "[User]\nQ1" in multi and "[Assistant]\nA1" in multi and "[User]\nQ2" in multi
    assert judge_prompt(None, ScoreItem(first, Completion("x")), use_reference=False).count("42") == 0


def test_render_conversation_names_each_tool_result_by_its_call_and_leaves_plain_turns_as_they_were():
    from tempa.alignment.judge import render_conversation

    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
             {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    assert render_conversation(plain) == "[System]\nBe brief.\n\n[User]\nQ1\n\n[Assistant]\nA1\n\n[User]\nQ2"

    loop = [
        {"role": "user", "content": "Kurs dan cuaca?"},
        {"role": "assistant", "content": "Saya cek dulu.", "tool_calls": [  # two calls (ChatML), one bare
            {"id": "a", "type": "function", "function": {"name": "rate", "arguments": '{"pair": "USD/IDR"}'}},
            {"id": "b", "name": "weather", "arguments": {"city": "Medan"}}]},
        {"role": "tool", "tool_call_id": "b", "content": "28C"},  # answered out of order: named by its id
        {"role": "tool", "tool_call_id": "a", "content": {"rate": 16000}},
    ]
    tools = [{"name": "rate", "description": "Exchange rate"}, {"type": "function", "function": {"name": "weather"}}]
    assert render_conversation(loop, tools) == (
        "[Tools]\n- rate: Exchange rate\n- weather\n\n[User]\nKurs dan cuaca?\n\n"
        '[Assistant]\nSaya cek dulu.\nTool call: rate({"pair": "USD/IDR"})\nTool call: weather({"city": "Medan"})\n\n'
        '[Tool result: weather]\n28C\n\n[Tool result: rate]\n{"rate": 16000}')


def test_a_judge_reply_whose_reasoning_a_server_split_off_keeps_it_in_the_raw_reply():
    """A judge served with a reasoning parser (`vllm serve ... --reasoning-parser deepseek_r1`) gets its reasoning back
    beside the content. The raw reply dropped it: a judge cut off while reasoning (no content) was quoted as '' in the
    stage's 'gave no [[rating]]' error and its score details, with nothing to say why. It is kept in its think block,
    which the rating is never read from."""
    from test_alignment_fakes import FakeOpenAI, chat_response, last_user

    from tempa.alignment.backends_http import HTTPBackend

    def reply(body):
        if "cut" in last_user(body):  # ran out of max_tokens while reasoning: no content at all
            response = chat_response([""], finish="length", reasoning=["The answer is close to [[4]] but"])
            response["choices"][0]["message"]["content"] = None
            return response
        return chat_response(["Clear and correct. Rating: [[8]]"], reasoning=["It might deserve [[3]]; no."])

    with FakeOpenAI(reply) as server:
        judge = Judge(HTTPBackend(server.base_url, "judge", timeout_s=5, max_retries=0), JudgeSettings())
        done, cut = judge.rate(["judge this", "judge this cut"])
    assert done.score == 8.0 and cut.score is None  # a rating in the reasoning never counts
    assert "It might deserve [[3]]; no." in done.raw and done.raw.endswith("Clear and correct. Rating: [[8]]")
    assert "The answer is close to [[4]] but" in cut.raw
    assert judge.stats()["judge_unparsable"] == 1
    assert (done.cut_off, cut.cut_off) == (False, True)


def test_a_stage_stopped_by_a_judge_out_of_tokens_says_to_raise_its_max_new_tokens():
    """A reasoning judge (Qwen3, R1) that runs out of max_new_tokens before its [[rating]] was reported like one that
    ignores the rubric ("use a judge that follows the rubric"); the replies cut off are counted and the fix named."""
    from tempa.alignment.rewards import JudgeReward, judge_failures

    reward = JudgeReward(backend={"type": "http", "base_url": "http://j.invalid/v1", "model": "j"})

    def record(detail):
        return {"scores": {"judge": detail.get("rating")}, "details": {"judge": detail}}

    cut = {"rating": None, "unparsable": True, "raw": "<think>Let me weigh", "cut_off": True}
    rubric = {"rating": None, "unparsable": True, "raw": "Looks fine to me."}
    scores = [{"results": [record(cut), record(cut), record(rubric), record({"rating": 7.0})]}]
    (failures,) = judge_failures([reward], scores).values()
    assert (failures.replies, failures.unparsable, failures.cut_off) == (4, 3, 2)
    message = failures.refusal(0.1, "judge 'judge'")
    assert "; 2 of them ran out of the judge's max_new_tokens before a rating: raise it." in message
    scores = [{"results": [record(rubric), record({"rating": 7.0})]}]
    assert "max_new_tokens" not in judge_failures([reward], scores)["judge"].refusal(0.1, "judge 'judge'")


def test_judge_replies_are_journaled_per_call_of_batch_size_so_a_failed_request_costs_only_its_call(tmp_path):
    """A judge sent every prompt of a scoring chunk in one backend call and journaled the replies only when all came
    back: one request failing (HTTP 500 after retries) lost the call's other replies, and the rerun paid for them
    again. Calls of the judge's batch_size, each journaled as it returns, keep the earlier calls' replies."""
    from test_alignment_fakes import FakeOpenAI, chat_response, last_user

    from tempa.alignment.backends_http import HTTPBackend
    from tempa.alignment.judge import ReplyJournal

    failing = {"on": True}

    def reply(body):
        if failing["on"] and last_user(body) == "judge p5":
            return 500, {"error": {"message": "judge overloaded"}}, {}
        return chat_response([f"{last_user(body)}: [[7]]"])

    prompts = [f"judge p{i}" for i in range(12)]
    settings = JudgeSettings(batch_size=4)
    with FakeOpenAI(reply) as server:
        def judge() -> Judge:  # one request at a time: which requests a failing call sent is then fixed
            backend = HTTPBackend(server.base_url, "judge", timeout_s=5, max_retries=0, concurrency=1)
            return Judge(backend, settings, replies=ReplyJournal(tmp_path / "judge_replies.jsonl", "j"))

        with pytest.raises(Exception, match="500"):
            judge().rate(prompts)
        # Call 1 (p0-p3) came back and is journaled; call 2 sent p4, kept as it arrived, then p5 failed.
        assert [last_user(body) for body in server.requests] == prompts[:6]
        assert len(ReplyJournal(tmp_path / "judge_replies.jsonl", "j").replies) == 5
        failing["on"] = False
        rerun = judge()
        verdicts = rerun.rate(prompts)
    assert [last_user(body) for body in server.requests[6:]] == prompts[5:]  # p0-p4 are not paid for again
    assert [v.score for v in verdicts] == [7.0] * 12 and verdicts[0].raw == "judge p0: [[7]]"
    assert rerun.stats()["judge_calls"] == 7 and rerun.stats()["judge_replies_reused"] == 5


def test_after_a_judge_request_fails_for_good_no_request_is_sent_and_every_paid_reply_is_kept(tmp_path):
    """A trial: one prompt's request failed for good (HTTP 500 after its retries) and tempa went on sending the rest
    of the call's requests, then threw away every reply of the call, paid for or not (0 of 8 kept). Now the queued
    requests are never sent, and the replies of those in flight are journaled before the error goes up."""
    import threading
    import time

    from test_alignment_fakes import FakeOpenAI, chat_response, last_user

    from tempa.alignment.backends_http import HTTPBackend
    from tempa.alignment.judge import ReplyJournal

    arrived, failed = threading.Barrier(4, timeout=10), threading.Event()

    def reply(body):
        prompt = last_user(body)
        if prompt in ("judge p0", "judge p1", "judge p2", "judge p3"):
            arrived.wait()  # the first four requests are all in flight before any is answered
        if prompt == "judge p1":
            failed.set()
            return 500, {"error": {"message": "poisoned"}}, {}
        if failed.wait(10):  # answered after p1's failure, which the client needs a moment to see
            time.sleep(0.3)
        return chat_response([f"{prompt}: [[7]]"])

    prompts = [f"judge p{i}" for i in range(8)]
    journal = tmp_path / "judge_replies.jsonl"
    with FakeOpenAI(reply) as server:
        backend = HTTPBackend(server.base_url, "judge", timeout_s=20, max_retries=0, concurrency=4)
        with pytest.raises(Exception, match=r"500.*poisoned"):
            Judge(backend, JudgeSettings(batch_size=8), replies=ReplyJournal(journal, "j")).rate(prompts)
    assert sorted(last_user(body) for body in server.requests) == prompts[:4]  # p4-p7 were never sent
    kept = [entry["reply"]["text"] for entry in map(json.loads, journal.read_text(encoding="utf-8").splitlines())]
    assert sorted(kept) == ["judge p0: [[7]]", "judge p2: [[7]]", "judge p3: [[7]]"]


def test_a_request_retrying_stops_once_another_of_its_call_failed_for_good():
    """Each retry is a request paid for: after one request of a call failed for good, another one kept retrying its
    503 up to max_retries, for replies the failed call throws away."""
    import threading
    import time

    from test_alignment_fakes import FakeOpenAI, last_user

    from tempa.alignment.backends_http import HTTPBackend
    from tempa.alignment.generation import GenerationParams

    arrived = threading.Barrier(2, timeout=10)

    def reply(body):
        if len([b for b in server.requests if last_user(b) == last_user(body)]) == 1:
            arrived.wait()
        if last_user(body) == "bad":
            return 400, {"error": {"message": "no such model"}}, {}
        time.sleep(0.3)  # busy, answered after the other request's refusal
        return 503, {"error": {"message": "overloaded"}}, {}

    with FakeOpenAI(reply) as server:
        backend = HTTPBackend(server.base_url, "judge", timeout_s=20, max_retries=5, backoff_s=0.01, concurrency=2)
        with pytest.raises(Exception, match=r"400.*no such model"):
            backend.sample([[{"role": "user", "content": "busy"}], [{"role": "user", "content": "bad"}]],
                           GenerationParams())
    assert [last_user(body) for body in server.requests].count("busy") == 1


def test_an_http_judges_calls_are_never_smaller_than_its_concurrency(tmp_path):
    """Calls of the judge's batch_size (8 by default) capped an HTTP judge at 8 requests in flight, whatever its
    backend's concurrency (the shipped Swallow recipe's judge: 64)."""
    import threading
    import time

    from test_alignment_fakes import FakeOpenAI, chat_response

    from tempa.alignment.backends_http import HTTPBackend

    in_flight, most, lock = [0], [0], threading.Lock()

    def reply(body):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.2)  # long enough that a call's requests overlap; what is counted is how many, not how long
        with lock:
            in_flight[0] -= 1
        return chat_response(["[[7]]"])

    with FakeOpenAI(reply) as server:
        backend = HTTPBackend(server.base_url, "judge", timeout_s=10, concurrency=16)
        Judge(backend, JudgeSettings(batch_size=4)).rate([f"judge p{i}" for i in range(16)])
    assert most[0] > 4


@pytest.mark.parametrize("journaled", [True, False])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_a_judge_request_repeated_in_one_call_is_asked_once_and_every_repeat_gets_its_reply(
        tmp_path, journaled, temperature):
    """Identical samples of one prompt give identical judge prompts: each was sent and paid for (a trial: 42 of 80
    requests repeated an earlier one). Each distinct request is asked once, also above temperature 0, where the
    backend's seed differs by place in the call: the journal keys a reply by the request alone, so a rerun gave the
    repeats one reply anyway, and identical answers get one rating."""
    from test_alignment_fakes import FakeOpenAI, chat_response, last_user

    from tempa.alignment.backends_http import HTTPBackend
    from tempa.alignment.judge import ReplyJournal

    def reply(body):  # the n-th request rates [[n]]: repeats with one reply show one rating
        return chat_response([f"{last_user(body)} [[{len(server.requests)}]]"])

    prompts = ["rate a", "rate b", "rate a", "rate c", "rate b", "rate a"]
    with FakeOpenAI(reply) as server:
        backend = HTTPBackend(server.base_url, "judge", timeout_s=5, max_retries=0, concurrency=1)
        journal = ReplyJournal(tmp_path / "judge_replies.jsonl", "j") if journaled else None
        judge = Judge(backend, JudgeSettings(batch_size=2, temperature=temperature), replies=journal)
        verdicts = judge.rate(prompts)
    assert [last_user(body) for body in server.requests] == ["rate a", "rate b", "rate c"]  # calls: [a, b], [c]
    assert [v.score for v in verdicts] == [1.0, 2.0, 1.0, 3.0, 2.0, 1.0]
    assert judge.stats()["judge_calls"] == 3 and judge.stats()["judge_replies_reused"] == 3


def _preference_recipe(tmp_path: Path, model: Path, extra: str) -> Path:
    import shutil
    import textwrap

    shutil.copy(Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl",
                tmp_path / "prompts.jsonl")
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: t
        base_model: {model}
        stages:
          - name: align
            kind: preference
            prompts: {{path: prompts.jsonl}}
        """) + textwrap.indent(textwrap.dedent(extra), "    "))
    return path


@pytest.mark.parametrize(("extra", "expected"), [
    ("rewards: [{type: judge, rubric: 'Rate {answr} to {question}: [[N]]'}]",
     "r.yaml:7: stages[0].rewards[0].rubric (stage 'align'): unknown placeholder {answr} (did you mean {answer}?); "
     "known: {question}, {answer}, {reference}, {conversation}, {language}, {language_clause}"),
    ("rewards: [{type: judge, rubric: 'Rate the reply to {question}: [[N]]'}]",
     "r.yaml:7: stages[0].rewards[0].rubric (stage 'align'): has no {answer} placeholder: "
     "the judge would never see the sample it rates, and every sample of a prompt would get the same rating"),
    ("rewards: [{type: judge, rubric: rubrik.md}]",
     "r.yaml:7: stages[0].rewards[0].rubric (stage 'align'): 'rubrik.md' names no file (a relative path is read "
     "from the recipe's folder)"),
    ("rewards: [{type: format}]\npairs: {strategy: revise, revise: {backend: {type: transformers}, "
     "prompt: 'Improve: {answer} ({reference})'}}",
     "r.yaml:8: stages[0].pairs.revise.prompt (stage 'align'): unknown placeholder {reference}; known: {question}, "
     "{answer}, {language}, {language_clause}, {language_clause_short}"),
    ("rewards: [{type: format}]\npairs: {strategy: revise, revise: {backend: {type: transformers}, "
     "prompt: 'Answer {question} well.'}}",
     "r.yaml:8: stages[0].pairs.revise.prompt (stage 'align'): has no {answer} placeholder: the reviser would write a "
     "new answer, not rewrite the rejected one"),
])
def test_a_rubric_or_revise_prompt_is_checked_at_load_naming_the_field(tmp_path, tiny_model_dir, extra, expected):
    """`tempa plan` accepted a rubric without {answer} (every sample of a prompt rated the same), a typo
    placeholder (sent as written) and `rubric: rubric.md` (sent as the text 'rubric.md')."""
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.loader import load_recipe

    with pytest.raises(RecipeError) as info:
        load_recipe(_preference_recipe(tmp_path, tiny_model_dir, extra))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_rubric_in_a_markdown_file_is_read_and_json_braces_stay(tmp_path, tiny_model_dir):
    from tempa.recipes.loader import load_recipe

    rubric = 'Rate {answer} to {question}{language_clause}. Reply as JSON {"rating": 7} and [[N]].'
    (tmp_path / "rubric.md").write_text(rubric, encoding="utf-8")
    loaded = load_recipe(_preference_recipe(tmp_path, tiny_model_dir, "rewards: [{type: judge, rubric: rubric.md}]"))
    assert loaded.stage("align").rewards[0].rubric == rubric


def test_a_rating_out_of_the_rubrics_range_is_told_apart_from_a_reply_without_one():
    """A reply `[[11]]` was reported as one that gave no [[rating]] (`unparsable`), hiding a judge on another scale."""
    from tempa.alignment.judge import rating_problem

    replies = iter(["Superb. [[11]]", "no idea what to say", "Rating: [0]", "ok [[7]]"])
    judge = Judge(ScriptedBackend(lambda prompt, j: next(replies)), JudgeSettings())
    verdicts = judge.rate(["p1", "p2", "p3", "p4"])
    assert [v.problem for v in verdicts] == ["out of range (1-10)", "no [[rating]]", "out of range (1-10)", None]
    assert [v.score for v in verdicts] == [None, None, None, 7.0] and judge.unparsable == 3
    assert rating_problem("<think>[[5]]</think> [[10.5]]") == "out of range (1-10)"


def test_a_judge_on_another_scale_is_named_as_such_where_the_stage_stops_and_in_its_stats():
    """`[[11]]` replies were counted as replies that "gave no [[rating]]", which sends a user looking for a parsing
    problem; the refusal, the stats and the round's log line now count the ratings out of range. Read from the replies'
    text, so a journal an earlier tempa wrote (no `problem` in its details) says it too."""
    from tempa.alignment.rewards import JudgeReward, check_judges, judge_stats
    from tempa.sft.stage_api import StageError

    judge = JudgeReward(type="judge", max_unparsable=0.25)
    raws = ["Superb. [[11]]", "Bad. [[0]]", "no rating here", "Fine. [[7]]"]
    scores = [{"results": [{"scores": {"judge": None if "[[7]]" not in raw else 7.0},
                            "details": {"judge": {"unparsable": True, "raw": raw} if "[[7]]" not in raw else {}}}]}
              for raw in raws]
    assert judge_stats([judge], scores) == {"judge_replies": 4, "judge_unparsable": 3, "judge_unparsable_fraction": 0.75,
                                            "judge_out_of_range": 2}
    with pytest.raises(StageError) as info:
        check_judges([judge], scores, "synthesize")
    assert "2 of them gave a rating out of range (1-10): a rubric of your own must ask for [[1]] to [[10]]" in str(
        info.value)


def test_judge_replies_an_earlier_tempa_journaled_under_the_judges_address_are_read(tmp_path):
    """An HTTP judge's base_url left its identity (it is where the server is, not who answers): the replies an earlier
    tempa journaled under a key with the address would have been asked, and paid for, again at the next rescoring."""
    from test_alignment_fakes import FakeOpenAI, chat_response

    from tempa.alignment.judge import ReplyJournal
    from tempa.alignment.rewards import JUDGE_REPLIES

    row = PromptRow(id="p", messages=[{"role": "user", "content": "Berapa 2 + 3?"}], answer="5")
    items = [ScoreItem(row, Completion(text=text, finish_reason="stop")) for text in ("5", "Jawabannya 5.")]
    with FakeOpenAI(lambda body: chat_response(["Good. [[8]]"])) as server:
        reward = JudgeReward(type="judge", backend={"type": "http", "base_url": server.base_url, "model": "judge"})
        env = ScoringEnv(policy_dir=tmp_path, tokenizer_dir=tmp_path, replies_dir=tmp_path, replies_identity={})
        first = RewardSet([reward], env).score(items)
        assert len(server.requests) == 2
        # The journal as an earlier tempa keyed it: the identity held the backend's address.
        path = tmp_path / JUDGE_REPLIES
        now = ReplyJournal(path, {"backend": reward.backend.model_dump(mode="json", exclude={
            "api_key_env", "timeout_s", "max_retries", "backoff_s", "concurrency", "base_url"}), "models": {}})
        earlier = {"backend": {**json.loads(now.identity)["backend"], "base_url": server.base_url}, "models": {}}
        params = GenerationParams(max_new_tokens=reward.max_new_tokens, temperature=reward.temperature, n=1, seed=0,
                                  thinking_mode=reward.thinking_mode, batch_size=reward.batch_size)
        prompts = [judge_prompt(reward.rubric, it, use_reference=reward.use_reference) for it in items]
        assert set(now.replies) == {now.key(p, params) for p in prompts}  # the test builds the key as the code does
        old = ReplyJournal(tmp_path / "old.jsonl", earlier)
        path.write_text("".join(json.dumps({"key": old.key(p, params), "reply": now.replies[now.key(p, params)].to_dict()})
                                + "\n" for p in prompts))
        again = RewardSet([reward], env).score(items)
    assert len(server.requests) == 2 and again == first


def test_a_rubric_path_with_a_space_in_its_folder_is_read_as_a_file(tmp_path, tiny_model_dir):
    """`rubric: my rubrics/judge.md` was taken as inline text and refused for having no {answer} placeholder."""
    from tempa.recipes.loader import load_recipe

    (tmp_path / "my rubrics").mkdir()
    (tmp_path / "my rubrics" / "judge.md").write_text("Rate {answer} to {question}: [[N]]", encoding="utf-8")
    loaded = load_recipe(_preference_recipe(tmp_path, tiny_model_dir,
                                            "rewards: [{type: judge, rubric: 'my rubrics/judge.md'}]"))
    assert loaded.stage("align").rewards[0].rubric == "Rate {answer} to {question}: [[N]]"


def test_a_judge_reply_journaled_after_a_torn_last_line_is_read_back_and_never_bought_again(tmp_path, caplog):
    """A trial: a kill left judge_replies.jsonl's last line half written; the resumed run appended its first new reply
    onto the fragment, that reply was unreadable afterwards, and a rescoring bought it again (the docs promise
    rescoring "pays for no reply twice")."""
    from tempa.alignment.judge import ReplyJournal

    path = tmp_path / "judge_replies.jsonl"
    backend = ScriptedBackend(lambda prompt, j: f"{prompt}: Rating: [[6]]")

    def judge() -> Judge:
        return Judge(backend, JudgeSettings(batch_size=2), replies=ReplyJournal(path, "j"))

    judge().rate(["p0", "p1"])
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"key": "deadbeef", "reply": {"text": "Rating: [[')
    with caplog.at_level("WARNING"):
        resumed = judge()
        assert [v.score for v in resumed.rate(["p0", "p1", "p2", "p3"])] == [6.0] * 4
    assert resumed.stats()["judge_calls"] == 2 and "cut off" in caplog.text
    rescoring = judge()
    verdicts = rescoring.rate(["p0", "p1", "p2", "p3"])
    assert rescoring.stats()["judge_calls"] == 0 and rescoring.stats()["judge_replies_reused"] == 4
    assert [v.raw for v in verdicts] == [f"p{i}: Rating: [[6]]" for i in range(4)]
    assert all(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())


def test_a_judge_reply_journal_skips_an_unreadable_line_inside_it_naming_it(tmp_path, caplog):
    """Judge replies are read as every journal is (one reader): a glued line inside the file is named by its number
    and skipped, and the replies after it are reused, not bought again."""
    from tempa.alignment.judge import ReplyJournal

    path = tmp_path / "judge_replies.jsonl"
    backend = ScriptedBackend(lambda prompt, j: f"{prompt}: Rating: [[6]]")
    Judge(backend, JudgeSettings(batch_size=4), replies=ReplyJournal(path, "j")).rate(["p0", "p1", "p2"])
    first, second, third = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(first + second[:20] + third + third)  # p1's line torn, p2's appended onto it, then whole again
    with caplog.at_level("WARNING"):
        judge = Judge(backend, JudgeSettings(batch_size=4), replies=ReplyJournal(path, "j"))
    assert [v.score for v in judge.rate(["p0", "p1", "p2"])] == [6.0] * 3
    assert judge.stats()["judge_calls"] == 1 and judge.stats()["judge_replies_reused"] == 2
    assert f"{path}: 1 unreadable line(s) skipped and removed (line 2:" in caplog.text
    # and taken out of the file, so the next resume does not warn of it again
    assert all(json.loads(line)["key"] for line in path.read_text(encoding="utf-8").splitlines())


def test_a_judge_stopped_for_unparsable_replies_is_told_each_problem_with_its_count():
    """A trial: the stage said "gave no [[rating]]" of replies that held several different ratings, sending the user
    looking for a missing one. Each problem is named with its count, read from the details a reply was scored with,
    or from its text where an earlier tempa stored no problem."""
    from tempa.alignment.rewards import JudgeReward, check_judges
    from tempa.sft.stage_api import StageError

    judge = JudgeReward(type="judge", max_unparsable=0.1)
    raws = (["Could be [[3]] or [[8]]."] * 2 + ["Good answer."] * 3 + ["Superb. [[11]]"] + ["Fine. [[7]]"] * 4)
    details = [{"unparsable": True, "raw": raw, **({"problem": "several different [[ratings]]"} if i == 0 else {})}
               for i, raw in enumerate(raws)]
    scores = [{"results": [{"scores": {"judge": 7.0 if "[[7]]" in raw else None},
                            "details": {"judge": {} if "[[7]]" in raw else detail}}]}
              for raw, detail in zip(raws, details, strict=True)]
    with pytest.raises(StageError) as info:
        check_judges([judge], scores, "align round 1")
    message = str(info.value)
    assert "judge 'judge' gave no usable rating in 6 of 10 replies (60% > max_unparsable 0.1: 3 gave no [[rating]], " \
        "2 gave several different [[ratings]], 1 gave a rating out of range (1-10)); e.g." in message
    only_several = [{"results": [{"scores": {"judge": None}, "details": {"judge": {"unparsable": True, "raw": raws[0]}}}]}]
    with pytest.raises(StageError, match=r"judge 'judge' gave several different \[\[ratings\]\] in 1 of 1 replies "
                       r"\(100% > max_unparsable 0\.1\); e\.g\."):
        check_judges([judge], only_several, "align round 1")
