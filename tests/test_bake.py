"""The bake stage: a final folder that loads, stops at end of turn, passes the template check, and
carries a model card without secrets."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from stage_helpers import done, make_context, trained
from tempa.merge import BakeStageConfig, run_bake
from tempa.merge.leaderboard import EvaluateResult, Leaderboard, LeaderboardRow
from tempa.merge.merge_result import MergedModel, MergeResult, MergeSummary, Reevaluation, Selection
from tempa.merge.model_card import redact, scrub
from tempa.sft.data_report import DataMix, MixTotals, SourceMix
from tempa.sft.stage import SFTResult
from tempa.sft.stage_api import RecipeInfo, StageContext, StageError, Upstream

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


def _mix() -> DataMix:
    def source(name: str, rows_in: int, rows_kept: int) -> SourceMix:
        return SourceMix(name=name, path=f"{name}.jsonl", size={"weight": 1.0}, thinking_mode="off", rows_in=rows_in,
                         rows_curated=rows_kept, rows_tokenized=rows_kept, samples=rows_kept, tokens_in=10 * rows_in,
                         heldout_rows=0, heldout_samples=0, heldout_tokens=0, rows_kept=rows_kept,
                         unique_rows_kept=rows_kept, samples_kept=rows_kept, tokens_kept=10 * rows_kept,
                         trained_tokens_kept=5 * rows_kept, thinking_on_rows_kept=0, rejects={"too_long": 1})

    totals = MixTotals(rows_in=150, rows_kept=138, train_samples=138, eval_samples=0, tokens_kept=1380,
                       trained_tokens_kept=690, heldout_tokens=0, thinking_on_rows_kept=0, rejects=2)
    return DataMix(seed=42, cache_key="k", sources=[source("instruct-id", 100, 90), source("reasoning", 50, 48)],
                   total=totals)


def _earlier_stages(run_dir: Path, tiny_model_dir: Path) -> tuple[list[Upstream], Path]:
    """What earlier stages hand the bake: an sft with its data mix, an evaluation, a merge."""
    source = run_dir / "merge" / "final"
    shutil.copytree(tiny_model_dir, source)
    # Training leftovers in the folder the bake starts from must stay behind.
    (source / "optimizer.pt").write_bytes(b"not for users")
    (source / "COMPLETE").write_text("")
    board = Leaderboard(rows=[LeaderboardRow(candidate="merge", path=source, merged=True,
                                             metrics={"math/accuracy": 0.9}),
                              LeaderboardRow(candidate="sft/checkpoint-20", path=run_dir / "sft" / "x",
                                             metrics={"math/accuracy": 0.8})],
                        rank_by="math/accuracy")
    summary = MergeSummary(
        method="ties",
        models=[MergedModel(name="sft/checkpoint-20", path=run_dir / "sft" / "x",
                            parameters={"weight": 0.5, "density": 0.5})],
        base_model=MergedModel(name="base model", path=tiny_model_dir),
        selection=Selection(evaluate_stage="eval", metric="math/accuracy", top_k=2, values={"x": 0.8}),
        reevaluation=Reevaluation(metric="math/accuracy", merged=0.9, best_input=0.8, helped=True),
    )
    stages = [
        done("sft", SFTResult(model=run_dir / "sft" / "final", metrics={"train_loss": 1.25}, data=_mix()),
             duration_s=12.5),
        done("eval", EvaluateResult(leaderboard=board), kind="evaluate"),
        done("merge", MergeResult(model=source, summary=summary, leaderboard=board), kind="merge"),
    ]
    return stages, source


RECIPE = RecipeInfo(
    name="sea-demo", base_model="tempa:tiny", chat_template="llama3_thinking",
    description=f"Demo recipe (do not leak {ENV_SECRET}).",
    resolved={"name": "sea-demo", "base_model": "tempa:tiny", "chat_template": "llama3_thinking", "seed": 42,
              "stages": [{"name": "sft", "kind": "sft", "report_to": ["wandb"]},
                         {"name": "judge", "kind": "synthesize",
                          "judge": {"api_key": OPENAI_KEY, "hf_token": HUB_TOKEN}}]},
)


def _ctx(run_dir: Path, stages: list[Upstream], source: Path, tokenizer_dir: Path, template: str) -> StageContext:
    return make_context(run_dir, "bake", start_model=source, tokenizer_dir=tokenizer_dir, chat_template=template,
                        upstream=stages, recipe=RECIPE)


def test_bake_writes_a_checked_loadable_final_model(tmp_path, tiny_model_dir, recipe_tokenizer, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tempa.chat_templates import check_tokenizer, load_template

    monkeypatch.setenv("WANDB_API_KEY", ENV_SECRET)
    template = load_template("llama3_thinking")
    run_dir = tmp_path / "run"
    stages, source = _earlier_stages(run_dir, tiny_model_dir)
    config = BakeStageConfig.model_validate(
        {"name": "bake", "kind": "bake", "model_card": {"license": "llama3.1", "languages": ["id", "en"]}}
    )
    result = run_bake(config, _ctx(run_dir, stages, source, recipe_tokenizer, template))
    final = run_dir / "bake" / "final"
    assert result.model == final
    names = {p.name for p in final.iterdir()}
    # `tempa status` shows what the folder holds (it showed files=2, the weight files copied, read as files missing)
    assert result.metrics["final_files"] == len(names) and "files" not in result.metrics
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
    assert "| sft | sft | 12s | train_loss=1.25 |" in card  # stages
    assert "| instruct-id | instruct-id.jsonl | off | 100 | 90 |" in card and "rows_kept" in card  # data mix
    assert "merge (merged)" in card and "**0.9000**" in card  # eval table
    assert "**ties**" in card and "improved on" in card  # merge choice
    assert "sea-demo" in card and "llama3_thinking" in card  # recipe
    for secret in (OPENAI_KEY, HUB_TOKEN, ENV_SECRET):
        assert secret not in card
    assert result.metrics["template_checks_passed"] == len(checks)
    assert "auto_map_dropped" not in result.metrics  # nothing to drop: no empty metric (a dash in the report)


def test_bake_refuses_a_template_that_fails_the_check(tmp_path, tiny_model_dir, recipe_tokenizer):
    from tempa.chat_templates import load_template

    # Without {% generation %} markers nothing is marked as trained: an invariant the check enforces.
    broken = (
        load_template("llama3_thinking").replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
    )
    run_dir = tmp_path / "run"
    stages, source = _earlier_stages(run_dir, tiny_model_dir)
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


def test_the_card_scrub_takes_keys_named_key_and_every_variable_a_recipe_names_as_one():
    """TEACHER_KEY says "key" as a word of its name; a recipe's api_key_env may name a variable that says nothing."""
    from tempa.merge.model_card import secret_env_names

    teacher, judge, sort = "tk-0123456789abcdef", "jd-fedcba9876543210", "length-descending"
    text = f"teacher {teacher} judge {judge} order {sort}"
    resolved = {"stages": [{"teacher": {"type": "http", "api_key_env": "TEACHER_KEY"}},
                           {"rewards": [{"type": "judge", "backend": {"api_key_env": "JUDGE_CREDS_2"}}]}]}
    environ = {"TEACHER_KEY": teacher, "JUDGE_CREDS_2": judge, "SORT_KEYS_BY": "x", "MONKEY_ORDER": sort}
    assert secret_env_names(resolved) == {"TEACHER_KEY", "JUDGE_CREDS_2"}
    cleaned = scrub(text, environ=environ, secret_names=secret_env_names(resolved))
    assert teacher not in cleaned and judge not in cleaned
    assert sort in cleaned  # "key" inside a word (MONKEY) is no key

    from tempa.merge.model_card import ModelCardConfig, render_model_card
    from tempa.sft.stage_api import RecipeInfo

    card = render_model_card(ModelCardConfig(extra=f"served with {judge}"), stages={}, environ=environ,
                             recipe=RecipeInfo("t", "tempa:tiny", "llama3_thinking", resolved=resolved))
    assert judge not in card and "served with <redacted>" in card


