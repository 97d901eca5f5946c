"""The `rl` stage end to end: the v3.5-8B-R + RLVR seed recipe at tiny scale, killed in the middle of its
GRPO training and run again; its plan at full scale; the worker's pieces on their own."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stage_helpers import assert_ships
from tempa.alignment.rl_config import RLStageConfig
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import run_recipe
from tempa.sft.checkpoints import complete_checkpoints
from tempa.sft.files import json_or_none
from tempa.sft.run_layout import DONE
from tempa.sft.train_worker import GenerationChoice, choose_generation

RECIPE = "sea-lion-v3.5-8b-r-rlvr"
PROMPTS = str(Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl")
REWARDS = ("answer", "language", "format", "length")  # the tiny profile's rewards


def tempa(*args: str) -> list[str]:
    return [sys.executable, "-m", "tempa.recipes.cli", *args]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def rlvr(tmp_path_factory):
    """The tiny profile of the seed recipe: killed (worker group and runner, SIGKILL) once the rl stage has
    its first complete checkpoint, then run again to the end."""
    run_dir = tmp_path_factory.mktemp("rlvr") / "run"
    stage = run_dir / "rlvr"
    proc = subprocess.Popen(tempa("run", RECIPE, "--profile", "tiny", "--run-dir", str(run_dir)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: bool(complete_checkpoints(stage / "checkpoints")), 600, "an rl checkpoint", proc)
        group = int((stage / "logs" / "launch.pid").read_text())
        os.killpg(group, signal.SIGKILL)  # the training processes, as a node failure would
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = {
        "checkpoints": [c.step for c in complete_checkpoints(stage / "checkpoints")],
        "final": (stage / "final").exists(),
        "done": {name: (run_dir / name / DONE).read_text() for name in ("sft-sea-instruct", "sft-reasoning")},
    }
    summary = run_recipe(load_recipe(RECIPE, profile="tiny"), run_dir)  # the same command, in this process
    assert summary.ran == ["rlvr", "bake"]
    return run_dir, killed


# One pipeline for the three tests below: 2 tiny SFT stages, the rl stage killed and resumed, the bake
# (about 2 minutes on an idle 2-core machine; the first test to run pays for it).
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_rl_stage_resumes_after_a_kill(rlvr):
    run_dir, killed = rlvr
    stage = run_dir / "rlvr"
    assert not killed["final"] and killed["checkpoints"] and max(killed["checkpoints"]) < 3
    # the SFT stages were complete and are not redone; the rl stage continues from a checkpoint
    for name, done in killed["done"].items():
        assert (run_dir / name / DONE).read_text() == done
    metrics = json_or_none(stage / "metrics.json")
    assert metrics["global_step"] == 3
    resumed = int(Path(metrics["resumed_from"]).name.split("-")[1])
    assert max(killed["checkpoints"]) <= resumed < 3
    assert (stage / DONE).is_file() and (run_dir / "final" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_seed_recipe_ships_a_final_model_after_the_kill(rlvr):
    # the rlvr recipe extends sea-lion-v3.5-8b-r, whose own tiny run test_seed_recipes leaves to this one
    run_dir, _ = rlvr
    assert_ships(RECIPE, run_dir)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rewards_are_logged_per_component_and_loss_and_kl_are_finite(rlvr):
    run_dir, _ = rlvr
    stage = run_dir / "rlvr"
    history = json.loads((stage / "final" / "tempa_train_metrics.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in steps][-1] == 3
    for entry in steps:
        assert all(f"rewards/{name}/mean" in entry for name in REWARDS), entry
        assert math.isfinite(entry["loss"]) and math.isfinite(entry["kl"]) and entry["kl"] >= 0
        assert 0.0 <= entry["frac_reward_zero_std"] <= 1.0
        # the logged total is the weighted sum of the components (weights 1, 0.5, 0.25, 1; NaN-free here
        # only for the rewards that applied: the answer reward has references, the others always apply)
    metrics = json_or_none(stage / "metrics.json")
    for name in REWARDS:
        logged = [e[f"rewards/{name}/mean"] for e in steps if e.get(f"rewards/{name}/mean") is not None]
        assert metrics[f"reward_{name}"] == pytest.approx(sum(logged) / len(logged))
    assert "frac_reward_zero_std" in metrics and "kl" in metrics and "completions_clipped_ratio" in metrics
    assert metrics["last_kl"] > 0  # the policy moved away from the SFT model it started from
    start = load_file(str(run_dir / "sft-reasoning" / "final" / "model.safetensors"))
    trained = load_file(str(stage / "final" / "model.safetensors"))
    assert any(not torch.equal(start[k], trained[k]) for k in start)
    manifest = json.loads((stage / "manifest.json").read_text())
    assert set(manifest["result"]["rewards"]) == set(REWARDS) and manifest["result"]["prompts"] == 6


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_prompts_are_rendered_in_each_rows_thinking_mode_with_the_recipes_rewards(rlvr):
    import datasets

    from tempa.alignment.rl_rewards import ROW_COLUMN, RLPrompt

    run_dir, _ = rlvr
    stage = run_dir / "rlvr"
    rows = datasets.load_from_disk(str(stage / "data" / "prompts"))
    assert len(rows) == 6
    lines = Path(PROMPTS).read_text(encoding="utf-8").splitlines()
    for row in rows:
        prompt = RLPrompt.model_validate_json(row[ROW_COLUMN])
        assert prompt.row.thinking_mode == "on" and prompt.prefill == "<think>\n"
        assert row["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")
        # what the verifiers need travels with it (some shipped rows have no answer; the shuffle may draw them)
        source = json.loads(lines[int(prompt.row.meta["row"].removeprefix("line ")) - 1])
        assert prompt.row.language == source["language"] and prompt.row.answer == source.get("answer")
    plan = json.loads((stage / "train_plan.json").read_text())
    assert plan["trainer"] == "grpo" and plan["rewards"]["factory"].endswith(":trl_reward_functions")
    assert plan["train_args"]["reward_weights"] == [1.0, 0.5, 0.25, 1.0]
    assert "generating with transformers: no CUDA GPU" in (stage / "logs" / "train.log").read_text()


def test_the_plan_on_8xh100_includes_generation_time():
    from tempa.recipes.estimate import estimate_recipe, render_estimate

    loaded = load_recipe(RECIPE)
    estimates = {e.name: e for e in estimate_recipe(loaded, "8xH100")}
    assert list(estimates) == ["sft-sea-instruct", "sft-reasoning", "rlvr"]
    rl = estimates["rlvr"]
    assert rl.fits and not rl.warnings and rl.steps and rl.trained_tokens
    assert 0 < rl.generation_hours < rl.hours
    # colocated vLLM holds 30% of each GPU: training plans with the rest
    assert rl.memory.capacity == pytest.approx(0.7 * 79.6)
    text = render_estimate(loaded, "8xH100")
    assert "generation while training: vLLM colocate" in text
    # twice the samples per prompt: twice the sampling time per prompt trained; a generation batch (256
    # completions) then holds 16 prompts, not 32, and trl drops fewer of the prompts left over each epoch
    doubled = load_recipe(RECIPE, ["stages.rlvr.train.num_generations=16"])
    rl16 = {e.name: e for e in estimate_recipe(doubled, "8xH100")}["rlvr"]
    prompts = sum(1 for line in Path(PROMPTS).read_text().splitlines() if line.strip())
    trained = {per_batch: prompts // per_batch * per_batch for per_batch in (16, 32)}
    assert rl16.generation_hours == pytest.approx(2 * rl.generation_hours * trained[16] / trained[32])


# --------------------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    ("args", "cuda", "vllm", "expected"),
    [
        ({}, False, False, (False, None)),
        ({}, False, True, (False, None)),  # a CPU machine never uses vLLM
        ({}, True, False, (False, None)),  # no vLLM installed: transformers, said so
        ({}, True, True, (True, "colocate")),
        ({"vllm_mode": "server"}, True, True, (True, "server")),
        ({"use_vllm": False}, True, True, (False, None)),
        ({"use_vllm": True, "vllm_mode": "server"}, True, True, (True, "server")),
    ],
)
def test_generation_is_vllm_colocate_on_a_gpu_and_transformers_on_cpu(args, cuda, vllm, expected):
    choice = choose_generation(args, cuda=cuda, vllm_installed=vllm)
    assert isinstance(choice, GenerationChoice) and (choice.use_vllm, choice.vllm_mode) == expected
    assert choice.why


@pytest.mark.parametrize(("cuda", "vllm", "reason"), [(False, True, "no CUDA GPU"), (True, False, "not installed")])
def test_asking_for_vllm_where_it_cannot_run_is_a_one_line_error(cuda, vllm, reason):
    with pytest.raises(ValueError, match=reason):
        choose_generation({"use_vllm": True}, cuda=cuda, vllm_installed=vllm)


def test_rl_config_checks_the_trainers_own_fields():
    base = {"name": "rl", "kind": "rl", "prompts": {"path": PROMPTS}, "rewards": [{"type": "format"}]}
    with pytest.raises(ValueError, match="num_generations"):
        RLStageConfig.model_validate({**base, "train": {"num_generations": 1}})
    with pytest.raises(ValueError, match=r"reward_weights.*set by tempa"):
        RLStageConfig.model_validate({**base, "train": {"reward_weights": [1.0]}})
    with pytest.raises(ValueError, match="is not a GRPOConfig field; did you mean 'num_generations'"):
        RLStageConfig.model_validate({**base, "train": {"num_generation": 4}})
    with pytest.raises(ValueError, match="is not a RLOOConfig field"):  # GRPO's loss_type is not RLOO's
        RLStageConfig.model_validate({**base, "trainer": "rloo", "train": {"loss_type": "dapo"}})
    grpo = RLStageConfig.model_validate(base).train_args()
    assert grpo["mask_truncated_completions"] is True and grpo["loss_type"] == "dapo" and grpo["beta"] == 0.001
    rloo = RLStageConfig.model_validate({**base, "trainer": "rloo"}).train_args()
    assert "loss_type" not in rloo and rloo["mask_truncated_completions"] is True


def test_rendered_prompts_encode_as_the_template_does(llama3_final_dir):
    """trl encodes a text prompt with the tokenizer's own BOS; the template's must not be doubled."""
    from transformers import AutoTokenizer

    from tempa.alignment.prompts import PromptRow
    from tempa.alignment.rl_stage import render_prompts
    from tempa.chat_templates.thinking import mode_kwargs

    tokenizer = AutoTokenizer.from_pretrained(llama3_final_dir)
    prompts = [PromptRow(id=f"p{mode}", messages=[{"role": "user", "content": "Berapa 5 x 42?"}], thinking_mode=mode)
               for mode in ("on", "off")]
    for prompt, row in zip(prompts, render_prompts(prompts, tokenizer, "prompts.jsonl"), strict=True):
        expected = tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True, **mode_kwargs(prompt.thinking_mode))["input_ids"]
        assert tokenizer(row["prompt"])["input_ids"] == list(expected)


def test_the_batch_is_scored_once_and_completions_keep_how_they_ended(tiny_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from tempa.alignment.prompts import PromptRow
    from tempa.alignment.rl_rewards import ROW_COLUMN, RewardSpec, RLPrompt, trl_reward_functions
    from tempa.chat_templates import bake_tokenizer

    bake_tokenizer(tiny_tokenizer_dir, "llama3_thinking", tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    spec = RewardSpec(rewards=[{"type": "format"}, {"type": "length", "unit": "chars", "per_token": 0.1}],
                      policy_dir=tiny_tokenizer_dir, tokenizer_dir=tmp_path / "tok")
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    functions = trl_reward_functions(tmp_path / "spec.json", tokenizer)
    assert [f.__name__ for f in functions] == ["format", "length"]
    row = RLPrompt(row=PromptRow(id="p", messages=[{"role": "user", "content": "?"}], thinking_mode="on"),
                   prefill="<think>\n").model_dump_json()
    body = tokenizer("2 and 2 make 4.\n</think>\n\nFour.", add_special_tokens=False)["input_ids"]
    ended = [*body, tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    calls = []
    scorer = functions[0].scorer
    score = scorer.rewards.score
    scorer.rewards.score = lambda items: calls.append(items) or score(items)
    columns = {ROW_COLUMN: [row, row]}
    formats = functions[0](prompts=["", ""], completions=["", ""], completion_ids=[ended, body], **columns)
    lengths = functions[1](prompts=["", ""], completions=["", ""], completion_ids=[ended, body], **columns)
    assert len(calls) == 1  # both reward functions read one scoring of the batch
    assert [it.completion.finish_reason for it in calls[0]] == ["stop", "length"]
    assert calls[0][0].completion.full_text == "<think>\n2 and 2 make 4.\n</think>\n\nFour."
    assert formats == [1.0, 0.75]  # the cut-off sample fails only the `ended` check
    assert lengths[0] == lengths[1] < 0


def test_prompts_whose_samples_all_score_the_same_leave_the_model_unchanged(tiny_model_dir, tmp_path):
    """GRPO's group-normalised advantage is 0 when a prompt's samples tie; trl logs the share of such prompts."""
    import datasets
    from transformers import AutoTokenizer

    from tempa.alignment.prompts import PromptRow
    from tempa.alignment.rl_rewards import FACTORY, RewardSpec
    from tempa.alignment.rl_stage import render_prompts
    from tempa.chat_templates import bake_tokenizer
    from tempa.sft.kernels import KernelChoice
    from tempa.sft.train_plan import RewardHook, TrainPlan
    from tempa.sft.train_worker import rl_trainer

    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    prompts = [PromptRow(id=str(i), messages=[{"role": "user", "content": f"{i} + {i}?"}], thinking_mode="on")
               for i in range(2)]
    datasets.Dataset.from_list(render_prompts(prompts, tokenizer, "p")).save_to_disk(str(tmp_path / "data"))
    # Every sample is shorter than free_tokens: the same (zero) length penalty for all.
    spec = RewardSpec(rewards=[{"type": "length", "free_tokens": 1000}], policy_dir=tiny_model_dir,
                      tokenizer_dir=tmp_path / "tok")
    (tmp_path / "rewards.json").write_text(spec.model_dump_json())
    config = RLStageConfig.model_validate({
        "name": "rl", "kind": "rl", "prompts": {"path": PROMPTS}, "rewards": [{"type": "length"}],
        "train": {"num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 6,
                  "max_steps": 1, "learning_rate": 1.0e-2, "warmup_steps": 0, "beta": 0.0,
                  "mask_truncated_completions": False,  # all cut off: masking alone would zero the loss
                  "activation_checkpointing": False, "save_strategy": "no", "logging_steps": 1}})
    plan = TrainPlan.standalone(tiny_model_dir, tmp_path / "out", config.train_args(), trainer="grpo",
                                train_data=tmp_path / "data", tokenizer_dir=tmp_path / "tok",
                                rewards=RewardHook(factory=FACTORY, spec=tmp_path / "rewards.json"))
    trainer = rl_trainer(plan, tokenizer, KernelChoice(attn_implementation=None, use_liger_kernel=False))
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    (logged,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged["frac_reward_zero_std"] == 1.0 and logged["loss"] == 0.0
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_lora_trains_adapters_only(tiny_model_dir, tmp_path):
    """`lora:` trains peft adapters on the frozen policy (merged into final/ by the worker, as for sft)."""
    import datasets
    from transformers import AutoTokenizer

    from tempa.alignment.prompts import PromptRow
    from tempa.alignment.rl_rewards import FACTORY, RewardSpec
    from tempa.alignment.rl_stage import render_prompts
    from tempa.chat_templates import bake_tokenizer
    from tempa.sft.kernels import KernelChoice
    from tempa.sft.train_plan import RewardHook, TrainPlan
    from tempa.sft.train_worker import rl_trainer

    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    prompts = [PromptRow(id=str(i), messages=[{"role": "user", "content": f"{i} + 1?"}], thinking_mode="off")
               for i in range(2)]
    datasets.Dataset.from_list(render_prompts(prompts, tokenizer, "p")).save_to_disk(str(tmp_path / "data"))
    spec = RewardSpec(rewards=[{"type": "length", "unit": "chars", "per_token": 0.05}], policy_dir=tiny_model_dir,
                      tokenizer_dir=tmp_path / "tok")
    (tmp_path / "rewards.json").write_text(spec.model_dump_json())
    config = RLStageConfig.model_validate({
        "name": "rl", "kind": "rl", "trainer": "rloo", "prompts": {"path": PROMPTS},
        "rewards": [{"type": "length"}], "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "train": {"num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 6,
                  "max_steps": 1, "learning_rate": 5.0e-2, "warmup_steps": 0, "beta": 0.0,
                  "mask_truncated_completions": False,  # the tiny model's samples are all cut off
                  "activation_checkpointing": False, "save_strategy": "no", "logging_steps": 1}})
    plan = TrainPlan.standalone(tiny_model_dir, tmp_path / "out", config.train_args(), trainer="rloo",
                                train_data=tmp_path / "data", tokenizer_dir=tmp_path / "tok",
                                rewards=RewardHook(factory=FACTORY, spec=tmp_path / "rewards.json"))
    plan = plan.model_copy(update={"lora": config.lora})
    trainer = rl_trainer(plan, tokenizer, KernelChoice(attn_implementation=None, use_liger_kernel=False))
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    changed = {k for k, v in trainer.model.named_parameters() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k for k in changed)  # the base weights stay frozen
    (logged,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert math.isfinite(logged["loss"]) and "rewards/length/mean" in logged


def test_prompts_may_be_an_earlier_stages_dataset(tmp_path, tiny_model_dir):
    """`prompts.path: stage:NAME` (what PromptSource documents for every prompt-reading stage) is a dependency the
    plan checks and the stage reads; the rl stage took it for a hub dataset id and failed after the stages before."""
    import textwrap

    from stage_helpers import done, make_context
    from tempa.alignment.rl_stage import run_rl
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.runner import plan_run
    from tempa.sft.stage_api import StageError, StageResult

    recipe = tmp_path / "r.yaml"
    text = textwrap.dedent(f"""
        name: t
        base_model: {tiny_model_dir}
        stages:
          - {{name: gen, kind: synthesize, prompts: {{path: {PROMPTS}}}, rewards: [{{type: format}}]}}
          - name: rlvr
            kind: rl
            prompts: {{path: "stage:nope"}}
            rewards: [{{type: format}}]
    """)
    recipe.write_text(text)
    with pytest.raises(RecipeError, match=r"prompts\.path.*'nope' is not an earlier stage"):
        load_recipe(recipe)
    recipe.write_text(text.replace("stage:nope", "stage:gen"))
    loaded = load_recipe(recipe)
    assert "gen" in plan_run(loaded, tmp_path / "run")[1].inputs

    written = tmp_path / "gen.jsonl"
    written.write_text("".join(json.dumps({"prompt": f"Berapa {i} + {i}?", "answer": str(2 * i)}) + "\n"
                               for i in range(3)))

    def launch(*_args):
        raise StageError("stop before training")

    from tempa.chat_templates import bake_tokenizer

    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    ctx = make_context(tmp_path / "run", "rlvr", start_model=tiny_model_dir, tokenizer_dir=tmp_path / "tok",
                       upstream=[done("gen", StageResult(dataset=written), kind="synthesize")], launch=launch)
    with pytest.raises(StageError, match="stop before training"):
        run_rl(loaded.stage("rlvr"), ctx)
    import datasets

    rows = datasets.load_from_disk(str(ctx.stage_dir / "data" / "prompts"))
    assert [json.loads(r)["row"]["answer"] for r in rows["tempa_prompt"]] == ["0", "2", "4"]


@pytest.mark.parametrize("iterations", [1, 2])
def test_the_plan_counts_the_steps_trl_trains(tmp_path, tiny_model_dir, iterations):
    """`tempa plan` steps and trained completions are what trl's GRPOTrainer does: with num_iterations
    (GRPO's mu) each generation batch is sampled once and trained on mu times, and the last prompt, which
    fills no generation batch (2 prompts x 2 samples), is dropped as trl drops it."""
    import textwrap

    import datasets
    from transformers import AutoTokenizer

    from tempa.alignment.prompts import PromptSource, load_prompts
    from tempa.alignment.rl_rewards import FACTORY, RewardSpec
    from tempa.alignment.rl_stage import render_prompts
    from tempa.chat_templates import bake_tokenizer
    from tempa.recipes.estimate import estimate_recipe
    from tempa.sft.kernels import KernelChoice
    from tempa.sft.train_plan import RewardHook, TrainPlan
    from tempa.sft.train_worker import rl_trainer

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Berapa {i} + {i}?", "answer": str(2 * i)}) + "\n"
                               for i in range(5)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: t
        base_model: {tiny_model_dir}
        launch: {{accelerate_config: single, num_processes: 1}}
        stages:
          - name: rlvr
            kind: rl
            prompts: {{path: {prompts}}}
            rewards: [{{type: length, unit: chars, per_token: 0.05}}]
            train: {{num_generations: 2, per_device_train_batch_size: 4, num_iterations: {iterations},
                     max_completion_length: 4, num_train_epochs: 1, warmup_steps: 0, beta: 0.0,
                     mask_truncated_completions: false, activation_checkpointing: false, save_strategy: "no",
                     logging_steps: 1}}
    """))
    loaded = load_recipe(recipe)
    (planned,) = estimate_recipe(loaded, "1xH100")

    config = loaded.stage("rlvr")
    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    rows = load_prompts(PromptSource(path=str(prompts)), seed=0)
    datasets.Dataset.from_list(render_prompts(rows, tokenizer, "p")).save_to_disk(str(tmp_path / "data"))
    spec = RewardSpec(rewards=config.rewards, policy_dir=tiny_model_dir, tokenizer_dir=tmp_path / "tok")
    (tmp_path / "rewards.json").write_text(spec.model_dump_json())
    plan = TrainPlan.standalone(tiny_model_dir, tmp_path / "out", config.train_args(), trainer="grpo",
                                train_data=tmp_path / "data", tokenizer_dir=tmp_path / "tok",
                                rewards=RewardHook(factory=FACTORY, spec=tmp_path / "rewards.json"))
    trainer = rl_trainer(plan, tokenizer, KernelChoice(attn_implementation=None, use_liger_kernel=False))
    trainer.train()
    assert planned.steps == trainer.state.global_step
    # every step trains one global batch of completions (4 here): the plan's rows are the completions trained,
    # 2 whole generation batches of 2 prompts x 2 samples
    assert planned.global_batch * planned.steps == 2 * 4 * iterations


