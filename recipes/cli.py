"""`tempa`: run, plan and inspect recipes; build the tiny default; work with chat templates."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from tempa.chat_templates.one_line import typed_line
from tempa.recipes import __version__
from tempa.recipes.errors import RecipeError
from tempa.sft.run_layout import FINAL_LINK, RESOLVED_RECIPE, default_run_dir
from tempa.sft.stage_api import StageError, format_metric

EPILOG = """examples:
  tempa run recipes/demo.yaml --run-dir runs/demo       run (or resume) the demo recipe
  tempa plan recipes/demo.yaml                          show stages, what will be skipped or re-run, and why
  tempa run demo --set stages.sft-general.train.learning_rate=2e-5
  tempa run demo --from sft-reasoning                   re-run one stage and everything after it
  tempa status runs/demo                                each stage's state, time and key metrics (or: tempa status demo)
  tempa tiny-model /tmp/tiny [--tokenizer llama3]      build the embedded tiny model + tokenizer
  tempa template check --tokenizer runs/demo/final      verify the chat template invariants
  tempa export gguf runs/demo/final --type q8_0         GGUF + Ollama Modelfile
  tempa report runs/demo                                HTML report: loss/reward curves, leaderboard
  tempa push runs/demo --repo ORG/NAME --dry-run        list what would go to the Hugging Face Hub
  tempa schema > tempa-recipe.schema.json               JSON Schema of a recipe, for editors (--markdown: the reference)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tempa",
        description="Post-training from one YAML recipe: SFT, preference alignment, evaluation, merging, "
        "and a final model whose chat template has a thinking_mode on/off toggle.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tempa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run_dir_help = ("the folder `tempa run` wrote (runs/<recipe name> under the folder it ran in, "
                    "runs/<recipe name>-<profile> with --profile, unless --run-dir), "
                    "or the recipe as `tempa run` took it (a path or a shipped recipe's name) for that default folder")

    def recipe_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("recipe", help="recipe YAML path, or the name of a shipped recipe (e.g. demo)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key, e.g. stages.sft.train.learning_rate=2e-5 (repeatable)")
        p.add_argument("--profile", default=None,
                       help="apply the recipe's `profiles: NAME` overlay (e.g. tiny: the same pipeline at toy scale)")
        p.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/<recipe name> under the current folder, "
                       "runs/<recipe name>-<profile> with --profile)")
        group = p.add_mutually_exclusive_group()
        group.add_argument("--from", dest="from_stage", metavar="STAGE",
                           help="force STAGE and every later stage to run again")
        group.add_argument("--only", metavar="STAGE", help="force only STAGE to run (its inputs must be complete)")

    run = sub.add_parser("run", help="run a recipe (resumes an interrupted run)")
    recipe_args(run)
    run.add_argument("--machine-rank", type=int, default=0, metavar="N",
                     help="multi-node (launch.num_machines > 1): this node's rank; nodes 1.. only join node 0's "
                     "training launches (same recipe, same --run-dir on shared storage)")
    run.set_defaults(func=_cmd_run)

    plan = sub.add_parser("plan", help="show the resolved recipe and what a run would do; does no work")
    recipe_args(plan)
    plan.add_argument("--hardware", default=None, metavar="NxGPU",
                      help="also estimate tokens, steps, per-GPU memory (under the launch's engine) and hours, e.g. "
                           "8xH100; GPU: H100, H200, A100, A100-40GB or L40S; 2x8xH100 for nodes x GPUs, @1TiB for the "
                           "host RAM per node")
    plan.add_argument("--mfu", type=float, default=None,
                      help="model FLOPs utilisation assumed by --hardware (default 0.4)")
    plan.set_defaults(func=_cmd_plan)

    status = sub.add_parser("status", help="each stage's state, time and key metrics")
    status.add_argument("run_dir", type=Path, help=run_dir_help)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    tiny = sub.add_parser("tiny-model", help="build the embedded tiny Llama model + tokenizer into OUT_DIR")
    tiny.add_argument("out_dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--tokenizer", choices=("tiny", "llama3"), default="tiny",
                      help="tiny: a 1,024-token BPE trained on the sample data; llama3: Meta's real Llama 3 "
                      "tokenizer (128,256 tokens, offline, from the llama-models package)")
    tiny.set_defaults(func=_cmd_tiny)

    schema = sub.add_parser("schema", help="print the recipe JSON Schema (for editors), or the Markdown reference")
    schema.add_argument("--markdown", action="store_true",
                        help="the recipe reference as Markdown (what docs/recipe-reference.md holds)")
    schema.set_defaults(func=_cmd_schema)

    report = sub.add_parser("report", help="write RUN_DIR/report/index.html: curves, leaderboard, merge, template")
    report.add_argument("run_dir", type=Path, help=run_dir_help)
    report.add_argument("--no-samples", action="store_true",
                        help="leave out the sample generations (each stage's model answering tempa's example "
                             "question in each of the recipe's languages, its model card's `languages`; for a recipe "
                             "with none tempa has one for, three fixed prompts, in Indonesian, Thai and English)")
    report.set_defaults(func=_cmd_report)

    push = sub.add_parser("push", help="upload a finished run's final model to the Hugging Face Hub")
    push.add_argument("run_dir", type=Path, help=run_dir_help)
    push.add_argument("--repo", required=True, metavar="ORG/NAME", help="the model repo (created if missing)")
    push.add_argument("--gguf", action="store_true", help="also upload the GGUF files and their Ollama Modelfiles (NAME-TYPE.Modelfile)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--message", default=None, help="commit message")
    push.add_argument("--dry-run", action="store_true", help="list the files that would go up; upload nothing")
    push.set_defaults(func=_cmd_push)

    export = sub.add_parser("export", help="export a final model to another format")
    from tempa.merge.gguf_export import GGUF_TYPES, LLAMA_CPP_QUANTS, WRITTEN_TYPES

    export_sub = export.add_subparsers(dest="format", metavar="FORMAT", required=True)
    gguf = export_sub.add_parser("gguf", help="GGUF (llama.cpp, Ollama) with the chat template + an Ollama Modelfile")
    gguf.add_argument("model_dir", type=Path, help="a final model folder, e.g. runs/demo/final, a run folder or a "
                      "recipe (its run's final model), or a .gguf file to quantise, e.g. from llama.cpp's "
                      "convert_hf_to_gguf.py")
    gguf.add_argument("--type", dest="file_type", default=None, metavar="TYPE", choices=GGUF_TYPES,
                      help=f"{' | '.join(WRITTEN_TYPES)} (written by tempa) | {' '.join(LLAMA_CPP_QUANTS)} "
                      "(llama.cpp's own quantiser; needs the serving extra); default: f16 for a model folder; a "
                      ".gguf input needs one of the quantiser's types, q8_0 included")
    gguf.add_argument("--out", type=Path, default=None, help="output .gguf path (default: inside MODEL_DIR); its Modelfile goes beside it, named after it")
    gguf.set_defaults(func=_cmd_export_gguf)

    try:
        from tempa.chat_templates.cli import register
    except ImportError:  # template tools not installed in this build
        pass
    else:
        register(sub, read_row=_as_training_row)
    _verbose_everywhere(parser)
    return parser


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """`-v` after the command too (`tempa plan demo -v`), as errors ask for it ("run with -v"): every subcommand takes
    it, leaving the top-level value alone when not given (SUPPRESS)."""
    for action in parser._actions:  # argparse keeps subcommands there only
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                     help="debug logging, and an unexpected error's traceback")
                _verbose_everywhere(command)


