"""The data pipeline's one-pass masks against the template's own, and its worker processes against one."""

from __future__ import annotations

import gc
import json
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest

from tempa.chat_templates import load_template
from tempa.chat_templates.expand import turn_views
from tempa.chat_templates.rendering import mask_spans, runs_to_mask, token_runs
from tempa.chat_templates.thinking import mode_kwargs
from tempa.sft.tokenization import ChatEncoder

GOLDEN = json.loads((Path(__file__).parent / "golden" / "conversations.json").read_text(encoding="utf-8"))
WEATHER = GOLDEN["tool_call"]["tools"]


def _turn(role: str, content: str, reasoning: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "content": content, **extra}
    if reasoning is not None:
        out["reasoning_content"] = reasoning
    return out


# Edges for the offsets: multi-byte and combining characters, emoji split over byte tokens, whitespace at
# both ends of a span, empty answers, text that looks like markup, and a system turn.
CORPUS: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = [
    *[(case["messages"], case.get("tools")) for case in GOLDEN.values()],
    ([_turn("user", "สวัสดีครับ 你好 👋🏽"), _turn("assistant", " ตอบ: 好的 👍 ", "คิด… e\u0301 ")], None),
    ([_turn("system", "Jawab singkat."), _turn("user", "  spasi  "), _turn("assistant", "\n\nok\n", "\n")], None),
    ([_turn("user", "a"), _turn("assistant", ""), _turn("user", "b"), _turn("assistant", "<b>x</b> {{ y }}", "r")],
     None),
    ([_turn("user", "Cuaca Medan?"),
      _turn("assistant", "", "Panggil alat.", tool_calls=[{"type": "function", "function": {
          "name": "get_weather", "arguments": {"city": "Medan"}}}]),
      _turn("tool", "29°C", name="get_weather"), _turn("assistant", "29°C, cerah ☀️", "Alat menjawab.")], WEATHER),
    # Multi-byte text inside tool-call JSON (arguments as text and as an object), parallel calls (Llama 3.1
    # refuses them, ChatML renders both), an object result and a history loop before the last user turn.
    ([_turn("user", "東京とバンコクの天気は？"),
      _turn("assistant", "", "二つの都市を調べる。", tool_calls=[
          {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "東京都"}'}},
          {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "กรุงเทพฯ"}}}]),
      _turn("tool", "晴れ 25℃", tool_call_id="a"), _turn("tool", {"อากาศ": "ร้อน", "°C": 35}, tool_call_id="b"),
      _turn("assistant", "東京は晴れ、กรุงเทพฯ ร้อน 35℃。", "両方そろった。")], WEATHER),
    ([_turn("user", "ราคา?"),
      _turn("assistant", "ดูก่อน", "เรียกเครื่องมือ", tool_calls=[{"type": "function", "function": {
          "name": "get_weather", "arguments": {"city": "เชียงใหม่ ", "note": "e\u0301 👋🏽\n"}}}]),
      _turn("tool", " 22°C\n"), _turn("assistant", "22°C", "ได้ผลแล้ว"),
      _turn("user", "ありがとう！"), _turn("assistant", "どういたしまして。", "礼。")], WEATHER),
]


