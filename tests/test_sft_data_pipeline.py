"""SFT data pipeline end to end on the tiny tokenizer with tempa's llama3_thinking template.

Expected token spans are derived from the template's documented contract (chat_templates/README.md):
with thinking on the model writes ``{reasoning}\\n</think>\\n\\n{answer}<|eot_id|>`` after the
prefilled ``<think>\\n``; with thinking off it writes ``{answer}<|eot_id|>`` after ``<think>\\n</think>\\n``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from sft_helpers import ISSUE_ROW, REASONED_ROW, SHAREGPT_ROW, WEATHER, expected_tool_samples, trained_spans
from tempa.sft.data import PreparedData, prepare_sft_data
from tempa.sft.data_config import DataConfig, DataError
from tempa.sft.data_report import DataMix
from tempa.sft.run_layout import COMPLETE

EOT = "<|eot_id|>"
ON_PREFILL = "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n"
OFF_PREFILL = "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n</think>\n"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def chat(user: str, answer: str, reasoning: str | None = None) -> dict[str, Any]:
    assistant: dict[str, Any] = {"role": "assistant", "content": answer}
    if reasoning is not None:
        assistant["reasoning_content"] = reasoning
    return {"messages": [{"role": "user", "content": user}, assistant]}


def config(folder: Path, sources: list[dict], **extra: Any) -> DataConfig:
    return DataConfig.model_validate({"sources": sources, **extra}, context={"base_dir": str(folder)})


def prepare(folder: Path, cfg: DataConfig, tokenizer: Any, *, seed: int = 0, cache: str = "cache",
            max_length: int | None = None, out: str = "out", **extra: Any) -> PreparedData:
    return prepare_sft_data(cfg, tokenizer, out_dir=folder / out, cache_dir=folder / cache, seed=seed,
                            max_length=max_length, **extra)


def texts(tokenizer: Any, ds: datasets.Dataset) -> list[tuple[str, str]]:
    """(full text, trained text) of every sample."""
    out = []
    for ex in ds:
        trained = [i for i, m in zip(ex["input_ids"], ex["assistant_masks"], strict=True) if m]
        out.append((tokenizer.decode(ex["input_ids"]), tokenizer.decode(trained)))
    return out


def rejects(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "out" / "rejects.jsonl").read_text().splitlines()]


# --- masks, thinking, expansion -------------------------------------------------------------------


def test_masks_cover_exactly_each_final_assistant_turn_with_its_end_token(tmp_path: Path, tokenizer: Any) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [
        chat("Hitunglah 6 × 7.", "Hasilnya 42.", "Enam kali tujuh sama dengan 42."),
        chat("Apa ibu kota Thailand?", "Bangkok."),  # no trace under "on": trained with thinking off
        {"messages": [
            {"role": "user", "content": "Berapa 2 + 3?"},
            {"role": "assistant", "content": "Hasilnya 5.", "reasoning_content": "Dua tambah tiga adalah lima."},
            {"role": "user", "content": "Dikali 4?"},
            {"role": "assistant", "content": "<think>\nLima kali empat adalah dua puluh.\n</think>\n\nHasilnya 20."},
        ]},
    ])
    prepared = prepare(tmp_path, config(tmp_path, [{"name": "r", "path": "rows.jsonl"}]), tokenizer)
    assert set(prepared.train.column_names) == {"input_ids", "assistant_masks"}
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    expected = {  # trained text -> text the sample must end its prompt with
        f"Enam kali tujuh sama dengan 42.\n</think>\n\nHasilnya 42.{EOT}": ON_PREFILL,
        f"Bangkok.{EOT}": OFF_PREFILL,
        f"Dua tambah tiga adalah lima.\n</think>\n\nHasilnya 5.{EOT}": ON_PREFILL,
        f"Lima kali empat adalah dua puluh.\n</think>\n\nHasilnya 20.{EOT}": ON_PREFILL,
    }
    seen = {}
    for ex, (full, trained) in zip(prepared.train, texts(tokenizer, prepared.train), strict=True):
        mask = ex["assistant_masks"]
        start, end = mask.index(1), len(mask) - mask[::-1].index(1)
        assert all(mask[start:end]) and end == len(mask), "one contiguous trained span, at the end"
        assert ex["input_ids"][end - 1] == eot_id
        prompt = tokenizer.decode(ex["input_ids"][:start])
        assert trained in expected and prompt.endswith(expected[trained]), trained
        seen[trained] = full
    assert len(seen) == len(expected) == len(prepared.train)
    # The second turn's sample shows turn one's answer but not its reasoning (history is dropped).
    second = seen[f"Lima kali empat adalah dua puluh.\n</think>\n\nHasilnya 20.{EOT}"]
    assert "Hasilnya 5." in second and "Dua tambah tiga" not in second


def test_thinking_off_rows_contain_no_reasoning_tokens(tmp_path: Path, tokenizer: Any) -> None:
    def rows(tag: str) -> list[dict]:
        out = []
        for i in range(6):
            row = chat(f"Soal {tag} nomor {i}: berapa {i} + {i}?", f"Jawabannya {2 * i}.", f"zebrafinch{tag} {i}")
            if i % 2:  # half of them as R1-style tags inside the answer
                row["messages"][1] = {"role": "assistant",
                                      "content": f"<think>\nzebrafinch{tag} {i}\n</think>\n\nJawabannya {2 * i}."}
            out.append(row)
        return out

    write_jsonl(tmp_path / "off.jsonl", rows("off"))
    write_jsonl(tmp_path / "on.jsonl", rows("on"))
    cfg = config(tmp_path, [{"name": "off", "path": "off.jsonl", "thinking_mode": "off"},
                            {"name": "on", "path": "on.jsonl", "thinking_mode": "on"}])
    decoded = [full for full, _ in texts(tokenizer, prepare(tmp_path, cfg, tokenizer).train)]
    off = [t for t in decoded if "Soal off" in t]
    on = [t for t in decoded if "Soal on" in t]
    assert len(off) == len(on) == 6
    assert all("zebrafinch" not in t and OFF_PREFILL in t for t in off)
    assert all("zebrafinchon" in t and ON_PREFILL in t for t in on)


def test_multi_turn_thinking_off_trains_every_turn_as_inference_renders_it(tmp_path: Path, tokenizer: Any) -> None:
    turns = [("Halo!", "Halo juga."), ("Apa kabar?", "Baik, terima kasih."), ("Sampai jumpa.", "Sampai jumpa lagi.")]
    messages = [m for u, a in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
    write_jsonl(tmp_path / "rows.jsonl", [{"messages": messages}])
    cfg = config(tmp_path, [{"name": "r", "path": "rows.jsonl", "thinking_mode": "off"}])
    trained = sorted(t for _, t in texts(tokenizer, prepare(tmp_path, cfg, tokenizer).train))
    # History turns render without the off prefill the model generates after, so each turn is its own sample.
    assert trained == sorted(f"{a}{EOT}" for _, a in turns)


# --- mixing ---------------------------------------------------------------------------------------


def test_mixing_proportions_follow_weights_rows_tokens_and_thinking_ratio(tmp_path: Path, tokenizer: Any) -> None:
    def source_rows(tag: str, n: int, reasoning: bool = False) -> list[dict]:
        return [chat(f"{tag} soal {i}", f"{tag} jawab {i}", f"{tag} pikir {i}" if reasoning else None) for i in range(n)]

    for tag, n in (("A", 120), ("B", 30), ("C", 80), ("D", 80)):
        write_jsonl(tmp_path / f"{tag}.jsonl", source_rows(tag, n))
    write_jsonl(tmp_path / "E.jsonl", source_rows("E", 200, reasoning=True))
    cfg = config(tmp_path, [
        {"name": "A", "path": "A.jsonl", "weight": 0.5},
        {"name": "B", "path": "B.jsonl", "weight": 2.5},
        {"name": "C", "path": "C.jsonl", "rows": 25},
        {"name": "D", "path": "D.jsonl", "tokens": 600},
        {"name": "E", "path": "E.jsonl", "thinking_mode": "mixed", "thinking_ratio": 0.3, "heldout": 20},
    ])
    prepared = prepare(tmp_path, cfg, tokenizer)
    decoded = [full for full, _ in texts(tokenizer, prepared.train)]
    count = {tag: sum(f"{tag} soal " in t for t in decoded) for tag in "ABCDE"}
    assert count["A"] == 60 and count["B"] == 75 and count["C"] == 25 and count["E"] == 180
    # Up-sampling repeats whole rows: every B row at least twice.
    assert min(sum(f"B soal {i}<" in t for t in decoded) for i in range(30)) == 2
    d_tokens = sum(len(ex["input_ids"]) for ex, t in zip(prepared.train, decoded, strict=True) if "D soal " in t)
    per_row = d_tokens / count["D"]
    assert 600 - 2 * per_row < d_tokens <= 600
    thinking_share = sum("E pikir" in t for t in decoded) / count["E"]
    assert abs(thinking_share - 0.3) <= 0.05
    # The held-out rows are in eval only.
    eval_text = [full for full, _ in texts(tokenizer, prepared.eval)]
    assert len(eval_text) == 20 and all("E soal" in t for t in eval_text)
    held = {t.split("E soal ")[1].split("<")[0] for t in eval_text}
    assert not any(f"E soal {i}<" in t for t in decoded for i in held)
    # The report says the same, per source, and is written to the stage folder.
    mix = json.loads((tmp_path / "out" / "mix.json").read_text())
    by_name = {s["name"]: s for s in mix["sources"]}
    assert by_name["A"]["rows_in"] == 120 and by_name["A"]["rows_kept"] == 60
    assert by_name["D"]["tokens_kept"] == d_tokens and by_name["E"]["heldout_rows"] == 20
    assert abs(sum(s["share_of_tokens"] for s in mix["sources"]) - 1) < 1e-3


def test_same_seed_same_data_order_other_seed_other_order(tmp_path: Path, tokenizer: Any) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [chat(f"soal {i}", f"jawab {i}") for i in range(40)])
    cfg = config(tmp_path, [{"name": "r", "path": "rows.jsonl", "weight": 0.75}], heldout=0.1)
    first = prepare(tmp_path, cfg, tokenizer, seed=5, cache="c1")
    again = prepare(tmp_path, cfg, tokenizer, seed=5, cache="c2")
    other = prepare(tmp_path, cfg, tokenizer, seed=6, cache="c3")
    assert not again.cache_hit
    assert first.train["input_ids"] == again.train["input_ids"] and first.eval["input_ids"] == again.eval["input_ids"]
    assert first.train["input_ids"] != other.train["input_ids"]


# --- cache ----------------------------------------------------------------------------------------


def test_cache_hits_and_misses_when_it_should(tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempa.sft.data as data_module

    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [chat(f"soal {i}", f"jawab {i}", f"pikir {i}") for i in range(10)])
    cfg = config(tmp_path, [{"name": "r", "path": "rows.jsonl"}])
    first = prepare(tmp_path, cfg, tokenizer)
    assert not first.cache_hit and (first.cache_path / COMPLETE).exists()

    real_build = data_module._build
    builds = []

    def counting_build(*args: Any, **kwargs: Any) -> None:
        builds.append(1)
        real_build(*args, **kwargs)

    monkeypatch.setattr(data_module, "_build", counting_build)
    (tmp_path / "out").rename(tmp_path / "out-first")
    second = prepare(tmp_path, cfg, tokenizer)
    assert second.cache_hit and builds == [] and second.train["input_ids"] == first.train["input_ids"]
    # The reports of a cached run are in the stage folder too.
    assert DataMix.read(tmp_path / "out" / "mix.json") == first.mix
    assert (tmp_path / "out" / "rejects.jsonl").exists()

    # A changed template misses even though the tokenizer files are the same.
    changed = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    changed.chat_template = tokenizer.chat_template.replace("<|eot_id|>", "<|eot_id|>", 1) + "{#- v2 -#}"
    assert not prepare(tmp_path, cfg, changed).cache_hit and len(builds) == 1
    # So do changed curation, changed data and a changed max_length.
    cfg_strict = config(tmp_path, [{"name": "r", "path": "rows.jsonl"}], curation={"max_tokens": 4000})
    assert not prepare(tmp_path, cfg_strict, tokenizer).cache_hit
    assert not prepare(tmp_path, cfg, tokenizer, max_length=4000).cache_hit
    write_jsonl(rows, [chat(f"soal {i}", f"jawab {i}", f"pikir {i}") for i in range(11)])
    changed_data = prepare(tmp_path, cfg, tokenizer)
    assert not changed_data.cache_hit and changed_data.mix.sources[0].rows_in == 11
    assert len(builds) == 4
    # A partial entry (no completion marker) is never used.
    entry = prepare(tmp_path, cfg, tokenizer).cache_path
    (entry / COMPLETE).unlink()
    rebuilt = prepare(tmp_path, cfg, tokenizer)
    assert not rebuilt.cache_hit and (rebuilt.cache_path / COMPLETE).exists() and len(builds) == 5


KILLED_PREP = """
import os, signal, sys
from pathlib import Path