def test_the_card_names_no_server_of_a_private_network():
    """The card embeds the resolved recipe: its judges' and teachers' base_urls published a team's internal
    hostnames and addresses (http://judge.internal:8000/v1, the shipped 70B recipe's), which no reader can reach."""
    from tempa.merge.model_card import ModelCardConfig, render_model_card
    from tempa.sft.stage_api import RecipeInfo

    private = ["http://127.0.0.1:8000/v1", "http://judge.internal:8000/v1", "http://10.1.2.3:8000/v1", "http://vllm/v1",
               "http://teacher.team.svc.cluster.local:8000/v1", "http://[fd00::5]:8000/v1",
               "http://gpu-box.home.arpa/v1", "https://judge.tail1234.ts.net/v1"]
    public = "https://api.openai.com/v1"
    resolved = {"stages": [{"name": f"s{i}", "teacher": {"type": "http", "base_url": url, "model": "m"}}
                           for i, url in enumerate([*private, public])]}
    card = render_model_card(ModelCardConfig(), stages={}, environ={},
                             recipe=RecipeInfo("t", "tempa:tiny", "llama3_thinking", resolved=resolved))
    hosts = ["127.0.0.1", "judge.internal", "10.1.2.3", "vllm/v1", "svc.cluster", "fd00::5", "home.arpa", "ts.net"]
    assert not [host for host in hosts if host in card]
    assert card.count("<private endpoint>") == len(private) and public in card


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

    def ctx(name: str, start_model: Path, upstream: list):
        return make_context(run_dir, name, start_model=start_model, tokenizer_dir=recipe_tokenizer,
                            chat_template=template, upstream=upstream, base_model=tiny_model_dir, use_cpu=True)

    sft_stage = done("sft", trained(sft))
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
    result = run_evaluate(evaluate, ctx("eval", sft / "final", [sft_stage]))
    eval_stage = done("eval", result, kind="evaluate", config=evaluate)
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
    merged = run_merge(merge, ctx("merge", sft / "final", [eval_stage]))
    assert "merged/heldout/loss" in merged.metrics and "merge_helped" in merged.metrics
    assert merged.model is not None
    baked = run_bake(
        BakeStageConfig.model_validate({"name": "bake", "kind": "bake"}),
        ctx("bake", merged.model, [sft_stage, eval_stage, done("merge", merged, kind="merge", config=merge)]),
    )
    assert baked.model is not None
    model = AutoModelForCausalLM.from_pretrained(baked.model)
    torch.testing.assert_close(
        model.state_dict()["model.norm.weight"],
        load_file(merged.model / "model.safetensors")["model.norm.weight"],
    )
    card = (baked.model / "README.md").read_text()
    assert "**dare_ties**" in card and "heldout/loss" in card and "merge (merged)" in card