@pytest.fixture(scope="module")
def tokenizers(tiny_tokenizer_dir: Path, llama3_model_dir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    return {"tiny": AutoTokenizer.from_pretrained(tiny_tokenizer_dir),
            "llama3": AutoTokenizer.from_pretrained(llama3_model_dir)}


@pytest.mark.parametrize("template", ["llama3_thinking", "chatml_thinking"])
@pytest.mark.parametrize("which", ["tiny", "llama3"])
def test_masks_are_byte_identical_to_apply_chat_template(tokenizers: dict[str, Any], which: str, template: str) -> None:
    """Every rendering the pipeline makes (each turn view of each conversation, thinking on and off) gives
    the ids and mask of ``apply_chat_template(..., return_assistant_tokens_mask=True)``, one at a time and
    tokenised as a batch."""
    tok = tokenizers[which]
    tok.chat_template = load_template(template)
    encoder = ChatEncoder(tok)
    rendered, expected, refused = [], [], 0
    for messages, tools in CORPUS:
        for thinking in (True, False):
            for view in turn_views(messages, thinking):
                try:
                    reference = tok.apply_chat_template(
                        view.messages, tools=tools, tokenize=True, return_dict=True,
                        return_assistant_tokens_mask=True, **mode_kwargs("on" if view.thinking else "off"))
                except Exception as exc:  # the template refuses the row: so must the encoder
                    with pytest.raises(type(exc)):
                        encoder.text(view.messages, view.thinking, tools)
                    refused += 1
                    continue
                want = (list(reference["input_ids"]), list(reference["assistant_masks"]))
                assert encoder(view.messages, view.thinking, tools) == want, (which, template, view)
                assert 1 in want[1]
                rendered.append(encoder.text(view.messages, view.thinking, tools))
                expected.append(want)
    assert len(expected) > 30 and refused < len(expected)
    assert [(chat.input_ids, chat.assistant_mask) for chat in encoder.encode(rendered)] == expected
    # The pre-token cache answered every rendering; without it (tokenizers it has no proof for), the backend's
    # encode gives the same.
    assert encoder.pretokens is not None
    assert all(encoder.pretokens.encode(text, spans) is not None for text, spans in rendered)
    encoder.pretokens = None
    assert [(chat.input_ids, chat.assistant_mask) for chat in encoder.encode(rendered)] == expected


def _transformers_walk(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """apply_chat_template's own mask loop (transformers 5.x tokenization_utils_base), the specification."""
    mask, span_idx = [0] * len(offsets), 0
    for token_id, (token_start, token_end) in enumerate(offsets):
        while span_idx < len(spans) and token_start >= spans[span_idx][1]:
            span_idx += 1
        if span_idx == len(spans):
            break
        if token_end > spans[span_idx][0]:
            mask[token_id] = 1
    return mask


def test_bisected_token_runs_equal_transformers_walk_on_random_offsets() -> None:
    """Offsets shaped like a tokenizer's (tokens sharing a multi-byte character, zero-width tokens after
    trimmed whitespace, gaps) against spans that touch, nest in time, are empty, run past the text or come
    out of order."""
    import random

    rng = random.Random(0)
    for _ in range(3000):
        offsets, pos = [], 0
        for _ in range(rng.randint(0, 40)):
            kind = rng.random()
            if kind < 0.1 and offsets:
                offsets.append(offsets[-1])  # the next byte of the same character
                continue
            pos += rng.choice([0, 0, 0, 1, 2])  # a gap: trimmed whitespace
            width = 0 if kind < 0.2 else rng.randint(1, 4)
            offsets.append((pos, pos + width))
            pos += width
        cuts = sorted(rng.randint(0, pos + 3) for _ in range(2 * rng.randint(0, 4)))
        spans = [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts), 2)]
        if spans and rng.random() < 0.3:  # a block closing right where the previous one closed
            spans.append((spans[-1][1], spans[-1][1] + rng.randint(0, 3)))
        if spans and rng.random() < 0.2:  # one out of order (never from a template: the walk still decides)
            spans.insert(rng.randint(0, len(spans)), (rng.randint(0, spans[-1][1]), rng.randint(0, spans[-1][1])))
        want = _transformers_walk(offsets, spans)
        runs = token_runs(len(offsets), offsets.__getitem__, spans)
        assert runs_to_mask(len(offsets), runs) == want, (offsets, spans)
        assert runs == mask_spans(want), (offsets, spans)  # merged: exactly the runs of ones


# Pieces where a regex transcription could go wrong: contractions in both cases, digit runs around Llama 3's
# three-digit split, whitespace runs before text and at the end (the lookahead), punctuation with newlines,
# added tokens whole and cut short; some non-ASCII text (the backend encodes those parts) and line starts.
_PIECES = [*"abzAZ09 '\t\n\r.,!?<>|_-\"{}", "'s", "'S", "'ll", "'LL", "'Re", "'ve", "'d", "'m", "'t", "1234567",
           "  ", "   x", "\n\n", " \n", "\r\n", " 12", "!!\n\n", " ''", "<|eot_id|>", "<|start_header_id|>",
           "<|eot_id", "<|im_start|>", "<think>", "don't", " I'M", "<|eot_id|>", "<|eot_id|>", "é", " 你好", "👋🏽", "e\u0301",
           "\x0b", "\u00a0", ".\nSo", ":\n"]


