"""Trackers (`report_to`): checked when the recipe loads, and given the run's name and its recipe.

transformers decides which integrations exist and how each is detected
(``transformers.integrations.integration_utils``: ``INTEGRATION_TO_CALLBACK`` and its
``is_<name>_available`` functions), but importing that module imports torch, and recipes are
checked without it. :data:`INTEGRATIONS` mirrors those detections as the modules each needs
(tests/test_trackers.py compares the names with transformers' own table), so a `report_to` naming
an integration that is not installed fails at load, in one line, instead of an hour in.
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tempa.sft.files import write_atomic
from tempa.sft.suggest import did_you_mean

# integration -> the modules transformers' is_<name>_available() looks for (all must be importable)
INTEGRATIONS: dict[str, tuple[str, ...]] = {
    "azure_ml": ("azureml.core.run",),
    "comet_ml": ("comet_ml",),
    "mlflow": ("mlflow",),
    "neptune": ("neptune",),
    "tensorboard": ("tensorboard",),  # or tensorboardX
    "trackio": ("trackio",),
    "wandb": ("wandb",),
    "codecarbon": ("codecarbon",),
    "clearml": ("clearml",),
    "dagshub": ("dagshub", "mlflow"),
    "flyte": ("flytekit", "flytekitplugins.deck"),
    "dvclive": ("dvclive",),
    "swanlab": ("swanlab",),
    "kubeflow": (),  # detected by an environment variable only
}
_ALTERNATIVES = {"tensorboard": ("tensorboardX",)}
# Trackers that receive the recipe as their run config (their callbacks keep a `config` to update).
CONFIG_TRACKERS = ("wandb", "trackio")


def named_trackers(report_to: Any) -> list[str]:
    """The integrations a `report_to` value names (none for "none", None or "all")."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return [name for name in names if name not in ("none", "all")]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing
        return False


def check_report_to(report_to: Any) -> None:
    """Raise ValueError (one line) when `report_to` names an unknown or uninstalled integration."""
    for name in named_trackers(report_to):
        if name not in INTEGRATIONS:
            raise ValueError(f"'report_to': {name!r} is not a transformers integration{did_you_mean(name, INTEGRATIONS)}"
                             f" (known: {', '.join(INTEGRATIONS)})")
        modules = INTEGRATIONS[name]
        if not all(_installed(m) for m in modules) and not any(_installed(m) for m in _ALTERNATIVES.get(name, ())):
            raise ValueError(f"'report_to': {name!r} is not installed (pip install {modules[0].split('.')[0]}), "
                             "or remove it from report_to")


