"""`tempa export gguf --type q4_k_m`: llama.cpp's own quantiser (llama-cpp-python), loaded back in llama.cpp.

K-quants store weight rows in blocks of 256 values: the tiny model (hidden size 64) has no such row and
is refused with a clear error; a small model with 256-wide rows is quantised and runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stage_helpers import baked_final
from tempa.merge.gguf_export import export_gguf, gguf_tensor_types
from tempa.recipes.cli import main
from tempa.sft.stage_api import StageError


@pytest.fixture(scope="module")
def wide_final(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny tokenizer with a 2-layer Llama whose rows are 256 and 512 values wide (about 2M parameters)."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("wide")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.update({"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 64})
    torch.manual_seed(0)
    model_dir = root / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir, safe_serialization=True)
    for path in tiny_model_dir.iterdir():
        if path.name.startswith("tokenizer") or path.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy2(path, model_dir / path.name)
    return baked_final(model_dir, root / "final")


def test_q4_k_m_through_llama_cpp_loads_and_generates(wide_final, tmp_path, capsys):
    from llama_cpp import Llama

    out = tmp_path / "wide-q4_k_m.gguf"
    assert main(["export", "gguf", str(wide_final), "--type", "q4_k_m", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    types = gguf_tensor_types(out)
    assert types.get("Q4_K", 0) >= 4, types  # the K-quant itself, chosen by llama.cpp per tensor
    assert f"Q4_K {types['Q4_K']}" in printed
    modelfile = (tmp_path / "wide-q4_k_m.Modelfile").read_text()
    assert "FROM ./wide-q4_k_m.gguf" in modelfile and not list(tmp_path.glob(".*"))  # no partial or scratch left
    f16 = export_gguf(wide_final, tmp_path / "f16" / "wide-f16.gguf")
    assert out.stat().st_size < 0.6 * f16.gguf_path.stat().st_size

    llm = Llama(model_path=str(out), n_ctx=256, seed=0, verbose=False)
    assert llm.metadata["general.file_type"] == "15"  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert llm.metadata["tokenizer.chat_template"]
    text = llm.create_completion("satu dua tiga", max_tokens=6, temperature=0.0)["choices"][0]["text"]
    assert isinstance(text, str)
    tokens = llm.tokenize(b"satu dua tiga", add_bos=False)
    assert llm.detokenize(tokens) == b"satu dua tiga"


def test_a_model_without_256_wide_rows_is_refused_for_k_quants(tiny_model_dir, tmp_path):
    final = baked_final(tiny_model_dir, tmp_path / "final")
    with pytest.raises(StageError, match="no weight matrix of this model has rows that are a multiple of 256"):
        export_gguf(final, tmp_path / "tiny-q4_k_m.gguf", file_type="q4_k_m")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))
    # a type without K blocks still works for it, through the same quantiser
    result = export_gguf(final, tmp_path / "tiny-q4_0.gguf", file_type="q4_0")
    assert result.tensor_types and result.gguf_path.is_file()


def test_an_existing_gguf_is_quantised_in_place_of_a_model_folder(wide_final, tmp_path):
    f16 = export_gguf(wide_final, tmp_path / "conv-f16.gguf")  # stands for llama.cpp's converter output
    result = export_gguf(f16.gguf_path, None, file_type="q6_k")
    assert result.gguf_path == tmp_path / "conv-f16-q6_k.gguf"
    assert "Q6_K" in gguf_tensor_types(result.gguf_path)
    # its template is tempa's (served): the Modelfile names the quantised file, with the f16's Go template
    ours, f16s = (path.read_text().split('TEMPLATE """') for path in (result.modelfile_path, f16.modelfile_path))
    assert ours[0].splitlines()[1] == "FROM ./conv-f16-q6_k.gguf"
    assert ours[1].split('"""')[0] == f16s[1].split('"""')[0]
