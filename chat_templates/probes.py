"""The conversations ``check_tokenizer`` renders: valid ones that span the invariants' cases, and invalid ones.

Every reasoning text is unique, so a check can tell by substring search which turn's reasoning leaked where.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tempa.chat_templates.thinking import MODES, THINK_CLOSE, THINK_OPEN

__all__ = ["INVALID_INPUTS", "MODES", "PROBES", "WEATHER_TOOL", "InvalidInput", "Probe"]

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}


@dataclass(frozen=True)
class Probe:
    """A valid conversation that ends in the assistant turn being trained.

    ``final_reasoning`` is the reasoning of that last turn ("" if none); ``history_reasoning`` the reasoning
    of assistant turns before the last user message, which must never render; ``loop_reasoning`` that of
    earlier assistant turns after it (a tool loop), which renders with thinking on and only then.
    """

    name: str
    messages: list[dict[str, Any]]
    final_reasoning: str = ""
    history_reasoning: tuple[str, ...] = ()
    loop_reasoning: tuple[str, ...] = ()
    tools: list[dict[str, Any]] | None = None
    answer: str = field(default="")

    @property
    def prompt_messages(self) -> list[dict[str, Any]]:
        """The conversation without its last (assistant) turn: what inference is given."""
        return self.messages[:-1]


def _probes() -> list[Probe]:
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Jakarta"}}}
    return [
        Probe(
            name="single turn, reasoning",
            messages=[
                {"role": "user", "content": "What is 7 + 5?"},
                {"role": "assistant", "content": "12", "reasoning_content": "Seven plus five makes twelve."},
            ],
            final_reasoning="Seven plus five makes twelve.",
            answer="12",
        ),
        Probe(
            # A Japanese paragraph indent (U+3000) is text, not whitespace the templates trim: every engine keeps it.
            name="single turn, Japanese text with a paragraph indent",
            messages=[
                {"role": "user", "content": "\u3000東京の天気は？"},
                {"role": "assistant", "content": "\u3000晴れです。", "reasoning_content": "\u3000天気を答える。"},
            ],
            final_reasoning="\u3000天気を答える。",
            answer="\u3000晴れです。",
        ),
        Probe(
            name="single turn, no reasoning",
            messages=[
                {"role": "user", "content": "Say hello."},
                {"role": "assistant", "content": "Hello!"},
            ],
            answer="Hello!",
        ),
        Probe(
            name="system prompt, reasoning",
            messages=[
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "Capital of Indonesia?"},
                {"role": "assistant", "content": "Jakarta.", "reasoning": "The capital city is Jakarta."},
            ],
            final_reasoning="The capital city is Jakarta.",
            answer="Jakarta.",
        ),
        Probe(
            name="multi turn, system, history reasoning",
            messages=[
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Colour of the sky?"},
                {
                    "role": "assistant",
                    "content": "Blue.",
                    "reasoning_content": "Rayleigh scattering favours blue.",
                },
                {"role": "user", "content": "And grass?"},
                {"role": "assistant", "content": "Green.", "thinking": "Chlorophyll reflects green light."},
            ],
            final_reasoning="Chlorophyll reflects green light.",
            history_reasoning=("Rayleigh scattering favours blue.",),
            answer="Green.",
        ),
        Probe(
            name="multi turn, reasoning inside content",
            messages=[
                {"role": "user", "content": "Is 9 prime?"},
                # DeepSeek-R1 style: the opening tag is missing, the closing one stands on its own line.
                {"role": "assistant", "content": f"Nine equals three times three.\n{THINK_CLOSE}\n\nNo."},
                {"role": "user", "content": "Is 7 prime?"},
                {
                    "role": "assistant",
                    "content": f"{THINK_OPEN}Seven has no divisor but one and itself.{THINK_CLOSE}Yes.",
                },
            ],
            final_reasoning="Seven has no divisor but one and itself.",
            history_reasoning=("Nine equals three times three.",),
            answer="Yes.",
        ),
        Probe(
            name="multi turn, no reasoning in last turn",
            messages=[
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "content": "Hello.",
                    "reasoning_content": "A greeting deserves one back.",
                },
                {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
                {"role": "assistant", "content": "You're welcome."},
            ],
            history_reasoning=("A greeting deserves one back.",),
            answer="You're welcome.",
        ),
        Probe(
            name="tools, tool call turn",
            messages=[
                {"role": "user", "content": "Weather in Jakarta?"},
                {"role": "assistant", "tool_calls": [call], "reasoning_content": "I need the weather tool."},
            ],
            final_reasoning="I need the weather tool.",
            tools=[WEATHER_TOOL],
        ),
        Probe(
            name="tools, answer after tool result",
            messages=[
                {"role": "system", "content": "Use tools when useful."},
                {"role": "user", "content": "Weather in Jakarta?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [call],
                    "reasoning_content": "Call the tool first.",
                },
                {"role": "tool", "content": '{"temperature_c": 31, "sky": "cloudy"}'},
                {
                    "role": "assistant",
                    "content": "31 C and cloudy.",
                    "reasoning_content": "The tool says 31 and cloudy.",
                },
            ],
            final_reasoning="The tool says 31 and cloudy.",
            loop_reasoning=("Call the tool first.",),
            tools=[WEATHER_TOOL],
            answer="31 C and cloudy.",
        ),
        Probe(
            # The issue's row: text beside the call, string arguments, a named tool result, then a new question
            # whose answer needs a second loop; the first loop's reasoning is history by then.
            name="agent loop after an earlier loop, text beside the call",
            messages=[
                {"role": "user", "content": "Thời tiết ở Huế?"},
                {
                    "role": "assistant",
                    "content": "Để tôi kiểm tra.",
                    "reasoning_content": "Hỏi công cụ thời tiết.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Huế"}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "30C"},
                {"role": "assistant", "content": "Huế 30°C.", "reasoning_content": "Công cụ trả lời 30 độ."},
                {"role": "user", "content": "Còn Đà Nẵng?"},
                {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": "Lại hỏi công cụ, lần này cho Đà Nẵng.",
                    "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                     "arguments": {"city": "Đà Nẵng"}}}],
                },
                {"role": "tool", "name": "get_weather", "content": "31C"},
                {"role": "assistant", "content": "Đà Nẵng 31°C.", "reasoning_content": "Công cụ nói 31 độ."},
            ],
            final_reasoning="Công cụ nói 31 độ.",
            history_reasoning=("Hỏi công cụ thời tiết.", "Công cụ trả lời 30 độ."),
            loop_reasoning=("Lại hỏi công cụ, lần này cho Đà Nẵng.",),
            tools=[WEATHER_TOOL],
            answer="Đà Nẵng 31°C.",
        ),
        Probe(
            # A think tag that is not in reasoning position is text: the whole sentence is the answer.
            name="literal closing tag in the answer",
            messages=[
                {"role": "user", "content": "How do I end a reasoning block?"},
                {"role": "assistant", "content": f"Write the closing tag {THINK_CLOSE} after the reasoning."},
            ],
            answer=f"Write the closing tag {THINK_CLOSE} after the reasoning.",
        ),
    ]


PROBES: tuple[Probe, ...] = tuple(_probes())


@dataclass(frozen=True)
class InvalidInput:
    """A render that must raise a template error instead of producing text."""

    name: str
    messages: list[dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)


INVALID_INPUTS: tuple[InvalidInput, ...] = (
    InvalidInput("unknown role", [{"role": "bot", "content": "Hi"}]),
    InvalidInput("missing role", [{"content": "Hi"}]),
    InvalidInput(
        "system message in the middle",
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Again"},
        ],
    ),
    InvalidInput(
        "assistant turn first",
        [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi"}],
    ),
    InvalidInput(
        "assistant first after system",
        [{"role": "system", "content": "Be terse."}, {"role": "assistant", "content": "Hello."}],
    ),
    InvalidInput(
        "tool result without a tool call",
        [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "{}"}],
    ),
    InvalidInput("non-string user content", [{"role": "user", "content": 42}]),
    InvalidInput("dict user content", [{"role": "user", "content": {"text": "Hi"}}]),
    InvalidInput(
        "image part where text is required",
        [{"role": "user", "content": [{"type": "image", "url": "x.png"}]}],
    ),
    InvalidInput(
        "non-string reasoning",
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello.", "reasoning_content": ["a"]},
        ],
    ),
    InvalidInput(
        "unterminated think block",
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": f"{THINK_OPEN}never closed"}],
    ),
    InvalidInput("thinking_mode not on/off", [{"role": "user", "content": "Hi"}], {"thinking_mode": "maybe"}),
    InvalidInput("thinking_mode as a bool", [{"role": "user", "content": "Hi"}], {"thinking_mode": True}),
    InvalidInput(
        "enable_thinking not a bool", [{"role": "user", "content": "Hi"}], {"enable_thinking": "yes"}
    ),
    InvalidInput(
        "thinking_mode contradicts enable_thinking",
        [{"role": "user", "content": "Hi"}],
        {"thinking_mode": "on", "enable_thinking": False},
    ),
)