@pytest.mark.parametrize("temperature", [0, 0.0, -0.7])
def test_a_temperature_that_cannot_sample_a_group_is_refused_by_name(temperature):
    """GRPO and RLOO compare a prompt's samples, and trl divides the policy's logits by the temperature: at
    0 greedy samples tie every group (nothing to learn) and the division is by zero; a negative one is no
    temperature at all. Both were accepted, and failed (or learned nothing) after the stages before."""
    base = {"name": "rl", "kind": "rl", "prompts": {"path": PROMPTS}, "rewards": [{"type": "format"}]}
    with pytest.raises(ValueError, match=r"'temperature': must be above 0"):
        RLStageConfig.model_validate({**base, "train": {"temperature": temperature}})
    train = RLStageConfig.model_validate({**base, "train": {"temperature": 0.6}}).train_args()
    assert train["temperature"] == 0.6


# --------------------------------------------------------------------------- the batch shape, checked at load


def rl_recipe(folder: Path, train: str, launch: str = "{accelerate_config: single}", prompts: str = "") -> Path:
    """A recipe with one rl stage whose `train:` block is ``train`` (one line each key, so errors name a line)."""
    path = folder / "r.yaml"
    path.write_text(f"name: t\nbase_model: tempa:tiny\nlaunch: {launch}\nstages:\n  - name: rlvr\n    kind: rl\n"
                    f"    prompts: {{path: {PROMPTS}{prompts}}}\n    rewards: [{{type: format}}]\n    train:\n"
                    + "".join(f"      {line.strip()}\n" for line in train.split(";")))
    return path


