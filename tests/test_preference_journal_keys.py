"""A preference round's journals go by each prompt's content: an edited prompts file samples and judges only what is new."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from preference_helpers import ending_model, record_sampling
from test_alignment_fakes import ScriptedBackend

import tempa.alignment.preference_stage as stage_module
import tempa.alignment.rewards as rewards_module
from stage_helpers import make_context
from tempa.alignment import PreferenceStageConfig, run_preference
from tempa.alignment.prompts import prompt_id
from tempa.sft.stage_api import StageError

SAMPLE_PROMPTS = Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl"


def question(row: dict | list) -> str:
    """The last message's text of a prompts row or of a pair's prompt."""
    return (row["messages"] if isinstance(row, dict) else row)[-1]["content"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture
def round_setup(tmp_path, tiny_model_dir, monkeypatch):
    """A real tiny policy sampled for real, a judge standing in for a paid API that records what it is asked, and a
    training launch that is killed once (after the judge pass), then succeeds."""
    from tempa.chat_templates import bake_tokenizer

    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    start = ending_model(tiny_model_dir, tmp_path / "tok", tmp_path / "start")
    sampled = record_sampling(monkeypatch, stage_module)
    judge = ScriptedBackend(lambda prompt, j: "Good. [[7]]")
    monkeypatch.setattr(rewards_module, "build_backend", lambda *a, **k: judge)
    launches: list[str] = []

    def launch(module: str, args: list[str], log_file: Path) -> None:
        launches.append(module)
        if len(launches) == 1:
            raise StageError("training process exited with code -9")
        final = Path(json.loads(Path(args[1]).read_text())["final_dir"])
        final.mkdir(parents=True)
        (final / "tempa_train_metrics.json").write_text(json.dumps({"global_step": 1}))

    ctx = make_context(tmp_path / "run", "align", start_model=start, tokenizer_dir=tmp_path / "tok",
                       chat_template="", launch=launch)
    rows = [json.loads(line) for line in SAMPLE_PROMPTS.read_text(encoding="utf-8").splitlines()[:8]]
    prompts = tmp_path / "prompts.jsonl"
    write_rows(prompts, rows)
    config = PreferenceStageConfig.model_validate({
        "name": "align", "prompts": {"path": str(prompts)},
        "sampling": {"n": 4, "max_new_tokens": 12, "batch_size": 2, "thinking": {"mode": "off"}},
        "rewards": [{"type": "judge", "max_unparsable": 0.5}, {"type": "length", "unit": "chars", "per_token": 0.01}],
    })
    return ctx, config, prompts, rows, sampled, judge


def test_an_edited_prompts_file_samples_and_judges_only_its_new_prompts(round_setup):
    """Killed after the judge pass, the prompts file gets a row inserted at its top and two appended (one it had is
    removed): the journals' signature listed every prompt's id, which held its place, so every sample and every
    judge reply was thrown away and paid for again. Only the new prompts are sampled and judged; the others keep
    their own samples (none moved to a neighbour), and the removed one is in no pair."""
    ctx, config, prompts, rows, sampled, judge = round_setup
    old, new = rows[:5], rows[5:]
    write_rows(prompts, old)
    with pytest.raises(StageError, match="code -9"):
        run_preference(config, ctx)
    round_dir = ctx.stage_dir / "round-1"
    assert sorted(sampled) == sorted(question(r) for r in old)
    before = {question(p["prompt"]): p for p in read_jsonl(round_dir / "pairs.jsonl")}
    removed = question(old[2])
    sampled.clear()
    judge.prompts_seen.clear()

    edited = [new[0], *old[:2], *old[3:], *new[1:]]
    write_rows(prompts, edited)
    result = run_preference(config, ctx)

    assert sorted(sampled) == sorted(question(r) for r in new)
    assert judge.prompts_seen and all(any(question(r) in seen for r in new) for seen in judge.prompts_seen)
    pairs = {question(p["prompt"]): p for p in read_jsonl(round_dir / "pairs.jsonl")}
    assert removed not in pairs and set(pairs) <= {question(r) for r in edited}
    kept = {q: p for q, p in before.items() if q != removed}
    assert kept and all(pairs[q]["chosen"] == p["chosen"] and pairs[q]["rejected"] == p["rejected"]
                        for q, p in kept.items())
    # each pair names the row it came from in the file as it is now
    assert all(pairs[question(r)]["row"] == f"line {i + 1}" for i, r in enumerate(edited) if question(r) in pairs)
    assert result.rounds[0].prompts == len(edited)


@pytest.fixture
def scripted_round(tmp_path, tiny_model_dir, tokenizer_dir, monkeypatch):
    """A policy that answers by script (samples of different lengths), the training launch killed, and a prompts
    file of four rows."""
    policy = ScriptedBackend(lambda prompt, j: f"answer {j} " * (j + 1))
    monkeypatch.setattr(stage_module, "build_backend", lambda *a, **k: policy)

    def launch(module: str, args: list[str], log_file: Path) -> None:
        raise StageError("training process exited with code -9")

    ctx = make_context(tmp_path / "run", "align", start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir,
                       launch=launch)
    rows = [json.loads(line) for line in SAMPLE_PROMPTS.read_text(encoding="utf-8").splitlines()[:5]]
    prompts = tmp_path / "prompts.jsonl"
    write_rows(prompts, rows[:4])

    def config(judge: dict) -> PreferenceStageConfig:
        return PreferenceStageConfig.model_validate({
            "name": "align", "prompts": {"path": str(prompts)},
            "sampling": {"n": 2, "max_new_tokens": 8, "thinking": {"mode": "off"}},
            "rewards": [{"type": "judge", "max_unparsable": 0.5, **judge},
                        {"type": "length", "unit": "chars", "per_token": 0.01}]})

    return ctx, config, prompts, rows, policy


def judged_round(scripted_round, monkeypatch) -> tuple[ScriptedBackend, Path]:
    """The round sampled and judged ("Good. [[7]]" each), its training launch killed: the judge, the round's folder."""
    ctx, config, _, _, _ = scripted_round
    judge = ScriptedBackend(lambda prompt, j: "Good. [[7]]")
    monkeypatch.setattr(rewards_module, "build_backend", lambda *a, **k: judge)
    with pytest.raises(StageError, match="code -9"):
        run_preference(config({}), ctx)
    return judge, ctx.stage_dir / "round-1"


