"""The merge stage: mergekit arithmetic checked by hand, selection, refusals, tokenizer, re-scoring."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from stage_helpers import done, make_context
from tempa.merge import MergeStageConfig, run_merge
from tempa.merge.leaderboard import Leaderboard, LeaderboardRow, read_leaderboard
from tempa.merge.mergekit_run import MergeInput, check_compatible
from tempa.merge.selection import select_top_k
from tempa.sft.stage_api import StageError

# mergekit imports numpy.core, which numpy 2 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")


def make_ctx(run_dir: Path, name: str, *, tokenizer_dir: Path, base: Path, upstream=None):
    return make_context(run_dir, name, start_model=base, tokenizer_dir=tokenizer_dir, upstream=upstream)


def perturbed_copy(src: Path, dst: Path, seed: int, scale: float) -> Path:
    """A "checkpoint": the model's files with seeded Gaussian noise added to every weight."""
    shutil.copytree(src, dst)
    weights = load_file(src / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    noisy = {
        k: v + scale * torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in weights.items()
    }
    save_file(noisy, dst / "model.safetensors", metadata={"format": "pt"})
    return dst



@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "a": perturbed_copy(tiny_model_dir, root / "a", seed=1, scale=0.05),
        "b": perturbed_copy(tiny_model_dir, root / "b", seed=2, scale=0.05),
        "c": perturbed_copy(tiny_model_dir, root / "c", seed=3, scale=0.05),
    }


def _merge(tmp_path, tokenizer_dir, base, name="merge", **fields):
    config = MergeStageConfig.model_validate({"name": name, "kind": "merge", "reevaluate": False, **fields})
    ctx = make_ctx(tmp_path, name, tokenizer_dir=tokenizer_dir, base=base)
    result = run_merge(config, ctx)
    return result, load_file(Path(result.model) / "model.safetensors")


def test_linear_merge_equals_normalised_weighted_sum(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir):
    a, b = (
        load_file(checkpoints["a"] / "model.safetensors"),
        load_file(checkpoints["b"] / "model.safetensors"),
    )
    result, merged = _merge(
        tmp_path,
        tokenizer_dir,
        tiny_model_dir,
        method="linear",
        models=[str(checkpoints["a"]), str(checkpoints["b"])],
        weights=[3.0, 1.0],
        dtype="float32",
    )
    assert set(merged) == set(a)
    for key in a:
        expected = (3.0 * a[key] + 1.0 * b[key]) / 4.0  # weights are normalised to sum to one
        torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-6)
    # The config mergekit ran is kept, with absolute paths.
    document = yaml.safe_load((tmp_path / "merge" / "mergekit.yaml").read_text())
    assert [m["model"] for m in document["models"]] == [str(checkpoints["a"]), str(checkpoints["b"])]
    assert [m["parameters"]["weight"] for m in document["models"]] == [3.0, 1.0]
    summary = json.loads((tmp_path / "merge" / "merge_summary.json").read_text())
    assert summary["method"] == "linear" and [m["parameters"]["weight"] for m in summary["models"]] == [3.0, 1.0]
    assert result.metrics["models_merged"] == 2