@pytest.mark.parametrize(
    ("launch", "train", "field", "numbers"),
    [
        # 1 process x 4 completions: 3 samples per prompt cannot fill it with whole prompts
        ("{accelerate_config: single}", "num_generations: 3; per_device_train_batch_size: 4", "num_generations",
         "3 does not divide the 4 completions"),
        # 8 processes x 1 x 1: 16 samples of a prompt would span two generation batches
        ("{accelerate_config: ddp}", "num_generations: 16; per_device_train_batch_size: 1", "num_generations",
         "16 does not divide the 8 completions"),
        # launch.global_batch_size sets the accumulation, and with it trl's steps_per_generation: 6 = 2 x 1 x 3
        ("{accelerate_config: single, global_batch_size: 6}", "num_generations: 4; per_device_train_batch_size: 2",
         "num_generations", "4 does not divide the 6 completions"),
        ("{accelerate_config: single}", "num_generations: 4; per_device_train_batch_size: 4; generation_batch_size: 6",
         "generation_batch_size", "6 is not a multiple of per_device_train_batch_size 4 x 1 process"),
    ],
)
def test_a_generation_batch_trl_would_refuse_is_refused_at_load_by_the_recipes_field(tmp_path, launch, train, field,
                                                                                      numbers):
    """trl's GRPOConfig refused these when the worker started (after every stage before it), naming its own
    `generation_batch_size`, which the recipe never set."""
    from tempa.recipes.errors import RecipeError

    path = rl_recipe(tmp_path, train, launch)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(f"{field}:"))
    with pytest.raises(RecipeError, match=re.escape(numbers)) as caught:
        load_recipe(path)
    assert str(caught.value).startswith(f"{path}:{line}: stages[0].train.{field} (stage 'rlvr'): ")
    assert "\n" not in str(caught.value)


