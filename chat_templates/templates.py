"""The shipped chat templates: finding them by name or path, and reading facts off their text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tempa.chat_templates.thinking import MODES, ThinkingMode

# The baked-default lines of tempa's templates (one per setting, at the top), which `bake` rewrites.
_DEFAULT_LINE = re.compile(r'^\{%- set default_(thinking_mode|stock_preamble) = ("on"|"off"|true|false) %\}$', re.M)


class TemplateNotFoundError(ValueError):
    """A template name or path that names no template."""


def available_templates() -> list[str]:
    """Names of the templates shipped in this package (the ``*.jinja`` files), sorted."""
    folder = resources.files("tempa.chat_templates")
    return sorted(entry.name[: -len(".jinja")] for entry in folder.iterdir() if entry.name.endswith(".jinja"))


def load_template(name_or_path: str | Path) -> str:
    """The text of a shipped template (by name, e.g. ``"llama3_thinking"``) or of a ``.jinja`` file.

    A shipped name wins over a file of the same name in the working directory, so a recipe that says
    ``llama3_thinking`` means the same thing everywhere. Raises :class:`TemplateNotFoundError` naming the path
    and the known names, and ``ValueError`` naming the file and line for a template that does not compile.
    """
    text, origin = read_template(name_or_path)
    _check_compiles(text, origin)
    return text


def read_template(name_or_path: str | Path) -> tuple[str, str]:
    """(text, what an error calls it) of a template, as :func:`load_template` finds it, not compiled: a recipe's
    load reads its ``default_*`` lines before transformers is imported."""
    key = str(name_or_path)
    known = available_templates()
    if key in known:
        text = (resources.files("tempa.chat_templates") / f"{key}.jinja").read_text(encoding="utf-8")
        origin = f"template {key!r}"
    else:
        path = Path(key).expanduser()
        if path.is_dir():
            raise TemplateNotFoundError(f"chat template {key!r} is a folder; expected a .jinja file")
        if not path.is_file():
            raise TemplateNotFoundError(
                f"chat template {key!r}: no such file, and not a known template name "
                f"(known: {', '.join(known)})"
            )
        text = path.read_text(encoding="utf-8")
        origin = str(path)
    return text, origin


@dataclass(frozen=True)
class TemplateDefaults:
    """What a template does when a render passes no kwarg: its thinking mode and whether it writes the stock
    Llama 3.1 system preamble. A recipe's ``thinking_default`` / ``stock_preamble`` bake these in."""

    thinking_mode: ThinkingMode = "on"
    stock_preamble: bool = False


def template_defaults(template: str) -> TemplateDefaults:
    """The defaults ``template`` declares in its ``default_*`` lines (a template without them: on, no preamble)."""
    values = {name: value for name, value in _DEFAULT_LINE.findall(template)}
    return TemplateDefaults(
        thinking_mode=values.get("thinking_mode", '"on"').strip('"'),  # type: ignore[arg-type]
        stock_preamble=values.get("stock_preamble") == "true",
    )


# The recipe field that sets each `default_*` line of a template, and the value of it that needs the line.
RECIPE_DEFAULTS = {"thinking_mode": ("thinking_default", "off"), "stock_preamble": ("stock_preamble", "true")}
_NOTHING_TO_SET = {"thinking_mode": "has no default thinking mode to set",
                   "stock_preamble": "has no stock preamble to switch on"}


def defaults_problem(template: str, defaults: TemplateDefaults, origin: str) -> tuple[str, str] | None:
    """(the recipe field, why) when ``defaults`` asks ``template`` for a default it has no ``default_*`` line for:
    such a template can only keep the built-in default (on, no preamble). None when it can take ``defaults``."""
    wanted = {"thinking_mode": f'"{defaults.thinking_mode}"', "stock_preamble": "true" if defaults.stock_preamble else "false"}
    builtin = {"thinking_mode": '"on"', "stock_preamble": "false"}
    present = {name for name, _ in _DEFAULT_LINE.findall(template)}
    for name, value in wanted.items():
        if name not in present and value != builtin[name]:
            field, set_to = RECIPE_DEFAULTS[name]
            having = [shipped for shipped in available_templates()
                      if name in {n for n, _ in _DEFAULT_LINE.findall(read_template(shipped)[0])}]
            return field, (f"{origin} {_NOTHING_TO_SET[name]} (no '{{%- set default_{name} = ... %}}' line), so "
                           f"{field}: {set_to} cannot be baked into it: remove {field}, or use a chat template with "
                           f"that line ({', '.join(having)})")
    return None


def with_defaults(template: str, defaults: TemplateDefaults, origin: str = "the chat template") -> str:
    """``template`` with its ``default_*`` lines set to ``defaults``.

    A template without such a line can only keep the built-in default (on, no preamble); asking for another
    raises ``ValueError`` (:func:`defaults_problem`'s why) instead of baking a default nobody renders.
    """
    if defaults.thinking_mode not in MODES:
        raise ValueError(f"thinking default must be 'on' or 'off', got {defaults.thinking_mode!r}")
    problem = defaults_problem(template, defaults, origin)
    if problem is not None:
        raise ValueError(problem[1])
    wanted = {"thinking_mode": f'"{defaults.thinking_mode}"', "stock_preamble": "true" if defaults.stock_preamble else "false"}
    return _DEFAULT_LINE.sub(lambda m: f"{{%- set default_{m.group(1)} = {wanted[m.group(1)]} %}}", template)


def _check_compiles(text: str, origin: str) -> None:
    # Compile with transformers' own sandboxed environment: it is the renderer that will run the template, and
    # it knows the {% generation %} tag that plain Jinja rejects.
    import jinja2

    from tempa.chat_templates.rendering import compile_template

    try:
        compile_template(text)
    except jinja2.TemplateSyntaxError as error:
        raise ValueError(f"{origin}: line {error.lineno}: {error.message}") from None
