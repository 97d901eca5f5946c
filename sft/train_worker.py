"""The training worker: `python -m tempa.sft.train_worker --plan train_plan.json`, under accelerate/torchrun.

One worker for every trainer tempa launches: trl's SFTTrainer (the sft stage), DPOTrainer (each
round of the preference stage) and GRPOTrainer / RLOOTrainer (the rl stage). Everything it needs is in the :class:`TrainPlan` the stage wrote
(data already tokenised or paired on disk), so a stage can be re-run by hand with the command
the runner logged. Checkpoints get COMPLETE markers and a restart resumes from the last complete
one; the final model is written to a temporary folder and renamed into place, so ``final/`` is
either whole or absent.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tempa.sft.checkpoints import (
    COMPLETE_MARKER,
    CheckpointLaunch,
    checkpoint_step,
    last_complete_checkpoint,
    launch_refusal,
    rotate_checkpoints,
)
from tempa.sft.files import remove_tree, sync_tree, umask_modes, write_marker
from tempa.sft.global_batch import data_parallel, launch_train_args, per_device_batch, rows_per_step
from tempa.sft.kernels import (
    KernelChoice,
    KernelEnv,
    choose_kernels,
    detect_env,
    launched_context_parallel,
    sequence_multiple,
    sequence_parallel_env,
)
from tempa.sft.packed_attention import DOC_SDPA, supports_document_attention
from tempa.sft.packed_attention import register as register_document_attention
from tempa.sft.throughput import ThroughputMeter, add_throughput_callbacks
from tempa.sft.trackers import CONFIG_TRACKERS, continue_trackers, named_trackers, recipe_callback
from tempa.sft.train_args import schedule_problem, scheduler_kwargs_in_steps
from tempa.sft.train_plan import OUTCOME_FILE, ParameterShards, TrainOutcome, TrainPlan


class CheckpointCompleteCallback(TrainerCallback):
    """Marks ``checkpoint-N`` complete once every process has finished writing it, then deletes the
    checkpoints beyond ``save_total_limit``.

    transformers deletes old checkpoints inside its save, before the ``on_save`` callbacks, i.e. before the
    new checkpoint is marked: with ``save_total_limit: 1`` a kill in between left nothing to resume from.
    So this callback takes the limit over when training starts and rotates only after the marker.
    """

    def __init__(self) -> None:
        self.save_total_limit: int | None = None
        self.launch: CheckpointLaunch | None = None  # set by train_and_save: recorded in each checkpoint

    def on_train_begin(self, args, state, control, **kwargs):
        if args.save_total_limit:
            self.save_total_limit, args.save_total_limit = args.save_total_limit, None
        return control

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.barrier()  # all shards (ZeRO-3 writes one per rank) are written
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_local_process_zero and path.is_dir():
            umask_modes(path)
            sync_tree(path)  # each node flushes what its ranks wrote (shared storage: its own client's pages)
        if distributed:
            dist.barrier()  # ... and on every node's disk before the marker
        if state.is_world_process_zero:
            if path.is_dir():
                if self.launch is not None:  # before the marker: a complete checkpoint always says how it was saved
                    self.launch.write(path)
                write_marker(path / COMPLETE_MARKER, f"{state.global_step}\n")
            output_dir = Path(args.output_dir)
            rotate_checkpoints(output_dir, self.save_total_limit, [output_dir], keep=state.best_model_checkpoint)
        return control


def watch_runner(pid: int | None, interval_s: float = 1.0) -> None:
    """Stop this training process group if the runner that launched it dies (e.g. SIGKILL).

    Otherwise an orphaned trainer would keep writing into a stage folder that a new run resumes.
    """
    if not pid:
        return

    def _watch() -> None:
        while True:
            time.sleep(interval_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            except PermissionError:
                pass

    threading.Thread(target=_watch, name="tempa-runner-watch", daemon=True).start()


def trl_config_kwargs(plan: TrainPlan, kernels: KernelChoice | None = None) -> dict[str, Any]:
    """trl config kwargs: the recipe's train args plus what the stage folder and launch decide.

    ``kernels``: the attention implementation and Liger setting (default: :func:`plan_kernels`).
    """
    kwargs = dict(plan.train_args)
    kwargs["output_dir"] = str(plan.checkpoints_dir)
    kwargs.setdefault("seed", plan.seed)
    kwargs.setdefault("data_seed", plan.seed)
    env = plan.env
    if env.deepspeed_config:
        kwargs["deepspeed"] = str(env.deepspeed_config)
    if env.use_cpu:
        kwargs["use_cpu"] = True
    if "bf16" not in plan.train_args and "fp16" not in plan.train_args:
        # trl defaults to bf16, which a CPU-only machine refuses; decide by what is there.
        precision = training_precision(plan)
        kwargs["bf16"] = precision == "bf16"
        kwargs["fp16"] = precision == "fp16"
    # safetensors only (the policy, and DPO's reference, which trl builds from the same kwargs):
    # a pickled checkpoint never gets here, and transformers must not fall back to one.
    kwargs["model_init_kwargs"] = {**(kwargs.get("model_init_kwargs") or {}), "use_safetensors": True}
    if env.trust_remote_code:  # the recipe's switch (train: may not set it): the model and trl's own loads
        kwargs["model_init_kwargs"]["trust_remote_code"] = True
        kwargs["trust_remote_code"] = True
    kernels = kernels or plan_kernels(plan)
    if kernels.attn_implementation is not None:
        if kernels.attn_implementation == DOC_SDPA:
            register_document_attention()  # the model is loaded in this process, by name
        kwargs["model_init_kwargs"] = {**kwargs["model_init_kwargs"], "attn_implementation": kernels.attn_implementation}
    if kernels.use_liger_kernel:
        kwargs["use_liger_kernel"] = True
    # trl's configs default the deprecated `gradient_checkpointing` to True, which transformers turns into a
    # FutureWarning in every training log; pass the setting under its current name (same default, same meaning).
    if "activation_checkpointing" not in kwargs:
        kwargs["activation_checkpointing"] = bool(kwargs.pop("gradient_checkpointing", True))
    if "gradient_checkpointing_kwargs" in kwargs and "activation_checkpointing_kwargs" not in kwargs:
        kwargs["activation_checkpointing_kwargs"] = kwargs.pop("gradient_checkpointing_kwargs")
    kwargs.update(parallel_kwargs(plan))
    return kwargs


def parallel_kwargs(plan: TrainPlan, world_size: int | None = None) -> dict[str, Any]:
    """What the launch's global batch and sequence parallelism set in the trainer's arguments.

    ``world_size``: the launched processes (default: torch's WORLD_SIZE).
    """
    env, train = plan.env, plan.train_args
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    out: dict[str, Any] = {}
    if env.sequence_parallel > 1 and bool(train.get("packing")) and (plan.env.deepspeed_config is None) \
            and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise ValueError("launch.sequence_parallel with FSDP2 is torch context parallelism, which trl runs only "
                         "without packing (it drops the per-document mask); set train.packing: false or use a "
                         "DeepSpeed ZeRO-3 config (Ulysses/ALST keeps packing)")
    multiple = sequence_multiple()
    if multiple > 1 and plan.trainer == "sft" and train.get("pad_to_multiple_of") is None:
        out["pad_to_multiple_of"] = multiple  # trl's collator pads each batch (packed rows too) to it
    # The recipe's load refused a global batch its launch cannot make; this checks the processes that did start.
    if env.global_batch_size is not None:
        steps = launch_train_args(train, env.global_batch_size, world, env.sequence_parallel)["gradient_accumulation_steps"]
        print(f"[tempa] global batch {env.global_batch_size}: gradient_accumulation_steps {steps} "
              f"({per_device_batch(train)} per device x {data_parallel(world, env.sequence_parallel)} data-parallel "
              "ranks)", flush=True)
        out["gradient_accumulation_steps"] = steps
    return out


def training_precision(plan: TrainPlan) -> str:
    """"bf16", "fp16" or "no": the recipe's train args, else the launch setting, else what the machine has."""
    train = plan.train_args
    if train.get("bf16") or train.get("fp16"):
        return "bf16" if train.get("bf16") else "fp16"
    if "bf16" in train or "fp16" in train:
        return "no"
    precision = plan.env.mixed_precision
    if precision is None and plan.env.use_cpu:
        return "no"
    if precision is None:
        import torch

        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return precision


def packs_rows(train_args: dict[str, Any]) -> bool:
    """Whether trl will put several documents in one row (BFD packing turns padding-free on)."""
    strategy = train_args.get("packing_strategy", "bfd")
    return bool(train_args.get("padding_free")) or (
        bool(train_args.get("packing")) and strategy in ("bfd", "bfd_split", "bfd-requeue"))


def plan_kernels(plan: TrainPlan, env: KernelEnv | None = None) -> KernelChoice:
    """:func:`tempa.sft.kernels.choose_kernels` for this plan on this machine (``env``: what it has).

    Whether the model suits per-document attention is read from the starting model's config.
    """
    train = plan.train_args
    env = env or detect_env(training_precision(plan))
    packed = packs_rows(train)
    document = (True, "")
    if packed and (plan.start_model / "config.json").is_file():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(plan.start_model, trust_remote_code=plan.env.trust_remote_code)
        document = supports_document_attention(config)
    return choose_kernels(env, packed=packed, requested_attention=(train.get("model_init_kwargs") or {}).get(
        "attn_implementation"), requested_liger=train.get("use_liger_kernel"), document_attention=document,
        context_parallel=launched_context_parallel())


def announced_kernels(plan: TrainPlan) -> KernelChoice:
    """:func:`plan_kernels` for a training worker, with the reasons printed to its log.

    Under Ulysses/ALST it also tells accelerate the model's attention: accelerate builds its sequence-parallel
    config from this process's environment when the trainer is created, and its launcher exported its own
    default (sdpa), which DeepSpeed refuses for a model loaded with flash-attention 2.
    """
    kernels = plan_kernels(plan)
    for line in kernels.why:
        print(f"[tempa] {line}", flush=True)
    os.environ.update(sequence_parallel_env(kernels))
    return kernels


def read_plan(argv: list[str] | None) -> TrainPlan:
    """Parse ``--plan train_plan.json``, start the runner watch and set up DeepSpeed or FSDP2 on CPU processes."""
    parser = argparse.ArgumentParser(prog="python -m tempa.sft.train_worker")
    parser.add_argument("--plan", required=True, help="train_plan.json written by the stage")
    args = parser.parse_args(argv)
    plan = TrainPlan.read(Path(args.plan))
    # The launcher names the local process to watch (on another node, the plan's runner pid means nothing).
    watch_runner(int(os.environ.get("TEMPA_RUNNER_PID") or 0) or plan.runner_pid)
    if plan.env.deepspeed_config and plan.env.use_cpu:
        # transformers sets up a plain CPU process group when use_cpu is on and never initialises
        # DeepSpeed's communication layer, so ZeRO-3 would see a world of one. Do it first.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    if plan.env.use_cpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        from tempa.sft import cpu_fsdp

        cpu_fsdp.enable()
    return plan


def held_parameters(model) -> tuple[int, int]:
    """(elements this process holds, elements of the whole model): FSDP2 DTensor shards, ZeRO-3 partitions."""
    from torch.distributed.tensor import DTensor

    held = whole = 0
    for param in model.parameters():
        if isinstance(param, DTensor):
            held, whole = held + param.to_local().numel(), whole + param.numel()
        elif hasattr(param, "ds_tensor"):  # DeepSpeed ZeRO-3 keeps only this rank's partition
            held, whole = held + param.ds_tensor.numel(), whole + param.ds_numel
        else:
            held, whole = held + param.numel(), whole + param.numel()
    return held, whole


def trained_parameters(model) -> tuple[int, int]:
    """(elements that train, elements of the whole model), each parameter counted whole, sharded or not."""
    trainable = whole = 0
    for param in model.parameters():
        size = param.ds_numel if hasattr(param, "ds_tensor") else param.numel()  # a DTensor's numel is the whole
        whole += size
        trainable += size if param.requires_grad else 0
    return trainable, whole


def parameter_shards(trainer) -> ParameterShards:
    """What every process held of the trained model (a collective: all ranks call it)."""
    from accelerate.utils import gather_object

    held, whole = held_parameters(trainer.model)
    config = getattr(trainer.accelerator, "parallelism_config", None)
    split = max(config.sp_size, config.cp_size) if config is not None else 1
    return ParameterShards(distributed_type=trainer.accelerator.distributed_type.value,
                           parameters=whole, per_rank=gather_object([held]), sequence_parallel=split)


def final_evaluation(trainer) -> dict[str, Any]:
    """Held-out metrics of the final weights: those of the evaluation the last step already ran, else a new one."""
    state = trainer.state
    last = next((entry for entry in reversed(state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == state.global_step:
        return {key: value for key, value in last.items() if key.startswith("eval_")}
    return trainer.evaluate()


class RecipeCadence(TrainerCallback):
    """The recipe's logging, evaluation and saving cadence on a resumed run too: transformers restores them from the
    checkpoint's trainer_state.json, so a `logging_steps` raised between attempts (the stage resumes: it is no part of
    its fingerprint) was ignored, with a warning only in the training log."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)


class ScheduleCheck(TrainerCallback):
    """Says in the training log, once the trainer knows its steps, when the learning-rate schedule cannot fit them
    (`tempa plan` warns from its estimate of the steps; this is the real count)."""

    def on_train_begin(self, args, state, control, **kwargs):
        scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        problem = schedule_problem({"lr_scheduler_type": scheduler, "lr_scheduler_kwargs": args.lr_scheduler_kwargs,
                                    "warmup_steps": args.warmup_steps}, state.max_steps)
        if problem is not None and state.is_world_process_zero:
            print(f"[tempa] warning: {problem}", flush=True)


class StepFractions:
    """A trainer mixin: ``lr_scheduler_kwargs`` step counts given as a fraction (``num_decay_steps: 0.2``) become steps
    of this run, as transformers does for ``warmup_steps``.

    Only the Trainer knows the run's steps, and ``create_scheduler`` is where it hands them to the schedule (the
    DeepSpeed integration calls it too, on a copy of the trainer, hence a method and not a wrapped attribute).
    """

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None):
        self.args.lr_scheduler_kwargs = scheduler_kwargs_in_steps(self.args.lr_scheduler_kwargs or {},
                                                                  num_training_steps)
        return super().create_scheduler(num_training_steps=num_training_steps, optimizer=optimizer)


class FinishedResume:
    """A trainer mixin: a resume from a checkpoint of the last step trains nothing more.

    A stage killed after its last step's checkpoint and before ``final/`` resumes from that checkpoint. transformers
    then skips the batches of the steps done in the current epoch and trains the next one before it looks at
    ``max_steps``: one step past the end, on a learning rate past the schedule's end (a ``max_steps`` that is no
    whole number of epochs). Reporting every epoch as trained makes its loop take no step.
    """

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, *args, **kwargs):
        trained = super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs, *args,
                                               **kwargs)
        if self.state.global_step >= max_steps > 0:
            return num_train_epochs, 0
        return trained


class ResumedGeneration:
    """An RL trainer mixin: a resume continues trl's count of micro-steps (``_step``) where the checkpoint left it.

    trl's GRPO/RLOO sample a generation batch every ``steps_per_generation * num_iterations`` micro-steps and train
    slice ``_step % steps_per_generation`` of it; the count started again at 0 in a resumed process, so with
    ``steps_per_generation`` above the accumulation steps (or ``num_iterations > 1``) a resumed run sampled and
    trained at other steps than the run it continues, one batch trained short and another long.
    """

    def _init_training_state(self, *args, **kwargs):
        trained = super()._init_training_state(*args, **kwargs)
        self._step = self.state.global_step * self.args.gradient_accumulation_steps
        return trained


@functools.cache
def with_step_fractions(trainer_class: type, *mixins: type) -> type:
    """``trainer_class`` with :class:`StepFractions`, :class:`FinishedResume` and ``mixins`` (same name: logs and model
    cards stay trl's)."""
    return type(trainer_class.__name__, (StepFractions, FinishedResume, *mixins, trainer_class),
                {"__module__": __name__})


def no_step_message(args, rows: int | str) -> str:
    """Why a trainer took no step, in the terms of its batch: an RL trainer's batches count completions, and it
    samples whole generation batches of prompts (dropping the rest)."""
    generations = getattr(args, "num_generations", None)
    size = getattr(args, "generation_batch_size", None)
    if generations and size:
        return (f"training took no optimizer step: {rows} prompts are fewer than one generation batch of "
                f"{size // generations} prompts (generation_batch_size {size} completions = "
                f"per_device_train_batch_size {args.per_device_train_batch_size} x {args.world_size} processes x "
                f"steps_per_generation {args.steps_per_generation}, / num_generations {generations}); trl drops a "
                "batch it cannot fill: add prompts or lower per_device_train_batch_size (it counts completions)")
    return (f"training took no optimizer step ({rows} training rows, "
            f"num_train_epochs={args.num_train_epochs}, max_steps={args.max_steps}, "
            f"per_device_train_batch_size={args.per_device_train_batch_size}, "
            f"gradient_accumulation_steps={args.gradient_accumulation_steps}, processes={args.world_size})")


LOSS_STEPS = "loss_steps"  # in a logged loss's log_history entry: the steps its mean covers


class LossSteps(TrainerCallback):
    """Records, in each logged loss's ``log_history`` entry (kept in every checkpoint's trainer state; not sent to the
    trackers), how many steps that mean covers: transformers averages since its own process's last log, or since the
    checkpoint it resumed, which a later process cannot tell from the steps alone (:func:`whole_run_metrics`)."""

    def __init__(self) -> None:
        self._last = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = state.global_step  # the resumed checkpoint's step: the Trainer's loss counts from there

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1][LOSS_STEPS] = state.global_step - self._last
        self._last = state.global_step


def whole_run_metrics(metrics: dict[str, Any], log_history: list[dict[str, Any]],
                      resumed_from: Path | None) -> dict[str, Any]:
    """``trainer.train()``'s metrics, with ``train_loss`` over the whole run's steps when it resumed.

    transformers averages the loss over the steps of its own ``train()`` call: after a resume, over the steps since the
    checkpoint (none at all for a checkpoint of the last step), which metrics.json and `tempa status` gave as the
    stage's. The logged losses (restored with the checkpoint) cover the run, each weighted by the steps its mean covers
    (:class:`LossSteps`; steps a kill cut off between a log and a save were never logged, and are left out). An entry of
    a checkpoint an older tempa wrote has no count: it covers the steps since the one logged before it, or since the
    resumed checkpoint (which, after a resume of a resume, misses the earlier resumes).
    """
    if resumed_from is None:
        return metrics
    start = checkpoint_step(resumed_from)
    total = steps = 0.0
    previous = 0
    for entry in log_history:
        if "loss" not in entry or "step" not in entry:
            continue
        step = int(entry["step"])
        covered = entry.get(LOSS_STEPS, step - (start if previous < start < step else previous))
        total, steps, previous = total + float(entry["loss"]) * covered, steps + covered, step
    return {**metrics, "train_loss": total / steps} if steps else metrics


def launch_of(trainer, plan: TrainPlan) -> CheckpointLaunch:
    """How this training is launched, as its checkpoints record it."""
    from accelerate.utils import DistributedType

    state, args = trainer.accelerator.state, trainer.args
    kind = state.distributed_type
    engine = "deepspeed" if kind == DistributedType.DEEPSPEED else "fsdp" if kind == DistributedType.FSDP else "plain"
    zero = int(state.deepspeed_plugin.zero_stage) if engine == "deepspeed" else 0
    processes, sequence = trainer.accelerator.num_processes, plan.env.sequence_parallel
    batch = rows_per_step(args.per_device_train_batch_size, args.gradient_accumulation_steps, processes, sequence)
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return CheckpointLaunch(engine, processes, batch, zero_stage=zero, sequence_parallel=sequence, precision=precision)


def stage_name(plan: TrainPlan) -> str:
    """The recipe stage this training belongs to (a preference stage trains each round in its own folder)."""
    out = Path(plan.out_dir)
    return out.parent.name if out.name.removeprefix("round-").isdigit() else out.name


def train_and_save(trainer, tokenizer, plan: TrainPlan, kernels: KernelChoice, *, evaluate: bool = False,
                   merge_adapters: bool = False) -> None:
    """Train (resuming from the last complete checkpoint), then publish ``final/`` atomically.

    The model goes to ``final.tmp`` with the tokenizer and its :class:`TrainOutcome`, and is
    renamed to ``final`` last, so a kill never leaves a final model that looks complete.
    """
    if plan.recipe is not None and set(named_trackers(trainer.args.report_to)) & set(CONFIG_TRACKERS):
        trainer.add_callback(recipe_callback(plan.recipe))  # after the trackers' own callbacks
    trainer.add_callback(RecipeCadence())
    trainer.add_callback(ScheduleCheck())
    trainer.add_callback(LossSteps())
    resume = last_complete_checkpoint(plan.checkpoints_dir)
    launch = launch_of(trainer, plan)
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, CheckpointCompleteCallback):
            callback.launch = launch
    saved = CheckpointLaunch.read(resume) if resume is not None else None
    # The plan checks what it can tell of the launch; this one sees the process count and precision it runs with.
    refusal = launch_refusal(stage_name(plan), resume, saved, launch) if saved is not None else None
    if refusal is not None:
        raise ValueError(refusal)
    if merge_adapters and trainer.is_world_process_zero():
        trainable, whole = trained_parameters(trainer.model)
        print(f"[tempa] LoRA trains {trainable:,} of the model's {whole:,} parameters ({trainable / whole:.3%})",
              flush=True)
    if resume is not None and trainer.is_world_process_zero():
        print(f"[tempa] resuming from {resume}", flush=True)
    continue_trackers(trainer, plan.checkpoints_dir, resumed=resume is not None)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if trainer.state.global_step <= 0:
        # Trainer "succeeds" without a single step (e.g. fewer rows than one batch per process):
        # publishing final/ would ship the starting weights as if they were trained.
        rows = len(trainer.train_dataset) if hasattr(trainer.train_dataset, "__len__") else "?"
        raise RuntimeError(no_step_message(trainer.args, rows))
    # Before evaluating: the last backward left every FSDP2 unit resharded, while a forward-only pass
    # keeps the last one (final norm + lm_head, reshard_after_forward=False) gathered.
    shards = parameter_shards(trainer)
    eval_metrics = final_evaluation(trainer) if evaluate else {}
    if trainer.is_world_process_zero():
        # trl writes a stub card ("fine-tuned version of [None]...") into output_dir with every checkpoint;
        # the model's card is tempa's, in final/.
        (plan.checkpoints_dir / "README.md").unlink(missing_ok=True)

    final = plan.final_dir
    tmp = final.with_name(final.name + ".tmp")
    inside = [plan.out_dir]  # nothing outside the folder this training writes in is ever deleted
    if trainer.is_world_process_zero():
        remove_tree(tmp, inside)
    trainer.accelerator.wait_for_everyone()
    if merge_adapters and any(held < shards.parameters for held in shards.per_rank):
        # Under ZeRO-3 or FSDP each process holds a shard of every weight: merging in place added the adapter's
        # delta to an empty shard (a size mismatch) and saved rank 0's storage alone. The adapter is saved whole
        # (the save gathers it), then merged into the start model on rank 0's CPU.
        adapter = final.with_name(final.name + ".adapter")
        if trainer.is_world_process_zero():
            remove_tree(adapter, inside)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(adapter))
        if trainer.is_world_process_zero():
            dtype = next(trainer.accelerator.unwrap_model(trainer.model).parameters()).dtype
            merged_into_start(plan, adapter, dtype).save_pretrained(tmp, safe_serialization=True)
            remove_tree(adapter, inside)
    elif merge_adapters:
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(tmp, safe_serialization=True)
    else:
        trainer.save_model(str(tmp))  # under ZeRO-3 this gathers the 16-bit weights on rank 0
    if trainer.is_world_process_zero():
        # The Trainer pickles its arguments beside the weights; the stage's model folder stays
        # pickle-free (the same arguments are in train_plan.json).
        (tmp / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(tmp)
        outcome = TrainOutcome(
            global_step=trainer.state.global_step,
            train=whole_run_metrics(result.metrics, trainer.state.log_history, resume),
            eval=eval_metrics,
            log_history=trainer.state.log_history,
            resumed_from=str(resume) if resume else None,
            kernels=kernels.record(),
            shards=shards,
        )
        (tmp / OUTCOME_FILE).write_text(outcome.model_dump_json(indent=2))
        umask_modes(tmp)
        sync_tree(tmp)  # final/ with its outcome is what the runner marks DONE: on the disk first (sync_tree)
        remove_tree(final, inside)
        os.replace(tmp, final)
    trainer.accelerator.wait_for_everyone()


def merged_into_start(plan: TrainPlan, adapter: Path, dtype):
    """The start model with the LoRA adapter saved in ``adapter`` merged in, loaded whole on the CPU."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.integrations import deepspeed as hf_deepspeed

    # While the ZeRO-3 trainer lives, from_pretrained partitions what it loads over every process (zero.Init, a
    # collective the other processes, waiting at a barrier, never join): this load is rank 0's own.
    zero3 = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        base = AutoModelForCausalLM.from_pretrained(plan.start_model, dtype=dtype, use_safetensors=True,
                                                    trust_remote_code=plan.env.trust_remote_code)
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = zero3
    return PeftModel.from_pretrained(base, adapter).merge_and_unload()


def _lora_config(plan: TrainPlan):
    if plan.lora is None:
        return None
    from peft import LoraConfig

    lora = plan.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                      target_modules=lora.target_modules, modules_to_save=_modules_to_save(plan),
                      use_rslora=lora.use_rslora, use_dora=lora.use_dora, task_type="CAUSAL_LM",
                      # a tied base (Qwen's small models, Llama 3.2) stays tied: else modules_to_save: [embed_tokens]
                      # untied it on merging and left the output head untrained, [embed_tokens, lm_head] two copies
                      ensure_weight_tying=True)


def _modules_to_save(plan: TrainPlan) -> list[str] | None:
    """The recipe's ``modules_to_save``, without ``lm_head`` on a base whose embeddings are tied: the one matrix
    trains as ``embed_tokens`` (peft keeps them tied), and naming both crashed FSDP2's preparation ("attribute
    'weight' already exists")."""
    wanted = list(plan.lora.modules_to_save or []) if plan.lora is not None else []
    # peft matches by suffix: `model.embed_tokens` names the embeddings too
    embeds = [name for name in wanted if name.split(".")[-1] in ("embed_tokens", "lm_head")]
    if not embeds:
        return wanted or None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(plan.start_model, trust_remote_code=plan.env.trust_remote_code)
    if not getattr(config.get_text_config(), "tie_word_embeddings", False):
        return wanted
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        # FSDP's preparation ties the weights again over peft's trainable copy ("attribute 'weight' already exists")
        raise RuntimeError("lora.modules_to_save trains the embeddings, which this base ties to its output head: "
                           "FSDP cannot shard a tied copy that trains; use launch.accelerate_config zero3 (or leave "
                           "embed_tokens and lm_head out of modules_to_save)")
    if {name.split(".")[-1] for name in embeds} != {"embed_tokens", "lm_head"}:
        return wanted
    print("[tempa] LoRA: lm_head and embed_tokens are one tied matrix in this model: it trains once, as "
          "embed_tokens", flush=True)
    return [name for name in wanted if name.split(".")[-1] != "lm_head"]


def _quantised_init(plan: TrainPlan, init: dict[str, Any] | None) -> dict[str, Any] | None:
    if plan.lora is None or not plan.lora.load_in_4bit:
        return init
    from transformers import BitsAndBytesConfig

    return {**(init or {}), "quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")}


