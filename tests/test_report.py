"""`tempa report`: an HTML page with loss curves, leaderboard, merge choice and both template modes,
rendered in a real headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
import yaml

from sft_helpers import sft_recipe
from tempa.recipes.cli import main
from tempa.recipes.loader import load_recipe
from tempa.recipes.runner import run_recipe

JA_DOCS = ["東京は日本の首都です。", "富士山は日本で一番高い山です。", "京都には古い寺がたくさんあります。",
           "大阪はたこ焼きで有名です。", "日本の春には桜が咲きます。"]
BUDGET = 100_000  # above the source's tokens: every document is taken whole
JA_DESCRIPTION = "Continued pre-training on <Japanese> web text & SFT.\nSecond line: \"quoted\"."

# One run serves every test of a real run's page (each pipeline costs a launched process per training stage): a
# continued-pretraining stage (one Japanese web source), SFT, offline DPO, an evaluation of the SFT checkpoints, their
# merge and the bake, whose card says `languages: [ja, en]`.
STAGES = f"""
  - name: cpt
    kind: pretrain
    sources: [{{name: ja-web, path: ja-web.jsonl, tokens: {BUDGET}}}]
    train: {{max_steps: 2, max_length: 128, per_device_train_batch_size: 4, learning_rate: 1.0e-3,
            lr_scheduler_kwargs: {{num_decay_steps: 1}}, save_steps: 2, logging_steps: 1}}
  - name: sft
    kind: sft
    data:
      heldout: 4
      sources: [{{name: rows, path: rows.jsonl, thinking_mode: mixed, thinking_ratio: 0.5}}]
    train: {{max_steps: 6, learning_rate: 3.0e-3, per_device_train_batch_size: 4, max_length: 256,
            logging_steps: 1, save_steps: 2, save_total_limit: 3, eval_strategy: steps, eval_steps: 3}}
  # Offline pairs: six SFT steps do not teach the tiny model to end its turns, and on-policy rounds pair
  # only samples that ended on their own (tests/test_preference_offline.py runs those end to end).
  - name: align
    kind: preference
    offline: {{path: prefs.jsonl}}
    rounds: 0
    train: {{max_steps: 1, per_device_train_batch_size: 4, save_steps: 1, logging_steps: 1, max_length: 256,
            activation_checkpointing: false}}
  - name: evaluate
    kind: evaluate
    checkpoints_of: [sft]
    include_final: false
    rank_by: heldout/loss
    suites: [{{type: loss, name: heldout, data: rows.jsonl, max_rows: 8, max_length: 256}}]
  - name: merge
    kind: merge
    method: linear
    evaluate_stage: evaluate
    select: {{metric: heldout/loss, top_k: 2}}
    dtype: float32
  - name: bake
    kind: bake
    model_card: {{languages: [ja, en]}}
"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is needed for this test: apt-get install -y chromium (see README)")
    return path


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, tiny_model_dir):
    """A real run of ``STAGES`` on the tiny model, reported with samples (short answers: the tiny models are sampled
    on a busy CPU)."""
    folder = tmp_path_factory.mktemp("report")
    (folder / "prefs.jsonl").write_text("".join(json.dumps(
        {"prompt": f"Ulangi: satu dua #{i}", "chosen": f"satu dua #{i}", "rejected": "tiga"}) + "\n" for i in range(6)))
    (folder / "ja-web.jsonl").write_text("".join(json.dumps({"text": JA_DOCS[i % len(JA_DOCS)] * (1 + i % 3)},
                                                            ensure_ascii=False) + "\n" for i in range(24)),
                                         encoding="utf-8")
    recipe = sft_recipe(folder, tiny_model_dir, stages=STAGES)
    text = recipe.read_text().replace("name: sft-test\n", f"name: ja-cpt\ndescription: {json.dumps(JA_DESCRIPTION)}\n")
    recipe.write_text(text)
    run_recipe(load_recipe(recipe), folder / "run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tempa.recipes.report.SAMPLE_MAX_NEW_TOKENS", 12)
        assert main(["report", str(folder / "run")]) == 0
    return folder / "run"


