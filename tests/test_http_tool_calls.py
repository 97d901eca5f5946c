"""A server that parses tool calls (OpenAI's API, `vllm serve --enable-auto-tool-choice`) answers a tool prompt with
``content: null``, structured ``tool_calls`` and ``finish_reason: tool_calls``. The HTTP backend hands such a reply on
as the text the recipe's chat template writes for that call, the form transformers and vLLM samples take, so the
rewards, the judge, pair building and DPO see the call (not an empty, unfinished reply)."""

from __future__ import annotations

import json

import pytest
from test_alignment_fakes import FakeOpenAI

from tempa.alignment import PreferenceStageConfig
from tempa.alignment.backends import HTTPBackendConfig, build_backend
from tempa.alignment.backends_http import HTTPBackendError
from tempa.alignment.completions import Completion, assistant_message, split_think, without_tool_calls
from tempa.alignment.generation import GenerationParams
from tempa.alignment.pair_rendering import completion_ids
from tempa.alignment.preference_stage import build_round_pairs
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import RewardSet, ScoreItem, ScoringEnv, judge_prompt
from tempa.chat_templates.thinking import mode_kwargs

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city (Celsius)",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
QUESTION = [{"role": "user", "content": "Cuaca di Jakarta dan Bangkok sekarang?"}]
REPLY = "Maaf, saya tidak bisa melihat cuaca hari ini tanpa alat yang tepat."


def call(city: str, index: int = 0) -> dict:
    # OpenAI sends the arguments as a JSON string
    return {"id": f"call_{index}", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}


def choice(index: int, *, content: str | None = None, calls: list | None = None, reasoning: str | None = None,
           finish: str = "tool_calls") -> dict:
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return {"index": index, "message": message, "finish_reason": finish}


@pytest.fixture(scope="module", params=["llama3_thinking", "chatml_thinking"])
def tokenizer_dir(request, tmp_path_factory, tiny_model_dir):
    from tempa.chat_templates import bake_tokenizer

    out = tmp_path_factory.mktemp(f"tok-{request.param}") / "tok"
    bake_tokenizer(tiny_model_dir, request.param, out)
    return out


def sample(tokenizer_dir, choices: list[dict], mode: str) -> list[Completion]:
    with FakeOpenAI(lambda body: {"choices": choices}) as server:
        backend = build_backend(HTTPBackendConfig(base_url=server.base_url, model="policy", max_retries=0),
                                policy_dir=tokenizer_dir, tokenizer_dir=tokenizer_dir, show_progress=False)
        completions = backend.sample([QUESTION], GenerationParams(n=len(choices), max_new_tokens=64),
                                     thinking_modes=[mode], tools=[[WEATHER]])[0]
    assert server.requests[0]["tools"] == [WEATHER]
    return completions


def trained_ids(tokenizer, mode: str, turn: dict) -> tuple[int, ...] | None:
    return completion_ids(tokenizer, QUESTION, [turn], mode_kwargs(mode), tools=[WEATHER])


@pytest.mark.parametrize("mode", ["off", "on"])
def test_a_structured_tool_call_is_sampled_as_the_call_the_template_writes(tokenizer_dir, mode):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    reasoning = "Perlu cek cuaca Jakarta dulu." if mode == "on" else None
    tool_call, reply = sample(tokenizer_dir, [choice(0, calls=[call("Jakarta")], reasoning=reasoning),
                                              choice(1, content=REPLY, reasoning=reasoning, finish="stop")], mode)

    # a finished turn, trained as exactly the tokens the template writes for the structured call
    assert tool_call.finish_reason == "stop" and tool_call.renders_as_written
    structured = {"role": "assistant", "content": None, "reasoning_content": reasoning, "tool_calls": [call("Jakarta")]}
    assert trained_ids(tokenizer, mode, assistant_message(tool_call)) == trained_ids(tokenizer, mode, structured)
    split = split_think(tool_call)
    assert split.reasoning == reasoning if reasoning else not split.reasoning
    assert "get_weather" in split.answer and "Jakarta" in split.answer
    assert without_tool_calls(split.answer) == ""  # a call is no prose: the language reward leaves it out

    # rewards: the format reward passes the call as it passes a transformers sample of it; the judge sees it
    prompt = PromptRow(id="p0", messages=QUESTION, language="id", thinking_mode=mode, tools=[WEATHER])
    config = PreferenceStageConfig.model_validate({
        "name": "align", "prompts": {"path": __file__}, "rewards": [{"type": "format"}, {"type": "language"}]})
    rewards = RewardSet(config.rewards, ScoringEnv(policy_dir=tokenizer_dir, tokenizer_dir=tokenizer_dir,
                                                   tokenizer=tokenizer, show_progress=False))
    results = rewards.score([ScoreItem(prompt, tool_call), ScoreItem(prompt, reply)])
    assert results[0]["scores"]["format"] == 1.0
    # a call is in no language: it passes, as the prose reply does (neither wins the other's pair for it)
    assert results[0]["scores"]["language"] == results[1]["scores"]["language"] == 1.0
    assert '"Jakarta"' in judge_prompt(None, ScoreItem(prompt, tool_call))

    # pair building: the call and the reply are two complete samples that render differently
    samples = [{"id": prompt.id, "completions": [tool_call.to_dict(), reply.to_dict()]}]
    scores = [{"id": prompt.id, "results": [{"scores": {"total": 1.0}}, {"scores": {"total": 0.0}}]}]
    rows, stats = build_round_pairs(config, [prompt], samples, scores, None, tokenizer)
    assert stats.pairs == 1 and stats.incomplete == 0
    row = rows[0]
    assert row["chosen_finish_reason"] == "stop" and row["rendered"]["differ"]
    assert trained_ids(tokenizer, mode, row["chosen"][0]) == trained_ids(tokenizer, mode, structured)