def _without_masks(dataset: Any) -> Any:
    """``dataset`` without its ``assistant_masks`` column, where it has one."""
    return dataset.remove_columns("assistant_masks") if "assistant_masks" in dataset.column_names else dataset


def sft_trainer(plan: TrainPlan, tokenizer, kernels: KernelChoice):
    """trl's SFTTrainer over the pre-tokenised rows (``input_ids``, and ``assistant_masks`` but in pretrain rows)."""
    from datasets import load_from_disk
    from trl import SFTConfig, SFTTrainer

    # tempa tokenises and masks the data itself (assistant_masks column, which trl turns into
    # labels); trl's own flag only applies to conversational rows it tokenises.
    config = SFTConfig(**{**trl_config_kwargs(plan, kernels), "assistant_only_loss": False})
    config.model_init_kwargs = _quantised_init(plan, config.model_init_kwargs)
    train_dataset = load_from_disk(str(plan.train_data))
    eval_dataset = load_from_disk(str(plan.eval_data)) if plan.eval_data else None
    if not plan.train_args.get("assistant_only_loss", True):
        # pretrain rows written before tempa stopped storing their all-ones mask still hold it; newer ones do not
        train_dataset = _without_masks(train_dataset)
        eval_dataset = _without_masks(eval_dataset) if eval_dataset is not None else None
    if eval_dataset is not None and config.eval_strategy == "no":
        config.eval_strategy = "steps" if config.save_strategy == "steps" else "epoch"
        config.eval_steps = config.eval_steps or config.save_steps
    trainer = with_step_fractions(SFTTrainer)(
        model=str(plan.start_model),
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(plan),
        callbacks=[CheckpointCompleteCallback()],
    )
    add_throughput_callbacks(trainer, ThroughputMeter())
    return trainer


