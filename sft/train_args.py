"""Validate a recipe's `train:` mapping against trl's SFTConfig/DPOConfig fields before any work.

Training arguments pass straight through to trl; re-declaring them one by one would drift from
trl. What tempa adds is checking them early: an unknown key (with a spelling hint) or a value of
the wrong type fails when the recipe loads, not an hour into data preparation.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError, ValidationInfo

# Validation context key: when true, `train:` mappings are not checked yet. Checking needs trl's
# config classes (torch, transformers: seconds of imports), so the recipe loader first validates
# everything else and reports those errors at once, then validates again with the checks on.
DEFER_TRAIN_CHECKS = "defer_train_checks"


def train_checks_deferred(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(DEFER_TRAIN_CHECKS))


@functools.cache
def _field_types(config_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(config_cls) if f.init}


@functools.cache
def _adapter(tp: Any) -> TypeAdapter | None:
    try:
        return TypeAdapter(tp)
    except Exception:  # exotic transformers types: trl validates those itself
        return None


def check_train_args(
    values: Mapping[str, Any], config_cls: type, *, reserved: Iterable[str] = ()
) -> dict[str, Any]:
    """Return ``values`` unchanged if every key is a field of ``config_cls`` with a fitting value.

    Raises ``ValueError`` naming the key and what was expected; pydantic reports it with the
    field path. ``reserved`` keys are set by tempa itself (e.g. output_dir) and are refused.
    """
    fields = _field_types(config_cls)
    reserved = set(reserved)
    for key, value in values.items():
        if key in reserved:
            raise ValueError(f"'{key}' is set by tempa (the stage folder and launch decide it); remove it")
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ValueError(f"'{key}' is not a {config_cls.__name__} field{extra}")
        adapter = _adapter(fields[key])
        if adapter is None or value is None:
            continue
        choices = _enum_choices(fields[key])
        if choices and isinstance(value, str) and value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1)
            extra = f"did you mean '{hint[0]}'?" if hint else f"one of: {', '.join(choices)}"
            raise ValueError(f"'{key}': {value!r} is not a valid choice; {extra}")
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]["msg"]
            raise ValueError(f"'{key}': {first}, got {value!r}") from None
    check_counts(values)
    if "lr_scheduler_type" in values:
        check_scheduler(values["lr_scheduler_type"], values.get("lr_scheduler_kwargs") or {})
    return dict(values)


# Counts and sizes that only make sense above zero. transformers checks some of them only when
# training starts, and some never: `num_train_epochs: -1` trains 0 steps and reports success.
_POSITIVE = (
    "num_train_epochs",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "eval_accumulation_steps",
    "logging_steps",
    "save_steps",
    "eval_steps",
    "max_length",
    "max_prompt_length",
    "max_completion_length",
)
_UNSET_MAX_STEPS = -1  # transformers' default: train for num_train_epochs instead


def check_counts(values: Mapping[str, Any]) -> None:
    """Refuse non-positive epochs, steps and batch sizes; ``max_steps: -1`` is transformers' "unset"."""
    max_steps = values.get("max_steps")
    if isinstance(max_steps, int) and max_steps != _UNSET_MAX_STEPS and max_steps <= 0:
        raise ValueError(f"'max_steps': must be a positive number of optimizer steps (or -1: unset), got {max_steps!r}")
    steps_set = isinstance(max_steps, int) and max_steps > 0
    for key in _POSITIVE:
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value > 0:
            continue
        if key == "num_train_epochs" and steps_set:
            continue  # max_steps decides the length; epochs are ignored
        extra = " (or set max_steps)" if key == "num_train_epochs" else ""
        raise ValueError(f"'{key}': must be positive{extra}, got {value!r}")


# What the Trainer passes every scheduler itself; anything else a schedule requires must come
# from `lr_scheduler_kwargs`.
_TRAINER_SUPPLIED = {"optimizer", "num_warmup_steps", "num_training_steps"}


def check_scheduler(name: Any, kwargs: Mapping[str, Any]) -> None:
    """Refuse a scheduler whose required ``lr_scheduler_kwargs`` keys are missing (e.g. WSD's decay length)."""
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION
    from transformers.trainer_utils import SchedulerType

    function = TYPE_TO_SCHEDULER_FUNCTION.get(SchedulerType(name))
    if function is None or not isinstance(kwargs, Mapping):
        return
    parameters = inspect.signature(function).parameters.values()
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _TRAINER_SUPPLIED
               and p.name not in kwargs]
    if missing:
        example = ", ".join(f"{m}: ..." for m in missing)
        raise ValueError(f"'lr_scheduler_type': {SchedulerType(name).value} needs lr_scheduler_kwargs: {{{example}}}")


@functools.cache
def _enum_choices(tp: Any) -> tuple[str, ...]:
    """The values of an ``Enum | str`` field (optim, lr_scheduler_type, save_strategy, ...); () otherwise."""
    args = typing.get_args(tp)
    enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
    if len(enums) != 1 or str not in args:
        return ()
    return tuple(str(member.value) for member in enums[0])