def test_a_batch_shape_that_fits_the_launch_loads(tmp_path):
    # 16 samples per prompt fit 8 processes x 1 completion x 2 accumulation steps: the same trl accepts
    loaded = load_recipe(rl_recipe(tmp_path, "num_generations: 16; per_device_train_batch_size: 1; "
                                             "gradient_accumulation_steps: 2", "{accelerate_config: ddp}"))
    assert loaded.stage("rlvr").train_args()["num_generations"] == 16


def test_fewer_prompts_than_one_generation_batch_are_refused_at_load(tmp_path):
    """trl drops a generation batch it cannot fill; with fewer prompts than one it trained nothing, and the worker
    said so in terms of per_device_train_batch_size, which counts completions, not prompts."""
    from tempa.recipes.errors import RecipeError

    train = "num_generations: 2; per_device_train_batch_size: 16"
    with pytest.raises(RecipeError, match=r"prompts\.limit \(stage 'rlvr'\): 6 prompts are fewer than one "
                                          r"generation batch of 8 prompts"):
        load_recipe(rl_recipe(tmp_path, train, prompts=", limit: 6"))
    assert load_recipe(rl_recipe(tmp_path, train, prompts=", limit: 8")).stage("rlvr").prompts.limit == 8


def test_vllm_asked_for_on_a_cpu_launch_is_refused_at_load(tmp_path):
    from tempa.recipes.errors import RecipeError

    with pytest.raises(RecipeError, match=r"stages\[0\]\.train\.use_vllm \(stage 'rlvr'\): .*launch\.use_cpu"):
        load_recipe(rl_recipe(tmp_path, "use_vllm: true", "{accelerate_config: single, use_cpu: true}"))
    assert load_recipe(rl_recipe(tmp_path, "use_vllm: false", "{accelerate_config: single, use_cpu: true}"))


