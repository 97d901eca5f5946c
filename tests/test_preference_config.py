"""The preference stage's recipe block: DPO loss names, trl pass-through, recipe integration."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import textwrap
from pathlib import Path
from typing import Literal

import pytest
from pydantic import ValidationError

from tempa.alignment import PreferenceStageConfig, SynthesizeStageConfig
from tempa.alignment.preference_config import declared_choices, normalize_loss_type, trl_loss_types

PROMPTS = str(Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl")


def config(**overrides) -> PreferenceStageConfig:
    return PreferenceStageConfig.model_validate(
        {"name": "align", "prompts": {"path": PROMPTS}, "rewards": [{"type": "format"}], **overrides})


def test_the_issue_loss_types_are_trl_loss_types():
    from trl import DPOConfig

    for name in ("sigmoid", "apo_zero", "ipo", "sigmoid_norm"):
        assert name in trl_loss_types()
        assert config(train={"loss_type": name}).train["loss_type"] == [name]
        # trl itself accepts what we pass on
        assert DPOConfig(output_dir="/tmp/x", loss_type=[name], use_cpu=True, bf16=False,
                         activation_checkpointing=False).loss_type == [name]


def test_loss_names_are_trls_declared_and_implemented_ones():
    from trl import DPOTrainer

    @dataclasses.dataclass
    class Typed:
        loss_type: list[Literal["sigmoid", "ipo"]] = dataclasses.field(
            default_factory=list, metadata={"help": "Possible values are: `'sigmoid'`, `'hinge'`."})

    from tempa.sft.train_args import _build_spec

    spec = _build_spec(Typed)  # as tempa caches it
    # a typed declaration wins over prose
    assert declared_choices(spec.fields["loss_type"], spec.helps["loss_type"]) == ("sigmoid", "ipo")
    assert declared_choices("list", spec.helps["loss_type"]) == ("sigmoid", "hinge")
    # The installed trl declares them in the field's metadata: exactly the losses its trainer implements.
    implemented = set(re.findall(r'loss_type == "([a-z0-9_]+)"', inspect.getsource(DPOTrainer)))
    assert len(implemented) >= 15 and set(trl_loss_types()) == implemented


def test_loss_aliases_lists_and_errors():
    assert normalize_loss_type("dpo") == ["sigmoid"]
    assert normalize_loss_type(["APO", "sft"]) == ["apo_zero", "sft"]
    with pytest.raises(ValidationError) as err:
        config(train={"loss_type": "orpo"})
    message = str(err.value)
    assert "'orpo' is not a loss of the installed trl DPOConfig" in message and "apo_zero" in message


def test_train_block_is_checked_against_dpo_config():
    assert config(train={"precompute_ref_log_probs": True, "beta": 0.2}).train_args()["precompute_ref_log_probs"]
    with pytest.raises(ValidationError, match="did you mean 'beta'"):
        config(train={"betta": 0.1})
    with pytest.raises(ValidationError, match="'output_dir' is set by tempa"):
        config(train={"output_dir": "/tmp/x"})
    with pytest.raises(ValidationError, match="is not a DPOConfig field"):
        config(train={"packing": True})  # an SFTConfig field


def test_config_rules():
    with pytest.raises(ValidationError, match=r"leave backend\.model unset"):
        config(backend={"type": "transformers", "model": PROMPTS})
    with pytest.raises(ValidationError, match="needs a `revise:` block"):
        config(pairs={"strategy": "revise"})
    with pytest.raises(ValidationError, match="greedy"):
        config(sampling={"n": 4, "temperature": 0})
    with pytest.raises(ValidationError, match=r"sampling\.n: 1 sample per prompt gives best_worst nothing to pair"):
        config(sampling={"n": 1})
    assert config(sampling={"n": 1, "temperature": 0}, pairs={"strategy": "revise", "revise": {
        "backend": {"type": "transformers"}}}).sampling.n == 1  # a rewrite pairs with the one sample
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        config(samples_per_prompt=4)
    with pytest.raises(ValidationError, match="http:// or https://"):
        config(rewards=[{"type": "judge", "backend": {"type": "http", "base_url": "localhost:8000", "model": "m"}}])
    revise = config(pairs={"strategy": "revise", "revise": {"backend": {"type": "transformers", "model": "stage:sft"}}},
                    rewards=[{"type": "judge", "backend": {"type": "transformers", "model": "stage:teacher"}}])
    assert [(r.stage, r.field) for r in revise.reads([])] == [
        ("teacher", ("rewards", 0, "backend", "model")), ("sft", ("pairs", "revise", "backend", "model"))]


def test_every_trl_loss_passes_through_and_offline_lora_reference_rules(tmp_path):
    for name in trl_loss_types():
        assert config(train={"loss_type": name}).train_args()["loss_type"] == [name]
    (tmp_path / "prefs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    offline = {"name": "dpo", "offline": {"path": str(tmp_path / "prefs.jsonl")}, "rounds": 0,
               "lora": {"r": 8}, "reference": "stage_start"}
    loaded = PreferenceStageConfig.model_validate(offline)
    assert (loaded.lora.r, loaded.reference, loaded.prompts) == (8, "stage_start", None)
    with pytest.raises(ValidationError, match="rounds: 0 trains nothing"):
        PreferenceStageConfig.model_validate({"name": "dpo", "rounds": 0})
    with pytest.raises(ValidationError, match=r"1 on-policy round\(s\) need `prompts:` and `rewards:`"):
        PreferenceStageConfig.model_validate({**offline, "rounds": 1})
    with pytest.raises(ValidationError, match="local path does not exist"):
        PreferenceStageConfig.model_validate({**offline, "offline": {"path": str(tmp_path / "missing.jsonl")}})
    with pytest.raises(ValidationError, match="reference"):
        config(reference="previous")
    with pytest.raises(ValidationError, match="allow_truncated_chosen"):
        config(pairs={"allow_truncated_chosen": True})  # removed: a cut-off sample is never paired


def test_synthesize_select_must_name_a_reward():
    base = {"name": "s", "prompts": {"path": PROMPTS}, "rewards": [{"type": "answer"}, {"type": "language"}]}
    assert SynthesizeStageConfig.model_validate({**base, "select": {"by": "answer", "min_score": 1}}).select.by == "answer"
    with pytest.raises(ValidationError, match="'judge' is neither 'total' nor a reward name"):
        SynthesizeStageConfig.model_validate({**base, "select": {"by": "judge"}})
    with pytest.raises(ValidationError, match="needs min_score"):
        SynthesizeStageConfig.model_validate({**base, "select": {"strategy": "all"}})


def test_recipe_with_both_stages_loads_and_plans(tmp_path, tiny_model_dir):
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.registry import stage_kinds
    from tempa.recipes.runner import plan_run

    # both continue an interrupted run from what they completed (checkpoints, sampled batches)
    assert stage_kinds()["preference"].resumable and stage_kinds()["synthesize"].resumable
    (tmp_path / "prompts.jsonl").write_text(Path(PROMPTS).read_text())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: t
        base_model: {tiny_model_dir}
        stages:
          - name: distill
            kind: synthesize
            prompts: {{path: prompts.jsonl, limit: 4}}
            rewards: [{{type: language}}]
          - name: align1
            kind: preference
            prompts: {{path: prompts.jsonl}}
            rewards: [{{type: format}}]
          - name: align2
            kind: preference
            from: distill
            prompts: {{path: prompts.jsonl}}
            rewards: [{{type: format}}, {{type: judge, backend: {{type: transformers, model: "stage:align1"}}}}]
            train: {{loss_type: ipo}}
    """))
    loaded = load_recipe(recipe)
    align = loaded.stage("align2")
    assert align.prompts.path == str(tmp_path / "prompts.jsonl")  # resolved against the recipe
    assert align.train["loss_type"] == ["ipo"]
    plans = plan_run(loaded, tmp_path / "run")
    assert [p.name for p in plans][:3] == ["distill", "align1", "align2"] and plans[2].action == "run"
    assert list(plans[2].components["depends_on"]) == ["align1"]  # the judge's model is another stage's
    recipe.write_text(recipe.read_text().replace("loss_type: ipo", "loss_tpye: ipo"))
    with pytest.raises(RecipeError, match="loss_tpye"):
        load_recipe(recipe)


