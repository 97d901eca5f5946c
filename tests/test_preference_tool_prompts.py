"""On-policy prompts with tools: an agent's tool loop (user -> assistant tool call -> tool result) whose next
assistant turn is sampled keeps its history and its tool definitions through loading, every sampling backend, pair
building and trl's DPOTrainer; the stages and parts that cannot see them refuse such a row before any work."""

from __future__ import annotations

import json
import re
import sys
import textwrap
import types

import pytest
from test_alignment_fakes import FakeOpenAI, chat_response

from tempa.alignment.completions import Completion
from tempa.alignment.generation import GenerationParams
from tempa.alignment.prompts import PromptRow, PromptSource, load_prompts, prompt_id
from tempa.recipes.cli import main
from tempa.sft.stage_api import StageError

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city (Celsius)",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
LOOP = [
    {"role": "user", "content": "Cuaca di Jakarta sekarang?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Jakarta"}}}]},
    {"role": "tool", "tool_call_id": "c1", "content": {"temperature": 31}},
]
ROWS = [
    {"messages": LOOP, "tools": [WEATHER], "thinking_mode": "off"},
    {"prompt": "Cuaca di Bangkok?", "tools": json.dumps([WEATHER]), "thinking_mode": "off"},  # tools as JSON text
    {"prompt": "Berapa 2+2?", "thinking_mode": "off"},
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tiny_model_dir):
    from tempa.chat_templates import bake_tokenizer

    out = tmp_path_factory.mktemp("tool-tok") / "tok"
    bake_tokenizer(tiny_model_dir, "llama3_thinking", out)
    return out


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    return path


def test_a_tool_loop_prompt_keeps_its_history_and_tools_and_other_stages_refuse_it(prompts_file):
    loop, bangkok, plain = load_prompts(PromptSource(path=str(prompts_file)), seed=0, with_tools=True)
    assert [m["role"] for m in loop.messages] == ["user", "assistant", "tool"]  # ends with the tool result
    call = loop.messages[1]["tool_calls"][0]
    assert (call["function"]["arguments"], loop.messages[2]["content"]) == ('{"city": "Jakarta"}', '{"temperature": 31}')
    assert loop.tools == bangkok.tools == [WEATHER] and plain.tools is None
    assert loop.id != prompt_id(0, loop.messages)  # the tools are part of what the id names
    assert plain.id == prompt_id(2, [{"role": "user", "content": "Berapa 2+2?"}])  # a plain prompt's id is unchanged
    with pytest.raises(StageError, match=r"prompts\.jsonl: line 1: has 'tools', which only a preference stage samples "
                                         r"with; this stage would render the prompt without it"):
        load_prompts(PromptSource(path=str(prompts_file)), seed=0)
    (prompts_file.parent / "loop.jsonl").write_text(json.dumps({"messages": LOOP}) + "\n")
    with pytest.raises(StageError, match=r"loop\.jsonl: line 1: has a tool loop \(tool_calls / tool turns\)"):
        load_prompts(PromptSource(path=str(prompts_file.parent / "loop.jsonl")), seed=0)


def test_every_backend_renders_each_prompts_tools(prompts_file, tiny_model_dir, tokenizer_dir, monkeypatch):
    from tempa.alignment.backends import TransformersSampler, VLLMBackendConfig, build_backend

    prompts = load_prompts(PromptSource(path=str(prompts_file)), seed=0, with_tools=True)
    messages, tools = [p.messages for p in prompts], [p.tools for p in prompts]
    params = GenerationParams(n=1, max_new_tokens=3)

    rendered: list[str] = []

    class Recording(TransformersSampler):  # the real backend, keeping the prompt texts it rendered
        def render(self, *args, **kwargs):
            rendered.append(super().render(*args, **kwargs))
            return rendered[-1]

    sampler = Recording(tiny_model_dir, tokenizer_dir, device="cpu", show_progress=False)
    sampler.sample(messages, params, thinking_modes=["off"] * 3, tools=tools)
    offered = ["Current weather of a city" in text for text in rendered]
    assert offered == [True, True, False]
    assert '"parameters": {"city": "Jakarta"}' in rendered[0] and '{"temperature": 31}' in rendered[0]

    calls: dict = {}

    class LLM:
        def __init__(self, **kwargs):
            pass

        def generate(self, requests, sampling_params, use_tqdm=True):
            calls["prompts"] = [r["prompt_token_ids"] for r in requests]
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="x", token_ids=[1], finish_reason="stop")])
                    for _ in requests]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw))
    vllm = build_backend(VLLMBackendConfig(), policy_dir=tiny_model_dir, tokenizer_dir=tokenizer_dir)
    vllm.sample(messages, params, thinking_modes=["off"] * 3, tools=tools)
    assert [vllm.tokenizer.decode(ids) for ids in calls["prompts"]] == rendered

    with FakeOpenAI(lambda body: chat_response(["ok"])) as server:
        from tempa.alignment.backends_http import HTTPBackend

        HTTPBackend(server.base_url, "m", concurrency=1).sample(messages, params, tools=tools)
    assert [body.get("tools") for body in server.requests] == [[WEATHER], [WEATHER], None]
    assert server.requests[0]["messages"] == prompts[0].messages


