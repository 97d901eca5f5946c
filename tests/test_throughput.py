"""What the user sees while a stage trains (tempa.sft.throughput): tokens/s, MFU, padding, ETA.

Real short trainings on the tiny model; every number the meter logs is checked against an
independent count (the batches the data collator produced, the dataset's own lengths, the
model's shape, the clock), not just for being there.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from sft_helpers import prepared_rows
from tempa.sft.run_layout import TRAIN_PROGRESS
from tempa.sft.throughput import ThroughputMeter, add_throughput_callbacks
from tempa.sft.throughput_summary import TrainProgress, format_eta, peak_flops

PEAK = 1e12  # a nominal peak, so the CPU run reports an MFU to check


class Clock(TrainerCallback):
    """Runs after the meter (like a tracker): what it was given, when, and how long each step took."""

    def __init__(self) -> None:
        self.logs: list[tuple[float, int, dict[str, Any]]] = []
        self.step_seconds = 0.0
        self.started = self._step = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._step = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds += time.perf_counter() - self._step

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((time.perf_counter() - self.started, state.global_step, dict(logs)))


class CollatedBatches:
    """Wraps the trainer's data collator and keeps every batch it produced (the independent count)."""

    def __init__(self, collator: Any) -> None:
        self.collator, self.batches = collator, []

    def __call__(self, examples):
        batch = self.collator(examples)
        self.batches.append({k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)})
        return batch


@pytest.fixture(scope="module")
def rows(tmp_path_factory, tiny_model_dir):
    return prepared_rows(tmp_path_factory.mktemp("throughput"), tiny_model_dir, n=8, seed=2)


def sft_run(model_dir: Path, rows: Any, out: Path, peak: float | None = PEAK, resume: Path | None = None,
            **train: Any):
    from trl import SFTConfig, SFTTrainer

    from tempa.sft.config import DEFAULT_TRAIN_ARGS
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import trl_config_kwargs

    dataset, tokenizer = rows
    args = {**DEFAULT_TRAIN_ARGS, "max_length": 512, "logging_steps": 2, "save_strategy": "steps", "save_steps": 3,
            "dataloader_num_workers": 0, "report_to": ["tensorboard"], **train}
    config = SFTConfig(**{**trl_config_kwargs(TrainPlan.standalone(model_dir, out, args)), "assistant_only_loss": False})
    trainer = SFTTrainer(model=str(model_dir), args=config, train_dataset=dataset, processing_class=tokenizer)
    batches = CollatedBatches(trainer.data_collator)
    trainer.data_collator = batches
    add_throughput_callbacks(trainer, ThroughputMeter(peak=peak))
    clock = Clock()
    trainer.add_callback(clock)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer, clock, batches.batches, time.perf_counter() - started


def document_lengths(batch: dict[str, torch.Tensor]) -> list[int]:
    if "attention_mask" in batch:
        return batch["attention_mask"].sum(-1).tolist()
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    return [b - a for a, b in itertools.pairwise([*starts, batch["position_ids"].shape[1]])]


