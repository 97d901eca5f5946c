"""Per-document attention for packed rows (tempa.sft.packed_attention) and who picks it (tempa.sft.kernels).

The equal-loss contract: a packed row's logits, loss and gradients equal those of its documents
run one by one. trl#3910 reported packing without flash-attention as a source of wrong losses
(packed runs ending 0.03-0.15 above unpacked ones on sdpa and eager); here the same comparison, made
exact, is checked on every attention backend a tempa recipe can run without flash-attention.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sft_helpers import prepared_rows
from tempa.sft.kernels import FLASH_ATTENTION, KernelEnv, choose_kernels
from tempa.sft.packed_attention import DOC_SDPA, register, supports_document_attention

DOC_LENGTHS = [7, 19, 4, 12, 1, 9]  # includes a one-token document


def tiny_model(model_dir: Path, attention: str) -> Any:
    from transformers import AutoModelForCausalLM

    register()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention, dtype=torch.float32)


def packed_inputs(vocab: int, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """One flattened row the way trl's padding-free collator builds it."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(10, vocab, (1, sum(lengths)), generator=generator)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    labels = input_ids.clone()
    labels[position_ids == 0] = -100  # as trl: no target across a document boundary
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths)}


def per_document(model: Any, inputs: dict[str, torch.Tensor], lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of each document run alone, concatenated; the token-weighted mean of their losses)."""
    logits, loss_sum, targets = [], 0.0, 0
    for a, b in itertools.pairwise([0, *itertools.accumulate(lengths)]):
        ids = inputs["input_ids"][:, a:b]
        out = model(input_ids=ids, use_cache=False)
        logits.append(out.logits[0])
        if b - a > 1:
            loss_sum = loss_sum + torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:], reduction="sum")
            targets += b - a - 1
    return torch.cat(logits), loss_sum / targets


@pytest.mark.parametrize("use_cache", [False, True])
@pytest.mark.parametrize("boundaries", ["cu_seq_lens", "position_ids"])
def test_packed_row_logits_and_loss_equal_each_document_alone(tiny_model_dir, use_cache, boundaries):
    model = tiny_model(tiny_model_dir, DOC_SDPA)
    inputs = packed_inputs(model.config.vocab_size, DOC_LENGTHS)
    if boundaries == "position_ids":  # e.g. a caller that only passes position_ids
        inputs = {k: inputs[k] for k in ("input_ids", "position_ids", "labels")}
    packed = model(**inputs, use_cache=use_cache)
    alone_logits, alone_loss = per_document(model, inputs, DOC_LENGTHS)
    torch.testing.assert_close(packed.logits[0], alone_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed.loss, alone_loss, rtol=1e-6, atol=1e-6)


def test_packed_row_gradients_equal_the_unpacked_ones(tiny_model_dir):
    model = tiny_model(tiny_model_dir, DOC_SDPA)
    inputs = packed_inputs(model.config.vocab_size, DOC_LENGTHS, seed=1)
    model(**inputs, use_cache=False).loss.backward()
    packed = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    per_document(model, inputs, DOC_LENGTHS)[1].backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(packed[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_documents_would_show_cross_attention(tiny_model_dir):
    """Guard for the tests above: attending across the packed row changes every later document's logits."""
    model = tiny_model(tiny_model_dir, "sdpa")
    inputs = packed_inputs(model.config.vocab_size, DOC_LENGTHS)
    whole_row = model(input_ids=inputs["input_ids"], use_cache=False).logits[0]  # one causal sequence
    alone, _ = per_document(model, inputs, DOC_LENGTHS)
    first = DOC_LENGTHS[0]
    assert torch.equal(whole_row[:first], alone[:first]) or torch.allclose(whole_row[:first], alone[:first], atol=1e-5)
    assert (whole_row[first:] - alone[first:]).abs().amax(-1).min() > 1e-3