@pytest.mark.parametrize("which", ["tiny", "llama3"])
def test_pretoken_cache_gives_the_backend_encode_on_random_ascii(tokenizers: dict[str, Any], which: str) -> None:
    """The pre-token cache against the backend tokenizer's encode and the bisected runs on its offsets: random
    texts built from the pieces above, spans cut mostly at token edges and sometimes inside a token."""
    import random

    encoder = ChatEncoder(tokenizers[which])
    quick = encoder.pretokens
    assert quick is not None
    rng, answered = random.Random(1), 0
    for _ in range(2500):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 40)))
        reference = encoder.backend.encode(text, add_special_tokens=False)
        edges = [end for _, end in reference.offsets]
        cuts = sorted(rng.choice(edges) if edges and rng.random() < 0.9 else rng.randint(0, len(text))
                      for _ in range(2 * rng.randint(0, 3)))
        spans = [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts), 2)]
        got = quick.encode(text, spans)
        if got is not None:
            answered += 1
            assert got == (reference.ids, token_runs(len(reference), reference.token_to_chars, spans)), (text, spans)
        assert quick.encode(text, []) == (reference.ids, []), text  # without spans it always answers
    assert answered == 2500


@pytest.mark.parametrize("which", ["tiny", "llama3"])
def test_pretoken_splits_are_the_pre_tokenizers_own(tokenizers: dict[str, Any], which: str) -> None:
    """The two claims under the cache, on the pre-tokenizer's own split (so a vocabulary that happens to give the
    same ids either way hides nothing): on ASCII text the transcribed regex finds its pre-tokens, and the line
    starts that split a non-ASCII stretch are pre-token edges with each side splitting alone as in the text."""
    import random

    from tempa.sft.pretokens import _LINE_START, _OUTSIDE

    quick = ChatEncoder(tokenizers[which]).pretokens
    assert quick is not None
    split = tokenizers[which].backend_tokenizer.pre_tokenizer.pre_tokenize_str
    rng, cut = random.Random(2), 0
    for _ in range(3000):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 40)))
        want = [offsets for _, offsets in split(text)]
        if not _OUTSIDE.search(text):
            ends = list(accumulate(len(word) for word in quick.words.findall(text)))
            assert list(zip([0, *ends][: len(ends)], ends, strict=True)) == want, text
        got, start = [], 0
        for part in _LINE_START.split(text):
            got += [(start + a, start + b) for _, (a, b) in split(part)]
            start += len(part)
        cut += len(_LINE_START.split(text)) > 1 and bool(_OUTSIDE.search(text))
        assert got == want, text
    assert cut > 500


def test_pretoken_cache_declines_tokenizers_it_has_no_proof_for(tokenizers: dict[str, Any]) -> None:
    """A normalizer, BPE dropout or byte fallback, a prefix space, an unknown split regex, offsets trimmed after
    encoding, an added token that strips its neighbours or added tokens split in two passes each change what
    the transcribed split would have to be: no cache then."""
    import copy

    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers, processors

    from tempa.sft.pretokens import PretokenEncoder

    def changed(which: str, edit: Any) -> Any:
        backend = copy.deepcopy(tokenizers[which].backend_tokenizer)
        edit(backend)
        return PretokenEncoder.for_backend(backend)

    assert changed("tiny", lambda b: None) is not None and changed("llama3", lambda b: None) is not None
    assert changed("tiny", lambda b: setattr(b, "normalizer", normalizers.NFC())) is None
    assert changed("tiny", lambda b: setattr(b.model, "dropout", 0.1)) is None
    assert changed("tiny", lambda b: setattr(b.model, "byte_fallback", True)) is None
    assert changed("tiny", lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True))) is None
    assert changed("llama3", lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}{1,2}|\s+|[^\s\p{N}]+"), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))) is None
    assert changed("tiny", lambda b: setattr(b, "post_processor", processors.ByteLevel(trim_offsets=True))) is None
    assert changed("tiny", lambda b: b.add_tokens([AddedToken("<x>", lstrip=True, normalized=False)])) is None
    assert changed("tiny", lambda b: b.add_tokens([AddedToken("<x>", normalized=True)])) is None  # split in 2 passes
    assert changed("tiny", lambda b: b.add_tokens([AddedToken("<x>", normalized=False)])) is not None