def test_an_offline_only_stage_is_fingerprinted_by_what_it_trains_on(tmp_path, tiny_model_dir):
    # rounds: 0 trains the offline pairs alone (the shipped sea-lion-v3-70b-it tiny profile keeps the full recipe's
    # prompts, sampling and rewards): changing what it never uses must not re-train it; what it uses still does.
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import plan_run

    (tmp_path / "prompts.jsonl").write_text(Path(PROMPTS).read_text())
    (tmp_path / "prefs.jsonl").write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    (tmp_path / "align.jsonl").write_text((tmp_path / "prompts.jsonl").read_text())
    recipe = tmp_path / "r.yaml"

    def fingerprint(stage: str) -> str:
        recipe.write_text(textwrap.dedent(f"""
            name: t
            base_model: {tiny_model_dir}
            stages:
              - name: align
                kind: sft
                data: {{sources: [{{name: a, path: align.jsonl}}]}}
              - name: dpo
                kind: preference
                offline: {{path: prefs.jsonl}}
                {stage}
        """))
        return plan_run(load_recipe(recipe), tmp_path / "run")[1].fingerprint

    unused = ("rounds: 0\n                prompts: {path: prompts.jsonl}\n                "
              "sampling: {n: 4, temperature: 1.0}\n                rewards: [{type: format}]")
    base = fingerprint(unused)
    for changed in (unused.replace("temperature: 1.0", "temperature: 0.7"),
                    unused.replace("[{type: format}]", "[{type: judge, backend: {type: transformers, "
                                                       "model: 'stage:align'}}]"),
                    unused.replace("prompts.jsonl", "align.jsonl"),
                    "rounds: 0"):
        assert fingerprint(changed) == base, changed
    assert fingerprint(unused + "\n                train: {beta: 0.2}") != base
    assert fingerprint(unused.replace("rounds: 0", "rounds: 1")) != base
    # what the stage was given stays in its dump (the manifest, the resolved recipe, which loads back with a round)
    fingerprint(unused)
    dump = load_recipe(recipe).stages[1].model_dump(mode="json", by_alias=True)
    assert dump["prompts"]["path"].endswith("prompts.jsonl") and dump["sampling"]["temperature"] == 1.0