def _as_training_row(messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list[dict] | None]:
    """A conversation file as the SFT reader reads a row (`template render --tokens`); ValueError names the problem."""
    from tempa.sft.formats import FormatSpec, normalize_row

    conversation = normalize_row({"messages": messages, "tools": tools}, FormatSpec("messages"))
    return conversation.messages, conversation.tools


def _run_dir(args, loaded) -> Path:
    from tempa.recipes.runner import profiles_ran

    if args.run_dir is not None:
        return args.run_dir
    try:
        folder = default_run_dir(loaded.recipe.name, loaded.profile)
    except ValueError as exc:
        raise RecipeError(f"{exc}; give --run-dir") from None
    plain = default_run_dir(loaded.recipe.name)
    if loaded.profile is not None and not folder.exists() and loaded.profile in profiles_ran(plain):
        # started before a run with a profile had a default folder of its own: its stages are not run again
        print(f"tempa: {plain} holds this recipe's --profile {loaded.profile} run (started before such runs went to "
              f"{folder}): going on with it there", file=sys.stderr)
        folder = plain
    other = _default_folder_of_another(folder, loaded.recipe.name)
    if other is not None:
        # recipe "a" with --profile "b" and recipe "a-b" share a default folder; one would re-run the other's stages
        raise RecipeError(f"{folder}: the default run directory holds the run of recipe {other}, not of "
                          f"'{loaded.recipe.name}'; give --run-dir (a new folder, or that one to run this recipe "
                          "there on purpose)")
    return folder


