"""The evaluate stage: pure scorers on crafted text, the generation backend, loss, the leaderboard."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from stage_helpers import done, make_context, trained
from tempa.merge import EvaluateStageConfig, run_evaluate
from tempa.merge.answers import (
    answer_matches,
    extract_final_number,
    final_answer_text,
    parse_number,
    thinking_off_compliant,
    thinking_on_compliant,
)
from tempa.merge.ifeval import (
    check_all,
    count_bullets,
    count_sentences,
    count_words,
    ifeval_scores,
    parse_instructions,
)
from tempa.merge.language import language_scores
from tempa.merge.leaderboard import Leaderboard, LeaderboardRow, read_leaderboard
from tempa.sft.language import Detection
from tempa.sft.language import detect as detect_language
from tempa.sft.stage_api import StageError

# --- IFEval checks --------------------------------------------------------------------------------

IF_CASES = [
    ({"type": "starts_with", "value": "Dear team"}, "dear team, hello", "Hello, dear team"),
    ({"type": "starts_with", "value": "Dear", "case_sensitive": True}, "Dear all", "dear all"),
    ({"type": "ends_with", "value": "Any questions?"}, "That is all. Any questions?\n", "Any questions? No."),
    ({"type": "word_count", "min": 3, "max": 5}, "one two three four", "one two"),
    ({"type": "word_count", "max": 3}, "it's well-known here", "one two three four"),
    ({"type": "sentence_count", "min": 2, "max": 2}, "First one. Second one!", "Only one here."),
    ({"type": "sentence_count", "min": 3}, "Satu. Dua? Tiga。", "Satu. Dua."),
    ({"type": "bullet_count", "min": 3, "max": 3}, "List:\n* a\n- b\n+ c", "* a\n* b\n---\ntext"),
    ({"type": "json_format"}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ({"type": "json_format"}, '  [1, "x"] ', "The answer is {}"),
    ({"type": "all_lowercase"}, "semua huruf kecil.", "Not lowercase"),
    ({"type": "no_commas"}, "no commas here. none at all", "one, two"),
    ({"type": "no_commas"}, "没有逗号", "一，二"),
]


@pytest.mark.parametrize(("instruction", "passing", "failing"), IF_CASES)
def test_ifeval_checks(instruction, passing, failing):
    (check,) = parse_instructions([instruction])
    assert check.check(passing) is True
    assert check.check(failing) is False


def test_ifeval_counters_and_scores():
    assert count_words("Hello, world! It's a well-known fact.") == 6
    assert count_sentences("Dr Smith came. He left! Why? Because") == 4
    assert count_sentences("") == 0
    assert count_bullets("* one\n  - two\n--- not a bullet\n-three") == 2
    checks = parse_instructions([{"type": "no_commas"}, {"type": "word_count", "max": 2}])
    scores = ifeval_scores([(checks, [True, True]), (checks, [True, False])])
    assert scores == {
        "prompt_accuracy": 0.5,
        "instruction_accuracy": 0.75,
        "instruction_accuracy:no_commas": 1.0,
        "instruction_accuracy:word_count": 0.5,
    }
    with pytest.raises(ValueError, match="give at least one of min / max"):
        parse_instructions([{"type": "word_count"}])  # neither min nor max
    with pytest.raises(ValueError, match="unknown type"):
        parse_instructions([{"type": "rhymes"}])


def test_words_keep_their_combining_marks():
    # Two words each, by the spaces between them; re's \w alone split them at every vowel sign and virama
    # (Tamil 5 words, Hindi 5, Thai 6), so a Tamil answer failed "at most N words" at well under N.
    assert count_words("வணக்கம் நண்பர்களே") == 2
    assert count_words("नमस्ते दोस्तों") == 2
    assert count_words("สวัสดีครับ ผมชื่อสมชาย") == 2  # Thai has no spaces between words: runs count once
    (limit,) = parse_instructions([{"type": "word_count", "max": 3}])
    assert limit.check("இது ஒரு பதில்")  # "this is an answer": three words


def test_a_blank_answer_follows_no_instruction():
    # IFEval's reference fails every instruction of a blank response. A think block cut off at the token
    # limit leaves no answer: it must not pass "at most 50 words / 3 sentences / 2 bullets".
    checks = parse_instructions([{"type": "word_count", "max": 50}, {"type": "sentence_count", "max": 3},
                                 {"type": "bullet_count", "max": 2}])
    assert check_all(checks, "") == [False, False, False]
    assert check_all(checks, " \n ") == [False, False, False]
    assert check_all(checks, "Short answer.") == [True, True, True]
    scores = ifeval_scores([(checks, check_all(checks, "")), (checks, check_all(checks, "Short answer."))])
    assert scores["prompt_accuracy"] == 0.5 and scores["instruction_accuracy"] == 0.5


# --- think blocks, compliance, answers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "on", "off"),
    [
        ("<think>\nLet me add.\n</think>\n\nThe answer is 4.", True, False),
        ("<think>\n</think>\nThe answer is 4.", True, True),  # the off-mode prefill: an empty block
        ("The answer is 4.", False, True),
        ("<think>\nstill thinking when the budget ran out", False, False),
        ("<think>\nreasoning\n</think>\n\n", False, False),  # closed block but no answer
        ("<think>a</think> 4 <think>again</think> 5", False, False),  # a second block in the answer
        ("The answer </think> is 4", False, False),  # stray closing tag
        ("  <think>x</think>  ok", True, False),
    ],
)
def test_thinking_compliance(text, on, off):
    assert thinking_on_compliant(text) is on
    assert thinking_off_compliant(text) is off


def test_split_and_final_answers():
    assert final_answer_text("<think>r</think>\n\nA") == "A"
    assert final_answer_text("<think>r") == ""
    assert final_answer_text("plain answer ") == "plain answer"
    assert extract_final_number("There are 3 cats, 4 dogs. The answer is 12 legs... wait 7") == 12
    assert extract_final_number(r"so \boxed{\frac{1}{4}}") == 0.25
    assert extract_final_number("Totalnya Rp 1.250.000 saja") == 1_250_000
    assert extract_final_number("#### 1,234") == 1234
    # a worked line after the lead-in commits to what its last '=' gives (it read the first number: 12, 3)
    assert extract_final_number("The answer is 12 - 5 = 7") == 7
    assert extract_final_number("Jawabannya adalah 3 + 4 = 7 apel") == 7
    assert extract_final_number("The answer is 5\nbecause 2 = 2") == 5  # only the lead-in's own line
    assert extract_final_number("no digits") is None
    assert answer_matches("Jawabannya adalah 42.", 42)
    assert not answer_matches("Jawabannya adalah 41.", 42)
    assert answer_matches("It is 0.5", "1/2")
    assert answer_matches("The answer is: Jakarta.", "jakarta")
    assert not answer_matches("Bandung", "Jakarta")
    assert answer_matches("ประโยคนี้แสดงความรู้สึก\nเชิงลบ", "เชิงลบ")  # label on the last line, Thai marks kept
    # A decimal comma (Indonesian, Vietnamese): '2,5' was read as 5 (the number after the comma), '0,75' as 75.
    assert extract_final_number("Jadi hasilnya 2,5") == 2.5
    assert extract_final_number("Vậy kết quả là 0,75") == 0.75
    assert extract_final_number(r"\boxed{12,5}") == 12.5
    assert answer_matches("Jawabannya adalah 2,5 kg.", 2.5) and not answer_matches("Jadi hasilnya 2,5", 5)
    assert answer_matches("Jawabannya 2,5", "2,5")
    # A comma before three digits still groups thousands.
    assert extract_final_number("The answer is 1,500 apples") == 1500
    assert extract_final_number("Total: 1,234,567.5") == 1_234_567.5
    # ... but not after a lone 0 (no number groups its thousands as 0,xxx): '0,125' is a decimal comma, not 125.
    assert extract_final_number("Jadi peluangnya 0,125") == 0.125
    assert extract_final_number(r"\boxed{-0,375}") == -0.375 and parse_number("0,750") == 0.75
    # The final answer is read after the think block: a number inside the reasoning does not count.
    assert not answer_matches(final_answer_text("<think>maybe 42</think> I am not sure"), 42)


def test_language_normalised_accuracy():
    def found(code):
        return Detection(code, 1.0)

    scores = language_scores(
        detected=[found("id"), found("en"), found("id"), found("vi"), found("en"), detect_language("42 + 7")],
        targets=["id", "id", "id", "vi", "en", "th"],
        correct=[True, True, False, None, True, True],
        equivalent=[],
    )
    # Row 2 is correct but in English for an Indonesian prompt: a failure once normalised.
    # Row 6 ("42 + 7") is too short to tell: not counted as the wrong language, nor in the share.
    assert scores["language_share"] == pytest.approx(4 / 5)
    assert scores["language:undetermined"] == pytest.approx(1 / 6)
    assert scores["accuracy"] == pytest.approx(4 / 5)
    assert scores["normalized_accuracy"] == pytest.approx(3 / 5)
    assert scores["language_share:id"] == pytest.approx(2 / 3)
    assert scores["normalized_accuracy:id"] == pytest.approx(1 / 3)
    assert "normalized_accuracy:vi" not in scores  # nothing verifiable in Vietnamese
    assert "language_share:th" not in scores and scores["normalized_accuracy:th"] == 1.0
    # Equivalent codes count both ways; the suite's default accepts Malay for Indonesian.
    for detected, target in (("ms", "id"), ("id", "ms")):
        assert language_scores([found(detected)], [target], [True], [["id", "ms"]])["normalized_accuracy"] == 1.0
        assert language_scores([found(detected)], [target], [True], [])["normalized_accuracy"] == 0.0
    assert language_scores([found("ms")], ["id"], [True])["language_share"] == 1.0  # id~ms by default
    assert language_scores([found("tl")], ["fil"], [True], [])["language_share"] == 1.0  # one language, two codes
    # Rows spelling one language two ways share one breakdown, under the detector's code.
    both = language_scores([found("id"), found("en")], ["ind", "id"], [True, True], [])
    assert both["language_share:id"] == 0.5 and both["normalized_accuracy:id"] == 0.5
    assert not any(name.endswith(":ind") for name in both)


def test_language_suite_checks_codes_at_load(tmp_path):
    rows = _write_rows(tmp_path / "r.jsonl", [{"prompt": "hi", "language": "id"}])
    suite = {"type": "language", "data": rows}
    with pytest.raises(ValidationError, match="did you mean 'tl'"):
        EvaluateStageConfig.model_validate(
            {"name": "e", "kind": "evaluate", "suites": [{**suite, "equivalent": [["tl", "tagalog"]]}]}
        )
    config = EvaluateStageConfig.model_validate(
        {"name": "e", "kind": "evaluate", "suites": [{**suite, "languages": ["fil", "ind_Latn", "en"]}]}
    )
    assert config.suites[0].languages == ["tl", "id", "en"]
    with pytest.raises(ValidationError, match="language code 'Indonesian' is not one the language detector"):
        EvaluateStageConfig.model_validate(
            {"name": "e", "kind": "evaluate", "suites": [{**suite, "language": "Indonesian"}]}
        )
    with pytest.raises(ValidationError, match=r"language 'th' is not among the suite's `languages` \['en', 'id'\]"):
        EvaluateStageConfig.model_validate(
            {"name": "e", "kind": "evaluate", "suites": [{**suite, "language": "th", "languages": ["en", "id"]}]}
        )
    ms = EvaluateStageConfig.model_validate(  # Malay is scored among [en, id]: id~ms by default
        {"name": "e", "kind": "evaluate", "suites": [{**suite, "language": "zsm", "languages": ["en", "id"]}]}
    )
    assert ms.suites[0].language == "ms"


# --- leaderboard ------------------------------------------------------------------------------------


def test_leaderboard_ranks_by_direction_and_writes_table(tmp_path):
    from tempa.merge.leaderboard import write_leaderboard

    board = Leaderboard(
        rows=[
            LeaderboardRow(candidate="s/checkpoint-1", path="/p1", stage="s", step=1,
                           metrics={"heldout/loss": 2.0, "acc/accuracy": 0.9}),
            LeaderboardRow(candidate="s/checkpoint-2", path="/p2", stage="s", step=2,
                           metrics={"heldout/loss": 1.0, "acc/accuracy": 0.1}),
        ],
        rank_by="heldout/loss",
    )
    assert [r.candidate for r in board.ranked()] == ["s/checkpoint-2", "s/checkpoint-1"]
    write_leaderboard(board, tmp_path, title="t")
    table = (tmp_path / "leaderboard.md").read_text()
    assert "heldout/loss ↓" in table and "acc/accuracy ↑" in table
    assert "**1.0000**" in table and "**0.9000**" in table  # best per column, per direction
    assert table.index("s/checkpoint-2") < table.index("s/checkpoint-1")
    loaded = read_leaderboard(tmp_path)
    assert [r.candidate for r in loaded.rows] == ["s/checkpoint-2", "s/checkpoint-1"]
    assert json.loads((tmp_path / "leaderboard.json").read_text())["metrics"]["heldout/loss"] == "min"


def test_a_metric_that_is_no_number_is_written_as_valid_json_and_read_back(tmp_path):
    # NaN (a win rate with no parsed verdict) and Infinity were written bare: not JSON for jq or JavaScript.
    from tempa.merge.leaderboard import write_leaderboard

    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    board = Leaderboard(rows=[
        LeaderboardRow(candidate="a", path="/a", metrics={"judge/win_rate": math.nan, "heldout/perplexity": math.inf}),
        LeaderboardRow(candidate="b", path="/b", metrics={"judge/win_rate": 0.5, "heldout/perplexity": 3.0}),
    ], rank_by="judge/win_rate")
    write_leaderboard(board, tmp_path)
    written = json.loads((tmp_path / "leaderboard.json").read_text(), parse_constant=no_constants)
    assert [row["metrics"] for row in written["rows"]] == [
        {"judge/win_rate": 0.5, "heldout/perplexity": 3.0}, {"judge/win_rate": None, "heldout/perplexity": None}]
    loaded = read_leaderboard(tmp_path)
    assert math.isnan(loaded.rows[1].metrics["judge/win_rate"])  # no value, as before, ranked last
    assert [row.candidate for row in loaded.ranked()] == ["b", "a"]


# --- with a model -----------------------------------------------------------------------------------



def make_ctx(
    run_dir: Path,
    name: str,
    *,
    tokenizer_dir: Path,
    model_dir: Path,
    upstream=None,
    cache_dir: Path | None = None,
):
    return make_context(run_dir, name, start_model=model_dir, tokenizer_dir=tokenizer_dir, upstream=upstream,
                        cache_dir=cache_dir)


def test_transformers_backend_batches_like_single_prompts(tiny_model_dir, tokenizer_dir):
    from tempa.alignment.generation import GenerationParams, TransformersBackend

    backend = TransformersBackend(tiny_model_dir, tokenizer_dir, device="cpu", show_progress=False)
    prompts = [
        [{"role": "user", "content": "Apa kabar?"}],
        [
            {
                "role": "user",
                "content": "A much longer prompt, so that the batch needs left padding to line up.",
            }
        ],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    ]
    params = GenerationParams(max_new_tokens=6, batch_size=3)
    batched = backend.generate(prompts, params)
    single = [backend.generate([p], params)[0] for p in prompts]
    assert batched == single
    assert all(len(samples) == 1 for samples in batched)
    # Thinking modes reach the template, per prompt.
    assert backend.render(prompts[0], "on").endswith("<think>\n")
    assert backend.render(prompts[0], "off").endswith("<think>\n</think>\n")
    # n samples with a seed: reproducible.
    sampling = GenerationParams(max_new_tokens=6, n=2, temperature=1.0, seed=7)
    first = backend.generate(prompts[:1], sampling, thinking_modes=["off"])
    assert len(first[0]) == 2 and first == backend.generate(prompts[:1], sampling, thinking_modes=["off"])
    # Completions end at the end-of-turn token and drop special tokens, but keep think tags.
    tok = backend.tokenizer
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert eot in backend.stop_ids
    ids = tok("<think>\nhm\n</think>\n\nok", add_special_tokens=False)["input_ids"]
    header = tok.convert_tokens_to_ids("<|start_header_id|>")
    assert backend.decode([*ids, header, eot, *tok("after", add_special_tokens=False)["input_ids"]]) == (
        "<think>\nhm\n</think>\n\nok"
    )


def test_held_out_loss_is_mean_nll_of_assistant_tokens(tiny_model_dir, tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tempa.merge.suites import assistant_mask, held_out_nll

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    chat = [
        {"role": "user", "content": "Berapa 2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "dua tambah dua"},
    ]
    ids, mask = assistant_mask(tokenizer, chat, "on")
    trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "dua tambah dua\n</think>\n\n4<|eot_id|>"
    # By hand: next-token cross-entropy at every assistant position.
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    positions = [p for p in range(1, len(ids)) if mask[p]]
    expected = -sum(float(log_probs[p - 1, ids[p]]) for p in positions)
    other = [{"role": "user", "content": "Hai"}, {"role": "assistant", "content": "Halo juga, apa kabar?"}]
    total, count = held_out_nll(
        model, tokenizer, [(chat, "on", None), (other, "off", None)], max_length=512, batch_size=2
    )
    alone, alone_count = held_out_nll(model, tokenizer, [(chat, "on", None)], max_length=512, batch_size=1)
    assert alone_count == len(positions)
    assert alone == pytest.approx(expected, rel=1e-4)
    # Right padding in a batch does not change a chat's loss.
    other_total, other_count = held_out_nll(model, tokenizer, [(other, "off", None)], max_length=512, batch_size=1)
    assert count == alone_count + other_count
    assert total == pytest.approx(alone + other_total, rel=1e-4)


def test_a_loss_suite_with_nothing_to_score_is_refused_when_its_rows_are_read(tmp_path):
    # it failed only when the stage ran, after training (CPT new-user trial: blank texts, prompts only)
    from tempa.merge.evaluate_stage import load_suite_rows

    rows = _write_rows(tmp_path / "r.jsonl", [{"prompt": "q"}, {"text": "  "}])
    config = EvaluateStageConfig.model_validate({"name": "e", "kind": "evaluate", "models": ["m"],
                                                 "suites": [{"type": "loss", "name": "s", "data": rows}]})
    with pytest.raises(StageError, match=rf"^suite 's': {rows}: no row has 'messages' with an assistant turn \(.*\) "
                                         r"or a 'text' string \(raw text: every token scored\)$"):
        load_suite_rows(config)


@pytest.mark.parametrize(("suite", "column", "rows", "expected"), [
    ("accuracy", "answer", [{"prompt": "2+2?", "answr": "4"}, {"prompt": "3+3?", "answr": "6", "id": 2}],
     "no row has an 'answer' column (the rows have: answr, id, prompt); column 'answr' is not one tempa reads: "
     "did you mean 'answer'?"),
    ("accuracy", "answer", [{"prompt": "2+2?", "answer": ""}, {"prompt": "3+3?", "answer": None}],
     "every row's 'answer' is empty"),
    ("ifeval", "instructions", [{"prompt": "Write.", "instruction": [{"type": "lowercase"}]}],
     "no row has an 'instructions' column (the rows have: instruction, prompt); column 'instruction' is not one "
     "tempa reads: did you mean 'instructions'?"),
])
def test_a_missing_or_misspelt_column_a_suite_scores_by_is_named_when_its_rows_are_read(tmp_path, suite, column,
                                                                                      rows, expected):
    # a misspelt `answer` passed the input check, and the stage failed after training with "no row has an 'answer'"
    from tempa.merge.evaluate_stage import check_inputs

    data = _write_rows(tmp_path / "r.jsonl", rows)
    config = EvaluateStageConfig.model_validate({"name": "e", "kind": "evaluate", "models": ["m"],
                                                 "suites": [{"type": suite, "name": "s", "data": data}]})
    with pytest.raises(StageError) as error:
        check_inputs(config)
    assert str(error.value) == f"suite 's': {data}: {expected}"


@pytest.mark.parametrize(("suite", "rows", "expected"), [
    ("accuracy", [{"prompt": "2+2?", "answer": "4"}, {"prompt": "3+5?", "anwser": "8"}, {"prompt": "T", "answer": "T"}],
     "no 'answer'; column 'anwser' is not one tempa reads: did you mean 'answer'?"),
    ("ifeval", [{"prompt": "Write.", "instructions": [{"type": "all_lowercase"}]},
                {"prompt": "Write.", "instruction": [{"type": "all_lowercase"}]}],
     "no 'instructions'; column 'instruction' is not one tempa reads: did you mean 'instructions'?"),
])
def test_a_row_whose_scored_column_is_misspelt_is_refused_with_its_line(tmp_path, suite, rows, expected):
    # the row was left out as a row of another suite is, and the suite scored 2 of 3 rows without a word
    from tempa.merge.evaluate_stage import check_inputs

    data = _write_rows(tmp_path / "r.jsonl", rows)
    config = EvaluateStageConfig.model_validate({"name": "e", "kind": "evaluate", "models": ["m"],
                                                 "suites": [{"type": suite, "name": "s", "data": data}]})
    with pytest.raises(StageError) as error:
        check_inputs(config)
    assert str(error.value) == f"suite 's': {data}:2: {expected}"


def test_a_row_of_another_suite_without_the_column_is_still_left_out(tmp_path):
    from tempa.merge.evaluate_stage import load_suite_rows

    data = _write_rows(tmp_path / "r.jsonl", [{"prompt": "2+2?", "answer": "4"},
                                               {"prompt": "Write.", "instructions": [{"type": "all_lowercase"}]}])
    config = EvaluateStageConfig.model_validate({"name": "e", "kind": "evaluate", "models": ["m"],
                                                 "suites": [{"type": "accuracy", "name": "s", "data": data}]})
    assert len(load_suite_rows(config)["s"]) == 2


@pytest.mark.parametrize(("suite", "row"), [
    ("accuracy", {"prompt": "Kind?", "answer_type": "number"}),
    ("accuracy", {"prompt": "Key?", "answer_key": "B"}),
    ("ifeval", {"prompt": "Write.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}),
])
def test_a_row_of_another_suite_with_a_column_named_much_like_it_is_left_out_not_refused(tmp_path, suite, row):
    """A shared evaluation file that planned before b08c9d2 was refused: `answer_type` read as a misspelt `answer`
    (difflib's closeness); only one slip of the keyboard is a misspelling (review2 trial)."""
    from tempa.merge.evaluate_stage import check_inputs

    first = {"prompt": "2+2?", "answer": "4"} if suite == "accuracy" else \
        {"prompt": "Write.", "instructions": [{"type": "all_lowercase"}]}
    data = _write_rows(tmp_path / "r.jsonl", [first, row])
    config = EvaluateStageConfig.model_validate({"name": "e", "kind": "evaluate", "models": ["m"],
                                                 "suites": [{"type": suite, "name": "s", "data": data}]})
    assert check_inputs(config) is None  # refused before: "did you mean 'answer'?"


def test_a_loss_suite_of_raw_text_scores_every_token_as_continued_pretraining_reads_it(tmp_path, tiny_model_dir,
                                                                                       tokenizer_dir):
    """A continued pre-training run's held-out documents (rows with `text`): the suite failed at the run with "no
    row has 'messages'" (CPT new-user trial). Every next token counts, by hand from the model's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["Hôm nay trời nắng đẹp, chúng tôi đi chợ.", "วันนี้อากาศดีมาก"]
    rows = _write_rows(tmp_path / "vi.jsonl", [{"text": t} for t in texts])
    config = EvaluateStageConfig.model_validate(
        {"name": "eval", "kind": "evaluate", "models": [str(tiny_model_dir)], "include_final": False,
         "suites": [{"type": "loss", "name": "cpt", "data": rows}]})
    run_evaluate(config, make_ctx(tmp_path, "eval", tokenizer_dir=tokenizer_dir, model_dir=tiny_model_dir))
    (row,) = read_leaderboard(tmp_path / "eval").rows
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        total -= sum(float(log_probs[p - 1, ids[p]]) for p in range(1, len(ids)))
        count += len(ids) - 1
    assert row.metrics["cpt/tokens"] == count
    assert row.metrics["cpt/loss"] == pytest.approx(total / count, rel=1e-4)


def test_held_out_loss_of_a_tool_row_is_scored_with_its_tools(tmp_path, tiny_model_dir, tokenizer_dir):
    """A loss-suite row's `tools` were ignored: its tool calls were scored against a prompt without the
    definitions, one the model was never trained or served with."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tempa.merge.eval_data import chat_messages
    from tempa.merge.suites import assistant_mask, held_out_nll

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    chat = [{"role": "user", "content": "Cuaca Jakarta?"},
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Jakarta"}'}}]},
            {"role": "tool", "content": "31C"}, {"role": "assistant", "content": "31 derajat."}]
    ids, _ = assistant_mask(tokenizer, chat, "off", tools)
    assert ids == tokenizer.apply_chat_template(chat, tools=tools, tokenize=True, return_dict=True,
                                                thinking_mode="off")["input_ids"]
    turns = chat_messages({"messages": chat})  # as the suite reads a row: normalised turns
    with_tools = held_out_nll(model, tokenizer, [(turns, "off", tools)], max_length=4096, batch_size=1)
    without = held_out_nll(model, tokenizer, [(turns, "off", None)], max_length=4096, batch_size=1)
    assert with_tools[1] == without[1] and with_tools[0] != pytest.approx(without[0], rel=1e-6)
    # the suite reads a row's tools, as JSON text too
    from tempa.merge.evaluate_config import EvalGeneration, LossSuite
    from tempa.merge.suites import CandidateScorer

    row = {"messages": chat, "tools": json.dumps(tools), "thinking_mode": "off"}
    suite = LossSuite.model_validate({"type": "loss", "data": _write_rows(tmp_path / "held_out.jsonl", [row]),
                                      "max_length": 4096})
    scorer = CandidateScorer(None, tokenizer, EvalGeneration(), model=model)
    scores = scorer.loss(suite, [row])
    assert scores["loss"] == pytest.approx(with_tools[0] / with_tools[1], rel=1e-5)


def _write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


class ScriptedBackend:
    """Replies from a table keyed by the model folder's name and the prompt text."""

    def __init__(self, model_dir: Path, replies: dict[str, dict[str, str]]):
        self.replies = replies[Path(model_dir).name]
        self.calls = 0

    def generate(self, prompts, params, *, thinking_modes=None):
        self.calls += 1
        modes = thinking_modes or [params.thinking_mode] * len(prompts)
        return [[self.replies[f"{p[-1]['content']}|{m}"]] for p, m in zip(prompts, modes, strict=True)]

    def close(self):
        pass


def test_evaluate_stage_scores_checkpoints_into_a_leaderboard(tmp_path, tiny_model_dir, tokenizer_dir, caplog):
    run_dir = tmp_path / "run"
    sft_dir = run_dir / "sft"
    for step, complete in ((10, True), (20, True), (30, False)):
        ckpt = sft_dir / "checkpoints" / f"checkpoint-{step}"
        shutil.copytree(tiny_model_dir, ckpt)
        if complete:
            (ckpt / "COMPLETE").write_text("")
    shutil.copytree(tiny_model_dir, sft_dir / "final")

    data = tmp_path / "data"
    data.mkdir()
    math_rows = _write_rows(
        data / "math.jsonl",
        [
            {"prompt": "2+2?", "answer": 4, "language": "id"},
            {"prompt": "3*3?", "answer": "9", "language": "id"},
        ],
    )
    if_rows = _write_rows(
        data / "if.jsonl",
        [
            {
                "messages": [{"role": "user", "content": "List 2 fruits"}],
                "instructions": [{"type": "bullet_count", "min": 2, "max": 2}, {"type": "no_commas"}],
            }
        ],
    )
    chat_rows = _write_rows(
        data / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "Hai"}, {"role": "assistant", "content": "Halo!"}]}],
    )
    good_id = "Jawabannya adalah {} karena itu hasil hitungan yang benar."
    # checkpoint-10: right answers, in English (wrong language); checkpoint-20: right and in Indonesian;
    # final: wrong answers, forgets to close its think block in "on" mode.
    replies = {
        "checkpoint-10": {
            "2+2?|None": "r\n</think>\n\nThe answer is 4 because that is what the sum gives.",
            "3*3?|None": "r\n</think>\n\nThe answer is 9 because that is what the product gives.",
            "2+2?|on": "r\n</think>\n\n4",
            "3*3?|on": "r\n</think>\n\n9",
            "2+2?|off": "4",
            "3*3?|off": "9",
            "List 2 fruits|None": "r\n</think>\n\n* apple\n* pear",
        },
        "checkpoint-20": {
            "2+2?|None": "r\n</think>\n\n" + good_id.format(4),
            "3*3?|None": "r\n</think>\n\n" + good_id.format(9),
            "2+2?|on": "r\n</think>\n\n4",
            "3*3?|on": "r\n</think>\n\n9",
            "2+2?|off": "4",
            "3*3?|off": "<think>oops</think> 9",
            "List 2 fruits|None": "r\n</think>\n\n* apple, pear\n* mango",
        },
        "final": {
            "2+2?|None": "r\n</think>\n\n" + good_id.format(5),
            "3*3?|None": "still thinking",
            "2+2?|on": "never closed",
            "3*3?|on": "never closed",
            "2+2?|off": "5",
            "3*3?|off": "8",
            "List 2 fruits|None": "r\n</think>\n\napple",
        },
    }
    backends: list[ScriptedBackend] = []

    def factory(path, _config, _ctx):
        backend = ScriptedBackend(path, replies)
        backends.append(backend)
        return backend

    config = EvaluateStageConfig.model_validate(
        {
            "name": "eval",
            "kind": "evaluate",
            "checkpoints_of": ["sft"],
            "suites": [
                {"type": "accuracy", "name": "math", "data": math_rows},
                {
                    "type": "language",
                    "data": math_rows,
                    "languages": ["id", "en", "ms"],
                    "equivalent": [["id", "ms"]],
                },
                {"type": "thinking", "data": math_rows},
                {"type": "ifeval", "data": if_rows},
            ],
            "rank_by": "language/normalized_accuracy",
        }
    )
    ctx = make_ctx(
        run_dir,
        "eval",
        tokenizer_dir=tokenizer_dir,
        model_dir=sft_dir / "final",
        upstream=[done("sft", trained(sft_dir))],
        cache_dir=tmp_path / "cache",
    )
    result = run_evaluate(config, ctx, backend_factory=factory)
    assert result.model is None  # it produces no model: the next stage starts from its input
    assert [r.candidate for r in result.leaderboard.ranked()] == [r.candidate for r in read_leaderboard(run_dir / "eval").rows]
    board = read_leaderboard(run_dir / "eval")
    by_name = {r.candidate: r.metrics for r in board.rows}
    assert list(by_name) == [
        "sft/checkpoint-20",
        "sft/checkpoint-10",
        "sft",
    ]  # ranked; checkpoint-30 incomplete
    c10, c20, final = by_name["sft/checkpoint-10"], by_name["sft/checkpoint-20"], by_name["sft"]
    for metrics in by_name.values():  # what rank_by and select.metric are checked against when the recipe loads
        assert_declared(metrics, config.suites)
    assert (c10["math/accuracy"], c20["math/accuracy"], final["math/accuracy"]) == (1.0, 1.0, 0.0)
    assert c10["language/accuracy"] == 1.0 and c10["language/normalized_accuracy"] == 0.0
    assert c20["language/normalized_accuracy"] == 1.0 and c20["language/language_share"] == 1.0
    assert (c10["thinking/on_compliance"], c10["thinking/off_compliance"]) == (1.0, 1.0)
    assert c20["thinking/off_compliance"] == 0.5 and final["thinking/on_compliance"] == 0.0
    assert c10["ifeval/prompt_accuracy"] == 1.0
    assert c20["ifeval/prompt_accuracy"] == 0.0 and c20["ifeval/instruction_accuracy"] == 0.5
    # Suites sharing rows and mode generate once: math and language reuse the same answers.
    assert all(b.calls == 4 for b in backends)  # default-mode rows, on, off, instructions
    assert result.metrics["best"] == "sft/checkpoint-20"
    assert "ties at the top" not in caplog.text
    # Ranked by math/accuracy, both checkpoints score 1.0: scoring order names the best, and the log says so.
    tied = EvaluateStageConfig.model_validate({**config.model_dump(exclude_unset=True), "name": "eval-tied",
                                               "rank_by": "math/accuracy"})
    tied_result = run_evaluate(tied, make_ctx(run_dir, "eval-tied", tokenizer_dir=tokenizer_dir,
                                              model_dir=sft_dir / "final", upstream=[done("sft", trained(sft_dir))],
                                              cache_dir=tmp_path / "cache"), backend_factory=factory)
    assert tied_result.metrics["best"] == "sft/checkpoint-10"  # scored first of the two
    assert tied_result.metrics["tied_with_best"] == "sft/checkpoint-20"  # in metrics.json, not the log alone
    assert "tied_with_best" not in result.metrics
    assert ("eval-tied: math/accuracy ties at the top (1.0000): sft/checkpoint-10 named best over "
            "sft/checkpoint-20 by scoring order, not by the metric") in caplog.text
    table = (run_dir / "eval" / "leaderboard.md").read_text()
    assert "language/normalized_accuracy ↑" in table and "sft/checkpoint-20" in table

    # A re-run (the runner clears the stage folder first) reuses the scores of unchanged checkpoints...
    shutil.rmtree(run_dir / "eval")
    backends.clear()
    run_evaluate(config, ctx, backend_factory=factory)
    assert backends == []
    assert [r.candidate for r in read_leaderboard(run_dir / "eval").rows] == list(by_name)
    # ...but not of a checkpoint whose weights changed.
    shutil.copy(
        tiny_model_dir / "model.safetensors", sft_dir / "checkpoints" / "checkpoint-10" / "model.safetensors"
    )
    run_evaluate(config, ctx, backend_factory=factory)
    assert len(backends) == 1

    # A real model through the default backend: loss + a generation suite, end to end.
    real = EvaluateStageConfig.model_validate(
        {
            "name": "eval2",
            "kind": "evaluate",
            "stages": ["sft"],
            "suites": [
                {"type": "loss", "name": "heldout", "data": chat_rows},
                {"type": "thinking", "data": math_rows},
            ],
            "generation": {"max_new_tokens": 4},
        }
    )
    ctx2 = make_ctx(
        run_dir,
        "eval2",
        tokenizer_dir=tokenizer_dir,
        model_dir=sft_dir / "final",
        upstream=[done("sft", trained(sft_dir))],
    )
    run_evaluate(real, ctx2)
    (row,) = read_leaderboard(run_dir / "eval2").rows
    assert row.candidate == "sft"
    assert math.isfinite(row.metrics["heldout/loss"])
    assert row.metrics["heldout/perplexity"] == pytest.approx(math.exp(row.metrics["heldout/loss"]))
    assert 0.0 <= row.metrics["thinking/compliance"] <= 1.0
    assert_declared(row.metrics, real.suites)


