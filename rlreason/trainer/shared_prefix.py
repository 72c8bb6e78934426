"""One forward over each distinct prompt, shared by all the responses sampled from it.

GRPO samples G responses per prompt, and the trainer's forward/backward used to run the prompt G times
(once per row). Here the prompt runs once with its key/value cache kept in the autograd graph; the cache
is gathered per row and the responses run on top of it, so gradients still reach the prompt tokens
through the keys and values the responses attend to. Same function, fewer tokens: with ~100-token
prompts and 128-token responses the matmul work of a G=4 group drops by about a third (the "shared
prefix" trick of Prefix Grouper, arXiv 2506.05433)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from rlreason.trainer.batch import Batch, response_logits


def shared_response_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """`batch.response_logits` with each distinct prompt of the batch run once; the per-row forward where
    nothing can be shared (`can_share`). UpdateContext.share_prompts selects it (rlreason/cpu.py decides)."""
    prompts, prompt_mask, prompt_index = distinct_prompts(batch)
    T = batch.response_ids.shape[1]
    if prompts.shape[1] >= 2 and can_share(model, prompts.shape[0], batch.response_ids.shape[0], T):
        # The last T columns of the attention mask are the right-padded responses' own mask.
        return shared_prefix_logits(model, prompts, prompt_mask, prompt_index, batch.response_ids,
                                    batch.attention_mask[:, -T:])
    return response_logits(model, batch)


def distinct_prompts(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's distinct prompts [U, P] (left-padded, as collated), their mask [U, P] and each row's
    prompt [B], numbered in order of first appearance. A prompt is its ids and its mask together: one that
    starts with the pad token differs from the shorter prompt without it only in the mask."""
    T = batch.response_ids.shape[1]
    P = batch.input_ids.shape[1] - T
    ids, mask = batch.input_ids[:, :P], batch.attention_mask[:, :P]
    B = ids.shape[0]
    distinct, inverse = torch.unique(torch.cat([ids, mask], 1), dim=0, return_inverse=True)
    rows = torch.arange(B, device=ids.device)
    first = torch.full((distinct.shape[0],), B, device=ids.device).scatter_reduce(0, inverse, rows, "amin")
    order = first.argsort()  # distinct prompts by first appearance
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=ids.device)
    return ids[first[order]], mask[first[order]], rank[inverse]


def worth_sharing(n_prompts: int, n_rows: int, T: int) -> bool:
    """Some prompt repeats and responses have >= 2 tokens (a one-token response has nothing after the prompt
    pass). micro_batches.py costs layouts by the same rule."""
    return n_prompts < n_rows and T >= 2


def can_share(model: torch.nn.Module, n_prompts: int, n_rows: int, T: int) -> bool:
    """Worth it (`worth_sharing`) and possible: the model keeps a cache in training mode (gradient
    checkpointing drops it), and every layer attends to the full context (a sliding-window cache is not
    rebuilt here, so such models take the per-row path)."""
    cfg = model.config
    sliding = ("sliding_attention" in (getattr(cfg, "layer_types", None) or [])
               or (getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)))
    return (worth_sharing(n_prompts, n_rows, T) and not getattr(model, "is_gradient_checkpointing", False)
            and not getattr(cfg, "is_encoder_decoder", False) and not sliding)


def shared_prefix_logits(model: torch.nn.Module, prompts: torch.Tensor, prompt_mask: torch.Tensor,
                         prompt_index: torch.Tensor, response_ids: torch.Tensor,
                         response_attention: torch.Tensor) -> torch.Tensor:
    """Logits [R, T, V] predicting each response token, equal to one forward over prompt + response.
    prompts/prompt_mask [U, P] (left-padded distinct prompts, P >= 2), prompt_index [R] (row -> prompt),
    response_ids/response_attention [R, T] (right-padded).

    The prompt pass stops one token short: each prompt's last token opens its rows' response pass, so all
    T predictions come out of one vocabulary projection (no separate first-token logits to gather and
    concatenate, and one [V, H] weight gradient per pass instead of two)."""
    P = prompts.shape[1]
    T = response_ids.shape[1]
    head_mask = prompt_mask[:, :-1]
    out = model(input_ids=prompts[:, :-1], attention_mask=head_mask, position_ids=(head_mask.cumsum(-1) - 1).clamp(min=0),
                past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    # out.logits is not used: no gradient reaches that projection.
    cache = DynamicCache([(layer.keys.index_select(0, prompt_index), layer.values.index_select(0, prompt_index))
                          for layer in out.past_key_values.layers])
    mask = head_mask.index_select(0, prompt_index)
    start = mask.sum(-1, keepdim=True)  # each row's last prompt token's position (left padding has none)
    last = prompts[:, -1:].index_select(0, prompt_index)
    return model(input_ids=torch.cat([last, response_ids[:, :-1]], 1),
                 attention_mask=torch.cat([mask, torch.ones_like(last), response_attention[:, :-1]], 1),
                 position_ids=start + torch.arange(T, device=start.device),
                 cache_position=torch.arange(P - 1, P - 1 + T, device=start.device),
                 past_key_values=cache, use_cache=True).logits  # [R, T, V]
