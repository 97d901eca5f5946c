"""`translate` and `generate_prompts`: a scripted teacher and judge, the real filters, outputs and references."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tempa.alignment.backends import SamplingBackend
from tempa.alignment.completions import Completion
from tempa.alignment.generate_prompts_stage import GeneratePromptsStageConfig, run_generate_prompts
from tempa.alignment.translate_stage import TranslateStageConfig, run_translate
from tempa.sft.stage_api import StageError
from tests.stage_helpers import make_context

TRANSLATIONS = {
    "What is the capital of France?": "フランスの首都はどこですか？",
    "Tell me a joke about cats.": "Sure! Here is a joke about cats.",  # answered in English, not translated
    "Hi": "こんにちは、今日はとても良い天気ですね。散歩に行きましょうか。それとも家でゆっくりしますか。",  # ratio
    "Write a haiku about the sea.": "海についての俳句を書いてください。",
    "Explain photosynthesis.": "光合成を説明し",  # cut off (finish_reason length)
    "How do I bake bread?": "パンの焼き方を教えてください。",
    "Sure, bread needs flour, water, yeast and salt.": "はい、パンには小麦粉、水、酵母、塩が必要です。",
}


class Scripted(SamplingBackend):
    def __init__(self, reply) -> None:
        self.reply = reply
        self.requests: list[str] = []

    def sample(self, prompts, params, *, thinking_modes=None):
        out = []
        for messages in prompts:
            text = messages[-1]["content"]
            self.requests.append(text)
            reply, finish = self.reply(text)
            out.append([Completion(text=reply, finish_reason=finish)])
        return out

    def close(self) -> None:
        pass


def translator(request: str):
    original = re.search(r"\[Text\]\n(.*)\n\[End of text\]", request, re.S).group(1)
    return TRANSLATIONS[original], "length" if original.startswith("Explain") else "stop"


def translation_judge(request: str):
    return ("Unfaithful. [[4]]" if "俳句" in request else "Good. [[9]]"), "stop"


@pytest.fixture()
def backends(monkeypatch):
    import tempa.alignment.backends as module

    made: dict[str, Scripted] = {}

    def build_backend(config, **kwargs):
        made[config.model] = Scripted(SCRIPTS[config.model])
        return made[config.model]

    monkeypatch.setattr(module, "build_backend", build_backend)
    import tempa.alignment.teacher_text as teacher_text  # the stages build their backends here

    monkeypatch.setattr(teacher_text, "build_backend", build_backend)
    return made


def prompt_writer(request: str):
    topic = re.search(r"Topic: (.*)\n", request).group(1)
    index = re.search(r"\(variation (\d+)\)", request).group(1)
    return {("料理", "1"): "「簡単な和食の献立を一週間分考えてください。」", ("料理", "2"): "簡単な和食の献立を一週間分考えてください。",
            ("料理", "3"): "What should I cook tonight for my family?",
            ("歴史", "1"): "江戸時代の庶民の暮らしについて詳しく教えてください。",
            ("歴史", "2"): "鎌倉幕府が成立した理由を説明してください。",
            ("歴史", "3"): "はい"}[(topic, index)], "stop"


def prompt_judge(request: str):
    return ("Vague. [[7]]" if "鎌倉" in request else "Clear. [[8]]"), "stop"


SCRIPTS = {"translator": translator, "judge": translation_judge, "writer": prompt_writer,
           "prompt-judge": prompt_judge}
HTTP = {"type": "http", "base_url": "http://teacher.invalid/v1"}


def _rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_translate_first_turns_filters_and_judges(tmp_path, tiny_model_dir, backends):
    firsts = ["What is the capital of France?", "Tell me a joke about cats.", "Hi", "Write a haiku about the sea.",
              "Explain photosynthesis.", "What is the capital of France?"]
    source = _rows(tmp_path / "lmsys.jsonl", [
        {"conversation": [{"role": "user", "content": q}, {"role": "assistant", "content": "an answer"},
                          {"role": "user", "content": "and a second turn"}]} for q in firsts])
    config = TranslateStageConfig.model_validate({
        "name": "translate", "target_language": "ja", "source": {"path": source, "messages_field": "conversation"},
        "teacher": {"backend": {**HTTP, "model": "translator"}},
        "judge": {"backend": {**HTTP, "model": "judge"}, "min_score": 7}})
    ctx = make_context(tmp_path / "run", "translate", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    result = run_translate(config, ctx)
    rows = [json.loads(line) for line in result.dataset.read_text(encoding="utf-8").splitlines()]
    # only the first user turn is sent and kept: a prompts dataset
    assert [r["messages"] for r in rows] == [[{"role": "user", "content": "フランスの首都はどこですか？"}]]
    assert rows[0]["language"] == "ja" and rows[0]["judge"] == 9.0
    assert all("second turn" not in r and "an answer" not in r for r in backends["translator"].requests)
    rejects = {r["row"]: r["reason"] for r in map(json.loads, (result.dataset.parent / "rejects.jsonl").read_text(
        encoding="utf-8").splitlines())}
    assert rejects == {1: "language_en", 2: "length_ratio", 3: "judge_score", 4: "cut_off", 5: "duplicate"}
    # the typed result carries them, and the report shows them as it does a synthesize stage's
    assert (result.requested, result.rejected) == (6, dict.fromkeys(
        ["language_en", "length_ratio", "judge_score", "cut_off", "duplicate"], 1))
    assert result.judges == {"judge_replies": 2, "judge_unparsable": 0, "judge_unparsable_fraction": 0.0}
    from tempa.recipes.report import _preference_data_section
    from tempa.recipes.rundir import Manifest

    manifest = Manifest(name="translate", kind="translate", fingerprint="f", status="done", started_at=0.0)
    page = "".join(_preference_data_section([(manifest, type(result).model_validate_json(result.model_dump_json()))]))
    assert "<h3>translate (translate)</h3>" in page and "<td>1 / 6</td><td>judge: 0/2</td>" in page, page
    assert "cut_off: 1" in page and "language_en: 1" in page, page


def test_translate_whole_conversations_into_an_sft_dataset(tmp_path, tiny_model_dir, backends):
    source = _rows(tmp_path / "magpie.jsonl", [{"messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Sure, bread needs flour, water, yeast and salt."}]}])
    config = TranslateStageConfig.model_validate({
        "name": "translate-magpie", "target_language": "ja", "turns": "all", "source": {"path": source},
        "teacher": {"backend": {**HTTP, "model": "translator"}}})
    ctx = make_context(tmp_path / "run", "translate-magpie", start_model=tiny_model_dir,
                       tokenizer_dir=tiny_model_dir, chat_template="")
    rows = [json.loads(line) for line in run_translate(config, ctx).dataset.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["messages"] == [
        {"role": "system", "content": "You are helpful."},  # system prompts are not translated
        {"role": "user", "content": "パンの焼き方を教えてください。"},
        {"role": "assistant", "content": "はい、パンには小麦粉、水、酵母、塩が必要です。"}]


def test_generate_prompts_filters_and_judge_threshold(tmp_path, tiny_model_dir, backends):
    config = GeneratePromptsStageConfig.model_validate({
        "name": "magpie", "topics": ["料理", "歴史"], "per_topic": 3, "language": "ja",
        "system_prompt": "You are writing questions from Japanese users.",
        "teacher": {"backend": {**HTTP, "model": "writer"}, "temperature": 1.0},
        "judge": {"backend": {**HTTP, "model": "prompt-judge"}, "min_score": 8}})
    ctx = make_context(tmp_path / "run", "magpie", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    result = run_generate_prompts(config, ctx)
    rows = [json.loads(line) for line in result.dataset.read_text(encoding="utf-8").splitlines()]
    assert [(r["topic"], r["messages"][0]["content"]) for r in rows] == [
        ("料理", "簡単な和食の献立を一週間分考えてください。"),  # quotes stripped
        ("歴史", "江戸時代の庶民の暮らしについて詳しく教えてください。")]
    assert all(r["judge"] >= 8 for r in rows) and result.rows == 2
    assert all(r.startswith("You are writing questions") for r in backends["writer"].requests)
    stats = json.loads((result.dataset.parent / "stats.json").read_text())
    # a judge score of 7 is rejected (Swallow's gemma-magpie: scores <= 7 rejected)
    assert stats["rejected"] == {"duplicate": 1, "language_en": 1, "too_short": 1, "judge_score": 1}
    assert result.rejected == stats["rejected"] and result.requested == stats["requested"]


def test_a_stage_reads_prompts_from_an_earlier_stage(tmp_path):
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.loader import load_recipe

    recipe = tmp_path / "r.yaml"
    body = """name: r
