"""`tempa report RUN_DIR`: one self-contained HTML page (charts inlined) showing what a run did.

Everything comes from the stages' manifests and their typed results, under a header naming the recipe (its
description and languages): the data mix of each SFT stage (rows and tokens per source, rejects by reason) and
of each pretrain stage (documents and tokens per source), training curves (loss, learning rate, grad
norm, tokens/s per device and MFU) from each trained model's training outcome, each preference
round on its own step axis (DPO margins and accuracies) with its reward statistics, the last
leaderboard (metric direction marked), the merge choice, sample generations of every stage's model
(on tempa's example question in each of the recipe's languages, else on fixed prompts) in both thinking modes
side by side, and the final tokenizer rendering one conversation (in the recipe's first language) in both modes.

Sample generations are made when the report is written (greedy, on the CPU unless a GPU is free,
for models up to ``SAMPLE_MAX_BYTES`` of weights) and cached by model and prompt in the tempa
cache, so writing the report again is quick; ``tempa report --no-samples`` leaves them out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tempa.alignment.preference_stage import PreferenceResult, RoundSummary
from tempa.alignment.rl_stage import TERMINATED, RLResult, terminated_share
from tempa.alignment.synthesize_stage import SynthesizeResult
from tempa.alignment.teacher_text import TeacherTextResult
from tempa.alignment.translate_stage import TranslateResult
from tempa.merge.leaderboard import EvaluateResult, is_headline
from tempa.merge.merge_result import MergeResult
from tempa.merge.model_card import USAGE_ANSWERS, USAGE_QUESTIONS, ModelCardConfig, example_language
from tempa.recipes.registry import stage_kinds
from tempa.recipes.rundir import Manifest, read_manifest, require_run_dir, run_in_progress
from tempa.recipes.runner import stage_status
from tempa.sft.data_report import DataMix
from tempa.sft.files import cache_root, digest, path_digest, staging_dir, write_json
from tempa.sft.pretrain_stage import PretrainMix, PretrainResult
from tempa.sft.run_layout import FINAL_LINK, REPORT_DIR, RESOLVED_RECIPE, TOKENIZER_DIR
from tempa.sft.stage import SFTResult
from tempa.sft.stage_api import StageResult, format_metric
from tempa.sft.throughput_summary import throughput_headline
from tempa.sft.train_plan import OUTCOME_FILE, TrainOutcome

log = logging.getLogger("tempa")

# Fixed prompts every stage's model answers in both thinking modes when the recipe names no language tempa has an
# example question for (see :func:`sample_prompts`); not the run's own held-out or evaluation prompts.
SAMPLE_PROMPTS = [
    "Jelaskan secara singkat mengapa langit berwarna biru.",
    "ช่วยแปลประโยคนี้เป็นภาษาอังกฤษ: วันนี้อากาศดีมาก",
    "A shop sells pens at 3 for $2. How much do 12 pens cost?",
]
SAMPLE_MAX_NEW_TOKENS = 64
# Below this, a model's answers are fragments whatever the training did; the report says so beside its samples.
SMALL_MODEL_PARAMETERS = 100_000_000
SAMPLE_MAX_BYTES = 1024**3  # larger models are not sampled at report time (minutes per answer on a CPU)
_SAMPLES_VERSION = 1  # bump when the cached samples' layout or decoding changes

EXAMPLE = [
    {"role": "user", "content": "Apa sentimen dari kalimat berikut ini?\nKalimat: Buku ini sangat membosankan."},
    {"role": "assistant", "content": "Negatif", "reasoning_content": "'Membosankan' berarti boring: negatif."},
]


class _StageHeading(BaseModel):
    """What the page reads of one stage of recipe.resolved.yaml: a bake's card (its `languages`)."""

    model_config = ConfigDict(extra="ignore")

    name: str = ""
    kind: str = ""
    model_card: ModelCardConfig | None = None
    target_language: str | None = None  # a translate stage's
    language: str | None = None  # a generate_prompts stage's


class RecipeHeading(BaseModel):
    """What the page's header shows of the recipe the run ran (``recipe.resolved.yaml``).

    Read apart from the full recipe schema, which checks files and folders that may have moved since the run.
    """

    model_config = ConfigDict(extra="ignore")

    name: str = ""
    description: str = ""
    stages: list[_StageHeading] = Field(default_factory=list)

    @property
    def languages(self) -> list[str]:
        """The recipe's languages: its model card's (the last bake stage's that names any), else those its translate
        and generate_prompts stages write in (a Vietnamese team's report samples in Vietnamese)."""
        cards = [s.model_card for s in self.stages if s.kind == "bake" and s.model_card and s.model_card.languages]
        if cards:
            return list(cards[-1].languages)
        return list(dict.fromkeys(code for s in self.stages if s.kind in ("translate", "generate_prompts")
                                  for code in (s.target_language, s.language) if isinstance(code, str) and code))


