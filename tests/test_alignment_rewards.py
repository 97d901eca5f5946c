"""Each reward on crafted responses; the SEA-IFEval language gate; a tiny reward model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tempa.alignment.completions import Completion, assistant_message, split_think
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import (
    AnswerReward,
    FormatReward,
    LanguageReward,
    LengthPenalty,
    RewardModelReward,
    RewardSet,
    ScoreItem,
    ScoringEnv,
    answer_match,
    combine,
    format_checks,
    language_match,
    length_penalty,
)
from tempa.chat_templates.thinking import split_reasoning

ON = "<think>\n"  # what llama3_thinking pre-fills with thinking on
OFF = "<think>\n</think>\n"  # ... and with thinking off


def env(tmp_path: Path, tokenizer_dir: Path | None = None) -> ScoringEnv:
    return ScoringEnv(policy_dir=tmp_path, tokenizer_dir=tokenizer_dir or tmp_path)


def prompt(language: str | None = None, answer=None, mode: str | None = "on", text: str = "question") -> PromptRow:
    return PromptRow(id="p", messages=[{"role": "user", "content": text}], language=language, answer=answer,
                     thinking_mode=mode)


# --------------------------------------------------------------------------- think splitting


def test_split_handles_prefilled_inline_and_server_separated_reasoning():
    prefilled = Completion(text="add them: 2+3\n</think>\n\nHasilnya 5.", prefill=ON)
    assert split_think(prefilled).reasoning == "add them: 2+3"
    assert split_think(prefilled).answer == "Hasilnya 5."
    # R1 style: no opening tag at all, the closing tag on its own line still separates
    r1 = split_reasoning("thinking...\n</think>\n\nanswer")
    assert (r1.reasoning, r1.answer, r1.closed) == ("thinking...", "answer", True)
    # elsewhere, it is text
    assert split_think(Completion(text="Use </think> to close.")).answer == "Use </think> to close."
    server = Completion(text="Hasilnya 5.", reasoning="2+3=5", finish_reason="stop")
    assert (split_think(server).reasoning, split_think(server).answer) == ("2+3=5", "Hasilnya 5.")
    unclosed = Completion(text="still thinking and thinking", prefill=ON, finish_reason="length")
    assert split_think(unclosed).answer == "" and not split_think(unclosed).closed
    assert assistant_message(prefilled) == {"role": "assistant", "content": "Hasilnya 5.",
                                            "reasoning_content": "add them: 2+3"}


# --------------------------------------------------------------------------- answer


@pytest.mark.parametrize(
    ("answer", "gold", "match", "expected"),
    [
        ("Hasilnya adalah 63.", "63", "auto", 1.0),
        ("The answer is 36.", "63", "auto", 0.0),
        (r"So the result is \boxed{\frac{1}{2}}", "0.5", "math", 1.0),
        ("There are 12 books left", "12", "math", 1.0),
        ("Sentimennya: Positif!", "positif", "contains", 1.0),
        ("Positif!", "positif", "auto", 1.0),  # not math: the accuracy suite's equality
        ("Negatif", "positif", "auto", 0.0),
        ("  POSITIVE. ", "positive", "exact", 1.0),
        ("It is positive", "positive", "exact", 0.0),
        ("Final answer: B", "B", "regex", 1.0),
        ("Final answer: C", "B", "regex", 0.0),
        ("anything", None, "auto", None),  # no reference: does not apply
        ("Jawaban: 7", ["6", "7"], "auto", 1.0),  # any accepted answer
    ],
)
def test_answer_match(answer, gold, match, expected):
    pattern = r"Final answer:\s*([A-D])" if match == "regex" else None
    assert answer_match(answer, gold, match, pattern) == expected


def test_answer_reward_reads_the_answer_not_the_reasoning():
    # the right number appears only in the reasoning; the visible answer is wrong
    item = ScoreItem(prompt(answer="15"), Completion(text="2*2+11 = 15\n</think>\n\nHasilnya 16.", prefill=ON))
    record = RewardSet([AnswerReward()], env(Path("."))).score([item])[0]
    assert record["scores"]["answer"] == 0.0


# --------------------------------------------------------------------------- language


def test_language_match_and_abstentions():
    assert language_match("Saya pergi ke pasar untuk membeli buah dan sayur segar.", "id")[0] == 1.0
    assert language_match("I went to the market to buy fresh fruit and vegetables.", "id") == (0.0, "en")
    assert language_match("ตอนนี้มานีมีหนังสือทั้งหมด 65 เล่ม", "th")[0] == 1.0
    assert language_match("42", "th") == (None, None)  # too few letters to tell
    assert language_match("Jakarta saja.", "th") == (None, None)  # 11 letters: still too few
    assert language_match("Some text in English here", None) == (None, None)  # no target
    # Malay and Indonesian count as one language by default, not when the groups are emptied
    malay = "Saya sedang belajar bahasa Melayu di universiti tempatan bersama kawan-kawan saya."
    detected = language_match(malay, "ms", equivalent=())[1]
    other = "id" if detected == "ms" else "ms"
    assert language_match(malay, other)[0] == 1.0
    assert language_match(malay, other, equivalent=())[0] == 0.0
    # A target written as Filipino matches Tagalog text without any group: one language, two codes.
    assert language_match("Pumunta kami sa palengke kahapon para bumili ng isda.", "fil", equivalent=()) == (1.0, "tl")


def test_language_reward_ignores_code_and_math():
    """An Indonesian answer whose code and formula outweigh its prose is still Indonesian."""
    answer = ("Berikut contoh fungsi Python:\n```python\ndef factorial(n):\n    if n == 0:\n        return 1\n"
              "    return n * factorial(n - 1)\n\nprint(factorial(5))\n```\nHasilnya $5! = 120$.")
    item = ScoreItem(prompt(language="id", mode="off"), Completion(text=answer, prefill=OFF))
    record = RewardSet([LanguageReward()], env(Path("."))).score([item])[0]
    assert record["scores"]["language"] == 1.0 and record["details"]["language"]["detected"] in ("id", "ms")
    with pytest.raises(ValueError, match="did you mean 'tl'"):
        LanguageReward(languages=["id", "tagalog"])


def test_sea_ifeval_rule_correct_answer_in_wrong_language_fails():
    rewards = [AnswerReward(), LanguageReward()]
    row = prompt(language="id", answer="15", mode="off")
    right = Completion(text="Jadi hasilnya adalah lima belas, yaitu 15.", prefill=OFF)
    wrong_language = Completion(text="So the final result is fifteen, which is 15.", prefill=OFF)
    records = RewardSet(rewards, env(Path("."))).score([ScoreItem(row, right), ScoreItem(row, wrong_language)])
    assert records[0]["scores"]["answer"] == 1.0 and records[0]["scores"]["language"] == 1.0
    assert records[1]["scores"]["language"] == 0.0
    assert records[1]["scores"]["answer"] == 0.0  # correct, but gated by the language check
    assert records[1]["details"]["answer"]["gated_by_language"] is True
    ungated = RewardSet([AnswerReward(), LanguageReward(gate=False)], env(Path(".")))
    assert ungated.score([ScoreItem(row, wrong_language)])[0]["scores"]["answer"] == 1.0


def test_a_short_answer_is_not_outscored_by_a_longer_one_for_its_length():
    """An answer too short to detect a language in ("Kết quả là 8.") got no language score, and a sample's total
    adds only the scores that apply: any longer answer that read as the right language won by the whole language
    weight. A preference round chose 'Kết quả là b bú phố2808 th phốếìn.' (total 2.0) over 'Kết quả là 8.' (1.0),
    both wrong; DPO learned length. A non-empty answer with too little prose now passes (nothing in it is in
    another language); an empty one has no score."""
    row = prompt(language="vi", answer="12", mode="off")
    short, long, empty, english = (Completion(answer, prefill=OFF) for answer in (
        "Kết quả là 8.", "Kết quả là b bú phố2808 th phốếìn và thêm vài quả nữa trong hộp.", "",
        "The result is eight apples and a few more in the box."))
    records = RewardSet([AnswerReward(), LanguageReward()], env(Path("."))).score(
        [ScoreItem(row, c) for c in (short, long, empty, english)])
    totals = [r["scores"]["total"] for r in records]
    assert records[0]["scores"]["language"] == records[1]["scores"]["language"] == 1.0
    assert totals[0] == totals[1]  # both wrong, both in Vietnamese: length decides nothing
    assert records[2]["scores"]["language"] is None  # no answer: nothing to judge
    assert records[3]["scores"]["language"] == 0.0 and totals[3] < totals[0]
    # reasoning too short to detect passes as well (the score counted only the answer's verdict, or none)
    reasoned = RewardSet([LanguageReward(reasoning={"languages": ["target"]})], env(Path(".")))
    think = prompt(language="vi", answer="12", mode="on")
    brief, full = (Completion(reasoning + "\n</think>\n\nKết quả là mười hai quả táo trong ba hộp.", prefill=ON)
                   for reasoning in ("4 x 3 = 12.", "Mỗi hộp có bốn quả táo, ba hộp là mười hai quả táo."))
    verdicts = [r["details"]["language"] for r in reasoned.score([ScoreItem(think, brief), ScoreItem(think, full)])]
    assert verdicts[0].get("reasoning") == verdicts[1].get("reasoning") == 1.0


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("completion", "mode", "failed"),
    [
        (Completion("steps\n</think>\n\nThe answer.", prefill=ON, finish_reason="stop"), "on", set()),
        (Completion("steps and more steps", prefill=ON, finish_reason="length"), "on", {"think", "answer", "ended"}),
        (Completion("The answer.", prefill=OFF, finish_reason="stop"), "off", set()),
        # thinking off, but the model wrote reasoning anyway (no pre-fill: e.g. an HTTP server)
        (Completion("<think>hmm</think>The answer.", finish_reason="stop"), "off", {"think"}),
        # thinking on, no block at all
        (Completion("The answer.", finish_reason="stop"), "on", {"think"}),
        (Completion("a\n</think>\n\nb </think> c", prefill=ON, finish_reason="stop"), "on", {"no_stray_tags"}),
        (Completion("steps\n</think>\n\n", prefill=ON, finish_reason="stop"), "on", {"answer"}),
    ],
)
def test_format_checks(completion, mode, failed):
    checks = format_checks(completion, mode)
    assert {name for name, ok in checks.items() if not ok} == failed


def test_format_leaves_out_the_end_check_when_the_backend_cannot_tell():
    checks = format_checks(Completion("The answer.", prefill=OFF, finish_reason=None), "off")
    assert "ended" not in checks and all(checks.values())
    score = RewardSet([FormatReward()], env(Path("."))).score(
        [ScoreItem(prompt(mode="on"), Completion("steps and more", prefill=ON, finish_reason="length"))])[0]
    assert 0.0 < score["scores"]["format"] < 1.0  # some checks pass (no stray tags), others fail


# --------------------------------------------------------------------------- length, combination


def test_length_penalty_and_combination():
    assert length_penalty(100, free_tokens=150, per_token=0.01) == 0.0
    assert length_penalty(200, free_tokens=150, per_token=0.01) == pytest.approx(-0.5)
    assert length_penalty(10_000, free_tokens=0, per_token=0.01, max_penalty=2.0) == -2.0
    assert combine({"a": 1.0, "b": None, "c": -0.5}, {"a": 2.0, "b": 5.0, "c": 1.0}) == pytest.approx(1.5)
    assert combine({"a": None}, {"a": 1.0}) is None
    short = Completion("ok", prefill=OFF, completion_tokens=5)
    long = Completion("ok " * 50, prefill=OFF, completion_tokens=60)
    records = RewardSet([LengthPenalty(per_token=0.1, free_tokens=10, weight=2.0)], env(Path("."))).score(
        [ScoreItem(prompt(mode="off"), short), ScoreItem(prompt(mode="off"), long)])
    assert records[0]["scores"]["total"] == 0.0
    assert records[1]["scores"]["length"] == -1.0  # 50 tokens over, capped at max_penalty 1.0
    assert records[1]["scores"]["total"] == -2.0  # weight 2
    chars = RewardSet([LengthPenalty(unit="chars", per_token=0.01)], env(Path("."))).score(
        [ScoreItem(prompt(mode="off"), short), ScoreItem(prompt(mode="off"), long)])
    assert chars[0]["details"]["length"] == {"chars": 2}
    assert chars[1]["scores"]["length"] < chars[0]["scores"]["length"] < 0


def test_reward_names_must_be_unique():
    from pydantic import ValidationError

    from tempa.alignment import PreferenceStageConfig

    with pytest.raises(ValidationError, match="two rewards are named 'length'"):
        PreferenceStageConfig.model_validate({
            "name": "p", "prompts": {"path": str(Path(__file__))},
            "rewards": [{"type": "length"}, {"type": "length", "per_token": 0.1}],
        })


# --------------------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 1
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("rm") / "rm"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def baked_tokenizer(tmp_path_factory, tiny_model_dir) -> Path:
    from tempa.chat_templates import bake_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tok"
    bake_tokenizer(tiny_model_dir, "llama3_thinking", out)
    return out


def test_reward_model_scores_match_a_plain_forward_pass(reward_model_dir, baked_tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    answers = ["Hasilnya 15.", "Jawabannya adalah lima belas, karena dua kali dua sebelas.", "?"]
    items = [ScoreItem(prompt(mode="off", text="Hitunglah 2 × 2 + 11."), Completion(a, prefill=OFF)) for a in answers]
    rewards = RewardSet([RewardModelReward(model=str(reward_model_dir), batch_size=2)], env(tmp_path, baked_tokenizer))
    scores = [r["scores"]["reward_model"] for r in rewards.score(items)]

    # Reference: each conversation alone (no padding), rendered with the recipe's template.
    tokenizer = AutoTokenizer.from_pretrained(baked_tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    expected = []
    for item in items:
        text = tokenizer.apply_chat_template(
            [*item.prompt.messages, {"role": "assistant", "content": split_think(item.completion).answer}],
            tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            expected.append(float(model(**ids).logits[0, 0]))
    assert scores == pytest.approx(expected, abs=1e-4)  # batching with padding changes nothing
    assert len({round(s, 6) for s in scores}) == 3  # different responses, different rewards

    squashed = RewardSet([RewardModelReward(model=str(reward_model_dir), normalize="sigmoid")],
                         env(tmp_path, baked_tokenizer)).score(items[:1])[0]["scores"]["reward_model"]
    assert squashed == pytest.approx(1 / (1 + math.exp(-expected[0])), abs=1e-5)


def test_a_nan_reward_model_score_fails_the_sample_instead_of_deciding_the_pair(reward_model_dir, baked_tokenizer,
                                                                               tmp_path):
    import json

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tempa.alignment.pairs import Scored, best_worst
    from tempa.alignment.selection import select_samples

    # A diverged checkpoint: its score head holds NaN, so every logit is NaN.
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    broken = tmp_path / "rm-nan"
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(reward_model_dir).save_pretrained(broken)

    items = [ScoreItem(prompt(mode="off"), Completion(a, prefill=OFF, finish_reason="stop"))
             for a in ("A long and careful answer.", "Short.", "Medium answer here.")]
    rewards = RewardSet([LengthPenalty(unit="chars", per_token=0.01),
                         RewardModelReward(name="rm", model=str(broken))], env(tmp_path, baked_tokenizer))
    records = rewards.score(items)
    assert [r["scores"]["rm"] for r in records] == [None, None, None]
    assert [r["scores"]["total"] for r in records] == [None, None, None]
    assert all(r["details"]["rm"]["non_finite"] == "nan" for r in records)
    json.loads(json.dumps(records, allow_nan=False))  # the score files stay valid JSON
    totals = [r["scores"]["total"] for r in records]
    # Unscored samples are neither paired nor kept (with NaN totals the NaN sample was chosen and kept).
    assert best_worst([Scored(i, t, rendered=(i,)) for i, t in enumerate(totals)]) == (None, "fewer_than_two_scored")
    assert select_samples(totals, min_score=0.0) == ([], "no_score")


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city (Celsius)",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
LOOP = [  # an agent's tool loop as the prompt reader hands it over (arguments and result as JSON text)
    {"role": "user", "content": "Cuaca di Jakarta sekarang?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Jakarta"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": 31}'},
]


@pytest.mark.parametrize("call", [
    '{"name": "get_weather", "parameters": {"city": "Jakarta"}}',  # Llama 3.1: the JSON call is the whole turn
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Jakarta"}}\n</tool_call>',  # ChatML (Qwen2.5)
])
def test_a_sampled_tool_call_is_in_no_language_and_never_gates(call):
    """A tool call is code, in no language: it passes the language reward (py3langid read the JSON call as Nigerian
    Pidgin, so with a language column every tool call lost to any prose reply and gated the answer reward)."""
    loop = PromptRow(id="loop", messages=LOOP, language="id", answer="31", thinking_mode="off", tools=[WEATHER])
    rewards = RewardSet([LanguageReward(), AnswerReward(match="contains")], env(Path(".")))
    called, replied = rewards.score([ScoreItem(loop, Completion(call, prefill=OFF)),
                                     ScoreItem(loop, Completion(f"Sekarang suhu di Jakarta 31 derajat.\n{call}",
                                                                prefill=OFF))])
    assert called["scores"]["language"] == 1.0 and "gated_by_language" not in called["details"].get("answer", {})
    assert replied["scores"]["language"] == 1.0  # the text beside a call is still judged


def _forward(model_dir: Path, text: str) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        return float(AutoModelForSequenceClassification.from_pretrained(model_dir).eval()(**ids).logits[0, 0])


def test_a_reward_model_reads_a_tool_loop_with_its_tools(reward_model_dir, baked_tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tempa.sft.stage_api import StageError

    items = [ScoreItem(PromptRow(id="loop", messages=LOOP, thinking_mode="off", tools=[WEATHER]),
                       Completion("Jakarta 31 derajat.", prefill=OFF, finish_reason="stop"))]
    reply = {"role": "assistant", "content": "Jakarta 31 derajat."}
    recipe_template = AutoTokenizer.from_pretrained(baked_tokenizer)
    with_tools = recipe_template.apply_chat_template([*LOOP, reply], tools=[WEATHER], tokenize=False)
    assert "Current weather of a city" in with_tools  # the recipe's template offers the tools ...
    [score] = [r["scores"]["reward_model"] for r in RewardSet(
        [RewardModelReward(model=str(reward_model_dir))], env(tmp_path, baked_tokenizer)).score(items)]
    assert score == pytest.approx(_forward(reward_model_dir, with_tools), abs=1e-4)  # ... and the reward model reads them
    assert score != pytest.approx(_forward(reward_model_dir, recipe_template.apply_chat_template(
        [*LOOP, reply], tokenize=False)), abs=1e-4)  # (without them it would have scored another text)

    # A reward model whose own template ignores tools still scores the loop, as its template renders it.
    ignoring = tmp_path / "rm-own-template"
    AutoModelForSequenceClassification.from_pretrained(reward_model_dir).save_pretrained(ignoring)
    tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
    tokenizer.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    tokenizer.save_pretrained(ignoring)
    [own] = [r["scores"]["reward_model"] for r in RewardSet(
        [RewardModelReward(model=str(ignoring))], env(tmp_path, baked_tokenizer)).score(items)]
    expected = 'user: Cuaca di Jakarta sekarang?\nassistant: \ntool: {"temperature": 31}\nassistant: Jakarta 31 derajat.\n'
    assert own == pytest.approx(_forward(ignoring, expected), abs=1e-4)

    # One that cannot render a tool turn stops the stage with one line naming the reward model and the prompt.
    tokenizer.chat_template = ("{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('Conversation roles "
                               "must alternate user/assistant') }}{% endif %}{{ m.content }}{% endfor %}")
    tokenizer.save_pretrained(ignoring)
    with pytest.raises(StageError, match=rf"reward 'reward_model': the chat template of {ignoring} cannot render prompt "
                                         r"loop \(it offers tools or holds a tool loop\): Conversation roles must alternate"):
        RewardSet([RewardModelReward(model=str(ignoring))], env(tmp_path, baked_tokenizer)).score(items)
    # a stage's prompt is keyed by a hash of its content: the error names its place in the file
    import dataclasses

    keyed = [ScoreItem(dataclasses.replace(item.prompt, id="5d41402abc4b2a76", meta={"row": "prompts.jsonl:4"}),
                       item.completion) for item in items]
    with pytest.raises(StageError, match=r"cannot render prompt prompts\.jsonl:4 \(it offers tools"):
        RewardSet([RewardModelReward(model=str(ignoring))], env(tmp_path, baked_tokenizer)).score(keyed)


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("答えは42です。", "42"),  # digits between kana: math-verify found no number at all
        ("答え：４２", "42"),  # full-width colon and digits, as a Japanese IME types them
        ("４２", "42"),
        ("全部で８４個です。", "84"),
        ("所以答案是12。", "12"),  # Chinese: the same adjacency
    ],
)
def test_answer_match_reads_numbers_in_cjk_text(answer, gold):
    assert answer_match(answer, gold) == 1.0
    wrong = str(int(gold) + 1)
    assert answer_match(answer, wrong) == 0.0


def test_answer_match_reads_full_width_thousands():
    assert answer_match("合計は１，２３４円です。", "1234") == 1.0
    assert answer_match("合計は１，２３４円です。", "234") == 0.0
