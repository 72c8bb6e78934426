"""Per-token KL estimators between the policy and a reference policy, from samples of the policy only
(the full-vocabulary KL would need both models' logits at every position). Shapes: B rows, T tokens."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlreason.registry import Registry

# (logprobs [B,T], ref_logprobs [B,T]) -> per-token KL estimate [B,T].
KL_ESTIMATORS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("KL estimator", "rlreason.kl_estimators",
                                                                       key="algo.kl_estimator")


@KL_ESTIMATORS.register("k1")
def _k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def _k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def _k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    # Clamps as in verl: exp() of a huge log-ratio would overflow, and one token must not swamp the batch.
    log_ratio = torch.clamp(ref_logprobs - logprobs, min=-20.0, max=20.0)
    return torch.clamp(torch.exp(log_ratio) - log_ratio - 1, min=-10.0, max=10.0)


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """KL(pi || pi_ref) estimated per sampled token: k1 = logp - ref (unbiased, high variance, can be < 0),
    k2 = 0.5 (logp - ref)^2 (biased, low variance, gradient matches KL's), k3 = exp(ref - logp) - (ref - logp)
    - 1 (unbiased and always >= 0; clamped to [-10, 10] as in verl). logprobs, ref_logprobs [B,T] -> [B,T].
    Schulman, "Approximating KL divergence" (2020, joschu.net/blog/kl-approx.html); k3 used by GRPO Eq. 4,
    arXiv 2402.03300."""
    return KL_ESTIMATORS.get(kind)(logprobs, ref_logprobs)


def kl_reward_penalty(logprobs: list[Tensor], ref_logprobs: list[Tensor], masks: list[list[int]],
                      trace_ids: list[int], num_traces: int, kind: str) -> Tensor:
    """KL in the reward (algo.kl_in_reward, InstructGPT arXiv 2203.02155 Eq. 2): the penalty of each trace,
    sum_t KL_t(pi || ref) over the trained tokens of all its rows, so r <- r - beta * penalty. Per row:
    logprobs and ref_logprobs [T] of its response, mask its response_mask, trace_id its episode."""
    pen = torch.zeros(num_traces)
    for lp, ref, m, t in zip(logprobs, ref_logprobs, masks, trace_ids):
        pen[t] += float((kl_estimate(lp, ref, kind) * torch.tensor(m, dtype=torch.float)).sum())
    return pen
