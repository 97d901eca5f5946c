"""The shipped chat templates: finding them by name or path, and reading facts off their text."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# End-of-turn markers of the chat formats tempa knows, most specific first. The first one a template
# contains is the token its assistant turns end with (and so the token generation must stop on).
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")


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
    _check_compiles(text, origin)
    return text


def end_of_turn_token(template: str) -> str:
    """The token that ends an assistant turn in ``template`` (``<|eot_id|>`` for Llama 3, ``<|im_end|>`` for ChatML)."""
    for token in END_OF_TURN_TOKENS:
        if token in template:
            return token
    raise ValueError(
        f"cannot tell the end-of-turn token of this chat template: it contains none of {', '.join(END_OF_TURN_TOKENS)}"
    )


def _check_compiles(text: str, origin: str) -> None:
    # Compile with transformers' own sandboxed environment: it is the renderer that will run the template, and
    # it knows the {% generation %} tag that plain Jinja rejects.
    import jinja2

    from tempa.chat_templates.rendering import compile_template

    try:
        compile_template(text)
    except jinja2.TemplateSyntaxError as error:
        raise ValueError(f"{origin}: line {error.lineno}: {error.message}") from None