def test_padded_batches_and_generation_take_the_dense_path(tiny_model_dir):
    """A padding mask or a KV cache: DOC_SDPA gives exactly what transformers' sdpa gives."""
    doc, sdpa = tiny_model(tiny_model_dir, DOC_SDPA), tiny_model(tiny_model_dir, "sdpa")
    ids = torch.randint(10, doc.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        torch.testing.assert_close(doc(input_ids=ids, attention_mask=mask).logits,
                                   sdpa(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=1e-6)
        generated = [m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                pad_token_id=0) for m in (doc, sdpa)]
    assert torch.equal(*generated)


# --------------------------------------------------------------------------- trl#3910, end to end


@pytest.fixture(scope="module")
def sft_rows(tmp_path_factory, tiny_model_dir):
    """Rows as tempa's data pipeline hands them to the trainer: input_ids + assistant_masks."""
    return prepared_rows(tmp_path_factory.mktemp("trl3910"), tiny_model_dir, n=6, seed=5)


def train_losses(model_dir: Path, rows: Any, tokenizer: Any, out: Path, *, packing: bool,
                 attention: str | None) -> tuple[list[tuple[float, float]], str]:
    """Train 3 steps with tempa's trainer settings; every step sees all rows (one packed row, or one padded batch)."""
    from trl import SFTConfig, SFTTrainer

    from tempa.sft.config import DEFAULT_TRAIN_ARGS
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import trl_config_kwargs

    train = {**DEFAULT_TRAIN_ARGS, "packing": packing, "max_length": 512, "num_train_epochs": 3,
             "per_device_train_batch_size": 1 if packing else len(rows), "learning_rate": 1e-2,
             "lr_scheduler_type": "constant", "warmup_steps": 0, "logging_steps": 1, "save_strategy": "no",
             "dataloader_num_workers": 0}
    if attention is not None:
        train["model_init_kwargs"] = {"attn_implementation": attention}
    config = SFTConfig(**{**trl_config_kwargs(TrainPlan.standalone(model_dir, out, train)),
                          "assistant_only_loss": False})
    trainer = SFTTrainer(model=str(model_dir), args=config, train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    logged = [(entry["loss"], entry["grad_norm"]) for entry in trainer.state.log_history if "loss" in entry]
    return logged, trainer.model.config._attn_implementation


@pytest.mark.parametrize("attention", [None, "sdpa", "eager"], ids=["tempa-default", "sdpa", "eager"])
def test_packing_without_flash_attention_trains_exactly_as_unpacked(tmp_path, tiny_model_dir, sft_rows, attention):
    """trl#3910's experiment (same seed, data and steps; only packing varies; no flash-attention), step by step."""
    rows, tokenizer = sft_rows
    packed, used = train_losses(tiny_model_dir, rows, tokenizer, tmp_path / "p", packing=True, attention=attention)
    unpacked, _ = train_losses(tiny_model_dir, rows, tokenizer, tmp_path / "u", packing=False, attention=attention)
    assert used == (attention or DOC_SDPA)
    assert len(packed) == len(unpacked) == 3
    assert packed[0][0] - packed[-1][0] > 0.1  # it trains, so later steps compare the updated weights too
    # (loss, grad norm) of every step; Adam's sign-like steps on near-zero gradients make the weights
    # themselves a poor thing to compare, the losses they produce are not
    assert [x for step in packed for x in step] == pytest.approx([x for step in unpacked for x in step], rel=1e-4)


# --------------------------------------------------------------------------- who picks which kernels


CPU = KernelEnv(cuda=False, precision="no", flash_attn=False, liger=False)
GPU_BARE = KernelEnv(cuda=True, precision="bf16", flash_attn=False, liger=False)
GPU_FULL = KernelEnv(cuda=True, precision="bf16", flash_attn=True, liger=True)


@pytest.mark.parametrize(("env", "packed", "attention", "liger"), [
    (CPU, True, DOC_SDPA, False),
    (CPU, False, None, False),  # nothing packed: transformers' default
    (GPU_BARE, True, DOC_SDPA, False),
    (GPU_FULL, True, FLASH_ATTENTION, True),
    (GPU_FULL, False, FLASH_ATTENTION, True),  # flash-attention is faster for padded batches too
    (KernelEnv(cuda=True, precision="no", flash_attn=True, liger=True), True, DOC_SDPA, True),  # fp32: no flash
    (KernelEnv(cuda=False, precision="bf16", flash_attn=True, liger=True), True, DOC_SDPA, False),  # no CUDA
])
def test_kernel_choice_follows_the_machine(env, packed, attention, liger):
    choice = choose_kernels(env, packed=packed)
    assert (choice.attn_implementation, choice.use_liger_kernel) == (attention, liger)
    assert choice.record() == {"attn_implementation": attention or "sdpa", "liger_kernel": liger}


def test_the_recipe_choice_wins_and_unsupported_models_keep_the_dense_mask():
    chosen = choose_kernels(GPU_FULL, packed=True, requested_attention="sdpa", requested_liger=False)
    assert (chosen.attn_implementation, chosen.use_liger_kernel) == ("sdpa", False)
    sliding = choose_kernels(CPU, packed=True, document_attention=(False, "sliding-window attention (4096)"))
    assert sliding.attn_implementation is None and "sliding-window" in sliding.why[0]


def test_document_attention_support_is_read_from_the_model_config():
    from transformers import AutoConfig

    llama = AutoConfig.for_model("llama", num_hidden_layers=2)
    mistral = AutoConfig.for_model("mistral", sliding_window=4096)
    mistral_full = AutoConfig.for_model("mistral", sliding_window=None)
    gemma2 = AutoConfig.for_model("gemma2")
    assert supports_document_attention(llama)[0] and supports_document_attention(mistral_full)[0]
    assert not supports_document_attention(mistral)[0]
    assert not supports_document_attention(gemma2)[0]


def test_the_worker_applies_the_choice_to_the_trainer_settings(tmp_path, tiny_model_dir):
    from tempa.sft.stage_api import TrainingEnv
    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import plan_kernels, trl_config_kwargs

    plan = TrainPlan.standalone(tiny_model_dir, Path("/out"), {"packing": True, "learning_rate": 1e-3}, seed=7)
    cpu = trl_config_kwargs(plan)
    assert cpu["use_cpu"] and cpu["bf16"] is False and cpu["seed"] == 7 and cpu["output_dir"] == "/out"
    assert cpu["model_init_kwargs"]["attn_implementation"] == DOC_SDPA and "use_liger_kernel" not in cpu
    assert cpu["model_init_kwargs"]["use_safetensors"] is True  # never a pickled checkpoint

    gpu_plan = plan.model_copy(update={"env": TrainingEnv(mixed_precision="bf16")})
    gpu = trl_config_kwargs(gpu_plan, plan_kernels(gpu_plan, GPU_FULL))
    assert gpu["bf16"] is True and gpu["model_init_kwargs"]["attn_implementation"] == FLASH_ATTENTION
    assert gpu["use_liger_kernel"] is True

    sliding = tmp_path / "mistral"
    sliding.mkdir()
    (sliding / "config.json").write_text(json.dumps({"model_type": "mistral", "sliding_window": 4096}))
    dense = trl_config_kwargs(plan.model_copy(update={"start_model": sliding}))
    # transformers' sdpa with its sliding-window mask
    assert dense["model_init_kwargs"] == {"use_safetensors": True}


def _qkv(batch: int = 1, heads: int = 4, kv_heads: int = 2, length: int = 52, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, h, length, dim, generator=generator, requires_grad=True)
            for h in (heads, kv_heads, kv_heads)]


def test_the_per_document_backward_is_one_concatenation_not_a_full_gradient_per_document():
    """Slicing each document out of q/k/v made autograd build one zero-filled full-size gradient per document
    and add them up (an H200 spent 3 s per 16k-token step of a 1B model on it); split's backward is one cat."""
    from tempa.sft.packed_attention import document_sdpa_attention

    lengths = [5, 9, 1, 13, 4, 20]
    query, key, value = _qkv(length=sum(lengths))
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    out, _ = document_sdpa_attention(torch.nn.Module(), query, key, value, None, cu_seq_lens_q=cu)
    nodes, stack, seen = [], [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nodes.append(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    assert not [name for name in nodes if name.startswith(("SliceBackward", "SelectBackward", "IndexBackward"))], nodes
    out.sum().backward()  # and the gradient still reaches every input
    assert all(t.grad is not None and bool(t.grad.abs().sum() > 0) for t in (query, key, value))


def _reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                      window_size=(-1, -1), enable_gqa=False):
    """torch.nn.attention.varlen.varlen_attn's documented contract, on CPU: (tokens, heads, dim) inputs,
    attention within each [cu[i], cu[i+1]) span; causal is window_size (-1, 0)."""
    import torch.nn.functional as F

    cuts = cu_seq_q.tolist()
    assert window_size == (-1, 0) and torch.equal(cu_seq_q, cu_seq_k) and cu_seq_q.dtype == torch.int32
    assert max_q == max_k == max(b - a for a, b in itertools.pairwise(cuts))
    assert enable_gqa or key.shape[1] == query.shape[1]
    return torch.cat([
        F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1)[None] for t in (query, key, value)), scale=scale,
                                       is_causal=True, enable_gqa=enable_gqa)[0].transpose(0, 1)
        for a, b in itertools.pairwise(cuts)])


