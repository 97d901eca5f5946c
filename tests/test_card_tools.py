"""The model card of a model trained on tool rows says so, and says how to call it with tools: its example
is run as it ships, on a baked tokenizer of each shipped template and a real (tiny) model."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pytest

from stage_helpers import done
from tempa.chat_templates.thinking import THINK_CLOSE
from tempa.merge.model_card import (
    TOOL_EXAMPLE_RESULT,
    TOOL_EXAMPLE_TOOLS,
    ModelCardConfig,
    render_model_card,
    usage_snippet,
    written_tool_call,
)
from tempa.sft.data_report import DataMix, MixTotals, SourceMix
from tempa.sft.stage import SFTResult
from tempa.sft.stage_api import RecipeInfo

# mergekit imports numpy.core, which numpy 2 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")

TEMPLATES = ["llama3_thinking", "chatml_thinking"]


def sft_stages(tool_rows: tuple[int, ...]) -> dict[str, Any]:
    """An sft stage whose sources kept 10 rows each, ``tool_rows`` of them tool rows."""

    def source(i: int, tools: int) -> SourceMix:
        return SourceMix(name=f"s{i}", path=f"s{i}.jsonl", size={"weight": 1.0}, thinking_mode="off", rows_in=10,
                         rows_curated=10, rows_tokenized=10, samples=10, tokens_in=100, heldout_rows=0,
                         heldout_samples=0, heldout_tokens=0, rows_kept=10, unique_rows_kept=10, samples_kept=10,
                         tokens_kept=100, trained_tokens_kept=50, thinking_on_rows_kept=0, tool_rows_kept=tools)

    sources = [source(i, n) for i, n in enumerate(tool_rows)]
    total = MixTotals(rows_in=10 * len(sources), rows_kept=10 * len(sources), train_samples=10 * len(sources),
                      eval_samples=0, tokens_kept=100 * len(sources), trained_tokens_kept=50 * len(sources),
                      heldout_tokens=0, thinking_on_rows_kept=0, tool_rows_kept=sum(tool_rows), rejects=0)
    up = done("sft", SFTResult(data=DataMix(seed=0, cache_key="k", sources=sources, total=total)))
    return {up.name: up}


def card_for(template: str, stages: dict[str, Any], tool_call: str | None = None) -> str:
    recipe = RecipeInfo(name="agent", base_model="tempa:tiny", chat_template=template)
    return render_model_card(ModelCardConfig(), recipe=recipe, stages=stages, tool_call=tool_call)


def block(card: str, fence: str) -> str:
    """The first ``fence`` code block of the card's "Tool calling" part."""
    part = card[card.index("### Tool calling"):]
    start = part.index(f"```{fence}\n") + len(fence) + 4
    return part[start:part.index("\n```", start)]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module", params=TEMPLATES)