def test_a_raised_judge_limit_keeps_the_stage_and_its_scores(tmp_path, tiny_model_dir):
    """A preference stage that stopped on a judge's unparsable replies is re-run with a higher max_unparsable: the
    limit decides only whether the stage stops (a sample without a rating is unscored either way), so the stage keeps
    its fingerprint and `tempa run` resumes it, where it cleared the stage and paid the judge again."""
    from tempa.alignment.rewards import JudgeReward
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import plan_run
    from tempa.sft.stage_api import fingerprinted

    (tmp_path / "prompts.jsonl").write_text(Path(PROMPTS).read_text())
    recipe = tmp_path / "r.yaml"

    def fingerprint(judge: str) -> str:
        recipe.write_text(textwrap.dedent(f"""
            name: t
            base_model: {tiny_model_dir}
            stages:
              - name: dpo
                kind: preference
                prompts: {{path: prompts.jsonl}}
                rewards: [{{type: judge, backend: {{type: http, base_url: "http://judge.invalid/v1", model: j}}
                            {judge}}}]
        """))
        return plan_run(load_recipe(recipe), tmp_path / "run")[0].fingerprint

    assert fingerprint(", max_unparsable: 0.5") == fingerprint("")
    assert fingerprint(", scale: unit") != fingerprint("")  # what changes a score still re-runs it
    backend = {"type": "http", "base_url": "http://judge.invalid/v1", "model": "j"}
    # the score journal's signature (the stage's own resume) reads the same dump
    assert fingerprinted(JudgeReward(backend=backend, max_unparsable=0.5)) == fingerprinted(JudgeReward(backend=backend))


@pytest.mark.parametrize(("train", "shown"), [({"beta": -0.1}, "sigmoid, got -0.1"), ({"beta": 0}, "sigmoid, got 0"),
                                              ({"beta": 0.0, "loss_type": ["apo", "sft"]}, "apo_zero, got 0")])
def test_a_beta_of_zero_or_below_is_refused_naming_the_train_key(tmp_path, tiny_model_dir, train, shown):
    """trl's DPOConfig takes any beta: a negative one trained toward the rejected side, 0 gave no gradient."""
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.loader import load_recipe

    (tmp_path / "prompts.jsonl").write_text(Path(PROMPTS).read_text())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: t
        base_model: {tiny_model_dir}
        stages:
          - name: align
            kind: preference
            prompts: {{path: prompts.jsonl}}
            rewards: [{{type: format}}]
            train: {json.dumps(train)}
        """))
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert str(info.value) == (f"{recipe}:8: stages[0].train.beta (stage 'align'): must be > 0 for loss_type {shown} "
                               "(below 0 it trains toward the rejected answers, at 0 it gives no gradient)")
    assert config(train={"beta": 0.0, "loss_type": "sft"}).train_args()["beta"] == 0.0  # sft alone never reads it
    assert config(train={"beta": 0.05, "loss_type": "apo_zero"}).train_args()["beta"] == 0.05