def _default_folder_of_another(folder: Path, name: str) -> str | None:
    """The recipe (and --profile) whose own default run directory ``folder`` is, when that is another recipe than
    ``name``: its runs/<name>-<profile> is ``name``'s runs/<name> too. A folder that another recipe only ran in on
    purpose (`--run-dir`: a child recipe going on in its parent's folder) stays its owner's."""
    from tempa.recipes.rundir import recipe_ran
    from tempa.recipes.runner import profiles_ran

    other = recipe_ran(folder)
    if other is None or other == name:
        return None
    for profile in sorted(profiles_ran(folder)):
        try:
            if default_run_dir(other, profile or None) == folder:
                return f"'{other}'" + (f" --profile {profile}" if profile else "")
        except ValueError:
            continue
    return None


def given_run_dir(given: Path) -> Path:
    """The run a command that reads one (status, report, push, export) is given, in the forms `tempa run` takes: the
    run's folder, or the recipe (a path or a shipped recipe's name) for its default folder: runs/<recipe name>, or
    runs/<recipe name>-<profile> where only the run of that profile is there."""
    from tempa.recipes.loader import recipe_name, recipe_profiles
    from tempa.recipes.rundir import NotARunDirError

    if given.is_dir():
        return given
    recipe = _recipe_at(given)
    if recipe is None:
        if given.exists():
            return given  # a file: the command says it is no run directory
        raise NotARunDirError(f"{given}: no such run directory, and no recipe of that name; give the folder `tempa run` "
                              "wrote (runs/<recipe name>, or runs/<recipe name>-<profile>, unless --run-dir) or "
                              "the recipe it ran")
    name = recipe_name(recipe)
    folders = [default_run_dir(name)]
    for profile in recipe_profiles(recipe):
        try:
            folders.append(default_run_dir(name, profile))
        except ValueError:
            continue  # a profile whose runs need a --run-dir of their own
    there = [folder for folder in folders if folder.is_dir()]
    others = {folder: other for folder in there if (other := _default_folder_of_another(folder, name)) is not None}
    if others and len(others) == len(there):
        held = ", ".join(f"{folder} holds the run of recipe {other}" for folder, other in others.items())
        raise NotARunDirError(f"{given}: {held}, not of '{name}'; give the --run-dir this recipe ran with")
    there = [folder for folder in there if folder not in others]
    if len(there) == 1:
        return there[0]
    if there:
        raise NotARunDirError(f"{given}: the recipe has runs in {', '.join(map(str, there))} (one per --profile "
                              "it ran with); give the folder of the one you mean")
    others = f", nor do its --profile ones ({', '.join(map(str, folders[1:]))})" if folders[1:] else ""
    raise NotARunDirError(f"{given}: the recipe's default run directory {folders[0]} does not exist under "
                          f"{Path.cwd()}{others}; give the --run-dir it ran with, or run it first (tempa run {given})")


def _recipe_at(given: Path) -> Path | None:
    """The recipe ``given`` names (a .yaml path, or a shipped recipe's name), or None."""
    from tempa.recipes.loader import find_recipe

    if given.exists() and given.suffix not in (".yaml", ".yml"):
        return None
    try:
        return find_recipe(given)
    except RecipeError:
        return None