def slerp_by_hand(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of whole tensors; linear when (nearly) collinear."""
    x, y = v0.double().flatten(), v1.double().flatten()
    cos = float(torch.dot(x / x.norm(), y / y.norm()).clamp(-1.0, 1.0))
    if abs(cos) > 0.9995:
        return ((1 - t) * v0.double() + t * v1.double()).float()
    theta = math.acos(cos)
    return (
        (math.sin((1 - t) * theta) / math.sin(theta)) * v0.double()
        + (math.sin(t * theta) / math.sin(theta)) * v1.double()
    ).float()


def test_slerp_merge_equals_formula(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir):
    a, b = (
        load_file(checkpoints["a"] / "model.safetensors"),
        load_file(checkpoints["b"] / "model.safetensors"),
    )
    _, merged = _merge(
        tmp_path,
        tokenizer_dir,
        tiny_model_dir,
        method="slerp",
        models=[str(checkpoints["a"]), str(checkpoints["b"])],
        parameters={"t": 0.3},
        dtype="float32",
    )
    curved = 0
    for key in a:
        expected = slerp_by_hand(0.3, a[key], b[key])
        torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-6)
        linear = 0.7 * a[key] + 0.3 * b[key]
        curved += int(not torch.allclose(merged[key], linear, atol=1e-5))
    assert curved >= 10, "slerp should differ from linear interpolation on the weight matrices"


def test_slerp_base_model_picks_the_t0_end(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir):
    a, b = (
        load_file(checkpoints["a"] / "model.safetensors"),
        load_file(checkpoints["b"] / "model.safetensors"),
    )
    _, merged = _merge(
        tmp_path,
        tokenizer_dir,
        tiny_model_dir,
        method="slerp",
        models=[str(checkpoints["a"]), str(checkpoints["b"])],
        base_model=str(checkpoints["b"]),
        parameters={"t": 0.0},
        dtype="float32",
    )
    key = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(merged[key], b[key])
    assert not torch.allclose(merged[key], a[key])


@pytest.mark.parametrize("method", ["model_stock", "ties"])
def test_base_model_methods_produce_loadable_models(
    method, tmp_path, tokenizer_dir, checkpoints, tiny_model_dir
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"density": 0.5} if method == "ties" else {}
    result, merged = _merge(
        tmp_path,
        tokenizer_dir,
        tiny_model_dir,
        method=method,
        models=[str(checkpoints["a"]), str(checkpoints["b"]), str(checkpoints["c"])],
        **extra,
    )
    document = yaml.safe_load((tmp_path / "merge" / "mergekit.yaml").read_text())
    assert document["base_model"] == str(tiny_model_dir)  # the recipe's base model by default
    model = AutoModelForCausalLM.from_pretrained(result.model)
    tokenizer = AutoTokenizer.from_pretrained(result.model)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hai"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    logits = model(ids).logits
    assert torch.isfinite(logits).all()
    base = load_file(tiny_model_dir / "model.safetensors")
    a = load_file(checkpoints["a"] / "model.safetensors")
    key = "model.layers.1.self_attn.q_proj.weight"
    assert not torch.allclose(merged[key], base[key]) and not torch.allclose(merged[key], a[key])
    # The tokenizer is the recipe's, with its baked thinking template, not a copy of an input's.
    assert "thinking_mode" in tokenizer.chat_template
    assert not (Path(result.model) / "mergekit_config.yml").exists()


def test_task_arithmetic_keeps_each_models_weight_when_the_base_is_one_of_them(
    tmp_path, tokenizer_dir, checkpoints, tiny_model_dir
):
    """The base among the listed (or top-k) models leaves the merge; the others keep their own weight and density."""
    a, b, c = (load_file(checkpoints[n] / "model.safetensors") for n in "abc")
    result, merged = _merge(
        tmp_path,
        tokenizer_dir,
        tiny_model_dir,
        method="task_arithmetic",
        models=[str(checkpoints["a"]), str(checkpoints["b"]), str(checkpoints["c"])],
        base_model=str(checkpoints["a"]),
        weights=[0.5, 2.0, -1.0],
        density=[1.0, 1.0, 1.0],
        parameters={"lambda": 0.5},
        dtype="float32",
    )
    for key in a:
        # task arithmetic (normalize off): base + lambda * sum of weight * (model - base)
        expected = a[key] + 0.5 * (2.0 * (b[key] - a[key]) - 1.0 * (c[key] - a[key]))
        torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-6)
    assert [(m.name, m.parameters["weight"]) for m in result.summary.models] == [("b", 2.0), ("c", -1.0)]


def _board() -> Leaderboard:
    rows = [
        LeaderboardRow(candidate="sft/checkpoint-10", path="/m/10", stage="sft", step=10,
                       metrics={"acc/accuracy": 0.50, "heldout/loss": 2.0}),
        LeaderboardRow(candidate="sft/checkpoint-20", path="/m/20", stage="sft", step=20,
                       metrics={"acc/accuracy": 0.70, "heldout/loss": 1.5}),
        LeaderboardRow(candidate="sft/checkpoint-30", path="/m/30", stage="sft", step=30,
                       metrics={"acc/accuracy": 0.60, "heldout/loss": 1.2}),
        LeaderboardRow(candidate="sft", path="/m/final", stage="sft",
                       metrics={"acc/accuracy": 0.70, "heldout/loss": float("nan")}),
        LeaderboardRow(candidate="old-merge", path="/m/merge", stage="merge", merged=True,
                       metrics={"acc/accuracy": 0.99}),
    ]
    return Leaderboard(rows=rows)


def test_selection_picks_top_k_in_the_metric_direction():
    board = _board()
    # Higher accuracy is better; the tie at 0.70 keeps leaderboard order; merged rows are not candidates.
    assert [r.candidate for r in select_top_k(board, "acc/accuracy", 2)] == ["sft/checkpoint-20", "sft"]
    assert [r.candidate for r in select_top_k(board, "acc/accuracy", 3)] == [
        "sft/checkpoint-20",
        "sft",
        "sft/checkpoint-30",
    ]
    # Loss is lower-is-better; NaN is never selected.
    assert [r.candidate for r in select_top_k(board, "heldout/loss", 2)] == [
        "sft/checkpoint-30",
        "sft/checkpoint-20",
    ]
    assert [r.candidate for r in select_top_k(board, "acc/accuracy", 1, higher_is_better=False)] == [
        "sft/checkpoint-10"
    ]
    with pytest.raises(StageError, match="only 3 candidate"):
        select_top_k(board, "heldout/loss", 4)
    with pytest.raises(StageError, match="not on the leaderboard"):
        select_top_k(board, "acc/f1", 1)


def test_a_tie_at_the_top_k_cut_keeps_the_order_the_leaderboard_shows():
    """Every candidate at math/accuracy 0 (all cut off while thinking): the tie was broken by scoring order, which
    picked the two worst by the board's rank_by, listed last in leaderboard.md, while the warning said "by
    leaderboard order"."""
    rows = [LeaderboardRow(candidate=name, path=f"/m/{name}", metrics={"math/accuracy": 0.0, "heldout/loss": loss})
            for name, loss in (("a/checkpoint-2", 3.0), ("a/checkpoint-4", 2.5), ("b", 1.0), ("c", 2.0))]
    board = Leaderboard(rows=rows, rank_by="heldout/loss")
    assert [r.candidate for r in board.ranked()] == ["b", "c", "a/checkpoint-4", "a/checkpoint-2"]
    assert [r.candidate for r in select_top_k(board, "math/accuracy", 2)] == ["b", "c"]


def test_a_metrics_direction_comes_from_its_name_not_its_qualifier():
    board = Leaderboard(rows=[
        LeaderboardRow(candidate="x", path="/m/x", metrics={"mt/win_rate:error_analysis": 0.2,
                                                            "lm_eval/wikitext/bits_per_byte": 0.9}),
        LeaderboardRow(candidate="y", path="/m/y", metrics={"mt/win_rate:error_analysis": 0.8,
                                                            "lm_eval/wikitext/bits_per_byte": 0.7}),
    ])
    # A category named 'error_analysis' made its win rate lower-is-better: the worst candidate was picked.
    assert [r.candidate for r in select_top_k(board, "mt/win_rate:error_analysis", 1)] == ["y"]
    # lm-eval's bits per byte goes down as the model gets better.
    assert [r.candidate for r in select_top_k(board, "lm_eval/wikitext/bits_per_byte", 1)] == ["y"]
    assert Leaderboard(rows=board.rows, rank_by="lm_eval/wikitext/bits_per_byte").ranked()[0].candidate == "y"
    assert board.to_json()["metrics"] == {"mt/win_rate:error_analysis": "max", "lm_eval/wikitext/bits_per_byte": "min"}


def test_a_board_whose_rank_metric_no_candidate_has_names_no_best():
    """A win-rate judge that never gave a verdict leaves every win rate NaN: the first row was still called best."""
    nan = float("nan")
    rows = [LeaderboardRow(candidate=c, path=f"/m/{c}", metrics={"mt/win_rate": v}) for c, v in (("x", nan), ("y", nan))]
    assert Leaderboard(rows=rows, rank_by="mt/win_rate").best() is None
    rows[1].metrics["mt/win_rate"] = 0.4
    assert Leaderboard(rows=rows, rank_by="mt/win_rate").best().candidate == "y"
    assert Leaderboard(rows=rows).best() is None  # nothing to rank by


def _variant(tiny_model_dir: Path, dst: Path, **config_changes) -> Path:
    """A model folder whose config differs; weights rebuilt to match it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    for key, value in config_changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(dst)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, dst / name)
    return dst


def test_vocabulary_mismatch_is_refused(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir):
    from transformers import AutoConfig

    bigger = _variant(
        tiny_model_dir,
        tmp_path / "bigger",
        vocab_size=AutoConfig.from_pretrained(tiny_model_dir).vocab_size + 16,
    )
    config = MergeStageConfig.model_validate(
        {"name": "merge", "kind": "merge", "method": "linear", "models": [str(checkpoints["a"]), str(bigger)]}
    )
    with pytest.raises(StageError) as error:
        run_merge(config, make_ctx(tmp_path, "merge", tokenizer_dir=tokenizer_dir, base=tiny_model_dir))
    message = str(error.value)
    assert "\n" not in message
    assert "vocabularies differ" in message and "vocab_size" in message
    assert str(checkpoints["a"]) in message and str(bigger) in message
    assert not (tmp_path / "merge" / "final").exists()


def test_same_size_but_different_tokens_is_refused(tmp_path, checkpoints):
    shuffled = tmp_path / "shuffled"
    shutil.copytree(checkpoints["a"], shuffled)
    data = json.loads((shuffled / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[300:302]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (shuffled / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(StageError, match=r"vocabularies differ: .*different ids"):
        check_compatible([MergeInput("a", checkpoints["a"]), MergeInput("shuffled", shuffled)])


def test_inputs_whose_tokenizer_the_recipes_gives_other_ids_are_refused(tmp_path, tokenizer_dir, checkpoints,
                                                                        tiny_model_dir):
    # Two folders with the same tokenizer agreed with each other, and the merge went through with the recipe's
    # tokenizer attached, whose ids name other tokens than the ones the weights were trained on.
    def swapped(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(checkpoints[name], folder)
        data = json.loads((folder / "tokenizer.json").read_text())
        vocab = data["model"]["vocab"]
        first, second = sorted(vocab, key=vocab.get)[300:302]
        vocab[first], vocab[second] = vocab[second], vocab[first]
        (folder / "tokenizer.json").write_text(json.dumps(data))
        return folder

    a, b = swapped("a"), swapped("b")
    config = MergeStageConfig.model_validate({"name": "merge", "kind": "merge", "method": "linear",
                                              "models": [str(a), str(b)], "reevaluate": False})
    with pytest.raises(StageError) as error:
        run_merge(config, make_ctx(tmp_path, "merge", tokenizer_dir=tokenizer_dir, base=tiny_model_dir))
    message = str(error.value)
    assert message.startswith(f"merge stage 'merge': cannot use tokenizer {tokenizer_dir} with a ({a}): their "
                              "vocabularies disagree (id 300: "), message
    assert message.endswith("4 in all); use the tokenizer the model was trained with")  # 2 ids, 2 tokens
    assert "\n" not in message
    assert not (tmp_path / "merge" / "final").exists()


def test_a_token_added_past_the_base_vocabulary_does_not_make_inputs_incompatible(tmp_path, checkpoints):
    # A pad token the bake adds (the base had none to reuse) goes to an id past the base's tokens, into a spare
    # embedding row: the checkpoints carry it, the recipe's base does not. Every token both have keeps its id, so
    # the merge onto that base is sound; it was refused as "vocabularies differ".
    from transformers import AutoTokenizer

    padded = tmp_path / "padded"
    shutil.copytree(checkpoints["a"], padded)
    tokenizer = AutoTokenizer.from_pretrained(padded)
    tokenizer.add_special_tokens({"pad_token": "<|added_pad|>"})
    tokenizer.save_pretrained(padded)
    check_compatible([MergeInput("padded", padded), MergeInput("b", checkpoints["b"])])
    # The same token at an id the other gives another token is refused.
    data = json.loads((padded / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["<|added_pad|>"] = vocab.pop(next(iter(sorted(vocab, key=vocab.get)[300:301])))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|added_pad|>"]
    (padded / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(StageError, match=r"vocabularies differ: .*only in the first \(e\.g\. '<\|added_pad\|>'\)"):
        check_compatible([MergeInput("padded", padded), MergeInput("b", checkpoints["b"])])


def test_architecture_mismatch_is_refused(tmp_path, checkpoints, tiny_model_dir):
    deeper = _variant(tiny_model_dir, tmp_path / "deeper", num_hidden_layers=3)
    with pytest.raises(
        StageError, match=r"cannot merge a .* with deeper .*architectures differ: num_hidden_layers 2 vs 3"
    ):
        check_compatible([MergeInput("a", checkpoints["a"]), MergeInput("deeper", deeper)])


def test_config_validation(tmp_path, checkpoints):
    def validate(**fields):
        return MergeStageConfig.model_validate({"name": "m", "kind": "merge", **fields},
                                               context={"base_dir": str(tmp_path)})

    with pytest.raises(ValidationError, match="exactly 2"):
        validate(method="slerp", models=["x", "y", "z"])
    with pytest.raises(ValidationError, match="exactly one of"):
        validate(method="linear")
    with pytest.raises(ValidationError, match="needs `evaluate_stage`"):
        validate(select={"metric": "a/b", "top_k": 2})
    with pytest.raises(ValidationError, match="weights: 3 values for 2 models"):
        validate(models=["x", "y"], weights=[1, 2, 3])
    with pytest.raises(ValidationError, match=r"density: method linear takes no per-model density \(its parameters: "
                                              r"weight, normalize\)"):
        validate(method="linear", models=["x", "y"], density=0.5)
    with pytest.raises(ValidationError, match=r"unknown merge method 'tie' \(did you mean 'ties'\?\); mergekit has: "):
        validate(method="tie", models=["x", "y"])
    with pytest.raises(ValidationError, match="Extra inputs"):
        validate(models=["x", "y"], wieghts=[1, 1])
    # Relative folders are resolved against the recipe's folder: mergekit reads relative paths as hub ids.
    config = MergeStageConfig.model_validate(
        {"name": "m", "kind": "merge", "method": "ties", "models": ["a", "b"], "base_model": "./c"},
        context={"base_dir": str(checkpoints["a"].parent)},
    )
    assert config.models == [str(checkpoints["a"]), str(checkpoints["b"])]
    assert config.base_model == str(checkpoints["c"])
    # Stages it reads, for the runner's fingerprints: the evaluate stage and stage-named models.
    named = validate(
        method="ties", models=["sft/checkpoint-20", "sft2"], base_model="sft", evaluate_stage="eval"
    )
    assert [(r.stage, r.artifact.value) for r in named.reads(["sft", "sft2", "eval"])] == [
        ("eval", "leaderboard"), ("sft", "model"), ("sft2", "model"), ("sft", "model")]


def test_weights_that_cancel_out_are_refused_where_the_method_divides_by_their_sum():
    """mergekit's linear and multislerp divide by the weights' sum unguarded: a zero sum writes a NaN model."""

    def validate(**fields):
        return MergeStageConfig.model_validate({"name": "m", "kind": "merge", "models": ["x", "y", "z"], **fields})

    with pytest.raises(ValidationError, match=r"weights: \[1\.0, -0\.5, -0\.5\] sum to 0, and linear divides by "
                                              r"their sum \(parameters\.normalize is on\)"):
        validate(method="linear", weights=[1.0, -0.5, -0.5])
    with pytest.raises(ValidationError, match=r"weights: .* sum to 0, and multislerp divides by their sum "
                                              r"\(parameters\.normalize_weights is on\)"):
        validate(method="multislerp", weights=[2, -1, -1])
    # Not normalised, or a method that guards the division (task arithmetic subtracts a model this way): allowed.
    assert validate(method="linear", weights=[1.0, -0.5, -0.5], parameters={"normalize": False}).weights
    assert validate(method="task_arithmetic", weights=[1.0, -0.5, -0.5]).weights


def test_multislerp_sums_the_weights_of_the_models_it_merges_not_the_base_among_them(
    tmp_path, tokenizer_dir, checkpoints, tiny_model_dir
):
    """With its base among the models, multislerp divides by the other models' weights only: the base's entry is
    no part of the sum that may not be zero."""
    a, b, c = (str(checkpoints[n]) for n in "abc")
    refused = r"weights: \[1\.0, -1\.0\] sum to 0, and multislerp divides by their sum"
    with pytest.raises(ValidationError, match=refused):  # at load, when base_model is written as in `models`
        _merge(tmp_path, tokenizer_dir, tiny_model_dir, method="multislerp", models=[a, b, c], base_model=c,
               weights=[1.0, -1.0, 5.0], dtype="float32")
    link = tmp_path / "base-link"
    link.symlink_to(c)
    with pytest.raises(StageError, match=refused):  # by folder, when the stage starts
        _merge(tmp_path, tokenizer_dir, tiny_model_dir, method="multislerp", models=[a, b, str(link)],
               base_model=c, weights=[1.0, -1.0, 5.0], dtype="float32")
    # The base's entry is unused: these weights merge a and b as 1 : 3 around c.
    result, merged = _merge(tmp_path, tokenizer_dir, tiny_model_dir, method="multislerp", models=[a, b, c],
                            base_model=c, weights=[1.0, 3.0, -4.0], dtype="float32")
    assert [(m.name, m.parameters["weight"]) for m in result.summary.models] == [("a", 1.0), ("b", 3.0)]
    assert all(torch.isfinite(tensor).all() for tensor in merged.values())


def test_every_mergekit_method_and_its_parameters_are_checked_at_load():
    """Methods, parameters and input counts come from mergekit's registry and each method's spec."""
    from mergekit.merge_methods import registered_methods

    def validate(**fields):
        return MergeStageConfig.model_validate({"name": "m", "kind": "merge", **fields})

    names = {method.spec.name for method in registered_methods()}
    assert len(names) >= 20 and {"karcher", "multislerp", "nuslerp", "sce", "passthrough"} <= names
    # Methods tempa's own table never had load, with their parameters checked against their spec.
    assert validate(method="karcher", models=["x", "y"], parameters={"max_iter": 20}).parameters == {"max_iter": 20}
    assert validate(method="sce", models=["x", "y"], parameters={"select_topk": 0.5})
    assert validate(method="passthrough", models=["x"], parameters={"scale": 0.5})
    # Gradients over layers and per-tensor filters are mergekit's own setting shapes.
    assert validate(method="slerp", models=["x", "y"], parameters={"t": [0, 0.5, 1]})
    assert validate(method="ties", models=["x"], parameters={"lambda": [{"filter": "self_attn", "value": 0.9},
                                                                     {"value": 1.0}]})
    with pytest.raises(ValidationError, match=r"parameters\.lamda: not a parameter of mergekit's ties \(did you mean "
                                              r"'lambda'\?\); it takes: int8_mask, normalize, rescale, lambda, weight, density"):
        validate(method="ties", models=["x", "y"], parameters={"lamda": 0.5})
    with pytest.raises(ValidationError, match=r"parameters\.t: 'half' is not a valid slerp t: Input should be a valid "
                                              r"number"):
        validate(method="slerp", models=["x", "y"], parameters={"t": "half"})
    with pytest.raises(ValidationError, match=r"parameters\.weight: set the stage's per-model `weights` instead"):
        validate(method="linear", models=["x", "y"], parameters={"weight": 0.5})
    with pytest.raises(ValidationError, match=r"method nearswap needs parameters\.t \(mergekit has no default\)"):
        validate(method="nearswap", models=["x", "y"])
    with pytest.raises(ValidationError, match=r"weights: method karcher takes no per-model weight"):
        validate(method="karcher", models=["x", "y"], weights=[1, 1])
    with pytest.raises(ValidationError, match=r"method passthrough: requires exactly 1 inputs; got 2 \(2 model\(s\)\)"):
        validate(method="passthrough", models=["x", "y"])
    with pytest.raises(ValidationError, match=r"method model_stock: requires at least 3 inputs; got 2 \(1 model\(s\) "
                                              r"plus the base model\)"):
        validate(method="model_stock", models=["x"])
    with pytest.raises(ValidationError, match="method karcher uses no base model"):
        validate(method="karcher", models=["x", "y"], base_model="z")
    # The base model's role is read from the method's input contract.
    roles = {name: validate(method=name, models=["x", "y"], **({"parameters": {"t": 0.5}} if name == "nearswap" else {}))
             .base_role(2) for name in ("linear", "slerp", "nearswap", "ties", "multislerp")}
    assert roles == {"linear": "none", "slerp": "first_input", "nearswap": "first_input", "ties": "separate",
                     "multislerp": "none"}


def test_mergekit_options_are_mergekits_own():
    from tempa.merge.mergekit_run import mergekit_options

    def validate(**options):
        return MergeStageConfig.model_validate({"name": "m", "kind": "merge", "models": ["x", "y"], "options": options})

    options = mergekit_options(validate(num_threads=2, async_write=True, out_shard_size="500M"), seed=7,
                               trust_remote_code=False)
    assert (options.device, options.lazy_unpickle, options.num_threads, options.async_write) == ("cpu", False, 2, True)
    assert (options.out_shard_size, options.random_seed, options.copy_tokenizer) == (500_000_000, 7, False)
    assert mergekit_options(validate(cuda=True), seed=0, trust_remote_code=False).device == "cuda"
    with pytest.raises(ValidationError, match=r"options\.num_thread: not a mergekit MergeOptions field \(did you mean "
                                              r"'num_threads'\?\)"):
        validate(num_thread=2)
    with pytest.raises(ValidationError, match=r"options\.copy_tokenizer: set by tempa"):
        validate(copy_tokenizer=True)
    with pytest.raises(ValidationError, match=r"options\.out_shard_size: '5 GB' is not a size such as 5B"):
        validate(out_shard_size="5 GB")
    with pytest.raises(ValidationError, match=r"options\.write_threads: Input should be a valid integer"):
        validate(write_threads="many")


def test_mergekit_configuration_is_built_as_mergekits_objects(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir):
    """A folder named like a LoRA reference ("a+b") or a revision ("a@b") is still just a folder."""
    from mergekit.config import MergeConfiguration

    from tempa.merge.mergekit_run import build_mergekit_config

    odd = shutil.copytree(checkpoints["b"], tmp_path / "b+lora@rev")
    _, merged = _merge(tmp_path, tokenizer_dir, tiny_model_dir, method="passthrough", models=[str(odd)],
                       parameters={"scale": 0.5}, dtype="float32")
    b = load_file(checkpoints["b"] / "model.safetensors")
    for key in b:
        torch.testing.assert_close(merged[key], 0.5 * b[key])  # passthrough scales its one input
    config = MergeStageConfig.model_validate(
        {"name": "m", "kind": "merge", "method": "ties", "models": [str(checkpoints["a"]), str(checkpoints["c"])],
         "density": [0.5, 0.7], "weights": [2, 1], "parameters": {"lambda": 0.9}})
    built = build_mergekit_config(config, [MergeInput("a", checkpoints["a"]), MergeInput("c", checkpoints["c"])],
                                  MergeInput("base", tiny_model_dir))
    assert isinstance(built, MergeConfiguration)
    assert MergeConfiguration.model_validate(yaml.safe_load(built.to_yaml())) == built
    assert [m.parameters for m in built.models] == [{"weight": 2, "density": 0.5}, {"weight": 1, "density": 0.7}]
    assert str(built.base_model) == str(tiny_model_dir) and built.parameters == {"lambda": 0.9}


class ScriptedBackend:
    """Answers '<think>…</think> 4' for every model whose folder name is in ``right``, else '5'."""

    def __init__(self, model_dir: Path, right: set[str]):
        self.model_dir = Path(model_dir)
        self.right = right

    def generate(self, prompts, params, *, thinking_modes=None):
        answer = "4" if self.model_dir.name in self.right else "5"
        return [["ok\n</think>\n\nJawabannya " + answer] for _ in prompts]

    def close(self):
        pass


def test_select_from_leaderboard_then_rescore(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir):
    from tempa.merge import EvaluateStageConfig

    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"2+2? ({i})", "answer": 4}) + "\n" for i in range(3)))
    evaluate = EvaluateStageConfig.model_validate(
        {
            "name": "eval",
            "kind": "evaluate",
            "models": [str(p) for p in checkpoints.values()],
            "suites": [{"type": "accuracy", "name": "math", "data": str(data)}],
            "rank_by": "math/accuracy",
        }
    )
    # The evaluate stage scores the three: a and c answer right, b wrong.
    from tempa.merge.evaluate_stage import run_evaluate

    right = {"a", "c", "final"}  # "final" = the merged model's folder name
    scored = run_evaluate(
        evaluate,
        make_ctx(tmp_path, "eval", tokenizer_dir=tokenizer_dir, base=tiny_model_dir),
        backend_factory=lambda path, _cfg, _ctx: ScriptedBackend(path, {"a", "c"}),
    )
    config = MergeStageConfig.model_validate(
        {
            "name": "merge",
            "kind": "merge",
            "method": "linear",
            "evaluate_stage": "eval",
            "select": {"metric": "math/accuracy", "top_k": 2},
        }
    )
    ctx = make_ctx(tmp_path, "merge", tokenizer_dir=tokenizer_dir, base=tiny_model_dir,
                   upstream=[done("eval", scored, kind="evaluate", config=evaluate)])
    result = run_merge(config, ctx, backend_factory=lambda path, _cfg, _ctx: ScriptedBackend(path, right))
    document = yaml.safe_load((tmp_path / "merge" / "mergekit.yaml").read_text())
    assert sorted(m["model"] for m in document["models"]) == sorted(
        [str(checkpoints["a"]), str(checkpoints["c"])]
    )
    board = read_leaderboard(tmp_path / "merge")
    merged_rows = [r for r in board.rows if r.merged]
    assert [r.candidate for r in merged_rows] == ["merge"]
    assert merged_rows[0].metrics["math/accuracy"] == 1.0
    assert {r.candidate for r in board.rows} == {"a", "b", "c", "merge"}
    assert "merge (merged)" in (tmp_path / "merge" / "leaderboard.md").read_text()
    assert result.metrics["merged/math/accuracy"] == 1.0
    assert result.metrics["merge_helped"] is False  # equal to the best input is not an improvement
    (note,) = result.notes  # shown in the run's closing summary
    assert note.startswith("merge: the merged model did not improve on its best input (math/accuracy 1 merged, "
                           "1 for ") and note.endswith("see merge/leaderboard.md")
    summary = json.loads((tmp_path / "merge" / "merge_summary.json").read_text())
    assert summary["selection"]["values"] == {"a": 1.0, "c": 1.0}
    assert result.summary.selection is not None and result.summary.selection.values == {"a": 1.0, "c": 1.0}
    assert result.leaderboard is not None and {r.candidate for r in result.leaderboard.rows} == {"a", "b", "c", "merge"}


def test_the_merge_is_judged_in_the_direction_its_inputs_were_selected_by(tmp_path, tokenizer_dir, checkpoints,
                                                                         tiny_model_dir):
    """select.higher_is_better: false picks the lowest values; the re-scored merge is compared with the lowest of its
    inputs too, not with the highest (the name's direction), which named the wrong input and value in the note."""
    from tempa.merge import EvaluateStageConfig
    from tempa.merge.evaluate_stage import run_evaluate

    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"2+2? ({i})", "answer": 4}) + "\n" for i in range(2)))
    evaluate = EvaluateStageConfig.model_validate(
        {"name": "eval", "kind": "evaluate", "models": [str(p) for p in checkpoints.values()],
         "suites": [{"type": "accuracy", "name": "math", "data": str(data)}]}
    )
    scored = run_evaluate(evaluate, make_ctx(tmp_path, "eval", tokenizer_dir=tokenizer_dir, base=tiny_model_dir),
                          backend_factory=lambda path, _cfg, _ctx: ScriptedBackend(path, {"a", "c"}))
    config = MergeStageConfig.model_validate(
        {"name": "merge", "kind": "merge", "method": "linear", "evaluate_stage": "eval",
         "select": {"metric": "math/accuracy", "top_k": 2, "higher_is_better": False}}
    )
    ctx = make_ctx(tmp_path, "merge", tokenizer_dir=tokenizer_dir, base=tiny_model_dir,
                   upstream=[done("eval", scored, kind="evaluate", config=evaluate)])
    # a = 1.0, b = 0.0, c = 1.0: lowest first, b then a (a before c on the board); the merge answers wrong: 0.0.
    result = run_merge(config, ctx, backend_factory=lambda path, _cfg, _ctx: ScriptedBackend(path, {"a", "c"}))
    assert [m.name for m in result.summary.models] == ["b", "a"]
    assert result.metrics["merged/math/accuracy"] == 0.0
    assert result.metrics["best_input"] == 0.0  # b's, the best in the selected direction (was a's 1.0)
    assert result.metrics["gain_over_best_input"] == 0.0 and result.metrics["merge_helped"] is False
    (note,) = result.notes
    assert "(math/accuracy 0 merged, 0 for b)" in note
    # The board after the merge ranks in the same direction, and says so when read back (was: highest first).
    from tempa.merge.leaderboard import Leaderboard

    written = json.loads(Path(result.files["leaderboard"]).read_text())
    assert written["metrics"]["math/accuracy"] == "min"
    board = Leaderboard.from_json(written)
    assert [row.metrics["math/accuracy"] for row in board.ranked()] == [0.0, 0.0, 1.0, 1.0]
    assert "math/accuracy ↓" in board.to_markdown()