def test_final_folder_is_publishable_as_it_is(tmp_path, tiny_model_dir, recipe_tokenizer):
    from tempa.chat_templates import load_template
    from tempa.merge.publish import publish_problems

    run_dir = tmp_path / "run"
    stages, source = _earlier_stages(run_dir, tiny_model_dir)
    # A base model with custom code, trained without trust_remote_code: its config still names that code.
    config = json.loads((source / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_sea.SeaForCausalLM", "AutoConfig": "org/sea--conf.SeaConfig"}
    (source / "config.json").write_text(json.dumps(config))
    (source / "model.safetensors").chmod(0o600)  # as save_pretrained writes it
    # The recipe read a data file on this machine: recipe.resolved.yaml holds its absolute path.
    data = tmp_path / "corpora" / "sea_instruct.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n")
    resolved = {**RECIPE.resolved, "stages": [{"name": "sft", "kind": "sft",
                                                "data": {"sources": [{"name": "sea", "path": str(data)}]}}]}
    recipe = dataclasses.replace(RECIPE, resolved=resolved)

    config = BakeStageConfig.model_validate({"name": "bake", "kind": "bake", "smoke_test": False})
    ctx = make_context(run_dir, "bake", start_model=source, tokenizer_dir=recipe_tokenizer,
                       chat_template=load_template("llama3_thinking"), upstream=stages, recipe=recipe)
    result = run_bake(config, ctx)
    final = run_dir / "bake" / "final"
    assert publish_problems(final) == []
    assert "auto_map" not in json.loads((final / "config.json").read_text())
    assert len(str(result.metrics["auto_map_dropped"]).split(", ")) == 2
    assert {p.stat().st_mode & 0o777 for p in final.iterdir()} == {0o644} and final.stat().st_mode & 0o777 == 0o755
    card = (final / "README.md").read_text()
    assert str(tmp_path) not in card and "path: sea_instruct.jsonl" in card


def test_publish_check_finds_what_would_stop_an_upload(tmp_path):
    import torch
    from safetensors.torch import save_file

    from tempa.merge.publish import make_publishable, publish_problems

    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_x.X"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["tok_x.T", None]}}))
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):  # all else a user needs
        (folder / name).write_text("{}")
    save_file({"x": torch.zeros(1)}, folder / "model.safetensors")
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


