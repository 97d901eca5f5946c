"""The stage contract: a new kind is one StageKind object plus its module; the runner hands each stage
the typed results of exactly the stages it reads, and checks every read when the recipe loads.

Two fake kinds are added here the way a package adds a real one (a StageKind in its package's
``STAGE_KINDS``): ``write`` produces a dataset and a typed extra; ``count`` reads it through
``data: stage:NAME``. No file in ``recipes/`` names them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest

import tempa.alignment
import tempa.merge
from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import run_recipe
from tempa.sft.stage_api import (
    Artifact,
    Read,
    StageConfigBase,
    StageContext,
    StageKind,
    StageResult,
    stage_ref,
)

SEEN: dict[str, dict] = {}


class WriteConfig(StageConfigBase):
    kind: Literal["write"] = "write"
    rows: int = 3


class WriteResult(StageResult):
    """A typed extra a later stage may rely on."""

    rows: int


def run_write(config: WriteConfig, ctx: StageContext) -> WriteResult:
    out = ctx.stage_dir / "rows.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"row {i}\n" for i in range(config.rows)))
    return WriteResult(dataset=out, rows=config.rows, metrics={"rows": config.rows})


class CountConfig(StageConfigBase):
    kind: Literal["count"] = "count"
    data: str

    def reads(self, earlier: Sequence[str]) -> list[Read]:
        name = stage_ref(self.data)
        return [Read(name, Artifact.DATASET, ("data",))] if name else []


def run_count(config: CountConfig, ctx: StageContext) -> StageResult:
    name = stage_ref(config.data)
    assert name is not None
    upstream = ctx.upstream[name]
    SEEN[ctx.stage_name] = {
        "visible": sorted(ctx.upstream),
        "typed": isinstance(upstream.result, WriteResult),
        "declared_rows": upstream.result.rows if isinstance(upstream.result, WriteResult) else None,
        "counted": len(ctx.dataset_of(name, who="test").read_text().splitlines()),
        "start_model": ctx.start_model,
    }
    return StageResult(metrics={"counted": SEEN[ctx.stage_name]["counted"]},
                       notes=[f"{ctx.stage_name}: counted {SEEN[ctx.stage_name]['counted']} rows of {name}"])


WRITE = StageKind("write", WriteConfig, run_write, "writes rows", produces=frozenset({Artifact.DATASET}),
                  result=WriteResult)
COUNT = StageKind("count", CountConfig, run_count, "counts rows")


@pytest.fixture(autouse=True)
def fake_kinds(monkeypatch):
    SEEN.clear()
    monkeypatch.setattr(tempa.alignment, "STAGE_KINDS", (*tempa.alignment.STAGE_KINDS, WRITE, COUNT))
    monkeypatch.setattr(tempa.merge, "STAGE_KINDS", tuple(k for k in tempa.merge.STAGE_KINDS if k.kind != "bake"))


def recipe(tmp_path: Path, tiny_model_dir: Path, stages: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nbase_model: {tiny_model_dir}\nstages:\n" + textwrap.indent(stages, "  "))
    return path


def test_a_new_kind_runs_and_reads_a_typed_upstream_result(tmp_path, tiny_model_dir):
    path = recipe(tmp_path, tiny_model_dir, textwrap.dedent("""\
        - {name: rows, kind: write, rows: 4}
        - {name: other, kind: write, rows: 2}
        - {name: count, kind: count, data: "stage:rows"}
        """))
    run_dir = tmp_path / "run"
    summary = run_recipe(load_recipe(path), run_dir)
    assert summary.notes == ["count: counted 4 rows of rows"]  # a result's notes reach the closing summary
    seen = SEEN["count"]
    # it sees its `from` (the previous stage) and what it reads, nothing else
    assert seen["visible"] == ["other", "rows"]
    assert seen["typed"] and seen["declared_rows"] == 4 and seen["counted"] == 4
    # neither writer produced a model, so the base model is handed on through both
    assert seen["start_model"] == tiny_model_dir

    # Skipped stages hand on the same typed result, rebuilt from their manifest.
    SEEN.clear()
    run_recipe(load_recipe(path, ["stages.count.data=stage:rows", "stages.count.name=count"]), run_dir,
               from_stage="count")
    assert SEEN["count"]["typed"] and SEEN["count"]["declared_rows"] == 4
    # ... and a skipped stage's notes come back from its manifest: the summary describes the final model
    assert run_recipe(load_recipe(path), run_dir).notes == ["count: counted 4 rows of rows"]


def test_a_read_is_checked_against_what_the_producer_kind_makes(tmp_path, tiny_model_dir):
    path = recipe(tmp_path, tiny_model_dir, textwrap.dedent("""\
        - {name: first, kind: count, data: "no-stage"}
        - {name: count, kind: count, data: "stage:first"}
        """))
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:5: stages[1].data (stage 'count'): stage 'first' (kind count) produces "
                              "no dataset")

    path = recipe(tmp_path, tiny_model_dir, '- {name: count, kind: count, data: "stage:later"}\n')
    with pytest.raises(RecipeError, match="'later' is not an earlier stage"):
        load_recipe(path)


def test_two_packages_cannot_export_the_same_kind(monkeypatch):
    from tempa.recipes.registry import stage_kinds

    assert {"sft", "synthesize", "preference", "evaluate", "merge", "write", "count"} <= set(stage_kinds())
    monkeypatch.setattr(tempa.merge, "STAGE_KINDS", (*tempa.merge.STAGE_KINDS, WRITE))
    with pytest.raises(RuntimeError, match="'write' is exported by two packages"):
        stage_kinds()
