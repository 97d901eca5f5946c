"""Configuration of the ``merge`` stage: which models, which mergekit method, with which knobs.

The methods, their parameters and what each needs of its inputs come from mergekit's own
registry (``mergekit.merge_methods.registered_methods()``: each method's ``MergeMethodSpec``
with its ``ParameterSpec``s and ``InputContract``); the run options are mergekit's
``MergeOptions``. A recipe is checked against them when it loads.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tempa.merge.candidates import count_candidates
from tempa.sft.paths import stage_or_folder
from tempa.sft.stage_api import Artifact, Read, StageConfigBase
from tempa.sft.suggest import closest

# How the stage's base model enters a merge (read from the method's input contract, see base_role).
BaseRole = Literal["none", "first_input", "separate"]

# tempa's defaults for method parameters mergekit requires without a default.
PARAMETER_DEFAULTS: dict[str, dict[str, Any]] = {"slerp": {"t": 0.5}}  # the midpoint of the two models
# Per-model knobs the stage sets from its own fields (in selection order), not from `parameters:`.
PER_MODEL_FIELDS = {"weight": "weights", "density": "density"}


@dataclass(frozen=True)
class Span:
    """The values a method parameter takes, and why no other value works: what mergekit's code does with them."""

    low: float
    high: float = math.inf
    low_open: bool = False
    why: str = ""

    def __contains__(self, value: float) -> bool:
        return (self.low < value if self.low_open else self.low <= value) and value <= self.high

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high == math.inf else ']'}"


_OUTLIERS = Span(0.0, 1.0, why="the fraction of each task vector's largest elements dropped as outliers before "
                 "`density` of the rest is kept: below 0 mergekit drops part of that density instead, and a fraction "
                 "above 1 is no fraction of the elements (as for `density`)")
# Method parameters whose other values mergekit refuses, or takes to mean nothing the method is for; every value of a
# layer gradient or {filter, value} list is checked (the layers between a gradient's points get values between them).
PARAMETER_RANGES: dict[str, dict[str, Span]] = {
    "slerp": {"t": Span(0.0, 1.0, why="slerp interpolates from the first model (t=0) to the second (t=1); a t outside "
                        "that extrapolates past one of them, a different method from interpolation")},
    "nearswap": {"t": Span(0.0, why="the difference under which an element takes the second model's value; below 0 "
                           "no element does and the merge is the first model unchanged")},
    "sce": {"select_topk": Span(0.0, 1.0, low_open=True, why="the fraction of task-vector elements kept, as "
                                "`density`: at 0 or below mergekit keeps none and the merge is the base model "
                                "unchanged, and a fraction above 1 is no fraction of the elements")},
    "breadcrumbs": {"gamma": _OUTLIERS},
    "breadcrumbs_ties": {"gamma": _OUTLIERS},
}
# Methods that keep each element of a model's task vector with a probability from density - epsilon to
# density + epsilon (mergekit's della_magprune sparsification), and the name of that epsilon.
DENSITY_SPREAD = {"della": "epsilon", "della_linear": "epsilon"}
# Methods that divide by the sum of the weights without a guard, and their switch for it: weights that sum to
# zero make every merged tensor NaN (the task-vector methods and nuslerp guard their division).
WEIGHT_NORMALIZING = {"linear": "normalize", "multislerp": "normalize_weights"}

# MergeOptions tempa sets itself; a recipe cannot override them.
OWNED_OPTIONS = {
    "copy_tokenizer": "tempa attaches the recipe's tokenizer with its baked chat template",
    "write_model_card": "the bake stage writes the model card",
    "safe_serialization": "tempa writes safetensors only",
    "random_seed": "tempa passes the recipe's seed",
    "trust_remote_code": "set trust_remote_code on the recipe",
    "lazy_unpickle": "tempa merges safetensors only, so nothing is unpickled",
}
# tempa's defaults over mergekit's: merge on the CPU (device applies unless cuda/gpu_rich is set).
# Inputs are safetensors only (pickled folders are refused before mergekit sees them), so mergekit
# never unpickles: lazy_unpickle stays off.
OPTION_DEFAULTS: dict[str, Any] = {"device": "cpu", "lazy_unpickle": False}


def _did_you_mean(value: str, choices: list[str]) -> str:
    hint = closest(value, choices)
    return f" (did you mean {hint!r}?)" if hint else ""


