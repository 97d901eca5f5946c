"""``tempa template render|check|bake``: the chat-template tools on the command line.

``register(subparsers)`` adds the ``template`` command to tempa's CLI; ``main(argv)`` runs it standalone
(``python -m tempa.chat_templates.cli template render ...``). Errors print one line on stderr naming the file or
option and what was expected, and exit 1, as every tempa command does (2 is argparse's, for a usage error).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tempa.chat_templates.templates import available_templates, load_template

EXIT_FAILED_CHECKS = 1
EXIT_ERROR = 1


class CliError(Exception):
    """A user-facing error: printed as one line, never as a traceback."""


# A conversation file's messages and tools, read as a training row is read (a think block in an answer as its
# reasoning, tool-call arguments as JSON text); raises ValueError naming what is wrong.
RowReader = Callable[[list[dict[str, Any]], "list[dict[str, Any]] | None"],
                     "tuple[list[dict[str, Any]], list[dict[str, Any]] | None]"]


def register(subparsers: Any, *, read_row: RowReader | None = None) -> None:
    """Add the ``template`` command (``render``, ``check``, ``bake``) to an argparse subparsers object. ``read_row``:
    how `render --tokens` reads the conversation before it shows the samples SFT trains (tempa's CLI passes the SFT
    row reader, which lives on a floor above this package); without it, the messages as the file gives them."""
    parser = subparsers.add_parser("template", help="render, check and bake chat templates")
    # required: a bare `tempa template` gets argparse's error line (exit 2), as a bare `tempa export` does
    commands = parser.add_subparsers(title="template commands", metavar="{render,check,bake}", dest="template_command",
                                     required=True)
    known = ", ".join(available_templates())

    render = commands.add_parser("render", help="print a conversation as the template renders it")
    render.add_argument(
        "--template", help=f"template name ({known}) or .jinja path; default: the tokenizer's"
    )
    render.add_argument(
        "--messages",
        required=True,
        type=Path,
        help='JSON file: a list of messages, or {"messages": [...], "tools": [...]}',
    )
    render.add_argument(
        "--thinking", choices=("on", "off"), help="thinking_mode (default: the template's baked default; with "
        "--tokens, an SFT source's thinking_mode, on unless given, as SFT trains a source that sets none)"
    )
    render.add_argument("--generation-prompt", action="store_true", help="append the generation prompt")
    render.add_argument(
        "--tokenizer", type=Path, help="tokenizer folder (render through it; needed for --tokens)"
    )
    render.add_argument(
        "--tokens", action="store_true", help="print the token pieces of each sample tempa's SFT trains the "
        "conversation as (a turn before a later user message trains in its own), trained tokens marked; with "
        "--generation-prompt, the one rendering with its assistant tokens marked"
    )
    render.set_defaults(func=_guarded("render", _render), read_row=read_row)

    check = commands.add_parser("check", help="check every template invariant against a tokenizer")
    check.add_argument(
        "--tokenizer",
        required=True,
        type=Path,
        help="tokenizer folder (its generation_config.json is used if present)",
    )
    check.add_argument("--template", help=f"template name ({known}) or .jinja path; default: the tokenizer's")
    check.set_defaults(func=_guarded("check", _check))

    bake = commands.add_parser("bake", help="write a tokenizer with the template baked in, then check it")
    bake.add_argument("--tokenizer", required=True, type=Path, help="tokenizer folder to start from")
    bake.add_argument("--template", required=True, help=f"template name ({known}) or .jinja path")
    bake.add_argument(
        "--out", required=True, type=Path, help="output folder (must be empty unless --overwrite)"
    )
    bake.add_argument(
        "--model", type=Path, help="model folder: its generation_config.json is the starting point"
    )
    bake.add_argument(
        "--pad-token", help="pad token to use (default: keep a valid one, else pick or add one)"
    )
    bake.add_argument(
        "--thinking-default", choices=("on", "off"), help="the mode a render without a thinking kwarg uses "
        "(default: the template's, on)"
    )
    bake.add_argument(
        "--stock-preamble", action="store_true",
        help="write Llama 3.1 Instruct's own system block (Cutting Knowledge Date / Today Date) in every prompt",
    )
    bake.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    bake.set_defaults(func=_guarded("bake", _bake))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m tempa.chat_templates.cli template ...``."""
    parser = argparse.ArgumentParser(prog="tempa", description="tempa chat-template tools")
    subparsers = parser.add_subparsers(title="commands", metavar="{template}", dest="command", required=True)
    register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


