"""Attention for the CPU policy update: grouped-query attention as two bf16 matmuls when the score matrix is small.

The shared-prefix response pass attends 4 x 127 queries to ~330 cached keys with an explicit mask, the prompt
pass ~180 queries to themselves with a causal one. On 2 CPU cores torch's flash-attention kernel takes ~10 ms
per layer for forward + backward of the response pass (its backward is 3.4x its forward) and ~4.7 ms for the
prompt pass; this takes ~4.5 and ~1.5 ms: the query heads that share a key/value head are folded into the
rows of one batched matmul (no repeated keys/values), the scale and the mask enter that matmul as an additive
bias built once per forward and shared by every layer, and the softmax runs in the compute dtype (its
reductions accumulate in float32 inside the kernel; saving bf16 probabilities instead of float32 ones halves
what the backward keeps). The score matrix is kept for backward, so it is used only below `MAX_SCORES`
elements; longer contexts and anything unusual go to transformers' SDPA path unchanged.
Registered with transformers as the attention implementation "rlreason_cpu" (model.attn_implementation)."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "rlreason_cpu"
MAX_SCORES = 1 << 21  # B*H*Tq*S: ~4 MB of kept bf16 probabilities per layer at most (the peer workload: 1.5M)

# One entry each: every layer of a forward gets the same mask object, the next forward a new one.
_bias_cache: list[tuple[torch.Tensor, tuple, torch.Tensor]] = []
_causal_cache: list[tuple[tuple, torch.Tensor]] = []


def _causal_mask(T: int, device: torch.device) -> torch.Tensor:
    """The bool mask transformers leaves out (None) for an unpadded causal pass, for the matmul path."""
    key = (T, device)
    if not _causal_cache or _causal_cache[0][0] != key:
        _causal_cache[:] = [(key, torch.ones(T, T, dtype=torch.bool, device=device).tril_().view(1, 1, T, T))]
    return _causal_cache[0][1]


def _mask_bias(mask: torch.Tensor, B: int, KV: int, G: int, dtype: torch.dtype) -> torch.Tensor:
    """0 where attended, the dtype's minimum elsewhere, laid out as the folded scores [B*KV, G*Tq, S].
    The minimum rather than -inf: a fully masked (padding) query row gets uniform weights, not NaN."""
    key = (B, KV, G, dtype)
    if _bias_cache and _bias_cache[0][0] is mask and _bias_cache[0][1] == key:
        return _bias_cache[0][2]
    Tq, S = mask.shape[-2:]
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    bias = bias.view(mask.shape[0], 1, 1, Tq, S).expand(B, KV, G, Tq, S).reshape(B * KV, G * Tq, S)
    _bias_cache[:] = [(mask, key, bias)]  # holding the mask keeps its identity from being reused
    return bias


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the matmuls run in: autocast's when it is on (rotary embeddings can hand over float32
    queries; a float32 minimum would turn into -inf when autocast casts the bias to bf16)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """softmax(q k^T * scale + mask) v with q [B, H, Tq, D], k/v [B, KV, S, D], bool mask [B|1, 1, Tq, S]
    (True = attend) or None for a causal pass; returns [B, Tq, H, D] like every transformers attention function."""
    B, H, Tq, D = query.shape
    KV, S = key.shape[1], key.shape[2]
    small = B * H * Tq * S <= MAX_SCORES and dropout == 0.0 and H % KV == 0
    if attention_mask is None and small and Tq == S and Tq > 1 and getattr(module, "is_causal", True):
        attention_mask = _causal_mask(Tq, query.device)
    plain = (small and attention_mask is not None and attention_mask.dtype == torch.bool
             and attention_mask.dim() == 4 and attention_mask.shape[1] == 1
             and kwargs.get("position_bias") is None and kwargs.get("cache") is None
             and not kwargs.get("output_attentions", False))
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    G = H // KV  # query heads per key/value head, adjacent as in repeat_kv
    scale = scaling if scaling is not None else D ** -0.5
    dtype = _compute_dtype(query)
    bias = _mask_bias(attention_mask, B, KV, G, dtype)
    scores = torch.baddbmm(bias, query.reshape(B * KV, G * Tq, D), key.reshape(B * KV, S, D).transpose(1, 2),
                           alpha=scale)  # [B*KV, G*Tq, S]
    probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs, value.reshape(B * KV, S, D)).view(B, H, Tq, D)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make "rlreason_cpu" a transformers attention implementation (idempotent); masks are built as for SDPA."""
    AttentionInterface.register(NAME, grouped_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
