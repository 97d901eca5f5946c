"""The sft stage end to end: real trl SFTTrainer, launched as a subprocess, on the tiny model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sft_helpers import sft_recipe
from tempa.recipes.loader import load_recipe
from tempa.recipes.rundir import read_manifest
from tempa.recipes.runner import run_recipe
from tempa.sft.checkpoints import COMPLETE_MARKER, complete_checkpoints
from tempa.sft.stage import SFTResult


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, tiny_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("sft-single")
    recipe = sft_recipe(folder, tiny_model_dir)
    run_recipe(load_recipe(recipe, ["stages.sft.train.save_total_limit=10"]), folder / "run")
    return folder / "run"


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_sft_trains_saves_and_records_metrics(single_run, tiny_model_dir):
    stage = single_run / "sft"
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["global_step"] == 12
    assert metrics["last_logged_loss"] < metrics["first_logged_loss"]
    assert metrics["eval_loss"] > 0  # held-out rows were evaluated
    # the kernels the worker picked on this CPU, and the run's throughput (packed rows: no padding)
    assert (metrics["attn_implementation"], metrics["liger_kernel"]) == ("tempa_doc_sdpa", False)
    assert metrics["train_tokens_per_s"] > 0 and metrics["train_padding_fraction"] == 0
    # the tokens trained are the worker's own count over every step (metrics.json said one pass over the data:
    # 3x too few after 3 epochs), and the data's tokens are the prepared mix's
    from tempa.sft.throughput_summary import throughput_headline
    from tempa.sft.train_plan import TrainOutcome

    worker = throughput_headline(TrainOutcome.read(stage / "final").log_history)
    mix = json.loads((stage / "data" / "mix.json").read_text())
    assert metrics["train_tokens"] == worker["train_tokens"] > 0 and metrics["data_tokens"] == mix["total"][
        "tokens_kept"]
    before, after = weights(tiny_model_dir), weights(stage / "final")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the stage's model folder holds no pickle (the Trainer writes training_args.bin beside the weights)
    assert not [p.name for p in (stage / "final").iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    # every checkpoint the trainer kept carries the completion marker
    kept = complete_checkpoints(stage / "checkpoints")
    assert [c.path.name for c in kept] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert [c.step for c in kept] == [4, 8, 12]
    assert all((c.path / COMPLETE_MARKER).is_file() for c in kept)
    # the runner recorded the stage's typed result: its model, checkpoints and data mix
    manifest = read_manifest(stage)
    assert manifest is not None and manifest.result is not None
    result = SFTResult.model_validate(manifest.result, context={"run_dir": single_run})
    assert result.model == stage / "final" and result.checkpoints == kept
    assert result.data.total.train_samples == metrics["train_samples"] > 0 and "train_rows" not in metrics
    assert manifest.result["model"] == "sft/final"  # stored relative: the run directory may move
    # the exact launch command is kept for re-running the stage by hand
    assert "tempa.sft.train_worker" in (stage / "logs" / "launch.sh").read_text()
    # the final weights are evaluated once: the last step's evaluation is reused, not run again
    history = json.loads((stage / "final" / "tempa_train_metrics.json").read_text())["log_history"]
    final_evals = [e for e in history if "eval_loss" in e and e["step"] == metrics["global_step"]]
    assert len(final_evals) == 1 and final_evals[0]["eval_loss"] == metrics["eval_loss"]
    assert not (stage / "checkpoints" / "README.md").exists()  # trl's stub card ("fine-tuned version of [None]")


def test_sft_final_model_loads_and_carries_the_thinking_template(single_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = single_run / "sft" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    messages = [{"role": "user", "content": "Ulangi: satu dua"}]
    on = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    off = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, thinking_mode="off")
    assert on != off and "<think>" in on
    ids = tokenizer(off, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_sft_labels_cover_only_assistant_tokens(single_run):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(single_run / "tokenizer")
    plan = json.loads((single_run / "sft" / "train_plan.json").read_text())
    train = load_from_disk(plan["train_data"])  # exactly what the training processes read
    header = tokenizer.convert_tokens_to_ids("<|start_header_id|>")
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for row in train.select(range(8)):
        ids, mask = row["input_ids"], row["assistant_masks"]
        trained = [t for t, m in zip(ids, mask, strict=True) if m]
        assert trained and trained[-1] == eot  # the end-of-turn token is trained
        assert header not in trained  # headers never are
        assert sum(mask) < len(mask)  # prompt tokens are not trained


def test_sft_change_of_learning_rate_reruns_only_training(single_run, tiny_model_dir, tmp_path):
    from tempa.recipes.runner import plan_run

    recipe = single_run.parent / "sft.yaml"
    plans = plan_run(load_recipe(recipe, ["stages.sft.train.learning_rate=1e-3"]), single_run)
    assert plans[0].action == "rerun" and plans[0].reason.startswith("changed since it ran: stage config changed: ")
    assert "train.learning_rate 0.003 → 0.001" in plans[0].reason
    same = plan_run(load_recipe(recipe, ["stages.sft.train.save_total_limit=10"]), single_run)
    assert same[0].action == "skip"


def test_failed_training_process_surfaces_its_error_and_log(tmp_path, tiny_model_dir):
    from tempa.sft.files import json_or_none
    from tempa.sft.run_layout import DONE
    from tempa.sft.stage_api import StageError

    recipe = sft_recipe(tmp_path, tiny_model_dir, max_steps=2)
    # valid for the schema (a float), refused by torch's AdamW inside the launched process
    loaded = load_recipe(recipe, ["stages.sft.train.adam_beta1=1.5"])
    with pytest.raises(StageError) as err:
        run_recipe(loaded, tmp_path / "run")
    message = str(err.value)
    assert message.startswith("stage 'sft' failed: training process exited with code")
    assert "Invalid beta parameter at index 0: 1.5" in message
    log_file = tmp_path / "run" / "sft" / "logs" / "train.log"
    assert f"(full log: {log_file})" in message and log_file.is_file()
    assert json_or_none(tmp_path / "run" / "sft" / "manifest.json")["status"] == "failed"
    assert not (tmp_path / "run" / "sft" / DONE).exists()


def test_a_finished_launch_leaves_no_pid_file(single_run):
    # the pid file exists only while a training group may be alive (for reaping after a kill)
    assert not (single_run / "sft" / "logs" / "launch.pid").exists()


def test_training_that_takes_no_optimizer_step_is_an_error(tmp_path, tiny_model_dir):
    """Fewer rows than one batch with drop_last: the Trainer "finishes" at step 0, which is no trained model.

    The worker itself (``python -m tempa.sft.train_worker``), run in-process on a plan as the stage writes it.
    """
    from transformers import AutoTokenizer

    from sft_helpers import write_rows
    from tempa.chat_templates import bake_tokenizer
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import main as train_main

    tokenizer_dir = bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tokenizer")
    write_rows(tmp_path / "rows.jsonl", n=6)
    data = DataConfig.model_validate({"sources": [{"name": "r", "path": str(tmp_path / "rows.jsonl")}]})
    prepared = prepare_sft_data(data, AutoTokenizer.from_pretrained(tokenizer_dir), out_dir=tmp_path / "data",
                                cache_dir=tmp_path / "cache", seed=0)
    stage_dir = tmp_path / "run" / "sft"
    train_args = {"max_steps": 3, "per_device_train_batch_size": 64, "dataloader_drop_last": True,
                  "max_length": 256, "report_to": "none", "save_strategy": "no"}
    plan = TrainPlan.standalone(tiny_model_dir, stage_dir, train_args, train_data=prepared.train_path,
                                tokenizer_dir=tokenizer_dir)
    plan.model_copy(update={"checkpoints_dir": stage_dir / "checkpoints"}).write(tmp_path / "plan.json")
    with pytest.raises(RuntimeError, match=r"training took no optimizer step \(\d+ training rows, .*"
                                           r"per_device_train_batch_size=64"):
        train_main(["--plan", str(tmp_path / "plan.json")])
    assert not (stage_dir / "final").exists()


def test_the_terminal_hears_from_the_launch_before_the_first_step(single_run):
    # The runner shows only the workers' [tempa] lines (launcher._stream): model loading and data set-up were
    # silent before. They are in train.log in the order the terminal shows them.
    lines = (single_run / "sft" / "logs" / "train.log").read_text(encoding="utf-8").splitlines()
    loading = next(i for i, line in enumerate(lines) if "loading the model (" in line and "into trl's SFT trainer" in line)
    ready = next(i for i, line in enumerate(lines) if re.search(r"ready in \d+s; training starts$", line))
    first_step = next(i for i, line in enumerate(lines) if re.match(r"\[tempa\] step \d+/", line))
    assert loading < ready < first_step
