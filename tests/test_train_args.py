"""The cached spec of trl's config classes validates exactly as the classes' own annotations do."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing

import pytest
from pydantic import TypeAdapter, ValidationError

from tempa.sft.train_args import UNKNOWN, _build_spec, _decode, train_arg_spec

PROBES = [1, -3, 2.5, "adamw_torch", "steps", "x", True, None, [1, "a"], ["a"], {"a": 1}, {"a": "b"}]


def _accepts(adapter: TypeAdapter, value) -> bool:
    try:
        adapter.validate_python(value)
        return True
    except ValidationError:
        return False


@pytest.mark.parametrize("name", ["SFTConfig", "DPOConfig"])
def test_spec_accepts_and_refuses_what_the_annotations_do(name: str) -> None:
    import trl

    config_cls = getattr(trl, name)
    spec = _build_spec(config_cls)
    hints = typing.get_type_hints(config_cls)
    compared = 0
    for field in dataclasses.fields(config_cls):
        if not field.init:
            continue
        if UNKNOWN in json.dumps(spec.fields[field.name]):
            continue  # transformers' own classes: left to trl when training starts, as documented
        original = TypeAdapter(hints[field.name])
        cached = TypeAdapter(_decode(spec.fields[field.name]))
        for value in PROBES:
            assert _accepts(cached, value) == _accepts(original, value), (field.name, value)
        compared += 1
    assert compared > 100


def test_a_train_error_is_reported_from_the_cached_spec_without_importing_trl(tmp_path) -> None:
    train_arg_spec("trl:SFTConfig")  # written to this session's cache (once per trl/transformers version)
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nbase_model: tempa:tiny\nstages:\n  - {name: s, kind: sft, data: {sources: "
                      "[{name: r, path: rows.jsonl}]}, train: {lerning_rate: 1.0e-3, lr_scheduler_type: cosine}}\n")
    child = (
        "import sys\n"
        "from tempa.recipes.errors import RecipeError\n"
        "from tempa.recipes.loader import load_recipe\n"
        "try:\n"
        f"    load_recipe({str(recipe)!r})\n"
        "except RecipeError as exc:\n"
        "    print(exc)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == [
        f"{recipe}:4: stages[0].train.lerning_rate (stage 's'): is not a SFTConfig field; did you mean 'learning_rate'?",
        "[]",
    ], done.stderr[-2000:]


def test_quoted_numbers_reach_the_trainer_as_trls_own_config_parser_reads_them(tmp_path) -> None:
    """`per_device_train_batch_size: "4"`: trl's YAML config (argparse) reads 4; so does the recipe check."""
    import yaml
    from trl import SFTConfig, TrlParser

    from tempa.recipes.loader import load_recipe
    from tempa.sft.train_args import check_train_args

    train = {"per_device_train_batch_size": "4", "num_train_epochs": "40", "learning_rate": "3e-3", "packing": "true"}
    config = tmp_path / "trl.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "use_cpu": True, "bf16": False, **train}))
    (parsed,) = TrlParser((SFTConfig,)).parse_args_and_config(["--config", str(config)])
    expected = {key: getattr(parsed, key) for key in train}
    checked = check_train_args(train, "trl:SFTConfig")
    assert checked == expected and [type(v) for v in checked.values()] == [type(v) for v in expected.values()]
    # what the stage config hands the worker is the checked value
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nbase_model: tempa:tiny\nstages:\n  - {name: s, kind: sft, data: {sources: "
                      "[{name: r, path: rows.jsonl}]}, train: " + json.dumps(train) + "}\n")
    stage = load_recipe(recipe).stage("s")
    assert stage.train == expected and {key: stage.train_args()[key] for key in train} == expected
    # a quoted count is checked as the number it becomes
    with pytest.raises(ValueError, match="'per_device_train_batch_size': must be positive"):
        check_train_args({"per_device_train_batch_size": "-4"}, "trl:SFTConfig")


@pytest.mark.parametrize(("config", "train", "hint"), [
    ("trl:SFTConfig", {"hub_token": "hf_" + "s" * 34}, "HF_TOKEN"),
    ("trl:SFTConfig", {"push_to_hub": True, "hub_model_id": "me/x"}, "tempa push"),
    ("trl:SFTConfig", {"trust_remote_code": True}, "top level"),
    ("trl:SFTConfig", {"model_init_kwargs": {"trust_remote_code": True}}, "top level"),
    ("trl:DPOConfig", {"trust_remote_code": True}, "top level"),
    ("trl:DPOConfig", {"model_init_kwargs": {"trust_remote_code": True}}, "top level"),
    # a token inside a kwargs mapping reached `tempa plan` and the trackers' config (TensorBoard's args text)
    ("trl:SFTConfig", {"model_init_kwargs": {"token": "hf_" + "s" * 34}}, r"'model_init_kwargs\.token'.*HF_TOKEN"),
    ("trl:DPOConfig", {"model_init_kwargs": {"use_auth_token": "hf_" + "s" * 34}}, "HF_TOKEN"),
    ("trl:GRPOConfig", {"generation_kwargs": {"extra": {"api_key": "sk-" + "s" * 30}}}, r"generation_kwargs\.extra"),
    ("trl:GRPOConfig", {"generation_kwargs": {"servers": [{"api_key": "sk-" + "s" * 30}]}},
     r"'generation_kwargs\.servers\[0\]\.api_key'"),
    # the Trainer re-created the throughput meter after the trackers and the progress line on resume: the resumed
    # steps' progress lines and tracker logs had no tokens/s, MFU or ETA
    ("trl:SFTConfig", {"restore_callback_states_from_checkpoint": True}, "restores its own totals"),
    ("trl:DPOConfig", {"restore_callback_states_from_checkpoint": True}, "restores its own totals"),
])
def test_train_keys_that_bypass_tempa_s_safeguards_are_refused(config, train, hint) -> None:
    """A hub token in `train:` was copied into recipe.resolved.yaml, train_plan.json, the manifests and
    `tempa plan`'s output; `push_to_hub` uploaded the checkpoints folder past `tempa push`'s checks;
    `trust_remote_code` there ran a model's code in the trainer while the recipe's own switch was off."""
    from tempa.sft.train_args import check_train_args

    with pytest.raises(ValueError, match=hint) as err:
        check_train_args(train, config)
    assert "hf_sss" not in str(err.value)


def test_special_tokens_in_a_train_mapping_are_no_secrets() -> None:
    from tempa.sft.train_args import check_train_args

    kwargs = {"stop_token": "<|eot_id|>", "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>"}
    assert check_train_args({"generation_kwargs": kwargs}, "trl:GRPOConfig")["generation_kwargs"] == kwargs


def test_vllm_engine_args_cannot_turn_on_remote_code() -> None:
    from tempa.alignment.backends import VLLMBackendConfig

    with pytest.raises(ValidationError, match="top level"):
        VLLMBackendConfig(engine_args={"trust_remote_code": True})
    assert VLLMBackendConfig(engine_args={"max_num_seqs": 8}).engine_args == {"max_num_seqs": 8}


def test_a_warmup_stable_decay_longer_than_the_run_is_named_with_its_steps(capsys) -> None:
    """transformers takes WSD's warmup and decay in steps: 1 + 200 of a 9-step run never reach the stable phase."""
    from transformers import TrainerState
    from trl import SFTConfig

    from tempa.sft.train_args import schedule_problem
    from tempa.sft.train_worker import ScheduleCheck

    wsd = {"lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": {"num_decay_steps": 200},
           "warmup_steps": 0.02}
    assert schedule_problem(wsd, 9) == (
        "warmup_stable_decay warms up over 1 and decays over 200 steps (num_decay_steps), more than the 9 steps it "
        "trains: the learning rate never holds its peak; set lr_scheduler_kwargs.num_decay_steps to a fraction, e.g. "
        "0.2 (a fifth of the steps, however many they are)")  # warmup: 0.02 of 9 steps, rounded up as transformers does
    assert schedule_problem(wsd, 205) is None and schedule_problem(wsd, 204) is not None  # ceil(4.08) + 200 > 204
    assert schedule_problem({**wsd, "warmup_steps": 5, "lr_scheduler_kwargs": {"num_decay_steps": 10}}, 14)
    assert schedule_problem({**wsd, "lr_scheduler_type": "cosine"}, 9) is None  # other schedules scale with the run
    # ... unless the warmup takes every step: a one-step DPO round with the default warmup 0.1 trained at 0
    assert schedule_problem({"lr_scheduler_type": "cosine", "warmup_steps": 0.1}, 1) == (
        "warmup_steps 0.1 is 1 of the 1 step it trains: the learning rate never reaches learning_rate (its first "
        "step is at 0); lower warmup_steps or train more steps")
    assert schedule_problem({"lr_scheduler_type": "linear", "warmup_steps": 10}, 8) is not None
    assert schedule_problem({"lr_scheduler_type": "cosine", "warmup_steps": 0.1}, 3) is None
    # half the run warming up is said at train time too, as the plan says it (1 of 2 steps: the first is at 0)
    assert "half the run or more warms up" in schedule_problem({"lr_scheduler_type": "cosine", "warmup_steps": 0.1}, 2)
    assert schedule_problem({"lr_scheduler_type": "constant", "warmup_steps": 0.1}, 1) is None  # takes no warmup

    # the worker says it in its log, from the trainer's own arguments (an enum) and the steps it counted
    args = SFTConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False, **wsd)
    ScheduleCheck().on_train_begin(args, TrainerState(max_steps=9), None)
    ScheduleCheck().on_train_begin(args, TrainerState(max_steps=500), None)
    assert capsys.readouterr().out.splitlines() == [f"[tempa] warning: {schedule_problem(wsd, 9)}"]


@pytest.mark.parametrize("recipe", ["sea-lion-v3-70b-it", "sea-lion-v3.5-8b-r", "sea-lion-v3.5-8b-r-rlvr",
                                    "swallow-8b-instruct-v0.3", "swallow-70b-instruct-v0.3"])
def test_the_seed_recipes_schedules_fit_their_planned_steps(recipe: str) -> None:
    from tempa.recipes.estimate import estimate_recipe
    from tempa.recipes.loader import load_recipe

    warnings = [w for e in estimate_recipe(load_recipe(recipe), "8xH100") for w in e.warnings]
    assert not [w for w in warnings if "warmup_stable_decay" in w]
