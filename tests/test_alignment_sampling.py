"""Incremental sampling: written per batch, resumed after an interruption without redoing finished prompts."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from test_alignment_fakes import ScriptedBackend

from tempa.alignment.generation import GenerationParams
from tempa.alignment.prompts import PromptRow, PromptSource, ThinkingSettings, load_prompts
from tempa.alignment.sampling import JsonlStore, run_incremental, sample_prompts

SAMPLE_PROMPTS = Path(__file__).resolve().parents[1] / "recipes" / "data" / "sample_prompts.jsonl"


def prompts(count: int) -> list[PromptRow]:
    return [PromptRow(id=f"p{i:02d}", messages=[{"role": "user", "content": f"question {i}"}], thinking_mode="off")
            for i in range(count)]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_interrupted_sampling_resumes_with_only_the_rest(tmp_path):
    rows = prompts(10)
    params = GenerationParams(n=2, temperature=1.0, batch_size=3, seed=5)  # chunks of 3: 4 chunks
    path = tmp_path / "samples.jsonl"

    broken = ScriptedBackend(fail_after=2)
    with pytest.raises(RuntimeError, match="went away"):
        sample_prompts(rows, broken, params, JsonlStore(path, "sig"), show_progress=False)
    written = lines(path)
    assert [r["id"] for r in written] == [p.id for p in rows[:6]]  # two whole chunks were kept
    assert not JsonlStore(path, "sig").complete

    backend = ScriptedBackend()
    records, stats = sample_prompts(rows, backend, params, JsonlStore(path, "sig"), show_progress=False)
    assert backend.calls == 2  # only the two chunks that were missing
    assert backend.prompts_seen == [f"question {i}" for i in range(6, 10)]
    assert backend.seeds == [5 + 1000 * 2, 5 + 1000 * 3]  # the seeds those chunks would have had
    assert stats["resumed"] == 6 and stats["processed"] == 4
    assert [r["id"] for r in records] == [p.id for p in rows]
    assert all(len(r["completions"]) == 2 for r in records)
    assert lines(path)[:6] == written  # finished prompts were not touched

    third = ScriptedBackend()
    again, stats = sample_prompts(rows, third, params, JsonlStore(path, "sig"), show_progress=False)
    assert third.calls == 0 and again == records and stats["processed"] == 0
    assert stats["resumed"] == len(rows)  # every prompt came from the store ("sampled 10 prompts (10 resumed)")


def test_an_edited_prompt_is_asked_with_the_seed_a_fresh_run_gives_it(tmp_path):
    """A prompt edited in a file whose other prompts are journaled was asked alone, so it got its batch's first seed,
    not its own: the data grown by edits differed from a fresh run on the same file (a trial: seed 1007 vs 1011). The
    real HTTP backend's requests carry the seeds; a batch's edited prompts are still asked in one call (asked in runs
    of consecutive prompts, scattered edits made calls of one prompt each, with none of the backend's concurrency)."""
    from test_alignment_fakes import FakeOpenAI, chat_response, last_user

    from tempa.alignment.backends_http import HTTPBackend

    class Calls(HTTPBackend):
        calls = 0

        def sample(self, *args, **kwargs):
            Calls.calls += 1
            return super().sample(*args, **kwargs)

    def row(text: str) -> PromptRow:
        return PromptRow(id=text, messages=[{"role": "user", "content": text}], thinking_mode="off")

    params = GenerationParams(n=2, temperature=1.0, batch_size=4, seed=7)
    before = [row(t) for t in ("a", "b", "c", "d", "e")]
    edited = [row(t) for t in ("a", "b2", "c", "d2", "e2")]  # two holes in the first batch, the second batch whole

    def seeds(prompts: list[PromptRow], store: JsonlStore) -> dict[str, int]:
        Calls.calls = 0
        with FakeOpenAI(lambda body: chat_response([f"s{body['seed']}"] * body["n"])) as server:
            sample_prompts(prompts, Calls(server.base_url, "m", backoff_s=0.01), params, store, show_progress=False)
        return {last_user(body): body["seed"] for body in server.requests}

    assert seeds(before, JsonlStore(tmp_path / "grown.jsonl", "sig")) == {"a": 7, "b": 9, "c": 11, "d": 13, "e": 1007}
    fresh = seeds(edited, JsonlStore(tmp_path / "fresh.jsonl", "sig"))
    assert seeds(edited, JsonlStore(tmp_path / "grown.jsonl", "sig")) == {k: fresh[k] for k in ("b2", "d2", "e2")}
    assert Calls.calls == 2  # b2 and d2 in one call, e2 in its batch's
    assert fresh == {"a": 7, "b2": 9, "c": 11, "d2": 13, "e2": 1007}


def test_a_pass_without_a_measure_counts_a_record_as_one_sample(tmp_path):
    """Follow-up writing, revisions and teacher text give no measure: their bar read "0.0 samples/s" all along."""
    def work(chunk: list[int], index: int, places: list[int], keep) -> list[dict]:
        time.sleep(0.01)  # a pass under a millisecond rounds to 0 s and reports no rate at all
        return [{"id": str(i)} for i in chunk]

    records, stats = run_incremental(
        list(range(7)), key=str, work=work,
        store=JsonlStore(tmp_path / "followups.jsonl", "sig"), chunk_size=3, desc="follow-ups", show_progress=False,
    )
    assert [r["id"] for r in records] == [str(i) for i in range(7)]
    assert stats["samples"] == 7 and stats["samples_per_s"] > 0
    assert stats["tokens"] is None  # nothing counted them: unknown, not 0


def test_a_torn_last_line_is_dropped_and_redone(tmp_path):
    rows = prompts(4)
    params = GenerationParams(n=1, batch_size=2)
    path = tmp_path / "samples.jsonl"
    sample_prompts(rows, ScriptedBackend(), params, JsonlStore(path, "sig"), show_progress=False)
    text = path.read_text()
    # a kill in the middle of writing the second chunk: one whole line, then half a line
    path.write_text("".join(text.splitlines(keepends=True)[:3]) + '{"id": "p03", "compl')
    JsonlStore(path, "sig").marker.unlink()
    backend = ScriptedBackend()
    records, _ = sample_prompts(rows, backend, params, JsonlStore(path, "sig"), show_progress=False)
    assert backend.prompts_seen == ["question 3"]
    assert [r["id"] for r in records] == ["p00", "p01", "p02", "p03"]
    assert [r["id"] for r in lines(path)] == ["p00", "p01", "p02", "p03"]


def test_changed_settings_start_the_pass_over(tmp_path):
    rows = prompts(2)
    path = tmp_path / "samples.jsonl"
    sample_prompts(rows, ScriptedBackend(), GenerationParams(batch_size=2), JsonlStore(path, {"t": 1}),
                   show_progress=False)
    backend = ScriptedBackend()
    sample_prompts(rows, backend, GenerationParams(batch_size=2), JsonlStore(path, {"t": 2}), show_progress=False)
    assert backend.calls == 1 and len(lines(path)) == 2


def test_resumed_transformers_samples_equal_an_uninterrupted_run(tmp_path, tiny_model_dir):
    from tempa.alignment.backends import TransformersSampler
    from tempa.chat_templates import bake_tokenizer

    bake_tokenizer(tiny_model_dir, "llama3_thinking", tmp_path / "tok")
    sampler = TransformersSampler(tiny_model_dir, tmp_path / "tok", device="cpu", show_progress=False)
    rows = load_prompts(PromptSource(path=str(SAMPLE_PROMPTS), limit=4), seed=0,
                        thinking=ThinkingSettings(mode="mixed", ratio=0.5))
    params = GenerationParams(n=2, temperature=1.0, max_new_tokens=5, batch_size=2, seed=9)
    whole, _ = sample_prompts(rows, sampler, params, JsonlStore(tmp_path / "a.jsonl", "s"), show_progress=False)

    class FailsOnSecondChunk:
        calls = 0

        def sample(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            return sampler.sample(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        sample_prompts(rows, FailsOnSecondChunk(), params, JsonlStore(tmp_path / "b.jsonl", "s"), show_progress=False)
    resumed, stats = sample_prompts(rows, sampler, params, JsonlStore(tmp_path / "b.jsonl", "s"), show_progress=False)
    assert stats["resumed"] == 2
    assert resumed == whole
    assert {r["thinking_mode"] for r in whole} <= {"on", "off"}


def test_a_prompt_keeps_its_draw_when_its_file_is_reordered_or_grows(tmp_path):
    # A team concatenates per-language files (id, th, vi, ta) in whatever order, and adds prompts later: the
    # shuffled `limit` and the `mixed` thinking draw go by each prompt's content, not its line.
    rows = [{"prompt": f"Pertanyaan {i}: berapa {i} tambah {i}?"} for i in range(40)]
    thinking = ThinkingSettings(mode="mixed", ratio=0.5)

    def drawn(name, file_rows, **source):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in file_rows))
        return {p.question: p.thinking_mode
                for p in load_prompts(PromptSource(path=str(path), **source), seed=42, thinking=thinking)}

    whole = drawn("a.jsonl", rows)
    assert sum(mode == "on" for mode in whole.values()) == 20
    assert drawn("reversed.jsonl", rows[::-1]) == whole
    grown = drawn("grown.jsonl", rows + [{"prompt": f"Soalan tambahan {i}?"} for i in range(10)])
    old_on = {q for q, mode in whole.items() if mode == "on"}
    grown_on = {q for q, mode in grown.items() if mode == "on" and q in whole}
    assert grown_on <= old_on or old_on <= grown_on  # nested: the added rows move only the margin
    limited = drawn("a.jsonl", rows, shuffle=True, limit=10)
    assert drawn("reversed.jsonl", rows[::-1], shuffle=True, limit=10).keys() == limited.keys()
    assert limited.keys() != set(list(whole)[:10])  # still a draw, not the file's head


def test_prompt_loading_takes_reference_answers_and_thinking_modes(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}], "language": "ID"},
        {"prompt": "Q2", "answer": "7", "thinking_mode": "off"},
    ]) + "\n")
    rows = load_prompts(PromptSource(path=str(path), system_prompt="Be brief."), seed=0,
                        thinking=ThinkingSettings(mode="on"))
    assert rows[0].messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"}]
    assert (rows[0].reference, rows[0].language, rows[0].thinking_mode) == ("A1", "id", "on")
    assert (rows[1].answer, rows[1].thinking_mode, rows[1].question) == ("7", "off", "Q2")
    assert rows[0].id != rows[1].id
    path.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    from tempa.sft.stage_api import StageError

    with pytest.raises(StageError, match=r"p\.jsonl: line 1: the conversation must end with a user message"):
        load_prompts(PromptSource(path=str(path)), seed=0)
    # rows that are not objects, messages that are not chat messages: one line naming the row, not a bare
    # AttributeError / TypeError / KeyError
    for row, problem in ((["a", "list"], "expected a JSON object, got list"),
                         ({"messages": [1, 2]}, "'messages' must be a list of {role, content} objects"),
                         ({"messages": [{"content": "no role"}]}, "'messages' must be a list of {role, content}"),
                         ({"messages": "hi"}, "'messages' must be a list of {role, content}")):
        path.write_text(json.dumps({"prompt": "Q0"}) + "\n\n" + json.dumps(row) + "\n")
        with pytest.raises(StageError) as info:
            load_prompts(PromptSource(path=str(path)), seed=0)
        assert str(info.value).startswith(f"{path}: line 3: {problem}"), info.value  # its line, blank lines counted