def expected_flops(model: Any, lengths: list[int]) -> float:
    """Model FLOPs of training on documents of ``lengths``, from the Llama shape (not from the meter's code)."""
    c = model.config
    h, i, layers, heads, kv = (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                               c.num_key_value_heads)
    d = c.head_dim
    layer = h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * i + 2 * h  # q, k, v, o, SwiGLU, 2 norms
    matmul = layers * layer + h + c.vocab_size * h  # + final norm + LM head (the input embedding is a lookup)
    tokens = sum(lengths)
    return 6 * matmul * tokens + 6 * layers * heads * d * sum(n * (n + 1) for n in lengths)


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_logged_throughput_matches_the_tokens_trained_and_the_time_taken(tmp_path, tiny_model_dir, rows, capsys,
                                                                         packing):
    train = {"packing": packing, "per_device_train_batch_size": 4, "max_steps": 4}
    trainer, clock, batches, wall = sft_run(tiny_model_dir, rows, tmp_path, **train)
    history = trainer.state.log_history
    windows = [entry for entry in history if "loss" in entry]
    summary = next(entry for entry in history if "train_runtime" in entry)
    assert len(batches) == 4 and len(windows) == 2

    # tokens and padding: what the collator handed the model
    real = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batches)
    positions = sum(b["input_ids"].numel() for b in batches)
    assert summary["train_tokens"] == real
    assert summary["train_padding_fraction"] == pytest.approx(1 - real / positions, abs=1e-6)
    assert (summary["train_padding_fraction"] == 0) == packing  # padding-free packing vs padded batches
    per_window = [batches[2 * k:2 * k + 2] for k in range(2)]  # logging_steps 2, one batch per step
    lengths = [[n for b in window_batches for n in document_lengths(b)] for window_batches in per_window]
    for window, window_batches, window_lengths in zip(windows, per_window, lengths, strict=True):
        window_positions = sum(b["input_ids"].numel() for b in window_batches)
        assert window["padding_fraction"] == pytest.approx(1 - sum(window_lengths) / window_positions, abs=1e-6)

    # tokens/s: the windows' seconds add up to the run's, and lie between the steps' own time and the wall time
    seconds = [sum(window_lengths) / window["tokens_per_s"] for window, window_lengths in zip(windows, lengths,
                                                                                                strict=True)]
    assert sum(seconds) == pytest.approx(real / summary["train_tokens_per_s"], rel=1e-3)
    assert 0.99 * clock.step_seconds <= sum(seconds) <= wall

    # MFU: the same seconds, with the FLOPs of these documents on this model shape
    for window, window_seconds, window_lengths in zip(windows, seconds, lengths, strict=True):
        flops = expected_flops(trainer.model, window_lengths)
        assert window["mfu"] == pytest.approx(flops / window_seconds / PEAK, rel=1e-3)

    # ETA: wall seconds per step so far times the steps left, at the moment of each log
    for at, step, logs in clock.logs:
        if "eta_s" in logs:
            expected = at / step * (4 - step)
            assert logs["eta_s"] == pytest.approx(expected, rel=0.05, abs=0.2)

    # the progress line shows the logged numbers; the tracker (TensorBoard) and log_history got them too
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[tempa] step")]
    assert len(printed) == 2
    for line, window in zip(printed, windows, strict=True):
        assert f"{window['tokens_per_s']:,.0f} tok/s" in line and f"MFU {100 * window['mfu']:.1f}%" in line
        assert f"padding {100 * window['padding_fraction']:.1f}%" in line
    for line, window in zip(printed[:-1], windows[:-1], strict=True):
        assert re.search(r"eta \d+:\d\d:\d\d", line) and f"eta {format_eta(window['eta_s'])}" in line
    # `tempa status` reads the last line's numbers from the launch's checkpoints folder
    progress = TrainProgress.model_validate_json((tmp_path / TRAIN_PROGRESS).read_text())
    assert (progress.step, progress.max_steps, progress.eta_s) == (4, 4, None)
    assert progress.tokens_per_s == windows[-1]["tokens_per_s"]
    tracked = [logs for _, _, logs in clock.logs if "loss" in logs]
    assert [t["tokens_per_s"] for t in tracked] == [w["tokens_per_s"] for w in windows]
    tensorboard_scalars(tmp_path, "train/tokens_per_s", expect=len(windows))


