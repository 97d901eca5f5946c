"""The final model card (README.md): recipe, stages, data mix, evaluation, merge, usage.

Everything it shows is read from the run directory. Nothing secret may reach it: values under
secret-looking keys are replaced, and the finished text is scrubbed of every secret-looking
environment value and of token-shaped strings (hub/OpenAI/W&B keys, bearer tokens).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tempa.recipes.rundir import RESOLVED_RECIPE

REDACTED = "<redacted>"
_SECRET_KEY_RE = re.compile(
    r"(api[_-]?key|apikey|token|secret|password|passwd|credential|auth|private[_-]?key|access[_-]?key|cookie)",
    re.IGNORECASE,
)
# Keys that contain a secret-looking word but hold harmless numbers/settings.
_HARMLESS_KEYS = re.compile(
    r"(max_new_tokens|max_tokens|num_tokens|tokenizer.*|.*_token_id|.*token_ids|pad_token|eos_token|"
    r"bos_token|tokens_per_.*|.*_tokens|author.*)",
    re.IGNORECASE,
)
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


class ModelCardConfig(BaseModel):
    """What the model card says beyond what the run directory records."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, description="Card title (default: the recipe's name).")
    model_id: str | None = Field(
        default=None, description="Hub id used in the usage snippet (default: a local path placeholder)."
    )
    license: str | None = Field(default=None, description="License id for the card's metadata.")
    languages: list[str] = Field(default_factory=list, description="Language codes for the card's metadata.")
    tags: list[str] = Field(default_factory=list, description="Extra tags for the card's metadata.")
    description: str | None = Field(default=None, description="A paragraph about the model.")
    extra: str | None = Field(default=None, description="Markdown appended at the end of the card.")


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY_RE.search(key)) and not _HARMLESS_KEYS.fullmatch(key)


