"""Validate a recipe's `train:` mapping against trl's SFTConfig/DPOConfig fields before any work.

Training arguments pass straight through to trl; re-declaring them one by one would drift from
trl. What tempa adds is checking them early: an unknown key (with a spelling hint) or a value of
the wrong type fails when the recipe loads, not an hour into data preparation.

What the check needs from trl (each field's type, the choices of its enum fields, what each
scheduler requires) is read from the config class once and kept as a small JSON spec in the
cache, keyed by the installed trl and transformers versions: later recipes are checked without
importing trl, torch or transformers (seconds), and an upgrade simply writes a new spec.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Literal, Union

from pydantic import TypeAdapter, ValidationError, ValidationInfo

from tempa.sft.files import cache_root, write_atomic
from tempa.sft.stage_api import secret_path
from tempa.sft.suggest import closest, did_you_mean
from tempa.sft.trackers import check_report_to

# Validation context key: when true, `train:` mappings are not checked yet. A spec not yet in the
# cache needs trl's config classes (torch, transformers: seconds of imports), so the recipe
# loader first validates everything else and reports those errors at once, then validates again
# with the checks on.
DEFER_TRAIN_CHECKS = "defer_train_checks"
_SPEC_VERSION = 2  # bump when the spec's layout changes


# `train:` keys trl accepts but a recipe may not set: each would go around one of tempa's safeguards.
_SET_AT_TOP = ("set `trust_remote_code: true` at the top level of the recipe (off by default), which every loader "
               "of the run reads; here it would run a model's own code in the trainer alone")
REFUSED_TRAIN_KEYS = {
    "hub_token": "a token written in a recipe is copied into recipe.resolved.yaml, train_plan.json, the manifests "
                 "and `tempa plan`; huggingface_hub reads HF_TOKEN (or `hf auth login`) by itself",
    "push_to_hub": "the trainer would upload its checkpoints folder (optimizer states, pickled arguments) while it "
                   "trains; `tempa push RUN_DIR --repo ORG/NAME` uploads the finished, checked final model",
    "trust_remote_code": _SET_AT_TOP,
    "restore_callback_states_from_checkpoint": "tempa's throughput meter restores its own totals when a stage "
                                               "resumes (its only stateful callback); the Trainer would re-create it "
                                               "after the trackers and the progress line, which would then show no "
                                               "tokens/s, MFU or ETA for the resumed steps",
}


def _refused(values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if key in REFUSED_TRAIN_KEYS and value not in (None, False):
            raise ValueError(f"'{key}' cannot be set in train: {REFUSED_TRAIN_KEYS[key]}")
        if key.endswith("model_init_kwargs") and isinstance(value, Mapping) and "trust_remote_code" in value:
            raise ValueError(f"'{key}': trust_remote_code cannot be set here: {_SET_AT_TOP}")
        secret = secret_path(value, key)
        if secret:
            raise ValueError(f"'{secret}' cannot be set in train: a secret written in a recipe is copied into "
                             "recipe.resolved.yaml, train_plan.json, the manifests, `tempa plan` and the trackers' "
                             "config; huggingface_hub reads HF_TOKEN (or `hf auth login`) by itself")


def train_checks_deferred(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(DEFER_TRAIN_CHECKS))


@dataclass(frozen=True)
class TrainArgSpec:
    """What validating a config class's arguments needs: field types, scheduler requirements."""

    name: str  # e.g. SFTConfig
    fields: dict[str, Any]  # field -> JSON-encoded type (see _encode)
    schedulers: dict[str, list[str]]  # lr_scheduler_type value -> lr_scheduler_kwargs it requires
    helps: dict[str, str]  # field -> its help text (e.g. the loss names DPOConfig documents)
    # lr_scheduler_type value -> the lr_scheduler_kwargs it takes; absent: any (a function of **kwargs)
    scheduler_kwargs: dict[str, list[str]] = dataclasses.field(default_factory=dict)


# What decides a reserved train key (output_dir, logging_dir, resume_from_checkpoint, deepspeed, ...) that its stage
# gives no reason of its own for.
STAGE_FOLDER_AND_LAUNCH = "the stage folder and launch decide it"


