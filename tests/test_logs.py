"""Output read from a file or a pipe: whole lines, no carriage-return bars, a quiet exit when the reader goes."""

from __future__ import annotations

import io
import subprocess
import sys
import time

from tqdm import tqdm

from sft_helpers import sft_recipe
from tempa.sft.line_progress import LineProgressStream


def test_a_tqdm_bar_becomes_one_line_per_interval():
    out = io.StringIO()
    stream = LineProgressStream(out, interval_s=0.05)
    for _ in tqdm(range(60), file=stream, mininterval=0, desc="rows"):
        time.sleep(0.005)  # 0.3 s: about six intervals
    print("after the bar", file=stream)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[-1] == "after the bar" and "60/60" in lines[-2]
    bar_lines = [line for line in lines if line.startswith("rows:")]
    assert 2 <= len(bar_lines) <= 12, bar_lines  # 61 redraws became a handful of lines


def test_a_log_line_written_while_a_bar_is_open_gets_a_line_of_its_own():
    # the evaluate stage's candidate bar and the runner's log lines share stderr (new-user trial: the log line was
    # glued to the bar's state, "...3/4 [00:12<00:04]2026-12-02 ... INFO evaluate: scoring")
    out = io.StringIO()
    stream = LineProgressStream(out, interval_s=60)
    bar = tqdm(total=4, file=stream, mininterval=0, desc="candidates")
    bar.update(3)
    stream.write("INFO evaluate: scoring final\n")
    bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "INFO evaluate: scoring final" in lines, lines
    assert lines[-1].startswith("candidates: 100%") and "4/4" in lines[-1], lines


def test_a_bars_own_cursor_moves_do_not_break_its_line():
    # tqdm moves the cursor with ANSI escapes alone for a nested bar: the same writer, not a log line (diff review:
    # nested bars wrote twice the lines once such a write emitted the pending state)
    out = io.StringIO()
    stream = LineProgressStream(out, interval_s=60)
    for text in ("\rinner 1/4", "\x1b[A", "\rinner 2/4", "\x1b[B", "\rinner 4/4", "\n"):
        stream.write(text)
    assert out.getvalue().splitlines() == ["inner 1/4", "inner 4/4"]  # the first state, then the last (no 2/4)


def test_a_run_logged_to_a_file_has_whole_lines_and_no_bars(tmp_path, tiny_model_dir):
    recipe = sft_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=2)
    run_dir = tmp_path / ("run-" + "x" * 70)  # a long path: the launch line is well over 80 columns
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "tempa.recipes.cli", "run", str(recipe), "--run-dir",
                               str(run_dir)], stdout=out, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_bytes().decode()  # bytes: text mode would turn each \r into a newline
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text
    launch = [line for line in text.splitlines() if " launch: " in line]
    assert len(launch) == 1 and launch[0].rstrip().endswith("train_plan.json"), launch  # not wrapped at 80
    assert len(launch[0]) > 160
    assert any("step 2/2" in line for line in text.splitlines())  # the progress line, relayed
    assert any("rows kept" in line and "tokens kept" in line for line in text.splitlines())  # the mix table
    assert "\r" not in (run_dir / "sft" / "logs" / "train.log").read_bytes().decode()


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    # 70 kB of JSON Schema: more than a pipe holds, so the writer meets the closed pipe.
    proc = subprocess.run(f"{sys.executable} -m tempa.recipes.cli schema | head -c 100", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("{") and len(proc.stdout) == 100
    assert proc.stderr == "", proc.stderr