base_model: "tempa:tiny"
stages:
  - {name: gen, kind: generate_prompts, topics: [food], language: ja}
  - name: answer
    kind: synthesize
    prompts: {path: "stage:%s"}
    rewards: [{type: length, unit: chars}]
"""
    recipe.write_text(body % "gen")
    loaded = load_recipe(recipe)
    assert loaded.stages[1].prompts.path == "stage:gen"
    recipe.write_text(body % "nope")
    with pytest.raises(RecipeError, match=r"r\.yaml:\d+: .*prompts\.path.*nope"):
        load_recipe(recipe)


def test_translate_errors_name_the_row(tmp_path, tiny_model_dir, backends):
    """Named by line, as every reader of prompt rows names them: not by a count of the rows left after blank
    lines, nor by the row's place after shuffling."""
    good = json.dumps({"messages": [{"role": "user", "content": "Hi"}]})
    cases = {"bad.jsonl": (f"{good}\n\n" + json.dumps({"text": "x"}) + "\n", "line 3: has neither a 'messages' list"),
             "list.jsonl": (f"{good}\n[1, 2]\n", "line 2: expected a JSON object, got list"),
             "strings.jsonl": (f"{good}\n" + json.dumps({"messages": ["Hi"]}) + "\n",
                               "line 2: 'messages' must be a list of {role, content} objects")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        for shuffle in (False, True):
            config = TranslateStageConfig.model_validate({
                "name": "t", "target_language": "ja", "source": {"path": str(tmp_path / name), "shuffle": shuffle},
                "teacher": {"backend": {**HTTP, "model": "translator"}}})
            ctx = make_context(tmp_path / "run", "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                               chat_template="")
            with pytest.raises(StageError, match=re.escape(f"{name}: {message}")):
                run_translate(config, ctx)


def test_prompt_source_keeps_only_the_languages_asked_for():
    import tempa.recipes
    from tempa.alignment.prompts import PromptSource, load_prompts, read_rows

    path = str(Path(tempa.recipes.__file__).parent / "data" / "sample_prompts.jsonl")
    labelled = [r for r in read_rows(PromptSource(path=path)) if r.get("language") in ("th", "vi")]
    kept = load_prompts(PromptSource(path=path, languages=["th", "vi"]), seed=0)
    assert kept and {p.language for p in kept} == {"th", "vi"}
    # no prompt of another language gets in; prompts too short to tell (a bare sum) stay out too
    texts = {r["messages"][0]["content"]: r["language"] for r in labelled}
    assert all(texts.get(p.question) == p.language for p in kept) and len(kept) >= 0.8 * len(labelled)
    assert len(load_prompts(PromptSource(path=path, languages=["th", "vi"], limit=2), seed=0)) == 2
    with pytest.raises(StageError, match="no prompts in ko"):
        load_prompts(PromptSource(path=path, languages=["ko"]), seed=0)


class Interrupted(Exception):
    """Ctrl-C or a crash in the middle of a long teacher pass."""


class Counting(SamplingBackend):
    """A teacher that answers every request in Japanese and records them; after ``crash_after`` answered (and
    paid for) requests it crashes."""

    def __init__(self, reply, crash_after: int | None = None) -> None:
        self.reply, self.crash_after, self.requests = reply, crash_after, []

    def sample(self, prompts, params, *, thinking_modes=None):
        out = []
        for p in prompts:
            if self.crash_after is not None and len(self.requests) >= self.crash_after:
                raise Interrupted(f"after {len(self.requests)} requests")
            self.requests.append(p[-1]["content"])
            out.append([Completion(text=self.reply(p[-1]["content"]), finish_reason="stop")])
        return out

    def close(self) -> None:
        pass


def japanese(request: str) -> str:
    numbers = re.findall(r"\d+", request)
    return f"質問番号{numbers[0] if numbers else ''}について詳しく教えてください。" if "[Text]" in request else \
        "とても良い翻訳です。 [[9]]"


def _run_with(monkeypatch, backends: dict[str, Counting], config, ctx):
    import tempa.alignment.teacher_text as teacher_text

    monkeypatch.setattr(teacher_text, "build_backend", lambda block, **kwargs: backends[block.model])
    return run_translate(config, ctx)


def test_translate_resumes_from_its_journal_and_asks_again_only_what_changed(tmp_path, tiny_model_dir, monkeypatch):
    """300k rows through a paid API: a crash at row N must not pay for rows 1..N again. A changed teacher or
    instruction is asked anew; a transport setting (concurrency) is not a reason to start over."""
    source = _rows(tmp_path / "prompts.jsonl", [{"prompt": f"Please explain question number {i} in detail."}
                                                for i in range(20)])
    block = {"name": "t", "target_language": "ja", "source": {"path": source},
             "teacher": {"backend": {**HTTP, "model": "translator"}, "batch_size": 4},
             "judge": {"backend": {**HTTP, "model": "judge"}, "min_score": 8, "batch_size": 4}}
    config = TranslateStageConfig.model_validate(block)
    ctx = make_context(tmp_path / "run", "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    crashing = {"translator": Counting(japanese, crash_after=8), "judge": Counting(japanese)}
    with pytest.raises(Interrupted):
        _run_with(monkeypatch, crashing, config, ctx)
    assert len(crashing["translator"].requests) == 8 and crashing["judge"].requests == []

    healthy = {"translator": Counting(japanese), "judge": Counting(japanese, crash_after=4)}
    with pytest.raises(Interrupted):  # now the judge's pass is cut short after its first batch
        _run_with(monkeypatch, healthy, config, ctx)
    # the 8 answered before the crash are not asked (nor paid for) again
    assert len(healthy["translator"].requests) == 12
    assert not set(healthy["translator"].requests) & set(crashing["translator"].requests)

    again = {"translator": Counting(japanese), "judge": Counting(japanese)}
    result = _run_with(monkeypatch, again, config, ctx)
    assert again["translator"].requests == [] and len(again["judge"].requests) == 16
    rows = [json.loads(line) for line in result.dataset.read_text(encoding="utf-8").splitlines()]
    assert [r["provenance"]["row"] for r in rows] == list(range(20))  # every row, in source order
    assert [r["messages"][0]["content"] for r in rows] == [japanese(f"[Text] {i}") for i in range(20)]

    faster = TranslateStageConfig.model_validate(
        {**block, "teacher": {**block["teacher"], "backend": {**HTTP, "model": "translator", "concurrency": 64}}})
    unchanged = {"translator": Counting(japanese), "judge": Counting(japanese)}
    _run_with(monkeypatch, unchanged, faster, ctx)
    assert unchanged["translator"].requests == [] and unchanged["judge"].requests == []

    other_model = TranslateStageConfig.model_validate(
        {**block, "teacher": {**block["teacher"], "backend": {**HTTP, "model": "translator-2"}}})
    fresh = {"translator-2": Counting(japanese), "judge": Counting(japanese)}
    _run_with(monkeypatch, fresh, other_model, ctx)
    assert len(fresh["translator-2"].requests) == 20

    edited = TranslateStageConfig.model_validate(
        {**block, "teacher": {**block["teacher"], "backend": {**HTTP, "model": "translator-2"}},
         "instruction": "Into {language}, faithfully:\n[Text]\n{text}\n[End of text]"})
    reasked = {"translator-2": Counting(japanese), "judge": Counting(japanese)}
    _run_with(monkeypatch, reasked, edited, ctx)
    assert len(reasked["translator-2"].requests) == 20
    assert all(r.startswith("Into") for r in reasked["translator-2"].requests)


@pytest.mark.parametrize(("reply", "reason"), [
    # A provider's content filter cuts an answer where it strikes: the part before the cut was kept as a finished
    # translation.
    (lambda text: (japanese(text), "content_filter"), "content_filter"),
    # A teacher that answered nothing was counted as `too_short`, which points at min_chars rather than at the server.
    (lambda text: ("", "stop"), "empty"),
], ids=["content_filter", "empty"])
def test_a_translation_the_teacher_did_not_finish_is_dropped_with_its_reason(tmp_path, tiny_model_dir, monkeypatch,
                                                                              reply, reason):
    class Odd(Counting):
        def sample(self, prompts, params, *, thinking_modes=None):
            out = []
            for prompt in prompts:
                question = prompt[-1]["content"]
                text, finish = reply(question) if "number 1 " in question else (japanese(question), "stop")
                out.append([Completion(text=text, finish_reason=finish)])
            return out

    source = _rows(tmp_path / "prompts.jsonl", [{"prompt": f"Please explain question number {i} in detail."}
                                                for i in range(3)])
    config = TranslateStageConfig.model_validate({"name": "t", "target_language": "ja", "source": {"path": source},
                                                  "teacher": {"backend": {**HTTP, "model": "translator"}}})
    ctx = make_context(tmp_path / "run", "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    result = _run_with(monkeypatch, {"translator": Odd(japanese)}, config, ctx)
    rows = [json.loads(line) for line in result.dataset.read_text(encoding="utf-8").splitlines()]
    assert [r["provenance"]["row"] for r in rows] == [0, 2]
    stats = json.loads((result.dataset.parent / "stats.json").read_text())
    assert stats["rejected"] == {reason: 1} and stats["rows"] == stats["kept"] + 1


def test_whole_conversations_are_deduplicated_whole_not_turn_by_turn(tmp_path, tiny_model_dir, monkeypatch):
    """With `turns: all`, a short turn that two conversations share ('Thanks!' -> 'ありがとう') dropped the second
    whole conversation as a duplicate; only a conversation translated the same as an earlier one is one."""
    replies = {"Thanks!": "ありがとうございます。", "You're welcome!": "どういたしまして。"}

    def translator(request: str) -> str:
        text = request.rsplit("\n", 1)[-1].strip()
        return replies.get(text) or f"翻訳：{text}についての長い日本語の文章です。"

    def chat(question: str, answer: str) -> dict:
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer},
                             {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome!"}]}

    source = _rows(tmp_path / "chats.jsonl", [chat("What is tempura?", "A fried dish."),
                                              chat("What is sushi?", "Rice with fish."),
                                              chat("What is tempura?", "A fried dish.")])
    config = TranslateStageConfig.model_validate(
        {"name": "t", "target_language": "ja", "source": {"path": source}, "turns": "all",
         "instruction": "Translate into {language}.\n{text}", "filters": {"language": False},
         "teacher": {"backend": {**HTTP, "model": "translator"}}})
    ctx = make_context(tmp_path / "run", "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    result = _run_with(monkeypatch, {"translator": Counting(translator)}, config, ctx)
    rows = [json.loads(line) for line in result.dataset.read_text(encoding="utf-8").splitlines()]
    assert [r["provenance"]["row"] for r in rows] == [0, 1]
    stats = json.loads((result.dataset.parent / "stats.json").read_text())
    assert stats["rejected"] == {"duplicate": 1}


def test_a_kanji_only_translation_is_no_wrong_language_for_a_japanese_target(tmp_path, tiny_model_dir, monkeypatch):
    """'Mount Fuji.' -> '富士山': a kanji-only term is Japanese as much as Chinese (py3langid files it under zh), so
    the language rules call it undetermined for a Japanese target; the translate filter read the detector's label
    itself and dropped the conversation as language_zh."""
    replies = {"What is the highest mountain in Japan?": "日本で一番高い山は何ですか？", "Mount Fuji.": "富士山",
               "Where is the University of Tokyo Hospital?": "東京大学医学部附属病院はどこですか？",
               "It is in Bunkyo.": "文京区です。", "Say something in Chinese.": "中文怎么说？",
               "I like to eat noodles every day.": "我每天都喜欢吃面条，因为面条很好吃。"}

    def translator(request: str) -> str:
        return replies[request.rsplit("\n", 1)[-1].strip()]

    source = _rows(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in [("What is the highest mountain in Japan?", "Mount Fuji."),
                     ("Where is the University of Tokyo Hospital?", "It is in Bunkyo."),
                     ("Say something in Chinese.", "I like to eat noodles every day.")]])
    config = TranslateStageConfig.model_validate(
        {"name": "t", "target_language": "ja", "source": {"path": source}, "turns": "all",
         "instruction": "Translate into {language}.\n{text}", "teacher": {"backend": {**HTTP, "model": "translator"}}})
    ctx = make_context(tmp_path / "run", "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    result = _run_with(monkeypatch, {"translator": Counting(translator)}, config, ctx)
    rows = [json.loads(line) for line in result.dataset.read_text(encoding="utf-8").splitlines()]
    assert [r["provenance"]["row"] for r in rows] == [0, 1]
    assert rows[0]["messages"][1]["content"] == "富士山"
    stats = json.loads((result.dataset.parent / "stats.json").read_text())
    assert stats["rejected"] == {"language_zh": 1}  # Chinese prose is still Chinese


def test_a_row_without_a_user_message_is_a_reject_not_the_end_of_the_stage(tmp_path, tiny_model_dir, backends):
    """Hub exports hold system-only and assistant-only rows: one of them stopped the whole stage (after every earlier
    stage had run), where an sft source rejects the row and goes on. A source with no usable row at all still stops:
    its fields are wrong, not one row."""
    rows = [{"messages": [{"role": "user", "content": "What is the capital of France?"}]},
            {"messages": [{"role": "system", "content": "You are helpful."}]},
            {"messages": [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "  "}]},
            {"messages": [{"role": "user", "content": "How do I bake bread?"}]}]
    path = _rows(tmp_path / "mixed.jsonl", rows)
    config = TranslateStageConfig.model_validate({
        "name": "t", "target_language": "ja", "source": {"path": path}, "filters": {"min_letters": 1},
        "teacher": {"backend": {**HTTP, "model": "translator"}}})
    ctx = make_context(tmp_path / "run", "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    result = run_translate(config, ctx)
    kept = [json.loads(line) for line in Path(result.dataset).read_text(encoding="utf-8").splitlines()]
    assert [r["messages"][0]["content"] for r in kept] == ["フランスの首都はどこですか？", "パンの焼き方を教えてください。"]
    rejects = [json.loads(line) for line in (Path(result.dataset).parent / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "no_user_message"), (3, "no_user_message")]
    assert backends["translator"].requests and len(backends["translator"].requests) == 2  # nothing asked for them

    empty = _rows(tmp_path / "none.jsonl", rows[1:3])
    config = config.model_copy(update={"source": config.source.model_copy(update={"path": empty})})
    with pytest.raises(StageError, match=r"none\.jsonl: no row has a user message to translate \(the first: line 1\)"):
        run_translate(config, make_context(tmp_path / "run2", "t", start_model=tiny_model_dir,
                                           tokenizer_dir=tiny_model_dir, chat_template=""))


def test_a_shuffled_limit_translates_the_same_rows_when_the_source_is_reordered_or_grows(tmp_path, tiny_model_dir,
                                                                                         monkeypatch):
    """`shuffle` with `limit` shuffled positions: a source exported again in another order (per-language dumps
    concatenated otherwise) sent other rows to the paid teacher, and a run resumed on it paid for rows the first run
    never needed. It is the draw by each row's content that a preference stage's prompts get."""
    rows = [{"prompt": f"Please explain question number {i} in detail."} for i in range(30)]
    source = tmp_path / "prompts.jsonl"
    _rows(source, rows)
    config = TranslateStageConfig.model_validate({
        "name": "t", "target_language": "ja", "source": {"path": str(source), "shuffle": True, "limit": 8},
        "teacher": {"backend": {**HTTP, "model": "translator"}, "batch_size": 2}})

    def context(run: str):
        return make_context(tmp_path / run, "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                            chat_template="")

    whole = Counting(japanese)
    _run_with(monkeypatch, {"translator": whole}, config, context("whole"))
    assert len(set(whole.requests)) == 8

    ctx = context("resumed")
    crashing = Counting(japanese, crash_after=4)
    with pytest.raises(Interrupted):
        _run_with(monkeypatch, {"translator": crashing}, config, ctx)
    _rows(source, rows[::-1])  # exported again, in the other order, before the run is resumed
    resumed = Counting(japanese)
    result = _run_with(monkeypatch, {"translator": resumed}, config, ctx)
    assert len(resumed.requests) == 4 and set(crashing.requests + resumed.requests) == set(whole.requests)
    assert result.rows == 8

    _rows(source, rows + [{"prompt": f"Please explain extra question {i} in detail."} for i in range(10)])
    grown = Counting(japanese)
    _run_with(monkeypatch, {"translator": grown}, config, context("grown"))
    kept_old = {r for r in grown.requests if "number" in r}
    assert kept_old and kept_old <= set(whole.requests)  # the added rows move only the margin


def test_a_sources_languages_pick_the_rows_to_translate_and_fields_it_would_ignore_are_refused(tmp_path,
                                                                                               tiny_model_dir,
                                                                                               monkeypatch):
    """A multilingual dump (LMSYS) with `languages: [en]` was translated whole: translate ignored the filter. It keeps
    the rows whose first user message is in those languages, before `limit`. A prompt source's sampling fields
    (system_prompt, answer_field...) that translate never reads are refused at load, not ignored."""
    english = [{"prompt": f"Please explain question number {i} in detail, step by step."} for i in range(6)]
    others = [{"prompt": f"Tolong jelaskan pertanyaan nomor {i} secara rinci, langkah demi langkah."} for i in range(6)]
    source = _rows(tmp_path / "dump.jsonl", [row for pair in zip(others, english, strict=True) for row in pair])
    config = TranslateStageConfig.model_validate({
        "name": "t", "target_language": "ja", "source": {"path": source, "languages": ["en"], "limit": 4},
        "teacher": {"backend": {**HTTP, "model": "translator"}, "batch_size": 2}})
    teacher = Counting(japanese)
    ctx = make_context(tmp_path / "run", "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    result = _run_with(monkeypatch, {"translator": teacher}, config, ctx)
    assert result.rows == 4 and all("question number" in request for request in teacher.requests)
    assert len(teacher.requests) == 4

    for field in ({"system_prompt": "Be brief."}, {"answer_field": "gold"}):
        with pytest.raises(ValueError, match=rf"source\n.*{next(iter(field))}: translate does not read it"):
            TranslateStageConfig.model_validate({"name": "t", "target_language": "ja",
                                                 "source": {"path": source, **field}})


def test_a_row_inserted_at_the_top_of_the_source_asks_only_for_it(tmp_path, tiny_model_dir, monkeypatch):
    """The teacher's journal was keyed by each request's place: a row added at the top of a 300k-row file moved every
    row one place down, and every translation was asked, and paid for, again. It goes by the request's text; a text
    asked twice (two equal rows) is still asked twice."""
    texts = [f"Please explain question number {i} in detail." for i in range(6)] + [
        "Please explain question number 3 in detail."]
    path = tmp_path / "prompts.jsonl"
    _rows(path, [{"prompt": t} for t in texts])
    config = TranslateStageConfig.model_validate({
        "name": "t", "target_language": "ja", "source": {"path": str(path)}, "filters": {"dedup": False},
        "teacher": {"backend": {**HTTP, "model": "translator"}, "batch_size": 4}})
    ctx = make_context(tmp_path / "run", "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    first = {"translator": Counting(japanese)}
    _run_with(monkeypatch, first, config, ctx)
    assert len(first["translator"].requests) == 7

    _rows(path, [{"prompt": "Please explain question number 99 in detail."}] + [{"prompt": t} for t in texts])
    again = {"translator": Counting(japanese)}
    result = _run_with(monkeypatch, again, config, ctx)
    assert [re.search(r"number (\d+)", r).group(1) for r in again["translator"].requests] == ["99"]
    rows = [json.loads(line) for line in result.dataset.read_text(encoding="utf-8").splitlines()]
    # each translation is still its own row's
    assert [r["messages"][0]["content"] for r in rows] == [japanese(f"[Text] {n}") for n in (99, 0, 1, 2, 3, 4, 5, 3)]


def test_a_topic_added_at_the_top_asks_only_for_its_prompts(tmp_path, tiny_model_dir, monkeypatch):
    """generate_prompts' journal went by each request's place too: a topic added first re-asked every topic."""
    import tempa.alignment.teacher_text as teacher_text

    def writer(request: str) -> str:
        topic = re.search(r"Topic: (.*)\n", request).group(1)
        variation = re.search(r"variation (\d+)", request).group(1)
        return f"{topic}について、質問番号{variation}を詳しく教えてください。"

    block = {"name": "magpie", "topics": ["料理", "歴史"], "per_topic": 2, "language": "ja",
             "teacher": {"backend": {**HTTP, "model": "writer"}}}
    ctx = make_context(tmp_path / "run", "magpie", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    first = Counting(writer)
    monkeypatch.setattr(teacher_text, "build_backend", lambda block, **kwargs: first)
    run_generate_prompts(GeneratePromptsStageConfig.model_validate(block), ctx)
    assert len(first.requests) == 4
    again = Counting(writer)
    monkeypatch.setattr(teacher_text, "build_backend", lambda block, **kwargs: again)
    result = run_generate_prompts(GeneratePromptsStageConfig.model_validate({**block, "topics": ["音楽", "料理", "歴史"]}),
                                  ctx)
    assert [re.search(r"Topic: (.*)\n", r).group(1) for r in again.requests] == ["音楽", "音楽"]
    rows = [json.loads(line) for line in result.dataset.read_text(encoding="utf-8").splitlines()]
    assert [(r["topic"], r["messages"][0]["content"].split("について")[0]) for r in rows] == [
        (t, t) for t in ("音楽", "音楽", "料理", "料理", "歴史", "歴史")]


def test_status_says_how_far_an_interrupted_translate_or_generate_prompts_stage_got(tmp_path, tiny_model_dir,
                                                                                   monkeypatch):
    """`tempa status` said only `interrupted` for a teacher stage killed hours into 300k rows, and `tempa plan` only
    that it continues 'from what it completed': the kinds had no resume hook. They name what their journals hold."""
    from tempa.recipes.runner import stage_kind

    hooks = {stage_kind(kind).resume_point for kind in ("translate", "generate_prompts")}
    assert len(hooks) == 1 and None not in hooks
    (hook,) = hooks
    source = _rows(tmp_path / "prompts.jsonl", [{"prompt": f"Please explain question number {i} in detail."}
                                                for i in range(12)])
    config = TranslateStageConfig.model_validate({
        "name": "t", "target_language": "ja", "source": {"path": source},
        "teacher": {"backend": {**HTTP, "model": "translator"}, "batch_size": 4},
        "judge": {"backend": {**HTTP, "model": "judge"}, "min_score": 8, "batch_size": 4}})
    ctx = make_context(tmp_path / "run", "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    assert hook(ctx.stage_dir) is None  # nothing paid for: a re-run may start it over
    with pytest.raises(Interrupted):
        _run_with(monkeypatch, {"translator": Counting(japanese, crash_after=8), "judge": Counting(japanese)},
                  config, ctx)
    assert hook(ctx.stage_dir) == "8 teacher answers journaled"
    with (ctx.stage_dir / "data" / "teacher.jsonl").open("a") as journal:
        journal.write('{"id": "torn')  # a kill in the middle of a write: not a record
    assert hook(ctx.stage_dir) == "8 teacher answers journaled"
    with pytest.raises(Interrupted):
        _run_with(monkeypatch, {"translator": Counting(japanese), "judge": Counting(japanese, crash_after=4)},
                  config, ctx)
    assert hook(ctx.stage_dir) == "12 teacher answers journaled, 4 judge ratings journaled"


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:  # bound, then closed: nothing listens there, so a connection is refused
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_teacher_or_judge_server_that_is_down_is_refused_before_anything_is_asked(tmp_path, tiny_model_dir):
    """A translate stage whose judge server was not started found it only after the teacher had translated every row
    (and whose teacher was down, after the first batch's retries, with no word of the recipe field). Each server is
    reached first, naming the field and the URL; a server whose pass is journaled complete is not needed, nor asked."""
    from test_alignment_fakes import FakeOpenAI, chat_response, last_user

    source = _rows(tmp_path / "prompts.jsonl", [{"prompt": f"Please explain question number {i} in detail."}
                                                for i in range(3)])
    down = f"http://127.0.0.1:{_closed_port()}/v1"

    def config(teacher_url: str, judge_url: str) -> TranslateStageConfig:
        fast = {"type": "http", "max_retries": 1, "backoff_s": 0.01}
        return TranslateStageConfig.model_validate({
            "name": "t", "target_language": "ja", "source": {"path": source},
            "teacher": {"backend": {**fast, "base_url": teacher_url, "model": "translator"}},
            "judge": {"backend": {**fast, "base_url": judge_url, "model": "judge"}, "min_score": 8}})

    ctx = make_context(tmp_path / "run", "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    with FakeOpenAI(lambda body: chat_response([japanese(last_user(body))])) as server:
        with pytest.raises(StageError) as err:
            run_translate(config(server.base_url, down), ctx)
        message = str(err.value)
        # the runner prefixes "stage 't' failed: ", which this line repeated ("stage 't' failed: stage 't': judge")
        assert message.startswith("judge (judge.backend), checked before its first request: GET "
                                  f"{down}/models (model judge): the server cannot be reached after 1 retries: ")
        assert "refused" in message and "\n" not in message
        assert server.requests == []  # not one translation paid for first
        with pytest.raises(StageError, match=r"^teacher \(teacher.backend\), checked before"):
            run_translate(config(down, server.base_url), ctx)
        teacher_url = server.base_url
        run_translate(config(teacher_url, server.base_url), ctx)
        judge_journal = ctx.stage_dir / "data" / "judge.jsonl.complete"
        judge_journal.unlink()  # killed while judging, with every translation journaled
    # the teacher's server is down now, and no longer needed: the judge's pass runs
    with FakeOpenAI(lambda body: chat_response(["とても良い翻訳です。 [[9]]"])) as judge:
        assert run_translate(config(teacher_url, judge.base_url), ctx).rows == 3


LEAD_INS = {
    "number 0": "Sure! Here is the translation:\n\n質問番号0について詳しく教えてください。",
    "number 1": "Here's the Japanese translation of the text.\n質問番号1について詳しく教えてください。",
    "number 2": "Translation:\n質問番号2について詳しく教えてください。",
    "number 3": "質問番号3について詳しく教えてください。",
}


def test_a_translation_that_opens_with_the_teachers_lead_in_is_rejected_and_counted(tmp_path, tiny_model_dir,
                                                                                    monkeypatch):
    """A teacher that answered 'Sure! Here is the translation:' before the text passed every filter (the Japanese
    outweighs the English for the language detector), and the next stage trained a model to say it. Such a text is
    dropped as `preamble`, counted in the metrics; a source text that opens with a lead-in of its own keeps its
    translated one."""
    rows = [{"prompt": f"Please explain question number {i} in detail."} for i in range(4)] + [
        {"prompt": "Here is my question:\nwhat is question number 4?"}]
    source = _rows(tmp_path / "prompts.jsonl", rows)
    config = TranslateStageConfig.model_validate({
        "name": "t", "target_language": "ja", "source": {"path": source},
        "teacher": {"backend": {**HTTP, "model": "translator"}}})
    ctx = make_context(tmp_path / "run", "t", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")

    def reply(request: str) -> str:
        if "Here is my question" in request:
            return "Here is the question, translated:\n質問番号4とは何ですか？"  # the original's own lead-in
        return next(text for key, text in LEAD_INS.items() if key in request)

    result = _run_with(monkeypatch, {"translator": Counting(reply)}, config, ctx)
    kept = [json.loads(line)["messages"][0]["content"] for line in result.dataset.read_text().splitlines()]
    assert kept == [LEAD_INS["number 3"], "Here is the question, translated:\n質問番号4とは何ですか？"]
    assert result.rejected == {"preamble": 3} and result.metrics["rejected_preamble"] == 3
    rejects = [json.loads(line) for line in (ctx.stage_dir / "data" / "rejects.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rejects] == [0, 1, 2] and {r["reason"] for r in rejects} == {"preamble"}


def test_a_written_prompt_that_opens_with_the_teachers_lead_in_is_rejected_and_counted(tmp_path, tiny_model_dir,
                                                                                      monkeypatch):
    """generate_prompts asks for the user's message only; 'Here is a realistic user message:' before it became the
    prompt's first line. A prompt that is the user's own lead-in ('Here is my essay:') is a prompt."""
    import tempa.alignment.teacher_text as teacher_text

    replies = iter([
        "Here is a realistic message a user might send:\n\n江戸時代の庶民の暮らしについて詳しく教えてください。",
        "Certainly! Here's one user question.\n鎌倉幕府が成立した理由を説明してください。",
        "Here is my essay:\n\n江戸時代の町人文化について書きました。直すべき点を教えてください。",
    ])
    writer = Counting(lambda request: next(replies))
    monkeypatch.setattr(teacher_text, "build_backend", lambda block, **kwargs: writer)
    config = GeneratePromptsStageConfig.model_validate({
        "name": "magpie", "topics": ["歴史"], "per_topic": 3, "language": "ja",
        "teacher": {"backend": {**HTTP, "model": "writer"}}})
    ctx = make_context(tmp_path / "run", "magpie", start_model=tiny_model_dir, tokenizer_dir=tiny_model_dir,
                       chat_template="")
    result = run_generate_prompts(config, ctx)
    kept = [json.loads(line)["messages"][0]["content"] for line in result.dataset.read_text().splitlines()]
    assert kept == ["Here is my essay:\n\n江戸時代の町人文化について書きました。直すべき点を教えてください。"]
    assert result.rejected == {"preamble": 2} and result.metrics["rejected_preamble"] == 2
