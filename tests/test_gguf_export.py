"""GGUF export of a baked final model, read back with gguf's own reader."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from stage_helpers import baked_final
from tempa.merge.gguf_export import (
    _ALIAS_REFUSED,
    _ALIAS_YIELDS,
    export_name,
    permute_rotary,
    serving_template,
)
from tempa.merge.ollama_template import ollama_template
from tempa.recipes.cli import main, ollama_name
from tempa.sft.stage_api import StageError


@pytest.fixture(scope="module")
def baked_model(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model with weights and the thinking template baked in, as a final/ folder."""
    return baked_final(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "final")


def field_text(reader, key: str) -> str:
    field = reader.fields[key]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def field_int(reader, key: str) -> int:
    field = reader.fields[key]
    return int(field.parts[field.data[0]][0])


@pytest.mark.parametrize("file_type", ["f16", "q8_0"])
def test_gguf_reads_back_with_tensors_template_and_special_tokens(baked_model, tmp_path, file_type, capsys):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoTokenizer

    out = tmp_path / f"model-{file_type}.gguf"
    assert main(["export", "gguf", str(baked_model), "--type", file_type, "--out", str(out)]) == 0
    reader = GGUFReader(str(out))
    tokenizer = AutoTokenizer.from_pretrained(baked_model)

    assert field_text(reader, "general.architecture") == "llama"
    # The baked template, without the training-only generation markers, a request's thinking_mode winning over
    # llama-server's enable_thinking, and otherwise unchanged.
    embedded = field_text(reader, "tokenizer.chat_template")
    assert embedded == serving_template(tokenizer.chat_template) != tokenizer.chat_template
    assert "generation %}" not in embedded and "contradicts" not in embedded
    assert embedded.replace("\n", "") == tokenizer.chat_template.replace(_ALIAS_REFUSED, _ALIAS_YIELDS).replace(
        "{%- generation %}", "").replace("{%- endgeneration %}", "").replace("\n", "")
    assert "unless started with `--reasoning off`" in capsys.readouterr().out  # what the export says of llama-server
    assert field_int(reader, "tokenizer.ggml.bos_token_id") == tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    assert field_int(reader, "tokenizer.ggml.eos_token_id") == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert field_int(reader, "tokenizer.ggml.eot_token_id") == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert field_int(reader, "tokenizer.ggml.padding_token_id") == tokenizer.pad_token_id
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == len(tokenizer)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert bytes(tokens.parts[tokens.data[eot]]).decode() == "<|eot_id|>"

    original = {k: v.float().numpy() for k, v in load_file(str(baked_model / "model.safetensors")).items()}
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(original)
    tolerance = 2e-3 if file_type == "f16" else 3e-2
    checks = {
        "token_embd.weight": original["model.embed_tokens.weight"],
        "blk.1.ffn_down.weight": original["model.layers.1.mlp.down_proj.weight"],
        "blk.0.attn_q.weight": permute_rotary(original["model.layers.0.self_attn.q_proj.weight"], 4),
        "blk.0.attn_k.weight": permute_rotary(original["model.layers.0.self_attn.k_proj.weight"], 2),
        "output_norm.weight": original["model.norm.weight"],
    }
    for name, expected in checks.items():
        tensor = tensors[name]
        values = dequantize(tensor.data, tensor.tensor_type).reshape(expected.shape)
        assert np.abs(values - expected).max() <= tolerance * max(1.0, np.abs(expected).max()), name
    expected_type = {"f16": "F16", "q8_0": "Q8_0"}[file_type]
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == expected_type
    assert tensors["output_norm.weight"].tensor_type.name == "F32"

    modelfile = (tmp_path / f"model-{file_type}.Modelfile").read_text()
    assert f"\nFROM ./{out.name}\n" in modelfile and "default thinking mode 'on'" in modelfile
    assert f'TEMPLATE """{ollama_template(tokenizer.chat_template)}"""' in modelfile
    assert 'PARAMETER stop "<|eot_id|>"' in modelfile
    assert not list(tmp_path.glob(".*.partial"))


