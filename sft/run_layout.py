"""The names of a run directory, and the rule for every recipe name that becomes a path.

Layout::

    run_dir/
      .lock                      held by the runner writing this folder
      recipe.resolved.yaml       the recipe after extends, profile and --set
      tokenizer/                 the base tokenizer with the recipe's chat template baked in
      report/                    `tempa report`
      <stage>/manifest.json      fingerprint, status, timings, the stage's typed result (runner only)
      <stage>/metrics.json       the stage's headline metrics (runner only)
      <stage>/DONE               {"fingerprint": ...}; present only for a complete stage (written last)
      <stage>/final/             the stage's model, when it trains or merges one
      <stage>/checkpoints/       trainer checkpoints (checkpoint-N/ with a COMPLETE marker)
      <stage>/logs/              launch.sh, train.log, stage.log
      <stage>/data/              the stage's data reports (mix, stats, rejects)
      final -> <last stage>/final
"""

from __future__ import annotations

import re
from pathlib import Path

LOCK = ".lock"
RESOLVED_RECIPE = "recipe.resolved.yaml"
TOKENIZER_DIR = "tokenizer"
REPORT_DIR = "report"
FINAL_LINK = "final"

MANIFEST = "manifest.json"
METRICS = "metrics.json"
DONE = "DONE"
FINAL_DIR = "final"
CHECKPOINTS_DIR = "checkpoints"
TRAIN_PROGRESS = "progress.json"  # in a training launch's checkpoints folder: its last progress line (TrainProgress)
PASS_PROGRESS = ".progress.json"  # after a journal's name (samples.jsonl.progress.json): its pass's (PassProgress)
LOGS_DIR = "logs"
DATA_DIR = "data"
TRAIN_PLAN = "train_plan.json"
COMPLETE = "COMPLETE"  # written last in a checkpoint folder or a data cache entry: it is whole

LOGS_AT_TOP = "logs"  # kept free for run-level logs
FORCED_RUN = "forced-run.json"  # a --from/--only run that has not completed: what it forced, and when it started

# The run directory's own entries: a stage (whose folder is run_dir/<name>) may not take one of
# these names, or running it would replace the run's tokenizer, final model, report, ...
# Compared case-insensitively, for case-insensitive filesystems.
RESERVED_NAMES = frozenset({LOCK, RESOLVED_RECIPE, TOKENIZER_DIR, REPORT_DIR, FINAL_LINK, LOGS_AT_TOP, FORCED_RUN})

# A name that becomes a file or folder name (stage folders, source names, ...): one path
# component, never "..", never hidden, portable across filesystems. README.md documents it.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def safe_name(value: str, what: str) -> str:
    """``value`` if it may be used as a single path component; else ValueError saying what is allowed."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a safe name: use letters, digits, '.', '_' and '-', starting with a "
            "letter or digit (at most 128 characters)"
        )
    return value


def default_run_dir(recipe_name: str, profile: str | None = None) -> Path:
    """Where `tempa run` puts a recipe's run without --run-dir, under the folder it is started in: runs/<name>, and
    runs/<name>-<profile> for a run with --profile, so that a toy run and the full-scale one never share a folder."""
    if profile is None:
        return Path("runs") / recipe_name
    return Path("runs") / safe_name(f"{recipe_name}-{profile}", f"--profile {profile}: the default run directory")


def reserved_name(name: str) -> str | None:
    """Why ``name`` cannot be a stage folder in the run directory, or None when it can."""
    if name.lower() in RESERVED_NAMES:
        return (f"'{name}' is one of the run directory's own entries ({', '.join(sorted(RESERVED_NAMES))}); a "
                "stage's folder sits beside them, so pick another name")
    return None