def test_the_card_names_the_stage_whose_weights_ship(tmp_path, tiny_model_dir, recipe_tokenizer):
    """Every stage of the run is listed, but only one stage's model is in the folder: the card says which, so a
    reader does not take the leaderboard's best row (or a stage the merge left out) for the shipped weights."""
    from tempa.chat_templates import load_template

    run_dir = tmp_path / "run"
    stages, source = _earlier_stages(run_dir, tiny_model_dir)
    config = BakeStageConfig.model_validate({"name": "bake", "kind": "bake", "smoke_test": False})
    run_bake(config, _ctx(run_dir, stages, source, recipe_tokenizer, load_template("llama3_thinking")))
    card = (run_dir / "bake" / "final" / "README.md").read_text()
    assert "The weights in this folder are the model of stage `merge` (a ties merge of `sft/checkpoint-20`)." in card
    # the files are in transformers 5's format: the card says which version wrote them, and that 4.x cannot read them
    import transformers

    assert (f"Saved with transformers {transformers.__version__}: load it with transformers 5 or later") in card
    assert json.loads((run_dir / "bake" / "final" / "config.json").read_text()).get("rope_theta") is None

    # Baked straight from the base model (no stage made a model): the card says so.
    base_only = [stage for stage in stages if stage.result.model is None]
    run_bake(config, _ctx(tmp_path / "run2", base_only, tiny_model_dir, recipe_tokenizer,
                          load_template("llama3_thinking")))
    card = (tmp_path / "run2" / "bake" / "final" / "README.md").read_text()
    assert "The weights in this folder are the base model's: no stage of the run changed them." in card


@pytest.mark.parametrize(("languages", "question"), [
    (["th"], "เมืองหลวงของประเทศไทยคืออะไร?"), (["vi", "en"], "Thủ đô của Việt Nam là gì?"),
    (["id"], "Apa ibu kota Indonesia?"), (["th-TH"], "เมืองหลวงของประเทศไทยคืออะไร?"),
    (["xx"], "What is the capital of Indonesia?"), ([], "What is the capital of Indonesia?"),
    # a Japanese card asked about Indonesia in English; codes are read as the language checks read them
    (["ja"], "日本の首都はどこですか？"), (["jpn_Jpan"], "日本の首都はどこですか？"), (["zh-Hant"], "中国的首都是哪里？"),
    (["ko"], "한국의 수도는 어디입니까?"), (["fil"], "Ano ang kabisera ng Pilipinas?")])
def test_the_card_usage_example_asks_in_the_card_first_language(languages, question):
    """A card with `languages: [th]` showed an Indonesian question; it follows the first language tempa has an
    example for, else English."""
    from tempa.merge.model_card import ModelCardConfig, render_model_card
    from tempa.sft.stage_api import RecipeInfo

    card = render_model_card(ModelCardConfig(languages=languages), stages={},
                             recipe=RecipeInfo("t", "tempa:tiny", "llama3_thinking"))
    assert f'messages = [{{"role": "user", "content": "{question}"}}]' in card