def assert_declared(metrics, suites) -> None:
    """Every metric a suite reported is one its config declares (``reports``)."""
    by_key = {suite.key: suite for suite in suites}
    for metric in metrics:
        key, _, name = metric.partition("/")
        assert by_key[key].metric_problem(name) is None, metric


def test_a_metric_no_suite_reports_is_refused_when_the_recipe_loads(tmp_path):
    """A typo in rank_by ranked by nothing (and still named a best); in a merge's select.metric it was found when
    the merge ran, after every stage had trained."""
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.loader import load_recipe

    rows = _write_rows(tmp_path / "r.jsonl", [{"prompt": "hi", "answer": 1}])
    recipe = tmp_path / "r.yaml"
    text = ("name: r\nbase_model: tempa:tiny\nstages:\n"
            "  - {name: sft, kind: sft, data: {sources: [{name: t, path: ROWS}]}}\n"
            "  - name: eval\n    kind: evaluate\n    checkpoints_of: [sft]\n"
            "    suites: [{type: accuracy, data: ROWS}, {type: language, language: th, data: ROWS}]\n"
            "    rank_by: RANK\n"
            "  - name: merge\n    kind: merge\n    method: linear\n    evaluate_stage: eval\n"
            "    select: {metric: SELECT, top_k: 2}\n").replace("ROWS", str(rows))

    def recipe_with(rank_by: str, select: str) -> None:
        recipe.write_text(text.replace("RANK", rank_by).replace("SELECT", select))

    recipe_with("accuracy/accuracy", "language/language_share:th")
    assert [stage.name for stage in load_recipe(recipe).stages] == ["sft", "eval", "merge", "bake"]
    recipe_with("accuracy/acc", "language/language_share")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert str(info.value) == (f"{recipe}:9: stages[1].rank_by (stage 'eval'): suite 'accuracy' (accuracy) reports "
                               "no 'acc'; it reports accuracy/accuracy, accuracy/rows, "
                               "accuracy/truncated, accuracy/unanswered, got 'accuracy/acc'")
    recipe_with("accuracy/accuracy", "language/languageshare")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert str(info.value).startswith(
        f"{recipe}:14: stages[2].select.metric (stage 'merge'): suite 'language' (language) reports no "
        "'languageshare' (did you mean language/language_share?); it reports language/accuracy, ")