def test_report_page_has_every_section(reported_run):
    page = (reported_run / "report" / "index.html").read_text()
    for section in ("Stages", "Data mix", "Training curves", "Preference rounds", "Leaderboard (merge)",
                    "Merge choice (merge)", "Sample generations", 'thinking_mode="on"', 'thinking_mode="off"'):
        assert section in page, section
    assert "(merged)" in page and "merge_method: linear" in page
    # one self-contained file: every image inline, nothing else in the folder
    assert 'src="data:image/png;base64,' in page and "src=\"data:" in page
    assert all(src.startswith("data:") for src in page.split('src="')[1:])
    assert [p.name for p in (reported_run / "report").iterdir()] == ["index.html"]
    assert "Pairs and judges" in page and "<td>1</td><td>offline</td><td>6 / 6</td>" in page
    # the off-mode prompt shows the prefilled empty think block, the on-mode one an open block
    assert "&lt;think&gt;\n&lt;/think&gt;" in page
    # each trained model's run averages, as its stage's metrics.json has them (the sft stage's here)
    metrics = json.loads((reported_run / "sft" / "metrics.json").read_text())
    assert (f"<p class='run-averages'>run averages: {metrics['train_tokens']:,} non-padding tokens through the "
            f"model, {metrics['train_tokens_per_s']:,.0f} tokens/s per device, padding "
            f"{100 * metrics['train_padding_fraction']:.1f}%</p>") in page


def test_report_samples_are_cached_and_can_be_left_out(reported_run, monkeypatch):
    from tempa.recipes.report import write_report

    monkeypatch.setattr("tempa.recipes.report.SAMPLE_MAX_NEW_TOKENS", 12)  # as the fixture's report sampled
    page = write_report(reported_run, samples=False).read_text()
    assert "Sample generations" not in page and "Training curves" in page

    def no_model(*args, **kwargs):
        raise AssertionError("the fixture's report sampled these models: their answers come from the cache")

    monkeypatch.setattr("tempa.alignment.generation.TransformersBackend", no_model)
    page = write_report(reported_run).read_text()
    assert "Sample generations" in page


PROBE = """
<script>
window.addEventListener('load', () => {
  const text = (el) => el.textContent.trim();
  const board = document.querySelector('table.board');
  const info = {
    sections: [...document.querySelectorAll('h2')].map(text),
    training: [...document.querySelectorAll('#training h3')].map(text),
    images: [...document.images].map(i => [i.getAttribute('alt'), i.naturalWidth, i.naturalHeight]),
    // the sft stage's table (the one under its <h3>)
    mixRows: [...document.querySelectorAll('#data-mix h3')].filter(h => text(h) === 'sft')
      .flatMap(h => [...h.nextElementSibling.rows]).map(r => [...r.cells].map(text)),
    rounds: [...document.querySelectorAll('table.rounds tr')].filter(r => r.cells[0].tagName === 'TD')
      .map(r => [...r.cells].map(text)),
    board: board && {width: board.getBoundingClientRect().width, page: document.documentElement.clientWidth,
                     scroll: document.documentElement.scrollWidth,
                     directions: [...board.querySelectorAll('th.metric .dir')].map(text)},
    prompts: [...document.querySelectorAll('#samples h3.prompt')].map(text),
    answers: [...document.querySelectorAll('#samples td.answer')].map(td => [td.dataset.mode, text(td)]),
    sampleRows: [...document.querySelectorAll('table.samples tr')].filter(r => r.cells[0].tagName === 'TD')
      .map(r => text(r.cells[0])),
  };
  document.body.setAttribute('data-probe', JSON.stringify(info));
});
</script></body>"""


