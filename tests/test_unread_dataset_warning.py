"""A stage that makes only a dataset no later stage reads, in a recipe that trains after it, is warned of by `tempa
plan` and the run's start: the SEA-LION RLVR recipe's tiny profile ran (and asked its teacher for) `r1-sea` rows that
its SFT stage did not read, and nothing said so."""

from __future__ import annotations

import json
import textwrap

from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import input_warnings, plan_run

SERVER = "{type: http, base_url: 'http://127.0.0.1:9/v1', model: teacher}"


def _recipe(tmp_path, sft_sources: str, tail: str = "") -> list[str]:
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "Soal?"}) + "\n")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                                                  {"role": "assistant", "content": "b"}]}) + "\n")
    (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
        name: unread
        base_model: "tempa:tiny"
        stages:
          - name: distill
            kind: synthesize
            prompts: {{path: prompts.jsonl}}
            teacher: {SERVER}
            rewards: [{{type: length}}]
          - name: sft
            kind: sft
            data: {{sources: [{sft_sources}]}}
            train: {{max_steps: 1}}
        """) + tail)
    loaded = load_recipe(tmp_path / "r.yaml")
    return input_warnings(loaded, plan_run(loaded, tmp_path / "run"))


def test_a_dataset_no_later_stage_reads_is_warned_of(tmp_path):
    assert [line for line in _recipe(tmp_path, "{name: own, path: rows.jsonl}") if "distill" in line] == [
        "stage 'distill': no later stage reads the dataset it makes (a data source `path: stage:distill`), though "
        "later stages train: it runs, and asks its teacher, for its files alone"]


def test_a_dataset_a_later_stage_reads_is_not(tmp_path):
    warnings = _recipe(tmp_path, "{name: own, path: rows.jsonl}, {name: distilled, path: 'stage:distill'}")
    assert not [line for line in warnings if "no later stage reads" in line]
