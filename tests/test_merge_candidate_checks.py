"""An evaluate stage's candidates and a merge's selection: one set of weights is one candidate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from stage_helpers import done, make_context, trained
from tempa.merge.candidates import collect_candidates
from tempa.merge.evaluate_config import EvaluateStageConfig
from tempa.merge.leaderboard import Leaderboard, LeaderboardRow
from tempa.merge.selection import select_top_k_with_ties
from tempa.sft.stage_api import StageError
from tempa.sft.train_plan import OUTCOME_FILE

pytestmark = pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")


def trained_to(run_dir: Path, stage: str, model_dir: Path, steps: list[int], final_step: int) -> Path:
    """A training stage's folder: complete checkpoints at ``steps`` and a final/ trained to ``final_step``."""
    stage_dir = run_dir / stage
    for step in steps:
        checkpoint = stage_dir / "checkpoints" / f"checkpoint-{step}"
        shutil.copytree(model_dir, checkpoint)
        (checkpoint / "COMPLETE").write_text("")
    shutil.copytree(model_dir, stage_dir / "final")
    (stage_dir / "final" / OUTCOME_FILE).write_text(json.dumps({"global_step": final_step}))
    return stage_dir


def test_the_same_weights_reached_twice_are_one_candidate(tmp_path, tiny_model_dir, tokenizer_dir):
    """sft-b's final model is its checkpoint-60: named by `stages` (or by its folder) as well, it was scored twice,
    the two rows tied, and a top-2 selection merged the model with itself after all training."""
    run_dir = tmp_path / "run"
    sft_a = trained_to(run_dir, "sft-a", tiny_model_dir, [30], 30)
    sft_b = trained_to(run_dir, "sft-b", tiny_model_dir, [30, 60], 60)
    ctx = make_context(run_dir, "eval", start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir,
                       upstream=[done("sft-a", trained(sft_a)), done("sft-b", trained(sft_b))])
    candidates = collect_candidates(ctx, checkpoints_of=["sft-a", "sft-b"], stages=["sft-b"],
                                    models=[str(sft_b / "final")], include_final=False)
    assert [c.name for c in candidates] == ["sft-a/checkpoint-30", "sft-b/checkpoint-30", "sft-b/checkpoint-60"]


def test_a_stage_listed_in_checkpoints_of_and_stages_is_refused_when_the_recipe_loads():
    """Scored once anyway, but the load's top_k check counted it twice; said before anything trains."""
    suites = [{"type": "thinking", "name": "think", "data": "org/rows"}]

    def config(**fields):
        return EvaluateStageConfig.model_validate({"name": "eval", "kind": "evaluate", "suites": suites, **fields})

    with pytest.raises(ValidationError, match=r"stages: 'sft-b' is in checkpoints_of too, which scores its final "
                                              r"model already .*; drop it from `stages`"):
        config(checkpoints_of=["sft-a", "sft-b"], stages=["sft-b"])
    with pytest.raises(ValidationError, match="stages: 'sft-b' is listed twice; each model is scored once"):
        config(stages=["sft-b", "sft-b"])
    # without the final models of checkpoints_of, `stages` is how one of them is added
    assert config(checkpoints_of=["sft-b"], stages=["sft-b"], include_final=False).stages == ["sft-b"]


def board_of(run_dir: Path, tiny_model_dir: Path) -> Leaderboard:
    """A board written before candidates were told apart by their weights: sft-b is sft-b/checkpoint-60 again."""
    sft_a = trained_to(run_dir, "sft-a", tiny_model_dir, [30], 40)
    sft_b = trained_to(run_dir, "sft-b", tiny_model_dir, [60], 60)
    rows = [("sft-a/checkpoint-30", sft_a / "checkpoints" / "checkpoint-30", 0.5),
            ("sft-a", sft_a / "final", None),
            ("sft-b/checkpoint-60", sft_b / "checkpoints" / "checkpoint-60", 0.9),
            ("sft-b", sft_b / "final", 0.9)]
    return Leaderboard(rows=[LeaderboardRow(candidate=name, path=str(path),
                                            metrics={} if value is None else {"think/on_compliance": value})
                             for name, path, value in rows])


def test_select_never_picks_the_same_weights_twice(tmp_path, tiny_model_dir):
    board = board_of(tmp_path / "run", tiny_model_dir)
    chosen, tied = select_top_k_with_ties(board, "think/on_compliance", 2)
    assert [row.candidate for row in chosen] == ["sft-b/checkpoint-60", "sft-a/checkpoint-30"]
    assert tied == []
    with pytest.raises(StageError) as info:
        select_top_k_with_ties(board, "think/on_compliance", 3)
    assert str(info.value) == ("top_k=3 but only 2 candidate(s) have 'think/on_compliance' (none for sft-a; sft-b is "
                               "the weights of sft-b/checkpoint-60)")