def rendered(page, probe: str, tmp_path) -> dict:
    """What ``probe`` (a script that sets body[data-probe] to JSON on load) finds in ``page`` in headless Chromium."""
    path = tmp_path / "probe.html"
    path.write_text(page.read_text().replace("</body>", probe))
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    marker = 'data-probe="'
    start = result.stdout.index(marker) + len(marker)
    return json.loads(html.unescape(result.stdout[start:result.stdout.index('"', start)]))


def test_report_renders_in_headless_chromium(reported_run, tmp_path):
    info = rendered(reported_run / "report" / "index.html", PROBE, tmp_path)

    assert info["sections"][:6] == ["Stages", "Data mix", "Training curves", "Preference rounds",
                                    "Pairs and judges", "Leaderboard (merge)"]
    assert "Sample generations" in info["sections"]
    # every image decoded (inline PNGs), big enough to read
    assert info["images"] and all(w > 300 and h > 150 for _, w, h in info["images"]), info["images"]
    # training curves: the pretrain and sft stages, and the preference round (offline pairs) on its own axes
    assert info["training"][:3] == ["cpt", "sft", "align round-1"]
    # the data mix: the source, its rows and tokens, the rejects by reason
    header, source, total = info["mixRows"][0], info["mixRows"][1], info["mixRows"][-1]
    assert header[:3] == ["source", "rows in", "rows kept"] and "rejects by reason" in header
    assert source[0] == "rows" and int(source[1]) == 48 and int(source[3]) == 4 and total[0] == "total"
    # the preference round, with its DPO margin and accuracy
    assert [row[0] for row in info["rounds"]] == ["1"]
    assert all(row[7] != "–" and row[8] != "–" for row in info["rounds"]), info["rounds"]
    # the leaderboard fits the page, each metric marked with its direction
    board = info["board"]
    assert board["width"] <= board["page"] and board["scroll"] <= board["page"], board
    assert board["directions"] and set(board["directions"]) <= {"↑", "↓"} and "↓" in board["directions"]
    # samples: each prompt (the card's two languages) answered by each stage's model, thinking on and off side by side
    assert len(info["prompts"]) == 2
    models = sorted(set(info["sampleRows"]))
    assert {"sft", "align", "merge", "bake"} <= set(models), models
    assert len(info["answers"]) == 2 * len(info["sampleRows"])
    assert [mode for mode, _ in info["answers"][:2]] == ["on", "off"]
    assert sum(1 for _, answer in info["answers"] if answer) >= len(info["answers"]) // 2


def test_pairs_and_judges_says_what_left_samples_out_of_the_pairs(tmp_path):
    """A round counts 8 of 16 samples incomplete (1 cut off, 7 with a think block never closed): the table showed
    only 'truncated 1 / 16' beside 'fewer_than_two_complete: 2', which did not add up."""
    from tempa.alignment.preference_stage import PreferenceResult, RoundSummary
    from tempa.recipes.report import _preference_data_section
    from tempa.recipes.rundir import Manifest

    rounds = [RoundSummary(round=1, model=tmp_path / "r1", prompts=4, pairs=2, pair_fraction=0.5,
                           dropped={"fewer_than_two_complete": 2}, samples=16, truncated=1, truncated_fraction=0.0625,
                           incomplete=8, train={}),
              RoundSummary(round=2, model=tmp_path / "r2", prompts=4, pairs=4, pair_fraction=1.0, dropped={},
                           train={})]  # no count (an offline round, or a run older than it): nothing to say
    result = PreferenceResult(rounds=rounds)
    manifest = Manifest(name="align", kind="preference", fingerprint="f", status="done", started_at=0.0)
    page = "".join(_preference_data_section([(manifest, result)]))
    # the count a round's summary carries is the one its pair statistics keep (the stage's stats.json)
    from tempa.alignment.pairs import PairStats, Scored
    from tempa.alignment.preference_stage import _summary

    stats = PairStats()
    stats.add(None, "fewer_than_two_complete", [Scored(0, 1.0, incomplete=True), Scored(1, 2.0)], truncated=1)
    assert _summary({"round": 1, "prompts": 1, "pairs": 0, "pair_fraction": 0.0, "dropped": {}, "train": {},
                     **stats.summary()}, tmp_path).incomplete == 1
    assert "<th>incomplete samples (never paired)</th>" in page
    assert ("<td>1 / 16 (0.0625)</td><td>8 / 16: truncated 1, think block left open or refused by the template 7"
            "</td>") in page
    assert "<td>0 / 0 (0)</td><td>–</td>" in page