def test_a_task_vector_merges_base_scored_beside_its_candidates_is_not_one_of_the_top_k(
        tmp_path, tokenizer_dir, checkpoints, tiny_model_dir):
    """The SEA-LION 70B recipe scores its base (merge-sft) beside the aligned checkpoints and merges "the best three"
    onto it with ties: when the base ranked among the three, it left the merge (its task vector is zero) and two
    models were merged. The top_k are picked from the candidates besides the base."""
    # a = 1.0, c = 1.0 (the base), b = 0.0
    result = _merge_onto_scored_base(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir, {"a", "c"}, None)
    assert [m.name for m in result.summary.models] == ["a", "b"]
    document = yaml.safe_load((tmp_path / "merge" / "mergekit.yaml").read_text())
    assert document["base_model"] == str(checkpoints["c"])
    assert sorted(m["model"] for m in document["models"]) == sorted([str(checkpoints["a"]), str(checkpoints["b"])])


def test_a_chosen_checkpoint_deleted_since_it_was_scored_is_named(tmp_path, tokenizer_dir, checkpoints,
                                                                   tiny_model_dir):
    """A checkpoint removed after the evaluate stage scored it (disk cleaned up, rotated) fails naming it and what to do."""
    from tempa.merge import EvaluateStageConfig
    from tempa.merge.leaderboard import EvaluateResult

    gone = shutil.copytree(checkpoints["a"], tmp_path / "sft" / "checkpoint-20")
    data = tmp_path / "math.jsonl"
    data.write_text(json.dumps({"prompt": "2+2?", "answer": "4"}) + "\n")
    evaluate = EvaluateStageConfig.model_validate(
        {"name": "eval", "kind": "evaluate", "models": [str(checkpoints["b"])],
         "suites": [{"type": "accuracy", "name": "math", "data": str(data)}]})
    board = Leaderboard(rank_by="math/accuracy", rows=[
        LeaderboardRow(candidate="sft/checkpoint-20", path=gone, stage="sft", step=20, metrics={"math/accuracy": 0.9}),
        LeaderboardRow(candidate="b", path=checkpoints["b"], metrics={"math/accuracy": 0.8})])
    scored = EvaluateResult(model=tiny_model_dir, leaderboard=board)
    shutil.rmtree(gone)
    config = MergeStageConfig.model_validate(
        {"name": "merge", "kind": "merge", "evaluate_stage": "eval", "reevaluate": False,
         "select": {"metric": "math/accuracy", "top_k": 2}})
    ctx = make_ctx(tmp_path, "merge", tokenizer_dir=tokenizer_dir, base=tiny_model_dir,
                   upstream=[done("eval", scored, kind="evaluate", config=evaluate)])
    with pytest.raises(StageError) as err:
        run_merge(config, ctx)
    assert str(err.value) == (
        f"merge stage 'merge': sft/checkpoint-20, chosen from eval's leaderboard, is no longer a model folder at "
        f"{gone} (removed since eval scored it?); restore it, or re-run from sft (tempa run --from sft)"
    )


