"""Rows that overlap: duplicates kept only where they can train, evaluation prompts kept out of training, and
held-out rows that never train through a copy."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from test_sft_data_pipeline import chat, config, prepare, rejects, texts, write_jsonl

from tempa.sft.data_report import DataMix
from tempa.sft.stage_api import EvalPrompt, EvalPrompts, StageError

# Eight prompts that both a reasoning source (long traces) and an instruction source carry: the Swallow /
# SEA-LION-R mix of distilled traces and plain instruction rows.
SHARED = [
    f"富士山について質問{i}: {w}はどうですか"
    for i, w in enumerate(["登山道", "天気", "歴史", "温泉", "交通手段", "高さ", "植物", "伝説"])
]


def test_a_duplicate_too_long_to_train_leaves_its_copy_in_another_source(
    tmp_path: Path, tokenizer: Any
) -> None:
    write_jsonl(
        tmp_path / "reason.jsonl",
        [chat(q, "答え", "考える " * 400) for q in SHARED] + [chat("short one", "ok", "fine")],
    )
    write_jsonl(tmp_path / "inst.jsonl", [chat(q, "短い答えです") for q in [*SHARED, "別の質問"]])
    cfg = config(
        tmp_path,
        [
            {"name": "reason", "path": "reason.jsonl"},
            {"name": "inst", "path": "inst.jsonl", "thinking_mode": "off"},
        ],
        curation={"dedup": True},
    )
    prepare(tmp_path, cfg, tokenizer, max_length=256)
    reason, inst = DataMix.read(tmp_path / "out" / "mix.json").sources
    # The traces are too long; the instruction rows with the same prompts are what trains on them.
    assert reason.rejects == {"too_long": len(SHARED)}
    assert inst.rejects == {} and inst.rows_kept == len(SHARED) + 1
    assert {r["reason"] for r in rejects(tmp_path)} == {"too_long"}


EVAL_ROWS = ["Berapa 12 + 30?", "Sebutkan ibu kota Thailand."]


def eval_prompts(folder: Path, rows: list[str]) -> EvalPrompts:
    path = folder / "eval.jsonl"
    write_jsonl(path, [{"prompt": row, "answer": "x"} for row in rows])
    return EvalPrompts(
        tuple(EvalPrompt(row, f"suite 'acc' of stage 'eval' ({path}:{i + 1})") for i, row in enumerate(rows))
    )


def test_training_rows_that_are_evaluation_prompts_are_rejected_as_contaminated(
    tmp_path: Path, tokenizer: Any
) -> None:
    prompts = eval_prompts(tmp_path, EVAL_ROWS)
    # Case and spacing aside, as dedup compares instructions; a longer instruction that contains one is no match.
    write_jsonl(
        tmp_path / "rows.jsonl",
        [
            chat("berapa  12 + 30?", "42"),
            chat("Halo", "Hai"),
            chat("Sebutkan ibu kota Thailand. Lalu Laos.", "Bangkok, Vientiane"),
        ],
    )
    write_jsonl(
        tmp_path / "other.jsonl", [chat("Sebutkan IBU KOTA Thailand.", "Bangkok"), chat("Apa kabar?", "Baik")]
    )
    sources = [{"name": "rows", "path": "rows.jsonl"}, {"name": "other", "path": "other.jsonl"}]

    prepared = prepare(tmp_path, config(tmp_path, sources), tokenizer, eval_prompts=prompts)
    found = {(r["source"], r["row"]): r for r in rejects(tmp_path)}
    assert set(found) == {("rows", 0), ("other", 0)}
    assert {r["reason"] for r in found.values()} == {"contaminated"}
    assert f"({tmp_path / 'eval.jsonl'}:1)" in found["rows", 0]["detail"]
    assert f"({tmp_path / 'eval.jsonl'}:2)" in found["other", 0]["detail"]
    assert "suite 'acc'" in found["other", 0]["detail"] and "line 1" in found["other", 0]["detail"]
    assert [s.rejects for s in prepared.mix.sources] == [{"contaminated": 1}, {"contaminated": 1}]
    assert len(prepared.train) == 3

    # Switched off, the rows train.
    off = config(tmp_path, sources, curation={"decontaminate": False})
    assert len(prepare(tmp_path, off, tokenizer, eval_prompts=prompts).train) == 5

    # Another evaluation set is another prepared set, not a cache hit of the first.
    again = prepare(
        tmp_path, config(tmp_path, sources), tokenizer, eval_prompts=eval_prompts(tmp_path, ["Halo"])
    )
    assert not again.cache_hit
    assert [s.rejects for s in again.mix.sources] == [{"contaminated": 1}, {}]


def test_a_recipe_keeps_its_evaluation_prompts_out_of_its_sft_data_and_the_plan_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tempa.recipes.cli import main
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import run_recipe

    rows = [chat(f"Ulangi kata {i}", f"kata {i}") for i in range(6)] + [
        chat("SEBUTKAN ibu kota Thailand.", "Bangkok")
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(
        tmp_path / "eval.jsonl",
        [
            {"prompt": "Berapa 12 + 30?", "answer": 42},
            {
                "messages": [
                    {"role": "user", "content": "Sebutkan ibu kota Thailand."},
                    {"role": "assistant", "content": "Bangkok"},
                ],
                "answer": 1,
            },
        ],
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: r\nbase_model: tempa:tiny\nlaunch: {use_cpu: true}\nstages:\n"
        "  - {name: sft, kind: sft, data: {sources: [{name: t, path: train.jsonl}]},\n"
        "     train: {max_steps: 1, per_device_train_batch_size: 2, save_steps: 1}}\n"
        "  - {name: evaluate, kind: evaluate, stages: [sft],\n"
        "     suites: [{type: accuracy, name: math, data: eval.jsonl}, {type: accuracy, name: hub, data: org/set},\n"
        "              {type: accuracy, name: again, data: eval.jsonl}]}\n"  # the same prompts, counted once
    )
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    line = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("evaluation prompts")
    )
    assert line.startswith(
        "evaluation prompts sft: training rows checked against 2 distinct evaluation prompts; not checked: "
        "suite 'hub' of stage 'evaluate' (org/set: a hub dataset)"
    )

    # The training launch is what this test does not need (it took 40 s): the stage stops once its data is ready.
    import tempa.recipes.runner as runner

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise StageError("training left out by this test")

    monkeypatch.setattr(runner, "run_launch", no_training)
    with caplog.at_level(logging.INFO, logger="tempa"), pytest.raises(StageError, match="training left out"):
        run_recipe(load_recipe(recipe), tmp_path / "run", only="sft")
    [reject] = [json.loads(line) for line in (tmp_path / "run" / "sft" / "data" / "rejects.jsonl").open()]
    assert reject["reason"] == "contaminated" and reject["row"] == 6
    assert f"suite 'math' of stage 'evaluate' ({tmp_path / 'eval.jsonl'}:2)" in reject["detail"]
    assert any("suite 'hub' of stage 'evaluate'" in message for message in caplog.messages)


def answers(tokenizer: Any, ds: Any) -> set[str]:
    """The trained text of every sample (each row's answer names its instruction)."""
    return {t for _, t in texts(tokenizer, ds)}


def test_a_held_out_instruction_never_trains_through_a_copy_in_its_source(
    tmp_path: Path, tokenizer: Any
) -> None:
    # Ten instructions, each three times (dedup is off by default): a split by position holds one copy out and
    # trains on the others.
    rows = [chat(f"Ulangi kata nomor {i}", f"kata {i}") for _ in range(3) for i in range(10)]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = config(tmp_path, [{"name": "r", "path": "rows.jsonl", "thinking_mode": "off"}], heldout=0.2)
    prepared = prepare(tmp_path, cfg, tokenizer)
    held, trained = answers(tokenizer, prepared.eval), answers(tokenizer, prepared.train)
    assert held and not held & trained
    (stats,) = prepared.mix.sources
    assert stats.heldout_rows == 3 * len(held)  # two instructions, all three copies of each
    assert stats.heldout_rows + stats.rows_kept == len(rows)


def test_a_held_out_instruction_that_trains_in_another_source_is_counted(
    tmp_path: Path, tokenizer: Any
) -> None:
    write_jsonl(tmp_path / "a.jsonl", [chat(f"Ulangi kata nomor {i}", f"kata {i}") for i in range(10)])
    write_jsonl(tmp_path / "b.jsonl", [chat(f"ulangi  kata nomor {i}", f"kata {i}!") for i in range(10)])
    cfg = config(
        tmp_path,
        [{"name": "a", "path": "a.jsonl", "heldout": 3}, {"name": "b", "path": "b.jsonl", "heldout": 0}],
    )
    a, b = prepare(tmp_path, cfg, tokenizer).mix.sources
    assert (a.heldout_rows, a.heldout_rows_trained_elsewhere) == (3, 3)
    assert b.heldout_rows_trained_elsewhere == 0


def test_a_recipe_without_evaluation_prompts_is_not_said_to_check_against_zero(tmp_path: Path) -> None:
    """'checked against 0 distinct evaluation prompts' read like a failed check to a user whose recipe evaluates
    nothing; the line says there is nothing to check against."""
    from tempa.sft.stage import decontamination_summary

    write_jsonl(tmp_path / "train.jsonl", [chat("Berapa 2 + 2?", "4")])
    cfg = config(tmp_path, [{"name": "t", "path": "train.jsonl"}])
    summary = decontamination_summary(cfg, EvalPrompts())
    assert "0 distinct" not in summary and "no evaluation prompts" in summary
    unread = EvalPrompts(unchecked=("suite 'hub' of stage 'evaluate' (org/set: a hub dataset)",))
    assert decontamination_summary(cfg, unread).endswith("not checked: suite 'hub' of stage 'evaluate' (org/set: a "
                                                         "hub dataset)")


def test_held_out_rows_an_earlier_stage_trained_on_are_counted_and_warned(
    tmp_path: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The same source in two stages, held out only in the second: its eval loss was on prompts the first stage had
    trained the start model on, and mix.json said heldout_rows_trained_elsewhere: 0."""
    write_jsonl(tmp_path / "a.jsonl", [chat(f"Ulangi kata nomor {i}", f"kata {i}") for i in range(10)])
    first = prepare(tmp_path, config(tmp_path, [{"name": "a", "path": "a.jsonl", "heldout": 0}]), tokenizer,
                    out="s1")
    assert first.instructions is not None and len(first.instructions.trained) == 10  # all ten trained
    second_cfg = config(tmp_path, [{"name": "a", "path": "a.jsonl", "heldout": 3}])
    for _ in ("built", "cached"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tempa"):
            (stats,) = prepare(tmp_path, second_cfg, tokenizer, trained_before=first.instructions.trained).mix.sources
        assert (stats.heldout_rows, stats.heldout_rows_trained_earlier) == (3, 3)
        assert DataMix.read(tmp_path / "out" / "mix.json").sources[0].heldout_rows_trained_earlier == 3
        assert "3 of its 3 held-out rows have an instruction an earlier stage trained" in caplog.text
    (alone,) = prepare(tmp_path, second_cfg, tokenizer).mix.sources  # the first stage of a recipe: none
    assert alone.heldout_rows_trained_earlier == 0
