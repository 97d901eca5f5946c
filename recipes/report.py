"""`tempa report RUN_DIR`: one HTML page (plus PNGs) showing what a run did.

Everything comes from the stages' manifests and their typed results: loss and throughput curves
(tokens/s per device, MFU) from each trained model's training outcome, reward statistics per
preference round, the last leaderboard, the merge choice, and the final tokenizer rendering one
conversation in both thinking modes.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tempa.alignment.preference_stage import PreferenceResult, RoundSummary
from tempa.alignment.synthesize_stage import SynthesizeResult
from tempa.merge.leaderboard import EvaluateResult, Leaderboard, is_headline, lower_is_better
from tempa.merge.merge_result import MergeResult
from tempa.recipes.registry import stage_kinds
from tempa.recipes.rundir import Manifest, read_manifest
from tempa.sft.files import staging_dir
from tempa.sft.run_layout import FINAL_LINK, REPORT_DIR, RESOLVED_RECIPE, TOKENIZER_DIR
from tempa.sft.stage_api import StageResult, format_metric
from tempa.sft.train_plan import OUTCOME_FILE, TrainOutcome

EXAMPLE = [
    {"role": "user", "content": "Apa sentimen dari kalimat berikut ini?\nKalimat: Buku ini sangat membosankan."},
    {"role": "assistant", "content": "Negatif", "reasoning_content": "'Membosankan' berarti boring: negatif."},
]


def finished_stages(run_dir: Path) -> list[tuple[Manifest, StageResult | None]]:
    """Every stage with a manifest, in the order they started, with its typed result once it is done."""
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
    return sorted(found, key=lambda pair: pair[0].started_at)


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


def _plot_losses(name: str, histories: list[tuple[str, list[dict]]], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    plotted = False
    for label, history in histories:
        train = [(e["step"], e["loss"]) for e in history if "loss" in e and "step" in e]
        evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e and "step" in e]
        suffix = "" if len(histories) == 1 else f" ({label})"
        if train:
            ax.plot(*zip(*train, strict=True), marker=".", label=f"train loss{suffix}")
            plotted = True
        if evals:
            ax.plot(*zip(*evals, strict=True), marker="o", linestyle="--", label=f"eval loss{suffix}")
            plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set_title(f"{name}: loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    return _save(fig, ax, out)


def _plot_throughput(name: str, histories: list[tuple[str, list[dict]]], out: Path) -> Path | None:
    """Trained tokens/s per device over the steps (and MFU on a second axis where the peak was known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(label, [(e["step"], e["tokens_per_s"], e.get("mfu")) for e in history
                       if "tokens_per_s" in e and "step" in e]) for label, history in histories]
    series = [(label, points) for label, points in series if points]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    mfu_ax = None
    for label, points in series:
        suffix = "" if len(series) == 1 else f" ({label})"
        steps = [p[0] for p in points]
        ax.plot(steps, [p[1] for p in points], marker=".", label=f"tokens/s per device{suffix}")
        mfu = [(step, 100 * p[2]) for step, p in zip(steps, points, strict=True) if p[2] is not None]
        if mfu:
            mfu_ax = mfu_ax or ax.twinx()
            mfu_ax.plot(*zip(*mfu, strict=True), linestyle="--", color="tab:red", label=f"MFU %{suffix}")
    if mfu_ax is not None:
        mfu_ax.set_ylabel("MFU %")
        mfu_ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{name}: throughput")
    ax.set_xlabel("step")
    ax.set_ylabel("tokens/s per device")
    ax.set_ylim(bottom=0)
    return _save(fig, ax, out)


