"""The bake stage: a final folder that loads, stops at end of turn, passes the template check, and
carries a model card without secrets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from stage_helpers import make_context
from tempa.merge import BakeStageConfig, run_bake
from tempa.merge.model_card import redact, scrub
from tempa.sft.stage_api import StageContext, StageError

# mergekit imports numpy.core, which numpy 2 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")

OPENAI_KEY = "sk-test1234567890abcdefghijklmnop"
HUB_TOKEN = "hf_abcdefghijklmnopqrstuvwxyz123456"
ENV_SECRET = "s3cr3t-value-from-the-environment"


@pytest.fixture(scope="module")
def recipe_tokenizer(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """What the runner hands every stage: the base tokenizer with the recipe's template baked in."""
    from tempa.chat_templates import bake_tokenizer

    out = tmp_path_factory.mktemp("runner") / "tokenizer"
    return bake_tokenizer(tiny_model_dir, "llama3_thinking", out, model_dir=tiny_model_dir)


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _run_dir(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, dict[str, Path], Path]:
    """A run directory as earlier stages leave it: manifests, a data mix, a leaderboard, a merge."""
    run_dir = tmp_path / "run"
    recipe = {
        "name": "sea-demo",
        "description": f"Demo recipe (do not leak {ENV_SECRET}).",
        "base_model": "tempa:tiny",
        "chat_template": "llama3_thinking",
        "seed": 42,
        "stages": [
            {"name": "sft", "kind": "sft", "report_to": ["wandb"]},
            {"name": "judge", "kind": "synthesize", "judge": {"api_key": OPENAI_KEY, "hf_token": HUB_TOKEN}},
        ],
    }
    run_dir.mkdir()
    (run_dir / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    stages = {name: run_dir / name for name in ("sft", "eval", "merge")}
    _write_json(
        stages["sft"] / "manifest.json",
        {"name": "sft", "kind": "sft", "status": "done", "duration_s": 12.5, "metrics": {"train_loss": 1.25}},
    )
    _write_json(
        stages["sft"] / "data" / "mix.json",
        {
            "sources": {
                "instruct-id": {"rows_in": 100, "rows_kept": 90},
                "reasoning": {"rows_in": 50, "rows_kept": 48},
            }
        },
    )
    _write_json(
        stages["eval"] / "manifest.json",
        {"name": "eval", "kind": "evaluate", "status": "done", "metrics": {}},
    )
    (stages["merge"]).mkdir(parents=True)
    (stages["merge"] / "leaderboard.md").write_text(
        "## Leaderboard\n\n| model | step | math/accuracy ↑ |\n| --- | ---: | ---: |\n| merge (merged) |  | **0.9000** |\n"
    )
    _write_json(
        stages["merge"] / "merge_summary.json",
        {
            "method": "ties",
            "models": [{"name": "sft/checkpoint-20", "weight": 0.5, "density": 0.5}],
            "base_model": {"name": "base model"},
            "selection": {
                "evaluate_stage": "eval",
                "metric": "math/accuracy",
                "top_k": 2,
                "values": {"x": 0.8},
            },
            "reevaluation": {"metric": "math/accuracy", "merged": 0.9, "best_input": 0.8},
            "merge_helped": True,
        },
    )
    # The model the bake starts from (e.g. merge/final), with training leftovers that must stay behind.
    source = stages["merge"] / "final"
    shutil.copytree(tiny_model_dir, source)
    (source / "optimizer.pt").write_bytes(b"not for users")
    (source / "COMPLETE").write_text("")
    return run_dir, stages, source


def _ctx(
    run_dir: Path, stages: dict[str, Path], source: Path, tokenizer_dir: Path, template: str
) -> StageContext:
    return make_context(run_dir, "bake", model_dir=source, tokenizer_dir=tokenizer_dir, chat_template=template,
                        stage_dirs=stages, stage_models={"merge": source})


def test_bake_writes_a_checked_loadable_final_model(tmp_path, tiny_model_dir, recipe_tokenizer, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tempa.chat_templates import check_tokenizer, load_template

    monkeypatch.setenv("WANDB_API_KEY", ENV_SECRET)
    template = load_template("llama3_thinking")
    run_dir, stages, source = _run_dir(tmp_path, tiny_model_dir)
    config = BakeStageConfig.model_validate(
        {"name": "bake", "kind": "bake", "model_card": {"license": "llama3.1", "languages": ["id", "en"]}}
    )
    result = run_bake(config, _ctx(run_dir, stages, source, recipe_tokenizer, template))
    final = run_dir / "bake" / "final"
    assert result.model_dir == final
    names = {p.name for p in final.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
        "README.md",
    } <= names
    assert not names & {"optimizer.pt", "COMPLETE"}
    assert (final / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert not any(p.name.startswith(".") for p in (run_dir / "bake").iterdir())  # no partial folders left

    # The template check passes on the saved tokenizer, with the saved generation config.
    tokenizer = AutoTokenizer.from_pretrained(final)
    generation = GenerationConfig.from_pretrained(final)
    checks = check_tokenizer(tokenizer, generation_config=generation)
    assert checks and all(c.passed for c in checks), [c for c in checks if not c.passed]
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    eos_ids = (
        generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    )
    assert eot in eos_ids and generation.pad_token_id not in eos_ids
    assert json.loads((run_dir / "bake" / "template_check.json").read_text())[0]["passed"] is True

    # Loads with the Auto classes and generates in both thinking modes.
    model = AutoModelForCausalLM.from_pretrained(final)
    messages = [{"role": "user", "content": "Apa ibu kota Indonesia?"}]
    for mode, prefill in (("on", "<think>\n"), ("off", "<think>\n</think>\n")):
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, thinking_mode=mode
        )
        assert text.endswith(prefill)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        assert out.shape[1] > ids["input_ids"].shape[1]
    assert set(json.loads((run_dir / "bake" / "smoke_test.json").read_text())) == {"on", "off"}

    card = (final / "README.md").read_text()
    assert 'thinking_mode="on"' in card and '"off"' in card
    # The usage snippet runs as written against the final folder.
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    snippet = snippet.replace("path/to/this/folder", str(final)).replace(
        "max_new_tokens=512", "max_new_tokens=3"
    )
    exec(compile(snippet, "README.md", "exec"), {})
    assert "license: llama3.1" in card
    assert "| sft | sft | done | 12s |" in card  # stages
    assert "instruct-id" in card and "rows_kept" in card  # data mix
    assert "merge (merged)" in card and "**0.9000**" in card  # eval table
    assert "**ties**" in card and "improved on" in card  # merge choice
    assert "sea-demo" in card and "llama3_thinking" in card  # recipe
    for secret in (OPENAI_KEY, HUB_TOKEN, ENV_SECRET):
        assert secret not in card
    assert result.metrics["template_checks_passed"] == len(checks)


def test_bake_refuses_a_template_that_fails_the_check(tmp_path, tiny_model_dir, recipe_tokenizer):
    from tempa.chat_templates import load_template

    # Without {% generation %} markers nothing is marked as trained: an invariant the check enforces.
    broken = (
        load_template("llama3_thinking").replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
    )
    run_dir, stages, source = _run_dir(tmp_path, tiny_model_dir)
    config = BakeStageConfig.model_validate({"name": "bake", "kind": "bake", "smoke_test": False})
    with pytest.raises(StageError) as error:
        run_bake(config, _ctx(run_dir, stages, source, recipe_tokenizer, broken))
    assert "\n" not in str(error.value) and "template" in str(error.value)
    assert not (run_dir / "bake" / "final").exists()


def test_redaction_helpers():
    data = {
        "judge": {"api_key": "abc", "max_new_tokens": 512, "model": "gpt"},
        "hf_token": "x",
        "pad_token": "<pad>",
        "stats": {"tokens_in": 23881, "rows_tokenized": 253, "auth_retries": 3},
    }
    assert redact(data) == {
        "judge": {"api_key": "<redacted>", "max_new_tokens": 512, "model": "gpt"},
        "hf_token": "<redacted>",
        "pad_token": "<pad>",
        # counts under token-ish keys are data, not secrets
        "stats": {"tokens_in": 23881, "rows_tokenized": 253, "auth_retries": 3},
    }
    text = f"key {OPENAI_KEY} and Bearer abcdefghijklmnop1234 and {ENV_SECRET} and plain words"
    cleaned = scrub(text, environ={"MY_SECRET": ENV_SECRET, "HOME": "/root"})
    assert OPENAI_KEY not in cleaned and ENV_SECRET not in cleaned and "abcdefghijklmnop1234" not in cleaned
    assert cleaned.endswith("plain words")


def test_evaluate_merge_bake_pipeline(tmp_path, tiny_model_dir, recipe_tokenizer):
    """The three stages chained as a runner would, on real (tiny) models and the default backend."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from tempa.chat_templates import load_template
    from tempa.merge import EvaluateStageConfig, MergeStageConfig, run_evaluate, run_merge

    template = load_template("llama3_thinking")
    run_dir = tmp_path / "run"
    sft = run_dir / "sft"
    weights = load_file(tiny_model_dir / "model.safetensors")
    for seed, folder in enumerate(
        [sft / "checkpoints" / f"checkpoint-{s}" for s in (5, 10)] + [sft / "final"]
    ):
        shutil.copytree(tiny_model_dir, folder)
        generator = torch.Generator().manual_seed(seed)
        noisy = {k: v + 0.02 * torch.randn(v.shape, generator=generator) for k, v in weights.items()}
        save_file(noisy, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "COMPLETE").write_text("")
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            + "\n"
            for q, a in [("Hai", "Halo!"), ("2+2?", "4"), ("Ibu kota?", "Jakarta")]
        )
    )

    def ctx(name: str, model_dir: Path, stage_dirs: dict[str, Path], stage_models: dict[str, Path]):
        return make_context(run_dir, name, model_dir=model_dir, tokenizer_dir=recipe_tokenizer,
                            chat_template=template, stage_dirs=stage_dirs, stage_models=stage_models,
                            base_model_dir=tiny_model_dir, use_cpu=True)

    stage_dirs = {"sft": sft}
    stage_models = {"sft": sft / "final"}
    evaluate = EvaluateStageConfig.model_validate(
        {
            "name": "eval",
            "kind": "evaluate",
            "checkpoints_of": ["sft"],
            "suites": [
                {"type": "loss", "name": "heldout", "data": str(chats)},
                {"type": "thinking", "data": str(chats), "max_rows": 1},
            ],
            "generation": {"max_new_tokens": 3},
            "rank_by": "heldout/loss",
        }
    )
    result = run_evaluate(evaluate, ctx("eval", sft / "final", dict(stage_dirs), dict(stage_models)))
    stage_dirs["eval"], stage_models["eval"] = run_dir / "eval", result.model_dir
    merge = MergeStageConfig.model_validate(
        {
            "name": "merge",
            "kind": "merge",
            "method": "dare_ties",
            "evaluate_stage": "eval",
            "select": {"metric": "heldout/loss", "top_k": 2},
            "density": 0.7,
        }
    )
    merged = run_merge(merge, ctx("merge", result.model_dir, dict(stage_dirs), dict(stage_models)))
    stage_dirs["merge"], stage_models["merge"] = run_dir / "merge", merged.model_dir
    assert "merged/heldout/loss" in merged.metrics and "merge_helped" in merged.metrics
    baked = run_bake(
        BakeStageConfig.model_validate({"name": "bake", "kind": "bake"}),
        ctx("bake", merged.model_dir, dict(stage_dirs), dict(stage_models)),
    )
    model = AutoModelForCausalLM.from_pretrained(baked.model_dir)
    torch.testing.assert_close(
        model.state_dict()["model.norm.weight"],
        load_file(merged.model_dir / "model.safetensors")["model.norm.weight"],
    )
    card = (baked.model_dir / "README.md").read_text()
    assert "**dare_ties**" in card and "heldout/loss" in card and "merge (merged)" in card


def test_final_folder_is_publishable_as_it_is(tmp_path, tiny_model_dir, recipe_tokenizer):
    from tempa.chat_templates import load_template
    from tempa.merge.publish import publish_problems

    run_dir, stages, source = _run_dir(tmp_path, tiny_model_dir)
    # A base model with custom code, trained without trust_remote_code: its config still names that code.
    config = json.loads((source / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_sea.SeaForCausalLM", "AutoConfig": "org/sea--conf.SeaConfig"}
    (source / "config.json").write_text(json.dumps(config))
    (source / "model.safetensors").chmod(0o600)  # as save_pretrained writes it
    # The recipe read a data file on this machine: recipe.resolved.yaml holds its absolute path.
    data = tmp_path / "corpora" / "sea_instruct.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n")
    recipe = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())
    recipe["stages"][0]["data"] = {"sources": [{"name": "sea", "path": str(data)}]}
    (run_dir / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))

    config = BakeStageConfig.model_validate({"name": "bake", "kind": "bake", "smoke_test": False})
    result = run_bake(config, _ctx(run_dir, stages, source, recipe_tokenizer, load_template("llama3_thinking")))
    final = run_dir / "bake" / "final"
    assert publish_problems(final) == []
    assert "auto_map" not in json.loads((final / "config.json").read_text())
    assert len(result.metrics["auto_map_dropped"]) == 2
    assert {p.stat().st_mode & 0o777 for p in final.iterdir()} == {0o644} and final.stat().st_mode & 0o777 == 0o755
    card = (final / "README.md").read_text()
    assert str(tmp_path) not in card and "path: sea_instruct.jsonl" in card


def test_publish_check_finds_what_would_stop_an_upload(tmp_path):
    from tempa.merge.publish import make_publishable, publish_problems

    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_x.X"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["tok_x.T", None]}}))
    (folder / "model.safetensors").write_bytes(b"\0")
    (folder / "model.safetensors").chmod(0o600)
    (folder / "pytorch_model.bin").write_bytes(b"\0")
    (folder / "README.md").write_text(f"trained on {tmp_path}/data.jsonl with {HUB_TOKEN}\n")
    problems = publish_problems(folder)
    assert "model.safetensors: mode 0600, not 0644" in problems
    assert "config.json: auto_map AutoModel -> modeling_x.X" in problems
    assert "tokenizer_config.json: auto_map AutoTokenizer -> tok_x.T" in problems
    assert "pytorch_model.bin: pickled weights" in problems
    assert f"README.md: local path {tmp_path}/data.jsonl" in problems
    assert "README.md: secret-looking string" in problems
    assert make_publishable(folder) == [
        "config.json: auto_map AutoModel -> modeling_x.X", "tokenizer_config.json: auto_map AutoTokenizer -> tok_x.T"
    ]
    assert sorted(publish_problems(folder)) == sorted(
        ["pytorch_model.bin: pickled weights", f"README.md: local path {tmp_path}/data.jsonl",
         "README.md: secret-looking string"]
    )
    (folder / "modeling_x.py").write_text("")
    (folder / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_x.X"}}))
    assert not [p for p in publish_problems(folder) if "auto_map" in p]  # its code is here: not dangling