def shard(src: Path, dst: Path) -> Path:
    """``src`` re-saved as two safetensors shards with an index, as large checkpoints are."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    weights = load_file(src / "model.safetensors")
    names = sorted(weights)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: weights[k] for k in keys}, dst / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: file for file, keys in halves.items() for k in keys}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    return dst


def test_merge_reads_inputs_without_keeping_them_mapped(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir):
    """Inputs are read with pread (sharded ones too) and released: no file stays mapped, no loader cached."""
    from mergekit.io.tasks import LoaderCache
    from safetensors.torch import load

    sharded = shard(checkpoints["b"], tmp_path / "b-sharded")
    # safetensors' load_file maps the file itself; read the bytes so only the merge could map it.
    a, b = (load((checkpoints[k] / "model.safetensors").read_bytes()) for k in "ab")
    _, merged = _merge(tmp_path, tokenizer_dir, tiny_model_dir, method="linear",
                       models=[str(checkpoints["a"]), str(sharded)], dtype="float32")
    for key in a:
        torch.testing.assert_close(merged[key], (a[key] + b[key]) / 2, rtol=1e-5, atol=1e-6)

    inputs = [checkpoints["a"] / "model.safetensors", *sorted(sharded.glob("*.safetensors"))]
    mapped = Path("/proc/self/maps").read_text()
    assert not [str(f) for f in inputs if str(f) in mapped]
    cached = {str(model.model.path) for model in LoaderCache().loaders}
    assert not cached & {str(checkpoints["a"]), str(sharded)}


def test_tensor_reader_matches_safetensors_for_every_dtype(tmp_path):
    from safetensors import safe_open

    from tempa.merge.tensor_reader import read_header, read_tensor

    generator = torch.Generator().manual_seed(0)
    tensors = {
        f"t.{dtype}": (torch.randn(3, 5, generator=generator) * 10).to(dtype)
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
                      torch.int8, torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.bool,
                      torch.float8_e4m3fn, torch.float8_e5m2)
    }
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    file = tmp_path / "w.safetensors"
    save_file(tensors, file, metadata={"format": "pt"})
    header = read_header(str(file))
    assert set(header) == set(tensors)
    with safe_open(file, "pt") as reference:
        for name in tensors:
            got = read_tensor(str(file), header[name])
            expected = reference.get_tensor(name)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert torch.equal(got.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8))

    # A file cut short inside the data says so instead of returning garbage.
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(file.read_bytes()[:-10])
    last = max(header.values(), key=lambda entry: entry.end)
    with pytest.raises(OSError, match="truncated"):
        read_tensor(str(cut), last)

    # A dtype this reader has no torch type for is named, with the file and the tensor.
    header_json = json.dumps({"odd": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}).encode()
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(len(header_json).to_bytes(8, "little") + header_json + b"\0")
    with pytest.raises(ValueError, match=r"odd\.safetensors: tensor odd has dtype F4"):
        read_header(str(odd))


def test_a_pickled_input_is_refused_and_never_unpickled(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir,
                                                        monkeypatch):
    """mergekit would torch.load a folder holding only pytorch_model.bin (even just to index it)."""
    pickled = tmp_path / "old-checkpoint"
    shutil.copytree(checkpoints["b"], pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    # a stray safetensors file (say, an adapter) beside the pickle: the model's weights are still the pickle
    (pickled / "model.safetensors").rename(pickled / "adapter_model.safetensors")
    loads = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args) or {})
    with pytest.raises(StageError) as err:
        _merge(tmp_path, tokenizer_dir, tiny_model_dir, method="linear", models=[str(checkpoints["a"]), str(pickled)])
    assert str(err.value).startswith(f"merge input: {pickled} holds its weights only as pickles (pytorch_model.bin)")
    assert loads == [] and not (tmp_path / "merge" / "final").exists()


def test_a_merge_input_folder_that_does_not_exist_fails_at_load(tmp_path, checkpoints):
    """A folder in `models` / `base_model` is checked when the recipe loads, as every other local path is,
    not after the stages before the merge have trained; bare names stay stage / candidate references."""

    def validate(**fields):
        return MergeStageConfig.model_validate({"name": "m", "kind": "merge", **fields},
                                               context={"base_dir": str(tmp_path)})

    with pytest.raises(ValidationError, match=r"models\n.*local path does not exist: .*no-such-model"):
        validate(models=["./no-such-model", "sft"])
    with pytest.raises(ValidationError, match=r"models\n.*local path does not exist: /nowhere/model"):
        validate(models=["sft", "/nowhere/model"])
    with pytest.raises(ValidationError, match=r"base_model\n.*local path does not exist: .*gone"):
        validate(method="ties", models=["sft", "sft2"], base_model="../gone")
    # Stage names, leaderboard candidates and existing folders load as before.
    config = validate(method="ties", models=["sft/checkpoint-20", str(checkpoints["a"])], base_model="sft")
    assert config.models == ["sft/checkpoint-20", str(checkpoints["a"])] and config.base_model == "sft"


def test_a_name_that_is_both_an_earlier_stage_and_a_folder_is_refused_at_load(tmp_path, checkpoints):
    """`models: [sft, ...]` next to a folder `sft/`: read as the folder, the merge lost its dependency on stage sft
    (and failed after training); read as the stage, the folder is ignored. Neither is what the user may mean."""
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.loader import load_recipe

    (tmp_path / "rows.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                                  {"role": "assistant", "content": "a"}]}) + "\n")
    shutil.copytree(checkpoints["a"], tmp_path / "sft")
    sft = "kind: sft\n    data: {sources: [{name: r, path: rows.jsonl}]}"
    recipe = tmp_path / "r.yaml"
    for models, ok in (("[sft, sft2]", False), ("[sft/checkpoint-20, sft2]", True), ("[./sft, sft2]", True)):
        recipe.write_text(f"name: r\nbase_model: tempa:tiny\nstages:\n  - name: sft\n    {sft}\n"
                          f"  - name: sft2\n    {sft}\n  - name: m\n    kind: merge\n    models: {models}\n")
        if ok:  # a checkpoint of the stage (no such folder below sft/), or the folder spelled as a path
            assert load_recipe(recipe).stages[2].models[0] in ("sft/checkpoint-20", str(tmp_path / "sft"))
            continue
        with pytest.raises(RecipeError, match=r"r\.yaml:12: stages\[2\]\.models \(stage .m.\): 'sft' names both the earlier stage "
                                              r"'sft' and the folder .*/sft: write './sft' for the folder"):
            load_recipe(recipe)


def test_a_preference_checkpoint_named_without_its_round_still_resolves(tmp_path, tokenizer_dir, tiny_model_dir):
    """Candidates of a preference stage are now named with their round (dpo/round-2/checkpoint-4); a recipe whose
    merge names one as before (`models: [dpo/checkpoint-4]`) loaded and then failed at the merge, after all training.
    One round's checkpoints are scored, so the old name means exactly one of them; two rounds' would not."""
    from tempa.merge.merge_stage import resolve_reference

    ctx = make_ctx(tmp_path, "merge", tokenizer_dir=tokenizer_dir, base=tiny_model_dir)
    board = Leaderboard(rank_by="loss/loss", rows=[
        LeaderboardRow(candidate="dpo/round-2/checkpoint-4", path=tiny_model_dir, metrics={"loss/loss": 1.0}),
        LeaderboardRow(candidate="dpo", path=tiny_model_dir, metrics={"loss/loss": 1.0})])
    assert resolve_reference("dpo/checkpoint-4", ctx, board) == MergeInput("dpo/round-2/checkpoint-4",
                                                                           tiny_model_dir.resolve())
    board.rows.append(LeaderboardRow(candidate="dpo/round-3/checkpoint-4", path=tmp_path, metrics={"loss/loss": 2.0}))
    with pytest.raises(StageError, match="'dpo/checkpoint-4' is neither"):
        resolve_reference("dpo/checkpoint-4", ctx, board)


def _trained_stage(root: Path, name: str, checkpoints: dict[int, Path], final: Path, final_step: int) -> Path:
    """A training stage's folder as the runner leaves it: complete checkpoints and final/ with its outcome."""
    from tempa.sft.train_plan import OUTCOME_FILE

    stage = root / name
    for step, source in checkpoints.items():
        shutil.copytree(source, stage / "checkpoints" / f"checkpoint-{step}")
        (stage / "checkpoints" / f"checkpoint-{step}" / "COMPLETE").write_text("")
    shutil.copytree(final, stage / "final")
    (stage / "final" / OUTCOME_FILE).write_text(json.dumps({"global_step": final_step}))
    return stage