def recipe_heading(run_dir: Path) -> RecipeHeading:
    """The run's recipe as the header shows it; an empty heading when recipe.resolved.yaml cannot be read."""
    from tempa.recipes.yaml_loader import RecipeTextError, parse_yaml, read_text

    try:
        return RecipeHeading.model_validate(parse_yaml(read_text(run_dir / RESOLVED_RECIPE)))
    except (OSError, yaml.YAMLError, RecipeTextError, ValidationError) as error:
        log.warning("report: %s: %s; the header leaves the recipe out", run_dir / RESOLVED_RECIPE,
                    str(error).splitlines()[0])
        return RecipeHeading()


def header_section(run_dir: Path, recipe: RecipeHeading, running: Sequence[str] | None = None) -> str:
    """The recipe's name, its description (its lines kept) and its languages, above the run's folder and when the
    page was written; ``running``: the stages running while a `tempa run` held the folder (None: none held it)."""
    title = f"tempa run report: {recipe.name}" if recipe.name else "tempa run report"
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if recipe.description.strip():
        parts.append(f"<p class='description'>{html.escape(recipe.description.strip())}</p>")
    if recipe.languages:
        parts.append(f"<p class='languages'>languages: {html.escape(', '.join(recipe.languages))}</p>")
    written = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    parts.append(f"<p class='note'>{html.escape(str(run_dir))}, written {written}</p>")
    if running is not None:  # export and push refuse such a run; a page may be written, but must not pass as final
        what = f" (running: {', '.join(running)})" if running else ""
        parts.append(f"<p class='in-progress'><b>A `tempa run` was using this run directory when this page was written"
                     f"{html.escape(what)}: stages and numbers may change. Write the report again when it ends.</b></p>")
    return f"<header>{''.join(parts)}</header>"


def _example_languages(languages: Sequence[str]) -> list[str]:
    """The recipe's languages tempa has an example question for (the model card's), once each, in order."""
    return list(dict.fromkeys(code for code in map(example_language, languages) if code is not None))


def sample_prompts(languages: Sequence[str]) -> list[str]:
    """The prompts every stage's model answers: the card's example question in each of ``languages`` tempa has one
    for, else :data:`SAMPLE_PROMPTS`."""
    return [USAGE_QUESTIONS[code] for code in _example_languages(languages)] or SAMPLE_PROMPTS


def example_conversation(languages: Sequence[str]) -> list[dict[str, str]]:
    """The template section's conversation: the example question in the first of ``languages`` tempa has one for
    (answered, with a short reasoning), else :data:`EXAMPLE`."""
    codes = _example_languages(languages)
    if not codes:
        return EXAMPLE
    return [{"role": "user", "content": USAGE_QUESTIONS[codes[0]]},
            {"role": "assistant", "content": USAGE_ANSWERS[codes[0]],
             "reasoning_content": "A question about a capital city: answer briefly, in the language it was asked in."}]


def finished_stages(run_dir: Path, order: Sequence[str] = ()) -> list[tuple[Manifest, StageResult | None]]:
    """Every stage with a manifest, with its typed result once it is done: in the recipe's ``order`` (a stage run
    again, or interrupted, stays in its place), those it does not name after them in the order they started."""
    kinds = stage_kinds()
    found = []
    for folder in run_dir.iterdir():
        manifest = read_manifest(folder) if folder.is_dir() else None
        if manifest is None:
            continue
        result = None
        if manifest.status == "done" and manifest.kind in kinds:
            result = kinds[manifest.kind].result.model_validate(manifest.result or {}, context={"run_dir": run_dir})
        found.append((manifest, result))
    place = {name: i for i, name in enumerate(order)}
    return sorted(found, key=lambda pair: (place.get(pair[0].name, len(place)), pair[0].started_at))


