"""tempa.chat_templates: the thinking-mode chat templates and the tools that render, check and bake them.

The ground floor of tempa: imports no other tempa package. See README.md in this folder.
"""

from tempa.chat_templates.baking import GenerationDefaults, PadChoice, bake_tokenizer, choose_pad_token
from tempa.chat_templates.checks import CheckResult, check_tokenizer
from tempa.chat_templates.rendering import (
    TokenizedChat,
    render_text,
    render_with_generation_spans,
    tokenize_chat,
)
from tempa.chat_templates.replies import reply_message
from tempa.chat_templates.templates import (
    TemplateDefaults,
    TemplateNotFoundError,
    available_templates,
    load_template,
    template_defaults,
    with_defaults,
)
from tempa.chat_templates.thinking import end_of_turn_token, mode_kwargs, split_reasoning

__all__ = [
    "CheckResult",
    "GenerationDefaults",
    "PadChoice",
    "TemplateDefaults",
    "TemplateNotFoundError",
    "TokenizedChat",
    "available_templates",
    "bake_tokenizer",
    "check_tokenizer",
    "choose_pad_token",
    "end_of_turn_token",
    "load_template",
    "mode_kwargs",
    "render_text",
    "render_with_generation_spans",
    "reply_message",
    "split_reasoning",
    "template_defaults",
    "tokenize_chat",
    "with_defaults",
]