def _scored_stages(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir, right: set[str]):
    """Stage tuned (checkpoint-2: a; checkpoint-4 and final/: b, its last step) and stage side (final/: c), scored by
    an evaluate stage that scores tuned's final as its checkpoint-4, as include_final does."""
    from stage_helpers import trained
    from tempa.merge import EvaluateStageConfig
    from tempa.merge.evaluate_stage import run_evaluate

    run = tmp_path / "run"
    tuned = _trained_stage(run, "tuned", {2: checkpoints["a"], 4: checkpoints["b"]}, checkpoints["b"], 4)
    side = _trained_stage(run, "side", {}, checkpoints["c"], 3)
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"2+2? ({i})", "answer": 4}) + "\n" for i in range(2)))
    evaluate = EvaluateStageConfig.model_validate(
        {"name": "eval", "kind": "evaluate", "checkpoints_of": ["tuned"], "stages": ["side"], "rank_by": "math/accuracy",
         "suites": [{"type": "accuracy", "name": "math", "data": str(data)}]})
    upstream = [done("tuned", trained(tuned)), done("side", trained(side))]
    factory = lambda path, _cfg, _ctx: ScriptedBackend(path, right)  # noqa: E731
    scored = run_evaluate(evaluate, make_ctx(run, "eval", tokenizer_dir=tokenizer_dir, base=tiny_model_dir,
                                             upstream=upstream), backend_factory=factory)
    assert [row.candidate for row in scored.leaderboard.rows] == ["tuned/checkpoint-2", "tuned/checkpoint-4", "side"]
    return run, [*upstream, done("eval", scored, kind="evaluate", config=evaluate)], factory


