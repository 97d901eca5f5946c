"""A recipe edit to a teacher or preference stage keeps its journals: the teacher's answers and the judge's replies
whose request is unchanged are not asked (nor paid for) again; the stage's outputs are written anew.

Real stages run by the real runner; the teacher and judge are scripted backends standing in for paid HTTP APIs, the
preference stage samples a real tiny policy, and its training launch writes the round's model as a finished
training process would."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path
from typing import Literal

import pytest
from preference_helpers import ending_model, record_sampling
from test_alignment_fakes import ScriptedBackend

import tempa.alignment.preference_stage as preference_module
import tempa.alignment.rewards as rewards_module
import tempa.alignment.teacher_text as teacher_text
import tempa.merge
import tempa.recipes.runner as runner
import tempa.sft
from tempa.alignment.backends import SamplingBackend
from tempa.alignment.completions import Completion
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import plan_run, run_recipe
from tempa.sft.run_layout import CHECKPOINTS_DIR, COMPLETE, DONE
from tempa.sft.stage_api import Artifact, StageConfigBase, StageContext, StageError, StageKind, StageResult

HTTP = {"type": "http", "base_url": "http://teacher.invalid/v1"}


@pytest.fixture(autouse=True)
def no_bake(monkeypatch):
    # The recipes here end in a data or preference stage; the bake tempa adds would copy the tiny model again.
    monkeypatch.setattr(tempa.merge, "STAGE_KINDS", tuple(k for k in tempa.merge.STAGE_KINDS if k.kind != "bake"))


class Teacher(SamplingBackend):
    """Writes a Japanese question naming the number in each translation request, and rates a translation 9 when that
    number is even, 8 when odd; records every request it is asked (and would be paid for)."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def sample(self, prompts, params, *, thinking_modes=None):
        out = []
        for messages in prompts:
            request = messages[-1]["content"]
            self.requests.append(request)
            judged = re.search(r"質問番号(\d+)", request)
            if judged is None:  # a translation request
                reply = "質問番号" + re.findall(r"\d+", request)[0] + "について詳しく教えてください。"
            else:
                reply = f"とても良い翻訳です。 [[{9 if int(judged.group(1)) % 2 == 0 else 8}]]"
            out.append([Completion(text=reply, finish_reason="stop")])
        return out

    def close(self) -> None:
        pass


@pytest.fixture()
def scripted(monkeypatch) -> dict[str, Teacher]:
    """The teacher and judge servers, by the model name the recipe gives them."""
    made: dict[str, Teacher] = {}
    monkeypatch.setattr(teacher_text, "build_backend", lambda block, **kwargs: made.setdefault(block.model, Teacher()))
    monkeypatch.setattr(teacher_text, "check_endpoint", lambda *args, **kwargs: None)  # no server to reach here
    return made


def translate_recipe(tmp_path: Path, base_model: Path, stage: dict, before: str = "") -> Path:
    source = tmp_path / "prompts.jsonl"
    if not source.exists():
        source.write_text("".join(json.dumps({"prompt": f"Please explain question number {i} in detail."}) + "\n"
                                  for i in range(20)), encoding="utf-8")
    block = {"name": "tr", "kind": "translate", "target_language": "ja", "source": {"path": str(source)},
             "teacher": {"backend": {**HTTP, "model": "translator"}, "batch_size": 4},
             "judge": {"backend": {**HTTP, "model": "judge"}, "min_score": 8, "batch_size": 4}, **stage}
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nbase_model: {base_model}\nstages:\n{before}  - {json.dumps(block)}\n")
    return path


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "tr" / "data" / "translated.jsonl").read_text(encoding="utf-8").splitlines()]