def test_journals_of_an_older_tempa_are_sampled_again_once(scripted_round, monkeypatch):
    """An older tempa signed its journals with its prompts' positional ids and keyed records by them: such a round
    resumes by sampling and judging every prompt again (once), never by reading a record as another prompt's."""
    ctx, config, _, rows, policy = scripted_round
    judge, round_dir = judged_round(scripted_round, monkeypatch)
    # The journals as the older tempa wrote them: ids by place, the list of them in the signature.
    old_ids = [prompt_id(i, r["messages"]) for i, r in enumerate(rows[:4])]
    for name in ("samples.jsonl", "scores.jsonl"):
        meta = round_dir / f"{name}.meta.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "prompts": old_ids}, sort_keys=True))
        records = read_jsonl(round_dir / name)
        write_rows(round_dir / name, [{**r, "id": i} for r, i in zip(records, old_ids, strict=True)])
    (round_dir / "judge_replies.jsonl").unlink()  # an older tempa journaled no judge reply by its request
    policy.prompts_seen.clear()
    judge.prompts_seen.clear()
    with pytest.raises(StageError, match="code -9"):
        run_preference(config({}), ctx)
    assert sorted(policy.prompts_seen) == sorted(question(r) for r in rows[:4])
    assert len(judge.prompts_seen) == 4 * 2
    assert {r["id"] for r in read_jsonl(round_dir / "samples.jsonl")}.isdisjoint(old_ids)


def test_ratings_an_earlier_tempa_read_are_read_again_from_the_judges_replies(scripted_round, monkeypatch):
    """An earlier tempa read a rating off any "[2]" in a reply ("Step [2] is wrong"): a round it scored, resumed by
    this tempa, kept those wrong ratings in its score journal. The scores are read again from the journaled replies,
    and no reply is bought again."""
    ctx, config, _, _, _ = scripted_round
    judge, round_dir = judged_round(scripted_round, monkeypatch)
    # the journal as the earlier tempa signed and wrote it: without the rule in its signature, a rating of 2
    meta = round_dir / "scores.jsonl.meta.json"
    signed = json.loads(meta.read_text())
    signed.pop("judge_rating", None)
    meta.write_text(json.dumps(signed, sort_keys=True))
    text = (round_dir / "scores.jsonl").read_text(encoding="utf-8")
    assert '"judge": 7.0' in text
    (round_dir / "scores.jsonl").write_text(text.replace('"judge": 7.0', '"judge": 2.0'), encoding="utf-8")
    judge.prompts_seen.clear()
    with pytest.raises(StageError, match="code -9"):
        run_preference(config({}), ctx)
    assert judge.prompts_seen == []
    rescored = (round_dir / "scores.jsonl").read_text(encoding="utf-8")
    assert '"judge": 7.0' in rescored and '"judge": 2.0' not in rescored


