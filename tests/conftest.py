"""Shared fixtures: one tiny model + tokenizer per test session, built locally (no hub)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Nothing in the tests may reach a hub, and CPU runs should not spam accelerator warnings.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests never read or fill the user's ~/.cache/tempa (subprocesses inherit this too)."""
    path = tmp_path_factory.mktemp("tempa-cache")
    os.environ["TEMPA_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama model + Llama-3-style tokenizer saved to disk (treat as read-only)."""
    from tempa.recipes.tiny import write_tiny_default

    return write_tiny_default(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tokenizer_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recipe tokenizer: the tiny tokenizer with the shipped thinking template, not baked (treat as read-only;
    a test module that needs a baked one defines its own)."""
    from transformers import AutoTokenizer

    from tempa.chat_templates.templates import load_template

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = load_template("llama3_thinking")
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    """The recipe tokenizer loaded once (the tiny tokenizer with the shipped thinking template; treat as read-only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def llama3_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with Meta's real Llama 3 tokenizer (128,256 tokens, built offline; treat as read-only)."""
    from tempa.recipes.tiny import write_tiny_default

    return write_tiny_default(tmp_path_factory.mktemp("tiny-llama3") / "model", tokenizer="llama3")


@pytest.fixture(scope="session")
def llama3_final_dir(llama3_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Llama 3 tokenizer model baked with llama3_thinking (read-only; baking 128k tokens is slow, so once)."""
    from stage_helpers import baked_final

    return baked_final(llama3_model_dir, tmp_path_factory.mktemp("llama3-final") / "final")


@pytest.fixture(scope="session")
def llama3_gguf(llama3_final_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``llama3_final_dir`` exported to an f16 GGUF (with its Modelfile beside it; read-only)."""
    from tempa.merge.gguf_export import export_gguf

    return export_gguf(llama3_final_dir, tmp_path_factory.mktemp("llama3-gguf") / "llama3.gguf").gguf_path


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_model_dir: Path) -> Path:
    """Same folder as the model: the tokenizer files live beside the weights."""
    return tiny_model_dir


@pytest.fixture()
def tiny_tokenizer(tiny_tokenizer_dir: Path):
    """A fresh tokenizer loaded from disk (fresh per test, so tests may mutate it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/ollama/render.go built: renders a Modelfile TEMPLATE as Ollama drives it (see test_ollama_modelfile)."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("the Ollama template test needs Go (Debian: apt-get install golang-go; the README's test "
                    "command installs it)")
    folder = tmp_path_factory.mktemp("ollama")
    out, source = folder / "render", Path(__file__).parent / "ollama" / "render.go"
    env = {**os.environ, "GO111MODULE": "auto", "GOFLAGS": ""}
    if not (env.get("HOME") or env.get("XDG_CACHE_HOME") or env.get("GOCACHE")):
        env["GOCACHE"] = str(folder / "go-cache")  # go needs a build cache; CI may have no home
    subprocess.run([go, "build", "-o", str(out), str(source)], check=True, cwd=source.parent, env=env)
    return out