def test_the_help_and_the_page_say_the_sample_prompts_are_fixed(tmp_path, monkeypatch, capsys):
    """The samples are tempa's three fixed prompts (Indonesian, Thai, English) for a recipe without languages tempa
    has an example question for; `--help` said 'held-out prompts', which reads as the run's own."""
    from tempa.recipes import report
    from tempa.recipes.rundir import Manifest
    from tempa.sft.stage_api import StageResult

    with pytest.raises(SystemExit):
        main(["report", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "held-out" not in help_text
    assert "example question in each of the recipe's languages" in help_text
    assert "three fixed prompts, in Indonesian, Thai and English" in help_text
    assert len(report.SAMPLE_PROMPTS) == 3

    model = tmp_path / "sft" / "final"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    monkeypatch.setattr(report, "sample_generations", lambda manifest, folder, prompts: {
        "on": ["a"] * len(report.SAMPLE_PROMPTS), "off": ["b"] * len(report.SAMPLE_PROMPTS)})
    manifest = Manifest(name="sft", kind="sft", fingerprint="f", status="done", started_at=0.0)
    page = report.samples_section([(manifest, StageResult(model=model))])
    assert "on tempa's 3 fixed prompts (the same for every run)" in page


def test_the_reports_leaderboard_marks_the_direction_the_board_carries():
    """A merge's select.higher_is_better travels with its board; the page guessed from the name instead."""
    from tempa.merge.leaderboard import EvaluateResult, Leaderboard, LeaderboardRow
    from tempa.recipes.report import leaderboard_section
    from tempa.recipes.rundir import Manifest

    rows = [LeaderboardRow(candidate=c, path=f"/m/{c}", metrics={"math/accuracy": v}) for c, v in (("a", 0.2),
                                                                                                  ("b", 0.6))]
    board = Leaderboard(rows=rows, rank_by="math/accuracy", lower={"math/accuracy": True})
    manifest = Manifest(name="merge", kind="merge", fingerprint="f", status="done", started_at=0.0)
    page = leaderboard_section([(manifest, EvaluateResult(leaderboard=board))])
    assert "title='lower is better'>math/accuracy <span class='dir'>↓</span>" in page
    assert "<td class='model'>a</td><td><b>0.2000</b></td>" in page  # a first and in bold: the lower value


def test_the_reports_leaderboard_shows_the_boards_notes():
    """The undetermined-ranking warning is a note of the board (metrics.json, leaderboard.md); the page showed the tie
    note alone, so a collapsed checkpoint ranked first with nothing said."""
    from tempa.merge.leaderboard import EvaluateResult, Leaderboard, LeaderboardRow, undetermined_warning
    from tempa.recipes.report import leaderboard_section
    from tempa.recipes.rundir import Manifest

    metric = "lang/normalized_accuracy"
    rows = [LeaderboardRow(candidate=c, path=f"/m/{c}", metrics={metric: v, "lang/undetermined": u})
            for c, v, u in (("short", 0.9, 0.8), ("long", 0.5, 0.0))]
    board = Leaderboard(rows=rows, rank_by=metric)
    warning = undetermined_warning(board, metric, board.best())
    assert warning is not None and "80% of its answers" in warning
    board = board.model_copy(update={"notes": [warning]})
    manifest = Manifest(name="evaluate", kind="evaluate", fingerprint="f", status="done", started_at=0.0)
    page = leaderboard_section([(manifest, EvaluateResult(leaderboard=board))])
    assert "short ranks first on lang/normalized_accuracy, but 80% of its answers in suite &#x27;lang&#x27;" in page


# --------------------------------------------------------------------------- the continued-pretraining stage (ja)


def _cpt_docs(run_dir) -> tuple[int, int]:
    """The documents and tokens the source holds, counted with the run's tokenizer (an eos after each)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    rows = [json.loads(line)["text"] for line in (run_dir.parent / "ja-web.jsonl").read_text().splitlines()]
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in rows]
    return len(lengths), sum(lengths)


def test_the_pretraining_sources_are_in_the_data_mix_of_the_report_and_the_card(reported_run):
    """A Japanese user's continued-pretraining source (ja-web) was missing from "Data mix" in the report and the
    model card: only SFT stages' results carried their data. The pretrain stage's typed result now does."""
    documents, tokens = _cpt_docs(reported_run)  # the budget is above them: every document, whole
    page = (reported_run / "report" / "index.html").read_text()
    mix = page[page.index("<section id='data-mix'>"):] if "<section id='data-mix'>" in page else ""
    mix = mix[:mix.index("</section>")] if mix else ""
    assert "<h3>cpt (pretrain)</h3>" in mix and "<h3>sft</h3>" in mix, mix
    from tempa.recipes.report import finished_stages
    from tempa.sft.pretrain_stage import PretrainResult

    results = {m.name: r for m, r in finished_stages(reported_run)}
    assert isinstance(results["cpt"], PretrainResult)
    epochs = results["cpt"].data.epochs
    assert 0 < epochs < 1  # max_steps stopped it inside the first pass
    trained = round(tokens * epochs)  # nothing held out: every token taken is in a training row
    # passes 1: every document once (the budget is above the source, and it does not repeat)
    assert (f"<td>ja-web</td><td>{BUDGET:,}</td><td>{documents}</td><td>{tokens:,}</td><td>1</td><td>100.0%</td>"
            f"<td>0</td><td>{trained:,}</td>") in mix, mix

    card = (reported_run / "bake" / "final" / "README.md").read_text()
    section = card[card.index("## Data mix"):]
    section = section[:section.index("\n## ", 1)]
    assert "### cpt (pretrain)" in section and "### sft" in section, section
    assert f"| ja-web | ja-web.jsonl | {BUDGET} | {documents} | {tokens} | 1 | 1 | 0 | {trained} |" in section, section
    assert f"{tokens} tokens taken, {trained} trained, in " in section, section
    assert results["cpt"].data.tokens == tokens


def test_a_run_whose_pretrain_result_was_written_untyped_still_reports(reported_run, tmp_path):
    """A run of the previous version recorded the pretrain stage's result without its data mix (metrics only, with
    `tokens:NAME` per source): the report, `tempa status` and later stages still read it, and its mix is rebuilt
    from those metrics (documents, chunks and epochs unknown)."""
    from tempa.recipes.report import finished_stages, write_report

    old = tmp_path / "old-run"
    old.mkdir()
    for entry in reported_run.iterdir():  # the records only: no models, no data
        if entry.is_file():
            shutil.copy(entry, old / entry.name)
        elif (entry / "manifest.json").is_file():
            (old / entry.name).mkdir(parents=True)
            for name in ("manifest.json", "DONE", "metrics.json"):
                if (entry / name).is_file():
                    shutil.copy(entry / name, old / entry.name / name)
    manifest = json.loads((old / "cpt" / "manifest.json").read_text())
    assert manifest["result"].pop("data", None) is not None  # as the previous version wrote it
    (old / "cpt" / "manifest.json").write_text(json.dumps(manifest))
    tokens = manifest["result"]["metrics"]["tokens:ja-web"]

    results = {m.name: r for m, r in finished_stages(old)}
    (source,) = results["cpt"].data.sources
    assert (source.name, source.tokens, source.documents) == ("ja-web", tokens, None)
    page = write_report(old, samples=False).read_text()
    assert f"<td>ja-web</td><td>–</td><td>–</td><td>{tokens:,}</td><td>–</td><td>100.0%</td>" in page
    assert main(["status", str(old)]) == 0


HEADER_PROBE = """
<script>
window.addEventListener('load', () => {
  const header = document.querySelector('header');
  document.body.setAttribute('data-probe', JSON.stringify({
    title: document.title, heading: document.querySelector('h1').innerText,
    description: header && header.querySelector('.description') && header.querySelector('.description').innerText,
    languages: header && header.querySelector('.languages') && header.querySelector('.languages').innerText,
    scripts: document.scripts.length}));
});
</script></body>"""


def test_the_page_header_names_the_recipe_its_description_and_languages(reported_run, tmp_path):
    """The header said only 'tempa run report' and the folder: no recipe name, description or languages (the model
    card's `languages`). It shows them, escaped, the description's lines kept (as a browser lays them out)."""
    info = rendered(reported_run / "report" / "index.html", HEADER_PROBE, tmp_path)
    assert "ja-cpt" in info["heading"] and "ja-cpt" in info["title"]
    assert info["description"] == JA_DESCRIPTION  # its text, tags and quotes as written, both lines
    assert info["languages"] == "languages: ja, en"
    assert info["scripts"] == 1  # the probe's own: nothing in the description became markup


def test_the_sample_prompts_and_the_template_example_follow_the_recipes_languages(reported_run):
    """A Japanese recipe's page sampled every model on Indonesian, Thai and English prompts and showed an Indonesian
    conversation in the template section. Both now ask tempa's example question (the model card's) in each of the
    recipe's languages (its card's `languages`) tempa has one for; the fixed prompts remain for any other recipe."""
    from tempa.merge.model_card import usage_question

    page = (reported_run / "report" / "index.html").read_text()
    asked = [usage_question(["ja"]), usage_question(["en"])]
    samples = page[page.index("<section id='samples'>"):]
    assert [part.split("</h3>")[0] for part in samples.split("<h3 class='prompt'>")[1:]] == asked
    for old in ("Jelaskan secara singkat", "ช่วยแปลประโยคนี้", "Apa sentimen"):
        assert old not in page, old
    template = page[page.index("<section id='template'>"):]
    assert html.escape(asked[0]) in template and template.count(html.escape(asked[0])) == 4  # 2 modes x 2 renderings


@pytest.mark.parametrize(("languages", "expected"), [
    ([], None), (["xx"], None), (["de"], None),
    (["th-TH", "jpn_Jpan", "ja"], [["th"], ["ja"]]), (["ko", "xx", "id"], [["ko"], ["id"]])])
def test_sample_prompts_ask_in_each_language_tempa_has_a_question_for(languages, expected):
    from tempa.merge.model_card import usage_question
    from tempa.recipes.report import EXAMPLE, SAMPLE_PROMPTS, example_conversation, sample_prompts

    prompts = sample_prompts(languages)
    assert prompts == (SAMPLE_PROMPTS if expected is None else [usage_question(code) for code in expected])
    conversation = example_conversation(languages)
    assert conversation == EXAMPLE if expected is None else conversation[0]["content"] == prompts[0]


def test_a_recipe_without_card_languages_samples_in_the_languages_its_teacher_stages_write():
    """A Vietnamese team's recipe (translate into vi, prompts generated in vi) without `model_card.languages`: the
    report sampled the fixed Indonesian, Thai and English prompts. Its card's languages still win when it has any."""
    from tempa.recipes.report import RecipeHeading, sample_prompts

    stages = [{"kind": "translate", "target_language": "vi"}, {"kind": "generate_prompts", "language": "vi"},
              {"kind": "sft"}, {"kind": "bake"}]
    heading = RecipeHeading.model_validate({"name": "vi", "stages": stages})
    assert heading.languages == ["vi"]
    assert sample_prompts(heading.languages) == ["Thủ đô của Việt Nam là gì?"]
    carded = RecipeHeading.model_validate({"stages": [*stages[:3], {"kind": "bake", "model_card": {"languages": ["en"]}}]})
    assert carded.languages == ["en"]
    assert RecipeHeading.model_validate({"stages": [{"kind": "sft"}, {"kind": "bake"}]}).languages == []