def test_evaluate_errors_are_one_line(tmp_path, tiny_model_dir, tokenizer_dir):
    rows = _write_rows(tmp_path / "r.jsonl", [{"prompt": "hi", "answer": 1}])
    ctx = make_ctx(tmp_path, "eval", tokenizer_dir=tokenizer_dir, model_dir=tiny_model_dir)
    config = EvaluateStageConfig.model_validate(
        {
            "name": "eval",
            "kind": "evaluate",
            "checkpoints_of": ["sft"],
            "suites": [{"type": "accuracy", "data": rows}],
        }
    )
    with pytest.raises(StageError, match="'sft' is not a stage this stage reads"):
        run_evaluate(config, ctx)
    if importlib.util.find_spec("lm_eval") is None:
        asks_lm_eval = EvaluateStageConfig.model_validate(
            {"name": "eval", "kind": "evaluate", "suites": [{"type": "lm_eval", "tasks": ["gsm8k"]}]}
        )
        with pytest.raises(StageError, match=r"pip install lm-eval"):
            run_evaluate(asks_lm_eval, ctx)


def test_evaluate_config_validation(tmp_path):
    rows = _write_rows(tmp_path / "r.jsonl", [{"prompt": "hi"}])

    def validate(**fields):
        return EvaluateStageConfig.model_validate({"name": "e", "kind": "evaluate", **fields})

    with pytest.raises(ValidationError, match="suite names must be unique"):
        validate(suites=[{"type": "accuracy", "data": rows}, {"type": "accuracy", "data": rows}])
    with pytest.raises(ValidationError, match="rank_by"):
        validate(suites=[{"type": "accuracy", "data": rows}], rank_by="ifeval/prompt_accuracy")
    with pytest.raises(ValidationError, match="does not exist"):
        validate(suites=[{"type": "accuracy", "data": str(tmp_path / "missing.jsonl")}])
    with pytest.raises(ValidationError, match="not one the language detector"):
        validate(suites=[{"type": "language", "data": rows, "languages": ["xx"]}])
    # Data paths are relative to the recipe's folder.
    config = EvaluateStageConfig.model_validate(
        {"name": "e", "kind": "evaluate", "suites": [{"type": "ifeval", "data": "r.jsonl"}]},
        context={"base_dir": str(tmp_path)},
    )
    assert config.suites[0].data == rows
    reads = validate(checkpoints_of=["sft"], stages=["dpo", "sft"], include_final=False,
                     suites=[{"type": "ifeval", "data": rows}])
    assert [(r.stage, r.artifact.value, r.field) for r in reads.reads(["sft", "dpo"])] == [
        ("sft", "model", ("checkpoints_of", 0)), ("dpo", "model", ("stages", 0)), ("sft", "model", ("stages", 1))]