def _cmd_run(args) -> int:
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import run_recipe

    loaded = load_recipe(args.recipe, args.overrides, profile=args.profile)
    run_dir = _run_dir(args, loaded)
    if args.machine_rank:
        return _join(args, loaded, run_dir)
    summary = run_recipe(loaded, run_dir, from_stage=args.from_stage, only=args.only)
    print(f"run complete: {summary.run_dir}")
    print(f"  ran: {', '.join(summary.ran) or '-'}; skipped: {', '.join(summary.skipped) or '-'}"
          + (f"; not run (--only {args.only}): {', '.join(summary.not_run)}" if summary.not_run else ""))
    if summary.stale:
        print(f"  stale: {', '.join(summary.stale)} (built on a stage --only re-ran; the final model is out of date "
              "until a plain `tempa run` re-runs them)")
    if summary.final_model is not None:
        origin = f" ({summary.final_origin})" if summary.final_origin else ""
        # after --only, the final model may be built on the stage's earlier run: say so where it is named
        dated = " (out of date: stale, see above)" if summary.stale else ""
        print(f"  final model{dated}: {summary.final_model}{origin}")
    for note in summary.notes:
        print(f"  note: {note}")
    print(f"  next: tempa status {summary.run_dir} (each stage), tempa report {summary.run_dir} (one page)")
    return 0


def _join(args, loaded, run_dir: Path) -> int:
    import logging

    from tempa.recipes.launcher import join_log_dir, join_run

    log_dir = join_log_dir(run_dir, loaded.recipe.name, args.machine_rank)
    joined = join_run(loaded.recipe.launch, run_dir.resolve(), args.machine_rank, log_dir,
                      log=logging.getLogger("tempa"))
    print(f"node {args.machine_rank}: joined {joined} training launch(es) of {run_dir}; logs: {log_dir}")
    return 0


def _starts_from(decision, decisions) -> str:
    """The model a stage starts from: its upstream's, followed through stages that make no model."""
    from tempa.recipes.registry import stage_kind
    from tempa.sft.stage_api import Artifact

    by_name = {d.name: d for d in decisions}
    if not stage_kind(decision.kind).reads_start_model:
        return "its models"  # a merge opens what it lists or selects, never a model it starts from
    name, via = decision.upstream, []
    while name is not None and Artifact.MODEL not in stage_kind(by_name[name].kind).produces:
        via.append(name)
        name = by_name[name].upstream
    model = f"{name}'s model" if name is not None else "base model"
    return f"{model} (via {', '.join(via)})" if via else model


