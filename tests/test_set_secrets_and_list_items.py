"""`--set` errors never quote a value that may be a secret, as errors in a recipe file never do; list items are
addressed as `rewards.1` or `rewards[1]`, and a position past the list's end is said so."""

from __future__ import annotations

from pathlib import Path

import pytest

from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe

_RECIPE = """
name: secops
base_model: "tempa:tiny"
chat_template: llama3_thinking
launch: {accelerate_config: single, num_processes: 1}
stages:
  - name: distill
    kind: synthesize
    prompts: {path: ./prompts.jsonl, limit: 6}
    teacher: {type: http, base_url: "http://127.0.0.1:18765/v1", model: teacher, api_key_env: OPENAI_API_KEY,
              send_chat_template_kwargs: false}
    sampling: {n: 2, temperature: 1.0, max_new_tokens: 32, batch_size: 6, thinking: {mode: "off"}}
    rewards:
      - {type: format}
      - {type: judge, backend: {type: http, base_url: "http://127.0.0.1:18765/v1", model: judge,
                                api_key_env: JUDGE_API_KEY, send_chat_template_kwargs: false}}
    select: {strategy: best, by: total}
  - name: sft-distill
    kind: sft
    data:
      sources:
        - {name: distilled, path: "stage:distill", thinking_mode: "off"}
    train: {max_steps: 2, learning_rate: 1.0e-3, per_device_train_batch_size: 4, max_length: 256}
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    path = tmp_path / "sec.yaml"
    path.write_text(_RECIPE)
    return path


SECRET = "FAKEpasted9a8b7c6d5e4f3a2b1c0d"


@pytest.mark.parametrize("override", [
    f"stages.distill.teacher.api_key_env=sk-{SECRET}",
    f"stages.sft-distill.train.hub_token=hf_{SECRET}",
    f"stages.distill.teacher.extra_body.api_key=sk-{SECRET}",
    f"stages.distill.teacher.extra_body.auth=Bearer sk-{SECRET}",
    f"stages.distill.teacher.extra_body={{headers: {{Authorization: Bearer {SECRET}}}}}",
    f"stages.distill.teacher.base_url=http://user:{SECRET}@host/v1",
    f"stages.distill.rewards[1].backend.api_key_env=sk-{SECRET}",
    f'stages.distill.teacher.api_key=sk-"{SECRET}',  # not even valid YAML
])
def test_a_set_error_never_shows_a_secret_value(recipe: Path, override: str) -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe, [override])
    message = str(caught.value)
    assert SECRET not in message, message
    assert message.startswith(f"--set {override.partition('=')[0]}=<value not shown>: "), message


def test_a_set_error_still_shows_a_value_that_is_no_secret(recipe: Path) -> None:
    with pytest.raises(RecipeError, match=r"^--set stages\.distill\.sampling\.n=many: "):
        load_recipe(recipe, ["stages.distill.sampling.n=many"])


@pytest.mark.parametrize("path", ["rewards[1]", "rewards.1"])
def test_a_list_item_is_set_by_its_position_either_way(recipe: Path, path: str) -> None:
    loaded = load_recipe(recipe, [f"stages.distill.{path}.backend.model=other-judge"])
    assert loaded.stage("distill").rewards[1].backend.model == "other-judge"


def test_a_position_past_the_end_of_a_list_is_said_so(recipe: Path) -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe, ["stages.distill.rewards[5].backend.model=x"])
    assert str(caught.value) == ("--set stages.distill.rewards[5].backend.model=x: stages.distill.rewards has 2 items, "
                                 "so there is no stages.distill.rewards[5] (positions count from 0)")