def test_flatten_lm_eval_results():
    from tempa.merge.suites import flatten_lm_eval_results

    flat = flatten_lm_eval_results(
        {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.5,
                "exact_match_stderr,strict-match": 0.1,
            },
            "arc_easy": {"acc,none": 0.7, "acc_norm,none": 0.72, "acc_stderr,none": 0.01},
        }
    )
    assert flat == {"gsm8k/exact_match[strict-match]": 0.5, "arc_easy/acc": 0.7, "arc_easy/acc_norm": 0.72}


def test_lm_eval_suite_calls_the_harness_with_the_loaded_model(
    tmp_path, tiny_model_dir, tokenizer_dir, monkeypatch
):
    """lm-eval is optional; a stand-in module checks the wiring (model object, tasks, seeds, results)."""
    import sys
    import types

    calls = {}

    class FakeHFLM:
        def __init__(self, pretrained, tokenizer, batch_size):
            calls["model"], calls["tokenizer"], calls["batch_size"] = pretrained, tokenizer, batch_size

    def simple_evaluate(model, **kwargs):
        calls["lm"], calls["kwargs"] = model, kwargs
        return {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.25, "acc_stderr,none": 0.1}}}

    package = types.ModuleType("lm_eval")
    package.simple_evaluate = simple_evaluate
    models = types.ModuleType("lm_eval.models")
    huggingface = types.ModuleType("lm_eval.models.huggingface")
    huggingface.HFLM = FakeHFLM
    for name, module in (
        ("lm_eval", package),
        ("lm_eval.models", models),
        ("lm_eval.models.huggingface", huggingface),
    ):
        monkeypatch.setitem(sys.modules, name, module)

    config = EvaluateStageConfig.model_validate(
        {
            "name": "eval",
            "kind": "evaluate",
            "suites": [
                {
                    "type": "lm_eval",
                    "name": "harness",
                    "tasks": ["arc_easy"],
                    "limit": 8,
                    "args": {"limit": 4},
                }
            ],
        }
    )
    run_evaluate(config, make_ctx(tmp_path, "eval", tokenizer_dir=tokenizer_dir, model_dir=tiny_model_dir))
    (row,) = read_leaderboard(tmp_path / "eval").rows
    assert row.metrics == {"harness/arc_easy/acc": 0.25}
    assert type(calls["model"]).__name__ == "LlamaForCausalLM" and isinstance(calls["lm"], FakeHFLM)
    assert calls["kwargs"]["tasks"] == ["arc_easy"] and calls["kwargs"]["limit"] == 4  # args override
    assert calls["kwargs"]["apply_chat_template"] is False


