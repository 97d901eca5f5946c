"""The `revise` pair strategy: a teacher rewrites each prompt's worst on-policy sample; the rewrite is chosen."""

from __future__ import annotations

import json
from pathlib import Path

from preference_helpers import ending_model
from test_alignment_fakes import FakeOpenAI, chat_response, last_user

from stage_helpers import make_context
from tempa.alignment import PreferenceStageConfig, run_preference
from tempa.sft.train_plan import TrainPlan

REWRITES = {
    "What is 2 + 3?": ("en", "5", "The answer is 5, since two plus three makes five."),
    "Berapa 4 + 4?": ("id", "8", "Jawabannya adalah 8, karena empat ditambah empat sama dengan delapan."),
}


PLANS: list[TrainPlan] = []


def fake_training(module: str, args: list[str], log_file: Path) -> None:
    """Stands in for the DPO worker: writes the final model marker the stage waits for."""
    plan = TrainPlan.read(Path(args[1]))
    plan.final_dir.mkdir(parents=True)
    (plan.final_dir / "tempa_train_metrics.json").write_text(json.dumps({"global_step": 1, "train": {"train_loss": 0.5}}))
    PLANS.append(plan)


def test_rewrites_of_the_worst_samples_become_the_chosen_side(tmp_path, tiny_model_dir):
    from tempa.chat_templates import bake_tokenizer

    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    start = ending_model(tiny_model_dir, tmp_path / "tok", tmp_path / "start")  # only ended samples are paired
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q, "language": lang, "answer": a}) + "\n"
                               for q, (lang, a, _) in REWRITES.items()))

    def reply(body):
        instruction = last_user(body)
        question = next(q for q in REWRITES if q in instruction)
        return chat_response([REWRITES[question][2]])

    PLANS.clear()
    ctx = make_context(tmp_path / "run", "align", start_model=start, tokenizer_dir=tmp_path / "tok",
                       chat_template="", launch=fake_training)
    with FakeOpenAI(reply) as server:
        config = PreferenceStageConfig.model_validate({
            "name": "align", "prompts": {"path": str(prompts)},
            "sampling": {"n": 3, "max_new_tokens": 8, "thinking": {"mode": "off"}},
            "rewards": [{"type": "answer"}, {"type": "language"}, {"type": "format", "require_stop": False}],
            "pairs": {"strategy": "revise", "min_margin": 0.5,
                      "revise": {"backend": {"type": "http", "base_url": server.base_url, "model": "teacher"}}},
        })
        result = run_preference(config, ctx)
    round_dir = ctx.stage_dir / "round-1"
    scores = {r["id"]: r for r in map(json.loads, (round_dir / "scores.jsonl").read_text().splitlines())}
    samples = {r["id"]: r for r in map(json.loads, (round_dir / "samples.jsonl").read_text().splitlines())}
    pairs = [json.loads(line) for line in (round_dir / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 2 and result.metrics["pair_fraction"] == 1.0
    for pair in pairs:
        question = pair["prompt"][-1]["content"]
        ended = [c["finish_reason"] == "stop" for c in samples[pair["prompt_id"]]["completions"]]
        totals = [r["scores"]["total"] for r, e in zip(scores[pair["prompt_id"]]["results"], ended, strict=True) if e]
        assert pair["chosen"][0]["content"] == REWRITES[question][2]
        assert pair["chosen_index"] == -1 and pair["rejected_score"] == min(totals)
        assert pair["chosen_scores"]["answer"] == 1.0 and pair["chosen_scores"]["language"] == 1.0
        worst_text = samples[pair["prompt_id"]]["completions"][pair["rejected_index"]]["text"].strip()
        # the reviser was shown that worst sample
        assert any(worst_text in last_user(b) and question in last_user(b) for b in server.requests)
    assert len(server.requests) == 2
    assert PLANS[0].train_data.parts[-3:] == ("round-1", "data", "pairs")
