"""The Ollama Modelfile TEMPLATE of a tempa chat template: the same turns, in Ollama's Go template language.

Ollama renders its own Go template, not the Jinja one in the GGUF, so each tempa template has a Go twin here
that writes the same text for what Ollama passes a template (its ``template.Values``: ``.System`` (all system
messages joined), ``.Messages`` (role, content, thinking, tool calls), ``.Tools``, ``.Think`` and
``.IsThinkSet``; see ollama's ``template/template.go``):

* the thinking mode is Ollama's ``think`` switch when the request sets it, else the template's baked default
  (the recipe's ``thinking_default``), with the same prefills as the Jinja template. Ollama 0.12.4 and later
  never leave it unset for a model whose template has thinking tags (server/routes.go sets ``think: true``),
  so there the baked default is reached only by older versions: see :func:`ollama_default_note`;
* the system prompt renders once, in the system block (system messages are not rendered again as turns);
* assistant turns after the last user message carry their ``thinking`` (an agent's tool loop) with thinking
  on; earlier ones render their answer only; tool calls and results as the Jinja template writes them (a
  Llama 3.1 message with two calls is refused, as there);
* the reasoning sits in ``<think>{{ .Thinking }}</think>`` inside ``range .Messages``, which is how Ollama
  infers a template's thinking tags, so it offers the model as thinking-capable and parses the reasoning
  out of replies when ``think`` is on.

What Go templates cannot reproduce (documented in chat_templates/README.md): Ollama passes text as given
where Jinja trims surrounding whitespace; tool-call arguments are written with sorted keys, nested
objects compact and ``<``, ``>``, ``&`` escaped as ``\\u003c``, ``\\u003e``, ``\\u0026`` (Go's encoding/json, behind
Ollama's ``json`` function), where Jinja keeps their order and characters (``tojson``); tool definitions are
compact JSON where llama3_thinking indents them; ``tools_in_user_message=false`` and ``date_string`` have
no Ollama equivalent (the preamble shows the stock template's default date).
"""

from __future__ import annotations

from tempa.chat_templates.templates import TemplateDefaults, load_template, template_defaults, with_defaults
from tempa.chat_templates.thinking import PREFILL, THINK_CLOSE, THINK_OPEN

# The per-request mode ($think), the last user message (reasoning renders after it), the first one (Llama
# 3.1 puts tool definitions there) and the previous role (ChatML groups consecutive tool results).
_HEAD = (
    "{{- $think := %s }}{{ if .IsThinkSet }}{{ $think = .Think }}{{ end }}"
    '{{ $lastUser := -1 }}{{ $firstUser := -1 }}{{ $prev := "" }}'
    '{{ range $i, $_ := .Messages }}{{ if eq .Role "user" }}{{ $lastUser = $i }}'
    "{{ if lt $firstUser 0 }}{{ $firstUser = $i }}{{ end }}{{ end }}{{ end }}"
)
# An assistant turn after the last user message: the prefill of the mode, then (on) its reasoning.
_LOOP_PREFIX = (
    "{{ if gt $i $lastUser }}{{ if $think }}" + THINK_OPEN + "\n{{ .Thinking }}{{ if .Thinking }}\n{{ end }}"
    + THINK_CLOSE + "\n\n{{ else }}" + PREFILL["off"] + "{{ end }}{{ end }}"
)
# Arguments as Jinja's tojson writes a flat object: {"key": value, ...} (Go ranges over a map in key order).
_ARGUMENTS = (
    '{{ "{" }}{{ $first := true }}{{ range $k, $v := .Function.Arguments }}{{ if not $first }}, {{ end }}'
    '{{ json $k }}: {{ json $v }}{{ $first = false }}{{ end }}{{ "}" }}'
)
# Llama 3.1 writes one call per assistant message and the Jinja template refuses more; Go templates cannot raise,
# but a failing builtin stops the render and Ollama returns its error, which quotes the call, sentence included.
_ONE_CALL = (
    '{{ if gt (len .ToolCalls) 1 }}{{ index "the Llama 3.1 format allows one tool call per assistant message" '
    "1000 }}{{ end }}"
)
_GENERATION_PROMPT = "{{ if $think }}" + PREFILL["on"] + "{{ else }}" + PREFILL["off"] + "{{ end }}"

_LLAMA3_TOOLS_INTRO = (
    "Given the following functions, please respond with a JSON for a function call with its proper arguments "
    'that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters": '
    'dictionary of argument name and its value}.Do not use variables.\n\n'
)
_CHATML_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\n<tools>{{ range .Tools }}\n{{ json . }}{{ end }}\n"
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call><|im_end|>\n"
)


