"""Which attention implementation and Liger kernels a training process uses, when the recipe leaves it open.

:func:`choose_kernels` is a pure function of what the machine has (:class:`KernelEnv`) and what the
recipe asked for, so the rule is testable without a GPU; :func:`detect_env` probes the machine.

- attention: flash-attention 2 on a CUDA GPU in bf16/fp16 when ``flash_attn`` is installed (its
  varlen kernel attends within each packed document); otherwise, for packed rows, tempa's
  per-document sdpa (``tempa.sft.packed_attention``), when the model's attention is plain causal;
  otherwise transformers' default (sdpa).
- Liger: on for CUDA when ``liger_kernel`` is installed. trl 1.16 applies its layer kernels
  (RMSNorm, RoPE, SwiGLU) and keeps its own chunked LM head + loss, which never materialises the
  full logits; it refuses Liger's fused linear cross-entropy.

A recipe that sets ``model_init_kwargs.attn_implementation`` or ``use_liger_kernel`` keeps its choice.

Sequence parallelism constrains the attention: torch context parallelism (FSDP2) runs only sdpa
(transformers' ``Trainer`` refuses any other implementation), and DeepSpeed Ulysses/ALST must be told
the model's implementation (:func:`sequence_parallel_env`), since accelerate's launcher defaults it to sdpa
and DeepSpeed refuses a model loaded with another.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tempa.sft.packed_attention import DOC_SDPA

FLASH_ATTENTION = "flash_attention_2"
ULYSSES_ATTENTION = ("flash_attention_2", "flash_attention_3", "sdpa")  # what accelerate takes for Ulysses
KERNEL_KEYS = ("attn_implementation", "liger_kernel")  # what KernelChoice.record() puts in a stage's metrics


@dataclass(frozen=True)
class KernelEnv:
    """What the training machine offers."""

    cuda: bool
    precision: str  # "bf16" | "fp16" | "no"
    flash_attn: bool  # the flash_attn package is importable
    liger: bool  # the liger_kernel package is importable


@dataclass(frozen=True)
class KernelChoice:
    """What the trainer is configured with; recorded in the stage's metrics."""

    attn_implementation: str | None  # None: transformers' default (sdpa)
    use_liger_kernel: bool
    why: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """Flat, JSON-ready values for metrics.json and the manifest."""
        return dict(zip(KERNEL_KEYS, (self.attn_implementation or "sdpa", self.use_liger_kernel), strict=True))


def choose_kernels(
    env: KernelEnv,
    *,
    packed: bool,
    requested_attention: str | None = None,
    requested_liger: bool | None = None,
    document_attention: tuple[bool, str] = (True, ""),
    context_parallel: bool = False,
) -> KernelChoice:
    """The attention implementation and Liger setting for one training process.

    ``packed``: rows hold several documents (BFD packing / padding-free);
    ``document_attention``: :func:`tempa.sft.packed_attention.supports_document_attention` of the model;
    ``context_parallel``: the launch runs torch context parallelism (:func:`launched_context_parallel`).
    """
    why = []
    if requested_attention is not None:
        attention: str | None = requested_attention
        why.append(f"attention {requested_attention}: set by the recipe")
    elif context_parallel:
        # transformers' Trainer._prepare_context_parallel_inputs raises for any attention but "sdpa"
        attention = None
        why.append("attention sdpa: torch context parallelism runs only sdpa")
    elif env.cuda and env.precision in ("bf16", "fp16") and env.flash_attn:
        attention = FLASH_ATTENTION
        why.append("attention flash_attention_2: flash_attn installed, CUDA, half precision")
    elif packed and document_attention[0]:
        attention = DOC_SDPA
        reason = "no flash_attn" if not env.flash_attn else "flash_attn needs CUDA and bf16/fp16"
        why.append(f"attention {DOC_SDPA}: packed rows, {reason}; one causal sdpa call per document")
    else:
        attention = None
        if packed:
            why.append(f"attention sdpa (dense block mask): the model has {document_attention[1]}")
    if requested_liger is not None:
        liger = bool(requested_liger)
        why.append(f"liger kernels {'on' if liger else 'off'}: set by the recipe")
    else:
        liger = env.cuda and env.liger
        if liger:
            why.append("liger kernels on: liger_kernel installed, CUDA")
    return KernelChoice(attention, liger, why)


def detect_env(precision: str) -> KernelEnv:
    """Probe this machine (CUDA, flash_attn, liger_kernel) for :func:`choose_kernels`."""
    import torch

    def installed(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    return KernelEnv(cuda=torch.cuda.is_available(), precision=precision, flash_attn=installed("flash_attn"),
                     liger=installed("liger_kernel"))


def launched_context_parallel(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``accelerate launch`` started this process with torch context parallelism (cp_size > 1)."""
    environ = os.environ if environ is None else environ
    return int(environ.get("PARALLELISM_CONFIG_CP_SIZE", "1") or 1) > 1


def sequence_multiple(environ: Mapping[str, str] | None = None) -> int:
    """What every batch's sequence length must be a multiple of under the launch's sequence parallelism (1: none).

    DeepSpeed's Ulysses splits a batch's sequence over the sp ranks and refuses a length they do not divide
    (UlyssesSPDataLoaderAdapter); torch context parallelism cuts it into 2 x cp load-balanced chunks.
    """
    environ = os.environ if environ is None else environ
    sp = int(environ.get("PARALLELISM_CONFIG_SP_SIZE", "1") or 1)
    cp = int(environ.get("PARALLELISM_CONFIG_CP_SIZE", "1") or 1)
    return sp if sp > 1 else 2 * cp if cp > 1 else 1


def sequence_parallel_env(kernels: KernelChoice, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a DeepSpeed Ulysses/ALST process needs so its attention is the model's own.

    ``accelerate launch`` exports PARALLELISM_CONFIG_SP_ATTN_IMPLEMENTATION (default "sdpa") and DeepSpeed's
    UlyssesSPAttentionHF.register_with_transformers refuses a model loaded with a different implementation;
    empty when the launch has no Ulysses sequence parallelism.
    """
    environ = os.environ if environ is None else environ
    if int(environ.get("PARALLELISM_CONFIG_SP_SIZE", "1") or 1) <= 1:
        return {}
    attention = kernels.attn_implementation or "sdpa"
    if attention not in ULYSSES_ATTENTION:
        # accelerate's sequence-parallel config refuses any other name, with a message that says nothing of packing
        raise ValueError(f"launch.sequence_parallel (DeepSpeed Ulysses/ALST) runs {' or '.join(ULYSSES_ATTENTION)}, "
                         f"and this process would attend with {attention}: install flash-attn (the gpu extra) for "
                         "packed rows, or set train.packing: false")
    return {"PARALLELISM_CONFIG_SP_ATTN_IMPLEMENTATION": attention}