def test_evaluation_rows_are_read_strictly_with_line_numbers(tmp_path):
    from tempa.merge.eval_data import load_rows

    path = tmp_path / "eval.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(StageError, match=rf"^{path}:3: invalid UTF-8 \(byte 0xe9"):
        load_rows(str(path))
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n{"prompt": "b"}\n')
    assert load_rows(str(path)) == [{"prompt": "a"}, {"prompt": "b"}]  # the BOM is no part of row 1
    path.write_bytes(b"")
    with pytest.raises(StageError, match="empty file"):
        load_rows(str(path))


def test_a_json_evaluation_file_is_read_as_its_content_says(tmp_path):
    """JSON Lines in a ``.json`` file failed with "not valid JSON (Extra data)"; an object holding its rows under
    another key than ``rows`` or ``data`` read as no rows. Both now read as an SFT source reads them."""
    from tempa.merge.eval_data import load_rows

    rows = [{"prompt": "a"}, {"prompt": "b"}]
    path = tmp_path / "eval.json"
    for content in ("\n".join(json.dumps(r) for r in rows) + "\n", json.dumps({"items": rows})):
        path.write_text(content, encoding="utf-8")
        assert load_rows(str(path)) == rows, content
    path.write_text(json.dumps(rows[0]) + '\n{"prompt": \n', encoding="utf-8")  # read strictly, as .jsonl is
    with pytest.raises(StageError, match=rf"^{path}:2: not valid JSON"):
        load_rows(str(path))
    # one row on one line is that row (it was taken for an object holding the rows: 0 rows, or its messages)
    path.write_text(json.dumps({"prompt": "a", "languages": ["en", "id"]}), encoding="utf-8")
    assert load_rows(str(path)) == [{"prompt": "a", "languages": ["en", "id"]}]
    path.write_text(json.dumps({"rows": rows, "languages": ["en", "id"]}), encoding="utf-8")  # one list of rows
    assert load_rows(str(path)) == rows
    path.write_text(json.dumps({"few_shot": [], "rows": rows}), encoding="utf-8")  # an empty list holds no rows
    assert load_rows(str(path)) == rows
    path.write_text(json.dumps({"dev": rows, "test": rows}), encoding="utf-8")
    with pytest.raises(StageError, match=r"holds lists of rows under 'dev', 'test'; expected one list of rows, or one "
                                         r"row$"):
        load_rows(str(path))
    # a folder of JSON files: each read as it is alone, strictly (a bare DatasetGenerationError before); a
    # compressed file: one line (a bare FileNotFoundError before)
    folder = tmp_path / "suite"
    folder.mkdir()
    (folder / "train-0.json").write_text(json.dumps(rows), encoding="utf-8")
    (folder / "train-1.json").write_text('{"prompt": "c"}\n{"prompt": "d"}\n', encoding="utf-8")
    assert load_rows(str(folder)) == [*rows, {"prompt": "c"}, {"prompt": "d"}]
    assert load_rows(str(folder), max_rows=3) == [*rows, {"prompt": "c"}]
    (folder / "train-1.json").write_text('{"prompt": "c"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(StageError, match=r"train-1.json:2: not valid JSON"):
        load_rows(str(folder))
    packed = tmp_path / "eval.json.gz"
    packed.write_bytes(b"\x1f\x8b")
    with pytest.raises(StageError, match=rf"^{packed}: unsupported file type '.gz'; expected .jsonl or .json"):
        load_rows(str(packed))


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"messages": [{"content": "hi"}]}, "messages[0] has no role (expected one of system, user, assistant, tool, ipython)"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]},
         "messages[1] has an unknown role 'bot'"),
        ({"messages": [{"role": "user"}]}, "messages[0] (user) has no content"),
        ({"messages": ["hi"]}, "messages[0] is a str, expected an object"),
        ({"messages": "hi"}, "expected 'messages' to be a list of {role, content}, got str"),
        (["a", "list"], "expected a JSON object, got list"),
    ],
)
def test_a_bad_evaluation_row_stops_the_read_naming_file_and_line(tmp_path, row, problem):
    from tempa.merge.eval_data import load_rows

    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"prompt": "a"}, {"prompt": "b"}, row]) + "\n")
    with pytest.raises(StageError) as info:
        load_rows(str(path))
    assert str(info.value).startswith(f"{path}:3: {problem}") and "\n" not in str(info.value)
    listed = tmp_path / "eval.json"
    listed.write_text(json.dumps([{"prompt": "a"}, row]))
    with pytest.raises(StageError, match=rf"^{listed}: row 1: "):
        load_rows(str(listed))