@pytest.mark.parametrize(("recipe_base", "shown"), [
    ("tempa:tiny", "tempa:tiny"), ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B"), ("LOCAL", "my-base")])
def test_the_card_merge_section_names_the_base_model(tmp_path, recipe_base, shown):
    """A merge onto the recipe's base model said ``base: `base model` ``; it names the model as the recipe does (a
    local folder by its name only: the card locates nothing on this machine)."""
    from tempa.merge.model_card import ModelCardConfig, render_model_card
    from tempa.sft.stage_api import RecipeInfo

    recipe_base = str(tmp_path / "models" / "my-base") if recipe_base == "LOCAL" else recipe_base
    summary = MergeSummary(method="ties", models=[MergedModel(name="sft/checkpoint-20", path=tmp_path / "a"),
                                                  MergedModel(name="sft/checkpoint-40", path=tmp_path / "b")],
                           base_model=MergedModel(name="base model", path=tmp_path / "cache" / "tiny-default-0"))
    card = render_model_card(ModelCardConfig(), recipe=RecipeInfo("t", recipe_base, "llama3_thinking"),
                             stages={"merge": done("merge", MergeResult(summary=summary), kind="merge")})
    assert f"- base: `{shown}` (the recipe's base model)" in card and "`base model`" not in card
    assert str(tmp_path) not in card
    # a base the merge config named (a stage's model) keeps its own name
    summary.base_model = MergedModel(name="sft", path=tmp_path / "sft" / "final")
    card = render_model_card(ModelCardConfig(), recipe=RecipeInfo("t", recipe_base, "llama3_thinking"),
                             stages={"merge": done("merge", MergeResult(summary=summary), kind="merge")})
    assert "- base: `sft`\n" in card
    # the method's parameters: a slerp's t, a linear merge's normalize: false (the weights read otherwise)
    summary.parameters = {"t": 0.3, "normalize": False}
    card = render_model_card(ModelCardConfig(), recipe=RecipeInfo("t", recipe_base, "llama3_thinking"),
                             stages={"merge": done("merge", MergeResult(summary=summary), kind="merge")})
    assert "- parameters: t=0.3, normalize=False\n" in card


def test_a_card_of_a_run_with_several_merges_shows_the_shipped_ones_board_and_marks_it(tmp_path):
    """A run that tried six merges and shipped merge-ta: the card's evaluation showed the last merge's board (no row
    for merge-ta) and its merge section listed the six alike."""
    from tempa.merge.model_card import ModelCardConfig, render_model_card

    def merge(name: str, loss: float) -> Upstream:
        summary = MergeSummary(method="linear", models=[MergedModel(name="a", path=tmp_path / "a"),
                                                        MergedModel(name="b", path=tmp_path / "b")])
        board = Leaderboard(rows=[LeaderboardRow(candidate=name, path=str(tmp_path / name), merged=True,
                                                 metrics={"heldout/loss": loss})], rank_by="heldout/loss")
        return done(name, MergeResult(model=tmp_path / name, summary=summary, leaderboard=board), kind="merge")

    stages = {"merge-ta": merge("merge-ta", 1.5), "merge-stock": merge("merge-stock", 2.5)}
    card = render_model_card(ModelCardConfig(), recipe=RecipeInfo("t", "tempa:tiny", "llama3_thinking"),
                             stages=stages, weights_from="merge-ta")
    evaluation = card.split("## Evaluation", 1)[1].split("## Merge", 1)[0]
    assert "From stage `merge-ta`." in evaluation and "merge-ta (merged)" in evaluation
    assert "merge-stock" not in evaluation
    assert "Stage `merge-ta` (the model in this folder): **linear** merge of:" in card
    # merge-stock is not in the shipped model: named, not described as if it were
    assert "Stage `merge-stock`" not in card and "Other merges of the run, not in this model: `merge-stock` (linear)" in card


def test_the_plan_warns_before_training_when_every_sft_source_trains_thinking_off(tmp_path, capsys):
    """The bake warned after all training that the template's default mode is one no row was trained in."""
    from tempa.recipes.cli import main

    (tmp_path / "rows.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                                  {"role": "assistant", "content": "a"}]}) + "\n")
    recipe = tmp_path / "r.yaml"
    body = ("name: r\nbase_model: tempa:tiny\nTOP\nstages:\n"
            "  - {name: s, kind: sft, data: {sources: [{name: r, path: rows.jsonl, thinking_mode: 'off'}]}}\n")
    warning = "warning: thinking_default is 'on', but every SFT source trains with thinking off"
    for top, warned in (("", True), ("thinking_default: 'off'", False)):
        recipe.write_text(body.replace("TOP", top))
        assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
        assert (warning in " ".join(capsys.readouterr().out.split())) is warned
    recipe.write_text(body.replace("TOP", "").replace("thinking_mode: 'off'", "thinking_mode: mixed, thinking_ratio: 0.5"))
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    assert "thinking_default" not in capsys.readouterr().out


def test_the_base_models_licence_and_use_policy_ship_with_the_final_model(tmp_path, tiny_model_dir, recipe_tokenizer):
    """The Llama 3 licence asks for a copy with every redistribution; the final folder had none of the base model's
    LICENSE / USE_POLICY.md (the trained weights' folder never has them)."""
    from tempa.chat_templates import load_template
    from tempa.merge.publish import publish_problems

    run_dir = tmp_path / "run"
    stages, source = _earlier_stages(run_dir, tiny_model_dir)
    base = tmp_path / "hub" / "snapshots" / "abc"
    blobs = tmp_path / "hub" / "blobs"
    base.mkdir(parents=True)
    blobs.mkdir()
    (blobs / "1").write_text("LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\n")
    (base / "LICENSE").symlink_to(blobs / "1")  # the Hugging Face cache links a snapshot's files to its blobs
    (base / "USE_POLICY.md").write_text("# Llama 3.1 Acceptable Use Policy\n")
    (base / "README.md").write_text("the base model's own card: not the final model's\n")
    config = BakeStageConfig.model_validate({"name": "bake", "kind": "bake", "smoke_test": False})
    ctx = make_context(run_dir, "bake", start_model=source, tokenizer_dir=recipe_tokenizer, base_model=base,
                       chat_template=load_template("llama3_thinking"), upstream=stages, recipe=RECIPE)
    run_bake(config, ctx)
    final = run_dir / "bake" / "final"
    assert (final / "LICENSE").read_text() == "LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\n"
    assert not (final / "LICENSE").is_symlink()
    assert (final / "USE_POLICY.md").read_text().startswith("# Llama 3.1 Acceptable Use Policy")
    assert "base model's own card" not in (final / "README.md").read_text()
    assert publish_problems(final) == []


def test_the_final_config_uses_the_cache_as_the_base_model_does(tmp_path, tiny_model_dir, recipe_tokenizer):
    """transformers' Trainer saves every model it trains with ``use_cache: false`` (its TrainingArguments default):
    the demo's final config.json shipped that training setting, so a forward pass returned no past_key_values."""
    import torch
    from transformers import AutoModelForCausalLM

    from tempa.chat_templates import load_template

    run_dir = tmp_path / "run"
    stages, source = _earlier_stages(run_dir, tiny_model_dir)
    config = json.loads((source / "config.json").read_text())
    assert json.loads((tiny_model_dir / "config.json").read_text())["use_cache"] is True
    (source / "config.json").write_text(json.dumps({**config, "use_cache": False}))  # as the Trainer saves it
    bake = BakeStageConfig.model_validate({"name": "bake", "kind": "bake", "smoke_test": False})
    ctx = make_context(run_dir, "bake", start_model=source, tokenizer_dir=recipe_tokenizer, base_model=tiny_model_dir,
                       chat_template=load_template("llama3_thinking"), upstream=stages, recipe=RECIPE)
    final = run_bake(bake, ctx).model
    assert json.loads((final / "config.json").read_text())["use_cache"] is True
    assert json.loads((source / "config.json").read_text())["use_cache"] is False  # the stage's own folder is as it was
    model = AutoModelForCausalLM.from_pretrained(final)
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).past_key_values is not None


def test_the_card_gives_each_model_the_gguf_route_that_works_for_it(tmp_path, tiny_model_dir, recipe_tokenizer,
                                                                     capsys):
    """`tempa export gguf` writes Llama models only and refuses the Qwen2 models the README's "Bring your own" recipe
    trains: their card dropped the llama-server and Ollama notes entirely. It gives the convert route instead, whose
    quantised output tempa serves as it serves its own."""
    from tempa.chat_templates import load_template
    from tempa.merge.gguf_export import LLAMA_SERVER_NOTE
    from tempa.recipes.cli import main

    run_dir = tmp_path / "run"
    stages, source = _earlier_stages(run_dir, tiny_model_dir)
    config = BakeStageConfig.model_validate({"name": "bake", "kind": "bake", "smoke_test": False})
    final = run_bake(config, _ctx(run_dir, stages, source, recipe_tokenizer, load_template("llama3_thinking"))).model
    assert "`tempa export gguf` writes a GGUF (llama.cpp) and an Ollama Modelfile" in (final / "README.md").read_text()

    qwen = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**qwen, "architectures": ["Qwen2ForCausalLM"],
                                                    "model_type": "qwen2"}))
    final = run_bake(config, _ctx(tmp_path / "run2", stages, source, recipe_tokenizer,
                                  load_template("llama3_thinking"))).model
    card = (final / "README.md").read_text()
    assert "`tempa export gguf` writes" not in card and "lists it among the eos ids.\n" in card
    assert "convert it with `convert_hf_to_gguf.py`" in card
    assert "`tempa export gguf MODEL-f16.gguf --type q8_0`: it writes the quantised GGUF" in card
    assert "`MODEL-f16-q8_0.Modelfile`" in card and "Ollama's `think` switch" in card
    assert LLAMA_SERVER_NOTE in card.replace("\n", " ")
    assert main(["export", "gguf", str(final), "--out", str(tmp_path / "q.gguf")]) == 1  # what the card no longer says
    assert "supports LlamaForCausalLM, got Qwen2ForCausalLM" in capsys.readouterr().err
    # a recipe's own template has no Ollama twin and no thinking switch for llama-server: the card promised both
    own = load_template("llama3_thinking").replace("{#-", "{#- own template.", 1)
    final = run_bake(config, _ctx(tmp_path / "run3", stages, source, recipe_tokenizer, own)).model
    card = (final / "README.md").read_text()
    assert "Modelfile named after it" not in card and LLAMA_SERVER_NOTE not in card.replace("\n", " ")
    assert "The chat template is the recipe's own: `tempa export gguf` writes no Ollama Modelfile for it" in card