def redact(value: Any) -> Any:
    """A copy of ``value`` with every text value under a secret-looking key replaced by ``<redacted>``.

    Numbers are never secrets (``tokens_in``, ``rows_tokenized`` are counts), so only strings go.
    """
    if isinstance(value, Mapping):
        return {
            key: (
                REDACTED if is_secret_key(str(key)) and isinstance(item, str) and item else redact(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Remove secret-looking environment values and token-shaped strings from ``text``."""
    environ = os.environ if environ is None else environ
    for key, value in environ.items():
        if len(value) >= 8 and _SECRET_KEY_RE.search(key) and value in text:
            text = text.replace(value, REDACTED)
    for pattern in TOKEN_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)[:80]
    return str(value).replace("|", "\\|").replace("\n", " ")


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


def _stages_section(stage_dirs: Mapping[str, Path]) -> list[str]:
    rows = []
    for name, folder in stage_dirs.items():
        manifest = _read_json(Path(folder) / "manifest.json") or {}
        duration = manifest.get("duration_s")
        rows.append(
            [
                name,
                manifest.get("kind", ""),
                manifest.get("status", ""),
                f"{duration:.0f}s" if isinstance(duration, (int, float)) else "",
                _headline_metrics(manifest.get("metrics") or {}),
            ]
        )
    if not rows:
        return []
    return ["## Stages", "", *_table(["stage", "kind", "status", "duration", "metrics"], rows), ""]


def _mix_section(stage_dirs: Mapping[str, Path]) -> list[str]:
    lines: list[str] = []
    for name, folder in stage_dirs.items():
        mix = _read_json(Path(folder) / "data" / "mix.json")
        if mix is None:
            continue
        mix = redact(mix)
        lines += [f"### {name}", ""]
        sources = mix.get("sources", mix) if isinstance(mix, dict) else mix
        if isinstance(sources, dict) and sources and all(isinstance(v, dict) for v in sources.values()):
            columns = list(dict.fromkeys(k for v in sources.values() for k in v))
            lines += _table(
                ["source", *columns], [[src, *(v.get(c, "") for c in columns)] for src, v in sources.items()]
            )
        elif isinstance(sources, list) and sources and all(isinstance(v, dict) for v in sources):
            columns = list(dict.fromkeys(k for v in sources for k in v))
            lines += _table(columns, [[v.get(c, "") for c in columns] for v in sources])
        else:
            lines += ["```json", json.dumps(mix, indent=2, ensure_ascii=False), "```"]
        lines.append("")
    return ["## Data mix", "", *lines] if lines else []


def _eval_section(stage_dirs: Mapping[str, Path]) -> list[str]:
    """The latest leaderboard (a merge stage's includes the merged model)."""
    for name, folder in reversed(list(stage_dirs.items())):
        board = Path(folder) / "leaderboard.md"
        if board.is_file():
            text = board.read_text(encoding="utf-8").strip()
            text = re.sub(r"^## .*\n\n", "", text)
            return ["## Evaluation", "", f"From stage `{name}`.", "", text, ""]
    return []


def _merge_section(stage_dirs: Mapping[str, Path]) -> list[str]:
    lines: list[str] = []
    for name, folder in stage_dirs.items():
        summary = _read_json(Path(folder) / "merge_summary.json")
        if not summary:
            continue
        lines += [f"Stage `{name}`: **{summary.get('method')}** merge of:", ""]
        for model in summary.get("models", []):
            knobs = ", ".join(f"{k}={_cell(v)}" for k, v in model.items() if k not in ("name", "path"))
            lines.append(f"- `{model.get('name')}`" + (f" ({knobs})" if knobs else ""))
        if summary.get("base_model"):
            lines.append(f"- base: `{summary['base_model'].get('name')}`")
        selection = summary.get("selection")
        if selection:
            lines += [
                "",
                f"Chosen as the top {selection.get('top_k')} of `{selection.get('evaluate_stage')}` "
                f"by `{selection.get('metric')}`: "
                + ", ".join(f"{k} = {_cell(v)}" for k, v in (selection.get("values") or {}).items()),
            ]
        if summary.get("reevaluation"):
            re_eval = summary["reevaluation"]
            verdict = "improved on" if summary.get("merge_helped") else "did not improve on"
            lines += [
                "",
                f"The merge scored {_cell(re_eval['merged'])} on `{re_eval['metric']}` and {verdict} "
                f"its best input ({_cell(re_eval['best_input'])}).",
            ]
        lines.append("")
    return ["## Merge", "", *lines] if lines else []


def usage_snippet(model_id: str, thinking_default: str = "on") -> list[str]:
    other = "off" if thinking_default == "on" else "on"
    return [
        "## Usage",
        "",
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
        'messages = [{"role": "user", "content": "Apa ibu kota Indonesia?"}]',
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
        "lists it among the eos ids. `tempa export gguf` writes a GGUF (llama.cpp) and an Ollama Modelfile",
        "whose template honours Ollama's `think` switch and falls back to the same default.",
        "",
    ]


def render_model_card(
    card: ModelCardConfig,
    *,
    run_dir: Path,
    stage_dirs: Mapping[str, Path],
    template_checks: list[dict[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
    thinking_default: str = "on",
) -> str:
    """The card's markdown, scrubbed of secrets."""
    recipe_path = Path(run_dir) / RESOLVED_RECIPE
    recipe: dict[str, Any] = {}
    if recipe_path.is_file():
        loaded = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
        recipe = redact(loaded) if isinstance(loaded, dict) else {}
    title = card.title or recipe.get("name") or Path(run_dir).name
    front = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": ["tempa", *card.tags]}
    if card.license:
        front["license"] = card.license
    if card.languages:
        front["language"] = card.languages
    if isinstance(recipe.get("base_model"), str) and not recipe["base_model"].startswith(("/", "tempa:")):
        front["base_model"] = recipe["base_model"]

    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {title}",
        "",
    ]
    if card.description or recipe.get("description"):
        lines += [str(card.description or recipe.get("description")), ""]
    lines += [
        f"Post-trained with tempa from base model `{recipe.get('base_model', 'unknown')}`"
        + (
            f" with the `{recipe['chat_template']}` chat template."
            if isinstance(recipe.get("chat_template"), str)
            else "."
        ),
        "",
    ]
    lines += usage_snippet(card.model_id or "path/to/this/folder", thinking_default)
    lines += _stages_section(stage_dirs)
    lines += _mix_section(stage_dirs)
    lines += _eval_section(stage_dirs)
    lines += _merge_section(stage_dirs)
    if template_checks:
        passed = sum(1 for check in template_checks if check.get("passed"))
        lines += ["## Chat template checks", "", f"{passed}/{len(template_checks)} checks passed.", ""]
        lines += _table(
            ["check", "passed"],
            [[c.get("name"), "yes" if c.get("passed") else "NO"] for c in template_checks],
        )
        lines.append("")
    if recipe:
        lines += [
            "## Recipe",
            "",
            "<details><summary>recipe.resolved.yaml</summary>",
            "",
            "```yaml",
            yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).strip(),
            "```",
            "",
            "</details>",
            "",
        ]
    if card.extra:
        lines += [card.extra.strip(), ""]
    # The card is published: this machine's folders (data files, base model) are named, not located.
    return scrub(strip_local_paths("\n".join(lines)), environ)