def test_an_evaluate_stage_with_a_bad_row_fails_before_any_model_work(tmp_path, tiny_model_dir, tokenizer_dir):
    rows = _write_rows(tmp_path / "r.jsonl", [{"prompt": "hi", "answer": 1}, {"messages": [{"content": "hi"}]}])
    ctx = make_ctx(tmp_path, "eval", tokenizer_dir=tokenizer_dir, model_dir=tiny_model_dir)
    config = EvaluateStageConfig.model_validate(
        {"name": "eval", "kind": "evaluate", "models": [str(tiny_model_dir)], "include_final": False,
         "suites": [{"type": "accuracy", "data": rows}]}
    )

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded for a set with a bad row")

    with pytest.raises(StageError, match=rf"^{rows}:2: messages\[0\] has no role"):
        run_evaluate(config, ctx, backend_factory=no_model)


@pytest.mark.parametrize(
    ("suite", "row", "problem"),
    [
        ({"type": "accuracy"}, {"messages": [{"role": "user", "content": "q"}], "thinking_mode": 1},
         "thinking_mode must be 'on' or 'off', got 1"),
        ({"type": "ifeval"}, {"prompt": "q", "instructions": [{"id": "no:such_check"}]}, "bad instructions ("),
        ({"type": "language", "language": "en"}, {"prompt": "q", "instructions": [{"id": "no:such_check"}]},
         "bad instructions ("),
        # An unknown code, or one the suite's detector cannot return: every answer was scored as in the wrong
        # language (language_share 0), silently.
        ({"type": "language", "language": "en"}, {"prompt": "q", "language": "vn"},
         "language code 'vn' is not one the language detector (py3langid) knows"),
        ({"type": "language", "language": "en", "languages": ["en", "id"]}, {"prompt": "q", "language": "th"},
         "language 'th' is not among the suite's `languages` ['en', 'id'], so no answer could be in it"),
        ({"type": "accuracy"}, {"answer": 4}, "evaluation row has neither 'messages' nor a 'prompt' string"),
        # an empty prompt was reported as no prompt at all
        ({"type": "accuracy"}, {"prompt": "", "answer": 4}, "evaluation row's 'prompt' is empty"),
        ({"type": "thinking"}, {"messages": [{"role": "system", "content": "s"}]},
         "evaluation row has no user message"),
        # a generation suite renders the row's tools and tool loop: what the template cannot render is named
        ({"type": "accuracy"}, {"prompt": "q", "answer": 1, "tools": "{city"}, "expected 'tools' to be JSON"),
        ({"type": "accuracy"}, {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "31"}],
                                "answer": 31}, "turn 1: tool turn not after an assistant turn that calls a tool"),
        ({"type": "win_rate", "baseline": {"type": "http", "base_url": "http://b.invalid/v1", "model": "b"},
          "judge": {"backend": {"type": "http", "base_url": "http://j.invalid/v1", "model": "j"}}},
         {"turns": []}, "expected 'turns' (a list of user messages)"),
    ],
)
def test_a_row_a_suite_cannot_score_is_named_by_its_line_before_any_model_loads(tmp_path, suite, row, problem):
    """Checked when the stage reads its data, for what the suite reads; named by the line (a blank line before it:
    not its index among the rows, nor among the rows the suite keeps)."""
    from tempa.merge.evaluate_stage import load_suite_rows

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "a"}) + "\n\n" + json.dumps({"prompt": "b", "answer": 1}) + "\n"
                    + json.dumps(row) + "\n")
    config = EvaluateStageConfig.model_validate({"name": "e", "kind": "evaluate", "models": ["m"],
                                                 "suites": [{**suite, "name": "s", "data": str(path)}]})
    with pytest.raises(StageError) as info:
        load_suite_rows(config)
    assert str(info.value).startswith(f"suite 's': {path}:4: {problem}") and "\n" not in str(info.value)
    good = {"prompt": "a", "answer": 1, "thinking_mode": "on", "instructions": [{"type": "all_lowercase"}],
            "language": "en"}
    path.write_text(json.dumps(good) + "\n")
    assert load_suite_rows(config) == {"s": [good]}
    # true/false as SFT rows take them (other tools write booleans; this refused them), read as the suites read modes
    path.write_text(json.dumps({**good, "thinking_mode": True}) + "\n" + json.dumps({**good, "thinking_mode": False}))
    assert [row["thinking_mode"] for row in load_suite_rows(config)["s"]] == ["on", "off"]


def test_evaluation_rows_take_every_role_the_training_data_may_hold():
    """Roles have one home (tempa.chat_templates.roles): a Llama 3.1 tool result (`ipython`) that the data
    pipeline and the llama3 template take is no unknown role to evaluation."""
    from tempa.chat_templates.roles import ROLES
    from tempa.merge.eval_data import row_problem

    turns = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "", "tool_calls": [{"x": 1}]}]
    for role in ROLES:
        assert row_problem({"messages": [*turns, {"role": role, "content": "4"}]}) is None, role


def test_a_bad_evaluation_row_stops_the_run_and_the_plan_before_the_first_stage_trains(tmp_path, capsys):
    """Not after hours of training: the evaluate stage's local rows are checked before any stage starts."""
    from tempa.recipes.cli import main
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import run_recipe

    rows = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(rows) + "\n")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "a", "answer": 1}) + "\n\n"
                                         + json.dumps({"prompt": "b", "answer": 2, "thinking_mode": "yes"}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nbase_model: tempa:tiny\nstages:\n"
                      "  - {name: sft, kind: sft, data: {sources: [{name: t, path: train.jsonl}]}}\n"
                      "  - {name: evaluate, kind: evaluate, stages: [sft],\n"
                      "     suites: [{type: accuracy, name: math, data: eval.jsonl}]}\n")
    message = (f"stage 'evaluate' would fail: suite 'math': {tmp_path / 'eval.jsonl'}:3: thinking_mode must be "
               "'on' or 'off', got 'yes'")
    with pytest.raises(StageError) as info:
        run_recipe(load_recipe(recipe), tmp_path / "run")
    assert str(info.value) == message
    assert not (tmp_path / "run" / "sft").exists()  # nothing trained, nothing to clean up
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 1
    assert message in capsys.readouterr().err


def test_a_final_model_that_is_the_last_checkpoint_is_scored_once(tmp_path, tiny_model_dir, tokenizer_dir):
    """The trainer's last step is both checkpoint-N and final/: scored twice, a top-k merge would merge it with
    itself. A final model trained past its last checkpoint is a candidate of its own."""
    from tempa.merge.candidates import collect_candidates
    from tempa.sft.train_plan import OUTCOME_FILE

    run_dir = tmp_path / "run"
    sft_dir = run_dir / "sft"
    for step in (10, 20):
        shutil.copytree(tiny_model_dir, sft_dir / "checkpoints" / f"checkpoint-{step}")
        (sft_dir / "checkpoints" / f"checkpoint-{step}" / "COMPLETE").write_text("")
    shutil.copytree(tiny_model_dir, sft_dir / "final")
    names = {}
    for last_step in (20, 25):
        (sft_dir / "final" / OUTCOME_FILE).write_text(json.dumps({"global_step": last_step}))
        ctx = make_ctx(run_dir, "eval", tokenizer_dir=tokenizer_dir, model_dir=sft_dir / "final",
                       upstream=[done("sft", trained(sft_dir))])
        names[last_step] = [c.name for c in collect_candidates(ctx, checkpoints_of=["sft"], stages=[], models=[])]
    assert names == {20: ["sft/checkpoint-10", "sft/checkpoint-20"],
                     25: ["sft/checkpoint-10", "sft/checkpoint-20", "sft"]}