def test_parallel_calls_and_text_with_a_call_keep_every_part(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    two = [call("Jakarta", 0), call("Bangkok", 1)]
    text = "Saya cek cuaca kedua kota itu dulu, sebentar ya."
    with_text = choice(0, content=text, calls=[call("Jakarta")])
    if "im_start" not in tokenizer.chat_template:  # Llama 3.1's format writes one call per turn
        with pytest.raises(HTTPBackendError, match=r"choices\[0\]\.message\.tool_calls: the tool calls "
                           r"\['get_weather', 'get_weather'\] cannot be written .*one tool call per assistant "
                           r"message.*parallel_tool_calls: false"):
            sample(tokenizer_dir, [choice(0, calls=two)], "off")
        (completion,) = sample(tokenizer_dir, [with_text], "off")
        structured = [{"role": "assistant", "content": text, "tool_calls": [call("Jakarta")]}]
    else:
        parallel, completion = sample(tokenizer_dir, [choice(0, calls=two), with_text], "off")
        assert parallel.finish_reason == "stop"
        answer = split_think(parallel).answer
        assert answer.index('"Jakarta"') < answer.index('"Bangkok"') and without_tool_calls(answer) == ""
        assert trained_ids(tokenizer, "off", assistant_message(parallel)) == trained_ids(
            tokenizer, "off", {"role": "assistant", "content": None, "tool_calls": two})
        structured = [{"role": "assistant", "content": text, "tool_calls": [call("Jakarta")]}]
    answer = split_think(completion).answer
    assert without_tool_calls(answer) == text and '"Jakarta"' in answer
    assert trained_ids(tokenizer, "off", assistant_message(completion)) == trained_ids(tokenizer, "off", structured[0])


def test_malformed_tool_calls(tokenizer_dir):
    # arguments that are no JSON object are the model's own: kept as written, for the rewards to judge
    broken = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Jak'}}
    (completion,) = sample(tokenizer_dir, [choice(0, calls=[broken])], "off")
    assert '{"city": "Jak' in completion.text and completion.finish_reason == "stop"
    # a call without a function name is the server's fault: one line naming the server and the field
    nameless = {"id": "c", "type": "function", "function": {"arguments": "{}"}}
    with pytest.raises(HTTPBackendError, match=r"POST http://127\.0\.0\.1:\d+/v1/chat/completions \(model policy\): "
                       r"choices\[0\]\.message\.tool_calls\[0\]: expected a call naming its function"):
        sample(tokenizer_dir, [choice(0, calls=[nameless])], "off")


def test_a_backend_without_a_tokenizer_names_what_it_lacks():
    from tempa.alignment.backends_http import HTTPBackend

    with FakeOpenAI(lambda body: {"choices": [choice(0, calls=[call("Jakarta")])]}) as server, \
            pytest.raises(HTTPBackendError, match=r"\(model m\): choices\[0\]\.message\.tool_calls: the reply holds "
                          r"tool calls, and this backend has no tokenizer"):
        HTTPBackend(server.base_url, "m", max_retries=0).sample([QUESTION], GenerationParams(), tools=[[WEATHER]])