def _loss_history(result: StageResult) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, log_history) for every model a stage trained (one per preference round)."""
    if isinstance(result, PreferenceResult):
        models = [(f"round-{r.round}", r.model) for r in result.rounds]
    else:
        models = [("", result.model)]
    out = []
    for label, model in models:
        if model is not None and (Path(model) / OUTCOME_FILE).is_file():
            history = TrainOutcome.read(Path(model)).log_history
            if history:
                out.append((label, history))
    return out


Panel = tuple[str, list[tuple[str, list[tuple[float, float]], str]], str]  # y label, series, x label


def _figure(title: str, panels: list[Panel], columns: int = 4) -> str | None:
    """Panels on a grid, each with its own axes; the PNG as a data: URI (the page stays one file)."""
    panels = [(ylabel, [s for s in series if s[1]], xlabel) for ylabel, series, xlabel in panels]
    panels = [panel for panel in panels if panel[1]]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.6 * rows), dpi=100, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (ylabel, series, xlabel) in zip(axes.flat, panels, strict=False):
        for label, points, style in series:
            ax.plot(*zip(*points, strict=True), style, label=label, markersize=3)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _points(history: list[dict[str, Any]], key: str, scale: float = 1.0) -> list[tuple[float, float]]:
    return [(e["step"], scale * float(e[key])) for e in history
            if "step" in e and isinstance(e.get(key), int | float)]


def _img(uri: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{uri}">'


def training_panels(result: StageResult, history: list[dict[str, Any]]) -> list[Panel]:
    """The curves of one training run (a panel with no points is left out when drawn): every trainer's loss, learning
    rate, grad norm and throughput; DPO's margins and accuracy; and for RL what shows it is working, the rewards
    (their total and each one's mean), KL, completion lengths, the cut-off share and the groups that taught nothing."""
    panels: list[Panel] = [
        ("loss", [("train", _points(history, "loss"), ".-"), ("eval", _points(history, "eval_loss"), "o--")], "step"),
        ("learning rate", [("learning rate", _points(history, "learning_rate"), ".-")], "step"),
        ("grad norm", [("grad norm", _points(history, "grad_norm"), ".-")], "step"),
        ("tokens/s per device", [("tokens/s", _points(history, "tokens_per_s"), ".-")], "step"),
        ("MFU %", [("MFU", _points(history, "mfu", 100.0), ".-")], "step"),
        ("padding %", [("padding", _points(history, "padding_fraction", 100.0), ".-")], "step"),
    ]
    if isinstance(result, PreferenceResult):
        panels += [("DPO reward margin", [("margin", _points(history, "rewards/margins"), ".-")], "step"),
                   ("DPO accuracy", [("accuracy", _points(history, "rewards/accuracies"), ".-")], "step")]
    if isinstance(result, RLResult):
        ended = [entry for entry in history if terminated_share(entry) > 0]
        # trl logs each reward as rewards/<name>/mean (and /std) beside the weighted total `reward`
        names = sorted({key.split("/")[1] for entry in history for key in entry
                        if key.startswith("rewards/") and key.endswith("/mean")})
        panels += [
            ("reward", [("total", _points(history, "reward"), ".-"),
                        *((name, _points(history, f"rewards/{name}/mean"), ".--") for name in names)], "step"),
            # a step of cut-off samples logs a KL of 0 under mask_truncated_completions (its mask held no token)
            ("KL", [("kl", _points([e for e in history if terminated_share(e) > 0 or e.get("kl") != 0], "kl"),
                     ".-")], "step"),
            ("completion tokens", [("mean", _points(history, "completions/mean_length"), ".-"),
                                   ("ended on its own", _points(ended, TERMINATED), ".--")], "step"),
            ("cut off %", [("cut off", _points(history, "completions/clipped_ratio", 100.0), ".-")], "step"),
            ("groups with one reward %", [("zero std", _points(history, "frac_reward_zero_std", 100.0), ".-")],
             "step"),
        ]
    return panels


def training_section(done: list[tuple[Manifest, StageResult]]) -> str:
    """Loss, learning rate, grad norm and throughput of every trained model; a preference round is its own
    training run, so each round gets its own step axes (with its DPO margins and accuracies)."""
    parts = []
    for m, result in done:
        for label, history in _loss_history(result):
            title = m.name + (f" {label}" if label else "")
            uri = _figure(title, training_panels(result, history))
            if uri:
                parts.append(f"<h3>{html.escape(title)}</h3>{_img(uri, f'{title} training curves')}"
                             f"{_run_averages(throughput_headline(history))}")
    return f"<section id='training'><h2>Training curves</h2>{''.join(parts)}</section>" if parts else ""


def _run_averages(headline: dict[str, float]) -> str:
    """The run's throughput in one line, as the stage's metrics.json has it."""
    if "train_tokens" not in headline:
        return ""
    parts = [f"{headline['train_tokens']:,} non-padding tokens through the model"]
    if "train_tokens_per_s" in headline:
        parts.append(f"{headline['train_tokens_per_s']:,.0f} tokens/s per device")
    if "train_mfu" in headline:
        parts.append(f"MFU {100 * headline['train_mfu']:.1f}%")
    if "train_padding_fraction" in headline:
        parts.append(f"padding {100 * headline['train_padding_fraction']:.1f}%")
    return f"<p class='run-averages'>run averages: {', '.join(parts)}</p>"


def data_mix_section(done: list[tuple[Manifest, StageResult]]) -> str:
    """Each SFT stage's data mix (per source, rows and tokens read and kept, and the rejects by reason) and each
    pretrain stage's (per source, its token budget, documents and tokens taken; chunks and epochs)."""
    parts = []
    for m, result in done:
        if isinstance(result, SFTResult):
            parts.append(f"<h3>{html.escape(m.name)}</h3>{_mix_table(result.data)}")
        elif isinstance(result, PretrainResult) and result.data is not None:
            parts.append(f"<h3>{html.escape(m.name)} (pretrain)</h3>{_pretrain_table(result.data)}")
    return f"<section id='data-mix'><h2>Data mix</h2>{''.join(parts)}</section>" if parts else ""


def _mix_table(mix: DataMix) -> str:
    head = ("source", "rows in", "rows kept", "held out", "tokens in", "tokens kept", "share", "thinking on",
            "tool rows", "rejects by reason")
    rows = []
    for s in mix.sources:
        rejects = ", ".join(f"{html.escape(reason)}: {count}" for reason, count in sorted(s.rejects.items())) or "none"
        cells = (html.escape(s.name), s.rows_in, s.rows_kept, s.heldout_rows, f"{s.tokens_in:,}", f"{s.tokens_kept:,}",
                 f"{100 * s.share_of_tokens:.1f}%", f"{s.thinking_on_rows_kept}/{s.rows_kept}",
                 f"{s.tool_rows_kept}/{s.rows_kept}", rejects)
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    t = mix.total
    rows.append(f"<tr class='total'><td>total</td><td>{t.rows_in}</td><td>{t.rows_kept}</td><td></td><td></td>"
                f"<td>{t.tokens_kept:,}</td><td>100%</td><td>{t.thinking_on_rows_kept}/{t.rows_kept}</td>"
                f"<td>{t.tool_rows_kept}/{t.rows_kept}</td><td>{t.rejects}</td></tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return f"<table class='mix'><tr>{header}</tr>{''.join(rows)}</table>"


def _pretrain_table(mix: PretrainMix) -> str:
    # tokens: taken from the source (held-out documents included); trained: the training rows' tokens times the epochs
    head = ("source", "token budget", "documents", "tokens", "passes", "share", "held out", "trained")

    def count(value: int | None) -> str:
        return "–" if value is None else f"{value:,}"  # – : every document (no budget), or not recorded (older run)

    rows = [f"<tr><td>{html.escape(s.name)}</td><td>{count(s.token_budget)}</td><td>{count(s.documents)}</td>"
            f"<td>{s.tokens:,}</td><td>{'–' if s.passes is None else f'{s.passes:g}'}</td>"
            f"<td>{100 * s.share_of_tokens:.1f}%</td><td>{count(s.heldout_tokens)}</td>"
            f"<td>{count(s.trained_tokens)}</td></tr>" for s in mix.sources]
    documents = [s.documents for s in mix.sources]
    heldout = [s.heldout_tokens for s in mix.sources]
    rows.append(f"<tr class='total'><td>total</td><td></td>"
                f"<td>{count(None if None in documents else sum(documents))}</td><td>{mix.tokens:,}</td>"
                f"<td></td><td>100%</td><td>{count(None if None in heldout else sum(heldout))}</td>"
                f"<td>{count(mix.trained_tokens)}</td></tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    note = f"{count(mix.chunks)} training chunks, trained for {_fmt(mix.epochs)} epochs (every token in the loss)"
    return f"<table class='mix'><tr>{header}</tr>{''.join(rows)}</table><p class='note'>{note}</p>"


def preference_section(done: list[tuple[Manifest, StageResult]]) -> str:
    """Per preference stage: each round's pairs, rewards and DPO margins/accuracies, and rewards across rounds."""
    parts = []
    for m, result in done:
        if not isinstance(result, PreferenceResult) or not result.rounds:
            continue
        head = ("round", "prompts", "pairs", "usable", "reward chosen", "reward rejected", "reward margin",
                "DPO margin", "DPO accuracy", "dropped")
        rows = []
        for r in result.rounds:
            cells = (r.round, r.prompts, r.pairs, f"{100 * r.pair_fraction:.0f}%", _fmt(r.chosen_reward_mean),
                     _fmt(r.rejected_reward_mean), _fmt(r.margin_mean), _fmt(r.train.get("rewards/margins")),
                     _fmt(r.train.get("rewards/accuracies")),
                     ", ".join(f"{html.escape(k)}: {v}" for k, v in r.dropped.items()) or "none")
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        header = "".join(f"<th>{h}</th>" for h in head)
        parts.append(f"<h3>{html.escape(m.name)}</h3><table class='rounds'><tr>{header}</tr>{''.join(rows)}</table>")
        uri = _plot_rewards(m.name, result.rounds)
        if uri:
            parts.append(_img(uri, f"{m.name} rewards"))
    return f"<section id='preference'><h2>Preference rounds</h2>{''.join(parts)}</section>" if parts else ""


def _plot_rewards(name: str, rounds: list[RoundSummary]) -> str | None:
    def series(values: list[float | None]) -> list[tuple[float, float]]:
        return [(r.round, v) for r, v in zip(rounds, values, strict=True) if v is not None]

    return _figure(f"{name}: rewards per round", [
        ("mean reward", [("chosen", series([r.chosen_reward_mean for r in rounds]), "o-"),
                         ("rejected", series([r.rejected_reward_mean for r in rounds]), "s-")], "round"),
        ("prompts with a usable pair", [("usable", series([r.pair_fraction for r in rounds]), "^--")], "round"),
        ("DPO margin (last log)", [("margin", series([_number(r.train.get("rewards/margins")) for r in rounds]),
                                    "o-")], "round"),
    ], columns=3)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _judge_failures(judges: dict[str, float | int]) -> str:
    names = [key.removesuffix("_replies") for key in judges if key.endswith("_replies")]
    return ", ".join(f"{name}: {judges.get(f'{name}_unparsable', 0)}/{judges[f'{name}_replies']}" for name in names)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in counts.items()) or "none"


def _incomplete(r: RoundSummary) -> str:
    """The round's samples out of the running (never in a pair), and why: cut off at max_new_tokens, or not (a think
    block left open, or a rendering the template refused). Offline rounds, and rounds without the count: '–'."""
    if r.incomplete is None:
        return "–"
    return (f"{r.incomplete} / {r.samples}: truncated {r.truncated}, think block left open or refused by the "
            f"template {r.incomplete - r.truncated}")


def _preference_data_section(done: list[tuple[Manifest, StageResult]]) -> list[str]:
    """Pair and judge statistics: per preference round and per synthesize, translate and generate_prompts stage,
    from their typed results."""
    parts: list[str] = []
    for m, result in done:
        if isinstance(result, PreferenceResult):
            head = ("<tr><th>round</th><th>source</th><th>pairs / prompts</th><th>truncated samples</th>"
                    "<th>incomplete samples (never paired)</th><th>identical renderings</th><th>judge unparsable</th>"
                    "<th>DPO reward margin</th>"
                    "<th>DPO accuracy</th><th>no pair, by reason</th></tr>")
            rows = "".join(
                f"<tr><td>{r.round}</td><td>{html.escape(r.source)}</td><td>{r.pairs} / {r.prompts}</td>"
                f"<td>{r.truncated} / {r.samples} ({_fmt(r.truncated_fraction)})</td>"
                f"<td>{html.escape(_incomplete(r))}</td>"
                f"<td>{r.identical_renderings}</td><td>{html.escape(_judge_failures(r.judges)) or '-'}</td>"
                f"<td>{_fmt(r.train.get('rewards/margins', ''))}</td>"
                f"<td>{_fmt(r.train.get('rewards/accuracies', ''))}</td>"
                f"<td>{html.escape(_counts(r.dropped))}</td></tr>"
                for r in result.rounds
            )
            parts.append(f"<h3>{html.escape(m.name)} (preference)</h3><table>{head}{rows}</table>")
        elif isinstance(result, SynthesizeResult):
            parts.append(
                f"<h3>{html.escape(m.name)} (synthesize)</h3><table><tr><th>kept rows</th><th>kept prompts</th>"
                f"<th>truncated samples</th><th>judge unparsable</th><th>rejected, by reason</th></tr>"
                f"<tr><td>{result.rows}</td><td>{result.kept_prompts} / {result.prompts}</td>"
                f"<td>{result.truncated} / {result.samples}</td>"
                f"<td>{html.escape(_judge_failures(result.judges)) or '-'}</td>"
                f"<td>{html.escape(_counts(result.rejected))}</td></tr></table>"
            )
        elif isinstance(result, TeacherTextResult):  # translate, generate_prompts
            kind = "translate" if isinstance(result, TranslateResult) else "generate_prompts"
            asked = "rows read" if kind == "translate" else "prompts asked for"
            parts.append(
                f"<h3>{html.escape(m.name)} ({kind})</h3><table><tr><th>kept rows / {asked}</th>"
                f"<th>judge unparsable</th><th>rejected, by reason</th></tr>"
                f"<tr><td>{result.rows} / {result.requested}</td>"
                f"<td>{html.escape(_judge_failures(result.judges)) or '-'}</td>"
                f"<td>{html.escape(_counts(result.rejected))}</td></tr></table>"
            )
    return ["<h2>Pairs and judges</h2>", *parts] if parts else []


def leaderboard_section(done: list[tuple[Manifest, StageResult]]) -> str:
    """The last leaderboard, fitted to the page: headline metrics, each marked with its direction, best in bold."""
    boards = [(m.name, r.leaderboard) for m, r in done
              if isinstance(r, EvaluateResult | MergeResult) and r.leaderboard is not None]
    if not boards:
        return ""
    name, board = boards[-1]
    headline = [m for m in board.metric_names if is_headline(m)]
    if board.rank_by in headline:
        headline.remove(board.rank_by)
        headline.insert(0, board.rank_by)
    ranked = board.ranked()
    best = {}
    for metric in headline:
        values = [row.metrics[metric] for row in ranked if metric in row.metrics]
        if values:
            best[metric] = min(values) if board.lower_is_better(metric) else max(values)
    head = "".join(
        f"<th class='metric' title='{'lower' if board.lower_is_better(m) else 'higher'} is better'>{html.escape(m)} "
        f"<span class='dir'>{'↓' if board.lower_is_better(m) else '↑'}</span></th>" for m in headline)
    rows = []
    for row in ranked:
        label = html.escape(row.candidate) + (" <b>(merged)</b>" if row.merged else "")
        cells = "".join(
            "<td></td>" if m not in row.metrics else
            f"<td>{'<b>' if row.metrics[m] == best.get(m) else ''}{row.metrics[m]:.4f}"
            f"{'</b>' if row.metrics[m] == best.get(m) else ''}</td>" for m in headline)
        rows.append(f"<tr><td class='model'>{label}</td>{cells}</tr>")
    return (f"<section id='leaderboard'><h2>Leaderboard ({html.escape(name)})</h2>"
            f"<p class='note'>ranked by {html.escape(board.rank_by or headline[0] if headline else '')}; "
            "↑ higher is better, ↓ lower is better; best in bold</p>"
            + (f"<p class='note'><b>{html.escape(note)}</b></p>" if (note := board.tie_note()) else "")
            + "".join(f"<p class='note'><b>Note: {html.escape(note)}.</b></p>" for note in board.notes)
            + f"<table class='board'><tr><th class='model'>model</th>{head}</tr>{''.join(rows)}</table></section>")


# --------------------------------------------------------------------------- sample generations


def _stage_models(done: list[tuple[Manifest, StageResult]]) -> list[tuple[Manifest, Path]]:
    """Each stage's own model, once (a stage that hands on the model it started from is left out)."""
    seen, out = set(), []
    for m, result in done:
        model = result.model
        if model is not None and (Path(model) / "config.json").is_file() and Path(model).resolve() not in seen:
            seen.add(Path(model).resolve())
            out.append((m, Path(model)))
    return out


def _weight_bytes(model: Path) -> int:
    return sum(p.stat().st_size for p in model.glob("*.safetensors"))


def _parameters(model: Path) -> int | None:
    """The model's parameter count from its config.json (None when transformers cannot build a model from it)."""
    from transformers import AutoConfig

    from tempa.recipes.estimate import count_parameters

    try:
        return count_parameters(AutoConfig.from_pretrained(model))[0]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def small_model_note(parameters: Mapping[str, int | None]) -> str:
    """Why the samples of toy-sized models (the tiny default's 0.2M parameters) are a letter or two: a first-time
    user, seeing single letters from every stage of the demo, took them for a broken run."""
    small = {name: n for name, n in parameters.items() if n is not None and n < SMALL_MODEL_PARAMETERS}
    if not small:
        return ""
    sizes = ", ".join(f"{html.escape(name)} {n / 1e6:.1f}M" for name, n in small.items())
    return (f"<p class='note small-model'>parameters: {sizes}. A toy-sized model (below "
            f"{SMALL_MODEL_PARAMETERS // 1_000_000}M parameters; tempa's tiny default, 0.2M, is made to try the "
            "pipeline on a CPU in minutes) writes a letter, a few words or noise, however the run went: these answers "
            "show that each stage's model loads and generates, not what a real base model would write.</p>")


def sample_generations(manifest: Manifest, model: Path,
                       prompts: Sequence[str] = SAMPLE_PROMPTS) -> dict[str, list[str]]:
    """The model's greedy answers to ``prompts`` in both thinking modes, cached by stage run and prompts."""
    key = digest({"v": _SAMPLES_VERSION, "model": str(model.resolve()), "run": manifest.run_id or manifest.started_at,
                  "weights": path_digest(model / "config.json"), "prompts": list(prompts),
                  "max_new_tokens": SAMPLE_MAX_NEW_TOKENS})
    cached = cache_root() / "report-samples" / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))
    from tempa.alignment.generation import GenerationParams, TransformersBackend

    log.info("report: sampling %s (%s) in both thinking modes", manifest.name, model)
    backend = TransformersBackend(model, show_progress=False)
    try:
        chats = [[{"role": "user", "content": prompt}] for prompt in prompts]
        answers = {mode: [outs[0] for outs in backend.generate(chats, GenerationParams(
            max_new_tokens=SAMPLE_MAX_NEW_TOKENS, thinking_mode=mode))] for mode in ("on", "off")}
    finally:
        backend.close()
    write_json(cached, answers)
    return answers