def _cmd_plan(args) -> int:
    import yaml
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import (
        check_discards,
        check_profile,
        check_stage_inputs,
        decontamination_lines,
        environment_problems,
        input_warnings,
        other_recipe_warning,
        plan_run,
        train_args_shown,
    )

    if args.mfu is not None and not args.hardware:
        raise RecipeError(f"--mfu {args.mfu:g} needs --hardware (e.g. --hardware 8xH100): it sets the estimate's MFU")
    if args.hardware:  # a bad value is refused before the plan prints, not after
        from tempa.recipes.estimate import check_mfu, parse_hardware

        parse_hardware(args.hardware)
        if args.mfu is not None:
            check_mfu(args.mfu)
    from tempa.recipes.rundir import check_run_dir, run_in_progress

    loaded = load_recipe(args.recipe, args.overrides, profile=args.profile)
    run_dir = _run_dir(args, loaded)
    check_run_dir(run_dir)  # what `tempa run` would refuse, plan refuses too
    check_profile(loaded, run_dir)  # first, as the run: every stage reads as changed under another profile
    decisions = plan_run(loaded, run_dir, from_stage=args.from_stage, only=args.only,
                         running_elsewhere=run_in_progress(run_dir))
    check_stage_inputs(loaded, decisions)  # what the run would refuse before its first stage
    _check_base_tokenizer(loaded)
    console = _console()
    console.print(f"[bold]recipe[/bold] {escape(str(loaded.path))}" + (
        f" (extends {escape(', '.join(str(f) for f in loaded.files[:-1]))})" if len(loaded.files) > 1 else ""))
    console.print(f"[bold]run dir[/bold] {escape(str(run_dir.resolve()))}")
    console.print("[bold]resolved recipe[/bold]")
    console.print(yaml.safe_dump(loaded.resolved(compact=True), sort_keys=False, allow_unicode=True), markup=False)
    table = Table(title="stages, in run order")
    for column in ("#", "stage", "kind", "starts from", "action", "why", "fingerprint"):
        table.add_column(column)
    for d in decisions:
        table.add_row(*map(Text, (str(d.index + 1), d.name, d.kind, _starts_from(d, decisions), d.action, d.reason,
                                  d.fingerprint[:12])))
    console.print(table)
    _print_train_args(console, train_args_shown(loaded, decisions, run_dir), loaded.recipe.launch)
    for line in decontamination_lines(loaded):
        console.print(f"[bold]evaluation prompts[/bold] {escape(line)}", highlight=False)
    for line in _api_request_lines(loaded, decisions):
        console.print(f"[bold]API requests[/bold] {escape(line)}", highlight=False)
    from tempa.merge.bake import planned_thinking_default_warning

    warnings = environment_problems(loaded, decisions, here=not args.hardware)  # `tempa run` in this shell refuses these
    warnings += filter(None, [planned_thinking_default_warning(loaded.recipe.thinking_default, loaded.stages)])
    warnings += input_warnings(loaded, decisions)
    warnings += loaded.path_warnings
    warnings += filter(None, [other_recipe_warning(loaded, run_dir)])
    from tempa.merge.merge_config import selection_notes

    # what the merge's selection needs that only the run can tell (a complete evaluate stage has told it)
    warnings += selection_notes(loaded.stages, scored_candidates(decisions, run_dir))
    if not args.hardware:  # the estimate checks the schedule against the steps it counts
        warnings += _schedule_warnings(loaded, decisions)
    for problem in warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(problem)}", markup=True, highlight=False)
    if args.hardware:
        from tempa.recipes.estimate import render_estimate

        mfu = 0.4 if args.mfu is None else args.mfu
        console.print(render_estimate(loaded, args.hardware, mfu, run_dir=run_dir), markup=False)
    check_discards(decisions)  # what the run refuses before any work, once the table shows what changed where
    return 0


def _api_request_lines(loaded, decisions) -> list[str]:
    """What each stage the run will work on asks of its HTTP servers (a paid API bills them), per its kind."""
    from tempa.recipes.registry import stage_kind

    lines = []
    for d in decisions:
        requests = stage_kind(d.kind).api_requests
        if d.action != "skip" and requests is not None:
            lines += [f"stage '{d.name}': {line}" for line in requests(loaded.stage(d.name))]
    return lines


def _check_base_tokenizer(loaded) -> None:
    """What the run's first step refuses of a local base model, the plan refuses: baking the template into its
    tokenizer needs a pad token, and one the tokenizer lacks needs a spare embedding row (a self-trained
    tokenizer, sized exactly to the model, has none). The tiny default has one; a hub model is not read here."""
    from tempa.chat_templates.baking import plan_pad
    from tempa.chat_templates.one_line import first_line
    from tempa.recipes.runner import template_text

    base = Path(loaded.recipe.base_model)
    if not base.is_dir():
        return
    from transformers import AutoTokenizer

    try:
        plan_pad(AutoTokenizer.from_pretrained(base), template_text(loaded), base, model_dir=base)
    except ValueError as exc:
        raise StageError(f"base_model: `tempa run` would stop before its first stage: {first_line(exc)}") from None


def _schedule_warnings(loaded, decisions) -> list[str]:
    """A learning-rate schedule that does not fit a stage's ``max_steps`` (the steps it trains, known without an
    estimate): the run warned of it at its start, a plain `tempa plan` did not. A stage the run skips trains nothing:
    its arguments now (this tempa's defaults, say) are not the ones it trained with."""
    from tempa.recipes.registry import stage_kind
    from tempa.sft.train_args import schedule_problem

    out = []
    for d in decisions:
        config = loaded.stages[d.index]
        if d.action != "skip" and stage_kind(config.kind).trains:
            train = config.train_args()
            steps = int(train.get("max_steps") or -1)
            if steps > 0 and (problem := schedule_problem(train, steps)) is not None:
                out.append(f"stage '{config.name}' (max_steps {steps}): {problem}")
    return out


