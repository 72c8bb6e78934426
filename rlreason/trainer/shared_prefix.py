"""One forward over each distinct prompt, shared by all the responses sampled from it.

GRPO samples G responses per prompt, and the trainer's forward/backward used to run the prompt G times
(once per row). Here the prompt runs once with its key/value cache kept in the autograd graph; the cache
is gathered per row and the responses run on top of it, so gradients still reach the prompt tokens
through the keys and values the responses attend to. Same function, fewer tokens: with ~100-token
prompts and 128-token responses the matmul work of a G=4 group drops by about a third (the "shared
prefix" trick of Prefix Grouper, arXiv 2506.05433)."""

from __future__ import annotations

import functools

import torch
from transformers import DynamicCache

from rlreason.trainer.batch import Batch, Row, response_logits


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
    head_mask = prompt_mask[:, :-1]
    layers = prompt_cache(model, prompts, head_mask)
    return response_pass(model, layers, head_mask, prompts[:, -1:], prompt_index, response_ids, response_attention)


def prompt_cache(model: torch.nn.Module, prompts: torch.Tensor, head_mask: torch.Tensor
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values [U, KV, P-1, D] of the prompts without their last token (`head_mask` is
    their mask), in the autograd graph."""
    out = model(input_ids=prompts[:, :-1], attention_mask=head_mask,
                position_ids=(head_mask.cumsum(-1) - 1).clamp(min=0),
                past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    # out.logits is not used: no gradient reaches that projection.
    return [(layer.keys, layer.values) for layer in out.past_key_values.layers]


def response_pass(model: torch.nn.Module, layers: list[tuple[torch.Tensor, torch.Tensor]], head_mask: torch.Tensor,
                  last: torch.Tensor, prompt_index: torch.Tensor, response_ids: torch.Tensor,
                  response_attention: torch.Tensor) -> torch.Tensor:
    """Logits [R, T, V] of the responses on top of the prompt cache `layers` (prompt_cache's, over U prompts
    whose last tokens are `last` [U, 1]); row r continues prompt prompt_index[r]."""
    P = head_mask.shape[1] + 1
    T = response_ids.shape[1]
    cache = DynamicCache([(k.index_select(0, prompt_index), v.index_select(0, prompt_index)) for k, v in layers])
    mask = head_mask.index_select(0, prompt_index)
    start = mask.sum(-1, keepdim=True)  # each row's last prompt token's position (left padding has none)
    first = last.index_select(0, prompt_index)
    return model(input_ids=torch.cat([first, response_ids[:, :-1]], 1),
                 attention_mask=torch.cat([mask, torch.ones_like(first), response_attention[:, :-1]], 1),
                 position_ids=start + torch.arange(T, device=start.device),
                 cache_position=torch.arange(P - 1, P - 1 + T, device=start.device),
                 past_key_values=cache, use_cache=True).logits  # [R, T, V]


def once_per_minibatch(model: torch.nn.Module, rows: list[Row], micro_batch_size: int) -> bool:
    """Whether a mini-batch's distinct prompts run in one pass for all its micro-batches (`PromptPass`):
    sharing is worth it and possible over the whole mini-batch (`can_share`), and that pass, whose graph
    lives until the mini-batch's last micro-batch is done, runs no more tokens than one micro-batch of
    `micro_batch_size` rows of the longest prompt and response, so at most doubling what the update holds."""
    U = len({tuple(r.prompt_ids) for r in rows})
    P = max(len(r.prompt_ids) for r in rows)
    T = max(len(r.response_ids) for r in rows)
    return P >= 2 and can_share(model, U, len(rows), T) and U * (P - 1) <= micro_batch_size * (P + T)


class PromptPass:
    """The distinct prompts of a whole mini-batch, run once for all of its micro-batches. Micro-batches dealt
    by response length mix every prompt group, so a prompt pass per micro-batch runs each prompt once per
    micro-batch it has rows in; here it runs once.

    The response passes read the prompt keys and values as detached leaves, so each micro-batch's backward
    stops at them and adds its part to their gradient (summed in float32 at least); `backward` then runs the
    prompt pass's backward once with the sum. The gradient is linear in the loss, so this is the gradient of
    backpropagating every micro-batch through the prompt pass, at one backward's cost."""

    def __init__(self, model: torch.nn.Module, batch: Batch) -> None:
        prompts, prompt_mask, self.index = distinct_prompts(batch)
        self.head_mask = prompt_mask[:, :-1]
        self.last = prompts[:, -1:]
        self.layers = prompt_cache(model, prompts, self.head_mask)
        self.leaves: list[torch.Tensor] = []
        self.sums: list[torch.Tensor] = []  # the summed gradient at each leaf
        for k, v in self.layers:
            for t in (k, v):
                leaf = t.detach().requires_grad_()
                total = torch.zeros_like(t, dtype=torch.promote_types(t.dtype, torch.float32))
                leaf.register_post_accumulate_grad_hook(functools.partial(_move_grad, total))
                self.leaves.append(leaf)
                self.sums.append(total)

    def response_logits(self, model: torch.nn.Module, batch: Batch, rows: slice) -> torch.Tensor:
        """Logits [R, T, V] of a micro-batch: `batch` collates the rows `rows` of the mini-batch."""
        T = batch.response_ids.shape[1]
        layers = list(zip(self.leaves[0::2], self.leaves[1::2]))
        return response_pass(model, layers, self.head_mask, self.last, self.index[rows], batch.response_ids,
                             batch.attention_mask[:, -T:])

    def backward(self) -> None:
        """Backpropagate the micro-batches' summed gradient at the prompt keys and values through the prompt pass."""
        outputs = [t for kv in self.layers for t in kv]
        torch.autograd.backward(outputs, [g.to(t.dtype) for t, g in zip(outputs, self.sums)])


def _move_grad(total: torch.Tensor, leaf: torch.Tensor) -> None:
    total += leaf.grad
    leaf.grad = None
