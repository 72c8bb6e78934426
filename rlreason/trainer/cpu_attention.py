"""Attention for the CPU policy update: grouped-query attention as two bf16 matmuls when the score matrix is small.

The shared-prefix response pass attends 4 x 127 queries to ~330 cached keys with an explicit mask. On 2 CPU
cores torch's flash-attention kernel takes ~13 ms per layer for forward + backward there (its backward is
3.4x its forward), the eager composite ~9 ms (it first copies each key/value head once per query head), and
this ~6.5 ms: the query heads that share a key/value head are folded into the rows of one matmul, so nothing
is repeated. The score matrix is kept for backward, so it is used only below `MAX_SCORES` elements; longer
contexts, mask-free causal passes and anything unusual go to transformers' SDPA path unchanged.
Registered with transformers as the attention implementation "rlreason_cpu" (model.attn_implementation)."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "rlreason_cpu"
MAX_SCORES = 1 << 21  # B*H*Tq*S: ~12 MB of kept softmax per layer at most (the peer workload: 1.5M)


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """softmax(q k^T * scale + mask) v with q [B, H, Tq, D], k/v [B, KV, S, D], bool mask [B|1, 1, Tq, S]
    (True = attend); returns [B, Tq, H, D] like every transformers attention function."""
    B, H, Tq, D = query.shape
    KV, S = key.shape[1], key.shape[2]
    plain = (attention_mask is not None and attention_mask.dtype == torch.bool and attention_mask.dim() == 4
             and attention_mask.shape[1] == 1 and dropout == 0.0 and H % KV == 0 and B * H * Tq * S <= MAX_SCORES
             and kwargs.get("position_bias") is None and kwargs.get("cache") is None
             and not kwargs.get("output_attentions", False))
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    G = H // KV  # query heads per key/value head, adjacent as in repeat_kv
    scale = scaling if scaling is not None else D ** -0.5
    scores = torch.matmul(query.reshape(B, KV, G * Tq, D), key.transpose(2, 3)).view(B, KV, G, Tq, S) * scale
    # The dtype's minimum rather than -inf: a fully masked (padding) query row gets uniform weights, not NaN.
    scores = scores.masked_fill(~attention_mask[:, :, None], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs.view(B, KV, G * Tq, S), value).view(B, H, Tq, D)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make "rlreason_cpu" a transformers attention implementation (idempotent); masks are built as for SDPA."""
    AttentionInterface.register(NAME, grouped_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