def _sample_cell(text: str) -> str:
    """A sampled reply as the page shows it; an empty one is said to be empty (a blank cell read as a page fault)."""
    if not text.strip():
        return "<p class='empty'>(empty reply: the model ended its turn at once)</p>"
    return f"<pre>{html.escape(text)}</pre>"


def samples_section(done: list[tuple[Manifest, StageResult]], languages: Sequence[str] = (),
                    stale: Collection[str] = ()) -> str:
    """:func:`sample_prompts` for the recipe's ``languages`` answered by each stage's model, thinking on and off side
    by side; a ``stale`` stage's model (one the next `tempa run` trains again) is marked so."""
    prompts = sample_prompts(languages)
    models = _stage_models(done)
    if not models:
        return ""
    answers: dict[str, dict[str, list[str]]] = {}
    parameters: dict[str, int | None] = {}
    skipped = []
    for m, model in models:
        if _weight_bytes(model) > SAMPLE_MAX_BYTES:
            skipped.append(m.name)
        else:
            answers[m.name] = sample_generations(m, model, prompts)
            parameters[m.name] = _parameters(model)
    parts = []
    for i, prompt in enumerate(prompts):
        rows = "".join(
            f"<tr><td class='model'>{html.escape(name)}{' (stale)' if name in stale else ''}</td>"
            + "".join(f"<td class='answer' data-mode='{mode}'>{_sample_cell(out[mode][i])}</td>"
                      for mode in ("on", "off")) + "</tr>"
            for name, out in answers.items())
        parts.append(f"<h3 class='prompt'>{html.escape(prompt)}</h3><table class='samples'><tr><th class='model'>"
                     "model</th><th>thinking_mode=\"on\"</th><th>thinking_mode=\"off\"</th></tr>"
                     f"{rows}</table>")
    note = (f"<p class='note'>not sampled (over {SAMPLE_MAX_BYTES / 1024**3:.0f} GB of weights): "
            f"{html.escape(', '.join(skipped))}</p>") if skipped else ""
    if shown := [name for name in answers if name in stale]:
        note += (f"<p class='note'>stale: {html.escape(', '.join(shown))}: the models made before the recipe or "
                 "an input changed (Stages says what); the next `tempa run` makes them again</p>")
    # the codes are USAGE_QUESTIONS' own keys: nothing to escape
    asked = (f"tempa's example question in each of the recipe's languages ({', '.join(_example_languages(languages))})"
             if prompts is not SAMPLE_PROMPTS else f"tempa's {len(prompts)} fixed prompts (the same for every run)")
    return (f"<section id='samples'><h2>Sample generations</h2><p class='note'>greedy, at most "
            f"{SAMPLE_MAX_NEW_TOKENS} new tokens, each stage's model, on {asked}</p>{note}{small_model_note(parameters)}"
            f"{''.join(parts)}</section>")


