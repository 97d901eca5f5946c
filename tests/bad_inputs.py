"""A table of bad inputs (recipes, rows, models, command lines), each a one-line error with exit code 1.

One home for the table: ``tests/test_bad_inputs.py`` runs the fast cases in-process, and
``bench/reliability.py`` runs every case as a real ``tempa`` subprocess in a sandbox, checking
also that nothing outside the run directory and the cache was written.

A case's ``build(ws)`` writes its files under the workspace ``ws`` and returns the ``tempa``
arguments; ``expect`` is a piece of the one-line error. ``fast`` cases do no stage work (they
fail while loading the recipe or before the first stage), the others run ``tempa run`` until it
fails.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROW = {"messages": [{"role": "user", "content": "Ulangi: satu dua tiga"}, {"role": "assistant", "content": "satu dua tiga"}]}
PROMPT = {"messages": [{"role": "user", "content": "What is 2 + 3?"}], "answer": "5"}


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # recipe | rows | model | cli
    build: Callable[[Path], list[str]]
    expect: str
    fast: bool = True


def write_rows(path: Path, n: int = 16) -> Path:
    path.write_text("".join(json.dumps(ROW | {"id": i}) + "\n" for i in range(n)), encoding="utf-8")
    return path


TRAIN = "max_steps: 2, per_device_train_batch_size: 4, max_length: 128, save_steps: 100"


def recipe(
    ws: Path,
    *,
    stage: str = "",
    top: str = "",
    train: str = TRAIN,
    source: str = "{name: rows, path: rows.jsonl}",
    name: str = "bad",
    base_model: str = '"tempa:tiny"',
    launch: str = "{use_cpu: true}",
    file: str = "recipe.yaml",
) -> Path:
    """A valid one-stage SFT recipe in ``ws`` (rows.jsonl beside it), with the given pieces swapped in."""
    if not (ws / "rows.jsonl").exists():
        write_rows(ws / "rows.jsonl")
    text = "\n".join([
        f"name: {name}",
        f"base_model: {base_model}",
        f"launch: {launch}",
        top,
        "stages:",
        "  - name: sft",
        "    kind: sft",
        f"    data: {{sources: [{source}]}}",
        f"    train: {{{train}}}",
        "",
    ])
    if stage:
        text += textwrap.indent(textwrap.dedent(stage), "  ")
    path = ws / file
    path.write_text(text, encoding="utf-8")
    return path


def plan(path: Path, *extra: str) -> list[str]:
    return ["plan", str(path), "--run-dir", str(path.parent / "run"), *extra]


def run(path: Path, *extra: str) -> list[str]:
    return ["run", str(path), "--run-dir", str(path.parent / "run"), *extra]


def _text(ws: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = ws / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _bytes(ws: Path, data: bytes, name: str) -> Path:
    path = ws / name
    path.write_bytes(data)
    return path


def _beside(ws: Path, name: str) -> Path:
    """``ws`` with rows written at ``name`` inside it (folders made)."""
    (ws / name).parent.mkdir(parents=True, exist_ok=True)
    write_rows(ws / name)
    return ws


def _model_folder(ws: Path, *, config: bool = True, weights: str | None = "model.safetensors",
                  tokenizer: bool = True) -> Path:
    folder = ws / "base"
    folder.mkdir()
    if config:
        (folder / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    if weights:
        (folder / weights).write_bytes(b"\0" * 16)
    if tokenizer:
        (folder / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    return folder


def _merge_stage(method: str, parameters: str, extra: str = "") -> str:
    """A merge stage (after the recipe's `sft`) merging `sft` with itself by ``method``."""
    return (f"- name: merge-{method}\n  kind: merge\n  method: {method}\n  models: [sft, sft]\n"
            f"  parameters: {parameters}\n{extra}")


BILLION_LAUGHS = """\
name: lol
base_model: "tempa:tiny"
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
stages: [*i]
"""

def _flow_bomb(levels: int = 9) -> str:
    """A billion-laughs document on one line (for --set)."""
    parts = ["&l0 [" + ", ".join(['"lol"'] * 9) + "]"]
    parts += [f"&l{k} [" + ", ".join([f"*l{k - 1}"] * 9) + "]" for k in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def _rows_file(name: str, data: bytes) -> Callable[[Path], list[str]]:
    """A run whose only source is the file ``name`` holding ``data``."""

    def build(ws: Path) -> list[str]:
        (ws / name).write_bytes(data)
        return run(recipe(ws, source=f"{{name: e, path: {name}}}"))

    return build


SECOND_STAGE = """
- name: {name}
  kind: sft
  data: {{sources: [{{name: rows, path: rows.jsonl}}]}}
"""


def _train(id_: str, train: str, expect: str) -> Case:
    """A recipe whose only fault is its `train:` block."""
    return Case(id_, "recipe", lambda ws: plan(recipe(ws, train=train)), expect)


def _with_data(entry: str) -> Callable[[Path], list[str]]:
    """A recipe whose stage's `data:` block also holds ``entry``."""

    def build(ws: Path) -> list[str]:
        path = recipe(ws)
        path.write_text(path.read_text(encoding="utf-8").replace("data: {", f"data: {{{entry}, "), encoding="utf-8")
        return plan(path)

    return build


def _stage_named(name: str) -> Callable[[Path], list[str]]:
    return lambda ws: plan(recipe(ws, stage=SECOND_STAGE.format(name=json.dumps(name))))


RECIPE_CASES = [
    Case("yaml-syntax", "recipe", lambda ws: plan(_text(ws, "name: x\nstages: [\n  - a: b\n")), "invalid YAML"),
    # Bombs run only as subprocesses (bench/reliability.py; test_recipe_loader.py under a memory cap):
    # a regression must not take the test process down with it.
    Case("alias-bomb", "recipe", lambda ws: plan(_text(ws, BILLION_LAUGHS)), "aliases expand to more than",
         fast=False),
    Case("recursive-alias", "recipe", lambda ws: plan(_text(ws, "name: x\nbase_model: &a [*a]\n")), "recursive alias"),
    Case("duplicate-key", "recipe", lambda ws: plan(recipe(ws, top="seed: 1\nseed: 2")), "duplicate key 'seed' (first at line"),
    _train("duplicate-key-in-train", "max_steps: 2, max_steps: 3", "duplicate key 'max_steps'"),
    Case("not-utf8-recipe", "recipe", lambda ws: plan(_bytes(ws, b"name: caf\xe9\nstages: []\n", "recipe.yaml")),
         "recipe.yaml:1: not UTF-8 text"),
    Case("deep-nesting", "recipe", lambda ws: plan(_text(ws, "name: x\nstages: " + "[" * 20000 + "]" * 20000 + "\n")),
         "nested too deeply"),
    Case("recipe-is-a-list", "recipe", lambda ws: plan(_text(ws, "- name: x\n")), "expected a mapping"),
    Case("recipe-empty", "recipe", lambda ws: plan(_text(ws, "")), "expected a mapping"),
    Case("unknown-top-field", "recipe", lambda ws: plan(recipe(ws, top="bse_model: x")), "did you mean 'base_model'?"),
    Case("unknown-top-field-extends", "recipe", lambda ws: plan(recipe(ws, top="extend: other.yaml")),
         "extend: unknown field (not allowed here; check the spelling); did you mean 'extends'?"),
    Case("unknown-data-key", "recipe",
         _with_data("heldot: 0.1"),
         "stages[0].data.heldot (stage 'sft'): unknown field (not allowed here; check the spelling); did you mean 'heldout'?"),
    Case("unknown-source-key", "recipe",
         lambda ws: plan(recipe(ws, source="{name: r, path: rows.jsonl, thinking_mod: 'off'}")),
         "did you mean 'thinking_mode'?"),
    Case("unknown-key-in-tagged-union", "recipe",
         lambda ws: plan(recipe(ws, stage="- {name: d, kind: synthesize, prompts: {path: rows.jsonl}, "
                                           "rewards: [{type: length, unt: chars}]}\n")),
         "stages[1].rewards[0].unt (stage 'd'): unknown field (not allowed here; check the spelling); did you mean 'unit'?"),
    Case("unknown-launch-key", "recipe", lambda ws: plan(recipe(ws, launch="{use_cpu: true, num_process: 1}")),
         "did you mean 'num_processes'?"),
    Case("missing-base-model", "recipe", lambda ws: plan(_text(ws, "name: x\nstages: [{name: a, kind: bake}]\n")),
         "base_model: field required"),
    Case("recipe-name-escapes", "recipe", lambda ws: plan(recipe(ws, name='"../../escape"')), "not a safe name"),
    Case("stage-name-escapes", "recipe", _stage_named("../../escape"), "not a safe name"),
    Case("stage-name-absolute", "recipe", _stage_named("/tmp/x"), "not a safe name"),
    Case("stage-name-slash", "recipe", _stage_named("a/b"), "not a safe name"),
    Case("stage-name-hidden", "recipe", _stage_named(".hidden"), "not a safe name"),
    Case("stage-name-empty", "recipe", _stage_named(""), "not a safe name"),
    Case("stage-name-space", "recipe", _stage_named("my stage"), "not a safe name"),
    Case("stage-name-tokenizer", "recipe", _stage_named("tokenizer"), "run directory's own entries"),
    Case("stage-name-final", "recipe", _stage_named("Final"), "run directory's own entries"),
    Case("stage-name-report", "recipe", _stage_named("report"), "run directory's own entries"),
    Case("stage-name-resolved-recipe", "recipe", _stage_named("recipe.resolved.yaml"), "run directory's own entries"),
    Case("stage-name-bake-not-bake", "recipe", _stage_named("bake"), "'bake' is the folder of the bake stage"),
    Case("duplicate-stage", "recipe", _stage_named("sft"), "duplicate stage name 'sft'"),
    # stage names are folders: one folder on macOS's and Windows' file systems
    Case("stage-name-bake-other-case", "recipe", _stage_named("Bake"), "'Bake' is the folder of the bake stage"),
    Case("duplicate-stage-other-case", "recipe", _stage_named("SFT"),
         "duplicate stage name 'SFT' (also stages[0], named 'sft': stage folders may not differ only in case)"),
    Case("unknown-kind", "recipe", lambda ws: plan(recipe(ws, stage="- {name: x, kind: sfft}\n")), "did you mean 'sft'"),
    # another tool's name for a stage: tempa's kind for it
    Case("other-tools-kind", "recipe", lambda ws: plan(recipe(ws, stage="- {name: x, kind: dpo}\n")),
         "did you mean 'preference' (DPO/APO: train.loss_type)?"),
    Case("missing-kind", "recipe", lambda ws: plan(recipe(ws, stage="- {name: x}\n")), "kind (stage 'x'): field required"),
    Case("stages-not-list", "recipe", lambda ws: plan(_text(ws, "name: x\nbase_model: a/b\nstages: {a: 1}\n")),
         "stages: expected a list"),
    Case("stages-empty", "recipe", lambda ws: plan(_text(ws, "name: x\nbase_model: a/b\nstages: []\n")), "at least 1"),
    Case("from-later-stage", "recipe",
         lambda ws: plan(recipe(ws, stage="- {name: x, kind: sft, from: y, data: {sources: [{name: r, path: rows.jsonl}]}}\n")),
         "is not an earlier stage"),
    Case("source-name-escapes", "recipe", lambda ws: plan(recipe(ws, source="{name: ../rows, path: rows.jsonl}")),
         "source name '../rows' is not a safe name"),
    Case("duplicate-source", "recipe",
         lambda ws: plan(recipe(ws, source="{name: r, path: rows.jsonl}, {name: r, path: rows.jsonl}")),
         "duplicate source name"),
    Case("source-missing-file", "recipe", lambda ws: plan(recipe(ws, source="{name: r, path: nope.jsonl}")),
         "local path does not exist"),
    Case("source-extension-forgotten", "recipe",
         lambda ws: plan(recipe(_beside(ws, "data/ja_chats.jsonl"), source="{name: r, path: data/ja_chats}")),
         "did you mean './data/ja_chats.jsonl'?"),
    Case("full-width-colon", "recipe", lambda ws: plan(_text(ws, "name: x\nbase_model: a/b\nseed： 42\nstages: []\n")),
         "recipe.yaml:3: invalid YAML: line 3 holds U+FF1A FULLWIDTH COLON ('：'); write the ASCII ':'"),
    Case("source-one-letter-off", "recipe",
         lambda ws: plan(recipe(_beside(ws, "data/ja_chats.jsonl"), source="{name: r, path: ./data/ja_chat.jsonl}")),
         "did you mean './data/ja_chats.jsonl'?"),
    Case("mixed-without-ratio", "recipe",
         lambda ws: plan(recipe(ws, source="{name: r, path: rows.jsonl, thinking_mode: mixed}")), "needs thinking_ratio"),
    Case("two-sizes", "recipe", lambda ws: plan(recipe(ws, source="{name: r, path: rows.jsonl, weight: 1, rows: 3}")),
         "at most one of weight, rows, tokens"),
    Case("heldout-fraction", "recipe",
         lambda ws: plan(recipe(ws, source="{name: r, path: rows.jsonl, heldout: 1.5}")), "fraction below 1"),
    _train("unknown-train-key", "lerning_rate: 1.0e-3", "did you mean 'learning_rate'"),
    _train("reserved-train-key", "output_dir: /tmp/x", "is set by tempa"),
    _train("negative-epochs", "num_train_epochs: -1", "train.num_train_epochs (stage 'sft'): must be positive"),
    _train("zero-epochs", "num_train_epochs: 0", "must be positive"),
    _train("zero-max-steps", "max_steps: 0", "train.max_steps (stage 'sft'): must be a positive"),
    _train("negative-max-steps", "max_steps: -5", "train.max_steps (stage 'sft'): must be a positive"),
    _train("zero-batch", "max_steps: 2, per_device_train_batch_size: 0", "train.per_device_train_batch_size (stage 'sft'): must be positive"),
    _train("negative-grad-accum", "max_steps: 2, gradient_accumulation_steps: -2", "train.gradient_accumulation_steps (stage 'sft'): must be positive"),
    _train("zero-max-length", "max_steps: 2, max_length: 0", "train.max_length (stage 'sft'): must be positive"),
    _train("zero-logging-steps", "max_steps: 2, logging_steps: 0", "train.logging_steps (stage 'sft'): must be positive"),
    # a negative warmup failed in the launched process, after the model loaded, naming no field
    _train("negative-warmup", "max_steps: 2, warmup_steps: -0.5", "train.warmup_steps (stage 'sft'): must be 0 or more"),
    _train("negative-max-grad-norm", "max_steps: 2, max_grad_norm: -1", "train.max_grad_norm (stage 'sft'): must be 0 or more"),
    _train("lr-not-a-number", "learning_rate: fast", "learning_rate"),
    _train("negative-lr", "max_steps: 2, learning_rate: -3.0e-3", "train.learning_rate (stage 'sft'): must be positive"),
    _train("zero-lr", "max_steps: 2, learning_rate: 0", "train.learning_rate (stage 'sft'): must be positive"),
    _train("negative-lr-quoted", "max_steps: 2, learning_rate: '-3e-3'", "train.learning_rate (stage 'sft'): must be positive"),
    _train("unknown-scheduler", "lr_scheduler_type: cosin", "did you mean 'cosine'"),
    _train("wsd-without-kwargs", "lr_scheduler_type: warmup_stable_decay", "needs lr_scheduler_kwargs"),
    # The sft default schedule is cosine: WSD's decay length is no argument of it (TypeError at the launch, before)
    _train("scheduler-kwarg-the-default-takes-not", "lr_scheduler_kwargs: {num_decay_steps: 1}",
           "train.lr_scheduler_kwargs (stage 'sft'): the cosine schedule takes no 'num_decay_steps'; it takes: "
           "num_cycles"),
    _train("scheduler-kwarg-typo", "lr_scheduler_type: warmup_stable_decay, lr_scheduler_kwargs: {num_decay_step: 1}",
           "needs lr_scheduler_kwargs: {num_decay_steps: ...}"),
    _train("scheduler-kwarg-unknown", "lr_scheduler_type: cosine_with_min_lr, lr_scheduler_kwargs: {min_lr_rat: 0.1}",
           "the cosine_with_min_lr schedule takes no 'min_lr_rat'; it takes: num_cycles, min_lr, min_lr_rate"),
    Case("extends-cycle", "recipe", lambda ws: plan(_text(ws, "extends: recipe.yaml\nname: x\n")), "extends: cycle"),
    Case("extends-missing", "recipe", lambda ws: plan(_text(ws, "extends: nope.yaml\nname: x\n")), "recipe file not found"),
    Case("unknown-template", "recipe", lambda ws: plan(recipe(ws, top="chat_template: llama4")), "not a shipped template"),
    # it named the file and the field but no line, and spoke of a Jinja line rather than of the preamble
    Case("stock-preamble-without-one", "recipe",
         lambda ws: plan(recipe(ws, top="chat_template: chatml_thinking\nstock_preamble: true")),
         "recipe.yaml:5: stock_preamble: chat template chatml_thinking has no stock preamble to switch on"),
    Case("missing-template-file", "recipe", lambda ws: plan(recipe(ws, top="chat_template: mine.jinja")),
         "local path does not exist"),
    Case("unknown-accelerate-config", "recipe", lambda ws: plan(recipe(ws, launch="{accelerate_config: zero9}")),
         "neither a shipped config"),
    Case("zero-processes", "recipe", lambda ws: plan(recipe(ws, launch="{num_processes: 0}")),
         "launch.num_processes"),
    # the training process refused it, after the data was prepared and the model loaded
    Case("global-batch-not-dividing", "recipe",
         lambda ws: plan(recipe(ws, launch="{accelerate_config: single, global_batch_size: 7}")),
         "recipe.yaml:3: launch.global_batch_size: 7 is not a multiple of per_device_train_batch_size 4 x 1"),
    # every point of a layer gradient is a t some layer gets
    Case("slerp-t-gradient-outside-0-1", "recipe",
         lambda ws: plan(recipe(ws, stage=_merge_stage("slerp", "{t: [0, 0.5, 1.2]}"))),
         "recipe.yaml:14: stages[1].parameters.t (stage 'merge-slerp'): [0, 0.5, 1.2] has 1.2 outside [0, 1]"),
    # mergekit refuses density + epsilon >= 1 only when it merges, after the training before the merge
    Case("della-epsilon-past-density", "recipe",
         lambda ws: plan(recipe(ws, stage=_merge_stage("della", "{epsilon: 0.2}", "  density: 0.9\n"))),
         "recipe.yaml:14: stages[1].parameters.epsilon (stage 'merge-della'): 0.2 with density 0.9 keeps each element "
         "with a probability from 0.7 to 1.1"),
    Case("della-density-past-default-epsilon", "recipe",
         lambda ws: plan(recipe(ws, stage=_merge_stage("della", "{}", "  density: [0.5, 0.1]\n"))),
         "recipe.yaml:15: stages[1].density (stage 'merge-della'): 0.1 with della's default epsilon 0.15"),
]

MODEL_CASES = [
    Case("base-empty-folder", "model", lambda ws: (ws / "base").mkdir() or plan(recipe(ws, base_model="base")),
         "is an empty folder"),
    Case("base-pickle-only", "model",
         lambda ws: plan(recipe(ws, base_model=str(_model_folder(ws, weights="pytorch_model.bin")))),
         "holds its weights only as pickles (pytorch_model.bin)"),
    Case("base-pt-only", "model", lambda ws: plan(recipe(ws, base_model=str(_model_folder(ws, weights="model.pt")))),
         "save_pretrained"),
    # A teacher or reward model folder was checked only when its stage loaded it, after the stages before it trained
    Case("teacher-pickle-only", "model",
         lambda ws: plan(recipe(ws, stage=f"- {{name: d, kind: synthesize, prompts: {{path: rows.jsonl}}, rewards: [{{type: length}}], "
                                           f"teacher: {{type: transformers, model: {_model_folder(ws, weights='pytorch_model.bin')}}}}}\n")),
         "/base holds its weights only as pickles (pytorch_model.bin)"),
    Case("reward-model-no-config", "model",
         lambda ws: plan(recipe(ws, stage=f"- {{name: d, kind: synthesize, prompts: {{path: rows.jsonl}}, rewards: "
                                           f"[{{type: reward_model, model: {_model_folder(ws, config=False)}}}]}}\n")),
         "has no config.json: not a model folder"),
    Case("base-no-config", "model", lambda ws: plan(recipe(ws, base_model=str(_model_folder(ws, config=False)))),
         "has no config.json"),
    Case("base-no-weights", "model", lambda ws: plan(recipe(ws, base_model=str(_model_folder(ws, weights=None)))),
         "has no *.safetensors weights"),
    Case("base-no-tokenizer", "model", lambda ws: plan(recipe(ws, base_model=str(_model_folder(ws, tokenizer=False)))),
         "has no tokenizer"),
    Case("base-is-a-file", "model", lambda ws: plan(recipe(ws, base_model=str(write_rows(ws / "model.txt")))),
         "is not a folder"),
    Case("base-tempa-typo", "model", lambda ws: plan(recipe(ws, base_model='"tempa:tiy"')),
         "recipe.yaml:2: base_model: unknown tempa model 'tempa:tiy' (known: tempa:tiny); did you mean 'tempa:tiny'?"),
    Case("base-not-a-hub-id", "model", lambda ws: plan(recipe(ws, base_model='"my model"')),
         "base_model: 'my model' is no existing local folder, no tempa model (tempa:tiny) and no valid hub id"),
    Case("base-missing-nested-folder", "model", lambda ws: plan(recipe(ws, base_model="models/org/name")),
         "base_model: 'models/org/name' is no existing local folder"),
    Case("base-hub-id-offline", "model", lambda ws: run(recipe(ws, base_model="tempa-test/no-such-model")),
         "base_model 'tempa-test/no-such-model': not in the local Hugging Face cache, and HF_HUB_OFFLINE=1"),
]

CLI_CASES = [
    Case("run-dir-holds-user-files", "cli", lambda ws: ["run", str(recipe(ws)), "--run-dir", str(ws)],
         "not a tempa run directory (no recipe.resolved.yaml); choose a new or empty --run-dir"),
    Case("run-dir-is-a-file", "cli", lambda ws: ["run", str(recipe(ws)), "--run-dir", str(ws / "rows.jsonl")],
         "--run-dir is a file"),
    Case("status-not-a-run-dir", "cli", lambda ws: ["status", str(ws)], "not a tempa run directory"),
    Case("report-not-a-run-dir", "cli", lambda ws: ["report", str(ws)], "not a tempa run directory"),
    Case("status-no-such-dir", "cli", lambda ws: ["status", str(ws / "runs" / "nope")], "nope: no such run directory"),
    Case("report-no-such-dir", "cli", lambda ws: ["report", str(ws / "runs" / "nope")], "nope: no such run directory"),
    Case("status-recipe-not-run", "cli", lambda ws: ["status", str(recipe(ws))],
         "the recipe's default run directory runs/bad does not exist"),
    Case("recipe-not-found", "cli", lambda ws: ["plan", str(ws / "nope.yaml")], "recipe file not found"),
    Case("recipe-yml-for-yaml", "cli", lambda ws: ["plan", "mine.yml"] if recipe(ws, file="mine.yaml") else [],
         "mine.yml: recipe file not found; did you mean 'mine.yaml'?"),
    Case("extends-yml-for-yaml", "recipe",
         lambda ws: plan(_text(ws, "extends: base.yml\nname: x\n")) if recipe(ws, file="base.yaml") else [],
         "extends: base.yml: recipe file not found; did you mean 'base.yaml'?"),
    Case("mfu-without-hardware", "cli", lambda ws: plan(recipe(ws), "--mfu", "0.5"), "needs --hardware"),
    Case("from-unknown-stage", "cli", lambda ws: plan(recipe(ws), "--from", "nope"), "no stage named 'nope'"),
    Case("set-without-equals", "cli", lambda ws: plan(recipe(ws), "--set", "seed"), "expected KEY.PATH=VALUE"),
    Case("set-unknown-stage", "cli", lambda ws: plan(recipe(ws), "--set", "stages.nope.train.max_steps=1"),
         "no stage named 'nope'"),
    Case("set-bad-yaml", "cli", lambda ws: plan(recipe(ws), "--set", "seed=[1"), "value is not valid YAML"),
    Case("set-alias-bomb", "cli", lambda ws: plan(recipe(ws), "--set", "seed=" + _flow_bomb()),
         "aliases expand to more than", fast=False),
    Case("set-negative-epochs", "cli", lambda ws: plan(recipe(ws, train="learning_rate: 1.0e-3"),
                                                        "--set", "stages.sft.train.num_train_epochs=-1"),
         "--set stages.sft.train.num_train_epochs=-1"),
    # mergekit's slerp extrapolates past the second model at t > 1: refused at load as interpolation's range
    Case("set-slerp-t-outside-0-1", "cli", lambda ws: plan(recipe(ws, stage=_merge_stage("slerp", "{t: 0.5}")),
                                                           "--set", "stages.merge-slerp.parameters.t=1.5"),
         "--set stages.merge-slerp.parameters.t=1.5: stages[1].parameters.t (stage 'merge-slerp'): 1.5 is outside "
         "[0, 1]: slerp interpolates"),
    Case("unknown-profile", "cli", lambda ws: plan(recipe(ws), "--profile", "huge"), "no such profile"),
    Case("tiny-model-onto-a-file", "cli", lambda ws: ["tiny-model", str(write_rows(ws / "x.jsonl"))], "is a file"),
]

ROW_CASES = [
    # A source with no rows is refused before the run's first stage (and by `tempa plan`), of any stage.
    Case("rows-empty-file", "rows", _rows_file("empty.jsonl", b""), "empty.jsonl: empty file"),
    Case("rows-only-blank-lines", "rows", _rows_file("blank.jsonl", b"\n  \n\n"), "blank.jsonl: empty file"),
    Case("rows-bom-only", "rows", _rows_file("bom.jsonl", b"\xef\xbb\xbf\n"), "bom.jsonl: empty file"),
    Case("rows-empty-file-of-a-later-stage", "rows",
         lambda ws: (ws / "more.jsonl").write_text("\n") and run(recipe(ws, stage=SECOND_STAGE.format(name="sft2")
                                                                      .replace("rows.jsonl", "more.jsonl"))),
         "stage 'sft2' would fail: data source 'rows': "),
    Case("rows-all-invalid-utf8", "rows",
         _rows_file("latin1.jsonl", b'{"prompt": "caf\xe9", "response": "ok"}\n' * 4),
         "latin1.jsonl): line 1: not UTF-8 text (byte 0xe9"),  # refused before the first stage
    Case("rows-all-invalid-json", "rows", _rows_file("broken.jsonl", b'{"messages": [\n' * 3),
         "line 1: not valid JSON", fast=False),
    Case("rows-json-file-invalid", "rows", _rows_file("rows.json", b"[{"), "rows.json:1: not valid JSON", fast=False),
    Case("rows-json-file-empty", "rows", _rows_file("rows.json", b"  \n"), "rows.json: empty file"),
    Case("rows-no-assistant", "rows",
         _rows_file("users.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode() + b"\n"),
         "does not end with an assistant turn", fast=False),
]

CASES = RECIPE_CASES + MODEL_CASES + CLI_CASES + ROW_CASES
