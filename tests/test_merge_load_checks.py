"""What a merge stage will refuse after all training is refused when the recipe loads, or said by `tempa plan`:
a `select.top_k` above the candidates its evaluate stage can score, and a two-model method's `base_model` that is
not among the models it merges."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tempa.recipes.cli import main
from tempa.recipes.errors import RecipeError
from tempa.recipes.loader import load_recipe


def two_stage_recipe(folder: Path, *, dpo_train: str, top_k: int, merge: str = "method: linear") -> Path:
    """SFT, then DPO, then the best checkpoints of the DPO stage (and the SFT model) scored and merged."""
    rows = [
        {
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
            "prompt": f"q{i}",
            "answer": "a",
        }
        for i in range(4)
    ]
    (folder / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = folder / "r.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        name: r
        base_model: "tempa:tiny"
        stages:
          - name: sft
            kind: sft
            data: {{sources: [{{name: r, path: rows.jsonl}}]}}
          - name: dpo
            kind: preference
            prompts: {{path: rows.jsonl}}
            rewards: [{{type: format}}]
            train: {dpo_train}
          - name: evaluate
            kind: evaluate
            checkpoints_of: [dpo]
            stages: [sft]
            suites: [{{type: loss, data: rows.jsonl}}]
          - name: merge
            kind: merge
            {merge}
            evaluate_stage: evaluate
            select: {{metric: loss/loss, top_k: {top_k}}}
        """)
    )
    return recipe


def test_a_top_k_above_the_candidates_the_evaluate_stage_can_score_is_refused_at_load(tmp_path):
    # DPO saves 10 checkpoints and keeps 2 (tempa's default save_total_limit); its final is its last one; plus sft.
    recipe = two_stage_recipe(tmp_path, dpo_train="{max_steps: 100, save_steps: 10}", top_k=4)
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    message = str(error.value)
    assert message.startswith(
        f"{recipe}:21: stages[3].select.top_k (stage 'merge'): 4, but evaluate stage "
        "'evaluate' scores at most 3 candidate(s) (dpo 2 (save_strategy steps, "
        "save_total_limit 2, max_steps 100), 1 of `stages`)"
    ), message
    assert "\n" not in message
    # What the recipe allows loads: three candidates, or more kept checkpoints.
    assert load_recipe(two_stage_recipe(tmp_path, dpo_train="{max_steps: 100, save_steps: 10}", top_k=3))
    assert load_recipe(
        two_stage_recipe(tmp_path, dpo_train="{max_steps: 100, save_steps: 10, save_total_limit: 3}", top_k=4)
    )


def test_a_task_vector_merges_base_among_the_candidates_is_not_counted_for_top_k(tmp_path):
    """The merge picks its top_k besides its base (a task-vector merge of its base adds nothing), so a base that is
    one of the scored candidates leaves one fewer to pick: refused at load, not after all training."""
    ties = "method: ties\n            base_model: sft"
    recipe = two_stage_recipe(tmp_path, dpo_train="{max_steps: 100, save_steps: 10}", top_k=3, merge=ties)
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    assert "3, but evaluate stage 'evaluate' scores at most 2 candidate(s) (dpo 2 (save_strategy steps, " in str(
        error.value) and "1 of `stages`, less its base_model 'sft')" in str(error.value), str(error.value)
    assert load_recipe(two_stage_recipe(tmp_path, dpo_train="{max_steps: 100, save_steps: 10}", top_k=2, merge=ties))
    # linear takes no base: the three candidates are the three it can merge
    assert load_recipe(two_stage_recipe(tmp_path, dpo_train="{max_steps: 100, save_steps: 10}", top_k=3))


def test_a_top_k_the_recipe_cannot_settle_is_said_by_plan(tmp_path, capsys):
    # Without max_steps, how many checkpoints DPO keeps (1 or 2) depends on its data: the run tells.
    recipe = two_stage_recipe(tmp_path, dpo_train="{save_total_limit: 2}", top_k=3)
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "stage 'merge': select.top_k 3: whether evaluate scores that many candidates is known only once it "
        "runs: 2 at least, up to 3"
    ) in out
    # A count the recipe fixes is not a warning.
    recipe = two_stage_recipe(
        tmp_path, dpo_train="{max_steps: 4, save_steps: 1, save_total_limit: 2}", top_k=3
    )
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    assert "select.top_k" not in capsys.readouterr().out


def test_a_slerp_base_model_not_among_its_models_is_refused_at_load(tmp_path):
    recipe = two_stage_recipe(tmp_path, dpo_train="{max_steps: 4}", top_k=2)
    text = (
        recipe.read_text()
        .replace("    evaluate_stage: evaluate\n", "")
        .replace("    select: {metric: loss/loss, top_k: 2}\n", "    models: [dpo, sft]\n")
    )
    recipe.write_text(text.replace("method: linear", "method: slerp\n    base_model: dpo/checkpoint-4"))
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    assert str(error.value).startswith(
        f"{recipe}:20: stages[3].base_model (stage 'merge'): 'dpo/checkpoint-4' is not one of `models` ['dpo', 'sft']; "
        "slerp takes its base from the models it merges"
    ), str(error.value)
    recipe.write_text(text.replace("method: linear", "method: slerp\n    base_model: sft"))
    assert load_recipe(recipe).stage("merge").base_model == "sft"