def test_a_task_vector_base_named_by_its_stage_is_not_picked_as_its_last_checkpoint(tmp_path, tokenizer_dir,
                                                                                   checkpoints, tiny_model_dir):
    """base_model: tuned (its final/) and a board that scores that final as tuned/checkpoint-4: the selection
    compared folders, picked tuned/checkpoint-4, and merged a zero task vector (a + (b - a) with b the base)."""
    run, upstream, _ = _scored_stages(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir, {"checkpoint-4", "final"})
    config = MergeStageConfig.model_validate(
        {"name": "merge", "kind": "merge", "method": "task_arithmetic", "evaluate_stage": "eval", "reevaluate": False,
         "base_model": "tuned", "select": {"metric": "math/accuracy", "top_k": 2}})
    result = run_merge(config, make_ctx(run, "merge", tokenizer_dir=tokenizer_dir, base=tiny_model_dir,
                                        upstream=upstream))
    assert [m.name for m in result.summary.models] == ["side", "tuned/checkpoint-2"]  # tuned/checkpoint-4 is the base


def test_inputs_named_by_their_stage_are_judged_against_their_scores(tmp_path, tokenizer_dir, checkpoints,
                                                                     tiny_model_dir):
    """models: [tuned, side]: the board names tuned's final tuned/checkpoint-4, and the merge compared itself with
    the inputs whose board name equals theirs, so only with `side`: a merge worse than tuned was called no worse than its
    best input."""
    run, upstream, factory = _scored_stages(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir, {"checkpoint-4"})
    config = MergeStageConfig.model_validate(
        {"name": "merge", "kind": "merge", "method": "linear", "evaluate_stage": "eval", "models": ["tuned", "side"]})
    result = run_merge(config, make_ctx(run, "merge", tokenizer_dir=tokenizer_dir, base=tiny_model_dir,
                                        upstream=upstream), backend_factory=factory)
    assert result.metrics["merged/math/accuracy"] == 0.0 and result.metrics["best_input"] == 1.0
    (note,) = result.notes
    assert "(math/accuracy 0 merged, 1 for tuned/checkpoint-4)" in note


