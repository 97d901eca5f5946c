"""Per-document attention for packed rows, for attention backends without a varlen kernel.

With BFD packing, trl flattens a batch into one row and marks where each document starts
(``position_ids`` restarting at 0, and ``cu_seq_lens_q`` from its collator). flash-attention's
varlen kernel attends within each document. transformers' sdpa and eager backends instead build
one dense block-diagonal mask over the whole row and compute all (row length)^2 scores, most of
them masked out (bench/README.md: about 3x slower on CPU at 8k-token rows).

``DOC_SDPA`` is registered in transformers' attention-function registry. Given a packed row, it
attends within each document only: on a CUDA GPU in bf16/fp16 with one call of torch's own
flash-attention varlen kernel (``torch.nn.attention.varlen``, no flash_attn package needed),
elsewhere with one causal sdpa call per document. Both give the numbers of the dense mask, at the
cost of the documents only. Anything it cannot split exactly (a padding mask, a KV cache
offset, sliding windows, bidirectional attention) gets the dense mask built and goes through
transformers' own sdpa function unchanged.

The per-document calls split q/k/v with ``Tensor.split`` (whose backward is one concatenation):
slicing each document out instead made autograd add one zero-filled full-size gradient per
document, which on an H200 cost 3 s per 16k-token step of a 1B model (bench/README.md).

flex attention with a document block mask (transformers' ``flex_attention``, which derives the
same mask from ``position_ids``) is the other way to skip the masked blocks; on CPU, torch 2.13
has no flex attention backward, so it cannot train there (bench/README.md).
"""

from __future__ import annotations

import itertools
from typing import Any

DOC_SDPA = "tempa_doc_sdpa"

# Keyword arguments that change the scores in ways a plain causal sdpa call per document would drop.
_UNSPLITTABLE = ("position_bias", "softcap", "s_aux", "sliding_window")


def register() -> str:
    """Register ``DOC_SDPA`` with transformers (idempotent); returns its name for ``attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(DOC_SDPA, document_sdpa_attention)
    AttentionMaskInterface.register(DOC_SDPA, document_mask)
    return DOC_SDPA


def supports_document_attention(config: Any) -> tuple[bool, str]:
    """Whether a model's attention is plain causal self-attention over whole documents.

    Sliding-window, chunked or multimodal (bidirectional image blocks) models keep transformers'
    own masks; for them ``DOC_SDPA`` would only ever take its dense fallback.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(config, "is_encoder_decoder", False):
        return False, "an encoder-decoder model"
    if text is not config:
        return False, "a multimodal model (its masks can mix bidirectional blocks)"
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False, f"sliding-window attention ({text.sliding_window})"
    if getattr(text, "attention_chunk_size", None):
        return False, "chunked attention"
    layer_types = set(getattr(text, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        return False, f"layer types {sorted(layer_types)}"
    if getattr(text, "attn_logit_softcapping", None):
        return False, "attention logit soft-capping"
    return True, "plain causal attention"


def document_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Any = 0,
    kv_offset: Any = 0,
    attention_mask: Any = None,
    local_size: int | None = None,
    use_vmap: bool = False,
    **kwargs: Any,
) -> Any:
    """No mask where the attention function can rebuild it exactly from the document boundaries.

    That is a training-shaped call: no padding, no cache offset, no window, no custom mask
    pattern, queries and keys of one length. Everything else gets transformers' sdpa mask.
    """
    from transformers.masking_utils import sdpa_mask

    no_padding = attention_mask is None or bool(attention_mask[:, -kv_length:].all())
    if (no_padding and local_size is None and not use_vmap and q_length == kv_length
            and int(q_offset) == 0 and int(kv_offset) == 0):
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, local_size=local_size,
                     use_vmap=use_vmap, **kwargs)