def test_a_slerp_base_model_or_top_k_select_cannot_honour_is_refused_at_load(tmp_path):
    # slerp merges exactly two models, its base among them: with `select`, whether `base_model` is among the two best
    # is known only once they are ranked, and a third model fails the merge; both failed after all training.
    train = "{max_steps: 4, save_steps: 1}"  # dpo keeps 2 checkpoints, plus sft: 3 candidates
    recipe = two_stage_recipe(tmp_path, dpo_train=train, top_k=2, merge="method: slerp\n            base_model: sft")
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    assert str(error.value).startswith(
        f"{recipe}:20: stages[3].base_model (stage 'merge'): slerp takes its base from the 2 models it merges, and "
        "`select` picks them by rank once evaluate has scored them, so 'sft' may not be among them"
    ), str(error.value)
    recipe = two_stage_recipe(tmp_path, dpo_train=train, top_k=3, merge="method: slerp")
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    assert str(error.value).startswith(
        f"{recipe}:21: stages[3].select.top_k (stage 'merge'): method slerp: requires exactly 2 inputs; got 3"
    ), str(error.value)
    # The two best, the best as the base: loads.
    assert load_recipe(two_stage_recipe(tmp_path, dpo_train=train, top_k=2, merge="method: slerp"))


@pytest.mark.parametrize("kind", ["rl", "pretrain"])
def test_the_load_check_counts_with_the_defaults_the_producing_stage_trains_with(tmp_path, kind):
    # rl and pretrain kept their trainer defaults out of `train_defaults`, so the check counted with trl's
    # (save_steps 500, no limit) and refused a top_k 2 of an rl stage that saves 3 times and keeps 2 (diff review).
    from tempa.alignment.rl_config import DEFAULT_RL_ARGS
    from tempa.sft.pretrain_config import PRETRAIN_TRAIN_ARGS

    defaults = DEFAULT_RL_ARGS if kind == "rl" else PRETRAIN_TRAIN_ARGS
    steps, limit = 3 * defaults["save_steps"], defaults["save_total_limit"]
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n")
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": "teks"}) + "\n")
    producer = {
        "rl": "kind: rl\n            prompts: {path: prompts.jsonl}\n            rewards: [{type: answer}]",
        "pretrain": "kind: pretrain\n            sources: [{name: t, path: text.jsonl}]",
    }[kind]
    decay = ", lr_scheduler_kwargs: {num_decay_steps: 10}" if kind == "pretrain" else ""
    text = textwrap.dedent(f"""\
        name: r
        base_model: "tempa:tiny"
        stages:
          - name: train
            {producer}
            train: {{max_steps: {steps}{decay}}}
          - name: evaluate
            kind: evaluate
            checkpoints_of: [train]
            include_final: false
            suites: [{{type: loss, data: prompts.jsonl}}]
          - name: merge
            kind: merge
            method: linear
            evaluate_stage: evaluate
            select: {{metric: loss/loss, top_k: TOPK}}
        """)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text.replace("TOPK", str(limit)))
    load_recipe(recipe)  # as many as the stage keeps: loads
    recipe.write_text(text.replace("TOPK", str(limit + 1)))
    with pytest.raises(RecipeError, match=rf"top_k \(stage 'merge'\): {limit + 1}, but evaluate stage 'evaluate' "
                                          rf"scores at most {limit} candidate"):
        load_recipe(recipe)


def test_a_top_k_a_complete_evaluate_stage_has_settled_is_said_as_it_stands(tmp_path, capsys):
    """With the evaluate stage complete (the plan skips it), the plan still said whether it scores enough candidates
    'is known only once it runs': it has run. Enough is no warning; too few is said with the count."""
    import types

    from tempa.merge.leaderboard import EvaluateResult, Leaderboard, LeaderboardRow
    from tempa.merge.merge_config import selection_notes
    from tempa.recipes.cli import scored_candidates
    from tempa.recipes.rundir import Manifest

    loaded = load_recipe(two_stage_recipe(tmp_path, dpo_train="{save_total_limit: 2}", top_k=3))
    assert selection_notes(loaded.stages, {"evaluate": 3}) == []
    assert selection_notes(loaded.stages, {"evaluate": 2}) == [
        "stage 'merge': select.top_k 3: evaluate scored 2 candidates, so the merge fails; lower top_k, or give "
        "evaluate more candidates"]

    run_dir = tmp_path / "run"
    (run_dir / "evaluate").mkdir(parents=True)
    rows = [LeaderboardRow(candidate=f"dpo/checkpoint-{i}", path=run_dir / "dpo" / f"c{i}") for i in (1, 2)]
    result = EvaluateResult(leaderboard=Leaderboard(rows=rows))
    Manifest(name="evaluate", kind="evaluate", fingerprint="f", status="done", started_at=0.0,
             result=result.model_dump(mode="json", context={"run_dir": run_dir})).write(run_dir / "evaluate", run_dir)
    skipped = types.SimpleNamespace(name="evaluate", kind="evaluate", action="skip")
    assert scored_candidates([skipped], run_dir) == {"evaluate": 2}
    # one that runs again has not settled it
    assert scored_candidates([types.SimpleNamespace(name="evaluate", kind="evaluate", action="rerun")], run_dir) == {}