def dpo_trainer(plan: TrainPlan, tokenizer, kernels: KernelChoice):
    """trl's DPOTrainer over conversational preference pairs (prompt / chosen / rejected)."""
    from datasets import load_from_disk
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(**trl_config_kwargs(plan, kernels))
    config.model_init_kwargs = _quantised_init(plan, config.model_init_kwargs)
    trainer = with_step_fractions(DPOTrainer)(
        model=str(plan.start_model),
        ref_model=_reference_model(plan, config),
        args=config,
        train_dataset=load_from_disk(str(plan.train_data)),
        processing_class=tokenizer,
        peft_config=_lora_config(plan),
        callbacks=[CheckpointCompleteCallback()],
    )
    # Without precomputed log-probs, a frozen reference model runs forward on every trained token.
    add_throughput_callbacks(trainer, ThroughputMeter(reference_forward=not config.precompute_ref_log_probs))
    return trainer


def _reference_model(plan: TrainPlan, config: Any):
    """The plan's own reference model, loaded as trl loads the policy; None: trl's default (the starting
    model, or with LoRA the policy with its adapters disabled)."""
    if plan.reference_model is None:
        return None
    from trl.trainer.utils import create_model_from_path

    # As trl builds its own reference: the policy's init kwargs, never quantised (it is not trained).
    init = {key: value for key, value in (config.model_init_kwargs or {}).items() if key != "quantization_config"}
    return create_model_from_path(str(plan.reference_model), **init)


