"""Where the policy update's time could come back from on CPU: two levers measured against the trainer's own
update, interleaved in one run, with the MFU of each (FLOPs as `perf/` counts them, rlreason/trainer/perf.py;
the peak is probed in the same run, not read from the cache).

The workload is update_step.py's (SmolLM2-135M's shape with random weights, 32 rows = 8 prompts x 4 samples,
prompts 80-200 tokens, 128-token responses) with the CPU defaults applied (shared-prefix forward, grouped-matmul
attention, fused RMSNorm). Variants:

    baseline      the trainer: float32 master weights, bf16 autocast, trainer.micro_batch_size 8 (the default)
    micro N       the same with micro-batches of N rows (fewer, larger matmuls and fewer per-op overheads,
                  more activation memory; the loss is the same: micro-batching is exact)
    pure bf16     bf16 weights without autocast, micro-batch 8: no casts at all, and every elementwise op on
                  half the bytes. Not a training option (bf16 weights cannot hold lr ~1e-6 updates without a
                  float32 master copy); it bounds what removing autocast's casts could buy.

    python benchmarks/update_levers.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rlreason.config import AlgoConfig, TrainerConfig, load_config
from rlreason.cpu import apply_cpu_optimizations
from rlreason.trainer.fused_rms_norm import fuse_rms_norms
from rlreason.trainer.perf import device_peak_flops, model_shape, pass_flops, sequences
from rlreason.trainer.update import UpdateContext, policy_update

from peer_workload import median, update_rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/update_levers.py")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians are reported)")
    a = ap.parse_args(argv)
    from rlreason.models import resolve_model
    cfg = AutoConfig.from_pretrained(resolve_model("smollm2-135m-instruct", dtype="fp32"))
    dev = torch.device("cpu")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    opts = apply_cpu_optimizations(load_config(None, []), dev, [model])
    shared = opts.share_prompts
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    fuse_rms_norms(bf16)  # routes nothing for bf16 inputs: transformers' own RMSNorm runs
    rows = update_rows()
    flops = pass_flops(model_shape(model), sequences(rows), backward=True, share_prompts=shared)
    with tempfile.TemporaryDirectory() as tmp:  # probed now, not read from a cache another load measured
        peak, source = device_peak_flops(model_shape(model), dev, torch.bfloat16, cache_dir=Path(tmp))

    def variant(m: torch.nn.Module, amp: torch.dtype | None, micro: int) -> Callable[[], float]:
        opt = torch.optim.AdamW(m.parameters(), lr=1e-7, fused=m is model)
        ctx = UpdateContext(m, opt, None, None, dev, amp, 0, 1.0, share_prompts=shared)

        def once() -> float:
            t = time.perf_counter()
            policy_update(rows, ctx, AlgoConfig(), TrainerConfig(micro_batch_size=micro), None)
            return time.perf_counter() - t
        return once

    variants = {"baseline (micro 8)": variant(model, torch.bfloat16, 8),
                **{f"micro {n}": variant(model, torch.bfloat16, n) for n in (4, 16, 32)},
                "pure bf16 (micro 8)": variant(bf16, None, 8)}
    for fn in variants.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(a.repeats):  # interleaved, every other round reversed
        for k in names if r % 2 == 0 else names[::-1]:
            times[k].append(variants[k]())
        print(f"round {r + 1}: " + "  ".join(f"{k} {times[k][-1]:.2f} s" for k in names), flush=True)
    base = median(times[names[0]])
    print(f"\nupdate of 32 rows on cpu x{torch.get_num_threads()}: {flops / 1e12:.2f} TFLOP per update; "
          f"peak {peak / 1e12:.2f} TFLOP/s ({source}, the model's matmul shapes in bf16)")
    print(f"{'variant':22s} {'median s':>9s} {'min-max s':>13s} {'vs baseline':>12s} {'TFLOP/s':>8s} {'MFU':>6s}")
    for k in names:
        m = median(times[k])
        print(f"{k:22s} {m:9.2f} {min(times[k]):6.2f}-{max(times[k]):<6.2f} {base / m:11.2f}x "
              f"{flops / m / 1e12:8.3f} {flops / m / peak:6.1%}")
    print(f"peak RSS of the process (all variants) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    from rlreason.cpu import reexec_preloaded
    reexec_preloaded(sys.argv)  # tcmalloc + Intel OpenMP on CPU, as the CLI runs
    main()