def _examples(run_dir: Path, languages: Sequence[str] = ()) -> str:
    from transformers import AutoTokenizer

    final = run_dir / FINAL_LINK
    folder = final if (final / "tokenizer_config.json").exists() else run_dir / TOKENIZER_DIR
    if not (folder / "tokenizer_config.json").exists():
        return "<p>No tokenizer in this run yet.</p>"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    example = example_conversation(languages)
    parts = []
    for mode in ("on", "off"):
        text = tokenizer.apply_chat_template(example, tokenize=False, thinking_mode=mode)
        prompt = tokenizer.apply_chat_template(example[:1], tokenize=False, add_generation_prompt=True,
                                               thinking_mode=mode)
        parts.append(
            f"<h3>thinking_mode=\"{mode}\"</h3><p>generation prompt:</p><pre>{html.escape(prompt)}</pre>"
            f"<p>a training conversation:</p><pre>{html.escape(text)}</pre>"
        )
    return "".join(parts)


def _fmt(value: Any) -> str:
    return "–" if value is None else html.escape(format_metric(value))


def stages_section(stages: list[tuple[Manifest, StageResult | None]], states: dict[str, str] | None = None) -> str:
    """``states``: each stage's state as `tempa status` tells it (a manifest still reads `running` after a kill,
    and `done` once an input ran again)."""
    states = states or {}
    rows = "".join(
        f"<tr><td>{html.escape(m.name)}</td><td>{html.escape(m.kind)}</td>"
        f"<td>{html.escape(states.get(m.name, m.status))}</td><td>{_fmt(m.duration_s)}</td>"
        f"<td>{', '.join(f'{html.escape(k)}={_fmt(v)}' for k, v in list(m.metrics.items())[:6])}</td></tr>"
        for m, _ in stages)
    # one line per software the stages ran under: stages run days apart, or by another checkout, can differ
    ran_under: dict[str, list[str]] = {}
    for m, _ in stages:
        if m.software is not None:
            ran_under.setdefault(m.software.line(), []).append(m.name)
    software = "".join(f"<p class='note'>software{'' if len(ran_under) == 1 else ' of ' + html.escape(', '.join(names))}: "
                       f"{html.escape(line)}</p>" for line, names in ran_under.items())
    return (f"<section id='stages'><h2>Stages</h2><table><tr><th>stage</th><th>kind</th><th>status</th>"
            f"<th>seconds</th><th>key metrics</th></tr>{rows}</table>{software}</section>")


