"""What `tempa export gguf` prints and advises, on a machine without the serving extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stage_helpers import baked_final
from tempa.merge.gguf_export import gguf_tensor_types
from tempa.recipes.cli import main


@pytest.fixture(scope="module")
def final(tmp_path_factory, tiny_model_dir) -> Path:
    return baked_final(tiny_model_dir, tmp_path_factory.mktemp("gguf-cli") / "final")


def test_a_k_quant_without_llama_cpp_names_an_install_that_works_before_writing_anything(
        final, tmp_path, monkeypatch, capsys):
    """tempa is installed from its checkout (it is not on PyPI): `pip install 'tempa[serving]'` cannot work.
    The missing quantiser is found before the f16 intermediate is written."""
    import tempa.merge.gguf_export as gguf_export

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError

    def no_f16(*args, **kwargs):
        raise AssertionError("the f16 intermediate was written although it could not be quantised")

    monkeypatch.setattr(gguf_export, "_tensors", no_f16)
    out = tmp_path / "m-q4_k_m.gguf"
    assert main(["export", "gguf", str(final), "--type", "q4_k_m", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "llama-cpp-python" in err, err
    assert "'tempa[serving]'" not in err, err
    assert "llama-cpp-python>=0.3.36" in err or ".[serving]" in err, err
    assert not list(tmp_path.iterdir())  # nothing written, no scratch folder left


def test_f16_and_q8_0_print_their_tensors_by_type(final, tmp_path, capsys):
    """The README: "The command prints the tensors by type"; a q8_0 file keeps its norms in F32."""
    out = tmp_path / "m-q8_0.gguf"
    assert main(["export", "gguf", str(final), "--type", "q8_0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    types = gguf_tensor_types(out)
    assert set(types) == {"Q8_0", "F32"}, types
    assert f"by type: F32 {types['F32']}, Q8_0 {types['Q8_0']}" in printed, printed


def test_an_architecture_the_writer_lacks_is_pointed_to_llama_cpps_converter(tmp_path, capsys):
    """A Qwen2 model got only "GGUF export supports LlamaForCausalLM, got ('Qwen2ForCausalLM',)": not the route
    the README gives (llama.cpp's converter, then `tempa export gguf` on its f16 file to quantise)."""
    from transformers import Qwen2Config

    Qwen2Config(architectures=["Qwen2ForCausalLM"]).save_pretrained(tmp_path / "qwen")
    assert main(["export", "gguf", str(tmp_path / "qwen"), "--type", "f16"]) != 0
    err = capsys.readouterr().err
    assert "Qwen2ForCausalLM" in err and "convert_hf_to_gguf.py" in err and "--type" in err
    assert "('" not in err and not list((tmp_path / "qwen").glob("*.gguf"))


def test_what_the_export_cannot_do_is_refused_up_front_in_one_line(final, tmp_path, capsys):
    """`--out` an existing folder wrote the whole GGUF, then failed with IsADirectoryError; a path that does not exist
    was "not a model folder (no config.json)"; a .gguf input without --type was told "--type f16: not a llama.cpp
    quantisation type" (the user typed no --type), and `--type q8_0` on it that q8_0 is not one, which llama.cpp has."""
    def refused(*argv: str) -> str:
        assert main(["export", "gguf", *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("tempa: error: ") and "Traceback" not in err, err
        return err

    data = tmp_path / "data"
    data.mkdir()
    assert f"--out {data} is a folder; give a .gguf file path" in refused(str(final), "--out", str(data))
    assert not list(data.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert f"{tmp_path / 'nope'}: no such file or folder" in refused(str(tmp_path / "nope"))

    f16 = tmp_path / "m-f16.gguf"
    assert main(["export", "gguf", str(final), "--out", str(f16)]) == 0  # stands for llama.cpp's converter output
    capsys.readouterr()
    err = refused(str(f16))
    assert "a .gguf input is quantised with llama.cpp's quantiser and needs --type" in err and "--type f16" not in err
    assert "q8_0" in err and "q4_k_m" in err
    assert "tempa writes f16 from a model folder only" in refused(str(f16), "--type", "f16")
    assert sorted(p.name for p in tmp_path.glob("*.gguf")) == ["m-f16.gguf"]

    assert main(["export", "gguf", str(f16), "--type", "q8_0"]) == 0  # through llama.cpp's quantiser
    assert gguf_tensor_types(tmp_path / "m-f16-q8_0.gguf").get("Q8_0", 0) >= 4
    with pytest.raises(SystemExit):
        main(["export", "gguf", "--help"])
    assert "default: f16 for a model folder" in " ".join(capsys.readouterr().out.split())
