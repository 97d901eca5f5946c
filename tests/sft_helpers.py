"""Small SFT recipes on the tiny model, shared by the SFT, resume and distributed tests."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

EOT = "<|eot_id|>"
WORDS = ["satu", "dua", "tiga", "một", "hai", "ba", "one", "two", "three", "หนึ่ง", "สอง", "ஒன்று"]


def write_rows(path: Path, n: int = 48, seed: int = 0) -> Path:
    """Conversations with a learnable pattern (the answer repeats the question's words)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
            row = {
                "messages": [
                    {"role": "user", "content": f"Ulangi: {words} #{i}"},
                    {"role": "assistant", "content": f"{words}"},
                ]
            }
            if i % 2 == 0:
                row["messages"][1]["reasoning_content"] = f"The user asks me to repeat {len(words.split())} words."
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def sft_recipe(
    folder: Path,
    base_model: Path,
    *,
    max_steps: int = 12,
    save_steps: int = 4,
    launch: str = "launch: {use_cpu: true}",
    stages: str | None = None,
) -> Path:
    """A one-stage (or custom) SFT recipe over freshly written rows in ``folder``."""
    write_rows(folder / "rows.jsonl")
    stage = stages or f"""
          - name: sft
            kind: sft
            data:
              heldout: 4
              sources:
                - {{name: rows, path: rows.jsonl, thinking_mode: mixed, thinking_ratio: 0.5}}
            train:
              max_steps: {max_steps}
              learning_rate: 3.0e-3
              per_device_train_batch_size: 4
              max_length: 256
              logging_steps: 2
              save_steps: {save_steps}
              save_total_limit: 3
        """
    path = folder / "sft.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: sft-test
        base_model: {base_model}
        seed: 3
        {launch}
        stages:
        """)
        + textwrap.indent(textwrap.dedent(stage), "  ")
    )
    return path


# --- tool-call rows (the issue's row, OpenAI with reasoning, ShareGPT) and what llama3_thinking makes of them

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# The issue's row, as written there: OpenAI tool_calls with an arguments object, a tool result without an id.
ISSUE_ROW = {"messages": [
    {"role": "user", "content": "Thời tiết ở Huế?"},
    {"role": "assistant", "content": "Để tôi kiểm tra.",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Huế"}}}]},
    {"role": "tool", "content": "30C"},
    {"role": "assistant", "content": "Huế 30°C."},
]}
# OpenAI with a JSON-string arguments, ids, a per-row tools list and reasoning on both loop steps.
REASONED_ROW = {"tools": [WEATHER], "messages": [
    {"role": "user", "content": "Cuaca di Medan?"},
    {"role": "assistant", "content": None, "reasoning_content": "Perlu alat cuaca.",
     "tool_calls": [{"id": "c1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Medan\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": {"temp_c": 29}},
    {"role": "assistant", "content": "Medan 29°C.", "reasoning_content": "Alat bilang 29."},
]}
# ShareGPT (LLaMA-Factory style): function_call / observation turns, tools as a JSON string of bare functions.
SHAREGPT_ROW = {"tools": json.dumps([WEATHER["function"]], ensure_ascii=False), "conversations": [
    {"from": "human", "value": "Thời tiết Đà Nẵng?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Đà Nẵng"}},
                                                  ensure_ascii=False)},
    {"from": "observation", "value": "31C"},
    {"from": "gpt", "value": "Đà Nẵng 31°C."},
]}
CALL = '{{"name": "get_weather", "parameters": {{"city": "{city}"}}}}'
TOOLS_BLOCK = (
    "Given the following functions, please respond with a JSON for a function call with its proper arguments "
    'that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters": '
    "dictionary of argument name and its value}.Do not use variables.\n\n"
    + json.dumps(WEATHER, indent=4, ensure_ascii=False) + "\n\n"
)
SYSTEM_TOOLS = "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython<|eot_id|>"


def trained_spans(tokenizer, ex: dict) -> list[str]:
    """Each run of trained tokens, decoded on its own."""
    from tempa.chat_templates.rendering import mask_spans

    return [tokenizer.decode(ex["input_ids"][start:end]) for start, end in mask_spans(ex["assistant_masks"])]


def expected_tool_samples() -> dict[str, tuple[str, list[str]]]:
    """Per row: the whole sample's text and its trained spans, written from the template's rules."""
    user, asst, ipython = (f"<|start_header_id|>{r}<|end_header_id|>\n\n" for r in ("user", "assistant", "ipython"))
    off, on = asst + "<think>\n</think>\n", asst + "<think>\n"
    issue_spans = [f"Để tôi kiểm tra.\n{CALL.format(city='Huế')}{EOT}", f"Huế 30°C.{EOT}"]
    reasoned_spans = [f"Perlu alat cuaca.\n</think>\n\n{CALL.format(city='Medan')}{EOT}",
                      f"Alat bilang 29.\n</think>\n\nMedan 29°C.{EOT}"]
    sharegpt_spans = [f"{CALL.format(city='Đà Nẵng')}{EOT}", f"Đà Nẵng 31°C.{EOT}"]
    return {
        "Huế": ("<|begin_of_text|>" + user + f"Thời tiết ở Huế?{EOT}" + off + issue_spans[0] + ipython + f"30C{EOT}"
                + off + issue_spans[1], issue_spans),
        "Medan": ("<|begin_of_text|>" + SYSTEM_TOOLS + user + TOOLS_BLOCK + f"Cuaca di Medan?{EOT}" + on
                  + reasoned_spans[0] + ipython + '{"temp_c": 29}' + EOT + on + reasoned_spans[1], reasoned_spans),
        "Đà Nẵng": ("<|begin_of_text|>" + SYSTEM_TOOLS + user + TOOLS_BLOCK + f"Thời tiết Đà Nẵng?{EOT}" + off
                    + sharegpt_spans[0] + ipython + f"31C{EOT}" + off + sharegpt_spans[1], sharegpt_spans),
    }


def prepared_rows(folder: Path, model_dir: Path, *, n: int, seed: int = 0, max_length: int = 512):
    """(tokenised dataset, tokenizer): ``write_rows`` through tempa's data pipeline, as the trainer receives them."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from tempa.chat_templates import load_template
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    write_rows(folder / "rows.jsonl", n=n, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = load_template("llama3_thinking")
    data = DataConfig.model_validate({"sources": [{"name": "rows", "path": "rows.jsonl", "thinking_mode": "mixed",
                                                   "thinking_ratio": 0.5}]}, context={"base_dir": str(folder)})
    prepared = prepare_sft_data(data, tokenizer, out_dir=folder / "out", cache_dir=folder / "cache", seed=0,
                                max_length=max_length)
    return load_from_disk(str(prepared.train_path)), tokenizer


def tied_copy(model_dir: Path, folder: Path) -> Path:
    """``model_dir`` saved into ``folder`` with its input and output embeddings tied (Gemma-2, Llama 3.2, small Qwen)."""
    import shutil

    from transformers import AutoModelForCausalLM

    shutil.copytree(model_dir, folder)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(folder)
    return folder
