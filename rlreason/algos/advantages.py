"""Advantage estimators. Outcome estimators map one scalar reward per episode to one scalar advantage
per episode; `broadcast_to_tokens` then spreads it over every row (chunk) of that episode, so the same
estimator serves one-row episodes and multi-chunk Delethink traces alike. Conventions follow verl's
`core_algos.py` (unbiased std, eps 1e-6 added to the std, a group of one gets mean 0 and std 1) so the
two can be checked for numerical parity.

Shapes: N episodes, G samples per prompt (group), R rows, B rows, T tokens."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlreason.registry import Registry

OutcomeAdvantageFn = Callable[..., Tensor]
# Outcome estimators: (rewards [N], group_ids [N], *, eps, token_counts=None, **_) -> advantages [N].
# `gae` (a learned critic, trainer/critic.py) is not one of them; configs accept it beside these names.
ADVANTAGES: Registry[OutcomeAdvantageFn] = Registry("advantage estimator", "rlreason.advantages",
                                                    key="algo.advantage")


def _as_float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-episode (mean, unbiased std, size) of its group, in float64; groups need not be contiguous or dense.
    A group of one gets mean 0 and std 1, as verl does, so its advantage is the raw reward. A group whose
    rewards are all equal gets its common value as the mean and std 0, exactly: summing eight float32 1.2s in
    float32 leaves a mean 1e-7 off, which GRPO's 1/(std + 1e-6) turned into A = +0.106 for every member, and
    even float64 sums of 0.1 are not exact, so equal groups are detected rather than computed."""
    r = rewards.to(torch.float64)
    _, inv = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inv.max()) + 1 if inv.numel() else 0
    count = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, inv, torch.ones_like(r))
    total = torch.zeros_like(count).index_add_(0, inv, r)
    lo = torch.full_like(count, float("inf")).scatter_reduce(0, inv, r, reduce="amin")
    hi = torch.full_like(count, float("-inf")).scatter_reduce(0, inv, r, reduce="amax")
    equal = lo == hi
    mean = torch.where(equal, lo, total / count)
    # Two-pass variance (centre first) like torch.std, rather than E[x^2] - E[x]^2, to avoid cancellation.
    sq = torch.zeros_like(count).index_add_(0, inv, (r - mean[inv]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp_min(1))
    single = count <= 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return mean[inv], std[inv], count[inv]


def masked_whiten(values: Tensor, mask: Tensor) -> Tensor:
    """(x - mean) / sqrt(var + 1e-8) with mean and unbiased var over `mask` (0/1 or non-negative weights),
    written to match verl's `masked_whiten` bit for bit (its 1e-8 terms included) so parity checks hold.
    Shapes: values and mask alike, any shape. Whitening: Schulman et al., PPO baselines (arXiv 1707.06347)."""
    mask = _as_float(mask).to(values.dtype)
    n = mask.sum()
    if n <= 1:
        raise ValueError(f"masked_whiten needs a mask total above 1 for an unbiased variance, got {float(n)}")
    mean = torch.where(mask.bool(), values, 0.0).mul(mask).sum() / (n + 1e-8)
    centred = values - mean
    var = torch.where(mask.bool(), centred ** 2, 0.0).mul(mask).sum() / (n + 1e-8) * (n / (n - 1))
    return centred * torch.rsqrt(var + 1e-8)


@ADVANTAGES.register("grpo")
def grpo(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6, **_) -> Tensor:
    """A_i = (r_i - mean_g) / (std_g + eps): a value-free baseline from the other answers to the same prompt,
    scaled so every prompt's group carries a similar gradient size. rewards [N], group_ids [N] long -> [N].
    DeepSeekMath Eq. (GRPO outcome supervision), arXiv 2402.03300."""
    rewards = _as_float(rewards)
    mean, std, _ = _group_stats(rewards, group_ids)
    return ((rewards.double() - mean) / (std + eps)).to(rewards.dtype)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6, **_) -> Tensor:
    """A_i = r_i - mean_g: drops GRPO's std division, which over-weights nearly solved and
    nearly hopeless prompts.
    rewards [N], group_ids [N] long -> [N]. Dr. GRPO Eq. (unbiased advantage), arXiv 2503.20783."""
    rewards = _as_float(rewards)
    mean, _, _ = _group_stats(rewards, group_ids)
    return (rewards.double() - mean).to(rewards.dtype)