def _save(fig: Any, ax: Any, out: Path) -> Path:
    """Grid, legend, layout; write the PNG and free the figure."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _plot_rewards(name: str, rounds: list[RoundSummary], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.round for r in rounds]
    chosen = [r.chosen_reward_mean for r in rounds]
    rejected = [r.rejected_reward_mean for r in rounds]
    usable = [r.pair_fraction for r in rounds]
    if not any(v is not None for v in chosen + rejected + usable):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for values, label, style in ((chosen, "mean reward, chosen", "-o"), (rejected, "mean reward, rejected", "-s"),
                                 (usable, "prompts with a usable pair", "--^")):
        points = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set_title(f"{name}: rewards per round")
    ax.set_xlabel("round")
    ax.set_xticks(xs)
    return _save(fig, ax, out)


def _judge_failures(judges: dict[str, float | int]) -> str:
    names = [key.removesuffix("_replies") for key in judges if key.endswith("_replies")]
    return ", ".join(f"{name}: {judges.get(f'{name}_unparsable', 0)}/{judges[f'{name}_replies']}" for name in names)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in counts.items()) or "none"


def _preference_data_section(done: list[tuple[Manifest, StageResult]]) -> list[str]:
    """Pair and judge statistics: per preference round and per synthesize stage, from their typed results."""
    parts: list[str] = []
    for m, result in done:
        if isinstance(result, PreferenceResult):
            head = ("<tr><th>round</th><th>source</th><th>pairs / prompts</th><th>truncated samples</th>"
                    "<th>identical renderings</th><th>judge unparsable</th><th>DPO reward margin</th>"
                    "<th>DPO accuracy</th><th>no pair, by reason</th></tr>")
            rows = "".join(
                f"<tr><td>{r.round}</td><td>{html.escape(r.source)}</td><td>{r.pairs} / {r.prompts}</td>"
                f"<td>{r.truncated} / {r.samples} ({_fmt(r.truncated_fraction)})</td>"
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
    return ["<h2>Pairs and judges</h2>", *parts] if parts else []


def _leaderboard_html(board: Leaderboard) -> str:
    headline = [m for m in board.metric_names if is_headline(m)]
    if board.rank_by in headline:
        headline.remove(board.rank_by)
        headline.insert(0, board.rank_by)
    head = "".join(f"<th>{html.escape(m)} {'↓' if lower_is_better(m) else '↑'}</th>" for m in headline)
    rows = []
    for row in board.ranked():
        name = html.escape(row.candidate) + (" <b>(merged)</b>" if row.merged else "")
        cells = "".join(f"<td>{row.metrics[m]:.4f}</td>" if m in row.metrics else "<td></td>" for m in headline)
        rows.append(f"<tr><td>{name}</td>{cells}</tr>")
    return f"<div class='wide'><table><tr><th>model</th>{head}</tr>{''.join(rows)}</table></div>"


def _examples(run_dir: Path) -> str:
    from transformers import AutoTokenizer

    final = run_dir / FINAL_LINK
    folder = final if (final / "tokenizer_config.json").exists() else run_dir / TOKENIZER_DIR
    if not (folder / "tokenizer_config.json").exists():
        return "<p>No tokenizer in this run yet.</p>"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    parts = []
    for mode in ("on", "off"):
        text = tokenizer.apply_chat_template(EXAMPLE, tokenize=False, thinking_mode=mode)
        prompt = tokenizer.apply_chat_template(EXAMPLE[:1], tokenize=False, add_generation_prompt=True,
                                               thinking_mode=mode)
        parts.append(
            f"<h3>thinking_mode=\"{mode}\"</h3><p>generation prompt:</p><pre>{html.escape(prompt)}</pre>"
            f"<p>a training conversation:</p><pre>{html.escape(text)}</pre>"
        )
    return "".join(parts)


def _fmt(value: Any) -> str:
    return html.escape(format_metric(value))


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report/index.html`` (+ PNGs); returns the HTML path."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / RESOLVED_RECIPE).is_file():
        from tempa.recipes.errors import RecipeError

        raise RecipeError(f"{run_dir}: not a tempa run directory (no recipe.resolved.yaml)")
    stages = finished_stages(run_dir)
    out = run_dir / REPORT_DIR
    with staging_dir(out, inside=[run_dir]) as tmp:
        sections = [f"<h1>tempa run report</h1><p>{html.escape(str(run_dir))}</p>", "<h2>Stages</h2>"]
        rows = "".join(
            f"<tr><td>{html.escape(m.name)}</td><td>{html.escape(m.kind)}</td>"
            f"<td>{html.escape(m.status)}</td><td>{_fmt(m.duration_s if m.duration_s is not None else '')}</td>"
            f"<td>{', '.join(f'{html.escape(k)}={_fmt(v)}' for k, v in list(m.metrics.items())[:6])}"
            "</td></tr>"
            for m, _ in stages
        )
        sections.append(f"<table><tr><th>stage</th><th>kind</th><th>status</th><th>seconds</th>"
                        f"<th>key metrics</th></tr>{rows}</table>")
        done = [(m, r) for m, r in stages if r is not None]

        sections.append("<h2>Loss curves</h2>")
        throughput_pngs = []
        for m, result in done:
            histories = _loss_history(result)
            png = _plot_losses(m.name, histories, tmp / f"loss-{m.name}.png") if histories else None
            if png:
                sections.append(f'<img alt="{html.escape(m.name)} loss" src="{png.name}">')
            png = _plot_throughput(m.name, histories, tmp / f"throughput-{m.name}.png") if histories else None
            if png:
                throughput_pngs.append(f'<img alt="{html.escape(m.name)} throughput" src="{png.name}">')
        if throughput_pngs:
            sections += ["<h2>Throughput</h2>", *throughput_pngs]

        reward_pngs = []
        for m, result in done:
            rounds = result.rounds if isinstance(result, PreferenceResult) else []
            if rounds and (png := _plot_rewards(m.name, rounds, tmp / f"rewards-{m.name}.png")):
                reward_pngs.append(f'<img alt="{html.escape(m.name)} rewards" src="{png.name}">')
        if reward_pngs:
            sections += ["<h2>Rewards per preference round</h2>", *reward_pngs]
        sections += _preference_data_section(done)

        boards = [(m.name, r.leaderboard) for m, r in done
                  if isinstance(r, EvaluateResult | MergeResult) and r.leaderboard is not None]
        if boards:
            name, board = boards[-1]
            sections += [f"<h2>Leaderboard ({html.escape(name)})</h2>", _leaderboard_html(board)]

        for m, result in done:
            if not isinstance(result, MergeResult):
                continue
            summary = result.summary
            sections.append(f"<h2>Merge choice ({html.escape(m.name)})</h2>")
            config = result.files.get("mergekit_config")
            if config is not None and config.is_file():
                sections.append(f"<pre>{html.escape(config.read_text())}</pre>")
            if summary.reevaluation is not None:
                gain = summary.reevaluation.merged - summary.reevaluation.best_input
                sections.append(f"<p>merge helped: <b>{summary.reevaluation.helped}</b> "
                                f"({html.escape(summary.reevaluation.metric)}: merged {_fmt(summary.reevaluation.merged)}"
                                f", best input {_fmt(summary.reevaluation.best_input)}, difference {_fmt(gain)})</p>")

        sections += ["<h2>Chat template, both thinking modes</h2>", _examples(run_dir)]
        style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}pre{background:#f4f4f4;padding:8px;"
                 "white-space:pre-wrap}img{display:block;margin:8px 0}.wide{overflow-x:auto}")
        page = f"<!doctype html><html><head><meta charset='utf-8'><title>tempa report</title><style>{style}</style>" \
               f"</head><body>{''.join(sections)}</body></html>"
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"
