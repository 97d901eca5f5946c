"""`tempa plan --hardware` warns when warmup takes half a stage's steps or more (a warmup set for a big run, kept
for a small data set), before a node trains for days at a rate below the one the recipe set."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tempa.recipes.estimate import estimate_recipe
from tempa.recipes.loader import load_recipe


def _stage(tmp_path: Path, train: str, steps: int = 10):
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}) + "\n" for i in range(40)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: w\nbase_model: tempa:tiny\nstages:\n" + textwrap.indent(textwrap.dedent(f"""\
        - name: sft
          kind: sft
          data:
            sources:
              - {{name: rows, path: ./rows.jsonl, thinking_mode: "off"}}
          train: {{max_steps: {steps}, {train}}}
        """), "  "))
    [stage] = estimate_recipe(load_recipe(recipe), "8xH100")
    assert stage.steps == steps  # max_steps decides the steps
    return [w for w in stage.warnings if "warmup" in w]


@pytest.mark.parametrize(("train", "warmup"), [("warmup_steps: 5", 5), ("warmup_steps: 0.5", 5),
                                               ("warmup_steps: 8, lr_scheduler_type: linear", 8)])
def test_a_warmup_of_half_the_steps_or_more_is_warned_about(tmp_path: Path, train: str, warmup: int):
    [warning] = _stage(tmp_path, train)
    assert f"is {warmup} of the 10 steps it trains: half the run or more warms up" in warning


@pytest.mark.parametrize("train", ["warmup_steps: 4", "warmup_steps: 0.4",
                                   "warmup_steps: 8, lr_scheduler_type: constant"])
def test_a_shorter_warmup_or_a_schedule_without_one_is_not(tmp_path: Path, train: str):
    assert _stage(tmp_path, train) == []


def test_a_warmup_longer_than_the_run_gets_one_warning(tmp_path: Path):
    [warning] = _stage(tmp_path, "warmup_steps: 20")
    assert "never reaches learning_rate" in warning


def test_a_small_share_on_a_two_step_run_says_the_run_is_short_not_the_share(tmp_path: Path):
    [warning] = _stage(tmp_path, "warmup_steps: 0.03", steps=2)  # 0.03 of 2 steps rounds up to 1
    assert warning.endswith("is 1 of the 2 steps it trains: half the run or more warms up, below learning_rate; "
                            "train more steps")
