"""A prompts file whose rows hold an empty-string answer: the row is unscored by the answer reward, as a row without
the field is, but "" is as often an export's missing value, so the plan and the run's start name the file, the count
and the first rows (alignment/input_checks.empty_answer_warning)."""

from __future__ import annotations

import json
from pathlib import Path

from tempa.alignment.input_checks import input_warnings
from tempa.alignment.rl_config import RLStageConfig


def config(tmp_path: Path, rows: list[dict], rewards: list[dict]) -> RLStageConfig:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return RLStageConfig.model_validate({"name": "rl", "prompts": {"path": str(path)}, "rewards": rewards})


def test_rows_with_an_empty_answer_are_named_with_their_count(tmp_path):
    rows = [{"prompt": f"{i} + {i}?", "answer": "" if i % 2 else str(2 * i)} for i in range(16)]
    warnings = input_warnings(config(tmp_path, rows, [{"type": "answer"}, {"type": "format"}]))
    assert warnings == [f"{tmp_path / 'prompts.jsonl'}: column 'answer' (prompts.answer_field) is an empty string in "
                        "8 of 16 prompts (line 2, line 4, line 6, line 8, line 10, ...): reward 'answer' leaves them "
                        "unscored, so they train on the other rewards alone; give them their answer, or write null (or "
                        "leave the field out) in a row that has none on purpose"]


def test_a_blank_answer_is_empty_too_and_a_single_row_is_named_without_dots(tmp_path):
    rows = [{"prompt": "1 + 1?", "answer": "2"}, {"prompt": "2 + 2?", "answer": "  "}]
    (warning,) = input_warnings(config(tmp_path, rows, [{"type": "answer"}]))
    assert "is an empty string in 1 of 2 prompts (line 2):" in warning


def test_null_or_no_field_is_no_answer_on_purpose_and_no_answer_reward_reads_nothing(tmp_path):
    rows = [{"prompt": "1 + 1?", "answer": "2"}, {"prompt": "Tell a story.", "answer": None}, {"prompt": "Hi."}]
    assert input_warnings(config(tmp_path, rows, [{"type": "answer"}])) == []
    rows = [{"prompt": "1 + 1?", "answer": "2"}, {"prompt": "2 + 2?", "answer": ""}]
    assert input_warnings(config(tmp_path, rows, [{"type": "format"}])) == []


def test_all_empty_is_left_to_the_refusal(tmp_path):
    rows = [{"prompt": "1 + 1?", "answer": ""}, {"prompt": "2 + 2?", "answer": ""}]
    assert input_warnings(config(tmp_path, rows, [{"type": "answer"}])) == []


def test_with_the_answer_reward_alone_the_rows_are_said_to_teach_nothing(tmp_path):
    # they have no total then, so no other reward trains them (the line said "the other rewards alone")
    rows = [{"prompt": "1 + 1?", "answer": "2"}, {"prompt": "2 + 2?", "answer": ""}]
    (warning,) = input_warnings(config(tmp_path, rows, [{"type": "answer"}]))
    assert "other rewards" not in warning
    assert "reward 'answer' leaves them unscored, so with no other reward their samples score nothing and teach " \
           "nothing;" in warning