def test_the_cards_evaluation_says_where_the_metrics_it_leaves_out_are(tmp_path):
    """The card said "N more metrics ... in leaderboard.json", a file never uploaded with the model: it names the
    run's file, by its stage, and the run's own leaderboard.md keeps its short form."""
    from tempa.merge.model_card import _eval_section

    metrics = {"math/accuracy": 0.9, "math/accuracy:id": 0.8, "math/accuracy:th": 0.7}
    board = Leaderboard(rows=[LeaderboardRow(candidate="sft", path=tmp_path, metrics=metrics)], rank_by="math/accuracy")
    card = "\n".join(_eval_section({"eval": done("eval", EvaluateResult(leaderboard=board), kind="evaluate")}))
    assert "2 more metrics (per-language and per-type breakdowns, counts) in the run's `eval/leaderboard.json`." in card
    assert board.to_markdown().rstrip().endswith("in leaderboard.json.")


def test_a_partial_copy_of_the_final_folder_is_not_taken_for_complete(tmp_path, tiny_model_dir, recipe_tokenizer,
                                                                       capsys):
    """A final/ copied or synced part way (or left by a killed rewrite) lacking a shard and the index that names it
    still held every file push and export looked for, and its remaining shard was whole: push would upload it and
    export gguf would write a GGUF without that shard's tensors. The bake's record of its files says what is gone."""
    from transformers import AutoModelForCausalLM

    from tempa.chat_templates import load_template
    from tempa.merge.publish import FINAL_RECORD, publish_problems
    from tempa.recipes.cli import main
    from tempa.recipes.push import push_files

    source = tmp_path / "merged"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(source, max_shard_size="300KB")
    shutil.copy2(tiny_model_dir / "generation_config.json", source / "generation_config.json")
    run_dir = tmp_path / "run"
    config = BakeStageConfig.model_validate({"name": "bake", "kind": "bake", "smoke_test": False})
    ctx = make_context(run_dir, "bake", start_model=source, tokenizer_dir=recipe_tokenizer, base_model=tiny_model_dir,
                       chat_template=load_template("llama3_thinking"))
    run_bake(config, ctx)
    final = run_dir / "bake" / "final"
    shards = sorted(path.name for path in final.glob("model-*.safetensors"))
    assert len(shards) >= 2 and publish_problems(final) == []
    assert FINAL_RECORD not in [f.path_in_repo for f in push_files(final)]  # the run's record, not the model's

    partial = tmp_path / "copied" / "final"
    shutil.copytree(final, partial)
    for name in (shards[-1], "model.safetensors.index.json"):
        (partial / name).unlink()
    problems = publish_problems(partial)
    assert any(shards[-1] in problem and "missing" in problem for problem in problems), problems
    assert any("model.safetensors.index.json" in problem for problem in problems), problems
    assert f"if you saved the weights again on purpose, delete {FINAL_RECORD}" in problems[-1]  # and how to go on
    capsys.readouterr()  # the progress bars of the model's loading above
    assert main(["export", "gguf", str(partial), "--out", str(tmp_path / "x.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert shards[-1] in err and len(err.splitlines()) == 1 and not list(tmp_path.glob("*.gguf"))


@pytest.mark.parametrize("card, expected", [
    ("{license: llama-3.1}", "model_card.license (stage 'bake'): 'llama-3.1' is not a licence id the Hub accepts"),
    ("{license: [llama3.1, Gemma]}", "did you mean 'gemma'?"),
    ("{license: other}", "model_card.license (stage 'bake'): 'other' needs license_name"),
    ("{license: apache-2.0, languages: [id, Thai]}", "language 'Thai': expected an ISO 639-1 or 639-3 code"),
])
def test_card_metadata_the_hub_would_refuse_stops_the_recipe_before_any_work(tmp_path, capsys, card, expected):
    """The Hub refuses a commit whose card says a licence it does not list ("Invalid metadata in README.md"), and it
    said so at `tempa push`, after the whole run and after the repo was made; the recipe now fails as it loads."""
    from tempa.recipes.cli import main

    (tmp_path / "rows.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                                  {"role": "assistant", "content": "a"}]}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nbase_model: tempa:tiny\nstages:\n"
                      "  - {name: s, kind: sft, data: {sources: [{name: r, path: rows.jsonl}]}}\n"
                      f"  - {{name: bake, kind: bake, model_card: {card}}}\n")
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert expected in err and "model_card" in err and "r.yaml" in err, err
    assert not (tmp_path / "run").exists()


def test_the_cards_metadata_is_what_the_hub_takes():
    """License ids the Hub lists, `other` with its name and link, and languages as ISO 639 codes (a region or script
    dropped: the usage example still picks its language from the code as written)."""
    import yaml

    from tempa.merge.model_card import ModelCardConfig, render_model_card

    card = ModelCardConfig(license="other", license_name="acme-open-weights", license_link="LICENSE",
                           languages=["th-TH", "jpn_Jpan", "fil", "th"])
    text = render_model_card(card, recipe=RECIPE, stages={})
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "other" and front["license_name"] == "acme-open-weights"
    assert front["license_link"] == "LICENSE" and front["language"] == ["th", "jpn", "fil"]
    assert "เมืองหลวงของประเทศไทยคืออะไร" in text
    assert ModelCardConfig(license=["llama3.1", "gemma"]).license == ["llama3.1", "gemma"]
    # the special values huggingface_hub's ModelCardData names (a review found them refused)
    special = render_model_card(ModelCardConfig(license="apache-2.0", languages=["multilingual", "code", "en"]),
                                recipe=RECIPE, stages={})
    assert yaml.safe_load(special.split("---\n")[1])["language"] == ["multilingual", "code", "en"]


def test_bake_refuses_a_tokenizer_with_more_tokens_than_the_model_has_rows(tmp_path, tiny_model_dir,
                                                                            recipe_tokenizer):
    """Merge and evaluate refused such a tokenizer; the bake shipped it, and the shipped model's first use of a token
    past its embeddings stopped torch ('index out of range in self')."""
    from transformers import AutoTokenizer

    from tempa.chat_templates import load_template
    from tempa.chat_templates.baking import model_vocab_size

    run_dir = tmp_path / "run"
    stages, source = _earlier_stages(run_dir, tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(recipe_tokenizer)
    rows = model_vocab_size(source)
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(rows - len(tokenizer) + 3)])
    grown = tmp_path / "grown-tokenizer"
    tokenizer.save_pretrained(grown)
    config = BakeStageConfig.model_validate({"name": "bake", "kind": "bake", "smoke_test": False})
    with pytest.raises(StageError, match=rf"^bake stage 'bake': cannot use tokenizer .* it has {rows + 3} tokens, but "
                                         rf"the model's embeddings hold {rows} \(vocab_size\)$"):
        run_bake(config, _ctx(run_dir, stages, source, grown, load_template("llama3_thinking")))
    assert not (run_dir / "bake" / "final").exists()