@pytest.mark.parametrize("trainer", ["grpo", "rloo"])
@pytest.mark.parametrize(
    ("per_device", "processes", "accumulation", "size", "steps", "generations"),
    [(8, 1, 1, None, None, 8), (4, 2, 3, None, None, 8), (4, 2, 3, None, None, 6), (2, 4, 1, None, 3, 12),
     (2, 4, 1, None, 3, 5), (4, 2, 1, 24, None, 6), (4, 2, 1, 20, None, 4), (4, 2, 1, 24, None, 5),
     (4, 1, 1, 8, 2, 2)],
)
def test_the_generation_batch_is_the_one_trl_derives(trainer, per_device, processes, accumulation, size, steps,
                                                     generations):
    """tempa's mirror of trl's GRPOConfig / RLOOConfig.__post_init__ refuses what trl refuses and derives the same
    generation batch and steps_per_generation (trl multiplies the per-device batch by the processes: one CPU
    process with per_device x processes is the same arithmetic)."""
    import trl

    from tempa.alignment.rl_config import generation_batch

    train = {"per_device_train_batch_size": per_device, "gradient_accumulation_steps": accumulation,
             "generation_batch_size": size, "steps_per_generation": steps, "num_generations": generations}
    config_class = trl.GRPOConfig if trainer == "grpo" else trl.RLOOConfig
    try:
        theirs = config_class(output_dir="unused", use_cpu=True, report_to="none", **{
            **train, "per_device_train_batch_size": per_device * processes})
    except ValueError:
        theirs = None
    if theirs is None:
        with pytest.raises(ValueError):
            generation_batch(train, processes)
    else:
        ours = generation_batch(train, processes)
        assert (ours.completions, ours.steps) == (theirs.generation_batch_size, theirs.steps_per_generation)
        assert ours.prompts == theirs.generation_batch_size // generations