def test_folders_of_two_runs_are_named_by_their_stage_not_final_final(tmp_path, tokenizer_dir, checkpoints,
                                                                     tiny_model_dir):
    """models: [/runs/x/sft-b/final, /runs/x/sft-c/final] was "a linear merge of `final`, `final`" in the log, the
    summary and the published card (which strips paths): the folders are named by their stage."""
    b = tmp_path / "runs" / "sft-b" / "final"
    c = tmp_path / "runs" / "sft-c" / "checkpoints" / "checkpoint-4"
    shutil.copytree(checkpoints["a"], b)
    shutil.copytree(checkpoints["b"], c)
    result, _ = _merge(tmp_path, tokenizer_dir, tiny_model_dir, method="linear", models=[str(b), str(c)],
                       dtype="float32")
    assert [m.name for m in result.summary.models] == ["sft-b/final", "sft-c/checkpoint-4"]


def test_a_reference_to_no_model_says_what_there_is(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir):
    """`sft-b/checkpoint-3` (a checkpoint never saved) and a checkpoint named without evaluate_stage failed after all
    training with "is neither an earlier stage's model, a leaderboard candidate, nor a model folder", naming no
    candidate and no way out."""
    run, upstream, _ = _scored_stages(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir, {"checkpoint-4"})
    config = MergeStageConfig.model_validate(
        {"name": "merge", "kind": "merge", "method": "linear", "evaluate_stage": "eval", "reevaluate": False,
         "models": ["tuned/checkpoint-3", "side"]})
    with pytest.raises(StageError, match=r"the leaderboard's candidates: tuned/checkpoint-2, tuned/checkpoint-4, side$"):
        run_merge(config, make_ctx(run, "merge", tokenizer_dir=tokenizer_dir, base=tiny_model_dir, upstream=upstream))
    bare = MergeStageConfig.model_validate({"name": "merge", "kind": "merge", "method": "linear",
                                            "models": ["tuned/checkpoint-4", "side"]})
    with pytest.raises(StageError, match=r"a checkpoint is named so on an evaluate stage's leaderboard: set "
                                         r"evaluate_stage, or give its folder's path$"):
        run_merge(bare, make_ctx(run, "merge", tokenizer_dir=tokenizer_dir, base=tiny_model_dir, upstream=upstream))