@ADVANTAGES.register("rloo")
def rloo(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6, **_) -> Tensor:
    """A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_g): the leave-one-out baseline does not depend on
    the episode's own sample, so the estimate stays unbiased. A group of one keeps its raw reward (as verl).
    rewards [N], group_ids [N] long -> [N]. RLOO (Ahmadian et al.), arXiv 2402.14740."""
    rewards = _as_float(rewards)
    mean, _, count = _group_stats(rewards, group_ids)
    loo = (rewards.double() - mean) * count / (count - 1).clamp_min(1)
    return torch.where(count > 1, loo, rewards.double()).to(rewards.dtype)


@ADVANTAGES.register("reinforce_pp_baseline")
def reinforce_pp_baseline(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6,
                          token_counts: Tensor | None = None, **_) -> Tensor:
    """A = whiten_batch(r_i - mean_g): the group mean removes prompt difficulty, the batch-wide whitening
    keeps the scale global rather than per prompt (more robust than GRPO's per-group std).
    verl whitens over valid tokens, so an episode counts once per token: pass `token_counts` [N] (response
    tokens per episode, over all its rows) for exact parity; without it each episode counts once.
    A batch whose total weight W = sum_i w_i is at most 1 (one episode counted once, e.g. one prompt with one
    sample) gets A = 0: the batch mean is then that episode's own centred reward, so x_i - mean = 0, and the
    unbiased variance's W / (W - 1) is undefined (verl's masked_whiten raises there; whitening with W >= 2
    is unchanged and matches verl). A zero advantage means no policy-gradient signal from such a batch.
    rewards [N], group_ids [N] long -> [N]. REINFORCE++ Eq. (baseline variant), arXiv 2501.03262."""
    rewards = _as_float(rewards)
    mean, _, _ = _group_stats(rewards, group_ids)
    centred = rewards.double() - mean
    weights = torch.ones_like(centred) if token_counts is None else token_counts.to(centred.dtype)
    if weights.sum() <= 1:  # A_i = x_i - mean_batch = 0; no variance to divide by
        return torch.zeros_like(rewards)
    return masked_whiten(centred, weights).to(rewards.dtype)


def gae(token_rewards: Tensor, values: Tensor, response_mask: Tensor, *, gamma: float, lam: float,
        whiten: bool = True) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation for a learned critic. Positions with response_mask 0 (padding, tool
    output) are skipped in the recursion, as in verl: they pass the next value and running advantage
    through unchanged, so a tool call between two model turns does not break the discounting.
    Returns (advantages [B,T], returns [B,T]); returns = raw advantages + values; advantages are then
    whitened over valid tokens when `whiten` (verl's default). Masked positions hold carried-over values;
    the loss weights zero them out. token_rewards, values, response_mask: [B,T].
    GAE Eq. 16: A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_t+1 - V_t; arXiv 1506.02438."""
    with torch.no_grad():
        mask = _as_float(response_mask).to(values.dtype)
        B, T = token_rewards.shape
        next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
        last_gae = torch.zeros_like(next_value)
        advantages = torch.zeros_like(values)
        for t in reversed(range(T)):
            delta = token_rewards[:, t] + gamma * next_value - values[:, t]
            gae_t = delta + gamma * lam * last_gae
            m = mask[:, t]
            next_value = m * values[:, t] + (1 - m) * next_value
            last_gae = m * gae_t + (1 - m) * last_gae
            advantages[:, t] = last_gae
        returns = advantages + values
        if whiten:
            advantages = masked_whiten(advantages, mask)
    return advantages, returns


def broadcast_to_tokens(advantages: Tensor, row_to_episode: Tensor, response_mask: Tensor) -> Tensor:
    """Per-token advantages [R,T] from per-episode ones [N]: every row of an episode (a Delethink trace has
    one row per chunk) gets the episode's advantage, because the reward judges the whole trace.
    row_to_episode [R] long indexes into advantages; response_mask [R,T] zeroes non-generated tokens.
    Delethink Eq. 3 (one advantage per trace, shared by all chunks), arXiv 2510.06557."""
    return advantages[row_to_episode].unsqueeze(-1) * response_mask.to(advantages.dtype)