def test_permute_rotary_interleaves_the_two_halves_of_each_head():
    # one head of 4 rows: HF order [r0, r1 | r2, r3] (first halves, second halves) -> [r0, r2, r1, r3]
    weights = np.arange(8, dtype=np.float32).reshape(4, 2)
    out = permute_rotary(weights, n_head=1)
    assert out[:, 0].tolist() == [0.0, 4.0, 2.0, 6.0]


def test_export_refuses_a_folder_without_a_template(tiny_model_dir, tmp_path, capsys):
    assert main(["export", "gguf", str(tiny_model_dir), "--out", str(tmp_path / "x.gguf")]) == 1
    err = capsys.readouterr().err
    assert "has no chat template" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.gguf").exists()


def test_export_is_named_after_the_run_not_the_link_target(tmp_path):
    from tempa.merge.gguf_export import export_name

    run = tmp_path / "runs" / "demo"
    for stage in ("bake", "sft-general"):
        (run / stage / "final").mkdir(parents=True)
    (run / "recipe.resolved.yaml").write_text("name: demo\n")
    (run / "final").symlink_to(run / "bake" / "final")  # what the runner leaves
    assert export_name(run / "final") == "demo"
    assert export_name(run / "bake" / "final") == "demo"
    assert export_name(run / "sft-general" / "final") == "demo-sft-general"
    (tmp_path / "my-model").mkdir()
    assert export_name(tmp_path / "my-model") == "my-model"