# A task-vector merge whose base the evaluate stage scored: the card's selection line says the base was left out as
# the base, and the re-scored merge is compared with its base as well as with its best input (the SEA-LION 70B tiny
# run: evaluate ranked merge-sft, the base, first; the card said "the top 2 of `evaluate`" of two lower candidates and
# the note said only that the merge did not improve on its best input, though it was worse than its base too).


def _merge_onto_scored_base(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir, right: set[str],
                            merged_right: bool | None):
    """a, b, c scored by an evaluate stage (a model answers right when its folder is in ``right``); c is the base of
    a task-arithmetic merge of the top 2; the merged model answers right when ``merged_right`` (None: not re-scored)."""
    from tempa.merge import EvaluateStageConfig
    from tempa.merge.evaluate_stage import run_evaluate

    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"2+2? ({i})", "answer": 4}) + "\n" for i in range(2)))
    evaluate = EvaluateStageConfig.model_validate(
        {"name": "eval", "kind": "evaluate", "models": [str(p) for p in checkpoints.values()],
         "suites": [{"type": "accuracy", "name": "math", "data": str(data)}]})
    scored = run_evaluate(evaluate, make_ctx(tmp_path, "eval", tokenizer_dir=tokenizer_dir, base=tiny_model_dir),
                          backend_factory=lambda path, _cfg, _ctx: ScriptedBackend(path, right))
    config = MergeStageConfig.model_validate(
        {"name": "merge", "kind": "merge", "method": "task_arithmetic", "evaluate_stage": "eval",
         "reevaluate": merged_right is not None, "base_model": str(checkpoints["c"]),
         "select": {"metric": "math/accuracy", "top_k": 2}})
    ctx = make_ctx(tmp_path, "merge", tokenizer_dir=tokenizer_dir, base=tiny_model_dir,
                   upstream=[done("eval", scored, kind="evaluate", config=evaluate)])
    rescored = right | ({"final"} if merged_right else set())  # "final": the merged model's folder
    return run_merge(config, ctx, backend_factory=lambda path, _cfg, _ctx: ScriptedBackend(path, rescored))


def test_a_merge_worse_than_its_scored_base_says_so_and_names_the_base_it_left_out(tmp_path, tokenizer_dir,
                                                                                    checkpoints, tiny_model_dir):
    # a = 1, b = 0, c (the base) = 1; the merge answers wrong: 0
    result = _merge_onto_scored_base(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir, {"a", "c"}, False)
    selection, re_eval = result.summary.selection, result.summary.reevaluation
    assert selection is not None and (selection.base, selection.base_value) == ("c", 1.0)
    assert re_eval is not None and (re_eval.base, re_eval.base_value, re_eval.beat_base) == ("c", 1.0, False)
    (note,) = result.notes
    assert "did not improve on its best input (math/accuracy 0 merged, 1 for a), nor on its base (1 for c)" in note


def test_a_merge_better_than_its_inputs_but_not_its_base_is_noted(tmp_path, tokenizer_dir, checkpoints,
                                                                  tiny_model_dir):
    # a = b = 0, c (the base) = 1; the merge answers right: 1, above its inputs, level with its base
    result = _merge_onto_scored_base(tmp_path, tokenizer_dir, checkpoints, tiny_model_dir, {"c"}, True)
    assert result.metrics["merge_helped"] is True
    (note,) = result.notes
    assert "the merged model improved on its best input (math/accuracy 1 merged, 0 for a), but not on its base " \
           "(1 for c)" in note


def test_the_card_names_the_base_left_out_of_the_top_k_and_compares_the_merge_with_it(tmp_path):
    from tempa.merge.merge_result import MergedModel, MergeResult, MergeSummary, Reevaluation, Selection
    from tempa.merge.model_card import ModelCardConfig, render_model_card
    from tempa.sft.stage_api import RecipeInfo

    summary = MergeSummary(
        method="ties", models=[MergedModel(name="align/checkpoint-1", path=tmp_path / "a"),
                               MergedModel(name="align/checkpoint-2", path=tmp_path / "b")],
        base_model=MergedModel(name="merge-sft", path=tmp_path / "base"),
        selection=Selection(evaluate_stage="evaluate", metric="heldout/loss", top_k=2,
                            values={"align/checkpoint-1": 6.593, "align/checkpoint-2": 6.594},
                            base="merge-sft", base_value=6.585),
        reevaluation=Reevaluation(metric="heldout/loss", merged=6.5928, best_input=6.5927, helped=False,
                                  best_input_name="align/checkpoint-1", base="merge-sft", base_value=6.585,
                                  beat_base=False))
    card = render_model_card(ModelCardConfig(), recipe=RecipeInfo("t", "tempa:tiny", "llama3_thinking"),
                             stages={"merge-best": done("merge-best", MergeResult(summary=summary), kind="merge")})
    assert ("Chosen as the top 2 of `evaluate` by `heldout/loss` besides the base (`merge-sft` = 6.585, merged onto "
            "as the base, not as one of the models): align/checkpoint-1 = 6.593, align/checkpoint-2 = 6.594") in card
    # 6.5928 against 6.5927: the digits that tell them apart (6.593 twice read as a tie)
    assert ("The merge scored 6.5928 on `heldout/loss` and did not improve on its best input (`align/checkpoint-1`, "
            "6.5927); it did not improve on its base (`merge-sft`, 6.585).") in card
