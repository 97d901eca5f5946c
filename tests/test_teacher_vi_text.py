"""A Vietnamese team's teacher stages over HTTP: what the teacher writes is stored as text is typed (NFC).

A teacher (or the server's detokeniser) may send Vietnamese decomposed (NFD: 'ạ' as 'a' + U+0323), which renders
the same but is other bytes: the tiny tokenizer spends 113 tokens on a sentence whose NFC form takes 67, a model
trained on it learns to write the decomposed form, and a prompt in both forms was kept twice.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
from test_alignment_fakes import FakeOpenAI, chat_response, last_user

from stage_helpers import make_context
from tempa.alignment.generate_prompts_stage import GeneratePromptsStageConfig, run_generate_prompts
from tempa.alignment.synthesize_config import SynthesizeStageConfig
from tempa.alignment.synthesize_stage import run_synthesize
from tempa.alignment.translate_stage import TranslateStageConfig, run_translate
from tempa.sft.stage_api import StageError

PHO = "Làm thế nào để nấu phở bò ngon như ngoài hàng ở Hà Nội?"
SKY = "Ánh sáng mặt trời bị tán xạ bởi các phân tử không khí."


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def texts(rows: list[dict]) -> list[str]:
    return [m["content"] for r in rows for m in r["messages"] if isinstance(m.get("content"), str)]


def http(server: FakeOpenAI) -> dict:
    return {"type": "http", "base_url": server.base_url, "model": "teacher", "backoff_s": 0.01, "timeout_s": 10}


def translate(tmp_path, tiny_model_dir, translations: dict[str, str], source):
    """A translate stage into Vietnamese of ``source``, whose teacher (a local OpenAI-compatible server) answers
    ``translations[original]``."""
    def reply(body):
        original = re.search(r"\[Text\]\n(.*)\n\[End of text\]", last_user(body), re.S).group(1)
        return chat_response([translations[original]])

    ctx = make_context(tmp_path / "run", "tr", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    with FakeOpenAI(reply) as server:
        config = TranslateStageConfig.model_validate({
            "name": "tr", "target_language": "vi", "source": {"path": str(source)},
            "teacher": {"backend": http(server)}})
        result = run_translate(config, ctx)
    return ctx, result


def test_translations_are_stored_nfc_and_an_nfd_twin_is_a_duplicate(tmp_path, tiny_model_dir):
    translations = {"How do I cook pho?": nfd(PHO), "Tell me how to make pho.": PHO, "Why is the sky blue?": nfd(SKY)}

    source = tmp_path / "en.jsonl"
    source.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in translations), encoding="utf-8")
    ctx, result = translate(tmp_path, tiny_model_dir, translations, source)
    rows = read_jsonl(result.dataset)
    assert texts(rows) == [PHO, SKY]  # NFC, and the NFC twin of the first translation is no second row
    assert [r["reason"] for r in read_jsonl(ctx.stage_dir / "data" / "rejects.jsonl")] == ["duplicate"]


def generate(tmp_path, tiny_model_dir, written: dict[str, str], topic: str):
    """A generate_prompts stage whose teacher (a local OpenAI-compatible server) writes ``written[variation]``."""
    def reply(body):
        return chat_response([written[re.search(r"\(variation (\d+)\)", last_user(body)).group(1)]])

    ctx = make_context(tmp_path / "run", "gp", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    with FakeOpenAI(reply) as server:
        config = GeneratePromptsStageConfig.model_validate({
            "name": "gp", "topics": [topic], "per_topic": len(written), "language": "vi",
            "teacher": {"backend": http(server), "temperature": 1.0}})
        return ctx, run_generate_prompts(config, ctx)


def test_generated_prompts_are_stored_nfc_and_an_nfd_twin_is_a_duplicate(tmp_path, tiny_model_dir):
    written = {"1": PHO, "2": nfd(PHO), "3": nfd("Vì sao nhà Nguyễn chọn Huế làm kinh đô?")}

    ctx, result = generate(tmp_path, tiny_model_dir, written, "Ẩm thực Việt Nam")
    assert texts(read_jsonl(result.dataset)) == [PHO, "Vì sao nhà Nguyễn chọn Huế làm kinh đô?"]
    assert json.loads((ctx.stage_dir / "data" / "stats.json").read_text())["rejected"] == {"duplicate": 1}


def test_synthesized_answers_and_follow_ups_are_stored_nfc(tmp_path, tiny_model_dir, tokenizer_dir):
    followup = "Bạn có thể giải thích chi tiết hơn không?"

    def reply(body):
        asked = last_user(body)
        if "Write the user's next message" in asked:
            return chat_response([nfd(followup)])
        return chat_response([nfd(SKY)], reasoning=[nfd("Người dùng hỏi về bầu trời.")])

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Tại sao bầu trời có màu xanh?", "language": "vi"},
                                  ensure_ascii=False) + "\n", encoding="utf-8")
    ctx = make_context(tmp_path / "run", "synth", start_model=tiny_model_dir, tokenizer_dir=tokenizer_dir,
                       chat_template="")
    with FakeOpenAI(reply) as server:
        config = SynthesizeStageConfig.model_validate({
            "name": "synth", "prompts": {"path": str(prompts)}, "teacher": http(server),
            "sampling": {"n": 1, "max_new_tokens": 64, "thinking": {"mode": "on"}},
            "rewards": [{"type": "language"}],
            "second_turn": {"select": {"min_score": 1}}})
        result = run_synthesize(config, ctx)
    [row] = read_jsonl(result.dataset)
    first, second = row["messages"][1], row["messages"][3]
    assert (first["content"], first["reasoning_content"]) == (SKY, "Người dùng hỏi về bầu trời.")
    assert (row["messages"][2]["content"], second["content"]) == (followup, SKY)


WRITTEN = ["Làm thế nào để nấu phở bò ngon như ngoài hàng?", "Cách làm bánh xèo giòn là gì vậy bạn?",
           "Vì sao nhà Nguyễn chọn Huế làm kinh đô?", "Trận Bạch Đằng năm 938 có ý nghĩa gì?",
           "Nên đi du lịch Đà Lạt vào mùa nào?"]


def writer_and_loose_judge(body):
    """A teacher writing WRITTEN's prompts, and a judge that gives 2 of them no [[rating]]."""
    asked = last_user(body)
    if "[Prompt]" in asked:
        return chat_response(["Tôi thấy câu hỏi này ổn, 8/10." if "bánh xèo" in asked or "Đà Lạt" in asked
                              else "Rõ ràng. [[9]]"])
    return chat_response([WRITTEN[int(re.search(r"\(variation (\d+)\)", asked).group(1)) - 1]])