def _rows_with_rejects(folder: Path) -> Path:
    """CORPUS and 40 short chats as JSON Lines, with broken lines near both ends (and a blank one)."""
    rows = [{"messages": messages, **({"tools": tools} if tools else {})} for messages, tools in CORPUS]
    rows += [{"messages": [_turn("user", f"soal {i}"), _turn("assistant", f"jawab {i}", f"pikir {i}")]}
             for i in range(40)]
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    lines[3:3] = ["{not json\n", "\n"]
    lines[-5:-5] = ['{"messages": "not a list"}\n']
    (folder / "rows.jsonl").write_text("".join(lines), encoding="utf-8")
    return folder / "rows.jsonl"


# "mixed" normalises every row before tokenising (its share of thinking-on rows is exact over the source);
# "on" normalises inside the tokenising workers, in one pass.
@pytest.mark.parametrize(("mode", "pools_of_one", "pools_of_two"), [("mixed", [1, 1], [2, 2]), ("on", [1], [2])])
def test_worker_processes_prepare_exactly_what_one_process_does(
    tmp_path: Path, tokenizers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, mode: str,
    pools_of_one: list[int], pools_of_two: list[int],
) -> None:
    import tempa.sft.data as data
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    tok = tokenizers["tiny"]
    tok.chat_template = load_template("llama3_thinking")
    # Rejects on both sides of where the workers split the file: their line numbers must hold.
    rows = _rows_with_rejects(tmp_path)
    lines = rows.read_text(encoding="utf-8").splitlines()
    # Normalising gets its own workers only on large sources: here too, so that both pools are compared.
    monkeypatch.setattr(data, "NORMALISE_ROWS_PER_PROCESS", 1)
    pools: list[int | None] = []
    count = data.worker_count
    monkeypatch.setattr(data, "worker_count", lambda *args: pools.append(count(*args)) or pools[-1])
    ratio = {"thinking_ratio": 0.5} if mode == "mixed" else {}

    def prepare(num_proc: int, name: str):
        config = DataConfig.model_validate(
            {"sources": [{"name": "r", "path": str(rows), "thinking_mode": mode, **ratio}],
             "heldout": 0.1, "num_proc": num_proc})
        return prepare_sft_data(config, tok, out_dir=tmp_path / name, cache_dir=tmp_path / f"cache-{name}", seed=3)

    one = prepare(1, "one")
    # A mixed source's rows drawn again (its rows that fit only with thinking off) are rendered after the steps,
    # in pools sized for them.
    first = len(pools)
    assert pools[:len(pools_of_one)] == pools_of_one and set(pools) == {1}  # one process: no pool for any step
    two = prepare(2, "two")
    assert pools[first:first + len(pools_of_two)] == pools_of_two  # each step in 2 worker processes
    assert gc.get_freeze_count() == 0  # the heap frozen for the workers is given back to the collector
    assert not two.cache_hit and len(one.train) > 40
    assert one.train.to_dict() == two.train.to_dict() and one.eval.to_dict() == two.eval.to_dict()
    assert one.mix == two.mix
    rejected = (tmp_path / "one" / "rejects.jsonl").read_bytes()
    assert rejected == (tmp_path / "two" / "rejects.jsonl").read_bytes()
    lines_rejected = [json.loads(line).get("line") for line in rejected.decode().splitlines()]
    assert 4 in lines_rejected and len(lines) - 5 in lines_rejected  # the broken lines, by their numbers


