"""A tiny policy that ends its turns: the random tiny model almost never samples its end-of-turn token, and
a preference round only pairs samples that ended on their own."""

from __future__ import annotations

from pathlib import Path


def ending_model(model_dir: Path, tokenizer_dir: Path, out: Path, *, boost: float = 4.0) -> Path:
    """A copy of ``model_dir`` whose end-of-turn logit is raised along the mean final hidden state of a chat
    prompt (about half of 12-token samples then stop on their own)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2? Explain it to me in detail."}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        hidden = model.model(**ids).last_hidden_state[0]
        top = model.lm_head(hidden).max(-1).values.mean()
        mean = hidden.mean(0)
        model.lm_head.weight[eot] = mean / mean.norm() ** 2 * (top + boost)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