def test_a_sample_that_cannot_take_part_in_a_pair_is_not_judged(scripted_round, monkeypatch):
    """A round judged every sample, cut-off ones too, which pair building then left out (a trial: 55 of 80 judged
    samples were incomplete). A judge call is paid for: only samples that can be paired are rated."""
    from test_alignment_fakes import ScriptedBackend

    from tempa.alignment.completions import Completion

    ctx, config, _, _, policy = scripted_round

    def half_cut(prompts, params, *, thinking_modes=None):
        groups = ScriptedBackend.sample(policy, prompts, params, thinking_modes=thinking_modes)
        return [[Completion(text=c.text, finish_reason="length" if j % 2 else "stop", completion_tokens=3)
                 for j, c in enumerate(group)] for group in groups]

    monkeypatch.setattr(policy, "sample", half_cut)
    judge = ScriptedBackend(lambda prompt, j: "Good. [[7]]")
    monkeypatch.setattr(rewards_module, "build_backend", lambda *a, **k: judge)
    with pytest.raises(StageError, match=r"no usable preference pair .*'fewer_than_two_complete': 4"):
        run_preference(config({}), ctx)
    assert len(judge.prompts_seen) == 4  # of 4 prompts x 2 samples, the one that ended on its own
    scores = read_jsonl(ctx.stage_dir / "round-1" / "scores.jsonl")
    assert all(r["results"][1]["details"]["judge"] == {"not_judged": True} and r["results"][1]["scores"]["total"] is None
               for r in scores)


def test_a_judge_server_down_is_found_before_prompts_added_since_scoring_are_sampled(scripted_round):
    """Scoring was journaled complete, then a prompt was added to the file: its judging is still ahead, so a judge
    server that is down now is refused before the policy samples it (the complete marker alone let the round
    sample first). With nothing added, a finished scoring pass asks no server."""
    from test_alignment_fakes import FakeOpenAI, chat_response

    ctx, config, prompts, rows, policy = scripted_round
    with FakeOpenAI(lambda body: chat_response(["Good. [[7]]"])) as server:
        judge = {"backend": {"type": "http", "base_url": server.base_url, "model": "judge-model", "max_retries": 1,
                             "backoff_s": 0.01}}
        with pytest.raises(StageError, match="code -9"):
            run_preference(config(judge), ctx)
    # the server is gone now; everything it was asked is journaled
    policy.prompts_seen.clear()
    with pytest.raises(StageError, match="code -9"):
        run_preference(config(judge), ctx)
    assert policy.prompts_seen == []
    write_rows(prompts, rows[:5])
    with pytest.raises(StageError, match=r"judge 'judge' \(rewards\[0\]\.backend\).*cannot be reached"):
        run_preference(config(judge), ctx)
    assert policy.prompts_seen == []


@pytest.mark.parametrize(("max_steps", "trained"), [(1, 2), (2, None)])
def test_a_round_that_max_steps_ends_before_one_pass_says_how_many_pairs_it_trained(scripted_round, monkeypatch,
                                                                                    caplog, max_steps, trained):
    """A trial: metrics and status said `pairs: 12` where max_steps 3 x batch 2 had trained 6 (trainer log epoch
    0.5), and nothing warned. The round counts the pairs DPO took (max_steps x per-device batch x accumulation x the
    processes the launch ran) and warns, in its log and the run's closing notes, when max_steps left some out."""
    from tempa.sft.train_plan import OUTCOME_FILE, ParameterShards, TrainOutcome

    ctx, config, _, _, _ = scripted_round
    judge = ScriptedBackend(lambda prompt, j: f"[[{3 + 4 * (j % 2)}]]")  # the samples of a prompt rated apart
    monkeypatch.setattr(rewards_module, "build_backend", lambda *a, **k: judge)

    def launch(module: str, args: list[str], log_file: Path) -> None:
        final = Path(json.loads(Path(args[1]).read_text())["final_dir"])
        final.mkdir(parents=True)
        shards = ParameterShards(distributed_type="MULTI_GPU", parameters=10, per_rank=[10, 10])  # 2 processes
        (final / OUTCOME_FILE).write_text(TrainOutcome(global_step=max_steps, shards=shards).model_dump_json())

    ctx = dataclasses.replace(ctx, launch=launch)
    stage = config({}).model_copy(update={"train": {"max_steps": max_steps, "per_device_train_batch_size": 1}})
    with caplog.at_level("WARNING"):
        result = run_preference(stage, ctx)
    assert result.rounds[0].pairs == 4 and result.metrics["round1_pairs"] == 4
    assert result.rounds[0].pairs_trained == (trained or 4) == result.metrics["round1_pairs_trained"]
    if trained is None:  # 2 steps of 2 pairs: every pair once
        assert result.notes == [] and "DPO trained on" not in caplog.text
        return
    note = "round 1: DPO trained on 2 of its 4 pairs: max_steps 1 ended training before one pass over them"
    assert len(result.notes) == 1 and result.notes[0].startswith(note)
    assert caplog.text.count(note) == 1