def _modelfile_parameters(modelfile: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in modelfile.splitlines():
        if line.startswith("PARAMETER "):
            _, name, value = line.split(" ", 2)
            out.setdefault(name, []).append(value)
    return out


@pytest.mark.parametrize("generation", [
    {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "max_new_tokens": 700},
    {"temperature": 0.0, "max_new_tokens": 64},
])
def test_modelfile_carries_the_recipes_sampling_defaults(tiny_model_dir, tmp_path, generation):
    """Ollama samples with its own defaults (temperature 0.8, top_k 40, top_p 0.9) unless the Modelfile sets
    PARAMETERs: the recipe's `generation` defaults, which generation_config.json carries for transformers, must
    reach Ollama too; a greedy config (temperature 0, do_sample false) is temperature 0 there."""
    import json

    from transformers import AutoTokenizer

    from tempa.chat_templates import bake_tokenizer
    from tempa.chat_templates.baking import GenerationDefaults
    from tempa.merge.gguf_export import export_gguf

    final = tmp_path / "final"
    defaults = GenerationDefaults(**generation)
    bake_tokenizer(tiny_model_dir, "llama3_thinking", final, model_dir=tiny_model_dir, generation=defaults)
    for name in ("config.json", "model.safetensors"):
        (final / name).write_bytes((tiny_model_dir / name).read_bytes())
    saved = json.loads((final / "generation_config.json").read_text())
    modelfile = export_gguf(final, tmp_path / "out" / "m.gguf").modelfile_path.read_text()
    parameters = _modelfile_parameters(modelfile)

    greedy = saved.get("do_sample") is False
    expected = {"temperature": 0.0 if greedy else saved["temperature"], "num_predict": saved["max_new_tokens"]}
    if not greedy:
        expected |= {"top_p": saved["top_p"], "top_k": saved["top_k"], "min_p": saved["min_p"],
                     "repeat_penalty": saved["repetition_penalty"]}
    assert {name: float(values[0]) for name, values in parameters.items() if name != "stop"} == expected
    eos = saved["eos_token_id"]
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert parameters["stop"] == [f'"{token}"' for token in tokenizer.convert_ids_to_tokens(eos)]
    assert '"<|eot_id|>"' in parameters["stop"]


def test_an_edited_template_gets_no_modelfile_of_another_template(tiny_model_dir, tmp_path, caplog):
    """The Go twin is chosen for tempa's shipped templates only: a recipe's own .jinja that ends turns with
    <|eot_id|> got llama3_thinking's twin, which renders another prompt in Ollama than the GGUF's template in
    llama.cpp. Its GGUF is still written (llama.cpp uses the embedded template), without a Modelfile."""
    from gguf import GGUFReader

    from tempa.chat_templates import bake_tokenizer, load_template
    from tempa.merge.gguf_export import export_gguf

    own = tmp_path / "own.jinja"
    own.write_text(load_template("llama3_thinking").replace("Environment: ipython", "Environment: sandbox"))
    final = tmp_path / "final"
    bake_tokenizer(tiny_model_dir, str(own), final, model_dir=tiny_model_dir)
    for name in ("config.json", "model.safetensors"):
        (final / name).write_bytes((tiny_model_dir / name).read_bytes())
    out = tmp_path / "out" / "own.gguf"
    with caplog.at_level("WARNING"):
        result = export_gguf(final, out)
    assert result.modelfile_path is None and not list(out.parent.glob("*Modelfile"))
    assert "sandbox" in field_text(GGUFReader(str(out)), "tokenizer.chat_template")
    assert "without an Ollama Modelfile" in caplog.text and "llama3_thinking" in caplog.text


def test_modelfile_names_the_cards_license(baked_model, tmp_path):
    """`ollama show --license` and the Ollama registry read the Modelfile's LICENSE: the model card's license
    (the recipe's model_card.license) must reach it."""
    import shutil

    from tempa.merge.gguf_export import export_gguf

    final = tmp_path / "final"
    shutil.copytree(baked_model, final)
    (final / "README.md").write_text("---\nlicense: llama3.1\nlibrary_name: transformers\n---\n\n# t\n")
    modelfile = export_gguf(final, tmp_path / "out" / "m.gguf").modelfile_path.read_text()
    assert '\nLICENSE """llama3.1"""\n' in modelfile
    (final / "README.md").write_text("# no front matter\n")
    assert "LICENSE" not in export_gguf(final, tmp_path / "out" / "m.gguf").modelfile_path.read_text()
    # the base model's licence and use policy, which the bake ships, are the texts Ollama's own Modelfiles carry
    (final / "README.md").write_text("---\nlicense: llama3.1\nlibrary_name: transformers\n---\n\n# t\n")
    (final / "LICENSE").write_text("LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\nterms\n")
    (final / "USE_POLICY.md").write_text("# Llama 3.1 Acceptable Use Policy\n")
    modelfile = export_gguf(final, tmp_path / "out" / "m.gguf").modelfile_path.read_text()
    assert '\nLICENSE """LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\nterms"""\n' in modelfile
    assert '\nLICENSE """# Llama 3.1 Acceptable Use Policy"""\n' in modelfile and '"""llama3.1"""' not in modelfile


def test_a_conversion_that_fails_while_writing_leaves_no_partial_file(baked_model, tmp_path, monkeypatch, capsys):
    """A disk that fills while the tensors are written (an f16 70B is ~140 GB) must not leave the partial file
    behind: it is hidden, so nothing would ever use or remove it."""
    import errno

    import gguf

    real = gguf.GGUFWriter.write_tensors_to_file

    def fill_the_disk(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fill_the_disk)
    out = tmp_path / "out" / "m.gguf"
    assert main(["export", "gguf", str(baked_model), "--out", str(out)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_a_model_with_more_embedding_rows_than_tokens_lists_every_row(tiny_model_dir, tmp_path):
    """Embeddings padded past the tokenizer (Qwen's are; a model resized to a multiple of 64 after a pad token was
    added) were written with the tokenizer's token count: llama.cpp sizes token_embd by the token list and refuses
    the file ("wrong shape"). The list is padded with unused tokens up to the rows, as convert_hf_to_gguf.py does."""
    from gguf import GGUFReader, TokenType
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokens_before = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    model.resize_token_embeddings(tokens_before + 8)
    padded = tmp_path / "padded"
    model.save_pretrained(padded)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tiny_model_dir / name, padded / name)
    final = baked_final(padded, tmp_path / "final")
    out = tmp_path / "padded.gguf"
    assert main(["export", "gguf", str(final), "--out", str(out)]) == 0
    reader = GGUFReader(str(out))
    tensors = {t.name: t for t in reader.tensors}
    listed = reader.fields["tokenizer.ggml.tokens"]
    assert len(listed.data) == tensors["token_embd.weight"].data.shape[0] == tensors["output.weight"].data.shape[0]
    assert len(listed.data) == tokens_before + 8
    types = reader.fields["tokenizer.ggml.token_type"]
    last = tokens_before + 7
    assert bytes(listed.parts[listed.data[last]]).decode() == f"[PAD{last}]"
    assert int(types.parts[types.data[last]][0]) == TokenType.UNUSED


def test_a_tokenizer_with_more_tokens_than_embedding_rows_is_refused(baked_model, tmp_path, capsys):
    """The other way round the file cannot load either (an id with no row): one line, and no file written."""
    import json

    from transformers import AutoTokenizer

    folder = tmp_path / "final"
    shutil.copytree(baked_model, folder)
    config = json.loads((folder / "config.json").read_text())
    size = len(AutoTokenizer.from_pretrained(folder))
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": size - 1}))
    assert main(["export", "gguf", str(folder), "--out", str(tmp_path / "x.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert f"the tokenizer has ids up to {size - 1}, but the model's embeddings hold {size - 1} rows" in err
    assert len(err.splitlines()) == 1 and not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))


def test_an_export_into_the_final_folder_leaves_it_publishable_under_a_private_umask(baked_model, tmp_path):
    """Under a cluster's umask 077 the GGUF and Modelfile written into final/ were 0600: `tempa push` then refused
    the whole folder ("mode 0600, not 0644"), with or without --gguf."""
    import os

    from tempa.merge.publish import make_publishable, publish_problems

    folder = tmp_path / "final"
    shutil.copytree(baked_model, folder)
    (folder / "README.md").write_text("# card\n")
    make_publishable(folder)
    assert publish_problems(folder) == []
    old = os.umask(0o077)
    try:
        assert main(["export", "gguf", str(folder), "--type", "q8_0"]) == 0
    finally:
        os.umask(old)
    written = [*sorted(folder.glob("*.gguf")), *folder.glob("*.Modelfile")]
    assert len(written) == 2 and {path.stat().st_mode & 0o777 for path in written} == {0o644}
    assert publish_problems(folder) == []


def test_a_card_with_several_licences_names_each_in_the_modelfile(tmp_path, tiny_model_dir, baked_model):
    """Swallow's card lists two licences (llama3.1 for the base, gemma for its synthetic data): the recipe could not
    say so (model_card.license took one id), and such a card's Modelfile read LICENSE \"\"\"['llama3.1', 'gemma']\"\"\"."""
    from tempa.merge.gguf_export import export_gguf
    from tempa.merge.model_card import ModelCardConfig, render_model_card
    from tempa.sft.stage_api import RecipeInfo

    card = render_model_card(ModelCardConfig.model_validate({"license": ["llama3.1", "gemma"]}), stages={},
                             recipe=RecipeInfo("t", "meta-llama/Llama-3.1-8B", "llama3_thinking"))
    assert "\nlicense:\n- llama3.1\n- gemma\n" in card.split("\n---\n")[0]
    final = tmp_path / "final"
    shutil.copytree(baked_model, final)
    (final / "README.md").write_text(card)
    modelfile = export_gguf(final, tmp_path / "out" / "m.gguf").modelfile_path.read_text()
    assert '\nLICENSE """llama3.1"""\nLICENSE """gemma"""\n' in modelfile and "['" not in modelfile


def sentencepiece_final(model_dir: Path, folder: Path) -> Path:
    """A final folder whose tokenizer transformers converted from a SentencePiece ``tokenizer.model`` (Llama 2,
    Mistral, Gemma style: ``▁`` for spaces, byte fallback), trained here on a few lines, baked with chatml."""
    import io
    import json

    import sentencepiece

    from tempa.chat_templates import bake_tokenizer

    lines = ["Hello world, the quick brown fox jumps over the lazy dog.", "Apa ibu kota Indonesia? Jakarta.",
             "Seven plus five makes twelve; 12345 and 678."] * 20
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=True,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"], pad_id=-1, minloglevel=2)
    base = folder.parent / "spm-base"
    base.mkdir()
    (base / "tokenizer.model").write_bytes(model.getvalue())
    special = {"special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
    (base / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": False, "added_tokens_decoder": {"3": {"content": "<|im_start|>", **special},
                                                         "4": {"content": "<|im_end|>", **special}}}))
    bake_tokenizer(base, "chatml_thinking", folder, model_dir=model_dir)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(model_dir / name, folder / name)
    return folder


def test_a_sentencepiece_tokenizer_is_refused_rather_than_written_as_byte_level_bpe(tiny_model_dir, tmp_path, capsys):
    """GGUF's "gpt2" tokenizer is byte-level BPE: a SentencePiece vocabulary (BPE too, in tokenizer.json) written
    under it tokenizes differently in llama.cpp (its word-start pieces are lost), so the export must stop."""
    folder = sentencepiece_final(tiny_model_dir, tmp_path / "final")
    assert main(["export", "gguf", str(folder), "--out", str(tmp_path / "x.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert "tokenizer.json" in err and "byte-level" in err and "Metaspace" in err and "convert_hf_to_gguf.py" in err
    assert len(err.splitlines()) == 1 and not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))


def test_each_export_keeps_its_own_modelfile_and_a_users_modelfile_is_never_replaced(baked_model, tmp_path, capsys):
    """Every export wrote one shared `Modelfile` beside its GGUF: `--out gg/a.gguf` then `--out gg/b.gguf` left
    gg/Modelfile saying `FROM ./b.gguf`, a run's q8_0 and f16 exports left one Modelfile for two GGUFs (and `tempa push
    --gguf` uploaded both with it), and `--out /tmp/x.gguf` replaced a user's own /tmp/Modelfile."""
    from tempa.recipes.push import push_files

    gg = tmp_path / "gg"
    assert main(["export", "gguf", str(baked_model), "--out", str(gg / "a.gguf")]) == 0
    assert main(["export", "gguf", str(baked_model), "--out", str(gg / "b.gguf"), "--type", "q8_0"]) == 0
    # a command that pastes as printed: the model's name, not a placeholder (the README shows `ollama create demo`)
    assert f"ollama create {export_name(baked_model).lower()} -f {gg / 'b.Modelfile'}" in capsys.readouterr().out
    # a .gguf input (quantised again) is named from what the file records, not from its file name
    assert ollama_name(gg / "a.gguf") == export_name(baked_model).lower() != "a"
    assert sorted(path.name for path in gg.iterdir()) == ["a.Modelfile", "a.gguf", "b.Modelfile", "b.gguf"]
    assert "\nFROM ./a.gguf\n" in (gg / "a.Modelfile").read_text()
    assert "\nFROM ./b.gguf\n" in (gg / "b.Modelfile").read_text()
    assert main(["export", "gguf", str(baked_model), "--out", str(gg / "a.gguf")]) == 0  # its own: replaced

    # a user's own Modelfiles: the shared name is left alone, the GGUF's own name is refused before any work
    (gg / "Modelfile").write_text("FROM llama3.1\nPARAMETER temperature 0.1\n")
    (gg / "c.Modelfile").write_text("FROM ./c.gguf\nPARAMETER temperature 0.1\n")
    assert main(["export", "gguf", str(baked_model), "--out", str(gg / "c.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{gg / 'c.Modelfile'} exists and is not the Modelfile tempa wrote" in err
    assert not (gg / "c.gguf").exists() and not list(gg.glob(".*"))
    assert (gg / "c.Modelfile").read_text() == "FROM ./c.gguf\nPARAMETER temperature 0.1\n"
    assert main(["export", "gguf", str(baked_model), "--out", str(gg / "d.gguf")]) == 0
    assert (gg / "Modelfile").read_text() == "FROM llama3.1\nPARAMETER temperature 0.1\n"

    # two types into a final folder: two Modelfiles, both uploaded with --gguf, neither without
    folder = tmp_path / "mymodel"
    shutil.copytree(baked_model, folder)
    for file_type in ("q8_0", "f16"):
        assert main(["export", "gguf", str(folder), "--type", file_type]) == 0
    exported = {"mymodel-q8_0.gguf", "mymodel-q8_0.Modelfile", "mymodel-f16.gguf", "mymodel-f16.Modelfile"}
    assert exported <= {path.name for path in folder.iterdir()}
    assert "\nFROM ./mymodel-f16.gguf\n" in (folder / "mymodel-f16.Modelfile").read_text()
    assert exported <= {f.path_in_repo for f in push_files(folder, include_gguf=True)}
    assert not exported & {f.path_in_repo for f in push_files(folder)}


def test_an_edited_template_keeps_its_thinking_check_and_the_export_says_so(baked_model, tmp_path, caplog):
    """The GGUF's template lets a request's thinking_mode win over llama-server's enable_thinking by replacing
    tempa's own check, word for word: an edited copy kept the refusal, silently, while the export advised sending
    thinking_mode (a review found it)."""
    import logging

    edited = tmp_path / "edited"
    shutil.copytree(baked_model, edited)
    template = (edited / "chat_template.jinja").read_text()
    assert "contradicts enable_thinking" in template
    (edited / "chat_template.jinja").write_text(template.replace("contradicts enable_thinking", "conflicts with "
                                                                 "enable_thinking"))
    with caplog.at_level(logging.WARNING):
        assert main(["export", "gguf", str(edited), "--out", str(tmp_path / "e.gguf")]) == 0
    assert "its chat template is not tempa's as shipped" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["export", "gguf", str(baked_model), "--out", str(tmp_path / "b.gguf")]) == 0
    assert "not tempa's as shipped" not in caplog.text


@pytest.mark.parametrize("error", [OSError("65536 requested and 36816 written"), StageError("quantiser exited 1")])
def test_an_export_that_fills_the_disk_names_the_disk_as_the_bake_does(baked_model, tmp_path, monkeypatch, capsys,
                                                                       error):
    """A full disk during the export said `tempa: error: OSError: 65536 requested and 36816 written` (gguf's short
    write), naming neither the disk nor the folder; a stage on the same disk says which disk is full."""
    import gguf

    def fill_the_disk(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fill_the_disk)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=36 << 10))
    out = tmp_path / "out" / "m.gguf"
    assert main(["export", "gguf", str(baked_model), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tempa: error: {error if isinstance(error, StageError) else 'OSError: ' + str(error)}")
    assert err.endswith(f"; the disk of {out.parent} is full (36 KiB free): free space, then run the same command "
                        "again to resume")


def test_an_export_error_on_a_disk_with_room_is_said_as_it_is(baked_model, tmp_path, monkeypatch, capsys):
    import gguf

    def fail(self, *args, **kwargs):
        raise OSError("65536 requested and 36816 written")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    assert main(["export", "gguf", str(baked_model), "--out", str(tmp_path / "m.gguf")]) == 1
    assert "disk" not in capsys.readouterr().err
