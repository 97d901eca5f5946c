"""A disk that fills up while a stage runs: the user sees the stage's error (and that the disk is full), in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tempa.recipes.runner import LOW_DISK_BYTES, disk_full_hint

# A stage kind whose stage fails as a checkpoint save on a full disk does (torch.save's own words), after which no
# file may grow: RLIMIT_FSIZE makes every later write fail for real (EFBIG), as ENOSPC does, without a small disk.
RUNNER = textwrap.dedent("""
    import resource, signal, sys
    from typing import Literal

    import tempa.merge, tempa.sft
    from tempa.sft.stage_api import Artifact, StageConfigBase, StageError, StageKind

    class FillConfig(StageConfigBase):
        kind: Literal["fill"] = "fill"

    def run_fill(config, ctx):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        raise StageError("training process exited with code 1: RuntimeError: [enforce fail at "
                         "inline_container.cc:672] . unexpected pos 1387456 vs 1387344")

    tempa.sft.STAGE_KINDS = (*tempa.sft.STAGE_KINDS,
                             StageKind("fill", FillConfig, run_fill, "test", produces=frozenset({Artifact.MODEL})))
    tempa.merge.STAGE_KINDS = tuple(k for k in tempa.merge.STAGE_KINDS if k.kind != "bake")
    from tempa.recipes.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_stage_failing_on_a_full_disk_reports_its_own_error_not_the_failed_record(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen on a 6 MB tmpfs: a checkpoint save hit ENOSPC, then writing the manifest as failed hit it too, and the
    run ended with `tempa: error: OSError: [Errno 28] No space left on device`, naming neither stage nor cause."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nbase_model: {tiny_model_dir}\nstages:\n  - {{name: big, kind: fill}}\n")
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", RUNNER, "run", str(recipe), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tempa: error: stage 'big' failed: training process exited with code 1: RuntimeError: "
                           "[enforce fail at inline_container.cc:672]"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]  # logging printed one per line it could not write
    # Its manifest could not say `failed`: the stage is not complete, and the next run takes it up again.
    from tempa.recipes.runner import stage_status

    assert [(row.name, row.state) for row in stage_status(["big"], run_dir)] == [("big", "interrupted")]
    assert not (run_dir / "big" / "DONE").exists()
    # and `tempa status` the next morning blamed SIGKILL, the OOM killer or a machine that went down: with the disk
    # still full it says so (the file system's answer is replaced: RLIMIT_FSIZE left this disk room)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=8192)
                        if Path(path) == run_dir / "big" else real(path))
    (row,) = stage_status(["big"], run_dir)
    assert row.note.startswith(f"the runner stopped without saying why, and the disk of {run_dir / 'big'} is full now "
                               "(8 KiB free): most likely a write failed; free space"), row.note


def test_a_full_disk_is_named_in_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save says `unexpected pos 1387456 vs 1387344` when the disk is full: the runner names the full disk.
    (The file system's answer is replaced here: a full disk cannot be made without mounting one.)"""
    assert disk_full_hint([tmp_path]) == ""  # this disk has room
    real = shutil.disk_usage

    def full(path: str | os.PathLike) -> object:
        usage = real(path)
        return usage._replace(free=4096) if Path(path) == tmp_path else usage

    monkeypatch.setattr(shutil, "disk_usage", full)
    assert LOW_DISK_BYTES > 4096
    assert disk_full_hint([None, tmp_path / "missing", tmp_path]) == (
        f"; the disk of {tmp_path} is full (4 KiB free): free space, then run the same command again to resume")


def test_a_write_that_fails_on_a_full_disk_names_the_file(tmp_path: Path) -> None:
    """The run's first write (recipe.resolved.yaml) on a full disk ended `tempa: error: OSError: [Errno 28] No space
    left on device`: a failed write names no file. write_atomic names it, and leaves no temporary file behind."""
    target = tmp_path / "recipe.resolved.yaml"
    script = textwrap.dedent(f"""
        import resource, signal
        from tempa.sft.files import write_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
        try:
            write_atomic({str(target)!r}, "x" * 8192)
        except OSError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"[Errno 27] File too large: '{target}'", done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_baking_the_runs_tokenizer_names_the_folder(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The run's tokenizer is written before the first stage, outside any stage: a full disk there ended the run with
    `tempa: error: Exception: No space left on device (os error 28)` (tokenizers' Rust saver), naming no folder.
    RLIMIT_FSIZE makes the real savers fail as a full disk does."""
    code = textwrap.dedent(f"""
        import logging, resource, signal, sys
        from pathlib import Path
        from tempa.chat_templates.templates import load_template
        from tempa.recipes.runner import prepare_tokenizer
        from tempa.sft.stage_api import StageError

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
        try:
            prepare_tokenizer(Path({str(tiny_model_dir)!r}), "llama3_thinking", load_template("llama3_thinking"),
                              Path({str(tmp_path)!r}), logging.getLogger("t"))
        except StageError as exc:
            print(exc)
            sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    message = done.stdout.strip()
    assert message.startswith(f"writing the run's tokenizer to {tmp_path / 'tokenizer'} failed: "), message
    assert "File too large" in message and "\n" not in message