def test_the_reports_data_mix_counts_the_tool_rows_of_each_source():
    """An agentic team's report never said how many rows taught tool use: a column beside `thinking on`."""
    from test_card_tools import sft_stages

    from tempa.recipes.report import data_mix_section
    from tempa.recipes.rundir import Manifest

    up = sft_stages((3, 0))["sft"]
    manifest = Manifest(name="sft", kind="sft", fingerprint="f", status="done", started_at=0.0)
    page = data_mix_section([(manifest, up.result)])
    assert "<th>thinking on</th><th>tool rows</th><th>rejects by reason</th>" in page
    assert "<td>s0</td>" in page and "<td>0/10</td><td>3/10</td><td>none</td>" in page
    assert "<td>s1</td>" in page and "<td>0/10</td><td>0/10</td><td>none</td>" in page
    assert "<td>0/20</td><td>3/20</td><td>0</td></tr>" in page  # the total


def test_the_samples_of_a_toy_sized_model_say_why_they_are_a_letter_or_two(tmp_path, tiny_model_dir, monkeypatch):
    """The demo's samples (the tiny default, every stage) were single letters with nothing beside them, and a
    first-time user took the run for broken: the page names each toy-sized model's parameter count and says what
    such a model writes. A model of a real size gets no such note."""
    from transformers import LlamaConfig

    from tempa.recipes import report
    from tempa.recipes.rundir import Manifest
    from tempa.sft.stage_api import StageResult

    real = tmp_path / "real"
    LlamaConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=16,
                vocab_size=32000).save_pretrained(real)  # ~270M parameters, counted from the config alone
    monkeypatch.setattr(report, "sample_generations", lambda manifest, folder, prompts: {
        "on": ["S"] * len(prompts), "off": ["S"] * len(prompts)})

    def section(**models):
        return report.samples_section([(Manifest(name=name, kind="sft", fingerprint="f", status="done",
                                                 started_at=0.0), StageResult(model=folder))
                                       for name, folder in models.items()])

    page = " ".join(section(sft=tiny_model_dir, big=real).split())
    assert ("parameters: sft 0.2M. A toy-sized model (below 100M parameters; tempa's tiny default, 0.2M, is made to "
            "try the pipeline on a CPU in minutes) writes a letter, a few words or noise") in page
    assert "small-model" not in section(big=real)
    # a reply that is empty says so (it was a blank cell, an empty <pre>)
    monkeypatch.setattr(report, "sample_generations", lambda manifest, folder, prompts: {
        "on": [""] * len(prompts), "off": ["S"] * len(prompts)})
    page = section(sft=tiny_model_dir)
    assert "<pre></pre>" not in page and "(empty reply: the model ended its turn at once)" in page


