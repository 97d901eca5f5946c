"""The exported GGUF in a real llama.cpp (llama-cpp-python, built from source): it loads, renders its
embedded chat template as transformers does in both modes, tokenises as transformers does, computes the
same logits, and a chat reply stops at the end-of-turn token.

The tiny model is random, so the stop test uses a model whose greedy reply is known in advance: its layers
add nothing to the residual stream (zeroed output projections), so each next token is a fixed function of
the current one, set through the embedding and output matrices to "prompt's last token -> a word ->
<|eot_id|>". transformers and llama.cpp must then both write that word and stop there; llama.cpp can only
stop at that token through the GGUF's own metadata.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stage_helpers import baked_final
from tempa.chat_templates.probes import PROBES, WEATHER_TOOL
from tempa.chat_templates.thinking import MODES
from tempa.merge.gguf_export import export_gguf

EOT = "<|eot_id|>"
CHATS = [
    [{"role": "user", "content": "Halo! Berapa 2 + 3?"}],
    [{"role": "system", "content": "Jawab singkat."}, {"role": "user", "content": "Ibu kota Thailand?"},
     {"role": "assistant", "content": "Bangkok.", "reasoning_content": "Ini soal geografi."},
     {"role": "user", "content": "Dan Vietnam?"}],
    # a tool loop in progress: its call turn (with reasoning) is before the generation prompt
    next(p for p in PROBES if p.name.startswith("agent loop")).messages[:-1],
]


@pytest.fixture(scope="module", params=["tiny", "llama3"])
def gguf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(demo-like final folder, its f16 GGUF) for the tiny tokenizer and Meta's Llama 3 one."""
    if request.param == "llama3":
        return request.getfixturevalue("llama3_final_dir"), request.getfixturevalue("llama3_gguf")
    root = tmp_path_factory.mktemp("llama-cpp-tiny")
    final = baked_final(request.getfixturevalue("tiny_model_dir"), root / "final")
    return final, export_gguf(final, root / "model.gguf").gguf_path


def _llama(path: Path, **kwargs: Any) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=1024, seed=0, verbose=False, **kwargs)


def _formatter(llm: Any) -> Any:
    """llama-cpp-python's own Jinja formatter for the GGUF's embedded template (what its chat API uses)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos = llm.token_eos()
    return Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(eos),
        bos_token=llm._model.token_get_text(llm.token_bos()),
        stop_token_ids=[eos],
    )


def test_llama_cpp_renders_and_tokenises_the_embedded_template_as_transformers_does(gguf: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    final, path = gguf
    tokenizer = AutoTokenizer.from_pretrained(final)
    llm = _llama(path, vocab_only=True)
    embedded = llm.metadata["tokenizer.chat_template"]
    assert "{% generation %}" in tokenizer.chat_template.replace("{%-", "{%")
    assert not re.search(r"\{%-?\s*(end)?generation", embedded)
    assert llm.token_eos() == tokenizer.convert_tokens_to_ids(EOT) == tokenizer.eos_token_id
    # The whole vocabulary, ids and texts, as llama.cpp reads it (128,256 tokens for Llama 3).
    assert llm.n_vocab() == len(tokenizer)
    for token_id in (0, 9906 % len(tokenizer), tokenizer.bos_token_id, llm.token_eos(), len(tokenizer) - 1):
        assert llm._model.token_get_text(token_id) == tokenizer.convert_ids_to_tokens(token_id)
    if len(tokenizer) == 128256:
        assert llm.metadata["tokenizer.ggml.pre"] == "llama-bpe"
    formatter = _formatter(llm)
    for messages in CHATS:
        tools = [WEATHER_TOOL] if any(m.get("tool_calls") for m in messages) else None
        for mode in MODES:
            ours = formatter(messages=messages, tools=tools, thinking_mode=mode).prompt
            expected = tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, tokenize=False, thinking_mode=mode
            )
            assert ours == expected, mode
            ids = tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True, thinking_mode=mode
            )["input_ids"]
            assert llm.tokenize(ours.encode("utf-8"), add_bos=False, special=True) == list(ids), mode


def test_llama_cpp_logits_match_transformers(gguf: tuple[Path, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final, path = gguf
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer.apply_chat_template(CHATS[1], add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(final).eval()(torch.tensor([ids])).logits[0].numpy()
    llm = _llama(path, logits_all=True)
    llm.eval(list(ids))
    got = np.asarray(llm.scores[: len(ids)])
    # f16 weights: close, not equal; the rotary permutation or a wrong tensor would be far off.
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.95


@pytest.fixture(scope="module")
def scripted_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A tiny model that answers every prompt of tempa's template with one known word, then <|eot_id|>."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("scripted")
    final = baked_final(tiny_model_dir, root / "final")
    tokenizer = AutoTokenizer.from_pretrained(final)
    weights = load_file(str(final / "model.safetensors"))
    for name in weights:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = torch.zeros_like(weights[name])
    word = tokenizer.convert_ids_to_tokens(tokenizer.encode(" Halo", add_special_tokens=False))
    word_id = tokenizer.convert_tokens_to_ids(word[0])
    last_tokens = {
        tokenizer.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=True, return_dict=True,
                                      thinking_mode=mode)["input_ids"][-1]
        for mode in MODES
    }
    hidden = weights["model.embed_tokens.weight"].shape[1]
    script = [(source, word_id) for source in last_tokens] + [(word_id, tokenizer.convert_tokens_to_ids(EOT))]
    for k, (source, target) in enumerate(script):
        direction = torch.zeros(hidden)
        direction[k] = 1.0
        weights["model.embed_tokens.weight"][source] = direction
        weights["lm_head.weight"][target] = 10.0 * direction
    save_file(weights, str(final / "model.safetensors"), metadata={"format": "pt"})
    return final, export_gguf(final, root / "model.gguf").gguf_path, tokenizer.decode([word_id])


@pytest.mark.parametrize("mode", MODES)
def test_llama_cpp_chat_stops_at_the_end_of_turn_token(scripted_gguf: tuple[Path, Path, str], mode: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final, path, word = scripted_gguf
    tokenizer = AutoTokenizer.from_pretrained(final)
    inputs = tokenizer.apply_chat_template(CHATS[0], add_generation_prompt=True, return_dict=True,
                                           return_tensors="pt", thinking_mode=mode)
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(final).generate(**inputs, max_new_tokens=8, do_sample=False)
    # transformers stops on the baked eos: the word, then <|eot_id|>.
    assert tokenizer.decode(reference[0, inputs["input_ids"].shape[1] :]) == f"{word}{EOT}"

    llm = _llama(path)
    handler = _formatter(llm).to_chat_handler()
    reply = handler(llama=llm, messages=CHATS[0], thinking_mode=mode, max_tokens=8, temperature=0.0)
    assert reply["choices"][0]["message"]["content"] == word
    assert reply["choices"][0]["finish_reason"] == "stop"  # not "length": llama.cpp stopped at <|eot_id|>
    assert reply["usage"]["completion_tokens"] < 8