def document_cuts(batch_size: int, length: int, kwargs: dict[str, Any]) -> list[list[int]] | None:
    """Per row, the offsets where its documents start plus the row length; None: one document per row.

    trl's padding-free collator passes ``cu_seq_lens_q`` for its single flattened row; otherwise
    documents start wherever ``position_ids`` do not continue by one, as transformers' own
    packed-sequence detection reads them.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None and batch_size == 1:
        cuts = [int(c) for c in cu.tolist()]
        if cuts[0] == 0 and cuts[-1] == length:
            return [cuts] if len(cuts) > 2 else None
    positions = kwargs.get("position_ids")
    if positions is None or positions.shape[-1] != length:
        return None
    import torch

    positions = positions.reshape(-1, length).expand(batch_size, length)
    steps = torch.diff(positions, dim=-1) != 1
    if not bool(steps.any()):
        return None
    return [[0, *(steps[row].nonzero().flatten() + 1).tolist(), length] for row in range(batch_size)]


def document_sdpa_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention within each packed document (varlen flash on CUDA, else sdpa per document); transformers'
    sdpa function for everything else."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    batch, _, length, _ = query.shape
    cuts = None
    if attention_mask is None and causal and key.shape[2] == length:
        cuts = document_cuts(batch, length, kwargs)
    if cuts is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    unsplittable = [name for name in _UNSPLITTABLE if kwargs.get(name) is not None]
    if unsplittable:
        # document_mask() dropped the dense mask, so the sdpa fallback would attend across documents.
        raise ValueError(f"{DOC_SDPA}: packed rows with {', '.join(unsplittable)} need a dense mask; use "
                         "attn_implementation 'sdpa' (or 'flash_attention_2') for this model")
    gqa = query.shape[1] != key.shape[1]
    if dropout == 0.0 and _varlen_kernel(query) is not None:
        return _attend_varlen(query, key, value, cuts, scaling, gqa), None
    return _attend_per_document(query, key, value, cuts, dropout, scaling, gqa), None


def _attend_per_document(query: Any, key: Any, value: Any, cuts: list[list[int]], dropout: float,
                         scaling: float | None, gqa: bool) -> Any:
    """One causal sdpa call per document; (batch, heads, length, dim) in, (batch, length, heads, dim) out."""
    import torch
    import torch.nn.functional as F

    rows = []
    for row_cuts, q, k, v in zip(cuts, query.unbind(0), key.unbind(0), value.unbind(0), strict=True):
        sizes = [b - a for a, b in itertools.pairwise(row_cuts) if b > a]
        parts = [
            F.scaled_dot_product_attention(qd[None], kd[None], vd[None], dropout_p=dropout, scale=scaling,
                                           is_causal=True, enable_gqa=gqa)
            for qd, kd, vd in zip(q.split(sizes, dim=1), k.split(sizes, dim=1), v.split(sizes, dim=1), strict=True)
        ]
        rows.append(torch.cat(parts, dim=2))
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
    return out.transpose(1, 2).contiguous()


def _varlen_kernel(query: Any) -> Any:
    """torch's flash-attention varlen function when it can take ``query`` (CUDA, bf16/fp16), else None."""
    import torch

    if not query.is_cuda or query.dtype not in (torch.bfloat16, torch.float16):
        return None
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.10
        return None
    return varlen_attn


def _attend_varlen(query: Any, key: Any, value: Any, cuts: list[list[int]], scaling: float | None,
                   gqa: bool) -> Any:
    """Every document of every row in one varlen flash-attention call over the flattened tokens."""
    import inspect

    import torch

    varlen_attn = _varlen_kernel(query)
    batch, heads, length, dim = query.shape
    starts = sorted({row * length + cut for row, row_cuts in enumerate(cuts) for cut in row_cuts})
    longest = max(b - a for a, b in itertools.pairwise(starts))
    cu = torch.tensor(starts, dtype=torch.int32, device=query.device)
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    params = inspect.signature(varlen_attn).parameters
    # torch 2.10 spells causal `is_causal`, later releases `window_size=(-1, 0)`; GQA needs `enable_gqa`
    # where it exists, else the key/value heads are repeated as transformers' repeat_kv does.
    extra: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if gqa and "enable_gqa" in params:
        extra["enable_gqa"] = True
    elif gqa:
        k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, **extra)
    return out.reshape(batch, length, heads, dim)