def _reference_varlen_torch_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None,
                                 scale=None, is_causal=False):
    """torch 2.10's spelling: `is_causal`, and no `enable_gqa` (the caller must repeat the KV heads)."""
    assert is_causal
    return _reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window_size=(-1, 0))


@pytest.mark.parametrize("kernel", [_reference_varlen, _reference_varlen_torch_2_10])
def test_the_gpu_varlen_call_gets_every_document_of_every_row(monkeypatch, kernel):
    """On CUDA in bf16 the documents go to torch's varlen flash kernel in one call (measured on an H200 in
    bench/README.md); here its documented contract stands in for it, to check the flattening, the offsets of
    several rows, empty documents and GQA against the per-document path."""
    from tempa.sft import packed_attention

    query, key, value = _qkv(batch=2, length=50)
    cuts = [[0, 7, 20, 20, 50], [0, 33, 50]]
    expected = packed_attention._attend_per_document(query, key, value, cuts, 0.0, 0.3, True)
    monkeypatch.setattr(packed_attention, "_varlen_kernel", lambda query: kernel)
    got = packed_attention._attend_varlen(query, key, value, cuts, 0.3, True)
    assert got.shape == expected.shape == (2, 50, 4, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("train", "expected"), [({}, True), ({"gradient_checkpointing": False}, False),
                                                 ({"activation_checkpointing": False}, False)])
def test_the_worker_names_activation_checkpointing_so_no_training_log_carries_a_deprecation(tiny_model_dir, train,
                                                                                             expected):
    """trl's configs default the deprecated `gradient_checkpointing` to True; transformers warned about it in
    every training log (seen in an H200 run's sft log). The setting keeps its default and its meaning."""
    import warnings

    from trl import DPOConfig, GRPOConfig, SFTConfig

    from tempa.sft.train_plan import TrainPlan
    from tempa.sft.train_worker import trl_config_kwargs

    kwargs = trl_config_kwargs(TrainPlan.standalone(tiny_model_dir, Path("/out"), {"learning_rate": 1e-3, **train}))
    for config_class in (SFTConfig, DPOConfig, GRPOConfig):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config = config_class(**kwargs)
        assert not [w for w in caught if "checkpointing" in str(w.message)], config_class.__name__
        assert config.activation_checkpointing is expected and config.gradient_checkpointing is expected
