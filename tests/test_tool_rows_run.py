"""Tool-call rows through `tempa run`, with `thinking_default: off`, down to every client the model reaches.

One small recipe on the tiny model: OpenAI rows (the issue's Vietnamese row, and one with reasoning in
its tool loop) and a ShareGPT row with function_call / observation turns, trained with trl, then baked
and exported. The trained spans are decoded from exactly what the training processes read.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from sft_helpers import ISSUE_ROW, REASONED_ROW, SHAREGPT_ROW, expected_tool_samples, trained_spans
from tempa.chat_templates import template_defaults
from tempa.chat_templates.thinking import PREFILL
from tempa.merge.bake import thinking_default_warning
from tempa.recipes.cli import main


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def test_tool_rows_train_through_tempa_run_and_thinking_default_off_reaches_every_client(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.chat_template_utils import (
        is_chat_template_prefix_preserving,
        is_chat_template_stop_token_trained,
    )

    _write_jsonl(tmp_path / "openai.jsonl", [ISSUE_ROW, REASONED_ROW])
    _write_jsonl(tmp_path / "sharegpt.jsonl", [SHAREGPT_ROW])
    recipe = tmp_path / "tools.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: tools
        base_model: {tiny_model_dir}
        thinking_default: off   # bare YAML: a boolean to the YAML loader, the mode to tempa
        seed: 1
        launch: {{use_cpu: true}}
        stages:
          - name: sft
            kind: sft
            data:
              sources:
                - {{name: openai, path: openai.jsonl, thinking_mode: "on"}}
                - {{name: sharegpt, path: sharegpt.jsonl, format: sharegpt, thinking_mode: "off"}}
            train: {{max_steps: 2, per_device_train_batch_size: 3, learning_rate: 1.0e-3, max_length: 768}}
          - {{name: bake, kind: bake, smoke_test: false}}
        """))
    run = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run)]) == 0

    # Trained spans, from the data the training processes read: each call turn and each answer, nothing else.
    plan = json.loads((run / "sft" / "train_plan.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    expected = expected_tool_samples()
    got = {}
    for ex in load_from_disk(plan["train_data"]):
        full = tokenizer.decode(ex["input_ids"])
        city = next(city for city in expected if f"{city}?" in full)
        got[city] = (full, trained_spans(tokenizer, ex))
    assert got == expected
    assert json.loads((run / "sft" / "metrics.json").read_text())["global_step"] == 2

    # thinking_default: off reaches the final tokenizer ...
    final = AutoTokenizer.from_pretrained(run / "final")
    assert template_defaults(final.chat_template).thinking_mode == "off"
    prompt = final.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith(PREFILL["off"])
    assert final.eos_token == "<|eot_id|>"
    assert is_chat_template_prefix_preserving(final) and is_chat_template_stop_token_trained(final)
    # ... the model card and the bake's metrics ...
    card = (run / "final" / "README.md").read_text(encoding="utf-8")
    assert "**Default thinking mode: `off`**" in card and 'thinking_mode="off",  # "on" to switch' in card
    # ... which says what the model trained on (every row of both sources is a tool loop) and how to call it
    # with tools: the shipped example's code runs on the shipped folder.
    mix = json.loads((run / "sft" / "data" / "mix.json").read_text())
    assert [s["tool_rows_kept"] for s in mix["sources"]] == [s["rows_kept"] for s in mix["sources"]]
    assert f"The SFT stages trained {mix['total']['tool_rows_kept']} rows that offer tools" in card
    part = card[card.index("### Tool calling"):]
    shown = part[part.index("```text\n") + 8:part.index("\n```", part.index("```text\n"))]
    assert json.loads(shown) == {"name": "get_weather", "parameters": {"city": "Jakarta"}}
    code = part[part.index("```python\n") + 10:part.index("\n```", part.index("```python\n"))]
    example = {"tokenizer": final, "model": AutoModelForCausalLM.from_pretrained(run / "final")}
    exec(code.replace("max_new_tokens=512", "max_new_tokens=2"), example)  # a tiny model: 2 tokens prove it runs
    assert shown in final.apply_chat_template(example["messages"], tools=example["tools"], tokenize=False)
    metrics = json.loads((run / "bake" / "metrics.json").read_text())
    assert metrics["thinking_default"] == "off" and "warning" not in metrics
    # ... and the Ollama Modelfile (and the GGUF's template, markers removed).
    assert main(["export", "gguf", str(run / "final"), "--out", str(tmp_path / "gguf" / "tools.gguf")]) == 0
    modelfile = (tmp_path / "gguf" / "tools.Modelfile").read_text(encoding="utf-8")
    assert "{{- $think := false }}" in modelfile and "default thinking mode 'off'" in modelfile


def test_the_run_warns_when_no_trained_row_was_in_the_default_mode(tmp_path: Path) -> None:
    from stage_helpers import done
    from tempa.sft.data_report import DataMix, MixTotals
    from tempa.sft.stage import SFTResult
    from tempa.sft.stage_api import StageResult

    def stage(name: str, on: int, total: int):
        totals = MixTotals(rows_in=total, rows_kept=total, train_samples=total, eval_samples=0, tokens_kept=10 * total,
                           trained_tokens_kept=5 * total, heldout_tokens=0, thinking_on_rows_kept=on, rejects=0)
        return done(name, SFTResult(data=DataMix(seed=0, cache_key="k", sources=[], total=totals)))

    off_only = {"a": stage("a", 0, 10), "b": stage("b", 0, 5)}
    warning = thinking_default_warning("on", off_only)
    assert warning is not None and "all 15 SFT rows" in warning and "thinking_default: off" in warning
    assert thinking_default_warning("off", off_only) is None
    on_only = {"c": stage("c", 4, 4)}
    assert "thinking_default: on" in thinking_default_warning("off", on_only)
    assert thinking_default_warning("on", on_only) is None
    merge_only = {"merge": done("merge", StageResult(model=tmp_path), kind="merge")}
    assert thinking_default_warning("on", merge_only) is None  # no SFT stage: nothing to judge
