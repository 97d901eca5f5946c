"""`tempa report`: an HTML page with loss curves, leaderboard, merge choice and both template modes,
rendered in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap

import pytest

from sft_helpers import sft_recipe
from tempa.recipes.cli import main
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import run_recipe

STAGES = """
  - name: sft
    kind: sft
    data:
      heldout: 4
      sources: [{name: rows, path: rows.jsonl, thinking_mode: mixed, thinking_ratio: 0.5}]
    train: {max_steps: 6, learning_rate: 3.0e-3, per_device_train_batch_size: 4, max_length: 256,
            logging_steps: 1, save_steps: 2, save_total_limit: 3, eval_strategy: steps, eval_steps: 3}
  # Offline pairs: six SFT steps do not teach the tiny model to end its turns, and on-policy rounds pair
  # only samples that ended on their own (tests/test_preference_offline.py runs those end to end).
  - name: align
    kind: preference
    offline: {path: prefs.jsonl}
    rounds: 0
    train: {max_steps: 1, per_device_train_batch_size: 4, save_steps: 1, logging_steps: 1, max_length: 256,
            activation_checkpointing: false}
  - name: evaluate
    kind: evaluate
    checkpoints_of: [sft]
    include_final: false
    rank_by: heldout/loss
    suites: [{type: loss, name: heldout, data: rows.jsonl, max_rows: 8, max_length: 256}]
  - name: merge
    kind: merge
    method: linear
    evaluate_stage: evaluate
    select: {metric: heldout/loss, top_k: 2}
    dtype: float32
"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is needed for this test: apt-get install -y chromium (see README)")
    return path


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("report")
    (folder / "prefs.jsonl").write_text("".join(json.dumps(
        {"prompt": f"Ulangi: satu dua #{i}", "chosen": f"satu dua #{i}", "rejected": "tiga"}) + "\n" for i in range(6)))
    recipe = sft_recipe(folder, tiny_model_dir, stages=STAGES)
    run_recipe(load_recipe(recipe), folder / "run")
    assert main(["report", str(folder / "run")]) == 0
    return folder / "run"


def test_report_page_has_every_section(reported_run):
    page = (reported_run / "report" / "index.html").read_text()
    for section in ("Stages", "Loss curves", "Leaderboard (merge)", "Merge choice (merge)",
                    'thinking_mode="on"', 'thinking_mode="off"'):
        assert section in page, section
    assert "(merged)" in page and "merge_method: linear" in page
    assert 'src="loss-sft.png"' in page and 'src="loss-align.png"' in page
    assert "Throughput" in page and 'src="throughput-sft.png"' in page and 'src="throughput-align.png"' in page
    assert "Rewards per preference round" in page and 'src="rewards-align.png"' in page
    assert "Pairs and judges" in page and "<td>1</td><td>offline</td><td>6 / 6</td>" in page
    # the off-mode prompt shows the prefilled empty think block, the on-mode one an open block
    assert "&lt;think&gt;\n&lt;/think&gt;" in page


def test_report_renders_in_headless_chromium_with_non_empty_images(reported_run, tmp_path):
    import matplotlib.image

    report = tmp_path / "report"
    shutil.copytree(reported_run / "report", report)
    probe = report / "probe.html"
    # the real page plus a probe that records each image's decoded size after load
    probe.write_text((report / "index.html").read_text().replace("</body>", textwrap.dedent("""
        <script>
        window.addEventListener('load', () => {
          const sizes = [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight]);
          document.body.setAttribute('data-images', JSON.stringify(sizes));
        });
        </script></body>""")))
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    marker = 'data-images="'
    start = result.stdout.index(marker) + len(marker)
    sizes = json.loads(result.stdout[start:result.stdout.index('"', start)].replace("&quot;", '"'))
    assert sizes, "the page shows no images"
    for src, width, height in sizes:
        assert width > 100 and height > 100, (src, width, height)
        pixels = matplotlib.image.imread(report / src)
        assert pixels.std() > 0.01, f"{src} is blank"  # a curve was drawn, not an empty canvas