@dataclass(frozen=True)
class GenerationChoice:
    """How an RL trainer samples its completions, and why."""

    use_vllm: bool
    vllm_mode: str | None  # "colocate" | "server" with vLLM
    why: str


def choose_generation(train_args: dict[str, Any], *, cuda: bool, vllm_installed: bool) -> GenerationChoice:
    """vLLM on a CUDA GPU when it is installed (trl's `colocate` mode unless the recipe sets `vllm_mode`),
    else transformers' ``generate``; a recipe's explicit ``use_vllm`` wins, and one vLLM cannot honour
    is a one-line error. Pure: the worker passes what its machine has."""
    requested = train_args.get("use_vllm")
    mode = str(train_args.get("vllm_mode") or "colocate")
    if requested is False:
        return GenerationChoice(False, None, "generating with transformers (use_vllm: false in the recipe)")
    missing = ("no CUDA GPU" if not cuda else
               "vLLM is not installed (the gpu extra: pip install -e '.[gpu]')" if not vllm_installed else None)
    if missing is not None:
        if requested:
            raise ValueError(f"train.use_vllm is true but {missing}; remove use_vllm to generate with transformers")
        return GenerationChoice(False, None, f"generating with transformers: {missing}")
    return GenerationChoice(True, mode, f"generating with vLLM, {mode} mode"
                            + (" (on the training GPUs)" if mode == "colocate" else " (a separate `trl vllm-serve`)"))