def test_a_raised_judge_threshold_reuses_the_teacher_and_judge_a_new_teacher_is_asked_everything(
    tmp_path, tiny_model_dir, scripted
):
    """Raising the judge's min_score cleared the stage's folder, journals with it: every translation and every rating
    (150,000 of them, a day of a paid API) was asked again, though neither journal's signature holds the threshold.
    The journals are kept and the dataset written anew; a changed teacher model is still asked everything."""
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(translate_recipe(tmp_path, tiny_model_dir, {})), run_dir)
    assert len(scripted["translator"].requests) == 20 and len(scripted["judge"].requests) == 20
    assert len(rows(run_dir)) == 20
    scripted.clear()

    raised = load_recipe(translate_recipe(tmp_path, tiny_model_dir, {
        "judge": {"backend": {**HTTP, "model": "judge"}, "min_score": 9, "batch_size": 4}}))
    decision = plan_run(raised, run_dir)[0]
    assert decision.action == "rerun"
    assert decision.reason == ("changed since it ran: stage config changed: judge.min_score 8 → 9; its journals are "
                               "kept: answers whose request is unchanged since its last run are reused")
    summary = run_recipe(raised, run_dir)
    assert summary.ran == ["tr"]
    assert scripted == {}  # neither the teacher nor the judge was asked anything
    kept = rows(run_dir)
    assert [r["provenance"]["row"] for r in kept] == list(range(0, 20, 2))  # the dataset is the new threshold's
    assert json.loads((run_dir / "tr" / DONE).read_text())["fingerprint"] == decision.fingerprint
    assert plan_run(raised, run_dir)[0].action == "skip"

    other = load_recipe(translate_recipe(tmp_path, tiny_model_dir, {
        "teacher": {"backend": {**HTTP, "model": "translator-2"}, "batch_size": 4},
        "judge": {"backend": {**HTTP, "model": "judge"}, "min_score": 9, "batch_size": 4}}))
    run_recipe(other, run_dir)
    assert len(scripted["translator-2"].requests) == 20  # another teacher's answers are its own
    assert "judge" not in scripted  # it wrote the same texts: their ratings are the same requests'
    assert len(rows(run_dir)) == 10


class MadeConfig(StageConfigBase):
    kind: Literal["made"] = "made"
    value: int = 0


def run_made(config: MadeConfig, ctx: StageContext) -> StageResult:
    """A stage that trains a model into its folder (the same folder each time it runs)."""
    model = ctx.stage_dir / "model"
    model.mkdir()
    (model / "weights.txt").write_text(str(config.value))
    return StageResult(model=model)


MADE = StageKind("made", MadeConfig, run_made, "a stage that makes a model", produces=frozenset({Artifact.MODEL}))
FIRST = """\
  - {name: first, kind: made, value: VALUE}
"""


def test_a_retrained_start_model_starts_the_journals_over(tmp_path, tiny_model_dir, scripted, monkeypatch):
    """The journals name the model the stage starts from by its folder, which a stage trained again keeps: kept
    journals would hand on a model's answers it no longer gives. Its run is in the signatures, so they start over
    (a teacher that samples the policy answers anew), after a changed input stage or one re-run alone."""
    monkeypatch.setattr(tempa.sft, "STAGE_KINDS", (*tempa.sft.STAGE_KINDS, MADE))
    run_dir = tmp_path / "run"
    run_recipe(load_recipe(translate_recipe(tmp_path, tiny_model_dir, {}, FIRST.replace("VALUE", "1"))), run_dir)
    assert len(scripted["translator"].requests) == 20
    scripted.clear()

    changed = load_recipe(translate_recipe(tmp_path, tiny_model_dir, {}, FIRST.replace("VALUE", "2")))
    assert run_recipe(changed, run_dir).ran == ["first", "tr"]
    assert len(scripted["translator"].requests) == 20 and len(scripted["judge"].requests) == 20
    scripted.clear()

    run_recipe(changed, run_dir, only="first")
    assert run_recipe(changed, run_dir).ran == ["tr"]  # stale: 'first' ran again since
    assert len(scripted["translator"].requests) == 20


def test_a_forced_run_starts_the_journals_over(tmp_path, tiny_model_dir, scripted):
    """--from names a stage to start over: its journals go with it, as before."""
    run_dir = tmp_path / "run"
    loaded = load_recipe(translate_recipe(tmp_path, tiny_model_dir, {}))
    run_recipe(loaded, run_dir)
    scripted.clear()
    run_recipe(loaded, run_dir, from_stage="tr")
    assert len(scripted["translator"].requests) == 20