from transformers import AutoTokenizer

import tempa.sft.data as data
from tempa.chat_templates import load_template
from tempa.sft.data_config import DataConfig

real_build = data._build


def killed_build(*args, **kwargs):
    real_build(*args, **kwargs)  # the rows are tokenised into the build folder ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the OOM killer strikes before it is published


data._build = killed_build
folder = Path(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
tokenizer.chat_template = load_template("llama3_thinking")
config = DataConfig.model_validate({"sources": [{"name": "r", "path": "rows.jsonl"}]}, context={"base_dir": str(folder)})
data.prepare_sft_data(config, tokenizer, out_dir=folder / "killed-out", cache_dir=folder / "cache", seed=0)
"""


def test_a_build_left_by_a_killed_data_prep_is_removed_by_the_next(tmp_path: Path, tokenizer: Any,
                                                                  tiny_tokenizer_dir: Path) -> None:
    """A SIGKILL during data prep skips the clean-up of its build folder in the shared cache (the tokenised rows of
    a large mix: many GB); each kill left one more there, until the disk was full."""
    import subprocess
    import sys

    write_jsonl(tmp_path / "rows.jsonl", [chat(f"soal {i}", f"jawab {i}", f"pikir {i}") for i in range(10)])
    killed = subprocess.run([sys.executable, "-c", KILLED_PREP, str(tiny_tokenizer_dir), str(tmp_path)],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = list((tmp_path / "cache").glob(".tmp-*"))
    assert len(left) == 1 and (left[0] / "train").is_dir()  # the killed build, tokenised rows and all

    prepared = prepare(tmp_path, config(tmp_path, [{"name": "r", "path": "rows.jsonl"}]), tokenizer)
    assert not prepared.cache_hit and (prepared.cache_path / COMPLETE).exists()
    assert list((tmp_path / "cache").glob(".tmp-*")) == []


def test_a_build_another_container_is_making_is_left_alone_by_the_sweep(tmp_path: Path) -> None:
    """Two containers on one host (one hostname, --network host) share the cache, but not their pids: the other's
    live build has a pid this one cannot see. Its flock says it is alive; once nobody holds it, it is swept."""
    import fcntl
    import os
    import socket

    from tempa.sft.files import sweep_dead_builds

    unseen = 4_194_305  # above any pid_max: no process of this namespace has it
    building = tmp_path / f".tmp-{'a' * 16}-{socket.gethostname()}-{unseen}-{'b' * 8}"
    older = tmp_path / f".tmp-{'c' * 16}-{socket.gethostname()}-{unseen}-{'d' * 8}"  # no lock: an older tempa's
    for folder in (building, older):
        (folder / "train").mkdir(parents=True)
    fd = os.open(building / ".building", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert sweep_dead_builds(tmp_path) == [older] and building.is_dir() and not older.exists()
    finally:
        os.close(fd)  # the other container's build dies
    assert sweep_dead_builds(tmp_path) == [building] and not building.exists()


# --- rejects and errors ---------------------------------------------------------------------------


def test_malformed_and_filtered_rows_are_rejected_with_reasons_and_the_run_goes_on(
    tmp_path: Path, tokenizer: Any
) -> None:
    good = [
        chat("Apa kabar hari ini? Ceritakan sedikit tentang harimu.", "Kabar saya baik, terima kasih sudah bertanya."),
        chat("Sebutkan tiga buah yang tumbuh di Asia Tenggara.", "Mangga, durian, dan rambutan."),
        chat("Bagaimana cara membuat teh manis yang enak?", "Seduh teh dengan air panas, lalu tambahkan gula."),
        chat("Mengapa langit berwarna biru pada siang hari?", "Karena cahaya biru paling banyak dihamburkan udara."),
    ]
    lines: list[Any] = [
        good[0],
        "{not json",
        {"messages": "hello"},
        {"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]},
        chat("Apa ibu kota Jepang?", "<think>\nTokyo adalah ibu kota", None),
        chat("Apa ibu kota Jepang sekarang?", "   ", "Ibu kotanya Tokyo."),
        {"messages": [{"role": "assistant", "content": "Halo!"}, {"role": "user", "content": "Hai"}]},
        chat("Tolong kirim ke budi.santoso@gmail.com sekarang juga ya.", "Baik, akan saya kirim."),
        chat("วันนี้อากาศร้อนมาก ฉันอยากสั่งกาแฟเย็นหนึ่งแก้ว", "ได้เลยค่ะ เดี๋ยวจะเตรียมกาแฟเย็นให้นะคะ"),
        good[1],
        good[1],  # exact duplicate
        "",  # blank lines are not rows
        chat("Tulis ulang kalimat ini. " + "kata " * 400, "Baik."),  # too long
        {"messages": [{"role": "user", "content": "Contoh <|eot_id|> token"}, {"role": "assistant", "content": "x"}]},
        good[2],
        good[3],
    ]
    write_jsonl(tmp_path / "rows.jsonl", lines)
    cfg = config(
        tmp_path,
        [{"name": "sea", "path": "rows.jsonl", "languages": ["id"], "thinking_mode": "off"}],
        curation={"pii": True, "language": True, "dedup": True, "max_tokens": 300},
    )
    prepared = prepare(tmp_path, cfg, tokenizer)
    by_line = {int(r["detail"].split(":")[0].split()[1]): r for r in rejects(tmp_path)}
    expected = {
        2: ("malformed_row", "not valid JSON"),
        3: ("malformed_row", "expected 'messages' to be a list of {role, content}"),
        4: ("malformed_row", "unknown role 'narrator'"),
        5: ("malformed_reasoning", "unclosed think block"),
        6: ("malformed_reasoning", "empty answer after the reasoning"),
        7: ("role_order", "assistant turn at the start"),
        8: ("pii", "email"),
        9: ("language", "detected 'th'"),
        11: ("exact_duplicate", "same instruction as sea line 10"),
        13: ("too_long", "tokens > max 300"),
        14: ("malformed_row", "special token '<|eot_id|>'"),
    }
    assert {line: (r["reason"]) for line, r in by_line.items()} == {k: v[0] for k, v in expected.items()}
    for line, (_, fragment) in expected.items():
        assert fragment in by_line[line]["detail"], by_line[line]
        assert by_line[line]["source"] == "sea" and by_line[line]["row"] == line - 1
    assert by_line[2]["data"] == "{not json" and by_line[7]["data"][0]["role"] == "assistant"
    # the personal data a row was rejected for is not copied out of the source into the run's files
    assert by_line[8]["data"] is None
    assert "budi.santoso" not in (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8")
    assert len(prepared.train) == 4
    (stats,) = DataMix.read(tmp_path / "out" / "mix.json").sources
    assert stats.name == "sea" and stats.rows_in == 15 and stats.rows_kept == 4
    assert stats.rejects == {"malformed_row": 4, "malformed_reasoning": 2, "role_order": 1, "pii": 1,
                                "language": 1, "exact_duplicate": 1, "too_long": 1}
    # as mix.json's fields say: rows_curated is rows_in less the row filters' 9 and the duplicate (found after
    # tokenising), rows_tokenized that less the row too long
    assert (stats.rows_curated, stats.rows_tokenized) == (15 - 9 - 1, 15 - 9 - 1 - 1)


def test_a_key_in_a_row_another_check_rejected_is_not_copied_into_the_rejects(tmp_path: Path, tokenizer: Any) -> None:
    # The PII check runs after the reasoning and role-order checks, so a row those reject was never scanned for the
    # credential it holds (diff review); the key is built here, never written in the repository.
    import random
    import string

    rng = random.Random(3)
    key = "hf_" + "".join(rng.choice(string.ascii_letters) for _ in range(34))
    write_jsonl(tmp_path / "rows.jsonl", [
        {"messages": [{"role": "assistant", "content": f"token {key}"}, {"role": "user", "content": "Hai"}]},
        chat(f"Login pakai {key}", "<think>\nbelum selesai", None),
        '{"messages": [{"role": "user", "content": "' + key,  # a line that is not JSON
        chat("Apa kabar?", "Baik."),
    ])
    prepare(tmp_path, config(tmp_path, [{"name": "r", "path": "rows.jsonl"}]), tokenizer)
    records = rejects(tmp_path)
    assert sorted(r["reason"] for r in records) == ["malformed_reasoning", "malformed_row", "role_order"]
    assert [r["data"] for r in records] == [None, None, None], records
    assert key not in (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8")


def test_filters_are_optional_and_template_refusals_are_rejects(tmp_path: Path, tokenizer: Any) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [
        chat("Email saya budi@gmail.com", "Baik."),
        {"messages": [{"role": "assistant", "content": "Halo!"}, {"role": "user", "content": "Hai"},
                      {"role": "assistant", "content": "Ada yang bisa dibantu?"}]},
    ])
    cfg = config(tmp_path, [{"name": "r", "path": "rows.jsonl"}], curation={"role_order": False})
    prepared = prepare(tmp_path, cfg, tokenizer)
    assert len(prepared.train) == 1  # the PII row: no PII filter configured
    [reject] = rejects(tmp_path)
    assert reject["reason"] == "template_error" and "line 2" in reject["detail"]


def test_a_turn_too_long_is_dropped_but_its_conversation_kept(tmp_path: Path, tokenizer: Any) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [{"messages": [
        {"role": "user", "content": "Sapa aku."}, {"role": "assistant", "content": "Halo!"},
        {"role": "user", "content": "Ulangi seratus kali."}, {"role": "assistant", "content": "halo " * 100},
    ]}])
    cfg = config(tmp_path, [{"name": "r", "path": "rows.jsonl", "thinking_mode": "off"}])
    prepared = prepare(tmp_path, cfg, tokenizer, max_length=120)
    assert [t for _, t in texts(tokenizer, prepared.train)] == [f"Halo!{EOT}"]
    [reject] = rejects(tmp_path)
    assert reject["reason"] == "too_long_turn" and "turn 3" in reject["detail"]


def test_a_source_that_is_all_rejects_is_one_clear_error(tmp_path: Path, tokenizer: Any) -> None:
    write_jsonl(tmp_path / "bad.jsonl", [{"messages": "hello"}, {"messages": 3}])
    write_jsonl(tmp_path / "ok.jsonl", [chat("Halo", "Hai")])
    cfg = config(tmp_path, [{"name": "ok", "path": "ok.jsonl"}, {"name": "sea_instruct", "path": "bad.jsonl"}])
    with pytest.raises(DataError) as info:
        prepare(tmp_path, cfg, tokenizer)
    message = str(info.value)
    assert "\n" not in message
    assert f"data source 'sea_instruct' ({tmp_path / 'bad.jsonl'})" in message
    assert "all 2 rows were rejected" in message
    assert "line 1: expected 'messages' to be a list of {role, content}" in message
    assert [r["row"] for r in rejects(tmp_path) if r["source"] == "sea_instruct"] == [0, 1]


def test_an_all_rejects_error_shows_an_example_of_its_commonest_reason(tmp_path: Path, tokenizer: Any) -> None:
    """max_length 8 rejected 255 rows as too long and 5 as evaluation prompts, and the error's example was the first
    reject, one of the 5: the user looked for contamination, not at max_length."""
    write_jsonl(tmp_path / "rows.jsonl", [{"messages": "hello"}] + [chat(f"Ulangi {i}", "halo " * 40) for i in range(3)])
    with pytest.raises(DataError) as info:
        prepare(tmp_path, config(tmp_path, [{"name": "r", "path": "rows.jsonl", "thinking_mode": "off"}]), tokenizer,
                max_length=40)
    message = str(info.value)
    assert "all 4 rows were rejected (too_long 3, malformed_row 1); first too_long: " in message, message
    assert "expected 'messages'" not in message


def test_a_line_that_is_not_utf8_is_a_reject_and_a_bom_is_no_broken_row(tmp_path: Path, tokenizer: Any) -> None:
    good = [json.dumps(chat(f"Ulangi {i}", f"{i}")).encode() for i in range(6)]
    lines = [b"\xef\xbb\xbf" + good[0], good[1], good[2][:30] + b"\xff" + good[2][30:], good[3], b"{not json", good[4],
             good[5]]
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    prepared = prepare(tmp_path, config(tmp_path, [{"name": "r", "path": "rows.jsonl", "thinking_mode": "off"}]),
                       tokenizer)
    # the BOM line and every good line train; the two bad lines are rejects naming their line and reason
    assert len(prepared.train) == 5
    details = {r["detail"] for r in rejects(tmp_path)}
    assert details == {"line 3: invalid UTF-8 (byte 0xff at column 31)",
                       "line 5: not valid JSON (Expecting property name enclosed in double quotes, column 2)"}
    assert prepared.mix.sources[0].rows_in == 7


# JSON's \\u escapes can spell half of a UTF-16 pair, which no UTF-8 text holds: Arrow and the tokenizer
# refused it with a traceback that named no row (found by review).
LONE = '{"messages": [{"role": "user", "content": "Halo \\ud800"}, {"role": "assistant", "content": "Hai"}]}'


@pytest.mark.parametrize("thinking_mode", ["on", "mixed"])  # one pass, and normalising first
def test_an_unpaired_surrogate_escape_is_a_reject_naming_its_line(tmp_path: Path, tokenizer: Any,
                                                                  thinking_mode: str) -> None:
    pair = json.dumps(chat("Emoji \U0001F600 ini apa?", "Wajah tersenyum."))  # escaped as a surrogate pair
    assert "\\ud83d\\ude00" in pair
    write_jsonl(tmp_path / "rows.jsonl", [chat("Halo", "Hai"), LONE, pair, chat("Apa kabar?", "Baik.")])
    ratio = {"thinking_ratio": 0.5} if thinking_mode == "mixed" else {}
    prepared = prepare(tmp_path, config(tmp_path, [{"name": "r", "path": "rows.jsonl", "thinking_mode": thinking_mode,
                                                    **ratio}]), tokenizer)
    assert len(prepared.train) == 3
    [reject] = rejects(tmp_path)
    assert (reject["reason"], reject["detail"], reject["data"]) == (
        "malformed_row", "line 2: not valid text: an unpaired surrogate \\ud800 (half of a UTF-16 pair)", LONE)


def test_an_unpaired_surrogate_in_a_json_file_is_one_error_naming_its_line(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "rows.json"
    path.write_text("[\n" + json.dumps(chat("Halo", "Hai")) + ",\n" + LONE + "\n]\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        prepare(tmp_path, config(tmp_path, [{"name": "r", "path": "rows.json"}]), tokenizer)
    assert str(err.value).endswith(f"{path}:3: not valid text: an unpaired surrogate \\ud800 (half of a UTF-16 pair)")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_an_empty_jsonl_file_is_one_error_naming_it(tmp_path: Path, tokenizer: Any, content: bytes) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        prepare(tmp_path, config(tmp_path, [{"name": "e", "path": "empty.jsonl"}]), tokenizer)
    assert str(err.value) == f"data source 'e': {path}: empty file (expected one JSON object per line)"


def test_a_typed_source_without_the_needed_columns_is_one_clear_error(tmp_path: Path, tokenizer: Any) -> None:
    datasets.Dataset.from_dict({"question": ["a"], "answer": ["b"]}).to_parquet(tmp_path / "qa.parquet")
    cfg = config(tmp_path, [{"name": "qa", "path": "qa.parquet"}])
    with pytest.raises(DataError, match=r"cannot tell the row format from the columns \(question, answer\)"):
        prepare(tmp_path, cfg, tokenizer)
    mapped = config(tmp_path, [{"name": "qa", "path": "qa.parquet", "columns": {"prompt": "question", "response": "answer"}}])
    assert len(prepare(tmp_path, mapped, tokenizer).train) == 1


# --- sources --------------------------------------------------------------------------------------


def test_every_source_kind_loads(tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def rows(tag: str) -> list[dict]:
        return [{"prompt": f"{tag} soal {i}", "response": f"{tag} jawab {i}"} for i in range(3)]

    write_jsonl(tmp_path / "a.jsonl", [chat(r["prompt"], r["response"]) for r in rows("jsonl")])
    (tmp_path / "b.json").write_text(json.dumps({"data": [
        {"conversations": [{"from": "human", "value": r["prompt"]}, {"from": "gpt", "value": r["response"]}]}
        for r in rows("json")]}))
    datasets.Dataset.from_list(rows("parquet")).to_parquet(tmp_path / "c.parquet")
    datasets.Dataset.from_list(
        [{"instruction": r["prompt"], "input": None, "output": r["response"]} for r in rows("csv")]
    ).to_csv(tmp_path / "d.csv", index=False)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows("disk"))}).save_to_disk(str(tmp_path / "saved"))

    real_load = datasets.load_dataset
    calls = []

    def fake_load(path: str, *args: Any, **kwargs: Any) -> Any:
        if path == "org/sea-demo":  # a hub id, answered locally: tests never reach a hub
            calls.append((path, kwargs.get("name"), kwargs.get("split"), kwargs.get("revision")))
            return datasets.Dataset.from_list(rows("hub"))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg = config(tmp_path, [
        {"name": "jsonl", "path": "a.jsonl"},
        {"name": "json", "path": "b.json"},
        {"name": "parquet", "path": "c.parquet"},
        {"name": "csv", "path": "d.csv"},
        {"name": "disk", "path": "saved"},
        {"name": "hub", "path": "org/sea-demo", "subset": "id", "revision": "abc123"},
    ])
    decoded = [full for full, _ in texts(tokenizer, prepare(tmp_path, cfg, tokenizer).train)]
    for tag in ("jsonl", "json", "parquet", "csv", "disk", "hub"):
        for i in range(3):
            assert sum(f"{tag} soal {i}<|eot_id|>" in t and f"{tag} jawab {i}<|eot_id|>" in t for t in decoded) == 1
    assert calls and all(c == ("org/sea-demo", "id", "train", "abc123") for c in calls)


def test_shipped_sample_data_survives_default_curation(tmp_path: Path, tokenizer: Any) -> None:
    from tempa.recipes.tiny import sample_data_dir

    data = sample_data_dir()
    languages = ["en", "id", "vi", "th", "ta", "tl", "ja"]
    cfg = DataConfig.model_validate(
        {
            "sources": [
                {"name": "instruct", "path": "sample_instruct.jsonl", "thinking_mode": "off", "languages": languages},
                {"name": "reasoning", "path": "sample_reasoning.jsonl", "thinking_mode": "mixed",
                 "thinking_ratio": 0.5, "languages": languages},
            ],
            "curation": {"pii": True, "language": True},
        },
        context={"base_dir": str(data)},
    )
    prepared = prepare(tmp_path, cfg, tokenizer)
    stats = {source.name: source for source in prepared.mix.sources}
    # Genuine sentences in the declared languages, no personal data, well-formed traces: nothing rejected.
    assert stats["instruct"].rejects == {} and stats["reasoning"].rejects == {}
    assert stats["instruct"].rows_in >= 200 and stats["reasoning"].rows_in >= 100


def test_trl_sft_trainer_accepts_the_prepared_data(tmp_path: Path, tokenizer: Any, tiny_model_dir: Path) -> None:
    import numpy as np
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    write_jsonl(tmp_path / "rows.jsonl", [chat(f"soal {i}", f"jawab {i}", f"pikir {i}") for i in range(12)])
    prepared = prepare(tmp_path, config(tmp_path, [{"name": "r", "path": "rows.jsonl"}]), tokenizer)
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_length=512, packing=True, packing_strategy="bfd",
                     report_to="none", use_cpu=True, per_device_train_batch_size=2)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                         train_dataset=prepared.train, processing_class=tokenizer)
    packed = trainer.train_dataset
    trained = sum(int(np.sum(np.asarray(ex["labels"]) != -100)) for ex in packed)
    assert trained == sum(sum(m) for m in prepared.train["assistant_masks"])
    assert len(packed) < len(prepared.train)  # packed: several samples per sequence


# --- tool calls -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama3_tokenizer(llama3_model_dir: Path) -> Any:
    """Meta's Llama 3 tokenizer with the thinking template baked in (treat as read-only)."""
    from transformers import AutoTokenizer

    from tempa.chat_templates import load_template

    tok = AutoTokenizer.from_pretrained(llama3_model_dir)
    tok.chat_template = load_template("llama3_thinking")
    return tok


@pytest.mark.parametrize("which", ["tiny", "llama3"])
def test_tool_call_rows_train_each_loop_step_with_exact_masks(
    tmp_path: Path, which: str, tokenizer: Any, request: pytest.FixtureRequest
) -> None:
    tok = tokenizer if which == "tiny" else request.getfixturevalue("llama3_tokenizer")
    two_calls = {"messages": [
        {"role": "user", "content": "Cuaca di Medan dan Jakarta?"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": c}}}
                                             for c in ("Medan", "Jakarta")]},
        {"role": "tool", "content": "29C"}, {"role": "tool", "content": "31C"},
        {"role": "assistant", "content": "29°C dan 31°C."}]}
    write_jsonl(tmp_path / "openai.jsonl", [ISSUE_ROW, REASONED_ROW, two_calls])
    write_jsonl(tmp_path / "sharegpt.jsonl", [SHAREGPT_ROW])
    cfg = config(tmp_path, [{"name": "openai", "path": "openai.jsonl", "thinking_mode": "on"},
                            {"name": "sharegpt", "path": "sharegpt.jsonl", "format": "sharegpt"}])
    prepared = prepare(tmp_path, cfg, tok)
    expected = expected_tool_samples()
    got = {}
    for ex in prepared.train:
        full = tok.decode(ex["input_ids"])
        key = next(city for city in expected if f"{city}?" in full)
        got[key] = (full, trained_spans(tok, ex))
    # One sample per row: the loop's call turn trains inside the answer's sample, tool results never do.
    assert got == expected
    # Llama 3.1's JSON format has one call per message: that row is a clear reject, not a crash.
    [reject] = rejects(tmp_path)
    assert reject["reason"] == "template_error" and "one tool call per assistant message, got 2" in reject["detail"]