@functools.cache
def merge_methods() -> dict[str, Any]:
    """mergekit's registered methods by name: their ``MergeMethodSpec``."""
    from mergekit.merge_methods import registered_methods

    return {method.spec.name: method.spec for method in registered_methods()}


def method_spec(name: str) -> Any:
    """mergekit's spec of method ``name``; ValueError naming the methods mergekit has."""
    methods = merge_methods()
    if name not in methods:
        raise ValueError(
            f"unknown merge method {name!r}{_did_you_mean(name, list(methods))}; mergekit has: "
            f"{', '.join(sorted(methods))}"
        )
    return methods[name]


def base_role(spec: Any, models: int, base_model_set: bool) -> BaseRole:
    """How a base model enters ``spec``'s merge of ``models`` models, from mergekit's input contract.

    - ``none``: the method ignores or forbids a base (linear, karcher, passthrough), or takes an
      optional one the stage does not set (multislerp, nuslerp);
    - ``first_input``: the method takes no more inputs, base included, than the stage merges
      (slerp, nearswap, arcee_fusion between two models): the first (best) model is the base
      unless `base_model` names the other one;
    - ``separate``: the base model (`base_model`, else the recipe's) is added to the models, as
      task-vector methods (task_arithmetic, ties, dare_*, della*, breadcrumbs*, model_stock) need.
    """
    from mergekit.merge_methods import BasePolicy

    policy = spec.contract.base
    if policy in (BasePolicy.IGNORED, BasePolicy.FORBIDDEN) or (policy == BasePolicy.OPTIONAL and not base_model_set):
        return "none"
    maximum = spec.contract.max_inputs
    return "first_input" if maximum is not None and models >= maximum else "separate"


def check_input_count(spec: Any, models: int, role: BaseRole) -> None:
    """mergekit's own input-count rules for ``models`` models (plus a separate base); ValueError if broken."""
    ids: list[Any] = list(range(models))
    base = None
    if role == "first_input" and ids:
        base = ids[0]
    elif role == "separate":
        base = "base"
        ids.append(base)
    try:
        spec.contract.validate_ids(ids, base)
    except ValueError as error:
        given = f"{models} model(s)" + (" plus the base model" if role == "separate" else "")
        raise ValueError(f"method {spec.name}: {str(error).removeprefix('Merge method ')} ({given})") from None


def setting_values(parameter: Any, value: Any) -> list[Any]:
    """Every value ``value`` gives ``parameter``, validated as its type: a scalar, each point of a layer gradient,
    each {value, filter}'s (a scalar or gradient); ValidationError/ValueError/TypeError if one is not a setting.

    mergekit interpolates a gradient's layers linearly between its points, so its points bound every layer's value.
    """
    from mergekit.config import ConditionalParameter, ParameterSetting

    setting = TypeAdapter(ParameterSetting).validate_python(value)
    conditions = setting if isinstance(setting, list) and setting and isinstance(setting[0], ConditionalParameter) \
        else [setting] if isinstance(setting, ConditionalParameter) else []
    values = [c.value for c in conditions] or [setting]
    return [parameter.validate(scalar) for item in values for scalar in (item if isinstance(item, list) else [item])]


def _not_finite(values: list[Any]) -> Any:
    """The first NaN or infinite number among ``values`` (mergekit's arithmetic would spread it to every tensor)."""
    return next((v for v in values if isinstance(v, float) and not math.isfinite(v)), None)


def _check_range(spec: Any, name: str, value: Any, values: list[Any]) -> None:
    span = PARAMETER_RANGES.get(spec.name, {}).get(name)
    if span is None:
        return
    outside = next((v for v in values if v not in span), None)
    if outside is not None:
        has = f"{value!r} has {outside!r}" if isinstance(value, list) else f"{outside!r} is"
        raise ValueError(f"parameters.{name}: {has} outside {span}: {span.why}")


