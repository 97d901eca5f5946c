"""Throughput a user can see: trained tokens/s (per device), MFU, padding fraction and an ETA.

:class:`ThroughputMeter` is a transformers ``TrainerCallback``. A forward pre-hook on the model
counts, for every training forward pass, the positions fed in, the real (non-padding) tokens and
the squared document lengths (for causal attention FLOPs), as device tensors, so counting never
waits on the GPU. At each training log the counts are summed over the processes and turned into:

- ``tokens_per_s``: real tokens per second per device (per GPU) over the steps since the last log;
  the time excludes evaluation and checkpoint saves, which happen between logs;
- ``mfu``: model FLOPs per second over the device's peak dense bf16/fp16 FLOP/s, when the device
  is in :data:`PEAK_FLOPS` and training runs in bf16/fp16; model FLOPs per token are 6 x the
  matmul parameters (the input embedding is a lookup; a tied one counts once, as the LM head)
  plus causal attention, 6 x layers x attention width x (length + 1) per token of each document;
  activation checkpointing's recomputation is not counted (the usual model-FLOPs convention);
- ``padding_fraction``: padding positions over all positions fed in, since the last log;
- ``eta_s``: remaining steps x wall seconds per step so far (evaluation and saves included).

The meter writes them into the log dict itself, so the progress line, the trackers
(``report_to``) and the Trainer's ``log_history`` (metrics.json, the report) all get the same
numbers; it must run before the trackers' callbacks (:func:`add_throughput_callbacks`). The
Trainer's last log (``train_runtime``) gets the run's averages under ``train_*`` keys: over the whole
stage, a resumed one included (each checkpoint keeps the totals through its step, in ``trainer_state.json``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from tempa.sft.files import write_atomic
from tempa.sft.run_layout import TRAIN_PROGRESS
from tempa.sft.throughput_summary import PEAK_FLOPS, TrainProgress, format_eta, peak_flops


def matmul_parameters(model: Any) -> int:
    """Parameters that take part in a matmul per token: all of them less an untied input embedding.

    Under DeepSpeed ZeRO-3 a parameter's own size is ``ds_numel`` (its local tensor is a shard).
    """
    def size(p: Any) -> int:
        return int(getattr(p, "ds_numel", 0) or p.numel())

    total = sum(size(p) for p in model.parameters())
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    if embeddings is not None and (head is None or head.weight is not embeddings.weight):
        total -= size(embeddings.weight)
    return total


def flops_per_token_terms(model: Any) -> tuple[float, float]:
    """(6 x matmul parameters, 6 x layers x attention width): FLOPs = a x tokens + b x sum(l(l+1))."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = getattr(config, "num_hidden_layers", 0) or 0
    heads = getattr(config, "num_attention_heads", 0) or 0
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else 0)
    return 6.0 * matmul_parameters(model), 6.0 * layers * heads * head_dim


