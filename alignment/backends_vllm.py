"""vLLM's offline engine as a sampling backend (GPU; an optional extra, imported only when used).

Prompts are rendered here with the recipe's tokenizer (so the thinking template and its
``thinking_mode`` apply exactly as in training) and handed to ``LLM.generate`` as token ids;
each prompt gets its own ``SamplingParams`` (``n``, ``temperature``, ``top_p``, ``max_tokens``,
a per-prompt ``seed``, the end-of-turn ``stop_token_ids``). vLLM reports ``finish_reason``
("stop" / "length") and the token ids of each sample, which map straight onto
:class:`~tempa.alignment.completions.Completion`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from tempa.alignment.backends import SamplingBackend
from tempa.alignment.completions import Completion, generation_prefill
from tempa.alignment.generation import (
    GenerationParams,
    Messages,
    ThinkingMode,
    Tools,
    end_of_turn_ids,
    resolve_modes,
    resolve_tools,
)
from tempa.chat_templates.thinking import mode_kwargs
from tempa.sft.stage_api import StageError

INSTALL_HINT = "the vllm backend needs vLLM on a GPU machine: pip install 'tempa[gpu]' (or pip install vllm)"


def import_vllm() -> Any:
    """The ``vllm`` module, or a one-line StageError saying how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise StageError(f"{INSTALL_HINT} ({exc})") from None
    return vllm


def sampling_kwargs(params: GenerationParams, *, seed: int, stop_token_ids: Sequence[int]) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for tempa's generation settings (pure)."""
    kwargs: dict[str, Any] = {
        "n": params.n,
        "temperature": params.temperature,
        "top_p": 1.0 if params.greedy else params.top_p,
        "max_tokens": params.max_new_tokens,
        "seed": seed,
        "stop_token_ids": list(stop_token_ids),
        # Special tokens are dropped from the text (the stop token is never part of it); think
        # tags are ordinary text in tempa's templates, so they stay.
        "skip_special_tokens": True,
    }
    return kwargs


def engine_kwargs(
    model: str,
    tokenizer: str,
    *,
    tensor_parallel_size: int,
    gpu_memory_utilization: float,
    dtype: str,
    max_model_len: int | None,
    enforce_eager: bool,
    trust_remote_code: bool,
    seed: int,
    engine_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``vllm.LLM(...)`` keyword arguments (pure)."""
    kwargs: dict[str, Any] = {
        "model": model,
        "tokenizer": tokenizer,
        "tensor_parallel_size": tensor_parallel_size,
        "gpu_memory_utilization": gpu_memory_utilization,
        "dtype": dtype,
        "enforce_eager": enforce_eager,
        "trust_remote_code": trust_remote_code,
        "seed": seed,
        "load_format": "safetensors",  # never unpickle a checkpoint (the config refuses engine_args that would)
    }
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    kwargs.update(engine_args or {})
    return kwargs


class VLLMBackend(SamplingBackend):
    """``vllm.LLM`` over one model; every GPU it was given (tensor parallel) serves it."""

    seeds_by_place = True  # each request carries its own seed (:func:`tempa.alignment.backends.sample_at`)

    def __init__(
        self,
        model: str | os.PathLike,
        tokenizer: str | os.PathLike,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        dtype: str = "auto",
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        trust_remote_code: bool = False,
        seed: int = 0,
        engine_args: dict[str, Any] | None = None,
        show_progress: bool = True,
    ) -> None:
        vllm = import_vllm()
        from transformers import AutoTokenizer

        self._vllm = vllm
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=trust_remote_code)
        self.stop_ids = end_of_turn_ids(self.tokenizer)
        self.show_progress = show_progress
        self.describe = f"vllm:{model}"
        self.llm = vllm.LLM(**engine_kwargs(
            str(model), str(tokenizer), tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, max_model_len=max_model_len,
            enforce_eager=enforce_eager, trust_remote_code=trust_remote_code, seed=seed, engine_args=engine_args,
        ))

    def sample(
        self,
        prompts: list[Messages],
        params: GenerationParams,
        *,
        thinking_modes: Sequence[ThinkingMode | None] | None = None,
        tools: Sequence[Tools | None] | None = None,
        places: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        modes = resolve_modes(len(prompts), params, thinking_modes)
        offered = resolve_tools(len(prompts), tools)
        requests, prefills, sampling = [], [], []
        at = list(places) if places is not None else list(range(len(prompts)))  # as the HTTP backend seeds
        for i, messages, mode, t in zip(at, prompts, modes, offered, strict=True):
            kwargs = {**mode_kwargs(mode), "tools": t}
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
            # Token ids, so vLLM does not add a second BOS to the rendered template.
            requests.append({"prompt_token_ids": self.tokenizer(text, add_special_tokens=False)["input_ids"]})
            prefills.append(generation_prefill(self.tokenizer, messages, kwargs))
            sampling.append(self._vllm.SamplingParams(
                **sampling_kwargs(params, seed=params.seed + i * params.n, stop_token_ids=self.stop_ids)))
        outputs = self.llm.generate(requests, sampling, use_tqdm=self.show_progress)
        results = []
        for output, prefill in zip(outputs, prefills, strict=True):
            results.append([
                Completion(
                    text=sample.text,
                    prefill=prefill,
                    finish_reason=sample.finish_reason if sample.finish_reason in ("stop", "length") else None,
                    completion_tokens=len(sample.token_ids),
                )
                for sample in output.outputs
            ])
        return results

    def close(self) -> None:
        """Free the engine and its GPU memory before training starts (best effort across vLLM versions)."""
        import contextlib
        import gc

        # vLLM's V1 engine runs its core in a process of its own, which holds the GPU memory: stop it now rather
        # than when garbage collection finds the last reference (LLMEngine.shutdown, where the version has it)
        with contextlib.suppress(Exception):
            self.llm.llm_engine.shutdown()
        del self.llm
        with contextlib.suppress(Exception):
            from vllm.distributed import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
