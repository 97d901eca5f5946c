"""`launch.global_batch_size`: refused at recipe load when a training stage cannot make it on the launch's processes
(the training process refused it after the data was prepared and the model loaded), and shown by `tempa plan` as the
gradient accumulation the launch trains with."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tempa.recipes.cli import main
from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PROMPT = {"messages": [{"role": "user", "content": "What is 2 + 3?"}], "answer": "5"}

ALIGNMENT = {
    "preference": "prompts: {path: prompts.jsonl}\n    sampling: {n: 2, max_new_tokens: 16}\n    rewards: [{type: answer}]",
    "rl": "prompts: {path: prompts.jsonl}\n    rewards: [{type: answer}]",
}


def write_recipe(folder: Path, launch: str, later: str = "", *, sft_train: str = "max_steps: 2") -> Path:
    """A recipe whose first stage is sft (per_device_train_batch_size 4, tempa's default), ``later`` stages after."""
    (folder / "rows.jsonl").write_text(json.dumps(ROW) + "\n", encoding="utf-8")
    (folder / "prompts.jsonl").write_text(json.dumps(PROMPT) + "\n", encoding="utf-8")
    text = textwrap.dedent(f"""\
        name: gb
        base_model: "tempa:tiny"
        launch: {launch}
        stages:
          - name: sft
            kind: sft
            data: {{sources: [{{name: rows, path: rows.jsonl}}]}}
            train: {{{sft_train}}}
        """) + later
    path = folder / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_global_batch_the_launch_cannot_make_is_refused_at_load_naming_its_line(tmp_path):
    path = write_recipe(tmp_path, "{accelerate_config: single, global_batch_size: 7}")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: launch.global_batch_size: 7 is not a multiple of per_device_train_batch_size "
                              "4 x 1 data-parallel process = 4 (the nearest that are: 4 or 8)")
    assert "stage 'sft'" in message and "launch.accelerate_config single" in message
    assert "\n" not in message


def test_the_processes_of_a_multi_process_launch_count(tmp_path):
    """zero3 starts the 8 processes its config names, num_processes overrides them; sequence parallelism makes each
    group of its size one data-parallel rank."""
    with pytest.raises(RecipeError, match=r"4 x 8 data-parallel processes = 32 \(the nearest that are: 32 or 64\)"):
        load_recipe(write_recipe(tmp_path, "{accelerate_config: zero3, global_batch_size: 48}"))
    with pytest.raises(RecipeError, match=r"4 x 2 data-parallel processes = 8 .* on the 2 processes of "
                                          r"launch\.num_processes"):
        load_recipe(write_recipe(tmp_path, "{accelerate_config: zero3, num_processes: 2, global_batch_size: 12}"))
    assert load_recipe(write_recipe(tmp_path, "{accelerate_config: zero3, num_processes: 3, global_batch_size: 12}"))
    sequence = "{accelerate_config: zero3, num_processes: 8, sequence_parallel: 4, global_batch_size: %d}"
    assert load_recipe(write_recipe(tmp_path, sequence % 8))  # 4 per device x 2 data-parallel ranks
    with pytest.raises(RecipeError, match="4 x 2 data-parallel processes = 8"):
        load_recipe(write_recipe(tmp_path, sequence % 12))


@pytest.mark.parametrize("kind", ["preference", "rl"])
def test_preference_and_rl_stages_are_checked_as_sft_is(tmp_path, kind):
    """They train under the same launch; 12 suits the sft stage's 4 rows per device, not their 8."""
    train = "per_device_train_batch_size: 8" + (", num_generations: 8" if kind == "rl" else "")
    later = f"  - name: align\n    kind: {kind}\n    {ALIGNMENT[kind]}\n    train: {{{train}}}\n"
    path = write_recipe(tmp_path, "{accelerate_config: single, global_batch_size: 12}", later)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}:3: launch.global_batch_size: 12 is not a multiple of "
                                      "per_device_train_batch_size 8 x 1 data-parallel process = 8")
    assert "stage 'align'" in str(info.value)
    assert load_recipe(write_recipe(tmp_path, "{accelerate_config: single, global_batch_size: 16}", later))


def test_plan_shows_the_gradient_accumulation_the_global_batch_sets(tmp_path, capsys):
    path = write_recipe(tmp_path, "{accelerate_config: single, use_cpu: true, global_batch_size: 8}")
    assert main(["plan", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "per_device_train_batch_size=4*, gradient_accumulation_steps=2," in out
    assert ("global batch sft: gradient_accumulation_steps 2 = launch.global_batch_size 8 / (4 per device x 1 "
            "data-parallel process)") in out


def test_plan_says_what_a_launch_of_accelerates_own_count_is_checked_against(tmp_path, capsys):
    """An accelerate config that names no process count leaves it to accelerate: only the training processes know."""
    (tmp_path / "mine.yaml").write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\n",
                                        encoding="utf-8")
    path = write_recipe(tmp_path, "{accelerate_config: mine.yaml, use_cpu: true, global_batch_size: 6}")
    assert main(["plan", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "per_device_train_batch_size=4*, logging_steps=10*," in out  # no accumulation that reads as the one
    assert ("gradient_accumulation_steps is set as training starts, to launch.global_batch_size 6 / (4 per device x "
            "the data-parallel processes accelerate starts)") in out


def test_the_worker_refuses_what_the_processes_that_started_cannot_make(tmp_path):
    """The last line of defence, with the same numbers and advice as the recipe's load."""
    from tempa.sft.stage_api import TrainingEnv
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import parallel_kwargs

    plan = TrainPlan.standalone(tmp_path, tmp_path, {}, env=TrainingEnv(use_cpu=True, global_batch_size=24))
    assert parallel_kwargs(plan, world_size=1) == {"gradient_accumulation_steps": 3}  # trl's 8 per device
    with pytest.raises(ValueError, match=r"24 is not a multiple of per_device_train_batch_size 8 x 5 data-parallel "
                                         r"processes = 40 \(the nearest that are: 40\)"):
        parallel_kwargs(plan, world_size=5)


def test_the_train_plan_records_the_accumulation_the_launch_trains_with(tmp_path):
    """train_plan.json said gradient_accumulation_steps 1 where the training processes set 2 from the global batch."""
    import dataclasses

    from stage_helpers import make_context
    from tempa.sft.stage_api import TrainingEnv
    from tempa.sft.train_plan import train_plan

    ctx = make_context(tmp_path / "run", "sft", start_model=tmp_path, tokenizer_dir=tmp_path, chat_template="")
    ctx = dataclasses.replace(ctx, training=TrainingEnv(global_batch_size=8, processes=1))
    plan = train_plan(ctx, trainer="sft", start_model=tmp_path, train_data=tmp_path / "d", out_dir=ctx.stage_dir,
                      train_args={"per_device_train_batch_size": 4}, seed=0)
    assert plan.train_args["gradient_accumulation_steps"] == 8 // 4