def scored_candidates(decisions, run_dir: Path) -> dict[str, int]:
    """How many candidates each evaluate stage the run keeps as complete scored, from its typed result."""
    from pydantic import ValidationError

    from tempa.merge.leaderboard import EvaluateResult
    from tempa.recipes.rundir import read_manifest

    scored = {}
    for decision in decisions:
        if decision.action != "skip" or decision.kind != "evaluate":
            continue
        manifest = read_manifest(run_dir / decision.name)
        if manifest is not None and manifest.result is not None:
            with contextlib.suppress(ValidationError):  # an unreadable record: the plan says what only the run can tell
                result = EvaluateResult.model_validate(manifest.result, context={"run_dir": run_dir})
                scored[decision.name] = len(result.leaderboard.rows)
    return scored


def _print_train_args(console, shown, launch) -> None:
    """Each training stage's trainer arguments (:func:`train_args_shown`): the recipe's `train:` over tempa's
    defaults, as the recipe's ``launch`` trains with them (its global batch sets the gradient accumulation), or the
    ones a complete stage trained with."""
    from rich.markup import escape

    from tempa.sft.stage_api import marked_train_args

    for stage in shown:
        given, own, batch = stage.args, stage.own, None
        if stage.source != "ran":
            given, batch = _launched_train_args(given, launch)
            own = own | {"gradient_accumulation_steps"} if launch.global_batch_size is not None else own
        args = marked_train_args(given, own)
        said = {"now": "* tempa's default", "ran": "as it trained; * tempa's default then",
                "unrecorded": "as this tempa gives them: the tempa that trained it did not record its own; * tempa's "
                "default"}[stage.source]
        console.print(f"[bold]training arguments of {stage.stage}[/bold] ({said}): {escape(args)}")
        if batch:
            console.print(f"[bold]global batch[/bold] {escape(stage.stage)}: {escape(batch)}", highlight=False)
        if stage.new_defaults:
            changed = ", ".join(f"{key} {_arg(ran)} → {_arg(now)}" for key, (ran, now) in stage.new_defaults.items())
            console.print(f"[bold]note:[/bold] this tempa's defaults for {escape(stage.stage)} differ from the ones it "
                          f"trained with: {escape(changed)}; defaults are no part of a fingerprint, so it stays "
                          f"complete: `tempa run --from {escape(stage.stage)}` trains it (and the stages after it) "
                          "with these", highlight=False)


def _launched_train_args(train: dict[str, Any], launch) -> tuple[dict[str, Any], str | None]:
    """``train`` as ``launch`` trains with it, and how its global batch sets the gradient accumulation (None without
    one). The recipe's load refused a global batch the launch's processes cannot make; where accelerate decides
    their count, only the training processes know it, and check it as they start."""
    from tempa.sft.global_batch import data_parallel, launch_train_args, per_device_batch

    batch, processes = launch.global_batch_size, launch.processes()
    if batch is None:
        return train, None
    per_device = per_device_batch(train)
    if processes is None:  # no value to show: the train block's would read as the one it trains with
        unknown = {key: value for key, value in train.items() if key != "gradient_accumulation_steps"}
        return unknown, (f"gradient_accumulation_steps is set as training starts, to launch.global_batch_size {batch} / "
                       f"({per_device} per device x the data-parallel processes accelerate starts); the training "
                       "processes stop at once if those do not divide it")
    ranks = data_parallel(processes, launch.sequence_parallel)
    launched = launch_train_args(train, batch, processes, launch.sequence_parallel)
    return launched, (f"gradient_accumulation_steps {launched['gradient_accumulation_steps']} = "
                      f"launch.global_batch_size {batch} / ({per_device} per device x {ranks} data-parallel "
                      f"process{'es' if ranks != 1 else ''})")


def _arg(value) -> str:
    return "unset" if value is None else json.dumps(value, default=str)