def test_a_gate_judge_without_ratings_stops_the_stage_and_a_raised_limit_reuses_its_replies(tmp_path, tiny_model_dir):
    """As a synthesize judge does: 2 of 5 replies without a [[rating]] (40% > max_unparsable 0.1) is a judge that
    cannot follow its rubric, not 2 bad prompts to drop quietly."""
    ctx = make_context(tmp_path / "run", "gp", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")

    def config(server: FakeOpenAI, **judge) -> GeneratePromptsStageConfig:
        return GeneratePromptsStageConfig.model_validate({
            "name": "gp", "topics": ["Việt Nam"], "per_topic": 5, "language": "vi",
            "teacher": {"backend": http(server), "temperature": 1.0},
            "judge": {"backend": http(server), "min_score": 8, **judge}})

    with FakeOpenAI(writer_and_loose_judge) as server:
        with pytest.raises(StageError, match=r"judge gave no \[\[rating\]\] in 2 of 5 replies \(40% > "
                           r"max_unparsable 0\.1\); e\.g\. 'Tôi thấy câu hỏi này ổn, 8/10\.'"):
            run_generate_prompts(config(server), ctx)
        asked = len(server.requests)
        result = run_generate_prompts(config(server, max_unparsable=0.5), ctx)
        assert len(server.requests) == asked  # the journaled replies were scored again, not bought again
    stats = json.loads((ctx.stage_dir / "data" / "stats.json").read_text())
    assert stats["rejected"] == {"judge_unrated": 2} and result.rows == 3
    assert stats["judge"] == {"replies": 5, "unparsable": 2, "unparsable_fraction": 0.4}


def test_a_raised_gate_limit_resumes_the_failed_stage_under_tempa_run(tmp_path):
    """The stage failed on its judge's unrated replies; raising judge.max_unparsable in the recipe changed the stage's
    fingerprint, so `tempa run` cleared the stage and paid for every prompt and every judge reply again (10 of 10
    requests), where the limit only decides whether the stage stops, never what it keeps."""
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import run_recipe

    with FakeOpenAI(writer_and_loose_judge) as server:
        def recipe(limit: float):
            backend = json.dumps(http(server))
            (tmp_path / "vi.yaml").write_text(f"""name: vi
base_model: "tempa:tiny"
stages:
  - name: gp
    kind: generate_prompts
    topics: ["Việt Nam"]
    per_topic: 5
    language: vi
    teacher: {{backend: {backend}, temperature: 1.0}}
    judge: {{backend: {backend}, min_score: 8, max_unparsable: {limit}}}
""", encoding="utf-8")
            return load_recipe(tmp_path / "vi.yaml")

        with pytest.raises(StageError, match=r"raise judge\.max_unparsable"):
            run_recipe(recipe(0.1), tmp_path / "run")
        asked = len(server.requests)
        run_recipe(recipe(0.5), tmp_path / "run")
        assert len(server.requests) == asked
    rows = read_jsonl(tmp_path / "run" / "gp" / "data" / "prompts.jsonl")
    assert [r["messages"][0]["content"] for r in rows] == [WRITTEN[0], WRITTEN[2], WRITTEN[3]]


def test_a_stages_paid_requests_and_their_tokens_are_in_its_metrics(tmp_path):
    """What a teacher and a judge were sent, and the tokens their servers billed, was in a log line per backend
    only: metrics.json (and so `tempa status`, the report) now carries it."""
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import run_recipe

    with FakeOpenAI(writer_and_loose_judge) as server:
        backend = json.dumps(http(server))
        (tmp_path / "vi.yaml").write_text(f"""name: vi
base_model: "tempa:tiny"
stages:
  - name: gp
    kind: generate_prompts
    topics: ["Việt Nam"]
    per_topic: 5
    language: vi
    teacher: {{backend: {backend}, temperature: 1.0}}
    judge: {{backend: {backend}, min_score: 8, max_unparsable: 0.5}}
""", encoding="utf-8")
        run_recipe(load_recipe(tmp_path / "vi.yaml"), tmp_path / "run")
        sent = len(server.requests)
    metrics = json.loads((tmp_path / "run" / "gp" / "metrics.json").read_text())
    # each fake reply bills 5 prompt tokens and 7 per choice (one choice each): 5 prompts written, 5 judged
    assert sent == 10
    assert {k: v for k, v in metrics.items() if k.startswith("api_")} == {
        "api_requests": 10, "api_retries": 0, "api_prompt_tokens": 5 * 10, "api_completion_tokens": 7 * 10}


RECIPE = """name: vi
base_model: "tempa:tiny"
stages:
  - name: tr
    kind: translate
    source: {path: ./en.jsonl}
    target_language: vi
    teacher: %s
  - name: synth
    kind: synthesize
    prompts: {path: "stage:tr"}
    teacher: %s
    rewards: [{type: length, unit: chars}]
"""
BACKEND = "{type: http, base_url: 'http://127.0.0.1:8000/v1', model: teacher}"


@pytest.mark.parametrize(("translate_teacher", "synth_teacher", "expected"), [
    # synthesize's shape in translate: three 'unknown field (check the spelling)' errors before
    (BACKEND, BACKEND, r"vi\.yaml:8: stages\[0\]\.teacher \(stage 'tr'\): .*a backend block; here the backend goes "
     r"under `backend:`: teacher: \{backend: \{type: http, \.\.\.\}, max_new_tokens: \.\.\.\}"),
    # translate's shape in synthesize: "Unable to extract tag using discriminator 'type'" before
    (f"{{backend: {BACKEND}}}", f"{{backend: {BACKEND}, max_new_tokens: 512}}",
     r"vi\.yaml:12: stages\[1\]\.teacher \(stage 'synth'\): .*is the backend block itself: teacher: \{type: http, "
     r"\.\.\.\}; `max_new_tokens` goes under `sampling:`"),
    # a sampling setting beside synthesize's backend: 'unknown field (check the spelling)' before
    (f"{{backend: {BACKEND}}}", "{type: http, base_url: 'http://x/v1', model: t, temperature: 0.7}",
     r"stages\[1\]\.teacher \(stage 'synth'\): .*`temperature` goes under `sampling:`"),
])
def test_a_teacher_block_in_the_other_stage_kind_s_shape_is_named(tmp_path, translate_teacher, synth_teacher,
                                                                  expected):
    """The three teacher stages spell `teacher` two ways; the Swallow recipe uses both, a new recipe mixes them up."""
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.loader import load_recipe

    (tmp_path / "en.jsonl").write_text(json.dumps({"prompt": "Hi there, how are you?"}) + "\n")
    recipe = tmp_path / "vi.yaml"
    recipe.write_text(RECIPE % (translate_teacher, synth_teacher))
    with pytest.raises(RecipeError, match=expected):
        load_recipe(recipe)


def test_translate_rejects_name_the_line_and_keep_the_original(tmp_path, tiny_model_dir):
    """A reviewer reads rejects.jsonl beside the source: the line an editor shows (blank and unreadable lines
    counted) and the English the teacher was given, not only what it wrote."""
    translations = {"What is the capital of France?": "Thủ đô của Pháp là gì vậy bạn ơi?",
                    "Tell me a joke about cats.": "Sure! Here is a joke about cats: why did the cat sit there?"}

    source = tmp_path / "en.jsonl"
    source.write_text(json.dumps({"prompt": "What is the capital of France?"}) + "\n\nnot json\n"
                      + json.dumps({"prompt": "Tell me a joke about cats."}) + "\n", encoding="utf-8")
    ctx, result = translate(tmp_path, tiny_model_dir, translations, source)
    [kept] = read_jsonl(result.dataset)
    assert (kept["provenance"]["row"], kept["provenance"]["line"]) == (0, 1)
    [reject] = read_jsonl(ctx.stage_dir / "data" / "rejects.jsonl")
    assert (reject["row"], reject["line"], reject["reason"]) == (3, 4, "language_en")
    assert reject["original"] == [{"role": "user", "content": "Tell me a joke about cats."}]
    assert reject["messages"] == [{"role": "user", "content": translations["Tell me a joke about cats."]}]


def test_a_language_reject_says_what_the_detector_saw(tmp_path, tiny_model_dir):
    """Vietnamese without its diacritics is filed under some other language ('language_fuv' in the trial): the
    reject says how sure the detector was ('bcl' at 0.27 here) and how little it gave Vietnamese."""
    written = {"1": "Lam the nao de nau pho bo ngon nhu ngoai hang o Ha Noi?", "2": "Vì sao nhà Nguyễn chọn Huế làm kinh đô?"}

    ctx, _ = generate(tmp_path, tiny_model_dir, written, "Ẩm thực")
    [reject] = read_jsonl(ctx.stage_dir / "data" / "rejects.jsonl")
    detected = reject["reason"].removeprefix("language_")
    assert detected not in ("vi", reject["reason"])
    assert re.fullmatch(rf"detected '{detected}' with probability 0\.\d\d; 'vi': 0\.\d\d", reject["detail"])
