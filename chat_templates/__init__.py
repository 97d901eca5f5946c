"""tempa.chat_templates: the thinking-mode chat templates and the tools that render, check and bake them.

The ground floor of tempa: imports no other tempa package. See README.md in this folder.
"""

from tempa.chat_templates.baking import PadChoice, bake_tokenizer, choose_pad_token
from tempa.chat_templates.checks import CheckResult, check_tokenizer
from tempa.chat_templates.rendering import (
    TokenizedChat,
    render_text,
    render_with_generation_spans,
    tokenize_chat,
)
from tempa.chat_templates.templates import (
    TemplateNotFoundError,
    available_templates,
    end_of_turn_token,
    load_template,
)

__all__ = [
    "CheckResult",
    "PadChoice",
    "TemplateNotFoundError",
    "TokenizedChat",
    "available_templates",
    "bake_tokenizer",
    "check_tokenizer",
    "choose_pad_token",
    "end_of_turn_token",
    "load_template",
    "render_text",
    "render_with_generation_spans",
    "tokenize_chat",
]
