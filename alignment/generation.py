"""Generation backends: chat prompts in, decoded assistant completions out.

A backend turns a batch of chat prompts (lists of ``{"role", "content"}`` messages, with an agent's
``tool_calls`` and ``tool`` turns where it has them, and per prompt the tool definitions it offers) into
``n`` completions each. Every caller (evaluation suites, on-policy sampling, teacher synthesis) talks
to the small :class:`GenerationBackend` interface, so a vLLM or OpenAI-compatible HTTP backend
can replace :class:`TransformersBackend` without touching them.

Completions are the text the model wrote after the generation prompt: generation stops at the
end-of-turn token, special tokens are stripped (think tags are kept, whatever their status in
the vocabulary), and nothing of the prompt is repeated.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tempa.chat_templates.thinking import STOP_TOKENS, THINK_TAGS, ThinkingMode, mode_kwargs

log = logging.getLogger("tempa.alignment.generation")

Messages = list[dict[str, Any]]
Tools = list[dict[str, Any]]


class GenerationParams(BaseModel):
    """Sampling settings shared by every backend."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=512, ge=1, description="Most tokens generated per completion.")
    temperature: float = Field(
        default=0.0, ge=0.0, description="Sampling temperature; 0 means greedy decoding."
    )
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (sampling only).")
    n: int = Field(default=1, ge=1, description="Completions per prompt.")
    seed: int = Field(default=0, description="Seed for sampling; the same seed gives the same samples.")
    thinking_mode: ThinkingMode | None = Field(
        default=None,
        description="`thinking_mode` passed to the chat template for every prompt (None: template default).",
    )
    batch_size: int = Field(default=8, ge=1, description="Prompts per forward batch.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class GenerationBackend(ABC):
    """Turns chat prompts into completions: transformers (here), vLLM and OpenAI-compatible HTTP (alignment.backends_*)."""

    @abstractmethod
    def generate(
        self,
        prompts: list[Messages],
        params: GenerationParams,
        *,
        thinking_modes: Sequence[ThinkingMode | None] | None = None,
    ) -> list[list[str]]:
        """Return ``params.n`` completions per prompt, in prompt order.

        ``thinking_modes`` overrides ``params.thinking_mode`` per prompt (None entries fall back
        to it). The built-in backends also take per-prompt ``tools`` (None: none); callers pass them only
        when a prompt offers some, so a backend written without tools keeps working.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model (memory, server connections). Optional."""


def resolve_modes(
    count: int, params: GenerationParams, thinking_modes: Sequence[ThinkingMode | None] | None
) -> list[ThinkingMode | None]:
    """Per-prompt thinking modes: the override where given, else the params' default."""
    if thinking_modes is None:
        return [params.thinking_mode] * count
    if len(thinking_modes) != count:
        raise ValueError(f"thinking_modes has {len(thinking_modes)} entries for {count} prompts")
    return [mode if mode is not None else params.thinking_mode for mode in thinking_modes]


def resolve_tools(count: int, tools: Sequence[Tools | None] | None) -> list[Tools | None]:
    """Per-prompt tool definitions (None: the prompt offers none)."""
    if tools is None:
        return [None] * count
    if len(tools) != count:
        raise ValueError(f"tools has {len(tools)} entries for {count} prompts")
    return [list(t) if t else None for t in tools]  # `or None`: an empty list would render a tool preamble


def end_of_turn_ids(tokenizer, generation_config=None) -> list[int]:
    """Token ids that stop generation: every eos id, plus the end-of-turn tokens of the chat
    template (those of :data:`tempa.chat_templates.thinking.STOP_TOKENS` it contains; without a
    template, those in the vocabulary)."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    vocab = tokenizer.get_vocab()
    ids: list[int] = []
    for source in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is not None:
            ids.extend(source if isinstance(source, list) else [source])
    for token in STOP_TOKENS:
        if token in vocab and (template is None or token in template):
            ids.append(vocab[token])
    return list(dict.fromkeys(int(i) for i in ids))


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class TransformersBackend(GenerationBackend):
    """Batched `model.generate` with left padding, on one device.

    ``model`` and ``tokenizer`` are public so evaluation can reuse the loaded weights (e.g. for
    held-out loss) instead of loading them twice.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        tokenizer_dir: str | os.PathLike | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        show_progress: bool = True,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.device = _pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_dir or model_dir, trust_remote_code=trust_remote_code
        )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer at {tokenizer_dir or model_dir} has no pad token")
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=_pick_dtype(dtype, self.device), trust_remote_code=trust_remote_code,
            use_safetensors=True,  # never unpickle a checkpoint
        ).to(self.device)
        self.model.eval()
        self.stop_ids = end_of_turn_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        self.show_progress = show_progress
        # Special tokens dropped from completions; think tags stay even if registered as special.
        self._drop_ids = {
            int(i)
            for token, i in zip(
                self.tokenizer.all_special_tokens, self.tokenizer.all_special_ids, strict=True
            )
            if token not in THINK_TAGS
        }

    def render(self, messages: Messages, thinking_mode: ThinkingMode | None, tools: Tools | None = None) -> str:
        """The prompt text the model sees: the chat template (offering ``tools``) with the generation prompt."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, tools=tools, **mode_kwargs(thinking_mode)
        )

    def decode(self, token_ids: Sequence[int]) -> str:
        """Completion text: cut at the first stop token, special tokens (but think tags) removed."""
        kept: list[int] = []
        for token_id in token_ids:
            token_id = int(token_id)
            if token_id in self.stop_ids:
                break
            if token_id not in self._drop_ids:
                kept.append(token_id)
        return self.tokenizer.decode(kept, skip_special_tokens=False)

    def generate(
        self,
        prompts: list[Messages],
        params: GenerationParams,
        *,
        thinking_modes: Sequence[ThinkingMode | None] | None = None,
        tools: Sequence[Tools | None] | None = None,
    ) -> list[list[str]]:
        import torch
        from tqdm.auto import tqdm

        modes = resolve_modes(len(prompts), params, thinking_modes)
        offered = resolve_tools(len(prompts), tools)
        texts = [self.render(messages, mode, t) for messages, mode, t in zip(prompts, modes, offered, strict=True)]
        encoded = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        # Longest first, so batches hold similar lengths and the first batch shows peak memory.
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        results: list[list[str]] = [[] for _ in prompts]
        batches = [order[i : i + params.batch_size] for i in range(0, len(order), params.batch_size)]
        for batch_index, batch in enumerate(
            tqdm(batches, desc="generate", disable=not self.show_progress or len(batches) < 2)
        ):
            padded = self.tokenizer.pad(
                {"input_ids": [encoded[i] for i in batch]}, padding=True, return_tensors="pt"
            ).to(self.device)
            sampling: dict[str, Any] = {"do_sample": False}
            if not params.greedy:
                sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
                # Seeded per batch, so a batch's samples do not depend on the batches before it.
                torch.manual_seed(params.seed + batch_index)
            with torch.inference_mode():
                output = self.model.generate(
                    **padded,
                    max_new_tokens=params.max_new_tokens,
                    num_return_sequences=params.n,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                    top_k=None,
                    **sampling,
                )
            prompt_length = padded["input_ids"].shape[1]
            new_tokens = output[:, prompt_length:].tolist()
            for row, prompt_index in enumerate(batch):
                for sample in range(params.n):
                    results[prompt_index].append(self.decode(new_tokens[row * params.n + sample]))
        return results

    def close(self) -> None:
        import gc

        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