def test_an_rl_stage_is_drawn_with_its_rewards_kl_and_completion_lengths():
    """An rl stage's page showed only loss (GRPO's is ~0 by construction), learning rate, grad norm and throughput:
    nothing that says whether RL works. Its curves are the rewards (the total and each reward's mean, as trl logs
    them), KL, completion lengths, the cut-off share and the share of groups whose samples all scored alike."""
    from tempa.alignment.preference_stage import PreferenceResult
    from tempa.alignment.rl_stage import RLResult
    from tempa.recipes.report import training_panels

    history = [{"step": step, "loss": 0.0, "reward": 0.2 * step, "rewards/answer/mean": 0.1 * step,
                "rewards/answer/std": 0.3, "rewards/format/mean": 0.5, "kl": 0.01 * step,
                "completions/mean_length": 90.0, "completions/mean_terminated_length": 80.0,
                "completions/clipped_ratio": 0.25, "frac_reward_zero_std": 0.5} for step in (1, 2, 3)]
    drawn = {label: {name: points for name, points, _ in series}
             for label, series, _ in training_panels(RLResult(prompts=6), history)}
    steps = (1, 2, 3)
    assert drawn["reward"] == {"total": [(s, 0.2 * s) for s in steps], "answer": [(s, 0.1 * s) for s in steps],
                               "format": [(s, 0.5) for s in steps]}
    assert drawn["KL"]["kl"][-1] == (3, 0.03) and drawn["cut off %"]["cut off"][0] == (1, 25.0)
    assert drawn["completion tokens"]["ended on its own"][0] == (1, 80.0)
    assert drawn["groups with one reward %"]["zero std"][0] == (1, 50.0)
    # the other trainers keep their own curves, without RL's
    assert "reward" not in {label for label, _, _ in training_panels(PreferenceResult(rounds=[]), history)}


