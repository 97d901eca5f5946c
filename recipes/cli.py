"""`tempa`: run, plan and inspect recipes; build the tiny default; work with chat templates."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path

from tempa.recipes import __version__
from tempa.recipes.errors import RecipeError
from tempa.sft.run_layout import RESOLVED_RECIPE
from tempa.sft.stage_api import format_metric

EPILOG = """examples:
  tempa run recipes/demo.yaml --run-dir runs/demo       run (or resume) the demo recipe
  tempa plan recipes/demo.yaml                          show stages, what will be skipped or re-run, and why
  tempa run demo --set stages.sft-general.train.learning_rate=2e-5
  tempa run demo --from sft-reasoning                   re-run one stage and everything after it
  tempa status runs/demo                                each stage's state, time and key metrics
  tempa tiny-model /tmp/tiny [--tokenizer llama3]      build the embedded tiny model + tokenizer
  tempa template check --tokenizer runs/demo/final      verify the chat template invariants
  tempa export gguf runs/demo/final --type q8_0         GGUF + Ollama Modelfile
  tempa report runs/demo                                HTML report: loss/reward curves, leaderboard
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

    def recipe_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("recipe", help="recipe YAML path, or the name of a shipped recipe (e.g. demo)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key, e.g. stages.sft.train.learning_rate=2e-5 (repeatable)")
        p.add_argument("--profile", default=None,
                       help="apply the recipe's `profiles: NAME` overlay (e.g. tiny: the same pipeline at toy scale)")
        p.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/<recipe name>)")
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
                      help="also estimate tokens, steps, per-GPU memory (ZeRO-3) and hours, e.g. 8xH100")
    plan.add_argument("--mfu", type=float, default=None,
                      help="model FLOPs utilisation assumed by --hardware (default 0.4)")
    plan.set_defaults(func=_cmd_plan)

    status = sub.add_parser("status", help="each stage's state, time and key metrics")
    status.add_argument("run_dir", type=Path)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    tiny = sub.add_parser("tiny-model", help="build the embedded tiny Llama model + tokenizer into OUT_DIR")
    tiny.add_argument("out_dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--tokenizer", choices=("tiny", "llama3"), default="tiny",
                      help="tiny: a 1,024-token BPE trained on the sample data; llama3: Meta's real Llama 3 "
                      "tokenizer (128,256 tokens, offline, from the llama-models package)")
    tiny.set_defaults(func=_cmd_tiny)

    report = sub.add_parser("report", help="write RUN_DIR/report/index.html: curves, leaderboard, merge, template")
    report.add_argument("run_dir", type=Path)
    report.set_defaults(func=_cmd_report)

    export = sub.add_parser("export", help="export a final model to another format")
    export_sub = export.add_subparsers(dest="format", metavar="FORMAT", required=True)
    gguf = export_sub.add_parser("gguf", help="GGUF (llama.cpp, Ollama) with the chat template + an Ollama Modelfile")
    gguf.add_argument("model_dir", type=Path, help="a final model folder, e.g. runs/demo/final")
    gguf.add_argument("--type", dest="file_type", choices=["f16", "q8_0"], default="f16")
    gguf.add_argument("--out", type=Path, default=None, help="output .gguf path (default: inside MODEL_DIR)")
    gguf.set_defaults(func=_cmd_export_gguf)

    try:
        from tempa.chat_templates.cli import register
    except ImportError:  # template tools not installed in this build
        pass
    else:
        register(sub)
    return parser


def _run_dir(args, loaded) -> Path:
    return args.run_dir if args.run_dir is not None else Path("runs") / loaded.recipe.name


def _cmd_run(args) -> int:
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import run_recipe

    loaded = load_recipe(args.recipe, args.overrides, profile=args.profile)
    run_dir = _run_dir(args, loaded)
    if args.machine_rank:
        return _join(args, loaded, run_dir)
    summary = run_recipe(loaded, run_dir, from_stage=args.from_stage, only=args.only)
    print(f"run complete: {summary.run_dir}")
    print(f"  ran: {', '.join(summary.ran) or '-'}; skipped: {', '.join(summary.skipped) or '-'}")
    if summary.final_model is not None:
        print(f"  final model: {summary.final_model}")
    return 0


def _join(args, loaded, run_dir: Path) -> int:
    import logging

    from tempa.recipes.launcher import join_run
    from tempa.sft.files import cache_root

    log_dir = cache_root() / "join-logs" / f"{loaded.recipe.name}-rank{args.machine_rank}"
    joined = join_run(loaded.recipe.launch, run_dir.resolve(), args.machine_rank, log_dir,
                      log=logging.getLogger("tempa"))
    print(f"node {args.machine_rank}: joined {joined} training launch(es) of {run_dir}; logs: {log_dir}")
    return 0


