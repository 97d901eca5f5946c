"""Model folders given by path are named by the shortest tail of their path that tells them apart, as a run's own
candidates are named: the Swallow trial's `models: [./runs/x/merge-slerp/final, ./runs/x/merge-ties/final]` were
`final` and `final-2` on the leaderboard, in the score files and on the card ("linear merge of: `final`, `final-2`")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stage_helpers import make_context
from tempa.merge import EvaluateStageConfig, run_evaluate
from tempa.merge.candidates import collect_candidates, folder_labels
from tempa.merge.leaderboard import read_leaderboard


def copies(tiny_model_dir: Path, *folders: Path) -> list[str]:
    for folder in folders:
        shutil.copytree(tiny_model_dir, folder)
    return [str(folder) for folder in folders]


def test_final_folders_of_another_run_are_named_by_their_stage(tmp_path, tiny_model_dir, tokenizer_dir, monkeypatch):
    run = tmp_path / "runs" / "swallow-ja-tiny"
    copies(tiny_model_dir, run / "merge-slerp" / "final", run / "merge-ties" / "final")
    monkeypatch.chdir(tmp_path)  # the paths as the recipe wrote them, relative
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                    + "\n")
    config = EvaluateStageConfig.model_validate(
        {"name": "evaluate3", "kind": "evaluate", "include_final": False,
         "models": ["./runs/swallow-ja-tiny/merge-slerp/final", "./runs/swallow-ja-tiny/merge-ties/final"],
         "suites": [{"type": "loss", "name": "heldout", "data": str(rows)}]})
    run_evaluate(config, make_context(tmp_path / "run", "evaluate3", start_model=tiny_model_dir,
                                      tokenizer_dir=tokenizer_dir))
    stage = tmp_path / "run" / "evaluate3"
    assert sorted(row.candidate for row in read_leaderboard(stage).rows) == ["merge-slerp/final", "merge-ties/final"]
    scores = sorted(json.loads(path.read_text())["candidate"] for path in (stage / "scores").glob("*.json"))
    assert scores == ["merge-slerp/final", "merge-ties/final"]


def test_checkpoints_are_named_as_a_runs_own_and_a_clash_takes_one_more_folder(tmp_path, tiny_model_dir,
                                                                              tokenizer_dir):
    models = copies(tiny_model_dir, tmp_path / "a" / "sft" / "checkpoints" / "checkpoint-20",
                    tmp_path / "b" / "sft" / "checkpoints" / "checkpoint-20",
                    tmp_path / "b" / "dpo" / "round-2" / "checkpoints" / "checkpoint-4",
                    tmp_path / "c" / "model")
    ctx = make_context(tmp_path / "run", "eval", start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir)
    names = [c.name for c in collect_candidates(ctx, checkpoints_of=[], stages=[], models=models)]
    assert names == ["a/sft/checkpoint-20", "b/sft/checkpoint-20", "dpo/round-2/checkpoint-4", "model"]
    # the names do not hang on the order the folders are listed in
    again = [c.name for c in collect_candidates(ctx, checkpoints_of=[], stages=[], models=models[::-1])]
    assert again == names[::-1]


def test_a_folder_named_like_another_candidate_takes_one_more_folder():
    assert folder_labels([Path("/x/runs/sft/final"), Path("/y/sft")], taken={"sft"}) == ["sft/final", "y/sft"]
    # the same folder twice (scored once: the same weights) is not lengthened for it
    assert folder_labels([Path("/x/m"), Path("/x/m")]) == ["m", "m-2"]