def test_a_resumed_run_reports_the_whole_stages_tokens_and_rate(tmp_path, tiny_model_dir, rows):
    """A stage killed after its checkpoint at step 2 and resumed: its metrics.json carried only the tokens of steps
    3-4 as `train_tokens` ("every token trained"), and a rate over those steps alone."""
    train = {"packing": True, "per_device_train_batch_size": 4, "max_steps": 4, "save_steps": 2}
    whole, *_ = sft_run(tiny_model_dir, rows, tmp_path / "whole", **train)
    resumed, *_ = sft_run(tiny_model_dir, rows, tmp_path / "resumed", resume=tmp_path / "whole" / "checkpoint-2",
                          **train)
    summary = {name: next(e for e in trainer.state.log_history if "train_runtime" in e)
               for name, trainer in (("whole", whole), ("resumed", resumed))}
    windows = [e for e in resumed.state.log_history if "loss" in e]  # steps 1-2 from the checkpoint, 3-4 resumed
    assert [w["step"] for w in windows] == [2, 4]
    assert summary["resumed"]["train_tokens"] == summary["whole"]["train_tokens"]
    # the rate is over both parts' seconds: the tokens of each window over its own rate add up to the same seconds
    history = [e for e in whole.state.log_history if "loss" in e]
    tokens = [history[0]["num_tokens"], history[1]["num_tokens"] - history[0]["num_tokens"]]  # trl's own count
    seconds = tokens[0] / windows[0]["tokens_per_s"] + tokens[1] / windows[1]["tokens_per_s"]
    assert summary["resumed"]["train_tokens"] / summary["resumed"]["train_tokens_per_s"] == pytest.approx(
        seconds, rel=1e-3)

    # a checkpoint written before the meter kept its totals: the run resumes and saves (the Trainer looks the
    # meter's entry up by name at every save), counting from the checkpoint on
    old = tmp_path / "old" / "checkpoint-2"
    shutil.copytree(tmp_path / "whole" / "checkpoint-2", old)
    trainer_state = json.loads((old / "trainer_state.json").read_text())
    del trainer_state["stateful_callbacks"]["ThroughputMeter"]
    (old / "trainer_state.json").write_text(json.dumps(trainer_state))
    from_old, *_ = sft_run(tiny_model_dir, rows, tmp_path / "from-old", resume=old, **train)
    saved = json.loads((tmp_path / "from-old" / "checkpoint-4" / "trainer_state.json").read_text())
    old_summary = next(e for e in from_old.state.log_history if "train_runtime" in e)
    assert saved["stateful_callbacks"]["ThroughputMeter"]["attributes"]["totals"]["tokens"] == old_summary[
        "train_tokens"] == tokens[1]