def merge_section(done: list[tuple[Manifest, StageResult]]) -> str:
    parts = []
    for m, result in done:
        if not isinstance(result, MergeResult):
            continue
        summary = result.summary
        parts.append(f"<h2>Merge choice ({html.escape(m.name)})</h2>")
        config = result.files.get("mergekit_config")
        if config is not None and config.is_file():
            parts.append(f"<pre>{html.escape(config.read_text())}</pre>")
        if summary.reevaluation is not None:
            r = summary.reevaluation
            parts.append(f"<p>merge helped: <b>{r.helped}</b> ({html.escape(r.metric)}: merged {_fmt(r.merged)}, "
                         f"best input {_fmt(r.best_input)}, difference {_fmt(r.merged - r.best_input)})</p>")
    return f"<section id='merge'>{''.join(parts)}</section>" if parts else ""


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;"
         "vertical-align:top}th{background:#f4f4f4}pre{background:#f4f4f4;padding:8px;white-space:pre-wrap;"
         "overflow-wrap:anywhere;margin:0}img{display:block;margin:8px 0;max-width:100%}.note{color:#555;font-size:13px}"
         "table.board,table.samples{width:100%;table-layout:fixed}table.board th.metric{overflow-wrap:anywhere;"
         "font-size:12px}table.board td.model,table.board th.model{width:22%;overflow-wrap:anywhere}"
         "table.samples td.model,table.samples th.model{width:12%}.dir{font-weight:bold;color:#06c}"
         "tr.total td{font-weight:bold}.description{white-space:pre-line}.in-progress{color:#b00}")