def test_the_samples_of_a_stale_stage_are_marked_stale(reported_run, tmp_path, monkeypatch):
    """A stage whose input ran again since (`tempa run --only cpt`) keeps its old model until the next run: its
    samples were shown beside the fresh ones unmarked, and read as what the current recipe trains."""
    from tempa.recipes import report
    from tempa.recipes.rundir import MANIFEST

    run = tmp_path / "run"
    shutil.copytree(reported_run, run)
    manifest = json.loads((run / "cpt" / MANIFEST).read_text())
    (run / "cpt" / MANIFEST).write_text(json.dumps({**manifest, "run_id": "cpt-ran-again"}))
    monkeypatch.setattr(report, "sample_generations", lambda manifest, folder, prompts: {
        "on": ["S"] * len(prompts), "off": ["S"] * len(prompts)})
    page = " ".join(report.write_report(run).read_text().split())
    assert "<td class='model'>cpt</td>" in page and "<td class='model'>sft (stale)</td>" in page
    assert "<td class='model'>align (stale)</td>" in page  # built on the stale sft
    assert ("stale: sft, align, merge, bake: the models made before the recipe or an input changed (Stages says "
            "what); the next `tempa run` makes them again") in page
    fresh = " ".join(report.write_report(reported_run).read_text().split())
    assert "(stale)" not in fresh


