"""A stub policy whose every token's log-probability has its own parameter, for exact update tests.

logits[b, j, :] are 0 except at the next token y = input_ids[b, j + 1], where they are theta[y]. At theta = 0
every token has p = 1/V and d log p_y / d theta_y = 1 - 1/V, and no other token touches theta_y when response
token ids are unique in the batch. So after `policy_update` the gradient of theta_y is exactly
-A_y * w_y * (1 - 1/V) (on-policy, ratio 1): the per-token aggregation weight w_y can be read back from it,
and a token's gradient is non-zero only in the optimizer step of the mini-batch that holds it."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import torch

from rlreason.trainer.batch import Row


class TokenTable(torch.nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.theta = torch.nn.Parameter(torch.zeros(vocab, dtype=torch.float64))
        self.config = SimpleNamespace()

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, use_cache=False):
        B, L = input_ids.shape
        nxt = torch.cat([input_ids[:, 1:], torch.zeros(B, 1, dtype=torch.long)], dim=1)
        onehot = torch.nn.functional.one_hot(nxt, self.vocab).to(self.theta.dtype)
        logits = onehot * self.theta[nxt].unsqueeze(-1)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


class RecordingSGD(torch.optim.SGD):
    """lr 0 (the model stays fixed) and a copy of theta's gradient at every optimizer step."""

    def __init__(self, params) -> None:
        super().__init__(params, lr=0.0)
        self.grads: list[torch.Tensor] = []

    def step(self, closure=None):
        self.grads.append(self.param_groups[0]["params"][0].grad.detach().clone())
        return super().step(closure)


def random_rows(seed: int, groups: int, G: int | list[int], max_chunks: int = 3, mask_p: float = 0.2,
                empty_row_p: float = 0.1) -> tuple[list[Row], int]:
    """Rows of `groups` prompt groups of G traces (or a size per group), each trace 1..max_chunks rows
    (Delethink chunks) of 1..6 tokens; every response token id is unique. Returns (rows, vocab)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    next_tok, trace = 1000, 0
    sizes = G if isinstance(G, list) else [G] * groups
    for g, size in enumerate(sizes):
        prompt = [rng.randrange(1, 999) for _ in range(rng.randint(1, 4))]
        for _ in range(size):
            adv = rng.uniform(0.2, 2.0) * rng.choice([-1, 1])
            for _ in range(rng.randint(1, max_chunks)):
                t = rng.randint(1, 6)
                mask = [int(rng.random() > mask_p) for _ in range(t)]
                if rng.random() < empty_row_p:
                    mask = [0] * t
                ids = list(range(next_tok, next_tok + t))
                next_tok += t
                rows.append(Row(prompt, ids, [0.0] * t, mask, adv, trace, g))
            trace += 1
    for r in rows:  # the engine sampled from the same uniform distribution: truncated IS weights are 1
        r.rollout_logprobs = [-math.log(next_tok)] * len(r.response_ids)
    rng.shuffle(rows)
    return rows, next_tok


def read_weights(grads: list[torch.Tensor], rows: list[Row], vocab: int) -> list[dict[int, float]]:
    """Per optimizer step, {token id: w} for the tokens whose gradient is non-zero in that step."""
    scale = 1 - 1 / vocab
    adv = {tok: r.advantage for r in rows for tok in r.response_ids}
    return [{tok: float(-g[tok]) / (adv[tok] * scale) for tok in adv if g[tok] != 0} for g in grads]

