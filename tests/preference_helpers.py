"""A tiny policy that ends its turns: the random tiny model almost never samples its end-of-turn token, and
a preference round only pairs samples that ended on their own."""

from __future__ import annotations

import math
from pathlib import Path


def ending_model(model_dir: Path, tokenizer_dir: Path, out: Path, *, per_token: float = 0.15) -> Path:
    """A copy of ``model_dir`` that samples its end-of-turn token with about ``per_token`` probability at
    every position (most 12-token samples then end on their own, whatever the prompt).

    Every token embedding gets one large constant feature, which survives the layers as a nearly constant
    final hidden value (measured: 6.15 +- 0.2 on the tiny model); the end-of-turn row of the LM head reads
    only that feature, so its logit is a bias set against the mean log-partition of a chat prompt.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2? Explain it to me in detail."}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        embeddings = model.model.embed_tokens.weight
        embeddings[:, 0] = embeddings.abs().mean() * 20
        hidden = model.model(**ids).last_hidden_state[0]
        partition = torch.logsumexp(model.lm_head(hidden), -1).mean()
        model.lm_head.weight[eot] = 0
        model.lm_head.weight[eot, 0] = (math.log(per_token / (1 - per_token)) + partition) / hidden[:, 0].mean()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def flipped_thinking(load_prompts):
    """``load_prompts`` with every prompt's thinking mode turned over: another draw than the one a journal was
    written under (monkeypatched over a stage module's ``load_prompts``)."""
    def other_draw(*args, **kwargs):
        prompts = load_prompts(*args, **kwargs)
        for prompt in prompts:
            prompt.thinking_mode = "off" if prompt.thinking_mode == "on" else "on"
        return prompts

    return other_draw


def record_sampling(monkeypatch, stage_module) -> list[str]:
    """The last user message of every prompt ``stage_module``'s backends sample from (its ``build_backend``
    wrapped), in order: what a test asserts was sampled again, or not."""
    sampled: list[str] = []
    real_build = stage_module.build_backend

    def recording_backend(*args, **kwargs):
        backend = real_build(*args, **kwargs)
        sample = backend.sample

        def recorded(prompts, *a, **k):
            sampled.extend(messages[-1]["content"] for messages in prompts)
            return sample(prompts, *a, **k)

        backend.sample = recorded
        return backend

    monkeypatch.setattr(stage_module, "build_backend", recording_backend)
    return sampled