def _llama3(defaults: TemplateDefaults) -> str:
    if defaults.stock_preamble:
        system = (
            "<|start_header_id|>system<|end_header_id|>\n\n{{ if .Tools }}Environment: ipython\n{{ end }}"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{{ .System }}<|eot_id|>"
        )
    else:
        system = (
            "{{ if or .System .Tools }}<|start_header_id|>system<|end_header_id|>\n\n"
            "{{ if .Tools }}Environment: ipython{{ if .System }}\n\n{{ end }}{{ end }}{{ .System }}<|eot_id|>{{ end }}"
        )
    return "".join([
        _HEAD % ("true" if defaults.thinking_mode == "on" else "false"),
        "<|begin_of_text|>",
        system,
        "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}",
        '{{ if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>\n\n',
        "{{ if and $.Tools (eq $i $firstUser) }}" + _LLAMA3_TOOLS_INTRO + "{{ range $.Tools }}{{ json . }}\n\n{{ end }}{{ end }}",
        "{{ .Content }}<|eot_id|>",
        '{{ else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>\n\n',
        _LOOP_PREFIX,
        _ONE_CALL,
        "{{ $content := .Content }}{{ .Content }}",
        '{{ range .ToolCalls }}{{ if $content }}\n{{ end }}{"name": {{ json .Function.Name }}, "parameters": '
        + _ARGUMENTS + "}{{ end }}",
        "{{ if not $last }}<|eot_id|>{{ end }}",
        '{{ else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>\n\n{{ .Content }}<|eot_id|>',
        "{{ end }}",
        '{{ if and (ne .Role "assistant") $last }}<|start_header_id|>assistant<|end_header_id|>\n\n'
        + _GENERATION_PROMPT + "{{ end }}",
        "{{ end }}",
    ])


def _chatml(defaults: TemplateDefaults) -> str:
    return "".join([
        _HEAD % ("true" if defaults.thinking_mode == "on" else "false"),
        "{{ if .Tools }}<|im_start|>system\n{{ if .System }}{{ .System }}\n\n{{ end }}" + _CHATML_TOOLS,
        "{{ else if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}",
        "{{ range $i, $_ := .Messages }}{{ $rest := slice $.Messages $i }}{{ $last := eq (len $rest) 1 }}",
        '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n',
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n',
        _LOOP_PREFIX,
        "{{ $content := .Content }}{{ .Content }}",
        "{{ range $j, $_ := .ToolCalls }}{{ if or $j $content }}\n{{ end }}"
        '<tool_call>\n{"name": {{ json .Function.Name }}, "arguments": ' + _ARGUMENTS + "}\n</tool_call>{{ end }}",
        "{{ if not $last }}<|im_end|>\n{{ end }}",
        '{{ else if eq .Role "tool" }}{{ if ne $prev "tool" }}<|im_start|>user{{ end }}'
        "\n<tool_response>\n{{ .Content }}\n</tool_response>"
        '{{ if or $last (ne (index $rest 1).Role "tool") }}<|im_end|>\n{{ end }}',
        "{{ end }}{{ $prev = .Role }}",
        '{{ if and (ne .Role "assistant") $last }}<|im_start|>assistant\n' + _GENERATION_PROMPT + "{{ end }}",
        "{{ end }}",
    ])


# The shipped templates that have a Go twin, by name.
_TWINS = {"llama3_thinking": _llama3, "chatml_thinking": _chatml}


def twin_name(chat_template: str) -> str | None:
    """The shipped template ``chat_template`` is, its baked defaults aside (``None``: another or an edited one).

    The whole text decides, not its end-of-turn token: a recipe's own .jinja in Llama 3 headers would otherwise
    get llama3_thinking's twin, and Ollama would render another prompt than the GGUF's template in llama.cpp.
    """
    defaults = template_defaults(chat_template)
    for name in _TWINS:
        try:
            if with_defaults(load_template(name), defaults) == chat_template:
                return name
        except ValueError:  # a default this template cannot take (chatml has no stock preamble)
            continue
    return None


# The first Ollama release that turns `think` on for a thinking-capable model when a request leaves it unset.
OLLAMA_THINK_ON_SINCE = "0.12.4"


def ollama_default_note(default: str) -> str:
    """What a request that leaves ``think`` unset gets in Ollama, for a template whose baked default is
    ``default``: one sentence for the Modelfile and the model card."""
    if default == "on":
        return "Ollama thinks by default, as the template's default ('on') does; send think: false to switch it off."
    return (f"The template's default mode is 'off', but Ollama {OLLAMA_THINK_ON_SINCE} and later turn thinking on "
            "for a request that leaves `think` unset: send think: false for the default's direct answers "
            "(older Ollama versions fall back to 'off').")


def ollama_template(chat_template: str) -> str:
    """The Go template that renders like ``chat_template`` (llama3_thinking or chatml_thinking, baked defaults
    included); ``ValueError`` for any other template (an edited copy too), which tempa has no Go twin of."""
    name = twin_name(chat_template)
    if name is None:
        raise ValueError(f"no Ollama template for this chat template: only tempa's {' and '.join(_TWINS)}, as "
                         "shipped, have a Go twin (not an edited copy or a template of another format)")
    return _TWINS[name](template_defaults(chat_template))
