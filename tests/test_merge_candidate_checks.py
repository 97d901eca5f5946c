"""An evaluate stage's candidates and a merge's selection: one set of weights is one candidate, a metric's
':qualifier' is checked when the recipe loads, an unreadable weights file is named with its candidate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from stage_helpers import done, make_context, sft_with_one_checkpoint, trained
from tempa.merge import MergeStageConfig, run_merge
from tempa.merge.candidates import collect_candidates
from tempa.merge.evaluate_config import EvaluateStageConfig, metric_problem
from tempa.merge.evaluate_stage import run_evaluate
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


def test_a_metric_not_on_the_board_is_named_with_a_guess_not_the_whole_board(tmp_path, tiny_model_dir):
    board = board_of(tmp_path / "run", tiny_model_dir)
    with pytest.raises(StageError) as info:
        select_top_k_with_ties(board, "think/on_complance", 1)
    assert str(info.value) == ("metric 'think/on_complance' is not on the leaderboard: suite 'think' reported it for "
                               "no candidate (did you mean 'think/on_compliance'?)")


def test_a_metrics_qualifier_is_checked_when_the_recipe_loads():
    """`lang/language_share:jp` and `acc/accuracy:ja` passed the load and `tempa plan`, and failed the merge after all
    training: only the name before ':' was checked."""
    config = EvaluateStageConfig.model_validate({"name": "eval", "kind": "evaluate", "suites": [
        {"type": "accuracy", "name": "acc", "data": "org/rows"},
        {"type": "language", "name": "lang", "data": "org/rows", "languages": ["ja", "en"]},
        {"type": "ifeval", "data": "org/rows"}]})
    problems = {metric: metric_problem(metric, config.suites) for metric in [
        "lang/language_share:ja", "lang/normalized_accuracy:en", "lang/language:undetermined",
        "ifeval/instruction_accuracy:word_count", "lang/language_share:jp", "lang/language_share:jpn",
        "lang/language_share:zh", "acc/accuracy:ja", "ifeval/instruction_accuracy:wordcount"]}
    assert problems["lang/language_share:ja"] is None
    assert problems["lang/normalized_accuracy:en"] is None
    assert problems["lang/language:undetermined"] is None
    assert problems["ifeval/instruction_accuracy:word_count"] is None
    assert problems["lang/language_share:jp"] == (
        "suite 'lang' (language): lang/language_share:jp: language code 'jp' is not one the language detector "
        "(py3langid) knows (did you mean 'ja'?)")
    assert problems["lang/language_share:jpn"] == (
        "suite 'lang' (language): lang/language_share:jpn: the leaderboard spells language 'jpn' as 'ja' "
        "(lang/language_share:ja)")
    assert problems["lang/language_share:zh"] == (
        "suite 'lang' (language): lang/language_share:zh: language 'zh' is not among the suite's `languages` "
        "['ja', 'en'], so no answer could be in it")
    assert problems["acc/accuracy:ja"] == (
        "suite 'acc' (accuracy) reports no 'accuracy:ja', as 'accuracy' has no breakdown (did you mean acc/accuracy?); "
        "it reports acc/accuracy, acc/rows, acc/truncated, acc/unanswered")
    assert problems["ifeval/instruction_accuracy:wordcount"].startswith(
        "suite 'ifeval' (ifeval): ifeval/instruction_accuracy:wordcount: 'wordcount' is no instruction type (did you "
        "mean 'word_count'?)")


def test_a_merges_select_metric_qualifier_is_refused_by_the_loader(tmp_path):
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.loader import load_recipe

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "こんにちは", "answer": 1}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nbase_model: tempa:tiny\nstages:\n"
                      f"  - {{name: sft, kind: sft, data: {{sources: [{{name: t, path: {rows}}}]}}}}\n"
                      f"  - {{name: eval, kind: evaluate, checkpoints_of: [sft], suites: [{{type: language, "
                      f"name: lang, language: ja, data: {rows}}}]}}\n"
                      "  - {name: merge, kind: merge, evaluate_stage: eval, "
                      "select: {metric: 'lang/language_share:jp', top_k: 2}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert str(info.value) == (
        f"{recipe}:6: stages[2].select.metric (stage 'merge'): suite 'lang' (language): lang/language_share:jp: "
        "language code 'jp' is not one the language detector (py3langid) knows (did you mean 'ja'?) (stage 'eval')")


def cut_header(weights: Path) -> None:
    """A safetensors file whose header length is garbage: a save that a full disk cut off, say."""
    data = bytearray(weights.read_bytes())
    data[:8] = (10**12).to_bytes(8, "little")
    weights.write_bytes(bytes(data))


def test_a_candidates_unreadable_weights_file_is_named_with_the_candidate(tmp_path, tiny_model_dir, tokenizer_dir):
    """It was `stage 'evaluate' failed: SafetensorError: Error while deserializing header: invalid header length`."""
    run_dir = tmp_path / "run"
    sft = sft_with_one_checkpoint(run_dir, tiny_model_dir)
    weights = sft / "checkpoints" / "checkpoint-2" / "model.safetensors"
    cut_header(weights)
    size = weights.stat().st_size
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "hi"}) + "\n")
    config = EvaluateStageConfig.model_validate({"name": "eval", "kind": "evaluate", "checkpoints_of": ["sft"],
                                                 "suites": [{"type": "thinking", "data": str(rows)}]})
    ctx = make_context(run_dir, "eval", start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir,
                       upstream=[done("sft", trained(sft))])
    with pytest.raises(StageError) as info:
        run_evaluate(config, ctx)
    assert str(info.value) == (
        f"evaluate stage 'eval': candidate sft/checkpoint-2: {weights} is not a whole safetensors file: its header "
        f"length 1000000000000 does not fit its {size} bytes; re-run stage 'sft' to write it again "
        "(tempa run --from sft)")


def test_a_merge_inputs_unreadable_weights_file_is_named_before_mergekit_runs(tmp_path, tiny_model_dir,
                                                                               tokenizer_dir):
    good, bad = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(tiny_model_dir, good)
    shutil.copytree(tiny_model_dir, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a copy that stopped short
    config = MergeStageConfig.model_validate({"name": "merge", "kind": "merge", "reevaluate": False,
                                              "models": [str(good), str(bad)]})
    ctx = make_context(tmp_path / "run", "merge", start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir)
    with pytest.raises(StageError) as info:
        run_merge(config, ctx)
    message = str(info.value)
    assert message.startswith(f"merge stage 'merge': bad: {weights} is cut short: its tensors end at byte ")
    assert message.endswith(f", the file at {weights.stat().st_size}; replace the folder with a whole copy, or drop "
                            "it from the recipe")
    assert not (tmp_path / "run" / "merge" / "final").exists()
