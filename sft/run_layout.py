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
LOGS_DIR = "logs"
DATA_DIR = "data"
TRAIN_PLAN = "train_plan.json"
COMPLETE = "COMPLETE"  # in a checkpoint folder: the checkpoint is whole

# Names the run directory itself uses; a stage of that name would overwrite them.
RESERVED_NAMES = frozenset({LOCK, RESOLVED_RECIPE, TOKENIZER_DIR, REPORT_DIR, FINAL_LINK})

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SAFE_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"


def safe_name(value: object) -> object:
    """A name that becomes one path component: refuse separators, `..`, hidden and reserved names.

    Use as a pydantic ``BeforeValidator`` on every config field whose value names a folder or file.
    """
    if not isinstance(value, str):
        return value  # the field's own type check reports it
    if not SAFE_NAME.fullmatch(value) or value.startswith(".."):
        raise ValueError(f"{value!r} is not a safe name ({SAFE_NAME_RULE})")
    if value in RESERVED_NAMES or value.lower() in RESERVED_NAMES:
        raise ValueError(f"{value!r} is a name the run directory uses itself ({', '.join(sorted(RESERVED_NAMES))})")
    return value