@pytest.mark.parametrize("num_proc", [1, 2])
def test_one_pass_prepares_exactly_what_normalising_first_does(
    tmp_path: Path, tokenizers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, num_proc: int
) -> None:
    """A source whose rows no step compares is normalised inside the tokenising workers: the same samples,
    mix and rejects (every kind: broken lines, rows the filters and the template refuse, turns and rows
    over the token limits) as normalising every row first, for thinking on and off."""
    import tempa.sft.data as data
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    tok = tokenizers["tiny"]
    tok.chat_template = load_template("llama3_thinking")
    rows = _rows_with_rejects(tmp_path)
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in [
        {"messages": [_turn("assistant", "Halo!"), _turn("user", "Hai"), _turn("assistant", "Ya?")]},  # template
        {"messages": [_turn("user", "Ulangi."), _turn("assistant", "halo " * 150, "r")]},  # too long: whole row
        {"messages": [_turn("user", "Sapa."), _turn("assistant", "Hai!"), _turn("user", "Lagi."),
                      _turn("assistant", "hai " * 150)]},  # too long: one turn
        {"messages": [_turn("user", "Kirim <|eot_id|>"), _turn("assistant", "x")]},  # special token
        {"messages": [_turn("user", "Tanpa jawaban")]},  # no assistant turn
        {"messages": [_turn("user", "Hitung."), _turn("assistant", "4", "2+2")]},
    ]), encoding="utf-8")
    config = DataConfig.model_validate({
        "sources": [{"name": "r", "path": str(rows), "thinking_mode": "on", "weight": 1.5},
                    {"name": "x", "path": str(extra), "thinking_mode": "off"}],
        "curation": {"role_order": False}, "heldout": 0.1, "num_proc": num_proc})
    paths = []
    one_pass = data._one_pass
    monkeypatch.setattr(data, "_one_pass", lambda *args: paths.append(one_pass(*args)) or paths[-1])
    one = prepare_sft_data(config, tok, out_dir=tmp_path / "one", cache_dir=tmp_path / "c1", seed=3, max_length=200)
    monkeypatch.setattr(data, "_one_pass", lambda *args: paths.append(False) or False)
    two = prepare_sft_data(config, tok, out_dir=tmp_path / "two", cache_dir=tmp_path / "c2", seed=3, max_length=200)
    assert paths == [True, True, False, False]
    assert one.train.to_dict() == two.train.to_dict() and one.eval.to_dict() == two.eval.to_dict()
    assert one.mix == two.mix
    assert (tmp_path / "one" / "rejects.jsonl").read_bytes() == (tmp_path / "two" / "rejects.jsonl").read_bytes()
    reasons = {(r["source"], r["reason"]) for r in map(json.loads, (tmp_path / "one" / "rejects.jsonl").open())}
    assert {("r", "malformed_row"), ("x", "template_error"), ("x", "too_long"), ("x", "too_long_turn"),
            ("x", "malformed_row")} <= reasons
    assert one.mix.sources[0].thinking_on_rows_kept > 0 and one.mix.sources[1].thinking_on_rows_kept == 0