def load_rewards(plan: TrainPlan, tokenizer) -> list[Any]:
    """The reward functions the plan's factory builds (see :class:`tempa.sft.train_plan.RewardHook`)."""
    if plan.rewards is None:
        raise ValueError(f"trainer {plan.trainer!r} needs reward functions; the plan names none")
    module, _, name = plan.rewards.factory.partition(":")
    return getattr(importlib.import_module(module), name)(plan.rewards.spec, tokenizer)


def rl_trainer(plan: TrainPlan, tokenizer, kernels: KernelChoice):
    """trl's GRPOTrainer (or RLOOTrainer) over the prompts the stage rendered, scored by its reward functions."""
    import importlib.util

    import torch
    import trl
    from datasets import load_from_disk

    config_class, trainer_class = (trl.GRPOConfig, trl.GRPOTrainer) if plan.trainer == "grpo" else (
        trl.RLOOConfig, trl.RLOOTrainer)
    generation = choose_generation(plan.train_args, cuda=torch.cuda.is_available() and not plan.env.use_cpu,
                                   vllm_installed=importlib.util.find_spec("vllm") is not None)
    print(f"[tempa] {generation.why}", flush=True)
    kwargs = {**trl_config_kwargs(plan, kernels), "use_vllm": generation.use_vllm}
    if generation.vllm_mode is not None:
        kwargs["vllm_mode"] = generation.vllm_mode
    config = config_class(**kwargs)
    config.model_init_kwargs = _quantised_init(plan, config.model_init_kwargs)
    trainer = with_step_fractions(trainer_class, ResumedGeneration)(
        model=str(plan.start_model),
        reward_funcs=load_rewards(plan, tokenizer),
        args=config,
        train_dataset=load_from_disk(str(plan.train_data)),
        processing_class=tokenizer,
        peft_config=_lora_config(plan),
        callbacks=[CheckpointCompleteCallback()],
    )
    # Generation runs without gradients, so the meter counts the trained forward passes only; with a
    # KL term, the reference model's forward adds to them.
    add_throughput_callbacks(trainer, ThroughputMeter(reference_forward=bool(config.beta)))
    return trainer