def test_a_page_written_while_a_run_holds_the_folder_says_so_and_keeps_the_recipes_order(reported_run, tmp_path,
                                                                                        monkeypatch):
    """A release trial: `tempa report` during a run wrote a page with nothing saying the run was in progress, and a
    stage run again (or interrupted) moved to the bottom of the stage table, after the bake."""
    from tempa.recipes import report
    from tempa.recipes.rundir import MANIFEST, RunLock

    run = tmp_path / "run"
    shutil.copytree(reported_run, run)
    manifest = json.loads((run / "sft" / MANIFEST).read_text())
    (run / "sft" / MANIFEST).write_text(json.dumps({**manifest, "started_at": manifest["started_at"] + 10**6,
                                                    "status": "running"}))
    (run / "sft" / "DONE").unlink()  # run again, and not finished yet
    monkeypatch.setattr(report, "sample_generations", lambda manifest, folder, prompts: {
        "on": ["S"] * len(prompts), "off": ["S"] * len(prompts)})
    with RunLock(run):  # as `tempa run` holds it
        page = " ".join(report.write_report(run).read_text().split())
    assert "A `tempa run` was using this run directory when this page was written (running: sft)" in page, \
        page[page.find("<header>"):page.find("</header>")]
    recipe = [stage["name"] for stage in yaml.safe_load((run / "recipe.resolved.yaml").read_text())["stages"]]
    table = page[page.index("<section id='stages'>"):page.index("</table>", page.index("<section id='stages'>"))]
    assert re.findall(r"<tr><td>([^<]+)</td>", table) == [name for name in recipe if (run / name / MANIFEST).is_file()]
    assert "was using this run directory" not in " ".join(report.write_report(reported_run).read_text().split())