def test_the_mix_counts_the_rows_that_offer_tools_or_hold_a_tool_loop_per_source(
    tmp_path: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An agentic team's card and report never said what share of the data taught tools: mix.json, the cache's
    copy and the logged table count them per source, in both pipeline paths (one pass, and normalised first)."""
    plain = [chat(f"Pertanyaan nomor {i} tentang buah?", f"Jawaban nomor {i}.") for i in range(3)]
    offers_tools = {"tools": [WEATHER], **chat("Apa kabar hari ini?", "Baik, terima kasih.")}
    ipython = {"messages": [
        {"role": "user", "content": "Cuaca di Bogor?"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Bogor"}}}]},
        {"role": "ipython", "content": "25C"}, {"role": "assistant", "content": "Bogor 25°C."}]}
    write_jsonl(tmp_path / "openai.jsonl", [ISSUE_ROW, *plain, REASONED_ROW])
    write_jsonl(tmp_path / "mixed.jsonl", [offers_tools, ipython, *plain])
    write_jsonl(tmp_path / "sharegpt.jsonl", [SHAREGPT_ROW])
    cfg = config(tmp_path, [{"name": "openai", "path": "openai.jsonl", "thinking_mode": "on"},
                            {"name": "mixed", "path": "mixed.jsonl", "thinking_mode": "mixed", "thinking_ratio": 0.5},
                            {"name": "sharegpt", "path": "sharegpt.jsonl", "format": "sharegpt"}], heldout=0)
    with caplog.at_level("INFO", logger="tempa.sft.data"):
        built = prepare(tmp_path, cfg, tokenizer)
    assert [(s.name, s.rows_kept, s.tool_rows_kept) for s in built.mix.sources] == \
        [("openai", 5, 2), ("mixed", 5, 2), ("sharegpt", 1, 1)]
    assert built.mix.total.tool_rows_kept == 5
    assert DataMix.read(tmp_path / "out" / "mix.json") == built.mix
    table = next(r.getMessage() for r in caplog.records if "SFT data mix" in r.getMessage()).splitlines()[1:]
    column = [c.strip() for c in table[0].split("  ") if c.strip()].index("tool rows")
    assert [row.split()[column] for row in table[1:4]] == ["2/5", "2/5", "1/1"]
    assert table[-1].split()[-1] == "5/11"
    # A cache hit reads the count back from the cache's mix.json.
    again = prepare(tmp_path, cfg, tokenizer)
    assert again.cache_hit and [s.tool_rows_kept for s in again.mix.sources] == [2, 2, 1]
    # A mix.json of a tempa that did not count them (a finished run's sft stage) still loads, as none counted.
    old = built.mix.model_dump(mode="json")
    for part in (old["total"], *old["sources"]):
        del part["tool_rows_kept"]
    (tmp_path / "old.json").write_text(json.dumps(old), encoding="utf-8")
    assert DataMix.read(tmp_path / "old.json").total.tool_rows_kept == 0


def test_bad_tool_calls_are_one_line_rejects(tmp_path: Path, tokenizer: Any) -> None:
    def row(**call: Any) -> dict:
        return {"messages": [{"role": "user", "content": "Cuaca?"},
                             {"role": "assistant", "tool_calls": [{"function": call}]},
                             {"role": "tool", "content": "x"}, {"role": "assistant", "content": "ok"}]}

    write_jsonl(tmp_path / "rows.jsonl", [
        row(name="f", arguments="{not json"), row(arguments={}), row(name="f", arguments="[1, 2]"),
        {"messages": [{"role": "user", "content": "Hai"}, {"role": "tool", "content": "x"},
                      {"role": "assistant", "content": "ok"}]},
        chat("Halo, apa kabar hari ini?", "Baik sekali, terima kasih."),
    ])
    prepare(tmp_path, config(tmp_path, [{"name": "r", "path": "rows.jsonl"}]), tokenizer)
    details = [(r["reason"], r["detail"]) for r in rejects(tmp_path)]
    assert details == [
        ("malformed_row", "line 1: expected turn 1 'tool_calls'[0] arguments to be JSON; Expecting property name "
                          "enclosed in double quotes at column 2"),
        ("malformed_row", "line 2: expected turn 1 'tool_calls'[0] to name its function (a non-empty 'name')"),
        ("malformed_row", "line 3: expected turn 1 'tool_calls'[0] arguments to be a JSON object, got list"),
        ("role_order", "line 4: turn 1: tool turn not after an assistant turn that calls a tool"),
    ]


def test_the_log_counts_every_reject_once_the_source_is_prepared_and_the_table_adds_up(
    tmp_path: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    kept = [chat(f"Pertanyaan nomor {i} tentang buah?", f"Jawaban nomor {i}.") for i in range(6)]
    long_turn = {"messages": [
        {"role": "user", "content": "Sapa aku."}, {"role": "assistant", "content": "Halo!"},
        {"role": "user", "content": "Ulangi seratus kali."}, {"role": "assistant", "content": "halo " * 100},
    ]}
    write_jsonl(tmp_path / "rows.jsonl", [
        *kept[:3], "{not json", {"messages": [{"role": "assistant", "content": "Halo!"},
                                             {"role": "user", "content": "Hai"}]},
        chat("Tulis ulang kalimat ini. " + "kata " * 200, "Baik."), long_turn, *kept[3:],
    ])
    cfg = config(tmp_path, [{"name": "r", "path": "rows.jsonl", "thinking_mode": "off"}], heldout=2)
    with caplog.at_level("INFO", logger="tempa.sft.data"):
        prepare(tmp_path, cfg, tokenizer, max_length=120)
    lines = [r.getMessage() for r in caplog.records if "rows rejected" in r.getMessage()]
    assert len(lines) == 1, lines
    [line] = lines
    path = tmp_path / "out" / "rejects.jsonl"
    assert "3 of 10 rows rejected (" in line and "malformed_row 1" in line and "role_order 1" in line
    assert "too_long 1" in line and "1 turn dropped from kept rows (too_long 1)" in line
    assert str(path) in line
    # Every reject in the file is in the line; rows are 0-based, lines 1-based.
    records = rejects(tmp_path)
    assert sorted(r["reason"] for r in records) == ["malformed_row", "role_order", "too_long", "too_long_turn"]
    assert all(r["line"] == r["row"] + 1 and f"line {r['line']}:" in r["detail"] for r in records)
    # The mix table's row columns add up: in - rejected - held out + resized = kept.
    table = next(r.getMessage() for r in caplog.records if "SFT data mix" in r.getMessage())
    header, row = table.splitlines()[1:3]
    cells = dict(zip([c.strip() for c in header.split("  ") if c.strip()], row.split(), strict=False))
    assert (cells["rows in"], cells["rejected"], cells["held out"], cells["resized"], cells["rows kept"]) == \
        ("10", "3", "2", "0", "5")
    total = table.splitlines()[3].split()  # the blank "tokens in" cell splits away
    assert total[0] == "total" and total[-3:] == ["100%", "0/5", "0/5"]  # share, thinking on, tool rows


@pytest.mark.parametrize("where", ["data", "source"])
def test_a_heldout_that_takes_every_row_is_one_error_naming_the_source_and_the_setting(
    tmp_path: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    write_jsonl(tmp_path / "small.jsonl", [chat(f"Pertanyaan {i}?", f"Jawaban {i}.") for i in range(12)])
    write_jsonl(tmp_path / "other.jsonl", [chat(f"Soal {i}?", f"Balasan {i}.") for i in range(60)])
    small: dict[str, Any] = {"name": "small", "path": "small.jsonl"}
    if where == "source":
        cfg = config(tmp_path, [{**small, "heldout": 50}, {"name": "other", "path": "other.jsonl"}])
    else:
        cfg = config(tmp_path, [small], heldout=50)
    with caplog.at_level("WARNING"), pytest.raises(DataError) as info:
        prepare(tmp_path, cfg, tokenizer)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"data source 'small' ({tmp_path / 'small.jsonl'}): ")
    assert "heldout 50 takes 12 of its 12 usable rows and leaves none to train on" in message
    assert ("set its `heldout`" if where == "source" else "set `data.heldout`") in message
    assert not any("size setting" in r.getMessage() for r in caplog.records)  # no size key was set


def test_a_size_setting_that_selects_nothing_is_named_and_the_error_gives_the_rejects_path(
    tmp_path: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [chat(f"Pertanyaan {i}?", f"Jawaban {i}.") for i in range(4)])
    cfg = config(tmp_path, [{"name": "r", "path": "rows.jsonl", "tokens": 3}])
    with caplog.at_level("WARNING"), pytest.raises(DataError) as info:
        prepare(tmp_path, cfg, tokenizer)
    assert str(tmp_path / "out" / "rejects.jsonl") in str(info.value)
    assert any("its size setting (tokens: 3) selects no rows" in r.getMessage() for r in caplog.records)


def test_a_source_that_rejects_a_share_of_its_rows_is_named(tmp_path: Path, tokenizer: Any) -> None:
    """Every third row of a file broken: 87 of 260 rejected, said in one INFO line among hundreds, and the run ended
    'run complete'. A source rejecting 5% or more is a warning and a closing note; a clean one is not named."""
    rows = [{"messages": "broken"} if i % 3 == 0 else chat(f"Ulangi {i}", f"{i}") for i in range(30)]
    cfg = config(tmp_path, [{"name": "third", "path": str(write_jsonl(tmp_path / "third.jsonl", rows))},
                            {"name": "clean", "path": str(write_jsonl(tmp_path / "clean.jsonl",
                                                                      [chat(f"q {i}", f"a {i}") for i in range(30)]))}])
    lines = prepare(tmp_path, cfg, tokenizer).mix.rejecting_sources()
    assert lines == ["source 'third': 10 of 30 rows rejected (malformed_row 10), 33% of its rows; rejects.jsonl in "
                     "the stage folder has each one and why"]


def test_a_source_asked_to_think_whose_rows_have_no_trace_is_named(tmp_path: Path, tokenizer: Any) -> None:
    """A new user's reasoning set spelt its trace field `reasoning_contents`: with thinking_mode on it trained as
    thinking off (the mix said `thinking on 0/10`), with no warning anywhere."""
    misspelt = [{"messages": [{"role": "user", "content": f"soalan {i}"},
                              {"role": "assistant", "content": f"jawapan {i}", "reasoning_contents": "fikir"}]}
                for i in range(10)]
    traced = [chat(f"q {i}", f"a {i}", reasoning="think") for i in range(6)]
    cfg = config(tmp_path, [{"name": "fikir", "path": str(write_jsonl(tmp_path / "fikir.jsonl", misspelt)),
                             "thinking_mode": "on"},
                            {"name": "traced", "path": str(write_jsonl(tmp_path / "traced.jsonl", traced)),
                             "thinking_mode": "mixed", "thinking_ratio": 0.5},
                            {"name": "plain", "path": str(write_jsonl(tmp_path / "plain.jsonl", traced)),
                             "thinking_mode": "off"}])
    mix = prepare(tmp_path, cfg, tokenizer).mix
    lines = mix.traceless_sources()
    assert len(lines) == 1 and lines[0].startswith("source 'fikir' has thinking_mode on, but none of its 10 kept rows"), \
        lines
    # `on` is also the default, which renders each row in the mode its text fits: only a source whose recipe set the
    # mode is warned of (a plain source left at the default was warned of as a broken trace field)
    assert mix.traceless_sources(asked={"traced", "plain"}) == []
    assert mix.traceless_sources(asked={"fikir"}) == lines


def test_a_runs_closing_notes_name_the_stage_and_leave_a_default_mode_source_alone(tmp_path, tiny_model_dir):
    """The closing notes repeated "source 'ja': 11 of 35 rows rejected..." once per stage that read the source, naming
    neither; and a plain source left at the default thinking_mode (`on`) was warned of as a broken trace field."""
    from sft_helpers import sft_recipe
    from tempa.recipes.loader import load_recipe
    from tempa.recipes.runner import run_recipe

    plain = [{"messages": [{"role": "user", "content": f"Ulangi nombor {i}, tolong."},
                           {"role": "assistant", "content": f"Nombor {i}."}]} for i in range(12)]
    broken = [{"messages": [{"role": "assistant", "content": "no question"}]} for _ in range(6)]
    write_jsonl(tmp_path / "half.jsonl", plain + broken)
    train = "train: {max_steps: 1, per_device_train_batch_size: 4, max_length: 128, save_steps: 1}"
    stages = "".join(f"""
      - name: {name}
        kind: sft
        data: {{sources: [{{name: half, path: half.jsonl}}]}}
        {train}
    """ for name in ("s1", "s2"))
    summary = run_recipe(load_recipe(sft_recipe(tmp_path, tiny_model_dir, stages=stages)), tmp_path / "run")
    assert [note.split(": source 'half'")[0] for note in summary.notes if "source 'half'" in note] == ["s1", "s2"]
    assert not any("reasoning trace" in note for note in summary.notes), summary.notes
