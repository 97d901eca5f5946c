"""The route for a model tempa's GGUF writer does not take (Qwen2 here): llama.cpp's convert_hf_to_gguf.py, then
`tempa export gguf MODEL-f16.gguf --type q8_0`.

The converter embeds the baked chat template verbatim (gguf-py's SpecialVocab reads chat_template.jinja), with the
training-only ``{% generation %}`` markers and the alias that refuses a thinking_mode differing from
enable_thinking, which llama-server always passes. The fixture writes a tiny Qwen2 GGUF the way the converter does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_ollama_modelfile import _ollama

from tempa.merge.gguf_export import export_gguf, serving_template
from tempa.recipes import tiny

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT = [{"role": "system", "content": "Jawab singkat."}, {"role": "user", "content": "안녕하세요! 2 + 3?"}]


def _convert_like_llama_cpp(model_dir: Path, out: Path) -> Path:
    """What convert_hf_to_gguf.py writes for Qwen2, minimal: f32 tensors by gguf-py's name map, the byte-level
    vocabulary, and gguf-py's SpecialVocab (merges, special ids, chat_template.jinja as it is)."""
    import gguf
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    writer = gguf.GGUFWriter(str(out), "qwen2")
    writer.add_name("ko-qwen")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base((config.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added, specials = tokenizer.get_added_vocab(), set(tokenizer.all_special_ids)
    tokens, types = [], []
    for i in range(config["vocab_size"]):
        token = by_id.get(i)
        tokens.append(token if token is not None else f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED if token is None else gguf.TokenType.CONTROL
                     if token in added and i in specials else gguf.TokenType.USER_DEFINED if token in added
                     else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=config["vocab_size"]).add_to_gguf(writer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config["num_hidden_layers"])
    for name, data in load_file(str(model_dir / "model.safetensors")).items():
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def qwen_final(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 (Qwen2.5's special tokens, tied embeddings) baked with chatml_thinking."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from tempa.chat_templates import bake_tokenizer

    root = tmp_path_factory.mktemp("qwen")
    base = root / "base"
    texts = ["user assistant system <think>\n</think>\n\n 안녕하세요 Jawab singkat 2 + 3?"] * 20
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tiny.byte_level_bpe(texts, SPECIALS, 300),
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=SPECIALS[1:])
    tokenizer.save_pretrained(base)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer) + 28, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(base, safe_serialization=True)
    final = bake_tokenizer(base, "chatml_thinking", root / "final", model_dir=base)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(base / name, final / name)
    return final


@pytest.fixture()
def converted(qwen_final: Path, tmp_path: Path) -> Path:
    return _convert_like_llama_cpp(qwen_final, tmp_path / "ko-qwen-f16.gguf")


def _template(path: Path) -> str:
    import gguf

    return gguf.GGUFReader(str(path)).get_field("tokenizer.chat_template").contents()


def test_a_converted_gguf_is_quantised_with_the_serving_template(qwen_final: Path, converted: Path) -> None:
    """Before, the q8_0 kept the converter's raw template: llama.cpp's Jinja rejects its {% generation %} markers,
    and with llama-server's enable_thinking=true a request's thinking_mode "off" raised."""
    import gguf
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    raw = (qwen_final / "chat_template.jinja").read_text(encoding="utf-8")
    assert _template(converted) == raw and "generation %}" in raw  # what the converter embeds

    result = export_gguf(converted, file_type="q8_0")
    assert result.gguf_path == converted.with_name("ko-qwen-f16-q8_0.gguf")
    assert _template(result.gguf_path) == serving_template(raw)
    assert not list(converted.parent.glob(".*"))  # no partial file or scratch folder left

    # every other key and every tensor as llama.cpp's quantiser wrote them
    source, out = gguf.GGUFReader(str(converted)), gguf.GGUFReader(str(result.gguf_path))
    assert out.get_field("tokenizer.ggml.tokens").contents() == source.get_field("tokenizer.ggml.tokens").contents()
    assert out.get_field("general.file_type").contents() == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert sorted(t.name for t in out.tensors) == sorted(t.name for t in source.tensors)

    tokenizer = AutoTokenizer.from_pretrained(qwen_final)
    llm = Llama(model_path=str(result.gguf_path), n_ctx=256, seed=0, verbose=False, logits_all=True)
    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>",
                                    bos_token="<|endoftext|>")
    # llama-server's call: enable_thinking=true always, the request's thinking_mode merged over it
    prompt = formatter(messages=CHAT, enable_thinking=True, thinking_mode="off").prompt
    assert prompt == tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False,
                                                   thinking_mode="off")
    assert prompt.endswith("<|im_start|>assistant\n<think>\n</think>\n")  # the off mode's prefill

    # the rewritten file is a whole model: the q8_0 computes what the converter's f32 file does
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    llm.eval(ids)
    reference = Llama(model_path=str(converted), n_ctx=256, seed=0, verbose=False, logits_all=True)
    reference.eval(ids)
    got, expected = np.asarray(llm.scores[: len(ids)]), np.asarray(reference.scores[: len(ids)])
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.9


