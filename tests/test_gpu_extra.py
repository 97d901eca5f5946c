"""The `gpu` extra and the kernels a sequence-parallel launch may use, checked against the installed libraries."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from tempa.sft.kernels import KernelEnv, choose_kernels, launched_context_parallel, sequence_parallel_env

REPO = Path(__file__).resolve().parent.parent


def _gpu_extra() -> dict[str, Requirement]:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {(r := Requirement(text)).name: r for text in extras["gpu"]}


def _trl_extra(name: str) -> Requirement:
    for text in importlib.metadata.requires("trl") or []:
        requirement = Requirement(text)
        if requirement.name == name and requirement.marker is not None and "extra" in str(requirement.marker):
            return requirement
    raise AssertionError(f"trl declares no extra with {name}")


@pytest.mark.parametrize("name", ["liger-kernel", "vllm"])
def test_gpu_extra_allows_only_versions_trl_supports(name: str) -> None:
    """A version the gpu extra lets pip install must be one trl's own extra accepts (trl.import_utils)."""
    ours, trls = _gpu_extra()[name].specifier, _trl_extra(name).specifier
    bounds = {Version(spec.version) for spec in (*ours, *trls)}
    probes = bounds | {Version(f"{v.major}.{v.minor}.{v.micro + d}") for v in bounds for d in (-1, 1) if v.micro + d >= 0}
    probes |= {Version(f"{v.major}.{v.minor + d}") for v in bounds for d in (-1, 1) if v.minor + d >= 0}
    outside = sorted(str(v) for v in probes if v in ours and v not in trls)
    assert not outside, f"the gpu extra allows {name} {outside}, which trl {importlib.metadata.version('trl')} does not"


def test_context_parallel_keeps_sdpa_even_with_flash_attn() -> None:
    gpu = KernelEnv(cuda=True, precision="bf16", flash_attn=True, liger=False)
    assert choose_kernels(gpu, packed=False).attn_implementation == "flash_attention_2"
    choice = choose_kernels(gpu, packed=False, context_parallel=True)
    assert choice.attn_implementation is None and "context parallelism" in choice.why[0]
    assert choose_kernels(gpu, packed=False, requested_attention="flash_attention_2",
                          context_parallel=True).attn_implementation == "flash_attention_2"  # the recipe's choice
    assert launched_context_parallel({"PARALLELISM_CONFIG_CP_SIZE": "2"})
    assert not launched_context_parallel({"PARALLELISM_CONFIG_CP_SIZE": "1"}) and not launched_context_parallel({})


def test_ulysses_is_told_the_models_attention() -> None:
    gpu = KernelEnv(cuda=True, precision="bf16", flash_attn=True, liger=False)
    flash = choose_kernels(gpu, packed=True)
    assert sequence_parallel_env(flash, {}) == {}
    assert sequence_parallel_env(flash, {"PARALLELISM_CONFIG_SP_SIZE": "1"}) == {}
    ulysses = {"PARALLELISM_CONFIG_SP_SIZE": "2", "PARALLELISM_CONFIG_SP_ATTN_IMPLEMENTATION": "sdpa"}
    assert sequence_parallel_env(flash, ulysses) == {"PARALLELISM_CONFIG_SP_ATTN_IMPLEMENTATION": "flash_attention_2"}
    plain = choose_kernels(KernelEnv(cuda=True, precision="bf16", flash_attn=False, liger=False), packed=False)
    assert sequence_parallel_env(plain, ulysses) == {"PARALLELISM_CONFIG_SP_ATTN_IMPLEMENTATION": "sdpa"}
    # packed rows without flash_attn would attend per document with tempa's kernel, which Ulysses cannot run
    packed = choose_kernels(KernelEnv(cuda=True, precision="bf16", flash_attn=False, liger=False), packed=True)
    with pytest.raises(ValueError, match="would attend with tempa_doc_sdpa: install flash-attn"):
        sequence_parallel_env(packed, ulysses)


def test_accelerate_reads_the_attention_tempa_sets(monkeypatch) -> None:
    """accelerate's Ulysses config takes its attention from the environment the worker updates."""
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    monkeypatch.setenv("PARALLELISM_CONFIG_SP_ATTN_IMPLEMENTATION", "flash_attention_2")
    assert DeepSpeedSequenceParallelConfig().sp_attn_implementation == "flash_attention_2"


def test_a_ulysses_worker_sets_the_attention_accelerate_reads(monkeypatch, tiny_model_dir) -> None:
    """The worker replaces the sdpa accelerate's launcher exported with the attention the model loads with."""
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import announced_kernels

    monkeypatch.setenv("PARALLELISM_CONFIG_SP_SIZE", "2")
    monkeypatch.setenv("PARALLELISM_CONFIG_SP_ATTN_IMPLEMENTATION", "sdpa")
    plan = TrainPlan.standalone(tiny_model_dir, Path("/out"), {"packing": True,
                                                               "model_init_kwargs": {"attn_implementation": "eager"}})
    with pytest.raises(ValueError, match="would attend with eager"):
        announced_kernels(plan)
    plan = TrainPlan.standalone(tiny_model_dir, Path("/out"), {"packing": True,
                                                               "model_init_kwargs": {"attn_implementation": "flash_attention_2"}})
    assert announced_kernels(plan).attn_implementation == "flash_attention_2"
    assert os.environ["PARALLELISM_CONFIG_SP_ATTN_IMPLEMENTATION"] == "flash_attention_2"