def check_train_args(
    values: Mapping[str, Any], config_ref: str, *, reserved: Iterable[str] | Mapping[str, str] = (),
    defaults: Mapping[str, Any] = {},
) -> dict[str, Any]:
    """Return ``values`` if every key is a field of ``config_ref`` (``"trl:SFTConfig"``) with a fitting value.

    A number or boolean written as a string (``per_device_train_batch_size: "4"``) comes back as the
    number, as trl's own YAML config parser (argparse) reads it; every other value comes back as written.
    Raises ``ValueError`` naming the key and what was expected; pydantic reports it with the
    field path. ``reserved`` keys are set by tempa itself (e.g. output_dir) and are refused, saying what decides
    them: a mapping's value for its key (reward_weights: each reward's weight), else the stage folder and launch. ``defaults``:
    tempa's defaults for the stage (its lr_scheduler_type is the one lr_scheduler_kwargs must fit when the recipe
    sets no other).
    """
    _refused(values)
    spec = train_arg_spec(config_ref)
    decides = dict(reserved) if isinstance(reserved, Mapping) else dict.fromkeys(reserved, STAGE_FOLDER_AND_LAUNCH)
    out = dict(values)
    for key, value in values.items():
        if key in decides:
            raise ValueError(f"'{key}' is set by tempa ({decides[key]}); remove it")
        if key not in spec.fields:
            raise ValueError(f"'{key}' is not a {spec.name} field{did_you_mean(key, spec.fields)}")
        if value is None:
            continue
        tp = _decode(spec.fields[key])
        choices = _enum_choices(tp)
        if choices and isinstance(value, str) and value not in choices:
            hint = closest(value, choices)
            extra = f"did you mean '{hint}'?" if hint else f"one of: {', '.join(choices)}"
            raise ValueError(f"'{key}': {value!r} is not a valid choice; {extra}")
        try:
            checked = _adapter(tp).validate_python(value)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]["msg"]
            raise ValueError(f"'{key}': {first}, got {value!r}") from None
        if isinstance(value, str) and isinstance(checked, int | float) and not isinstance(checked, enum.Enum):
            out[key] = checked  # the worker gets the number that was checked, never the string
    check_counts(out)
    check_report_to(out.get("report_to"))
    scheduler = out.get("lr_scheduler_type", defaults.get("lr_scheduler_type"))
    if scheduler is not None and ("lr_scheduler_type" in out or "lr_scheduler_kwargs" in out):
        check_scheduler(spec, scheduler, out.get("lr_scheduler_kwargs") or {})
    return out


@functools.cache
def train_arg_spec(config_ref: str) -> TrainArgSpec:
    """The spec of ``module:Class``, from the cache when this trl/transformers pair wrote one."""
    module, _, name = config_ref.partition(":")
    key = f"{name}-trl{version('trl')}-transformers{version('transformers')}-v{_SPEC_VERSION}.json"
    path = cache_root() / "train-args" / key
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TrainArgSpec(data["name"], data["fields"], data["schedulers"], data["helps"], data["scheduler_kwargs"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    spec = _build_spec(getattr(importlib.import_module(module), name))
    write_atomic(path, json.dumps(dataclasses.asdict(spec), indent=1, sort_keys=True) + "\n")
    return spec


def _build_spec(config_cls: type) -> TrainArgSpec:
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

    hints = typing.get_type_hints(config_cls)
    init = [f for f in dataclasses.fields(config_cls) if f.init]
    fields = {f.name: _encode(hints.get(f.name, Any)) for f in init}
    helps = {f.name: str(f.metadata.get("help", "")) for f in init}
    schedulers, takes = {}, {}
    for scheduler, function in TYPE_TO_SCHEDULER_FUNCTION.items():
        parameters = list(inspect.signature(function).parameters.values())
        named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                 and p.name not in _TRAINER_SUPPLIED]
        key = str(getattr(scheduler, "value", scheduler))
        schedulers[key] = [p.name for p in named if p.default is inspect.Parameter.empty]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            takes[key] = [p.name for p in named if p.name != "last_epoch"]
    return TrainArgSpec(config_cls.__name__, fields, schedulers, helps, takes)


_PLAIN = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict, "list": list, "None": type(None),
          "Any": Any}
UNKNOWN = "Unknown"  # a type the spec cannot hold (transformers' own classes): anything passes
_CONTAINERS = {"list": list, "tuple": tuple, "set": set, "dict": dict}