class _Counts:
    """Running sums on the model's device: real tokens, positions, sum of squared document lengths."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.real: Any = 0
        self.positions = 0
        self.squares: Any = 0

    def add(self, real: Any, positions: int, squares: Any) -> None:
        self.real = self.real + real
        self.positions += positions
        self.squares = self.squares + squares

    def take(self) -> tuple[float, float, float]:
        """The sums as floats, summed over all processes; resets the counts."""
        import torch

        values = [self.real, self.positions, self.squares]
        device = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
        packed = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed)
        self.reset()
        real, positions, squares = packed.tolist()
        return real, positions, squares


def batch_counts(kwargs: dict[str, Any], input_ids: Any) -> tuple[Any, int, Any]:
    """(real tokens, positions, sum of squared document lengths) of one forward's inputs.

    A document of length l contributes l^2 = sum over its positions p of (2p + 1), so the squares
    come from per-token positions without finding where documents end (no device sync).
    """
    import torch

    mask = kwargs.get("attention_mask")
    positions = input_ids.numel()
    if mask is not None and mask.dim() == 2:
        mask = mask.to(torch.int64)
        within = mask.cumsum(-1) - 1  # each real token's position in its row's sequence
        return mask.sum(), positions, ((2 * within + 1) * mask).sum()
    position_ids = kwargs.get("position_ids")
    if position_ids is not None and position_ids.shape[-1] == input_ids.shape[-1]:
        position_ids = position_ids.to(torch.int64).expand_as(input_ids)
        return positions, positions, (2 * position_ids + 1).sum()
    rows, length = input_ids.shape[0], input_ids.shape[-1]
    return positions, positions, rows * length * length


class ThroughputMeter(TrainerCallback, ExportableState):
    """Adds tokens/s, MFU, padding fraction and ETA to every training log (see the module docstring).

    ``peak``: peak FLOP/s per device; None: looked up from the CUDA device's name when training
    runs in bf16/fp16. ``reference_forward``: a frozen reference model also runs forward on every
    trained token (DPO), adding 2 FLOPs per parameter per token.
    """

    def __init__(self, peak: float | None = None, *, reference_forward: bool = False) -> None:
        self.peak = peak
        self.reference_forward = reference_forward
        self._counts = _Counts()
        self._handle: Any = None
        self._per_token = self._per_square = 0.0
        self._world = 1
        self._window_start: float | None = None
        self._window_seconds = 0.0
        self._wall_start = 0.0
        self._first_step = 0
        self.totals = {"tokens": 0.0, "positions": 0.0, "flops": 0.0, "seconds": 0.0}
        # The window's counts taken (over all processes) for a save between logs: in the checkpoint, and in the log.
        self._saved_window = dict.fromkeys(self.totals, 0.0)

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (the Trainer asks at every save): the totals through the step it saves at.

        The window since the last log is taken over all processes before a save (:class:`_WindowAtSave`, on every
        process; only the saving process asks for this).
        """
        totals = {key: value + self._saved_window[key] for key, value in self.totals.items()}
        return {"args": {"peak": self.peak, "reference_forward": self.reference_forward},
                "attributes": {"totals": totals}}

    def _restore(self, state: Any) -> None:
        """A resumed run starts from the totals of the checkpoint it resumes (the stage's averages cover all of it)."""
        # A checkpoint of an earlier tempa has no entry, and the Trainer's save looks its entry up by name.
        saved = state.stateful_callbacks.setdefault(type(self).__name__, self.state())
        totals = saved.get("attributes", {}).get("totals") if isinstance(saved, dict) else None
        if state.global_step > 0 and isinstance(totals, dict):
            self.totals = {key: float(totals.get(key, 0.0)) for key in self.totals}

    # ------------------------------------------------------------------ trainer events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._restore(state)
        scale = 4 / 3 if self.reference_forward else 1.0  # + the reference's forward: a third of fwd + bwd
        per_token, per_square = flops_per_token_terms(model)
        self._per_token, self._per_square = scale * per_token, scale * per_square
        self._world = max(1, int(getattr(args, "world_size", 1) or 1))
        if self.peak is None:
            self.peak = _device_peak(args)
            if self.peak is None and state.is_world_process_zero:  # say why, rather than leave it out silently
                print(f"[tempa] MFU not shown: {_no_peak(args)}", flush=True)
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self._wall_start = time.perf_counter()
        self._first_step = state.global_step  # non-zero after a resume
        self._window_start = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._window_start is None:
            self._window_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._window_start is not None:
            now = time.perf_counter()
            self._window_seconds += now - self._window_start
            self._window_start = now

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        if "loss" in logs:
            added = self._window(state)
        elif "train_runtime" in logs:
            added = self._summary()
        else:
            return
        logs.update(added)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(added)  # the Trainer stored its copy before calling back

    def on_evaluate(self, args, state, control, **kwargs):
        self._pause()

    def on_save(self, args, state, control, **kwargs):
        self._pause()

    def on_train_end(self, args, state, control, **kwargs):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # ------------------------------------------------------------------ counting

    def _count(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        import torch

        if not module.training or not torch.is_grad_enabled():
            return  # evaluation, generation, or a reference forward under no_grad
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return
        self._counts.add(*batch_counts(kwargs, input_ids))

    def _pause(self) -> None:
        # Evaluation and saving run between steps: the window restarts at the next step.
        self._window_start = None

    def _window(self, state: Any) -> dict[str, float]:
        real, positions, flops, seconds = self._close_window()
        out = self._rates(real, positions, flops, seconds)
        done = state.global_step - self._first_step
        if done > 0 and state.max_steps > 0:
            per_step = (time.perf_counter() - self._wall_start) / done
            out["eta_s"] = round(per_step * max(0, state.max_steps - state.global_step), 1)
        return out

    def _summary(self) -> dict[str, float]:
        self._close_window()  # steps after the last training log
        t = self.totals
        rates = self._rates(t["tokens"], t["positions"], t["flops"], t["seconds"])
        return {"train_tokens": t["tokens"], **{f"train_{key}": value for key, value in rates.items()}}

    def keep_window_for_save(self) -> None:
        """Take the window's counts so far (over all processes; every process calls this) for the checkpoint about to
        be saved; the next log still reports them."""
        for key, value in zip(self._saved_window, self._take_window(), strict=True):
            self._saved_window[key] += value

    def _take_window(self) -> tuple[float, float, float, float]:
        """(real tokens, positions, FLOPs, seconds) counted since they were last taken, over all processes."""
        real, positions, squares = self._counts.take()
        seconds, self._window_seconds = self._window_seconds, 0.0
        return real, positions, self._per_token * real + self._per_square * (squares + real), seconds

    def _close_window(self) -> tuple[float, float, float, float]:
        """(real tokens, positions, FLOPs, seconds) since the last log, over all processes; added to the totals."""
        window = [taken + saved for taken, saved in zip(self._take_window(), self._saved_window.values(), strict=True)]
        self._saved_window = dict.fromkeys(self.totals, 0.0)
        for key, value in zip(self.totals, window, strict=True):
            self.totals[key] += value
        real, positions, flops, seconds = window
        return real, positions, flops, seconds

    def _rates(self, real: float, positions: float, flops: float, seconds: float) -> dict[str, float]:
        out: dict[str, float] = {}
        if positions:
            out["padding_fraction"] = _significant(1 - real / positions)
        if seconds > 0 and real:
            out["tokens_per_s"] = _significant(real / self._world / seconds)
            if self.peak:
                out["mfu"] = _significant(flops / self._world / seconds / self.peak)
        return out


def _significant(value: float) -> float:
    """Six significant digits: enough for any dashboard, short in JSON."""
    return float(f"{value:.6g}")


def _device_peak(args: Any) -> float | None:
    import torch

    if not (args.bf16 or args.fp16) or not torch.cuda.is_available() or args.device.type != "cuda":
        return None
    return peak_flops(torch.cuda.get_device_name(args.device))


def _no_peak(args: Any) -> str:
    """Why :func:`_device_peak` knows no peak for this run."""
    import torch

    if not torch.cuda.is_available() or args.device.type != "cuda":
        return f"training on {args.device.type}, not a GPU with a known peak"
    if not (args.bf16 or args.fp16):
        return "training in fp32 (the peaks known are bf16/fp16)"
    return (f"no peak known for {torch.cuda.get_device_name(args.device)} "
            f"(known: {', '.join(name for name, _ in PEAK_FLOPS)})")


class ProgressLine(TrainerCallback):
    """One ``[tempa]`` line per training log (the runner shows these; tqdm bars stay in the log file).

    transformers logs every ``logging_steps`` only, so a stage shorter than that (tempa's default is 10), or what a
    resume leaves of one, showed no step line until it ended and kept no loss of its own; its last steps were in no
    log either. So the first step of a run that reaches no logging step is logged, and the last step always.
    """

    def __init__(self) -> None:
        self._start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = state.global_step  # non-zero after a resume
        if state.is_world_process_zero:  # an earlier attempt's record is not where this one stands
            (Path(args.output_dir) / TRAIN_PROGRESS).unlink(missing_ok=True)

    def on_step_end(self, args, state, control, **kwargs):
        # every process decides alike: the Trainer's log gathers the loss from all of them
        every = state.logging_steps
        if getattr(args.logging_strategy, "value", args.logging_strategy) != "steps" or not every:
            return
        first_logged = (self._start // every + 1) * every
        if state.global_step >= state.max_steps or (
                state.global_step == self._start + 1 and first_logged > state.max_steps):
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or ("loss" not in logs and "eval_loss" not in logs):
            return
        parts = [f"step {state.global_step}/{state.max_steps}"]
        # reward and kl: what an RL run's line should show (GRPO's loss is ~0 by construction); trl logs None for a
        # window with no value
        for key in ("loss", "eval_loss", "reward", "kl", "learning_rate", "grad_norm"):
            if isinstance(logs.get(key), int | float):
                parts.append(f"{key} {float(logs[key]):.4g}")
        if "tokens_per_s" in logs:
            # per device, as the meter logs it: a bare "tok/s" reads as the launch's total
            unit = "tok/s/GPU" if args.device.type == "cuda" else "tok/s/process" if args.world_size > 1 else "tok/s"
            parts.append(f"{logs['tokens_per_s']:,.0f} {unit}")
        if "mfu" in logs:
            parts.append(f"MFU {100 * logs['mfu']:.1f}%")
        if "padding_fraction" in logs:
            parts.append(f"padding {100 * logs['padding_fraction']:.1f}%")
        eta = logs.get("eta_s") if state.global_step < state.max_steps else None
        if eta is not None:
            parts.append(f"eta {format_eta(eta)}")
        print("[tempa] " + " | ".join(parts), flush=True)
        if "loss" not in logs:
            return  # an evaluation's line: the record keeps the training line's rate and ETA
        progress = TrainProgress(step=state.global_step, max_steps=state.max_steps, eta_s=eta,
                                 tokens_per_s=logs.get("tokens_per_s"), at=time.time())
        try:
            write_atomic(Path(args.output_dir) / TRAIN_PROGRESS, progress.model_dump_json())
        except OSError as exc:  # `tempa status`'s view, not worth a training run
            print(f"[tempa] warning: could not write the progress record for `tempa status`: {exc}", flush=True)


class _WindowAtSave(TrainerCallback):
    """Before a checkpoint is saved, has the meter take its window for it (:meth:`ThroughputMeter.state`): a resume
    from a checkpoint saved between training logs lost the steps since the last log from the stage's tokens and
    rate. After the Trainer's flow callback, which decides a save at a step's or an epoch's end; `save_strategy:
    best` decides it after an evaluation, so there the window is taken at every evaluation. Every process runs
    these with the same decisions, so the counts' all-reduce matches across ranks; taking the window early costs
    the log nothing (it reports the counts taken)."""

    def __init__(self, meter: ThroughputMeter) -> None:
        self.meter = meter

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            self.meter.keep_window_for_save()

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:
            self.meter.keep_window_for_save()

    def on_evaluate(self, args, state, control, **kwargs):
        if args.save_strategy == "best":
            self.meter.keep_window_for_save()


def add_throughput_callbacks(trainer: Any, meter: ThroughputMeter | None = None) -> ThroughputMeter:
    """Put a meter first among the trainer's callbacks (before the trackers) and the progress line last."""
    meter = meter or ThroughputMeter()
    trainer.callback_handler.callbacks.insert(0, meter)
    trainer.add_callback(_WindowAtSave(meter))
    trainer.add_callback(ProgressLine())
    return meter