def check_method_parameters(spec: Any, parameters: dict[str, Any]) -> None:
    """Method-level ``parameters`` against mergekit's spec: known names, valid values (finite, and inside
    :data:`PARAMETER_RANGES`), required ones given."""
    accepted = {p.name: p for p in spec.parameters}
    takes = ", ".join(accepted) or "none"
    for name, value in parameters.items():
        if name in PER_MODEL_FIELDS and name in accepted:
            raise ValueError(
                f"parameters.{name}: set the stage's per-model `{PER_MODEL_FIELDS[name]}` instead (in selection order)"
            )
        if name not in accepted:
            raise ValueError(
                f"parameters.{name}: not a parameter of mergekit's {spec.name}{_did_you_mean(name, list(accepted))}; "
                f"it takes: {takes}"
            )
        try:
            values = setting_values(accepted[name], value)
        except (ValidationError, ValueError, TypeError) as error:
            detail = error.errors()[0]["msg"] if isinstance(error, ValidationError) else str(error)
            raise ValueError(f"parameters.{name}: {value!r} is not a valid {spec.name} {name}: {detail}") from None
        if (bad := _not_finite(values)) is not None:
            raise ValueError(f"parameters.{name}: {bad!r} is not a finite number (the merged weights would not be "
                             f"either)")
        _check_range(spec, name, value, values)
    missing = [p.name for p in spec.parameters if p.required and p.name not in parameters and p.name != "weight"]
    if missing:
        raise ValueError(f"method {spec.name} needs parameters.{missing[0]} (mergekit has no default); it takes: {takes}")


def check_per_model(spec: Any, name: str, values: list[float], count: int) -> None:
    """A per-model knob (``weight`` / ``density``): the method takes it, one value per model, each valid."""
    parameter = next((p for p in spec.parameters if p.name == name), None)
    field = PER_MODEL_FIELDS[name]
    if parameter is None:
        takes = ", ".join(p.name for p in spec.parameters) or "none"
        raise ValueError(f"{field}: method {spec.name} takes no per-model {name} (its parameters: {takes})")
    if len(values) != count:
        raise ValueError(f"{field}: {len(values)} values for {count} models")
    for value in values:
        try:
            parameter.validate(value)
        except ValidationError as error:
            raise ValueError(f"{field}: {value!r}: {error.errors()[0]['msg']}") from None
        if not math.isfinite(value):
            raise ValueError(f"{field}: {value!r} is not a finite number (the merged weights would not be either)")


def weight_shares(method: str, weights: Sequence[Any], parameters: Mapping[str, Any]) -> list[float] | None:
    """Each model's share of the merge where ``method`` divides the weights by their sum (its switch on, as by
    default): [2, 1] merges 2/3 and 1/3. None for another method, the switch off, a weight that is no single number (a
    layer gradient) or weights that sum to 0."""
    switch = WEIGHT_NORMALIZING.get(method)
    if switch is None or not weights or any(isinstance(w, bool) or not isinstance(w, int | float) for w in weights):
        return None
    default = next((p.default for p in method_spec(method).parameters if p.name == switch), True)
    total = sum(weights)
    return [w / total for w in weights] if parameters.get(switch, default) and total else None


def check_weight_sum(spec: Any, weights: list[float], parameters: dict[str, Any]) -> None:
    """Weights that cancel out are refused where ``spec`` divides by their sum (a NaN model otherwise)."""
    switch = WEIGHT_NORMALIZING.get(spec.name)
    if switch is None or abs(sum(weights)) >= 1e-8:
        return
    default = next((p.default for p in spec.parameters if p.name == switch), True)
    if parameters.get(switch, default):
        raise ValueError(
            f"weights: {weights} sum to 0, and {spec.name} divides by their sum (parameters.{switch} is on), "
            f"which would make every merged tensor NaN; give weights with a non-zero sum or set "
            f"parameters.{switch}: false"
        )


def check_density_spread(spec: Any, densities: list[float], parameters: dict[str, Any]) -> None:
    """A DELLA epsilon that puts density - epsilon or density + epsilon outside (0, 1) for a model with a density below
    1 is refused, as mergekit refuses it only when it merges (after every stage before the merge has trained)."""
    name = DENSITY_SPREAD.get(spec.name)
    if name is None:
        return
    parameter = next(p for p in spec.parameters if p.name == name)
    given = name in parameters
    spreads = setting_values(parameter, parameters[name]) if given else [parameter.default]
    for density in (d for d in densities if d < 1):  # mergekit keeps a whole task vector at density 1
        for spread in spreads:
            low, high = density - spread, density + spread
            # mergekit's check, then (for a negative epsilon, which it lets through) torch.bernoulli's: keep
            # probabilities below 0 or above 1 stop the merge with a torch error
            if high >= 1 or low <= 0 or max(low, high) > 1 or min(low, high) < 0:
                bound = min(density, 1 - density)
                if given:
                    what = f"{parameters[name]!r} has {spread!r}, which" if isinstance(parameters[name], list) \
                        else f"{spread!r}"
                    what = f"parameters.{name}: {what} with density {density!r}"
                else:
                    what = f"density: {density!r} with {spec.name}'s default {name} {spread!r}"
                give = f"under {bound:g}" if spread >= 0 else f"of at least {-bound:g}"
                raise ValueError(
                    f"{what} keeps each element with a probability from {min(low, high):g} to {max(low, high):g}; "
                    f"mergekit's {spec.name} needs density - {name} and density + {name} inside (0, 1) (it refuses "
                    f"this only when it merges): give parameters.{name} {give} for density {density!r}"
                )