def _encode(tp: Any) -> Any:
    """A type annotation as JSON. Other classes (transformers' own: ParallelismConfig, ...) become
    ``UNKNOWN``, which accepts anything: trl and transformers check those when training starts."""
    if tp is type(None):
        return "None"
    if tp is Any:
        return "Any"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": tp.__name__, "values": [member.value for member in tp]}
    if isinstance(tp, type) and tp.__name__ in _PLAIN and _PLAIN[tp.__name__] is tp:
        return tp.__name__
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return {"union": [_encode(a) for a in args]}
    if origin is Literal and all(isinstance(a, str | int | float | bool) for a in args):
        return {"literal": list(args)}
    if isinstance(origin, type) and origin.__name__ in _CONTAINERS and _CONTAINERS[origin.__name__] is origin:
        return {origin.__name__: [_encode(a) for a in args if a is not Ellipsis]}
    return UNKNOWN


@functools.cache
def _decode_json(text: str) -> Any:
    spec = json.loads(text)
    if isinstance(spec, str):
        return _PLAIN.get(spec, Any)  # UNKNOWN too
    if "enum" in spec:
        return enum.Enum(spec["enum"], [(f"m{i}", value) for i, value in enumerate(spec["values"])])
    if "union" in spec:
        return Union[tuple(_decode(a) for a in spec["union"])]  # noqa: UP007 - built from a list
    if "literal" in spec:
        return Literal[tuple(spec["literal"])]
    (name, args), = spec.items()
    container = _CONTAINERS[name]
    return container[tuple(_decode(a) for a in args)] if args else container


def _decode(spec: Any) -> Any:
    return _decode_json(json.dumps(spec, sort_keys=True))


@functools.cache
def _adapter(tp: Any) -> TypeAdapter:
    return TypeAdapter(tp)