def test_the_quantised_gguf_gets_its_ollama_modelfile(qwen_final: Path, converted: Path, go_renderer: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Before, a .gguf input got no Modelfile, although chatml_thinking has a Go twin: Ollama users of a Qwen model
    had to write one by hand, and Ollama's fallback template knows no thinking mode."""
    from tempa.chat_templates import render_text
    from tempa.merge.gguf_export import LLAMA_SERVER_NOTE
    from tempa.recipes.cli import main

    assert main(["export", "gguf", str(converted), "--type", "q8_0"]) == 0
    printed = capsys.readouterr().out
    modelfile = converted.with_name("ko-qwen-f16-q8_0.Modelfile")
    assert f"wrote {modelfile}" in printed and LLAMA_SERVER_NOTE in printed
    text = modelfile.read_text(encoding="utf-8")
    assert text.splitlines()[1] == "FROM ./ko-qwen-f16-q8_0.gguf"
    assert 'PARAMETER stop "<|im_end|>"' in text.splitlines()
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    raw = (qwen_final / "chat_template.jinja").read_text(encoding="utf-8")
    for think, mode in ((True, "on"), (False, "off")):
        prompt = _ollama(go_renderer, template, CHAT, None, think)["prompt"]
        assert prompt == render_text(raw, CHAT, add_generation_prompt=True, thinking_mode=mode), mode


def test_a_gguf_with_another_template_gets_neither_modelfile_nor_tempa_note(
        qwen_final: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, the CLI printed tempa's thinking_mode advice for llama-server whatever template the GGUF held."""
    from tempa.merge.gguf_export import LLAMA_SERVER_NOTE
    from tempa.recipes.cli import main

    folder = tmp_path / "plain"
    shutil.copytree(qwen_final, folder)
    plain = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    (folder / "chat_template.jinja").write_text(plain, encoding="utf-8")
    source = _convert_like_llama_cpp(folder, tmp_path / "plain-f16.gguf")
    assert main(["export", "gguf", str(source), "--type", "q8_0"]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "plain-f16-q8_0.gguf"
    assert f"wrote {out}" in printed and LLAMA_SERVER_NOTE not in printed and "Modelfile" not in printed
    assert _template(out) == plain and not list(tmp_path.glob("*.Modelfile"))


def test_a_rewritten_gguf_keeps_its_tensors_on_its_own_alignment(tmp_path: Path) -> None:
    """A GGUF aligned to 64 was rewritten saying general.alignment=64 with its tensors at 32-byte offsets, which
    llama.cpp refuses to load."""
    import gguf
    import numpy as np

    from tempa.merge.gguf_export import with_chat_template

    source = tmp_path / "in.gguf"
    writer = gguf.GGUFWriter(str(source), "llama")
    writer.add_custom_alignment(64)
    writer.add_chat_template("{{ messages }}")
    for i, size in enumerate((8, 24, 40)):  # sizes that leave 32-byte but not 64-byte boundaries
        writer.add_tensor(f"t{i}", np.arange(size, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = tmp_path / "out.gguf"
    with_chat_template(source, out, "{{ rewritten }}")
    reader = gguf.GGUFReader(str(out))
    assert reader.get_field(gguf.Keys.General.ALIGNMENT).contents() == 64
    assert reader.get_field(gguf.Keys.Tokenizer.CHAT_TEMPLATE).contents() == "{{ rewritten }}"
    assert all(tensor.data_offset % 64 == 0 for tensor in reader.tensors), [t.data_offset for t in reader.tensors]
    assert [list(t.data) for t in reader.tensors] == [list(np.arange(n, dtype=np.float32)) for n in (8, 24, 40)]


def test_a_modelfile_from_gguf_keys_writes_the_sampling_defaults_as_given(tmp_path: Path) -> None:
    """The converter stores generation_config.json's defaults as float32: the Modelfile said
    `PARAMETER temperature 0.699999988079071` for a recipe's 0.7."""
    import gguf

    from tempa.chat_templates import load_template
    from tempa.merge.gguf_export import gguf_modelfile

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_token_list(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    writer.add_eos_token_id(2)
    for key, number in (("general.sampling.temp", 0.7), ("general.sampling.top_p", 0.8),
                        ("general.sampling.penalty_repeat", 1.05)):
        writer.add_float32(key, number)
    writer.add_uint32("general.sampling.top_k", 20)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    lines = gguf_modelfile(path, load_template("chatml_thinking")).splitlines()
    assert {"PARAMETER temperature 0.7", "PARAMETER top_p 0.8", "PARAMETER repeat_penalty 1.05",
            "PARAMETER top_k 20"} <= set(lines), [line for line in lines if line.startswith("PARAMETER")]