def test_tool_loop_pairs_are_trained_by_dpo_with_their_tools(prompts_file, tiny_model_dir, tokenizer_dir):
    """Pairs of a tool-loop prompt render with its tools (the pair check), keep them, and trl's real DPOTrainer
    tokenises exactly the sequences the check compared."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from tempa.alignment import PreferenceStageConfig
    from tempa.alignment.pair_rendering import completion_ids
    from tempa.alignment.preference_stage import _save_pairs_dataset, build_round_pairs

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = PreferenceStageConfig.model_validate({"name": "align", "prompts": {"path": str(prompts_file)},
                                                   "rewards": [{"type": "format"}]})
    prompts = load_prompts(config.prompts, seed=0, with_tools=True)
    answers = ["Jakarta 31 derajat.", "Tidak tahu."]
    samples = [{"id": p.id, "completions": [Completion(a, prefill="<think>\n</think>\n", finish_reason="stop").to_dict()
                                            for a in answers]} for p in prompts]
    scores = [{"id": p.id, "results": [{"scores": {"total": 1.0}}, {"scores": {"total": 0.0}}]} for p in prompts]
    rows, stats = build_round_pairs(config, prompts, samples, scores, None, tokenizer)
    assert stats.pairs == 3 and [r["tools"] for r in rows] == [[WEATHER], [WEATHER], None]

    saved = _save_pairs_dataset(rows, tokenizer_dir.parent / "pairs", tokenizer_dir.parent)
    trainer = DPOTrainer(model=str(tiny_model_dir), train_dataset=load_from_disk(str(saved)), processing_class=tokenizer,
                         args=DPOConfig(output_dir=str(tokenizer_dir.parent / "out"), report_to=[], use_cpu=True,
                                        bf16=False))
    for row, example in zip(rows, trainer.train_dataset, strict=True):
        assert ("Current weather of a city" in tokenizer.decode(example["prompt_ids"])) == bool(row["tools"])
        for side in ("chosen", "rejected"):
            assert tuple(example[f"{side}_ids"]) == completion_ids(
                tokenizer, row["prompt"], row[side], row["chat_template_kwargs"], tools=row["tools"])
            assert row["rendered"][f"{side}_tokens"] == len(example[f"{side}_ids"])


def _recipe(tmp_path, model, stage: str):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nbase_model: {model}\nstages:\n" + textwrap.indent(textwrap.dedent(stage), "  "))
    return path


@pytest.mark.parametrize(("stage", "expected"), [
    ("kind: synthesize\n  rewards: [{type: format}]",
     "line 1: has 'tools', which only a preference stage samples with"),
    ("kind: preference\n  rewards: [{type: format}]\n  pairs: {strategy: revise, revise: {backend: {type: transformers}}}",
     "line 1: offers tools or holds a tool loop, but pairs.strategy 'revise' rewrites an answer from the question"),
    ("kind: preference\n  rewards: [{type: judge, rubric: 'Rate {answer} to {question}'}]",
     "line 1: holds tools or a tool loop, but judge 'judge' (rewards[0]) would see only its question, not the tools"),
])
def test_plan_refuses_tool_prompts_where_a_part_would_not_see_the_tools(tmp_path, prompts_file, tiny_model_dir, capsys,
                                                                       stage, expected):
    path = _recipe(tmp_path, tiny_model_dir, f"- name: align\n  prompts: {{path: {prompts_file}}}\n  {stage}\n")
    assert main(["plan", str(path), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert f"stage 'align' would fail: {prompts_file}: {expected}" in " ".join(err.split())
    assert "Traceback" not in err


@pytest.mark.parametrize("judge", ["{type: judge, rubric: 'Rate {answer} after {conversation}'}",
                                   "{type: judge, name: builtin}"])  # the built-in rubric shows the tool loop
def test_plan_accepts_tool_prompts_for_a_preference_stage_whose_judge_sees_the_conversation(
        tmp_path, prompts_file, tiny_model_dir, capsys, judge):
    stage = f"kind: preference\n  rewards: [{{type: format}}, {judge}]"
    path = _recipe(tmp_path, tiny_model_dir, f"- name: align\n  prompts: {{path: {prompts_file}}}\n  {stage}\n")
    assert main(["plan", str(path), "--run-dir", str(tmp_path / "run")]) == 0, capsys.readouterr().err


# The judge's transcript of LOOP as read from its row: the tools offered, the call (name and arguments), its result.
LOOP_TRANSCRIPT = """[Tools]
- get_weather: Current weather of a city (Celsius)
  parameters: {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

[User]
Cuaca di Jakarta sekarang?

[Assistant]
Tool call: get_weather({"city": "Jakarta"})

[Tool result: get_weather]
{"temperature": 31}"""


def test_the_built_in_judge_sees_the_whole_tool_loop(prompts_file):
    from tempa.alignment.rewards import ScoreItem, judge_prompt

    loop, bangkok, plain = load_prompts(PromptSource(path=str(prompts_file)), seed=0, with_tools=True)
    reply = judge_prompt(None, ScoreItem(loop, Completion("Jakarta 31 derajat.", prefill="<think>\n</think>\n")))
    assert f"[Conversation]\n{LOOP_TRANSCRIPT}\n\n[Last response]\nJakarta 31 derajat.\n" in reply
    assert "tool call" in reply.lower() and "faithfulness to the tool results" in reply

    # A prompt that only offers tools: the judge knows them, so it can judge a sampled call (here Llama 3.1's JSON).
    call = '{"name": "get_weather", "parameters": {"city": "Bangkok"}}'
    first = judge_prompt(None, ScoreItem(bangkok, Completion(call)))
    assert "[Tools]\n- get_weather: Current weather" in first and f"[User]\nCuaca di Bangkok?\n\n[Last response]\n{call}" in first
    # The reply, not the call, is held to the prompt's language.
    indonesian = judge_prompt(None, ScoreItem(PromptRow(**{**vars(bangkok), "language": "id"}), Completion(call)))
    assert "A reply to the user must be written in Indonesian" in indonesian and "tool call's name and arguments are exempt" in indonesian
    # A prompt without tools keeps its rubric and transcript.
    assert "[Tools]" not in judge_prompt(None, ScoreItem(plain, Completion("4"))) and "[Question]\nBerapa 2+2?" in judge_prompt(
        None, ScoreItem(plain, Completion("4")))


CALL_TURN = LOOP[1]


@pytest.mark.parametrize(("messages", "expected"), [
    # A result that answers no call: the template refuses to render it, so sampling would fail after the earlier stages.
    ([LOOP[0], {"role": "tool", "content": "31"}],
     "turn 1: tool turn not after an assistant turn that calls a tool"),
    # A call still waiting for its result: taking it off as a "reference" would sample a different prompt.
    (LOOP[:2], "turn 1: ends with an assistant tool call and no tool result after it"),
    ([LOOP[0], {"role": "assistant", "content": "Sebentar."}, CALL_TURN],
     "turn 2: ends with an assistant tool call and no tool result after it"),
])
def test_a_tool_prompt_in_the_wrong_order_is_refused_by_plan_naming_the_row(tmp_path, tiny_model_dir, capsys, messages,
                                                                            expected):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps(ROWS[2]) + "\n" + json.dumps({"messages": messages, "tools": [WEATHER]}) + "\n")
    with pytest.raises(StageError, match=re.escape(f"{path}: line 2: {expected}")):
        load_prompts(PromptSource(path=str(path)), seed=0, with_tools=True)
    recipe = _recipe(tmp_path, tiny_model_dir, f"- name: align\n  kind: preference\n  prompts: {{path: {path}}}\n"
                                               "  rewards: [{type: format}]\n")
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert f"stage 'align' would fail: {path}: line 2: {expected}" in " ".join(err.split())
    assert "Traceback" not in err
