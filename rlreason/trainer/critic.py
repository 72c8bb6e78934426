"""PPO with a learned critic: a value head on the policy's last hidden state (shared backbone, so a
135M model does not need a second copy) and GAE over each response. Outcome rewards sit on the last
generated token; the critic spreads credit backwards (GAE, arXiv 1506.02438)."""

from __future__ import annotations

import torch

from rlreason.algos.advantages import gae
from rlreason.registry import ConfigError
from rlreason.trainer.batch import Batch, Row, collate


class ValueHead(torch.nn.Module):
    """V(s_t) from the hidden state that predicts token t. Zero-initialised: V = 0 at the start, so the
    first advantages equal the (discounted) returns."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.v = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.v.weight)
        torch.nn.init.zeros_(self.v.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.v(hidden.float()).squeeze(-1)


def response_hidden(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B,T,V] in the compute dtype, last hidden states [B,T,H]) at the positions predicting each response token."""
    T = batch.response_ids.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=T + 1, use_cache=False, output_hidden_states=True)
    return out.logits[:, :-1, :], out.hidden_states[-1][:, -(T + 1):-1, :]


@torch.no_grad()
def assign_gae(rows: list[Row], rewards: list[float], model: torch.nn.Module, head: ValueHead, pad_id: int,
               device: torch.device, *, gamma: float, lam: float, micro: int) -> None:
    """Fill each row's token advantages, returns and old values from the current critic."""
    if len({r.trace_id for r in rows}) != len(rows):
        raise ConfigError("algo.advantage=gae: this environment returns several samples per episode "
                          "(e.g. Delethink chunks); a per-token critic is defined per row only. "
                          "Allowed for multi-sample episodes: grpo, dr_grpo, rloo, reinforce_pp_baseline.")
    values = []
    for i in range(0, len(rows), micro):
        b = collate(rows[i:i + micro], pad_id).to(device)
        _, h = response_hidden(model, b)
        values.extend(head(h)[j, :len(r.response_ids)].cpu() for j, r in enumerate(rows[i:i + micro]))
    full = collate(rows, pad_id)
    T = full.response_ids.shape[1]
    V = torch.zeros(len(rows), T)
    token_rewards = torch.zeros(len(rows), T)
    for i, (r, v) in enumerate(zip(rows, values)):
        V[i, :len(v)] = v
        last = max((t for t, m in enumerate(r.response_mask) if m), default=None)
        if last is not None:
            token_rewards[i, last] = rewards[r.trace_id]
    adv, ret = gae(token_rewards, V, full.response_mask, gamma=gamma, lam=lam)
    for i, r in enumerate(rows):
        n = len(r.response_ids)
        r.token_advantages, r.returns, r.old_values = adv[i, :n].tolist(), ret[i, :n].tolist(), V[i, :n].tolist()