def _cmd_status(args) -> int:
    from rich.table import Table
    from rich.text import Text

    from tempa.recipes.rundir import require_run_dir

    run_dir = given_run_dir(args.run_dir)
    require_run_dir(run_dir)
    from tempa.recipes.push import run_status

    rows = run_status(run_dir)
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in rows], indent=2, default=str))
        return 0
    table = Table(title=f"run {run_dir}")
    for column in ("stage", "kind", "state", "time", "key metrics"):
        table.add_column(column)
    for row in rows:
        seconds = row.duration_s
        shown = dict(list(row.metrics.items())[:5])
        # What a stage paid for is a key figure wherever its metrics put it (a synthesize stage's come last).
        shown |= {key: row.metrics[key] for key in ("api_requests",) if key in row.metrics}
        metrics = ", ".join(f"{k}={format_metric(v)}" for k, v in shown.items() if v is not None)
        if row.error:  # what failed first, then what a re-run keeps of it
            metrics = "; ".join(filter(None, [f"error: {row.error}", row.note]))
        elif row.note:
            metrics = f"{row.note}; {metrics}" if metrics else row.note
        # Text, not markup: an error quotes "[enforce fail at ...]" or "[/__w/pytorch/...]" (a MarkupError)
        table.add_row(*map(Text, (row.name, row.kind, row.state, f"{seconds:.1f}s" if seconds else "-", metrics)))
    _console().print(table)
    return 0


def _console():
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # piped or logged: do not squeeze tables into 80 columns
        console = Console(highlight=False, soft_wrap=True, width=160)
    return console


def _cmd_schema(args) -> int:
    from tempa.recipes import reference

    print(reference.markdown() if args.markdown else json.dumps(reference.json_schema(), indent=2), end="\n"
          if not args.markdown else "")
    return 0


def _cmd_report(args) -> int:
    from tempa.recipes.report import write_report

    print(f"wrote {write_report(given_run_dir(args.run_dir), samples=not args.no_samples)}")
    return 0


def _cmd_push(args) -> int:
    from tempa.recipes.push import push

    files, url = push(given_run_dir(args.run_dir), args.repo, include_gguf=args.gguf, private=args.private,
                      dry_run=args.dry_run, message=args.message)
    for f in files:
        print(f"  {f.path_in_repo}  ({f.size:,} bytes)")
    total = sum(f.size for f in files)
    if url is None:
        print(f"dry run: {len(files)} files, {total:,} bytes would go to {args.repo}")
    else:
        print(f"pushed {len(files)} files, {total:,} bytes: {url}")
    return 0


def _cmd_export_gguf(args) -> int:
    from tempa.merge.gguf_export import LLAMA_SERVER_NOTE, export_gguf

    model = _given_model(args.model_dir)
    try:
        result = export_gguf(model, args.out, file_type=args.file_type)
    except (OSError, StageError) as exc:
        from tempa.recipes.runner import disk_full_hint

        # gguf's writer says a full disk as a short write ("65536 requested and 36816 written"), naming neither
        hint = disk_full_hint([args.out.parent if args.out else model if model.is_dir() else model.parent])
        if not hint:
            raise
        raise StageError(f"{typed_line(exc) if isinstance(exc, OSError) else exc}{hint}") from None
    types = f"; by type: {', '.join(f'{k} {v}' for k, v in sorted(result.tensor_types.items()))}" \
        if result.tensor_types else ""
    print(f"wrote {result.gguf_path} ({result.tensor_count} tensors, {result.file_type}{types})")
    if result.tempa_template:  # the note is about tempa's thinking_mode switch; another template has none
        print(LLAMA_SERVER_NOTE)
    if result.modelfile_path is not None:
        print(f"wrote {result.modelfile_path} (ollama create {ollama_name(model)} -f "
              f"{shlex.quote(str(result.modelfile_path))})")
    return 0


def ollama_name(model: Path) -> str:
    """A name for ``ollama create`` that the printed command can be pasted with: the model's own (the GGUF's
    ``general.name``; a .gguf input's file name), in the letters Ollama's model names take."""
    from tempa.merge.gguf_export import export_name

    if model.suffix == ".gguf":
        import gguf

        field = gguf.GGUFReader(str(model)).get_field(gguf.Keys.General.NAME)
        name = field.contents() if field is not None else model.stem
    else:
        name = export_name(model)
    return re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.") or "NAME"