def test_a_checkpoint_of_a_preference_round_is_named_with_its_round(tmp_path, tiny_model_dir, tokenizer_dir):
    """Each round of a preference stage trains from step 0 into its own round-K/checkpoints: `dpo/checkpoint-4` did
    not say which round's checkpoint-4 a leaderboard row (or a merge, or the model card) meant."""
    from tempa.merge.candidates import collect_candidates
    from tempa.sft.checkpoints import complete_checkpoints
    from tempa.sft.stage_api import StageResult

    run_dir = tmp_path / "run"
    for round_dir in (run_dir / "dpo" / "round-1", run_dir / "dpo" / "round-2"):
        for step in (2, 4):
            shutil.copytree(tiny_model_dir, round_dir / "checkpoints" / f"checkpoint-{step}")
            (round_dir / "checkpoints" / f"checkpoint-{step}" / "COMPLETE").write_text("")
        shutil.copytree(tiny_model_dir, round_dir / "final")
    last = run_dir / "dpo" / "round-2"  # what a preference stage hands on: its last round's model and checkpoints
    result = StageResult(model=last / "final", checkpoints=complete_checkpoints(last / "checkpoints"))
    ctx = make_ctx(run_dir, "eval", tokenizer_dir=tokenizer_dir, model_dir=tiny_model_dir,
                   upstream=[done("dpo", result, kind="preference")])
    candidates = collect_candidates(ctx, checkpoints_of=["dpo"], stages=[], models=[])
    assert [c.name for c in candidates] == ["dpo/round-2/checkpoint-2", "dpo/round-2/checkpoint-4", "dpo"]
    assert [c.path for c in candidates] == [last / "checkpoints" / "checkpoint-2", last / "checkpoints" / "checkpoint-4",
                                            last / "final"]


def test_a_candidate_whose_embeddings_the_runs_tokenizer_overflows_is_named_before_any_is_scored(
        tmp_path, tiny_model_dir, tokenizer_dir):
    """A folder given by path, trained with a smaller vocabulary than the run's tokenizer (a pad token the bake added
    past the base's rows): the loss suite stopped on torch's 'index out of range in self', naming no model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|new|>"]})
    run_tokenizer = tmp_path / "tokenizer"
    tokenizer.save_pretrained(run_tokenizer)
    rows = _write_rows(tmp_path / "r.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "<|new|> hello"}]}])
    config = EvaluateStageConfig.model_validate({"name": "e", "kind": "evaluate", "models": [str(tiny_model_dir)],
                                                 "suites": [{"type": "loss", "data": rows}]})
    ctx = make_ctx(tmp_path / "run", "e", tokenizer_dir=run_tokenizer, model_dir=tiny_model_dir)
    with pytest.raises(StageError) as error:
        run_evaluate(config, ctx)
    assert str(error.value) == (
        f"evaluate stage 'e': cannot use tokenizer {run_tokenizer} with {tiny_model_dir.name} ({tiny_model_dir}): "
        f"it has {len(tokenizer)} tokens, but the model's embeddings hold {len(tokenizer) - 1} (vocab_size)")
    assert not (tmp_path / "run" / "e" / "scores").exists()  # refused before any candidate was scored


def test_a_language_row_without_a_target_is_named_by_its_line_when_the_suite_has_no_language(tmp_path):
    """With neither the row's `language` nor the suite's, the suite cannot score the row: it was found after the
    suite's rows were read and checked (before the first stage), when the evaluate stage scored them."""
    from tempa.merge.evaluate_stage import load_suite_rows

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "a", "language": "id"}) + "\n" + json.dumps({"prompt": "b"}) + "\n")
    suite = {"type": "language", "name": "s", "data": str(path)}
    config = EvaluateStageConfig.model_validate({"name": "e", "kind": "evaluate", "models": ["m"], "suites": [suite]})
    with pytest.raises(StageError) as info:
        load_suite_rows(config)
    assert str(info.value) == (f"suite 's': {path}:2: no 'language' to score the answer in; give the row one or set "
                               "the suite's `language`")
    config = EvaluateStageConfig.model_validate({"name": "e", "kind": "evaluate", "models": ["m"],
                                                 "suites": [{**suite, "language": "id"}]})
    assert len(load_suite_rows(config)["s"]) == 2


def test_final_answers_in_japanese_and_chinese():
    # A Japanese reply commits to the number after 答え / 正解 (and a Chinese one after 答案): the last number in
    # "答え：42個、残りは3個です。" is the remainder, not the answer.
    assert extract_final_number("答え：42個、残りは3個です。") == 42
    assert extract_final_number("よって答えは４２個です。箱は６つ使いました。") == 42
    assert extract_final_number("正解は１２です。確認として３を足すと１５になります。") == 12
    assert extract_final_number("所以答案是12，余数是3。") == 12
    assert answer_matches("答え：東京", "東京")
    assert not answer_matches("答え：大阪", "東京")
    # Full-width thousands: '１，２３４' is one number, as '1,234' is.
    assert extract_final_number("合計は１，２３４円です。") == 1234


def test_sentences_of_text_written_without_spaces():
    # Japanese and Chinese put no space after 。！？: two sentences were counted as one, so "at most 1 sentence"
    # passed a three-sentence Japanese answer.
    assert count_sentences("東京は日本の首都です。大きな都市です。人口も多いです。") == 3
    assert count_sentences("本当ですか？はい！そうです。") == 3
    assert count_sentences("彼は「行きます。」と言った。") == 1  # a quote's own stop ends no sentence of the answer
    # but a line of dialogue that ends in its closing bracket is a sentence (they counted as one)
    assert count_sentences("「はい。」\n「いいえ。」") == 2
    assert count_sentences("「はい。」「いいえ。」") == 2
    assert count_sentences("母は「もう寝なさい！」と言った。私は「はい。」と答えた。") == 2
    assert count_sentences("我喜欢北京。北京很大。") == 2
    assert count_sentences("Version 2.5 is out. It works.") == 2  # an ASCII '.' still needs the space after it


def test_a_bad_instruction_is_named_in_one_line():
    with pytest.raises(ValueError) as info:
        parse_instructions([{"type": "word_count", "max": 5}, {"type": "sentence_count", "mn": 3}])
    message = str(info.value)
    assert "\n" not in message and "tagged-union" not in message
    assert "instructions[1]" in message and "sentence_count" in message and "'mn'" in message
    assert "min" in message and "max" in message  # what it takes
    with pytest.raises(ValueError, match=r"instructions\[0\].*'rhymes'.*word_count"):
        parse_instructions([{"type": "rhymes"}])
    with pytest.raises(ValueError, match=r"^instructions: expected a list of objects"):
        parse_instructions({"type": "word_count", "max": 5})  # one instruction, not in a list


def test_char_count_measures_text_written_without_spaces():
    # Japanese length limits are in characters (「五十文字以内」): word_count reads a whole unspaced clause as one
    # word, so it cannot tell a 10-character answer from a 200-character one.
    short, long = "東京は日本の首都です。", "東京は日本の首都で、政治と経済の中心です。" * 10
    assert count_words(short) == 1  # one unspaced clause is one "word", however long
    (limit,) = parse_instructions([{"type": "char_count", "max": 50}])
    assert limit.check(short) and not limit.check(long)
    (floor,) = parse_instructions([{"type": "char_count", "min": 11}])
    assert floor.check(short) and not floor.check("東京 です")  # spaces are not characters of the answer