def baked(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(template name, the tiny tokenizer baked with it and loaded back from disk)."""
    from transformers import AutoTokenizer

    from tempa.chat_templates import bake_tokenizer

    folder = bake_tokenizer(tiny_model_dir, request.param, tmp_path_factory.mktemp(request.param) / "final",
                            model_dir=tiny_model_dir)
    return request.param, AutoTokenizer.from_pretrained(folder)


def run_card_example(card: str, tokenizer: Any, model: Any) -> dict[str, Any]:
    """Run the card's tool-calling code as a reader would, after the usage section's model and tokenizer."""
    code = block(card, "python")
    assert code.count("max_new_tokens=512") == 2
    namespace: dict[str, Any] = {"tokenizer": tokenizer, "model": model}
    # A random tiny model writes no call: two new tokens each time prove as much as 512, in a fraction of the time.
    exec(code.replace("max_new_tokens=512", "max_new_tokens=2"), namespace)
    return namespace


def test_the_card_says_how_to_call_the_model_with_tools_and_its_example_runs(baked, tiny_model) -> None:
    """An agentic team's card never mentioned tools. Now it does, in the format of the recipe's template, and the
    example's code runs through apply_chat_template on the baked tokenizer of either shipped template."""
    template, tokenizer = baked
    call = written_tool_call(tokenizer)
    card = card_for(template, sft_stages((3, 0)), call)

    assert "The SFT stages trained 3 rows that offer tools or hold a tool loop (counted in each stage" in card
    assert "`tools=[...]` to `apply_chat_template`" in card and '`"role": "tool"` message' in card
    shown = block(card, "text")
    if template == "llama3_thinking":  # Llama 3.1: the JSON call is the whole turn, arguments as `parameters`
        assert "the call alone: one JSON object" in card
        assert json.loads(shown) == {"name": "get_weather", "parameters": {"city": "Jakarta"}}
    else:  # Qwen2.5: a <tool_call> block holding the JSON call, arguments as `arguments`
        assert "`<tool_call>` block" in card
        assert shown.startswith("<tool_call>\n") and shown.endswith("\n</tool_call>")
        inner = shown.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>")
        assert json.loads(inner) == {"name": "get_weather", "arguments": {"city": "Jakarta"}}

    ran = run_card_example(card, tokenizer, tiny_model)
    # The conversation the example ends with renders the call as the card shows it, and the tool's result.
    history = tokenizer.apply_chat_template(ran["messages"], tools=ran["tools"], tokenize=False,
                                            add_generation_prompt=True)
    assert shown in history and "31 °C, sunny" in history and "get_weather" in history
    assert [m["role"] for m in ran["messages"]] == ["user", "assistant", "tool"]
    assert ran["tools"] == TOOL_EXAMPLE_TOOLS
    assert isinstance(ran["reply"], str)
    # A reply that thinks before its call (thinking is on by default): the example sent the call back without the
    # reasoning, and the next prompt showed an empty think block where the model had planned (Swallow trial).
    lines = block(card, "python").splitlines()
    parse_and_append = [line for line in lines if line.startswith(("reasoning, _, call", "messages.append({\"role\": "
                                                                                     "\"assistant\""))]
    assert len(parse_and_append) == 2
    reader = {"reply": f"Cek cuaca Jakarta dulu.\n{THINK_CLOSE}\n\n{shown}", "messages": list(ran["messages"][:1])}
    exec("\n".join(parse_and_append), reader)
    assert reader["call"].strip() == shown
    loop = tokenizer.apply_chat_template([*reader["messages"], TOOL_EXAMPLE_RESULT], tools=ran["tools"], tokenize=False,
                                         add_generation_prompt=True)
    assert "Cek cuaca Jakarta dulu." in loop and shown in loop
    # The data mix shows the count per source.
    mix = card[card.index("## Data mix"):]
    header = next(line for line in mix.splitlines() if line.startswith("| source"))
    assert "| thinking_on_rows_kept | tool_rows_kept |" in header
    rows = [line.split(" | ") for line in mix.splitlines() if line.startswith(("| s0 ", "| s1 "))]
    column = header.split(" | ").index("tool_rows_kept")
    assert [row[column] for row in rows] == ["3", "0"]


def test_a_custom_template_gets_the_format_in_words_and_no_example_call_without_one() -> None:
    card = card_for("my_template.jinja", sft_stages((2,)), None)
    assert "as its chat template renders an assistant message's `tool_calls`" in card
    assert "```text" not in card[card.index("### Tool calling"):]


@pytest.mark.parametrize("template", TEMPLATES)
def test_without_tool_rows_the_card_is_as_before(template: str) -> None:
    stages = sft_stages((0, 0))
    card = card_for(template, stages)
    assert card == card_for(template, stages, tool_call='{"name": "x"}')
    assert "Tool calling" not in card and "tool_rows_kept" not in card and "tools=" not in card
    usage = card[card.index("## Usage"):card.index("## Stages")]
    expected = usage_snippet("path/to/this/folder", "on", saved_with=importlib.metadata.version("transformers"))
    assert usage == "\n".join(expected) + "\n"