def check_options(options: dict[str, Any]) -> None:
    """A merge stage's ``options`` against mergekit's ``MergeOptions`` (which ignores unknown keys itself)."""
    from mergekit.common import parse_kmb
    from mergekit.options import MergeOptions

    known = list(MergeOptions.model_fields)
    for key in options:
        if key in OWNED_OPTIONS:
            raise ValueError(f"options.{key}: set by tempa ({OWNED_OPTIONS[key]})")
        if key not in known:
            raise ValueError(
                f"options.{key}: not a mergekit MergeOptions field{_did_you_mean(key, known)}; known: "
                f"{', '.join(k for k in known if k not in OWNED_OPTIONS)}"
            )
    values = dict(options)
    if isinstance(values.get("out_shard_size"), str):
        try:
            values["out_shard_size"] = parse_kmb(values["out_shard_size"])
        except (ValueError, IndexError):
            raise ValueError(
                f"options.out_shard_size: {options['out_shard_size']!r} is not a size such as 5B, 500M or 1000000"
            ) from None
    try:
        MergeOptions.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        raise ValueError(f"options.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


class SelectConfig(BaseModel):
    """Pick the best candidates of an evaluate stage's leaderboard."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="Leaderboard metric, '<suite>/<metric>' (e.g. accuracy/accuracy).")
    top_k: int = Field(default=2, ge=1, description="How many of the best candidates to merge (a task-vector method "
                       "picks them besides its base model, when that is scored too): two or more, or 1 for a "
                       "task-vector method, which merges it onto its base.")
    higher_is_better: bool | None = Field(
        default=None, description="Direction of the metric (default: losses/perplexities lower, else higher)."
    )


class MergeStageConfig(StageConfigBase):
    """Merge the best checkpoints with mergekit, then re-score the merged model.

    Give either `select` (top-k of `evaluate_stage`'s leaderboard) or `models` (stage names,
    leaderboard candidate names, or folders). Any method in mergekit's registry works; its
    parameters are checked against mergekit's spec at load. Task-vector methods (task
    arithmetic, TIES, DARE, DELLA, breadcrumbs, model_stock) add `base_model`, else the recipe's
    base model; two-model methods with a base (slerp, nearswap, arcee_fusion) take the first
    model as the base: slerp interpolates from it (t=0) to the second (t=1), never past either.
    """

    kind: Literal["merge"]
    method: str = Field(
        default="linear",
        description="A mergekit merge method: any in its registry, e.g. linear, slerp, ties, dare_ties, della, "
        "model_stock, karcher, multislerp.",
    )
    evaluate_stage: str | None = Field(
        default=None,
        description="Evaluate stage whose leaderboard `select` reads and whose suites re-score the merge.",
    )
    select: SelectConfig | None = Field(default=None, description="Choose the models by leaderboard rank.")
    models: list[str] | None = Field(
        default=None,
        description="Or: the models to merge, explicitly: an earlier stage's name, a leaderboard candidate "
        "(`sft/checkpoint-20`) or a folder (recipe-relative; `./name` when a stage has the same name). Two or more "
        "(one for a task-vector method, merged onto its base, and for passthrough).")
    base_model: str | None = Field(
        default=None,
        description="Base of methods that take one: a stage name or folder (default: the recipe's base model, or "
        "for two-model methods such as slerp the first model).",
    )
    weights: list[float] | None = Field(
        default=None,
        description="Per-model weights, in `models` order or `select`'s rank order (default: equal). When the base "
        "model of a task-vector method is among them, it is merged as the base and its entry goes unused. linear and "
        "multislerp divide them by their sum (parameters.normalize / normalize_weights, on by default): [2, 1] "
        "merges 2/3 and 1/3, the shares the model card shows beside them; ties and della (normalize on) divide each "
        "element by the summed weights of the models that agree on its sign; task_arithmetic, "
        "dare_ties, dare_linear, della_linear and breadcrumbs* use them as given.",
    )
    density: float | list[float] | None = Field(
        default=None,
        description="Fraction of each task vector kept (TIES/DARE/DELLA/breadcrumbs), in (0, 1]: one value, or one "
        "per model as `weights`. DELLA keeps each element with a probability from density - epsilon to density + "
        "epsilon (parameters.epsilon, mergekit's default 0.15), which must lie inside (0, 1) for a density below 1.",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Method-level mergekit parameters, e.g. {t: 0.5} for slerp, {lambda: 1.0, normalize: true}; "
        "a value may be a layer gradient ([0, 0.5, 1]) or [{filter: self_attn, value: 0.3}, {value: 0.7}]. Unset, "
        "slerp's `t` is 0.5 (the midpoint); every other parameter keeps mergekit's default. Refused at load: a value "
        "that is not a finite number, slerp's `t` outside [0, 1] (at any point of a gradient; mergekit would "
        "extrapolate past a model), nearswap's `t` below 0, sce's `select_topk` outside (0, 1] and breadcrumbs' "
        "`gamma` outside [0, 1] (the error says what mergekit would do with it).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None, description="Dtype of the arithmetic (default: float32, rounded once to `out_dtype` when saved; "
        "mergekit's own choice, the inputs' dtype, rounded bf16 task vectors and their weights at every step)."
    )
    out_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None, description="Dtype of the saved weights (default: `dtype` if set, else the dtype the merged "
        "models were saved in, float32 when they differ; never the base model's alone).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="mergekit MergeOptions, e.g. {device: cuda, out_shard_size: 5B, num_threads: 8}. tempa's "
        "defaults: device cpu; it sets copy_tokenizer, write_model_card, safe_serialization, random_seed, "
        "trust_remote_code and lazy_unpickle (off: inputs are safetensors only) itself.",
    )
    reevaluate: bool = Field(
        default=True,
        description="Re-score the merged model with `evaluate_stage`'s suites and add it to the board (its scores "
        "are cached by the merged weights' content: a re-run that merges the same model asks no judge again).",
    )

    @field_validator("models")
    @classmethod
    def _resolve_models(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        # A folder must exist when the recipe loads (not after the stages before the merge trained); a bare
        # name that is no folder next to the recipe stays a stage or leaderboard-candidate reference.
        if value is None:
            return None
        return [stage_or_folder(item, info) for item in value]

    @field_validator("base_model")
    @classmethod
    def _resolve_base(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else stage_or_folder(value, info)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        method_spec(value)
        return value

    @field_validator("options")
    @classmethod
    def _mergekit_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_options(value)
        return value

    @model_validator(mode="after")
    def _check(self):
        spec = method_spec(self.method)
        if self.from_ is not None:
            # a merge never opens a model it starts from: taken for its base or one of its models, it was ignored
            raise ValueError(f"`from`: a merge starts from no model; it merges its `models` (or what `select` "
                             f"picks): to merge {self.from_!r}, name it in `models` (a task-vector method's base goes "
                             "in `base_model`)")
        if (self.select is None) == (self.models is None):
            raise ValueError("give exactly one of `select` (top-k of a leaderboard) or `models`")
        if self.select is not None and self.evaluate_stage is None:
            raise ValueError(
                "`select` needs `evaluate_stage` (the evaluate stage whose leaderboard it reads)"
            )
        count = self.select.top_k if self.select is not None else len(self.models or [])
        role = self.base_role(count)
        if self.base_model is not None and role == "none":
            raise ValueError(f"method {self.method} uses no base model")
        if role == "first_input" and self.base_model is not None and self.models is not None \
                and self.base_model not in self.models:
            # the merge refused it after every stage before it had trained
            raise ValueError(f"base_model: {self.base_model!r} is not one of `models` {self.models}; {self.method} "
                             f"takes its base from the models it merges: name it as it is written in `models`")
        if role == "first_input" and self.base_model is not None and self.select is not None:
            # Whether the base is among the models select picks is known only once the leaderboard ranks them; when it
            # is not, the method gets one input more than it takes, and the merge failed after all training.
            raise ValueError(f"base_model: {self.method} takes its base from the {count} models it merges, and `select` "
                             f"picks them by rank once {self.evaluate_stage} has scored them, so {self.base_model!r} "
                             f"may not be among them; drop base_model (the best-ranked model is the base) or list the "
                             f"`models:` to merge")
        field = "select.top_k" if self.select is not None else "models"
        try:
            check_input_count(spec, count, role)
        except ValueError as error:
            raise ValueError(f"{field}: {error}") from None
        if count + (role == "separate") < 2 and spec.contract.max_inputs != 1:
            # mergekit takes one model (its base counted) for any method: the "merge" was a copy of that model
            raise ValueError(f"{field}: a merge needs two or more models (a task-vector method counts its base), and "
                             f"{self.method} of one model is a copy of it")
        for name, value in PARAMETER_DEFAULTS.get(self.method, {}).items():
            self.parameters.setdefault(name, value)
        check_method_parameters(spec, self.parameters)
        if self.weights is not None:
            check_per_model(spec, "weight", self.weights, count)
            check_weight_sum(spec, self._merged_entries(self.weights, role), self.parameters)
        if self.density is not None:
            densities = self.density if isinstance(self.density, list) else [self.density] * count
            check_per_model(spec, "density", densities, count)
            if any(not 0.0 < d <= 1.0 for d in densities):
                raise ValueError("density must be in (0, 1]")
            check_density_spread(spec, self._merged_entries(densities, role), self.parameters)
        return self

    def _merged_entries(self, values: list[float], role: BaseRole) -> list[float]:
        """The per-model ``values`` of the models merged besides the base: a listed base model leaves the merge with
        its entry (resolve_inputs checks again, by folder)."""
        return [v for i, v in enumerate(values)
                if self.models is None or role != "separate" or self.models[i] != self.base_model]

    def base_role(self, models: int) -> BaseRole:
        """How the base model enters this stage's merge of ``models`` models (see :func:`base_role`)."""
        return base_role(method_spec(self.method), models, self.base_model is not None)

    def _selected_metric(self, evaluate: Any) -> str | None:
        """Why the evaluate stage's suites never report ``select.metric`` (a typo found after all training), or None."""
        from tempa.merge.evaluate_config import metric_problem

        if self.select is None or not hasattr(evaluate, "suites"):
            return None
        return metric_problem(self.select.metric, evaluate.suites)

    def reads(self, earlier: Sequence[str]) -> list[Read]:
        """The evaluate stage's leaderboard, and the earlier stages named in `models` / `base_model`.

        A leaderboard candidate name (``sft/checkpoint-20``) reads its stage (``sft``) too, so a
        re-run of that stage re-runs the merge.
        """
        reads = [Read(self.evaluate_stage, Artifact.LEADERBOARD, ("evaluate_stage",), needs=self._selected_metric,
                      needs_at=("select", "metric"))] if self.evaluate_stage else []
        named = [(("models", i), ref) for i, ref in enumerate(self.models or [])]
        if self.base_model:
            named.append((("base_model",), self.base_model))
        for field, reference in named:
            if not os.path.isabs(reference):
                reads.append(Read(reference.split("/", 1)[0], Artifact.MODEL, field))
        return reads