def beta_recipe(tmp_path: Path, tiny_model_dir: Path, monkeypatch, *, failing: int = 0):
    """A one-round preference stage on 4 prompts, its judge scripted and its training launch recorded (the first
    ``failing`` launches fail as a killed training process does): (recipe at a beta, sampled, judge, trained)."""
    from tempa.chat_templates import bake_tokenizer

    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    start = ending_model(tiny_model_dir, tmp_path / "tok", tmp_path / "start")
    sampled = record_sampling(monkeypatch, preference_module)
    judge = ScriptedBackend(lambda prompt, j: "Good. [[7]]")
    monkeypatch.setattr(rewards_module, "build_backend", lambda *a, **k: judge)
    trained: list[dict] = []

    def launch(launch_config, module, args, log_file, **kwargs):
        plan = json.loads(Path(args[1]).read_text())
        trained.append(plan)
        if len(trained) <= failing:
            raise StageError("training process exited with code -9")
        final = Path(plan["final_dir"])
        final.mkdir(parents=True)
        (final / "tempa_train_metrics.json").write_text(json.dumps({"global_step": 1}))

    monkeypatch.setattr(runner, "run_launch", launch)
    samples = Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(samples.read_text(encoding="utf-8").splitlines(keepends=True)[:4]), encoding="utf-8")
    recipe = tmp_path / "p.yaml"

    def with_beta(beta: float):
        recipe.write_text(textwrap.dedent(f"""
            name: p
            base_model: {start}
            stages:
              - name: align
                kind: preference
                prompts: {{path: {prompts}}}
                sampling: {{n: 4, max_new_tokens: 12, batch_size: 2, thinking: {{mode: "off"}}}}
                rewards: [{{type: judge, max_unparsable: 0.5}}, {{type: length, unit: chars, per_token: 0.01}}]
                train: {{beta: {beta}}}
            """))
        return load_recipe(recipe)

    return with_beta, sampled, judge, trained


def test_a_preference_stage_whose_beta_changed_reuses_its_samples_and_scores_and_trains_again(
    tmp_path, tiny_model_dir, monkeypatch
):
    """A DPO beta changed cleared the stage's folder: every prompt was sampled from the policy again and every sample
    judged again, though neither depends on how the round trains. The first round's journals are kept (its policy is
    the stage's start model, unchanged) and the round is trained anew on pairs written anew."""
    with_beta, sampled, judge, trained = beta_recipe(tmp_path, tiny_model_dir, monkeypatch)
    run_dir = tmp_path / "run"
    run_recipe(with_beta(0.1), run_dir)
    # at most one judge request per sample (4 x 4): fewer, as one that cannot be paired is not judged
    assert len(sampled) == 4 and 0 < len(judge.prompts_seen) <= 16 and len(trained) == 1
    pairs = (run_dir / "align" / "round-1" / "pairs.jsonl").read_text(encoding="utf-8")
    sampled.clear()
    judge.prompts_seen.clear()

    decision = plan_run(with_beta(0.2), run_dir)[0]
    assert decision.reason.endswith("; its journals are kept: answers whose request is unchanged since its last run are reused")
    assert "train.beta 0.1 → 0.2" in decision.reason
    assert run_recipe(with_beta(0.2), run_dir).ran == ["align"]
    assert sampled == [] and judge.prompts_seen == []
    assert len(trained) == 2  # trained again, with the new beta
    assert trained[1]["train_args"]["beta"] == 0.2
    assert (run_dir / "align" / "round-1" / "pairs.jsonl").read_text(encoding="utf-8") == pairs


def test_an_interrupted_preference_stage_with_only_samples_takes_a_change_without_asking(
    tmp_path, tiny_model_dir, monkeypatch
):
    """Killed in round 1's training, before its first checkpoint, with hours of samples journaled: a changed beta was
    refused ("will not delete what it completed ... run with --from align"), and --from starts the named stage over
    whole, samples and all. The journals keep everything it paid for, so the change goes ahead; once the round has a
    checkpoint, the change would clear it, and the run refuses as for any training stage."""
    with_beta, sampled, judge, trained = beta_recipe(tmp_path, tiny_model_dir, monkeypatch, failing=1)
    run_dir = tmp_path / "run"
    with pytest.raises(StageError, match="code -9"):
        run_recipe(with_beta(0.1), run_dir)
    assert len(sampled) == 4 and len(trained) == 1
    sampled.clear()
    judge.prompts_seen.clear()

    checkpoint = run_dir / "align" / "round-1" / CHECKPOINTS_DIR / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / COMPLETE).write_text("")
    with pytest.raises(StageError, match=r"stage 'align': .*train\.beta 0\.1 → 0\.2.* or undo the change to continue "
                                         r"from round 1, checkpoint-2$"):
        run_recipe(with_beta(0.2), run_dir)
    shutil.rmtree(checkpoint.parent)

    decision = plan_run(with_beta(0.2), run_dir)[0]
    assert decision.discards is None and decision.keeps_journals
    assert run_recipe(with_beta(0.2), run_dir).ran == ["align"]
    assert sampled == [] and judge.prompts_seen == []  # nothing sampled or judged again
    assert [plan["train_args"]["beta"] for plan in trained] == [0.1, 0.2]