TRAINERS = {"sft": sft_trainer, "dpo": dpo_trainer, "grpo": rl_trainer, "rloo": rl_trainer}


def _before_first_step(trainer: Any) -> str:
    # trl computes a DPO reference's log-probs over every pair before the first step, with a bar only in train.log.
    if getattr(trainer.args, "precompute_ref_log_probs", False):
        return f" (first, the reference model's log-probs over {len(trainer.train_dataset):,} pairs)"
    return ""


def main(argv: list[str] | None = None) -> int:
    from tempa.sft.line_progress import line_mode

    line_mode()  # train.log gets one line per interval of the trainer's bars, not \r redraws
    plan = read_plan(argv)

    from transformers import AutoTokenizer

    # The runner's terminal shows only [tempa] lines: without these, loading a 70B model is minutes of silence.
    first = os.environ.get("RANK", "0") == "0"
    started = time.perf_counter()
    if first:
        # trl's trainer, not the stage's kind: a pretrain stage trains with the SFT trainer too
        print(f"[tempa] loading the model ({plan.start_model}) and the data into trl's {plan.trainer.upper()} trainer",
              flush=True)
    tokenizer = AutoTokenizer.from_pretrained(plan.tokenizer_dir)
    kernels = announced_kernels(plan)
    trainer = TRAINERS[plan.trainer](plan, tokenizer, kernels)
    if first:
        before = _before_first_step(trainer)
        print(f"[tempa] ready in {time.perf_counter() - started:.0f}s; training starts{before}", flush=True)
    train_and_save(trainer, tokenizer, plan, kernels,
                   evaluate=plan.trainer == "sft" and plan.eval_data is not None,
                   merge_adapters=plan.lora is not None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
