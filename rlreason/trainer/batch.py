"""Episodes -> training rows -> padded tensors.

Rows are laid out with prompts left-padded and responses right-padded, so every response starts at
the same column P: the logits that score the responses are one contiguous slice (the last T+1
positions), which lets the model skip the vocabulary projection over prompt tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlreason.types import Episode


@dataclass
class Row:
    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float]
    response_mask: list[int]
    advantage: float
    trace_id: int  # the episode this row belongs to (Delethink: one row per chunk)
    group_id: int
    # Filled only for PPO with a critic (algo.advantage=gae): per-token advantages, returns, old values.
    token_advantages: list[float] | None = None
    returns: list[float] | None = None
    old_values: list[float] | None = None


def episodes_to_rows(episodes: list[Episode], advantages: list[float], group_ids: list[int]) -> list[Row]:
    rows = []
    for trace_id, (ep, adv, gid) in enumerate(zip(episodes, advantages, group_ids)):
        for s in ep.samples:
            if not s.response_ids:
                continue
            rows.append(Row(s.prompt_ids, s.response_ids, s.response_logprobs, s.response_mask,
                            float(adv), trace_id, gid))
    return rows


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, P+T]
    attention_mask: torch.Tensor  # [B, P+T]
    position_ids: torch.Tensor  # [B, P+T]
    response_ids: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T] float
    rollout_logprobs: torch.Tensor  # [B, T]
    advantages: torch.Tensor  # [B, T] (episode advantage on every token, or GAE per token)
    trace_ids: torch.Tensor  # [B]
    returns: torch.Tensor  # [B, T] (critic targets; zeros without a critic)
    old_values: torch.Tensor  # [B, T]

    def to(self, device: torch.device) -> "Batch":
        return Batch(**{k: v.to(device) for k, v in self.__dict__.items()})


def collate(rows: list[Row], pad_id: int, T: int | None = None) -> Batch:
    B = len(rows)
    P = max(len(r.prompt_ids) for r in rows)
    T = T or max(len(r.response_ids) for r in rows)
    input_ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    resp = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T))
    lps = torch.zeros((B, T))
    for i, r in enumerate(rows):
        p, t = len(r.prompt_ids), len(r.response_ids)
        input_ids[i, P - p:P] = torch.tensor(r.prompt_ids)
        input_ids[i, P:P + t] = torch.tensor(r.response_ids)
        attn[i, P - p:P + t] = 1
        resp[i, :t] = torch.tensor(r.response_ids)
        mask[i, :t] = torch.tensor(r.response_mask, dtype=torch.float)
        lps[i, :t] = torch.tensor(r.rollout_logprobs)
    adv = torch.tensor([r.advantage for r in rows]).unsqueeze(1) * (mask > 0)
    ret = torch.zeros((B, T))
    old_v = torch.zeros((B, T))
    for i, r in enumerate(rows):
        if r.token_advantages is not None:
            t = len(r.response_ids)
            adv[i, :t] = torch.tensor(r.token_advantages) * mask[i, :t]
            ret[i, :t] = torch.tensor(r.returns)
            old_v[i, :t] = torch.tensor(r.old_values)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids, attn, pos, resp, mask, lps, adv, torch.tensor([r.trace_id for r in rows]), ret, old_v)


def group_order(rows: list[Row], idx: list[int] | None = None) -> list[int]:
    """`idx` (default: all rows) reordered so rows with the same prompt are adjacent and similar lengths sit
    together: consecutive micro-batches then share prompts (one prompt forward per group) and carry little
    padding. The loss is a weighted sum over rows, so the order changes nothing but the work."""
    idx = list(range(len(rows))) if idx is None else idx
    return sorted(idx, key=lambda i: (len(rows[i].prompt_ids), rows[i].prompt_ids, -len(rows[i].response_ids)))


def response_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits [B, T, V] that predict each response token, in the model's compute dtype (bf16 under autocast):
    `logprobs_from_logits` applies the sampling temperature and works in float32 chunk by chunk, so no
    [B, T, V] float32 copy is made here. One forward over every row; `shared_prefix.shared_response_logits`
    is the same function with each distinct prompt run once (UpdateContext.share_prompts picks it)."""
    T = batch.response_ids.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, logits_to_keep=T + 1, use_cache=False)
    return out.logits[:, :-1, :]