def test_worker_processes_get_byte_balanced_work_on_rows_sorted_by_length(
    tmp_path: Path, tokenizers: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose long rows sit together (here: the last quarter) must not leave one worker with most of
    the text. Each batch sleeps in proportion to its text, so the split, not the cores, decides who does what."""
    import os
    import time

    import tempa.sft.data as data
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    tok = tokenizers["tiny"]
    tok.chat_template = load_template("llama3_thinking")
    rows = [[_turn("user", f"q{i}"), _turn("assistant", f"a{i}")] for i in range(450)]
    rows += [[_turn("user", f"q{i} " + "x" * 1000), _turn("assistant", "y" * 1000)] for i in range(150)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows), encoding="utf-8")
    total = sum(len(turn["content"]) for m in rows for turn in m)
    log = tmp_path / "batches.log"
    tokenize = data._tokenize_batch

    def timed(batch: dict[str, list[Any]], indices: list[int], **kwargs: Any) -> dict[str, list[Any]]:
        text = sum(len(turn["content"]) for m in batch["messages"] for turn in m)
        time.sleep(1.6 * text / total)  # 1.6 s of "work" in all
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {text}\n")
        return tokenize(batch, indices, **kwargs)

    monkeypatch.setattr(data, "_tokenize_batch", timed)
    config = DataConfig.model_validate({"sources": [{"name": "r", "path": str(tmp_path / "rows.jsonl")}],
                                        "num_proc": 2})
    prepared = prepare_sft_data(config, tok, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", seed=0)
    assert len(prepared.train) == 600
    per_worker: dict[str, int] = {}
    for line in log.read_text().splitlines():
        pid, text = line.split()
        per_worker[pid] = per_worker.get(pid, 0) + int(text)
    assert str(os.getpid()) not in per_worker and sum(per_worker.values()) == total
    # Equal rows per worker would give one worker 95% of the text; equal-byte chunks given out as workers
    # come free give each about half (within a chunk or two: 1/8 of the text each).
    assert len(per_worker) == 2 and max(per_worker.values()) <= 0.75 * total, per_worker


def test_frozen_heap_blocks_nest_and_only_the_outermost_gives_the_heap_back() -> None:
    from tempa.sft.forked_workers import frozen_heap

    assert gc.get_freeze_count() == 0
    with frozen_heap():
        outer = gc.get_freeze_count()
        assert outer > 0
        # A frozen object freed meanwhile (its last reference dropped, by another thread even) leaves the count,
        # so "kept" is "about as many", not ">= outer": a CI run saw 712,153 after 712,155.
        with frozen_heap():  # the workers' block inside a prepare's
            assert gc.get_freeze_count() > 0.99 * outer
        # an inner gc.unfreeze would have handed the prepare's heap back to the collector here (a count of 0)
        assert gc.get_freeze_count() > 0.99 * outer
    assert gc.get_freeze_count() == 0


def test_default_workers_follow_cores_and_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import tempa.sft.data_config as data

    monkeypatch.setattr(data, "available_cores", lambda: 8)
    assert data.worker_count(None, 3 * data.ROWS_PER_PROCESS) == 3
    assert data.worker_count(None, 10**7) == 8
    assert data.worker_count(None, data.ROWS_PER_PROCESS + 1) == 1  # one process: no pool at all
    assert data.worker_count(4, 10) == 4
    # normalising (about 1/10 of tokenising per row) gets a pool only for sources that pay for it
    assert data.worker_count(4, 10, data.NORMALISE_ROWS_PER_PROCESS) == 1
    assert data.worker_count(None, 3 * data.NORMALISE_ROWS_PER_PROCESS, data.NORMALISE_ROWS_PER_PROCESS) == 3


def test_memoised_sandbox_still_refuses_what_the_sandbox_refuses() -> None:
    """The render path reuses the sandbox's attribute verdicts; every refused access stays refused, on the
    first render and on later ones (when the verdict comes from the memo)."""
    import jinja2

    from tempa.chat_templates.rendering import compile_template, render_text

    escape = "{{ messages[0].content.__class__.__mro__ }}"  # a classic sandbox escape
    mutate = "{{ messages.append(1) }}"  # the immutable sandbox refuses list mutation
    allowed = "{% for m in messages %}{{ m.content.upper() }}{% endfor %}"
    messages = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        with pytest.raises(jinja2.exceptions.SecurityError):
            render_text(mutate, messages)
        with pytest.raises(jinja2.exceptions.SecurityError):
            render_text(escape, messages)
        assert render_text(allowed, messages) == "HI"
        assert "is_safe_attribute" in vars(compile_template(mutate).environment)  # the memo answered
    assert messages == [{"role": "user", "content": "hi"}]


_LONG = {"messages": [_turn("user", "Ulangi."), _turn("assistant", "halo " * 150)]}
_GOOD = [{"messages": [_turn("user", f"soal {i}"), _turn("assistant", f"jawab {i}")]} for i in range(4)]


# A recipe whose sources fail at different steps: the one pass reports the same source's error, with the same
# rejects, as normalising every source first (found by review: it reported the first source to fail in it).
@pytest.mark.parametrize("sources", [
    [{"name": "long", "rows": [_LONG] * 3}, {"name": "broken", "rows": ["{bad", "{worse"]}],
    [{"name": "broken", "rows": ["{bad", "{worse"]},
     {"name": "mixed", "rows": [{"messages": [_turn("user", "x")]}], "thinking_mode": "mixed", "thinking_ratio": 0.5}],
    [{"name": "all-held-out", "rows": _GOOD, "heldout": 4}, {"name": "broken", "rows": ["{bad", "{worse"]}],
], ids=["too-long-then-broken", "broken-then-mixed", "held-out-then-broken"])
def test_one_pass_fails_on_the_same_source_as_normalising_first(
    tmp_path: Path, tokenizers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, sources: list[dict[str, Any]]
) -> None:
    import tempa.sft.data as data
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig, DataError

    tok = tokenizers["tiny"]
    tok.chat_template = load_template("llama3_thinking")
    for source in sources:
        rows = source.pop("rows")
        source["path"] = str(tmp_path / f"{source['name']}.jsonl")
        Path(source["path"]).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    config = DataConfig.model_validate({"sources": sources})

    def failure(name: str) -> tuple[str, bytes]:
        with pytest.raises(DataError) as error:
            prepare_sft_data(config, tok, out_dir=tmp_path / name, cache_dir=tmp_path / f"c-{name}", seed=0,
                             max_length=60)
        return str(error.value).replace(str(tmp_path / name), "OUT"), (tmp_path / name / "rejects.jsonl").read_bytes()

    one = failure("one")
    monkeypatch.setattr(data, "_one_pass", lambda *args: False)
    assert one == failure("two")
    assert "'broken'" in one[0]  # the rows no source can train on are found before any source is mixed