# Counts, sizes and rates that only make sense above zero. transformers checks some of them only when
# training starts, and some never: `num_train_epochs: -1` trains 0 steps and reports success,
# `learning_rate: 0` trains without moving a weight (a negative one fails in the optimizer).
_POSITIVE = (
    "learning_rate",
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
# And those for which zero means "none" but a negative number is a typo: transformers refuses a negative warmup only
# inside the launched process, after the model loaded, and takes a negative max_grad_norm or weight decay silently.
_NON_NEGATIVE = ("warmup_steps", "weight_decay", "max_grad_norm", "label_smoothing_factor", "dataloader_num_workers")
_UNSET_MAX_STEPS = -1  # transformers' default: train for num_train_epochs instead


def check_counts(values: Mapping[str, Any]) -> None:
    """Refuse non-positive learning rates, epochs, steps and batch sizes, and negative warmup, weight decay and the
    like; ``max_steps: -1`` is transformers' "unset"."""
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
    for key in _NON_NEGATIVE:
        value = values.get(key)
        if not isinstance(value, bool) and isinstance(value, int | float) and value < 0:
            raise ValueError(f"'{key}': must be 0 or more, got {value!r}")


# What the Trainer passes every scheduler itself; anything else a schedule requires must come
# from `lr_scheduler_kwargs`.
_TRAINER_SUPPLIED = {"optimizer", "num_warmup_steps", "num_training_steps"}


def check_scheduler(spec: TrainArgSpec, name: Any, kwargs: Mapping[str, Any]) -> None:
    """Refuse a scheduler whose required ``lr_scheduler_kwargs`` keys are missing (e.g. WSD's decay length), and
    keys it does not take (transformers raised TypeError when the training launch built it, after the data prep
    and the stages before it)."""
    if not isinstance(kwargs, Mapping):
        return
    key = str(getattr(name, "value", name))
    missing = [arg for arg in spec.schedulers.get(key, []) if arg not in kwargs]
    if missing:
        example = ", ".join(f"{m}: ..." for m in missing)
        raise ValueError(f"'lr_scheduler_type': {name} needs lr_scheduler_kwargs: {{{example}}}")
    _check_step_kwargs(kwargs)
    takes = spec.scheduler_kwargs.get(key)
    unknown = [arg for arg in kwargs if takes is not None and arg not in takes]
    if unknown:  # (the list is short: it says what was meant better than a guess)
        raise ValueError(f"'lr_scheduler_kwargs': the {key} schedule takes no {unknown[0]!r}; it takes: "
                         f"{', '.join(takes or []) or 'none'}")


@functools.cache
def _enum_choices(tp: Any) -> tuple[str, ...]:
    """The values of an ``Enum | str`` field (optim, lr_scheduler_type, save_strategy, ...); () otherwise."""
    args = typing.get_args(tp)
    enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
    if len(enums) != 1 or str not in args:
        return ()
    return tuple(str(member.value) for member in enums[0])


# lr_scheduler_kwargs that count optimizer steps (WSD's): like warmup_steps, a value below 1 is a fraction of the
# steps the stage trains, so a recipe whose token budget or epochs change keeps its schedule's shape.
STEP_KWARGS = ("num_decay_steps", "num_stable_steps")


def steps_of(value: float, total: int) -> int:
    """A count of optimizer steps as transformers reads ``warmup_steps``: below 1, that fraction of ``total`` rounded
    up; otherwise the steps themselves."""
    return math.ceil(value * total) if 0 < value < 1 else int(value)


def scheduler_kwargs_in_steps(kwargs: Mapping[str, Any], total: int) -> dict[str, Any]:
    """``lr_scheduler_kwargs`` with its step counts (:data:`STEP_KWARGS`) in steps of a run of ``total`` steps."""
    return {key: steps_of(value, total) if key in STEP_KWARGS and isinstance(value, int | float) else value
            for key, value in kwargs.items()}


def _check_step_kwargs(kwargs: Mapping[str, Any]) -> None:
    for key in STEP_KWARGS:
        value = kwargs.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (
                value >= 1 and value != int(value)):
            raise ValueError(f"'lr_scheduler_kwargs': {key} must be a number of steps, or a fraction below 1 of the "
                             f"steps the stage trains, got {value!r}")


def schedule_problem(train_args: Mapping[str, Any], steps: int) -> str | None:
    """Why the learning-rate schedule does not fit ``steps`` optimizer steps (one line), or None.

    transformers' warmup_stable_decay takes its warmup and decay in steps; when they add up to more than the run
    has, the rate never holds its peak (a 9-step stage with 200 decay steps trains at under 1% of it).
    """
    if steps <= 0:
        return None
    warmup = float(train_args.get("warmup_steps") or 0)
    warmup_steps = steps_of(warmup, steps)
    scheduler = train_args.get("lr_scheduler_type")
    # every step is a warmup step, which starts at 0: a 1-step stage learns nothing (these two take no warmup)
    if warmup_steps >= steps and scheduler not in ("constant", "reduce_lr_on_plateau"):
        return (f"warmup_steps {warmup:g} is {warmup_steps} of the {steps:,} step{'s' if steps != 1 else ''} it trains: "
                "the learning rate never reaches learning_rate (its first step is at 0); lower warmup_steps or "
                "train more steps")
    if scheduler != "warmup_stable_decay":
        return long_warmup(train_args, steps)
    decay = steps_of(float((train_args.get("lr_scheduler_kwargs") or {}).get("num_decay_steps") or 0), steps)
    if warmup_steps + decay <= steps:
        return long_warmup(train_args, steps)
    return (f"warmup_stable_decay warms up over {warmup_steps} and decays over {decay} steps (num_decay_steps), "
            f"more than the {steps:,} steps it trains: the learning rate never holds its peak; set "
            "lr_scheduler_kwargs.num_decay_steps to a fraction, e.g. 0.2 (a fifth of the steps, however many they are)")


def long_warmup(train: Mapping[str, Any], steps: int) -> str | None:
    """Why a warmup of half the ``steps`` or more wastes the run (a classic of small data: a warmup set for a large
    run, or a large share), or None. The rate spends that half below its peak, and a decaying schedule has the rest
    to come down in."""
    warmup = float(train.get("warmup_steps") or 0)
    warming = steps_of(warmup, steps)
    if 2 * warming < steps or train.get("lr_scheduler_type") in ("constant", "reduce_lr_on_plateau"):
        return None
    # a small share rounds up to a whole step: then the run is what is short, not the share
    advice = "train more steps" if warmup < 0.5 else \
        "lower warmup_steps (a share below 1, e.g. 0.05, scales with the steps) or train more steps"
    return (f"warmup_steps {warmup:g} is {warming} of the {steps:,} steps it trains: half the run or more warms up, "
            f"below learning_rate; {advice}")
