"""Recipe loading: every error names the file, the line, the field path and what was expected."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    return path


def recipe_text(extra_stage: str = "", train: str = "learning_rate: 1.0e-3") -> str:
    return f"""
    name: t
    base_model: "tempa:tiny"
    stages:
      - name: first
        kind: sft
        data:
          sources:
            - name: rows
              path: rows.jsonl
        train:
          {train}
    {extra_stage}
    """


def test_valid_recipe_resolves_paths_relative_to_the_recipe(tmp_path, data_file):
    loaded = load_recipe(write(tmp_path / "r.yaml", recipe_text()))
    assert loaded.names[0] == "first"
    source = loaded.stages[0].data.sources[0]
    assert source.path == str(data_file.resolve())
    assert loaded.stages[0].train == {"learning_rate": 1.0e-3}
    # the final bake stage is added when the recipe has none (once the bake kind exists)
    assert loaded.names[-1] in ("bake", "first")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "r.yaml", "name: t\nstages: [\n  - a: b\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:\d+: invalid YAML"):
        load_recipe(path)


@pytest.mark.parametrize(("text", "line", "hint"), [
    ("name: t\nstages:\n  - name: sft\n    kind: sft\n   data: {}\n", 5,
     "check this line's indentation against the lines above it"),
    ("name: t\nstages:\n\t- name: sft\n", 3, "YAML indents with spaces, not tabs"),
    ("name: t\ndescription: SFT: then DPO\n", 2, "or quote a value that holds ': '"),
])
def test_yaml_errors_say_what_the_author_likely_got_wrong(tmp_path, text, line, hint):
    path = write(tmp_path / "r.yaml", text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}:{line}: invalid YAML: ") and str(info.value).endswith(f"{hint})")


def test_unknown_top_level_field(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text().replace("name: t", "name: t\n    bse_model: x"))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert f"{path}:2: bse_model: unknown field" in str(err.value)


def test_wrong_type_names_field_line_and_expectation(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text(train="learning_rate: fast"))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert f"{path}:11: stages[0].train.learning_rate (stage 'first')" in message
    assert "valid number" in message and "'fast'" in message


def test_unknown_train_key_suggests_the_right_one(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text(train="lerning_rate: 1.0"))
    with pytest.raises(RecipeError, match="did you mean 'learning_rate'"):
        load_recipe(path)


def test_reserved_train_key_is_refused(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text(train="output_dir: /tmp/x"))
    with pytest.raises(RecipeError, match=r"train\.output_dir \(stage 'first'\): is set by tempa"):
        load_recipe(path)


def test_unknown_stage_kind_lists_known_kinds(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text(extra_stage="  - {name: second, kind: sfft}"))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert f"{path}:12: stages[1].kind" in message
    assert "unknown stage kind 'sfft'" in message and "known kinds: sft" in message
    assert "did you mean 'sft'" in message


def test_from_must_name_an_earlier_stage(tmp_path, data_file):
    stage = """  - name: second
        kind: sft
        from: later
        data: {sources: [{name: rows, path: rows.jsonl}]}"""
    path = write(tmp_path / "r.yaml", recipe_text(extra_stage=stage))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert "stages[1].from (stage 'second'): 'later' is not an earlier stage (earlier stages: first)" in str(err.value)


def test_from_may_not_name_itself(tmp_path, data_file):
    stage = """  - name: second
        kind: sft
        from: second
        data: {sources: [{name: rows, path: rows.jsonl}]}"""
    with pytest.raises(RecipeError, match="'second' is not an earlier stage"):
        load_recipe(write(tmp_path / "r.yaml", recipe_text(extra_stage=stage)))


def test_duplicate_stage_name(tmp_path, data_file):
    stage = """  - name: first
        kind: sft
        data: {sources: [{name: rows, path: rows.jsonl}]}"""
    path = write(tmp_path / "r.yaml", recipe_text(extra_stage=stage))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert f"{path}:12: stages[1].name: duplicate stage name 'first' (also stages[0])" in str(err.value)


def test_missing_local_path(tmp_path):
    path = write(tmp_path / "r.yaml", recipe_text())  # rows.jsonl not created
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert f"{path}:9: stages[0].data.sources[0].path" in message
    assert f"local path does not exist: {tmp_path / 'rows.jsonl'}" in message


def test_missing_base_model_folder(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text().replace('"tempa:tiny"', "./models/base"))
    with pytest.raises(RecipeError, match=r"r\.yaml:2: base_model: local path does not exist"):
        load_recipe(path)


def test_missing_recipe_file_lists_shipped_recipes(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe file not found .*demo"):
        load_recipe(tmp_path / "nope.yaml")


def test_extends_inherits_and_overrides(tmp_path, data_file):
    write(tmp_path / "base.yaml", recipe_text())
    child = write(
        tmp_path / "child.yaml",
        """
        extends: base.yaml
        name: child
        seed: 7
        stages:
          - name: first
            train: {num_train_epochs: 2}
        """,
    )
    loaded = load_recipe(child)
    assert loaded.recipe.name == "child" and loaded.recipe.seed == 7
    # the stage merged by name: the parent's learning rate stays, the child's epochs are added
    assert loaded.stages[0].train == {"learning_rate": 1.0e-3, "num_train_epochs": 2}
    assert loaded.files == [tmp_path / "base.yaml", child]


def test_a_stage_an_extending_recipe_adds_trains_before_the_parents_bake(tmp_path, data_file):
    """New stages were appended after the parent's bake stage, so the bake shipped the model without them (the
    SEA-LION v3.5 R recipe could not name its card's licence in a bake stage: the rlvr recipe that extends it adds
    an rl stage)."""
    write(tmp_path / "base.yaml", recipe_text(extra_stage="""  - name: bake
        kind: bake
        model_card: {license: llama3.1}"""))
    child = write(tmp_path / "child.yaml", """
        extends: base.yaml
        name: child
        stages:
          - name: second
            kind: sft
            data: {sources: [{name: rows, path: rows.jsonl}]}
          - name: bake
            model_card: {languages: [id]}
        """)
    loaded = load_recipe(child)
    assert loaded.names == ["first", "second", "bake"]
    assert loaded.upstream(2) == "second"  # the bake ships the added stage's model
    assert loaded.stages[2].model_card.license == "llama3.1" and loaded.stages[2].model_card.languages == ["id"]


def test_extends_clears_any_inherited_key_with_null(tmp_path, data_file):
    """`select: null` cleared an inherited block, `parameters: null` was refused ('a valid dictionary'): null now
    takes any key back to its default."""
    write(tmp_path / "base.yaml", recipe_text("""  - name: merge
        kind: merge
        method: ties
        models: [first, first]
        parameters: {normalize: true}
        density: [0.5, 0.5]""").replace("stages:", "generation: {temperature: 0.6}\n    stages:"))
    child = write(tmp_path / "child.yaml", """
        extends: base.yaml
        generation: null
        stages:
          - name: merge
            parameters: null
            density: null
        """)
    parent, loaded = load_recipe(tmp_path / "base.yaml"), load_recipe(child)
    assert parent.stages[1].parameters == {"normalize": True} and parent.stages[-1].generation.temperature == 0.6
    assert loaded.stages[1].parameters == {} and loaded.stages[1].density is None
    assert loaded.stages[-1].generation.temperature is None


def test_extends_error_points_into_the_child(tmp_path, data_file):
    write(tmp_path / "base.yaml", recipe_text())
    child = write(
        tmp_path / "child.yaml",
        """
        extends: base.yaml
        stages:
          - name: first
            train: {learning_rate: slow}
        """,
    )
    with pytest.raises(RecipeError, match=r"child\.yaml:\d+: stages\[0\]\.train"):
        load_recipe(child)


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\nname: b\n")
    with pytest.raises(RecipeError, match="extends: cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_set_overrides_a_stage_by_name(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text())
    loaded = load_recipe(path, ["stages.first.train.learning_rate=2e-5", "seed=3"])
    assert loaded.stages[0].train["learning_rate"] == pytest.approx(2e-5)
    assert loaded.recipe.seed == 3


def test_set_with_unknown_stage_or_bad_syntax(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text())
    with pytest.raises(RecipeError, match=r"no stage named 'nope' \(stages: first\)"):
        load_recipe(path, ["stages.nope.train.learning_rate=1"])
    with pytest.raises(RecipeError, match=r"no stage named 'frist' \(stages: first\); did you mean 'first'\?$"):
        load_recipe(path, ["stages.frist.train.learning_rate=1"])
    with pytest.raises(RecipeError, match=r"expected KEY\.PATH=VALUE"):
        load_recipe(path, ["seed"])


def test_exponent_without_a_dot_is_a_number(tmp_path, data_file):
    # YAML 1.1 reads 2e-5 as a string; recipes (and --set) mean the number
    loaded = load_recipe(write(tmp_path / "r.yaml", recipe_text(train="learning_rate: 3e-4")), ["seed=1e1"])
    assert loaded.stages[0].train["learning_rate"] == pytest.approx(3e-4)
    assert isinstance(loaded.stages[0].train["learning_rate"], float)


def test_set_value_is_validated_like_the_file(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text())
    # The error points at the command line that set the value, not at the file line it replaced.
    with pytest.raises(RecipeError, match=r"^--set stages\.first\.train\.learning_rate=fast: "
                       r"stages\[0\]\.train\.learning_rate .*valid number"):
        load_recipe(path, ["stages.first.train.learning_rate=fast"])
    with pytest.raises(RecipeError, match=r"^--set stages\.0\.train\.lerning_rate=1: .*did you mean 'learning_rate'"):
        load_recipe(path, ["stages.0.train.lerning_rate=1"])
    with pytest.raises(RecipeError, match=r"^--set seed=abc: seed: "):
        load_recipe(path, ["seed=abc"])
    # inside a list other than the stages (sources, by index or by name)
    for ref in ("0", "rows"):
        with pytest.raises(RecipeError, match=rf"^--set stages\.first\.data\.sources\.{ref}\.weight=abc: "
                           r"stages\[0\]\.data\.sources\[0\]\.weight"):
            load_recipe(path, [f"stages.first.data.sources.{ref}.weight=abc"])


def test_shipped_demo_recipe_loads_by_name():
    loaded = load_recipe("demo")
    assert loaded.recipe.base_model == "tempa:tiny"
    kinds = [stage.kind for stage in loaded.stages]
    assert kinds.count("sft") >= 2


def test_profile_overlays_the_recipe_and_unknown_profiles_are_listed(tmp_path, data_file):
    text = recipe_text() + textwrap.indent(textwrap.dedent("""
        profiles:
          tiny:
            seed: 5
            stages:
              - name: first
                train: {learning_rate: 0.5, max_steps: 3}
        """), "    ")
    path = write(tmp_path / "r.yaml", text)
    plain = load_recipe(path)
    assert plain.recipe.seed == 42 and plain.stages[0].train == {"learning_rate": 1.0e-3}
    assert plain.profiles == ["tiny"]
    tiny = load_recipe(path, profile="tiny")
    assert tiny.recipe.seed == 5 and tiny.profile == "tiny"
    assert tiny.stages[0].train == {"learning_rate": 0.5, "max_steps": 3}
    with pytest.raises(RecipeError, match=r"--profile huge: no such profile \(profiles: tiny\)"):
        load_recipe(path, profile="huge")


def test_error_inside_a_profile_points_at_the_profile_line(tmp_path, data_file):
    text = recipe_text() + textwrap.indent(textwrap.dedent("""
        profiles:
          tiny:
            stages:
              - name: first
                train: {max_stepz: 3}
        """), "    ")
    path = write(tmp_path / "r.yaml", text)
    load_recipe(path)  # the profile is not applied: the recipe itself is fine
    with pytest.raises(RecipeError) as err:
        load_recipe(path, profile="tiny")
    assert f"{path}:18: stages[0].train.max_stepz (stage 'first')" in str(err.value)


def test_profile_switching_a_tagged_union_replaces_it(tmp_path, data_file):
    """`teacher: {type: transformers}` over an http teacher must not inherit its base_url."""
    from tempa.recipes.loader import _deep_merge

    http = {"type": "http", "base_url": "http://x/v1", "model": "m"}
    assert _deep_merge(http, {"type": "transformers"}) == {"type": "transformers"}
    assert _deep_merge(http, {"model": "n"}) == {"type": "http", "base_url": "http://x/v1", "model": "n"}


def _synthesize_recipe(tmp_path, teacher: str):
    """A one-stage synthesize recipe whose `teacher:` block (line 7) is ``teacher``."""
    (tmp_path / "p.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    return write(tmp_path / "r.yaml", f"""
        name: t
        base_model: "tempa:tiny"
        stages:
          - name: syn
            kind: synthesize
            prompts: {{path: p.jsonl}}
            teacher: {teacher}
            rewards: [{{type: format}}]
        """)


def test_error_path_leaves_out_union_tags(tmp_path):
    path = _synthesize_recipe(tmp_path, '{type: transformers, base_url: "http://x"}')
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert f"{path}:7: stages[0].teacher.base_url (stage 'syn'): unknown field" in str(err.value)


def test_launch_config_must_be_shipped_or_an_existing_file(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text().replace("stages:", "launch: {accelerate_config: zero9}\n    stages:"))
    with pytest.raises(RecipeError, match=r"r\.yaml:3: launch\.accelerate_config: 'zero9' is neither a shipped config"):
        load_recipe(path)
    (tmp_path / "mine.yaml").write_text("distributed_type: 'NO'\n")
    path.write_text(path.read_text().replace("zero9", "mine.yaml"))
    assert load_recipe(path).recipe.launch.accelerate_config == str(tmp_path / "mine.yaml")


def test_scheduler_is_checked_when_the_recipe_loads(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text(train="lr_scheduler_type: cosin"))
    with pytest.raises(RecipeError, match=r"r\.yaml:11: stages\[0\]\.train\.lr_scheduler_type .*did you mean 'cosine'"):
        load_recipe(path)
    path = write(tmp_path / "r.yaml", recipe_text(train="optim: adamw_torch_fusd"))
    with pytest.raises(RecipeError, match=r"train\.optim .*'adamw_torch_fusd' is not a valid choice; did you mean 'adamw_torch_fused'"):
        load_recipe(path)
    # WSD needs its decay length, which the Trainer does not supply: refused now, not after data prep.
    path = write(tmp_path / "r.yaml", recipe_text(train="lr_scheduler_type: warmup_stable_decay"))
    with pytest.raises(RecipeError, match=r"needs lr_scheduler_kwargs: \{num_decay_steps: \.\.\.\}"):
        load_recipe(path)
    path = write(tmp_path / "r.yaml", recipe_text(
        train="{lr_scheduler_type: warmup_stable_decay, lr_scheduler_kwargs: {num_decay_steps: 3}}"))
    assert load_recipe(path).stages[0].train["lr_scheduler_kwargs"] == {"num_decay_steps": 3}


def test_stage_without_kind_and_stage_source_without_dataset(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text(extra_stage="  - {name: second}"))
    with pytest.raises(RecipeError, match=r"r\.yaml:12: stages\[1\]\.kind \(stage 'second'\): field required; one of: sft"):
        load_recipe(path)
    # `stage:NAME` must name a stage that writes a dataset; an sft stage writes a model.
    reads_sft = "  - {name: second, kind: sft, data: {sources: [{name: s, path: 'stage:first'}]}}"
    path = write(tmp_path / "r.yaml", recipe_text(extra_stage=reads_sft))
    with pytest.raises(RecipeError, match=r"r\.yaml:12: stages\[1\]\.data\.sources\[0\]\.path \(stage 'second'\): "
                       r"stage 'first' \(kind sft\) produces no dataset"):
        load_recipe(path)


def test_missing_parent_and_unknown_template_name_the_line(tmp_path, data_file):
    child = write(tmp_path / "child.yaml", """
    name: child
    extends: nothere.yaml
    """)
    with pytest.raises(RecipeError, match=r"child\.yaml:2: extends: nothere\.yaml: recipe file not found"):
        load_recipe(child)
    path = write(tmp_path / "r.yaml", recipe_text().replace('base_model: "tempa:tiny"',
                                                              'base_model: "tempa:tiny"\n    chat_template: chatml_thinkin'))
    with pytest.raises(RecipeError, match=r"r\.yaml:3: chat_template: not a shipped template .*did you mean 'chatml_thinking'"):
        load_recipe(path)


def test_relative_names_resolve_against_the_recipe_folder_never_the_working_directory(tmp_path, monkeypatch):
    from tempa.merge.merge_config import MergeStageConfig

    here, recipe_dir = tmp_path / "cwd", tmp_path / "recipes"
    (here / "sft").mkdir(parents=True)  # a folder named like a stage, where tempa happens to run
    recipe_dir.mkdir()
    monkeypatch.chdir(here)

    def merge(**fields):
        return MergeStageConfig.model_validate({"name": "m", "kind": "merge", "method": "ties", **fields},
                                               context={"base_dir": str(recipe_dir)})

    assert merge(models=["a", "b"], base_model="sft").base_model == "sft"  # a stage name, left for the runner
    (recipe_dir / "sft").mkdir()
    assert merge(models=["a", "b"], base_model="sft").base_model == str(recipe_dir / "sft")


def test_alias_bomb_fails_fast_in_bounded_memory(tmp_path):
    """A billion-laughs recipe: refused with file and line, in a child capped at 3 GiB and 60 s."""
    import subprocess
    import sys

    from bad_inputs import BILLION_LAUGHS

    path = write(tmp_path / "lol.yaml", BILLION_LAUGHS)
    child = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from tempa.recipes.errors import RecipeError\n"
        "from tempa.recipes.loader import load_recipe\n"
        "try:\n"
        f"    load_recipe({str(path)!r})\n"
        "except RecipeError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == (  # line 7: `e`, the first level past 20000 nodes
        f"{path}:7: invalid YAML: aliases expand to more than 20000 nodes (an alias bomb?); "
        "write the repeated values out or reuse fewer"
    )


def test_ordinary_aliases_still_work(tmp_path, data_file):
    text = """
    name: t
    base_model: "tempa:tiny"
    stages:
      - &first
        name: first
        kind: sft
        data: {sources: [{name: rows, path: rows.jsonl}]}
        train: {learning_rate: 1.0e-3}
      - <<: *first
        name: second
    """
    loaded = load_recipe(write(tmp_path / "r.yaml", text))
    assert loaded.names[:2] == ["first", "second"] and loaded.stages[1].train == {"learning_rate": 1.0e-3}


def test_duplicate_keys_are_refused_with_both_lines(tmp_path, data_file):
    path = write(tmp_path / "r.yaml", recipe_text(train="learning_rate: 1.0e-3\n          learning_rate: 2.0e-3"))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == (
        f"{path}:12: invalid YAML: duplicate key 'learning_rate' (first at line 11); YAML would keep only the last"
    )


def test_recipe_that_is_not_utf8_names_file_and_line(tmp_path, data_file):
    path = tmp_path / "r.yaml"
    path.write_bytes(textwrap.dedent(recipe_text()).lstrip().encode() + b"description: caf\xe9\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}:13: not UTF-8 text (byte 0xe9); save the recipe as UTF-8"


def test_unset_max_steps_and_epochs_under_max_steps_are_accepted(tmp_path, data_file):
    # -1 is transformers' "unset" for max_steps; with max_steps set, epochs are ignored
    for train in ("{max_steps: -1, num_train_epochs: 2}", "{max_steps: 5, num_train_epochs: 0}"):
        loaded = load_recipe(write(tmp_path / "r.yaml", recipe_text(train=train)))
        assert loaded.stages[0].train["max_steps"] in (-1, 5)


def _pickled_model(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model as an old checkpoint ships: pytorch_model.bin (a pickle) beside config and tokenizer."""
    import shutil

    import torch
    from safetensors.torch import load_file

    folder.mkdir()
    torch.save(load_file(tiny_model_dir / "model.safetensors"), folder / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    return folder


def test_pickled_base_model_is_refused_unless_the_recipe_opts_in(tmp_path, data_file, tiny_model_dir):
    from tempa.recipes.runner import resolve_base_model

    base = _pickled_model(tiny_model_dir, tmp_path / "pickled")
    assert (base / "pytorch_model.bin").is_file() and not list(base.glob("*.safetensors"))
    text = recipe_text().replace('base_model: "tempa:tiny"', f"base_model: {base}")
    path = write(tmp_path / "r.yaml", text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert message.startswith(f"{path}:2: base_model: {base} holds its weights only as pickles (pytorch_model.bin)")
    assert "save_pretrained" in message and "allow_pickle_weights: true" in message and "\n" not in message

    # Opted in: converted once, into the cache; what the stages get is safetensors only.
    loaded = load_recipe(path, ["allow_pickle_weights=true"])
    folder = resolve_base_model(loaded)
    assert folder.is_relative_to(Path(os.environ["TEMPA_CACHE"]))
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    assert (folder / "tokenizer.json").is_file() and resolve_base_model(loaded) == folder  # reused


@pytest.mark.parametrize(("block", "field", "model_class"), [
    ("teacher: {{type: transformers, model: {folder}}}\n        rewards: [{{type: length}}]", "teacher.model",
     "AutoModelForCausalLM"),
    ("teacher: {{type: transformers}}\n        rewards: [{{type: reward_model, model: {folder}}}]", "rewards[0].model",
     "AutoModelForSequenceClassification"),
], ids=["teacher", "reward_model"])
def test_pickled_teacher_or_reward_model_is_refused_at_load(tmp_path, data_file, tiny_model_dir, block, field,
                                                             model_class, monkeypatch):
    """A teacher or reward model folder with pickles only failed when its stage loaded it, after the stages before
    it trained. Refused at load, with a conversion line for its model class that works, and no offer of
    allow_pickle_weights (which converts the base model only)."""
    import shlex
    import sys

    folder = _pickled_model(tiny_model_dir, tmp_path / "pickled")
    stage = f"""  - name: distil
        kind: synthesize
        prompts: {{path: rows.jsonl}}
        {block.format(folder=folder)}"""
    path = write(tmp_path / "r.yaml", recipe_text(extra_stage=stage))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if str(folder) in text)
    assert message.startswith(f"{path}:{line}: stages[1].{field} (stage 'distil'): {folder} holds its weights only "
                              "as pickles (pytorch_model.bin)"), message
    assert "allow_pickle_weights" not in message and "\n" not in message

    # The conversion line as the user would paste it (run in this process: a subprocess would import torch again).
    python, flag, code, argument = shlex.split(message.split("convert it once with: ", 1)[1].split(", got ", 1)[0])
    assert (python, flag, argument) == ("python", "-c", str(folder)) and f"import {model_class} as M" in code
    monkeypatch.setattr(sys, "argv", ["-c", argument])
    exec(code, {})
    converted = Path(f"{folder}-safetensors")
    assert (converted / "model.safetensors").is_file()
    loaded = load_recipe(write(tmp_path / "r.yaml", recipe_text(extra_stage=stage.replace(str(folder), str(converted)))))
    assert loaded.names[1] == "distil"


def test_a_vllm_teacher_in_mistrals_own_format_is_no_folder_without_a_config(tmp_path, data_file):
    """A local vLLM teacher in Mistral's format (params.json, consolidated.safetensors, config_format: mistral) was
    refused at load for having no config.json, though vLLM loads it (found by review)."""
    folder = tmp_path / "mistral"
    folder.mkdir()
    (folder / "params.json").write_text('{"dim": 4096}')
    (folder / "consolidated.safetensors").write_bytes(b"\0" * 16)
    stage = f"""  - name: distil
        kind: synthesize
        prompts: {{path: rows.jsonl}}
        teacher: {{type: vllm, model: {folder}, engine_args: {{config_format: mistral, load_format: mistral}}}}
        rewards: [{{type: length}}]"""
    assert load_recipe(write(tmp_path / "r.yaml", recipe_text(extra_stage=stage))).names[1] == "distil"
    (folder / "consolidated.safetensors").rename(folder / "consolidated.pt")  # pickles only: still refused
    with pytest.raises(RecipeError, match="holds its weights only as pickles"):
        load_recipe(write(tmp_path / "r.yaml", recipe_text(extra_stage=stage)))


def test_extends_resolves_each_path_against_the_file_that_wrote_it(tmp_path, data_file):
    """The child's paths against the child's folder, inherited ones against the parent's."""
    parent_dir, child_dir = tmp_path / "recipes", tmp_path / "my"
    parent_dir.mkdir()
    child_dir.mkdir()
    (parent_dir / "rows.jsonl").write_text(data_file.read_text())
    (child_dir / "chats_id.jsonl").write_text(data_file.read_text())
    write(parent_dir / "base.yaml", recipe_text(extra_stage="""
      - name: second
        kind: sft
        data:
          sources:
            - {name: rows, path: rows.jsonl}
    """))
    child = write(
        child_dir / "ext.yaml",
        """
        extends: ../recipes/base.yaml
        name: ext
        stages:
          - name: first
            data:
              sources:
                - {name: chats, path: chats_id.jsonl}
          - name: third
            kind: sft
            data:
              sources:
                - {name: chats, path: chats_id.jsonl}
        """,
    )
    loaded = load_recipe(child)
    paths = {stage.name: stage.data.sources[0].path for stage in loaded.stages if stage.kind == "sft"}
    assert paths == {
        "first": str((child_dir / "chats_id.jsonl").resolve()),  # overridden in the child
        "second": str((parent_dir / "rows.jsonl").resolve()),  # inherited
        "third": str((child_dir / "chats_id.jsonl").resolve()),  # new in the child
    }


@pytest.mark.parametrize("hub_id", ["gpt2", "org/name-1.5_x"])
def test_a_valid_hub_id_base_model_is_left_for_the_run(tmp_path, data_file, hub_id):
    path = write(tmp_path / "r.yaml", recipe_text().replace('"tempa:tiny"', f'"{hub_id}"'))
    assert load_recipe(path).recipe.base_model == hub_id


def _on_off_fields():
    """(model, field) of every recipe field whose values are the modes "on"/"off" (nested models included)."""
    import typing

    from pydantic import BaseModel

    from tempa.recipes.registry import stage_kinds
    from tempa.recipes.schema import Recipe

    found, seen = [], set()

    def visit_type(tp):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            visit_model(tp)
        for arg in typing.get_args(tp):
            visit_type(arg)

    def visit_model(model):
        if model in seen:
            return
        seen.add(model)
        for name, info in model.model_fields.items():
            if {"on", "off"} <= literal_values(info.annotation):
                found.append((model, name))
            visit_type(info.annotation)

    def literal_values(tp) -> set:
        if typing.get_origin(tp) is typing.Literal:
            return set(typing.get_args(tp))
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return set()
        return set().union(*(literal_values(arg) for arg in typing.get_args(tp)))

    visit_model(Recipe)
    for kind in stage_kinds().values():
        visit_model(kind.config)
    return found


def test_every_on_off_field_reads_yaml_booleans_as_the_mode():
    """YAML reads a bare `off` as false: every on/off field takes it as "off" (and `on` as "on")."""
    import typing

    from pydantic import TypeAdapter, ValidationError

    fields = _on_off_fields()
    names = {f"{model.__name__}.{name}" for model, name in fields}
    assert {"Recipe.thinking_default", "SourceConfig.thinking_mode", "ThinkingSettings.mode"} <= names, names
    wrong = []
    for model, name in fields:
        info = model.model_fields[name]
        adapter = TypeAdapter(typing_annotated(info))
        many = typing.get_origin(info.annotation) is list
        try:
            ok = (adapter.validate_python([False, True]) == ["off", "on"] if many
                  else adapter.validate_python(False) == "off" and adapter.validate_python(True) == "on")
        except ValidationError:  # a refusal is the failure being looked for
            ok = False
        if not ok:
            wrong.append(f"{model.__module__}.{model.__name__}.{name}")
    assert wrong == []
    assert len(fields) >= 8  # the recipe, data source, sampling, judge, reviser, offline pairs, evaluate suites


def typing_annotated(info):
    from typing import Annotated

    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def test_unquoted_off_in_a_data_source_reads_as_off(tmp_path, data_file):
    text = recipe_text().replace("path: rows.jsonl", "path: rows.jsonl\n              thinking_mode: off")
    loaded = load_recipe(write(tmp_path / "r.yaml", text.replace("name: t", "name: t\n    thinking_default: off")))
    assert loaded.stages[0].data.sources[0].thinking_mode == "off" and loaded.recipe.thinking_default == "off"


def test_a_base_url_with_a_password_is_refused_without_showing_it(tmp_path):
    """The recipe error names the field and the host, never the URL: it may carry a password or key."""
    path = _synthesize_recipe(tmp_path, '{type: http, base_url: "https://me:pw-hunter2@api.example.com/v1", model: m}')
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert f"{path}:7: stages[0].teacher.base_url (stage 'syn')" in message and "api_key_env" in message
    assert "hunter2" not in message


def test_a_block_validators_error_points_at_the_field_it_names_and_a_bad_tag_gets_its_closest(tmp_path, data_file):
    """A merge's `parameters.t` was reported at the stage's first line; a reward `type: langauge` listed the tags
    without the one meant."""
    merge = """  - name: merge
        kind: merge
        method: ties
        models: [first, first]
        parameters:
          normalize: true
          t: 0.5"""
    path = write(tmp_path / "r.yaml", recipe_text(extra_stage=merge))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}:18: stages[1].parameters.t (stage 'merge'): not a parameter of "
                                      "mergekit's ties"), info.value
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    align = """  - name: align
        kind: preference
        prompts: {path: p.jsonl}
        rewards: [{type: langauge}]"""
    path = write(tmp_path / "r.yaml", recipe_text(extra_stage=align))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}:15: stages[1].rewards[0] (stage 'align'): Input tag 'langauge'")
    assert str(info.value).endswith("did you mean 'language'?")