def test_the_plan_drops_the_prompts_trl_drops_on_8xh100():
    """154 sample prompts, 8 GPUs x 8 completions x 4 accumulation steps = 256 completions = 32 prompts per
    generation batch: trl trains 4 whole batches per epoch and drops 26 prompts; the plan counted 5."""
    from tempa.recipes.estimate import estimate_recipe

    loaded = load_recipe(RECIPE)
    rl = {e.name: e for e in estimate_recipe(loaded, "8xH100")}["rlvr"]
    train = loaded.stage("rlvr").train_args()
    prompts = sum(1 for line in Path(PROMPTS).read_text().splitlines() if line.strip())
    per_batch = 8 * train["per_device_train_batch_size"] * train["gradient_accumulation_steps"] \
        // train["num_generations"]
    assert rl.steps == (prompts // per_batch) * train["num_train_epochs"]
    assert any(f"{prompts % per_batch} of {prompts} prompts" in note for note in rl.notes)


def test_a_lora_rl_stage_is_planned_without_a_reference_copy():
    """trl's GRPOTrainer / RLOOTrainer compute the KL reference of a peft model with its adapters disabled:
    beta > 0 loads no second model then; the plan counted one."""
    from tempa.recipes.estimate import estimate_recipe

    full = {e.name: e for e in estimate_recipe(load_recipe(RECIPE), "8xH100")}["rlvr"]
    lora = {e.name: e for e in estimate_recipe(
        load_recipe(RECIPE, ["stages.rlvr.lora={r: 16, lora_alpha: 32}"]), "8xH100")}["rlvr"]
    assert full.memory.reference > 0 and lora.memory.reference == 0


def test_an_rl_run_without_a_step_says_it_in_prompts_and_generation_batches():
    """The worker said '6 training rows, ... per_device_train_batch_size=16', but those rows are prompts and
    that batch counts completions (a prompts file shorter than one generation batch, which the loader cannot
    count before an earlier stage writes it)."""
    import trl

    from tempa.sft.train_worker import no_step_message

    args = trl.GRPOConfig(output_dir="unused", use_cpu=True, report_to="none", num_generations=2,
                          per_device_train_batch_size=16)
    message = no_step_message(args, 6)
    per_batch = args.generation_batch_size // args.num_generations
    assert f"6 prompts are fewer than one generation batch of {per_batch} prompts" in message
    assert "per_device_train_batch_size 16" in message and "\n" not in message


@pytest.mark.parametrize(
    ("train", "field", "hint"),
    [
        ("loss_type: dapoo", "loss_type", "did you mean 'dapo'"),  # failed at the first loss, after the SFT stages
        ("scale_rewards: grup", "scale_rewards", "did you mean 'group'"),  # failed once the first batch was scored
        ("vllm_mode: colocated", "vllm_mode", "did you mean 'colocate'"),  # failed when vLLM started (GPU only)
        ("importance_sampling_level: seq", "importance_sampling_level", "token, sequence"),
        ("multi_objective_aggregation: sum", "multi_objective_aggregation", "sum_then_normalize"),
    ],
)
def test_a_trl_choice_it_reads_only_while_training_is_refused_at_load_by_the_recipes_field(tmp_path, train, field,
                                                                                          hint):
    """trl types these fields `str` and reads them once training runs, so a misspelt value loaded and failed after
    every stage before the rl stage."""
    from tempa.recipes.errors import RecipeError

    path = rl_recipe(tmp_path, train)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(f"{field}:"))
    with pytest.raises(RecipeError, match=re.escape(hint)) as caught:
        load_recipe(path)
    assert str(caught.value).startswith(f"{path}:{line}: stages[0].train.{field} (stage 'rlvr'): ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("trainer", ["grpo", "rloo"])
def test_the_choices_tempa_accepts_are_the_ones_trl_dispatches_on(trainer):
    """Every name tempa accepts for a choice field is one the installed trl's trainer compares the field with (a trl
    release that drops one fails here, not in a user's run)."""
    import inspect

    import trl
    import trl.generation.vllm_generation as vllm_generation

    from tempa.alignment.rl_config import TRL_CHOICES

    config = trl.GRPOConfig if trainer == "grpo" else trl.RLOOConfig
    source = inspect.getsource(trl.GRPOTrainer if trainer == "grpo" else trl.RLOOTrainer) + inspect.getsource(
        vllm_generation)
    fields = {f.name for f in dataclasses.fields(config)}
    for field, names in TRL_CHOICES.items():
        if field not in fields:
            continue
        for name in names:
            assert f'"{name}"' in source or f"'{name}'" in source, (field, name)


@pytest.mark.parametrize(("written", "read"), [(True, "group"), (False, "none"), ("batch", "batch")])
def test_scale_rewards_true_or_false_is_read_as_trl_reads_it(written, read):
    """trl documents `scale_rewards: false` (Dr. GRPO's no scaling), but types the field `str`: tempa refused it with
    'Input should be a valid string'."""
    import trl

    base = {"name": "rl", "kind": "rl", "prompts": {"path": PROMPTS}, "rewards": [{"type": "format"}]}
    train = RLStageConfig.model_validate({**base, "train": {"scale_rewards": written}}).train_args()
    assert train["scale_rewards"] == read
    assert trl.GRPOConfig(output_dir="unused", use_cpu=True, report_to="none", scale_rewards=written).scale_rewards \
        == read


def test_the_stage_reports_rewards_first_with_each_rewards_spread_and_the_policy_clip(tmp_path, tiny_model_dir):
    """`tempa status` shows a stage's first five metrics: for an rl stage they were the step count, GRPO's loss
    (about 0 by construction) and the attention kernel, and nothing about rewards. Each reward's spread (a reward
    whose std stays 0 teaches nothing) and the share of tokens PPO's clip bounded were in no metric."""
    from stage_helpers import make_context
    from tempa.alignment.rl_stage import run_rl
    from tempa.chat_templates import bake_tokenizer
    from tempa.sft.train_plan import OUTCOME_FILE, TrainOutcome

    # two logged steps as trl 1.16 logs them; the second batch drew only prompts without an `answer` (trl logs None)
    steps = [
        {"loss": 1e-7, "step": 1, "reward": 0.5, "reward_std": 0.4, "kl": 0.0, "completions/clipped_ratio": 0.25,
         "completions/mean_length": 100.0, "clip_ratio/region_mean": 0.0, "frac_reward_zero_std": 0.5,
         "rewards/answer/mean": 0.25, "rewards/answer/std": 0.5, "rewards/format/mean": 1.0, "rewards/format/std": 0.0},
        {"loss": 2e-7, "step": 2, "reward": 0.75, "reward_std": 0.2, "kl": 0.002, "completions/clipped_ratio": 0.0,
         "completions/mean_length": 80.0, "clip_ratio/region_mean": 0.1, "frac_reward_zero_std": 0.0,
         "rewards/answer/mean": None, "rewards/answer/std": None, "rewards/format/mean": 0.5,
         "rewards/format/std": 0.25},
        {"train_loss": 1.5e-7, "step": 2},
    ]

    def launch(_module, _args, _log):
        final = tmp_path / "run" / "rlvr" / "final"
        final.mkdir(parents=True)
        outcome = TrainOutcome(global_step=2, train={"train_loss": 1.5e-7}, log_history=steps)
        (final / OUTCOME_FILE).write_text(outcome.model_dump_json())

    config = RLStageConfig.model_validate({
        "name": "rlvr", "kind": "rl", "prompts": {"path": PROMPTS, "limit": 4},
        "rewards": [{"type": "answer"}, {"type": "format"}], "train": {"num_generations": 2}})
    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    ctx = make_context(tmp_path / "run", "rlvr", start_model=tiny_model_dir, tokenizer_dir=tmp_path / "tok",
                       launch=launch)
    result = run_rl(config, ctx)
    metrics = result.metrics
    assert result.notes == []  # one step's groups told samples apart
    assert list(metrics)[:5] == ["reward", "first_logged_reward", "last_logged_reward", "kl",
                                 "completions_clipped_ratio"]
    assert (metrics["first_logged_reward"], metrics["last_logged_reward"]) == (0.5, 0.75)
    assert metrics["reward"] == pytest.approx(0.625) and metrics["last_kl"] == 0.002
    # a reward's mean and spread over the steps where it applied
    assert (metrics["reward_answer"], metrics["reward_answer_std"]) == (0.25, 0.5)
    assert metrics["reward_format"] == pytest.approx(0.75) and metrics["reward_format_std"] == pytest.approx(0.125)
    # over the samples that ended (mask_truncated_completions): step 1 weighs 0.75, step 2 weighs 1
    assert metrics["clip_ratio_region_mean"] == pytest.approx((0.75 * 0.0 + 1.0 * 0.1) / 1.75)
    assert metrics["kl"] == pytest.approx((0.75 * 0.0 + 1.0 * 0.002) / 1.75)
    assert metrics["global_step"] == 2 and metrics["prompts"] == 4


def test_a_stage_whose_samples_all_scored_alike_says_it_learned_nothing():
    """A new user's rl stage logged reward 0, kl 0, grad_norm 0 on every step (no prompt had an `answer` that
    matched, every sample scored 0) and ended `done`, its weights bit-identical to its start: no run note said so."""
    from tempa.alignment.rl_stage import no_signal

    flat = [{"loss": 0.0, "step": step, "frac_reward_zero_std": 1.0, "rewards/answer/std": 0.0,
             "rewards/length/std": 0.0 if step == 1 else 0.3} for step in (1, 2)]
    note = no_signal(flat, ["answer", "length"], "rl")
    assert note.startswith("rl: every group of samples scored alike on all 2 logged steps (frac_reward_zero_std 1.0)")
    assert "; rewards with no spread: answer." in note
    flat[1]["frac_reward_zero_std"] = 0.5  # one step's groups told samples apart: it learned there
    assert no_signal(flat, ["answer", "length"], "rl") is None
    assert no_signal([{"loss": 0.0, "step": 1}], ["answer"], "rl") is None  # a trainer that logs no such share

