"""The data caches' COMPLETE markers vouch only for files already on the disk.

The page cache writes back in its own order (a new file's data can land after the rename that names its marker),
so a node's hard reset could keep an SFT or pretrain cache entry's COMPLETE beside arrow files never written, and
every later run would reuse the entry. Every file of the entry must be flushed (fsync) before the marker exists,
and the marker itself written durably (its content, then its name). The real fsync runs; the tests only record
which files it flushed, and whether the marker existed then.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tempa.sft.data import prepare_sft_data
from tempa.sft.data_config import DataConfig
from tempa.sft.pretrain_config import PretrainStageConfig
from tempa.sft.pretrain_stage import prepare_pretrain_data
from tempa.sft.run_layout import COMPLETE


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch, marker: str) -> list[tuple[Path, bool]]:
    """(path flushed, whether a COMPLETE marker was then in its folder or any folder above it) per fsync."""
    flushed: list[tuple[Path, bool]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        marked = any((folder / marker).exists() for folder in [path, *path.parents])
        flushed.append((path, marked))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return flushed


def _assert_flushed_before_marker(entry: Path, flushed: list[tuple[Path, bool]], marker: str,
                                  built_in: Path) -> None:
    """Every file of ``entry`` (built in folders directly below ``built_in``, then renamed into place: matched by its
    path below its build folder) was flushed while no marker vouched for it; the marker's content was flushed too."""
    def below_build(path: Path) -> str | None:
        try:
            parts = path.relative_to(built_in).parts
        except ValueError:
            return None
        return "/".join(parts[1:]) if len(parts) > 1 else None

    before = {below_build(path) for path, marked in flushed if not marked}
    files = sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file() and p.name != marker)
    assert any(name.endswith(".arrow") for name in files), files  # the premise: the entry holds the data
    unflushed = [name for name in files if name not in before]
    assert unflushed == [], f"not flushed before {marker}: {unflushed}"
    assert f"{marker}.tmp" in before  # the marker's content before its name


def test_an_sft_cache_entry_is_on_the_disk_before_its_complete_marker(tmp_path, tokenizer, monkeypatch):
    rows = [{"messages": [{"role": "user", "content": f"soal {i}"}, {"role": "assistant", "content": f"jawab {i}"}]}
            for i in range(12)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = DataConfig.model_validate({"sources": [{"name": "r", "path": "rows.jsonl"}], "heldout": 0.25},
                                       context={"base_dir": str(tmp_path)})
    flushed = _record_fsyncs(monkeypatch, COMPLETE)
    prepared = prepare_sft_data(config, tokenizer, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", seed=0)
    assert not prepared.cache_hit and (prepared.cache_path / COMPLETE).is_file()
    _assert_flushed_before_marker(prepared.cache_path, flushed, COMPLETE, tmp_path / "cache")


def test_a_pretrain_cache_entry_is_on_the_disk_before_its_complete_marker(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    (tmp_path / "th.txt").write_text("\n".join(f"ข้าว แม่น้ำ ตลาด {i}" for i in range(40)) + "\n", encoding="utf-8")
    config = PretrainStageConfig.model_validate({
        "name": "cpt", "heldout": 0.1,
        "sources": [{"name": "th", "path": str(tmp_path / "th.txt"), "txt_document": "line"}],
        "train": {"max_length": 16, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
    flushed = _record_fsyncs(monkeypatch, COMPLETE)
    data = prepare_pretrain_data(config, tokenizer, tmp_path / "cache", 0, num_proc=1)
    entry = data.train_path.parent
    assert (entry / COMPLETE).is_file() and data.eval_path is not None
    _assert_flushed_before_marker(entry, flushed, COMPLETE, entry.parent)


KILLED_PRETRAIN_PREP = """
import os, signal, sys
from pathlib import Path

from transformers import AutoTokenizer

import tempa.sft.pretrain_stage as stage
from tempa.sft.pretrain_config import PretrainStageConfig


def killed(*args, **kwargs):  # the rows are written into the cache ... and the OOM killer strikes before the marker
    os.kill(os.getpid(), signal.SIGKILL)


stage.write_json = killed
model, text = Path(sys.argv[1]), sys.argv[2]
config = PretrainStageConfig.model_validate({"name": "cpt", "sources": [{"name": "th", "path": text,
    "txt_document": "line"}], "train": {"max_length": 16, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
stage.prepare_pretrain_data(config, AutoTokenizer.from_pretrained(model), Path(sys.argv[3]), 0, num_proc=1)
"""


def test_a_pretrain_build_left_by_a_killed_prep_is_removed_by_the_next(tmp_path, tiny_model_dir):
    """A SIGKILL (the OOM killer, a node's hard reset) during a pretrain stage's data prep left its half-built entry,
    tokenised documents and all (many GB for a web crawl), in the shared cache; a next run with other settings (here
    another seed: another entry) never removed it, so each kill left one more, until the disk was full."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    text = tmp_path / "th.txt"
    text.write_text("\n".join(f"ข้าว แม่น้ำ ตลาด {i}" for i in range(40)) + "\n", encoding="utf-8")
    cache = tmp_path / "cache"
    killed = subprocess.run([sys.executable, "-c", KILLED_PRETRAIN_PREP, str(tiny_model_dir), str(text), str(cache)],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = [p for p in cache.iterdir()]
    assert len(left) == 1 and any(left[0].rglob("*.arrow"))  # the killed build, rows and all

    config = PretrainStageConfig.model_validate({
        "name": "cpt", "sources": [{"name": "th", "path": str(text), "txt_document": "line"}],
        "train": {"max_length": 16, "lr_scheduler_kwargs": {"num_decay_steps": 1}}})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = prepare_pretrain_data(config, tokenizer, cache, 1, num_proc=1)
    entry = data.train_path.parent
    assert (entry / COMPLETE).is_file()
    assert list(cache.iterdir()) == [entry]  # the killed build is gone