def test_a_prompts_language_is_a_code_the_detector_knows_in_its_spelling(tmp_path):
    """The language reward compares the detector's code with the row's: 'thai' (or 'vn') never matched, so every
    correct answer scored 0 (and, gated, its answer score too), silently. Spellings it knows are its own ('TH',
    'tha', 'zh-Hant')."""
    from tempa.sft.stage_api import StageError

    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "Q", "language": code} for code in ("TH", "tha", "zh-Hant", "id")]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert [p.language for p in load_prompts(PromptSource(path=str(path)), seed=0)] == ["th", "th", "zh", "id"]
    path.write_text(json.dumps({"prompt": "Q", "language": "th"}) + "\n" + json.dumps({"prompt": "Q2", "language": "thai"}))
    with pytest.raises(StageError) as info:
        load_prompts(PromptSource(path=str(path)), seed=0)
    assert str(info.value) == (f"{path}: line 2: language: language code 'thai' is not one the language "
                               "detector (py3langid) knows (did you mean 'th'?)")


def test_a_folder_of_prompt_files_is_read_file_after_file_and_planned_as_read(tmp_path, caplog):
    """A folder of data files stopped a preference or RL stage with "no such file or folder"; `tempa plan`
    counts such a folder's rows, so the run reads them too: its split's JSON Lines files in order (an unreadable
    line skipped and named by file and line), or its Parquet files with ``datasets``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tempa.sft.data_size import count_local_rows

    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "train-00000-of-00002.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Q{i}"}) + "\n" for i in range(3)), encoding="utf-8")
    (tmp_path / "jsonl" / "train-00001-of-00002.jsonl").write_text(
        json.dumps({"prompt": "Q3"}) + "\n{oops\n\n" + json.dumps({"prompt": "Q4"}) + "\n", encoding="utf-8")
    (tmp_path / "jsonl" / "test-00000-of-00001.jsonl").write_text(json.dumps({"prompt": "T"}) + "\n", encoding="utf-8")
    (tmp_path / "parquet").mkdir()
    pq.write_table(pa.Table.from_pylist([{"prompt": f"P{i}"} for i in range(4)]),
                   tmp_path / "parquet" / "train-00000-of-00001.parquet")
    with caplog.at_level("WARNING", logger="tempa"):
        rows = load_prompts(PromptSource(path=str(tmp_path / "jsonl")), seed=0)
    assert [r.question for r in rows] == ["Q0", "Q1", "Q2", "Q3", "Q4"]
    assert "skipped 1 unreadable line(s) of 6: train-00001-of-00002.jsonl:2: not valid JSON" in caplog.text
    assert [r.question for r in load_prompts(PromptSource(path=str(tmp_path / "jsonl"), split="test"), seed=0)] == ["T"]
    assert [r.question for r in load_prompts(PromptSource(path=str(tmp_path / "parquet")), seed=0)] == [
        "P0", "P1", "P2", "P3"]
    assert count_local_rows(str(tmp_path / "jsonl")) == 6 and count_local_rows(str(tmp_path / "parquet")) == 4
    # A row a stage cannot use is named as an SFT source's rejects name it (the README's 0-based row; it was
    # "row 3" here), and in a folder by its file, even where the split has one file (it was "line 1").
    from tempa.sft.data_config import SourceConfig
    from tempa.sft.sources import row_names
    from tempa.sft.stage_api import StageError

    pq.write_table(pa.Table.from_pylist([{"prompt": "P0"}, {"prompt": "P1"}, {"text": "no prompt"}]),
                   tmp_path / "parquet" / "train-00000-of-00001.parquet")
    assert row_names(SourceConfig(name="s", path=str(tmp_path / "parquet"))).label(2) == "row 2"
    with pytest.raises(StageError, match=r"parquet: row 2: has neither"):
        load_prompts(PromptSource(path=str(tmp_path / "parquet")), seed=0)
    (tmp_path / "jsonl" / "test-00000-of-00001.jsonl").write_text(json.dumps({"text": "T"}) + "\n", encoding="utf-8")
    with pytest.raises(StageError, match=r"jsonl: test-00000-of-00001.jsonl line 1: has neither"):
        load_prompts(PromptSource(path=str(tmp_path / "jsonl"), split="test"), seed=0)


def test_a_json_prompt_file_is_read_as_its_content_says(tmp_path, caplog):
    """A ``.json`` prompt file holding JSON Lines stopped the stage with "not valid JSON (Extra data)", and one
    holding ``{"data": [...]}`` with "expected a JSON list of rows", though an SFT source reads both."""
    from tempa.sft.stage_api import StageError

    prompts = [{"prompt": f"Q{i}"} for i in range(3)]
    for content in ("".join(json.dumps(p) + "\n" for p in prompts), json.dumps({"data": prompts}),
                    json.dumps(prompts, indent=2), json.dumps({"count": 3, "data": prompts}, indent=2)):
        (tmp_path / "p.json").write_text(content, encoding="utf-8")
        assert [r.question for r in load_prompts(PromptSource(path=str(tmp_path / "p.json")), seed=0)] == [
            "Q0", "Q1", "Q2"], content
    (tmp_path / "p.json").write_text(json.dumps({"a": prompts, "b": prompts}), encoding="utf-8")
    with pytest.raises(StageError, match=r"p.json: holds lists of rows under 'a', 'b'; expected one list of rows, "
                                         r"or one row$"):
        load_prompts(PromptSource(path=str(tmp_path / "p.json")), seed=0)
    # A folder of JSON files (here a list, and JSON Lines with a broken line), each read as it is alone; before, a
    # folder holding a JSON list went to datasets, which failed on an id that is a number here and a string there.
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "train-0.json").write_text(json.dumps([{"prompt": "Q0", "id": 1}, {"prompt": "Q1", "id": "b"}]),
                                         encoding="utf-8")
    (folder / "train-1.json").write_text('{"prompt": "Q2"}\n{oops\n{"prompt": "Q3"}\n', encoding="utf-8")
    with caplog.at_level("WARNING", logger="tempa"):
        assert [r.question for r in load_prompts(PromptSource(path=str(folder)), seed=0)] == ["Q0", "Q1", "Q2", "Q3"]
    assert "skipped 1 unreadable line(s) of 3: train-1.json:2: not valid JSON" in caplog.text
    # a row it cannot use is named by its file and line (or 0-based row, in a document, as SFT's rejects name it):
    # "row 4" counted across the files
    (folder / "train-1.json").write_text('{"prompt": "Q2"}\n{oops\n{"messages": "Q3"}\n', encoding="utf-8")
    with pytest.raises(StageError, match=r"parts: train-1.json line 3: 'messages' must be a list"):
        load_prompts(PromptSource(path=str(folder)), seed=0)
    (folder / "train-0.json").write_text(json.dumps([{"prompt": "Q0"}, {"text": "no prompt"}]), encoding="utf-8")
    with pytest.raises(StageError, match=r"parts: train-0.json row 1: has neither"):
        load_prompts(PromptSource(path=str(folder)), seed=0)
    # one prompt on one line is that prompt (it was taken for an object holding the rows)
    (tmp_path / "one.json").write_text(json.dumps({"messages": [{"role": "user", "content": "Q9"}]}), encoding="utf-8")
    assert [r.question for r in load_prompts(PromptSource(path=str(tmp_path / "one.json")), seed=0)] == ["Q9"]


def test_prompt_files_skip_unreadable_lines_strip_a_bom_and_refuse_an_empty_file(tmp_path, caplog):
    from tempa.sft.stage_api import StageError

    path = tmp_path / "p.jsonl"
    good = [json.dumps({"prompt": f"Q{i}"}).encode() for i in range(3)]
    path.write_bytes(b"\xef\xbb\xbf" + good[0] + b"\n" + b'{"prompt": "caf\xe9"}\n' + good[1] + b"\n{oops\n" + good[2] + b"\n")
    with caplog.at_level("WARNING", logger="tempa"):
        rows = load_prompts(PromptSource(path=str(path)), seed=0)
    assert [r.question for r in rows] == ["Q0", "Q1", "Q2"]
    assert f"{path}: skipped 2 unreadable line(s) of 5: line 2: invalid UTF-8 (byte 0xe9" in caplog.text
    assert "line 4: not valid JSON" in caplog.text
    path.write_bytes(b"\xef\xbb\xbf\n")
    with pytest.raises(StageError, match=f"^{path}: empty file"):
        load_prompts(PromptSource(path=str(path)), seed=0)


def test_tokens_a_server_did_not_count_are_unknown_not_zero(tmp_path):
    """An OpenAI-compatible server with n > 1 counts every choice's tokens together (`usage`), so no sample has its
    own count: the pass said `tokens: 0` (as if nothing was generated) where it knew none."""
    from tempa.alignment.backends import SamplingBackend
    from tempa.alignment.completions import Completion

    class Counted(SamplingBackend):
        def __init__(self, count: int | None) -> None:
            self.count = count

        def sample(self, prompts, params, *, thinking_modes=None, tools=None):
            return [[Completion(text="a", completion_tokens=self.count) for _ in range(params.n)] for _ in prompts]

        def close(self) -> None:
            pass

    rows, params = prompts(4), GenerationParams(n=2, batch_size=2)
    _, counted = sample_prompts(rows, Counted(3), params, JsonlStore(tmp_path / "a.jsonl", "s"), show_progress=False)
    assert (counted["samples"], counted["tokens"]) == (8, 24)
    _, unknown = sample_prompts(rows, Counted(None), params, JsonlStore(tmp_path / "b.jsonl", "s"), show_progress=False)
    assert (unknown["samples"], unknown["tokens"]) == (8, None) and "tokens_per_s" not in unknown


def test_status_reads_how_far_a_journaled_pass_is_and_when_it_ends(tmp_path):
    """Mid-synthesis, `tempa status` said only "so far: 120 prompts sampled": not of how many, nor when it would end
    (an overnight teacher run). A pass leaves its progress beside its journal; the newest record, a training
    launch's or a pass's, is where the stage stands."""
    from tempa.sft.throughput_summary import TrainProgress, latest_progress

    stage = tmp_path / "synth"
    store = JsonlStore(stage / "data" / "samples.jsonl", "sig")
    seen: list = []
    fail_at = [2]

    def work(chunk: list[int], index: int, places: list[int], keep) -> list[dict]:
        seen.append(latest_progress(stage))  # what status reads while this chunk is asked
        time.sleep(0.01)
        if index in fail_at:
            fail_at.clear()
            raise RuntimeError("server went away")
        return [{"id": str(i)} for i in chunk]

    with pytest.raises(RuntimeError):
        run_incremental(list(range(10)), key=str, work=work, store=store, chunk_size=3, desc="synthesize: sample",
                        show_progress=False)
    first, second, third = seen
    assert (first.desc, first.done, first.items, first.eta_s) == ("synthesize: sample", 0, 10, None)
    assert (second.done, third.done) == (3, 6)
    assert third.eta_s > 0 and third.samples_per_s > 0
    # 4 of 10 left after 6 in the elapsed time: the ETA is two thirds of it
    assert third.eta_s == pytest.approx(4 / 6 * 6 / third.samples_per_s, rel=1e-3)
    assert re.fullmatch(r"synthesize: sample 6/10, eta 0:00:00, [\d.]+ samples/s \(0 s ago\)", third.note(third.at))

    # resumed: it starts from what the journal holds; a newer training record is where the stage stands then
    seen.clear()
    run_incremental(list(range(10)), key=str, work=work, store=JsonlStore(stage / "data" / "samples.jsonl", "sig"),
                    chunk_size=3, desc="synthesize: sample", show_progress=False)
    assert seen[0].done == 6 and latest_progress(stage).done == 10
    checkpoints = stage / "checkpoints"
    checkpoints.mkdir()
    trained = TrainProgress(step=1, max_steps=4, at=time.time() + 1)
    (checkpoints / "progress.json").write_text(trained.model_dump_json())
    assert latest_progress(stage) == trained
    # a --from run deletes the journal's files, its progress with them
    assert (stage / "data" / "samples.jsonl.progress.json") in JsonlStore.files(stage / "data" / "samples.jsonl")


@pytest.mark.parametrize("torn", [b'{"id": "p09", "compl', b'{"id": "p09"}', b"\xc3"])  # the last: half a character
def test_a_record_appended_after_a_torn_last_line_starts_a_line_of_its_own(tmp_path, caplog, torn):
    """A kill or a full disk leaves a journal's last line half written; the next record was appended onto it, and both
    were lost (the sample asked, and paid for, again). The torn line is cut off before anything is appended, whoever
    appends: samples, scores and teacher answers (JsonlStore), judge replies (ReplyJournal)."""
    path = tmp_path / "teacher.jsonl"
    store = JsonlStore(path, "sig")
    store.append([{"id": "p00", "text": "kept"}])
    with open(path, "ab") as f:
        f.write(torn)
    with caplog.at_level("WARNING"):
        JsonlStore(path, "sig").append([{"id": "p01", "text": "appended after the tear"}])
    assert [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()] == ["p00", "p01"]
    assert set(JsonlStore(path, "sig").load()) == {"p00", "p01"}
    assert "cut off" in caplog.text


@pytest.mark.parametrize("bad", [b'{"id": "p01", "compl{"id": "p02", "completions": []}', b'\xc3\x28', b'[1, 2]',
                                 b'{"no_id": 1}'])
def test_an_unreadable_line_inside_a_journal_is_skipped_and_every_record_after_it_kept(tmp_path, caplog, bad):
    """A trial: an earlier tempa appended a record onto a torn line, and the glued line inside samples.jsonl stopped
    the reading there: every good record after it was sampled (and paid for) again. The line is skipped, named in one
    warning, and only what it held is asked again; a torn last line is still cut off."""
    rows = prompts(6)
    params = GenerationParams(n=1, batch_size=2)
    path = tmp_path / "samples.jsonl"
    sample_prompts(rows, ScriptedBackend(), params, JsonlStore(path, "sig"), show_progress=False)
    whole = path.read_bytes().splitlines(keepends=True)
    # p01's line glued or garbled, p04's line unreadable too, and a last line cut off mid-write
    path.write_bytes(whole[0] + bad + b"\n" + b"".join(whole[2:4]) + b"not json\n" + whole[5] + b'{"id": "p0')
    JsonlStore(path, "sig").marker.unlink()
    assert not JsonlStore.holds(path, "sig", [r.id for r in rows])
    assert JsonlStore.holds(path, "sig", ["p00", "p02", "p03", "p05"])
    backend = ScriptedBackend()
    with caplog.at_level("WARNING"):
        records, _ = sample_prompts(rows, backend, params, JsonlStore(path, "sig"), show_progress=False)
    assert backend.prompts_seen == ["question 1", "question 4"]
    assert [r["id"] for r in records] == [f"p0{i}" for i in range(6)]
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: 2 unreadable line(s)")
    assert "line 2, 5" in warnings[0]
    assert "cut off" in caplog.text or "dropped" in caplog.text
    assert set(JsonlStore(path, "sig").load()) == {f"p0{i}" for i in range(6)}
    # taken out of the file: the next resume reads a clean journal, not the same warning again
    assert bad not in path.read_bytes() and b"not json" not in path.read_bytes()
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert set(JsonlStore(path, "sig").load()) == {f"p0{i}" for i in range(6)}
    assert "unreadable" not in caplog.text


def test_a_scoring_pass_reports_its_progress_as_the_judges_replies_arrive(tmp_path, monkeypatch):
    """A trial: 20 of a batch's 47 judge replies were saved while `tempa status` said `score 0/12 (11 s ago)`: the
    progress record moved per batch of prompts, so a slow, paid judge looked stalled for minutes. It counts samples
    now, moved as each reply arrives."""
    import tempa.alignment.rewards as rewards_module
    from tempa.alignment.backends import SamplingBackend
    from tempa.alignment.completions import Completion
    from tempa.alignment.rewards import JudgeReward, RewardSet, ScoringEnv
    from tempa.alignment.sampling import score_pass
    from tempa.sft.throughput_summary import latest_progress

    stage = tmp_path / "align"
    seen: list[tuple[int, int]] = []

    class EachReply(SamplingBackend):
        reports_each_reply = True

        def sample(self, prompts, params, *, thinking_modes=None, on_result=None):
            out = []
            for i, _ in enumerate(prompts):
                out.append([Completion(text="Good. [[7]]", finish_reason="stop")])
                on_result(i, out[-1])
                progress = latest_progress(stage)  # what status reads after each reply
                seen.append((progress.done, progress.items))
            return out

    monkeypatch.setattr(rewards_module, "build_backend", lambda *a, **k: EachReply())
    rows = prompts(3)
    samples = [{"id": r.id, "completions": [{"text": f"answer {r.id} {j}", "finish_reason": "stop"}
                                            for j in range(2)]} for r in rows]
    rewards = RewardSet([JudgeReward(type="judge")], ScoringEnv(policy_dir=tmp_path, tokenizer_dir=tmp_path))
    store = JsonlStore(stage / "round-1" / "scores.jsonl", "sig")
    store.append([{"id": "p00", "results": [{"scores": {"judge": 7.0, "total": 7.0}, "details": {}}] * 2}])
    records, _ = score_pass(rows, samples, rewards, store, chunk_size=2, show_progress=False)
    assert [r["id"] for r in records] == ["p00", "p01", "p02"]
    # p00 journaled (2 samples), then p01 and p02's four samples judged one reply at a time
    assert seen == [(3, 6), (4, 6), (5, 6), (6, 6)]
    last = latest_progress(stage)
    assert (last.done, last.items, last.desc) == (6, 6, "score") and last.samples_per_s > 0