@pytest.mark.parametrize("save", ["steps", "epoch"])
def test_a_checkpoint_between_logs_keeps_the_tokens_since_the_last_log(tmp_path, tiny_model_dir, rows, save):
    """A checkpoint kept the totals as of the last training log: with `save_steps` 2 and `logging_steps` 4, a run
    resumed from checkpoint-2 counted steps 3-4 alone as the stage's `train_tokens`, and its rate over them; and so
    with `save_strategy: epoch`, two steps an epoch (a review's finding: epoch saves are decided at the epoch's end)."""
    train = {"packing": True, "per_device_train_batch_size": 4, "max_steps": 4, "save_steps": 2, "logging_steps": 4}
    if save == "epoch":
        train = {**train, "packing": False, "max_steps": -1, "num_train_epochs": 2, "save_strategy": "epoch",
                 "per_device_train_batch_size": len(rows[0]) // 2}  # two steps an epoch: checkpoint-2 at the first
    whole, *_ = sft_run(tiny_model_dir, rows, tmp_path / "whole", **train)
    resumed, *_ = sft_run(tiny_model_dir, rows, tmp_path / "resumed", resume=tmp_path / "whole" / "checkpoint-2",
                          **train)
    summary = {name: next(e for e in trainer.state.log_history if "train_runtime" in e)
               for name, trainer in (("whole", whole), ("resumed", resumed))}
    saved = json.loads((tmp_path / "whole" / "checkpoint-2" / "trainer_state.json").read_text())
    kept = saved["stateful_callbacks"]["ThroughputMeter"]["attributes"]["totals"]
    assert 0 < kept["tokens"] < summary["whole"]["train_tokens"] and kept["seconds"] > 0
    assert summary["resumed"]["train_tokens"] == summary["whole"]["train_tokens"]
    # the one log (step 4) still covers its whole window, the steps before the save included
    [logged] = [e for e in whole.state.log_history if "loss" in e]
    assert logged["tokens_per_s"] * kept["seconds"] < summary["whole"]["train_tokens"]


def test_a_run_without_a_known_peak_says_why_mfu_is_not_shown(tmp_path, tiny_model_dir, rows, capsys, monkeypatch):
    """MFU was left out of the progress line without a word on a CPU, in fp32 or on a GPU of unknown peak."""
    from types import SimpleNamespace

    from tempa.sft import throughput

    trainer, *_ = sft_run(tiny_model_dir, rows, tmp_path, peak=None, max_steps=2)
    assert not any("mfu" in entry for entry in trainer.state.log_history)
    out = capsys.readouterr().out
    assert "[tempa] MFU not shown: training on cpu, not a GPU with a known peak" in out.splitlines()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA B200")
    gpu = SimpleNamespace(device=torch.device("cuda", 0), bf16=True, fp16=False)
    assert throughput._device_peak(gpu) is None
    assert throughput._no_peak(gpu).startswith("no peak known for NVIDIA B200 (known: H100 PCIe, H100")
    assert throughput._no_peak(SimpleNamespace(device=gpu.device, bf16=False, fp16=False)) == (
        "training in fp32 (the peaks known are bf16/fp16)")


def tensorboard_scalars(folder: Path, tag: str, *, expect: int) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(folder.rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert len(acc.Scalars(tag)) == expect and all(s.value > 0 for s in acc.Scalars(tag))


def test_dpo_counts_both_sequences_of_every_pair(tmp_path, tiny_model_dir):
    """The preference stage's trainer: real tokens are prompt + chosen and prompt + rejected, padding the rest."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from tempa.chat_templates import load_template
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import trl_config_kwargs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = load_template("llama3_thinking")
    words = ["satu", "dua", "tiga", "empat"]
    pairs = Dataset.from_list([{
        "prompt": [{"role": "user", "content": f"Ulangi {' '.join(words[:1 + i % 4])}"}],
        "chosen": [{"role": "assistant", "content": " ".join(words[: 1 + i % 4])}],
        "rejected": [{"role": "assistant", "content": "tidak " * (1 + 2 * i)}],
    } for i in range(4)])
    args = {"max_steps": 3, "per_device_train_batch_size": 4, "logging_steps": 2, "save_strategy": "no",
            "max_length": 512, "report_to": "none", "dataloader_num_workers": 0, "learning_rate": 1e-4}
    plan = TrainPlan.standalone(tiny_model_dir, tmp_path, args, trainer="dpo")
    trainer = DPOTrainer(model=str(tiny_model_dir), args=DPOConfig(**trl_config_kwargs(plan)), train_dataset=pairs,
                         processing_class=tokenizer)
    add_throughput_callbacks(trainer, ThroughputMeter(peak=PEAK, reference_forward=True))
    trainer.train()
    data = trainer.train_dataset
    sequences = [len(p) + len(c) for p, c in zip(data["prompt_ids"], data["chosen_ids"], strict=True)] + [
        len(p) + len(r) for p, r in zip(data["prompt_ids"], data["rejected_ids"], strict=True)]
    summary = next(entry for entry in trainer.state.log_history if "train_runtime" in entry)
    assert summary["train_tokens"] == 3 * sum(sequences)  # three steps over all 4 pairs; the third is not logged
    padding = 1 - sum(sequences) / (len(sequences) * max(sequences))
    assert summary["train_padding_fraction"] == pytest.approx(padding, abs=1e-6)
    # each padded row is one sequence; the frozen reference model's forward adds a third to fwd + bwd
    seconds = summary["train_tokens"] / summary["train_tokens_per_s"]
    flops = 4 / 3 * 3 * expected_flops(trainer.model, sequences)
    assert summary["train_mfu"] == pytest.approx(flops / seconds / PEAK, rel=1e-3)


def test_rounds_combine_into_one_headline():
    from tempa.sft.throughput_summary import combined_headline

    # 1,000 tokens in 10 s at MFU 0.2 over 2,000 positions, then 3,000 tokens in 10 s at MFU 0.4 over 4,000
    first = {"train_tokens": 1000, "train_tokens_per_s": 100.0, "train_mfu": 0.2, "train_padding_fraction": 0.5}
    second = {"train_tokens": 3000, "train_tokens_per_s": 300.0, "train_mfu": 0.4, "train_padding_fraction": 0.25}
    combined = combined_headline([first, second])
    assert combined == pytest.approx({"train_tokens": 4000, "train_tokens_per_s": 200.0, "train_mfu": 0.3,
                                      "train_padding_fraction": 1 / 3})
    without_peak = {key: value for key, value in second.items() if key != "train_mfu"}
    assert "train_mfu" not in combined_headline([first, without_peak])  # not a mean over part of the time
    assert combined_headline([{}, {"train_loss": 1.0}]) == {}


def test_the_progress_line_says_what_its_tokens_per_second_are_per(capsys, tmp_path):
    """Two CPU processes printed their per-process rate as plain 'tok/s', which reads as the launch's total."""
    from types import SimpleNamespace

    from tempa.sft.throughput import ProgressLine

    state = SimpleNamespace(is_world_process_zero=True, global_step=2, max_steps=4)
    for device, world, unit in (("cuda", 8, "tok/s/GPU"), ("cuda", 1, "tok/s/GPU"), ("cpu", 2, "tok/s/process"),
                                ("cpu", 1, "tok/s")):
        args = SimpleNamespace(device=torch.device(device), world_size=world, output_dir=str(tmp_path))
        ProgressLine().on_log(args, state, None, logs={"loss": 1.0, "tokens_per_s": 1234.4})
        assert capsys.readouterr().out.strip().endswith(f"| 1,234 {unit}")


def test_an_rl_steps_line_shows_its_reward_and_kl(capsys, tmp_path):
    """GRPO's loss is ~0 by construction: the line showed it and nothing that says whether RL works."""
    from types import SimpleNamespace

    from tempa.sft.throughput import ProgressLine

    state = SimpleNamespace(is_world_process_zero=True, global_step=3, max_steps=8)
    args = SimpleNamespace(device=torch.device("cpu"), world_size=1, output_dir=str(tmp_path))
    ProgressLine().on_log(args, state, None, logs={"loss": 0.0, "reward": 0.625, "kl": 0.0012, "grad_norm": None})
    assert capsys.readouterr().out.strip() == "[tempa] step 3/8 | loss 0 | reward 0.625 | kl 0.0012"


def test_device_peaks_and_eta_format():
    assert peak_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe") == pytest.approx(756e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12)
    assert peak_flops("Some future accelerator") is None
    assert [format_eta(s) for s in (0, 59.6, 3599, 3600 * 27 + 61)] == ["0:00:00", "0:01:00", "0:59:59", "27:01:01"]


def test_status_reads_where_a_launch_stands_and_counts_its_eta_down(tmp_path):
    """`tempa status` said "running" and the last checkpoint; how far the stage was and when it would end were only
    in its log. The progress line leaves a record; an earlier attempt's is gone once a new one starts training."""
    from types import SimpleNamespace

    from tempa.sft.throughput import ProgressLine
    from tempa.sft.throughput_summary import latest_progress

    args = SimpleNamespace(device=torch.device("cpu"), world_size=1, output_dir=str(tmp_path / "checkpoints"))
    line = ProgressLine()
    line.on_log(args, SimpleNamespace(is_world_process_zero=True, global_step=40, max_steps=600), None,
                logs={"loss": 1.0, "tokens_per_s": 1234.4, "eta_s": 3723.0})
    progress = latest_progress(tmp_path)
    assert (progress.step, progress.max_steps, progress.eta_s, progress.tokens_per_s) == (40, 600, 3723.0, 1234.4)
    assert progress.note(now=progress.at + 23) == "step 40/600, eta 1:01:40, 1,234 tok/s/device (23 s ago)"
    assert progress.note(now=progress.at + 4000) == "step 40/600, eta 0:00:00, 1,234 tok/s/device (1:06:40 ago)"
    # an evaluation's line (no rate, no ETA) leaves the training line's record; a killed attempt's record is not
    # the running one's (it was written before the attempt started)
    line.on_log(args, SimpleNamespace(is_world_process_zero=True, global_step=40, max_steps=600), None,
                logs={"eval_loss": 2.0})
    assert latest_progress(tmp_path) == progress
    assert latest_progress(tmp_path, since=progress.at + 1) is None
    # a round's launch (preference, rl) under the stage folder: the newest record wins
    later = ProgressLine()
    later.on_log(SimpleNamespace(**{**vars(args), "output_dir": str(tmp_path / "round-2" / "checkpoints")}),
                 SimpleNamespace(is_world_process_zero=True, global_step=8, max_steps=8), None, logs={"loss": 0.5})
    assert latest_progress(tmp_path).note(now=latest_progress(tmp_path).at) == "step 8/8 (0 s ago)"
    line.on_train_begin(args, SimpleNamespace(is_world_process_zero=True, global_step=40), None)
    assert not (tmp_path / "checkpoints" / TRAIN_PROGRESS).exists()