def test_a_generation_suite_prompts_a_tool_loop_with_its_results_and_tools(tmp_path, tiny_model_dir, tokenizer_dir):
    """An agent's evaluation row (question, tool call, tool result, then the reference answer) was cut back to its
    last user turn and rendered without its tools: the model was asked the question with neither the tools nor
    the result it should answer from. It is now prompted where the answer is due, as it is served."""
    from tempa.alignment.generation import TransformersBackend
    from tempa.merge.evaluate_config import AccuracySuite, EvalGeneration
    from tempa.merge.suites import CandidateScorer

    class Spy(TransformersBackend):
        def render(self, messages, mode=None, tools=None):
            text = super().render(messages, mode, tools)
            self.rendered.append(text)
            return text

    backend = Spy(tiny_model_dir, tokenizer_dir, device="cpu", show_progress=False)
    backend.rendered = []
    tools = [{"name": "get_weather", "description": "Weather of a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    chat = [{"role": "user", "content": "Berapa suhu di Jakarta?"},
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Jakarta"}'}}]},
            {"role": "tool", "content": "31"}, {"role": "assistant", "content": "31 derajat."}]
    rows = [{"messages": chat, "tools": json.dumps(tools), "answer": 31, "thinking_mode": "off"},
            {"messages": chat[:1], "answer": 31, "thinking_mode": "off"}]
    suite = AccuracySuite.model_validate({"type": "accuracy", "data": _write_rows(tmp_path / "agent.jsonl", rows),
                                          "max_new_tokens": 2})
    scorer = CandidateScorer(backend, backend.tokenizer, EvalGeneration())
    scorer.accuracy(suite, rows)
    expected = backend.tokenizer.apply_chat_template(
        chat[:3], tools=[{"type": "function", "function": tools[0]}], add_generation_prompt=True, tokenize=False,
        thinking_mode="off")
    assert expected in backend.rendered and '"get_weather"' in expected
    # the plain row is prompted as before, without tools; the two prompts are not one cached completion
    plain = backend.tokenizer.apply_chat_template(chat[:1], add_generation_prompt=True, tokenize=False,
                                                  thinking_mode="off")
    assert plain in backend.rendered and len(scorer._cache) == 2


def test_the_accuracy_and_language_suites_read_numbers_as_the_rows_language_writes_them(tmp_path):
    """The answer reward reads "1.250" in an Indonesian row as 1250 (alignment.numbers); the accuracy suite read it
    as 1.25, so a model trained to answer right scored wrong in evaluation."""
    from tempa.alignment.generation import GenerationBackend
    from tempa.merge.evaluate_config import AccuracySuite, EvalGeneration, LanguageSuite
    from tempa.merge.suites import CandidateScorer

    class Replies(GenerationBackend):  # a model's replies, fixed: what is under test is how they are scored
        def generate(self, prompts, params, *, thinking_modes=None):
            return [["Jadi jumlahnya adalah 1.250 rupiah." if "Rp" in p[-1]["content"] else "Kết quả là 2,5 kg."]
                    for p in prompts]

    rows = [{"prompt": "Harga 5 permen Rp250 per buah. Berapa totalnya?", "answer": 1250, "language": "id"},
            {"prompt": "Chia 5 kg gạo cho 2 người, mỗi người bao nhiêu kg?", "answer": "2.5", "language": "vi"}]
    scorer = CandidateScorer(Replies(), None, EvalGeneration())
    scorer.prefill = lambda messages, mode, tools=None: ""  # no chat template: the replies are the whole answers
    accuracy = AccuracySuite.model_validate({"type": "accuracy", "data": _write_rows(tmp_path / "a.jsonl", rows)})
    assert scorer.accuracy(accuracy, rows)["accuracy"] == 1.0
    language = LanguageSuite.model_validate({"type": "language", "data": str(tmp_path / "a.jsonl")})
    assert scorer.language(language, rows)["accuracy"] == 1.0


@pytest.mark.parametrize("mode", [None, "off"], ids=["rows-own-modes", "suite-off"])
def test_held_out_loss_scores_the_tokens_sft_trains_on_the_same_rows(tmp_path, tiny_model_dir, tokenizer_dir, mode):
    """A loss suite rendered each chat whole in the template's default mode (thinking on): a turn without a trace was
    scored with an empty `</think>` block SFT never trains (Swallow new-user trial: 81 tokens scored where SFT trains
    78), and a history turn was scored with its reasoning cut, as no sample trains it. The suite now scores the
    samples SFT makes of the same rows: same tokens, and by hand from the model's logits, the same loss."""
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tempa.merge.eval_data import load_rows
    from tempa.merge.evaluate_config import EvalGeneration, LossSuite
    from tempa.merge.suites import CandidateScorer
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    tool = {"type": "function", "function": {"name": "kurs", "description": "Kurs rupiah",
                                             "parameters": {"type": "object", "properties": {"mata": {"type": "string"}}}}}
    rows = [
        {"messages": [{"role": "user", "content": "Sungai terpanjang di Jepang?"},
                      {"role": "assistant", "content": "Shinano."}]},  # no trace
        {"messages": [{"role": "user", "content": "Berapa 2+2?"},
                      {"role": "assistant", "content": "<think>dua tambah dua</think>4"}]},  # a think block
        {"messages": [{"role": "user", "content": "Hai"},
                      {"role": "assistant", "content": "Halo!", "reasoning_content": "sapa balik"},
                      {"role": "user", "content": "Apa kabar?"},
                      {"role": "assistant", "content": "Baik.", "reasoning_content": "jawab singkat"}]},  # history
        {"messages": [{"role": "user", "content": "Kurs dolar?"},
                      {"role": "assistant", "reasoning_content": "pakai alat", "tool_calls": [
                          {"type": "function", "function": {"name": "kurs", "arguments": {"mata": "USD"}}}]},
                      {"role": "tool", "content": "16000"},
                      {"role": "assistant", "content": "Rp16.000.", "reasoning_content": "baca hasil"}],
         "tools": [tool]},  # a tool loop: its reasoning renders
        {"messages": [{"role": "user", "content": "Ibu kota Thailand?"},
                      {"role": "assistant", "content": "Bangkok.", "reasoning_content": "ingat"}],
         "thinking_mode": "off"},
        {"messages": [{"role": "user", "content": "Ibu kota Laos?"},
                      {"role": "assistant", "content": "Vientiane.", "reasoning_content": "ingat juga"}],
         "thinking_mode": False},  # a JSON boolean reads as off, as the SFT reader reads it
    ]
    data = _write_rows(tmp_path / "held_out.jsonl", rows)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    source = DataConfig.model_validate({"sources": [{"name": "held", "path": data, "thinking_mode": mode or "on"}]},
                                       context={"base_dir": str(tmp_path)})
    sft = prepare_sft_data(source, tokenizer, out_dir=tmp_path / "sft", cache_dir=tmp_path / "cache", seed=0,
                           max_length=4096)
    assert (sft.mix.total.rows_kept, sft.mix.total.rejects) == (len(rows), 0)
    total, count = 0.0, 0
    for sample in load_from_disk(str(sft.train_path)):
        ids, mask = sample["input_ids"], sample["assistant_masks"]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        positions = [p for p in range(1, len(ids)) if mask[p]]
        total -= sum(float(log_probs[p - 1, ids[p]]) for p in positions)
        count += len(positions)

    suite = LossSuite.model_validate({"type": "loss", "data": data, "max_length": 4096, "thinking_mode": mode})
    scores = CandidateScorer(None, tokenizer, EvalGeneration(), model=model).loss(suite, load_rows(data))
    assert scores["tokens"] == count
    assert scores["loss"] == pytest.approx(total / count, rel=1e-4)


def test_a_loss_suite_row_sft_could_not_read_is_named_when_the_rows_are_read(tmp_path):
    # its turns are read as an SFT source's now: a row that reader refuses is named before any model loads
    from tempa.merge.evaluate_stage import load_suite_rows

    rows = _write_rows(tmp_path / "r.jsonl", [
        {"messages": [{"role": "user", "content": "Hai"}, {"role": "assistant", "content": "Halo"}]},
        {"messages": [{"role": "user", "content": "Kurs?"}, {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "kurs", "arguments": "{mata: USD"}}]},
            {"role": "tool", "content": "16000"}, {"role": "assistant", "content": "Rp16.000"}]},
    ])
    config = EvaluateStageConfig.model_validate({"name": "e", "kind": "evaluate", "models": ["m"],
                                                 "suites": [{"type": "loss", "name": "s", "data": rows}]})
    with pytest.raises(StageError, match=rf"^suite 's': {rows}:2: .*arguments"):
        load_suite_rows(config)


def test_checkpoints_of_a_lora_stage_are_refused_when_the_recipe_loads(tmp_path, tiny_model_dir):
    """A LoRA stage saves adapter checkpoints: an evaluate stage with `checkpoints_of` it trained every stage, then
    failed on "lora-a/checkpoint-2 ... is not a model folder"; its merged final model can be scored (`stages:`)."""
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.loader import load_recipe

    (tmp_path / "rows.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Hai"},
                                                                  {"role": "assistant", "content": "Halo"}]}) + "\n")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Hai"},
                                                                  {"role": "assistant", "content": "Halo"}]}) + "\n")
    recipe = tmp_path / "r.yaml"
    stage = """
  - name: lora-a
    kind: sft
    data: {sources: [{name: rows, path: rows.jsonl}]}
    lora: {r: 4, lora_alpha: 8}
  - name: eval
    kind: evaluate
    FIELD: [lora-a]
    suites: [{type: loss, name: heldout, data: eval.jsonl}]
"""
    recipe.write_text(f"name: t\nbase_model: {tiny_model_dir}\nstages:" + stage.replace("FIELD", "checkpoints_of"))
    with pytest.raises(RecipeError, match=r"r\.yaml:10: stages\[1\]\.checkpoints_of\[0\].*stage 'lora-a' trains "
                       r"LoRA adapters, so its checkpoints are adapters, not models; score its merged final model with `stages: "
                       r"\[lora-a\]`"):
        load_recipe(recipe)
    recipe.write_text(f"name: t\nbase_model: {tiny_model_dir}\nstages:" + stage.replace("FIELD", "stages"))
    assert load_recipe(recipe).stages[1].stages == ["lora-a"]