def selection_notes(stages: Sequence[StageConfigBase], scored: Mapping[str, int] | None = None) -> list[str]:
    """For `tempa plan`: what a merge's `select` needs that only the run can tell, one line each: enough
    candidates for `top_k` where the recipe does not fix their count (the loader refuses a `top_k` above the
    most there can be). ``scored``: the candidates each evaluate stage the run keeps as complete has scored, which
    it tells for certain."""
    by_name = {stage.name: stage for stage in stages}
    notes = []
    for stage in stages:
        if not isinstance(stage, MergeStageConfig) or stage.select is None or stage.evaluate_stage not in by_name:
            continue
        evaluate = by_name[stage.evaluate_stage]
        top_k = stage.select.top_k
        if scored is not None and evaluate.name in scored:
            if scored[evaluate.name] < top_k:
                notes.append(f"stage '{stage.name}': select.top_k {top_k}: {evaluate.name} scored "
                             f"{scored[evaluate.name]} candidate{'s' if scored[evaluate.name] != 1 else ''}, so the "
                             f"merge fails; lower top_k, or give {evaluate.name} more candidates")
        elif hasattr(evaluate, "checkpoints_of"):
            count = count_candidates({name: by_name[name].train_args() for name in evaluate.checkpoints_of
                                      if name in by_name}, include_final=evaluate.include_final,
                                     stages=len(evaluate.stages), models=len(evaluate.models))
            if count.low < top_k:
                most = f"up to {count.high}" if count.high is not None else "no fixed number of"
                notes.append(f"stage '{stage.name}': select.top_k {top_k}: whether {evaluate.name} scores that many "
                             f"candidates is known only once it runs: {count.low} at least, {most} ({count.how}); "
                             f"fewer than {top_k} fails the merge")
    return notes