def _given_model(given: Path) -> Path:
    """A model folder or .gguf file as given; a run (its folder, or the recipe) for the run's final model, with a
    warning on stderr when the run's stages are not all complete and current (`tempa push` refuses such a run)."""
    if (given / RESOLVED_RECIPE).is_file() or _recipe_at(given) is not None:
        run_dir = given_run_dir(given)
    elif given.name == FINAL_LINK and (given.parent / RESOLVED_RECIPE).is_file():
        run_dir = given.parent
    else:
        from tempa.recipes.rundir import enclosing_run_dir, refuse_while_running

        if (inside := enclosing_run_dir(given)) is not None:
            refuse_while_running(inside, "export")
            _check_stage_folder(given, inside)
        return given  # the export says what is wrong with it
    from tempa.recipes.push import unfinished_stages
    from tempa.recipes.rundir import refuse_while_running

    refuse_while_running(run_dir, "export")  # first: a running stage is no "stopped re-run"

    unfinished = unfinished_stages(run_dir)
    final = run_dir / FINAL_LINK
    if final.is_symlink() and not final.exists():
        # a re-run of the last stage cleared its folder and was stopped before it wrote a new one
        raise RecipeError(f"{run_dir}: the run has no final model now: {final} points at {os.readlink(final)}, "
                          f"which a stopped re-run removed ({', '.join(unfinished) or 'no stage pending'}); run "
                          "`tempa run` to finish it")
    if unfinished:
        _warn_not_current(run_dir, f"not every stage is complete and current: {', '.join(unfinished)}")
    return run_dir / FINAL_LINK


def _warn_not_current(given: Path, why: str) -> None:
    print(f"tempa: warning: {given}: {why}; this exports the final model an earlier run left (run `tempa run` first "
          "to bring it up to date)", file=sys.stderr)


def _check_stage_folder(given: Path, run_dir: Path) -> None:
    """A path inside a run's stage folder (``runs/demo/bake/final``, the path the export prints) is judged as the run's
    final model is: refused while the stage is not complete (its folder may be half written, or an earlier run's),
    warned of when it is complete but not current."""
    from tempa.recipes.push import stage_holding

    row = stage_holding(given, run_dir)
    if row is None or row.state == "done":
        return
    if row.state == "stale":
        _warn_not_current(given, f"stage '{row.name}' is complete but not current ({row.note})")
        return
    raise RecipeError(f"{given}: stage '{row.name}' of the run {run_dir} is not complete ({row.state}): its folder "
                      "holds no finished model; run `tempa run` to finish it, then export again")


def _cmd_tiny(args) -> int:
    from tempa.recipes.tiny import write_tiny_default

    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise RecipeError(f"tiny-model: {args.out_dir} is a file; give a folder to write the model into")
    out = write_tiny_default(args.out_dir, seed=args.seed, tokenizer=args.tokenizer)
    print(f"tiny model + tokenizer written to {out}")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM, Kubernetes and `kill` send before SIGKILL), raised where the runner is.

    A KeyboardInterrupt, so everything that stops cleanly on Ctrl-C (the training process group,
    partial outputs) stops the same way on SIGTERM.
    """

    def __str__(self) -> str:
        return "SIGTERM, from kill or a scheduler ending the job"


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a repeated SIGTERM must not cut the cleanup short
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from tempa.sft.line_progress import line_mode

    stderr = sys.stderr
    line_mode()  # a file or a pipe: progress bars (datasets, tqdm) as one line per interval
    _setup_logging(args.verbose)
    from tempa.recipes.rundir import NotARunDirError, RunLockedError

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that went away is handled below, not at exit
        return code
    except BrokenPipeError:
        # The reader stopped (`tempa status | head`): stop quietly, as Unix tools do on SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (RecipeError, StageError, RunLockedError, NotARunDirError, FileExistsError) as exc:
        print(f"tempa: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print("tempa: interrupted; run the same command again to resume", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    except Exception as exc:  # an unexpected failure still gets one line; -v shows the traceback
        if args.verbose:
            raise
        print(f"tempa: error: {typed_line(exc)} (run with -v for the traceback)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.stderr = stderr


def _setup_logging(verbose: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
        fmt = "%(message)s"
    else:  # a file or a pipe: whole lines (rich would wrap them at 80 columns), timestamped
        handler, fmt = logging.StreamHandler(sys.stderr), "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, handlers=[handler])
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


if __name__ == "__main__":
    raise SystemExit(main())