def recipe_callback(recipe: Mapping[str, Any]):
    """A Trainer callback that adds the recipe to the wandb / trackio run config once they have started."""
    import sys

    from transformers import TrainerCallback

    class RecipeToTrackers(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            for name in CONFIG_TRACKERS:
                module = sys.modules.get(name)  # imported by its callback, which runs before this one
                run = getattr(module, "run", None) if name == "wandb" else module
                if name in named_trackers(args.report_to) and run is not None and hasattr(module, "config"):
                    module.config.update({"tempa_recipe": dict(recipe)}, allow_val_change=True)

    return RecipeToTrackers()


@contextmanager
def tracker_log(report_to: Any, *, output_dir: Path, run_name: str) -> Iterator[Callable[[int, Mapping[str, Any]], None]]:
    """``log(step, metrics)`` to the trackers `report_to` names, from a stage that trains nothing (evaluate).

    It goes through transformers' own integration callbacks, begun, logged to and ended as a Trainer does, so
    each tracker is written as a training stage writes it (TensorBoard: ``output_dir/runs/<date>_<host>/``,
    or ``TENSORBOARD_LOGGING_DIR``). Call it on the process that writes only: the callbacks are told they
    run on process zero. Yields a no-op when no tracker is named, without importing transformers.
    """
    names = named_trackers(report_to)
    if not names:
        yield lambda step, metrics: None
        return
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.integrations import get_reporting_integration_callbacks

    args = TrainingArguments(output_dir=str(output_dir), report_to=names, run_name=run_name)
    state, control = TrainerState(is_world_process_zero=True), TrainerControl()
    callbacks = [callback() for callback in get_reporting_integration_callbacks(names)]
    for callback in callbacks:
        callback.on_train_begin(args, state, control)

    def log(step: int, metrics: Mapping[str, Any]) -> None:
        state.global_step = step
        for callback in callbacks:
            callback.on_log(args, state, control, logs=dict(metrics))

    try:
        yield log
    finally:
        for callback in callbacks:
            callback.on_train_end(args, state, control)


# In a training's checkpoints folder: its wandb run id and the last step its trackers were given.
TRACKER_RECORD = "trackers.json"


def tracker_record(checkpoints_dir: Path, *, resumed: bool) -> dict[str, Any]:
    """What this training's trackers were given so far: the record of the run it resumes, or a new one (a new wandb
    run id, no step logged) when it starts over or the run it resumes kept none."""
    path = Path(checkpoints_dir) / TRACKER_RECORD
    if resumed:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(record.get("wandb_run_id"), str) and isinstance(record.get("logged_step"), int):
                return record
        except (OSError, ValueError, AttributeError):
            pass
    record = {"wandb_run_id": uuid.uuid4().hex[:16], "logged_step": 0}
    write_atomic(path, json.dumps(record) + "\n")
    return record


def wandb_run_env(record: Mapping[str, Any]) -> dict[str, str]:
    """The environment that has transformers' WandbCallback (``wandb.init``, which reads it) continue the record's run:
    without an id every launch, a resume too, opened a new run of the same name. {} when the user set WANDB_RUN_ID."""
    if os.environ.get("WANDB_RUN_ID"):
        return {}
    return {"WANDB_RUN_ID": str(record["wandb_run_id"]), "WANDB_RESUME": "allow"}


def continue_trackers(trainer: Any, checkpoints_dir: Path, *, resumed: bool) -> None:
    """Have a resumed training continue its trackers' curves instead of logging its first steps twice.

    A stage killed at step 30 resumes from its checkpoint at step 25: the steps 26-30 it trains again were already
    logged, and a tracker drew them a second time (wandb in a second run, TensorBoard in a second event folder). So
    the trackers (transformers' integration callbacks) skip the steps the record says they were given, and the record
    follows each tracker's write; wandb continues the same run (:func:`wandb_run_env`). The progress line and the Trainer's own
    log history keep every step. Call before ``train()``.
    """
    names = named_trackers(trainer.args.report_to)
    if not names or not trainer.is_world_process_zero():  # the trackers write from process zero only
        return
    from transformers.integrations import get_reporting_integration_callbacks

    record = tracker_record(checkpoints_dir, resumed=resumed)
    if "wandb" in names:
        os.environ.update(wandb_run_env(record))
    integrations = tuple(get_reporting_integration_callbacks(names))
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, integrations):
            callback.on_log = _recorded(record, type(callback).__name__, Path(checkpoints_dir) / TRACKER_RECORD,
                                        callback.on_log)


def _recorded(record: dict[str, Any], tracker: str, path: Path, on_log: Callable[..., Any]) -> Callable[..., Any]:
    """A tracker's ``on_log`` that skips the steps the run it resumes gave it, and records each step as soon as the
    tracker wrote it: recorded by a callback after all the others, a step was lost from the record when one in between
    failed (the progress line printing to the dead pipe of a runner killed with -9), and the resume gave it again.
    Each tracker has its own step (``logged``): killed between two trackers' writes of a step, the one that had not
    written it gets it on resume. ``logged_step`` is the step every tracker has (a record of an earlier tempa has only
    that)."""
    logged = record.setdefault("logged", {})
    done = logged.setdefault(tracker, record["logged_step"])

    def logged_once(args, state, control, **kwargs):
        if state.global_step <= done:
            return None
        out = on_log(args, state, control, **kwargs)
        if state.global_step > logged[tracker]:
            logged[tracker] = state.global_step
            record["logged_step"] = min(logged.values())
            write_atomic(path, json.dumps(record) + "\n")
        return out

    return logged_once