def _guarded(
    command: str, handler: Callable[[argparse.Namespace], int]
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import jinja2

        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        try:
            return handler(args)
        except (CliError, ValueError, OSError, jinja2.TemplateError) as error:
            message = " ".join(str(error).split())  # one line, whatever the source
            print(f"tempa template {command}: error: {message}", file=sys.stderr)
            return EXIT_ERROR

    return run


# ---------------------------------------------------------------- render


def _render(args: argparse.Namespace) -> int:
    import jinja2

    from tempa.chat_templates.rendering import render_text, render_with_tokenizer, tokenize_chat
    from tempa.chat_templates.thinking import mode_kwargs
    from tempa.chat_templates.token_view import format_token_view, token_pieces

    messages, tools = _read_messages(args.messages)
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None
    if args.tokens and tokenizer is None:
        raise CliError("--tokens needs --tokenizer DIR (the pieces are that tokenizer's tokens)")
    template = _resolve_template(args.template, tokenizer, args.tokenizer)
    kwargs = {"tools": tools, "add_generation_prompt": args.generation_prompt, **mode_kwargs(args.thinking)}
    try:
        if args.tokens:
            color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
            marking = "green" if color else "between [[ ]]"
            if args.read_row is not None:
                try:
                    messages, tools = args.read_row(messages, tools)
                except ValueError as error:
                    raise CliError(f"{args.messages}: {error}") from None
                kwargs["tools"] = tools
            if args.generation_prompt:  # a prompt to answer: the template's own mask of this one rendering
                chat = tokenize_chat(tokenizer, messages, template=template, **kwargs)
                print(format_token_view(token_pieces(tokenizer, chat.input_ids), chat.assistant_mask, color=color))
                print(f"-- assistant tokens ({marking}): {sum(chat.assistant_mask)} of {len(chat.input_ids)}; "
                      f"thinking_mode={args.thinking or 'default'}")
                return 0
            samples = training_samples(tokenizer, template, messages, tools, thinking=args.thinking != "off")
            if not samples:
                raise CliError(f"{args.messages}: no assistant turn, so nothing trains; --generation-prompt shows the "
                               "prompt's tokens")
            for number, sample in enumerate(samples, 1):
                turns = ", ".join(map(str, sorted(sample.turns)))
                print(f"-- sample {number} of {len(samples)}: trains turn{'s' if len(sample.turns) > 1 else ''} "
                      f"{turns} (thinking {'on' if sample.thinking else 'off'})")
                print(format_token_view(token_pieces(tokenizer, sample.input_ids), sample.assistant_masks,
                                        color=color))
            trained = sum(sample.n_trained for sample in samples)
            total = sum(len(sample.input_ids) for sample in samples)
            print(f"-- trained ({marking}): {trained} of {total} tokens in {len(samples)} "
                  f"sample{'s' if len(samples) != 1 else ''}, as tempa's SFT trains this conversation; "
                  f"thinking_mode={'off' if args.thinking == 'off' else 'on'}")
        elif tokenizer is not None:
            print(render_with_tokenizer(tokenizer, messages, template=template, **kwargs))
        else:
            print(render_text(template, messages, **kwargs))
    except jinja2.TemplateError as error:
        raise CliError(f"{args.messages}: the template rejects this conversation: {error}") from None
    return 0


def training_samples(tokenizer: Any, template: str | None, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None, *, thinking: bool) -> list[Any]:
    """The samples tempa's SFT trains ``messages`` as (:func:`tempa.chat_templates.expand.expand`), first turn first:
    each assistant turn in the rendering inference gives it, so a history turn trains in a sample of its own with
    its reasoning, where the whole conversation's mask would mark it stripped."""
    from tempa.chat_templates.expand import expand
    from tempa.chat_templates.rendering import tokenize_chat
    from tempa.chat_templates.thinking import mode_kwargs

    def render(view: list[dict[str, Any]], on: bool, tools: list[dict[str, Any]] | None) -> tuple[list[int], list[int]]:
        chat = tokenize_chat(tokenizer, view, template=template, tools=tools, **mode_kwargs("on" if on else "off"))
        return chat.input_ids, chat.assistant_mask

    # the row reader's form: a turn that only calls tools has empty content
    turns = [{**message, "content": message.get("content") or ""} for message in messages]
    return list(reversed(expand(turns, thinking, render, tools)))


def _read_messages(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    from tempa.chat_templates.json_files import JsonFileError, read_json

    if not path.is_file():
        raise CliError(f"{path}: no such file (--messages expects a JSON file)")
    try:
        data = read_json(path, "a JSON list of messages")
    except JsonFileError as error:
        raise CliError(str(error)) from None
    tools = None
    if isinstance(data, dict):
        tools = data.get("tools")
        data = data.get("messages")
    if not isinstance(data, list) or not data or not all(isinstance(message, dict) for message in data):
        raise CliError(
            f'{path}: expected a non-empty JSON list of message objects, or an object with a "messages" list'
        )
    if tools is not None and not (isinstance(tools, list) and all(isinstance(tool, dict) for tool in tools)):
        raise CliError(f'{path}: "tools" must be a list of JSON schema objects')
    return data, tools


# ---------------------------------------------------------------- check


def _check(args: argparse.Namespace) -> int:
    from tempa.chat_templates.checks import check_tokenizer

    tokenizer = _load_tokenizer(args.tokenizer)
    template = _resolve_template(args.template, tokenizer, args.tokenizer)
    generation_config = _read_generation_config(args.tokenizer)
    results = check_tokenizer(tokenizer, template, generation_config=generation_config)
    width = max(len(result.name) for result in results)
    print(f"{'invariant':<{width}}  result  detail")
    for result in results:
        print(f"{result.name:<{width}}  {'PASS' if result.passed else 'FAIL':<6}  {result.detail}")
    failed = sum(not result.passed for result in results)
    source = "generation_config.json" if generation_config is not None else "no generation_config.json"
    print(f"-- {len(results) - failed}/{len(results)} passed ({args.tokenizer}, {source})")
    return EXIT_FAILED_CHECKS if failed else 0


def _read_generation_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "generation_config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CliError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None


# ---------------------------------------------------------------- bake


def _bake(args: argparse.Namespace) -> int:
    from tempa.chat_templates.baking import bake_tokenizer
    from tempa.chat_templates.templates import TemplateDefaults

    _require_tokenizer_folder(args.tokenizer)
    if args.model is not None:
        _require_model_folder(args.model)
    defaults = None
    if args.thinking_default is not None or args.stock_preamble:
        defaults = TemplateDefaults(thinking_mode=args.thinking_default or "on", stock_preamble=args.stock_preamble)
    out = bake_tokenizer(
        args.tokenizer,
        args.template,
        args.out,
        model_dir=args.model,
        pad_token=args.pad_token,
        defaults=defaults,
        overwrite=args.overwrite,
    )
    print(f"baked {args.template} into {out} (all template checks passed)")
    return 0


# ---------------------------------------------------------------- shared


def _require_tokenizer_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise CliError(f"{folder}: no such folder (--tokenizer expects a tokenizer folder)")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise CliError(f"{folder}: not a tokenizer folder (no tokenizer.json or tokenizer_config.json)")


def _require_model_folder(folder: Path) -> None:
    # The bake reads --model's config.json for the embedding size an added pad token needs; without it that check
    # is skipped, silently, so a mistyped --model is refused instead.
    expected = "--model expects a model folder with config.json"
    if not folder.exists():
        raise CliError(f"{folder}: no such folder ({expected})")
    if not folder.is_dir():
        raise CliError(f"{folder}: a file, not a folder ({expected})")
    if not (folder / "config.json").is_file():
        raise CliError(f"{folder}: not a model folder: no config.json ({expected})")


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    _require_tokenizer_folder(folder)
    return AutoTokenizer.from_pretrained(folder)


def _resolve_template(name_or_path: str | None, tokenizer: Any, tokenizer_dir: Path | None) -> str:
    if name_or_path is not None:
        return load_template(name_or_path)
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        where = f"{tokenizer_dir} has no chat template" if tokenizer_dir else "no --tokenizer given"
        raise CliError(f"--template is required: {where}")
    return template


if __name__ == "__main__":
    sys.exit(main())