def _cmd_plan(args) -> int:
    import yaml
    from rich.table import Table

    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import plan_run

    if args.mfu is not None and not args.hardware:
        raise RecipeError(f"--mfu {args.mfu:g} needs --hardware (e.g. --hardware 8xH100): it sets the estimate's MFU")
    loaded = load_recipe(args.recipe, args.overrides, profile=args.profile)
    run_dir = _run_dir(args, loaded)
    decisions = plan_run(loaded, run_dir, from_stage=args.from_stage, only=args.only)
    console = _console()
    console.print(f"[bold]recipe[/bold] {loaded.path}" + (
        f" (extends {', '.join(str(f) for f in loaded.files[:-1])})" if len(loaded.files) > 1 else ""))
    console.print(f"[bold]run dir[/bold] {run_dir.resolve()}")
    console.print("[bold]resolved recipe[/bold]")
    console.print(yaml.safe_dump(loaded.resolved(compact=True), sort_keys=False, allow_unicode=True), markup=False)
    table = Table(title="stages, in run order")
    for column in ("#", "stage", "kind", "starts from", "action", "why", "fingerprint"):
        table.add_column(column)
    for d in decisions:
        table.add_row(str(d.index + 1), d.name, d.kind, d.upstream or "base model", d.action, d.reason,
                      d.fingerprint[:12])
    console.print(table)
    if args.hardware:
        from tempa.recipes.estimate import render_estimate

        mfu = 0.4 if args.mfu is None else args.mfu
        console.print(render_estimate(loaded, args.hardware, mfu, run_dir=run_dir), markup=False)
    return 0


def _cmd_status(args) -> int:
    from rich.table import Table

    from tempa.recipes.runner import stage_status

    run_dir: Path = args.run_dir
    resolved = run_dir / RESOLVED_RECIPE
    if not resolved.is_file():
        raise RecipeError(f"{run_dir}: not a tempa run directory (no recipe.resolved.yaml)")
    rows = stage_status(_stage_names(resolved), run_dir)
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in rows], indent=2, default=str))
        return 0
    table = Table(title=f"run {run_dir}")
    for column in ("stage", "kind", "state", "time", "key metrics"):
        table.add_column(column)
    for row in rows:
        seconds = row.duration_s
        metrics = ", ".join(f"{k}={format_metric(v)}" for k, v in list(row.metrics.items())[:5] if v is not None)
        if row.error:
            metrics = f"error: {row.error}"
        table.add_row(row.name, row.kind, row.state, f"{seconds:.1f}s" if seconds else "-", metrics)
    _console().print(table)
    return 0


def _stage_names(resolved: Path) -> list[str] | None:
    """The stage order recorded in recipe.resolved.yaml, read without validating the recipe.

    Status needs only the names: validation would import trl and fail on files that moved since.
    """
    import yaml

    from tempa.recipes.yaml_loader import RecipeTextError, parse_yaml, read_text

    try:
        stages = parse_yaml(read_text(resolved)).get("stages")
        names = [stage["name"] for stage in stages]
    except (OSError, yaml.YAMLError, RecipeTextError, AttributeError, KeyError, TypeError):
        return None  # unreadable: the manifests still tell the story
    return names if all(isinstance(name, str) for name in names) else None


def _console():
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # piped or logged: do not squeeze tables into 80 columns
        console = Console(highlight=False, soft_wrap=True, width=160)
    return console


def _cmd_report(args) -> int:
    from tempa.recipes.report import write_report

    print(f"wrote {write_report(args.run_dir)}")
    return 0


def _cmd_export_gguf(args) -> int:
    from tempa.merge.gguf_export import export_gguf

    result = export_gguf(args.model_dir, args.out, file_type=args.file_type)
    print(f"wrote {result.gguf_path} ({result.tensor_count} tensors, {result.file_type})")
    print(f"wrote {result.modelfile_path} (ollama create NAME -f {result.modelfile_path})")
    return 0


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


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a repeated SIGTERM must not cut the cleanup short
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _setup_logging(args.verbose)
    from tempa.recipes.rundir import NotARunDirError, RunLockedError
    from tempa.sft.stage_api import StageError

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except (RecipeError, StageError, RunLockedError, NotARunDirError, FileExistsError) as exc:
        print(f"tempa: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print("tempa: interrupted; run the same command again to resume", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    except Exception as exc:  # an unexpected failure still gets one line; -v shows the traceback
        if args.verbose:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"tempa: error: {type(exc).__name__}: {first} (run with -v for the traceback)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _setup_logging(verbose: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, markup=False)],
    )
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


if __name__ == "__main__":
    raise SystemExit(main())
