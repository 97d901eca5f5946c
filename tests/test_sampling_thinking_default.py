"""Stages that sample (preference, synthesize, rl) sample in the recipe's `thinking_default` unless they say
otherwise: a model that ships with thinking off was DPO-trained on thinking-on samples (new-user trial)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tempa.alignment.prompts import load_prompts
from tempa.recipes.loader import load_recipe


def write_recipe(tmp_path: Path, model: Path, default: str | None) -> Path:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "yo"}]}) + "\n")
    (tmp_path / "prompts.jsonl").write_text(
        json.dumps({"prompt": "Berapa 2+2?", "answer": "4"}) + "\n"
        + json.dumps({"prompt": "Berapa 3+3?", "answer": "6", "thinking_mode": "on"}) + "\n")
    header = f'thinking_default: "{default}"\n' if default else ""
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nbase_model: {model}\n{header}" + textwrap.dedent("""\
        stages:
          - name: sft
            kind: sft
            data: {sources: [{name: rows, path: rows.jsonl}]}
          - name: distill
            kind: synthesize
            prompts: {path: prompts.jsonl}
            sampling: {n: 2}
            rewards: [{type: format}]
          - name: align
            kind: preference
            prompts: {path: prompts.jsonl}
            rewards: [{type: format}]
          - name: pinned
            kind: preference
            prompts: {path: prompts.jsonl}
            sampling: {thinking: {mode: "on"}}
            rewards: [{type: format}]
          - name: rl
            kind: rl
            prompts: {path: prompts.jsonl}
            rewards: [{type: answer}]
        """))
    return path


def thinking_of(loaded, name: str):
    stage = loaded.stage(name)
    return stage.thinking if stage.kind == "rl" else stage.sampling.thinking


@pytest.mark.parametrize("default", ["off", "on", None])
def test_unset_sampling_mode_is_the_recipes_thinking_default(tmp_path, tiny_model_dir, default):
    loaded = load_recipe(write_recipe(tmp_path, tiny_model_dir, default))
    expected = default or "on"  # thinking_default's own default
    assert {name: thinking_of(loaded, name).mode for name in ("distill", "align", "rl")} == dict.fromkeys(
        ("distill", "align", "rl"), expected)
    assert thinking_of(loaded, "pinned").mode == "on"  # a stage that says stays as written


def test_prompts_are_sampled_in_the_default_and_a_rows_own_mode_still_wins(tmp_path, tiny_model_dir):
    loaded = load_recipe(write_recipe(tmp_path, tiny_model_dir, "off"))
    stage = loaded.stage("align")
    prompts = load_prompts(stage.prompts, seed=0, thinking=stage.sampling.thinking)
    assert [p.thinking_mode for p in prompts] == ["off", "on"]
