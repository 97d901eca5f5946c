"""The final model card (README.md): recipe, stages, data mix, evaluation, merge, training arguments, usage.

Everything it shows comes from the typed results of the stages that ran (the bake stage sees
every earlier stage) and the recipe. Nothing secret may reach it: values under secret-looking
keys are replaced, and the finished text is scrubbed of every secret-looking environment value
and of token-shaped strings (hub/OpenAI/W&B keys, bearer tokens).
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import math
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tempa.alignment.preference_stage import LAST_ROUND, PreferenceResult, preference_headline
from tempa.chat_templates.thinking import THINK_CLOSE
from tempa.merge.leaderboard import NO_VALUE, EvaluateResult, format_compared
from tempa.merge.merge_config import weight_shares
from tempa.merge.merge_result import RECIPE_BASE, MergeResult
from tempa.merge.ollama_template import ollama_default_note
from tempa.sft import language
from tempa.sft.pretrain_stage import PretrainResult
from tempa.sft.stage import SFTResult
from tempa.sft.stage_api import (
    SECRET_KEY_RE,
    RecipeInfo,
    Upstream,
    format_metric,
    is_secret_key,
    looks_local,
    marked_train_args,
    secret_env_names,
)
from tempa.sft.suggest import did_you_mean

REDACTED = "<redacted>"
PRIVATE_ENDPOINT = "<private endpoint>"
# Names only a private network resolves (Kubernetes services, mDNS, the common internal domains).
_PRIVATE_SUFFIXES = (".internal", ".local", ".lan", ".corp", ".home", ".intranet", ".localdomain", ".svc",
                     ".cluster.local", ".private", ".home.arpa", ".ts.net")
TOKEN_PATTERNS = [
    re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}\b"),
    re.compile(r"\b(?:ghp|gho|ghs|github_pat)_[A-Za-z0-9_]{20,}\b"),
    re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}\b"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{12,}"),
    re.compile(r"\b[0-9a-f]{40}\b"),  # W&B-style 40-hex api keys
]


# An absolute path starts a token: at the start, after whitespace, a quote, '(', '=', ',' or '['.
_ABSOLUTE = re.compile(r"""(?:^|(?<=[\s`'"(=,\[]))(/[^\s`'"|<>()\[\]{},;]+)""", re.MULTILINE)


def _is_local(path: str) -> bool:
    # The top folder must exist here: strings like "/no_think" or "/v1/chat" are not paths.
    first = path.strip("/").split("/")[0]
    return bool(first) and os.path.isdir("/" + first)


def local_paths(text: str) -> list[str]:
    """Absolute paths in ``text`` whose top folder exists on this machine (``/home/...``, ``/tmp/...``)."""
    return [m.group(1) for m in _ABSOLUTE.finditer(text) if _is_local(m.group(1))]


def strip_local_paths(text: str) -> str:
    """``text`` with every local absolute path replaced by its last component (``x.jsonl``)."""

    def name(match: re.Match[str]) -> str:
        path = match.group(1)
        return (Path(path.rstrip("/")).name or path) if _is_local(path) else path

    return _ABSOLUTE.sub(name, text)


# The licence ids the Hub accepts in a card's `license` (hf.co/docs/hub/repositories-licenses, August 2026). The Hub
# refuses a commit whose README.md says another ("Invalid metadata in README.md. - "license" must be one of [...]"),
# after `tempa push` has created the repo; a licence it does not list is `other`, named by `license_name`.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1",
    "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research",
    "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openmdw-1.0",
    "openmdw-1.1", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr",
    "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1", "llama3.2",
    "llama3.3", "llama4", "grok2-community", "gemma", "unknown", "other",
})
# A language in the card's metadata: an ISO 639-1 or 639-3 code (the primary subtag of th-TH, jpn_Jpan), or one of
# the special values huggingface_hub's ModelCardData names.
_HUB_LANGUAGE = re.compile(r"[a-z]{2,3}")
_HUB_SPECIAL_LANGUAGES = frozenset({"code", "multilingual"})


def hub_language(code: str) -> str:
    """``code`` as the card's metadata lists it: ISO 639-1/639-3, its region or script dropped (``th-TH`` -> ``th``,
    ``jpn_Jpan`` -> ``jpn``), or ``code`` / ``multilingual``; ValueError for anything else (a language's name,
    ``Thai``)."""
    if str(code).strip().lower() in _HUB_SPECIAL_LANGUAGES:
        return str(code).strip().lower()
    primary = str(code).strip().replace("_", "-").split("-", 1)[0].lower()
    if not _HUB_LANGUAGE.fullmatch(primary):
        raise ValueError(f"language {code!r}: expected an ISO 639-1 or 639-3 code (th, ja, fil), as the Hub's card "
                         "metadata takes it")
    return primary


def hub_metadata_problems(license: Any, license_name: Any = None, languages: Any = ()) -> list[str]:
    """What the Hub would refuse in a card's metadata: a ``license`` (one id or a list) it does not list, ``other``
    without a ``license_name``, a ``language`` that is no ISO 639 code. Empty when it would take it."""
    problems = []
    for value in license if isinstance(license, list) else [] if license is None else [license]:
        if str(value) not in HUB_LICENSES:
            problems.append(f"license {value!r} is not a licence id the Hub accepts (hf.co/docs/hub/repositories-licenses:"
                            " one it does not list is 'other', with license_name and license_link)"
                            + did_you_mean(str(value).lower(), HUB_LICENSES))
    if "other" in (license if isinstance(license, list) else [license]) and not license_name:
        problems.append("license 'other' needs license_name (a short id for the licence; and license_link: its text)")
    for code in languages if isinstance(languages, list) else [languages] if languages else []:
        try:
            hub_language(code)
        except ValueError as error:
            problems.append(str(error))
    return problems


def card_front_matter(text: str) -> dict[str, Any]:
    """The metadata of a model card's text (its ``---`` YAML block; ``{}`` without one). ValueError when the block
    is not a YAML mapping: the Hub refuses such a card too."""
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        return {}
    try:
        front = yaml.safe_load(text[4:].split("\n---", 1)[0])
    except yaml.YAMLError as error:
        raise ValueError(f"its metadata is not YAML ({str(error).splitlines()[0]})") from None
    if front is None:
        return {}
    if not isinstance(front, dict):
        raise ValueError("its metadata is not a YAML mapping")
    return front


class ModelCardConfig(BaseModel):
    """What the model card says beyond what the run directory records."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, description="Card title (default: the recipe's name).")
    model_id: str | None = Field(
        default=None, description="Hub id used in the usage snippet (default: a local path placeholder)."
    )
    license: str | list[str] | None = Field(
        default=None, description="License id for the card's metadata, one the Hub lists (hf.co/docs/hub/"
        "repositories-licenses; checked when the recipe loads), or a list of them where several apply (Swallow's: "
        "llama3.1 for the base, gemma for its synthetic data); `other` with license_name for one it does not list.")
    license_name: str | None = Field(default=None, description="With license: other, the licence's short id (the Hub "
                                     "shows it; required there).")
    license_link: str | None = Field(default=None, description="With license: other, where its text is (a URL, or "
                                     "LICENSE for the file the final folder carries).")
    languages: list[str] = Field(default_factory=list, description="ISO 639-1/639-3 language codes for the card's "
                                 "metadata (a region or script is dropped there: th-TH is th); the first picks the usage "
                                 "example's language (English where tempa has none for it).")
    tags: list[str] = Field(default_factory=list, description="Extra tags for the card's metadata.")
    description: str | None = Field(default=None, description="A paragraph about the model.")
    extra: str | None = Field(default=None, description="Markdown appended at the end of the card.")

    @model_validator(mode="after")
    def _hub_accepts(self) -> ModelCardConfig:
        # Checked when the recipe loads: the Hub's refusal otherwise comes at `tempa push`, after the whole run.
        problems = hub_metadata_problems(self.license, self.license_name, self.languages)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def redact(value: Any) -> Any:
    """A copy of ``value`` with every text value under a secret-looking key replaced by ``<redacted>``, and every
    ``base_url`` of a private network's server (:func:`private_host`) by ``<private endpoint>``.

    Numbers are never secrets (``tokens_in``, ``rows_tokenized`` are counts), so only strings go.
    """
    if isinstance(value, Mapping):
        return {
            key: (
                REDACTED if is_secret_key(str(key)) and isinstance(item, str) and item
                else PRIVATE_ENDPOINT if key == "base_url" and isinstance(item, str) and private_host(item)
                else redact(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value


def private_host(url: str) -> bool:
    """Whether ``url`` names a server of a private network (loopback, a private or link-local address, a name with no
    dot or an internal domain): a published card would map a team's network for nothing, as no reader can reach it."""
    host = (urllib.parse.urlsplit(url).hostname or "").rstrip(".").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "." not in host or host.endswith(_PRIVATE_SUFFIXES)
    return not address.is_global


# Environment names say "key" on their own too (TEACHER_KEY, OPENAI_KEY): a word of the name, not any "key".
_SECRET_ENV_RE = re.compile(rf"{SECRET_KEY_RE.pattern}|(?:^|[_-])key(?:$|[_-])", re.IGNORECASE)


def scrub(text: str, environ: Mapping[str, str] | None = None, secret_names: Iterable[str] = ()) -> str:
    """Remove secret-looking environment values and token-shaped strings from ``text``.

    ``secret_names`` are environment variables known to hold secrets whatever their names look like (the
    recipe's ``api_key_env`` values): their values go too.
    """
    environ = os.environ if environ is None else environ
    declared = set(secret_names)
    for key, value in environ.items():
        if len(value) >= 8 and (key in declared or _SECRET_ENV_RE.search(key)) and value in text:
            text = text.replace(value, REDACTED)
    for pattern in TOKEN_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)[:80]
    if isinstance(value, float) and math.isnan(value):
        return NO_VALUE  # metrics.json and leaderboard.json hold it as null
    return format_metric(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _headline_metrics(metrics: Mapping[str, Any], limit: int = 6) -> str:
    shown = [
        (k, v) for k, v in metrics.items() if isinstance(v, (int, float, bool, str)) and not is_secret_key(k)
    ]
    text = ", ".join(f"{k}={_cell(v)}" for k, v in shown[:limit])
    return text + (f" (+{len(shown) - limit} more)" if len(shown) > limit else "")


def _preference_headline(result: PreferenceResult) -> str:
    """A preference stage of several rounds, worded from :func:`preference_headline` of its rounds (not its
    metrics.json: a run older than that headline put round totals and last-round values under plain names side by
    side, `pairs=15, pair_fraction=0.2917`, which read as 15 pairs from 15/0.29 prompts)."""
    headline = preference_headline(result.rounds)
    read = "prompts and offline rows" if any(r.source == "offline" for r in result.rounds) else "prompts"
    last = {key.removeprefix(LAST_ROUND): value for key, value in headline.items() if key.startswith(LAST_ROUND)}
    return (f"rounds={headline['rounds']}, over all rounds: pairs={headline['pairs']} of {headline['prompts']} {read} "
            f"(pair_fraction={_cell(headline['pair_fraction'])}); last round (round-{result.rounds[-1].round}): "
            + ", ".join(f"{key}={_cell(value)}" for key, value in last.items()))


def _stages_section(stages: Mapping[str, Upstream], in_model: set[str] | None = None) -> list[str]:
    """The stages, in a table; ``in_model`` (:func:`lineage`; None: not known): the stages the folder's model
    descends from, whose table comes first, the run's others (side experiments) after it, marked as not in it."""

    def row(name: str, up: Upstream) -> list[Any]:
        return [name, up.kind, "" if up.duration_s is None else f"{up.duration_s:.0f}s",
                _preference_headline(up.result) if isinstance(up.result, PreferenceResult) and len(up.result.rounds) > 1
                else _headline_metrics(up.result.metrics)]

    def table(names: list[str]) -> list[str]:
        return _table(["stage", "kind", "duration", "metrics"], [row(name, stages[name]) for name in names])

    if not stages:
        return []
    if in_model is None:
        return ["## Stages", "", *table(list(stages)), ""]
    ours = [name for name in stages if name in in_model]
    others = [name for name in stages if name not in in_model]
    lines = ["## Stages", ""]
    if ours:
        lines += ["The stages the model in this folder descends from:", "", *table(ours), ""]
    if others:
        lines += [f"{'Other stages' if ours else 'Stages'} of the run, not in this model (side experiments, or "
                  "candidates left out):", "", *table(others), ""]
    return lines


_MIX_COLUMNS = ("path", "thinking_mode", "rows_in", "rows_kept", "heldout_rows", "tokens_kept",
                "trained_tokens_kept", "thinking_on_rows_kept", "share_of_tokens")
# Shown after thinking_on_rows_kept only when a stage trained tool rows: a card without them reads as before.
_TOOL_COLUMN = "tool_rows_kept"


# passes: above 1 where `repeat` went over a source again to reach its budget; tokens: taken (held-out documents
# included); trained_tokens: the training rows' tokens times the epochs
_PRETRAIN_COLUMNS = ("path", "token_budget", "documents", "tokens", "passes", "share_of_tokens", "heldout_tokens",
                     "trained_tokens")


def _not_in(name: str, in_model: set[str] | None) -> str:
    return " (not in this model)" if in_model is not None and name not in in_model else ""


def _mix_section(stages: Mapping[str, Upstream], in_model: set[str] | None = None) -> list[str]:
    """Each SFT stage's sources, and each pretrain stage's (continued pre-training is data the model saw too)."""
    lines: list[str] = []
    columns = _MIX_COLUMNS
    if tool_rows_trained(stages):
        at = _MIX_COLUMNS.index("thinking_on_rows_kept") + 1
        columns = (*_MIX_COLUMNS[:at], _TOOL_COLUMN, *_MIX_COLUMNS[at:])
    for name, up in stages.items():
        if isinstance(up.result, SFTResult):
            sources = up.result.data.sources
            lines += [f"### {name}{_not_in(name, in_model)}", ""]
            lines += _table(["source", *columns, "rejects"],
                            [[s.name, *(getattr(s, c) for c in columns), sum(s.rejects.values())]
                             for s in sources])
            lines.append("")
        elif isinstance(up.result, PretrainResult) and up.result.data is not None:
            mix = up.result.data
            lines += [f"### {name} (pretrain){_not_in(name, in_model)}", ""]
            lines += _table(["source", *_PRETRAIN_COLUMNS],
                            [[s.name, *("–" if getattr(s, c) is None else getattr(s, c) for c in _PRETRAIN_COLUMNS)]
                             for s in mix.sources])
            chunks = "–" if mix.chunks is None else _cell(mix.chunks)
            epochs = "–" if mix.epochs is None else _cell(mix.epochs)
            trained = "" if mix.trained_tokens is None else f", {_cell(mix.trained_tokens)} trained"
            lines += ["", f"{_cell(mix.tokens)} tokens taken{trained}, in {chunks} training chunks, trained for "
                      f"{epochs} epochs.", ""]
    return ["## Data mix", "", *lines] if lines else []


def _eval_section(stages: Mapping[str, Upstream], shipped: str | None = None) -> list[str]:
    """The leaderboard of the shipped model: its merge's (which includes the merged model), else the one that merge
    chose its inputs from; else the latest (a run with several merges showed the last one's board, which had no row
    for the merge that shipped)."""

    def board_of(name: str | None) -> Any:
        up = stages.get(name) if name else None
        return getattr(up.result, "leaderboard", None) if up is not None and isinstance(
            up.result, EvaluateResult | MergeResult) else None

    up = stages.get(shipped) if shipped else None
    chosen_from = up.result.summary.selection.evaluate_stage if up is not None and isinstance(
        up.result, MergeResult) and up.result.summary.selection is not None else None
    order = [shipped, chosen_from, *reversed(list(stages))]
    for name in order:
        board = board_of(name)
        if board is not None:
            # the run's leaderboard.json is not uploaded with the model: the card names where the rest stays
            rest = f"the run's `{name}/leaderboard.json`"
            return ["## Evaluation", "", f"From stage `{name}`.", "", board.to_markdown(rest_in=rest).strip(), ""]
    return []


def _training_arguments_section(stages: Mapping[str, Upstream], in_model: set[str] | None = None) -> list[str]:
    """Each training stage's trainer arguments as it trained with them (its manifest's record): the recipe's
    ``train:`` over tempa's defaults, which the card's recipe does not show (it holds what the recipe set), and the
    gradient accumulation its launch's global batch set; ``*`` marks a default, as `tempa plan` does."""
    lines = []
    for name, up in stages.items():
        # what it trained with (the launch's global batch sets the accumulation); {} for a kind that trains nothing
        defaults = up.config.train_args()
        trained = dict(up.train_args) if up.train_args is not None else defaults
        # a value the recipe or its launch set is no default of tempa's
        own = set(getattr(up.config, "train", {})) | {key for key, value in trained.items() if defaults.get(key) != value}
        if trained:
            lines.append(f"- `{name}`{_not_in(name, in_model)}: {marked_train_args(redact(trained), own)}")
    if not lines:
        return []
    return ["## Training arguments", "", "<details><summary>Each training stage's trainer arguments (* tempa's "
            "default, not set in the recipe)</summary>", "", *lines, "", "</details>", ""]


def _merge_section(stages: Mapping[str, Upstream], base_model: str, shipped: str | None = None,
                   in_model: set[str] | None = None) -> list[str]:
    """``base_model``: the recipe's, as it names it (a hub id, a folder, ``tempa:tiny``), named where a merge used it;
    ``shipped``: the stage whose model the folder holds, whose merge is marked (a run may try several); ``in_model``
    (:func:`lineage`; None: not known): the stages that model descends from. The merges it does not descend from are
    named only: described like the others, they read as part of the model."""
    merges = [name for name, up in stages.items() if isinstance(up.result, MergeResult)
              and (in_model is None or name in in_model)]
    others = [name for name, up in stages.items() if isinstance(up.result, MergeResult) and name not in merges]
    lines: list[str] = []
    for name, up in stages.items():
        if name not in merges:
            continue
        summary = up.result.summary
        mark = " (the model in this folder)" if name == shipped and len(merges) + len(others) > 1 else ""
        lines += [f"Stage `{name}`{mark}: **{summary.method}** merge of:", ""]
        # the weights as given, and where the method divides them by their sum, the share each model got
        shares = weight_shares(summary.method, [m.parameters.get("weight") for m in summary.models],
                               summary.parameters)
        for i, model in enumerate(summary.models):
            knobs = ", ".join(f"{k}={_cell(v)}" for k, v in model.parameters.items())
            if shares is not None:
                knobs += f"; share {_cell(shares[i])} of the merge"
            lines.append(f"- `{model.name}`" + (f" ({knobs})" if knobs else ""))
        if shares is not None:
            lines.append(f"- {summary.method} divides the weights by their sum, so the shares above are what each "
                         "model contributes")
        if summary.base_model is not None:
            name = summary.base_model.name
            lines.append(f"- base: `{base_model}` (the recipe's base model)" if name == RECIPE_BASE
                         else f"- base: `{name}`")
        if summary.parameters:  # slerp's t, normalize: false, lambda: without them the weights read otherwise
            lines.append("- parameters: " + ", ".join(f"{k}={_cell(v)}" for k, v in summary.parameters.items()))
        if summary.selection is not None:
            selection = summary.selection
            # The base ranked among the candidates is left out as the base: without saying so, "the top 2" read as
            # the board's first two when the base was first.
            *texts, base_text = format_compared(*selection.values.values(), *selection.tied.values(),
                                                selection.base_value)
            chosen = dict(zip(selection.values, texts[:len(selection.values)], strict=True))
            tied = dict(zip(selection.tied, texts[len(selection.values):], strict=True))
            besides = "" if selection.base is None else (
                f" besides the base (`{selection.base}` = {base_text}, merged onto as the base, "
                "not as one of the models)")
            lines += [
                "",
                f"Chosen as the top {selection.top_k} of `{selection.evaluate_stage}` by `{selection.metric}`{besides}: "
                + ", ".join(f"{k} = {v}" for k, v in chosen.items())
                # a tie at the cut: the metric did not choose between these and the last chosen, leaderboard order did
                + ("; tied at the cut and left out by leaderboard order, not by the metric: "
                   + ", ".join(f"{k} = {v}" for k, v in tied.items()) if selection.tied else ""),
            ]
        if summary.reevaluation is not None:
            re_eval = summary.reevaluation
            verdict = "improved on" if re_eval.helped else "did not improve on"
            best = f"`{re_eval.best_input_name}`, " if re_eval.best_input_name else ""
            merged, best_input, base_value = format_compared(re_eval.merged, re_eval.best_input, re_eval.base_value)
            against_base = "" if re_eval.beat_base is None else (
                f"; it {'improved' if re_eval.beat_base else 'did not improve'} on its base "
                f"(`{re_eval.base}`, {base_value})")
            lines += [
                "",
                f"The merge scored {merged} on `{re_eval.metric}` and {verdict} "
                f"its best input ({best}{best_input}){against_base}.",
            ]
        lines.append("")
    if others:
        lines += [("Other merges of the run" if merges else "Merges of the run") + ", not in this model: "
                  + ", ".join(f"`{name}` ({stages[name].result.summary.method})" for name in others), ""]
    return ["## Merge", "", *lines] if lines else []


# What the usage snippet names when the card has no hub id yet; `tempa push --repo` puts the repo there.
USAGE_PLACEHOLDER = "path/to/this/folder"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_datasets(stages: Mapping[str, Upstream]) -> list[str]:
    """Hub dataset ids the stages read (`path:` values that are `org/name`, not local files), in order."""
    found: dict[str, None] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            path = value.get("path")
            if isinstance(path, str) and _HUB_ID.fullmatch(path) and not looks_local(path):
                found[path] = None
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for stage in stages.values():
        walk(stage.config.model_dump(mode="json", by_alias=True))
    return list(found)


# The usage snippet's question, in the card's first language (`model_card.languages`); English for any other.
USAGE_QUESTIONS = {
    "en": "What is the capital of Indonesia?",
    "id": "Apa ibu kota Indonesia?",
    "ms": "Apakah ibu negara Malaysia?",
    "th": "เมืองหลวงของประเทศไทยคืออะไร?",
    "vi": "Thủ đô của Việt Nam là gì?",
    "tl": "Ano ang kabisera ng Pilipinas?",
    "ta": "இந்தியாவின் தலைநகரம் எது?",
    "ja": "日本の首都はどこですか？",
    "zh": "中国的首都是哪里？",
    "ko": "한국의 수도는 어디입니까?",
}


# Each question's answer, for a whole example conversation (the report's chat template section).
USAGE_ANSWERS = {
    "en": "Jakarta.",
    "id": "Jakarta.",
    "ms": "Kuala Lumpur.",
    "th": "กรุงเทพมหานคร",
    "vi": "Hà Nội.",
    "tl": "Maynila.",
    "ta": "புது தில்லி.",
    "ja": "東京です。",
    "zh": "北京。",
    "ko": "서울입니다.",
}


def example_language(code: str) -> str | None:
    """The key of :data:`USAGE_QUESTIONS` for language ``code`` (``th-TH``, ``jpn_Jpan``, ``fil``), or None."""
    canonical = language.canonical(code)
    return canonical if canonical in USAGE_QUESTIONS else None


def usage_question(languages: Sequence[str]) -> str:
    """The usage example's question in ``languages[0]`` (``th``, ``th-TH``, ``jpn_Jpan``, ``fil``), else in English."""
    code = example_language(languages[0]) if languages else None
    return USAGE_QUESTIONS[code or "en"]


def usage_snippet(model_id: str, thinking_default: str = "on", saved_with: str | None = None,
                  languages: Sequence[str] = (), gguf: bool = True, serving: bool = True) -> list[str]:
    """The card's usage section; ``saved_with``: the transformers version that wrote the folder's files;
    ``languages``: the card's, the first of which the example question is in (see :func:`usage_question`);
    ``gguf``: whether ``tempa export gguf`` writes this model (its GGUF writer takes Llama models only; others get
    the route through llama.cpp's converter, whose output it quantises); ``serving``: whether the template is one of
    tempa's, which the export serves (a Modelfile, llama-server's thinking switch); a recipe's own gets neither."""
    other = "off" if thinking_default == "on" else "on"
    # transformers 5 writes tokenizer_config.json and config.json in its own format: 4.x cannot load the tokenizer
    # (TokenizersBackend) and reads the RoPE settings (rope_parameters) as absent, silently
    needs = ([f"Saved with transformers {saved_with}: load it with transformers 5 or later (4.x cannot load the",
              "tokenizer and misreads the RoPE settings of `config.json`).", ""] if saved_with else [])
    return [
        "## Usage",
        "",
        *needs,
        'The chat template takes `thinking_mode="on"` (the model reasons in a think block before answering) or',
        '`thinking_mode="off"` (a direct answer); `enable_thinking=True/False` is an alias.',
        f"**Default thinking mode: `{thinking_default}`** (the recipe's `thinking_default`): a caller that passes",
        f'neither gets `thinking_mode="{thinking_default}"`. Pass `thinking_mode="{other}"` to switch.',
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model_id = "{model_id}"',
        "tokenizer = AutoTokenizer.from_pretrained(model_id)",
        'model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto", device_map="auto")',
        "",
        f'messages = [{{"role": "user", "content": {json.dumps(usage_question(languages), ensure_ascii=False)}}}]',
        "inputs = tokenizer.apply_chat_template(",
        "    messages,",
        "    add_generation_prompt=True,",
        f'    thinking_mode="{thinking_default}",  # "{other}" to switch',
        '    return_tensors="pt",',
        "    return_dict=True,",
        ").to(model.device)",
        "output = model.generate(**inputs, max_new_tokens=512)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        "Generation stops at the end-of-turn token: it is the tokenizer's eos, and `generation_config.json`",
        "lists it among the eos ids." + (" `tempa export gguf` writes a GGUF (llama.cpp) and an Ollama Modelfile"
                                         if gguf and serving else ""),
    ] + (_serving_lines(thinking_default, gguf) if serving else [
        "The chat template is the recipe's own: `tempa export gguf` writes no Ollama Modelfile for it (Ollama's",
        "Go template is written for tempa's templates only), and llama-server renders it as it is.",
        "",
    ])


def _serving_lines(thinking_default: str, gguf: bool) -> list[str]:
    """The GGUF, Ollama and llama-server part of the usage section, for a template of tempa's."""
    from tempa.merge.gguf_export import LLAMA_SERVER_NOTE  # it imports this module

    gguf_name = "NAME-q8_0" if gguf else "MODEL-f16-q8_0"
    return [
        # tempa's writer takes Llama only; the converter's output, quantised by tempa, gets the same serving files
        *([] if gguf else ["For llama.cpp and Ollama, convert it with `convert_hf_to_gguf.py` from a llama.cpp "
                           "checkout (`--outtype f16 --outfile MODEL-f16.gguf`), then run",
                           "`tempa export gguf MODEL-f16.gguf --type q8_0`: it writes the quantised GGUF with the "
                           "chat template llama.cpp runs and an Ollama Modelfile"]),
        f"named after it (`{gguf_name}.gguf`: `{gguf_name}.Modelfile`, for `ollama create NAME -f {gguf_name}.Modelfile`)",
        "whose template honours Ollama's `think` switch. " + ollama_default_note(thinking_default),
        "",
        LLAMA_SERVER_NOTE,
        "",
    ]


def tool_rows_trained(stages: Mapping[str, Upstream]) -> int:
    """The SFT rows of the run that offer tools or hold a tool loop (``tool_rows_kept`` of every sft stage: a row two
    stages train counts twice, as the stages keep no row identities in common)."""
    return sum(up.result.data.total.tool_rows_kept for up in stages.values() if isinstance(up.result, SFTResult))


# The card's tool-calling example: one tool, the model's call of it and the tool's result. The card's code is
# written from these alone, and a test runs that code on a baked tokenizer of each shipped template.
TOOL_EXAMPLE_TOOLS: list[dict[str, Any]] = [{"type": "function", "function": {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city's name."}},
                   "required": ["city"]},
}}]
TOOL_EXAMPLE_QUESTION = "What is the weather in Jakarta right now?"
TOOL_EXAMPLE_CALL: dict[str, Any] = {"role": "assistant", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Jakarta"}}}]}
TOOL_EXAMPLE_RESULT: dict[str, Any] = {"role": "tool", "name": "get_weather", "content": "31 °C, sunny"}

# How each shipped template writes a call in the model's reply (chat_templates/README.md, "Tools").
_CALL_FORMATS = {
    "llama3_thinking": "The model answers a turn that calls a tool with the call alone: one JSON object, the "
    "arguments under `parameters` (Llama 3.1's format, one call per turn).",
    "chatml_thinking": "The model writes each call in a `<tool_call>` block, after any text of its reply, the "
    "arguments under `arguments` (Qwen2.5's format; several calls per turn).",
}


def written_tool_call(tokenizer: Any) -> str:
    """The example's call (:data:`TOOL_EXAMPLE_CALL`) as ``tokenizer``'s chat template writes it in the model's
    reply, after the think block (thinking off), without the end-of-turn token. Raises ValueError when the
    template cannot write it after its own generation prompt."""
    from tempa.alignment.completions import written_turn
    from tempa.chat_templates.thinking import mode_kwargs

    question = [{"role": "user", "content": TOOL_EXAMPLE_QUESTION}]
    _, text = written_turn(tokenizer, question, TOOL_EXAMPLE_CALL, {"tools": TOOL_EXAMPLE_TOOLS, **mode_kwargs("off")})
    return text


def tool_calling_snippet(rows: int, chat_template: str, call: str | None) -> list[str]:
    """The usage section's "Tool calling" part for a model whose SFT data had ``rows`` tool rows; ``call``: the
    example's call as the model's template writes it (:func:`written_tool_call`), None where it could not."""

    def literal(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)  # JSON without true/false/null is Python

    # One line per key of each function: short lines a reader can edit, the same objects.
    tools_literal = ["tools = ["]
    for tool in TOOL_EXAMPLE_TOOLS:
        rest = {key: value for key, value in tool.items() if key != "function"}
        tools_literal += [f"    {{{literal(rest)[1:-1]}, \"function\": {{",
                          *(f"        {literal(key)}: {literal(value)}," for key, value in tool["function"].items()),
                          "    }},"]
    tools_literal.append("]")

    generate = [
        "inputs = tokenizer.apply_chat_template(",
        "    messages,",
        "    tools=tools,",
        "    add_generation_prompt=True,",
        '    return_tensors="pt",',
        "    return_dict=True,",
        ").to(model.device)",
        "output = model.generate(**inputs, max_new_tokens=512)",
        'reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)',
    ]
    written = [f"For the example below the reply (with thinking on, after `{THINK_CLOSE}`) reads:", "", "```text", call,
               "```", ""] if call is not None else []
    return [
        "### Tool calling",
        "",
        f"The SFT stages trained {rows} rows that offer tools or hold a tool loop (counted in each stage that trained",
        "them: see the data mix).",
        "Pass OpenAI-style tool definitions as `tools=[...]` to `apply_chat_template`; the chat template writes them",
        "into the prompt. " + _CALL_FORMATS.get(chat_template, "The model writes a call as its chat template renders "
                                                 "an assistant message's `tool_calls`."),
        "",
        *written,
        "Parse the call out of the reply, add it to `messages` as an assistant message with `tool_calls` and the",
        "reasoning that came before it as `reasoning_content` (the template shows the reasoning of the turns after",
        "the last user message, so the model reads its own plan while it works through the tool loop), add the",
        'tool\'s result as a `"role": "tool"` message, and generate again for the answer:',
        "",
        "```python",
        *tools_literal,
        f'messages = [{{"role": "user", "content": {literal(TOOL_EXAMPLE_QUESTION)}}}]',
        *generate,
        f'reasoning, _, call = reply.rpartition("{THINK_CLOSE}")  # the reasoning, then the call',
        "print(call)",
        "",
        f'messages.append({{"role": "assistant", "reasoning_content": reasoning.strip(), "tool_calls": '
        f'{literal(TOOL_EXAMPLE_CALL["tool_calls"])}}})  # the call, parsed',
        f"messages.append({literal(TOOL_EXAMPLE_RESULT)})  # what the tool returned",
        *generate,
        "print(reply)  # the answer",
        "```",
        "",
    ]


def shipped_stage(start_model: Path | str, stages: Mapping[str, Upstream]) -> str | None:
    """The stage whose model ``start_model`` (the folder the bake ships) is; ``None``: the base model."""
    target = Path(start_model).resolve()
    for name, up in reversed(list(stages.items())):
        if up.result.model is not None and Path(up.result.model).resolve() == target:
            return name
    return None


def _made_by(path: Path, stages: Mapping[str, Upstream]) -> str | None:
    """The stage whose model, or one of whose checkpoints, ``path`` is; None: none of them (the base model, a folder
    from elsewhere)."""
    target = Path(path).resolve()
    for name, up in stages.items():
        paths = [up.result.model, *(checkpoint.path for checkpoint in up.result.checkpoints)]
        if any(found is not None and Path(found).resolve() == target for found in paths):
            return name
    return None


def lineage(stages: Mapping[str, Upstream], shipped: str | None) -> set[str]:
    """The stages the model of stage ``shipped`` descends from, itself included (None: the base model's, no stage),
    by what the stages' typed results and configs record: the stage each started from (its ``from``, else the one
    before it), the stages it reads (its data's), and for a merge the stages whose models or checkpoints it merged
    (its summary's paths) and the evaluation that chose them. An evaluation counts where a model passed through it or
    where it chose a merge's inputs; the candidates it scored besides are not in the model."""
    names = list(stages)
    found: set[str] = set()
    todo: list[tuple[str | None, bool]] = [(shipped, True)]  # (stage, whether what it started from is in the model)
    while todo:
        name, follow = todo.pop()
        if name is None or name not in stages or name in found:
            continue
        found.add(name)
        up = stages[name]
        if isinstance(up.result, MergeResult):
            summary = up.result.summary
            models = [*summary.models, *([summary.base_model] if summary.base_model is not None else [])]
            todo += [(_made_by(model.path, stages), True) for model in models]
            if summary.selection is not None:
                todo.append((summary.selection.evaluate_stage, False))
            continue
        if not follow:
            continue
        index = names.index(name)
        todo.append((up.config.from_ if up.config.from_ is not None else (names[index - 1] if index else None), True))
        if not isinstance(up.result, EvaluateResult):  # an evaluation reads the candidates it scores, chosen or not
            todo += [(read.stage, True) for read in up.config.reads(names[:index])]
    return found


def _weights_line(stages: Mapping[str, Upstream], weights_from: str | None) -> list[str]:
    """One sentence naming what the folder's weights are (every stage is listed below, only one ships)."""
    up = stages.get(weights_from) if weights_from else None
    if up is None:
        return ["The weights in this folder are the base model's: no stage of the run changed them.", ""]
    what = up.kind
    if isinstance(up.result, MergeResult):
        names = ", ".join(f"`{model.name}`" for model in up.result.summary.models)
        what = f"a {up.result.summary.method} merge of {names}"
    return [f"The weights in this folder are the model of stage `{weights_from}` ({what}).", ""]


def card_recipe(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """What the model card shows of the resolved recipe, as it shows it: its name, description, base model, template
    and every stage's settings, secrets redacted, local paths by name (a recipe folder moved bakes nothing again). Not
    `launch`: the hardware a run used may change between the runs of its stages without redoing any, so the card
    would name the last run's, not the one that trained. The bake's fingerprint holds it."""
    return _by_name(redact({key: value for key, value in resolved.items() if key != "launch"}))


def _by_name(value: Any) -> Any:
    if isinstance(value, str):
        return strip_local_paths(value)
    if isinstance(value, Mapping):
        return {key: _by_name(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_by_name(item) for item in value]
    return value


def render_model_card(
    card: ModelCardConfig,
    *,
    recipe: RecipeInfo,
    stages: Mapping[str, Upstream],
    template_checks: list[dict[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
    thinking_default: str = "on",
    weights_from: str | None = "",
    tool_call: str | None = None,
    gguf: bool = True,
    serving: bool = True,
) -> str:
    """The card's markdown, scrubbed of secrets.

    ``weights_from`` names the stage whose model the folder holds (``None``: the base model's weights; see
    :func:`shipped_stage`); the card then says so in one sentence. When the SFT stages trained tool rows the
    usage section says how to call the model with tools; ``tool_call``: the example's call as the baked template
    writes it (:func:`written_tool_call`). ``gguf``: whether ``tempa export gguf`` writes the model (else the usage
    section gives the route through llama.cpp's converter).
    """
    resolved = card_recipe(recipe.resolved)
    title = card.title or recipe.name
    front: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation",
                             "tags": ["tempa", *card.tags]}
    if card.license:
        front["license"] = card.license
    front.update({key: value for key, value in (("license_name", card.license_name),
                                                ("license_link", card.license_link)) if value})
    if card.languages:
        front["language"] = list(dict.fromkeys(hub_language(code) for code in card.languages))
    if not recipe.base_model.startswith(("/", "tempa:")):
        front["base_model"] = recipe.base_model
    shipped = weights_from or None  # "" (unknown) and None (the base model) alike: no stage
    in_model = None if weights_from == "" else lineage(stages, shipped)
    # the datasets of the stages the model descends from (a side experiment's data is not in it)
    datasets = hub_datasets({name: up for name, up in stages.items() if in_model is None or name in in_model})
    if datasets:
        front["datasets"] = datasets

    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {title}",
        "",
    ]
    if card.description or recipe.description:
        lines += [str(card.description or recipe.description), ""]
    lines += [f"Post-trained with tempa from base model `{recipe.base_model}` with the `{recipe.chat_template}` "
              "chat template.", ""]
    if weights_from != "":  # "" (the default): the caller does not know; None: the base model's weights
        lines += _weights_line(stages, weights_from)
    lines += usage_snippet(card.model_id or USAGE_PLACEHOLDER, thinking_default,
                           saved_with=importlib.metadata.version("transformers"), languages=card.languages, gguf=gguf,
                           serving=serving)
    tool_rows = tool_rows_trained(stages)
    if tool_rows:
        lines += tool_calling_snippet(tool_rows, recipe.chat_template, tool_call)
    lines += _stages_section(stages, in_model)
    lines += _mix_section(stages, in_model)
    lines += _eval_section(stages, shipped)
    lines += _merge_section(stages, recipe.base_model, shipped, in_model)
    if template_checks:
        passed = sum(1 for check in template_checks if check.get("passed"))
        lines += ["## Chat template checks", "", f"{passed}/{len(template_checks)} checks passed.", ""]
        lines += _table(
            ["check", "passed"],
            [[c.get("name"), "yes" if c.get("passed") else "NO"] for c in template_checks],
        )
        lines.append("")
    lines += _training_arguments_section(stages, in_model)
    if resolved:
        lines += [
            "## Recipe",
            "",
            "<details><summary>recipe.resolved.yaml</summary>",
            "",
            "```yaml",
            yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True).strip(),
            "```",
            "",
            "</details>",
            "",
        ]
    if card.extra:
        lines += [card.extra.strip(), ""]
    # The card is published: this machine's folders (data files, base model) are named, not located.
    return scrub(strip_local_paths("\n".join(lines)), environ, secret_env_names(recipe.resolved))