def write_report(run_dir: str | Path, *, samples: bool = True) -> Path:
    """Write ``run_dir/report/index.html``, one self-contained page; returns its path."""
    run_dir = Path(run_dir).resolve()
    require_run_dir(run_dir)
    recipe = recipe_heading(run_dir)
    stages = finished_stages(run_dir, [stage.name for stage in recipe.stages])
    done = [(m, r) for m, r in stages if r is not None]
    rows = stage_status([m.name for m, _ in stages], run_dir)
    states = {row.name: f"{row.state} ({row.note})" if row.note else row.state for row in rows}
    running = [row.name for row in rows if row.state == "running"] if run_in_progress(run_dir) else None
    sections = [
        header_section(run_dir, recipe, running),
        stages_section(stages, states),
        data_mix_section(done),
        training_section(done),
        preference_section(done),
        "".join(_preference_data_section(done)),
        leaderboard_section(done),
        merge_section(done),
        samples_section(done, recipe.languages, stale={name for name, state in states.items()
                                                       if state.startswith("stale")}) if samples else "",
        f"<section id='template'><h2>Chat template, both thinking modes</h2>{_examples(run_dir, recipe.languages)}"
        "</section>",
    ]
    title = html.escape(f"tempa report: {recipe.name}" if recipe.name else "tempa report")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>"
            f"</head><body>{''.join(sections)}</body></html>")
    out = run_dir / REPORT_DIR
    with staging_dir(out, inside=[run_dir]) as tmp:
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"
